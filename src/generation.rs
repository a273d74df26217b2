//! What the system says of a generation: its process group (the master's pid is the group's id),
//! which sockets its processes hold, and how its master ended. The generation's place in the
//! handoff is the core's ([`crate::handoff`]); this is the part that reads `/proc`.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use crate::signal::Signal;
use crate::sys::{self, Pid};

/// The processes of process group `pgid` right now (master and workers).
pub fn members(pgid: Pid) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<Pid>().ok()))
        .filter(|&pid| sys::getpgid(pid) == Some(pgid))
        .collect()
}

/// Whether one of these processes (a generation's) still holds one of the sockets with these
/// inodes, i.e. may still accept a connection on them.
pub fn holds_sockets(pids: &[Pid], inodes: &[u64]) -> bool {
    pids.iter().any(|pid| {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
        fds.flatten().filter_map(|fd| std::fs::read_link(fd.path()).ok()).any(|target| {
            target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:[")?.strip_suffix(']')?.parse::<u64>().ok())
                .is_some_and(|ino| inodes.contains(&ino))
        })
    })
}

pub fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by {}", Signal(signal)),
        _ => format!("{status}"),
    }
}

/// The exit code a shell would report for `status`.
pub fn shell_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => 128u8.wrapping_add(signal as u8),
        _ => 1,
    }
}
