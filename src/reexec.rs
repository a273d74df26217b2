//! `sockherd reexec`: the supervisor replaces its own program with the binary installed now
//! (an upgraded `/usr/bin/sockherd`), same pid, without touching the generation that serves.
//!
//! What the supervisor holds crosses the exec in two ways. Descriptors stay open (FD_CLOEXEC is
//! cleared on exactly those): the public sockets, the control socket and its connections, the
//! serving generation's notify socket. Everything else is the [`State`], written as JSON into a
//! pipe whose read end the new image finds through [`STATE_ENV`]: the generation (number, pid,
//! release, cgroup, last STATUS=), the counters, the last reload's record. The new image parses
//! the same command line, then resumes from the state instead of binding sockets and spawning
//! generation 1.
//!
//! Only a quiet supervisor re-executes: one generation serving, no handoff in flight, no
//! request half read. A reexec asked for during a handoff waits for it to end.
//!
//! The state is versioned ([`STATE_VERSION`]). Before the exec the old image runs the new binary
//! in its check mode (`sockherd reexec-check VERSION`), which answers whether it reads that
//! version and what version it is; a binary that does not answer so is refused. An exec that
//! fails returns with nothing changed. A new image that cannot resume from the state after all
//! runs the old image again from the descriptor of its file it was handed ([`OLD_EXE`]), with
//! the reason, and the old image resumes and reports the failure.
//!
//! Signals are blocked from before the exec until the new image has installed its handlers:
//! a SIGTERM or SIGHUP sent meanwhile waits, it is neither lost nor fatal.

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::log;
use crate::sys::{self, Pid};

/// The version of [`State`]'s layout this build writes and reads.
pub const STATE_VERSION: u64 = 1;
/// The oldest state version this build reads.
pub const STATE_VERSION_MIN: u64 = 1;

/// `<state fd>` or `<state fd>,<old image fd>`: set for the new image only, never passed on to a
/// generation.
pub const STATE_ENV: &str = "SOCKHERD_REEXEC_STATE";
/// Set when a new image could not resume and ran the old one again: why.
pub const FAILED_ENV: &str = "SOCKHERD_REEXEC_FAILED";
/// The handover's own variables: what one image tells the next. A generation, a readiness check
/// and a binary's check never get them, and the next image gets the ones set for it, never
/// those this image was handed. (Every other child goes without them because [`take_handed`]
/// removes them from our environment at start.)
const HANDOVER_VARS: [&str; 2] = [STATE_ENV, FAILED_ENV];

/// Whether `name` is one of the handover's own variables ([`HANDOVER_VARS`]).
pub fn is_handover_var(name: &str) -> bool {
    HANDOVER_VARS.contains(&name)
}
/// The state's first line.
const MAGIC: &str = "sockherd-reexec-state";
/// How long the new binary's check mode may take at most. The event loop waits for it, so with
/// systemd's watchdog on, a quarter of its interval at most ([`check_timeout`]).
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the check may block the supervisor: [`CHECK_TIMEOUT`], and no more than a quarter
/// of the watchdog's interval, so that a hanging binary never costs a ping.
pub fn check_timeout(watchdog: Option<Duration>) -> Duration {
    watchdog.map_or(CHECK_TIMEOUT, |interval| (interval / 4).min(CHECK_TIMEOUT))
}
/// The check mode's answer starts with this.
const ACCEPTS: &str = "accepts";

/// `sockherd 0.1.0`, with ` (build LABEL)` when the binary was stamped
/// (`objcopy --update-section .sockherd_build=FILE`, see [`sys::build_label`]).
pub fn version() -> String {
    let label = sys::build_label();
    let end = label.iter().position(|&b| b == 0).unwrap_or(label.len());
    let label = String::from_utf8_lossy(&label[..end]);
    let label = label.trim();
    if label.is_empty() {
        format!("sockherd {}", env!("CARGO_PKG_VERSION"))
    } else {
        format!("sockherd {} (build {label})", env!("CARGO_PKG_VERSION"))
    }
}

/// The path this process's binary was started from, which a plain `reexec` runs again (what is
/// installed there now):
/// - our `argv[0]`, when it leads to this very file: as given when it is a path (made absolute),
///   else the first match in PATH, as the shell or systemd found it. An install through a
///   symlink (`/usr/local/bin/sockherd` -> `/opt/sockherd-1.2/sockherd`) so re-executes what the
///   link points to now, not the old target;
/// - else `/proc/self/exe`, without the " (deleted)" the kernel appends once that file was
///   replaced (an upgrade renames a new file over it; an image run again from a descriptor of the
///   old file, after a failed takeover, reads so at once).
pub fn installed_exe() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let started = started_as(
        std::env::args_os().next(),
        Path::new("/proc/self/exe"),
        std::env::current_dir().ok().as_deref(),
        std::env::var_os("PATH").as_deref(),
    );
    Some(started.unwrap_or_else(|| without_deleted(&exe)))
}

