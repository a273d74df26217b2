//! What /proc says of other processes: parent, process group, session, start time, title,
//! program, the sockets they hold (`/proc/PID/fd`) and where those are bound
//! (`/proc/PID/net/unix`). Native upgrade mode reads it to follow a server's own upgrade, the
//! notify proxy to check who sent a datagram, the control client to find a supervisor's socket;
//! nothing here changes anything, and a process that vanished mid-read is simply absent.
//!
//! The parsers are pure functions over the files' text, fuzzed (tests/fuzz): /proc shows text
//! other users chose (a process's comm, a socket's path, with newlines that forge lines of
//! `/proc/net/unix`). Callers treat what they return as candidates to verify, never as proof.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
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

/// Parses /proc/PID/stat of a living process (None for a zombie, or what does not parse). The
/// command name (field 2) may hold spaces and parentheses: the fields that follow start after
/// its last ')'.
pub fn parse_stat(pid: Pid, stat: &str) -> Option<Process> {
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

/// Whether `pid` descends from `ancestor` (its parent, its parent's parent, ...), as far as
/// /proc shows right now.
pub fn descends_from(pid: Pid, ancestor: Pid) -> bool {
    let mut current = pid;
    // A chain longer than this is a loop in what we read (pids reused while walking).
    for _ in 0..64 {
        let Some(process) = process(current) else { return false };
        if process.ppid == ancestor {
            return true;
        }
        if process.ppid <= 1 {
            return false;
        }
        current = process.ppid;
    }
    false
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

/// When a process started, on the wall clock (boot time from /proc/stat plus its start ticks):
/// good to about a second.
pub fn started_at(process: &Process) -> Option<std::time::SystemTime> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let boot: u64 = stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()?;
    let ticks = crate::sys::clock_ticks_per_second();
    let since_boot = std::time::Duration::from_millis(process.start * 1000 / ticks.max(1));
    Some(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(boot) + since_boot)
}

/// Clock ticks since boot now, on the scale of [`Process::start`].
pub fn uptime_ticks() -> Option<u64> {
    let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
    let seconds: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    Some((seconds * crate::sys::clock_ticks_per_second() as f64) as u64)
}

/// One line of `/proc/net/unix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixSocket {
    pub inode: u64,
    /// `listen()` was called on it (`__SO_ACCEPTCON` in the flags).
    pub listening: bool,
    /// SOCK_STREAM.
    pub stream: bool,
    /// The path it is bound to; None for unnamed and abstract sockets.
    pub path: Option<PathBuf>,
}

/// Parses `/proc/net/unix` (as `/proc/PID/net/unix` shows it for that process's network
/// namespace): `Num RefCount Protocol Flags Type St Inode Path`. A path is printed raw, so a
/// socket bound to a name with a newline can add lines that look like other sockets: lines
/// that do not parse are skipped, and the same inode may appear more than once.
pub fn parse_net_unix(text: &[u8]) -> Vec<UnixSocket> {
    const SO_ACCEPTCON: u32 = 1 << 16;
    let mut out = Vec::new();
    for line in text.split(|&b| b == b'\n').skip(1) {
        let mut rest = line;
        let mut fields: Vec<&[u8]> = Vec::with_capacity(7);
        while fields.len() < 7 {
            let start = rest.iter().position(|&b| b != b' ').unwrap_or(rest.len());
            rest = &rest[start..];
            let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
            if end == 0 {
                break;
            }
            fields.push(&rest[..end]);
            rest = &rest[end..];
        }
        if fields.len() < 7 || !fields[0].ends_with(b":") {
            continue;
        }
        let hex = |f: &[u8]| std::str::from_utf8(f).ok().and_then(|s| u32::from_str_radix(s, 16).ok());
        let (Some(flags), Some(kind)) = (hex(fields[3]), hex(fields[4])) else { continue };
        let Some(inode) = std::str::from_utf8(fields[6]).ok().and_then(|s| s.parse::<u64>().ok()) else { continue };
        let path = rest.strip_prefix(b" ").filter(|p| p.first() == Some(&b'/'));
        out.push(UnixSocket {
            inode,
            listening: flags & SO_ACCEPTCON != 0,
            stream: kind == libc::SOCK_STREAM as u32,
            path: path.map(|p| PathBuf::from(OsString::from_vec(p.to_vec()))),
        });
    }
    out
}

/// `socket:[12345]` (the target of a `/proc/PID/fd/N` link to a socket) → 12345.
pub fn parse_socket_link(target: &[u8]) -> Option<u64> {
    let inner = target.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(inner).ok()?.parse().ok()
}

/// Inodes of the sockets `pid` holds open, from `/proc/PID/fd`.
pub fn socket_inodes(pid: Pid) -> std::io::Result<Vec<u64>> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(entry) = entry else { continue };
        if let Ok(target) = std::fs::read_link(entry.path())
            && let Some(inode) = parse_socket_link(target.as_os_str().as_bytes())
        {
            out.push(inode);
        }
    }
    Ok(out)
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

    #[test]
    fn net_unix_lines() {
        let text = b"Num       RefCount Protocol Flags    Type St Inode Path\n\
0000000000000000: 00000002 00000000 00010000 0001 01 31337 /run/app/sockherd-1-ab/control\n\
0000000000000000: 00000002 00000000 00000000 0002 01 4711 /run/x\n\
0000000000000000: 00000003 00000000 00000000 0001 03 555\n\
0000000000000000: 00000002 00000000 00010000 0001 01 777 @abstract\n\
garbage line\n";
        let sockets = parse_net_unix(text);
        assert_eq!(sockets.len(), 4);
        assert_eq!(
            sockets[0],
            UnixSocket {
                inode: 31337,
                listening: true,
                stream: true,
                path: Some("/run/app/sockherd-1-ab/control".into())
            }
        );
        assert!(!sockets[1].listening && !sockets[1].stream);
        assert_eq!(sockets[2].path, None);
        assert_eq!(sockets[3].path, None);
        assert_eq!(parse_socket_link(b"socket:[31337]"), Some(31337));
        assert_eq!(parse_socket_link(b"pipe:[1]"), None);
    }
}
