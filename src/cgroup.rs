//! Generations as cgroups. When systemd delegates the service's cgroup to it (`Delegate=yes`,
//! cgroup v2), sockherd runs in a leaf of its own (`supervisor`, which `DelegateSubgroup=` on
//! systemd 254+ creates for it, or which it moves itself into) and starts each generation in a
//! child cgroup `gen-N` that the child enters between fork and exec, so no process of the
//! generation ever exists outside it. Membership is then exact: a worker that calls setsid() or
//! double-forks is still in `gen-N`, is drained with it and killed with `cgroup.kill`, and the
//! generation is gone exactly when `cgroup.events` says `populated 0` (a POLLPRI event, no
//! timer).
//!
//! Delegation is detected, not configured: systemd marks a delegated cgroup with the extended
//! attribute `trusted.delegate` (and, readable without privileges, `user.delegate`) = 1.
//! Without it (a shell, a unit without `Delegate=`, cgroup v1 or hybrid without a writable
//! cgroup2 tree), generations stay process groups and the reason is said at start and in
//! `status`.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::signal::Signal;
use crate::sys::{self, Pid};

/// The leaf sockherd itself lives in (the name `DelegateSubgroup=supervisor` gives it): a
/// cgroup whose children get controllers may hold no process itself.
pub const SUPERVISOR_LEAF: &str = "supervisor";
/// The controllers enabled for the generations when the service's cgroup has them: each
/// generation's CPU, memory and process count can then be read (and weighed) on its own.
const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];
/// What a generation loses without cgroups, said wherever process-group mode is reported.
pub const LOST_WITHOUT_CGROUPS: &str = "a worker that leaves its process group (setsid, a daemonizing child) escapes \
     the drain, the drain timeout's SIGKILL and the stop, and a handoff's end is found by scanning /proc every 20 ms";

/// How the processes of a generation are told apart.
pub enum Membership {
    Cgroups(Cgroups),
    /// Each generation is its master's process group; why there are no cgroups.
    ProcessGroups {
        why: String,
    },
}

impl Membership {
    /// Looks at the cgroup sockherd runs in and takes it over when it is delegated.
    pub fn detect() -> Membership {
        match Cgroups::take_over() {
            Ok(cgroups) => Membership::Cgroups(cgroups),
            Err(why) => Membership::ProcessGroups { why },
        }
    }

    pub fn cgroups(&self) -> Option<&Cgroups> {
        match self {
            Membership::Cgroups(c) => Some(c),
            Membership::ProcessGroups { .. } => None,
        }
    }

    /// `cgroup` or `process-group`, as `status --json` says it.
    pub fn name(&self) -> &'static str {
        match self {
            Membership::Cgroups(_) => "cgroup",
            Membership::ProcessGroups { .. } => "process-group",
        }
    }

    /// One sentence for the start-up log and `status`.
    pub fn describe(&self) -> String {
        match self {
            Membership::Cgroups(c) => format!(
                "generations are cgroups: gen-N under {} (controllers for them: {})",
                c.root.display(),
                if c.controllers.is_empty() { "none delegated".to_string() } else { c.controllers.join(" ") }
            ),
            Membership::ProcessGroups { why } => {
                format!("generations are process groups, not cgroups ({why}): {LOST_WITHOUT_CGROUPS}")
            }
        }
    }
}

/// The service's delegated cgroup, in which sockherd keeps one child per generation.
pub struct Cgroups {
    root: PathBuf,
    controllers: Vec<String>,
}

