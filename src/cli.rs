//! The command line: parse, refuse bad combinations in one place, then dispatch.

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::activation;
use crate::command::{self, Launch};
use crate::control::{self, Answer, Request, Unreachable};
use crate::fdstore;
use crate::flavor::Flavor;
use crate::handoff::WatchdogMode;
use crate::history;
use crate::listen::ListenSpec;
use crate::log;
use crate::native::NativeReload;
use crate::protocol::{MAINPID, MAINPIDFDID};
use crate::readiness::Readiness;
use crate::signal::Signal;
use crate::sockdiag;
use crate::socket::{Origin, Socket};
use crate::status;
use crate::supervisor::{RunConfig, Supervisor};
use crate::sys;
use crate::unitgen::{self, UnitSpec};

/// Exit codes, for `--help` and the man page's EXIT STATUS.
const EXIT_STATUS: &str = "\
Exit status:
  0    success; for run, a clean stop
  1    sockherd failed (bad environment, socket, readiness, a rolled-back reload, a supervisor
       that cannot be reached)
  2    invalid command line
  3    status UNIT: the unit is not active
  4    status UNIT: no such unit
  126  run/exec: the command cannot be executed
  127  run/exec: the command was not found
  other  run/exec: the server's own exit status, or 128 + the signal that killed it";

#[derive(Parser, Debug)]
#[command(
    name = "sockherd",
    version,
    about = "Hands systemd's (or its own) listening sockets to preforking app servers and reloads them without dropping a connection",
    after_long_help = EXIT_STATUS,
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,

    /// Also log debug events.
    #[arg(long, global = true)]
    debug: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Supervise the server as the service's main process: hand it the sockets, tell systemd
    /// when it is ready, stop it gracefully.
    Run(RunArgs),
    /// Hand the sockets to the server in its dialect and become it (same pid, no resident
    /// process).
    Exec(ExecArgs),
    /// Ask a running `sockherd run` to start a new generation, and wait until it serves (exit
    /// 0) or the reload failed and the old generation still serves (exit 1). For ExecReload=.
    /// With --native, drive a unicorn or nginx master's own USR2 upgrade instead and hand the
    /// new master's pid to systemd.
    Reload(ReloadArgs),
    /// Show a running supervisor's generations, sockets, readiness and last reload; given a
    /// unit, what systemd knows of it too. Exit 0 when it answered (and the unit is active), 1
    /// when it cannot be reached, 3 when the unit is not active, 4 when there is no such unit.
    Status(StatusArgs),
    /// Re-execute a running `sockherd run` with the sockherd binary installed now (after an
    /// upgrade), same pid, without touching the generation that serves: the sockets, the
    /// generation and the reload history carry over. Waits for a handoff in flight to end. Exit 0
    /// when the new binary took over, 1 when it was refused and the old one still supervises.
    /// The signal SIGRTMIN+25 (systemd's own "re-execute") asks the same.
    Reexec(ReexecArgs),
    /// Answers whether this binary can take over a supervisor's state version (run by a
    /// supervisor before it re-executes into this binary).
    #[command(name = "reexec-check", hide = true)]
    ReexecCheck {
        /// The state version the running supervisor would hand over.
        #[arg(value_name = "VERSION")]
        state_version: u64,
        /// The supervisor's command line (without the program name), which this binary must take.
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<OsString>,
    },
    /// The deploy history of a systemd service, from its journal (`journalctl -o json`): one
    /// line per reload with its time, generation, release, outcome, time to ready, handoff
    /// time, listen-queue peak, and the reason of each failure.
    History(HistoryArgs),
    /// Write (or print) a .socket + .service pair for an app from the shipped templates, ready
    /// for `systemctl enable --now NAME.socket`; the reload style follows the systemd version.
    Unit(UnitArgs),
    /// Generate the man pages or shell completions from this command line's definition (for
    /// packaging).
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        what: Generate,
    },
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// A systemd service running `sockherd run` (NAME or NAME.service): asks systemd for its
    /// state and MainPID (`systemctl show`), then the supervisor at that pid.
    #[arg(value_name = "UNIT", conflicts_with = "pid")]
    unit: Option<String>,

    /// The supervisor's pid (default: $MAINPID).
    #[arg(long, value_name = "PID")]
    pid: Option<i32>,

    /// Print JSON: the supervisor's own status; with UNIT, an object with systemd's view and
    /// the supervisor's status under "supervisor" (null when there is none).
    #[arg(long)]
    json: bool,

    /// How long to wait for the supervisor's answer.
    #[arg(long, default_value = "10s", value_name = "DURATION")]
    timeout: Seconds,
}

#[derive(Args, Debug)]
struct ReexecArgs {
    /// A systemd service running `sockherd run` (NAME or NAME.service): its MainPID, from
    /// systemd.
    #[arg(value_name = "UNIT", conflicts_with = "pid")]
    unit: Option<String>,

    /// The supervisor's pid (default: $MAINPID, which systemd sets for ExecReload= and the like).
    #[arg(long, value_name = "PID")]
    pid: Option<i32>,

    /// The sockherd binary to run (default: the path the supervisor was started from, where an
    /// upgrade installs the new one).
    #[arg(long, value_name = "PATH")]
    binary: Option<PathBuf>,

    /// How long to wait for the answer, a handoff in flight included.
    #[arg(long, default_value = "5m", value_name = "DURATION")]
    timeout: Seconds,
}

#[derive(Args, Debug)]
struct HistoryArgs {
    /// The service (NAME or NAME.service).
    #[arg(value_name = "UNIT")]
    unit: String,

    /// Only reloads since then, as journalctl's --since takes it ("2026-11-30 12:00", "-1h",
    /// "today").
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    since: Option<String>,

    /// Print a JSON array, one object per reload.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct UnitArgs {
    /// The service's name: NAME.service, and NAME.socket (one --listen) or NAME-<fd name>.socket
    /// (several).
    #[arg(value_name = "NAME")]
    name: String,

    /// The server's dialect (as for `run`): picks the service template (gunicorn, unicorn, puma;
    /// generic for the others).
    #[arg(short, long, default_value = "systemd", value_name = "FLAVOR")]
    flavor: Flavor,

