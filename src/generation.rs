//! What the system says of a generation: its process group (the master's pid is the group's id),
//! which sockets its processes hold, and how its master ended. The generation's place in the
//! handoff is the core's ([`crate::handoff`]); this is the part that reads `/proc`.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;

use crate::signal::Signal;
use crate::sys::{self, Pid};

/// The processes of process group `pgid` right now (master and workers). An error (/proc
/// unreadable) is no empty group.
pub fn members(pgid: Pid) -> io::Result<Vec<Pid>> {
    let entries =
        std::fs::read_dir("/proc").map_err(|e| io::Error::new(e.kind(), format!("failed to list /proc: {e}")))?;
    Ok(entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<Pid>().ok()))
        .filter(|&pid| sys::getpgid(pid) == Some(pgid))
        .collect())
}

/// Every descendant of `pid` right now (children, their children, ...), whatever their group
/// or session, from the parent pids in /proc.
pub fn descendants(pid: Pid) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let parents: Vec<(Pid, Pid)> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<Pid>().ok())
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            // Field 4 (ppid), counted after the command name's last ')'.
            Some((p, stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?))
        })
        .collect();
    let mut found = vec![pid];
    let mut next = 0;
    while let Some(&parent) = found.get(next) {
        next += 1;
        found.extend(parents.iter().filter(|(_, ppid)| *ppid == parent).map(|(p, _)| *p));
    }
    found.remove(0);
    found
}

/// Whether one of these processes (a generation's) still holds one of the sockets with these
/// inodes, i.e. may still accept a connection on them.
///
/// A process that exited meanwhile holds nothing; any other failure to look (EACCES, EMFILE)
/// is no "nothing": the first is returned unless another process was seen holding one.
pub fn holds_sockets(pids: &[Pid], inodes: &[u64]) -> io::Result<bool> {
    holds_sockets_in(Path::new("/proc"), pids, inodes)
}

/// [`holds_sockets`] with /proc at `proc`.
pub fn holds_sockets_in(proc: &Path, pids: &[Pid], inodes: &[u64]) -> io::Result<bool> {
    let gone = |e: &io::Error| e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH);
    let mut first_error = None;
    for pid in pids {
        let dir = proc.join(pid.to_string()).join("fd");
        let fds = match std::fs::read_dir(&dir) {
            Ok(fds) => fds,
            Err(e) if gone(&e) => continue,
            Err(e) => {
                first_error.get_or_insert(io::Error::new(e.kind(), format!("failed to list {}: {e}", dir.display())));
                continue;
            }
        };
        for fd in fds {
            let target = match fd.and_then(|fd| std::fs::read_link(fd.path())) {
                Ok(target) => target,
                // A descriptor closed since the directory was read.
                Err(e) if gone(&e) => continue,
                Err(e) => {
                    first_error
                        .get_or_insert(io::Error::new(e.kind(), format!("failed to read {}: {e}", dir.display())));
                    continue;
                }
            };
            let inode =
                target.to_str().and_then(|t| t.strip_prefix("socket:[")?.strip_suffix(']')?.parse::<u64>().ok());
            if inode.is_some_and(|ino| inodes.contains(&ino)) {
                return Ok(true);
            }
        }
    }
    first_error.map_or(Ok(false), Err)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in /proc: pid 10 holds socket 77, 11's fd cannot be listed, 12 exited.
    #[test]
    fn a_process_that_cannot_be_looked_at_is_no_process_without_sockets() {
        let mut bytes = [0u8; 8];
        sys::random_bytes(&mut bytes).unwrap();
        let proc = std::env::temp_dir().join(format!("sockherd-proc-{}", u64::from_ne_bytes(bytes)));
        std::fs::create_dir_all(proc.join("10/fd")).unwrap();
        std::os::unix::fs::symlink("socket:[77]", proc.join("10/fd/3")).unwrap();
        std::os::unix::fs::symlink("/dev/null", proc.join("10/fd/0")).unwrap();
        std::fs::create_dir_all(proc.join("11")).unwrap();
        // A file where the directory should be: listing it fails (ENOTDIR), as EACCES would.
        std::fs::write(proc.join("11/fd"), "").unwrap();
        // A descriptor that cannot be read as a link (EINVAL here, EACCES in life).
        std::fs::create_dir_all(proc.join("13/fd")).unwrap();
        std::fs::write(proc.join("13/fd/4"), "").unwrap();
        let holds = |pids: &[Pid], inodes: &[u64]| holds_sockets_in(&proc, pids, inodes);
        let results = [
            holds(&[10], &[77]).ok(),
            holds(&[10], &[78]).ok(),
            holds(&[12], &[77]).ok(),
            holds(&[11], &[77]).ok(),
            holds(&[11, 10], &[77]).ok(),
            holds(&[13], &[77]).ok(),
        ];
        std::fs::remove_dir_all(&proc).unwrap();
        assert_eq!(results, [Some(true), Some(false), Some(false), None, Some(true), None]);
    }
}
