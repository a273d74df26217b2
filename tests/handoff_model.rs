//! The supervisor core (`sockherd::handoff`) against a model of the world it lives in: random
//! interleavings of events (generations reporting ready, masters dying before they are reaped,
//! workers lingering, sockets released, reload requests, joins, signals, spawn failures, time
//! passing), fed the way the event loop feeds them, with the core's actions performed on the
//! model. After every step the invariants hold; at the end, once everything told to stop has
//! stopped, the supervisor finishes and every requester got exactly one answer.
//!
//! Invariants checked after every step (besides the core's own, `Core::broken_invariant`: at most
//! one generation starting, at most one serving, a handoff's new generation starting or serving,
//! nothing pending or in flight while stopping, every generation told to stop once stopping):
//! - no requester is answered twice;
//! - a handoff ends `ok` only while its generation is alive (as far as the core knows) and serves,
//!   and `ok` is answered only with the message of a handoff that ended so;
//! - a generation serves only if no exit of its master was fed before it was promoted;
//! - nothing is done to a generation after the core forgot it, and signals go to its own pid;
//! - WATCHDOG=1 reaches systemd only while running, and in relay and probe modes only when the
//!   serving generation vouched for the service (its own ping, an answer to the liveness probe)
//!   or during a handoff and one watchdog interval after it.
//!
//! proptest shrinks a failure to the shortest sequence of steps; the step list is printed.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use sockherd::flavor::Flavor;
use sockherd::handoff::{
    Action, Config, ConnId, Core, EXTEND_MARGIN, Event, Life, Notice, Outcome, Phase, WatchdogMode,
};
use sockherd::signal::Signal;

const SETTLE: Duration = Duration::from_millis(1000);
const WATCHDOG: Duration = Duration::from_secs(4);
/// How long a generation that never became ready has between its graceful signal and SIGKILL:
/// min(5 s, the drain timeout of 8 s the world runs with).
const FAILED_GRACE: Duration = Duration::from_secs(5);
/// The drain and ready timeouts the world runs with.
const DRAIN: Duration = Duration::from_secs(8);
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// One step of the world.
#[derive(Debug, Clone)]
enum Step {
    /// Time passes (the loop wakes on its own and looks at deadlines).
    Wait(u64),
    /// The k-th generation's readiness check passes (whatever its phase).
    Ready(usize),
    /// The k-th generation's master dies (exit status or signal); reaped at the next `Reap`.
    MasterDies(usize, i32),
    /// Every dead master is reaped (a wakeup after SIGCHLD).
    Reap,
    /// The k-th generation's workers are gone.
    WorkersGone(usize),
    /// The next spawn gets the pid of a reaped master whose generation lingers (a worker that
    /// left its group: the kernel may give the pid out again).
    ReusePid,
    /// The k-th generation's processes closed the public sockets.
    StopsAccepting(usize),
    /// The loop reads /proc: released sockets, empty groups.
    Observe,
    Reload,
    Join,
    Signal(i32),
    /// A signal the kernel sent for a terminal (not kill(2)): job control, a resize, a fault.
    TerminalSignal(i32),
    /// The next spawn fails (a release directory that vanished, ...).
    NextSpawnFails,
    /// The k-th generation sends WATCHDOG=1.
    Ping(usize),
    /// The k-th generation sends STATUS=.
    Status(usize),
    LoopFailed,
    /// sockherd re-executes itself: when quiet, the core is replaced by one resumed from what
    /// the old one hands over (`sockherd reexec`).
    Reexec,
}

fn watchdog() -> impl Strategy<Value = Option<WatchdogMode>> {
    prop_oneof![
        Just(None),
        Just(Some(WatchdogMode::Relay)),
        Just(Some(WatchdogMode::Probe)),
        Just(Some(WatchdogMode::Supervisor)),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u64..2500).prop_map(Step::Wait),
        4 => (0usize..4).prop_map(Step::Ready),
        2 => (0usize..4, prop_oneof![Just(0), Just(1), Just(-9), Just(-15)]).prop_map(|(k, s)| Step::MasterDies(k, s)),
        4 => Just(Step::Reap),
        2 => (0usize..4).prop_map(Step::WorkersGone),
        1 => Just(Step::ReusePid),
        2 => (0usize..4).prop_map(Step::StopsAccepting),
        4 => Just(Step::Observe),
        3 => Just(Step::Reload),
        2 => Just(Step::Join),
        3 => prop_oneof![
            4 => Just(libc::SIGHUP),
            1 => Just(libc::SIGUSR2),
            1 => Just(libc::SIGTERM),
            1 => Just(libc::SIGQUIT),
            1 => Just(libc::SIGUSR1),
            1 => Just(libc::SIGALRM),
            1 => Just(libc::SIGABRT),
        ]
        .prop_map(Step::Signal),
        1 => prop_oneof![Just(libc::SIGTTIN), Just(libc::SIGTTOU), Just(libc::SIGWINCH), Just(libc::SIGUSR1), Just(libc::SIGABRT)]
            .prop_map(Step::TerminalSignal),
        1 => Just(Step::NextSpawnFails),
        2 => (0usize..4).prop_map(Step::Ping),
        1 => (0usize..4).prop_map(Step::Status),
        1 => (0u8..20).prop_map(|n| if n == 0 { Step::LoopFailed } else { Step::Reap }),
        2 => Just(Step::Reexec),
    ]
}

/// A generation's processes, as the world knows them.
#[derive(Debug, Default)]
struct Procs {
    pid: i32,
    master_dead: Option<ExitStatus>,
    reaped: bool,
    workers: bool,
    holds: bool,
    told: bool,
    /// When it got its first signal.
    told_at: Option<Instant>,
    forgotten: bool,
    ready_fed_at: Option<Instant>,
    exit_fed_before_promotion: bool,
}

