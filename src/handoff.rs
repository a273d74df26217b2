//! The supervisor's core: generations and handoffs as a state machine without I/O.
//!
//! Events go in ([`Event`]: a generation spawned, exited, is gone, reported ready, released the
//! public sockets; a reload was asked for; a signal arrived; time passed), actions come out
//! ([`Action`]: spawn, signal, kill, tell systemd, answer a requester, log). Nothing here makes a
//! system call or reads a clock: every call takes `now`, and `supervisor.rs` performs the actions
//! and feeds back what happened. That keeps every rule of a handoff in one place, where a unit
//! test can replay any interleaving of events in microseconds (see the tests at the bottom).
//!
//! The rules, in the order a reload meets them:
//!
//! 1. One handoff at a time. A reload asked for during one (or before generation 1 serves) joins
//!    a single follow-up reload, started when the current one ends; every requester gets the
//!    outcome of the handoff that covers its request, exactly once.
//! 2. A new generation is *Starting* until its readiness check succeeds, then *Settling*: it
//!    counts as ready only if its master is still alive `settle` later. An exit before that (or
//!    a missed ready timeout) fails the reload: the new generation gets the graceful stop signal
//!    (it may already serve on the shared sockets), SIGKILL after a short grace, and the old
//!    generation never noticed anything.
//! 3. Once settled, the new generation serves and the old one drains (graceful signal, SIGKILL
//!    at the drain timeout). The handoff ends when no process of the old generation holds a
//!    public socket; it is answered `ok` only if the new generation's master is alive then.
//! 4. The serving generation exiting on its own stops the service with a non-zero status, so
//!    that systemd's `Restart=` acts; the socket units keep the sockets meanwhile.
//! 5. A join (`sockherd reload --join`, systemd's ExecReload= beside Type=notify-reload) reports
//!    the handoff that covers the latest reload signal, however long ago it ended, and never
//!    starts a handoff of its own while that one exists.
//!
//! The driver hands the events of one wakeup in a fixed order: child exits first, then signals,
//! then readiness, requests and timers, so readiness is never believed of a process whose exit
//! is already known.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;
use std::time::Instant;

use crate::flavor::Flavor;
use crate::generation::{describe_status, shell_code};
use crate::log;
use crate::signal::Signal;
use crate::sys::Pid;

/// A control connection waiting for an answer.
pub type ConnId = u64;

/// How far beyond the current phase's own limit systemd's timeout is extended.
pub const EXTEND_MARGIN: Duration = Duration::from_secs(10);
/// The longest a generation that failed to become ready may take to stop gracefully.
const FAILED_GRACE: Duration = Duration::from_secs(5);

/// Who vouches for the service when systemd's watchdog (`WatchdogSec=`) asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchdogMode {
    /// The serving generation's own `WATCHDOG=1` pings are relayed (puma, sd_notify servers);
    /// sockherd pings by itself only while a handoff is in flight and one interval after it.
    Relay,
    /// A ping for every answer of the serving generation's private probe, asked at the ping
    /// interval: a generation whose workers stop answering is restarted by systemd.
    Probe,
    /// sockherd pings while a generation serves: the watchdog vouches for sockherd only.
    Supervisor,
}

impl WatchdogMode {
    pub fn name(self) -> &'static str {
        match self {
            WatchdogMode::Relay => "relay",
            WatchdogMode::Probe => "probe",
            WatchdogMode::Supervisor => "supervisor",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub flavor: Flavor,
    pub ready_timeout: Duration,
    /// How long a generation's master must stay alive after it reported ready.
    pub settle: Duration,
    pub drain_timeout: Duration,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    /// systemd's watchdog interval (WATCHDOG_USEC, meant for us), and how it is answered.
    pub watchdog: Option<(Duration, WatchdogMode)>,
}

impl Config {
    fn failed_grace(&self) -> Duration {
        FAILED_GRACE.min(self.drain_timeout)
    }
}

/// Where a generation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Spawned, its readiness check not passed yet; fails at `deadline`.
    Starting { deadline: Instant },
    /// Reported ready `ready_after` its start; serves once its master is still alive at `until`.
    Settling { ready_after: Duration, until: Instant },
    /// The generation clients are served by.
    Serving,
    /// Told to stop after a newer generation took over; SIGKILL at `kill_at`.
    Draining { since: Instant, kill_at: Instant },
    /// Never became ready; told to stop, SIGKILL at `kill_at`.
    Failed { kill_at: Instant },
}

impl Phase {
    /// The name `status` shows.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Starting { .. } | Phase::Settling { .. } => "starting",
            Phase::Serving => "serving",
            Phase::Draining { .. } => "draining",
            Phase::Failed { .. } => "failed",
        }
    }

    pub fn is_starting(&self) -> bool {
        matches!(self, Phase::Starting { .. } | Phase::Settling { .. })
    }
}

/// One start of the server, as the core knows it.
#[derive(Debug, Clone)]
pub struct Generation {
    pub number: u64,
    /// The master's pid, which is also its process group's id.
    pub pid: Pid,
    pub release: Option<PathBuf>,
    pub started: Instant,
    pub phase: Phase,
    /// The master's exit status, once reaped.
    pub exit: Option<ExitStatus>,
    /// The first stop signal it was sent (its exit is then expected).
    pub stop_sent: Option<Signal>,
    pub killed: bool,
    /// No process of the generation holds a public socket any more.
    pub released: bool,
    /// The last STATUS= it sent (cleaned), shown in ours.
    pub app_status: Option<String>,
    /// Its cgroup's directory (`.../gen-N`), where generations are cgroups: what its
    /// processes, CPU and memory are read from.
    pub cgroup: Option<PathBuf>,
    /// Its master exited 0 leaving processes that hold the sockets ([`Event::Daemonized`]).
    pub daemonized: bool,
}

impl Generation {
    pub fn describe(&self) -> String {
        match &self.release {
            Some(release) => format!("generation {} (pid {}, {})", self.number, self.pid, release.display()),
            None => format!("generation {} (pid {})", self.number, self.pid),
        }
    }

    pub fn master_alive(&self) -> bool {
        self.exit.is_none()
    }
}