impl Cgroups {
    fn take_over() -> Result<Cgroups, String> {
        let mount = cgroup2_mount().ok_or("no cgroup2 hierarchy is mounted")?;
        let own = own_cgroup().ok_or("this process is in no cgroup2 cgroup (cgroup v1)")?;
        let dir = mount.join(own.trim_start_matches('/'));
        let (root, inside_leaf) = if dir.file_name().is_some_and(|n| n == SUPERVISOR_LEAF)
            && let Some(parent) = dir.parent().filter(|p| is_delegated(p))
        {
            // DelegateSubgroup=supervisor (systemd 254+) put us in the leaf already.
            (parent.to_path_buf(), true)
        } else if is_delegated(&dir) {
            (dir.clone(), false)
        } else {
            return Err(format!("its cgroup {} is not delegated to it: give the unit Delegate=yes", dir.display()));
        };
        // ProtectControlGroups=yes mounts the whole tree read-only unless ReadWritePaths= names
        // the service's cgroup: then nothing can be created in it, whatever systemd delegated.
        // Opening for writing changes nothing and fails with EROFS on a read-only mount.
        if let Err(e) = OpenOptions::new().write(true).open(root.join("cgroup.subtree_control"))
            && e.raw_os_error() == Some(libc::EROFS)
        {
            return Err(read_only(&root));
        }
        if !inside_leaf {
            let leaf = root.join(SUPERVISOR_LEAF);
            make_dir(&leaf).map_err(|e| format!("cannot create {}: {e}", leaf.display()))?;
            write_file(&leaf.join("cgroup.procs"), "0")
                .map_err(|e| format!("cannot move itself into {}: {e}", leaf.display()))?;
        }
        let available = read_file(&root.join("cgroup.controllers")).unwrap_or_default();
        let controllers = CONTROLLERS
            .iter()
            .filter(|c| available.split_whitespace().any(|a| a == **c))
            .filter(|c| write_file(&root.join("cgroup.subtree_control"), &format!("+{c}")).is_ok())
            .map(|c| c.to_string())
            .collect();
        // Empty generations of an earlier sockherd of this service (killed, or crashed).
        if let Ok(entries) = std::fs::read_dir(&root) {
            for entry in entries.flatten() {
                if entry.file_name().to_str().is_some_and(|n| n.starts_with("gen-")) {
                    let _ = std::fs::remove_dir(entry.path());
                }
            }
        }
        Ok(Cgroups { root, controllers })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Ends the generations an earlier sockherd of this service left running. Killed (SIGKILL,
    /// the OOM killer) in a unit whose `KillMode=process` leaves the rest of its cgroup alone,
    /// it left them serving with no supervisor, in the `gen-N` this start would create: the
    /// start failed on them ("File exists") at every restart, or would serve beside them
    /// forever. Each gets `signal`, the stop signal (a generation answers the requests it holds,
    /// then exits, as at a stop), `timeout` to be gone, then SIGKILL. Blocks until they are gone
    /// or `timeout` plus [`KILL_ROUNDS_FOR`] passed; returns what it found and did, a line each.
    pub fn end_leftovers(&self, signal: Signal, timeout: Duration) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.root) else { return Vec::new() };
        let leftovers: Vec<(PathBuf, usize)> = entries
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with("gen-")))
            .map(|e| e.path())
            .filter(|dir| populated(dir).unwrap_or(false))
            .map(|dir| {
                let pids = subtree_pids(&dir).unwrap_or_default();
                // As at a stop: the stop signal to the generation's master, which tells its
                // workers its own way. With the master gone, its orphans are the masters now:
                // every process whose parent is not of the generation.
                let masters: Vec<Pid> = pids
                    .iter()
                    .copied()
                    .filter(|pid| crate::procfs::process(*pid).is_some_and(|p| !pids.contains(&p.ppid)))
                    .collect();
                let _ = signal_each(&masters, signal.0);
                (dir, pids.len())
            })
            .collect();
        let started = Instant::now();
        let gone = |dir: &Path| !populated(dir).unwrap_or(true);
        while started.elapsed() < timeout && !leftovers.iter().all(|(dir, _)| gone(dir)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut lines = Vec::new();
        for (dir, processes) in &leftovers {
            let name = dir.file_name().unwrap_or_default().to_string_lossy();
            let ended = if gone(dir) {
                format!("gone {} ms after {signal}", started.elapsed().as_millis())
            } else {
                // Every process at once where the kernel can (cgroup.kill), else round after round.
                let killed = match write_file(&dir.join("cgroup.kill"), "1") {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => kill_each(dir),
                    other => other,
                };
                let waited = Instant::now();
                while waited.elapsed() < KILL_ROUNDS_FOR && !gone(dir) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let killed = killed.map_or_else(|e| format!(", and failed: {e}"), |()| String::new());
                format!("still there {timeout:?} after {signal}: killed{killed}")
            };
            // With the cgroups it made under its own, deepest first (a gen-N reused with an
            // application's controllers enabled in it would refuse the next generation).
            if let Ok(dirs) = subtree(dir) {
                for d in dirs.into_iter().rev() {
                    let _ = std::fs::remove_dir(&d);
                }
            }
            lines.push(format!(
                "{name} of an earlier sockherd of this service still ran {processes} process(es), unsupervised \
                 (it was killed, and the unit's KillMode= left them): sent {signal} to its master, {ended}"
            ));
        }
        lines
    }

    /// Creates `gen-N` for generation `number`, ready for its first process to enter, with
    /// `cpu_weight` where given and the cpu controller is delegated. On any failure nothing is
    /// left behind.
    pub fn create(&self, number: u64, cpu_weight: Option<u32>) -> io::Result<GenCgroup> {
        let path = self.root.join(format!("gen-{number}"));
        let context = |e: io::Error, what: &str| io::Error::new(e.kind(), format!("failed to {what}: {e}"));
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            // A leftover with this number (an earlier sockherd's): reused only if empty.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && !populated(&path).unwrap_or(true) => {}
            Err(e) => return Err(context(e, &format!("create cgroup {}", path.display()))),
        }
        let opened = OpenOptions::new()
            .write(true)
            .open(path.join("cgroup.procs"))
            .map_err(|e| context(e, &format!("open {}/cgroup.procs", path.display())))
            .and_then(|procs| {
                let events = File::open(path.join("cgroup.events"))
                    .map_err(|e| context(e, &format!("open {}/cgroup.events", path.display())))?;
                let weight = path.join("cpu.weight");
                if let Some(value) = cpu_weight.filter(|_| weight.exists()) {
                    std::fs::write(&weight, format!("{value}\n"))
                        .map_err(|e| context(e, &format!("set {} to {value}", weight.display())))?;
                }
                Ok((procs, events))
            });
        match opened {
            Ok((procs, events)) => Ok(GenCgroup { path, procs: procs.into(), events }),
            // No generation will enter it: it must not stay behind.
            Err(e) => {
                let _ = std::fs::remove_dir(&path);
                Err(e)
            }
        }
    }
}

