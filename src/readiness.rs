//! Knowing when a generation really serves. Old and new generations share the public sockets,
//! so probing those cannot tell who answered; every strategy here is private to one generation:
//!
//! - `notify`: the generation gets its own NOTIFY_SOCKET; `READY=1` from one of its processes.
//! - `probe[:PATH]`: the generation gets one more listening socket (a unix socket in the
//!   private runtime directory, named `sockherd-probe`: no other user can reach the app
//!   through it) that only it serves; ready when `GET PATH` on it is answered (any response
//!   for a bare `probe`, 2xx/3xx when a PATH is given).
//! - `booted` (gunicorn): every worker of the master has loaded the app. gunicorn's own
//!   READY=1 comes from the arbiter before any worker imports the app (unless preload_app); a
//!   worker touches its heartbeat file (`wgunicorn-*`, which the arbiter watches for timeouts)
//!   only once `load_wsgi` and `post_worker_init` ran, from its serving loop. No socket is
//!   added: with a second listener gunicorn's sync workers take a slower accept path.
//! - `delay:SECS`: still running after SECS (Server::Starter's way; a last resort).
//! - `cmd:COMMAND`: `/bin/sh -c COMMAND` exits 0 (retried every 500 ms).
//! - `workers[:N]`: the master has forked N processes of its group (default 1): for servers
//!   that neither notify nor accept an extra socket (nginx closes inherited sockets its config
//!   does not `listen` on, the probe's included).
//! - `exec`: as soon as the command was executed.

use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::flavor::Flavor;
use crate::sys::{self, Pid};
use crate::{log, notify, procfs, protocol};

/// Name of the probe socket in LISTEN_FDNAMES.
pub const PROBE_SOCKET_NAME: &str = "sockherd-probe";
const PROBE_RETRY: Duration = Duration::from_millis(200);
const PROBE_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
const CMD_RETRY: Duration = Duration::from_millis(500);
const WORKERS_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Exec,
    Notify,
    Probe { path: Option<String> },
    Delay(Duration),
    Cmd(String),
    Workers(usize),
    Booted,
}

impl Readiness {
    /// What each server supports best: puma sends READY=1 after its workers boot (with
    /// ruby-sd-notify); gunicorn's READY=1 comes before its app is imported, but its workers'
    /// heartbeats tell when they loaded it; unicorn has no sd_notify and is probed; a plain
    /// systemd-style server is expected to speak sd_notify; nginx closes every inherited socket
    /// its config does not name, a probe's too, so its master's workers tell.
    pub fn default_for(flavor: Flavor) -> Readiness {
        match flavor {
            Flavor::Puma | Flavor::Systemd => Readiness::Notify,
            Flavor::Gunicorn => Readiness::Booted,
            Flavor::Unicorn => Readiness::Probe { path: None },
            Flavor::Nginx => Readiness::Workers(1),
            Flavor::ServerStarter | Flavor::Einhorn => Readiness::Delay(Duration::from_secs(1)),
        }
    }
}

impl Readiness {
    /// Refuses a strategy the server cannot satisfy.
    pub fn check_flavor(&self, flavor: Flavor) -> Result<(), String> {
        if *self == Readiness::Booted && flavor != Flavor::Gunicorn {
            return Err(format!(
                "--ready booted reads gunicorn's worker heartbeats; {flavor} has none: use probe, notify, workers or cmd:"
            ));
        }
        Ok(())
    }
}

impl fmt::Display for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Readiness::Exec => f.write_str("exec"),
            Readiness::Notify => f.write_str("notify"),
            Readiness::Probe { path: None } => f.write_str("probe"),
            Readiness::Probe { path: Some(p) } => write!(f, "probe:{p}"),
            Readiness::Delay(d) => write!(f, "delay:{}", d.as_secs_f64()),
            Readiness::Cmd(c) => write!(f, "cmd:{c}"),
            Readiness::Workers(1) => f.write_str("workers"),
            Readiness::Workers(n) => write!(f, "workers:{n}"),
            Readiness::Booted => f.write_str("booted"),
        }
    }
}

