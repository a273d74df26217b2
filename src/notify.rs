//! Telling systemd what we do, with sd_notify(3) datagrams on `$NOTIFY_SOCKET`.
//!
//! A failure to notify is logged and never fatal: the service keeps serving.

use std::io;
use std::os::fd::AsFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use crate::log;
use crate::protocol::{BARRIER, NOTIFY_SOCKET, WATCHDOG_PID, WATCHDOG_USEC};
use crate::sys;

pub struct Notifier {
    target: Option<(UnixDatagram, String)>,
}

impl Notifier {
    /// Connects to `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket). Without it,
    /// every call is a no-op.
    pub fn from_env() -> Notifier {
        let Some(value) = std::env::var_os(NOTIFY_SOCKET) else {
            return Notifier { target: None };
        };
        let text = value.to_string_lossy().into_owned();
        match connect(&text) {
            Ok(sock) => Notifier { target: Some((sock, text)) },
            Err(e) => {
                log::warn(format!("cannot reach {NOTIFY_SOCKET}={text}: {e}; systemd will not hear from us")).emit();
                Notifier { target: None }
            }
        }
    }

    /// A notifier on an already connected socket (the tests' stand-in for systemd).
    #[cfg(test)]
    pub fn connected(sock: UnixDatagram) -> Notifier {
        Notifier { target: Some((sock, "test".to_string())) }
    }

    pub fn disabled() -> Notifier {
        Notifier { target: None }
    }

    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one message made of `KEY=value` lines.
    pub fn send(&self, lines: &[String]) {
        let Some((sock, path)) = &self.target else {
            return;
        };
        let message = lines.join("\n");
        if let Err(e) = sock.send(message.as_bytes()) {
            log::warn(format!("failed to notify systemd at {path} ({}): {e}", message.replace('\n', " "))).emit();
        }
    }

    /// Sends one message with a descriptor attached (`MAINPIDFD=1` and its pidfd).
    pub fn send_with_fd(&self, lines: &[String], fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
        let Some((sock, _)) = &self.target else {
            return Ok(());
        };
        sys::send_with_fd(sock.as_fd(), lines.join("\n").as_bytes(), fd)
    }

    /// sd_notify_barrier(3): returns once systemd has processed every message sent before.
    /// Needed before a short-lived process exits, or systemd may attribute its messages wrongly.
    pub fn barrier(&self, timeout: Duration) -> io::Result<()> {
        let Some((sock, _)) = &self.target else {
            return Ok(());
        };
        let (read, write) = sys::pipe()?;
        sys::send_with_fd(sock.as_fd(), BARRIER.as_bytes(), write.as_fd())?;
        drop(write);
        // systemd closes its copy of the write end after handling the message: we see EOF.
        let ready = sys::poll_readable(&[read.as_fd()], Some(timeout))?;
        if ready[0] {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::TimedOut, "systemd did not answer BARRIER=1 in time"))
        }
    }
}

/// The most of an app's own text (its STATUS=) that reaches systemd.
pub const MAX_APP_TEXT: usize = 1024;
/// The most of a whole STATUS= line: systemd drops a datagram of 4,096 bytes or more.
pub const MAX_STATUS: usize = 3072;

/// Text as it may travel inside an sd_notify message: systemd splits a message into fields on
/// `\n` *and* `\r` and rejects one with a NUL, so no control character gets through (each
/// becomes a space), and at most `max` bytes, cut on a character boundary.
pub fn clean_text(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

fn connect(target: &str) -> io::Result<UnixDatagram> {
    let sock = UnixDatagram::unbound()?;
    let addr = match target.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None => SocketAddr::from_pathname(target)?,
    };
    sock.connect_addr(&addr)?;
    Ok(sock)
}

/// The watchdog interval systemd expects pings at, when it is meant for us.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var(WATCHDOG_USEC).ok()?.parse().ok().filter(|u| *u > 0)?;
    if let Ok(pid) = std::env::var(WATCHDOG_PID)
        && pid.parse::<i32>().ok() != Some(sys::getpid())
    {
        return None;
    }
    Some(Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_text_keeps_messages_whole() {
        assert_eq!(clean_text("x\rWATCHDOG=trigger\nMAINPID=1\0", 100), "x WATCHDOG=trigger MAINPID=1 ");
        assert_eq!(clean_text("ééé", 5), "éé");
        assert_eq!(clean_text(&"a".repeat(5000), MAX_APP_TEXT).len(), MAX_APP_TEXT);
        assert_eq!(clean_text("plain status", MAX_APP_TEXT), "plain status");
    }
}