/// What happened, as the driver saw it.
#[derive(Debug, Clone)]
pub enum Event {
    /// The spawn asked for by [`Action::Spawn`] succeeded.
    Spawned { number: u64, pid: Pid, release: Option<PathBuf>, cgroup: Option<PathBuf> },
    /// The spawn asked for by [`Action::Spawn`] failed (the reason, for the requester).
    SpawnFailed { number: u64, error: String },
    /// A child was reaped (only generation masters matter here).
    Exited { pid: Pid, status: ExitStatus },
    /// Nothing of the generation is left: its master was reaped and its process group (or its
    /// cgroup) is empty.
    Gone { number: u64 },
    /// The master of a starting generation exited with status 0 while other processes of its
    /// cgroup kept the public sockets: the server daemonized, out of sockherd's reach as a
    /// parent. Fed just before that master's [`Event::Exited`], which then fails the generation
    /// with the fix; the rest of it gets the stop signal, then SIGKILL after the grace.
    Daemonized { number: u64 },
    /// The generation's readiness check passed.
    Ready { number: u64 },
    /// The generation's ready timeout passed; `why`: what its readiness check still waits for.
    NotReady { number: u64, why: String },
    /// No process of the generation holds a public socket any more.
    Released { number: u64 },
    /// The generation sent STATUS= (already cleaned).
    AppStatus { number: u64, text: String },
    /// The generation sent WATCHDOG=1.
    AppWatchdog { number: u64 },
    /// The generation answered a liveness probe ([`Action::CheckAlive`]).
    Alive { number: u64 },
    /// A reload asked for over the control socket (`conn` waits for the outcome).
    Reload { conn: ConnId },
    /// `sockherd reload --join`: the outcome of the handoff the latest reload signal started.
    Join { conn: ConnId },
    /// A signal to sockherd. `from_user`: sent with kill(2) (not by the kernel for a terminal).
    Signal { signal: Signal, from_user: bool },
    /// Waiting for events failed: nothing can be supervised any more.
    LoopFailed { error: String },
    /// Time passed (deadlines are checked on every event; this one only checks them).
    Tick,
}

/// A message to systemd; each is sent in a datagram of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Ready,
    /// `RELOADING=1` with `MONOTONIC_USEC=` (the driver reads the clock).
    Reloading,
    Stopping,
    Watchdog,
    /// `STATUS=` with the current summary ([`Core::status_line`]).
    Status,
    /// `STATUS=` with this text.
    StatusText(String),
    ExtendTimeout(Duration),
}

/// What the driver must do.
#[derive(Debug)]
pub enum Action {
    /// Start generation `number`; answer with [`Event::Spawned`] or [`Event::SpawnFailed`].
    Spawn {
        number: u64,
    },
    /// Send `signal` to the master `pid`, or (`group`) to its whole process group.
    Signal {
        number: u64,
        pid: Pid,
        signal: Signal,
        group: bool,
    },
    /// SIGKILL to everything of the generation (its group, its master, its readiness command).
    Kill {
        number: u64,
        pid: Pid,
    },
    /// The generation is gone: drop what the driver holds for it.
    Forget {
        number: u64,
    },
    Notify(Notice),
    /// Answer a control request and close it.
    Answer {
        conn: ConnId,
        text: String,
    },
    /// Probe the serving generation now; answer with [`Event::Alive`] if it answers.
    CheckAlive {
        number: u64,
    },
    Log(log::Event),
}

/// The supervisor as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Life {
    Running,
    /// Every generation was told to stop; SIGKILL to what is left at `deadline`.
    Stopping {
        deadline: Instant,
    },
    /// SIGKILL was sent; waiting until every process is gone.
    Killing,
}

/// Why the supervisor stops; decides its exit code.
#[derive(Debug, Clone)]
enum StopCause {
    /// TERM/INT/QUIT: exit 0 if the serving generation ends cleanly.
    Requested,
    /// The serving generation exited on its own.
    Crashed { status: ExitStatus },
    /// Generation 1 never became ready: it exited (with this status), or missed its deadline.
    StartFailed { message: String, status: Option<ExitStatus> },
    /// The event loop could not go on.
    LoopFailed { message: String },
    /// SIGABRT: exit as a process killed by it would.
    Aborted,
}

/// How sockherd ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exit with this code.
    Code(u8),
    /// Fail with this message (exit 1).
    Error(String),
}

/// A handoff in flight: generation `new` is starting, or serves while `old` drain.
#[derive(Debug)]
struct Handoff {
    id: u64,
    new: u64,
    started: Instant,
    waiters: Vec<ConnId>,
    /// Once the new generation serves: how long it took to be ready, and the generations it
    /// sent draining; the handoff ends when all of them released the sockets.
    draining: Option<(Duration, Vec<u64>)>,
}

/// The follow-up reload that requests made during a handoff wait for.
#[derive(Debug)]
struct Pending {
    id: u64,
    waiters: Vec<ConnId>,
}

/// What a join answers: the handoff that covers the latest reload signal.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Joinable {
    /// Still to come or in flight (a pending or current handoff's id).
    Handoff(u64),
    /// Ended with this answer.
    Ended(String),
}

/// How the last reload ended, for STATUS= and `sockherd status`.
#[derive(Debug, Clone)]
pub struct ReloadOutcome {
    pub at: Instant,
    pub ok: bool,
    pub message: String,
    pub took: Duration,
}

/// What a re-executed supervisor's core resumes from.
#[derive(Debug, Clone)]
pub struct Resumed {
    pub serving: Generation,
    pub next_number: u64,
    pub next_handoff: u64,
    pub last_reload: Option<ReloadOutcome>,
    /// The answer a `join` gets about the last reload signal.
    pub latest_signal: Option<String>,
    /// Until when sockherd pings by itself after the last handoff (see [`Core::resume`]).
    pub cover_until: Option<Instant>,
}

pub struct Core {
    config: Config,
    generations: Vec<Generation>,
    next_number: u64,
    next_handoff: u64,
    /// The generation whose spawn was asked for and not answered yet.
    spawning: Option<u64>,
    life: Life,
    handoff: Option<Handoff>,
    pending: Option<Pending>,
    latest_signal: Option<Joinable>,
    last_reload: Option<ReloadOutcome>,
    stop_cause: Option<StopCause>,
    /// The generation that served when the stop began: its exit status is ours.
    primary: Option<(u64, Option<ExitStatus>)>,
    /// When sockherd next looks at the watchdog, and until when it pings by itself after a
    /// handoff (the new generation's first ping may take an interval).
    watchdog_next: Option<Instant>,
    cover_until: Option<Instant>,
    actions: VecDeque<Action>,
}

impl Core {
    /// A supervisor about to start generation 1 (the first action asks for its spawn).
    pub fn new(config: Config) -> Core {
        let mut core = Core {
            config,
            generations: Vec::new(),
            next_number: 1,
            next_handoff: 1,
            spawning: None,
            life: Life::Running,
            handoff: None,
            pending: None,
            latest_signal: None,
            last_reload: None,
            stop_cause: None,
            primary: None,
            watchdog_next: None,
            cover_until: None,
            actions: VecDeque::new(),
        };
        core.extend_timeout(core.config.ready_timeout + core.config.settle);
        core.spawn();
        core
    }