impl FromStr for Readiness {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (kind, arg) = match text.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (text, None),
        };
        match (kind, arg) {
            ("exec", None) => Ok(Readiness::Exec),
            ("notify", None) => Ok(Readiness::Notify),
            ("probe", None) => Ok(Readiness::Probe { path: None }),
            ("probe", Some(path)) if path.starts_with('/') && !path.contains(char::is_whitespace) => {
                Ok(Readiness::Probe { path: Some(path.to_string()) })
            }
            ("probe", Some(path)) => Err(format!("probe path '{path}' must start with '/' and contain no spaces")),
            ("delay", Some(secs)) => match secs.parse::<f64>() {
                Ok(s) if s.is_finite() && (0.0..86400.0).contains(&s) => {
                    Ok(Readiness::Delay(Duration::from_secs_f64(s)))
                }
                _ => Err(format!("delay '{secs}' is not a number of seconds")),
            },
            ("cmd", Some(command)) if !command.trim().is_empty() => Ok(Readiness::Cmd(command.to_string())),
            ("workers", None) => Ok(Readiness::Workers(1)),
            ("workers", Some(n)) => match n.parse::<usize>() {
                Ok(n) if (1..=10_000).contains(&n) => Ok(Readiness::Workers(n)),
                _ => Err(format!("workers '{n}' is not a number of worker processes (1 or more)")),
            },
            ("booted", None) => Ok(Readiness::Booted),
            ("exec" | "notify" | "booted", Some(_)) => Err(format!("'{kind}' takes no argument")),
            ("delay" | "cmd", _) => Err(format!("'{kind}' needs an argument, e.g. delay:2 or cmd:/usr/bin/check")),
            _ => Err(format!(
                "unknown readiness '{text}' (expected notify, probe, probe:/PATH, delay:SECS, cmd:COMMAND, workers[:N], booted or exec)"
            )),
        }
    }
}

/// What a generation needs to be prepared before it is spawned for its readiness strategy.
pub struct Prepared {
    pub check: Check,
    /// The probe socket to hand to the generation as its last inherited fd.
    pub probe_socket: Option<OwnedFd>,
    /// The generation's private NOTIFY_SOCKET, when it has one.
    pub inbox: Option<Inbox>,
}

/// A generation's private NOTIFY_SOCKET: a datagram socket in the runtime directory that only
/// this generation is told about. It carries READY=1 for the `notify` strategy, and STATUS= and
/// WATCHDOG=1 whatever the strategy. The file is removed when it is dropped.
pub struct Inbox {
    socket: UnixDatagram,
    path: PathBuf,
}

impl Inbox {
    pub fn bind(runtime_dir: &Path, number: u64) -> Result<Inbox> {
        let path = runtime_dir.join(format!("notify.{number}"));
        let _ = std::fs::remove_file(&path);
        let socket =
            UnixDatagram::bind(&path).with_context(|| format!("failed to create notify socket {}", path.display()))?;
        sys::set_passcred(socket.as_fd()).context("failed to enable SO_PASSCRED on the notify socket")?;
        // Kernels before 6.5 have no SO_PASSPIDFD: senders are then checked by pid.
        let _ = sys::set_passpidfd(socket.as_fd());
        socket.set_nonblocking(true).context("failed to make the notify socket non-blocking")?;
        Ok(Inbox { socket, path })
    }

    /// The notify socket of a generation that a re-executed supervisor took over.
    pub fn adopt(fd: std::os::fd::OwnedFd, runtime_dir: &Path, number: u64) -> Result<Inbox> {
        let socket = UnixDatagram::from(fd);
        socket.set_nonblocking(true).context("failed to make the handed-over notify socket non-blocking")?;
        Ok(Inbox { socket, path: runtime_dir.join(format!("notify.{number}")) })
    }

