//! One start of the server: its master pid (also its process group), the release it runs, its
//! readiness check, and its role in the handoff.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Instant, SystemTime};

use crate::readiness::Check;
use crate::signal::Signal;
use crate::sys::{self, Pid};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Spawned, not ready yet; killed if not ready by the deadline.
    Starting { deadline: Instant },
    /// The generation clients are served by.
    Serving,
    /// Told to stop gracefully after a newer generation became ready; SIGKILL at `kill_at`.
    Draining { since: Instant, kill_at: Instant, killed: bool },
    /// Never became ready and was killed; waiting to be reaped.
    Failed,
}

impl Role {
    pub fn name(&self) -> &'static str {
        match self {
            Role::Starting { .. } => "starting",
            Role::Serving => "serving",
            Role::Draining { .. } => "draining",
            Role::Failed => "failed",
        }
    }
}

pub struct Generation {
    pub number: u64,
    /// The master's pid, which is also the id of the generation's process group.
    pub pid: Pid,
    pub release: Option<PathBuf>,
    pub started: Instant,
    pub started_at: SystemTime,
    pub role: Role,
    pub check: Check,
    /// The master's exit status, once reaped.
    pub exit: Option<ExitStatus>,
    /// Whether we sent it a stop signal (its exit is then expected).
    pub stop_sent: Option<Signal>,
    /// The last STATUS= the app sent on its notify socket.
    pub app_status: Option<String>,
}

impl Generation {
    pub fn describe(&self) -> String {
        match &self.release {
            Some(release) => format!("generation {} (pid {}, {})", self.number, self.pid, release.display()),
            None => format!("generation {} (pid {})", self.number, self.pid),
        }
    }

    /// Whether any process of the generation is left: the master, a member of its group, or
    /// its readiness command.
    pub fn alive(&self) -> bool {
        self.exit.is_none() || sys::group_alive(self.pid) || self.check.running_command().is_some()
    }

    /// Sends `signal` to the master while it lives (it forwards to its workers the way the
    /// server wants), else to whatever is left of its process group.
    pub fn signal(&mut self, signal: Signal) -> std::io::Result<()> {
        self.stop_sent.get_or_insert(signal);
        if self.exit.is_none() { sys::kill(self.pid, signal.0) } else { sys::kill_group(self.pid, signal.0).map(drop) }
    }

    /// SIGKILL to the whole process group (and the master, should it have left the group) and
    /// to a readiness command still running.
    pub fn kill(&mut self) {
        self.stop_sent = Some(Signal::KILL);
        let _ = sys::kill_group(self.pid, libc::SIGKILL);
        if self.exit.is_none() {
            let _ = sys::kill(self.pid, libc::SIGKILL);
        }
        if let Some(pid) = self.check.running_command() {
            let _ = sys::kill_group(pid, libc::SIGKILL);
        }
    }

    /// Whether a process of the generation still holds one of the sockets with these inodes,
    /// i.e. may still accept a connection on them.
    pub fn holds_sockets(&self, inodes: &[u64]) -> bool {
        let Ok(entries) = std::fs::read_dir("/proc") else { return false };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<Pid>().ok()))
            .filter(|&pid| sys::getpgid(pid) == Some(self.pid))
            .any(|pid| {
                let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
                fds.flatten().filter_map(|fd| std::fs::read_link(fd.path()).ok()).any(|target| {
                    target
                        .to_str()
                        .and_then(|t| t.strip_prefix("socket:[")?.strip_suffix(']')?.parse::<u64>().ok())
                        .is_some_and(|ino| inodes.contains(&ino))
                })
            })
    }

    /// Processes in the generation's group right now (master and workers).
    pub fn process_count(&self) -> usize {
        let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<Pid>().ok()))
            .filter(|&pid| sys::getpgid(pid) == Some(self.pid))
            .count()
    }
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
