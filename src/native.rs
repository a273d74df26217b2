//! Native upgrade mode: the server's own binary upgrade (unicorn's and nginx's USR2), made safe
//! under systemd. The server is the service's main process (`sockherd exec` as ExecStart=);
//! `sockherd reload --native` (ExecReload=) drives the upgrade and hands the new master to
//! systemd:
//!
//! 1. USR2 to the old master; it forks and execs a new master, which inherits the sockets.
//! 2. The new master is the process the pid file names once it is rewritten, and only if it is
//!    a child the old master forked after the USR2 and runs the same program. Titles are never
//!    trusted: a worker freshly forked by either master wears its master's title for a while.
//! 3. It is ready once its set of workers (its children, each by pid, start time and title)
//!    stayed the same for the settle period: neither server has sd_notify. A worker that
//!    crashes and is respawned changes the set, so a crash loop never settles; the number of
//!    workers is not compared with the old master's (a deploy may lower it), only with
//!    `--workers`, a minimum.
//! 4. systemd is told `MAINPID=` (by pidfd, `MAINPIDFD=1`, from systemd 257 on, so that no
//!    reused pid can ever be handed over) with `READY=1` and `STATUS=`, then BARRIER=1; then
//!    systemd's MainPID is read back: the old master is stopped only once systemd follows the
//!    new one.
//! 5. QUIT to the old master (its graceful stop; never WINCH, which kills unicorn's workers when
//!    stdin is not a tty). After `--drain-timeout` it is killed with its workers, never with
//!    the new master, which is still its child at that moment.
//!
//! If the new master dies or is not ready in time, it is stopped (QUIT, SIGKILL after a grace),
//! the old master keeps serving (both servers take their pid file back), systemd's MainPID is
//! untouched, and the reload fails with the reason.
//!
//! If the old master exits before the handoff (unicorn's well-known `before_fork` snippet that
//! QUITs the `.oldbin` master does exactly that), the new master is handed to systemd at once.
//! systemd keeps a unit whose main process exits while ExecReload= runs and takes MAINPID= from
//! the reload afterwards (measured on 252, 254 and 257); without it, the unit would stop when
//! the reload ends. The rollback is gone by then: the reload says so and names the fix.
//!
//! systemd honours MAINPID= from the ExecReload= process with `NotifyAccess=exec` (or `all`):
//! that is checked first, so a unit with `main` or `none` fails clearly instead of losing
//! track of the server. Every signal goes through a pidfd: none can reach a process that
//! reused a pid.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::flavor::Flavor;
use crate::log;
use crate::notify::Notifier;
use crate::procfs::{self, Process};
use crate::protocol::{MAINPID, MAINPIDFD, READY, STATUS};
use crate::signal::Signal;
use crate::sys::{self, Pid, Pidfd};

/// How often /proc is read while looking for the new master: the old master may exit soon
/// after it (unicorn's before_fork snippet), and until then it proves the new one is its child.
const FIND_POLL: Duration = Duration::from_millis(10);
/// How often a new master's workers are looked at while they settle, and an old one drains.
const POLL: Duration = Duration::from_millis(20);
/// The default settle period: the new master's workers stay the same this long.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(1);
/// How long a new master that failed gets to stop gracefully before SIGKILL: its workers may
/// already serve connections on the shared sockets.
const FAILED_GRACE: Duration = Duration::from_secs(10);
/// The first systemd that takes a new main process as a pidfd (`MAINPIDFD=1`).
pub const MAINPIDFD_SINCE: u32 = 257;

/// The fix for a server configuration that stops the old master by itself.
const BEFORE_FORK_FIX: &str = "most likely unicorn's before_fork hook that sends QUIT to the `.oldbin` master: \
     remove it (sockherd stops the old master itself once the new one is ready, and keeps it until then for a rollback)";

pub struct NativeReload {
    pub pid: Pid,
    pub flavor: Option<Flavor>,
    /// The server's pid file; required (it is what names the new master).
    pub pidfile: Option<PathBuf>,
    /// Workers the new master must have at least (default: one).
    pub workers: Option<usize>,
    pub ready_timeout: Duration,
    /// How long the new master's workers must stay the same to count as ready.
    pub settle: Duration,
    pub drain_timeout: Duration,
}

// ---------------------------------------------------------------------------------------------
// Readiness: a settled set of workers.

/// The workers of a master, as /proc shows its children: pid → (start time, title). A worker
/// that was replaced (even under the same pid) or that renamed itself makes another set.
pub type Workers = BTreeMap<Pid, (u64, String)>;

pub fn workers_of(master: Pid) -> Workers {
    procfs::children(master).into_iter().map(|p| (p.pid, (p.start, procfs::title(p.pid).unwrap_or_default()))).collect()
}

