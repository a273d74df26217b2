//! What a generation uses (processes, CPU, memory), whether the service has room for one more,
//! and the lower CPU priority a generation boots at.
//!
//! Every reader works in two modes. Given the generation's own cgroup directory (cgroup v2 with
//! the controllers delegated), it reads that cgroup's files: `cgroup.procs`, `cpu.stat`
//! (`usage_usec`), `memory.current`, `memory.peak`, and writes `cpu.weight`. Without one, or where
//! a file is missing or unreadable (a controller not delegated, cgroup v1), it reads `/proc` for
//! the list of member pids the caller found (the generation's process group): `/proc/PID/stat`
//! (utime + stime, and the children already reaped: cutime + cstime) and the proportional set
//! size from `/proc/PID/smaps_rollup`, summed. PSS counts a page shared by n processes as 1/n in
//! each, so the sum is what the generation occupies, copy-on-write sharing included.
//!
//! The memory budget ([`room`], [`check_budget`]): a new generation runs beside the serving one
//! until the handoff ends, so before it starts, the service must have room for the serving
//! generation's memory once more, its page cache left out ([`Usage::expected_need`]). Room is the smallest of the host's `MemAvailable` and, for
//! every cgroup from sockherd's own up to the root of its hierarchy, the limit (`memory.max`,
//! `memory.high` on cgroup v2; `memory.limit_in_bytes` on v1) minus what that cgroup uses, its
//! inactive page cache (reclaimable) left out. A unit's `MemoryMax=` and `MemoryHigh=` are those
//! files of its cgroup, and a slice's limit counts too.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::sys::{self, Pid};

/// The nice value a booting generation runs at, above sockherd's own (clamped to 19).
pub const BOOT_NICE: i32 = 10;
/// The `cpu.weight` of a booting generation's cgroup (the kernel's default is 100): a busy
/// serving generation gets about 100/101 of the CPU the two compete for.
pub const BOOT_CPU_WEIGHT: u32 = 1;
/// `cpu.weight` once ready.
pub const NORMAL_CPU_WEIGHT: u32 = 100;

const MIB: u64 = 1024 * 1024;

// ----- usage -------------------------------------------------------------------------------------

/// Where a memory figure comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemorySource {
    /// The generation's cgroup: `memory.current` (and `memory.peak`).
    Cgroup,
    /// The sum of its processes' PSS (`/proc/PID/smaps_rollup`).
    Pss,
}

impl MemorySource {
    pub fn name(self) -> &'static str {
        match self {
            MemorySource::Cgroup => "cgroup",
            MemorySource::Pss => "pss",
        }
    }
}

/// What a generation uses right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    pub processes: usize,
    /// CPU time used so far (user + system), its reaped processes included.
    pub cpu: Duration,
    /// Bytes in use now.
    pub memory: u64,
    /// The most it ever used, where the kernel keeps that (`memory.peak`).
    pub memory_peak: Option<u64>,
    /// What of `memory` the kernel cannot reclaim, where its cgroup's `memory.stat` says
    /// ([`unreclaimable`]): the page cache it holds is not in it.
    pub memory_unreclaimable: Option<u64>,
    pub memory_source: MemorySource,
}

impl Usage {
    /// `3 processes, CPU 1.2 s, memory 45 MiB (PSS)`.
    pub fn describe(&self) -> String {
        let peak = self.memory_peak.map(|p| format!(", peak {} MiB", mib(p))).unwrap_or_default();
        let source = match self.memory_source {
            MemorySource::Cgroup => "memory.current",
            MemorySource::Pss => "PSS",
        };
        format!(
            "{} process{}, CPU {:.1} s, memory {} MiB ({source}){peak}",
            self.processes,
            if self.processes == 1 { "" } else { "es" },
            self.cpu.as_secs_f64(),
            mib(self.memory)
        )
    }