struct World {
    core: Core,
    /// What the core was made with (a resumed core is made with it again).
    config: Config,
    t0: Instant,
    now: Instant,
    gens: BTreeMap<u64, Procs>,
    next_pid: i32,
    /// The pid the next spawn gets: one the kernel freed (a reaped master's) and gave out again.
    reuse_pid: Option<i32>,
    next_conn: ConnId,
    answers: HashMap<ConnId, Vec<String>>,
    issued: Vec<ConnId>,
    spawn_fails: bool,
    /// Messages of handoffs that ended `ok`, checked when they ended.
    succeeded: Vec<String>,
    watchdog: Option<WatchdogMode>,
    /// When the last handoff ended, and whether the event being handled vouches for the serving
    /// generation (its own ping, or its answer to a liveness probe).
    handoff_ended: Option<Instant>,
    vouched: bool,
    /// The notices of the event being handled.
    notices: Vec<Notice>,
    /// The signals sent to generations since the last look.
    signalled: Vec<(u64, Signal)>,
    /// The last WATCHDOG=1 sent.
    last_ping: Option<Instant>,
    /// SIGABRT was sent to sockherd while it ran.
    aborted_first: bool,
    /// A drain started in the event being handled.
    drain_started: bool,
    /// Since when sockherd must ping systemd itself (supervisor mode while a live generation
    /// serves; in the other modes during a handoff and one interval after it).
    must_ping_since: Option<Instant>,
    /// A LoopFailed was fed while nothing else was stopping the supervisor.
    loop_failed_first: bool,
    /// What happened, step by step (only when replaying a failure: formatting is the cost).
    tracing: bool,
    trace: Vec<String>,
}

impl World {
    fn new(settle: Duration, watchdog: Option<WatchdogMode>, tracing: bool) -> World {
        World::of_flavor(Flavor::Gunicorn, settle, watchdog, tracing)
    }

    fn of_flavor(flavor: Flavor, settle: Duration, watchdog: Option<WatchdogMode>, tracing: bool) -> World {
        let config = Config {
            flavor,
            ready_timeout: READY_TIMEOUT,
            settle,
            drain_timeout: DRAIN,
            stop_signal: Signal::TERM,
            stop_timeout: Duration::from_secs(12),
            watchdog: watchdog.map(|mode| (WATCHDOG, mode)),
        };
        let now = Instant::now();
        let mut world = World {
            core: Core::new(config.clone()),
            config,
            t0: now,
            now,
            gens: BTreeMap::new(),
            next_pid: 100,
            reuse_pid: None,
            next_conn: 1,
            answers: HashMap::new(),
            issued: Vec::new(),
            spawn_fails: false,
            succeeded: Vec::new(),
            watchdog,
            handoff_ended: None,
            vouched: false,
            notices: Vec::new(),
            signalled: Vec::new(),
            last_ping: None,
            aborted_first: false,
            drain_started: false,
            must_ping_since: None,
            loop_failed_first: false,
            tracing,
            trace: Vec::new(),
        };
        world.perform().expect("generation 1 starts");
        world
    }

    fn fail(&self, message: String) -> TestCaseError {
        TestCaseError::fail(format!("{message}\n--- trace:\n{}", self.trace.join("\n")))
    }

    fn feed(&mut self, event: Event) -> Result<(), TestCaseError> {
        if self.tracing {
            self.trace.push(format!("  t+{:>5} ms  {event:?}", (self.now - self.t0).as_millis()));
        }
        let promoted_before: Vec<u64> =
            self.core.generations().iter().filter(|g| g.phase == Phase::Serving).map(|g| g.number).collect();
        let serving = self.core.serving().map(|g| g.number);
        self.vouched =
            matches!(event, Event::AppWatchdog { number } | Event::Alive { number } if Some(number) == serving);
        let reloading = self.core.reloading();
        self.notices.clear();
        self.drain_started = false;
        self.core.handle(self.now, event);
        // A handoff in flight before or after the event covers the pings it caused.
        self.vouched |= reloading || self.core.reloading();
        if let Some(broken) = self.core.broken_invariant() {
            return Err(self.fail(format!("core invariant broken: {broken}")));
        }
        self.check_queries()?;
        let serving_alive = self.core.serving().is_some_and(|g| g.master_alive());
        let covering = self.core.reloading() || self.handoff_ended.is_some_and(|at| self.now < at + WATCHDOG);
        let must_ping = self.core.life() == Life::Running
            && serving_alive
            && match self.watchdog {
                Some(WatchdogMode::Supervisor) => true,
                Some(_) => covering,
                None => false,
            };
        self.must_ping_since = if must_ping { self.must_ping_since.or(Some(self.now)) } else { None };
        // A generation promoted by this event: it reported ready at least SETTLE ago (unless the
        // settle period is 0), and no exit of its master was fed before.
        for g in self.core.generations().iter().filter(|g| g.phase == Phase::Serving) {
            if promoted_before.contains(&g.number) {
                continue;
            }
            let procs = &self.gens[&g.number];
            let settle = self.core_settle();
            let settled = procs.ready_fed_at.is_some_and(|at| self.now.saturating_duration_since(at) >= settle);
            if !settled || procs.exit_fed_before_promotion || !g.master_alive() {
                return Err(self.fail(format!("generation {} serves without having settled: {procs:?}", g.number)));
            }
        }
        self.perform()?;
        // systemd's timeout is extended as a reload and a stop begin.
        let extended = self.notices.iter().any(|n| matches!(n, Notice::ExtendTimeout(_)));
        if (self.notices.contains(&Notice::Reloading) || self.notices.contains(&Notice::Stopping)) && !extended {
            return Err(self.fail(format!("a reload or stop began without EXTEND_TIMEOUT_USEC: {:?}", self.notices)));
        }
        Ok(())
    }

    fn core_settle(&self) -> Duration {
        // The world is built with one settle period per case; read it back from the trace-free
        // source of truth: the config the core was given.
        SETTLE_IN_USE.with(|s| s.get())
    }

