//! Sockets we bind ourselves from `--listen` specs, for when systemd did not pass any.
//!
//! Spec: `ADDRESS[,OPTION...]`
//!   ADDRESS  `HOST:PORT` (IPv4 literal or `localhost`), `[V6]:PORT`, `unix:/path`, `/path`,
//!            or `@name` (abstract unix socket)
//!   OPTION   `name=NAME`     the FileDescriptorName= for LISTEN_FDNAMES (default "unknown")
//!            `mode=OCTAL`    permissions of a unix socket file (default: from the umask)
//!            `backlog=N`     listen(2) backlog (default 1024)

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result, bail};

use crate::protocol::UNKNOWN_FDNAME;
use crate::socket::{Origin, Socket};
use crate::sys;

pub const DEFAULT_BACKLOG: i32 = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
    Abstract(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenSpec {
    pub addr: ListenAddr,
    pub name: Option<String>,
    pub mode: Option<u32>,
    pub backlog: i32,
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "{}", path.display()),
            ListenAddr::Abstract(name) => write!(f, "@{name}"),
        }
    }
}

/// The spec as `--listen` takes it: the address, then each option that is not the default.
impl fmt::Display for ListenSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr)?;
        if let Some(name) = &self.name {
            write!(f, ",name={name}")?;
        }
        if let Some(mode) = self.mode {
            write!(f, ",mode={mode:04o}")?;
        }
        if self.backlog != DEFAULT_BACKLOG {
            write!(f, ",backlog={}", self.backlog)?;
        }
        Ok(())
    }
}

/// Checks a name the way systemd checks FileDescriptorName=: 1-255 printable ASCII
/// characters, no colon (the LISTEN_FDNAMES separator).
pub fn validate_fd_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 {
        return Err("a name must have 1 to 255 characters".into());
    }
    if let Some(c) = name.chars().find(|c| *c == ':' || !c.is_ascii_graphic()) {
        return Err(format!("a name may not contain {c:?} (printable ASCII without ':' only)"));
    }
    Ok(())
}

impl FromStr for ListenSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut parts = text.split(',');
        let address = parts.next().unwrap_or_default().trim();
        let addr = parse_address(address)?;
        let mut spec = ListenSpec { addr, name: None, mode: None, backlog: DEFAULT_BACKLOG };
        for option in parts {
            let (key, value) = option
                .split_once('=')
                .ok_or_else(|| format!("option '{option}' is not KEY=VALUE (known: name=, mode=, backlog=)"))?;
            match key {
                "name" => {
                    validate_fd_name(value)?;
                    spec.name = Some(value.to_string());
                }
                "mode" => {
                    if !matches!(spec.addr, ListenAddr::Unix(_)) {
                        return Err("mode= applies only to unix socket paths".into());
                    }
                    let mode = u32::from_str_radix(value, 8)
                        .ok()
                        .filter(|m| *m <= 0o777)
                        .ok_or_else(|| format!("mode={value} is not an octal permission like 0660"))?;
                    spec.mode = Some(mode);
                }
                "backlog" => {
                    spec.backlog = value
                        .parse()
                        .ok()
                        .filter(|b| *b > 0)
                        .ok_or_else(|| format!("backlog={value} is not a positive number"))?;
                }
                other => {
                    return Err(format!("unknown option '{other}' (known: name=, mode=, backlog=)"));
                }
            }
        }
        Ok(spec)
    }
}

fn parse_address(address: &str) -> Result<ListenAddr, String> {
    if address.is_empty() {
        return Err("empty address (expected HOST:PORT, [V6]:PORT, unix:/path or /path)".into());
    }
    if let Some(path) = address.strip_prefix("unix:") {
        return parse_unix(path);
    }
    if address.starts_with('/') {
        return parse_unix(address);
    }
    if let Some(name) = address.strip_prefix('@') {
        if name.is_empty() || name.len() > 107 {
            return Err("an abstract socket name needs 1 to 107 bytes".into());
        }
        return Ok(ListenAddr::Abstract(name.to_string()));
    }
    if let Some(rest) = address.strip_prefix('[') {
        let (host, port) = rest.split_once("]:").ok_or_else(|| "expected [V6]:PORT, e.g. [::1]:8080".to_string())?;
        let ip: std::net::Ipv6Addr = host.parse().map_err(|_| format!("'{host}' is not an IPv6 address"))?;
        return Ok(ListenAddr::Tcp(SocketAddr::new(IpAddr::V6(ip), parse_port(port)?)));
    }
    let (host, port) =
        address.rsplit_once(':').ok_or_else(|| "expected HOST:PORT, [V6]:PORT, unix:/path or /path".to_string())?;
    if host.contains(':') {
        return Err("IPv6 addresses need brackets: [V6]:PORT".into());
    }
    let ip = if host == "localhost" {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .map_err(|_| format!("'{host}' is not an IPv4 address (use an IP address, 'localhost' or [V6])"))?
    };
    Ok(ListenAddr::Tcp(SocketAddr::new(ip, parse_port(port)?)))
}

