//! The supervisor's local control channel, used by `sockherd reload` and `sockherd status`.
//!
//! A unix stream socket `control` in the supervisor's private runtime directory (mode 0700,
//! see [`crate::runtime`]): only the service's user and root can reach it. A client finds it
//! from the pid alone, without guessing a name another user could take:
//!
//! 1. inside the unit (`ExecReload=`, which shares the supervisor's `$RUNTIME_DIRECTORY`):
//!    `$RUNTIME_DIRECTORY/sockherd-<pid>/control`, a name only the service's user can create;
//! 2. from anywhere else: the listening sockets the process holds (`/proc/PID/fd`) and where
//!    they are bound (`/proc/PID/net/unix`), reached through the process's own root
//!    (`/proc/PID/root`, so PrivateTmp= and other mount namespaces do not matter). That takes
//!    root, or the process's own user outside a PrivateUsers= sandbox.
//!
//! A socket file, unlike an abstract name, is reachable from any network namespace. Whatever
//! answers must be the process itself: the client checks the server's SO_PEERCRED (the pid is
//! the target; the uid root, the client's own, or the owner of the process).
//!
//! A request is one line (`reload`, `join` or `status`); the answer is text, then EOF. A
//! reload's answer is sent when the handoff ends: `ok <message>` or `error <message>`.
//!
//! The server serves root and its own uid only (checked with SO_PEERCRED as each connection is
//! accepted) and holds at most [`MAX_CONNECTIONS`] connections, [`MAX_PER_UID`] per uid: a
//! peer beyond that, or of another uid, gets one `error` line and is closed at once. It never
//! takes the last descriptors of the process (the supervisor needs them to spawn, probe and
//! notify), and when accept(2) fails for lack of descriptors it stops listening for a while
//! instead of spinning on a listener that stays readable.

use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

use crate::log;
use crate::procfs;
use crate::runtime::DIR_PREFIX;
use crate::sys::{self, Pid};

/// The socket's file name in the runtime directory.
pub const SOCKET_NAME: &str = "control";
/// Connections held at once (requests being read, and reloads waiting for their outcome).
pub const MAX_CONNECTIONS: usize = 64;
/// Connections held at once for one uid: root keeps room when the service's user floods us.
pub const MAX_PER_UID: usize = 16;
/// A request line longer than this is refused.
pub const MAX_REQUEST: usize = 1024;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Descriptors kept free for the supervisor's own work, at most (half the limit if it is low).
const FD_RESERVE: u64 = 32;
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Busy answers are retried by the client this often, until its timeout.
const BUSY_RETRY: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Start a handoff (or queue one behind the handoff in flight) and answer with its outcome.
    Reload,
    /// Answer with the outcome of the handoff a SIGHUP just started (systemd's notify-reload
    /// sends SIGHUP, then runs ExecReload=); start one if there is none.
    Join,
    Status,
    /// Re-execute the supervisor (`binary`, else the one it runs), once no handoff is in flight,
    /// and answer from the new image ([`crate::reexec`]).
    Reexec {
        binary: Option<PathBuf>,
    },
}

impl Request {
    pub fn line(&self) -> String {
        match self {
            Request::Reload => "reload".into(),
            Request::Join => "join".into(),
            Request::Status => "status".into(),
            Request::Reexec { binary: None } => "reexec".into(),
            Request::Reexec { binary: Some(path) } => format!("reexec {}", path.display()),
        }
    }
}

/// Parses a request line (without its newline; surrounding blanks are ignored).
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let text = String::from_utf8_lossy(line);
    match text.trim() {
        "reload" => Ok(Request::Reload),
        "join" => Ok(Request::Join),
        "status" => Ok(Request::Status),
        "reexec" => Ok(Request::Reexec { binary: None }),
        other if other.starts_with("reexec ") => {
            let path = PathBuf::from(other["reexec ".len()..].trim());
            if path.is_absolute() {
                Ok(Request::Reexec { binary: Some(path) })
            } else {
                Err(format!("reexec needs an absolute path, not '{}'", path.display()))
            }
        }
        other => {
            let shown: String = other.chars().take(64).map(|c| if c.is_control() { '?' } else { c }).collect();
            Err(format!("unknown request '{shown}' (expected reload, join, status or reexec)"))
        }
    }
}