    /// What another generation of the same release will likely need: its peak where known,
    /// else what it uses now, without the page cache in either.
    ///
    /// A cgroup's `memory.current` and `memory.peak` count the file pages its processes read
    /// (a service that reads big files fills its `MemoryMax=` with them), which the kernel
    /// reclaims as a second generation needs room: a need made of them would refuse every
    /// reload. So the peak is scaled to the share of the memory now in use that cannot be
    /// reclaimed (anon, shmem, kernel of `memory.stat`): the kernel keeps no peak of that share
    /// alone, and this counts a boot's transient peak in the proportion the generation holds
    /// now. With PSS (no cgroup), there is no page cache in the figure to begin with.
    pub fn expected_need(&self) -> u64 {
        let peak = self.memory_peak.unwrap_or(self.memory).max(self.memory);
        match self.memory_unreclaimable {
            Some(kept) if self.memory > 0 => {
                (u128::from(peak) * u128::from(kept.min(self.memory)) / u128::from(self.memory)) as u64
            }
            Some(kept) => kept.min(peak),
            None => peak,
        }
    }

    /// `"cpu_ms":120,"memory_bytes":...` for a JSON object (the process count is the caller's).
    pub fn json_fields(&self) -> String {
        format!(
            "\"cpu_ms\":{},\"memory_bytes\":{},\"memory_peak_bytes\":{},\"memory_source\":\"{}\"",
            self.cpu.as_millis(),
            self.memory,
            self.memory_peak.map_or_else(|| "null".to_string(), |p| p.to_string()),
            self.memory_source.name()
        )
    }
}

/// The usage of a generation: from its cgroup's files where `cgroup` is given and they can be
/// read, else from /proc for `pids` (its processes).
pub fn usage(pids: &[Pid], cgroup: Option<&Path>) -> Usage {
    // Its processes in the cgroups it made under its own included.
    let cgroup_pids: Option<Vec<Pid>> = cgroup.and_then(|dir| crate::cgroup::subtree_pids(dir).ok());
    let pids: &[Pid] = cgroup_pids.as_deref().unwrap_or(pids);
    let cpu = cgroup
        .and_then(|dir| cpu_stat_usage(&std::fs::read_to_string(dir.join("cpu.stat")).ok()?))
        .unwrap_or_else(|| pids.iter().filter_map(|&pid| process_cpu(pid)).sum());
    let current = cgroup.and_then(|dir| read_u64(&dir.join("memory.current")));
    let (memory, memory_peak, memory_unreclaimable, memory_source) = match (current, cgroup) {
        (Some(current), Some(dir)) => (
            current,
            read_u64(&dir.join("memory.peak")),
            std::fs::read_to_string(dir.join("memory.stat")).ok().and_then(|stat| unreclaimable(&stat)),
            MemorySource::Cgroup,
        ),
        _ => (pids.iter().filter_map(|&pid| process_pss(pid)).sum(), None, None, MemorySource::Pss),
    };
    Usage { processes: pids.len(), cpu, memory, memory_peak, memory_unreclaimable, memory_source }
}

/// The memory of a cgroup v2 `memory.stat` that the kernel cannot reclaim: `anon` (swap
/// aside), `shmem` (counted in `file`, but no cache) and `kernel` (stacks, page tables,
/// slab...; the sum of its parts on kernels before 5.18, which have no `kernel` line). None
/// without an `anon` line.
pub fn unreclaimable(stat: &str) -> Option<u64> {
    let value = |key| stat_value(stat, key).unwrap_or(0);
    let kernel = stat_value(stat, "kernel").unwrap_or_else(|| {
        ["kernel_stack", "pagetables", "percpu", "sock", "vmalloc", "slab_reclaimable", "slab_unreclaimable"]
            .into_iter()
            .map(value)
            .sum()
    });
    Some(stat_value(stat, "anon")? + value("shmem") + kernel)
}

/// `usage_usec` of a `cpu.stat`.
pub fn cpu_stat_usage(text: &str) -> Option<Duration> {
    let usec = text.lines().find_map(|l| l.strip_prefix("usage_usec "))?.trim().parse().ok()?;
    Some(Duration::from_micros(usec))
}