fn parse_port(port: &str) -> Result<u16, String> {
    port.parse().map_err(|_| format!("'{port}' is not a port number (0-65535)"))
}

fn parse_unix(path: &str) -> Result<ListenAddr, String> {
    if !path.starts_with('/') {
        return Err(format!("unix socket path '{path}' must be absolute"));
    }
    // sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
    if path.len() > 107 {
        return Err(format!("unix socket path is {} bytes long; the limit is 107", path.len()));
    }
    Ok(ListenAddr::Unix(PathBuf::from(path)))
}

impl ListenSpec {
    /// Binds and listens. A unix socket file left by a dead server (nobody accepts on it) is
    /// replaced; a live one, or any other kind of file, is an error.
    pub fn bind(&self) -> Result<Socket> {
        let (fd, created): (OwnedFd, _) = match &self.addr {
            ListenAddr::Tcp(addr) => {
                let listener = TcpListener::bind(addr).map_err(|e| bind_error(&self.addr, e))?;
                (listener.into(), None)
            }
            ListenAddr::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                    .with_context(|| format!("invalid abstract socket name '@{name}'"))?;
                let listener = UnixListener::bind_addr(&addr).map_err(|e| bind_error(&self.addr, e))?;
                (listener.into(), None)
            }
            ListenAddr::Unix(path) => {
                // Two sockherds replacing the same stale socket at once: without a lock, the
                // second could unlink the file the first just bound. Checking, unlinking and
                // binding happen under a lock on the directory (flock: advisory, taken only by
                // sockherd), and the socket listens before the lock is released.
                // Absolute (parse_unix checks): its parent is a directory, `/` at least.
                let dir = path.parent().unwrap_or(Path::new("/"));
                let lock = std::fs::File::open(dir).ok();
                if let Some(lock) = &lock {
                    sys::flock_exclusive(lock.as_fd())
                        .with_context(|| format!("failed to lock {} to bind {}", dir.display(), path.display()))?;
                }
                remove_stale_socket(path)?;
                // The file is born with its mode (bind creates it with 0777 minus the umask): no
                // moment with the umask's permissions, as a chmod after bind would leave.
                let listener = match self.mode {
                    Some(mode) => {
                        let old = sys::umask(!mode & 0o777);
                        let bound = UnixListener::bind(path);
                        sys::umask(old);
                        bound
                    }
                    None => UnixListener::bind(path),
                }
                .map_err(|e| bind_error(&self.addr, e))?;
                let meta =
                    std::fs::symlink_metadata(path).with_context(|| format!("failed to stat {}", path.display()))?;
                drop(lock);
                (listener.into(), Some((path.clone(), meta.dev(), meta.ino())))
            }
        };
        sys::listen(fd.as_fd(), self.backlog).with_context(|| format!("failed to listen on {}", self.addr))?;
        let name = self.name.clone().unwrap_or_else(|| UNKNOWN_FDNAME.to_string());
        Socket::new(fd, name, Origin::Bound { created })
            .with_context(|| format!("failed to inspect the socket bound to {}", self.addr))
    }
}

fn bind_error(addr: &ListenAddr, err: io::Error) -> anyhow::Error {
    let known = match err.kind() {
        io::ErrorKind::AddrInUse => Some("address in use (another process listens there)"),
        io::ErrorKind::AddrNotAvailable => Some("address not available on this host"),
        io::ErrorKind::PermissionDenied => Some("permission denied"),
        _ => None,
    };
    match known {
        Some(what) => anyhow::anyhow!("failed to bind {addr}: {what}"),
        None => anyhow::Error::new(err).context(format!("failed to bind {addr}")),
    }
}