    fn perform(&mut self) -> Result<(), TestCaseError> {
        while let Some(action) = self.core.next_action() {
            if self.tracing {
                self.trace.push(format!("                -> {}", describe(&action)));
            }
            match action {
                Action::Spawn { number } => {
                    if self.spawn_fails && number > 1 {
                        self.spawn_fails = false;
                        // A reload whose new generation cannot start fails; the service goes on.
                        let running = self.core.life() == Life::Running;
                        self.core.handle(self.now, Event::SpawnFailed { number, error: "no such release".into() });
                        if running && self.core.life() != Life::Running {
                            return Err(self.fail(format!("generation {number} failed to spawn, and sockherd stops")));
                        }
                    } else {
                        let pid = match self.reuse_pid.take() {
                            Some(pid) => pid,
                            None => {
                                self.next_pid += 1;
                                self.next_pid - 1
                            }
                        };
                        self.gens.insert(number, Procs { pid, workers: true, holds: true, ..Procs::default() });
                        self.core.handle(self.now, Event::Spawned { number, pid, release: None, cgroup: None });
                    }
                }
                Action::Signal { number, pid, signal, group } => {
                    self.signalled.push((number, signal));
                    // To the master while it lives (as far as sockherd knows: not reaped), else
                    // to what is left of its process group.
                    let reaped = self.gens.get(&number).is_some_and(|p| p.reaped);
                    if group != reaped {
                        return Err(self.fail(format!(
                            "signal {signal:?} to generation {number}: group {group}, though its master was reaped: {reaped}"
                        )));
                    }
                    self.touch(number, pid, false)?
                }
                Action::Kill { number, pid } => self.touch(number, pid, true)?,
                Action::Forget { number } => {
                    let Some(procs) = self.gens.get(&number) else {
                        return Err(self.fail(format!("forgot unknown generation {number}")));
                    };
                    if procs.forgotten || !procs.reaped || procs.workers {
                        let described = format!("{procs:?}");
                        return Err(self.fail(format!("generation {number} forgotten while it lives: {described}")));
                    }
                    self.gens.get_mut(&number).expect("checked").forgotten = true;
                }
                Action::Answer { conn, text } => {
                    let answers = self.answers.entry(conn).or_default();
                    answers.push(text.clone());
                    if answers.len() > 1 {
                        let described = format!("{answers:?}");
                        return Err(self.fail(format!("requester {conn} answered twice: {described}")));
                    }
                    if let Some(message) = text.strip_prefix("ok ")
                        && !self.succeeded.iter().any(|m| m == message)
                    {
                        return Err(self.fail(format!("answered {text:?}, which is no handoff that succeeded")));
                    }
                }
                Action::Log(event) if event.event_kind() == Some("reload_failed") => {
                    self.handoff_ended = Some(self.now);
                }
                Action::Log(event) if event.event_kind() == Some("reload_done") => {
                    self.handoff_ended = Some(self.now);
                    // The moment a handoff succeeds: its generation must be alive and serving.
                    let message = event.message().strip_prefix("reload done: ").unwrap_or_default().to_string();
                    let number: u64 = message
                        .strip_prefix("generation ")
                        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
                        .unwrap_or(0);
                    let alive =
                        self.core.generation(number).is_some_and(|g| g.phase == Phase::Serving && g.master_alive())
                            && self.gens.get(&number).is_some_and(|p| !p.reaped);
                    // ... and every older generation it drained closed the public sockets.
                    let holding: Vec<u64> = self
                        .core
                        .generations()
                        .iter()
                        .filter(|g| g.number < number && matches!(g.phase, Phase::Draining { .. }) && !g.released)
                        .map(|g| g.number)
                        .collect();
                    if !holding.is_empty() {
                        return Err(self.fail(format!("reload done while {holding:?} still hold the sockets")));
                    }
                    if !alive {
                        return Err(self
                            .fail(format!("reload reported done for a generation not alive and serving: {message}")));
                    }
                    self.succeeded.push(message);
                }
                Action::Notify(Notice::ExtendTimeout(by)) if by.is_zero() => {
                    return Err(self.fail("EXTEND_TIMEOUT_USEC=0".into()));
                }
                // A drain may take the drain timeout and then the kill's grace: systemd must
                // wait that long.
                // A reload may take the ready timeout and the settle period (and the margin
                // every extension has).
                Action::Notify(Notice::ExtendTimeout(by))
                    if self.notices.contains(&Notice::Reloading)
                        && by < READY_TIMEOUT + self.core_settle() + EXTEND_MARGIN =>
                {
                    return Err(self.fail(format!("a reload started; EXTEND_TIMEOUT_USEC covers only {by:?}")));
                }
                Action::Notify(Notice::ExtendTimeout(by))
                    if self.drain_started && by < DRAIN + FAILED_GRACE + EXTEND_MARGIN =>
                {
                    return Err(self.fail(format!("a drain started; EXTEND_TIMEOUT_USEC covers only {by:?}")));
                }
                Action::Notify(Notice::Watchdog) => {
                    self.notices.push(Notice::Watchdog);
                    self.last_ping = Some(self.now);
                    // Relay and probe: only the serving generation vouches for the service,
                    // but for a handoff and one interval after it.
                    let covered = self.handoff_ended.is_some_and(|at| self.now < at + WATCHDOG);
                    let ok = match self.watchdog {
                        None => false,
                        Some(WatchdogMode::Supervisor) => self.core.serving().is_some(),
                        Some(_) => self.vouched || covered || self.core.reloading(),
                    };
                    if !ok || self.core.life() != Life::Running {
                        return Err(self.fail(format!("WATCHDOG=1 nobody vouched for ({:?} mode)", self.watchdog)));
                    }
                }
                Action::CheckAlive { number } => {
                    if self.watchdog != Some(WatchdogMode::Probe) {
                        return Err(self.fail("a liveness probe outside probe mode".into()));
                    }
                    let answers = self.gens.get(&number).is_some_and(|p| p.master_dead.is_none() && p.workers);
                    if answers {
                        // The serving generation answering its liveness probe vouches for it.
                        self.vouched |= self.core.serving().is_some_and(|g| g.number == number);
                        self.core.handle(self.now, Event::Alive { number });
                    }
                }
                Action::Notify(notice) => self.notices.push(notice),
                Action::Log(event) if event.event_kind() == Some("drain_start") => self.drain_started = true,
                Action::Log(event) if event.event_kind() == Some("kill") => {
                    // A draining generation is killed after the drain timeout (8 s), a failed
                    // one after its grace (5 s).
                    let number: Option<u64> = event
                        .message()
                        .strip_prefix("generation ")
                        .and_then(|rest| rest.split_whitespace().next()?.parse().ok());
                    let phase = number.and_then(|n| self.core.generation(n)).map(|g| g.phase);
                    let grace = match phase {
                        Some(Phase::Draining { .. }) => Some("8s"),
                        Some(Phase::Failed { .. }) => Some("5s"),
                        _ => None,
                    };
                    if let Some(grace) = grace
                        && !event.message().contains(&format!("still running {grace} after"))
                    {
                        return Err(self.fail(format!("{:?}: the grace should be {grace}", event.message())));
                    }
                }
                Action::Log(_) => {}
            }
        }
        Ok(())
    }