/// Where `argv0` leads to the file `exe` leads to: a path with a slash (relative ones from
/// `cwd`), made absolute without `.` parts; a bare name by `path` as execvp searches it (PATH's
/// directories in order, an empty entry meaning `cwd`; the first executable file of that name).
fn started_as(
    argv0: Option<OsString>,
    exe: &Path,
    cwd: Option<&Path>,
    path: Option<&std::ffi::OsStr>,
) -> Option<PathBuf> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let argv0 = PathBuf::from(argv0?);
    let executable = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    let candidate = if argv0.as_os_str().as_bytes().contains(&b'/') {
        if argv0.is_absolute() { argv0 } else { cwd?.join(argv0) }
    } else {
        std::env::split_paths(path?)
            .filter_map(|dir| if dir.as_os_str().is_empty() { cwd.map(Path::to_path_buf) } else { Some(dir) })
            .map(|dir| dir.join(&argv0))
            .find(|p| executable(p))?
    };
    let candidate = std::path::absolute(&candidate).ok()?;
    let (named, running) = (std::fs::metadata(&candidate).ok()?, std::fs::metadata(exe).ok()?);
    ((named.dev(), named.ino()) == (running.dev(), running.ino())).then_some(candidate)
}

fn without_deleted(exe: &Path) -> PathBuf {
    let bytes = exe.as_os_str().as_bytes();
    let bytes = bytes.strip_suffix(b" (deleted)").unwrap_or(bytes);
    PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
}

// ----- the state ---------------------------------------------------------------------------------

/// A public socket as handed over: its descriptor and what [`crate::socket::Socket`] knows
/// beyond what the descriptor tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketState {
    pub fd: RawFd,
    pub name: String,
    /// `activated`, `stored` or `bound`.
    pub origin: String,
    /// A unix socket file we created: path, device, inode.
    pub created: Option<(PathBuf, u64, u64)>,
}

/// A control connection as handed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnState {
    pub fd: RawFd,
    pub uid: u32,
    /// What was read of its request so far.
    pub buf: Vec<u8>,
    /// It asked for the reexec and waits for its answer.
    pub requester: bool,
}

/// The serving generation as handed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationState {
    pub number: u64,
    pub pid: Pid,
    pub release: Option<PathBuf>,
    /// CLOCK_MONOTONIC, microseconds (the clock `Instant` reads, which the exec does not reset).
    pub started_usec: u64,
    pub app_status: Option<String>,
    pub cgroup: Option<PathBuf>,
    /// Its private NOTIFY_SOCKET.
    pub inbox_fd: Option<RawFd>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastReloadState {
    pub at_usec: u64,
    pub ok: bool,
    pub message: String,
    pub took_usec: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsState {
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub queue_peak_max: Option<u32>,
}

/// Everything a re-executed supervisor needs beyond its command line and environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// The pid it was written for: a state found by any other process is not its own.
    pub pid: Pid,
    /// The old image's [`version`].
    pub from_version: String,
    pub runtime_dir: PathBuf,
    pub control_listener: RawFd,
    pub conns: Vec<ConnState>,
    pub sockets: Vec<SocketState>,
    pub generation: GenerationState,
    pub next_number: u64,
    pub next_handoff: u64,
    pub last_reload: Option<LastReloadState>,
    /// What a `join` answers about the last reload signal.
    pub latest_signal: Option<String>,
    pub metrics: MetricsState,
    /// How many times this supervisor was re-executed before.
    pub reexecs: u64,
    /// The old image's command line, to run it again with if the new one cannot resume.
    pub argv: Vec<OsString>,
    /// The path the supervisor was first started from, which the next reexec without a binary
    /// runs again (None in a state that predates it: the new image's own path then).
    pub exe: Option<PathBuf>,
    /// CLOCK_MONOTONIC, microseconds: until when the supervisor pings the watchdog by itself
    /// after the last handoff (None when it does not, and in a state that predates it).
    pub cover_until_usec: Option<u64>,
}

/// Microseconds of CLOCK_MONOTONIC at `at`, past or future (a deadline crosses too).
pub fn instant_usec(at: Instant) -> u64 {
    let (now, now_usec) = (Instant::now(), sys::monotonic_usec());
    if at >= now {
        now_usec.saturating_add((at - now).as_micros() as u64)
    } else {
        now_usec.saturating_sub((now - at).as_micros() as u64)
    }
}

/// The instant CLOCK_MONOTONIC reads (or read) `usec`; now, if that instant cannot be
/// represented.
pub fn usec_instant(usec: u64) -> Instant {
    let (now, now_usec) = (Instant::now(), sys::monotonic_usec());
    if usec >= now_usec {
        now.checked_add(Duration::from_micros(usec - now_usec)).unwrap_or(now)
    } else {
        now.checked_sub(Duration::from_micros(now_usec - usec)).unwrap_or(now)
    }
}