impl Cgroups {
    /// Opens `gen-N` of a generation that already runs in it (a re-executed supervisor's).
    pub fn open(&self, number: u64) -> io::Result<GenCgroup> {
        let path = self.root.join(format!("gen-{number}"));
        let context = |e: io::Error, what: &str| io::Error::new(e.kind(), format!("failed to open {what}: {e}"));
        let procs = OpenOptions::new()
            .write(true)
            .open(path.join("cgroup.procs"))
            .map_err(|e| context(e, &format!("{}/cgroup.procs", path.display())))?;
        let events = File::open(path.join("cgroup.events"))
            .map_err(|e| context(e, &format!("{}/cgroup.events", path.display())))?;
        Ok(GenCgroup { path, procs: procs.into(), events })
    }
}

/// One generation's cgroup.
pub struct GenCgroup {
    path: PathBuf,
    /// `cgroup.procs`, open for writing: the forked child writes itself into it before exec.
    procs: OwnedFd,
    /// `cgroup.events`: POLLPRI when `populated` (or `frozen`) changes.
    events: File,
}

impl GenCgroup {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The descriptor the child writes itself into ([`sys::ExecImage::enter_cgroup`]).
    pub fn procs_fd(&self) -> BorrowedFd<'_> {
        self.procs.as_fd()
    }

    /// What to wait on (POLLPRI) for `populated` to change.
    pub fn events_fd(&self) -> BorrowedFd<'_> {
        self.events.as_fd()
    }

    /// Whether any process is left in it (or in a cgroup under it). Reading `cgroup.events`
    /// through the descriptor polled also acknowledges the change that woke the loop: the next
    /// POLLPRI is a new one. An error is no answer: the caller counts the generation as still
    /// there, except where the cgroup was removed (ENODEV), which the kernel allows only to an
    /// empty one.
    pub fn populated(&self) -> io::Result<bool> {
        let mut buf = [0u8; 128];
        match self.events.read_at(&mut buf, 0) {
            Ok(n) => Ok(String::from_utf8_lossy(&buf[..n]).lines().any(|l| l.trim() == "populated 1")),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
            Err(e) => {
                Err(io::Error::new(e.kind(), format!("failed to read {}/cgroup.events: {e}", self.path.display())))
            }
        }
    }

    /// Every process in the generation right now, those in cgroups it made under its own
    /// included (only these are read, never all of /proc). An error is no empty list: a caller
    /// that took it for one would believe the generation gone or done with the sockets.
    pub fn pids(&self) -> io::Result<Vec<Pid>> {
        subtree_pids(&self.path)
    }

    /// Sends `signal` to every process of the generation. A process that exited since the
    /// list was read is no failure, and no failure keeps the others from their signal: the
    /// first real error is returned once every process was tried.
    pub fn signal_all(&self, signal: i32) -> io::Result<()> {
        signal_each(&self.pids()?, signal)
    }

    /// SIGKILL to every process of the generation, at once and including those it forks
    /// meanwhile (`cgroup.kill`, Linux 5.14), else round after round until none is left
    /// ([`kill_each`]).
    pub fn kill(&self) -> io::Result<()> {
        match write_file(&self.path.join("cgroup.kill"), "1") {
            Err(e) if e.kind() == io::ErrorKind::NotFound => kill_each(&self.path),
            other => other,
        }
    }

    /// Removes the (empty) cgroup, with the cgroups the generation made under it.
    pub fn remove(&self) -> io::Result<()> {
        for dir in subtree(&self.path)?.into_iter().rev() {
            std::fs::remove_dir(&dir).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
        }
        Ok(())
    }
}