    pub fn socket(&self) -> &UnixDatagram {
        &self.socket
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The running readiness check of one generation.
pub enum Check {
    Exec,
    /// Ready on READY=1 in the generation's [`Inbox`].
    Notify,
    Probe {
        /// The probe socket's file in the runtime directory (removed when the check is dropped).
        socket: PathBuf,
        path: Option<String>,
        attempt: Option<ProbeAttempt>,
        next_at: Instant,
        last_error: String,
    },
    Delay {
        at: Instant,
    },
    Cmd {
        command: String,
        running: Option<Pid>,
        next_at: Instant,
        last_error: String,
    },
    Workers {
        min: usize,
        seen: usize,
        next_at: Instant,
    },
    /// gunicorn: every worker of the master has loaded the app (see the module's doc).
    Booted {
        /// The workers seen at the last look, and whether each had booted.
        workers: Vec<(Pid, bool)>,
        next_at: Instant,
        last_error: String,
    },
}

pub struct ProbeAttempt {
    stream: UnixStream,
    response: Vec<u8>,
    deadline: Instant,
}

/// What a check concluded after an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Pending,
    Ready,
}

impl Check {
    /// Sets up the strategy for generation `number` before it is spawned: a private notify socket
    /// in `runtime_dir` (for `notify`, or whenever `inbox` asks for one), or a probe socket.
    pub fn prepare(readiness: &Readiness, number: u64, runtime_dir: &Path, inbox: bool) -> Result<Prepared> {
        let now = Instant::now();
        let inbox = match (readiness, inbox) {
            (Readiness::Notify, _) | (_, true) => Some(Inbox::bind(runtime_dir, number)?),
            _ => None,
        };
        let (check, probe_socket) = match readiness {
            Readiness::Exec => (Check::Exec, None),
            Readiness::Notify => (Check::Notify, None),
            Readiness::Probe { path } => {
                // In the private runtime directory: only the service's user reaches the app
                // through it (a loopback TCP port would let any local user in, past the
                // SocketMode= or IPAddressAllow= of the socket units).
                let socket = runtime_dir.join(format!("probe.{number}"));
                let _ = std::fs::remove_file(&socket);
                let listener = UnixListener::bind(&socket)
                    .with_context(|| format!("failed to bind the readiness probe socket {}", socket.display()))?;
                let check = Check::Probe {
                    socket,
                    path: path.clone(),
                    attempt: None,
                    next_at: now,
                    last_error: "no answer yet".into(),
                };
                (check, Some(listener.into()))
            }
            Readiness::Delay(delay) => (Check::Delay { at: now + *delay }, None),
            Readiness::Workers(min) => (Check::Workers { min: *min, seen: 0, next_at: now }, None),
            Readiness::Booted => {
                (Check::Booted { workers: Vec::new(), next_at: now, last_error: "no worker yet".into() }, None)
            }
            Readiness::Cmd(command) => (
                Check::Cmd { command: command.clone(), running: None, next_at: now, last_error: "not run yet".into() },
                None,
            ),
        };
        Ok(Prepared { check, probe_socket, inbox })
    }

    /// The check of a generation that already serves, for a re-executed supervisor: only its
    /// liveness probe (the `probe` strategy's socket, which the generation holds) is used again.
    pub fn resumed(readiness: &Readiness, number: u64, runtime_dir: &Path) -> Check {
        let now = Instant::now();
        match readiness {
            Readiness::Exec => Check::Exec,
            Readiness::Notify => Check::Notify,
            Readiness::Probe { path } => Check::Probe {
                socket: runtime_dir.join(format!("probe.{number}")),
                path: path.clone(),
                attempt: None,
                next_at: now,
                last_error: "no answer yet".into(),
            },
            Readiness::Delay(_) => Check::Delay { at: now },
            Readiness::Workers(min) => Check::Workers { min: *min, seen: 0, next_at: now },
            Readiness::Booted => Check::Booted { workers: Vec::new(), next_at: now, last_error: String::new() },
            Readiness::Cmd(command) => {
                Check::Cmd { command: command.clone(), running: None, next_at: now, last_error: String::new() }
            }
        }
    }