fn path_bytes(path: &Path) -> Value {
    json!(path.as_os_str().as_bytes())
}

fn opt_path(path: &Option<PathBuf>) -> Value {
    path.as_deref().map(path_bytes).unwrap_or(Value::Null)
}

impl State {
    pub fn encode(&self) -> String {
        let value = json!({
            "version": STATE_VERSION,
            "pid": self.pid,
            "from_version": self.from_version,
            "runtime_dir": path_bytes(&self.runtime_dir),
            "control_listener": self.control_listener,
            "conns": self.conns.iter().map(|c| json!({
                "fd": c.fd, "uid": c.uid, "buf": c.buf, "requester": c.requester,
            })).collect::<Vec<_>>(),
            "sockets": self.sockets.iter().map(|s| json!({
                "fd": s.fd,
                "name": s.name,
                "origin": s.origin,
                "created": s.created.as_ref().map(|(p, dev, ino)| json!({"path": path_bytes(p), "dev": dev, "ino": ino})),
            })).collect::<Vec<_>>(),
            "generation": {
                "number": self.generation.number,
                "pid": self.generation.pid,
                "release": opt_path(&self.generation.release),
                "started_usec": self.generation.started_usec,
                "app_status": self.generation.app_status,
                "cgroup": opt_path(&self.generation.cgroup),
                "inbox_fd": self.generation.inbox_fd,
            },
            "next_number": self.next_number,
            "next_handoff": self.next_handoff,
            "last_reload": self.last_reload.as_ref().map(|r| json!({
                "at_usec": r.at_usec, "ok": r.ok, "message": r.message, "took_usec": r.took_usec,
            })),
            "latest_signal": self.latest_signal,
            "metrics": {
                "reloads_ok": self.metrics.reloads_ok,
                "reloads_failed": self.metrics.reloads_failed,
                "queue_peak_max": self.metrics.queue_peak_max,
            },
            "reexecs": self.reexecs,
            "argv": self.argv.iter().map(|a| json!(a.as_bytes())).collect::<Vec<_>>(),
            "exe": opt_path(&self.exe),
            "cover_until_usec": self.cover_until_usec,
        });
        format!("{MAGIC} {STATE_VERSION}\n{value}\n")
    }

    /// Parses a state written by [`State::encode`] of this or an older accepted version.
    pub fn decode(text: &str) -> Result<State, String> {
        let (head, body) = text.split_once('\n').ok_or("no header line")?;
        let version = head.strip_prefix(MAGIC).and_then(|v| v.trim().parse::<u64>().ok()).ok_or_else(|| {
            format!("not a state of sockherd's (header {:?})", head.chars().take(64).collect::<String>())
        })?;
        if !accepts(version) {
            return Err(format!(
                "state version {version}, and this build reads {STATE_VERSION_MIN} to {STATE_VERSION}"
            ));
        }
        let v: Value = serde_json::from_str(body).map_err(|e| format!("state is not JSON: {e}"))?;
        let g = v.get("generation").ok_or("no generation")?;
        Ok(State {
            pid: int(&v, "pid")?,
            from_version: string(&v, "from_version")?,
            runtime_dir: path(&v, "runtime_dir")?,
            control_listener: int(&v, "control_listener")?,
            conns: array(&v, "conns")?
                .iter()
                .map(|c| {
                    Ok(ConnState {
                        fd: int(c, "fd")?,
                        uid: int(c, "uid")?,
                        buf: bytes(c, "buf")?,
                        requester: boolean(c, "requester")?,
                    })
                })
                .collect::<Result<_, String>>()?,
            sockets: array(&v, "sockets")?
                .iter()
                .map(|s| {
                    let created = match s.get("created") {
                        None | Some(Value::Null) => None,
                        Some(c) => Some((path(c, "path")?, int(c, "dev")?, int(c, "ino")?)),
                    };
                    let origin = string(s, "origin")?;
                    if !matches!(origin.as_str(), "activated" | "stored" | "bound") {
                        return Err(format!("socket origin '{origin}' is none of activated, stored, bound"));
                    }
                    Ok(SocketState { fd: int(s, "fd")?, name: string(s, "name")?, origin, created })
                })
                .collect::<Result<_, String>>()?,
            generation: GenerationState {
                number: int(g, "number")?,
                pid: int(g, "pid")?,
                release: opt(g, "release", path)?,
                started_usec: int(g, "started_usec")?,
                app_status: opt(g, "app_status", string)?,
                cgroup: opt(g, "cgroup", path)?,
                inbox_fd: opt(g, "inbox_fd", int)?,
            },
            next_number: int(&v, "next_number")?,
            next_handoff: int(&v, "next_handoff")?,
            last_reload: match v.get("last_reload") {
                None | Some(Value::Null) => None,
                Some(r) => Some(LastReloadState {
                    at_usec: int(r, "at_usec")?,
                    ok: boolean(r, "ok")?,
                    message: string(r, "message")?,
                    took_usec: int(r, "took_usec")?,
                }),
            },
            latest_signal: opt(&v, "latest_signal", string)?,
            metrics: {
                let m = v.get("metrics").ok_or("no metrics")?;
                MetricsState {
                    reloads_ok: int(m, "reloads_ok")?,
                    reloads_failed: int(m, "reloads_failed")?,
                    queue_peak_max: opt(m, "queue_peak_max", int)?,
                }
            },
            reexecs: int(&v, "reexecs")?,
            argv: argv_of(&v)?,
            exe: opt(&v, "exe", path)?,
            cover_until_usec: opt(&v, "cover_until_usec", int)?,
        })
    }