    /// A supervisor re-executed while `serving` served, quiet: no handoff, nothing pending
    /// ([`Core::quiet`] held in the image before). Nothing is asked of the driver: the
    /// generation already runs.
    pub fn resume(config: Config, resumed: Resumed) -> Core {
        Core {
            config,
            generations: vec![resumed.serving],
            next_number: resumed.next_number,
            next_handoff: resumed.next_handoff,
            spawning: None,
            life: Life::Running,
            handoff: None,
            pending: None,
            latest_signal: resumed.latest_signal.map(Joinable::Ended),
            last_reload: resumed.last_reload,
            stop_cause: None,
            primary: None,
            // Looks at the watchdog at once. Pings the generation sent meanwhile wait in its
            // notify socket, which crossed the exec. A handoff that ended less than an interval
            // before is still covered: the generation it started may not have pinged yet, the
            // exec does not change that.
            watchdog_next: None,
            cover_until: resumed.cover_until,
            actions: VecDeque::new(),
        }
    }

    /// Whether the supervisor may re-execute now: running, one generation serving whose master
    /// lives, no handoff in flight or pending, no spawn asked for.
    pub fn quiet(&self) -> bool {
        self.life == Life::Running
            && self.handoff.is_none()
            && self.pending.is_none()
            && self.spawning.is_none()
            && self.generations.len() == 1
            && self.generations[0].phase == Phase::Serving
            && self.generations[0].master_alive()
    }

    /// What [`Core::resume`] needs, when [`Core::quiet`].
    pub fn to_resume(&self) -> Option<Resumed> {
        if !self.quiet() {
            return None;
        }
        Some(Resumed {
            serving: self.generations[0].clone(),
            next_number: self.next_number,
            next_handoff: self.next_handoff,
            last_reload: self.last_reload.clone(),
            latest_signal: match &self.latest_signal {
                Some(Joinable::Ended(text)) => Some(text.clone()),
                _ => None,
            },
            cover_until: self.cover_until,
        })
    }

    /// The next action to perform, in order.
    pub fn next_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Feeds one event; then every deadline up to `now` is handled.
    pub fn handle(&mut self, now: Instant, event: Event) {
        match event {
            Event::Spawned { number, pid, release, cgroup } => self.on_spawned(number, pid, release, cgroup, now),
            Event::SpawnFailed { number, error } => self.on_spawn_failed(number, error, now),
            Event::Exited { pid, status } => self.on_exited(pid, status, now),
            Event::Gone { number } => self.on_gone(number, now),
            Event::Daemonized { number } => {
                if let Some(g) = self.generation_mut(number)
                    && g.phase.is_starting()
                {
                    g.daemonized = true;
                }
            }
            Event::Ready { number } => self.on_ready(number, now),
            Event::NotReady { number, why } => {
                if self.generation(number).is_some_and(|g| matches!(g.phase, Phase::Starting { .. })) {
                    let why = format!("not ready within {:?} ({why})", self.config.ready_timeout);
                    self.start_failed(number, why, now);
                }
            }
            Event::Released { number } => {
                if let Some(g) = self.generation_mut(number)
                    && matches!(g.phase, Phase::Draining { .. } | Phase::Failed { .. })
                {
                    g.released = true;
                }
            }
            Event::AppStatus { number, text } => {
                let serving = match self.generation_mut(number) {
                    Some(g) => {
                        g.app_status = Some(text);
                        g.phase == Phase::Serving
                    }
                    None => false,
                };
                if serving {
                    self.send_status();
                }
            }
            Event::AppWatchdog { number } | Event::Alive { number } => {
                if self.config.watchdog.is_some()
                    && self.life == Life::Running
                    && self.serving().is_some_and(|g| g.number == number && g.master_alive())
                {
                    self.actions.push_back(Action::Notify(Notice::Watchdog));
                }
            }
            Event::Reload { conn } => self.request_reload(Some(conn), false, now),
            Event::Join { conn } => self.join(conn, now),
            Event::Signal { signal, from_user } => self.on_signal(signal, from_user, now),
            Event::LoopFailed { error } => {
                let message = format!("waiting for events failed: {error}");
                self.emit(log::error(format!("{message}; stopping every generation")).kind("error"));
                if self.stop_cause_open() {
                    self.stop_cause = Some(StopCause::LoopFailed { message: message.clone() });
                }
                self.stop(false, &message, now);
            }
            Event::Tick => {}
        }
        self.on_deadlines(now);
        self.advance(now);
        debug_assert_eq!(self.broken_invariant(), None);
    }

    // ----- what the driver reads ------------------------------------------------------------------

    pub fn generations(&self) -> &[Generation] {
        &self.generations
    }

    pub fn generation(&self, number: u64) -> Option<&Generation> {
        self.generations.iter().find(|g| g.number == number)
    }

    /// The generation whose master is `pid` and not reaped yet. Once reaped, the pid is the
    /// kernel's to give out again (an older generation lingers while a worker that left its
    /// group lives): it must not name that generation any more.
    pub fn generation_of(&self, pid: Pid) -> Option<&Generation> {
        self.generations.iter().find(|g| g.pid == pid && g.master_alive())
    }

    pub fn serving(&self) -> Option<&Generation> {
        self.generations.iter().find(|g| g.phase == Phase::Serving)
    }

    pub fn life(&self) -> Life {
        self.life
    }

    pub fn reloading(&self) -> bool {
        self.handoff.is_some()
    }

    pub fn last_reload(&self) -> Option<&ReloadOutcome> {
        self.last_reload.as_ref()
    }

    /// Whether the generation's readiness check should run (it is starting and alive).
    pub fn awaits_ready(&self, number: u64) -> bool {
        self.generation(number).is_some_and(|g| matches!(g.phase, Phase::Starting { .. }) && g.master_alive())
    }

    /// Generations whose release of the public sockets ends the handoff in flight.
    pub fn awaiting_release(&self) -> Vec<&Generation> {
        let Some((_, old)) = self.handoff.as_ref().and_then(|h| h.draining.as_ref()) else { return Vec::new() };
        self.generations.iter().filter(|g| old.contains(&g.number) && !g.released).collect()
    }

