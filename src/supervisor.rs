//! `sockherd run`: the service's main process. This is the edge of the supervisor: it waits for
//! events, hands them to the core ([`crate::handoff`], where every rule of a handoff lives) and
//! performs the actions the core answers with.
//!
//! One loop waits (poll) on the signal pipe, the control socket, the generations' notify sockets
//! and probe connections, with the nearest deadline as timeout. Signal handlers only queue.
//! Within one wakeup, events reach the core in a fixed order: child exits first (so readiness is
//! never believed of a master whose exit is already known), then signals, readiness (check
//! commands, notify datagrams, probe answers), control requests, timers, and what `/proc` says
//! about generations whose master is gone or that drain.
//!
//! We are a child subreaper and each generation is its own process group, so a worker that
//! outlives its master is still drained, killed and reaped. Where the service's cgroup is
//! delegated to us, each generation is also a cgroup of its own ([`crate::cgroup`]): then its
//! processes are those of its `cgroup.procs` (setsid() escapes nothing), it is killed with
//! `cgroup.kill`, and it is gone when its `cgroup.events` says so, which the loop waits for
//! (POLLPRI) instead of polling: nothing wakes the loop but events.

use std::cell::RefCell;
use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow};

use crate::cgroup::{self, GenCgroup, Membership};
use crate::command::{self, Launch};
use crate::control::{ConnId, ControlServer, Request};
use crate::flavor::Flavor;
use crate::generation;
use crate::handoff::{self, Action, Core, Event, Life, Notice, Outcome, Phase, WatchdogMode};
use crate::log;
use crate::metrics::{self, GenerationInfo, Metrics};
use crate::notify::{self, Notifier};
use crate::protocol::{EXTEND_TIMEOUT_USEC, MONOTONIC_USEC, READY, RELOADING, STATUS, STOPPING, WATCHDOG};
use crate::queue::Queues;
use crate::readiness::{self, Check, Inbox, PROBE_SOCKET_NAME, Readiness, Verdict};
use crate::reexec;
use crate::resources;
use crate::runtime::RuntimeDir;
use crate::signal::SignalQueue;
use crate::socket::{Origin, Socket};
use crate::status::json_str;
use crate::sys::{self, Pid};

pub struct RunConfig {
    pub command: Vec<OsString>,
    pub flavor: Flavor,
    /// `--chdir`, unresolved: resolved anew for every generation.
    pub chdir: Option<PathBuf>,
    pub ready: Readiness,
    pub ready_timeout: Duration,
    pub ready_settle: Duration,
    pub drain_timeout: Duration,
    pub stop_signal: crate::signal::Signal,
    pub stop_timeout: Duration,
    /// How systemd's watchdog is answered, when it is on (`WatchdogSec=`).
    pub watchdog: WatchdogMode,
    /// `--memory-check`: refuse a reload the memory left cannot hold.
    pub memory_check: bool,
    /// `--boot-priority`: a new generation boots at a lower CPU priority.
    pub boot_priority: bool,
    /// `--metrics-file`: rewritten on each event.
    pub metrics_file: Option<PathBuf>,
}

/// How often `/proc` is read while a drained generation may still accept on a public socket
/// (process groups only: a cgroup's members are looked at when something happens to them).
const RELEASE_POLL: Duration = Duration::from_millis(20);
/// How often `/proc` is read while a generation's master is gone but its group lingers.
const LINGER_POLL: Duration = Duration::from_millis(100);

pub struct Supervisor {
    core: Core,
    config: RunConfig,
    sockets: Vec<Socket>,
    /// Inodes of the public sockets, to tell when a draining generation stopped accepting.
    socket_inodes: Vec<u64>,
    notifier: Notifier,
    signals: SignalQueue,
    control: ControlServer,
    /// The private directory of the control socket and the generations' notify and probe
    /// sockets ([`RuntimeDir`]); removed with them.
    runtime_dir: RuntimeDir,
    /// Each generation's readiness check, by number.
    checks: Vec<(u64, Check)>,
    /// Each generation's private notify socket, by number.
    inboxes: Vec<(u64, Inbox)>,
    /// systemd's watchdog interval, when it is meant for us: the generations get it too.
    watchdog: Option<Duration>,
    /// An instant and the wall-clock time it was, to show instants as dates.
    epoch: (Instant, SystemTime),
    /// The error of the first generation's spawn, which `start` returns as ours.
    start_error: Option<anyhow::Error>,
    /// The resources side: the boot priority and which generations still boot at it.
    resources: Resources,
    /// Whether generations are cgroups or process groups.
    membership: Membership,
    /// Each generation's cgroup, by number (cgroup mode).
    cgroups: Vec<(u64, GenCgroup)>,
    /// The public sockets' listen queues, sampled during handoffs.
    queues: Queues,
    metrics: Option<Metrics>,
    /// What could not be read of which generation, each said once: such a generation counts
    /// as still holding the sockets and still there.
    unreadable: RefCell<Vec<(u64, &'static str)>>,
    /// The path this supervisor was started from, where an upgrade installs the new binary:
    /// what a reexec without a binary runs. It stays the same across reexecs, whichever file
    /// each ran.
    exe: Option<PathBuf>,
    /// A reexec asked for, waiting for the supervisor to be quiet ([`crate::reexec`]).
    reexec: Option<ReexecAsk>,
    /// How many times this supervisor re-executed itself.
    reexecs: u64,
}

/// A reexec asked for and not performed yet.
struct ReexecAsk {
    /// The control connection waiting for the answer (none for the signal).
    conn: Option<ConnId>,
    binary: Option<PathBuf>,
    said_waiting: bool,
}

/// The signal that asks for a reexec: systemd's own "re-execute yourself" (systemd(1)).
pub fn reexec_signal() -> crate::signal::Signal {
    crate::signal::Signal(libc::SIGRTMIN() + 25)
}

impl Supervisor {
    /// Sets up signals, the control socket and the runtime directory, and spawns generation 1.
    pub fn start(config: RunConfig, sockets: Vec<Socket>) -> Result<Supervisor> {
        sys::set_child_subreaper().context("failed to become a child subreaper (PR_SET_CHILD_SUBREAPER)")?;
        let signals = SignalQueue::install().context("failed to install signal handlers")?;
        let runtime_dir = RuntimeDir::create()?;
        let control = ControlServer::new(runtime_dir.path())?;
        let membership = Membership::detect();
        // Not a warning: in a shell, process groups are what there is.
        log::info(membership.describe()).kind("membership").field("MEMBERSHIP", membership.name()).emit();
        let mut supervisor =
            Supervisor::assemble(config, sockets, signals, control, runtime_dir, membership, |config, watchdog| {
                Core::new(handoff_config(config, watchdog))
            });
        if let Some(cgroups) = supervisor.membership.cgroups() {
            // Waiting for leftovers may take the stop timeout: systemd's start timeout is
            // extended by as much first (the core extends it again for generation 1).
            let stop_timeout = supervisor.config.stop_timeout;
            supervisor.notify(Notice::ExtendTimeout(stop_timeout + cgroup::KILL_ROUNDS_FOR + handoff::EXTEND_MARGIN));
            for line in cgroups.end_leftovers(supervisor.config.stop_signal, stop_timeout) {
                log::warn(line).kind("leftover").emit();
            }
        }
        supervisor.perform();
        if let Some(e) = supervisor.start_error.take() {
            supervisor.cleanup();
            return Err(e);
        }
        Ok(supervisor)
    }

    /// A supervisor of `sockets` with nothing running yet, its core made by `core` from the
    /// configuration and systemd's watchdog interval.
    fn assemble(
        config: RunConfig,
        sockets: Vec<Socket>,
        signals: SignalQueue,
        control: ControlServer,
        runtime_dir: RuntimeDir,
        membership: Membership,
        core: impl FnOnce(&RunConfig, Option<Duration>) -> Core,
    ) -> Supervisor {
        let watchdog = notify::watchdog_interval();
        let now = Instant::now();
        Supervisor {
            core: core(&config, watchdog),
            socket_inodes: sockets.iter().filter_map(Socket::inode).collect(),
            queues: Queues::new(&sockets),
            metrics: config.metrics_file.clone().map(Metrics::new),
            resources: Resources::new(config.boot_priority),
            config,
            sockets,
            notifier: Notifier::from_env(),
            signals,
            control,
            runtime_dir,
            checks: Vec::new(),
            inboxes: Vec::new(),
            watchdog,
            epoch: (now, SystemTime::now()),
            start_error: None,
            membership,
            cgroups: Vec::new(),
            unreadable: RefCell::new(Vec::new()),
            exe: reexec::installed_exe(),
            reexec: None,
            reexecs: 0,
        }
    }