    /// A socket unit per spec (as for `run`): HOST:PORT, [V6]:PORT, /path or @abstract, with
    /// ",name=NAME" for its FileDescriptorName= (default http, unix, sockN), ",mode=0660",
    /// ",backlog=N".
    #[arg(short = 'l', long = "listen", value_name = "SPEC", required = true)]
    listen: Vec<ListenSpec>,

    /// The user the service runs as (default: NAME).
    #[arg(long, value_name = "USER")]
    user: Option<String>,

    /// The group the service runs as and that owns unix socket files (default: the user's name).
    #[arg(long, value_name = "GROUP")]
    group: Option<String>,

    /// The release directory for `run --chdir` (e.g. /srv/app/current), resolved anew at each
    /// reload.
    #[arg(short = 'C', long, value_name = "DIR")]
    chdir: Option<PathBuf>,

    /// The readiness strategy for `run --ready` (default: the flavor's).
    #[arg(long, value_name = "STRATEGY")]
    ready: Option<Readiness>,

    /// A path the sandboxed service may write (ReadWritePaths=); repeatable.
    #[arg(long, value_name = "DIR")]
    writable: Vec<PathBuf>,

    /// The sockherd binary the units run (default: this one).
    #[arg(long, value_name = "PATH")]
    sockherd: Option<PathBuf>,

    /// The systemd version the units are for (default: from `systemctl --version`): 253 and
    /// later get Type=notify-reload.
    #[arg(long, value_name = "N")]
    systemd_version: Option<u32>,

    /// No socket units: the service alone, whose `sockherd run --listen` binds the sockets itself
    /// and keeps them in systemd's fd store (FileDescriptorStoreMax=; FileDescriptorStorePreserve=
    /// from systemd 254), so that connections queue, not fail, while it restarts.
    #[arg(long)]
    no_socket_units: bool,

    /// Write the files into DIR (e.g. /etc/systemd/system) instead of printing them.
    #[arg(short, long, value_name = "DIR")]
    output: Option<PathBuf>,

    /// Replace files that exist in --output.
    #[arg(long, requires = "output")]
    force: bool,

    /// The server's command line.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

#[derive(Subcommand, Debug)]
enum Generate {
    /// Man pages: sockherd.1 and one per command (sockherd-run.1, ...). Without --out, print
    /// sockherd.1.
    Man {
        /// Write the pages into DIR.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// A completion script for SHELL. Without --out, print it.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
        /// Write it into DIR (as sockherd.bash, _sockherd, sockherd.fish, ...).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
struct ReloadArgs {
    #[command(flatten)]
    control: ControlArgs,

    /// Drive the server's own upgrade (USR2 to a unicorn or nginx master) instead of asking a
    /// supervisor. Never chosen by itself, and refused when PID runs sockherd.
    #[arg(long, conflicts_with = "join")]
    native: bool,

    /// Report the outcome of the reload a SIGHUP just started instead of starting another one
    /// (for ExecReload= beside Type=notify-reload, where systemd sends SIGHUP first).
    #[arg(long)]
    join: bool,

    /// Native mode: the server (default: told by the master's process title).
    #[arg(long, value_name = "FLAVOR", requires = "native")]
    flavor: Option<Flavor>,

    /// Native mode (required there): the server's pid file (unicorn's `pid`, nginx's `pid`).
    /// The new master is the process it names, a child of the old master running the same
    /// program.
    #[arg(long, value_name = "PATH", requires = "native")]
    pidfile: Option<PathBuf>,

    /// Native mode: workers the new master must have at least (default: one; never compared
    /// with the old master's count, which a deploy may change).
    #[arg(long, value_name = "N", requires = "native")]
    workers: Option<usize>,

    /// Native mode: the new master is ready once its workers stayed the same (none added,
    /// gone, replaced or renamed) this long. A crash-looping worker never settles.
    #[arg(long, default_value = "1s", value_name = "DURATION")]
    ready_settle: Seconds,

    /// Native mode: how long the old master may drain after SIGQUIT before it is killed.
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    drain_timeout: Seconds,
}

#[derive(Args, Debug)]
struct ControlArgs {
    /// The supervisor's pid (default: $MAINPID, which systemd sets for ExecReload=).
    #[arg(long, value_name = "PID")]
    pid: Option<i32>,

    /// How long to wait: for the supervisor's answer, or in native mode for the new master to
    /// be ready.
    #[arg(long, default_value = "5m", value_name = "DURATION")]
    timeout: Seconds,
}

#[derive(Args, Debug)]
struct SocketArgs {
    /// A socket to bind when not socket-activated: HOST:PORT, [V6]:PORT, unix:/path, /path or
    /// @abstract, with options ",name=NAME", ",mode=0660", ",backlog=N". Repeatable; order is
    /// fd order (3, 4, ...).
    #[arg(short = 'l', long = "listen", value_name = "SPEC")]
    listen: Vec<ListenSpec>,

    /// Use --listen only when systemd passed no sockets (otherwise giving both is an error).
    #[arg(long)]
    fallback: bool,
}

#[derive(Args, Debug)]
struct LaunchArgs {
    /// The server's dialect for inherited sockets: systemd, gunicorn, unicorn, puma,
    /// server-starter, einhorn, nginx.
    #[arg(short, long, default_value = "systemd", value_name = "FLAVOR")]
    flavor: Flavor,

    /// Start the server in DIR, resolved (symlinks followed) at each start; PWD is set to it.
    /// A relative COMMAND path is taken inside DIR.
    #[arg(short = 'C', long, value_name = "DIR")]
    chdir: Option<PathBuf>,

    /// The server's command line.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    sockets: SocketArgs,

    /// Signal for a graceful stop (default: the flavor's: QUIT for unicorn and nginx, TERM
    /// for most others).
    #[arg(long, value_name = "SIGNAL")]
    stop_signal: Option<Signal>,

    /// How long a stopping server may drain before its whole process group gets SIGKILL
    /// (e.g. 30, 30s, 1500ms, 2m).
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    stop_timeout: Seconds,

    /// How a new generation proves it serves: notify, probe, probe:/PATH, delay:SECS,
    /// cmd:COMMAND, workers[:N] or exec (default: the flavor's: notify for puma and systemd,
    /// probe for gunicorn and unicorn, workers for nginx, delay:1 for server-starter and einhorn).
    #[arg(long, value_name = "STRATEGY")]
    ready: Option<Readiness>,

    /// How long a new generation may take to become ready before it is killed (and, on a
    /// reload, the old one keeps serving).
    #[arg(long, default_value = "60s", value_name = "DURATION")]
    ready_timeout: Seconds,

    /// How long a generation's master must stay alive after it reported ready before it counts
    /// as ready (and the old generation is told to stop): a server that crashes right after
    /// saying ready fails the reload instead of replacing a working one. 0 trusts the report.
    #[arg(long, default_value = "1s", value_name = "DURATION")]
    ready_settle: Seconds,

    /// With systemd's watchdog on (WatchdogSec=): relay (the serving generation's own WATCHDOG=1
    /// pings reach systemd; sockherd pings only during a handoff), probe (a ping for each answer
    /// of the serving generation's private probe: needs --ready probe), or supervisor (sockherd
    /// pings while a generation serves: the watchdog vouches for sockherd only). Default: relay
    /// for puma and systemd, supervisor for the others.
    #[arg(long, value_name = "MODE", value_parser = ["relay", "probe", "supervisor"])]
    watchdog: Option<String>,

    /// How long an old generation may drain after a reload before its process group gets
    /// SIGKILL.
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    drain_timeout: Seconds,

    /// Before a reload starts a new generation, check that the service's memory limit
    /// (MemoryMax=/MemoryHigh=, its cgroup's) and the host's MemAvailable leave room for the
    /// serving generation's memory once more; if not, the reload fails at once and the old
    /// generation keeps serving. off: start it anyway.
    #[arg(long, default_value = "on", value_name = "on|off", value_parser = ["on", "off"])]
    memory_check: String,

    /// on: run a reload's generation at a lower CPU priority (nice +10 and SCHED_BATCH,
    /// inherited by its workers) until it is ready, so that its boot leaves the CPU to the
    /// serving generation; every process and thread of it is set back at ready. Off by default:
    /// a generation's workers accept requests before it is ready, and serve them at that
    /// priority (the benchmark measured longer gaps with it on a busy machine).
    #[arg(long, default_value = "off", value_name = "on|off", value_parser = ["on", "off"])]
    boot_priority: String,
    /// Write metrics for scrapers to PATH (node_exporter's textfile convention), rewritten
    /// atomically on each event: generations, reloads by outcome, the last reload's times and
    /// listen-queue peak.
    #[arg(long, value_name = "PATH")]
    metrics_file: Option<PathBuf>,

    #[command(flatten)]
    launch: LaunchArgs,
}

#[derive(Args, Debug)]
struct ExecArgs {
    #[command(flatten)]
    sockets: SocketArgs,

    #[command(flatten)]
    launch: LaunchArgs,
}

/// A duration given as `30`, `30s`, `1.5s`, `500ms` or `2m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub Duration);

impl FromStr for Seconds {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
            (n, 0.001)
        } else if let Some(n) = t.strip_suffix('s') {
            (n, 1.0)
        } else if let Some(n) = t.strip_suffix('m') {
            (n, 60.0)
        } else {
            (t, 1.0)
        };
        match number.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 && v * scale < 1e9 => Ok(Seconds(Duration::from_secs_f64(v * scale))),
            _ => Err(format!("invalid duration '{text}' (expected e.g. 30, 30s, 1500ms or 2m)")),
        }
    }
}