/// user + system time of a process and of its children it reaped, from `/proc/PID/stat`.
fn process_cpu(pid: Pid) -> Option<Duration> {
    let ticks = stat_cpu_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
    Some(Duration::from_micros(ticks * 1_000_000 / sys::clock_ticks_per_second().max(1)))
}

/// utime + stime + cutime + cstime (fields 14-17) of a `/proc/PID/stat` line, in clock ticks.
pub fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: count after its last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let get = |i: usize| fields.get(i)?.parse::<i64>().ok();
    // fields[0] is field 3 (state): utime is field 14, so fields[11].
    let sum = get(11)? + get(12)? + get(13)?.max(0) + get(14)?.max(0);
    Some(sum.max(0) as u64)
}

/// A process's proportional set size in bytes.
fn process_pss(pid: Pid) -> Option<u64> {
    smaps_rollup_pss(&std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?)
}

/// Whether the memory controller counts for the cgroup `dir` (it has a `memory.current`).
pub fn has_memory_controller(dir: &Path) -> bool {
    read_u64(&dir.join("memory.current")).is_some()
}

/// The sum of the resident memory of `pids` (`/proc/PID/statm`): an upper bound of the sum of
/// their PSS (a page shared by n processes counts 1/n in each one's PSS and whole in each one's
/// RSS), read without walking their page tables as `smaps_rollup` does.
pub fn rss_bound(pids: &[Pid]) -> u64 {
    let page = sys::page_size();
    pids.iter()
        .filter_map(|pid| statm_resident_pages(&std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?))
        .map(|pages| pages.saturating_mul(page))
        .fold(0u64, u64::saturating_add)
}

/// The resident pages of a `/proc/PID/statm` line (its second field).
pub fn statm_resident_pages(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

/// `Pss:` of a `smaps_rollup`, in bytes.
pub fn smaps_rollup_pss(text: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| l.strip_prefix("Pss:"))?;
    let kib: u64 = line.split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

// ----- the memory budget -------------------------------------------------------------------------

/// How much memory the service can still take, and what bounds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Room {
    pub free: u64,
    /// What bounds it, for the message: "MemAvailable", "memory.max of /sys/fs/cgroup/...".
    pub bound: String,
}

/// The room left: the smallest of the host's MemAvailable and every limit on sockherd's own
/// cgroups (see the module's comment). None only if not even /proc/meminfo can be read.
pub fn room() -> Option<Room> {
    let mut candidates = Vec::new();
    if let Some(free) = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| mem_available(&t)) {
        candidates.push(Room { free, bound: "the host's MemAvailable".to_string() });
    }
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for (dir, top) in memory_cgroups(&cgroups, &mounts) {
        candidates.extend(cgroup_rooms(&dir, &top));
    }
    candidates.into_iter().min_by_key(|r| r.free)
}

/// `MemAvailable:` of /proc/meminfo, in bytes.
pub fn mem_available(meminfo: &str) -> Option<u64> {
    let kib: u64 =
        meminfo.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?.split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// sockherd's own cgroup directory in each hierarchy that can hold a memory limit (cgroup v2,
/// and the v1 `memory` controller), with the top of that hierarchy as mounted here.
pub fn memory_cgroups(proc_self_cgroup: &str, mountinfo: &str) -> Vec<(PathBuf, PathBuf)> {
    let mut out = Vec::new();
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let v2 = controllers.is_empty();
        if !v2 && !controllers.split(',').any(|c| c == "memory") {
            continue;
        }
        let mount = mountinfo.lines().find_map(|m| {
            let (left, right) = m.split_once(" - ")?;
            let fields: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let fstype = *right.first()?;
            let matches = if v2 {
                fstype == "cgroup2"
            } else {
                fstype == "cgroup" && right.get(2)?.split(',').any(|o| o == "memory")
            };
            let (root, mountpoint) = (*fields.get(3)?, *fields.get(4)?);
            matches.then_some((root, mountpoint))
        });
        let Some((root, mountpoint)) = mount else { continue };
        // Path components, not characters: /box is no part of /boxes. A cgroup outside the
        // mount's root has no directory under it.
        let Ok(relative) = Path::new(path).strip_prefix(root) else { continue };
        let top = PathBuf::from(mountpoint);
        let dir = if relative.as_os_str().is_empty() { top.clone() } else { top.join(relative) };
        out.push((dir, top));
    }
    out
}

