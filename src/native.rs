//! Native upgrade mode: the server's own binary upgrade (unicorn's and nginx's USR2), made safe
//! under systemd. The server is the service's main process (`sockherd exec` as ExecStart=);
//! `sockherd reload` (ExecReload=) drives the upgrade and hands the new master to systemd:
//!
//! 1. USR2 to the old master; it forks and execs a new master, which inherits the sockets;
//! 2. find the new master: the pid file, when given, names a new live pid; or a child of the
//!    old master whose title says it is a master (unicorn: "master", nginx: "master process");
//! 3. wait until it has as many workers as the old master had (neither server has sd_notify);
//! 4. tell systemd `MAINPID=<new>` + `READY=1` + `STATUS=`, and wait for BARRIER=1, so systemd
//!    follows the new master before the old one exits;
//! 5. QUIT the old master (its graceful stop; never WINCH, which kills unicorn's workers when
//!    stdin is not a tty) and wait until it is gone.
//!
//! If the new master dies or is not ready in time, it is killed, the old master keeps serving
//! (unicorn renames its pid file back itself), systemd's MainPID is untouched, and the reload
//! fails with the reason. systemd honours MAINPID= from the ExecReload= process only with
//! `NotifyAccess=all`; that is checked first, so a unit without it fails clearly instead of
//! losing track of the server.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::flavor::Flavor;
use crate::log;
use crate::notify::Notifier;
use crate::protocol::{MAINPID, READY, STATUS};
use crate::signal::Signal;
use crate::sys::{self, Pid};

const POLL: Duration = Duration::from_millis(50);

pub struct NativeReload {
    pub pid: Pid,
    pub flavor: Option<Flavor>,
    pub pidfile: Option<PathBuf>,
    /// Workers the new master must have; default: as many as the old one has.
    pub workers: Option<usize>,
    pub ready_timeout: Duration,
    pub drain_timeout: Duration,
}

/// A process as /proc shows it.
struct Proc {
    pid: Pid,
    ppid: Pid,
    title: String,
}

fn processes() -> Vec<Proc> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<Pid>().ok()))
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let after = stat.rsplit_once(')')?.1;
            let mut fields = after.split_whitespace();
            let state = fields.next()?;
            if state == "Z" {
                return None;
            }
            let ppid = fields.next()?.parse().ok()?;
            Some(Proc { pid, ppid, title: title(pid).unwrap_or_default() })
        })
        .collect()
}

/// The process title (argv joined), which unicorn and nginx rewrite to say "master"/"worker".
fn title(pid: Pid) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&raw).split('\0').filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" "))
}

fn alive(pid: Pid) -> bool {
    processes().iter().any(|p| p.pid == pid)
}

/// A child of the old master that is the new master: not a worker, and not a just-forked worker
/// still wearing its parent's title (unicorn's old master calls itself "master (old)").
fn is_new_master_title(flavor: Flavor, title: &str) -> bool {
    !is_worker_title(flavor, title) && !title.contains("(old)") && !title.contains("old master")
}

fn is_worker_title(flavor: Flavor, title: &str) -> bool {
    match flavor {
        Flavor::Nginx => title.contains("worker process"),
        _ => title.contains("worker"),
    }
}

fn workers_of(flavor: Flavor, master: Pid) -> usize {
    processes().iter().filter(|p| p.ppid == master && is_worker_title(flavor, &p.title)).count()
}

/// Which server runs as `pid`, from its title: the flavors whose own upgrade we can drive, and a
/// clear refusal for the others.
pub fn detect_flavor(pid: Pid) -> Result<Flavor> {
    let title = title(pid).with_context(|| format!("no process {pid}"))?;
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

/// The service unit we run in, from our cgroup (`.../app.service`).
fn own_unit() -> Option<String> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    cgroup.lines().filter_map(|l| l.rsplit('/').next()).find(|name| name.ends_with(".service")).map(str::to_string)
}