/// A supervisor's answer to `reload` or `join`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Ok(String),
    Error(String),
    /// Too many connections right now: try again.
    Busy(String),
}

/// Parses an answer to `reload`/`join`: `ok MESSAGE`, `error MESSAGE` (`error busy: ...` when
/// the supervisor holds too many connections). Anything else is not an answer of ours.
pub fn parse_answer(text: &str) -> Result<Answer, String> {
    let text = text.trim_end_matches(['\n', '\r']);
    if text.contains('\n') {
        return Err("more than one line".into());
    }
    match text.split_once(' ').unwrap_or((text, "")) {
        ("ok", message) => Ok(Answer::Ok(message.to_string())),
        ("error", message) if message.starts_with("busy:") => Ok(Answer::Busy(message.to_string())),
        ("error", message) => Ok(Answer::Error(message.to_string())),
        _ => Err("neither `ok ...` nor `error ...`".into()),
    }
}

pub type ConnId = u64;

/// A control connection crossing a re-exec: its descriptor, peer uid, what was read of its
/// request, and whether it waits for the reexec's answer.
pub type HandedConn<'a> = (BorrowedFd<'a>, u32, Vec<u8>, bool);

struct Conn {
    id: ConnId,
    stream: UnixStream,
    uid: u32,
    buf: Vec<u8>,
    deadline: Instant,
    /// A request was read; the connection now only waits for its answer.
    answered_later: bool,
}

pub struct ControlServer {
    listener: UnixListener,
    conns: Vec<Conn>,
    next_id: ConnId,
    /// A connection accepted on a descriptor at or above this is refused: the ones below are
    /// left for the supervisor's own work.
    fd_ceiling: i32,
    /// Kept open to be given up when the descriptor table is full, so the connection at the
    /// head of the backlog can still be accepted and refused.
    spare: Option<OwnedFd>,
    /// accept(2) ran out of descriptors: the listener is left alone until then.
    backoff: Option<(Instant, Duration)>,
    refusals: RefusalLog,
}