/// The room every cgroup from `dir` up to `top` leaves (its limits minus its usage).
pub fn cgroup_rooms(dir: &Path, top: &Path) -> Vec<Room> {
    let mut out = Vec::new();
    let mut current = Some(dir);
    while let Some(dir) = current {
        if !dir.starts_with(top) {
            break;
        }
        let stat = std::fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
        // cgroup v2
        if let Some(used) = read_u64(&dir.join("memory.current")) {
            let used = used.saturating_sub(stat_value(&stat, "inactive_file").unwrap_or(0));
            for file in ["memory.max", "memory.high"] {
                if let Some(limit) = read_limit(&dir.join(file)) {
                    out.push(Room { free: limit.saturating_sub(used), bound: bound(file, dir, limit, used) });
                }
            }
        }
        // cgroup v1 (the memory controller)
        if let (Some(limit), Some(used)) =
            (read_limit(&dir.join("memory.limit_in_bytes")), read_u64(&dir.join("memory.usage_in_bytes")))
        {
            let used = used.saturating_sub(stat_value(&stat, "total_inactive_file").unwrap_or(0));
            let file = "memory.limit_in_bytes";
            out.push(Room { free: limit.saturating_sub(used), bound: bound(file, dir, limit, used) });
        }
        if dir == top {
            break;
        }
        current = dir.parent();
    }
    out
}

fn bound(file: &str, dir: &Path, limit: u64, used: u64) -> String {
    format!("{file} of {}: {} MiB, {} MiB in use", dir.display(), mib(limit), mib(used))
}

/// A limit file's value; None for "max" and v1's "unlimited" (a page-rounded i64::MAX).
fn read_limit(path: &Path) -> Option<u64> {
    let value = read_u64(path)?;
    (value < 1 << 62).then_some(value)
}

fn stat_value(stat: &str, key: &str) -> Option<u64> {
    stat.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Whole MiB, rounded up (a need is never shown smaller than it is).
pub fn mib(bytes: u64) -> u64 {
    bytes.div_ceil(MIB)
}

/// Whether `need` bytes fit into `room`; else the refusal, with the numbers.
pub fn check_budget(need: u64, what: &str, room: &Room) -> Result<(), String> {
    if need <= room.free {
        return Ok(());
    }
    Err(format!(
        "not enough memory to run a second generation beside the serving one: needs ≈ {} MiB ({what}), \
         {} MiB free ({}); --memory-check off skips this check",
        mib(need),
        room.free / MIB,
        room.bound
    ))
}

// ----- boot priority -----------------------------------------------------------------------------

/// Sets a cgroup's `cpu.weight` (cgroup v2 with the cpu controller delegated): how a booting
/// generation's cgroup is lowered ([`BOOT_CPU_WEIGHT`]) and restored ([`NORMAL_CPU_WEIGHT`]) as
/// a whole, every process and thread in it included.
pub fn set_cpu_weight(cgroup: &Path, weight: u32) -> io::Result<()> {
    std::fs::write(cgroup.join("cpu.weight"), format!("{weight}\n"))
}

/// The nice value a booting generation gets when sockherd runs at `own`.
pub fn boot_nice(own: i32) -> i32 {
    (own + BOOT_NICE).min(19)
}

/// Whether sockherd may set a process back from its boot nice value to `own`: lowering a nice
/// value takes CAP_SYS_NICE, or an RLIMIT_NICE that allows it (systemd's `LimitNICE=`). The
/// soft limit is raised to the hard one for that, as an unprivileged process may.
pub fn can_restore_nice(own: i32) -> bool {
    if sys::geteuid() == 0 || has_cap_sys_nice() {
        return true;
    }
    // RLIMIT_NICE r allows nice values down to 20 - r.
    let needed = (20 - own).max(1) as u64;
    match sys::nice_rlimit() {
        Ok((soft, _)) if soft >= needed => true,
        Ok((_, hard)) if hard >= needed => sys::set_nice_rlimit(hard).is_ok(),
        _ => false,
    }
}

fn has_cap_sys_nice() -> bool {
    const CAP_SYS_NICE: u32 = 23;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return false };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_NICE) != 0)
}

