//! Signals as values (`TERM`, `SIGQUIT`, `15`) and as events: handlers only queue the signal
//! number on a pipe that the supervisor's loop polls.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::str::FromStr;

use crate::sys;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal(pub i32);

impl Signal {
    pub const HUP: Signal = Signal(libc::SIGHUP);
    pub const INT: Signal = Signal(libc::SIGINT);
    pub const QUIT: Signal = Signal(libc::SIGQUIT);
    pub const KILL: Signal = Signal(libc::SIGKILL);
    pub const TERM: Signal = Signal(libc::SIGTERM);
    pub const USR1: Signal = Signal(libc::SIGUSR1);
    pub const USR2: Signal = Signal(libc::SIGUSR2);
    pub const CHLD: Signal = Signal(libc::SIGCHLD);
    pub const WINCH: Signal = Signal(libc::SIGWINCH);
    pub const TTIN: Signal = Signal(libc::SIGTTIN);
    pub const TTOU: Signal = Signal(libc::SIGTTOU);
    pub const ABRT: Signal = Signal(libc::SIGABRT);

    pub fn name(self) -> Option<&'static str> {
        sys::SIGNALS.iter().find(|(_, n)| *n == self.0).map(|(name, _)| *name)
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "SIG{name}"),
            None => write!(f, "signal {}", self.0),
        }
    }
}

impl FromStr for Signal {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let upper = text.trim().to_ascii_uppercase();
        let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
        if let Some((_, number)) = sys::SIGNALS.iter().find(|(name, _)| *name == bare) {
            return Ok(Signal(*number));
        }
        match text.trim().parse::<i32>() {
            Ok(n) if (1..=64).contains(&n) => Ok(Signal(n)),
            _ => {
                let known: Vec<&str> = sys::SIGNALS.iter().map(|(name, _)| *name).collect();
                Err(format!(
                    "unknown signal '{text}' (expected a name like TERM or a number; known: {})",
                    known.join(", ")
                ))
            }
        }
    }
}

/// The signals a supervisor handles, delivered as a readable pipe.
pub struct SignalQueue {
    pipe: OwnedFd,
}

impl SignalQueue {
    /// Handles every signal that would otherwise end or stop the supervisor
    /// ([`sys::supervisor_signals`]).
    pub fn install() -> std::io::Result<SignalQueue> {
        Ok(SignalQueue { pipe: sys::signal_pipe(&sys::supervisor_signals())? })
    }

    /// Signals received since the last call, in order, each with whether a process sent it
    /// (rather than the kernel, for a terminal).
    pub fn drain(&self) -> Vec<(Signal, bool)> {
        sys::read_signals(self.pipe.as_fd()).into_iter().map(|(n, user)| (Signal(n), user)).collect()
    }
}

impl AsFd for SignalQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.pipe.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_numbers() {
        assert_eq!("TERM".parse::<Signal>().unwrap(), Signal::TERM);
        assert_eq!("sigquit".parse::<Signal>().unwrap(), Signal::QUIT);
        assert_eq!("12".parse::<Signal>().unwrap(), Signal::USR2);
        assert!("FOO".parse::<Signal>().unwrap_err().contains("unknown signal 'FOO'"));
        assert_eq!(Signal::TERM.to_string(), "SIGTERM");
    }
}
