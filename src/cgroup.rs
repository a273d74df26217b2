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

    /// Creates `gen-N` for generation `number`, ready for its first process to enter.
    pub fn create(&self, number: u64) -> io::Result<GenCgroup> {
        let path = self.root.join(format!("gen-{number}"));
        let context = |e: io::Error, what: &str| io::Error::new(e.kind(), format!("failed to {what}: {e}"));
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            // A leftover with this number (an earlier sockherd's): reused only if empty.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && !populated(&path).unwrap_or(true) => {}
            Err(e) => return Err(context(e, &format!("create cgroup {}", path.display()))),
        }
        let procs = OpenOptions::new()
            .write(true)
            .open(path.join("cgroup.procs"))
            .map_err(|e| context(e, &format!("open {}/cgroup.procs", path.display())))?;
        let events = File::open(path.join("cgroup.events"))
            .map_err(|e| context(e, &format!("open {}/cgroup.events", path.display())))?;
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

    /// Whether any process is left in it. Reading `cgroup.events` through the descriptor
    /// polled also acknowledges the change that woke the loop: the next POLLPRI is a new one.
    pub fn populated(&self) -> bool {
        let mut buf = [0u8; 128];
        match self.events.read_at(&mut buf, 0) {
            Ok(n) => String::from_utf8_lossy(&buf[..n]).lines().any(|l| l.trim() == "populated 1"),
            // Unreadable (removed under us): nothing can be left in it.
            Err(_) => false,
        }
    }

    /// Every process in the generation right now (only these are read, never all of /proc).
    pub fn pids(&self) -> Vec<Pid> {
        read_file(&self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Sends `signal` to every process of the generation. A process that exited since the
    /// list was read is no failure, and no failure keeps the others from their signal: the
    /// first real error is returned once every process was tried.
    pub fn signal_all(&self, signal: i32) -> io::Result<()> {
        let mut first_error = None;
        for pid in self.pids() {
            match sys::kill(pid, signal) {
                Err(e) if e.raw_os_error() != Some(libc::ESRCH) => {
                    first_error.get_or_insert(e);
                }
                _ => {}
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// SIGKILL to every process of the generation, at once and including those it forks
    /// meanwhile (`cgroup.kill`, Linux 5.14), else one by one.
    pub fn kill(&self) -> io::Result<()> {
        match write_file(&self.path.join("cgroup.kill"), "1") {
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.signal_all(libc::SIGKILL),
            other => other,
        }
    }

    /// Removes the (empty) cgroup.
    pub fn remove(&self) -> io::Result<()> {
        std::fs::remove_dir(&self.path)
    }
}

/// Why a delegated cgroup that is read-only in this mount namespace cannot hold generations.
fn read_only(root: &Path) -> String {
    format!(
        "its delegated cgroup {} is read-only here (ProtectControlGroups=yes): give the unit ReadWritePaths={0}",
        root.display()
    )
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