/// Sockets from systemd if it passed any, else the `--listen` ones, bound now. With
/// `fd_store` (`run`), the `--listen` sockets go through systemd's fd store when the unit has one
/// (src/fdstore.rs): taken back from it when it holds them, stored in it when bound. Without
/// (`exec`), only when systemd passed sockets from the store (`ExecStart=` switched from `run`
/// with the store kept): they are `--listen` sockets, never a socket unit's, and the server gets
/// them under the specs' names.
fn acquire_sockets(args: &SocketArgs, fd_store: bool) -> Result<Vec<Socket>> {
    let received = activation::receive()?;
    let mut unusable: Vec<String> = Vec::new();
    for u in &received.unusable {
        log::warn(format!("closing fd {} ({}) from systemd's fd store: {}", u.fd, u.name, u.what)).emit();
        if !unusable.contains(&u.name) {
            unusable.push(u.name.clone());
        }
    }
    let activated = received.sockets;
    let (stored, activated): (Vec<Socket>, std::result::Result<Vec<Socket>, String>) = match activated {
        Ok(sockets) if fd_store || sockets.iter().any(|s| fdstore::is_stored_name(&s.name)) => {
            let (stored, units): (Vec<Socket>, Vec<Socket>) =
                sockets.into_iter().partition(|s| fdstore::is_stored_name(&s.name));
            (stored, Ok(units))
        }
        other => (Vec::new(), other),
    };
    let sockets = match activated {
        Ok(sockets) if !sockets.is_empty() => {
            if !args.listen.is_empty() && !args.fallback {
                bail!(
                    "systemd passed {} socket(s) (LISTEN_FDS) and --listen was given too; drop --listen, \
                     or add --fallback to use --listen only when not socket-activated",
                    sockets.len()
                );
            }
            if let Some(first) = stored.first() {
                if !args.fallback {
                    let units: Vec<&str> = sockets.iter().map(|s| s.name.as_str()).collect();
                    bail!(
                        "systemd passed socket-unit sockets ({}) and a socket named '{}' ({}), a name sockherd \
                         keeps for the --listen sockets it puts in the fd store: either a socket unit's \
                         FileDescriptorName= begins with '{}' (rename it), or the fd store still holds the \
                         sockets of a start with --listen (clear it: systemctl stop, and on systemd 254 and \
                         later with FileDescriptorStorePreserve=yes, systemctl clean --what=fdstore)",
                        units.join(", "),
                        first.name,
                        first.address(),
                        fdstore::PREFIX
                    );
                }
                // --fallback and socket-activated: the --listen sockets are not used this time.
                forget_stored(stored, &unusable);
            } else {
                forget_stored(Vec::new(), &unusable);
            }
            for (i, socket) in sockets.iter().enumerate() {
                log::info(format!("received socket fd {}: {socket}", 3 + i))
                    .kind("socket")
                    .field("SOCKET", socket.address())
                    .emit();
            }
            sockets
        }
        not_activated => {
            let reason = match not_activated {
                Err(reason) => reason,
                Ok(_) if stored.is_empty() => "LISTEN_FDS=0".to_string(),
                Ok(_) => "only sockets of the fd store were passed".to_string(),
            };
            if args.listen.is_empty() {
                forget_stored(stored, &unusable);
                bail!(
                    "no sockets to hand over: not socket-activated ({reason}) and no --listen given; give \
                     --listen (e.g. --listen 127.0.0.1:8080), or start it from a socket unit (`sockherd unit` \
                     writes one)"
                );
            }
            if fd_store || !stored.is_empty() {
                listen_through_the_store(&args.listen, stored, &unusable)?
            } else {
                forget_stored(stored, &unusable);
                bind_all(&args.listen)?
            }
        }
    };
    Ok(sockets)
}