    /// Runs until every generation is gone; returns our exit code.
    pub fn run(mut self) -> Result<u8> {
        let outcome = self.event_loop();
        self.cleanup();
        match outcome {
            Outcome::Code(code) => Ok(code),
            Outcome::Error(message) => Err(anyhow!("{message}")),
        }
    }

    fn event_loop(&mut self) -> Outcome {
        let mut wait_failed = false;
        loop {
            if let Some(outcome) = self.core.finished() {
                return outcome;
            }
            let timeout = self.next_deadline().map(|d| d.saturating_duration_since(Instant::now()));
            let readable = if wait_failed {
                // Without poll, look at everything now and then until the generations are gone.
                std::thread::sleep(timeout.unwrap_or(LINGER_POLL).min(LINGER_POLL));
                self.poll_sources().into_iter().map(|(s, _)| s).collect()
            } else {
                match self.wait(timeout) {
                    Ok(sources) => sources,
                    Err(e) => {
                        wait_failed = true;
                        self.feed(Event::LoopFailed { error: e.to_string() });
                        continue;
                    }
                }
            };
            self.wakeup(&readable);
        }
    }

    fn wait(&self, timeout: Option<Duration>) -> std::io::Result<Vec<Source>> {
        let (sources, fds): (Vec<Source>, Vec<(BorrowedFd<'_>, bool)>) = self
            .poll_sources()
            .into_iter()
            .map(|(source, fd)| (source, (fd, matches!(source, Source::Cgroup(_)))))
            .unzip();
        let ready = sys::poll(&fds, timeout)?;
        Ok(sources.into_iter().zip(ready).filter(|(_, r)| *r).map(|(s, _)| s).collect())
    }

    /// Hands one wakeup's events to the core, in the order the core relies on.
    fn wakeup(&mut self, readable: &[Source]) {
        // 1. Child exits, before anything can claim a dead master is ready.
        let reaped = self.reap();
        for &(pid, status) in &reaped {
            if let Some(number) = self.core.generation_of(pid).map(|g| g.number) {
                if status.success() && self.daemonized(number) {
                    self.feed(Event::Daemonized { number });
                }
                self.feed(Event::Exited { pid, status });
            }
        }
        // 2. Signals, in the order they came.
        if readable.contains(&Source::Signals) {
            for (signal, from_user) in self.signals.drain() {
                if signal == reexec_signal() {
                    self.ask_reexec(None, None);
                } else if signal.0 != libc::SIGCHLD {
                    self.feed(Event::Signal { signal, from_user });
                }
            }
        }
        // 3. Readiness: check commands that ended, notify datagrams, probe answers.
        let now = Instant::now();
        for &(pid, status) in &reaped {
            let ready: Vec<u64> = self
                .checks
                .iter_mut()
                .filter_map(|(number, check)| match check.on_reaped(pid, status.success(), now) {
                    Some(Verdict::Ready) => Some(*number),
                    _ => None,
                })
                .collect();
            for number in ready {
                self.feed(Event::Ready { number });
            }
        }
        for source in readable {
            match *source {
                Source::Notify(number) => self.on_notify(number),
                Source::Probe(number) => {
                    let verdict = self.check_mut(number).map(|c| c.on_probe_readable(Instant::now()));
                    if verdict == Some(Verdict::Ready) {
                        let event = if self.core.awaits_ready(number) {
                            Event::Ready { number }
                        } else {
                            Event::Alive { number }
                        };
                        self.feed(event);
                    }
                }
                _ => {}
            }
        }
        // 4. Control requests.
        for source in readable {
            match *source {
                Source::ControlListener => self.control.accept(),
                Source::Control(id) => {
                    if let Some(request) = self.control.read(id) {
                        self.on_request(id, request);
                    }
                }
                _ => {}
            }
        }
        // 5. Timers: readiness checks, the control channel, the watchdog, the core's deadlines.
        self.on_timers();
        // 6. What /proc says: drained generations that released the sockets, groups now empty.
        // A cgroup whose events woke us is read, which also waits for its next change (until
        // read, it stays signalled and the loop would spin).
        for source in readable {
            if let Source::Cgroup(number) = *source
                && let Some(cgroup) = self.cgroup(number)
            {
                let _ = cgroup.populated();
            }
        }
        self.observe_processes();
        self.feed(Event::Tick);
        self.reexec_when_quiet();
    }

    fn poll_sources(&self) -> Vec<(Source, BorrowedFd<'_>)> {
        let mut sources = vec![(Source::Signals, self.signals.as_fd())];
        for (id, fd) in self.control.poll_fds() {
            sources.push((id.map_or(Source::ControlListener, Source::Control), fd));
        }
        for (number, inbox) in &self.inboxes {
            sources.push((Source::Notify(*number), inbox.socket().as_fd()));
        }
        // A probe attempt in flight: readiness while starting, liveness once serving.
        for (number, check) in &self.checks {
            if let Some(fd) = check.poll_fd() {
                sources.push((Source::Probe(*number), fd));
            }
        }
        for (number, cgroup) in &self.cgroups {
            sources.push((Source::Cgroup(*number), cgroup.events_fd()));
        }
        sources
    }

    fn next_deadline(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut deadlines: Vec<Instant> = self.core.next_deadline().into_iter().collect();
        // The queues are sampled on a timer only while a handoff's new generation boots and
        // settles (an idle supervisor never wakes for them); once the old generation drains,
        // on the wakeups the drain has anyway, so that in cgroup mode no timer wakes a drain.
        if self.core.awaiting_release().is_empty() {
            deadlines.extend(self.queues.next_sample());
        }
        for (number, check) in &self.checks {
            if self.core.awaits_ready(*number) {
                deadlines.extend(check.next_timer());
            }
        }
        // A cgroup tells when it empties, and a drained generation's sockets are looked at on
        // every wakeup (its master's exit, its cgroup's change, the drain timeout): only process
        // groups need /proc polled.
        if self.core.awaiting_release().iter().any(|g| g.cgroup.is_none()) {
            deadlines.push(now + RELEASE_POLL);
        }
        if self
            .core
            .generations()
            .iter()
            .any(|g| g.cgroup.is_none() && (!g.master_alive() || self.core.life() == Life::Killing))
        {
            deadlines.push(now + LINGER_POLL);
        }
        deadlines.extend(self.control.next_timer());
        for number in &self.resources.booting {
            if let Some(g) = self.core.generation(*number).filter(|g| matches!(g.phase, Phase::Starting { .. })) {
                deadlines.push(self.boot_priority_until(g));
            }
        }
        deadlines.into_iter().min()
    }

    // ----- events ------------------------------------------------------------------------------

    /// Hands one event to the core and performs what it answers.
    fn feed(&mut self, event: Event) {
        self.core.handle(Instant::now(), event);
        self.perform();
    }

    fn on_request(&mut self, id: ConnId, request: Request) {
        match request {
            Request::Reload => self.feed(Event::Reload { conn: id }),
            Request::Join => self.feed(Event::Join { conn: id }),
            Request::Status => {
                let json = self.status_json();
                self.control.reply(id, &json);
            }
            Request::Reexec { binary } => self.ask_reexec(Some(id), binary),
        }
    }

    fn on_notify(&mut self, number: u64) {
        let Some(pgid) = self.core.generation(number).map(|g| g.pid) else { return };
        let Some(socket) = self.inboxes.iter().find(|(n, _)| *n == number).map(|(_, i)| i.socket()) else { return };
        let mut ready = false;
        let mut watchdog = false;
        let mut status = None;
        // Only live senders of this generation (readiness::receive_notify); their BARRIER=1
        // descriptors are closed once the messages were acted on, below.
        let messages = readiness::receive_notify(socket, pgid);
        for message in &messages {
            if let Some(text) = &message.status {
                status = Some(text.clone());
            }
            ready |= message.ready;
            watchdog |= message.watchdog;
        }
        if let Some(text) = status {
            self.feed(Event::AppStatus { number, text });
        }
        if watchdog {
            self.feed(Event::AppWatchdog { number });
        }
        // READY=1 makes a generation ready only with the `notify` strategy.
        if ready && self.checks.iter().any(|(n, c)| *n == number && matches!(c, Check::Notify)) {
            self.feed(Event::Ready { number });
        }
        drop(messages);
    }

    fn on_timers(&mut self) {
        let now = Instant::now();
        self.control.expire(now);
        self.queues.on_timer(now, &self.sockets);
        let mut ready = Vec::new();
        for (number, check) in &mut self.checks {
            if let Some(g) = self.core.generation(*number).filter(|_| self.core.awaits_ready(*number))
                && check.on_timer(now, g.pid, g.number) == Verdict::Ready
            {
                ready.push(*number);
            }
        }
        for number in ready {
            self.feed(Event::Ready { number });
        }
        // Ready timeouts, with what each check still waits for (the core would fail them at the
        // same deadline, without the reason).
        let late: Vec<(u64, String)> = self
            .core
            .generations()
            .iter()
            .filter(|g| matches!(g.phase, Phase::Starting { deadline } if now >= deadline))
            .filter_map(|g| Some((g.number, self.checks.iter().find(|(n, _)| *n == g.number)?.1.waiting_for())))
            .collect();
        for (number, why) in late {
            self.feed(Event::NotReady { number, why });
        }
    }

    /// Feeds what `/proc` says about generations the core waits on: a drained one no longer
    /// holding a public socket, one whose master is gone and whose group is now empty.
    fn observe_processes(&mut self) {
        let released: Vec<u64> = self
            .core
            .awaiting_release()
            .iter()
            .filter(|g| !self.holds_sockets(g.number, g.pid))
            .map(|g| g.number)
            .collect();
        for number in released {
            self.feed(Event::Released { number });
        }
        let gone: Vec<u64> = self
            .core
            .generations()
            .iter()
            .filter(|g| {
                !g.master_alive()
                    && match self.cgroup(g.number).map(GenCgroup::populated) {
                        Some(Ok(populated)) => !populated,
                        Some(Err(e)) => {
                            self.unreadable(g.number, "populated", || {
                                format!(
                                    "cannot tell whether generation {} is gone, so it counts as still there: {e}",
                                    g.number
                                )
                            });
                            false
                        }
                        None => !sys::group_alive(g.pid),
                    }
            })
            .filter(|g| self.checks.iter().all(|(n, c)| *n != g.number || c.running_command().is_none()))
            .map(|g| g.number)
            .collect();
        for number in gone {
            self.feed(Event::Gone { number });
        }
    }

    /// The processes of generation `number` (master `pid`): its cgroup's, else its process
    /// group's.
    fn try_members(&self, number: u64, pid: Pid) -> std::io::Result<Vec<Pid>> {
        match self.cgroup(number) {
            Some(cgroup) => cgroup.pids(),
            None => generation::members(pid),
        }
    }

    /// [`Self::try_members`] for what only shows them (status, metrics, resources): none
    /// where they cannot be read, which is said once.
    fn members(&self, number: u64, pid: Pid) -> Vec<Pid> {
        self.try_members(number, pid).unwrap_or_else(|e| {
            self.unreadable(number, "members", || format!("cannot list generation {number}'s processes: {e}"));
            Vec::new()
        })
    }

    /// Whether a process of generation `number` (master `pid`) may still accept on a public
    /// socket. Where that cannot be read, it may: a handoff is not over on a guess.
    fn holds_sockets(&self, number: u64, pid: Pid) -> bool {
        match self.try_members(number, pid).and_then(|pids| generation::holds_sockets(&pids, &self.socket_inodes)) {
            Ok(holds) => holds,
            Err(e) => {
                self.unreadable(number, "sockets", || {
                    format!(
                        "cannot tell whether generation {number} still holds the public sockets, so it counts as \
                         holding them: {e}"
                    )
                });
                true
            }
        }
    }

    /// Warns of what cannot be read of generation `number`, once per generation and `what`.
    fn unreadable(&self, number: u64, what: &'static str, message: impl FnOnce() -> String) {
        let mut said = self.unreadable.borrow_mut();
        if !said.contains(&(number, what)) {
            said.push((number, what));
            log::warn(message()).field("GENERATION", number).emit();
        }
    }

    /// Whether generation `number`, whose master just exited with status 0, left processes in
    /// its cgroup that hold the public sockets: a server that daemonized (`gunicorn --daemon`).
    /// Process groups cannot tell (the daemon left the group).
    fn daemonized(&self, number: u64) -> bool {
        let Some(g) = self.core.generation(number).filter(|g| g.phase.is_starting()) else { return false };
        self.cgroup(number).is_some() && self.holds_sockets(number, g.pid)
    }

    fn cgroup(&self, number: u64) -> Option<&GenCgroup> {
        self.cgroups.iter().find(|(n, _)| *n == number).map(|(_, c)| c)
    }

    /// Reaps every exited descendant.
    fn reap(&mut self) -> Vec<(Pid, ExitStatus)> {
        let mut reaped = Vec::new();
        loop {
            match sys::reap_any() {
                Ok(Some((pid, status))) => {
                    if self.core.generation_of(pid).is_none() {
                        log::debug(format!("reaped pid {pid}: {}", generation::describe_status(status))).emit();
                    }
                    reaped.push((pid, status));
                }
                Ok(None) => return reaped,
                Err(e) => {
                    log::warn(format!("waitpid failed: {e}")).emit();
                    return reaped;
                }
            }
        }
    }

    // ----- actions -----------------------------------------------------------------------------

    fn perform(&mut self) {
        while let Some(action) = self.core.next_action() {
            match action {
                Action::Spawn { number } => match self
                    .memory_budget(number)
                    .map_err(|refusal| anyhow!(refusal))
                    .and_then(|()| self.spawn_generation(number))
                {
                    Ok((pid, release)) => {
                        let cgroup = self.cgroup(number).map(|c| c.path().to_path_buf());
                        self.core.handle(Instant::now(), Event::Spawned { number, pid, release, cgroup });
                        // Its `spawn` event went out before the core knew it: the file shows it now.
                        if self.metrics.is_some() {
                            self.write_metrics();
                        }
                        // `--ready exec`: ready as soon as the command was executed.
                        if self.check_mut(number).is_some_and(|c| matches!(c, Check::Exec)) {
                            self.core.handle(Instant::now(), Event::Ready { number });
                        }
                    }
                    Err(e) if number == 1 => {
                        self.start_error = Some(e);
                        return;
                    }
                    Err(e) => self.core.handle(Instant::now(), Event::SpawnFailed { number, error: format!("{e:#}") }),
                },
                Action::Signal { number, pid, signal, group } => {
                    let result = match (group, self.cgroup(number)) {
                        (false, _) => sys::kill(pid, signal.0),
                        (true, Some(cgroup)) => cgroup.signal_all(signal.0),
                        // Its master reaped, the group's id is another generation's master's
                        // now (see kill_plan): the group this was meant for is empty.
                        (true, None) if self.core.generation_of(pid).is_some() => Ok(()),
                        (true, None) => sys::kill_group(pid, signal.0).map(drop),
                    };
                    if let Err(e) = result {
                        log::warn(format!("failed to send {signal} to generation {number} (pid {pid}): {e}")).emit();
                    }
                }
                Action::Kill { number, pid } => {
                    let reaped = self.core.generation(number).is_none_or(|g| !g.master_alive());
                    let plan = kill_plan(self.cgroup(number).is_some(), reaped, self.core.generation_of(pid).is_some());
                    if let Some(cgroup) = self.cgroup(number).filter(|_| plan.cgroup)
                        && let Err(e) = cgroup.kill()
                    {
                        log::warn(format!("failed to kill cgroup {}: {e}", cgroup.path().display())).emit();
                    }
                    if plan.group {
                        let _ = sys::kill_group(pid, libc::SIGKILL);
                    }
                    if plan.master {
                        let _ = sys::kill(pid, libc::SIGKILL);
                    }
                    self.kill_check_command(number);
                }
                Action::Forget { number } => {
                    self.unreadable.borrow_mut().retain(|(n, _)| *n != number);
                    self.checks.retain(|(n, _)| *n != number);
                    self.inboxes.retain(|(n, _)| *n != number);
                    self.remove_cgroup(number);
                }
                Action::CheckAlive { number } => {
                    if let Some(check) = self.check_mut(number) {
                        check.probe_now(Instant::now());
                    }
                }
                Action::Notify(notice) => self.notify(notice),
                Action::Answer { conn, text } => self.control.reply(conn, &text),
                Action::Log(event) => {
                    let event = self.with_resources(event);
                    self.log(event)
                }
            }
        }
        self.restore_ready_priorities();
        if !self.core.reloading() {
            self.queues.abandon();
        }
        // A readiness command has no business once its generation stopped starting.
        let stale: Vec<u64> = self
            .checks
            .iter()
            .filter(|(n, c)| c.running_command().is_some() && !self.core.awaits_ready(*n))
            .map(|(n, _)| *n)
            .collect();
        for number in stale {
            self.kill_check_command(number);
        }
    }

    /// Removes generation `number`'s cgroup, empty once the generation is gone.
    fn remove_cgroup(&mut self, number: u64) {
        let Some(index) = self.cgroups.iter().position(|(n, _)| *n == number) else { return };
        let (_, cgroup) = self.cgroups.remove(index);
        if let Err(e) = cgroup.remove() {
            log::warn(format!("failed to remove cgroup {}: {e}", cgroup.path().display())).emit();
        }
    }

    /// Emits an event of the core, with what only the edge knows: a handoff's listen-queue
    /// peak on its outcome. Sampling begins with the handoff's `reload` event; each event
    /// rewrites the metrics file.
    fn log(&mut self, event: log::Event) {
        let now = Instant::now();
        let mut peak = None;
        let event = match event.event_kind() {
            Some("reload") => {
                self.queues.begin(now, &self.sockets);
                event
            }
            Some("reload_done" | "reload_failed") => {
                peak = self.queues.finish(now, &self.sockets);
                match peak {
                    Some(p) => event
                        .note(&crate::queue::note(&p))
                        .field("QUEUE_PEAK", p.peak)
                        .field("QUEUE_MS", p.above_zero.as_millis()),
                    None => event,
                }
            }
            _ => event,
        };
        if let Some(metrics) = &mut self.metrics
            && event.event_kind().is_some()
        {
            metrics.observe(&event, SystemTime::now(), peak);
        }
        event.emit();
        if self.metrics.is_some() {
            self.write_metrics();
        }
    }

    fn write_metrics(&mut self) {
        let generations: Vec<GenerationInfo> = self
            .core
            .generations()
            .iter()
            .map(|g| GenerationInfo {
                number: g.number,
                state: metrics::state(&g.phase),
                processes: Some(self.members(g.number, g.pid).len()).filter(|n| *n > 0),
            })
            .collect();
        if let Some(metrics) = &mut self.metrics {
            metrics.write(&generations);
        }
    }

    fn kill_check_command(&mut self, number: u64) {
        if let Some(pid) = self.check_mut(number).and_then(|c| c.running_command()) {
            let _ = sys::kill_group(pid, libc::SIGKILL);
        }
    }

    /// Each message in a datagram of its own: systemd drops a datagram of 4 KiB or more whole,
    /// so a long status must never take READY=1 or RELOADING=1 down with it.
    fn notify(&self, notice: Notice) {
        let message = match notice {
            Notice::Ready => READY.to_string(),
            Notice::Reloading => format!("{RELOADING}\n{MONOTONIC_USEC}={}", sys::monotonic_usec()),
            Notice::Stopping => STOPPING.to_string(),
            Notice::Watchdog => WATCHDOG.to_string(),
            Notice::Status => format!("{STATUS}={}", notify::clean_text(&self.status_line(), notify::MAX_STATUS)),
            Notice::StatusText(text) => format!("{STATUS}={}", notify::clean_text(&text, notify::MAX_STATUS)),
            Notice::ExtendTimeout(by) => {
                if !self.notifier.is_enabled() {
                    return;
                }
                format!("{EXTEND_TIMEOUT_USEC}={}", by.as_micros())
            }
        };
        self.notifier.send(&[message]);
    }

    fn spawn_generation(&mut self, number: u64) -> Result<(Pid, Option<PathBuf>)> {
        let release = self.config.chdir.as_deref().map(command::resolve_dir).transpose()?;
        // Every generation gets a private NOTIFY_SOCKET when systemd listens to us: its STATUS=
        // shows in ours and its WATCHDOG=1 can be relayed.
        let prepared = Check::prepare(&self.config.ready, number, self.runtime_dir.path(), self.notifier.is_enabled())?;
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
        if let Some(inbox) = &prepared.inbox {
            extra_env.push((crate::protocol::NOTIFY_SOCKET.to_string(), inbox.path().as_os_str().to_owned()));
        }
        if let Some(interval) = self.watchdog.filter(|_| prepared.inbox.is_some()) {
            extra_env.push((crate::protocol::WATCHDOG_USEC.to_string(), interval.as_micros().to_string().into()));
        }
        // With the cpu controller delegated, the booting generation's whole cgroup gets the
        // lower weight too (set back with its threads' priority at ready).
        let weight = self.resources.boot_priority_for(number).map(|_| resources::BOOT_CPU_WEIGHT);
        let cgroup = match self.membership.cgroups() {
            Some(cgroups) => Some(cgroups.create(number, weight)?),
            None => None,
        };
        let launch = Launch {
            flavor: self.config.flavor,
            sockets,
            generation: number,
            dir: release.clone(),
            pass_notify: false,
            extra_env,
            boot_priority: self.resources.boot_priority_for(number),
            cgroup_procs: cgroup.as_ref().map(GenCgroup::procs_fd),
        };
        let pid = match command::spawn(&self.config.command, &launch) {
            Ok(pid) => pid,
            Err(e) => {
                if let Some(cgroup) = &cgroup {
                    let _ = cgroup.remove();
                }
                return Err(e);
            }
        };
        if launch.boot_priority.is_some() {
            self.resources.booting.push(number);
        }
        if let Some(cgroup) = cgroup {
            self.cgroups.push((number, cgroup));
        }
        // The generation has its own copy of the probe socket; ours would only keep it alive
        // after the generation is gone.
        drop(probe_socket);
        drop(prepared.probe_socket);
        self.checks.push((number, prepared.check));
        if let Some(inbox) = prepared.inbox {
            self.inboxes.push((number, inbox));
        }
        let described = match &release {
            Some(release) => format!("generation {number} (pid {pid}, {})", release.display()),
            None => format!("generation {number} (pid {pid})"),
        };
        log::info(format!(
            "started {described}: {} (ready: {}, settle {:?})",
            self.config.command.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "),
            self.config.ready,
            self.config.ready_settle
        ))
        .kind("spawn")
        .field("GENERATION", number)
        .field("PID", pid)
        .field("RELEASE", release.as_ref().map(|r| r.display().to_string()).unwrap_or_default())
        .emit();
        Ok((pid, release))
    }

    // ----- resources ---------------------------------------------------------------------------

    /// Before a reload's generation starts: room for the serving generation's memory once
    /// more (`--memory-check`), else the refusal with the numbers, which fails the reload the
    /// way a failed spawn does (the serving generation untouched).
    fn memory_budget(&self, number: u64) -> Result<(), String> {
        if !self.config.memory_check || number == 1 {
            return Ok(());
        }
        let Some(serving) = self.core.generations().iter().find(|g| g.phase == Phase::Serving) else { return Ok(()) };
        let Some(room) = resources::room() else {
            log::warn("memory check skipped: neither /proc/meminfo nor a cgroup limit could be read").emit();
            return Ok(());
        };
        let members = self.members(serving.number, serving.pid);
        let cgroup = self.cgroup(serving.number).map(GenCgroup::path);
        // Without a memory controller the need is the processes' PSS, whose reading walks every
        // page table (tens of ms for a large generation, each reload). Their RSS bounds it from
        // above at a fraction of the cost: where even that fits, the PSS is not read.
        if !cgroup.is_some_and(resources::has_memory_controller) {
            let bound = resources::rss_bound(&members);
            let what =
                format!("RSS of generation {}'s {} processes, more than their PSS", serving.number, members.len());
            if resources::check_budget(bound, &what, &room).is_ok() {
                budget_passed(number, &format!("at most {}", resources::mib(bound)), &what, &room);
                return Ok(());
            }
        }
        let usage = resources::usage(&members, cgroup);
        let need = usage.expected_need();
        let cache = if usage.memory_unreclaimable.is_some() { " without page cache" } else { "" };
        let what = match (usage.memory_source, usage.memory_peak) {
            (resources::MemorySource::Cgroup, Some(_)) => format!("generation {}'s memory.peak{cache}", serving.number),
            (resources::MemorySource::Cgroup, None) => format!("generation {}'s memory.current{cache}", serving.number),
            (resources::MemorySource::Pss, _) => {
                format!("generation {}'s PSS over {} processes", serving.number, usage.processes)
            }
        };
        resources::check_budget(need, &what, &room)?;
        budget_passed(number, &format!("≈ {}", resources::mib(need)), &what, &room);
        Ok(())
    }

    /// `reload_done` carries what the new generation uses.
    fn with_resources(&self, event: log::Event) -> log::Event {
        if event.event_kind() != Some("reload_done") {
            return event;
        }
        let Some(g) =
            event.field_value("GENERATION").and_then(|n| n.parse().ok()).and_then(|n| self.core.generation(n))
        else {
            return event;
        };
        let usage = resources::usage(&self.members(g.number, g.pid), self.cgroup(g.number).map(GenCgroup::path));
        let text = format!(" [generation {}: {}]", g.number, usage.describe());
        event
            .append(&text)
            .field("PROCESSES", usage.processes)
            .field("CPU_MS", usage.cpu.as_millis())
            .field("MEMORY_BYTES", usage.memory)
            .field("MEMORY_PEAK_BYTES", usage.memory_peak.map(|p| p.to_string()).unwrap_or_default())
            .field("MEMORY_SOURCE", usage.memory_source.name())
    }

    /// Generations that booted at the lower priority and are ready (or failed) now: every
    /// process and thread of a ready one is set back.
    ///
    /// A generation that is still booting at half its `--ready-timeout` is set back too: on a host
    /// whose CPU the serving generation keeps busy, the low priority could otherwise stretch its
    /// boot past the timeout and fail every reload.
    fn restore_ready_priorities(&mut self) {
        let now = Instant::now();
        let mut still = Vec::new();
        for number in std::mem::take(&mut self.resources.booting) {
            let Some(g) = self.core.generation(number) else { continue };
            match g.phase {
                Phase::Starting { .. } if now < self.boot_priority_until(g) => still.push(number),
                Phase::Starting { .. } => {
                    log::info(format!(
                        "generation {number} is not ready after {:?}: back to normal CPU priority to finish its boot",
                        now - g.started
                    ))
                    .emit();
                    self.resources.restore(number, g.pid, self.cgroup(number));
                }
                Phase::Failed { .. } => {}
                _ => self.resources.restore(number, g.pid, self.cgroup(number)),
            }
        }
        self.resources.booting = still;
    }

    /// Until when a booting generation keeps its lower priority at most.
    fn boot_priority_until(&self, g: &handoff::Generation) -> Instant {
        g.started + self.config.ready_timeout / 2
    }

    // ----- status ------------------------------------------------------------------------------

    fn wall(&self, at: Instant) -> SystemTime {
        let (epoch, wall) = self.epoch;
        if at >= epoch { wall + (at - epoch) } else { wall - (epoch - at) }
    }

    fn status_line(&self) -> String {
        self.core.status_line(&|at| utc(self.wall(at)))
    }

    fn status_json(&mut self) -> String {
        let now = SystemTime::now();
        let queues = self.queues.read(&self.sockets, true);
        let peak = self.queues.last();
        let generations: Vec<String> = self
            .core
            .generations()
            .iter()
            .map(|g| {
                let members = self.members(g.number, g.pid);
                let usage = resources::usage(&members, self.cgroup(g.number).map(GenCgroup::path));
                let processes = members.len();
                // Workers: the group's other processes (the master, until reaped, is one of them).
                let workers = processes.saturating_sub(usize::from(g.master_alive()));
                let started_at = self.wall(g.started);
                format!(
                    "{{\"number\":{},\"pid\":{},\"state\":\"{}\",\"release\":{},\"cgroup\":{},\"started\":\"{}\",\"age_s\":{:.1},\"processes\":{},\"workers\":{},{},\"boot_priority\":{},\"app_status\":{}}}",
                    g.number,
                    g.pid,
                    g.phase.name(),
                    json_opt(g.release.as_ref().map(|r| r.display().to_string())),
                    json_opt(g.cgroup.as_ref().map(|c| c.display().to_string())),
                    utc(started_at),
                    now.duration_since(started_at).unwrap_or_default().as_secs_f64(),
                    processes,
                    workers,
                    usage.json_fields(),
                    self.resources.booting.contains(&g.number),
                    json_opt(g.app_status.clone())
                )
            })
            .collect();
        let sockets: Vec<String> = self
            .sockets
            .iter()
            .enumerate()
            .zip(queues)
            .map(|((i, s), q)| {
                let queue = match q {
                    Some(q) => format!(
                        "{{\"queued\":{},\"backlog\":{},\"active\":{}}}",
                        q.queued,
                        q.backlog,
                        q.active.map(|a| a.to_string()).unwrap_or_else(|| "null".into())
                    ),
                    None => "null".to_string(),
                };
                format!(
                    "{{\"fd\":{},\"name\":{},\"address\":{},\"queue\":{queue}}}",
                    3 + i,
                    json_str(&s.name),
                    json_str(&s.address())
                )
            })
            .collect();
        let last = match self.core.last_reload() {
            Some(r) => format!(
                "{{\"at\":\"{}\",\"ok\":{},\"took_ms\":{},\"message\":{},\"queue_peak\":{},\"queue_ms\":{}}}",
                utc(self.wall(r.at)),
                r.ok,
                r.took.as_millis(),
                json_str(&r.message),
                peak.map(|p| p.peak.to_string()).unwrap_or_else(|| "null".into()),
                peak.map(|p| p.above_zero.as_millis().to_string()).unwrap_or_else(|| "null".into())
            ),
            None => "null".to_string(),
        };
        let membership = match &self.membership {
            Membership::Cgroups(c) => format!(
                "{{\"mode\":\"cgroup\",\"path\":{},\"describe\":{}}}",
                json_str(&c.root().display().to_string()),
                json_str(&self.membership.describe())
            ),
            Membership::ProcessGroups { why } => format!(
                "{{\"mode\":\"process-group\",\"why\":{},\"lost\":{},\"describe\":{}}}",
                json_str(why),
                json_str(crate::cgroup::LOST_WITHOUT_CGROUPS),
                json_str(&self.membership.describe())
            ),
        };
        let state = match self.core.life() {
            Life::Running if self.core.reloading() => "reloading",
            Life::Running => "running",
            Life::Stopping { .. } => "stopping",
            Life::Killing => "killing",
        };
        format!(
            "{{\"pid\":{},\"version\":{},\"reexecs\":{},\"state\":\"{state}\",\"membership\":{},\"flavor\":\"{}\",\"ready\":{},\"settle_ms\":{},\"status\":{},\"sockets\":[{}],\"generations\":[{}],\"last_reload\":{}}}",
            sys::getpid(),
            json_str(&reexec::version()),
            self.reexecs,
            membership,
            self.config.flavor,
            json_str(&self.config.ready.to_string()),
            self.config.ready_settle.as_millis(),
            json_str(&self.status_line()),
            sockets.join(","),
            generations.join(","),
            last
        )
    }

    // ----- helpers -----------------------------------------------------------------------------

    fn check_mut(&mut self, number: u64) -> Option<&mut Check> {
        self.checks.iter_mut().find(|(n, _)| *n == number).map(|(_, c)| c)
    }

    /// Removes the runtime directory (socket files we bound go with the sockets, on drop).
    fn cleanup(&mut self) {
        if let Some(metrics) = &mut self.metrics {
            metrics.write_stopped();
        }
        // Drop the notify sockets (their Drop removes the files) before the directory.
        self.checks.clear();
        self.inboxes.clear();
        let _ = std::fs::remove_dir_all(self.runtime_dir.path());
    }
}

/// The boot priority of new generations, and which of them still boot at it.
struct Resources {
    /// What a reload's generation starts at; None with `--boot-priority off`.
    boot: Option<sys::BootPriority>,
    /// sockherd's own nice value: what a ready generation is set back to.
    own_nice: i32,
    /// Generations running at the boot priority.
    booting: Vec<u64>,
}

impl Resources {
    fn new(enabled: bool) -> Resources {
        let own_nice = sys::own_nice();
        let boot = if enabled { Resources::boot_priority(own_nice) } else { None };
        Resources { boot, own_nice, booting: Vec::new() }
    }

    /// The priority a reload's generation boots at, if this process can set one and take it
    /// back; each "no" is said once, at start.
    fn boot_priority(own_nice: i32) -> Option<sys::BootPriority> {
        // The generation is set back to SCHED_OTHER at ready: only right if that is ours.
        if sys::own_policy().ok() != Some(libc::SCHED_OTHER) {
            log::info("boot priority: off, sockherd itself does not run at the normal policy (SCHED_OTHER)").emit();
            return None;
        }
        if let Err(e) = sys::priority_calls_allowed(own_nice) {
            log::info(format!(
                "boot priority: off, setpriority/sched_setscheduler are refused here ({e}; e.g. \
                 SystemCallFilter=~@resources): a reload's generation boots at sockherd's own priority"
            ))
            .emit();
            return None;
        }
        // A nice value can only be set back with CAP_SYS_NICE or LimitNICE=: without them the
        // generation boots at SCHED_BATCH only, which it may leave on its own.
        let nice = resources::can_restore_nice(own_nice).then(|| resources::boot_nice(own_nice));
        if nice.is_none() {
            log::info(format!(
                "boot priority: SCHED_BATCH only; a nice value could not be set back at ready (needs \
                 CAP_SYS_NICE or LimitNICE=+{own_nice})"
            ))
            .emit();
        }
        Some(sys::BootPriority { nice, batch: true })
    }

    /// Generation 1 has no serving generation to leave the CPU to: only a reload's boots low.
    fn boot_priority_for(&self, number: u64) -> Option<sys::BootPriority> {
        self.boot.filter(|_| number > 1)
    }

    /// Sets generation `number` (master `pid`) back to sockherd's priority: the master first,
    /// so that what it forks from now on is born normal, then every process of its cgroup, or
    /// of its process group and every descendant of its master (a worker that called setsid()
    /// left the group, not the master's tree), with all their threads. A second pass catches a
    /// process forked during the first. Without a cgroup, a worker whose parent exited (it was
    /// reparented to sockherd) is out of reach.
    fn restore(&self, number: u64, pid: Pid, cgroup: Option<&GenCgroup>) {
        let Some(boot) = self.boot else { return };
        if let Some(cgroup) = cgroup.filter(|c| c.path().join("cpu.weight").exists())
            && let Err(e) = resources::set_cpu_weight(cgroup.path(), resources::NORMAL_CPU_WEIGHT)
        {
            log::warn(format!("failed to set generation {number}'s cpu.weight back: {e}")).emit();
        }
        let members = || match cgroup {
            Some(cgroup) => cgroup.pids().unwrap_or_default(),
            None => {
                let mut pids = generation::members(pid).unwrap_or_default();
                pids.extend(generation::descendants(pid));
                pids.sort_unstable();
                pids.dedup();
                pids
            }
        };
        let mut done = resources::restore_priority(&[pid], self.own_nice, boot);
        for _ in 0..2 {
            let pass = resources::restore_priority(&members(), self.own_nice, boot);
            done.threads += pass.threads;
            done.error = done.error.or(pass.error);
        }
        match done.error {
            Some(error) => {
                log::warn(format!("failed to set generation {number} back to normal CPU priority: {error}")).emit()
            }
            None => log::debug(format!("generation {number} back to normal CPU priority")).emit(),
        }
    }
}

/// What of a generation gets SIGKILL ([`kill_plan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KillPlan {
    /// Its cgroup, as a whole.
    cgroup: bool,
    /// Its process group (the master's pid).
    group: bool,
    /// Its master, by pid.
    master: bool,
}

/// How a generation is killed. A pid, and the process group of that id, is safe to signal only
/// while the master is not reaped: until then the kernel cannot give the number out again.
/// Once reaped, a cgroup is killed as a whole and nothing by pid (a reused pid's process group
/// would get the SIGKILL). Without a cgroup the group's id is all there is: the kernel keeps it
/// reserved while a member is left (a zombie too, until sockherd reaps it), so it can only be
/// another group's once the group is empty, when the kill is no longer needed, and before the
/// next look at it tells the generation gone. That window cannot be closed without cgroups; the
/// one case sockherd can tell, the id now being another generation's master (a group leader),
/// is spared.
fn kill_plan(in_cgroup: bool, master_reaped: bool, pid_is_another_master: bool) -> KillPlan {
    match (in_cgroup, master_reaped) {
        (true, false) => KillPlan { cgroup: true, group: true, master: true },
        (true, true) => KillPlan { cgroup: true, group: false, master: false },
        (false, false) => KillPlan { cgroup: false, group: true, master: true },
        (false, true) => KillPlan { cgroup: false, group: !pid_is_another_master, master: false },
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Signals,
    ControlListener,
    Control(ConnId),
    Notify(u64),
    Probe(u64),
    /// A generation's `cgroup.events` changed.
    Cgroup(u64),
}

/// The log line of a memory check that passed: `needs {need} MiB ({what}), N MiB free (bound)`.
fn budget_passed(number: u64, need: &str, what: &str, room: &resources::Room) {
    log::info(format!(
        "memory check passed for generation {number}: needs {need} MiB ({what}), {} MiB free ({})",
        room.free / (1024 * 1024),
        room.bound
    ))
    .emit();
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

// ----- reexec ------------------------------------------------------------------------------------

impl Supervisor {
    /// A reexec request (`conn`, or the signal): performed at the end of a wakeup where the
    /// supervisor is quiet, else waited for.
    fn ask_reexec(&mut self, conn: Option<ConnId>, binary: Option<PathBuf>) {
        let refuse = |this: &mut Self, why: String| {
            log::warn(format!("reexec refused: {why}")).kind("reexec_failed").emit();
            if let Some(conn) = conn {
                this.control.reply(conn, &format!("error {why}"));
            }
        };
        if self.core.life() != Life::Running {
            return refuse(self, "sockherd is stopping".into());
        }
        if self.reexec.is_some() {
            return refuse(self, "another reexec is already waiting for the handoff to end".into());
        }
        if binary.is_none() && self.exe.is_none() {
            return refuse(self, "the path of the running binary is unknown (/proc/self/exe); name one".into());
        }
        self.reexec = Some(ReexecAsk { conn, binary, said_waiting: false });
    }

    /// Performs a waiting reexec once no handoff is in flight; fails it when sockherd stops.
    fn reexec_when_quiet(&mut self) {
        let Some(ask) = self.reexec.as_mut() else { return };
        if self.core.life() != Life::Running {
            let ask = self.reexec.take().expect("checked");
            log::warn("reexec abandoned: sockherd is stopping").kind("reexec_failed").emit();
            if let Some(conn) = ask.conn {
                self.control.reply(conn, "error sockherd is stopping: no reexec");
            }
            return;
        }
        let requester = usize::from(ask.conn.is_some());
        let busy = !self.core.quiet()
            || self.checks.iter().any(|(_, c)| c.running_command().is_some())
            || self.control.waiting() > requester;
        if busy {
            if !ask.said_waiting {
                ask.said_waiting = true;
                log::info("reexec: waiting for the handoff in flight to end").kind("reexec").emit();
            }
            return;
        }
        let ask = self.reexec.take().expect("checked");
        let binary = ask.binary.clone().or_else(|| self.exe.clone()).expect("checked when asked");
        let why = format!("{:#}", self.reexec_now(&binary, ask.conn));
        log::error(format!("reexec failed, still running {}: {why}", reexec::version())).kind("reexec_failed").emit();
        if let Some(conn) = ask.conn {
            self.control.reply(conn, &format!("error {why}"));
        }
    }

    /// Checks `binary`, hands the state over and execs it. Returns only with the error, and
    /// everything as it was.
    fn reexec_now(&mut self, binary: &std::path::Path, conn: Option<ConnId>) -> anyhow::Error {
        match self.try_reexec(binary, conn) {
            Ok(never) => match never {},
            Err(e) => e,
        }
    }

    fn try_reexec(&mut self, binary: &std::path::Path, conn: Option<ConnId>) -> Result<std::convert::Infallible> {
        let new_version = reexec::check_binary(binary, reexec::check_timeout(self.watchdog))?;
        let resumed = self.core.to_resume().ok_or_else(|| anyhow!("a handoff began"))?;
        let state = self.state(&resumed, conn);
        let pipe = reexec::state_pipe(&state)?;
        let old_exe =
            std::fs::File::open("/proc/self/exe").context("failed to open our own binary (/proc/self/exe)")?;
        let argv: Vec<OsString> = std::env::args_os().collect();
        let env = reexec::environment(&[(
            reexec::STATE_ENV,
            format!("{},{}", std::os::fd::AsRawFd::as_raw_fd(&pipe), std::os::fd::AsRawFd::as_raw_fd(&old_exe)),
        )]);
        // From here on a signal waits (blocked) for whichever image handles it. Those already
        // queued are sent again, to wait the same way, child exits too: an image that resumes
        // reaps at once, but this one, when the exec fails, learns of a master that died during
        // the check only by its SIGCHLD.
        let mask = sys::block_all_signals();
        for (signal, from_user) in self.signals.drain() {
            let meant_for_us = from_user || !matches!(signal.0, libc::SIGTTIN | libc::SIGTTOU | libc::SIGWINCH);
            if signal != reexec_signal() && meant_for_us {
                let _ = sys::kill(sys::getpid(), signal.0);
            }
        }
        let mut kept: Vec<BorrowedFd<'_>> = vec![pipe.as_fd(), old_exe.as_fd()];
        let (listener, conns) = self.control.handover(conn);
        kept.push(listener);
        kept.extend(conns.iter().map(|(fd, ..)| *fd));
        kept.extend(self.sockets.iter().map(|s| s.as_fd()));
        kept.extend(self.inboxes.iter().map(|(_, i)| i.socket().as_fd()));
        let result = reexec::keep_across_exec(&kept, true).and_then(|()| {
            log::info(format!("reexec: {} hands over to {new_version} ({})", reexec::version(), binary.display()))
                .kind("reexec")
                .emit();
            let args: Vec<&std::ffi::OsStr> = argv.iter().map(OsString::as_os_str).collect();
            Err(reexec::exec_failed(binary, sys::exec_self(sys::ExecTarget::Path(binary.as_os_str()), &args, &env)))
        });
        let _ = reexec::keep_across_exec(&kept, false);
        // The signals sent again above are taken now, by this image's handlers.
        sys::restore_signal_mask(mask);
        result
    }

    /// What the next image resumes from.
    fn state(&self, resumed: &handoff::Resumed, conn: Option<ConnId>) -> reexec::State {
        use std::os::fd::AsRawFd;
        let g = &resumed.serving;
        let (listener, conns) = self.control.handover(conn);
        reexec::State {
            pid: sys::getpid(),
            from_version: reexec::version(),
            runtime_dir: self.runtime_dir.path().to_path_buf(),
            control_listener: listener.as_raw_fd(),
            conns: conns
                .into_iter()
                .map(|(fd, uid, buf, requester)| reexec::ConnState { fd: fd.as_raw_fd(), uid, buf, requester })
                .collect(),
            sockets: self
                .sockets
                .iter()
                .map(|s| reexec::SocketState {
                    fd: s.as_fd().as_raw_fd(),
                    name: s.name.clone(),
                    origin: match &s.origin {
                        Origin::Activated => "activated",
                        Origin::Stored => "stored",
                        Origin::Bound { .. } => "bound",
                    }
                    .to_string(),
                    created: match &s.origin {
                        Origin::Bound { created } => created.clone(),
                        _ => None,
                    },
                })
                .collect(),
            generation: reexec::GenerationState {
                number: g.number,
                pid: g.pid,
                release: g.release.clone(),
                started_usec: reexec::instant_usec(g.started),
                app_status: g.app_status.clone(),
                cgroup: g.cgroup.clone(),
                inbox_fd: self.inboxes.iter().find(|(n, _)| *n == g.number).map(|(_, i)| i.socket().as_raw_fd()),
            },
            next_number: resumed.next_number,
            next_handoff: resumed.next_handoff,
            last_reload: resumed.last_reload.as_ref().map(|r| reexec::LastReloadState {
                at_usec: reexec::instant_usec(r.at),
                ok: r.ok,
                message: r.message.clone(),
                took_usec: r.took.as_micros() as u64,
            }),
            latest_signal: resumed.latest_signal.clone(),
            metrics: self.metrics.as_ref().map(Metrics::counters).unwrap_or_default(),
            reexecs: self.reexecs,
            argv: std::env::args_os().collect(),
            exe: self.exe.clone(),
            cover_until_usec: resumed.cover_until.map(reexec::instant_usec),
        }
    }

    /// The supervisor a re-executed image continues as, from the `handed` state. Whatever
    /// cannot be taken over sends this process back to the old image (its descriptor was
    /// handed over too) with the reason, before anything was changed; without one, it fails.
    pub fn resume(config: RunConfig, handed: reexec::Handed) -> Result<Supervisor> {
        let reexec::Handed { text, state, old_exe, failed } = handed;
        let state = match state.and_then(|state| check_handed(&state).map(|()| state)) {
            Ok(state) => state,
            Err(why) => {
                let handed = reexec::Handed { text, state: Err(why.clone()), old_exe, failed };
                return Err(reexec::give_back(handed, &why));
            }
        };
        drop(old_exe);
        sys::set_child_subreaper().context("failed to become a child subreaper (PR_SET_CHILD_SUBREAPER)")?;
        let signals = SignalQueue::install().context("failed to install signal handlers")?;
        // The signals that came during the exec, blocked since, are taken now.
        sys::unblock_all_signals();
        let runtime_dir = RuntimeDir::adopt(state.runtime_dir.clone())?;
        let conns =
            state.conns.iter().map(|c| (sys::adopt_inherited_fd(c.fd), c.uid, c.buf.clone(), c.requester)).collect();
        let (control, requester) = ControlServer::adopt(sys::adopt_inherited_fd(state.control_listener), conns)?;
        let mut sockets = Vec::new();
        for s in &state.sockets {
            let origin = match s.origin.as_str() {
                "activated" => Origin::Activated,
                "stored" => Origin::Stored,
                _ => Origin::Bound { created: s.created.clone() },
            };
            sockets.push(
                Socket::new(sys::adopt_inherited_fd(s.fd), s.name.clone(), origin)
                    .with_context(|| format!("failed to inspect handed-over socket fd {}", s.fd))?,
            );
        }
        let membership = Membership::detect();
        let g = &state.generation;
        let mut cgroups = Vec::new();
        if let (Some(path), Some(c)) = (&g.cgroup, membership.cgroups()) {
            match c.open(g.number) {
                Ok(cgroup) => cgroups.push((g.number, cgroup)),
                Err(e) => {
                    log::warn(format!("generation {} has no cgroup here ({}): {e}", g.number, path.display())).emit()
                }
            }
        }
        let serving = handoff::Generation {
            number: g.number,
            pid: g.pid,
            release: g.release.clone(),
            started: reexec::usec_instant(g.started_usec),
            phase: Phase::Serving,
            exit: None,
            stop_sent: None,
            killed: false,
            released: false,
            app_status: g.app_status.clone(),
            cgroup: cgroups.first().map(|(_, c)| c.path().to_path_buf()),
            daemonized: false,
        };
        let resumed = handoff::Resumed {
            serving,
            next_number: state.next_number,
            next_handoff: state.next_handoff,
            last_reload: state.last_reload.as_ref().map(|r| handoff::ReloadOutcome {
                at: reexec::usec_instant(r.at_usec),
                ok: r.ok,
                message: r.message.clone(),
                took: Duration::from_micros(r.took_usec),
            }),
            latest_signal: state.latest_signal.clone(),
            cover_until: state.cover_until_usec.map(reexec::usec_instant),
        };
        let check = Check::resumed(&config.ready, g.number, runtime_dir.path());
        let inbox = match g.inbox_fd {
            Some(fd) => Some(Inbox::adopt(sys::adopt_inherited_fd(fd), runtime_dir.path(), g.number)?),
            None => None,
        };
        let mut supervisor =
            Supervisor::assemble(config, sockets, signals, control, runtime_dir, membership, |config, watchdog| {
                Core::resume(handoff_config(config, watchdog), resumed)
            });
        supervisor.checks.push((g.number, check));
        supervisor.inboxes.extend(inbox.map(|i| (g.number, i)));
        supervisor.cgroups = cgroups;
        supervisor.reexecs = state.reexecs + u64::from(failed.is_none());
        // Not the file this image runs (a --binary elsewhere): the one the service runs.
        if let Some(exe) = &state.exe {
            supervisor.exe = Some(exe.clone());
        }
        if let Some(metrics) = &mut supervisor.metrics {
            metrics.restore(&state.metrics);
        }
        // Close-on-exec again, as at a first start: no check command or other child of ours
        // inherits them (a generation gets its sockets placed at 3.. explicitly).
        let (listener, conns) = supervisor.control.handover(None);
        let adopted = supervisor.sockets.iter().map(|s| s.as_fd());
        let adopted = adopted.chain(supervisor.inboxes.iter().map(|(_, i)| i.socket().as_fd()));
        let adopted: Vec<BorrowedFd<'_>> = adopted.chain([listener]).chain(conns.iter().map(|(fd, ..)| *fd)).collect();
        let _ = reexec::keep_across_exec(&adopted, false);
        let (message, answer) = match &failed {
            None => {
                let message = format!(
                    "re-executed: {} took over from {}; {} still serving",
                    reexec::version(),
                    state.from_version,
                    supervisor.core.serving().map(|g| g.describe()).unwrap_or_default()
                );
                log::info(message.clone()).kind("reexec_done").field("VERSION", reexec::version()).emit();
                (message.clone(), format!("ok {message}"))
            }
            Some(why) => {
                let message = reexec::describe_failure(why);
                log::error(message.clone()).kind("reexec_failed").emit();
                (message.clone(), format!("error {message}"))
            }
        };
        if let Some(conn) = requester {
            supervisor.control.reply(conn, &answer);
        }
        supervisor.notify(Notice::StatusText(format!("{}; {message}", supervisor.status_line())));
        if supervisor.metrics.is_some() {
            supervisor.write_metrics();
        }
        // What happened during the exec (a child's exit, whose SIGCHLD was not kept) is looked
        // at now, not at the next event.
        supervisor.wakeup(&[]);
        Ok(supervisor)
    }
}

/// What must hold before a re-executed image takes anything over: every descriptor the state
/// names is open and of its kind, the runtime directory is there. Nothing is changed.
fn check_handed(state: &reexec::State) -> Result<(), String> {
    let open = |fd: i32, what: &str| {
        if fd > 2 && sys::fd_is_open(fd) { Ok(()) } else { Err(format!("{what} (fd {fd}) is not open")) }
    };
    open(state.control_listener, "the control socket")?;
    for c in &state.conns {
        open(c.fd, "a control connection")?;
    }
    for s in &state.sockets {
        open(s.fd, &format!("socket {}", s.name))?;
        let borrowed_is_socket = sys::fd_is_socket(s.fd);
        if !borrowed_is_socket {
            return Err(format!("socket {} (fd {}) is not a socket", s.name, s.fd));
        }
    }
    if let Some(fd) = state.generation.inbox_fd {
        open(fd, "the generation's notify socket")?;
    }
    if state.sockets.is_empty() {
        return Err("no sockets".into());
    }
    crate::runtime::check_private(&state.runtime_dir).map_err(|e| format!("{e:#}"))?;
    Ok(())
}

fn handoff_config(config: &RunConfig, watchdog: Option<Duration>) -> handoff::Config {
    handoff::Config {
        flavor: config.flavor,
        ready_timeout: config.ready_timeout,
        settle: config.ready_settle,
        drain_timeout: config.drain_timeout,
        stop_signal: config.stop_signal,
        stop_timeout: config.stop_timeout,
        watchdog: watchdog.map(|interval| (interval, config.watchdog)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reaped master's pid may be another process's: in a cgroup, nothing is killed by it;
    /// in a process group, not when it is another generation's master now.
    #[test]
    fn a_reaped_masters_pid_is_not_killed() {
        let all = KillPlan { cgroup: true, group: true, master: true };
        assert_eq!(kill_plan(true, false, false), all);
        assert_eq!(kill_plan(true, true, false), KillPlan { group: false, master: false, ..all });
        assert_eq!(kill_plan(true, true, true), KillPlan { group: false, master: false, ..all });
        assert_eq!(kill_plan(false, false, false), KillPlan { cgroup: false, ..all });
        assert_eq!(kill_plan(false, true, false), KillPlan { cgroup: false, group: true, master: false });
        assert_eq!(kill_plan(false, true, true), KillPlan { cgroup: false, group: false, master: false });
    }

    /// The (nice value, policy) of each thread of `pid`.
    fn priorities(pid: Pid) -> Vec<(i32, u32)> {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten();
        tasks
            .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
            .filter_map(|stat| resources::stat_priority(&stat))
            .collect()
    }

    /// A generation booted at nice 10 and SCHED_BATCH in process-group mode, whose master
    /// started a worker that left the group (setsid) and one that set its own nice value (15):
    /// at ready, the master and the escaped worker are set back, and of the other only the
    /// policy, its own nice value left alone.
    #[test]
    fn a_ready_generation_gets_its_escaped_workers_back_and_keeps_its_own_nice_values() {
        use std::os::unix::process::CommandExt;
        if !resources::can_restore_nice(sys::own_nice()) {
            eprintln!("skipped: lowering a nice value needs CAP_SYS_NICE or LimitNICE=");
            return;
        }
        const OTHER: u32 = libc::SCHED_OTHER as u32;
        const BATCH: u32 = libc::SCHED_BATCH as u32;
        let own = sys::own_nice();
        let boot = resources::boot_nice(own);
        if !std::path::Path::new("/usr/bin/chrt").exists() {
            eprintln!("skipped: no chrt to boot at SCHED_BATCH");
            return;
        }
        let mut master = std::process::Command::new("chrt")
            .args(["-b", "0", "nice", "-n", &(boot - own).to_string(), "sh", "-c"])
            .arg("setsid sleep 31 & nice -n 5 sleep 32 & wait")
            .process_group(0)
            .spawn()
            .expect("sh");
        let pid = master.id() as Pid;
        let child = |args: &str| {
            procfs_children(pid).into_iter().find(|&c| {
                std::fs::read(format!("/proc/{c}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(args))
            })
        };
        let until = Instant::now() + Duration::from_secs(5);
        let (escaped, own_choice) = loop {
            if let (Some(a), Some(b)) = (child("31"), child("32"))
                && priorities(b) == [((boot + 5).min(19), BATCH)]
            {
                break (a, b);
            }
            assert!(Instant::now() < until, "the workers did not start");
            std::thread::sleep(Duration::from_millis(10));
        };
        let resources = Resources {
            boot: Some(sys::BootPriority { nice: Some(boot), batch: true }),
            own_nice: own,
            booting: Vec::new(),
        };
        resources.restore(2, pid, None);
        let after = (priorities(pid), priorities(escaped), priorities(own_choice));
        let _ = sys::kill_group(pid, libc::SIGKILL);
        let _ = sys::kill(escaped, libc::SIGKILL);
        let _ = master.wait();
        assert_eq!(after, (vec![(own, OTHER)], vec![(own, OTHER)], vec![((boot + 5).min(19), OTHER)]));
    }

    /// The children of `pid`, from /proc.
    fn procfs_children(pid: Pid) -> Vec<Pid> {
        let entries = std::fs::read_dir("/proc").into_iter().flatten().flatten();
        entries
            .filter_map(|e| e.file_name().to_str()?.parse::<Pid>().ok())
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .ok()
                    .and_then(|s| s.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse::<Pid>().ok())
                    == Some(pid)
            })
            .collect()
    }

    #[test]
    fn formats_utc() {
        assert_eq!(utc(SystemTime::UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_324_801)), "2026-11-22 05:20:01 UTC");
    }
}
