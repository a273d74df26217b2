//! `sockherd run`: the service's main process and the state machine of generations.
//!
//! It holds the sockets for its whole life, starts the server as generation 1, and on reload
//! (SIGHUP, or `sockherd reload` over the control socket) starts generation N+1 from the freshly
//! resolved release, waits until it is ready, then drains generation N. A new generation that
//! exits or misses its ready timeout is killed and N keeps serving: the reload fails loudly.
//!
//! Exactly one handoff is in flight. Reload requests that arrive during one are coalesced into
//! a single follow-up reload, started as soon as the current one ends; every requester gets
//! the outcome of the handoff that covers its request.
//!
//! One loop waits (poll) on the signal pipe, the control socket, the generations' notify sockets
//! and probe connections, with the nearest deadline as timeout. Signal handlers only queue.
//! We are a child subreaper and each generation is its own process group, so a worker that
//! outlives its master is still drained, killed and reaped.

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow};

use crate::command::{self, Launch};
use crate::control::{ConnId, ControlServer, Request};
use crate::flavor::Flavor;
use crate::generation::{Generation, Role, describe_status, shell_code};
use crate::log;
use crate::notify::{self, Notifier};
use crate::protocol::{EXTEND_TIMEOUT_USEC, MONOTONIC_USEC, READY, RELOADING, STATUS, STOPPING, WATCHDOG};
use crate::readiness::{self, Check, PROBE_SOCKET_NAME, Readiness, Verdict};
use crate::signal::{Signal, SignalQueue};
use crate::socket::{Origin, Socket};
use crate::status::json_str;
use crate::sys;

pub struct RunConfig {
    pub command: Vec<OsString>,
    pub flavor: Flavor,
    /// `--chdir`, unresolved: resolved anew for every generation.
    pub chdir: Option<PathBuf>,
    pub ready: Readiness,
    pub ready_timeout: Duration,
    pub drain_timeout: Duration,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
}

/// The supervisor as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    /// Every generation was told to stop; SIGKILL to what is left at the deadline.
    Stopping {
        deadline: Instant,
    },
    /// SIGKILL was sent; waiting until every process is reaped.
    Killing,
}

/// The handoff in flight: generation `new` is starting.
struct Handoff {
    new: u64,
    started: Instant,
    waiters: Vec<ConnId>,
    /// Started by SIGHUP (systemd's notify-reload) rather than by a control request.
    by_signal: bool,
    /// Once the new generation is ready: when, and the old generations it sent draining. The
    /// handoff ends when none of those still holds a public socket (none can accept any more).
    ready: Option<(Duration, Vec<u64>)>,
}

/// How long after a SIGHUP-started handoff ended a `join` request still gets its outcome: the
/// ExecReload= process systemd starts after the SIGHUP may connect after a quick handoff ended.
const JOIN_WINDOW: Duration = Duration::from_secs(10);

/// How the last reload ended, for STATUS= and `sockherd status`.
struct ReloadOutcome {
    at: SystemTime,
    ok: bool,
    message: String,
    took: Duration,
}

/// Why the supervisor is stopping; decides our exit code.
enum StopCause {
    /// TERM/INT/QUIT: exit 0 if the serving generation ends cleanly.
    Requested,
    /// The serving generation exited on its own: exit non-zero so systemd's Restart= acts.
    Crashed { status: ExitStatus },
    /// Generation 1 never became ready: it exited (with this status), or missed its deadline.
    StartFailed { message: String, status: Option<ExitStatus> },
}

pub struct Supervisor {
    config: RunConfig,
    sockets: Vec<Socket>,
    notifier: Notifier,
    signals: SignalQueue,
    control: ControlServer,
    runtime_dir: PathBuf,
    /// Inodes of the public sockets, to tell when a draining generation stopped accepting.
    socket_inodes: Vec<u64>,
    generations: Vec<Generation>,
    next_number: u64,
    state: State,
    handoff: Option<Handoff>,
    /// Reload requests that arrived during a handoff: one follow-up reload for all of them.
    pending_reload: Option<Vec<ConnId>>,
    /// The answer of the last handoff started by SIGHUP, until a `join` takes it.
    unjoined: Option<(Instant, String)>,
    last_reload: Option<ReloadOutcome>,
    stop_cause: Option<StopCause>,
    /// The generation that was serving when the stop began: its exit status is ours.
    primary: Option<(u64, Option<ExitStatus>)>,
    watchdog: Option<(Duration, Instant)>,
}

