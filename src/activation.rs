//! Sockets in: receiving listening sockets from systemd socket activation, exactly as
//! sd_listen_fds(3) defines it.
//!
//! `LISTEN_PID` must be our pid (otherwise the variables were meant for another process and are
//! ignored), and so must `LISTEN_PIDFDID` when set (systemd >= 259: our pidfd inode id, which
//! tells us from a process that reused the pid; not compared where the kernel has no such ids,
//! as sd_listen_fds does). `LISTEN_FDS` counts descriptors from 3, and `LISTEN_FDNAMES` names
//! them (default "unknown"). `LISTEN_FDS_FIRST_FD` (systemfd's, read by listenfd) is not part of
//! the protocol and is ignored, as libsystemd ignores it. Unlike sd_listen_fds we never unset the
//! variables: our own environment is never mutated; children get a fresh set built by their
//! flavor.

use std::os::fd::AsFd;

use anyhow::{Context, Result, bail};

use crate::fdstore;
use crate::protocol::{LISTEN_FDNAMES, LISTEN_FDS, LISTEN_FDS_START, LISTEN_PID, LISTEN_PIDFDID, UNKNOWN_FDNAME};
use crate::socket::{Origin, Socket};
use crate::sys;

/// What the activation variables say, before any descriptor is looked at.
#[derive(Debug, PartialEq, Eq)]
pub enum Activation {
    /// No activation variables, or LISTEN_PID or LISTEN_PIDFDID names another process.
    None { reason: String },
    /// `names.len()` descriptors from fd 3.
    Fds { names: Vec<String> },
}

/// Parses the activation variables. `get` looks a variable up (our environment in production);
/// `our_pidfd_id` is our pidfd inode id, None where the kernel has none.
pub fn parse(
    get: impl Fn(&str) -> Option<std::ffi::OsString>,
    our_pid: i32,
    our_pidfd_id: Option<u64>,
) -> Result<Activation> {
    let text = |name: &str| -> Result<Option<String>> {
        match get(name) {
            None => Ok(None),
            Some(value) => match value.into_string() {
                Ok(s) => Ok(Some(s)),
                Err(raw) => bail!("invalid {name}={raw:?}: not valid UTF-8"),
            },
        }
    };
    let Some(pid) = text(LISTEN_PID)? else {
        let reason = match text(LISTEN_FDS)? {
            Some(fds) => format!("{LISTEN_FDS}={fds} is set but {LISTEN_PID} is not"),
            None => format!("{LISTEN_FDS} is not set"),
        };
        return Ok(Activation::None { reason });
    };
    let pid: i32 = pid
        .trim()
        .parse()
        .ok()
        .filter(|p: &i32| *p > 0)
        .with_context(|| format!("invalid {LISTEN_PID}='{pid}': expected a process id"))?;
    if pid != our_pid {
        return Ok(Activation::None {
            reason: format!("{LISTEN_PID}={pid} names another process (we are {our_pid}), so the sockets are not ours"),
        });
    }
    if let Some(id) = text(LISTEN_PIDFDID)? {
        let id: u64 = id
            .trim()
            .parse()
            .ok()
            .with_context(|| format!("invalid {LISTEN_PIDFDID}='{id}': expected a pidfd inode id"))?;
        if let Some(ours) = our_pidfd_id
            && ours != id
        {
            return Ok(Activation::None {
                reason: format!(
                    "{LISTEN_PIDFDID}={id} names another process than ours ({ours}, pid {our_pid}), so the sockets are not ours"
                ),
            });
        }
    }
    let Some(count) = text(LISTEN_FDS)? else {
        bail!("{LISTEN_PID}={pid} is our pid but {LISTEN_FDS} is not set");
    };
    let count: u64 = match count.trim().parse::<i64>() {
        Ok(n) if n >= 0 => n as u64,
        Ok(_) => bail!("invalid {LISTEN_FDS}='{count}': must not be negative"),
        Err(_)
            if !count.trim().is_empty() && count.trim().trim_start_matches('-').bytes().all(|b| b.is_ascii_digit()) =>
        {
            bail!("invalid {LISTEN_FDS}='{count}': number out of range")
        }
        Err(_) => bail!("invalid {LISTEN_FDS}='{count}': expected a number of descriptors"),
    };
    let limit = sys::open_file_limit().unwrap_or(1024);
    if count + LISTEN_FDS_START as u64 > limit {
        bail!("invalid {LISTEN_FDS}={count}: more descriptors than this process may have open (limit {limit})");
    }
    let names = match text(LISTEN_FDNAMES)? {
        None => vec![UNKNOWN_FDNAME.to_string(); count as usize],
        Some(names) => {
            let names: Vec<String> = if count == 0 && names.is_empty() {
                Vec::new()
            } else {
                names.split(':').map(str::to_string).collect()
            };
            if names.len() as u64 != count {
                bail!("{LISTEN_FDNAMES}='{}' has {} name(s) but {LISTEN_FDS}={count}", names.join(":"), names.len());
            }
            names
        }
    };
    Ok(Activation::Fds { names })
}

