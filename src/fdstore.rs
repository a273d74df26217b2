//! systemd's fd store for the sockets sockherd binds itself (`--listen`): each is stored with
//! systemd once bound (`FDSTORE=1`, `FDNAME=sockherd/<name>`), survives `systemctl restart`
//! (FileDescriptorStoreMax=) and, on systemd 254 and later with FileDescriptorStorePreserve=yes,
//! a stop, and comes back in `LISTEN_FDS` at the next start instead of being bound again.
//! Connections made while the service restarts queue in its backlog instead of being refused.
//!
//! The names: a stored socket is `sockherd/` + its spec's `name=` (default `unknown`). The
//! prefix tells the stored sockets from those of socket units in `LISTEN_FDNAMES` (a socket
//! unit's default FileDescriptorName= is its unit name, which never holds a `/`), and is
//! reserved: a socket unit with `FileDescriptorName=sockherd/...` is refused. The server never
//! sees the prefix: its `LISTEN_FDNAMES` are the specs' names, as when they are bound.
//!
//! Matching at a start: a stored socket is a spec's when its name is the spec's store name *and*
//! it is a listening stream socket on the spec's address (any port for a spec of port 0). A
//! stored socket that is no spec's (the operator changed `--listen`) is removed from the store
//! (`FDSTOREREMOVE=1`, which removes every descriptor of that name, so the specs' sockets that
//! share the name are stored again) and closed, and systemd's answer to a barrier awaited before
//! any bind (its copy would hold the address a renamed spec binds); a spec without a stored
//! socket is bound and stored.
//!
//! Whether the unit has a store: systemd 254 and later set `$FDSTORE` to FileDescriptorStoreMax=
//! when it is above 0. systemd 252 does not tell, and closes a descriptor sent with `FDSTORE=1`
//! when its store is full (FileDescriptorStoreMax=0, the default: one warning in its journal).
//! So without `$FDSTORE` sockherd sends the write end of a pipe as a probe, waits for systemd to
//! have handled it (BARRIER=1), and sees whether systemd kept it: the read end reads EOF once
//! systemd closed the only other copy. A kept probe is removed at once.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use anyhow::{Result, bail};

use crate::listen::{ListenAddr, ListenSpec};
use crate::log;
use crate::notify::Notifier;
use crate::protocol::{FDNAME, FDPOLL_OFF, FDSTORE, FDSTORE_ADD, FDSTORE_REMOVE, UNKNOWN_FDNAME};
use crate::sys::{self, LocalAddr};

/// The prefix of the names sockherd stores its sockets under.
pub const PREFIX: &str = "sockherd/";
/// The name of the probe that tells whether systemd 252 keeps what it is sent.
pub const PROBE_NAME: &str = "sockherd/probe";
/// systemd's longest fd name (FDNAME_MAX).
const FDNAME_MAX: usize = 255;

/// Whether `name` (from LISTEN_FDNAMES) is one sockherd stores its sockets under.
pub fn is_stored_name(name: &str) -> bool {
    name.starts_with(PREFIX)
}

/// The name a `--listen` socket is stored under: `sockherd/` and its `name=` (or `unknown`).
pub fn store_name(spec: &ListenSpec) -> Result<String> {
    let name = format!("{PREFIX}{}", spec.name.as_deref().unwrap_or(UNKNOWN_FDNAME));
    if name.len() > FDNAME_MAX {
        bail!(
            "invalid --listen '{}': name= is {} characters long; stored in systemd's fd store as '{PREFIX}NAME' it \
             may have at most {} (systemd's limit is {FDNAME_MAX})",
            spec.addr,
            name.len() - PREFIX.len(),
            FDNAME_MAX - PREFIX.len()
        );
    }
    Ok(name)
}

/// The message that stores the attached descriptor under `name`.
pub fn add_message(name: &str) -> Vec<String> {
    vec![FDSTORE_ADD.to_string(), format!("{FDNAME}={name}")]
}

/// The message that removes (and has systemd close) every stored descriptor named `name`.
pub fn remove_message(name: &str) -> Vec<String> {
    vec![FDSTORE_REMOVE.to_string(), format!("{FDNAME}={name}")]
}