    /// The descriptor to wait on, if the check currently waits for one.
    pub fn poll_fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Check::Probe { attempt: Some(a), .. } => Some(a.stream.as_fd()),
            _ => None,
        }
    }

    /// When the check wants to act next without an event (retry, delay). `exec` needs none: the
    /// supervisor makes a generation with it ready as soon as it is spawned.
    pub fn next_timer(&self) -> Option<Instant> {
        match self {
            Check::Probe { attempt: Some(a), .. } => Some(a.deadline),
            Check::Probe { attempt: None, next_at, .. } => Some(*next_at),
            Check::Delay { at } => Some(*at),
            Check::Cmd { running: None, next_at, .. } => Some(*next_at),
            Check::Workers { next_at, .. } | Check::Booted { next_at, .. } => Some(*next_at),
            _ => None,
        }
    }

    /// Advances timers: starts probe attempts and check commands when due. `pid` is the
    /// generation's master; `number` its generation number.
    pub fn on_timer(&mut self, now: Instant, pid: Pid, number: u64) -> Verdict {
        match self {
            Check::Exec => Verdict::Ready,
            Check::Delay { at } => {
                if now >= *at {
                    Verdict::Ready
                } else {
                    Verdict::Pending
                }
            }
            Check::Probe { socket, path, attempt, next_at, last_error } => {
                if let Some(a) = attempt
                    && now >= a.deadline
                {
                    *last_error = format!("probe request got no answer within {PROBE_ATTEMPT_TIMEOUT:?}");
                    *attempt = None;
                    *next_at = now;
                }
                if attempt.is_none() && now >= *next_at {
                    match start_probe(socket, path.as_deref().unwrap_or("/")) {
                        Ok(a) => *attempt = Some(a),
                        Err(e) => {
                            *last_error = format!("probe connection to {} failed: {e}", socket.display());
                            *next_at = now + PROBE_RETRY;
                        }
                    }
                }
                Verdict::Pending
            }
            Check::Cmd { command, running, next_at, last_error } => {
                if running.is_none() && now >= *next_at {
                    match spawn_check_command(command, pid, number) {
                        Ok(child) => *running = Some(child),
                        Err(e) => {
                            *last_error = format!("failed to run readiness command: {e}");
                            *next_at = now + CMD_RETRY;
                        }
                    }
                }
                Verdict::Pending
            }
            Check::Workers { min, seen, next_at } => {
                if now < *next_at {
                    return Verdict::Pending;
                }
                // The master's group, but the master.
                *seen = crate::generation::members(pid).unwrap_or_default().into_iter().filter(|&p| p != pid).count();
                *next_at = now + WORKERS_POLL;
                if *seen >= *min { Verdict::Ready } else { Verdict::Pending }
            }
            Check::Booted { workers, next_at, last_error } => {
                if now < *next_at {
                    return Verdict::Pending;
                }
                *next_at = now + WORKERS_POLL;
                let seen: Vec<(Pid, bool)> =
                    procfs::children(pid).iter().map(|w| (w.pid, gunicorn_worker_booted(w))).collect();
                // Ready once there are workers, all booted, and the same ones as at the last
                // look: the arbiter spawns its workers one after the other.
                let same = seen.iter().map(|(p, _)| p).eq(workers.iter().map(|(p, _)| p));
                let all_booted = !seen.is_empty() && seen.iter().all(|(_, booted)| *booted);
                let booted = seen.iter().filter(|(_, b)| *b).count();
                *last_error = match seen.len() {
                    0 => "no gunicorn worker yet".into(),
                    n => format!("{booted} of {n} gunicorn worker(s) had loaded the app"),
                };
                *workers = seen;
                if all_booted && same { Verdict::Ready } else { Verdict::Pending }
            }
            Check::Notify => Verdict::Pending,
        }
    }

    /// Handles the probe connection becoming readable.
    pub fn on_probe_readable(&mut self, now: Instant) -> Verdict {
        let Check::Probe { path, attempt, next_at, last_error, .. } = self else { return Verdict::Pending };
        let Some(a) = attempt else { return Verdict::Pending };
        let mut buf = [0u8; 1024];
        loop {
            match a.stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    a.response.extend_from_slice(&buf[..n]);
                    if a.response.windows(2).any(|w| w == b"\r\n") || a.response.len() > 4096 {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if !a.response.windows(2).any(|w| w == b"\r\n") {
                        return Verdict::Pending;
                    }
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    *last_error = format!("probe request failed: {e}");
                    break;
                }
            }
        }
        let status = parse_status(&a.response);
        *attempt = None;
        *next_at = now + PROBE_RETRY;
        match (status, path) {
            (Some(_), None) => Verdict::Ready,
            (Some(code), Some(_)) if (200..400).contains(&code) => Verdict::Ready,
            (Some(code), Some(p)) => {
                *last_error = format!("probe GET {p} answered {code}");
                Verdict::Pending
            }
            (None, _) => {
                if last_error.is_empty() || !last_error.starts_with("probe request failed") {
                    *last_error = "probe connection closed without an HTTP response".into();
                }
                Verdict::Pending
            }
        }
    }

    /// Handles the exit of a process we started; returns Some if it was this check's command.
    pub fn on_reaped(&mut self, pid: Pid, success: bool, now: Instant) -> Option<Verdict> {
        let Check::Cmd { running, next_at, last_error, .. } = self else { return None };
        if *running != Some(pid) {
            return None;
        }
        *running = None;
        if success {
            return Some(Verdict::Ready);
        }
        *last_error = "readiness command did not exit 0".into();
        *next_at = now + CMD_RETRY;
        Some(Verdict::Pending)
    }

    /// Why the check has not succeeded yet, for a failed reload's message.
    pub fn waiting_for(&self) -> String {
        match self {
            Check::Exec => "exec".into(),
            Check::Notify => "READY=1 on its NOTIFY_SOCKET never came".into(),
            Check::Cmd { command, running: Some(_), .. } => format!("readiness command `{command}` still running"),
            Check::Probe { last_error, .. } | Check::Cmd { last_error, .. } | Check::Booted { last_error, .. } => {
                last_error.clone()
            }
            Check::Delay { .. } => "the delay had not passed".into(),
            Check::Workers { min, seen, .. } => format!("{seen} of {min} worker process(es) running"),
        }
    }

    /// A check command still running, to be stopped with its generation.
    pub fn running_command(&self) -> Option<Pid> {
        match self {
            Check::Cmd { running, .. } => *running,
            _ => None,
        }
    }

    /// Starts a probe attempt now (a liveness check of a serving generation), unless one is in
    /// flight; its answer arrives like a readiness answer ([`Check::on_probe_readable`]).
    pub fn probe_now(&mut self, now: Instant) {
        if let Check::Probe { attempt, next_at, .. } = self {
            if attempt.as_ref().is_some_and(|a| now < a.deadline) {
                return;
            }
            *next_at = now;
            self.on_timer(now, 0, 0);
        }
    }

    pub fn is_probe(&self) -> bool {
        matches!(self, Check::Probe { .. })
    }
}