/// What systemd passed.
#[derive(Debug)]
pub struct Received {
    /// The sockets, or why there are none.
    pub sockets: std::result::Result<Vec<Socket>, String>,
    /// Descriptors under a name of the fd store's (`sockherd/...`) that are no listening
    /// socket, closed already: to be removed from the store, never a reason to fail.
    pub unusable: Vec<Unusable>,
}

/// A descriptor from the fd store that sockherd cannot use, closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unusable {
    pub fd: i32,
    pub name: String,
    /// What it was: "a pipe, not a listening socket", ...
    pub what: String,
}

/// Receives and validates the activated sockets, or explains why there are none.
/// Each descriptor must be open and a socket; a stream socket must be listening. One under an
/// fd store name that is not is closed and listed as unusable instead (a probe's pipe left
/// behind, ...): only sockherd puts those there, and one that fails every start helps nobody.
/// Our copies are close-on-exec; children get theirs explicitly.
pub fn receive() -> Result<Received> {
    // Our pidfd inode id, only needed (and only looked up) when there is one to compare with.
    let our_pidfd_id = match std::env::var_os(LISTEN_PIDFDID) {
        Some(_) => sys::pid_inode_id(sys::getpid()).context("failed to read our own pidfd inode id")?,
        None => None,
    };
    let activation = parse(|name| std::env::var_os(name), sys::getpid(), our_pidfd_id)?;
    let names = match activation {
        Activation::None { reason } => return Ok(Received { sockets: Err(reason), unusable: Vec::new() }),
        Activation::Fds { names } => names,
    };
    let count = names.len();
    let last = LISTEN_FDS_START + count as i32 - 1;
    // Check everything before adopting anything, so an error leaves no descriptor owned twice.
    for i in 0..count {
        let fd = LISTEN_FDS_START + i as i32;
        if !sys::fd_is_open(fd) {
            bail!("{LISTEN_FDS}={count} promises fds {LISTEN_FDS_START}-{last}, but fd {fd} is not open");
        }
    }
    let mut sockets = Vec::with_capacity(count);
    let mut unusable = Vec::new();
    for (i, name) in names.into_iter().enumerate() {
        let fd = sys::adopt_inherited_fd(LISTEN_FDS_START + i as i32);
        let number = LISTEN_FDS_START + i as i32;
        let (mode, _, _) = sys::fstat(fd.as_fd()).with_context(|| format!("failed to stat activated fd {number}"))?;
        if !sys::is_socket_mode(mode) && fdstore::is_stored_name(&name) {
            drop(fd);
            let what = format!("a {}, not a listening socket", file_type_name(mode));
            unusable.push(Unusable { fd: number, name, what });
            continue;
        }
        if !sys::is_socket_mode(mode) {
            // Not ours to close: leak it back as it was.
            std::mem::forget(fd);
            bail!("activated fd {number} ({name}) is not a socket but a {}", file_type_name(mode));
        }
        sys::set_cloexec(fd.as_fd(), true)
            .with_context(|| format!("failed to set FD_CLOEXEC on activated fd {number}"))?;
        let socket = Socket::new(fd, name, Origin::Activated)
            .with_context(|| format!("failed to inspect activated fd {number}"))?;
        if matches!(socket.kind, libc::SOCK_STREAM | libc::SOCK_SEQPACKET)
            && !sys::socket_is_listening(socket.as_fd())
                .with_context(|| format!("failed to query activated fd {number}"))?
        {
            if fdstore::is_stored_name(&socket.name) {
                let name = socket.name.clone();
                drop(socket);
                let what = "a socket that does not listen".to_string();
                unusable.push(Unusable { fd: number, name, what });
                continue;
            }
            let description = socket.to_string();
            std::mem::forget(socket);
            bail!(
                "activated fd {number} is a connected or unbound socket, not a listening one: {description} (Accept=yes units are not supported)"
            );
        }
        sockets.push(socket);
    }
    Ok(Received { sockets: Ok(sockets), unusable })
}