    /// A signal or SIGKILL for generation `number`: it must be the generation's own pid, and the
    /// core must not have forgotten it. SIGKILL ends everything of it.
    fn touch(&mut self, number: u64, pid: i32, kill: bool) -> Result<(), TestCaseError> {
        let Some(procs) = self.gens.get_mut(&number) else {
            return Err(self.fail(format!("a signal for unknown generation {number}")));
        };
        if procs.forgotten || procs.pid != pid {
            return Err(self.fail(format!("a signal for generation {number} (pid {pid}) after it was forgotten")));
        }
        procs.told = true;
        let told_at = *procs.told_at.get_or_insert(self.now);
        // A generation that never became ready gets its graceful signal, then SIGKILL no sooner
        // than min(5 s, --drain-timeout) later (while sockherd runs; a stop has its own rules).
        let failed = self.core.generation(number).is_some_and(|g| matches!(g.phase, Phase::Failed { .. }));
        if kill && failed && self.core.life() == Life::Running && self.now - told_at < FAILED_GRACE {
            return Err(self.fail(format!(
                "generation {number} was killed {:?} after its graceful signal (grace {FAILED_GRACE:?})",
                self.now - told_at
            )));
        }
        let procs = self.gens.get_mut(&number).expect("checked");
        if kill {
            procs.master_dead.get_or_insert(ExitStatus::from_raw(libc::SIGKILL));
            procs.workers = false;
            procs.holds = false;
        }
        Ok(())
    }

    /// The deadlines the core's state holds: each must be met by a wakeup.
    fn pending_deadlines(&self) -> Vec<Instant> {
        let mut deadlines = Vec::new();
        if let Life::Stopping { deadline } = self.core.life() {
            deadlines.push(deadline);
        }
        for g in self.core.generations() {
            match g.phase {
                Phase::Starting { deadline } => deadlines.push(deadline),
                // Its promotion, which only happens while sockherd runs.
                Phase::Settling { until, .. } if self.core.life() == Life::Running && g.master_alive() => {
                    deadlines.push(until)
                }
                Phase::Draining { kill_at, .. } | Phase::Failed { kill_at } if !g.killed => deadlines.push(kill_at),
                _ => {}
            }
        }
        deadlines
    }

    /// What the driver asks the core, against what the world knows.
    fn check_queries(&self) -> Result<(), TestCaseError> {
        for g in self.core.generations() {
            // A master's pid names its generation until the master is reaped; then it may be
            // another process's (a later generation's master), never that generation's.
            let found = self.core.generation_of(g.pid);
            let expected = if self.gens[&g.number].reaped {
                found.is_none_or(|f| f.number != g.number && f.master_alive())
            } else {
                found.map(|f| f.number) == Some(g.number)
            };
            if !expected {
                return Err(self.fail(format!(
                    "generation_of({}) finds {:?} for generation {}, reaped: {}",
                    g.pid,
                    found.map(|f| f.number),
                    g.number,
                    self.gens[&g.number].reaped
                )));
            }
            let awaits = matches!(g.phase, Phase::Starting { .. }) && !self.gens[&g.number].reaped;
            if self.core.awaits_ready(g.number) != awaits {
                return Err(self.fail(format!(
                    "awaits_ready({}) is {} for a generation {:?}, reaped: {}",
                    g.number, !awaits, g.phase, self.gens[&g.number].reaped
                )));
            }
        }
        if self.core.generation_of(1).is_some() {
            return Err(self.fail("generation_of(1) found a generation (no master has pid 1)".into()));
        }
        for g in self.core.awaiting_release() {
            if !matches!(g.phase, Phase::Draining { .. } | Phase::Failed { .. }) || g.released {
                return Err(self.fail(format!("generation {} awaited to release the sockets: {:?}", g.number, g)));
            }
        }
        // A generation newer than the serving one starts: a handoff is in flight.
        let newer_starting = self
            .core
            .generations()
            .iter()
            .any(|g| g.phase.name() == "starting" && self.core.serving().is_some_and(|s| g.number > s.number));
        if self.core.life() == Life::Running && newer_starting && !self.core.reloading() {
            return Err(self.fail("a newer generation starts, yet reloading() is false".into()));
        }
        // Finished only once stopping with nothing left: every process of every generation gone.
        if self.core.finished().is_some() {
            let alive: Vec<u64> = self
                .gens
                .iter()
                .filter(|(_, p)| !p.forgotten && (p.master_dead.is_none() || p.workers))
                .map(|(n, _)| *n)
                .collect();
            if self.core.life() == Life::Running || !self.core.generations().is_empty() || !alive.is_empty() {
                return Err(self.fail(format!(
                    "finished while {:?} with generations {:?} (alive in the world: {alive:?})",
                    self.core.life(),
                    self.core.generations().iter().map(|g| g.number).collect::<Vec<_>>()
                )));
            }
        }
        self.check_status_line()?;
        if self.handoff_ended.is_some() && self.core.last_reload().is_none() {
            return Err(self.fail("a handoff ended; last_reload() knows nothing of it".into()));
        }
        Ok(())
    }

    /// The STATUS= summary says who serves (and what it says itself), who starts, how many
    /// drain, and how the last reload went.
    fn check_status_line(&self) -> Result<(), TestCaseError> {
        let line = self.core.status_line(&|_| "then".to_string());
        let mut want = Vec::new();
        match self.core.serving() {
            Some(g) => {
                want.push(format!("serving generation {} (pid {}", g.number, g.pid));
                if let Some(app) = &g.app_status {
                    want.push(format!(" [{app}]"));
                }
            }
            None => want.push("no generation serving yet".to_string()),
        }
        if let Some(g) = self.core.generations().iter().find(|g| g.phase.name() == "starting") {
            want.push(format!("starting generation {} (pid {}", g.number, g.pid));
        }
        let draining = self.core.generations().iter().filter(|g| matches!(g.phase, Phase::Draining { .. })).count();
        if draining > 0 {
            want.push(format!("; {draining} draining"));
        } else if line.contains("draining") {
            want.push("(nothing draining)".to_string());
        }
        if self.core.last_reload().is_some() {
            want.push("; last reload then (".to_string());
        }
        match want.iter().find(|w| !line.contains(w.as_str())) {
            Some(missing) => Err(self.fail(format!("status line {line:?} lacks {missing:?}"))),
            None => Ok(()),
        }
    }

    fn nth(&self, k: usize) -> Option<u64> {
        let live: Vec<u64> = self.gens.iter().filter(|(_, p)| !p.forgotten).map(|(n, _)| *n).collect();
        (!live.is_empty()).then(|| live[k % live.len()])
    }