impl ControlServer {
    /// Listens on `<dir>/control`. `dir` must be private to the service's user (a
    /// [`crate::runtime::RuntimeDir`]): the directory's permissions are what keeps other users out.
    pub fn new(dir: &Path) -> Result<ControlServer> {
        let path = dir.join(SOCKET_NAME);
        // A file left there is ours (the directory is): replace it.
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("failed to bind the control socket {}", path.display()))?;
        listener.set_nonblocking(true)?;
        Ok(ControlServer::with_listener(listener))
    }

    fn with_listener(listener: UnixListener) -> ControlServer {
        let limit = sys::open_file_limit().unwrap_or(1024);
        let reserve = FD_RESERVE.min(limit / 2);
        let fd_ceiling = limit.saturating_sub(reserve).min(i32::MAX as u64) as i32;
        ControlServer {
            listener,
            conns: Vec::new(),
            next_id: 1,
            fd_ceiling,
            spare: spare_fd(),
            backoff: None,
            refusals: RefusalLog::default(),
        }
    }

    /// Descriptors to wait on: the listener (unless backing off), and connections whose
    /// request is not read yet.
    pub fn poll_fds(&self) -> Vec<(Option<ConnId>, BorrowedFd<'_>)> {
        let mut fds = Vec::new();
        if self.backoff.is_none() {
            fds.push((None, self.listener.as_fd()));
        }
        fds.extend(self.conns.iter().filter(|c| !c.answered_later).map(|c| (Some(c.id), c.stream.as_fd())));
        fds
    }

    pub fn next_timer(&self) -> Option<Instant> {
        let requests = self.conns.iter().filter(|c| !c.answered_later).map(|c| c.deadline);
        requests.chain(self.backoff.map(|(until, _)| until)).chain(self.refusals.next_timer()).min()
    }

    /// Accepts new connections: admits root and our own uid within the limits, refuses the
    /// rest with one line.
    pub fn accept(&mut self) {
        // Bounded: a peer reconnecting as fast as we refuse cannot keep us here.
        for _ in 0..MAX_CONNECTIONS * 2 {
            match self.listener.accept() {
                Ok((stream, _)) => self.admit(stream),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::ConnectionAborted) => continue,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) => {
                    self.out_of_descriptors(&e);
                    break;
                }
                Err(e) => {
                    log::warn(format!("control socket accept failed: {e}")).emit();
                    self.back_off();
                    break;
                }
            }
        }
        self.refusals.flush(Instant::now());
    }

    fn admit(&mut self, stream: UnixStream) {
        let (peer_pid, peer_uid) = match sys::peer_uid(stream.as_fd()) {
            Ok(cred) => cred,
            Err(_) => return,
        };
        let our_uid = sys::geteuid();
        if peer_uid != 0 && peer_uid != our_uid {
            log::warn(format!(
                "refused control request from pid {peer_pid} (uid {peer_uid}): only root and uid {our_uid} may control this service"
            ))
            .kind("denied")
            .emit();
            refuse(stream, &format!("error permission denied: only root and uid {our_uid} may control this service"));
            return;
        }
        let of_uid = self.conns.iter().filter(|c| c.uid == peer_uid).count();
        let busy = if stream.as_raw_fd() >= self.fd_ceiling {
            Some("too few free descriptors")
        } else if self.conns.len() >= MAX_CONNECTIONS {
            Some("too many control connections")
        } else if of_uid >= MAX_PER_UID {
            Some("too many control connections from this uid")
        } else {
            None
        };
        if let Some(why) = busy {
            self.refusals.note(peer_uid, why);
            refuse(stream, &format!("error busy: {why}; try again"));
            return;
        }
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.conns.push(Conn {
            id,
            stream,
            uid: peer_uid,
            buf: Vec::new(),
            deadline: Instant::now() + REQUEST_TIMEOUT,
            answered_later: false,
        });
    }

    /// EMFILE/ENFILE: the connection at the head of the backlog keeps the listener readable.
    /// Accept it on the spare descriptor and refuse it, then leave the listener alone for a
    /// while (doubling up to a second) instead of spinning on it.
    fn out_of_descriptors(&mut self, err: &std::io::Error) {
        if let Some(spare) = self.spare.take() {
            drop(spare);
            if let Ok((stream, _)) = self.listener.accept() {
                let uid = sys::peer_uid(stream.as_fd()).map(|(_, uid)| uid).unwrap_or(u32::MAX);
                self.refusals.note(uid, "no free descriptor");
                refuse(stream, "error busy: the supervisor has no free descriptor; try again");
            }
            self.spare = spare_fd();
        }
        if self.backoff.is_none() {
            log::warn(format!("control socket accept failed: {err}; not accepting for a while")).emit();
        }
        self.back_off();
    }

    fn back_off(&mut self) {
        let wait = match self.backoff {
            Some((_, last)) => (last * 2).min(BACKOFF_MAX),
            None => BACKOFF_FIRST,
        };
        self.backoff = Some((Instant::now() + wait, wait));
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
                    if conn.buf.len() > MAX_REQUEST {
                        break true;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break true,
            }
        };
        if let Some(end) = conn.buf.iter().position(|&b| b == b'\n') {
            return match parse_request(&conn.buf[..end]) {
                Ok(request) => {
                    self.conns[index].answered_later = true;
                    Some(request)
                }
                Err(message) => {
                    self.reply(id, &format!("error {message}"));
                    None
                }
            };
        }
        if closed {
            if conn.buf.len() > MAX_REQUEST {
                self.reply(id, &format!("error request longer than {MAX_REQUEST} bytes"));
            } else {
                self.conns.remove(index);
            }
        }
        None
    }

    /// Drops connections that never sent a whole request in time; ends a backoff that is over.
    pub fn expire(&mut self, now: Instant) {
        self.conns.retain(|c| c.answered_later || now < c.deadline);
        if self.backoff.is_some_and(|(until, _)| now >= until) {
            // Listen again; a failure next time doubles the wait, a success forgets it.
            let (_, last) = self.backoff.take().expect("checked");
            if self.spare.is_none() {
                self.spare = spare_fd();
                if self.spare.is_none() {
                    self.backoff = Some((now + last.min(BACKOFF_MAX), last));
                }
            }
        }
        self.refusals.flush(now);
    }

    /// What a re-exec keeps: the listener, and each connection with what was read of its
    /// request (`requester`: the one waiting for the reexec's answer).
    pub fn handover(&self, requester: Option<ConnId>) -> (BorrowedFd<'_>, Vec<HandedConn<'_>>) {
        let conns = self
            .conns
            .iter()
            .filter(|c| !c.answered_later || Some(c.id) == requester)
            .map(|c| (c.stream.as_fd(), c.uid, c.buf.clone(), Some(c.id) == requester))
            .collect();
        (self.listener.as_fd(), conns)
    }

    /// The server a re-executed supervisor takes over: the listener and connections handed
    /// across the exec. Returns it and the id of the connection waiting for the reexec's answer.
    pub fn adopt(
        listener: OwnedFd,
        conns: Vec<(OwnedFd, u32, Vec<u8>, bool)>,
    ) -> Result<(ControlServer, Option<ConnId>)> {
        let listener = UnixListener::from(listener);
        listener.set_nonblocking(true).context("failed to make the handed-over control socket non-blocking")?;
        let mut server = ControlServer::with_listener(listener);
        let mut requester = None;
        let now = Instant::now();
        for (fd, uid, buf, is_requester) in conns {
            let stream = UnixStream::from(fd);
            let _ = stream.set_nonblocking(true);
            let id = server.next_id;
            server.next_id += 1;
            if is_requester {
                requester = Some(id);
            }
            server.conns.push(Conn {
                id,
                stream,
                uid,
                buf,
                deadline: now + REQUEST_TIMEOUT,
                answered_later: is_requester,
            });
        }
        Ok((server, requester))
    }

    /// The connections whose request was read and that wait for an answer (none may be
    /// left waiting across a re-exec but its requester).
    pub fn waiting(&self) -> usize {
        self.conns.iter().filter(|c| c.answered_later).count()
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

/// One line to a peer we do not serve, then close. Whatever it already sent is read first, so
/// closing does not reset the connection and lose the line.
fn refuse(mut stream: UnixStream, line: &str) {
    let _ = stream.set_nonblocking(true);
    let mut sink = [0u8; 256];
    for _ in 0..4 {
        match stream.read(&mut sink) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
    let _ = stream.write_all(format!("{line}\n").as_bytes());
}

fn spare_fd() -> Option<OwnedFd> {
    std::fs::File::open("/dev/null").ok().map(OwnedFd::from)
}

/// Refusals are logged once, then summed up at most once a second: a flood must not become a
/// flood of log lines.
#[derive(Default)]
struct RefusalLog {
    pending: u64,
    last: Option<(u32, &'static str)>,
    quiet_until: Option<Instant>,
}

impl RefusalLog {
    fn note(&mut self, uid: u32, why: &'static str) {
        let now = Instant::now();
        if self.quiet_until.is_none_or(|t| now >= t) && self.pending == 0 {
            log::warn(format!("refused a control connection from uid {uid}: {why}")).kind("denied").emit();
            self.quiet_until = Some(now + Duration::from_secs(1));
        } else {
            self.pending += 1;
            self.last = Some((uid, why));
        }
    }

    fn flush(&mut self, now: Instant) {
        if self.pending > 0
            && self.quiet_until.is_none_or(|t| now >= t)
            && let Some((uid, why)) = self.last
        {
            log::warn(format!("refused {} more control connection(s), the last from uid {uid}: {why}", self.pending))
                .kind("denied")
                .emit();
            self.pending = 0;
            self.quiet_until = Some(now + Duration::from_secs(1));
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        if self.pending > 0 { self.quiet_until } else { None }
    }
}

// ----- the client -------------------------------------------------------------------------------

/// Why no supervisor answers for a pid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unreachable {
    NoProcess {
        pid: Pid,
    },
    /// We may not look into the process (/proc/PID/fd): another user's.
    PermissionDenied {
        pid: Pid,
        owner: Option<u32>,
    },
    /// The process runs another program: not a supervisor (native mode: the server itself).
    NotSockherd {
        pid: Pid,
        exe: Option<PathBuf>,
    },
    /// It runs sockherd but holds no control socket: `sockherd exec` or `reload`, or a version
    /// that speaks another protocol.
    NoControlSocket {
        pid: Pid,
        exe: PathBuf,
    },
    /// A control socket was found but did not answer, or not as that process.
    Failed {
        pid: Pid,
        why: String,
    },
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unreachable::NoProcess { pid } => {
                write!(f, "no process {pid} (is the service running? a sandbox's ProtectProc= may also hide it)")
            }
            Unreachable::PermissionDenied { pid, owner } if *owner == Some(sys::geteuid()) => write!(
                f,
                "permission denied: cannot look for the control socket of pid {pid} in /proc/{pid}/fd, though it \
                 runs as our user: it is in a user namespace of its own (PrivateUsers=); run as root, or from \
                 inside the unit (ExecReload=)"
            ),
            Unreachable::PermissionDenied { pid, owner } => {
                let owner = owner.map(|u| format!(" (uid {u})")).unwrap_or_default();
                write!(
                    f,
                    "permission denied: cannot look for the control socket of pid {pid} in /proc/{pid}/fd; \
                     run as root or as the service's user{owner}"
                )
            }
            Unreachable::NotSockherd { pid, exe } => {
                let exe = exe.as_ref().map(|e| format!(" ({})", e.display())).unwrap_or_default();
                write!(f, "pid {pid}{exe} is not a sockherd supervisor (`sockherd run`)")
            }
            Unreachable::NoControlSocket { pid, exe } => write!(
                f,
                "pid {pid} runs sockherd ({}) but holds no control socket: it is not `sockherd run`, or another \
                 sockherd version (restart the service after upgrading sockherd)",
                exe.display()
            ),
            Unreachable::Failed { pid, why } => write!(f, "the control socket of pid {pid} {why}"),
        }
    }
}

impl std::error::Error for Unreachable {}

/// The supervisor took the request (it was sent whole) but gave no answer within the client's
/// timeout: the request may still be carried out.
#[derive(Debug)]
pub struct NoAnswer {
    pub pid: Pid,
    pub timeout: Duration,
}

impl fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the supervisor (pid {}) did not answer within {:?}", self.pid, self.timeout)
    }
}