    /// The earliest deadline the core has (call `handle(now, Event::Tick)` then).
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut deadlines = Vec::new();
        if let Life::Stopping { deadline } = self.life {
            deadlines.push(deadline);
        }
        if self.life == Life::Running {
            deadlines.extend(self.watchdog_next);
        }
        for g in &self.generations {
            match g.phase {
                Phase::Starting { deadline } => deadlines.push(deadline),
                // Promoted at `until` only while running: once stopping, a settling generation
                // waits for its stop like the others (a past `until` would make the loop spin).
                Phase::Settling { until, .. } if self.life == Life::Running && g.master_alive() => {
                    deadlines.push(until)
                }
                Phase::Draining { kill_at, .. } | Phase::Failed { kill_at } if !g.killed => deadlines.push(kill_at),
                _ => {}
            }
        }
        deadlines.into_iter().min()
    }

    /// Once stopping and every generation is gone: how sockherd ends.
    pub fn finished(&self) -> Option<Outcome> {
        (self.life != Life::Running && self.generations.is_empty() && self.spawning.is_none())
            .then(|| self.exit_outcome())
    }

    /// A human summary for `systemctl status`: who serves, what is going on, the last reload.
    /// `when` renders an instant as wall-clock time.
    pub fn status_line(&self, when: &dyn Fn(Instant) -> String) -> String {
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
        if let Some(g) = self.generations.iter().find(|g| g.phase.is_starting()) {
            let settling = if matches!(g.phase, Phase::Settling { .. }) { ", settling" } else { "" };
            parts.push(format!("starting generation {} (pid {}{settling})", g.number, g.pid));
        }
        let draining = self.generations.iter().filter(|g| matches!(g.phase, Phase::Draining { .. })).count();
        if draining > 0 {
            parts.push(format!("{draining} draining"));
        }
        if let Some(last) = &self.last_reload {
            let outcome = if last.ok { "ok".to_string() } else { format!("reload failed: {}", last.message) };
            parts.push(format!("last reload {} ({} ms): {outcome}", when(last.at), last.took.as_millis()));
        }
        parts.join("; ")
    }

    /// The invariants that must hold between any two events, or the first one broken. Checked
    /// after every step of the model test (tests/handoff_model.rs) and by debug builds.
    pub fn broken_invariant(&self) -> Option<String> {
        let starting = self.generations.iter().filter(|g| g.phase.is_starting()).count();
        if starting + usize::from(self.spawning.is_some()) > 1 {
            return Some(format!("{starting} generations starting (and spawning {:?})", self.spawning));
        }
        let serving = self.generations.iter().filter(|g| g.phase == Phase::Serving).count();
        if serving > 1 {
            return Some(format!("{serving} generations serving"));
        }
        if let Some(h) = &self.handoff {
            let new = self.generation(h.new).map(|g| g.phase);
            let fine = match (&h.draining, new) {
                (None, None) => self.spawning == Some(h.new),
                (None, Some(phase)) => phase.is_starting(),
                (Some(_), Some(Phase::Serving)) => true,
                (Some(_), _) => false,
            };
            if !fine {
                return Some(format!("handoff {} to generation {} with its generation {new:?}", h.id, h.new));
            }
            if self.life != Life::Running {
                return Some("a handoff in flight while stopping".into());
            }
        }
        if let Some(p) = &self.pending {
            if self.life != Life::Running {
                return Some("a reload pending while stopping".into());
            }
            if self.handoff.is_none() && self.serving().is_some() && self.spawning.is_none() {
                return Some(format!("reload {} pending with nothing in its way", p.id));
            }
        }
        let mut waiters: Vec<ConnId> = self.handoff.iter().flat_map(|h| h.waiters.clone()).collect();
        waiters.extend(self.pending.iter().flat_map(|p| p.waiters.clone()));
        let count = waiters.len();
        waiters.sort();
        waiters.dedup();
        if waiters.len() != count {
            return Some("a requester waits twice".into());
        }
        if let Some(Joinable::Handoff(id)) = &self.latest_signal
            && self.handoff.as_ref().map(|h| h.id) != Some(*id)
            && self.pending.as_ref().map(|p| p.id) != Some(*id)
        {
            return Some(format!("the latest reload signal's handoff {id} is neither pending nor in flight"));
        }
        if self.life != Life::Running
            && let Some(g) = self.generations.iter().find(|g| g.stop_sent.is_none() && !g.killed)
        {
            return Some(format!("stopping, but generation {} was never told to stop", g.number));
        }
        if self.life == Life::Killing
            && let Some(g) = self.generations.iter().find(|g| !g.killed)
        {
            return Some(format!("killing, but generation {} was not killed", g.number));
        }
        None
    }

    // ----- events -------------------------------------------------------------------------------

    fn on_spawned(&mut self, number: u64, pid: Pid, release: Option<PathBuf>, cgroup: Option<PathBuf>, now: Instant) {
        if self.spawning != Some(number) {
            return;
        }
        self.spawning = None;
        self.generations.push(Generation {
            number,
            pid,
            release,
            started: now,
            phase: Phase::Starting { deadline: now + self.config.ready_timeout },
            exit: None,
            stop_sent: None,
            killed: false,
            released: false,
            app_status: None,
            cgroup,
            daemonized: false,
        });
        self.send_status();
    }

    fn on_spawn_failed(&mut self, number: u64, error: String, now: Instant) {
        if self.spawning != Some(number) {
            return;
        }
        self.spawning = None;
        if self.handoff.as_ref().is_some_and(|h| h.new == number) {
            let serving = self.serving_described();
            let message = format!("{error}; {serving} still serving");
            self.emit(log::error(format!("reload failed: {message}")).kind("rollback").field("GENERATION", number));
            self.finish_reload(false, message, now);
        } else {
            let message = format!("failed to start generation {number}: {error}");
            self.stop_cause = Some(StopCause::StartFailed { message: message.clone(), status: None });
            self.stop(true, &message, now);
        }
    }

    fn on_exited(&mut self, pid: Pid, status: ExitStatus, now: Instant) {
        let Some(index) = self.generations.iter().position(|g| g.pid == pid && g.exit.is_none()) else { return };
        let g = &mut self.generations[index];
        g.exit = Some(status);
        let number = g.number;
        if let Some((primary, primary_status)) = &mut self.primary
            && *primary == number
        {
            *primary_status = Some(status);
        }
        let g = &self.generations[index];
        let expected = g.stop_sent.is_some();
        let message = format!(
            "{} exited: {} after {:.1}s{}",
            g.describe(),
            describe_status(status),
            now.saturating_duration_since(g.started).as_secs_f64(),
            if expected { "" } else { " (unexpected)" }
        );
        let event = if expected { log::info(message) } else { log::error(message) };
        self.emit(
            event
                .kind("exit")
                .field("GENERATION", number)
                .field("PID", pid)
                .field("EXIT_STATUS", describe_status(status)),
        );
        match self.generations[index].phase {
            Phase::Starting { .. } | Phase::Settling { .. } if self.generations[index].daemonized => {
                let why = "daemonized: its master exited with status 0 and left processes that hold the sockets; \
                           sockherd must stay the server's parent: remove --daemon (or the server's daemonize \
                           setting)";
                self.start_failed(number, why.to_string(), now)
            }
            Phase::Starting { .. } => {
                self.start_failed(number, format!("exited with {} before it was ready", describe_status(status)), now)
            }
            Phase::Settling { ready_after, .. } => {
                let after = now.saturating_duration_since(self.generations[index].started).saturating_sub(ready_after);
                self.start_failed(
                    number,
                    format!(
                        "exited with {} {} ms after it reported ready (within --ready-settle {:?})",
                        describe_status(status),
                        after.as_millis(),
                        self.config.settle
                    ),
                    now,
                )
            }
            Phase::Serving if self.life == Life::Running => {
                let g = &self.generations[index];
                let message =
                    format!("{} exited on its own ({}); stopping the service", g.describe(), describe_status(status));
                self.emit(log::error(message.clone()).kind("crash").field("GENERATION", number));
                self.primary = Some((number, Some(status)));
                self.stop_cause = Some(StopCause::Crashed { status });
                self.stop(false, &message, now);
            }
            _ => {}
        }
    }

    fn on_gone(&mut self, number: u64, now: Instant) {
        let Some(index) = self.generations.iter().position(|g| g.number == number) else { return };
        if self.generations[index].exit.is_none() {
            return; // its master was never reaped: it cannot be gone
        }
        let g = self.generations.remove(index);
        if let Phase::Draining { since, .. } = g.phase {
            let took = now.saturating_duration_since(since);
            self.emit(
                log::info(format!("{} drained in {} ms", g.describe(), took.as_millis()))
                    .kind("drain")
                    .field("GENERATION", g.number)
                    .field("PID", g.pid)
                    .field("DRAIN_MS", took.as_millis()),
            );
        }
        self.actions.push_back(Action::Forget { number });
    }

    fn on_ready(&mut self, number: u64, now: Instant) {
        if self.life != Life::Running {
            return;
        }
        let settle = self.config.settle;
        let Some(g) = self.generation_mut(number) else { return };
        if !matches!(g.phase, Phase::Starting { .. }) || !g.master_alive() {
            return;
        }
        let ready_after = now.saturating_duration_since(g.started);
        if settle.is_zero() {
            self.promote(number, ready_after, now);
            return;
        }
        g.phase = Phase::Settling { ready_after, until: now + settle };
        let described = g.describe();
        self.emit(
            log::info(format!(
                "{described} reported ready after {} ms; it serves if it is still running {:?} from now",
                ready_after.as_millis(),
                settle
            ))
            .kind("settle")
            .field("GENERATION", number)
            .field("READY_MS", ready_after.as_millis()),
        );
        self.extend_timeout(settle);
    }

    /// Whether a failure may still name why sockherd stops: the first failure (a crash, a failed
    /// start, the loop, SIGABRT) stands; a requested stop is overridden by one during it.
    fn stop_cause_open(&self) -> bool {
        matches!(self.stop_cause, None | Some(StopCause::Requested))
    }

    fn on_signal(&mut self, signal: Signal, from_user: bool, now: Instant) {
        match signal {
            Signal::TERM | Signal::INT => self.stop(false, &format!("received {signal}"), now),
            Signal::QUIT => self.stop(true, &format!("received {signal}"), now),
            // systemd's WatchdogSignal= (and TimeoutStopFailureMode=abort): the service is
            // deemed hung. Stop fast and fail, so that Restart= acts.
            Signal::ABRT if from_user => {
                if self.stop_cause_open() {
                    self.stop_cause = Some(StopCause::Aborted);
                }
                self.stop(true, "received SIGABRT (systemd's watchdog, or an abort request)", now);
            }
            // USR2 is every upgrading server's own "upgrade yourself": here that is a reload.
            Signal::HUP | Signal::USR2 => self.request_reload(None, true, now),
            // The servers' own control signals: logs reopened, workers added or removed.
            Signal::USR1 | Signal::TTIN | Signal::TTOU | Signal::WINCH if from_user => {
                match self.serving().filter(|g| g.master_alive()).map(|g| (g.number, g.pid, g.describe())) {
                    Some((number, pid, described)) => {
                        self.emit(log::info(format!("forwarding {signal} to {described}")).kind("forward"));
                        self.actions.push_back(Action::Signal { number, pid, signal, group: false });
                    }
                    None => self.emit(log::warn(format!("received {signal} with no generation serving: ignored"))),
                }
            }
            // A terminal's resize or job control, meant for a foreground process we are not.
            Signal::TTIN | Signal::TTOU | Signal::WINCH => {}
            other => self.emit(log::warn(format!("received {other}: ignored (it is not one sockherd acts on)"))),
        }
    }

    /// Handles every deadline up to `now`.
    fn on_deadlines(&mut self, now: Instant) {
        let due: Vec<(u64, Phase)> =
            self.generations.iter().filter(|g| !g.killed).map(|g| (g.number, g.phase)).collect();
        for (number, phase) in due {
            match phase {
                Phase::Starting { deadline } if now >= deadline => {
                    let why = format!("not ready within {:?}", self.config.ready_timeout);
                    self.start_failed(number, why, now);
                }
                Phase::Settling { ready_after, until }
                    if now >= until
                        && self.life == Life::Running
                        && self.generation(number).is_some_and(Generation::master_alive) =>
                {
                    self.promote(number, ready_after, now);
                }
                Phase::Draining { kill_at, .. } | Phase::Failed { kill_at } if now >= kill_at => {
                    let grace = match phase {
                        Phase::Draining { .. } => self.config.drain_timeout,
                        _ => self.config.failed_grace(),
                    };
                    if let Some(g) = self.generation(number) {
                        let message = format!(
                            "{} still running {grace:?} after it was told to stop: sending SIGKILL to its {}",
                            g.describe(),
                            if g.cgroup.is_some() { "cgroup" } else { "process group" }
                        );
                        let event = log::warn(message).kind("kill").field("GENERATION", number).field("PID", g.pid);
                        self.emit(event);
                    }
                    self.kill(number);
                }
                _ => {}
            }
        }
        self.on_watchdog(now);
        if let Life::Stopping { deadline } = self.life
            && now >= deadline
        {
            let timeout = self.config.stop_timeout;
            self.emit(
                log::warn(format!("still running {timeout:?} after the stop signal: sending SIGKILL")).kind("kill"),
            );
            let all: Vec<u64> = self.generations.iter().filter(|g| !g.killed).map(|g| g.number).collect();
            for number in all {
                self.kill(number);
            }
            self.life = Life::Killing;
        }
    }

    /// systemd's watchdog: every half interval, sockherd pings for itself (supervisor mode, or
    /// while a handoff is in flight and one interval after it) and asks the serving generation
    /// to prove it answers (probe mode). Relayed pings need no timer.
    fn on_watchdog(&mut self, now: Instant) {
        let Some((interval, mode)) = self.config.watchdog else { return };
        let next = *self.watchdog_next.get_or_insert(now);
        if now < next || self.life != Life::Running {
            return;
        }
        self.watchdog_next = Some(now + interval / 2);
        let serving = self.serving().filter(|g| g.master_alive()).map(|g| g.number);
        let handoff = self.handoff.is_some() || self.cover_until.is_some_and(|until| now < until);
        if serving.is_some() && (mode == WatchdogMode::Supervisor || handoff) {
            self.actions.push_back(Action::Notify(Notice::Watchdog));
        }
        if let (WatchdogMode::Probe, Some(number)) = (mode, serving) {
            self.actions.push_back(Action::CheckAlive { number });
        }
    }

    /// Ends the handoff once the drained generations released the sockets.
    fn advance(&mut self, now: Instant) {
        let Some(handoff) = &self.handoff else { return };
        let Some((ready_after, old)) = &handoff.draining else { return };
        let holding = self.generations.iter().any(|g| old.contains(&g.number) && !g.released);
        if holding {
            return;
        }
        let (ready_after, new) = (*ready_after, handoff.new);
        let took = now.saturating_duration_since(handoff.started);
        match self.generation(new).filter(|g| g.phase == Phase::Serving && g.master_alive()) {
            Some(g) => {
                let message = format!(
                    "{} serves (ready after {} ms, old generation closed its sockets after {} ms)",
                    g.describe(),
                    ready_after.as_millis(),
                    took.as_millis()
                );
                self.finish_reload(true, message, now);
            }
            None => {
                let message = format!("generation {new} exited during the handoff; the service is stopping");
                self.finish_reload(false, message, now);
            }
        }
    }

    // ----- generations --------------------------------------------------------------------------

    fn spawn(&mut self) -> u64 {
        let number = self.next_number;
        self.next_number += 1;
        self.spawning = Some(number);
        self.actions.push_back(Action::Spawn { number });
        number
    }

    /// A settled generation serves; whatever served before drains.
    fn promote(&mut self, number: u64, ready_after: Duration, now: Instant) {
        let Some(g) = self.generation_mut(number) else { return };
        g.phase = Phase::Serving;
        let (described, pid) = (g.describe(), g.pid);
        let took = now.saturating_duration_since(g.started);
        self.emit(
            log::info(format!("{described} is ready after {} ms", took.as_millis()))
                .kind("ready")
                .field("GENERATION", number)
                .field("PID", pid)
                .field("READY_MS", ready_after.as_millis()),
        );
        let stop_signal = self.config.stop_signal;
        let kill_at = now + self.config.drain_timeout;
        let old: Vec<u64> = self
            .generations
            .iter()
            .filter(|g| g.phase == Phase::Serving && g.number != number)
            .map(|g| g.number)
            .collect();
        for &o in &old {
            let g = self.generation_mut(o).expect("listed above");
            g.phase = Phase::Draining { since: now, kill_at };
            let (described, old_pid) = (g.describe(), g.pid);
            self.emit(
                log::info(format!("draining {described} with {stop_signal}"))
                    .kind("drain_start")
                    .field("GENERATION", o)
                    .field("PID", old_pid),
            );
            self.signal(o, stop_signal);
        }
        match &mut self.handoff {
            Some(handoff) if handoff.new == number => {
                handoff.draining = Some((ready_after, old));
                self.extend_timeout(self.config.drain_timeout + self.config.failed_grace());
                self.send_status();
            }
            _ => {
                // Generation 1: the service is up. A reload asked for while it started follows.
                self.actions.push_back(Action::Notify(Notice::Ready));
                self.send_status();
                if let Some(pending) = self.pending.take() {
                    self.begin_reload(pending, now);
                }
            }
        }
    }

    /// A starting generation exited or missed its deadline: it is told to stop (it may already
    /// serve on the shared sockets) and killed after a grace; whatever served keeps serving.
    fn start_failed(&mut self, number: u64, why: String, now: Instant) {
        let stop_signal = self.config.stop_signal;
        let kill_at = now + self.config.failed_grace();
        let Some(g) = self.generation_mut(number) else { return };
        if !g.phase.is_starting() {
            return;
        }
        g.phase = Phase::Failed { kill_at };
        let described = g.describe();
        let status = g.exit;
        self.signal(number, stop_signal);
        if self.handoff.as_ref().is_some_and(|h| h.new == number) {
            let serving = self.serving_described();
            let message = format!("{described} {why}; {serving} still serving");
            self.emit(log::error(format!("reload failed: {message}")).kind("rollback").field("GENERATION", number));
            self.finish_reload(false, message, now);
        } else if self.life == Life::Running {
            let message = format!("{described} {why}");
            self.emit(log::error(format!("start failed: {message}")).kind("rollback").field("GENERATION", number));
            self.stop_cause = Some(StopCause::StartFailed { message, status });
            self.stop(true, "the first generation failed to start", now);
        }
    }

    /// `signal` to the generation's master while it lives, else to what is left of its group.
    fn signal(&mut self, number: u64, signal: Signal) {
        let Some(g) = self.generation_mut(number) else { return };
        if g.killed {
            return;
        }
        g.stop_sent.get_or_insert(signal);
        let (pid, group) = (g.pid, !g.master_alive());
        self.actions.push_back(Action::Signal { number, pid, signal, group });
    }

    fn kill(&mut self, number: u64) {
        let Some(g) = self.generation_mut(number) else { return };
        g.killed = true;
        g.stop_sent.get_or_insert(Signal::KILL);
        let pid = g.pid;
        self.actions.push_back(Action::Kill { number, pid });
    }

    // ----- reloads ------------------------------------------------------------------------------

    fn request_reload(&mut self, waiter: Option<ConnId>, by_signal: bool, now: Instant) {
        if self.life != Life::Running {
            if let Some(conn) = waiter {
                self.answer(conn, "error the service is stopping; not reloading".into());
            }
            return;
        }
        if self.handoff.is_some() || self.serving().is_none() {
            // Coalesce: one follow-up reload covers every request made meanwhile.
            let next_id = &mut self.next_handoff;
            let pending = self.pending.get_or_insert_with(|| {
                *next_id += 1;
                Pending { id: *next_id - 1, waiters: Vec::new() }
            });
            pending.waiters.extend(waiter);
            let id = pending.id;
            if by_signal {
                self.latest_signal = Some(Joinable::Handoff(id));
            }
            let message = if self.handoff.is_some() {
                "reload requested while a handoff is in flight: a follow-up reload will start when it ends".to_string()
            } else {
                let starting = self.generations.iter().find(|g| g.phase.is_starting()).map(|g| g.number).unwrap_or(1);
                format!("reload requested while generation {starting} is starting: it follows once that one serves")
            };
            self.emit(log::info(message).kind("reload_queued"));
            return;
        }
        let id = self.next_handoff;
        self.next_handoff += 1;
        if by_signal {
            self.latest_signal = Some(Joinable::Handoff(id));
        }
        self.begin_reload(Pending { id, waiters: waiter.into_iter().collect() }, now);
    }

    fn join(&mut self, conn: ConnId, now: Instant) {
        if self.life != Life::Running {
            self.answer(conn, "error the service is stopping; not reloading".into());
            return;
        }
        match self.latest_signal.clone() {
            Some(Joinable::Handoff(id)) => {
                if let Some(handoff) = self.handoff.as_mut().filter(|h| h.id == id) {
                    handoff.waiters.push(conn);
                } else if let Some(pending) = self.pending.as_mut().filter(|p| p.id == id) {
                    pending.waiters.push(conn);
                } else {
                    // Cannot happen: a signal's handoff is pending or in flight until it ends.
                    debug_assert!(false, "the latest signal's handoff {id} is neither pending nor in flight");
                    self.request_reload(Some(conn), false, now);
                }
            }
            Some(Joinable::Ended(answer)) => self.answer(conn, answer),
            // No reload signal to join: a reload of its own.
            None => self.request_reload(Some(conn), false, now),
        }
    }

    fn begin_reload(&mut self, pending: Pending, now: Instant) {
        self.emit(log::info("reload: starting a new generation").kind("reload"));
        self.actions.push_back(Action::Notify(Notice::Reloading));
        let status = format!("reloading: starting generation {}", self.next_number);
        self.actions.push_back(Action::Notify(Notice::StatusText(status)));
        self.extend_timeout(self.config.ready_timeout + self.config.settle);
        let new = self.spawn();
        self.handoff = Some(Handoff { id: pending.id, new, started: now, waiters: pending.waiters, draining: None });
    }

    fn finish_reload(&mut self, ok: bool, message: String, now: Instant) {
        let Some(handoff) = self.handoff.take() else { return };
        let took = now.saturating_duration_since(handoff.started);
        self.last_reload = Some(ReloadOutcome { at: now, ok, message: message.clone(), took });
        if let Some((interval, _)) = self.config.watchdog {
            self.cover_until = Some(now + interval);
        }
        let event = if ok {
            log::info(format!("reload done: {message}")).kind("reload_done")
        } else {
            log::error(format!("reload failed: {message}")).kind("reload_failed")
        };
        self.emit(
            event
                .field("GENERATION", handoff.new)
                .field("HANDOFF_MS", took.as_millis())
                .field("OUTCOME", if ok { "ok" } else { "failed" }),
        );
        // READY=1 ends systemd's reload state either way (nothing sent can fail a reload).
        self.actions.push_back(Action::Notify(Notice::Ready));
        self.send_status();
        let answer = if ok { format!("ok {message}") } else { format!("error {message}") };
        if self.latest_signal == Some(Joinable::Handoff(handoff.id)) {
            self.latest_signal = Some(Joinable::Ended(answer.clone()));
        }
        for conn in handoff.waiters {
            self.answer(conn, answer.clone());
        }
        if let Some(pending) = self.pending.take() {
            if self.life == Life::Running && self.serving().is_some() {
                self.begin_reload(pending, now);
            } else {
                self.abandon(pending.id, pending.waiters, "error the service is stopping; reload abandoned");
            }
        }
    }

    /// Answers the waiters of a handoff that will never run or end.
    fn abandon(&mut self, id: u64, waiters: Vec<ConnId>, answer: &str) {
        if self.latest_signal == Some(Joinable::Handoff(id)) {
            self.latest_signal = Some(Joinable::Ended(answer.to_string()));
        }
        for conn in waiters {
            self.answer(conn, answer.to_string());
        }
    }

    // ----- stopping -----------------------------------------------------------------------------

    /// Stops every generation: gracefully (the configured stop signal) or fast.
    fn stop(&mut self, fast: bool, why: &str, now: Instant) {
        if self.stop_cause.is_none() {
            self.stop_cause = Some(StopCause::Requested);
        }
        let escalate = fast && matches!(self.life, Life::Stopping { .. });
        if self.life != Life::Running && !escalate {
            self.emit(log::info(format!("{why}: already stopping")));
            return;
        }
        if self.primary.is_none() {
            // The generation that serves, or (stopped during its start) the one starting: its
            // exit status becomes ours.
            let primary = self.serving().or_else(|| self.generations.iter().find(|g| g.phase.is_starting()));
            self.primary = primary.map(|g| (g.number, g.exit));
        }
        self.emit(log::info(format!("{why}: stopping{}", if fast { " fast" } else { "" })).kind("stop"));
        self.actions.push_back(Action::Notify(Notice::Stopping));
        self.actions.push_back(Action::Notify(Notice::StatusText(format!("stopping ({why})"))));
        self.extend_timeout(self.config.stop_timeout);
        let fast_signal = self.config.flavor.fast_signal();
        let stop_signal = self.config.stop_signal;
        let targets: Vec<(u64, Signal)> = self
            .generations
            .iter()
            .filter_map(|g| match g.phase {
                _ if g.killed => None,
                _ if fast => Some((g.number, fast_signal)),
                // A starting generation may already answer on the shared sockets: it drains too.
                Phase::Serving | Phase::Starting { .. } | Phase::Settling { .. } => Some((g.number, stop_signal)),
                // Already told.
                Phase::Draining { .. } | Phase::Failed { .. } => None,
            })
            .collect();
        for (number, signal) in targets {
            self.signal(number, signal);
        }
        let abandoned = format!("error the service is stopping ({why}); reload abandoned");
        if let Some(handoff) = self.handoff.take() {
            self.abandon(handoff.id, handoff.waiters, &abandoned);
        }
        if let Some(pending) = self.pending.take() {
            self.abandon(pending.id, pending.waiters, &abandoned);
        }
        if !escalate {
            self.life = Life::Stopping { deadline: now + self.config.stop_timeout };
        }
    }

    fn exit_outcome(&self) -> Outcome {
        match &self.stop_cause {
            // A server that exited before it was ready: its own status, as a shell would report
            // it (never 0: the service did not start). A deadline missed: our failure.
            Some(StopCause::StartFailed { status: Some(status), .. }) => Outcome::Code(match shell_code(*status) {
                0 => 1,
                code => code,
            }),
            Some(StopCause::StartFailed { message, status: None }) => Outcome::Error(message.clone()),
            Some(StopCause::LoopFailed { message }) => Outcome::Error(message.clone()),
            Some(StopCause::Aborted) => Outcome::Code(128 + libc::SIGABRT as u8),
            Some(StopCause::Crashed { status }) => Outcome::Code(match shell_code(*status) {
                0 => 1, // a server that quits by itself is down all the same
                code => code,
            }),
            Some(StopCause::Requested) | None => match self.primary {
                // A stop that needed SIGKILL failed, even if the master itself exited cleanly
                // (a worker of its group ignored the stop): systemd must see a failure.
                Some((_, Some(status))) if self.life == Life::Killing => {
                    Outcome::Code(if status.success() { 128 + libc::SIGKILL as u8 } else { shell_code(status) })
                }
                Some((_, Some(status))) if self.config.flavor.is_clean_exit(status) => Outcome::Code(0),
                Some((_, Some(status))) => Outcome::Code(shell_code(status)),
                // Stopped before anything served (TERM during the first start).
                _ => Outcome::Code(if self.life == Life::Killing { 137 } else { 0 }),
            },
        }
    }

    // ----- helpers ------------------------------------------------------------------------------

    fn generation_mut(&mut self, number: u64) -> Option<&mut Generation> {
        self.generations.iter_mut().find(|g| g.number == number)
    }

    fn serving_described(&self) -> String {
        self.serving().map(|g| g.describe()).unwrap_or_else(|| "no generation".into())
    }

    fn emit(&mut self, event: log::Event) {
        self.actions.push_back(Action::Log(event));
    }

    fn answer(&mut self, conn: ConnId, text: String) {
        self.actions.push_back(Action::Answer { conn, text });
    }

    fn extend_timeout(&mut self, phase: Duration) {
        self.actions.push_back(Action::Notify(Notice::ExtendTimeout(phase + EXTEND_MARGIN)));
    }

    fn send_status(&mut self) {
        self.actions.push_back(Action::Notify(Notice::Status));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names `status` shows and `--watchdog` takes (README, "sockherd status").
    #[test]
    fn names() {
        let at = Instant::now();
        let phases = [
            (Phase::Starting { deadline: at }, "starting"),
            (Phase::Settling { ready_after: Duration::ZERO, until: at }, "starting"),
            (Phase::Serving, "serving"),
            (Phase::Draining { since: at, kill_at: at }, "draining"),
            (Phase::Failed { kill_at: at }, "failed"),
        ];
        for (phase, name) in phases {
            assert_eq!(phase.name(), name, "{phase:?}");
        }
        let modes =
            [(WatchdogMode::Relay, "relay"), (WatchdogMode::Probe, "probe"), (WatchdogMode::Supervisor, "supervisor")];
        for (mode, name) in modes {
            assert_eq!(mode.name(), name);
        }
    }

    /// A generation serving since `started`, as a reexec hands it over.
    fn serving_generation(number: u64, pid: Pid, started: Instant) -> Generation {
        Generation {
            number,
            pid,
            release: None,
            started,
            phase: Phase::Serving,
            exit: None,
            stop_sent: None,
            killed: false,
            released: false,
            app_status: None,
            cgroup: None,
            daemonized: false,
        }
    }

    /// What a reexec hands over comes back whole from the resumed core: a `join` after it gets
    /// the answer it would have got before, not a reload of its own.
    #[test]
    fn a_resumed_core_hands_over_what_it_resumed_from() {
        let config = Config {
            flavor: Flavor::Gunicorn,
            ready_timeout: Duration::from_secs(5),
            settle: Duration::ZERO,
            drain_timeout: Duration::from_secs(5),
            stop_signal: Signal::TERM,
            stop_timeout: Duration::from_secs(5),
            watchdog: None,
        };
        let serving = Generation {
            release: Some(PathBuf::from("/srv/app/releases/42")),
            ..serving_generation(3, 4711, Instant::now())
        };
        let answer = "ok generation 3 (pid 4711) serves".to_string();
        let resumed = Resumed {
            serving,
            next_number: 4,
            next_handoff: 2,
            last_reload: None,
            latest_signal: Some(answer.clone()),
            cover_until: None,
        };
        let mut core = Core::resume(config, resumed);
        let again = core.to_resume().expect("a resumed core is quiet");
        assert_eq!(again.latest_signal.as_deref(), Some(answer.as_str()));
        assert_eq!((again.serving.number, again.next_number, again.next_handoff), (3, 4, 2));
        core.handle(Instant::now(), Event::Join { conn: 7 });
        let actions: Vec<Action> = std::iter::from_fn(|| core.next_action()).collect();
        assert!(
            actions.iter().any(|a| matches!(a, Action::Answer { conn: 7, text } if *text == answer)),
            "{actions:?}"
        );
        assert!(!actions.iter().any(|a| matches!(a, Action::Spawn { .. })), "a join started a reload: {actions:?}");
    }

    /// A reexec less than a watchdog interval after a handoff ended keeps sockherd's own pings
    /// until that interval is over (the new generation may not have pinged yet), and no longer.
    #[test]
    fn a_resumed_core_keeps_covering_the_last_handoff() {
        let interval = Duration::from_secs(4);
        let config = Config {
            flavor: Flavor::Puma,
            ready_timeout: Duration::from_secs(5),
            settle: Duration::ZERO,
            drain_timeout: Duration::from_secs(5),
            stop_signal: Signal::TERM,
            stop_timeout: Duration::from_secs(5),
            watchdog: Some((interval, WatchdogMode::Relay)),
        };
        let t0 = Instant::now();
        let resumed = Resumed {
            serving: serving_generation(2, 4711, t0),
            next_number: 3,
            next_handoff: 2,
            last_reload: None,
            latest_signal: None,
            cover_until: Some(t0 + interval),
        };
        let mut core = Core::resume(config, resumed);
        assert_eq!(core.to_resume().and_then(|r| r.cover_until), Some(t0 + interval));
        let pings = |core: &mut Core, at: Instant| {
            core.handle(at, Event::Tick);
            std::iter::from_fn(|| core.next_action()).filter(|a| matches!(a, Action::Notify(Notice::Watchdog))).count()
        };
        assert_eq!(pings(&mut core, t0), 1, "no ping right after the exec, within the cover");
        assert_eq!(pings(&mut core, t0 + interval / 2), 1, "no ping half an interval later, within the cover");
        assert_eq!(pings(&mut core, t0 + interval), 0, "a ping after the cover ended, in relay mode");
        assert_eq!(pings(&mut core, t0 + interval * 3 / 2), 0, "a ping after the cover ended, in relay mode");
    }
}
