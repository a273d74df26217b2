//! What `/proc` says about a process: its state and groups (`/proc/PID/stat`), the sockets it
//! holds (`/proc/PID/fd`) and where they are bound (`/proc/PID/net/unix`).
//!
//! The parsers are pure functions over the files' text, so they can be fuzzed: `/proc` shows
//! names other users chose (a process's `comm`, a socket's path), and a path may contain a
//! newline that forges a line of `/proc/net/unix`. Callers treat what these return as
//! candidates to verify, never as proof.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use crate::sys::Pid;

/// The fields of `/proc/PID/stat` sockherd uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub pid: Pid,
    /// `R`, `S`, `D`, `Z` (exited, not reaped yet), `X`, ...
    pub state: char,
    pub ppid: Pid,
    pub pgid: Pid,
    /// Clock ticks after boot at which the process started: with the pid, it names one process.
    pub start_time: u64,
}

impl Stat {
    /// Whether the process has exited (a zombie waiting for its parent counts as exited).
    pub fn exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses `/proc/PID/stat`: `pid (comm) state ppid pgrp session ...`. `comm` may hold spaces
/// and parentheses (the process chose it), so the fields start after the *last* `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let (head, rest) = text.rsplit_once(')')?;
    let pid = head.split_once(" (")?.0.trim().parse().ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?;
    let mut chars = state.chars();
    let state = chars.next()?;
    if chars.next().is_some() {
        return None;
    }
    let ppid = fields.next()?.parse().ok()?;
    let pgid = fields.next()?.parse().ok()?;
    // Fields 6..=22 (session .. starttime): starttime is the 20th after the state.
    let start_time = fields.nth(16)?.parse().ok()?;
    Some(Stat { pid, state, ppid, pgid, start_time })
}

/// `/proc/PID/stat` of a live or zombie process; None once it is gone.
pub fn stat(pid: Pid) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text).filter(|s| s.pid == pid)
}

/// Whether `pid` descends from `ancestor` (its parent, its parent's parent, ...), as far as
/// `/proc` shows right now.
pub fn descends_from(pid: Pid, ancestor: Pid) -> bool {
    let mut current = pid;
    // A chain longer than this is a loop in what we read (pids reused while walking).
    for _ in 0..64 {
        let Some(stat) = stat(current) else { return false };
        if stat.ppid == ancestor {
            return true;
        }
        if stat.ppid <= 1 {
            return false;
        }
        current = stat.ppid;
    }
    false
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
    fn stat_with_a_hostile_comm() {
        let text = "4242 (a) b) Z (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10 \n";
        let stat = parse_stat(text).unwrap();
        assert_eq!(stat, Stat { pid: 4242, state: 'S', ppid: 1, pgid: 4242, start_time: 98765 });
        assert!(parse_stat("12 (x) S 1").is_none());
        assert!(parse_stat("").is_none());
        assert!(parse_stat("1 (init) Z 0 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 7 0 0").unwrap().exited());
    }

    #[test]
    fn net_unix_lines() {
        let text = b"Num       RefCount Protocol Flags    Type St Inode Path\n\
0000000000000000: 00000002 00000000 00010000 0001 01 31337 /run/app/sockherd.1.ab/control\n\
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
                path: Some("/run/app/sockherd.1.ab/control".into())
            }
        );
        assert!(!sockets[1].listening && !sockets[1].stream);
        assert_eq!(sockets[2].path, None);
        assert_eq!(sockets[3].path, None);
        assert_eq!(parse_socket_link(b"socket:[31337]"), Some(31337));
        assert_eq!(parse_socket_link(b"pipe:[1]"), None);
    }
}
