//! A listening socket sockherd holds for its whole life and hands to every generation.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use crate::sys::{self, LocalAddr};

/// Where a socket came from. Only sockets we created ourselves may be unlinked by us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Passed by systemd (or another activator) in LISTEN_FDS.
    Activated,
    /// Bound by us from a `--listen` spec. `created` is the unix socket file we made, with its
    /// device and inode, so we remove exactly that file and never one somebody replaced.
    Bound { created: Option<(PathBuf, u64, u64)> },
    /// A `--listen` socket that systemd's fd store holds beyond our life (taken back from it,
    /// or bound and stored): its unix socket file, if any, stays for the next start.
    Stored,
}

#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
    /// FileDescriptorName=-style name: from LISTEN_FDNAMES, `name=` in a spec, or "unknown".
    pub name: String,
    pub addr: LocalAddr,
    /// SO_TYPE: stream, datagram or seqpacket.
    pub kind: i32,
    pub origin: Origin,
}

impl Socket {
    pub fn new(fd: OwnedFd, name: String, origin: Origin) -> std::io::Result<Socket> {
        let addr = sys::local_addr(fd.as_fd())?;
        let kind = sys::socket_type(fd.as_fd())?;
        Ok(Socket { fd, name, addr, kind, origin })
    }

    /// The address in the form `--listen` takes and Server::Starter's SERVER_STARTER_PORT uses:
    /// `127.0.0.1:8080`, `[::1]:8080`, `/run/app.sock`, `@abstract`.
    pub fn address(&self) -> String {
        match &self.addr {
            LocalAddr::Inet(addr) => addr.to_string(),
            LocalAddr::Unix(path) => path.display().to_string(),
            LocalAddr::UnixAbstract(name) => format!("@{}", String::from_utf8_lossy(name)),
            LocalAddr::UnixUnnamed => "unix:(unnamed)".to_string(),
            LocalAddr::Other(family) => format!("(address family {family})"),
        }
    }

    pub fn inode(&self) -> Option<u64> {
        sys::fstat(self.fd.as_fd()).ok().map(|(_, _, ino)| ino)
    }

    /// Gives the unix socket file we created to the server that now serves on it, which
    /// outlives us (`sockherd exec --flavor nginx`): it is no longer ours to remove.
    pub fn leave_file(&mut self) {
        if let Origin::Bound { created } = &mut self.origin {
            *created = None;
        }
    }

    /// Removes the unix socket file we created, if it is still ours.
    fn remove_created_file(&self) {
        if let Origin::Bound { created: Some((path, dev, ino)) } = &self.origin {
            use std::os::unix::fs::MetadataExt;
            if let Ok(meta) = std::fs::symlink_metadata(path)
                && meta.dev() == *dev
                && meta.ino() == *ino
            {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// A socket file we created goes away with the socket, on every path: a clean exit, an error
/// before the server started, a failed exec. (A successful `sockherd exec` never drops it: the
/// server owns the file from then on. Nor does an nginx handed over: see [`Socket::leave_file`].)
impl Drop for Socket {
    fn drop(&mut self) {
        self.remove_created_file();
    }
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl fmt::Display for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            libc::SOCK_STREAM => "stream",
            libc::SOCK_DGRAM => "datagram",
            libc::SOCK_SEQPACKET => "seqpacket",
            _ => "socket",
        };
        write!(f, "{} ({kind}, name {})", self.address(), self.name)
    }
}