impl std::error::Error for NoAnswer {}

fn is_sockherd_exe(pid: Pid, exe: &Path) -> bool {
    let name = exe.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // A binary replaced by an upgrade shows as "sockherd (deleted)".
    let name = name.strip_suffix(" (deleted)").unwrap_or(&name);
    if name == "sockherd" {
        return true;
    }
    match (std::fs::metadata(format!("/proc/{pid}/exe")), std::fs::metadata("/proc/self/exe")) {
        (Ok(theirs), Ok(ours)) => theirs.dev() == ours.dev() && theirs.ino() == ours.ino(),
        _ => false,
    }
}

/// Connects to the control socket of the supervisor with pid `pid`, found through `/proc` and
/// checked with SO_PEERCRED (see the module's doc).
pub fn connect(pid: Pid) -> Result<UnixStream, Unreachable> {
    if pid <= 0 {
        return Err(Unreachable::NoProcess { pid });
    }
    let mut last_error = None;
    // 1. The name a supervisor of our own unit uses.
    if let Some(base) = crate::runtime::private_base_of_client() {
        let path = crate::runtime::known_dir(&base, pid).join(SOCKET_NAME);
        if path.exists() {
            match connect_path(&path).and_then(|stream| verify_peer(pid, stream)) {
                Ok(stream) => return Ok(stream),
                Err(why) => last_error = Some(why),
            }
        }
    }
    // 2. What /proc says of the process.
    if !Path::new(&format!("/proc/{pid}")).exists() {
        return Err(match last_error {
            Some(why) => Unreachable::Failed { pid, why },
            None => Unreachable::NoProcess { pid },
        });
    }
    let inodes = match procfs::socket_inodes(pid) {
        Ok(inodes) => inodes,
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(Unreachable::NoProcess { pid }),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            let owner = std::fs::metadata(format!("/proc/{pid}")).ok().map(|m| m.uid());
            return Err(Unreachable::PermissionDenied { pid, owner });
        }
        Err(e) => return Err(Unreachable::Failed { pid, why: format!("cannot be looked for: /proc/{pid}/fd: {e}") }),
    };
    let candidates = control_candidates(&inodes, || std::fs::read(format!("/proc/{pid}/net/unix")).unwrap_or_default());
    for path in &candidates {
        match connect_in_root_of(pid, path).and_then(|stream| verify_peer(pid, stream)) {
            Ok(stream) => return Ok(stream),
            Err(why) => last_error = Some(why),
        }
    }
    if let Some(why) = last_error {
        return Err(Unreachable::Failed { pid, why });
    }
    match std::fs::read_link(format!("/proc/{pid}/exe")) {
        Ok(exe) if is_sockherd_exe(pid, &exe) => Err(Unreachable::NoControlSocket { pid, exe }),
        Ok(exe) => Err(Unreachable::NotSockherd { pid, exe: Some(exe) }),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            let owner = std::fs::metadata(format!("/proc/{pid}")).ok().map(|m| m.uid());
            Err(Unreachable::PermissionDenied { pid, owner })
        }
        Err(_) => Err(Unreachable::NotSockherd { pid, exe: None }),
    }
}