fn file_type_name(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "regular file",
        libc::S_IFDIR => "directory",
        libc::S_IFIFO => "pipe",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        libc::S_IFLNK => "symbolic link",
        _ => "file of unknown type",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::ffi::OsString;

    fn parse_with(vars: &[(&str, &str)], pid: i32) -> Result<Activation> {
        parse_with_id(vars, pid, Some(1234))
    }

    fn parse_with_id(vars: &[(&str, &str)], pid: i32, pidfd_id: Option<u64>) -> Result<Activation> {
        let map: HashMap<String, OsString> = vars.iter().map(|(k, v)| (k.to_string(), OsString::from(v))).collect();
        parse(|name| map.get(name).cloned(), pid, pidfd_id)
    }

    #[test]
    fn not_activated_without_variables() {
        assert!(matches!(parse_with(&[], 7).unwrap(), Activation::None { .. }));
    }

    #[test]
    fn other_pid_means_not_ours() {
        let a = parse_with(&[("LISTEN_PID", "8"), ("LISTEN_FDS", "2")], 7).unwrap();
        assert!(matches!(a, Activation::None { reason } if reason.contains("another process")));
    }

    #[test]
    fn names_default_to_unknown() {
        let a = parse_with(&[("LISTEN_PID", "7"), ("LISTEN_FDS", "2")], 7).unwrap();
        assert_eq!(a, Activation::Fds { names: vec!["unknown".into(), "unknown".into()] });
    }

    #[test]
    fn names_are_split() {
        let a = parse_with(&[("LISTEN_PID", "7"), ("LISTEN_FDS", "2"), ("LISTEN_FDNAMES", "http:admin")], 7).unwrap();
        assert_eq!(a, Activation::Fds { names: vec!["http".into(), "admin".into()] });
    }

    #[test]
    fn pidfd_id_of_another_process_means_not_ours() {
        let vars = [("LISTEN_PID", "7"), ("LISTEN_PIDFDID", "99"), ("LISTEN_FDS", "1")];
        let a = parse_with_id(&vars, 7, Some(1234)).unwrap();
        assert!(
            matches!(&a, Activation::None { reason } if reason.contains("LISTEN_PIDFDID=99 names another process")),
            "{a:?}"
        );
        let ours = [("LISTEN_PID", "7"), ("LISTEN_PIDFDID", "1234"), ("LISTEN_FDS", "1")];
        assert_eq!(parse_with_id(&ours, 7, Some(1234)).unwrap(), Activation::Fds { names: vec!["unknown".into()] });
        // Without pidfd ids (kernel before 6.9) there is nothing to compare: LISTEN_PID decides.
        assert!(matches!(parse_with_id(&vars, 7, None).unwrap(), Activation::Fds { .. }));
        // A LISTEN_PID of another process wins over any LISTEN_PIDFDID.
        let other = [("LISTEN_PID", "8"), ("LISTEN_PIDFDID", "1234"), ("LISTEN_FDS", "1")];
        assert!(matches!(parse_with_id(&other, 7, Some(1234)).unwrap(), Activation::None { .. }));
    }

    #[test]
    fn bad_values_are_errors() {
        for (fds, names, want) in [
            ("abc", None, "expected a number"),
            ("-1", None, "must not be negative"),
            ("99999999999999999999999", None, "out of range"),
            ("4000000000", None, "limit"),
            ("2", Some("one"), "has 1 name(s) but LISTEN_FDS=2"),
        ] {
            let mut vars = vec![("LISTEN_PID", "7"), ("LISTEN_FDS", fds)];
            if let Some(n) = names {
                vars.push(("LISTEN_FDNAMES", n));
            }
            let err = parse_with(&vars, 7).unwrap_err().to_string();
            assert!(err.contains(want), "LISTEN_FDS={fds}: {err}");
        }
        let err = parse_with(&[("LISTEN_PID", "x"), ("LISTEN_FDS", "1")], 7).unwrap_err().to_string();
        assert!(err.contains("invalid LISTEN_PID='x'"), "{err}");
        let err = parse_with(&[("LISTEN_PID", "7"), ("LISTEN_PIDFDID", "-1"), ("LISTEN_FDS", "1")], 7)
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid LISTEN_PIDFDID='-1'"), "{err}");
        let err = parse_with(&[("LISTEN_PID", "0"), ("LISTEN_FDS", "1")], 7).unwrap_err().to_string();
        assert_eq!(err, "invalid LISTEN_PID='0': expected a process id");
        let err = parse_with(&[("LISTEN_PID", "7")], 7).unwrap_err().to_string();
        assert_eq!(err, "LISTEN_PID=7 is our pid but LISTEN_FDS is not set");
    }

    #[test]
    fn file_types_by_name() {
        for (mode, name) in [
            (libc::S_IFREG, "regular file"),
            (libc::S_IFDIR, "directory"),
            (libc::S_IFIFO, "pipe"),
            (libc::S_IFCHR, "character device"),
            (libc::S_IFBLK, "block device"),
            (libc::S_IFLNK, "symbolic link"),
            (libc::S_IFSOCK, "file of unknown type"),
        ] {
            assert_eq!(file_type_name(mode | 0o644), name);
        }
    }

    #[test]
    fn zero_descriptors() {
        let a = parse_with(&[("LISTEN_PID", "7"), ("LISTEN_FDS", "0"), ("LISTEN_FDNAMES", "")], 7).unwrap();
        assert_eq!(a, Activation::Fds { names: vec![] });
        let a = parse_with(&[("LISTEN_PID", "7"), ("LISTEN_FDS", "0")], 7).unwrap();
        assert_eq!(a, Activation::Fds { names: vec![] });
        let err = parse_with(&[("LISTEN_PID", "7"), ("LISTEN_FDS", "0"), ("LISTEN_FDNAMES", "x")], 7).unwrap_err();
        assert_eq!(err.to_string(), "LISTEN_FDNAMES='x' has 1 name(s) but LISTEN_FDS=0");
    }

    #[test]
    fn as_many_descriptors_as_the_limit_allows() {
        let limit = sys::open_file_limit().unwrap();
        let most = (limit - 3).to_string();
        match parse_with(&[("LISTEN_PID", "7"), ("LISTEN_FDS", &most)], 7).unwrap() {
            Activation::Fds { names } => assert_eq!(names.len() as u64, limit - 3),
            other => panic!("{other:?}"),
        }
        let one_more = (limit - 2).to_string();
        let err = parse_with(&[("LISTEN_PID", "7"), ("LISTEN_FDS", &one_more)], 7).unwrap_err().to_string();
        assert!(err.contains(&format!("limit {limit}")), "{err}");
    }

    #[test]
    fn reasons_for_not_being_activated() {
        let reason = |vars: &[(&str, &str)]| match parse_with(vars, 7).unwrap() {
            Activation::None { reason } => reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(reason(&[]), "LISTEN_FDS is not set");
        assert_eq!(reason(&[("LISTEN_FDS", "2")]), "LISTEN_FDS=2 is set but LISTEN_PID is not");
        assert_eq!(
            reason(&[("LISTEN_PID", " 8 "), ("LISTEN_FDS", "2")]),
            "LISTEN_PID=8 names another process (we are 7), so the sockets are not ours"
        );
    }
}