    /// Every descriptor the state names, which must cross the exec.
    pub fn fds(&self) -> Vec<RawFd> {
        let mut fds = vec![self.control_listener];
        fds.extend(self.conns.iter().map(|c| c.fd));
        fds.extend(self.sockets.iter().map(|s| s.fd));
        fds.extend(self.generation.inbox_fd);
        fds
    }
}

fn argv_of(v: &Value) -> Result<Vec<OsString>, String> {
    array(v, "argv")?
        .iter()
        .map(|a| {
            a.as_array()
                .and_then(|b| {
                    b.iter().map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok())).collect::<Option<Vec<u8>>>()
                })
                .map(OsString::from_vec)
        })
        .collect::<Option<Vec<OsString>>>()
        .filter(|argv| !argv.is_empty())
        .ok_or_else(|| "field 'argv' is not a command line".to_string())
}

/// The old image's command line from a state this build may not read whole: only its `argv`.
fn old_argv(text: &str) -> Option<Vec<OsString>> {
    let body = text.split_once('\n')?.1;
    argv_of(&serde_json::from_str::<Value>(body).ok()?).ok()
}

fn field<'a>(v: &'a Value, name: &str) -> Result<&'a Value, String> {
    v.get(name).ok_or_else(|| format!("no field '{name}'"))
}

fn int<T: TryFrom<i64>>(v: &Value, name: &str) -> Result<T, String> {
    field(v, name)?
        .as_i64()
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| format!("field '{name}' is not an integer in range"))
}

fn string(v: &Value, name: &str) -> Result<String, String> {
    field(v, name)?.as_str().map(str::to_string).ok_or_else(|| format!("field '{name}' is not a string"))
}

fn boolean(v: &Value, name: &str) -> Result<bool, String> {
    field(v, name)?.as_bool().ok_or_else(|| format!("field '{name}' is not a boolean"))
}

fn array<'a>(v: &'a Value, name: &str) -> Result<&'a Vec<Value>, String> {
    field(v, name)?.as_array().ok_or_else(|| format!("field '{name}' is not an array"))
}

fn bytes(v: &Value, name: &str) -> Result<Vec<u8>, String> {
    array(v, name)?
        .iter()
        .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(|| format!("field '{name}' is not an array of bytes"))
}

fn path(v: &Value, name: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(OsString::from_vec(bytes(v, name)?)))
}

fn opt<T>(v: &Value, name: &str, read: impl Fn(&Value, &str) -> Result<T, String>) -> Result<Option<T>, String> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => read(v, name).map(Some),
    }
}

/// Whether this build reads state version `version`.
pub fn accepts(version: u64) -> bool {
    (STATE_VERSION_MIN..=STATE_VERSION).contains(&version)
}

// ----- the check mode ----------------------------------------------------------------------------

/// `sockherd reexec-check VERSION -- ARGS...`, as run by a supervisor about to exec this binary
/// with its command line ARGS: one line, `accepts <version>` (exit 0), or why not (exit 1).
/// `command_line_error` is what this build says of ARGS, None when it takes them.
pub fn check_mode(version: u64, command_line_error: Option<String>) -> u8 {
    if !accepts(version) {
        println!(
            "refuses state version {version}: {} reads versions {STATE_VERSION_MIN} to {STATE_VERSION}",
            self::version()
        );
        return 1;
    }
    if let Some(error) = command_line_error {
        let error = error.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
        println!("refuses the supervisor's command line: {error}");
        return 1;
    }
    println!("{ACCEPTS} {}", self::version());
    0
}