    fn apply(&mut self, step: &Step) -> Result<(), TestCaseError> {
        match *step {
            Step::Wait(ms) => {
                // As the driver does: sleep until the core's next deadline (or the end of the
                // wait), then tick. Every deadline the core holds must be met by that wakeup,
                // and after a tick no deadline may be in the past (the driver would spin).
                let until = self.now + Duration::from_millis(ms);
                loop {
                    let wake = self.core.next_deadline().filter(|d| *d < until).unwrap_or(until).max(self.now);
                    if let Some(missed) = self.pending_deadlines().into_iter().find(|d| *d < wake) {
                        return Err(self.fail(format!(
                            "a deadline at t+{} ms would be missed: the driver sleeps until t+{} ms",
                            (missed - self.t0).as_millis(),
                            (wake - self.t0).as_millis()
                        )));
                    }
                    self.now = wake;
                    self.feed(Event::Tick)?;
                    // sockherd pings at least once an interval while it must.
                    if let Some(since) = self.must_ping_since {
                        let last = self.last_ping.filter(|p| *p >= since).unwrap_or(since);
                        if self.now - last > WATCHDOG {
                            return Err(self.fail(format!(
                                "no WATCHDOG=1 for {:?} while sockherd had to ping (generation {:?} serves)",
                                self.now - last,
                                self.core.serving().map(|g| g.number)
                            )));
                        }
                    }
                    if let Some(next) = self.core.next_deadline().filter(|d| *d <= self.now) {
                        return Err(self.fail(format!(
                            "after a tick at t+{} ms the next deadline is t+{} ms: the driver would spin",
                            (self.now - self.t0).as_millis(),
                            (next - self.t0).as_millis()
                        )));
                    }
                    if wake >= until {
                        break;
                    }
                }
            }
            Step::Ready(k) => {
                if let Some(n) = self.nth(k) {
                    let procs = self.gens.get_mut(&n).expect("listed");
                    procs.ready_fed_at.get_or_insert(self.now);
                    self.feed(Event::Ready { number: n })?;
                }
            }
            Step::MasterDies(k, how) => {
                if let Some(n) = self.nth(k) {
                    let status = if how < 0 { ExitStatus::from_raw(-how) } else { ExitStatus::from_raw(how << 8) };
                    self.gens.get_mut(&n).expect("listed").master_dead.get_or_insert(status);
                }
            }
            Step::Reap => self.reap()?,
            Step::ReusePid => {
                // The kernel gives out again only a pid no process holds: a reaped master's, and
                // not one a later master got already and still holds (alive, or dead and not
                // reaped).
                let held = |pid: i32| self.gens.values().any(|p| p.pid == pid && !p.reaped);
                let reused = |p: &&Procs| p.reaped && !p.forgotten && !held(p.pid);
                self.reuse_pid = self.gens.values().find(reused).map(|p| p.pid);
            }
            Step::WorkersGone(k) => {
                if let Some(n) = self.nth(k) {
                    let procs = self.gens.get_mut(&n).expect("listed");
                    procs.workers = false;
                    if procs.master_dead.is_some() {
                        procs.holds = false;
                    }
                }
            }
            Step::StopsAccepting(k) => {
                if let Some(n) = self.nth(k) {
                    self.gens.get_mut(&n).expect("listed").holds = false;
                }
            }
            Step::Observe => self.observe()?,
            Step::Reload => {
                let conn = self.conn();
                self.feed(Event::Reload { conn })?;
            }
            Step::Join => {
                let conn = self.conn();
                self.feed(Event::Join { conn })?;
            }
            Step::Signal(number) => {
                // The servers' own control signals, sent to sockherd, reach the serving master.
                let forwarded = [libc::SIGUSR1, libc::SIGTTIN, libc::SIGTTOU, libc::SIGWINCH].contains(&number);
                let serving = self.core.serving().filter(|g| g.master_alive()).map(|g| g.number);
                let running = self.core.life() == Life::Running;
                self.signalled.clear();
                self.feed(Event::Signal { signal: Signal(number), from_user: true })?;
                if let (true, Some(n)) = (forwarded, serving)
                    && !self.signalled.contains(&(n, Signal(number)))
                {
                    return Err(self.fail(format!("signal {number} was not forwarded to the serving generation {n}")));
                }
                // A second graceful stop while stopping changes nothing.
                if !running && [libc::SIGTERM, libc::SIGINT].contains(&number) && !self.signalled.is_empty() {
                    return Err(self.fail(format!("signal {number} while stopping sent {:?}", self.signalled)));
                }
                // Sent while running (before any other failure), SIGABRT is how sockherd ends: 134.
                self.aborted_first |= number == libc::SIGABRT && running;
                if number == libc::SIGABRT && self.core.life() == Life::Running {
                    return Err(self.fail("SIGABRT sent to sockherd did not stop it".into()));
                }
            }
            Step::TerminalSignal(number) => {
                // Meant for a foreground process sockherd is not: nothing happens.
                let life = self.core.life();
                self.signalled.clear();
                self.feed(Event::Signal { signal: Signal(number), from_user: false })?;
                if !self.signalled.is_empty() || self.core.life() != life {
                    return Err(self.fail(format!(
                        "a terminal's signal {number} acted: sent {:?}, {life:?} -> {:?}",
                        self.signalled,
                        self.core.life()
                    )));
                }
            }
            Step::NextSpawnFails => self.spawn_fails = true,
            Step::Ping(k) => {
                if let Some(n) = self.nth(k) {
                    // The serving generation's own ping, while sockherd runs, is passed on.
                    let passes = self.watchdog.is_some()
                        && self.core.life() == Life::Running
                        && self.core.serving().is_some_and(|g| g.number == n && g.master_alive());
                    self.feed(Event::AppWatchdog { number: n })?;
                    if passes && !self.notices.contains(&Notice::Watchdog) {
                        return Err(
                            self.fail(format!("the serving generation {n} pinged; WATCHDOG=1 was not passed on"))
                        );
                    }
                }
            }
            Step::Status(k) => {
                if let Some(n) = self.nth(k) {
                    let serving = self.core.serving().is_some_and(|g| g.number == n);
                    self.feed(Event::AppStatus { number: n, text: format!("app {n} says hello") })?;
                    if self.core.generation(n).and_then(|g| g.app_status.as_deref())
                        != Some(&format!("app {n} says hello"))
                    {
                        return Err(self.fail(format!("generation {n}'s STATUS= was not kept")));
                    }
                    if serving && !self.notices.contains(&Notice::Status) {
                        return Err(self.fail(format!("the serving generation {n} sent STATUS=; ours was not updated")));
                    }
                }
            }
            Step::LoopFailed => {
                self.loop_failed_first |= self.core.life() == Life::Running && !self.aborted_first;
                self.feed(Event::LoopFailed { error: "poll: invalid argument".into() })?;
            }
            Step::Reexec => {
                // Quiet: running, one generation, serving, its master alive, nothing in flight.
                let gens = self.core.generations();
                let quiet = self.core.life() == Life::Running
                    && !self.core.reloading()
                    && gens.len() == 1
                    && gens[0].phase == Phase::Serving
                    && gens[0].master_alive()
                    && self.waiting().is_empty();
                let resumed = self.core.to_resume();
                if self.core.quiet() != quiet || resumed.is_some() != quiet {
                    return Err(self.fail(format!(
                        "quiet is {quiet}, the core says {} and hands over {}",
                        self.core.quiet(),
                        if resumed.is_some() { "a state" } else { "nothing" }
                    )));
                }
                let Some(resumed) = resumed else { return Ok(()) };
                let before = (
                    self.core.serving().map(|g| (g.number, g.pid)),
                    self.core.last_reload().map(|r| r.message.clone()),
                );
                if self.tracing {
                    self.trace.push(format!("  t+{:>5} ms  reexec", (self.now - self.t0).as_millis()));
                }
                self.core = Core::resume(self.config.clone(), resumed);
                let after = (
                    self.core.serving().map(|g| (g.number, g.pid)),
                    self.core.last_reload().map(|r| r.message.clone()),
                );
                if after != before || !self.core.quiet() {
                    return Err(self.fail(format!("the resumed core differs: {before:?} before, {after:?} after")));
                }
                self.feed(Event::Tick)?;
            }
        }
        Ok(())
    }