/// How many times the socket table is read before a supervisor counts as holding no control
/// socket.
const TABLE_READS: usize = 4;

/// The control socket paths among the listening unix sockets `inodes` of a process, from its
/// network namespace's socket table (`read_table`: /proc/PID/net/unix). The kernel hands that
/// table out in pieces, one read at a time, and a socket closed meanwhile shifts what follows:
/// on a host where unix sockets come and go, one reading can miss a socket that is there all
/// along. A reading without one is read again, [`TABLE_READS`] times in all, before it counts.
fn control_candidates(inodes: &[u64], mut read_table: impl FnMut() -> Vec<u8>) -> Vec<PathBuf> {
    for _ in 0..TABLE_READS {
        let candidates: Vec<PathBuf> = procfs::parse_net_unix(&read_table())
            .into_iter()
            .filter(|s| s.listening && s.stream && inodes.contains(&s.inode))
            .filter_map(|s| s.path)
            .filter(|p| is_control_path(p))
            .collect();
        if !candidates.is_empty() {
            return candidates;
        }
    }
    Vec::new()
}

/// `.../sockherd-<...>/control`.
fn is_control_path(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == SOCKET_NAME)
        && path.parent().and_then(Path::file_name).is_some_and(|d| d.to_string_lossy().starts_with(DIR_PREFIX))
}