/// Runs `binary` in its check mode with our command line: its version when it accepts our state
/// and the command line, else why not.
pub fn check_binary(binary: &Path, timeout: Duration) -> Result<String> {
    use std::io::Read;
    let meta = std::fs::metadata(binary).with_context(|| format!("cannot use {}", binary.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", binary.display());
    }
    let mut command = std::process::Command::new(binary);
    command
        .arg("reexec-check")
        .arg(STATE_VERSION.to_string())
        .arg("--")
        .args(std::env::args_os().skip(1))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for name in HANDOVER_VARS {
        command.env_remove(name);
    }
    let mut child =
        sys::spawn_clean(&mut command).with_context(|| format!("cannot run {} to check it", binary.display()))?;
    let pid = child.id() as Pid;
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut stdout = child.stdout.take().map(OwnedFd::from);
    let mut stderr = child.stderr.take().map(OwnedFd::from);
    // Both pipes until EOF or the deadline; a binary that hangs is killed.
    while stdout.is_some() || stderr.is_some() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let _ = sys::kill(pid, libc::SIGKILL);
            let _ = sys::wait_pid(pid);
            bail!("{} did not answer its check within {timeout:?}", binary.display());
        }
        let fds: Vec<BorrowedFd<'_>> = stdout.iter().chain(stderr.iter()).map(|f| f.as_fd()).collect();
        let _ = sys::poll_readable(&fds, Some(left.min(Duration::from_millis(200))));
        for (pipe, buf) in [(&mut stdout, &mut out), (&mut stderr, &mut err)] {
            if let Some(fd) = pipe {
                let mut file = std::fs::File::from(fd.try_clone()?);
                let mut chunk = [0u8; 4096];
                match file.read(&mut chunk) {
                    Ok(0) => *pipe = None,
                    Ok(n) if buf.len() < 64 * 1024 => buf.extend_from_slice(&chunk[..n]),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => *pipe = None,
                }
            }
        }
    }
    let status = sys::wait_pid(pid).with_context(|| format!("failed to wait for {}'s check", binary.display()))?;
    let answer = String::from_utf8_lossy(&out);
    let answer = answer.lines().next().unwrap_or("").trim();
    match answer.strip_prefix(ACCEPTS) {
        Some(version) if status.success() && !version.trim().is_empty() => Ok(version.trim().to_string()),
        _ if !answer.is_empty() => bail!("{} refused: {answer}", binary.display()),
        _ => {
            let err = String::from_utf8_lossy(&err);
            let said = err.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
            let said = if said.is_empty() {
                String::new()
            } else {
                format!(": {}", said.chars().take(200).collect::<String>())
            };
            bail!(
                "{} is not a sockherd that can take over this one: its check (`reexec-check {STATE_VERSION}`) \
                 ended ({}) without an answer{said}",
                binary.display(),
                crate::generation::describe_status(status)
            )
        }
    }
}

// ----- the handover ------------------------------------------------------------------------------

/// The state and the old image's file, as the new image finds them.
pub struct Handed {
    /// The state as read, to hand back to the old image if need be.
    pub text: Option<String>,
    pub state: Result<State, String>,
    /// The old image's file, to run again if this one cannot resume.
    pub old_exe: Option<OwnedFd>,
    /// The new image could not resume and ran this (old) one again: why.
    pub failed: Option<String>,
}

/// The handed-over state, if this process was re-executed by a supervisor. A variable that
/// names nothing a supervisor handed over (left in an environment by mistake: no descriptor,
/// not a pipe, a pipe still written to, no state of sockherd's, a state written for another
/// pid) is ignored with a warning: this is a first start, which such a variable must not
/// prevent. A handover is always a pipe written whole, then closed, before the exec, so telling
/// them apart never waits; the descriptors are taken over only once the state is ours.
pub fn take_handed() -> Option<Handed> {
    let failed = std::env::var_os(FAILED_ENV).map(|why| why.to_string_lossy().into_owned());
    // Read once, and no child of ours (a check command) gets them: they name our descriptors.
    // A stale reason without a state goes too. (Every child's environment leaves them out
    // anyway: the generations', the readiness and reexec checks', the next image's.)
    let forget = |name: &str| {
        if let Err(e) = sys::remove_env(name) {
            log::warn(format!("{name} stays in sockherd's environment: {e}")).emit();
        }
    };
    if failed.is_some() {
        forget(FAILED_ENV);
    }
    let value = std::env::var_os(STATE_ENV)?;
    forget(STATE_ENV);
    match find_handed(&value, failed) {
        Ok(handed) => Some(handed),
        Err(why) => {
            let value = value.to_string_lossy();
            log::warn(format!("ignoring {STATE_ENV}='{value}': {why}; no supervisor handed anything over")).emit();
            None
        }
    }
}

/// The most a handed-over state may take.
const STATE_LIMIT: usize = 16 << 20;