    /// Requesters not answered yet.
    fn waiting(&self) -> Vec<ConnId> {
        self.issued.iter().copied().filter(|c| self.answers.get(c).is_none_or(|a| a.is_empty())).collect()
    }

    fn conn(&mut self) -> ConnId {
        let conn = self.next_conn;
        self.next_conn += 1;
        self.issued.push(conn);
        conn
    }

    /// A wakeup after SIGCHLD: every dead master is reaped and its exit fed.
    fn reap(&mut self) -> Result<(), TestCaseError> {
        let dead: Vec<(u64, i32, ExitStatus)> = self
            .gens
            .iter()
            .filter(|(_, p)| !p.reaped && p.master_dead.is_some())
            .map(|(n, p)| (*n, p.pid, p.master_dead.expect("filtered")))
            .collect();
        for (number, pid, status) in dead {
            let serving_now = self.core.generation(number).is_some_and(|g| g.phase == Phase::Serving);
            let procs = self.gens.get_mut(&number).expect("listed");
            procs.reaped = true;
            if !serving_now {
                procs.exit_fed_before_promotion = true;
            }
            self.feed(Event::Exited { pid, status })?;
        }
        Ok(())
    }

    /// The loop reading /proc: drained generations that released the sockets, empty groups.
    fn observe(&mut self) -> Result<(), TestCaseError> {
        let released: Vec<u64> = self
            .core
            .awaiting_release()
            .iter()
            .filter(|g| {
                let p = &self.gens[&g.number];
                !p.holds || (p.master_dead.is_some() && !p.workers)
            })
            .map(|g| g.number)
            .collect();
        for number in released {
            self.feed(Event::Released { number })?;
        }
        let gone: Vec<u64> = self
            .core
            .generations()
            .iter()
            .filter(|g| !g.master_alive())
            .filter(|g| {
                let p = &self.gens[&g.number];
                p.reaped && !p.workers
            })
            .map(|g| g.number)
            .collect();
        for number in gone {
            self.feed(Event::Gone { number })?;
        }
        Ok(())
    }

    /// After the steps: stop, and let everything that was told to stop do so. The supervisor
    /// must finish, with every requester answered exactly once.
    fn wind_down(&mut self) -> Result<Outcome, TestCaseError> {
        self.feed(Event::Signal { signal: Signal::TERM, from_user: true })?;
        for _ in 0..60 {
            if let Some(outcome) = self.core.finished() {
                if self.aborted_first && !matches!(outcome, Outcome::Code(134)) {
                    return Err(self.fail(format!("SIGABRT came first, yet sockherd ends with {outcome:?}")));
                }
                // The first failure is how it ends.
                if self.loop_failed_first
                    && !matches!(&outcome, Outcome::Error(m) if m.starts_with("waiting for events failed"))
                {
                    return Err(self.fail(format!("the loop failed first, yet sockherd ends with {outcome:?}")));
                }
                for conn in &self.issued {
                    let count = self.answers.get(conn).map_or(0, Vec::len);
                    if count != 1 {
                        return Err(self.fail(format!("requester {conn} got {count} answers")));
                    }
                }
                return Ok(outcome);
            }
            for procs in self.gens.values_mut().filter(|p| p.told) {
                procs.master_dead.get_or_insert(ExitStatus::from_raw(0));
                procs.workers = false;
                procs.holds = false;
            }
            self.reap()?;
            self.observe()?;
            self.now += Duration::from_millis(700);
            self.feed(Event::Tick)?;
        }
        Err(self.fail("the supervisor never finished after SIGTERM".into()))
    }
}

thread_local! {
    static SETTLE_IN_USE: std::cell::Cell<Duration> = const { std::cell::Cell::new(SETTLE) };
}

fn describe(action: &Action) -> String {
    match action {
        Action::Log(event) => format!("log {:?}", event.message()),
        other => format!("{other:?}"),
    }
}

fn run_case(settle: Duration, watchdog: Option<WatchdogMode>, steps: &[Step]) -> Result<(), TestCaseError> {
    replay(settle, watchdog, steps, false).or_else(|_| replay(settle, watchdog, steps, true))
}

/// Runs the steps; with `tracing`, a failure carries every event and action.
fn replay(
    settle: Duration,
    watchdog: Option<WatchdogMode>,
    steps: &[Step],
    tracing: bool,
) -> Result<(), TestCaseError> {
    SETTLE_IN_USE.with(|s| s.set(settle));
    let mut world = World::new(settle, watchdog, tracing);
    for step in steps {
        if tracing {
            world.trace.push(format!("{step:?}"));
        }
        world.apply(step)?;
    }
    world.wind_down().map(drop)
}

proptest! {
    // 1,000 interleavings each on every run (about 10 s in a debug build); PROPTEST_CASES=N for more.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000),
        ..ProptestConfig::default()
    })]

    #[test]
    fn invariants_hold_with_a_settle_period(watchdog in watchdog(), steps in proptest::collection::vec(step(), 0..80)) {
        run_case(SETTLE, watchdog, &steps)?;
    }

    #[test]
    fn invariants_hold_without_a_settle_period(watchdog in watchdog(), steps in proptest::collection::vec(step(), 0..80)) {
        run_case(Duration::ZERO, watchdog, &steps)?;
    }
}