impl Supervisor {
    /// Sets up signals, the control socket and the runtime directory, and spawns generation 1.
    pub fn start(config: RunConfig, sockets: Vec<Socket>) -> Result<Supervisor> {
        sys::set_child_subreaper().context("failed to become a child subreaper (PR_SET_CHILD_SUBREAPER)")?;
        let signals = SignalQueue::install(&[Signal::TERM, Signal::INT, Signal::QUIT, Signal::HUP, Signal::CHLD])
            .context("failed to install signal handlers")?;
        let control = ControlServer::bind(sys::getpid())?;
        let runtime_dir = make_runtime_dir()?;
        let notifier = Notifier::from_env();
        let watchdog = notify::watchdog_interval().map(|interval| (interval / 2, Instant::now()));
        let socket_inodes: Vec<u64> = sockets.iter().filter_map(Socket::inode).collect();
        let mut supervisor = Supervisor {
            config,
            sockets,
            notifier,
            signals,
            control,
            runtime_dir,
            socket_inodes,
            generations: Vec::new(),
            next_number: 1,
            state: State::Running,
            handoff: None,
            pending_reload: None,
            unjoined: None,
            last_reload: None,
            stop_cause: None,
            primary: None,
            watchdog,
        };
        supervisor.extend_timeout(supervisor.config.ready_timeout);
        if let Err(e) = supervisor.spawn_generation() {
            supervisor.cleanup();
            return Err(e);
        }
        let status = supervisor.status_line();
        supervisor.notifier.send(&[format!("{STATUS}={status}")]);
        Ok(supervisor)
    }

    /// Runs until every generation is gone; returns our exit code.
    pub fn run(mut self) -> Result<u8> {
        let result = self.event_loop();
        self.cleanup();
        result
    }