fn bind_all(specs: &[ListenSpec]) -> Result<Vec<Socket>> {
    let mut sockets = Vec::with_capacity(specs.len());
    for spec in specs {
        let socket = spec.bind()?;
        log::info(format!("listening on {socket}")).kind("socket").field("SOCKET", socket.address()).emit();
        sockets.push(socket);
    }
    Ok(sockets)
}

/// Stored sockets nothing uses this time: removed from the store (which closes systemd's copies)
/// and closed, with the names of the unusable descriptors already closed.
fn forget_stored(stored: Vec<Socket>, unusable: &[String]) {
    if stored.is_empty() && unusable.is_empty() {
        return;
    }
    let store = fdstore::Store::detect(true).unwrap_or(None);
    let mut names: Vec<&str> =
        stored.iter().map(|s| s.name.as_str()).chain(unusable.iter().map(String::as_str)).collect();
    names.sort_unstable();
    names.dedup();
    for socket in &stored {
        log::warn(format!("closing {socket} from systemd's fd store: no --listen socket uses it now")).emit();
    }
    if let Some(store) = &store {
        for name in names {
            store.remove(name);
        }
    }
}

/// A bind that found its address in use after sockets were removed from the fd store: systemd,
/// which may not have let go of them, is the likely holder.
fn held_by_the_store(err: anyhow::Error, removed: &[String]) -> anyhow::Error {
    let text = format!("{err:#}");
    if removed.is_empty() || !text.contains("address in use") {
        return err;
    }
    anyhow!(
        "{text}; the likely holder is systemd's fd store, which was asked to remove {} and may still hold it \
         (clear it: systemctl stop, and on systemd 254 and later with FileDescriptorStorePreserve=yes, systemctl \
         clean --what=fdstore)",
        removed.join(", ")
    )
}

/// Why the stored unix `socket` bound to `path` is no longer reached there (see
/// [`fdstore::lost_file`]). `diag` is opened on first use.
fn unix_file_lost(path: &Path, socket: &Socket, diag: &mut Option<sockdiag::Diag>) -> Option<String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let found = std::fs::symlink_metadata(path).map(|m| (m.file_type().is_socket(), m.ino()));
    let bound = (|| {
        let (_, _, inode) = sys::fstat(socket.as_fd()).ok()?;
        if diag.is_none() {
            *diag = sockdiag::Diag::open().ok();
        }
        diag.as_mut()?.unix_file_inode(inode).ok().flatten()
    })();
    fdstore::lost_file(&found, bound)
}

/// The `--listen` sockets, taken back from the fd store (`stored`) or bound, and stored.
fn listen_through_the_store(specs: &[ListenSpec], stored: Vec<Socket>, unusable: &[String]) -> Result<Vec<Socket>> {
    let store = fdstore::Store::detect(!stored.is_empty() || !unusable.is_empty())?;
    if store.is_none() && stored.is_empty() {
        return bind_all(specs);
    }
    let names: Vec<String> = specs.iter().map(fdstore::store_name).collect::<Result<_>>()?;
    let mut diag = None;
    let held: Vec<fdstore::Held> = stored
        .iter()
        .map(|s| fdstore::Held {
            name: s.name.clone(),
            addr: s.addr.clone(),
            listening_stream: s.kind == libc::SOCK_STREAM && sys::socket_is_listening(s.as_fd()).unwrap_or(false),
            lost: match &s.addr {
                sys::LocalAddr::Unix(path) => unix_file_lost(path, s, &mut diag),
                _ => None,
            },
        })
        .collect();
    let plan = fdstore::plan(&names, specs, &held, unusable);
    if store.is_none() && !stored.is_empty() {
        log::warn("systemd passed sockets of its fd store but cannot be reached to keep them there").emit();
    }
    if let Some(store) = &store {
        for name in &plan.remove {
            store.remove(name);
        }
    }
    let mut stored: Vec<Option<Socket>> = stored.into_iter().map(Some).collect();
    for &i in &plan.stale {
        if let Some(socket) = stored[i].take() {
            let why = held[i].lost.as_deref().unwrap_or("no --listen socket is at that name and address");
            log::info(format!("closing {socket} from systemd's fd store: {why}"))
                .kind("socket")
                .field("SOCKET", socket.address())
                .emit();
        }
    }
    // systemd closes its copies of the removed sockets when it handles the removal, which may be
    // after a bind of their address (a renamed spec, an address moved to another name) would
    // find it taken: wait for that first.
    if let Some(store) = &store
        && !plan.remove.is_empty()
        && let Err(e) = store.sync()
    {
        log::warn(format!("systemd did not confirm the removal from its fd store: {e}")).emit();
    }
    let mut sockets = Vec::with_capacity(specs.len());
    for (spec, take) in specs.iter().zip(&plan.take) {
        let socket = match take.and_then(|i| stored[i].take()) {
            Some(mut socket) => {
                // The spec's backlog and mode now, which may have changed since it was bound. A
                // unix socket's path was found to be its own file just now (lstat, so never a
                // symlink): the mode goes to that socket file, nothing else.
                sys::listen(socket.as_fd(), spec.backlog)
                    .with_context(|| format!("failed to listen on {} (from the fd store)", spec.addr))?;
                if let (Some(mode), crate::listen::ListenAddr::Unix(path)) = (spec.mode, &spec.addr) {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                        .with_context(|| format!("failed to set mode {mode:04o} on {}", path.display()))?;
                }
                socket.name = spec.name.clone().unwrap_or_else(|| crate::protocol::UNKNOWN_FDNAME.to_string());
                socket.origin = Origin::Stored;
                log::info(format!("listening on {socket}, taken back from systemd's fd store"))
                    .kind("socket")
                    .field("SOCKET", socket.address())
                    .emit();
                socket
            }
            None => {
                let socket = spec.bind().map_err(|e| held_by_the_store(e, &plan.remove))?;
                log::info(format!("listening on {socket}")).kind("socket").field("SOCKET", socket.address()).emit();
                socket
            }
        };
        sockets.push(socket);
    }
    let Some(store) = store else { return Ok(sockets) };
    // The sockets the store keeps: those taken back and not removed, then the ones stored now.
    let kept = (0..specs.len()).filter(|s| plan.take[*s].is_some() && !plan.store.contains(s)).count();
    let mut room = store.capacity.map(|n| n.saturating_sub(kept));
    for &s in &plan.store {
        let socket = &mut sockets[s];
        if room == Some(0) {
            log::warn(format!(
                "not storing {socket}: FileDescriptorStoreMax={} is full (raise it to the number of --listen \
                 sockets, {})",
                store.capacity.unwrap_or(0),
                specs.len()
            ))
            .emit();
            // Bound anew at each start: its file (if any) goes with it.
            continue;
        }
        match store.add(&names[s], socket.as_fd()) {
            Ok(()) => {
                socket.origin = Origin::Stored;
                room = room.map(|n| n - 1);
                log::info(format!("stored {socket} in systemd's fd store as {}", names[s]))
                    .kind("socket")
                    .field("SOCKET", socket.address())
                    .emit();
            }
            Err(e) => log::warn(format!("failed to store {socket} in systemd's fd store: {e}")).emit(),
        }
    }
    if let Err(e) = store.sync() {
        log::warn(format!("systemd did not confirm the fd store's changes: {e}")).emit();
    }
    Ok(sockets)
}