// ----- the scenarios, replayed exactly -------------------------------------------------------

/// Generation 1 serving, then `steps`; returns the world for inspection.
fn serving_world(settle: Duration) -> World {
    SETTLE_IN_USE.with(|s| s.set(settle));
    let mut world = World::new(settle, None, true);
    world.apply(&Step::Ready(0)).unwrap();
    world.apply(&Step::Wait(settle.as_millis() as u64 + 1)).unwrap();
    assert_eq!(world.core.serving().map(|g| g.number), Some(1));
    world
}

#[test]
fn ready_then_crash_in_the_same_wakeup_fails_the_reload() {
    let mut world = serving_world(SETTLE);
    world.apply(&Step::Reload).unwrap();
    // Generation 2 says READY=1, and its master is dead 50 ms later: the reload fails, and
    // generation 1 was never told to stop.
    world.apply(&Step::Ready(1)).unwrap();
    world.apply(&Step::Wait(50)).unwrap();
    world.apply(&Step::MasterDies(1, 1)).unwrap();
    world.apply(&Step::Reap).unwrap();
    let answer = &world.answers[&1][0];
    assert!(answer.starts_with("error generation 2"), "{answer}");
    assert!(answer.contains("after it reported ready"), "{answer}");
    assert!(!world.gens[&1].told, "generation 1 must keep serving untouched");
    assert_eq!(world.core.serving().map(|g| g.number), Some(1));
}

#[test]
fn ready_reported_by_a_master_already_dead_is_not_believed() {
    let mut world = serving_world(Duration::ZERO);
    world.apply(&Step::Reload).unwrap();
    // The exit is reaped in the same wakeup as the readiness: exits go first.
    world.apply(&Step::MasterDies(1, 1)).unwrap();
    world.apply(&Step::Reap).unwrap();
    world.apply(&Step::Ready(1)).unwrap();
    assert!(world.answers[&1][0].starts_with("error"), "{:?}", world.answers);
    assert!(!world.gens[&1].told);
}

#[test]
fn a_join_reports_the_handoff_that_covers_its_signal_and_starts_none() {
    let mut world = serving_world(SETTLE);
    // A control reload is in flight; systemd's SIGHUP arrives, then its ExecReload= joins.
    world.apply(&Step::Reload).unwrap();
    world.apply(&Step::Signal(libc::SIGHUP)).unwrap();
    world.apply(&Step::Join).unwrap();
    // Generation 2 serves; generation 3 (the SIGHUP's follow-up) starts and serves.
    for n in [1usize, 2] {
        world.apply(&Step::Ready(n)).unwrap();
        world.apply(&Step::Wait(1001)).unwrap();
        world.apply(&Step::StopsAccepting(n - 1)).unwrap();
        world.apply(&Step::Observe).unwrap();
    }
    let spawned = world.gens.len();
    assert_eq!(spawned, 3, "exactly one follow-up generation for the SIGHUP and its join");
    assert!(world.answers[&1][0].starts_with("ok generation 2"), "{:?}", world.answers);
    assert!(world.answers[&2][0].starts_with("ok generation 3"), "{:?}", world.answers);
    // A join long after still reports that handoff, and starts nothing.
    world.apply(&Step::Wait(60_000)).unwrap();
    world.apply(&Step::Join).unwrap();
    assert!(world.answers[&3][0].starts_with("ok generation 3"), "{:?}", world.answers);
    assert_eq!(world.gens.len(), 3);
}

/// SIGTERM while generation 1 settles: it is no longer promoted, so its settle deadline must
/// not stay due (the loop would wake at once, again and again, until the generation exits).
#[test]
fn a_stop_while_a_generation_settles_leaves_no_deadline_due() {
    SETTLE_IN_USE.with(|s| s.set(SETTLE));
    let mut world = World::new(SETTLE, None, true);
    for step in [Step::Ready(0), Step::Signal(libc::SIGTERM), Step::Wait(3000)] {
        if let Err(e) = world.apply(&step) {
            panic!("{e}");
        }
    }
    assert!(world.core.next_deadline().is_none_or(|d| d > world.now));
}

/// In relay mode only the serving generation's own pings reach systemd: a failed generation's
/// processes pinging after the reload ended (and the window sockherd covers after a handoff)
/// are not passed on. And once a handoff is over, nothing is reloading.
#[test]
fn only_the_serving_generation_vouches_and_a_finished_handoff_is_no_reload() {
    SETTLE_IN_USE.with(|s| s.set(SETTLE));
    let mut world = World::new(SETTLE, Some(WatchdogMode::Relay), true);
    let run = |world: &mut World, steps: &[Step]| {
        for step in steps {
            if let Err(e) = world.apply(step) {
                panic!("{e}");
            }
        }
    };
    run(&mut world, &[Step::Ready(0), Step::Wait(SETTLE.as_millis() as u64 + 1)]);
    // A reload whose master dies at once: its workers live on until SIGKILL, 5 s later.
    run(&mut world, &[Step::Reload, Step::MasterDies(1, 1), Step::Reap]);
    assert!(world.answers[&1][0].starts_with("error"), "{:?}", world.answers);
    assert!(!world.core.reloading(), "the failed reload ended");
    run(&mut world, &[Step::Wait(WATCHDOG.as_millis() as u64 + 500), Step::Ping(1)]);
    assert!(!world.notices.contains(&Notice::Watchdog), "a failed generation's ping was passed on");
    run(&mut world, &[Step::Ping(0)]);
    assert!(world.notices.contains(&Notice::Watchdog), "the serving generation's ping was not passed on");
    // A reload that succeeds; once the old generation is gone, nothing is reloading.
    run(&mut world, &[Step::Wait(5000), Step::Observe, Step::Reload]);
    let new = world.gens.keys().max().copied().unwrap();
    let k = world.gens.iter().filter(|(_, p)| !p.forgotten).position(|(n, _)| *n == new).unwrap();
    run(&mut world, &[Step::Ready(k), Step::Wait(SETTLE.as_millis() as u64 + 1)]);
    assert_eq!(world.core.serving().map(|g| g.number), Some(new));
    run(&mut world, &[Step::MasterDies(0, 0), Step::WorkersGone(0), Step::Reap, Step::Observe, Step::Wait(10)]);
    assert_eq!(world.core.generations().len(), 1, "{:?}", world.core.generations());
    assert!(!world.core.reloading(), "the handoff is over");
}