/// What setting a generation back to normal priority did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Restored {
    pub threads: usize,
    /// The first failure, if any (a thread that exited meanwhile is no failure).
    pub error: Option<String>,
}

/// Sets every thread of every process in `pids` back from the boot priority `boot` to the nice
/// value `nice` and the normal policy (SCHED_OTHER), undoing a boot priority (nice and policy
/// are per thread on Linux, and a thread inherits them from the one that created it). Only what
/// is still at its boot value is set back: a nice value or policy the app chose itself since
/// (a worker that lowered its own priority) is its own. With `boot.nice` None, the nice value
/// was never changed and is not touched.
pub fn restore_priority(pids: &[Pid], nice: i32, boot: sys::BootPriority) -> Restored {
    let mut restored = Restored::default();
    for &pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { continue };
        for task in tasks.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse::<Pid>().ok()) else { continue };
            // A thread that exited meanwhile has no stat any more, and nothing to set back.
            let Some((now_nice, policy)) =
                std::fs::read_to_string(task.path().join("stat")).ok().and_then(|stat| stat_priority(&stat))
            else {
                continue;
            };
            let set_nice = boot.nice == Some(now_nice) && now_nice != nice;
            let set_policy = boot.batch && policy == libc::SCHED_BATCH as u32;
            if !set_nice && !set_policy {
                continue;
            }
            let result = (if set_nice { sys::set_thread_nice(tid, nice) } else { Ok(()) })
                .and_then(|()| if set_policy { sys::set_thread_normal_policy(tid) } else { Ok(()) });
            match result {
                Ok(()) => restored.threads += 1,
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => {
                    restored.error.get_or_insert_with(|| format!("thread {tid} of pid {pid}: {e}"));
                }
            }
        }
    }
    restored
}