/// The handover `value` names, or why it names none.
fn find_handed(value: &std::ffi::OsStr, failed: Option<String>) -> Result<Handed, String> {
    let descriptor = |part: Option<&str>| part.and_then(|p| p.trim().parse::<RawFd>().ok()).filter(|fd| *fd > 2);
    let mut parts = value.to_str().unwrap_or("").split(',');
    let state_fd = descriptor(parts.next()).ok_or("it names no descriptor above 2")?;
    let old_fd = descriptor(parts.next());
    if !sys::fd_is_open(state_fd) {
        return Err(format!("fd {state_fd} is not open"));
    }
    if !sys::fd_is_pipe(state_fd) {
        return Err(format!("fd {state_fd} is not a pipe"));
    }
    let text = match sys::read_to_end_now(state_fd, STATE_LIMIT) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Err(format!("fd {state_fd} is a pipe that is still open for writing")),
        Err(e) => return Err(format!("fd {state_fd} cannot be read: {e}")),
    };
    let text = String::from_utf8(text)
        .ok()
        .filter(|t| t.starts_with(MAGIC))
        .ok_or_else(|| format!("fd {state_fd} holds no state of sockherd's"))?;
    let me = sys::getpid();
    if let Some(pid) = written_for(&text)
        && pid != me
    {
        return Err(format!("fd {state_fd} holds a state written for pid {pid}, and this is pid {me}"));
    }
    // Ours, handed to this image by the one before, which owns nothing now.
    drop(sys::adopt_inherited_fd(state_fd));
    let old_exe = old_fd.filter(|fd| *fd != state_fd && sys::fd_is_open(*fd)).map(sys::adopt_inherited_fd);
    if let Some(fd) = &old_exe {
        let _ = sys::set_cloexec(fd.as_fd(), true);
    }
    let state = State::decode(&text);
    Ok(Handed { text: Some(text), state, old_exe, failed })
}

/// The pid a state says it was written for, if that much of it reads.
fn written_for(text: &str) -> Option<Pid> {
    let body = text.split_once('\n')?.1;
    int(&serde_json::from_str::<Value>(body).ok()?, "pid").ok()
}

/// Writes `state` into a new pipe; returns its read end. The pipe's buffer holds it whole.
pub fn state_pipe(state: &State) -> Result<OwnedFd> {
    use std::io::Write;
    let text = state.encode();
    let (read, write) = sys::pipe().context("failed to make a pipe for the state")?;
    sys::set_pipe_size(write.as_fd(), text.len() + 4096).context("failed to size the state's pipe")?;
    let mut file = std::fs::File::from(write);
    file.write_all(text.as_bytes()).context("failed to write the state")?;
    drop(file);
    Ok(read)
}

/// Our environment for the next image: everything but the handover's own variables, then
/// `extra`.
pub fn environment(extra: &[(&str, String)]) -> Vec<Vec<u8>> {
    let mut env: Vec<Vec<u8>> = std::env::vars_os()
        .filter(|(name, _)| !name.to_str().is_some_and(is_handover_var))
        .map(|(name, value)| [name.as_bytes(), b"=", value.as_bytes()].concat())
        .collect();
    env.extend(extra.iter().map(|(name, value)| format!("{name}={value}").into_bytes()));
    env
}