/// Why a delegated cgroup that is read-only in this mount namespace cannot hold generations.
fn read_only(root: &Path) -> String {
    format!(
        "its delegated cgroup {} is read-only here (ProtectControlGroups=yes): give the unit ReadWritePaths={0}",
        root.display()
    )
}

/// How long [`kill_each`] goes on sending SIGKILL while processes are left.
pub const KILL_ROUNDS_FOR: Duration = Duration::from_secs(1);

/// SIGKILL to every process in cgroup `dir` and under it, without `cgroup.kill` (kernels before
/// 5.14): one read of the list and one pass would miss a process forked meanwhile, which could
/// then hold the public sockets forever. The cgroup is frozen first (`cgroup.freeze`, 5.2; a
/// SIGKILL still ends a frozen process), so that none can fork, and the list is read and
/// killed again until it is empty (which also catches a fork that came before the freeze took
/// hold, and works without a freezer), for [`KILL_ROUNDS_FOR`] at most; then thawed.
pub fn kill_each(dir: &Path) -> io::Result<()> {
    let frozen = write_file(&dir.join("cgroup.freeze"), "1").is_ok();
    let until = Instant::now() + KILL_ROUNDS_FOR;
    let mut first_error = None;
    let outcome = loop {
        let pids = match subtree_pids(dir) {
            Ok(pids) => pids,
            Err(e) => break Err(e),
        };
        if pids.is_empty() {
            break first_error.map_or(Ok(()), Err);
        }
        if Instant::now() >= until {
            break Err(first_error.unwrap_or_else(|| {
                io::Error::other(format!("{} processes left after {KILL_ROUNDS_FOR:?} of SIGKILL", pids.len()))
            }));
        }
        if let Err(e) = signal_each(&pids, libc::SIGKILL) {
            first_error.get_or_insert(e);
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    if frozen {
        let _ = write_file(&dir.join("cgroup.freeze"), "0");
    }
    outcome
}

/// `signal` to each of `pids`; see [`GenCgroup::signal_all`] ([`sys::kill`] takes a process
/// that is gone for no failure).
fn signal_each(pids: &[Pid], signal: i32) -> io::Result<()> {
    let mut first_error = None;
    for &pid in pids {
        if let Err(e) = sys::kill(pid, signal) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The processes of cgroup `dir` and of every cgroup under it (a process of a cgroup with
/// children of its own is only in its child's `cgroup.procs`, not in its parent's).
pub fn subtree_pids(dir: &Path) -> io::Result<Vec<Pid>> {
    let mut pids = Vec::new();
    for (i, cgroup) in subtree(dir)?.iter().enumerate() {
        match read_file(&cgroup.join("cgroup.procs")) {
            Ok(text) => pids.extend(text.lines().filter_map(|l| l.trim().parse::<Pid>().ok())),
            // A cgroup under it that was removed since its parent was listed held nothing.
            Err(e) if i > 0 && e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(io::Error::new(e.kind(), format!("failed to read {}/cgroup.procs: {e}", cgroup.display())));
            }
        }
    }
    Ok(pids)
}

/// Cgroup `dir` and every cgroup under it, each before its children.
fn subtree(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut dirs = vec![dir.to_path_buf()];
    let mut next = 0;
    while let Some(parent) = dirs.get(next).cloned() {
        next += 1;
        let entries = match std::fs::read_dir(&parent) {
            Ok(entries) => entries,
            Err(e) if next > 1 && e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io::Error::new(e.kind(), format!("failed to list {}: {e}", parent.display()))),
        };
        for entry in entries {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                dirs.push(entry.path());
            }
        }
    }
    Ok(dirs)
}

/// Where the cgroup2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a
/// hybrid host).
fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = read_file(Path::new("/proc/self/mountinfo")).ok()?;
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        if after.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        before.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// This process's cgroup2 path (`0::/system.slice/app.service`).
fn own_cgroup() -> Option<String> {
    let text = read_file(Path::new("/proc/self/cgroup")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_string)
}

/// Whether systemd delegated this cgroup (`trusted.delegate` or `user.delegate` is "1").
fn is_delegated(dir: &Path) -> bool {
    ["trusted.delegate", "user.delegate"].iter().any(|name| sys::getxattr(dir, name).is_ok_and(|v| v == b"1"))
}

fn populated(dir: &Path) -> io::Result<bool> {
    let events = read_file(&dir.join("cgroup.events"))?;
    Ok(events.lines().any(|l| l.trim() == "populated 1"))
}

fn make_dir(dir: &Path) -> io::Result<()> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

fn read_file(path: &Path) -> io::Result<String> {
    let mut text = String::new();
    File::open(path)?.read_to_string(&mut text)?;
    Ok(text)
}

/// cgroupfs takes one write per value.
fn write_file(path: &Path, value: &str) -> io::Result<()> {
    OpenOptions::new().write(true).open(path)?.write_all(value.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command};

    fn tree(files: &[(&str, &str)]) -> PathBuf {
        let mut bytes = [0u8; 8];
        sys::random_bytes(&mut bytes).unwrap();
        let root = std::env::temp_dir().join(format!("sockherd-cgroup-{}", u64::from_ne_bytes(bytes)));
        std::fs::create_dir_all(&root).unwrap();
        for (path, text) in files {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        root
    }

    /// Replaces a stand-in `cgroup.procs` in one step (a reader never sees it empty between).
    fn set_procs(dir: &Path, pids: &[u32]) {
        let text: String = pids.iter().map(|p| format!("{p}\n")).collect();
        let staged = dir.join("cgroup.procs.new");
        std::fs::write(&staged, text).unwrap();
        std::fs::rename(staged, dir.join("cgroup.procs")).unwrap();
    }

    /// A GenCgroup whose directory is `dir` (no `cgroup.kill` in it, no events to read).
    fn stand_in_cgroup(dir: &Path) -> GenCgroup {
        GenCgroup { path: dir.to_path_buf(), procs: File::open(dir).unwrap().into(), events: File::open(dir).unwrap() }
    }

    /// A signal to a generation reaches the processes of the cgroups under it too.
    #[test]
    fn a_signal_reaches_every_process_of_the_generation() {
        use std::os::unix::process::ExitStatusExt;
        let dir = tree(&[]);
        std::fs::create_dir(dir.join("sub")).unwrap();
        let (top, below) = (sleeper(), sleeper());
        std::fs::write(dir.join("cgroup.procs"), format!("{}\n", top.id())).unwrap();
        std::fs::write(dir.join("sub/cgroup.procs"), format!("{}\n", below.id())).unwrap();
        let sent = stand_in_cgroup(&dir).signal_all(libc::SIGTERM);
        let (top, below) = (ended(top), ended(below));
        std::fs::remove_dir_all(&dir).unwrap();
        sent.unwrap();
        assert_eq!((top.and_then(|s| s.signal()), below.and_then(|s| s.signal())), (Some(15), Some(15)));
    }

    fn sleeper() -> Child {
        Command::new("sleep").arg("30").spawn().expect("sleep")
    }

    /// Waits (up to 5 s) for a child to end; None if it did not, and it is then killed here.
    fn ended(mut child: Child) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// A cgroup without `cgroup.kill` (a directory standing in, whose `cgroup.procs` this test
    /// rewrites as the kernel would): a process forked while the first was killed joins the
    /// list once the first is dead, and must be killed too.
    #[test]
    fn without_cgroup_kill_a_process_forked_meanwhile_is_killed_too() {
        use std::os::unix::process::ExitStatusExt;
        let dir = tree(&[]);
        let (first, forked) = (sleeper(), sleeper());
        set_procs(&dir, &[first.id()]);
        let stand_in = {
            let dir = dir.clone();
            std::thread::spawn(move || {
                let first = ended(first);
                set_procs(&dir, &[forked.id()]);
                let forked = ended(forked);
                set_procs(&dir, &[]);
                (first, forked)
            })
        };
        let killed = stand_in_cgroup(&dir).kill();
        let (first, forked) = stand_in.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        killed.unwrap();
        assert_eq!(first.and_then(|s| s.signal()), Some(libc::SIGKILL), "the first process: {first:?}");
        assert_eq!(forked.and_then(|s| s.signal()), Some(libc::SIGKILL), "the process forked meanwhile: {forked:?}");
    }

    /// A generation that made cgroups of its own under gen-N: their processes are its
    /// processes, though gen-N's own cgroup.procs does not list them.
    #[test]
    fn the_processes_of_cgroups_under_a_generation_are_its_own() {
        let dir = tree(&[
            ("gen-4/cgroup.procs", "10\n11\n"),
            ("gen-4/workers/cgroup.procs", "12\n"),
            ("gen-4/workers/w1/cgroup.procs", "13\n14\n"),
            ("gen-4/empty/cgroup.procs", ""),
            // Removed between the listing of gen-4 and the read of its cgroup.procs.
            ("gen-4/gone/cgroup.events", ""),
        ]);
        let mut pids = subtree_pids(&dir.join("gen-4")).unwrap();
        pids.sort_unstable();
        let missing = subtree_pids(&dir.join("gen-5"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(pids, [10, 11, 12, 13, 14]);
        assert!(missing.is_err(), "an unreadable cgroup is no empty one: {missing:?}");
    }

    /// What cannot be read is no answer: not "no process left", not "empty".
    #[test]
    fn errors_are_not_read_as_empty() {
        // An empty leftover gen-1, taken over; then a process enters it.
        let dir = tree(&[("gen-1/cgroup.procs", ""), ("gen-1/cgroup.events", "populated 0\n")]);
        let cgroups = Cgroups { root: dir.clone(), controllers: Vec::new() };
        let gen1 = cgroups.create(1, None).unwrap();
        std::fs::write(dir.join("gen-1/cgroup.procs"), "10\n").unwrap();
        std::fs::write(dir.join("gen-1/cgroup.events"), "populated 1\n").unwrap();
        assert_eq!((gen1.pids().unwrap(), gen1.populated().unwrap()), (vec![10], true));
        // cgroup.procs gone unreadable, cgroup.events unreadable (a directory now).
        std::fs::remove_file(dir.join("gen-1/cgroup.procs")).unwrap();
        let broken = GenCgroup {
            path: dir.join("gen-1"),
            procs: File::open(&dir).unwrap().into(),
            events: File::open(&dir).unwrap(),
        };
        let (pids, populated) = (broken.pids(), broken.populated());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(pids.is_err(), "{pids:?}");
        assert!(populated.is_err(), "{populated:?}");
    }

    /// A generation's cgroup is removed with the cgroups under it; read through the descriptor
    /// of its `cgroup.events` (ENODEV), it is empty: the kernel removes no populated cgroup. On
    /// the host's cgroup2 tree, where it can be written.
    #[test]
    fn a_removed_cgroup_is_gone_with_its_children_and_not_populated() {
        let Some(top) = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.join("cgroup.controllers").exists())
        else {
            eprintln!("skipped: no cgroup2 hierarchy");
            return;
        };
        let root = top.join(format!("sockherd-unit-{}", std::process::id()));
        if let Err(e) = std::fs::create_dir(&root) {
            eprintln!("skipped: cannot create a cgroup in {}: {e}", top.display());
            return;
        }
        let cgroups = Cgroups { root: root.clone(), controllers: Vec::new() };
        let gen1 = cgroups.create(1, None);
        // A cgroup the generation made under its own goes with it.
        let _ = std::fs::create_dir_all(root.join("gen-1/workers/w1"));
        let before = gen1.as_ref().map(|g| g.populated().ok());
        let removed = gen1.as_ref().map(|g| g.remove().is_ok());
        let gone = !root.join("gen-1").exists();
        let after = gen1.as_ref().map(|g| g.populated().ok());
        for dir in ["gen-1/workers/w1", "gen-1/workers", "gen-1"] {
            let _ = std::fs::remove_dir(root.join(dir));
        }
        std::fs::remove_dir(&root).unwrap();
        assert_eq!((before.ok(), removed.ok(), gone), (Some(Some(false)), Some(true), true));
        assert_eq!(after.ok(), Some(Some(false)));
    }

    /// A gen-N whose files cannot be opened is not left behind.
    #[test]
    fn a_generation_cgroup_that_cannot_be_used_is_removed() {
        let dir = tree(&[]);
        let cgroups = Cgroups { root: dir.clone(), controllers: Vec::new() };
        let created = cgroups.create(7, None);
        let left = dir.join("gen-7").exists();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(created.is_err());
        assert!(!left, "gen-7 was left behind");
    }

    /// A booting generation's cgroup gets the lower cpu.weight where it has the file; a write
    /// that fails fails the creation, with the file named.
    #[test]
    fn the_boot_cpu_weight_is_set_as_the_cgroup_is_created() {
        let leftover = [("cgroup.procs", ""), ("cgroup.events", "populated 0\n")];
        let files: Vec<(String, &str)> = ["gen-1", "gen-2", "gen-3"]
            .iter()
            .flat_map(|g| leftover.iter().map(move |(f, t)| (format!("{g}/{f}"), *t)))
            .chain([("gen-1/cpu.weight".to_string(), "100\n"), ("gen-3/cpu.weight/x".to_string(), "")])
            .collect();
        let files: Vec<(&str, &str)> = files.iter().map(|(f, t)| (f.as_str(), *t)).collect();
        let dir = tree(&files);
        let cgroups = Cgroups { root: dir.clone(), controllers: Vec::new() };
        let lowered = cgroups.create(1, Some(1)).map(drop);
        let weight = std::fs::read_to_string(dir.join("gen-1/cpu.weight")).unwrap();
        // No cpu controller: nothing to set.
        let without = cgroups.create(2, Some(1)).map(drop);
        // cpu.weight cannot be written (a directory here).
        let failed = cgroups.create(3, Some(1)).map(drop);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!((lowered.ok(), weight.as_str(), without.ok()), (Some(()), "1\n", Some(())));
        let error = failed.unwrap_err().to_string();
        assert!(error.contains("gen-3/cpu.weight to 1"), "{error}");
    }
}
