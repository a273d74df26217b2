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
        // systemd closes its copy of the write end after handling the message: we see EOF. A
        // signal interrupts the poll (it then says nothing is ready): wait on until the deadline.
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if sys::poll_readable(&[read.as_fd()], Some(left))?[0] {
                return Ok(());
            }
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "systemd did not answer BARRIER=1 in time"));
            }
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

/// The forms of `$NOTIFY_SOCKET` sd_notify(3) knows: an absolute path, `@name` (abstract), and
/// since systemd 253 `vsock:CID:PORT` (also `vsock-stream:`, `vsock-dgram:`, `vsock-seqpacket:`),
/// which a VM's manager uses to hear from the VM's own systemd, never a service's: refused.
fn notify_address(target: &str) -> io::Result<SocketAddr> {
    if let Some(name) = target.strip_prefix('@') {
        return SocketAddr::from_abstract_name(name.as_bytes());
    }
    if target.starts_with('/') {
        return SocketAddr::from_pathname(target);
    }
    let reason = if target.starts_with("vsock") {
        "a vsock address (a virtual machine's manager socket); sockherd speaks to systemd on a unix socket only"
    } else {
        "neither an absolute path nor @name"
    };
    Err(io::Error::new(io::ErrorKind::InvalidInput, reason))
}

fn connect(target: &str) -> io::Result<UnixDatagram> {
    let addr = notify_address(target)?;
    let sock = UnixDatagram::unbound()?;
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

// ----- text and datagrams from the app -------------------------------------------------------------

/// systemd drops a notify datagram of this many bytes or more, whole (measured: a 4,096-byte
/// READY=1 datagram never arrives).
pub const DATAGRAM_LIMIT: usize = 4096;

/// Why a datagram is refused whole, as systemd refuses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatagramError {
    /// [`DATAGRAM_LIMIT`] bytes or more (the length the sender sent).
    TooLong(usize),
    /// An embedded NUL byte, at this offset.
    Nul(usize),
}

impl std::fmt::Display for DatagramError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatagramError::TooLong(n) => {
                write!(f, "{n} bytes long (systemd drops a notify datagram of {DATAGRAM_LIMIT} bytes or more)")
            }
            DatagramError::Nul(at) => write!(f, "a NUL byte at offset {at} (systemd rejects such a datagram)"),
        }
    }
}

/// Splits an sd_notify datagram into its `KEY=value` assignments the way systemd's manager
/// does: lines end at `\n` *or* `\r`, empty lines are skipped, and a datagram with a NUL byte,
/// or of [`DATAGRAM_LIMIT`] bytes or more, is refused whole. A line without `=` or that is not
/// UTF-8 is skipped (systemd ignores what it cannot read, too). `len` is the datagram's real
/// length, which may exceed `bytes` when the receive buffer truncated it.
pub fn parse_datagram(bytes: &[u8], len: usize) -> Result<Vec<(&str, &str)>, DatagramError> {
    if len >= DATAGRAM_LIMIT || bytes.len() >= DATAGRAM_LIMIT {
        return Err(DatagramError::TooLong(len.max(bytes.len())));
    }
    if let Some(at) = bytes.iter().position(|&b| b == 0) {
        return Err(DatagramError::Nul(at));
    }
    Ok(bytes
        .split(|&b| b == b'\n' || b == b'\r')
        .filter(|line| !line.is_empty())
        .filter_map(|line| std::str::from_utf8(line).ok())
        .filter_map(|line| line.split_once('='))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_systemd() {
        let lines = parse_datagram(b"READY=1\rSTATUS=x\n\nWATCHDOG=trigger\r\nMAINPID=7", 42).unwrap();
        assert_eq!(lines, [("READY", "1"), ("STATUS", "x"), ("WATCHDOG", "trigger"), ("MAINPID", "7")]);
        assert_eq!(parse_datagram(b"READY=1\0STOPPING=1", 19), Err(DatagramError::Nul(7)));
        let long = vec![b'a'; DATAGRAM_LIMIT];
        assert_eq!(parse_datagram(&long, long.len()), Err(DatagramError::TooLong(4096)));
        assert_eq!(parse_datagram(b"READY=1", 5000), Err(DatagramError::TooLong(5000)));
        assert_eq!(parse_datagram(b"noequals\nSTATUS=\xff\nREADY=1", 27).unwrap(), [("READY", "1")]);
    }

    #[test]
    fn clean_text_keeps_messages_whole() {
        assert_eq!(clean_text("x\rWATCHDOG=trigger\nMAINPID=1\0", 100), "x WATCHDOG=trigger MAINPID=1 ");
        assert_eq!(clean_text("ééé", 5), "éé");
        assert_eq!(clean_text(&"a".repeat(5000), MAX_APP_TEXT).len(), MAX_APP_TEXT);
        assert_eq!(clean_text("plain status", MAX_APP_TEXT), "plain status");
    }

    #[test]
    fn notify_socket_forms() {
        assert_eq!(
            notify_address("/run/systemd/notify").unwrap().as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        assert_eq!(notify_address("@sd-notify").unwrap().as_abstract_name(), Some(&b"sd-notify"[..]));
        for (target, want) in [
            ("vsock:2:1234", "vsock address"),
            ("vsock-dgram:2:1234", "vsock address"),
            ("run/notify", "neither an absolute path nor @name"),
            ("", "neither an absolute path nor @name"),
        ] {
            let err = notify_address(target).unwrap_err().to_string();
            assert!(err.contains(want), "{target}: {err}");
        }
    }
}