/// What sockherd knows of a socket it received under a stored name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub name: String,
    pub addr: LocalAddr,
    /// A listening SOCK_STREAM socket, as `--listen` binds.
    pub listening_stream: bool,
    /// Why clients no longer reach it at its path (a unix socket whose file is gone or another
    /// one's, see [`lost_file`]): never taken back.
    pub lost: Option<String>,
}

/// Why a stored unix socket's path no longer leads to it, from what lstat finds at the path now
/// (`found`: whether it is a socket, and its inode) and the inode of the file the socket was
/// bound to (`bound`, from sock_diag; None when the kernel did not say). None: it still does.
pub fn lost_file(found: &io::Result<(bool, u64)>, bound: Option<u64>) -> Option<String> {
    match found {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Some("its file is gone".to_string()),
        Err(e) => Some(format!("its file cannot be examined: {e}")),
        Ok((false, _)) => Some("its path is no longer a socket".to_string()),
        Ok((true, inode)) if bound.is_some_and(|b| b != *inode) => {
            Some("its path is another socket's file now".to_string())
        }
        Ok(_) => None,
    }
}

/// Whether a socket at `addr` is one bound from `spec`.
pub fn matches(spec: &ListenAddr, addr: &LocalAddr) -> bool {
    match (spec, addr) {
        (ListenAddr::Tcp(want), LocalAddr::Inet(have)) => {
            want.ip() == have.ip() && (want.port() == 0 || want.port() == have.port())
        }
        (ListenAddr::Unix(want), LocalAddr::Unix(have)) => want == have,
        (ListenAddr::Abstract(want), LocalAddr::UnixAbstract(have)) => want.as_bytes() == have.as_slice(),
        _ => false,
    }
}

/// What to do at a start with the stored sockets received and the `--listen` specs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Per spec: the index of the stored socket it takes back, or None to bind it.
    pub take: Vec<Option<usize>>,
    /// Stored sockets no spec takes: to be closed.
    pub stale: Vec<usize>,
    /// Names to remove from the store (each stale socket's), in order, without repeats.
    pub remove: Vec<String>,
    /// Specs (indexes) to store once the names are removed: those bound now, and those taken
    /// back under a removed name.
    pub store: Vec<usize>,
}

/// Matches the stored sockets to the specs (whose store names are `names`), first come first
/// served: a spec takes the first stored socket not taken yet with its name and address.
/// `unusable`: names of stored descriptors already closed as unusable, to be removed as well.
pub fn plan(names: &[String], specs: &[ListenSpec], held: &[Held], unusable: &[String]) -> Plan {
    let mut taken = vec![false; held.len()];
    let mut plan = Plan::default();
    for (spec, name) in specs.iter().zip(names) {
        let found = held.iter().enumerate().position(|(i, h)| {
            !taken[i] && h.name == *name && h.listening_stream && h.lost.is_none() && matches(&spec.addr, &h.addr)
        });
        if let Some(i) = found {
            taken[i] = true;
        }
        plan.take.push(found);
    }
    plan.stale = (0..held.len()).filter(|i| !taken[*i]).collect();
    for name in plan.stale.iter().map(|&i| &held[i].name).chain(unusable) {
        if !plan.remove.contains(name) {
            plan.remove.push(name.clone());
        }
    }
    plan.store = (0..specs.len())
        .filter(|&s| match plan.take[s] {
            None => true,
            Some(i) => plan.remove.contains(&held[i].name),
        })
        .collect();
    plan
}

/// The service's fd store, as far as sockherd can reach it.
pub struct Store {
    notifier: Notifier,
    /// FileDescriptorStoreMax= when systemd said it ($FDSTORE, 254+); None on 252.
    pub capacity: Option<usize>,
}

/// `$FDSTORE` as systemd 254+ sets it: Some(N) for a store of N, Some(0) for none, None when
/// unset (systemd 252, or no store on 254+), or an error for what is no number.
pub fn parse_capacity(value: Option<&str>) -> Result<Option<usize>> {
    match value {
        None => Ok(None),
        Some(text) => match text.trim().parse::<usize>() {
            Ok(n) => Ok(Some(n)),
            Err(_) => bail!("invalid {FDSTORE}='{text}': expected the number of fd store slots"),
        },
    }
}