/// systemd drops MAINPID= from any process but the main one unless NotifyAccess=all (and does
/// not even give the reload process a NOTIFY_SOCKET under NotifyAccess=main).
fn check_notify_access(notifier: &Notifier) -> Result<()> {
    // systemd sets INVOCATION_ID for every process of a unit; without it there is no systemd to
    // hand the pid to, and the upgrade is just the server's own.
    if std::env::var_os("INVOCATION_ID").is_none() && !notifier.is_enabled() {
        log::info("not running under systemd: upgrading without a MAINPID handoff").emit();
        return Ok(());
    }
    let Some(unit) = own_unit() else {
        if notifier.is_enabled() {
            log::warn("cannot tell which unit this is (no .service in /proc/self/cgroup); not checking NotifyAccess=")
                .emit();
            return Ok(());
        }
        bail!(
            "NOTIFY_SOCKET is not set, so systemd would not learn the new master's pid: set NotifyAccess=all in the unit"
        );
    };
    let out = std::process::Command::new("systemctl")
        .args(["show", "--property=NotifyAccess", "--value", &unit])
        .env_remove(crate::protocol::NOTIFY_SOCKET)
        .output()
        .context("failed to run systemctl show to check NotifyAccess=")?;
    if !out.status.success() {
        bail!(
            "failed to check NotifyAccess= of {unit} (systemctl show: {}); run the reload as root \
             (ExecReload=+/usr/bin/sockherd reload) so it can ask systemd",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let access = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if access != "all" || !notifier.is_enabled() {
        bail!(
            "{unit} has NotifyAccess={access}: systemd would ignore MAINPID= from the reload and lose the new master; set NotifyAccess=all"
        );
    }
    Ok(())
}

fn read_pidfile(path: &PathBuf) -> Option<Pid> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

impl NativeReload {
    /// Drives one upgrade. Returns a summary on success; an error (old master still serving)
    /// otherwise.
    pub fn run(&self) -> Result<String> {
        let old = self.pid;
        if !alive(old) {
            bail!("the main process {old} does not exist");
        }
        let flavor = match self.flavor {
            Some(f) => f,
            None => detect_flavor(old)?,
        };
        check_flavor(flavor)?;
        let notifier = Notifier::from_env();
        check_notify_access(&notifier)?;
        let expected_workers = self.workers.unwrap_or_else(|| workers_of(flavor, old)).max(1);
        let children_before: Vec<Pid> = processes().iter().filter(|p| p.ppid == old).map(|p| p.pid).collect();
        let pidfile_before = self.pidfile.as_ref().and_then(read_pidfile);
        let started = Instant::now();
        log::info(format!("native upgrade of {flavor} master {old}: sending SIGUSR2"))
            .kind("reload")
            .field("PID", old)
            .emit();
        sys::kill(old, Signal::USR2.0).with_context(|| format!("failed to send SIGUSR2 to {old}"))?;

        // Find the new master: the pid file names a new live pid, or a new child of the old
        // master appears that is not one of its workers (a freshly exec'd master may not have
        // titled itself "master" yet, and one whose app fails to load never does).
        let deadline = started + self.ready_timeout;
        let oldbin = self.pidfile.as_ref().map(|p| PathBuf::from(format!("{}.oldbin", p.display())));
        let mut oldbin_seen = false;
        let new = loop {
            if let Some(pid) = self.pidfile.as_ref().and_then(read_pidfile)
                && pid != old
                && Some(pid) != pidfile_before
                && alive(pid)
            {
                break pid;
            }
            let candidate = processes()
                .into_iter()
                .find(|p| p.ppid == old && !children_before.contains(&p.pid) && is_new_master_title(flavor, &p.title));
            if let Some(p) = candidate {
                break p.pid;
            }
            // unicorn renames its pid file to .oldbin on USR2 and back when the new master dies.
            if let Some(oldbin) = &oldbin {
                if oldbin.exists() {
                    oldbin_seen = true;
                } else if oldbin_seen && self.pidfile.as_ref().and_then(read_pidfile) == Some(old) {
                    bail!(
                        "the new master exited before it was ready (the old master took its pid file back); old master {old} still serving"
                    );
                }
            }
            if !alive(old) {
                bail!("the old master {old} exited during the upgrade");
            }
            if Instant::now() >= deadline {
                bail!(
                    "no new master appeared within {:?} after SIGUSR2 to {old}; {old} still serving",
                    self.ready_timeout
                );
            }
            std::thread::sleep(POLL);
        };
        log::info(format!("new {flavor} master {new} started; waiting for {expected_workers} worker(s)"))
            .kind("spawn")
            .field("PID", new)
            .emit();

        // Wait until it has its workers, or fail.
        loop {
            if !alive(new) {
                bail!("the new master {new} exited before it was ready; old master {old} still serving");
            }
            let workers = workers_of(flavor, new);
            if workers >= expected_workers {
                break;
            }
            if Instant::now() >= deadline {
                kill_tree(new);
                bail!(
                    "the new master {new} had {workers} of {expected_workers} worker(s) after {:?}: killed it; old master {old} still serving",
                    self.ready_timeout
                );
            }
            std::thread::sleep(POLL);
        }
        let ready_after = started.elapsed();

        // Hand it to systemd before the old master goes away.
        let status = format!("serving {flavor} master {new} (native upgrade from {old})");
        notifier.send(&[format!("{MAINPID}={new}"), READY.to_string(), format!("{STATUS}={status}")]);
        if let Err(e) = notifier.barrier(Duration::from_secs(5)) {
            log::warn(format!("systemd did not confirm MAINPID={new} (BARRIER=1): {e}")).emit();
        }
        let handed = if notifier.is_enabled() { format!("; MAINPID={new} sent to systemd") } else { String::new() };
        log::info(format!(
            "new master {new} ready after {} ms{handed}; stopping old master {old} with {}",
            ready_after.as_millis(),
            flavor.graceful_signal()
        ))
        .kind("ready")
        .field("PID", new)
        .field("HANDOFF_MS", ready_after.as_millis())
        .emit();

        // Gracefully stop the old master.
        let graceful = flavor.graceful_signal();
        sys::kill(old, graceful.0).with_context(|| format!("failed to send {graceful} to {old}"))?;
        let drain_started = Instant::now();
        while alive(old) {
            if drain_started.elapsed() >= self.drain_timeout {
                log::warn(format!(
                    "old master {old} still running {:?} after {graceful}: killing it",
                    self.drain_timeout
                ))
                .kind("kill")
                .emit();
                kill_tree(old);
                break;
            }
            std::thread::sleep(POLL);
        }
        let drained = drain_started.elapsed();
        log::info(format!("old master {old} gone after {} ms", drained.as_millis()))
            .kind("drain")
            .field("PID", old)
            .field("DRAIN_MS", drained.as_millis())
            .emit();
        Ok(format!(
            "new {flavor} master {new} serves (ready after {} ms; old master {old} drained in {} ms)",
            ready_after.as_millis(),
            drained.as_millis()
        ))
    }
}

/// SIGKILL to a process and its children (a failed new master and its workers).
fn kill_tree(pid: Pid) {
    let children: Vec<Pid> = processes().iter().filter(|p| p.ppid == pid).map(|p| p.pid).collect();
    let _ = sys::kill(pid, libc::SIGKILL);
    for child in children {
        let _ = sys::kill(child, libc::SIGKILL);
    }
}

/// `sockherd exec --flavor nginx`: nginx adopts sockets from `NGINX=` only as a "new binary",
/// and then ignores USR2 for as long as its parent is the process that started it. Exec'd in
/// place under systemd, that parent is PID 1 forever, so its binary upgrade could never run.
/// So nginx is started as our child, and once its workers run we hand it to systemd
/// (`MAINPID=` + `READY=1`, for a Type=notify unit with NotifyAccess=all) and exit: nginx's parent
/// changes, exactly as after its own upgrade, and USR2 works from then on.
pub fn start_nginx(argv: &[std::ffi::OsString], launch: &crate::command::Launch<'_>, timeout: Duration) -> Result<u8> {
    let pid = crate::command::spawn(argv, launch)?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some((reaped, status)) = sys::reap_any().context("waitpid failed")?
            && reaped == pid
        {
            bail!("nginx (pid {pid}) exited with {} before it was ready", crate::generation::describe_status(status));
        }
        if workers_of(Flavor::Nginx, pid) > 0 {
            break;
        }
        if Instant::now() >= deadline {
            let _ = sys::kill(pid, libc::SIGKILL);
            bail!("nginx (pid {pid}) started no worker within {timeout:?}");
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