impl Drop for Check {
    fn drop(&mut self) {
        if let Check::Probe { socket, .. } = self {
            let _ = std::fs::remove_file(socket);
        }
    }
}

/// Whether a gunicorn worker has loaded the app: it touches its heartbeat file (`wgunicorn-*`,
/// deleted, open in the worker) from its serving loop only, after `load_wsgi` and
/// `post_worker_init`. The file is created by the arbiter before the fork, so its mtime is
/// then older than the worker. A heartbeat sets the mtime to CLOCK_MONOTONIC seconds (gunicorn
/// 22 and later: a date in 1970) or to the wall clock (older ones: later than the worker's
/// start, by more than a second to be sure of it).
pub fn gunicorn_worker_booted(worker: &procfs::Process) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{}/fd", worker.pid)) else { return false };
    for fd in fds.flatten() {
        let Ok(target) = std::fs::read_link(fd.path()) else { continue };
        if !target.file_name().is_some_and(|n| n.to_string_lossy().starts_with("wgunicorn-")) {
            continue;
        }
        let Ok(mtime) = std::fs::metadata(fd.path()).and_then(|m| m.modified()) else { continue };
        let Ok(since_epoch) = mtime.duration_since(std::time::SystemTime::UNIX_EPOCH) else { continue };
        if since_epoch < Duration::from_secs(1_000_000_000) {
            return true; // a monotonic heartbeat
        }
        return procfs::started_at(worker).is_some_and(|start| mtime > start + Duration::from_secs(1));
    }
    false
}

fn start_probe(socket: &Path, path: &str) -> std::io::Result<ProbeAttempt> {
    // A unix connect completes in the kernel even before the server accepts (one attempt at a
    // time never fills the backlog), so it does not stall the loop; the answer is then awaited
    // without blocking.
    let mut stream = UnixStream::connect(socket)?;
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: localhost\r\nUser-Agent: sockherd-probe\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    stream.set_nonblocking(true)?;
    Ok(ProbeAttempt { stream, response: Vec::new(), deadline: Instant::now() + PROBE_ATTEMPT_TIMEOUT })
}