pub fn dispatch(cli: Cli) -> Result<u8> {
    // Native journal entries only from the processes that live on (`run`, and `exec`, which
    // becomes the server): journald attributes a datagram to a unit by its sender's cgroup, read
    // when it handles it, and loses the unit of a sender that has exited by then (seen for an
    // ExecReload= `sockherd reload` that failed at once). stderr lines keep their unit: the stream
    // says which unit it belongs to when systemd connects it.
    log::init(cli.debug, matches!(cli.command, Command::Run(_) | Command::Exec(_)));
    match cli.command {
        Command::Run(args) => {
            // Re-executed by a supervisor of this service: its state, not a new start. A command
            // line this build refuses sends the process back to the image before.
            let handed = crate::reexec::take_handed();
            let config = match run_config(&args) {
                Ok(config) => config,
                Err(e) => match handed {
                    Some(handed) => return Err(crate::reexec::give_back(handed, &format!("{e:#}"))),
                    None => return Err(e),
                },
            };
            if let Some(handed) = handed {
                return Supervisor::resume(config, handed)?.run();
            }
            let sockets = acquire_sockets(&args.sockets, true)?;
            Supervisor::start(config, sockets)?.run()
        }
        Command::Exec(args) => {
            let mut sockets = acquire_sockets(&args.sockets, false)?;
            let dir = args.launch.chdir.as_deref().map(command::resolve_dir).transpose()?;
            let launch = Launch {
                flavor: args.launch.flavor,
                sockets: sockets.iter().collect(),
                generation: 1,
                dir,
                pass_notify: true,
                extra_env: Vec::new(),
                boot_priority: None,
                cgroup_procs: None,
            };
            if args.launch.flavor == Flavor::Nginx {
                let code = crate::native::start_nginx(&args.launch.command, &launch, Duration::from_secs(60))?;
                // nginx serves on them and outlives us: a socket file we made is its own now.
                sockets.iter_mut().for_each(Socket::leave_file);
                return Ok(code);
            }
            Err(command::exec(&args.launch.command, &launch))
        }
        Command::Reload(args) => {
            let pid = supervisor_pid(&args.control)?;
            if args.native {
                // NativeReload refuses a pid that runs sockherd: USR2 is an upgrade to unicorn and
                // nginx, and no upgrade of a supervisor.
                let reload = NativeReload {
                    pid,
                    flavor: args.flavor,
                    pidfile: args.pidfile,
                    workers: args.workers,
                    ready_timeout: args.control.timeout.0,
                    settle: args.ready_settle.0,
                    drain_timeout: args.drain_timeout.0,
                };
                let summary = reload.run().context("native upgrade failed")?;
                log::info(format!("reload succeeded: {summary}")).emit();
                return Ok(0);
            }
            let request = if args.join { Request::Join } else { Request::Reload };
            let answer = match control::request(pid, request, args.control.timeout.0) {
                Ok(answer) => answer,
                Err(e) => match e.downcast_ref::<Unreachable>() {
                    Some(Unreachable::NotSockherd { .. }) => {
                        bail!("reload failed: {e}; to drive a unicorn or nginx master's own upgrade, pass --native")
                    }
                    Some(_) => bail!("reload failed: {e}"),
                    None => return Err(e.context("reload failed")),
                },
            };
            match control::parse_answer(&answer) {
                Ok(Answer::Ok(message)) => {
                    log::info(format!("reload succeeded: {message}")).emit();
                    Ok(0)
                }
                Ok(Answer::Error(message) | Answer::Busy(message)) => bail!(
                    "reload failed: {message} (why: the new generation's own output, in the unit's journal or \
                     sockherd's stderr)"
                ),
                Err(_) => bail!(
                    "unexpected answer from the supervisor (pid {pid}): {:?}; is it another sockherd version? \
                     Restart the service after upgrading sockherd",
                    answer.trim()
                ),
            }
        }
        Command::Status(args) => status(args),
        Command::Reexec(args) => reexec(args),
        Command::ReexecCheck { state_version, args } => {
            let argv = std::iter::once(OsString::from("sockherd")).chain(args);
            let error = match Cli::try_parse_from(argv) {
                Ok(Cli { command: Command::Run(run), .. }) => run_config(&run).err().map(|e| format!("{e:#}")),
                Ok(_) => Some("it is not `sockherd run`".to_string()),
                Err(e) => Some(e.to_string()),
            };
            Ok(crate::reexec::check_mode(state_version, error))
        }
        Command::History(args) => history(args),
        Command::Unit(args) => unit(args),
        Command::Generate { what } => generate(what),
    }
}