impl Store {
    /// The unit's fd store, when it has one that takes our descriptors: `$FDSTORE` above 0, or
    /// (without `$FDSTORE`) `in_use` (systemd passed sockets from it), or else a probe that
    /// systemd kept (a store full of our sockets refuses the probe: hence `in_use` first). None
    /// without `$NOTIFY_SOCKET`.
    pub fn detect(in_use: bool) -> Result<Option<Store>> {
        let notifier = Notifier::from_env();
        if !notifier.is_enabled() {
            return Ok(None);
        }
        match parse_capacity(std::env::var(FDSTORE).ok().as_deref())? {
            Some(0) => Ok(None),
            Some(n) => Ok(Some(Store { notifier, capacity: Some(n) })),
            None if in_use => Ok(Some(Store { notifier, capacity: None })),
            None => match probe(&notifier) {
                Ok(true) => Ok(Some(Store { notifier, capacity: None })),
                Ok(false) => Ok(None),
                Err(e) => {
                    log::warn(format!("cannot tell whether systemd keeps sockets in its fd store: {e}; not using it"))
                        .emit();
                    Ok(None)
                }
            },
        }
    }

    /// Stores `fd` under `name`.
    pub fn add(&self, name: &str, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.notifier.send_with_fd(&add_message(name), fd)
    }

    /// Removes (and has systemd close) every stored descriptor named `name`.
    pub fn remove(&self, name: &str) {
        self.notifier.send(&remove_message(name));
    }

    /// Returns once systemd has handled every message sent before.
    pub fn sync(&self) -> io::Result<()> {
        self.notifier.barrier(Duration::from_secs(10))
    }
}