fn parse_status(response: &[u8]) -> Option<u16> {
    let line = response.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

fn spawn_check_command(command: &str, pid: Pid, number: u64) -> std::io::Result<Pid> {
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(command)
        .env("SOCKHERD_GENERATION", number.to_string())
        .env("SOCKHERD_PID", pid.to_string())
        .stdin(std::process::Stdio::null())
        .process_group(0);
    // What systemd meant for sockherd (its sockets, its notify socket, its watchdog) is not the
    // check's: a check that speaks sd_listen_fds or sd_notify must not think it is the service.
    for (name, _) in std::env::vars_os() {
        if let Some(name) = name.to_str()
            && (protocol::is_socket_convention_var(name)
                || matches!(name, protocol::NOTIFY_SOCKET | protocol::WATCHDOG_USEC | protocol::WATCHDOG_PID)
                || crate::reexec::is_handover_var(name))
        {
            cmd.env_remove(name);
        }
    }
    let child = sys::spawn_clean(&mut cmd)?;
    Ok(child.id() as Pid)
}

/// One sd_notify datagram a process of a generation sent, accepted.
#[derive(Debug)]
pub struct NotifyMessage {
    pub sender: Option<Pid>,
    pub ready: bool,
    /// `STATUS=`, cleaned ([`notify::clean_text`]): one line, at most 1 KiB.
    pub status: Option<String>,
    pub watchdog: bool,
    /// `BARRIER=1`'s descriptor: the sender waits until it is closed, which tells it every
    /// message it sent before was processed. Drop the message once it was.
    pub barrier: Option<OwnedFd>,
}

/// Reads every pending datagram on a generation's notify socket and returns those a process
/// of the generation sent: the sender must be alive when its datagram is read (a process that
/// sent and exited cannot be told from any other), and in the process group `generation` (the
/// master's pid), or the master itself, or one of its descendants. Everything else is logged
/// and dropped, as are datagrams systemd would refuse (a NUL byte, 4,096 bytes or more). A
/// short-lived helper (`systemd-notify`) must wait for `BARRIER=1`, which keeps it alive until
/// its messages are read.
pub fn receive_notify(socket: &UnixDatagram, generation: Pid) -> Vec<NotifyMessage> {
    receive(socket, Some(generation))
}

fn receive(socket: &UnixDatagram, generation: Option<Pid>) -> Vec<NotifyMessage> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; notify::DATAGRAM_LIMIT];
    loop {
        let received = match sys::recv_notify(socket.as_fd(), &mut buf) {
            Ok(Some(received)) => received,
            Ok(None) => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                log::warn(format!("failed to read a notification: {e}")).emit();
                break;
            }
        };
        let sender = received.pid;
        let refuse = |why: String| {
            let from = sender.map(|p| format!("pid {p}")).unwrap_or_else(|| "an unknown sender".into());
            log::warn(format!("ignored a notification from {from}: {why}")).kind("denied").emit();
        };
        let assignments = match notify::parse_datagram(&buf[..received.len], received.full_len) {
            Ok(assignments) => assignments,
            Err(e) => {
                refuse(format!("it is {e}"));
                continue;
            }
        };
        if let Err(why) = check_sender(&received, generation) {
            refuse(why);
            continue;
        }
        // The first passed descriptor is BARRIER=1's; any other is closed right away.
        let mut passed = received.fds.into_iter();
        let mut message = NotifyMessage { sender, ready: false, status: None, watchdog: false, barrier: None };
        for (key, value) in assignments {
            match (key, value) {
                ("READY", "1") => message.ready = true,
                ("STATUS", text) => message.status = Some(notify::clean_text(text, notify::MAX_APP_TEXT)),
                ("WATCHDOG", "1") => message.watchdog = true,
                ("BARRIER", "1") => message.barrier = passed.next(),
                _ => {}
            }
        }
        out.push(message);
    }
    out
}