/// The supervisor's configuration from `run`'s arguments, refusing bad combinations.
fn run_config(args: &RunArgs) -> Result<RunConfig> {
    let ready = args.ready.clone().unwrap_or_else(|| Readiness::default_for(args.launch.flavor));
    ready.check_flavor(args.launch.flavor).map_err(|e| anyhow!("invalid --ready {ready}: {e}"))?;
    let watchdog = match args.watchdog.as_deref() {
        Some("relay") => WatchdogMode::Relay,
        Some("probe") => WatchdogMode::Probe,
        Some("supervisor") => WatchdogMode::Supervisor,
        _ => match args.launch.flavor {
            Flavor::Puma | Flavor::Systemd => WatchdogMode::Relay,
            _ => WatchdogMode::Supervisor,
        },
    };
    if watchdog == WatchdogMode::Probe && !matches!(ready, Readiness::Probe { .. }) {
        bail!(
            "--watchdog probe asks the generation's private probe socket, which only --ready probe \
             (or probe:/PATH) gives it; the readiness is {ready}"
        );
    }
    let config = RunConfig {
        command: args.launch.command.clone(),
        flavor: args.launch.flavor,
        chdir: args.launch.chdir.clone(),
        ready,
        watchdog,
        ready_timeout: args.ready_timeout.0,
        ready_settle: args.ready_settle.0,
        drain_timeout: args.drain_timeout.0,
        stop_signal: args.stop_signal.unwrap_or(args.launch.flavor.graceful_signal()),
        stop_timeout: args.stop_timeout.0,
        memory_check: args.memory_check == "on",
        boot_priority: args.boot_priority == "on",
        metrics_file: args.metrics_file.clone(),
    };
    if let Some(path) = &config.metrics_file {
        crate::metrics::check_path(path).map_err(|e| anyhow!("invalid --metrics-file {}: {e}", path.display()))?;
    }
    Ok(config)
}

fn reexec(args: ReexecArgs) -> Result<u8> {
    let binary = match args.binary {
        Some(path) if !path.is_absolute() => {
            Some(std::path::absolute(&path).with_context(|| format!("invalid --binary '{}'", path.display()))?)
        }
        other => other,
    };
    if let Some(path) = binary.as_deref().and_then(Path::to_str).filter(|p| p.contains('\n')) {
        bail!("invalid --binary '{path}': a path with a line break cannot be sent");
    }
    let pid = match (&args.unit, args.pid) {
        (Some(unit_arg), _) => {
            let unit = status::service_name(unit_arg).map_err(|e| anyhow!("invalid unit '{unit_arg}': {e}"))?;
            let state = status::query_unit(&unit)?;
            if !state.exists() {
                bail!("unit {unit} not found (systemd has no such unit loaded)");
            }
            if !state.is_active() || state.main_pid <= 0 {
                bail!("{unit} is {} with no main process: nothing to re-execute", state.active_state);
            }
            state.main_pid
        }
        (None, pid) => supervisor_pid(&ControlArgs { pid, timeout: args.timeout })?,
    };
    let answer = control::request(pid, Request::Reexec { binary }, args.timeout.0).map_err(|e| {
        if e.is::<control::NoAnswer>() {
            // Sent whole and not answered: the supervisor keeps it (a reexec waits for a handoff
            // in flight), and whether it then succeeds is not ours to know any more.
            anyhow!(
                "reexec not done yet: {e}; it took the request and carries it out once no handoff \
                 is in flight, unless the new binary is refused: its log says which (reexec_done or \
                 reexec_failed), `sockherd status --pid {pid}` the version running"
            )
        } else {
            anyhow!("reexec failed: {e:#}")
        }
    })?;
    match control::parse_answer(&answer) {
        Ok(Answer::Ok(message)) => {
            log::info(message).emit();
            Ok(0)
        }
        Ok(Answer::Error(message)) if message.starts_with("unknown request") => bail!(
            "the supervisor (pid {pid}) predates reexec ({message}); restart the service once to run the new sockherd"
        ),
        Ok(Answer::Error(message) | Answer::Busy(message)) => bail!("reexec failed: {message}"),
        Err(_) => bail!("unexpected answer from the supervisor (pid {pid}): {:?}", answer.trim()),
    }
}

fn history(args: HistoryArgs) -> Result<u8> {
    let unit = status::service_name(&args.unit).map_err(|e| anyhow!("invalid unit '{}': {e}", args.unit))?;
    let reloads = history::parse(&history::query(&unit, args.since.as_deref())?);
    if args.json {
        print!("{}", history::to_json(&reloads));
    } else if reloads.is_empty() {
        println!("no reloads of {unit} in the journal{}", if args.since.is_some() { " since then" } else { "" });
    } else {
        print!("{}", history::render(&reloads));
    }
    Ok(0)
}

/// `--pid`, else `$MAINPID` (systemd sets it for ExecReload=).
fn supervisor_pid(args: &ControlArgs) -> Result<i32> {
    if let Some(pid) = args.pid {
        return Ok(pid);
    }
    match std::env::var(MAINPID) {
        Ok(value) => {
            let pid = value
                .trim()
                .parse()
                .ok()
                .filter(|p: &i32| *p > 0)
                .ok_or_else(|| anyhow::anyhow!("invalid MAINPID='{value}': expected the pid of `sockherd run`"))?;
            check_main_pid_identity(pid, std::env::var(MAINPIDFDID).ok().as_deref())?;
            Ok(pid)
        }
        Err(_) => bail!("no supervisor given: pass --pid PID, or run it as ExecReload= where systemd sets $MAINPID"),
    }
}

/// systemd >= 258 sets `$MAINPIDFDID` beside `$MAINPID`: the main process's pidfd inode id.
/// Where the kernel has pidfd ids, `pid` must still name that process, not one that took the
/// pid after the main process exited.
fn check_main_pid_identity(pid: i32, pidfd_id: Option<&str>) -> Result<()> {
    let Some(text) = pidfd_id else { return Ok(()) };
    let id: u64 =
        text.trim().parse().map_err(|_| anyhow!("invalid {MAINPIDFDID}='{text}': expected a pidfd inode id"))?;
    match sys::pid_inode_id(pid) {
        Ok(Some(now)) if now != id => bail!(
            "{MAINPID}={pid} no longer names the service's main process ({MAINPIDFDID}={id}, the process with that \
             pid now has {now}): it exited"
        ),
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
            bail!("{MAINPID}={pid}: the service's main process has exited")
        }
        Err(e) => Err(e).with_context(|| format!("failed to open a pidfd of {MAINPID}={pid}")),
    }
}

