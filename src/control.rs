//! The supervisor's local control channel, used by `sockherd reload` and `sockherd status`.
//!
//! An abstract unix stream socket named `@sockherd/<supervisor pid>/control`: found from the pid
//! alone (systemd gives ExecReload= `$MAINPID`), nothing on disk to clean up or to leave stale.
//! Every connection is checked with SO_PEERCRED: only root and the supervisor's own user are
//! served. A request is one line (`reload` or `status`); the answer is text, then EOF. A
//! reload's answer is sent when the handoff ends: `ok <message>` or `error <message>`.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::log;
use crate::sys::{self, Pid};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub fn address(pid: Pid) -> String {
    format!("sockherd/{pid}/control")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Start a handoff (or queue one behind the handoff in flight) and answer with its outcome.
    Reload,
    /// Answer with the outcome of the handoff a SIGHUP just started (systemd's notify-reload
    /// sends SIGHUP, then runs ExecReload=); start one if there is none.
    Join,
    Status,
}

pub type ConnId = u64;

struct Conn {
    id: ConnId,
    stream: UnixStream,
    buf: Vec<u8>,
    deadline: Instant,
    /// A request was read; the connection now only waits for its answer.
    answered_later: bool,
    /// The peer may not control us: its request gets a refusal (once read: closing with the
    /// request unread would reset the connection and lose the answer).
    denied: Option<u32>,
}

pub struct ControlServer {
    listener: UnixListener,
    conns: Vec<Conn>,
    next_id: ConnId,
}

impl ControlServer {
    pub fn bind(pid: Pid) -> Result<ControlServer> {
        let name = address(pid);
        let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
        let listener =
            UnixListener::bind_addr(&addr).with_context(|| format!("failed to bind control socket @{name}"))?;
        listener.set_nonblocking(true)?;
        Ok(ControlServer { listener, conns: Vec::new(), next_id: 1 })
    }

    /// Descriptors to wait on: the listener, and connections whose request is not read yet.
    pub fn poll_fds(&self) -> Vec<(Option<ConnId>, BorrowedFd<'_>)> {
        let mut fds = vec![(None, self.listener.as_fd())];
        fds.extend(self.conns.iter().filter(|c| !c.answered_later).map(|c| (Some(c.id), c.stream.as_fd())));
        fds
    }

    pub fn next_timer(&self) -> Option<Instant> {
        self.conns.iter().filter(|c| !c.answered_later).map(|c| c.deadline).min()
    }

    /// Accepts new connections (refusing unauthorized peers).
    pub fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    let (peer_pid, peer_uid) = match sys::peer_uid(stream.as_fd()) {
                        Ok(cred) => cred,
                        Err(_) => continue,
                    };
                    let our_uid = sys::geteuid();
                    let denied = peer_uid != 0 && peer_uid != our_uid;
                    if denied {
                        log::warn(format!("refused control request from pid {peer_pid} (uid {peer_uid}): only root and uid {our_uid} may control this service"))
                            .kind("denied")
                            .emit();
                    }
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let id = self.next_id;
                    self.next_id += 1;
                    self.conns.push(Conn {
                        id,
                        stream,
                        buf: Vec::new(),
                        deadline: Instant::now() + REQUEST_TIMEOUT,
                        answered_later: false,
                        denied: denied.then_some(our_uid),
                    });
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn(format!("control socket accept failed: {e}")).emit();
                    return;
                }
            }
        }
    }

    /// Reads from a readable connection; returns its request once a whole line arrived.
    pub fn read(&mut self, id: ConnId) -> Option<Request> {
        let index = self.conns.iter().position(|c| c.id == id)?;
        let conn = &mut self.conns[index];
        let mut buf = [0u8; 256];
        let closed = loop {
            match conn.stream.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => {
                    conn.buf.extend_from_slice(&buf[..n]);
                    if conn.buf.len() > 1024 {
                        break true;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break true,
            }
        };
        if let Some(our_uid) = conn.denied.filter(|_| closed || conn.buf.contains(&b'\n')) {
            self.reply(id, &format!("error permission denied: only root and uid {our_uid} may control this service"));
            return None;
        }
        if let Some(end) = conn.buf.iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&conn.buf[..end]).trim().to_string();
            let request = match line.as_str() {
                "reload" => Request::Reload,
                "join" => Request::Join,
                "status" => Request::Status,
                other => {
                    let message = format!("error unknown request '{other}' (expected reload or status)");
                    self.reply(id, &message);
                    return None;
                }
            };
            self.conns[index].answered_later = true;
            return Some(request);
        }
        if closed {
            self.conns.remove(index);
        }
        None
    }

    /// Drops connections that never sent a whole request in time.
    pub fn expire(&mut self, now: Instant) {
        self.conns.retain(|c| c.answered_later || now < c.deadline);
    }

    /// Sends the answer and closes the connection.
    pub fn reply(&mut self, id: ConnId, text: &str) {
        let Some(index) = self.conns.iter().position(|c| c.id == id) else { return };
        let mut conn = self.conns.remove(index);
        // The answer is small; a client that does not read it within a second loses it.
        let _ = conn.stream.set_nonblocking(false);
        let _ = conn.stream.set_write_timeout(Some(Duration::from_secs(1)));
        let mut text = text.to_string();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        let _ = conn.stream.write_all(text.as_bytes());
    }
}

/// Whether a `sockherd run` supervisor with this pid answers on its control socket.
pub fn supervisor_listening(pid: Pid) -> bool {
    SocketAddr::from_abstract_name(address(pid).as_bytes()).and_then(|addr| UnixStream::connect_addr(&addr)).is_ok()
}

/// Client side: sends `request` to the supervisor with pid `pid` and returns its answer.
pub fn request(pid: Pid, request: Request, timeout: Duration) -> Result<String> {
    let name = address(pid);
    let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
    let mut stream = match UnixStream::connect_addr(&addr) {
        Ok(s) => s,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused || e.kind() == ErrorKind::NotFound => {
            bail!(
                "no sockherd supervisor answers for pid {pid} (is it running `sockherd run`, and in this network namespace?)"
            )
        }
        Err(e) => return Err(e).with_context(|| format!("failed to connect to the supervisor of pid {pid}")),
    };
    stream.set_read_timeout(Some(timeout))?;
    let line = match request {
        Request::Reload => "reload\n",
        Request::Join => "join\n",
        Request::Status => "status\n",
    };
    stream.write_all(line.as_bytes()).context("failed to send the request")?;
    let mut answer = String::new();
    match stream.read_to_string(&mut answer) {
        Ok(_) => Ok(answer),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            bail!("the supervisor (pid {pid}) did not answer within {timeout:?}")
        }
        Err(e) => Err(e).context("failed to read the supervisor's answer"),
    }
}
