//! What /proc says of other processes: parent, process group, session, start time, title,
//! program. Native upgrade mode reads it to follow a server's own upgrade; nothing here changes
//! anything, and a process that vanished mid-read is simply absent.

use std::path::{Path, PathBuf};

use crate::sys::Pid;

/// A living process (zombies are left out: they no longer run anything).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    pub pid: Pid,
    pub ppid: Pid,
    pub pgid: Pid,
    pub sid: Pid,
    /// When it was forked, in clock ticks after boot: with the pid, it names one process for
    /// good (a pid is reused, a (pid, start) pair is not). An exec does not change it.
    pub start: u64,
}

/// Parses /proc/PID/stat. The command name (field 2) may hold spaces and parentheses: the
/// fields that follow start after its last ')'.
fn parse_stat(pid: Pid, stat: &str) -> Option<Process> {
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    if fields.len() < 20 || fields[0] == "Z" || fields[0] == "X" {
        return None;
    }
    Some(Process {
        pid,
        ppid: fields[1].parse().ok()?,
        pgid: fields[2].parse().ok()?,
        sid: fields[3].parse().ok()?,
        start: fields[19].parse().ok()?,
    })
}

/// The process `pid`, if it lives.
pub fn process(pid: Pid) -> Option<Process> {
    parse_stat(pid, &std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Every living process.
pub fn all() -> Vec<Process> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<Pid>().ok()))
        .filter_map(process)
        .collect()
}

/// The living children of `pid`. Read from /proc/PID/task/*/children (each thread lists the
/// children it forked) when the kernel has it, each checked against its own stat; otherwise by
/// a scan of every process. Either way a child that comes or goes during the read may be
/// missed: callers look again.
pub fn children(pid: Pid) -> Vec<Process> {
    match children_listed(pid) {
        Some(pids) => pids.into_iter().filter_map(process).filter(|p| p.ppid == pid).collect(),
        None => all().into_iter().filter(|p| p.ppid == pid).collect(),
    }
}

/// The pids in /proc/PID/task/*/children (CONFIG_PROC_CHILDREN), or None without that file.
fn children_listed(pid: Pid) -> Option<Vec<Pid>> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut pids = Vec::new();
    let mut listed = false;
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            listed = true;
            pids.extend(text.split_whitespace().filter_map(|p| p.parse::<Pid>().ok()));
        }
    }
    pids.sort_unstable();
    pids.dedup();
    listed.then_some(pids)
}

/// The process title: its argv joined by spaces, which unicorn and nginx rewrite ("unicorn
/// master", "nginx: worker process").
pub fn title(pid: Pid) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&raw).split('\0').filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" "))
}

/// The program a process runs (/proc/PID/exe), as a path. A program replaced on disk since it
/// was started (nginx's binary upgrade) reads "PATH (deleted)": that suffix is dropped, so an
/// old and a new master of the same installed program compare equal.
pub fn exe(pid: Pid) -> Option<PathBuf> {
    let target = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    Some(strip_deleted(&target))
}

fn strip_deleted(path: &Path) -> PathBuf {
    let text = path.to_string_lossy();
    PathBuf::from(text.strip_suffix(" (deleted)").unwrap_or(&text).to_string())
}

/// The file behind /proc/PID/exe as (device, inode), which stays right when the path was
/// replaced or deleted since.
pub fn exe_file(pid: Pid) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(format!("/proc/{pid}/exe")).ok()?;
    Some((meta.dev(), meta.ino()))
}

/// Clock ticks since boot now, on the scale of [`Process::start`].
pub fn uptime_ticks() -> Option<u64> {
    let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
    let seconds: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    Some((seconds * crate::sys::clock_ticks_per_second() as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_command_name_with_parentheses_and_spaces() {
        let stat = "4242 (unicorn master (old) x) S 17 4240 4200 0 -1 4194560 1 0 0 0 3 4 0 0 20 0 3 0 987654 0 0";
        let p = parse_stat(4242, stat).unwrap();
        assert_eq!((p.ppid, p.pgid, p.sid, p.start), (17, 4240, 4200, 987654));
    }

    #[test]
    fn zombies_are_not_living_processes() {
        let stat = "7 (ruby) Z 1 7 7 0 -1 4194560 1 0 0 0 3 4 0 0 20 0 1 0 55 0 0";
        assert_eq!(parse_stat(7, stat), None);
    }

    #[test]
    fn a_replaced_program_is_the_same_program() {
        assert_eq!(strip_deleted(Path::new("/usr/sbin/nginx (deleted)")), PathBuf::from("/usr/sbin/nginx"));
        assert_eq!(strip_deleted(Path::new("/usr/bin/ruby3.1")), PathBuf::from("/usr/bin/ruby3.1"));
    }

    #[test]
    fn children_are_found() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id() as Pid;
        let found = children(crate::sys::getpid()).iter().any(|c| c.pid == pid);
        let scanned = all().iter().any(|c| c.pid == pid && c.ppid == crate::sys::getpid());
        let _ = child.kill();
        let _ = child.wait();
        assert!(found && scanned);
    }

    #[test]
    fn our_own_process_reads_back() {
        let me = process(crate::sys::getpid()).unwrap();
        assert!(me.start > 0 && me.start <= uptime_ticks().unwrap() + 1);
        assert_eq!(exe_file(me.pid), exe_file(me.pid));
        assert!(exe(me.pid).is_some());
    }
}