/// Whether systemd keeps a descriptor sent with `FDSTORE=1` (see the module's comment).
fn probe(notifier: &Notifier) -> io::Result<bool> {
    let (read, write) = sys::pipe()?;
    let mut message = add_message(PROBE_NAME);
    message.push(FDPOLL_OFF.to_string());
    notifier.send_with_fd(&message, write.as_fd())?;
    drop(write);
    if let Err(e) = notifier.barrier(Duration::from_secs(10)) {
        // systemd may still keep the probe when it gets to it: have it removed then too (a
        // probe left behind all the same, by a kill during the wait, is recognised by its name
        // at the next start and removed).
        notifier.send(&remove_message(PROBE_NAME));
        return Err(e);
    }
    let refused = sys::poll_readable(&[read.as_fd()], Some(Duration::ZERO))?[0];
    if !refused {
        notifier.send(&remove_message(PROBE_NAME));
    }
    Ok(!refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(texts: &[&str]) -> (Vec<ListenSpec>, Vec<String>) {
        let specs: Vec<ListenSpec> = texts.iter().map(|t| t.parse().unwrap()).collect();
        let names = specs.iter().map(|s| store_name(s).unwrap()).collect();
        (specs, names)
    }

    fn tcp(name: &str, addr: &str) -> Held {
        Held { name: name.into(), addr: LocalAddr::Inet(addr.parse().unwrap()), listening_stream: true, lost: None }
    }

    fn unix(name: &str, path: &str) -> Held {
        Held { name: name.into(), addr: LocalAddr::Unix(path.into()), listening_stream: true, lost: None }
    }

    #[test]
    fn messages_are_sd_notify_lines() {
        assert_eq!(add_message("sockherd/http").join("\n"), "FDSTORE=1\nFDNAME=sockherd/http");
        assert_eq!(remove_message("sockherd/http").join("\n"), "FDSTOREREMOVE=1\nFDNAME=sockherd/http");
    }

    #[test]
    fn store_names_are_prefixed_and_within_systemds_limit() {
        let (_, names) = specs(&["127.0.0.1:8080,name=http", "/run/a.sock"]);
        assert_eq!(names, ["sockherd/http", "sockherd/unknown"]);
        assert!(is_stored_name("sockherd/http") && is_stored_name(PROBE_NAME));
        assert!(!is_stored_name("http") && !is_stored_name("app-http.socket") && !is_stored_name("sockherd"));
        let longest: ListenSpec = format!("/a,name={}", "n".repeat(FDNAME_MAX - PREFIX.len())).parse().unwrap();
        assert_eq!(store_name(&longest).unwrap().len(), FDNAME_MAX);
        let long: ListenSpec = format!("/a,name={}", "n".repeat(FDNAME_MAX - PREFIX.len() + 1)).parse().unwrap();
        let err = store_name(&long).unwrap_err().to_string();
        assert!(err.starts_with("invalid --listen '/a': name= is 247 characters long"), "{err}");
        assert!(err.contains("at most 246"), "{err}");
    }

    #[test]
    fn capacity_from_the_environment() {
        assert_eq!(parse_capacity(None).unwrap(), None);
        assert_eq!(parse_capacity(Some("4")).unwrap(), Some(4));
        assert_eq!(parse_capacity(Some("0")).unwrap(), Some(0));
        assert_eq!(
            parse_capacity(Some("x")).unwrap_err().to_string(),
            "invalid FDSTORE='x': expected the number of fd store slots"
        );
    }

    #[test]
    fn addresses_match_by_family_and_value() {
        let spec = |t: &str| t.parse::<ListenSpec>().unwrap().addr;
        let inet = |a: &str| LocalAddr::Inet(a.parse().unwrap());
        assert!(matches(&spec("127.0.0.1:8080"), &inet("127.0.0.1:8080")));
        assert!(!matches(&spec("127.0.0.1:8080"), &inet("127.0.0.1:8081")));
        assert!(!matches(&spec("127.0.0.1:8080"), &inet("127.0.0.2:8080")));
        assert!(matches(&spec("127.0.0.1:0"), &inet("127.0.0.1:40000")), "port 0 takes any port");
        assert!(!matches(&spec("127.0.0.1:0"), &inet("127.0.0.2:40000")));
        assert!(matches(&spec("[::1]:8080"), &inet("[::1]:8080")));
        assert!(matches(&spec("/run/a.sock"), &LocalAddr::Unix("/run/a.sock".into())));
        assert!(!matches(&spec("/run/a.sock"), &LocalAddr::Unix("/run/b.sock".into())));
        assert!(!matches(&spec("/run/a.sock"), &LocalAddr::UnixAbstract(b"/run/a.sock".to_vec())));
        assert!(matches(&spec("@app"), &LocalAddr::UnixAbstract(b"app".to_vec())));
        assert!(!matches(&spec("@app"), &LocalAddr::UnixAbstract(b"app2".to_vec())));
        assert!(!matches(&spec("@app"), &LocalAddr::Unix("app".into())));
        assert!(!matches(&spec("127.0.0.1:8080"), &LocalAddr::Unix("/127.0.0.1:8080".into())));
    }

    #[test]
    fn every_spec_takes_its_stored_socket_back() {
        let (specs, names) = specs(&["127.0.0.1:8080,name=http", "/run/a.sock,name=unix"]);
        // In another order than the specs: matched by name and address, not by position.
        let held = [unix("sockherd/unix", "/run/a.sock"), tcp("sockherd/http", "127.0.0.1:8080")];
        let plan = plan(&names, &specs, &held, &[]);
        assert_eq!(plan, Plan { take: vec![Some(1), Some(0)], stale: vec![], remove: vec![], store: vec![] });
    }

    #[test]
    fn nothing_stored_binds_and_stores_everything() {
        let (specs, names) = specs(&["127.0.0.1:8080", "/run/a.sock"]);
        let plan = plan(&names, &specs, &[], &[]);
        assert_eq!(plan, Plan { take: vec![None, None], stale: vec![], remove: vec![], store: vec![0, 1] });
    }

    #[test]
    fn a_socket_whose_spec_is_gone_is_removed_and_a_new_spec_bound() {
        // The operator moved http from 8080 to 9090 and dropped the admin socket.
        let (specs, names) = specs(&["127.0.0.1:9090,name=http", "/run/a.sock,name=unix"]);
        let held = [
            tcp("sockherd/http", "127.0.0.1:8080"),
            unix("sockherd/unix", "/run/a.sock"),
            tcp("sockherd/admin", "127.0.0.1:8081"),
        ];
        let plan = plan(&names, &specs, &held, &[]);
        assert_eq!(
            plan,
            Plan {
                take: vec![None, Some(1)],
                stale: vec![0, 2],
                remove: vec!["sockherd/http".into(), "sockherd/admin".into()],
                store: vec![0],
            }
        );
    }

    #[test]
    fn name_and_address_must_both_match() {
        // Same address, renamed: not taken (the server would see another name).
        let (specs, names) = specs(&["127.0.0.1:8080,name=web"]);
        let plan = plan(&names, &specs, &[tcp("sockherd/http", "127.0.0.1:8080")], &[]);
        assert_eq!(plan.take, [None]);
        assert_eq!(plan.remove, ["sockherd/http"]);
        assert_eq!(plan.store, [0]);
        // A socket that is not a listening stream is never taken.
        let (specs, names) = self::specs(&["/run/a.sock"]);
        let mut dgram = unix("sockherd/unknown", "/run/a.sock");
        dgram.listening_stream = false;
        let second = super::plan(&names, &specs, &[dgram], &[]);
        assert_eq!((second.take, second.stale, second.store), (vec![None], vec![0], vec![0]));
    }

    #[test]
    fn a_unix_socket_whose_file_is_lost_is_never_taken() {
        let (specs, names) = specs(&["/run/a.sock,name=unix"]);
        let mut held = unix("sockherd/unix", "/run/a.sock");
        held.lost = Some("its file is gone".into());
        let plan = plan(&names, &specs, &[held], &[]);
        assert_eq!(
            plan,
            Plan { take: vec![None], stale: vec![0], remove: vec!["sockherd/unix".into()], store: vec![0] }
        );
    }

    #[test]
    fn a_unix_sockets_file_must_be_the_socket_it_was_bound_to() {
        let gone = io::Error::from(io::ErrorKind::NotFound);
        assert_eq!(lost_file(&Err(gone), Some(7)).as_deref(), Some("its file is gone"));
        let denied = io::Error::from_raw_os_error(libc::EACCES);
        assert!(lost_file(&Err(denied), Some(7)).unwrap().starts_with("its file cannot be examined: "));
        assert_eq!(lost_file(&Ok((false, 7)), Some(7)).as_deref(), Some("its path is no longer a socket"));
        assert_eq!(lost_file(&Ok((true, 8)), Some(7)).as_deref(), Some("its path is another socket's file now"));
        assert_eq!(lost_file(&Ok((true, 7)), Some(7)), None);
        // The kernel did not say which file: a socket at the path is taken as its own.
        assert_eq!(lost_file(&Ok((true, 8)), None), None);
    }

    #[test]
    fn removing_a_shared_name_stores_the_kept_sockets_of_that_name_again() {
        // Two unnamed specs share sockherd/unknown; a third stored one of that name is stale.
        // FDSTOREREMOVE removes all three: the two kept ones are stored again.
        let (specs, names) = specs(&["127.0.0.1:8080", "/run/a.sock", "127.0.0.1:7070,name=other"]);
        let held = [
            tcp("sockherd/unknown", "127.0.0.1:9999"),
            unix("sockherd/unknown", "/run/a.sock"),
            tcp("sockherd/unknown", "127.0.0.1:8080"),
            tcp("sockherd/other", "127.0.0.1:7070"),
        ];
        let plan = plan(&names, &specs, &held, &[]);
        assert_eq!(
            plan,
            Plan {
                take: vec![Some(2), Some(1), Some(3)],
                stale: vec![0],
                remove: vec!["sockherd/unknown".into()],
                store: vec![0, 1],
            }
        );
    }

    #[test]
    fn an_unusable_name_is_removed_and_the_sockets_taken_under_it_stored_again() {
        let (specs, names) = specs(&["127.0.0.1:8080,name=http"]);
        let held = [tcp("sockherd/http", "127.0.0.1:8080")];
        let unusable = ["sockherd/probe".to_string(), "sockherd/http".into(), "sockherd/probe".into()];
        let plan = plan(&names, &specs, &held, &unusable);
        assert_eq!(
            plan,
            Plan {
                take: vec![Some(0)],
                stale: vec![],
                remove: vec!["sockherd/probe".into(), "sockherd/http".into()],
                store: vec![0],
            }
        );
    }

    #[test]
    fn two_specs_never_take_the_same_socket() {
        let (specs, names) = specs(&["127.0.0.1:0", "127.0.0.1:0"]);
        let plan = plan(&names, &specs, &[tcp("sockherd/unknown", "127.0.0.1:40000")], &[]);
        assert_eq!(plan.take, [Some(0), None]);
        assert_eq!(plan.store, [1]);
    }
}
