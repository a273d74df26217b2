//! `sockherd run`: the service's main process. It holds the sockets, starts the server as a
//! child generation, tells systemd how it goes, and stops it the server's graceful way.
//!
//! One loop waits on the signal pipe with the nearest deadline as timeout; signal handlers only
//! queue. Every descendant is ours to reap (we are a child subreaper), and each generation runs
//! in its own process group so stopping it reaches workers that outlived their master.

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::command::{self, Launch};
use crate::flavor::Flavor;
use crate::log;
use crate::notify::Notifier;
use crate::protocol::{READY, STATUS, STOPPING};
use crate::signal::{Signal, SignalQueue};
use crate::socket::Socket;
use crate::sys::{self, Pid};

pub struct RunConfig {
    pub command: Vec<OsString>,
    pub flavor: Flavor,
    /// `--chdir`, unresolved: it is resolved anew for every generation.
    pub chdir: Option<PathBuf>,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
}

/// What the supervisor is doing, as shown in STATUS=.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Serving,
    /// The graceful signal was sent; SIGKILL follows at the deadline.
    Stopping {
        deadline: Instant,
    },
    /// SIGKILL was sent; waiting for the processes to be reaped.
    Killing,
}

struct Generation {
    number: u64,
    pid: Pid,
    release: Option<PathBuf>,
    started: Instant,
    exit: Option<ExitStatus>,
}

impl Generation {
    fn describe(&self) -> String {
        match &self.release {
            Some(release) => format!(
                "generation {} (pid {}, {})",
                self.number,
                self.pid,
                release.display()
            ),
            None => format!("generation {} (pid {})", self.number, self.pid),
        }
    }

    /// Whether any process of the generation is left: the master, or anything in its group.
    fn alive(&self) -> bool {
        self.exit.is_none() || sys::group_alive(self.pid)
    }
}

pub struct Supervisor {
    config: RunConfig,
    sockets: Vec<Socket>,
    notifier: Notifier,
    signals: SignalQueue,
    state: State,
    generation: Generation,
    /// Whether the stop was asked for (signal) or forced on us (the server exited).
    stop_requested: bool,
}

impl Supervisor {
    /// Starts generation 1 and returns the running supervisor.
    pub fn start(config: RunConfig, sockets: Vec<Socket>) -> Result<Supervisor> {
        sys::set_child_subreaper()
            .context("failed to become a child subreaper (PR_SET_CHILD_SUBREAPER)")?;
        let signals = SignalQueue::install(&[
            Signal::TERM,
            Signal::INT,
            Signal::QUIT,
            Signal::HUP,
            Signal::CHLD,
        ])
        .context("failed to install signal handlers")?;
        let notifier = Notifier::from_env();
        let generation = spawn_generation(&config, &sockets, 1)?;
        let supervisor = Supervisor {
            config,
            sockets,
            notifier,
            signals,
            state: State::Serving,
            generation,
            stop_requested: false,
        };
        // Until readiness strategies exist, a generation counts as ready once exec succeeded.
        log::info(format!("{} is ready", supervisor.generation.describe()))
            .kind("ready")
            .field("GENERATION", supervisor.generation.number)
            .field("PID", supervisor.generation.pid)
            .emit();
        let status = supervisor.status_line();
        supervisor
            .notifier
            .send(&[READY.to_string(), format!("{STATUS}={status}")]);
        Ok(supervisor)
    }

    /// Runs until the server is gone, and returns the exit code for our own exit.
    pub fn run(mut self) -> Result<u8> {
        loop {
            let timeout = match self.state {
                State::Stopping { deadline } => {
                    Some(deadline.saturating_duration_since(Instant::now()))
                }
                // While killing, re-check now and then: a group member may not be our child.
                State::Killing => Some(Duration::from_millis(100)),
                State::Serving => None,
            };
            sys::poll_readable(&[self.signals.as_fd()], timeout)
                .context("failed to wait for events")?;
            for signal in self.signals.drain() {
                self.on_signal(signal);
            }
            self.reap();
            if let Some(code) = self.advance() {
                for socket in &self.sockets {
                    socket.remove_created_file();
                }
                return Ok(code);
            }
        }
    }

    fn on_signal(&mut self, signal: Signal) {
        match signal {
            Signal::TERM | Signal::INT => self.stop(false, signal),
            Signal::QUIT => self.stop(true, signal),
            Signal::HUP => {
                log::warn("received SIGHUP: reloading is not available in this version; the server keeps running").emit();
            }
            _ => {}
        }
    }

    /// Starts stopping the serving generation (gracefully, or fast), once.
    fn stop(&mut self, fast: bool, why: Signal) {
        self.stop_requested = true;
        match self.state {
            State::Serving => {}
            State::Stopping { .. } if fast => {}
            State::Stopping { .. } | State::Killing => {
                log::info(format!("received {why} while stopping; already stopping")).emit();
                return;
            }
        }
        let signal = if fast {
            self.config.flavor.fast_signal()
        } else {
            self.config.stop_signal
        };
        log::info(format!(
            "received {why}: stopping {} with {signal}",
            self.generation.describe()
        ))
        .kind("stop")
        .field("GENERATION", self.generation.number)
        .field("PID", self.generation.pid)
        .emit();
        self.notifier.send(&[
            STOPPING.to_string(),
            format!("{STATUS}=stopping {}", self.generation.describe()),
        ]);
        self.signal_generation(signal);
        self.state = State::Stopping {
            deadline: Instant::now() + self.config.stop_timeout,
        };
    }