/// The supervisor's `status` answer: a JSON object about itself (checked, since it is printed
/// and embedded as JSON), or why there is none.
fn ask_status(pid: i32, timeout: Duration) -> Result<String> {
    let answer = control::request(pid, Request::Status, timeout)?;
    if let Some(message) = answer.strip_prefix("error ") {
        let message = message.trim();
        if message.starts_with("permission denied") {
            bail!("the supervisor (pid {pid}) refused: {message}; run sockherd status as root (sudo) or as that user");
        }
        bail!("the supervisor (pid {pid}) answered: {message}");
    }
    status::check_answer(&answer, pid).map_err(|e| anyhow!("the supervisor (pid {pid}) answered {e}"))
}

fn status(args: StatusArgs) -> Result<u8> {
    let Some(unit_arg) = args.unit else {
        let pid = match args.pid {
            Some(pid) => pid,
            None => supervisor_pid(&ControlArgs { pid: None, timeout: args.timeout }).map_err(|_| {
                anyhow!(
                    "no supervisor given: pass a unit (sockherd status app) or --pid PID (the pid of `sockherd run`)"
                )
            })?,
        };
        let answer = ask_status(pid, args.timeout.0)?;
        if args.json {
            println!("{answer}");
        } else {
            print!("{}", status::render(&answer)?);
        }
        return Ok(status::EXIT_OK);
    };
    let unit = status::service_name(&unit_arg).map_err(|e| anyhow!("invalid unit '{unit_arg}': {e}"))?;
    let state = status::query_unit(&unit)?;
    if !state.exists() {
        if args.json {
            println!("{}", state.to_json(None));
        }
        log::error(format!(
            "unit {unit} not found (systemd has no such unit loaded); check the name with `systemctl list-units --all '*{}*'`",
            unit.trim_end_matches(".service")
        ))
        .emit();
        return Ok(status::EXIT_NO_UNIT);
    }
    let code = if state.is_active() { status::EXIT_OK } else { status::EXIT_NOT_ACTIVE };
    let pid = state.main_pid;
    // Only a `sockherd run` answers on its control socket; in native mode the main process is
    // the server itself.
    let supervisor = if pid <= 0 {
        None
    } else {
        match ask_status(pid, args.timeout.0) {
            Err(e) if matches!(e.downcast_ref::<Unreachable>(), Some(Unreachable::NotSockherd { .. })) => None,
            answer => Some(answer),
        }
    };
    if args.json {
        let json = supervisor.as_ref().and_then(|r| r.as_ref().ok()).map(String::as_str);
        println!("{}", state.to_json(json));
    } else {
        print!("{}", state.render());
        match &supervisor {
            Some(Ok(answer)) => print!("\n{}", status::render(answer)?),
            Some(Err(_)) => {}
            None if pid > 0 => println!(
                "  main process {pid} is not a sockherd supervisor (native mode? then the server itself is the \
                 main process: `systemctl status {unit}` shows its processes)"
            ),
            None => println!("  no main process"),
        }
    }
    match supervisor {
        Some(Err(e)) => {
            Err(e.context(format!("{unit} is {}, but its supervisor did not tell its state", state.active_state)))
        }
        _ => Ok(code),
    }
}

fn unit(args: UnitArgs) -> Result<u8> {
    let name = unitgen::validate_name(&args.name).map_err(|e| anyhow!("invalid NAME '{}': {e}", args.name))?;
    let user = args.user.unwrap_or_else(|| name.clone());
    let group = args.group.unwrap_or_else(|| user.clone());
    for (what, path) in args.chdir.iter().map(|p| ("--chdir", p)).chain(args.writable.iter().map(|p| ("--writable", p)))
    {
        if !path.is_absolute() {
            bail!("invalid {what} '{}': a unit needs an absolute path (e.g. /srv/{name}/current)", path.display());
        }
    }
    // The path this binary was started by, as `sockherd reexec` takes it: a symlink's rather
    // than its target's, so that the unit runs what an upgrade points the link at; the target's
    // where the units' sandbox would hide the link and not the target (~/.local/bin/sockherd ->
    // /opt/sockherd-1.2/sockherd).
    let sockherd = match args.sockherd {
        Some(path) => path,
        None => match (crate::reexec::installed_exe(), std::env::current_exe().ok()) {
            (Some(started), Some(target)) if unitgen::hidden(&started) && !unitgen::hidden(&target) => target,
            (Some(started), _) => started,
            (None, Some(target)) => target,
            (None, None) => {
                bail!("failed to find the path of this sockherd binary; pass --sockherd PATH (e.g. /usr/bin/sockherd)")
            }
        },
    };
    let systemd_version = match args.systemd_version {
        Some(version) => version,
        None => unitgen::installed_systemd_version()?,
    };
    let command = args
        .command
        .into_iter()
        .map(|word| {
            word.into_string()
                .map_err(|word| anyhow!("the command's argument {word:?} is not UTF-8; a unit file cannot carry it"))
        })
        .collect::<Result<Vec<String>>>()?;
    if let Some(ready) = &args.ready {
        ready.check_flavor(args.flavor).map_err(|e| anyhow!("invalid --ready {ready}: {e}"))?;
    }
    let spec = UnitSpec {
        name,
        flavor: args.flavor,
        listen: args.listen,
        user,
        group,
        chdir: args.chdir,
        ready: args.ready.map(|r| r.to_string()),
        writable: args.writable,
        sockherd,
        systemd_version,
        command,
        no_socket_units: args.no_socket_units,
    };
    let files = unitgen::generate(&spec)?;
    for warning in unitgen::warnings(&spec) {
        log::warn(warning).emit();
    }
    let Some(dir) = args.output else {
        print!("{}", unitgen::render(&files));
        return Ok(0);
    };
    let written = unitgen::write(&files, &dir, args.force)?;
    for path in &written {
        println!("wrote {}", path.display());
    }
    let sockets: Vec<&str> = files.iter().map(|f| f.name.as_str()).filter(|n| n.ends_with(".socket")).collect();
    let start = if sockets.is_empty() { format!("{}.service", spec.name) } else { sockets.join(" ") };
    println!("next: systemctl daemon-reload && systemctl enable --now {start}");
    Ok(0)
}