/// sockherd exits with the serving master's own status when it is stopped.
#[test]
fn a_stop_exits_with_the_serving_masters_status() {
    let mut world = serving_world(SETTLE);
    for step in [Step::Signal(libc::SIGTERM), Step::MasterDies(0, 3), Step::WorkersGone(0), Step::Reap, Step::Observe] {
        if let Err(e) = world.apply(&step) {
            panic!("{e}");
        }
    }
    assert!(matches!(world.core.finished(), Some(Outcome::Code(3))), "{:?}", world.core.finished());
}

fn run_steps(world: &mut World, steps: &[Step]) {
    for step in steps {
        if let Err(e) = world.apply(step) {
            panic!("{e}");
        }
    }
}

/// SIGTERM sends the flavor's graceful signal, SIGQUIT (or a second, fast stop) its fast one
/// (gunicorn: TERM, INT); a gunicorn master that died of the TERM exits sockherd with 143, as a
/// shell reports it (gunicorn does not count it as clean).
#[test]
fn stop_signals_and_the_status_they_leave() {
    let mut world = serving_world(SETTLE);
    world.signalled.clear();
    run_steps(&mut world, &[Step::Signal(libc::SIGTERM)]);
    assert_eq!(world.signalled, [(1, Signal::TERM)]);
    world.signalled.clear();
    run_steps(&mut world, &[Step::Signal(libc::SIGQUIT)]);
    assert_eq!(world.signalled, [(1, Signal::INT)]);
    run_steps(&mut world, &[Step::MasterDies(0, -15), Step::WorkersGone(0), Step::Reap, Step::Observe]);
    assert!(matches!(world.core.finished(), Some(Outcome::Code(143))), "{:?}", world.core.finished());
}

/// A stop that needed SIGKILL failed, even when the master itself exited cleanly: a worker of
/// its group ignored the stop. sockherd exits 137.
#[test]
fn a_stop_that_needed_sigkill_exits_137() {
    let mut world = serving_world(SETTLE);
    run_steps(&mut world, &[Step::Signal(libc::SIGTERM), Step::MasterDies(0, 0), Step::Reap]);
    // The workers live on past the stop timeout (12 s): SIGKILL for what is left.
    run_steps(&mut world, &[Step::Wait(13_000), Step::Observe]);
    assert!(matches!(world.core.finished(), Some(Outcome::Code(137))), "{:?}", world.core.finished());
}

/// A master that exits 0 on the stop signal, workers and all: sockherd exits 0.
#[test]
fn a_clean_stop_exits_0() {
    let mut world = serving_world(SETTLE);
    run_steps(
        &mut world,
        &[Step::Signal(libc::SIGTERM), Step::MasterDies(0, 0), Step::WorkersGone(0), Step::Reap, Step::Observe],
    );
    assert!(matches!(world.core.finished(), Some(Outcome::Code(0))), "{:?}", world.core.finished());
}

/// puma's master exits by the SIGTERM it was sent, and counts that as a clean exit: so does
/// sockherd (0, not 143).
#[test]
fn a_puma_master_ended_by_sigterm_is_a_clean_stop() {
    SETTLE_IN_USE.with(|s| s.set(SETTLE));
    let mut world = World::of_flavor(Flavor::Puma, SETTLE, None, true);
    run_steps(&mut world, &[Step::Ready(0), Step::Wait(SETTLE.as_millis() as u64 + 1), Step::Signal(libc::SIGTERM)]);
    run_steps(&mut world, &[Step::MasterDies(0, -15), Step::WorkersGone(0), Step::Reap, Step::Observe]);
    assert!(matches!(world.core.finished(), Some(Outcome::Code(0))), "{:?}", world.core.finished());
}

/// A reload whose release cannot be started fails, naming why and who still serves.
#[test]
fn a_reload_that_cannot_spawn_names_who_still_serves() {
    let mut world = serving_world(SETTLE);
    run_steps(&mut world, &[Step::NextSpawnFails, Step::Reload]);
    assert_eq!(world.answers[&1], ["error no such release; generation 1 (pid 100) still serving"]);
}

/// A starting generation whose master exits 0 while what it left holds the sockets (the driver
/// sees that in the generation's cgroup and says so first): the reload fails with the fix, the
/// rest of the generation is told to stop, and the serving one is untouched.
#[test]
fn a_daemonized_generation_fails_its_reload_with_the_fix() {
    let mut world = serving_world(SETTLE);
    world.apply(&Step::Reload).unwrap();
    world.apply(&Step::MasterDies(1, 0)).unwrap();
    world.feed(Event::Daemonized { number: 2 }).unwrap();
    world.apply(&Step::Reap).unwrap();
    let answer = &world.answers[&1][0];
    assert!(answer.starts_with("error generation 2"), "{answer}");
    assert!(answer.contains("daemonized") && answer.contains("remove --daemon"), "{answer}");
    assert!(world.gens[&2].told, "what the daemonized generation left must be told to stop");
    assert!(!world.gens[&1].told, "generation 1 must keep serving untouched");
    assert_eq!(world.core.serving().map(|g| g.number), Some(1));
}

/// Generation 1's master was reaped while a worker that left its group lingers, and the kernel
/// gave its pid to generation 2's master: that pid names generation 2, whose exit (status 0)
/// must be the one the driver looks at (the daemonize check, the reaper's log).
#[test]
fn a_reused_pid_names_the_generation_whose_master_is_not_reaped() {
    let mut world = serving_world(SETTLE);
    let old = world.gens[&1].pid;
    run_steps(&mut world, &[Step::Signal(libc::SIGTERM), Step::MasterDies(0, 0), Step::Reap]);
    assert!(!world.core.generations()[0].master_alive());
    assert_eq!(world.core.generation_of(old).map(|g| g.number), None, "a reaped master's pid names nothing");
    // A fresh world: generation 1 drains after a reload, its master reaped, its pid reused.
    let mut world = serving_world(SETTLE);
    run_steps(&mut world, &[Step::Reload, Step::Ready(1), Step::Wait(SETTLE.as_millis() as u64 + 1)]);
    assert_eq!(world.core.serving().map(|g| g.number), Some(2));
    run_steps(&mut world, &[Step::MasterDies(0, 0), Step::Reap, Step::StopsAccepting(0), Step::Observe]);
    assert!(!world.core.reloading() && world.core.generation(1).is_some(), "generation 1 lingers");
    run_steps(&mut world, &[Step::ReusePid, Step::Reload]);
    assert_eq!(world.gens[&3].pid, old);
    assert_eq!(world.core.generation_of(old).map(|g| g.number), Some(3));
}