    fn signal_generation(&self, signal: Signal) {
        let generation = &self.generation;
        if generation.exit.is_none() {
            if let Err(e) = sys::kill(generation.pid, signal.0) {
                log::warn(format!(
                    "failed to send {signal} to pid {}: {e}",
                    generation.pid
                ))
                .emit();
            }
        } else if let Err(e) = sys::kill_group(generation.pid, signal.0) {
            log::warn(format!(
                "failed to send {signal} to process group {}: {e}",
                generation.pid
            ))
            .emit();
        }
    }

    /// Reaps every exited descendant; records the master's status.
    fn reap(&mut self) {
        loop {
            match sys::reap_any() {
                Ok(Some((pid, status))) if pid == self.generation.pid => {
                    self.generation.exit = Some(status);
                    let uptime = self.generation.started.elapsed();
                    let expected = self.stop_requested;
                    let message = format!(
                        "{} exited: {} after {:.1}s{}",
                        self.generation.describe(),
                        describe_status(status),
                        uptime.as_secs_f64(),
                        if expected { "" } else { " (unexpected)" }
                    );
                    let event = if expected {
                        log::info(message)
                    } else {
                        log::error(message)
                    };
                    event
                        .kind("exit")
                        .field("GENERATION", self.generation.number)
                        .field("PID", pid)
                        .field("EXIT_STATUS", describe_status(status))
                        .emit();
                }
                Ok(Some((pid, status))) => {
                    log::debug(format!("reaped pid {pid}: {}", describe_status(status))).emit();
                }
                Ok(None) => return,
                Err(e) => {
                    log::warn(format!("waitpid failed: {e}")).emit();
                    return;
                }
            }
        }
    }

    /// Moves the state machine on after events; returns our exit code once everything is gone.
    fn advance(&mut self) -> Option<u8> {
        if self.state == State::Serving && self.generation.exit.is_some() {
            // The server died on its own: take its group down too, then exit so systemd's
            // Restart= can act (the socket unit keeps the sockets; clients queue meanwhile).
            self.notifier.send(&[format!(
                "{STATUS}={} exited; stopping",
                self.generation.describe()
            )]);
            if sys::group_alive(self.generation.pid) {
                self.signal_generation(self.config.stop_signal);
            }
            self.state = State::Stopping {
                deadline: Instant::now() + self.config.stop_timeout,
            };
        }
        if !self.generation.alive() {
            return Some(self.exit_code());
        }
        if let State::Stopping { deadline } = self.state {
            if Instant::now() >= deadline {
                log::warn(format!(
                    "{} did not stop within {:.0?}: sending SIGKILL to its process group",
                    self.generation.describe(),
                    self.config.stop_timeout
                ))
                .kind("kill")
                .field("GENERATION", self.generation.number)
                .emit();
                let _ = sys::kill_group(self.generation.pid, libc::SIGKILL);
                if self.generation.exit.is_none() {
                    let _ = sys::kill(self.generation.pid, libc::SIGKILL);
                }
                self.state = State::Killing;
            }
        }
        None
    }

    /// Our exit code: 0 for a clean requested stop, otherwise the server's own status
    /// (its exit code, or 128 + the signal that killed it, as shells report it).
    fn exit_code(&self) -> u8 {
        let status = self
            .generation
            .exit
            .expect("exit_code after the generation exited");
        if self.stop_requested
            && self.state != State::Killing
            && self.config.flavor.is_clean_exit(status)
        {
            return 0;
        }
        match (status.code(), status.signal()) {
            (Some(code), _) => code as u8,
            (None, Some(signal)) => 128u8.wrapping_add(signal as u8),
            _ => 1,
        }
    }

    fn status_line(&self) -> String {
        let state = match self.state {
            State::Serving => "serving",
            State::Stopping { .. } => "stopping",
            State::Killing => "killing",
        };
        format!(
            "{state}: {} [{}]",
            self.generation.describe(),
            self.config.flavor
        )
    }
}

fn spawn_generation(config: &RunConfig, sockets: &[Socket], number: u64) -> Result<Generation> {
    let release = config
        .chdir
        .as_deref()
        .map(command::resolve_dir)
        .transpose()?;
    let launch = Launch {
        flavor: config.flavor,
        sockets: sockets.iter().collect(),
        generation: number,
        dir: release.clone(),
        pass_notify: false,
        extra_env: Vec::new(),
    };
    let pid = command::spawn(&config.command, &launch)?;
    let generation = Generation {
        number,
        pid,
        release,
        started: Instant::now(),
        exit: None,
    };
    log::info(format!(
        "started {}: {}",
        generation.describe(),
        config
            .command
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    ))
    .kind("spawn")
    .field("GENERATION", number)
    .field("PID", pid)
    .field(
        "RELEASE",
        generation
            .release
            .as_ref()
            .map(|r| r.display().to_string())
            .unwrap_or_default(),
    )
    .emit();
    Ok(generation)
}

pub fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by {}", Signal(signal)),
        _ => format!("{status}"),
    }
}
