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

#[cfg(test)]
mod tests {
    use super::*;

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