/// A man page section beyond what clap describes: tagged paragraphs, or plain text (no tag).
type ManSection = (&'static str, Vec<(String, String)>);

/// `  TAG  text` lines (continuations indented deeper) → (tag, text) pairs.
fn tagged(text: &str) -> Vec<(String, String)> {
    let mut entries: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        match (indent, entries.last_mut()) {
            (2, _) => {
                let (tag, rest) = line.trim().split_once("  ").unwrap_or((line.trim(), ""));
                entries.push((tag.to_string(), rest.trim().to_string()));
            }
            (_, Some((_, text))) if indent > 2 => {
                text.push(' ');
                text.push_str(line.trim());
            }
            _ => {}
        }
    }
    entries
}

/// The top page's sections beyond what clap describes.
fn man_extra_sections(subcommands: &[String]) -> Vec<ManSection> {
    let mut see_also: Vec<String> = subcommands.iter().map(|s| format!("sockherd-{s}(1)")).collect();
    see_also.extend(
        ["systemctl(1)", "systemd.socket(5)", "systemd.service(5)", "sd_listen_fds(3)", "sd_notify(3)"]
            .map(String::from),
    );
    vec![
        ("EXIT STATUS", tagged(EXIT_STATUS)),
        (
            "FILES",
            vec![
                (
                    "/usr/share/sockherd/units/".into(),
                    "The unit templates: app-http.socket, app-unix.socket, FLAVOR/app.service, notify-reload.conf, delegate-subgroup.conf. \
                     sockherd unit writes units from the same templates (compiled in)."
                        .into(),
                ),
                (
                    "/usr/share/sockherd/contrib/".into(),
                    "Example apps, server configurations and a deploy script.".into(),
                ),
            ],
        ),
        ("SEE ALSO", vec![(String::new(), see_also.join(", "))]),
    ]
}

/// roff-escapes one line of text.
fn roff_line(line: &str) -> String {
    let escaped = line.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with('.') || escaped.starts_with('\'') { format!("\\&{escaped}") } else { escaped }
}

/// A man page from clap's definition of `cmd`, with `extra` sections before VERSION.
fn render_man(cmd: clap::Command, extra: &[ManSection]) -> Result<Vec<u8>> {
    let man = clap_mangen::Man::new(cmd.clone()).manual("sockherd manual");
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut out)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(&mut out)?;
    }
    for (heading, entries) in extra {
        out.extend_from_slice(format!(".SH \"{heading}\"\n").as_bytes());
        for (tag, text) in entries {
            if tag.is_empty() {
                out.extend_from_slice(format!("{}\n", roff_line(text)).as_bytes());
            } else {
                out.extend_from_slice(format!(".TP\n{}\n{}\n", roff_line(tag), roff_line(text)).as_bytes());
            }
        }
    }
    if cmd.get_version().is_some() {
        man.render_version_section(&mut out)?;
    }
    Ok(out)
}

fn generate(what: Generate) -> Result<u8> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    match what {
        Generate::Man { out } => {
            let subcommands: Vec<clap::Command> = cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned().collect();
            let names: Vec<String> = subcommands.iter().map(|s| s.get_name().to_string()).collect();
            let top = render_man(cmd.clone(), &man_extra_sections(&names))?;
            let Some(dir) = out else {
                std::io::Write::write_all(&mut std::io::stdout(), &top).context("failed to write the man page")?;
                return Ok(0);
            };
            std::fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
            let mut pages = vec![("sockherd.1".to_string(), top)];
            for sub in subcommands {
                let see_also = vec![("SEE ALSO", vec![(String::new(), "sockherd(1)".to_string())])];
                let name = format!("sockherd-{}", sub.get_name());
                let sub = sub.version(env!("CARGO_PKG_VERSION"));
                pages.push((format!("{name}.1"), render_man(sub, &see_also)?));
            }
            for (file, page) in pages {
                let path = dir.join(file);
                std::fs::write(&path, page).with_context(|| format!("failed to write {}", path.display()))?;
                println!("{}", path.display());
            }
            Ok(0)
        }
        Generate::Completions { shell, out } => {
            let Some(dir) = out else {
                clap_complete::generate(shell, &mut cmd, "sockherd", &mut std::io::stdout());
                return Ok(0);
            };
            std::fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
            let path = clap_complete::generate_to(shell, &mut cmd, "sockherd", &dir)
                .with_context(|| format!("failed to write {shell} completions into {}", dir.display()))?;
            println!("{}", path.display());
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(text: &str) -> Result<Duration, String> {
        text.parse::<Seconds>().map(|s| s.0)
    }

    #[test]
    fn durations() {
        assert_eq!(secs("30"), Ok(Duration::from_secs(30)));
        assert_eq!(secs("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(secs("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(secs("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(secs("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(secs(" 2m "), Ok(Duration::from_secs(120)));
        assert_eq!(secs("0"), Ok(Duration::ZERO));
        assert_eq!(secs("999999999"), Ok(Duration::from_secs(999_999_999)));
    }

    #[test]
    fn bad_durations() {
        for bad in ["", "s", "-1", "-1s", "abc", "1h", "inf", "NaN", "1000000000", "16666667m", "2 m m"] {
            let err = secs(bad).unwrap_err();
            assert_eq!(err, format!("invalid duration '{bad}' (expected e.g. 30, 30s, 1500ms or 2m)"), "{bad}");
        }
    }

    #[test]
    fn main_pid_must_still_have_the_pidfd_id_systemd_gave() {
        let pid = sys::getpid();
        check_main_pid_identity(pid, None).unwrap();
        let err = check_main_pid_identity(pid, Some("x")).unwrap_err().to_string();
        assert!(err.contains("invalid MAINPIDFDID='x'"), "{err}");
        match sys::pid_inode_id(pid).unwrap() {
            Some(id) => {
                check_main_pid_identity(pid, Some(&id.to_string())).unwrap();
                let err = check_main_pid_identity(pid, Some(&(id + 1).to_string())).unwrap_err().to_string();
                assert!(err.contains(&format!("MAINPID={pid} no longer names the service's main process")), "{err}");
            }
            // Nothing to compare without pidfd ids.
            None => check_main_pid_identity(pid, Some("12345")).unwrap(),
        }
    }
}