/// A thread's nice value and scheduling policy, from `/proc/PID/task/TID/stat` (fields 19 and
/// 41): what `status` and the tests read back.
pub fn stat_priority(stat: &str) -> Option<(i32, u32)> {
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some((fields.get(16)?.parse().ok()?, fields.get(38)?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statm_gives_the_resident_pages() {
        assert_eq!(statm_resident_pages("10711 2573 1904 222 0 1193 0\n"), Some(2573));
        assert_eq!(statm_resident_pages("10711"), None);
        assert_eq!(statm_resident_pages(""), None);
    }

    #[test]
    fn the_rss_bound_holds_at_least_the_pss() {
        let me = std::process::id() as Pid;
        let pss = process_pss(me).expect("own smaps_rollup");
        let bound = rss_bound(&[me, me]);
        assert!(bound >= 2 * pss && pss > 0, "RSS bound {bound} against PSS {pss} twice");
        assert_eq!(rss_bound(&[]), 0);
    }

    fn tree(files: &[(&str, &str)]) -> PathBuf {
        let mut bytes = [0u8; 8];
        sys::random_bytes(&mut bytes).unwrap();
        let root = std::env::temp_dir().join(format!("sockherd-resources-{}", u64::from_ne_bytes(bytes)));
        for (path, text) in files {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        root
    }

    #[test]
    fn a_generation_cgroup_is_read_from_its_files() {
        let root = tree(&[
            ("gen-2/cgroup.procs", "101\n102\n"),
            ("gen-2/workers/cgroup.procs", "103\n"),
            ("gen-2/cpu.stat", "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n"),
            ("gen-2/memory.current", "73400320\n"),
            ("gen-2/memory.peak", "104857600\n"),
        ]);
        let usage = usage(&[1], Some(&root.join("gen-2")));
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(
            usage,
            Usage {
                processes: 3,
                cpu: Duration::from_millis(1500),
                memory: 73_400_320,
                memory_peak: Some(104_857_600),
                memory_unreclaimable: None,
                memory_source: MemorySource::Cgroup
            }
        );
        assert_eq!(usage.expected_need(), 104_857_600);
    }

    /// A generation whose page cache filled its cgroup (it read a big file): memory.current and
    /// memory.peak are mostly cache the kernel would reclaim for a second copy, which needs only
    /// what cannot be reclaimed (anon, shmem, kernel), at the peak's scale.
    #[test]
    fn page_cache_is_no_need() {
        let root = tree(&[
            ("gen-2/cgroup.procs", "101\n"),
            ("gen-2/memory.current", "209715200\n"),
            ("gen-2/memory.peak", "262144000\n"),
            (
                "gen-2/memory.stat",
                "anon 31457280\nfile 173015040\nkernel 5242880\nkernel_stack 65536\nshmem 5242880\n\
                 active_file 20971520\ninactive_file 146800640\nslab 2097152\n",
            ),
            // A kernel before 5.18: no `kernel` line, its parts instead.
            ("gen-3/memory.current", "104857600\n"),
            (
                "gen-3/memory.stat",
                "anon 10485760\nfile 89128960\nkernel_stack 1048576\npagetables 1048576\npercpu 0\nsock 0\n\
                 shmem 0\nslab_reclaimable 2097152\nslab_unreclaimable 1048576\n",
            ),
        ]);
        let with_peak = usage(&[1], Some(&root.join("gen-2")));
        let without_peak = usage(&[1], Some(&root.join("gen-3")));
        std::fs::remove_dir_all(&root).unwrap();
        // (30 + 5 + 5) MiB of 200 MiB now: a fifth of the 250 MiB peak.
        assert_eq!(with_peak.expected_need(), 50 * MIB);
        // 10 MiB anon + 5 MiB kernel memory, no peak known.
        assert_eq!(without_peak.expected_need(), 15 * MIB);
    }

    #[test]
    fn what_cannot_be_reclaimed_is_read_from_memory_stat() {
        let with_peak = Usage {
            processes: 1,
            cpu: Duration::ZERO,
            memory: 200 * MIB,
            memory_peak: Some(250 * MIB),
            memory_unreclaimable: Some(40 * MIB),
            memory_source: MemorySource::Cgroup,
        };
        assert_eq!(with_peak.expected_need(), 50 * MIB);
        // Without memory.stat, the peak as it is (nothing known to be reclaimable).
        let plain = Usage { memory_unreclaimable: None, ..with_peak.clone() };
        assert_eq!(plain.expected_need(), 250 * MIB);
        // Never more than the peak, whatever the stat says.
        let odd = Usage { memory_unreclaimable: Some(400 * MIB), ..with_peak.clone() };
        assert_eq!(odd.expected_need(), 250 * MIB);
        // Nothing in use now (no share to scale by): what cannot be reclaimed, within the peak.
        let empty = Usage { memory: 0, memory_unreclaimable: Some(4 * MIB), ..with_peak };
        assert_eq!(empty.expected_need(), 4 * MIB);
        assert_eq!(unreclaimable("anon 7\nshmem 3\nkernel 1\nfile 1000\n"), Some(11));
        assert_eq!(unreclaimable("file 1000\n"), None);
    }

    #[test]
    fn without_the_memory_controller_the_processes_pss_is_summed() {
        // A cgroup with cgroup.procs but no memory or cpu files (controllers not delegated):
        // /proc of the pids it lists.
        let me = sys::getpid();
        let root = tree(&[("gen-1/cgroup.procs", &format!("{me}\n"))]);
        let usage = usage(&[], Some(&root.join("gen-1")));
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!((usage.processes, usage.memory_source, usage.memory_peak), (1, MemorySource::Pss, None));
        assert!(usage.memory > 1024 * 1024, "{usage:?}");
        assert!(usage.cpu > Duration::ZERO || usage.memory > 0);
        // And with no cgroup at all.
        let plain = super::usage(&[me, me], None);
        assert_eq!(plain.processes, 2);
        assert!(plain.memory >= 2 * 1024 * 1024);
    }

    #[test]
    fn proc_files_parse() {
        let stat = "77 (a (b) c) S 1 77 77 0 -1 4194560 1 0 0 0 300 40 7 3 20 10 3 0 987654 0 0";
        assert_eq!(stat_cpu_ticks(stat), Some(350));
        assert_eq!(smaps_rollup_pss("55d0-7ff [rollup]\nRss:  2048 kB\nPss:  1500 kB\n"), Some(1_536_000));
        assert_eq!(mem_available("MemTotal: 100 kB\nMemAvailable:  2048 kB\n"), Some(2 * 1024 * 1024));
        assert_eq!(cpu_stat_usage("usage_usec 42\n"), Some(Duration::from_micros(42)));
        let task = "77 (ruby) S 1 77 77 0 -1 4194560 1 0 0 0 300 40 7 3 30 10 3 0 987654 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 3 0";
        assert_eq!(stat_priority(task), Some((10, 3)));
    }

    #[test]
    fn the_tightest_limit_on_the_way_up_bounds_the_room() {
        // A unit with MemoryMax=300M under a slice with MemoryHigh=1G, sockherd in a leaf.
        let root = tree(&[
            ("app.slice/memory.current", "900000000\n"),
            ("app.slice/memory.max", "max\n"),
            ("app.slice/memory.high", "1073741824\n"),
            ("app.slice/memory.stat", "anon 1\ninactive_file 100000000\n"),
            ("app.slice/app.service/memory.current", "209715200\n"),
            ("app.slice/app.service/memory.max", "314572800\n"),
            ("app.slice/app.service/memory.high", "max\n"),
            ("app.slice/app.service/memory.stat", "inactive_file 10485760\n"),
            ("app.slice/app.service/supervisor/memory.current", "1000\n"),
            ("app.slice/app.service/supervisor/memory.max", "max\n"),
        ]);
        let rooms = cgroup_rooms(&root.join("app.slice/app.service/supervisor"), &root);
        std::fs::remove_dir_all(&root).unwrap();
        let frees: Vec<u64> = rooms.iter().map(|r| r.free).collect();
        // 300 MiB - (200 - 10) MiB; 1 GiB - (900 MB - 100 MB).
        assert_eq!(frees, vec![314_572_800 - 209_715_200 + 10_485_760, 1_073_741_824 - 800_000_000]);
        assert!(
            rooms[0].bound.starts_with("memory.max of ")
                && rooms[0].bound.ends_with("app.service: 300 MiB, 190 MiB in use")
        );
    }

    #[test]
    fn a_v1_memory_limit_counts_and_unlimited_does_not() {
        let root = tree(&[
            ("system.slice/app.service/memory.limit_in_bytes", "209715200\n"),
            ("system.slice/app.service/memory.usage_in_bytes", "157286400\n"),
            ("system.slice/app.service/memory.stat", "cache 1\ntotal_inactive_file 52428800\n"),
            ("system.slice/memory.limit_in_bytes", "9223372036854771712\n"),
            ("system.slice/memory.usage_in_bytes", "1\n"),
        ]);
        let rooms = cgroup_rooms(&root.join("system.slice/app.service"), &root);
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(rooms.len(), 1);
        assert_eq!(rooms[0].free, 200 * MIB - 100 * MIB);
    }

    #[test]
    fn own_cgroups_are_found_through_the_mounts() {
        let cgroup = "12:memory:/system.slice/app.service\n4:cpu,cpuacct:/system.slice/app.service\n0::/system.slice/app.service/supervisor\n";
        let mountinfo = "\
30 24 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n\
35 24 0:31 / /sys/fs/cgroup/memory rw,nosuid shared:15 - cgroup cgroup rw,memory\n\
36 24 0:32 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n";
        assert_eq!(
            memory_cgroups(cgroup, mountinfo),
            vec![
                (
                    PathBuf::from("/sys/fs/cgroup/memory/system.slice/app.service"),
                    PathBuf::from("/sys/fs/cgroup/memory")
                ),
                (
                    PathBuf::from("/sys/fs/cgroup/unified/system.slice/app.service/supervisor"),
                    PathBuf::from("/sys/fs/cgroup/unified")
                ),
            ]
        );
        // A cgroup namespace: the mount's root is a subtree.
        let mountinfo = "40 1 0:26 /box /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            memory_cgroups("0::/box/app.service\n", mountinfo),
            vec![(PathBuf::from("/sys/fs/cgroup/app.service"), PathBuf::from("/sys/fs/cgroup"))]
        );
        assert_eq!(
            memory_cgroups("0::/box\n", mountinfo),
            vec![(PathBuf::from("/sys/fs/cgroup"), PathBuf::from("/sys/fs/cgroup"))]
        );
        // /box is no part of /boxes: a cgroup outside the mount's root cannot be seen through it.
        assert_eq!(memory_cgroups("0::/boxes/app.service\n", mountinfo), vec![]);
    }

    #[test]
    fn the_budget_refuses_with_the_numbers() {
        let room = Room { free: 12 * MIB + 5, bound: "the host's MemAvailable".to_string() };
        assert_eq!(check_budget(12 * MIB, "x", &room), Ok(()));
        let refusal = check_budget(45 * MIB + 1, "generation 1's PSS", &room).unwrap_err();
        assert!(
            refusal.contains("needs ≈ 46 MiB (generation 1's PSS), 12 MiB free (the host's MemAvailable)"),
            "{refusal}"
        );
        assert!(refusal.contains("--memory-check off"));
    }

    /// A process at the boot nice value that chose SCHED_BATCH itself (the boot priority did
    /// not set it): its nice value is set back, its policy stays.
    #[test]
    fn only_what_the_boot_priority_set_is_set_back() {
        let own = sys::own_nice();
        if !can_restore_nice(own) || !Path::new("/usr/bin/chrt").exists() {
            eprintln!("skipped: needs CAP_SYS_NICE (or LimitNICE=) and chrt");
            return;
        }
        let boot = boot_nice(own);
        let mut child = std::process::Command::new("chrt")
            .args(["-b", "0", "nice", "-n", &(boot - own).to_string(), "sleep", "30"])
            .spawn()
            .expect("chrt");
        let pid = child.id() as Pid;
        let read = || std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|stat| stat_priority(&stat));
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while read() != Some((boot, libc::SCHED_BATCH as u32))
            || !std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep"))
        {
            assert!(std::time::Instant::now() < until, "sleep did not start: {:?}", read());
            std::thread::sleep(Duration::from_millis(10));
        }
        let restored = restore_priority(&[pid], own, sys::BootPriority { nice: Some(boot), batch: false });
        let after = read();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!((restored.threads, restored.error), (1, None));
        assert_eq!(after, Some((own, libc::SCHED_BATCH as u32)));
    }

    #[test]
    fn cpu_weight_is_written_into_the_cgroup() {
        let root = tree(&[("gen-3/cpu.weight", "100\n")]);
        set_cpu_weight(&root.join("gen-3"), BOOT_CPU_WEIGHT).unwrap();
        let lowered = std::fs::read_to_string(root.join("gen-3/cpu.weight")).unwrap();
        set_cpu_weight(&root.join("gen-3"), NORMAL_CPU_WEIGHT).unwrap();
        let restored = std::fs::read_to_string(root.join("gen-3/cpu.weight")).unwrap();
        let missing = set_cpu_weight(&root.join("gen-4"), BOOT_CPU_WEIGHT);
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!((lowered.as_str(), restored.as_str()), ("1\n", "100\n"));
        assert!(missing.is_err());
        assert_eq!((boot_nice(0), boot_nice(15), boot_nice(-5)), (10, 19, 5));
    }
}