/// Readiness of a master that says nothing itself: its workers stayed the same (none added,
/// gone, replaced or renamed) for the settle period, and there are at least the minimum.
/// Fed with observations and their time, it does no I/O.
#[derive(Debug)]
pub struct Settle {
    settle: Duration,
    min_workers: usize,
    current: Option<(Workers, Instant)>,
    changes: usize,
}

impl Settle {
    pub fn new(settle: Duration, min_workers: usize) -> Settle {
        Settle { settle, min_workers: min_workers.max(1), current: None, changes: 0 }
    }

    /// Takes the workers seen at `now`; true once the same set, with at least the minimum of
    /// workers, has been seen for the whole settle period.
    pub fn observe(&mut self, now: Instant, workers: Workers) -> bool {
        let same = matches!(&self.current, Some((seen, _)) if *seen == workers);
        if !same {
            if self.current.is_some() {
                self.changes += 1;
            }
            self.current = Some((workers, now));
        }
        let (seen, since) = self.current.as_ref().expect("set above");
        seen.len() >= self.min_workers && now.saturating_duration_since(*since) >= self.settle
    }

    /// What was seen last, for a failure's reason.
    pub fn describe(&self, now: Instant) -> String {
        match &self.current {
            None => "no worker seen".to_string(),
            Some((seen, since)) => format!(
                "{} worker(s) (at least {} wanted), unchanged for {} ms of the {} ms wanted; the set of workers changed {} time(s)",
                seen.len(),
                self.min_workers,
                now.saturating_duration_since(*since).as_millis(),
                self.settle.as_millis(),
                self.changes
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Identity: which process is the new master.

/// What is known of the old master's children: its workers before the USR2, and every child
/// seen since while it lived. It proves a process descends from the old master even once the
/// old master exited and its children were re-parented.
struct Lineage {
    old: Process,
    old_exe: PathBuf,
    before: BTreeSet<(Pid, u64)>,
    since: BTreeSet<(Pid, u64)>,
    /// When the USR2 was sent, on the scale of process start times.
    usr2_ticks: u64,
}

impl Lineage {
    fn new(old: Process, old_exe: PathBuf) -> Lineage {
        let before = procfs::children(old.pid).into_iter().map(|p| (p.pid, p.start)).collect();
        Lineage { old, old_exe, before, since: BTreeSet::new(), usr2_ticks: 0 }
    }

    /// Records the old master's children now (call only while it lives).
    fn observe(&mut self) {
        for child in procfs::children(self.old.pid) {
            let id = (child.pid, child.start);
            if !self.before.contains(&id) {
                self.since.insert(id);
            }
        }
    }

    /// Whether `p` is a child the old master forked after the USR2: seen as its child, or, once
    /// the old master is gone, left in its process group and session and started after the USR2.
    fn is_new_child(&self, p: &Process, old_alive: bool) -> bool {
        let id = (p.pid, p.start);
        if self.before.contains(&id) {
            return false;
        }
        self.since.contains(&id)
            || (old_alive && p.ppid == self.old.pid)
            || (!old_alive && p.pgid == self.old.pgid && p.sid == self.old.sid && p.start >= self.usr2_ticks)
    }

    /// The process the pid file names, if it is the new master; otherwise why not.
    fn check(&self, pid: Pid, old_alive: bool) -> Result<Process, String> {
        let p = procfs::process(pid).ok_or_else(|| format!("the pid file names {pid}, which is not running"))?;
        if !self.is_new_child(&p, old_alive) {
            return Err(format!(
                "the pid file names {pid}, which is not a child the old master {} forked after SIGUSR2",
                self.old.pid
            ));
        }
        match procfs::exe(pid) {
            Some(exe) if exe == self.old_exe => Ok(p),
            exe => Err(format!(
                "the pid file names {pid}, which runs {}, not {} as the old master does",
                exe.map(|e| e.display().to_string()).unwrap_or_else(|| "an unreadable program".into()),
                self.old_exe.display()
            )),
        }
    }
}

fn read_pidfile(path: &Path) -> Option<Pid> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok().filter(|p: &Pid| *p > 0)
}

/// unicorn and nginx both rename their pid file to `PIDFILE.oldbin` on USR2, and back when the
/// new master dies.
fn oldbin_path(pidfile: &Path) -> PathBuf {
    let mut name = pidfile.as_os_str().to_owned();
    name.push(".oldbin");
    PathBuf::from(name)
}

/// Waits up to `timeout`, or until one of the processes (that has not already) exits.
fn wait_for_exit(processes: &[&Pidfd], timeout: Duration) {
    let watched: Vec<_> = processes.iter().filter(|p| !p.exited()).map(|p| p.as_fd()).collect();
    if watched.is_empty() {
        std::thread::sleep(timeout);
    } else {
        let _ = sys::poll_readable(&watched, Some(timeout));
    }
}

/// pidfds for the living children of `parent` but `except`, each checked to still be that
/// child after it was opened (so a pid reused in between is never held).
fn children_pidfds(parent: Pid, except: Option<Pid>) -> Vec<Pidfd> {
    procfs::children(parent)
        .into_iter()
        .filter(|c| Some(c.pid) != except)
        .filter_map(|c| {
            let fd = Pidfd::open(c.pid).ok()?;
            procfs::process(c.pid).filter(|now| now.ppid == parent && now.start == c.start).map(|_| fd)
        })
        .collect()
}

/// SIGKILL to a master and its children (but `except`).
fn kill_master(master: &Pidfd, except: Option<Pid>) {
    let children = children_pidfds(master.pid(), except);
    let _ = master.signal(libc::SIGKILL);
    for child in children {
        let _ = child.signal(libc::SIGKILL);
    }
}

/// Whether `pid` runs sockherd itself (a `sockherd run` supervisor, or a `sockherd exec` that
/// has not become its server yet). Such a process is never driven natively: its USR2 is not
/// an upgrade, and its control socket is the way to reload it.
pub fn runs_sockherd(pid: Pid) -> bool {
    let me = sys::getpid();
    if let (Some(theirs), Some(ours)) = (procfs::exe_file(pid), procfs::exe_file(me))
        && theirs == ours
    {
        return true;
    }
    if let (Some(theirs), Some(ours)) = (procfs::exe(pid), procfs::exe(me))
        && theirs == ours
    {
        return true;
    }
    procfs::title(pid).and_then(|t| t.split(' ').next().map(|argv0| argv0.rsplit('/').next() == Some("sockherd")))
        == Some(true)
}

// ---------------------------------------------------------------------------------------------
// The systemd side.

/// The unit we run in and how to name a new main process to its systemd.
struct Systemd {
    notifier: Notifier,
    unit: Option<String>,
    /// MAINPIDFD=1 with a pidfd (systemd ≥ 257) rather than MAINPID=.
    by_pidfd: bool,
}

/// How a handoff went.
enum Handoff {
    /// No systemd to tell.
    NotUnderSystemd,
    /// systemd's MainPID is the new master now.
    Confirmed(&'static str),
    /// Sent, but systemd could not be asked whether it took it.
    Unconfirmed(String),
}

/// The service unit we run in, from our cgroup (`.../app.service`, or a sub-cgroup of it).
fn own_unit() -> Option<String> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    cgroup.lines().find_map(|line| line.split('/').rev().find(|part| part.ends_with(".service")).map(str::to_string))
}

/// `systemctl show --property=NAME --value [UNIT]` (the manager's own property without a unit).
fn systemctl_show(property: &str, unit: Option<&str>) -> Result<String> {
    let mut command = std::process::Command::new("systemctl");
    command.args(["show", &format!("--property={property}"), "--value"]);
    command.args(unit);
    let out = command
        .env_remove(crate::protocol::NOTIFY_SOCKET)
        .output()
        .with_context(|| format!("failed to run systemctl show --property={property}"))?;
    if !out.status.success() {
        bail!(
            "systemctl show --property={property} {} failed: {}",
            unit.unwrap_or(""),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A systemd version ("257.13-1~deb13u1", "252") as its number.
pub fn parse_version(text: &str) -> Option<u32> {
    let digits: String = text.trim().chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

impl Systemd {
    /// Checks that systemd will take the new master from us: `NotifyAccess=exec` or `all`, and
    /// a notify socket. Without systemd (no INVOCATION_ID, no NOTIFY_SOCKET) there is nothing
    /// to hand over and the upgrade is the server's own.
    fn check() -> Result<Systemd> {
        let notifier = Notifier::from_env();
        if std::env::var_os("INVOCATION_ID").is_none() && !notifier.is_enabled() {
            log::info("not running under systemd: upgrading without a MAINPID handoff").emit();
            return Ok(Systemd { notifier, unit: None, by_pidfd: false });
        }
        let Some(unit) = own_unit() else {
            if notifier.is_enabled() {
                log::warn(
                    "cannot tell which unit this is (no .service in /proc/self/cgroup); not checking NotifyAccess=",
                )
                .emit();
                return Ok(Systemd { notifier, unit: None, by_pidfd: false });
            }
            bail!(
                "NOTIFY_SOCKET is not set, so systemd would not learn the new master's pid: set NotifyAccess=exec in the unit"
            );
        };
        let access = systemctl_show("NotifyAccess", Some(&unit)).map_err(|e| {
            anyhow!(
                "failed to check NotifyAccess= of {unit} ({e}); run the reload as root \
                 (ExecReload=+/usr/bin/sockherd reload) so it can ask systemd"
            )
        })?;
        if !matches!(access.as_str(), "exec" | "all") || !notifier.is_enabled() {
            bail!(
                "{unit} has NotifyAccess={access}: systemd would ignore MAINPID= from the reload and lose the new master; \
                 set NotifyAccess=exec"
            );
        }
        let version = systemctl_show("Version", None).ok().and_then(|v| parse_version(&v));
        let by_pidfd = version.is_some_and(|v| v >= MAINPIDFD_SINCE);
        log::debug(format!(
            "systemd {}: the new master goes over by {}",
            version.map(|v| v.to_string()).unwrap_or_else(|| "of unknown version".into()),
            if by_pidfd { "pidfd (MAINPIDFD=1)" } else { "pid (MAINPID=)" }
        ))
        .emit();
        Ok(Systemd { notifier, unit: Some(unit), by_pidfd })
    }

    /// Makes `new` the unit's main process: MAINPIDFD=1 with its pidfd (or MAINPID=), READY=1
    /// and STATUS= in one message, BARRIER=1, then reads MainPID back. An error means systemd
    /// still follows another process.
    fn hand_over(&self, new: &Pidfd, status: &str) -> Result<Handoff> {
        if !self.notifier.is_enabled() {
            return Ok(Handoff::NotUnderSystemd);
        }
        let tail = [READY.to_string(), format!("{STATUS}={status}")];
        let mut how = "MAINPID=";
        if self.by_pidfd {
            let lines: Vec<String> = std::iter::once(MAINPIDFD.to_string()).chain(tail.iter().cloned()).collect();
            match self.notifier.send_with_fd(&lines, new.as_fd()) {
                Ok(()) => how = "pidfd (MAINPIDFD=1)",
                Err(e) => log::warn(format!("failed to send MAINPIDFD=1 ({e}); sending MAINPID={}", new.pid())).emit(),
            }
        }
        if how == "MAINPID=" {
            let lines: Vec<String> =
                std::iter::once(format!("{MAINPID}={}", new.pid())).chain(tail.iter().cloned()).collect();
            self.notifier.send(&lines);
        }
        if let Err(e) = self.notifier.barrier(Duration::from_secs(5)) {
            log::warn(format!("systemd did not confirm the new main process (BARRIER=1): {e}")).emit();
        }
        let Some(unit) = &self.unit else {
            return Ok(Handoff::Unconfirmed(format!("sent by {how}; the unit is unknown, so not read back")));
        };
        match systemctl_show("MainPID", Some(unit)) {
            Ok(main) if main == new.pid().to_string() => Ok(Handoff::Confirmed(how)),
            Ok(main) => bail!(
                "systemd did not take the new master {} as the main process of {unit} (sent by {how}; its MainPID is {main})",
                new.pid()
            ),
            Err(e) => Ok(Handoff::Unconfirmed(format!("sent by {how}; reading MainPID back failed: {e}"))),
        }
    }
}

/// A few words on how a handoff went, for the log (a warning when it is unconfirmed).
fn describe_handoff(handoff: Handoff, new_pid: Pid) -> String {
    match handoff {
        Handoff::NotUnderSystemd => String::new(),
        Handoff::Confirmed(how) => format!("; systemd follows it (handed over by {how})"),
        Handoff::Unconfirmed(why) => {
            log::warn(format!("handed the new master {new_pid} to systemd, unconfirmed: {why}")).emit();
            format!("; handed to systemd ({why})")
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The upgrade.

impl NativeReload {
    /// Drives one upgrade. Returns a summary on success; an error (saying who serves) otherwise.
    pub fn run(&self) -> Result<String> {
        let pid = self.pid;
        let old_proc = procfs::process(pid).with_context(|| format!("the main process {pid} does not exist"))?;
        if runs_sockherd(pid) {
            bail!(
                "pid {pid} runs sockherd itself (a `sockherd run` supervisor?): it is never driven natively; \
                 reload it through its control socket (`sockherd reload --pid {pid}` without --native or --flavor)"
            );
        }
        let flavor = match self.flavor {
            Some(f) => f,
            None => detect_flavor(pid)?,
        };
        check_flavor(flavor)?;
        let Some(pidfile) = self.pidfile.as_deref() else {
            bail!(
                "native upgrades need --pidfile PATH, the server's pid file (unicorn's `pid`, nginx's `pid` directive): \
                 the new master is the process it names, as nothing else tells it from a freshly forked worker"
            );
        };
        // The pid file must name the master now, or the new master's pid will never show up in
        // it (a wrong path): refused before anything is started.
        let named = read_pidfile(pidfile);
        if named != Some(pid) {
            bail!(
                "the pid file {} names {}, not the main process {pid}: give --pidfile the path of the server's own \
                 pid file (unicorn's `pid`, nginx's `pid` directive)",
                pidfile.display(),
                named.map(|p| p.to_string()).unwrap_or_else(|| "no process".into())
            );
        }
        let old = Pidfd::open(pid).with_context(|| format!("the main process {pid} does not exist"))?;
        let systemd = Systemd::check()?;
        let old_exe = procfs::exe(pid).with_context(|| format!("cannot read /proc/{pid}/exe"))?;
        let mut lineage = Lineage::new(old_proc, old_exe);

        let started = Instant::now();
        let deadline = started + self.ready_timeout;
        log::info(format!("native upgrade of {flavor} master {pid}: sending SIGUSR2"))
            .kind("reload")
            .field("PID", pid)
            .emit();
        // Read before the signal: every process forked in answer to it starts after this.
        lineage.usr2_ticks = procfs::uptime_ticks().unwrap_or(0);
        if !old.signal(Signal::USR2.0).with_context(|| format!("failed to send SIGUSR2 to {pid}"))? {
            bail!("the main process {pid} exited");
        }

        let new = self.find_new_master(&old, &mut lineage, pidfile, deadline)?;
        let new_pid = new.pid();
        log::info(format!("new {flavor} master {new_pid} started; waiting until its workers settle"))
            .kind("spawn")
            .field("PID", new_pid)
            .emit();

        // Ready once its workers settled. If the old master exits meanwhile, the new one is all
        // that serves: systemd gets it at once.
        let status = format!("serving {flavor} master {new_pid} (native upgrade from {pid})");
        let mut settle = Settle::new(self.settle, self.workers.unwrap_or(1));
        let mut old_exited_early = false;
        loop {
            if new.exited() {
                if old_exited_early {
                    bail!(
                        "the new master {new_pid} exited before it was ready, and the old master {pid} had exited before \
                         ({BEFORE_FORK_FIX}): nothing serves"
                    );
                }
                bail!("the new master {new_pid} exited before it was ready; old master {pid} still serving");
            }
            if !old_exited_early && old.exited() {
                old_exited_early = true;
                log::warn(format!(
                    "the old master {pid} exited before the new master {new_pid} was ready: something else stopped it, \
                     {BEFORE_FORK_FIX}; handing {new_pid} to systemd now, without a rollback"
                ))
                .kind("drain")
                .field("PID", pid)
                .emit();
                let handed = describe_handoff(systemd.hand_over(&new, &status)?, new_pid);
                log::info(format!("handed the new master {new_pid} over{handed}")).field("PID", new_pid).emit();
            }
            let now = Instant::now();
            if settle.observe(now, workers_of(new_pid)) {
                break;
            }
            if now >= deadline {
                let seen = settle.describe(now);
                if old_exited_early {
                    bail!(
                        "the new master {new_pid} was not ready within {:?} ({seen}); it is left serving, as the old \
                         master {pid} had already exited ({BEFORE_FORK_FIX})",
                        self.ready_timeout
                    );
                }
                self.stop_failed(&new, flavor);
                bail!(
                    "the new master {new_pid} was not ready within {:?} ({seen}): stopped it; old master {pid} still serving",
                    self.ready_timeout
                );
            }
            wait_for_exit(&[&old, &new], POLL);
        }
        let ready_after = started.elapsed();

        if old_exited_early {
            log::info(format!("new master {new_pid} ready after {} ms", ready_after.as_millis()))
                .kind("ready")
                .field("PID", new_pid)
                .field("HANDOFF_MS", ready_after.as_millis())
                .emit();
            return Ok(format!(
                "new {flavor} master {new_pid} serves (ready after {} ms); the old master {pid} had exited before the \
                 handoff ({BEFORE_FORK_FIX})",
                ready_after.as_millis()
            ));
        }

        // Hand it to systemd while the old master still lives; if systemd does not take it,
        // the old master stays the main process and keeps serving.
        let handed = match systemd.hand_over(&new, &status) {
            Ok(handoff) => describe_handoff(handoff, new_pid),
            Err(e) => {
                self.stop_failed(&new, flavor);
                return Err(e.context(format!("stopped the new master {new_pid}; old master {pid} still serving")));
            }
        };
        if new.exited() {
            // It died in the moment of the handoff: the old master, still serving, goes back.
            let back = systemd.hand_over(&old, &format!("serving {flavor} master {pid}"));
            bail!(
                "the new master {new_pid} exited right after it was handed over; old master {pid} still serving{}",
                match back {
                    Ok(handoff) => describe_handoff(handoff, pid),
                    Err(e) => format!(" (but systemd was not given it back: {e:#})"),
                }
            );
        }
        let graceful = flavor.graceful_signal();
        log::info(format!(
            "new master {new_pid} ready after {} ms{handed}; stopping old master {pid} with {graceful}",
            ready_after.as_millis()
        ))
        .kind("ready")
        .field("PID", new_pid)
        .field("HANDOFF_MS", ready_after.as_millis())
        .emit();

        let drained = self.drain(&old, new_pid, graceful)?;
        Ok(format!(
            "new {flavor} master {new_pid} serves (ready after {} ms; old master {pid} drained in {} ms)",
            ready_after.as_millis(),
            drained.as_millis()
        ))
    }

    /// Polls for the pid file to name the new master (see [`Lineage::check`]) and returns it
    /// held by a pidfd.
    fn find_new_master(&self, old: &Pidfd, lineage: &mut Lineage, pidfile: &Path, deadline: Instant) -> Result<Pidfd> {
        let pid = old.pid();
        let oldbin = oldbin_path(pidfile);
        let mut oldbin_seen = false;
        let mut why_not: Option<String> = None;
        loop {
            let old_alive = !old.exited();
            if old_alive {
                lineage.observe();
            }
            let named = read_pidfile(pidfile);
            if let Some(candidate) = named
                && candidate != pid
            {
                match lineage.check(candidate, old_alive) {
                    Ok(p) => {
                        // Held by a pidfd from here on; checked again after opening it, so the
                        // pidfd is the process that was checked, not one that reused its pid.
                        if let Ok(fd) = Pidfd::open(candidate)
                            && procfs::process(candidate).is_some_and(|now| now.start == p.start)
                        {
                            return Ok(fd);
                        }
                    }
                    Err(reason) => why_not = Some(reason),
                }
            }
            if oldbin.exists() {
                oldbin_seen = true;
            } else if oldbin_seen && old_alive && named == Some(pid) {
                bail!(
                    "the new master exited before it was ready (the old master took its pid file back); old master {pid} still serving"
                );
            }
            if !old_alive && lineage.since.is_empty() {
                bail!("the old master {pid} exited before it started a new master: nothing serves");
            }
            if Instant::now() >= deadline {
                let why = why_not.map(|w| format!(" ({w})")).unwrap_or_default();
                bail!(
                    "no new master named by {} within {:?} after SIGUSR2 to {pid}{why}; {pid} {}",
                    pidfile.display(),
                    self.ready_timeout,
                    if old_alive { "still serving" } else { "exited" }
                );
            }
            wait_for_exit(&[old], FIND_POLL);
        }
    }

    /// The graceful stop of the old master; after the drain timeout, SIGKILL to it and its
    /// workers, never to the new master (still its child until it exits).
    fn drain(&self, old: &Pidfd, new_pid: Pid, graceful: Signal) -> Result<Duration> {
        let pid = old.pid();
        let started = Instant::now();
        old.signal(graceful.0).with_context(|| format!("failed to send {graceful} to {pid}"))?;
        while !old.exited() {
            if started.elapsed() >= self.drain_timeout {
                log::warn(format!(
                    "old master {pid} still running {:?} after {graceful}: killing it and its workers",
                    self.drain_timeout
                ))
                .kind("kill")
                .field("PID", pid)
                .emit();
                kill_master(old, Some(new_pid));
                wait_for_exit(&[old], Duration::from_secs(5));
                break;
            }
            wait_for_exit(&[old], POLL * 5);
        }
        let drained = started.elapsed();
        log::info(format!("old master {pid} gone after {} ms", drained.as_millis()))
            .kind("drain")
            .field("PID", pid)
            .field("DRAIN_MS", drained.as_millis())
            .emit();
        Ok(drained)
    }

    /// Stops a new master that will not serve: its graceful signal first (its workers may
    /// already have accepted connections), SIGKILL to it and its workers after a grace.
    fn stop_failed(&self, new: &Pidfd, flavor: Flavor) {
        let graceful = flavor.graceful_signal();
        let _ = new.signal(graceful.0);
        let deadline = Instant::now() + FAILED_GRACE;
        while !new.exited() && Instant::now() < deadline {
            wait_for_exit(&[new], POLL * 5);
        }
        if !new.exited() {
            log::warn(format!("new master {} still running {FAILED_GRACE:?} after {graceful}: killing it", new.pid()))
                .kind("kill")
                .field("PID", new.pid())
                .emit();
            kill_master(new, None);
        }
    }
}

/// Which server runs as `pid`, from its title: the flavors whose own upgrade we can drive, and a
/// clear refusal for the others.
pub fn detect_flavor(pid: Pid) -> Result<Flavor> {
    let title = procfs::title(pid).with_context(|| format!("no process {pid}"))?;
    // "gunicorn" contains "unicorn": test it first.
    if title.contains("gunicorn") {
        return Ok(Flavor::Gunicorn);
    }
    if title.contains("unicorn") {
        return Ok(Flavor::Unicorn);
    }
    if title.contains("nginx") {
        return Ok(Flavor::Nginx);
    }
    if title.contains("puma") {
        return Ok(Flavor::Puma);
    }
    bail!("cannot tell which server pid {pid} is from its title '{title}': pass --flavor unicorn or --flavor nginx")
}

/// Refuses flavors whose own upgrade cannot work under systemd.
pub fn check_flavor(flavor: Flavor) -> Result<()> {
    match flavor {
        Flavor::Unicorn | Flavor::Nginx => Ok(()),
        Flavor::Gunicorn => bail!(
            "gunicorn's own USR2 upgrade crashes (EBADF) when its sockets came from systemd (LISTEN_FDS); \
             use `sockherd run --flavor gunicorn` as ExecStart= and `sockherd reload` for zero-downtime reloads"
        ),
        Flavor::Puma => bail!(
            "puma's USR2 re-execs in place (same pid), so systemd never loses it: use `sockherd run --flavor puma`, \
             or ExecReload=kill -USR2 $MAINPID with puma's own sd_notify"
        ),
        other => bail!("native upgrades are supported for unicorn and nginx, not {other}; use `sockherd run`"),
    }
}

/// `sockherd exec --flavor nginx`: nginx adopts sockets from `NGINX=` only as a "new binary",
/// and then ignores USR2 for as long as its parent is the process that started it. Exec'd in
/// place under systemd, that parent is PID 1 forever, so its binary upgrade could never run.
/// So nginx is started as our child, and once its workers settled we hand it to systemd
/// (`MAINPID=` + `READY=1`, for a Type=notify unit) and exit: nginx's parent changes, exactly as
/// after its own upgrade, and USR2 works from then on.
pub fn start_nginx(argv: &[std::ffi::OsString], launch: &crate::command::Launch<'_>, timeout: Duration) -> Result<u8> {
    let pid = crate::command::spawn(argv, launch)?;
    let deadline = Instant::now() + timeout;
    let mut settle = Settle::new(DEFAULT_SETTLE, 1);
    loop {
        if let Some((reaped, status)) = sys::reap_any().context("waitpid failed")?
            && reaped == pid
        {
            bail!("nginx (pid {pid}) exited with {} before it was ready", crate::generation::describe_status(status));
        }
        let now = Instant::now();
        if settle.observe(now, workers_of(pid)) {
            break;
        }
        if now >= deadline {
            let _ = sys::kill(pid, libc::SIGKILL);
            bail!("nginx (pid {pid}) was not ready within {timeout:?}: {}", settle.describe(now));
        }
        std::thread::sleep(POLL);
    }
    let notifier = Notifier::from_env();
    notifier.send(&[format!("{MAINPID}={pid}"), READY.to_string(), format!("{STATUS}=serving nginx master {pid}")]);
    if let Err(e) = notifier.barrier(Duration::from_secs(5)) {
        log::warn(format!("systemd did not confirm MAINPID={pid} (BARRIER=1): {e}")).emit();
    }
    log::info(format!(
        "nginx master {pid} is serving; handed over to {}",
        if notifier.is_enabled() { "systemd" } else { "its own care (no NOTIFY_SOCKET)" }
    ))
    .kind("ready")
    .field("PID", pid)
    .emit();
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(workers: &[(Pid, u64, &str)]) -> Workers {
        workers.iter().map(|(pid, start, title)| (*pid, (*start, title.to_string()))).collect()
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_set_of_workers_unchanged_for_the_settle_period_is_ready() {
        let t0 = Instant::now();
        let mut s = Settle::new(1000 * MS, 1);
        let two = set(&[(10, 5, "worker[0]"), (11, 5, "worker[1]")]);
        assert!(!s.observe(t0, two.clone()));
        assert!(!s.observe(t0 + 999 * MS, two.clone()));
        assert!(s.observe(t0 + 1000 * MS, two));
    }

    #[test]
    fn fewer_workers_than_before_is_no_obstacle() {
        // Nothing is compared with the old master's count: one settled worker is ready.
        let t0 = Instant::now();
        let mut s = Settle::new(500 * MS, 1);
        let one = set(&[(10, 5, "worker[0]")]);
        assert!(!s.observe(t0, one.clone()));
        assert!(s.observe(t0 + 600 * MS, one));
    }

    #[test]
    fn a_crash_looping_worker_never_settles() {
        // Every 300 ms one worker is replaced: at any instant there are two, never the same two
        // for a whole second.
        let t0 = Instant::now();
        let mut s = Settle::new(1000 * MS, 2);
        for step in 0..100u64 {
            let now = t0 + (step * 20) as u32 * MS;
            let generation = step / 15; // a new pid every 300 ms
            let workers = set(&[(10, 5, "worker[0]"), (100 + generation as Pid, 5 + generation, "worker[1]")]);
            assert!(!s.observe(now, workers), "settled at step {step}");
        }
        assert!(s.describe(t0 + 2000 * MS).contains("changed 6 time(s)"), "{}", s.describe(t0));
    }

    #[test]
    fn a_reused_pid_or_a_new_title_is_another_worker() {
        let t0 = Instant::now();
        let mut s = Settle::new(1000 * MS, 1);
        assert!(!s.observe(t0, set(&[(10, 5, "unicorn master")])));
        // The same pid, renamed after fork: the clock starts again.
        assert!(!s.observe(t0 + 900 * MS, set(&[(10, 5, "worker[0]")])));
        assert!(!s.observe(t0 + 1800 * MS, set(&[(10, 7, "worker[0]")])));
        assert!(s.observe(t0 + 2800 * MS, set(&[(10, 7, "worker[0]")])));
    }

    #[test]
    fn no_worker_is_never_ready_and_the_minimum_holds() {
        let t0 = Instant::now();
        let mut s = Settle::new(100 * MS, 0);
        assert!(!s.observe(t0, Workers::new()));
        assert!(!s.observe(t0 + 10_000 * MS, Workers::new()));
        let mut s = Settle::new(100 * MS, 3);
        let two = set(&[(10, 5, "w"), (11, 5, "w")]);
        assert!(!s.observe(t0, two.clone()));
        assert!(!s.observe(t0 + 10_000 * MS, two));
    }

    /// What systemd receives from a handoff: one message with the new master's pidfd attached
    /// (MAINPIDFD=1) or its pid (MAINPID=), READY=1 and STATUS=, then BARRIER=1 with its fd.
    fn handoff_as_systemd_sees_it(by_pidfd: bool) -> (Pid, String, Vec<String>) {
        let (ours, theirs) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id() as Pid;
        let new = Pidfd::open(pid).unwrap();
        let systemd = Systemd { notifier: Notifier::connected(ours), unit: None, by_pidfd };
        let receiver = std::thread::spawn(move || {
            use std::os::fd::AsFd;
            let mut received = Vec::new();
            for _ in 0..2 {
                let mut buf = [0u8; 4096];
                let (n, fds) = sys::recv_with_fds(theirs.as_fd(), &mut buf).unwrap();
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                // What the attached descriptor is: a pidfd names its process in fdinfo.
                let attached: Vec<String> = fds
                    .iter()
                    .map(|fd| {
                        use std::os::fd::AsRawFd;
                        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
                            .unwrap_or_default();
                        info.lines().find(|l| l.starts_with("Pid:")).unwrap_or("not a pidfd").to_string()
                    })
                    .collect();
                received.push(format!("{text} | fds: {attached:?}"));
                drop(fds); // answers BARRIER=1
            }
            received
        });
        let handoff = systemd.hand_over(&new, "serving").unwrap();
        let received = receiver.join().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        let how = match handoff {
            Handoff::Unconfirmed(why) => why,
            _ => "confirmed?".to_string(),
        };
        (pid, how, received)
    }

    #[test]
    fn from_systemd_257_the_new_master_goes_over_as_a_pidfd() {
        let (pid, how, received) = handoff_as_systemd_sees_it(true);
        assert!(how.contains("MAINPIDFD=1"), "{how}");
        assert_eq!(received[0], format!("MAINPIDFD=1\nREADY=1\nSTATUS=serving | fds: [\"Pid:\\t{pid}\"]"));
        assert!(received[1].starts_with("BARRIER=1 | fds: [\"not a pidfd\"]"), "{}", received[1]);
    }

    #[test]
    fn before_systemd_257_the_new_master_goes_over_by_pid() {
        let (pid, how, received) = handoff_as_systemd_sees_it(false);
        assert!(how.contains("MAINPID="), "{how}");
        assert_eq!(received[0], format!("MAINPID={pid}\nREADY=1\nSTATUS=serving | fds: []"));
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("257.13-1~deb13u1"), Some(257));
        assert_eq!(parse_version("252\n"), Some(252));
        assert_eq!(parse_version("v257"), None);
    }

    #[test]
    fn the_oldbin_name_of_a_pid_file() {
        assert_eq!(oldbin_path(Path::new("/run/app/unicorn.pid")), PathBuf::from("/run/app/unicorn.pid.oldbin"));
    }

    #[test]
    fn a_process_running_our_own_program_counts_as_sockherd() {
        // The check compares programs (this test binary stands for sockherd here).
        assert!(runs_sockherd(sys::getpid()));
        let mut other = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let verdict = runs_sockherd(other.id() as Pid);
        let _ = other.kill();
        let _ = other.wait();
        assert!(!verdict);
    }
}