fn remove_stale_socket(path: &PathBuf) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("failed to stat {}", path.display())),
    };
    if !meta.file_type().is_socket() {
        bail!("failed to bind {}: the path exists and is not a socket; refusing to replace it", path.display());
    }
    match UnixStream::connect(path) {
        Ok(_) => bail!("failed to bind {}: address in use (a process accepts connections on it)", path.display()),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path).with_context(|| format!("failed to remove stale socket {}", path.display()))
        }
        Err(e) => Err(e).with_context(|| {
            format!("failed to bind {}: cannot tell whether the existing socket is in use", path.display())
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> ListenSpec {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    impl ListenSpec {
        fn to_string_addr(&self) -> String {
            self.addr.to_string()
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(ok("127.0.0.1:8080").addr, ListenAddr::Tcp("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(ok("localhost:80").addr, ListenAddr::Tcp("127.0.0.1:80".parse().unwrap()));
        assert_eq!(ok("[::1]:8080").addr, ListenAddr::Tcp("[::1]:8080".parse().unwrap()));
        assert_eq!(ok("unix:/run/a.sock").addr, ListenAddr::Unix("/run/a.sock".into()));
        assert_eq!(ok("/run/a.sock").addr, ListenAddr::Unix("/run/a.sock".into()));
        assert_eq!(ok("@app").addr, ListenAddr::Abstract("app".into()));
    }

    #[test]
    fn specs_print_as_they_parse() {
        for text in
            ["127.0.0.1:8080", "[::1]:8080,name=v6,backlog=64", "/run/a.sock,name=unix,mode=0660", "@abs,backlog=1"]
        {
            assert_eq!(ok(text).to_string(), text);
            assert_eq!(ok(&ok(text).to_string()), ok(text));
        }
        assert_eq!(ok("unix:/run/a.sock,backlog=1024").to_string(), "/run/a.sock");
        assert_eq!(ok("/a,mode=0600").to_string(), "/a,mode=0600");
    }

    #[test]
    fn options() {
        let spec = ok("/run/a.sock,name=http,mode=0660,backlog=64");
        assert_eq!(spec.name.as_deref(), Some("http"));
        assert_eq!(spec.mode, Some(0o660));
        assert_eq!(spec.backlog, 64);
    }

    #[test]
    fn refusals() {
        for (spec, want) in [
            ("", "empty address"),
            ("8080", "expected HOST:PORT"),
            ("example.com:80", "not an IPv4 address"),
            ("127.0.0.1:99999", "not a port number"),
            ("::1:80", "need brackets"),
            ("[::1:80", "expected [V6]:PORT"),
            ("unix:run/a.sock", "must be absolute"),
            ("127.0.0.1:80,mode=0600", "only to unix"),
            ("/a,mode=999", "octal"),
            ("/a,name=a:b", "may not contain ':'"),
            ("/a,colour=red", "unknown option"),
            ("/a,backlog=0", "positive"),
        ] {
            let err = spec.parse::<ListenSpec>().unwrap_err();
            assert!(err.contains(want), "{spec}: {err}");
        }
    }

    #[test]
    fn unix_path_and_abstract_name_limits() {
        let longest = format!("/{}", "a".repeat(106));
        assert_eq!(ok(&longest).addr, ListenAddr::Unix(longest.clone().into()));
        let err = format!("/{}", "a".repeat(107)).parse::<ListenSpec>().unwrap_err();
        assert_eq!(err, "unix socket path is 108 bytes long; the limit is 107");
        assert_eq!(ok(&format!("@{}", "b".repeat(107))).addr, ListenAddr::Abstract("b".repeat(107)));
        assert!(format!("@{}", "b".repeat(108)).parse::<ListenSpec>().unwrap_err().contains("1 to 107 bytes"));
        assert!("@".parse::<ListenSpec>().unwrap_err().contains("1 to 107 bytes"));
    }

    #[test]
    fn fd_names_as_systemd_checks_them() {
        assert_eq!(validate_fd_name(&"n".repeat(255)), Ok(()));
        assert_eq!(validate_fd_name(&"n".repeat(256)), Err("a name must have 1 to 255 characters".into()));
        assert_eq!(validate_fd_name(""), Err("a name must have 1 to 255 characters".into()));
        assert_eq!(
            validate_fd_name("a b"),
            Err("a name may not contain ' ' (printable ASCII without ':' only)".into())
        );
        assert_eq!(validate_fd_name("web-1_x.y"), Ok(()));
        assert_eq!(ok("127.0.0.1:1,name=web").name.as_deref(), Some("web"));
        assert_eq!(ok("127.0.0.1:1").to_string_addr(), "127.0.0.1:1");
        assert_eq!(ok("@abs").to_string_addr(), "@abs");
        assert_eq!(ok("/run/a.sock").to_string_addr(), "/run/a.sock");
    }

    #[test]
    fn bind_errors_say_why() {
        let addr = ListenAddr::Tcp("127.0.0.1:80".parse().unwrap());
        for (kind, why) in [
            (io::ErrorKind::AddrInUse, "address in use (another process listens there)"),
            (io::ErrorKind::AddrNotAvailable, "address not available on this host"),
            (io::ErrorKind::PermissionDenied, "permission denied"),
        ] {
            assert_eq!(
                bind_error(&addr, io::Error::from(kind)).to_string(),
                format!("failed to bind 127.0.0.1:80: {why}")
            );
        }
        let other = bind_error(&addr, io::Error::from(io::ErrorKind::InvalidInput));
        assert_eq!(other.to_string(), "failed to bind 127.0.0.1:80");
    }
}