/// Connects to `path` as the process `pid` sees it: through its root (`/proc/PID/root`), which
/// is its mount namespace (PrivateTmp=, a chroot). The directory is opened first and the socket
/// reached through `/proc/self/fd/N/`, which keeps the path short whatever the directory.
fn connect_in_root_of(pid: Pid, path: &Path) -> Result<UnixStream, String> {
    let in_root = Path::new(&format!("/proc/{pid}/root")).join(path.strip_prefix("/").unwrap_or(path));
    connect_path(&in_root).map_err(|e| e.replace(&in_root.display().to_string(), &path.display().to_string()))
}

/// Connects to the socket file `path`: its directory is opened first and the socket reached
/// through `/proc/self/fd/N/`, which keeps the address short whatever the directory.
fn connect_path(path: &Path) -> Result<UnixStream, String> {
    let dir = path.parent().ok_or("has no directory")?;
    let handle = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
        .map_err(|e| format!("{}: cannot open its directory: {e}", path.display()))?;
    let name = path.file_name().ok_or("has no name")?;
    let via = Path::new(&format!("/proc/self/fd/{}", handle.as_raw_fd())).join(name);
    UnixStream::connect(&via).map_err(|e| format!("{}: connect failed: {e}", path.display()))
}

/// The server must be the process itself (SO_PEERCRED's pid is the one that called listen(2)),
/// running as root, as our own user, or as the process's owner (as /proc shows it, when it
/// shows it).
fn verify_peer(pid: Pid, stream: UnixStream) -> Result<UnixStream, String> {
    let (peer_pid, peer_uid) = sys::peer_uid(stream.as_fd()).map_err(|e| format!("SO_PEERCRED failed: {e}"))?;
    if peer_pid != pid {
        return Err(format!("is served by pid {peer_pid}, not by pid {pid}: not trusted"));
    }
    let owner = std::fs::metadata(format!("/proc/{pid}")).ok().map(|m| m.uid());
    if peer_uid != 0 && peer_uid != sys::geteuid() && Some(peer_uid) != owner {
        return Err(format!("is served as uid {peer_uid}, neither root nor the owner of pid {pid}: not trusted"));
    }
    Ok(stream)
}