/// Clears FD_CLOEXEC on every descriptor of `fds`, or sets it back.
pub fn keep_across_exec(fds: &[BorrowedFd<'_>], keep: bool) -> Result<()> {
    for fd in fds {
        sys::set_cloexec(*fd, !keep)
            .with_context(|| format!("failed to set close-on-exec of fd {}", fd.as_raw_fd()))?;
    }
    Ok(())
}

/// This image cannot take over (`why`): back to the image before, which resumes with the state
/// it wrote and reports why. Returns the error to exit with when that is not possible: no state
/// or no old image to go back to, or the old image itself came back here after failing.
pub fn give_back(handed: Handed, why: &str) -> anyhow::Error {
    match handed {
        Handed { failed: Some(failed), .. } => {
            anyhow!("cannot resume ({why}), after the new binary could not either ({failed})")
        }
        Handed { text: Some(text), old_exe: Some(old_exe), .. } => back_to_old_image(old_exe, &text, why),
        _ => anyhow!("cannot resume from the state the image before handed over: {why}"),
    }
}

/// Runs the old image again (`old_exe`, the descriptor it handed over) with the state it wrote
/// and why this image could not resume. Returns only when that exec failed too.
pub fn back_to_old_image(old_exe: OwnedFd, text: &str, why: &str) -> anyhow::Error {
    use std::io::Write;
    let attempt = || -> Result<std::io::Error> {
        let (read, write) = sys::pipe().context("failed to make a pipe for the state")?;
        sys::set_pipe_size(write.as_fd(), text.len() + 4096).context("failed to size the state's pipe")?;
        std::fs::File::from(write).write_all(text.as_bytes()).context("failed to write the state")?;
        keep_across_exec(&[read.as_fd(), old_exe.as_fd()], true)?;
        let mut env = environment(&[
            (STATE_ENV, format!("{},{}", read.as_raw_fd(), old_exe.as_raw_fd())),
            (FAILED_ENV, why.replace('\0', " ")),
        ]);
        env.retain(|e| !e.is_empty());
        // Its own command line: this image's may be what it refused.
        let argv = old_argv(text).ok_or_else(|| anyhow!("the state has no command line of the image before"))?;
        let args: Vec<&std::ffi::OsStr> = argv.iter().map(OsString::as_os_str).collect();
        let _mask = sys::block_all_signals();
        Ok(sys::exec_self(sys::ExecTarget::Fd(old_exe.as_fd()), &args, &env))
    };
    match attempt() {
        Ok(err) => anyhow!("cannot resume ({why}), and running the old image again failed: {err}"),
        Err(e) => anyhow!("cannot resume ({why}), and running the old image again failed: {e:#}"),
    }
}

/// The reason a resumed image gives its requester and its log.
pub fn describe_failure(why: &str) -> String {
    format!("the new binary could not take over ({why}); the old one resumed and still supervises")
}

/// The failure to report, when an exec returned.
pub fn exec_failed(binary: &Path, err: std::io::Error) -> anyhow::Error {
    anyhow!("failed to execute {}: {err}", binary.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> State {
        State {
            pid: 42,
            from_version: "sockherd 0.1.0".into(),
            runtime_dir: PathBuf::from("/run/app/sockherd-42"),
            control_listener: 7,
            conns: vec![ConnState { fd: 9, uid: 0, buf: b"rel".to_vec(), requester: false }],
            sockets: vec![
                SocketState { fd: 3, name: "http".into(), origin: "activated".into(), created: None },
                SocketState {
                    fd: 4,
                    name: "unix".into(),
                    origin: "bound".into(),
                    created: Some((PathBuf::from(OsString::from_vec(b"/run/\xffx.sock".to_vec())), 1, 2)),
                },
            ],
            generation: GenerationState {
                number: 3,
                pid: 100,
                release: Some("/srv/app/releases/2".into()),
                started_usec: 123,
                app_status: Some("Listening \"x\"".into()),
                cgroup: None,
                inbox_fd: Some(8),
            },
            next_number: 4,
            next_handoff: 3,
            last_reload: Some(LastReloadState { at_usec: 5, ok: false, message: "not ready".into(), took_usec: 9 }),
            latest_signal: Some("ok generation 3 (pid 4711) serves".into()),
            metrics: MetricsState { reloads_ok: 1, reloads_failed: 1, queue_peak_max: Some(3) },
            reexecs: 2,
            argv: vec!["/usr/bin/sockherd".into(), "run".into(), OsString::from_vec(b"--x\xff".to_vec())],
            exe: Some("/usr/bin/sockherd".into()),
            cover_until_usec: Some(77),
        }
    }

    #[test]
    fn the_state_reads_back_as_written() {
        let state = sample();
        assert_eq!(State::decode(&state.encode()).unwrap(), state);
        assert_eq!(old_argv(&state.encode()), Some(state.argv.clone()));
        assert_eq!(state.fds(), vec![7, 9, 3, 4, 8]);
    }

    #[test]
    fn a_state_without_the_started_path_reads_as_none() {
        // As the first build with reexec writes it: the same version, no "exe".
        let text =
            sample().encode().replace(",\"exe\":[47,117,115,114,47,98,105,110,47,115,111,99,107,104,101,114,100]", "");
        assert!(!text.contains("\"exe\""), "{text}");
        let state = State::decode(&text).unwrap();
        assert_eq!(state.exe, None);
        assert_eq!(State { exe: sample().exe, ..state }, sample());
    }

    #[test]
    fn a_state_without_the_watchdog_cover_reads_as_none() {
        // As builds before it write it: the same version, no "cover_until_usec".
        let text = sample().encode().replace(",\"cover_until_usec\":77", "");
        assert!(!text.contains("cover_until"), "{text}");
        let state = State::decode(&text).unwrap();
        assert_eq!(state.cover_until_usec, None);
        assert_eq!(State { cover_until_usec: Some(77), ..state }, sample());
    }

    #[test]
    fn another_version_or_a_damaged_state_is_refused_with_why() {
        let text = sample().encode();
        let newer = text.replacen(&format!("{MAGIC} {STATE_VERSION}"), &format!("{MAGIC} {}", STATE_VERSION + 1), 1);
        let err = State::decode(&newer).unwrap_err();
        assert!(err.contains(&format!("state version {}", STATE_VERSION + 1)), "{err}");
        assert!(State::decode("hello\n{}").unwrap_err().contains("not a state of sockherd's"));
        let cut = &text[..text.len() / 2];
        assert!(State::decode(cut).unwrap_err().contains("not JSON"));
        let bad_origin = text.replace("\"activated\"", "\"borrowed\"");
        assert!(State::decode(&bad_origin).unwrap_err().contains("origin 'borrowed'"));
    }

    #[test]
    fn the_check_never_outlasts_a_quarter_of_the_watchdog() {
        assert_eq!(check_timeout(None), CHECK_TIMEOUT);
        assert_eq!(check_timeout(Some(Duration::from_secs(4))), Duration::from_secs(1));
        assert_eq!(check_timeout(Some(Duration::from_secs(3600))), CHECK_TIMEOUT);
    }

    #[test]
    fn the_handover_variables_are_exactly_the_two() {
        assert!(is_handover_var(STATE_ENV));
        assert!(is_handover_var(FAILED_ENV));
        for name in ["SOCKHERD_REEXEC_STATEX", "SOCKHERD_REEXEC", "sockherd_reexec_state", "LISTEN_FDS", ""] {
            assert!(!is_handover_var(name), "{name}");
        }
    }

    #[test]
    fn versions_accepted() {
        assert!(accepts(STATE_VERSION));
        assert!(!accepts(STATE_VERSION + 1));
        assert!(!accepts(STATE_VERSION_MIN - 1));
    }

    #[test]
    fn instants_cross_as_monotonic_time() {
        // A generation's start and a reload's end are past; the watchdog's cover is a deadline.
        for at in [Instant::now() - Duration::from_secs(3), Instant::now() + Duration::from_secs(3)] {
            let back = usec_instant(instant_usec(at));
            let diff = if back > at { back - at } else { at - back };
            assert!(diff < Duration::from_millis(5), "{diff:?}");
        }
    }

    #[test]
    fn the_installed_path_is_the_path_of_a_replaced_binary() {
        assert_eq!(without_deleted(Path::new("/usr/bin/sockherd (deleted)")), Path::new("/usr/bin/sockherd"));
        assert_eq!(without_deleted(Path::new("/usr/bin/sockherd")), Path::new("/usr/bin/sockherd"));
        assert_eq!(without_deleted(Path::new("/opt/a (deleted)/sockherd")), Path::new("/opt/a (deleted)/sockherd"));
    }

    #[test]
    fn argv0_is_the_start_path_when_it_leads_to_the_running_file() {
        use std::os::unix::fs::PermissionsExt;
        let exe = std::env::current_exe().unwrap();
        let dir = std::env::temp_dir().join(format!("sockherd-started-as-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        let link = dir.join("bin/sockherd");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&exe, &link).unwrap();
        std::fs::write(dir.join("other"), b"x").unwrap();
        let at = |argv0: &str, path: Option<&str>| {
            started_as(Some(argv0.into()), &exe, Some(&dir), path.map(std::ffi::OsStr::new))
        };
        // A path, absolute or relative to the working directory: the link, not its target,
        // without `.` parts.
        assert_eq!(at(&link.display().to_string(), None), Some(link.clone()));
        assert_eq!(at("bin/sockherd", None), Some(link.clone()));
        assert_eq!(at("./bin/./sockherd", None), Some(link.clone()));
        assert_eq!(started_as(Some("bin/sockherd".into()), &exe, None, None), None, "no working directory");
        assert_eq!(started_as(Some(link.clone().into()), &exe, None, None), Some(link.clone()), "none needed");
        // A bare name: by PATH, not by the working directory (which holds `sockherd` too).
        std::fs::copy(dir.join("other"), dir.join("sockherd")).unwrap();
        let bin = dir.join("bin").display().to_string();
        let top = dir.display().to_string();
        assert_eq!(at("sockherd", Some(&format!("/nonexistent:{bin}"))), Some(link.clone()));
        assert_eq!(at("sockherd", None), None, "no PATH");
        // A file that is not executable is passed over, as execvp does; one that is, is taken.
        assert_eq!(at("sockherd", Some(&format!("{top}:{bin}"))), Some(link.clone()));
        std::fs::set_permissions(dir.join("sockherd"), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(at("sockherd", Some(&format!("{top}:{bin}"))), None, "PATH's first match is another file");
        // An empty entry is the working directory.
        assert_eq!(at("sockherd", Some(&format!(":{bin}"))), None, "the working directory's file comes first");
        std::fs::remove_file(dir.join("sockherd")).unwrap();
        assert_eq!(at("sockherd", Some(&format!(":{bin}"))), Some(link.clone()));
        std::os::unix::fs::symlink(&exe, dir.join("sockherd")).unwrap();
        assert_eq!(at("sockherd", Some(&format!(":{bin}"))), Some(dir.join("sockherd")));
        // Another file, found by PATH or named by a path.
        std::fs::set_permissions(dir.join("other"), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(at("other", Some(&top)), None, "another file");
        assert_eq!(at("./other", None), None, "another file");
        assert_eq!(at("./missing", None), None);
        assert_eq!(started_as(None, &exe, Some(&dir), None), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_version_names_the_package() {
        assert!(version().starts_with(&format!("sockherd {}", env!("CARGO_PKG_VERSION"))));
    }
}