/// Whether the sender of `received` may speak for the generation whose master (and process
/// group) is `generation`: it must be alive now, and belong to it.
fn check_sender(received: &sys::Received, generation: Option<Pid>) -> std::result::Result<(), String> {
    let pid = received.pid.ok_or("the datagram carries no sender credentials")?;
    // A pidfd pins the sender: while it is unreaped, its pid is not reused, so what /proc says
    // of that pid is about the sender. Without SCM_PIDFD (kernels before 6.5) one is opened now.
    let opened;
    let pidfd = match &received.pidfd {
        Some(pidfd) => Some(pidfd),
        None => match sys::Pidfd::open(pid) {
            Ok(pidfd) => {
                opened = pidfd;
                Some(&opened)
            }
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Err(format!("pid {pid} already exited")),
            // Kernels before 5.3: /proc alone.
            Err(_) => None,
        },
    };
    // None for a zombie: it has exited, only its parent has not reaped it yet.
    let process = procfs::process(pid).ok_or_else(|| format!("pid {pid} already exited"))?;
    if let Some(master) = generation
        && process.pgid != master
        && pid != master
        && !procfs::descends_from(pid, master)
    {
        return Err(format!(
            "pid {pid} (process group {}) is not a process of the generation whose master is {master}",
            process.pgid
        ));
    }
    if pidfd.is_some_and(|p| !matches!(p.signal(0), Ok(true))) {
        return Err(format!("pid {pid} exited while it was checked"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!("notify".parse::<Readiness>().unwrap(), Readiness::Notify);
        assert_eq!("probe".parse::<Readiness>().unwrap(), Readiness::Probe { path: None });
        assert_eq!("probe:/health".parse::<Readiness>().unwrap(), Readiness::Probe { path: Some("/health".into()) });
        assert_eq!("delay:1.5".parse::<Readiness>().unwrap(), Readiness::Delay(Duration::from_millis(1500)));
        assert_eq!("cmd:true".parse::<Readiness>().unwrap(), Readiness::Cmd("true".into()));
        assert_eq!("workers".parse::<Readiness>().unwrap(), Readiness::Workers(1));
        assert_eq!("workers:4".parse::<Readiness>().unwrap(), Readiness::Workers(4));
        assert_eq!(Readiness::Workers(4).to_string(), "workers:4");
        assert_eq!("booted".parse::<Readiness>().unwrap(), Readiness::Booted);
        assert!("booted:2".parse::<Readiness>().is_err());
        assert!(Readiness::Booted.check_flavor(Flavor::Gunicorn).is_ok());
        assert!(Readiness::Booted.check_flavor(Flavor::Unicorn).unwrap_err().contains("gunicorn"));
        for bad in ["probe:health", "delay:x", "delay", "cmd:", "notify:1", "ready", "workers:0", "workers:x"] {
            assert!(bad.parse::<Readiness>().is_err(), "{bad}");
        }
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(parse_status(b"HTTP/1.0 302 Found\r\nLocation: /\r\n"), Some(302));
        assert_eq!(parse_status(b"HTTP/1.1 503\n"), Some(503));
        assert_eq!(parse_status(b"garbage"), None);
        assert_eq!(parse_status(b"FTP/1.0 200 OK\r\n"), None);
        assert_eq!(parse_status(b"HTTP/1.1 abc\r\n"), None);
        assert_eq!(parse_status(b""), None);
    }

    #[test]
    fn specs_print_as_they_parse() {
        for text in ["exec", "notify", "probe", "probe:/health", "delay:1.5", "delay:2", "cmd:test -e /run/ok"] {
            let parsed: Readiness = text.parse().unwrap();
            assert_eq!(parsed.to_string(), text);
        }
    }

    #[test]
    fn spec_errors_say_what_is_wrong() {
        for (bad, want) in [
            ("probe:health", "probe path 'health' must start with '/' and contain no spaces"),
            ("probe:/a b", "probe path '/a b' must start with '/' and contain no spaces"),
            ("delay:x", "delay 'x' is not a number of seconds"),
            ("delay:-1", "delay '-1' is not a number of seconds"),
            ("delay:86400", "delay '86400' is not a number of seconds"),
            ("delay:inf", "delay 'inf' is not a number of seconds"),
            ("delay", "'delay' needs an argument"),
            ("cmd", "'cmd' needs an argument"),
            ("cmd:  ", "'cmd' needs an argument"),
            ("exec:1", "'exec' takes no argument"),
            ("notify:1", "'notify' takes no argument"),
            ("booted:2", "'booted' takes no argument"),
            ("ready", "unknown readiness 'ready'"),
        ] {
            let err = bad.parse::<Readiness>().unwrap_err();
            assert!(err.starts_with(want), "{bad}: {err}");
        }
        assert_eq!("delay:0".parse::<Readiness>(), Ok(Readiness::Delay(Duration::ZERO)));
        assert_eq!("delay:86399".parse::<Readiness>(), Ok(Readiness::Delay(Duration::from_secs(86399))));
    }

    #[test]
    fn defaults_per_flavor() {
        let probe = Readiness::Probe { path: None };
        let delay = Readiness::Delay(Duration::from_secs(1));
        for (flavor, want) in [
            (Flavor::Systemd, Readiness::Notify),
            (Flavor::Puma, Readiness::Notify),
            (Flavor::Gunicorn, Readiness::Booted),
            (Flavor::Unicorn, probe.clone()),
            (Flavor::Nginx, Readiness::Workers(1)),
            (Flavor::ServerStarter, delay.clone()),
            (Flavor::Einhorn, delay),
        ] {
            assert_eq!(Readiness::default_for(flavor), want, "{flavor}");
        }
    }
}
