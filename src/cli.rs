//! The command line: parse, refuse bad combinations in one place, then dispatch.

use std::ffi::OsString;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::activation;
use crate::command::{self, Launch};
use crate::flavor::Flavor;
use crate::listen::ListenSpec;
use crate::log;
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
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
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
            Ok(v) if v.is_finite() && v >= 0.0 && v * scale < 1e9 => {
                Ok(Seconds(Duration::from_secs_f64(v * scale)))
            }
            _ => Err(format!(
                "invalid duration '{text}' (expected e.g. 30, 30s, 1500ms or 2m)"
            )),
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
                bail!(
                    "no sockets to hand over: not socket-activated ({reason}) and no --listen given"
                );
            }
            let mut sockets = Vec::with_capacity(args.listen.len());
            for spec in &args.listen {
                let socket = spec.bind()?;
                log::info(format!("listening on {socket}"))
                    .kind("socket")
                    .field("SOCKET", socket.address())
                    .emit();
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
                stop_signal: args
                    .stop_signal
                    .unwrap_or(args.launch.flavor.graceful_signal()),
                stop_timeout: args.stop_timeout.0,
            };
            Supervisor::start(config, sockets)?.run()
        }
        Command::Exec(args) => {
            let sockets = acquire_sockets(&args.sockets)?;
            let dir = args
                .launch
                .chdir
                .as_deref()
                .map(command::resolve_dir)
                .transpose()?;
            let launch = Launch {
                flavor: args.launch.flavor,
                sockets: sockets.iter().collect(),
                generation: 1,
                dir,
                pass_notify: true,
                extra_env: Vec::new(),
            };
            Err(command::exec(&args.launch.command, &launch))
        }
    }
}