    fn event_loop(&mut self) -> Result<u8> {
        loop {
            let now = Instant::now();
            let timeout = self.next_deadline().map(|d| d.saturating_duration_since(now));
            let ready = {
                let (sources, fds): (Vec<Source>, Vec<BorrowedFd<'_>>) = self.poll_sources().into_iter().unzip();
                let ready = sys::poll_readable(&fds, timeout).context("failed to wait for events")?;
                sources.into_iter().zip(ready).filter(|(_, r)| *r).map(|(s, _)| s).collect::<Vec<_>>()
            };
            for source in ready {
                match source {
                    Source::Signals => {
                        for signal in self.signals.drain() {
                            self.on_signal(signal);
                        }
                    }
                    Source::ControlListener => self.control.accept(),
                    Source::Control(id) => {
                        if let Some(request) = self.control.read(id) {
                            self.on_request(id, request);
                        }
                    }
                    Source::Notify(number) => self.on_notify(number),
                    Source::Probe(number) => {
                        if let Some(generation) = self.generation_mut(number)
                            && generation.check.on_probe_readable(Instant::now()) == Verdict::Ready
                        {
                            self.on_ready(number);
                        }
                    }
                }
            }
            self.reap();
            self.on_timers();
            if let Some(code) = self.advance() {
                return code;
            }
        }
    }

    fn poll_sources(&self) -> Vec<(Source, BorrowedFd<'_>)> {
        let mut sources = vec![(Source::Signals, self.signals.as_fd())];
        for (id, fd) in self.control.poll_fds() {
            sources.push((id.map_or(Source::ControlListener, Source::Control), fd));
        }
        for generation in &self.generations {
            if let Some(socket) = generation.check.notify_socket() {
                sources.push((Source::Notify(generation.number), socket.as_fd()));
            } else if let (Role::Starting { .. }, Some(fd)) = (generation.role, generation.check.poll_fd()) {
                sources.push((Source::Probe(generation.number), fd));
            }
        }
        sources
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut deadlines = Vec::new();
        match self.state {
            State::Stopping { deadline } => deadlines.push(deadline),
            // While killing, look again now and then: a group member may not be our child.
            State::Killing => deadlines.push(Instant::now() + Duration::from_millis(100)),
            State::Running => {}
        }
        for generation in &self.generations {
            match generation.role {
                Role::Starting { deadline } => {
                    deadlines.push(deadline);
                    deadlines.extend(generation.check.next_timer());
                }
                Role::Draining { kill_at, killed: false, .. } => deadlines.push(kill_at),
                // Its master is reaped but workers linger (not our children): look again.
                Role::Draining { .. } | Role::Failed if generation.exit.is_some() => {
                    deadlines.push(Instant::now() + Duration::from_millis(100))
                }
                _ => {}
            }
        }
        if self.handoff.as_ref().is_some_and(|h| h.ready.is_some()) {
            deadlines.push(Instant::now() + Duration::from_millis(20));
        }
        deadlines.extend(self.control.next_timer());
        if let Some((_, next)) = self.watchdog {
            deadlines.push(next);
        }
        deadlines.into_iter().min()
    }

    // ----- events ------------------------------------------------------------------------------

    fn on_signal(&mut self, signal: Signal) {
        match signal {
            Signal::TERM | Signal::INT => self.stop(false, &format!("received {signal}")),
            Signal::QUIT => self.stop(true, &format!("received {signal}")),
            Signal::HUP => self.request_reload(None, true),
            _ => {}
        }
    }

    fn on_request(&mut self, id: ConnId, request: Request) {
        match request {
            Request::Reload => self.request_reload(Some(id), false),
            Request::Join => self.join_reload(id),
            Request::Status => {
                let json = self.status_json();
                self.control.reply(id, &json);
            }
        }
    }

    fn on_notify(&mut self, number: u64) {
        let Some(generation) = self.generation_mut(number) else { return };
        let Some(socket) = generation.check.notify_socket() else { return };
        let mut ready = false;
        for message in readiness::read_notify(socket) {
            // The socket is private to the generation; still, a live sender must belong to its
            // process group. A sender already gone (a short-lived notify helper) is accepted.
            if let Some(sender) = message.sender
                && let Some(pgid) = sys::getpgid(sender)
                && pgid != generation.pid
                && sender != generation.pid
            {
                log::warn(format!(
                    "ignored a notification from pid {sender}, which is not part of {}",
                    generation.describe()
                ))
                .emit();
                continue;
            }
            if let Some(status) = message.status {
                generation.app_status = Some(status);
            }
            ready |= message.ready;
        }
        if ready && matches!(generation.role, Role::Starting { .. }) {
            self.on_ready(number);
        } else if self.generation(number).is_some_and(|g| g.role == Role::Serving) {
            self.send_status();
        }
    }

    fn on_timers(&mut self) {
        let now = Instant::now();
        self.control.expire(now);
        if let Some((interval, next)) = self.watchdog
            && now >= next
        {
            if self.generations.iter().any(|g| g.role == Role::Serving && g.exit.is_none()) {
                self.notifier.send(&[WATCHDOG.to_string()]);
            }
            self.watchdog = Some((interval, now + interval));
        }
        let mut became_ready = Vec::new();
        let mut timed_out = Vec::new();
        for generation in &mut self.generations {
            if let Role::Starting { deadline } = generation.role {
                if generation.exit.is_some() {
                    continue; // handled by advance()
                }
                if generation.check.on_timer(now, generation.pid, generation.number) == Verdict::Ready {
                    became_ready.push(generation.number);
                } else if now >= deadline {
                    timed_out.push((generation.number, generation.check.waiting_for()));
                }
            }
        }
        for number in became_ready {
            self.on_ready(number);
        }
        for (number, why) in timed_out {
            let timeout = self.config.ready_timeout;
            self.on_start_failed(number, format!("not ready within {timeout:?} ({why})"));
        }
        for generation in &mut self.generations {
            if let Role::Draining { since, kill_at, killed: false } = generation.role
                && now >= kill_at
            {
                log::warn(format!(
                    "{} still running {:.0?} after it was told to stop: sending SIGKILL to its process group",
                    generation.describe(),
                    self.config.drain_timeout
                ))
                .kind("kill")
                .field("GENERATION", generation.number)
                .field("PID", generation.pid)
                .emit();
                generation.kill();
                generation.role = Role::Draining { since, kill_at, killed: true };
            }
        }
        if let State::Stopping { deadline } = self.state
            && now >= deadline
        {
            log::warn(format!("still running {:.0?} after the stop signal: sending SIGKILL", self.config.stop_timeout))
                .kind("kill")
                .emit();
            for generation in &mut self.generations {
                generation.kill();
            }
            self.state = State::Killing;
        }
    }

    /// Reaps every exited descendant and records generation masters' statuses.
    fn reap(&mut self) {
        loop {
            let (pid, status) = match sys::reap_any() {
                Ok(Some(reaped)) => reaped,
                Ok(None) => return,
                Err(e) => {
                    log::warn(format!("waitpid failed: {e}")).emit();
                    return;
                }
            };
            let now = Instant::now();
            let mut check_ready = None;
            for generation in &mut self.generations {
                if let Some(verdict) = generation.check.on_reaped(pid, status.success(), now)
                    && verdict == Verdict::Ready
                    && matches!(generation.role, Role::Starting { .. })
                {
                    check_ready = Some(generation.number);
                }
            }
            if let Some(number) = check_ready {
                self.on_ready(number);
            }
            let Some(generation) = self.generations.iter_mut().find(|g| g.pid == pid) else {
                log::debug(format!("reaped pid {pid}: {}", describe_status(status))).emit();
                continue;
            };
            generation.exit = Some(status);
            if let Some((number, primary_status)) = &mut self.primary
                && *number == generation.number
            {
                *primary_status = Some(status);
            }
            let expected = generation.stop_sent.is_some();
            let message = format!(
                "{} exited: {} after {:.1}s{}",
                generation.describe(),
                describe_status(status),
                generation.started.elapsed().as_secs_f64(),
                if expected { "" } else { " (unexpected)" }
            );
            let event = if expected { log::info(message) } else { log::error(message) };
            event
                .kind("exit")
                .field("GENERATION", generation.number)
                .field("PID", pid)
                .field("EXIT_STATUS", describe_status(status))
                .emit();
        }
    }

    /// Moves the state machine on; returns our exit code once everything is gone.
    fn advance(&mut self) -> Option<Result<u8>> {
        // A generation that exited before it was ready: the start (or the reload) failed.
        let died_starting: Vec<(u64, ExitStatus)> = self
            .generations
            .iter()
            .filter(|g| matches!(g.role, Role::Starting { .. }))
            .filter_map(|g| g.exit.map(|s| (g.number, s)))
            .collect();
        for (number, status) in died_starting {
            self.on_start_failed(number, format!("exited with {} before it was ready", describe_status(status)));
        }
        // The serving generation exited on its own: the service is down. Stop the rest and exit
        // non-zero, so systemd restarts us (the socket unit keeps the sockets; clients queue).
        if self.state == State::Running
            && let Some(generation) = self.generations.iter().find(|g| g.role == Role::Serving && g.exit.is_some())
        {
            let status = generation.exit.expect("checked");
            let message = format!(
                "{} exited on its own ({}); stopping the service",
                generation.describe(),
                describe_status(status)
            );
            let number = generation.number;
            log::error(message.clone()).kind("crash").field("GENERATION", number).emit();
            self.primary = Some((number, Some(status)));
            self.stop_cause = Some(StopCause::Crashed { status });
            self.stop(false, &message);
        }
        // A handoff whose new generation is ready ends when no drained generation can accept.
        if let Some((ready_after, drained)) = self.handoff.as_ref().and_then(|h| h.ready.clone()) {
            let accepting = self
                .generations
                .iter()
                .filter(|g| drained.contains(&g.number))
                .any(|g| g.holds_sockets(&self.socket_inodes));
            if !accepting {
                let new = self.handoff.as_ref().map(|h| h.new).unwrap_or_default();
                let described =
                    self.generation(new).map(|g| g.describe()).unwrap_or_else(|| format!("generation {new}"));
                let took = self.handoff.as_ref().map(|h| h.started.elapsed()).unwrap_or_default();
                self.finish_reload(
                    true,
                    format!(
                        "{described} serves (ready after {} ms, old generation closed its sockets after {} ms)",
                        ready_after.as_millis(),
                        took.as_millis()
                    ),
                );
            }
        }
        // Forget generations that are completely gone.
        let now = Instant::now();
        let (gone, alive): (Vec<Generation>, Vec<Generation>) =
            std::mem::take(&mut self.generations).into_iter().partition(|g| g.exit.is_some() && !g.alive());
        self.generations = alive;
        for generation in gone {
            if let Role::Draining { since, .. } = generation.role {
                let took = now.duration_since(since);
                log::info(format!("{} drained in {} ms", generation.describe(), took.as_millis()))
                    .kind("drain")
                    .field("GENERATION", generation.number)
                    .field("PID", generation.pid)
                    .field("DRAIN_MS", took.as_millis())
                    .emit();
            }
        }
        if self.state != State::Running && self.generations.is_empty() {
            return Some(self.exit_code());
        }
        None
    }

    // ----- generations -------------------------------------------------------------------------

    fn spawn_generation(&mut self) -> Result<u64> {
        let number = self.next_number;
        self.next_number += 1;
        let release = self.config.chdir.as_deref().map(command::resolve_dir).transpose()?;
        let prepared = Check::prepare(&self.config.ready, number, &self.runtime_dir)?;
        let probe_socket = match &prepared.probe_socket {
            Some(fd) => Some(
                Socket::new(
                    fd.try_clone().context("failed to duplicate the probe socket")?,
                    PROBE_SOCKET_NAME.to_string(),
                    Origin::Bound { created: None },
                )
                .context("failed to inspect the probe socket")?,
            ),
            None => None,
        };
        let mut sockets: Vec<&Socket> = self.sockets.iter().collect();
        sockets.extend(probe_socket.as_ref());
        let mut extra_env = Vec::new();
        if let Some(path) = &prepared.notify_path {
            extra_env.push((crate::protocol::NOTIFY_SOCKET.to_string(), path.as_os_str().to_owned()));
        }
        let launch = Launch {
            flavor: self.config.flavor,
            sockets,
            generation: number,
            dir: release.clone(),
            pass_notify: false,
            extra_env,
        };
        let pid = command::spawn(&self.config.command, &launch)?;
        // The generation has its own copy of the probe socket; ours would only keep it alive
        // after the generation is gone.
        drop(probe_socket);
        drop(prepared.probe_socket);
        let generation = Generation {
            number,
            pid,
            release,
            started: Instant::now(),
            started_at: SystemTime::now(),
            role: Role::Starting { deadline: Instant::now() + self.config.ready_timeout },
            check: prepared.check,
            exit: None,
            stop_sent: None,
            app_status: None,
        };
        log::info(format!(
            "started {}: {} (ready: {})",
            generation.describe(),
            self.config.command.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "),
            self.config.ready
        ))
        .kind("spawn")
        .field("GENERATION", number)
        .field("PID", pid)
        .field("RELEASE", generation.release.as_ref().map(|r| r.display().to_string()).unwrap_or_default())
        .emit();
        self.generations.push(generation);
        Ok(number)
    }

    fn on_ready(&mut self, number: u64) {
        let Some(index) = self.generations.iter().position(|g| g.number == number) else { return };
        if !matches!(self.generations[index].role, Role::Starting { .. }) || self.state != State::Running {
            return;
        }
        let took = self.generations[index].started.elapsed();
        self.generations[index].role = Role::Serving;
        let described = self.generations[index].describe();
        let pid = self.generations[index].pid;
        log::info(format!("{described} is ready after {} ms", took.as_millis()))
            .kind("ready")
            .field("GENERATION", number)
            .field("PID", pid)
            .field("READY_MS", took.as_millis())
            .emit();
        // Drain whatever served before.
        let now = Instant::now();
        let drain_timeout = self.config.drain_timeout;
        let stop_signal = self.config.stop_signal;
        let mut drained = Vec::new();
        for old in self.generations.iter_mut().filter(|g| g.role == Role::Serving && g.number != number) {
            drained.push(old.number);
            log::info(format!("draining {} with {stop_signal}", old.describe()))
                .kind("drain_start")
                .field("GENERATION", old.number)
                .field("PID", old.pid)
                .emit();
            if let Err(e) = old.signal(stop_signal) {
                log::warn(format!("failed to send {stop_signal} to {}: {e}", old.describe())).emit();
            }
            old.role = Role::Draining { since: now, kill_at: now + drain_timeout, killed: false };
        }
        match &mut self.handoff {
            Some(handoff) if handoff.new == number => {
                // Answered in advance(), once the old generation stopped accepting.
                handoff.ready = Some((handoff.started.elapsed(), drained));
            }
            _ => {
                // Generation 1: the service is up. A reload asked for while it started was
                // queued behind it: start it now.
                let status = self.status_line();
                self.notifier.send(&[READY.to_string(), format!("{STATUS}={status}")]);
                if let Some(waiters) = self.pending_reload.take() {
                    self.begin_reload(waiters, false);
                }
            }
        }
    }

    /// A starting generation exited or missed its deadline: kill it; the previous generation
    /// (if any) keeps serving.
    fn on_start_failed(&mut self, number: u64, why: String) {
        let Some(generation) = self.generation_mut(number) else { return };
        if !matches!(generation.role, Role::Starting { .. }) {
            return;
        }
        generation.kill();
        generation.role = Role::Failed;
        let described = generation.describe();
        let is_handoff = self.handoff.as_ref().is_some_and(|h| h.new == number);
        if is_handoff {
            let serving = self.serving().map(|g| g.describe()).unwrap_or_else(|| "no generation".into());
            let message = format!("{described} {why}; {serving} still serving");
            log::error(format!("reload failed: {message}")).kind("rollback").field("GENERATION", number).emit();
            self.finish_reload(false, message);
        } else if self.state == State::Running {
            let message = format!("{described} {why}");
            log::error(format!("start failed: {message}")).kind("rollback").field("GENERATION", number).emit();
            let status = self.generation(number).and_then(|g| g.exit);
            self.stop_cause = Some(StopCause::StartFailed { message, status });
            self.stop(true, "the first generation failed to start");
        }
    }

    /// A `join` request: the outcome of the SIGHUP-started handoff in flight, or of one that
    /// just ended; otherwise a reload of its own.
    fn join_reload(&mut self, id: ConnId) {
        if let Some(handoff) = self.handoff.as_mut().filter(|h| h.by_signal) {
            handoff.waiters.push(id);
            return;
        }
        if let Some((ended, answer)) = self.unjoined.take()
            && ended.elapsed() < JOIN_WINDOW
            && self.handoff.is_none()
        {
            self.control.reply(id, &answer);
            return;
        }
        self.request_reload(Some(id), false);
    }

    fn request_reload(&mut self, waiter: Option<ConnId>, by_signal: bool) {
        if self.state != State::Running {
            if let Some(id) = waiter {
                self.control.reply(id, "error the service is stopping; not reloading");
            }
            return;
        }
        let serving = self.serving().is_some();
        if self.handoff.is_some() || !serving {
            // Coalesce: one follow-up reload covers every request made meanwhile.
            let pending = self.pending_reload.get_or_insert_with(Vec::new);
            pending.extend(waiter);
            log::info("reload requested while a handoff is in flight: a follow-up reload will start when it ends")
                .kind("reload_queued")
                .emit();
            return;
        }
        self.begin_reload(waiter.into_iter().collect(), by_signal);
    }

    fn begin_reload(&mut self, waiters: Vec<ConnId>, by_signal: bool) {
        let started = Instant::now();
        log::info("reload: starting a new generation").kind("reload").emit();
        self.notifier.send(&[
            RELOADING.to_string(),
            format!("{MONOTONIC_USEC}={}", sys::monotonic_usec()),
            format!("{STATUS}=reloading: starting generation {}", self.next_number),
        ]);
        self.extend_timeout(self.config.ready_timeout);
        match self.spawn_generation() {
            Ok(new) => {
                self.handoff = Some(Handoff { new, started, waiters, by_signal, ready: None });
                let status = self.status_line();
                self.notifier.send(&[format!("{STATUS}={status}")]);
            }
            Err(e) => {
                let serving = self.serving().map(|g| g.describe()).unwrap_or_default();
                let message = format!("{:#}; {serving} still serving", e);
                log::error(format!("reload failed: {message}")).kind("rollback").emit();
                self.handoff = Some(Handoff { new: 0, started, waiters, by_signal, ready: None });
                self.finish_reload(false, message);
            }
        }
    }

    fn finish_reload(&mut self, ok: bool, message: String) {
        let Some(handoff) = self.handoff.take() else { return };
        let took = handoff.started.elapsed();
        self.last_reload = Some(ReloadOutcome { at: SystemTime::now(), ok, message: message.clone(), took });
        let event = if ok {
            log::info(format!("reload done: {message}"))
        } else {
            log::error(format!("reload failed: {message}"))
        };
        event
            .kind(if ok { "reload_done" } else { "reload_failed" })
            .field("GENERATION", handoff.new)
            .field("HANDOFF_MS", took.as_millis())
            .field("OUTCOME", if ok { "ok" } else { "failed" })
            .emit();
        let status = self.status_line();
        self.notifier.send(&[READY.to_string(), format!("{STATUS}={status}")]);
        let answer = if ok { format!("ok {message}") } else { format!("error {message}") };
        self.unjoined = handoff.by_signal.then(|| (Instant::now(), answer.clone()));
        for id in handoff.waiters {
            self.control.reply(id, &answer);
        }
        if let Some(waiters) = self.pending_reload.take() {
            if self.state == State::Running {
                self.begin_reload(waiters, false);
            } else {
                for id in waiters {
                    self.control.reply(id, "error the service is stopping; not reloading");
                }
            }
        }
    }

    /// Stops every generation: gracefully (the configured stop signal) or fast.
    fn stop(&mut self, fast: bool, why: &str) {
        if self.stop_cause.is_none() {
            self.stop_cause = Some(StopCause::Requested);
        }
        let escalate = fast && matches!(self.state, State::Stopping { .. });
        if self.state != State::Running && !escalate {
            log::info(format!("{why}: already stopping")).emit();
            return;
        }
        if self.primary.is_none() {
            self.primary = self.serving().map(|g| (g.number, g.exit));
        }
        let fast_signal = self.config.flavor.fast_signal();
        let stop_signal = self.config.stop_signal;
        log::info(format!("{why}: stopping{}", if fast { " fast" } else { "" })).kind("stop").emit();
        self.notifier.send(&[STOPPING.to_string(), format!("{STATUS}=stopping ({why})")]);
        self.extend_timeout(self.config.stop_timeout);
        for generation in &mut self.generations {
            let signal = match generation.role {
                Role::Failed => continue, // already killed
                _ if fast => fast_signal,
                // A starting generation may already answer on the shared sockets: it drains too.
                Role::Serving | Role::Starting { .. } => stop_signal,
                Role::Draining { .. } => continue, // already told
            };
            if (generation.exit.is_none() || sys::group_alive(generation.pid))
                && let Err(e) = generation.signal(signal)
            {
                log::warn(format!("failed to send {signal} to {}: {e}", generation.describe())).emit();
            }
            if let Some(pid) = generation.check.running_command() {
                let _ = sys::kill_group(pid, libc::SIGKILL);
            }
        }
        if let Some(handoff) = self.handoff.take() {
            for id in handoff.waiters {
                self.control.reply(id, "error the service is stopping; reload abandoned");
            }
        }
        if let Some(waiters) = self.pending_reload.take() {
            for id in waiters {
                self.control.reply(id, "error the service is stopping; reload abandoned");
            }
        }
        if !escalate {
            self.state = State::Stopping { deadline: Instant::now() + self.config.stop_timeout };
        }
    }

    fn exit_code(&self) -> Result<u8> {
        match &self.stop_cause {
            // A server that exited before it was ready: its own status, as a shell would
            // report it (never 0: the service did not start). A deadline missed: our failure.
            Some(StopCause::StartFailed { status: Some(status), .. }) => Ok(match shell_code(*status) {
                0 => 1,
                code => code,
            }),
            Some(StopCause::StartFailed { message, status: None }) => Err(anyhow!("{message}")),
            Some(StopCause::Crashed { status }) => Ok(match shell_code(*status) {
                0 => 1, // a server that quits by itself is down all the same
                code => code,
            }),
            Some(StopCause::Requested) | None => match self.primary {
                // A stop that needed SIGKILL failed, even if the master itself exited cleanly
                // (a worker of its group ignored the stop): systemd must see a failure.
                Some((_, Some(status))) if self.state == State::Killing => {
                    Ok(if status.success() { 128 + libc::SIGKILL as u8 } else { shell_code(status) })
                }
                Some((_, Some(status))) if self.config.flavor.is_clean_exit(status) => Ok(0),
                Some((_, Some(status))) => Ok(shell_code(status)),
                // Stopped before anything served (TERM during the first start).
                _ => Ok(if self.state == State::Killing { 137 } else { 0 }),
            },
        }
    }

    // ----- systemd and status ----------------------------------------------------------------

    fn extend_timeout(&self, by: Duration) {
        if self.notifier.is_enabled() {
            let usec = (by + Duration::from_secs(10)).as_micros();
            self.notifier.send(&[format!("{EXTEND_TIMEOUT_USEC}={usec}")]);
        }
    }

    fn send_status(&self) {
        self.notifier.send(&[format!("{STATUS}={}", self.status_line())]);
    }

    /// A human summary for `systemctl status`: who serves, what is going on, the last reload.
    fn status_line(&self) -> String {
        let mut parts = Vec::new();
        match self.serving() {
            Some(g) => {
                let mut s = format!("serving {}", g.describe());
                if let Some(app) = &g.app_status {
                    s.push_str(&format!(" [{app}]"));
                }
                parts.push(s);
            }
            None => parts.push("no generation serving yet".to_string()),
        }
        if let Some(starting) = self.generations.iter().find(|g| matches!(g.role, Role::Starting { .. })) {
            parts.push(format!("starting generation {} (pid {})", starting.number, starting.pid));
        }
        let draining = self.generations.iter().filter(|g| matches!(g.role, Role::Draining { .. })).count();
        if draining > 0 {
            parts.push(format!("{draining} draining"));
        }
        if let Some(last) = &self.last_reload {
            let outcome = if last.ok { "ok".to_string() } else { format!("reload failed: {}", last.message) };
            parts.push(format!("last reload {} ({} ms): {outcome}", utc(last.at), last.took.as_millis()));
        }
        parts.join("; ")
    }

    fn status_json(&self) -> String {
        let now = SystemTime::now();
        let generations: Vec<String> = self
            .generations
            .iter()
            .map(|g| {
                let processes = g.process_count();
                // Workers: the group's other processes (the master, until reaped, is one of them).
                let workers = processes.saturating_sub(usize::from(g.exit.is_none()));
                format!(
                    "{{\"number\":{},\"pid\":{},\"state\":\"{}\",\"release\":{},\"started\":\"{}\",\"age_s\":{:.1},\"processes\":{},\"workers\":{},\"app_status\":{}}}",
                    g.number,
                    g.pid,
                    g.role.name(),
                    json_opt(g.release.as_ref().map(|r| r.display().to_string())),
                    utc(g.started_at),
                    now.duration_since(g.started_at).unwrap_or_default().as_secs_f64(),
                    processes,
                    workers,
                    json_opt(g.app_status.clone())
                )
            })
            .collect();
        let sockets: Vec<String> = self
            .sockets
            .iter()
            .enumerate()
            .map(|(i, s)| {
                format!("{{\"fd\":{},\"name\":{},\"address\":{}}}", 3 + i, json_str(&s.name), json_str(&s.address()))
            })
            .collect();
        let last = match &self.last_reload {
            Some(r) => format!(
                "{{\"at\":\"{}\",\"ok\":{},\"took_ms\":{},\"message\":{}}}",
                utc(r.at),
                r.ok,
                r.took.as_millis(),
                json_str(&r.message)
            ),
            None => "null".to_string(),
        };
        let state = match self.state {
            State::Running if self.handoff.is_some() => "reloading",
            State::Running => "running",
            State::Stopping { .. } => "stopping",
            State::Killing => "killing",
        };
        format!(
            "{{\"pid\":{},\"state\":\"{state}\",\"flavor\":\"{}\",\"ready\":{},\"status\":{},\"sockets\":[{}],\"generations\":[{}],\"last_reload\":{}}}",
            sys::getpid(),
            self.config.flavor,
            json_str(&self.config.ready.to_string()),
            json_str(&self.status_line()),
            sockets.join(","),
            generations.join(","),
            last
        )
    }

    // ----- helpers -----------------------------------------------------------------------------

    fn serving(&self) -> Option<&Generation> {
        self.generations.iter().find(|g| g.role == Role::Serving)
    }

    fn generation(&self, number: u64) -> Option<&Generation> {
        self.generations.iter().find(|g| g.number == number)
    }

    fn generation_mut(&mut self, number: u64) -> Option<&mut Generation> {
        self.generations.iter_mut().find(|g| g.number == number)
    }

    /// Removes the runtime directory (socket files we bound go with the sockets, on drop).
    fn cleanup(&mut self) {
        // Drop the notify sockets (their Drop removes the files) before the directory.
        self.generations.clear();
        let _ = std::fs::remove_dir_all(&self.runtime_dir);
    }
}

#[derive(Debug, Clone, Copy)]
enum Source {
    Signals,
    ControlListener,
    Control(ConnId),
    Notify(u64),
    Probe(u64),
}

/// A private directory for the generations' notify sockets: under `$RUNTIME_DIRECTORY`
/// (systemd's RuntimeDirectory=), else `$XDG_RUNTIME_DIR`, else the temp directory.
fn make_runtime_dir() -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::var_os("RUNTIME_DIRECTORY")
        .and_then(|v| v.to_str().and_then(|s| s.split(':').next()).map(PathBuf::from))
        .or_else(|| std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from))
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("sockherd.{}", sys::getpid()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("failed to create runtime directory {}", dir.display()))?;
    Ok(dir)
}

fn json_opt(s: Option<String>) -> String {
    s.map(|s| json_str(&s)).unwrap_or_else(|| "null".to_string())
}

/// `2026-11-22 05:20:01 UTC`, without a date library.
pub fn utc(at: SystemTime) -> String {
    let secs = at.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc() {
        assert_eq!(utc(SystemTime::UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_324_801)), "2026-11-22 05:20:01 UTC");
    }
}
