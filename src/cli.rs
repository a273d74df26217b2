//! The command line: parse, refuse bad combinations in one place, then dispatch.

use std::ffi::OsString;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::activation;
use crate::command::{self, Launch};
use crate::control::{self, Request};
use crate::flavor::Flavor;
use crate::listen::ListenSpec;
use crate::log;
use crate::native::NativeReload;
use crate::readiness::Readiness;
use crate::signal::Signal;
use crate::socket::Socket;
use crate::supervisor::{RunConfig, Supervisor};

#[derive(Parser, Debug)]
#[command(
    name = "sockherd",
    version,
    about = "Hands systemd's (or its own) listening sockets to preforking app servers and reloads them without dropping a connection",
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
    /// When the main process is a unicorn or nginx master instead (native mode), drive its own
    /// USR2 upgrade and hand the new master's pid to systemd.
    Reload(ReloadArgs),
    /// Print a running supervisor's generations, sockets and last reload as JSON.
    Status(ControlArgs),
}

#[derive(Args, Debug)]
struct ReloadArgs {
    #[command(flatten)]
    control: ControlArgs,

    /// Drive the server's own upgrade (USR2) instead of asking a supervisor; chosen
    /// automatically when PID is not a `sockherd run` supervisor.
    #[arg(long, conflicts_with = "join")]
    native: bool,

    /// Report the outcome of the reload a SIGHUP just started instead of starting another one
    /// (for ExecReload= beside Type=notify-reload, where systemd sends SIGHUP first).
    #[arg(long)]
    join: bool,

    /// Native mode: the server (default: told by the master's process title).
    #[arg(long, value_name = "FLAVOR")]
    flavor: Option<Flavor>,

    /// Native mode: the server's pid file, to find the new master by (unicorn's `pid`,
    /// nginx's `pid`). Without it, the new master is the old one's child titled "master".
    #[arg(long, value_name = "PATH")]
    pidfile: Option<PathBuf>,

    /// Native mode: workers the new master must have before it counts as ready (default: as
    /// many as the old master has).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,

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
    /// cmd:COMMAND or exec (default: the flavor's: notify for puma and systemd, probe for
    /// gunicorn, unicorn and nginx, delay:1 for server-starter and einhorn).
    #[arg(long, value_name = "STRATEGY")]
    ready: Option<Readiness>,

    /// How long a new generation may take to become ready before it is killed (and, on a
    /// reload, the old one keeps serving).
    #[arg(long, default_value = "60s", value_name = "DURATION")]
    ready_timeout: Seconds,

    /// How long an old generation may drain after a reload before its process group gets
    /// SIGKILL.
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    drain_timeout: Seconds,

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

/// Sockets from systemd if it passed any, else the `--listen` ones, bound now.
fn acquire_sockets(args: &SocketArgs) -> Result<Vec<Socket>> {
    let activated = activation::receive()?;
    let sockets = match activated {
        Ok(sockets) if !sockets.is_empty() => {
            if !args.listen.is_empty() && !args.fallback {
                bail!(
                    "systemd passed {} socket(s) (LISTEN_FDS) and --listen was given too; drop --listen, \
                     or add --fallback to use --listen only when not socket-activated",
                    sockets.len()
                );
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
                Ok(_) => "LISTEN_FDS=0".to_string(),
            };
            if args.listen.is_empty() {
                bail!("no sockets to hand over: not socket-activated ({reason}) and no --listen given");
            }
            let mut sockets = Vec::with_capacity(args.listen.len());
            for spec in &args.listen {
                let socket = spec.bind()?;
                log::info(format!("listening on {socket}")).kind("socket").field("SOCKET", socket.address()).emit();
                sockets.push(socket);
            }
            sockets
        }
    };
    Ok(sockets)
}

pub fn dispatch(cli: Cli) -> Result<u8> {
    log::init(cli.debug);
    match cli.command {
        Command::Run(args) => {
            let sockets = acquire_sockets(&args.sockets)?;
            let config = RunConfig {
                command: args.launch.command,
                flavor: args.launch.flavor,
                chdir: args.launch.chdir,
                ready: args.ready.unwrap_or_else(|| Readiness::default_for(args.launch.flavor)),
                ready_timeout: args.ready_timeout.0,
                drain_timeout: args.drain_timeout.0,
                stop_signal: args.stop_signal.unwrap_or(args.launch.flavor.graceful_signal()),
                stop_timeout: args.stop_timeout.0,
            };
            Supervisor::start(config, sockets)?.run()
        }
        Command::Exec(args) => {
            let sockets = acquire_sockets(&args.sockets)?;
            let dir = args.launch.chdir.as_deref().map(command::resolve_dir).transpose()?;
            let launch = Launch {
                flavor: args.launch.flavor,
                sockets: sockets.iter().collect(),
                generation: 1,
                dir,
                pass_notify: true,
                extra_env: Vec::new(),
            };
            if args.launch.flavor == Flavor::Nginx {
                return crate::native::start_nginx(&args.launch.command, &launch, Duration::from_secs(60));
            }
            Err(command::exec(&args.launch.command, &launch))
        }
        Command::Reload(args) => {
            let pid = supervisor_pid(&args.control)?;
            if args.native || args.flavor.is_some() || !control::supervisor_listening(pid) {
                if !args.native {
                    log::info(format!("pid {pid} is not a sockherd supervisor: driving the server's own upgrade"))
                        .emit();
                }
                let reload = NativeReload {
                    pid,
                    flavor: args.flavor,
                    pidfile: args.pidfile,
                    workers: args.workers,
                    ready_timeout: args.control.timeout.0,
                    drain_timeout: args.drain_timeout.0,
                };
                let summary = reload.run().context("native upgrade failed")?;
                log::info(format!("reload succeeded: {summary}")).emit();
                return Ok(0);
            }
            let request = if args.join { Request::Join } else { Request::Reload };
            let answer = control::request(pid, request, args.control.timeout.0)?;
            let answer = answer.trim();
            match answer.split_once(' ') {
                Some(("ok", message)) => {
                    log::info(format!("reload succeeded: {message}")).emit();
                    Ok(0)
                }
                Some(("error", message)) => bail!("reload failed: {message}"),
                _ => bail!("unexpected answer from the supervisor (pid {pid}): {answer:?}"),
            }
        }
        Command::Status(args) => {
            let pid = supervisor_pid(&args)?;
            let answer = control::request(pid, Request::Status, args.timeout.0)?;
            if let Some(message) = answer.strip_prefix("error ") {
                bail!("{}", message.trim());
            }
            println!("{}", answer.trim());
            Ok(0)
        }
    }
}

/// `--pid`, else `$MAINPID` (systemd sets it for ExecReload=).
fn supervisor_pid(args: &ControlArgs) -> Result<i32> {
    if let Some(pid) = args.pid {
        return Ok(pid);
    }
    match std::env::var("MAINPID") {
        Ok(value) => value
            .trim()
            .parse()
            .ok()
            .filter(|p: &i32| *p > 0)
            .ok_or_else(|| anyhow::anyhow!("invalid MAINPID='{value}': expected the pid of `sockherd run`")),
        Err(_) => bail!("no supervisor given: pass --pid PID, or run it as ExecReload= where systemd sets $MAINPID"),
    }
}