/// Client side: sends `request` to the supervisor with pid `pid` and returns its answer. A
/// busy supervisor is asked again until `timeout`. Errors: [`Unreachable`] (downcast it) when
/// there is no supervisor to ask, [`NoAnswer`] when it took the request and did not answer.
pub fn request(pid: Pid, request: Request, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut stream = connect(pid).map_err(anyhow::Error::new)?;
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        stream.set_read_timeout(Some(left))?;
        stream.write_all(format!("{}\n", request.line()).as_bytes()).context("failed to send the request")?;
        let mut answer = String::new();
        match stream.read_to_string(&mut answer) {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(NoAnswer { pid, timeout }.into());
            }
            Err(e) => return Err(e).context("failed to read the supervisor's answer"),
        }
        if let Ok(Answer::Busy(message)) = parse_answer(&answer) {
            if Instant::now() + BUSY_RETRY >= deadline {
                return Err(anyhow!("the supervisor (pid {pid}) stayed busy for {timeout:?}: {message}"));
            }
            std::thread::sleep(BUSY_RETRY);
            continue;
        }
        return Ok(answer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket table as /proc/PID/net/unix gives it, with the control socket (inode 31337)
    /// in it or not.
    fn table(with_control: bool) -> Vec<u8> {
        let mut text = String::from("Num       RefCount Protocol Flags    Type St Inode Path\n");
        text += "0000000000000000: 00000002 00000000 00010000 0001 01 4711 /run/app.sock\n";
        if with_control {
            text += "0000000000000000: 00000002 00000000 00010000 0001 01 31337 /run/app/sockherd-1-ab/control\n";
        }
        text.into_bytes()
    }

    #[test]
    fn a_table_that_missed_the_control_socket_is_read_again() {
        let inodes = [4711, 31337];
        let control = vec![PathBuf::from("/run/app/sockherd-1-ab/control")];
        // Found at once: one reading.
        let mut reads = 0;
        let found = control_candidates(&inodes, || {
            reads += 1;
            table(true)
        });
        assert_eq!((found, reads), (control.clone(), 1));
        // Missed by the first reading (a socket closed while it was read), there in the next.
        let mut reads = 0;
        let found = control_candidates(&inodes, || {
            reads += 1;
            table(reads > 1)
        });
        assert_eq!((found, reads), (control.clone(), 2));
        // Missed by every reading: none, after TABLE_READS of them.
        let mut reads = 0;
        let found = control_candidates(&inodes, || {
            reads += 1;
            table(false)
        });
        assert_eq!((found, reads), (Vec::new(), TABLE_READS));
        // In the table but not among the process's sockets: not its control socket.
        assert_eq!(control_candidates(&[4711], || table(true)), Vec::<PathBuf>::new());
    }

    #[test]
    fn requests() {
        assert_eq!(parse_request(b"reload"), Ok(Request::Reload));
        assert_eq!(parse_request(b" status \r"), Ok(Request::Status));
        assert_eq!(parse_request(b"join"), Ok(Request::Join));
        let err = parse_request(b"\x1b[2Jrm -rf").unwrap_err();
        assert!(err.contains("unknown request '?[2Jrm -rf'"), "{err}");
    }

    #[test]
    fn answers() {
        assert_eq!(parse_answer("ok generation 2 serves\n"), Ok(Answer::Ok("generation 2 serves".into())));
        assert_eq!(parse_answer("error boom"), Ok(Answer::Error("boom".into())));
        assert_eq!(
            parse_answer("error busy: too many; try again\n"),
            Ok(Answer::Busy("busy: too many; try again".into()))
        );
        assert!(parse_answer("ok a\nerror b").is_err());
        assert!(parse_answer("{\"pid\":1}").is_err());
    }

    #[test]
    fn control_paths() {
        assert!(is_control_path(Path::new("/run/app/sockherd-12-00ff/control")));
        assert!(!is_control_path(Path::new("/run/app/control")));
        assert!(!is_control_path(Path::new("/run/app/sockherd-12-00ff/notify.1")));
    }
}
