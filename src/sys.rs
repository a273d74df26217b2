//! Every raw system call sockherd makes, each behind a safe function.
//!
//! This is the only module allowed to use `unsafe`. The code that runs in a forked child between
//! `fork` and `execve` ([`ExecImage::exec`]) lives here too, because it must do nothing but
//! async-signal-safe system calls on memory prepared before the fork.
#![allow(unsafe_code)]

use std::ffi::{CString, OsStr};
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

pub type Pid = libc::pid_t;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

/// Whether `fd` is an open file descriptor of this process.
pub fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor's flags; any integer is a valid argument.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Takes ownership of an inherited descriptor number. The caller has checked it is open and
/// that nothing else in this process owns it (descriptors received from our parent).
pub fn adopt_inherited_fd(fd: RawFd) -> OwnedFd {
    assert!(fd_is_open(fd), "adopt_inherited_fd({fd}) on a closed descriptor");
    // SAFETY: the descriptor is open (checked above) and was handed to us at exec time; no Rust
    // object owns it yet, because sockherd adopts each inherited number exactly once at start.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

pub fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    // SAFETY: plain fcntl on a descriptor kept alive by the borrow.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) })?;
    let flags = if on { flags | libc::FD_CLOEXEC } else { flags & !libc::FD_CLOEXEC };
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, flags) })?;
    Ok(())
}

/// Sets O_NONBLOCK: a flag of the open file description, so it holds for every process sharing
/// it, not this descriptor alone.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain fcntl on a descriptor kept alive by the borrow.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

/// `(st_mode, st_dev, st_ino)` of an open descriptor.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<(u32, u64, u64)> {
    // SAFETY: `st` is a plain C struct filled by the kernel; the descriptor is borrowed.
    let mut st: libc::stat = unsafe { zeroed() };
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok((st.st_mode, st.st_dev, st.st_ino))
}

pub fn is_socket_mode(mode: u32) -> bool {
    mode & libc::S_IFMT == libc::S_IFSOCK
}

fn getsockopt_int(fd: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int) -> io::Result<i32> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value/len describe a valid c_int buffer; the descriptor is borrowed.
    cvt(unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, (&mut value as *mut libc::c_int).cast(), &mut len) })?;
    Ok(value)
}

/// SO_TYPE: `libc::SOCK_STREAM`, `SOCK_DGRAM`, `SOCK_SEQPACKET`, ...
pub fn socket_type(fd: BorrowedFd<'_>) -> io::Result<i32> {
    getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE)
}

/// A TCP listener's accept queue now and the backlog it listens with: for a listening socket
/// the kernel's `TCP_INFO` puts them in `tcpi_unacked` and `tcpi_sacked` (as `ss` shows them).
/// One getsockopt on our own descriptor: no netlink, no walk of any socket table.
pub fn tcp_listen_queue(fd: BorrowedFd<'_>) -> io::Result<(u32, u32)> {
    // struct tcp_info: eight u8 fields, then u32 rto, ato, snd_mss, rcv_mss, unacked, sacked.
    const STATE: usize = 0;
    const UNACKED: usize = 24;
    const SACKED: usize = 28;
    const TCP_LISTEN: u8 = 10; // include/net/tcp_states.h
    let mut info = [0u8; 32];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: info/len describe a valid buffer (the kernel copies at most len bytes); the
    // descriptor is borrowed.
    cvt(unsafe {
        libc::getsockopt(fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, info.as_mut_ptr().cast(), &mut len)
    })?;
    let field = |at: usize| u32::from_ne_bytes([info[at], info[at + 1], info[at + 2], info[at + 3]]);
    if (len as usize) < info.len() || info[STATE] != TCP_LISTEN {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a listening TCP socket"));
    }
    Ok((field(UNACKED), field(SACKED)))
}

/// SO_ACCEPTCONN: whether listen() was called on the socket.
pub fn socket_is_listening(fd: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? != 0)
}

/// (Re)sets a listening socket's backlog. listen() on a listening socket only changes it.
pub fn listen(fd: BorrowedFd<'_>, backlog: i32) -> io::Result<()> {
    // SAFETY: plain listen() on a borrowed descriptor.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) })?;
    Ok(())
}

/// The local address of a socket, as getsockname(2) reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalAddr {
    Inet(SocketAddr),
    Unix(PathBuf),
    /// An abstract unix socket (`@name`); the bytes exclude the leading NUL.
    UnixAbstract(Vec<u8>),
    UnixUnnamed,
    /// Another address family (netlink, vsock, ...), by number.
    Other(i32),
}

pub fn local_addr(fd: BorrowedFd<'_>) -> io::Result<LocalAddr> {
    // SAFETY: sockaddr_storage is large enough for any address; the kernel writes at most `len`.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    cvt(unsafe { libc::getsockname(fd.as_raw_fd(), (&mut storage as *mut libc::sockaddr_storage).cast(), &mut len) })?;
    let family = storage.ss_family as i32;
    Ok(match family {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin: &libc::sockaddr_in = unsafe { &*(&storage as *const libc::sockaddr_storage).cast() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            LocalAddr::Inet(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6: &libc::sockaddr_in6 = unsafe { &*(&storage as *const libc::sockaddr_storage).cast() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            LocalAddr::Inet(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        libc::AF_UNIX => {
            // SAFETY: the family says the storage holds a sockaddr_un.
            let sun: &libc::sockaddr_un = unsafe { &*(&storage as *const libc::sockaddr_storage).cast() };
            let path_offset = size_of::<libc::sa_family_t>();
            let path_len = (len as usize).saturating_sub(path_offset).min(sun.sun_path.len());
            let bytes: Vec<u8> = sun.sun_path[..path_len].iter().map(|&c| c as u8).collect();
            match bytes.first() {
                None => LocalAddr::UnixUnnamed,
                Some(0) => LocalAddr::UnixAbstract(bytes[1..].to_vec()),
                Some(_) => {
                    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
                    LocalAddr::Unix(PathBuf::from(OsStr::from_bytes(&bytes[..end])))
                }
            }
        }
        other => LocalAddr::Other(other),
    })
}

/// The soft limit on open files (RLIMIT_NOFILE).
pub fn open_file_limit() -> io::Result<u64> {
    // SAFETY: `lim` is a plain struct filled by the kernel.
    let mut lim: libc::rlimit = unsafe { zeroed() };
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    Ok(lim.rlim_cur)
}

pub fn getpid() -> Pid {
    // SAFETY: getpid cannot fail.
    unsafe { libc::getpid() }
}

/// Makes this process a child subreaper: orphaned descendants (a worker whose master died, a
/// master re-exec'd by USR2) are re-parented to us instead of PID 1, so we can reap and stop them.
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    cvt(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) })?;
    Ok(())
}

/// Reaps one exited child, if any, without blocking.
pub fn reap_any() -> io::Result<Option<(Pid, ExitStatus)>> {
    let mut status: libc::c_int = 0;
    // SAFETY: waitpid writes the status into a local c_int.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    match pid {
        0 => Ok(None),
        -1 => {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ECHILD) { Ok(None) } else { Err(err) }
        }
        pid => Ok(Some((pid, ExitStatus::from_raw(status)))),
    }
}

/// Sends `signal` to `pid`. A process that is already gone is not an error.
pub fn kill(pid: Pid, signal: i32) -> io::Result<()> {
    assert!(pid > 0, "kill({pid}) would signal a group or everyone");
    // SAFETY: kill with a positive pid signals exactly that process.
    match cvt(unsafe { libc::kill(pid, signal) }) {
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        other => other.map(drop),
    }
}

/// Sends `signal` to every process of the process group `pgid`. Returns false when the group
/// has no process left.
pub fn kill_group(pgid: Pid, signal: i32) -> io::Result<bool> {
    assert!(pgid > 1, "kill_group({pgid}) would signal our own group or everyone");
    // SAFETY: kill with a negative pid signals exactly that process group.
    match cvt(unsafe { libc::kill(-pgid, signal) }) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether the process group still has a member (a zombie counts until reaped).
pub fn group_alive(pgid: Pid) -> bool {
    kill_group(pgid, 0).unwrap_or(true)
}

/// A pipe whose both ends are close-on-exec and non-blocking.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two new descriptors, which we own from here on.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Whether a readable event (or hangup) is pending, per descriptor, after waiting up to
/// `timeout` (None: forever). A signal interrupting the wait is not an error: it returns
/// with nothing ready, and the signal shows up on the signal pipe.
pub fn poll_readable(fds: &[BorrowedFd<'_>], timeout: Option<Duration>) -> io::Result<Vec<bool>> {
    let fds: Vec<(BorrowedFd<'_>, bool)> = fds.iter().map(|fd| (*fd, false)).collect();
    poll(&fds, timeout)
}

/// Like [`poll_readable`], each descriptor waited on for readability, or (`true`) for a
/// priority event only: a cgroup's `cgroup.events` always polls readable, and signals a change
/// with POLLPRI (then read it again to wait for the next one).
pub fn poll(fds: &[(BorrowedFd<'_>, bool)], timeout: Option<Duration>) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|(fd, priority)| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: if *priority { libc::POLLPRI } else { libc::POLLIN },
            revents: 0,
        })
        .collect();
    let ms = match timeout {
        None => -1,
        // Round up so a deadline 0.4 ms away does not spin.
        Some(t) => t.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int,
    };
    // SAFETY: pfds is a valid array of pollfd of the given length.
    let ret = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if ret == -1 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EINTR) {
            return Ok(vec![false; fds.len()]);
        }
        return Err(err);
    }
    Ok(pfds.iter().map(|p| p.revents != 0).collect())
}

// ---------------------------------------------------------------------------------------------
// pidfds: a descriptor that refers to one process for as long as it is open, so a pid that was
// reused by another process is never signalled or mistaken for it.

/// The magic number of pidfs (`PID_FS_MAGIC`, linux/magic.h), the filesystem of pidfds since
/// Linux 6.9: each process has its own inode there, whose number is its *pidfd inode id*.
const PID_FS_MAGIC: i64 = 0x5049_4446;

/// A pidfd of `pid` (pidfd_open(2), close-on-exec). Fails with ESRCH when no such process exists.
pub fn pidfd_open(pid: Pid) -> io::Result<OwnedFd> {
    if pid <= 0 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor, owned from here on.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0 as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just created this descriptor for us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends `signal` to the process of `pidfd` (pidfd_send_signal(2)): the very process the pidfd
/// was opened for, never one that reused its pid. Returns false when that process is gone.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<bool> {
    // SAFETY: a borrowed pidfd, a signal number, no siginfo (null), no flags.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0 as libc::c_uint,
        )
    };
    if ret == -1 {
        let err = io::Error::last_os_error();
        return if err.raw_os_error() == Some(libc::ESRCH) { Ok(false) } else { Err(err) };
    }
    Ok(true)
}

/// Whether this kernel gives each process a pidfd inode id (pidfs, Linux 6.9+), and sockherd can
/// use it: pidfds on pidfs, and 64-bit inode numbers (a 32-bit `st_ino` holds only part of the id;
/// systemd then reads it from a file handle instead). Checked once.
pub fn pidfd_ids_supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        if size_of::<libc::ino_t>() < 8 || size_of::<usize>() < 8 {
            return false;
        }
        let Ok(pidfd) = pidfd_open(getpid()) else { return false };
        // SAFETY: `fs` is a plain struct filled by the kernel; the descriptor is owned above.
        let mut fs: libc::statfs = unsafe { zeroed() };
        if unsafe { libc::fstatfs(pidfd.as_raw_fd(), &mut fs) } == -1 {
            return false;
        }
        fs.f_type as i64 == PID_FS_MAGIC
    })
}

/// The pidfd inode id of the process of `pidfd` (what systemd passes as `LISTEN_PIDFDID=`,
/// `MAINPIDFDID=`), or None where the kernel has no such ids.
pub fn pidfd_inode_id(pidfd: BorrowedFd<'_>) -> io::Result<Option<u64>> {
    if !pidfd_ids_supported() {
        return Ok(None);
    }
    let (_, _, ino) = fstat(pidfd)?;
    Ok(Some(ino))
}

/// The pidfd inode id of the process `pid` (None where the kernel has no such ids). The answer
/// names the process that had `pid` at the time of the call.
pub fn pid_inode_id(pid: Pid) -> io::Result<Option<u64>> {
    if !pidfd_ids_supported() {
        return Ok(None);
    }
    pidfd_inode_id(pidfd_open(pid)?.as_fd())
}

/// The pidfd inode id of the calling process, computed with async-signal-safe system calls only
/// (pidfd_open, fstat, close), so that a forked child can compute its own before exec. None on
/// any failure. Only meaningful where [`pidfd_ids_supported`] said so (checked before fork).
fn own_pidfd_id_in_child() -> Option<u64> {
    // SAFETY: getpid, pidfd_open, fstat and close are plain system calls, async-signal-safe; the
    // descriptor is closed before returning and `st` lives on the stack.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0 as libc::c_uint);
        if fd < 0 {
            return None;
        }
        let mut st: libc::stat = zeroed();
        let ok = libc::fstat(fd as RawFd, &mut st) == 0;
        libc::close(fd as RawFd);
        ok.then_some(st.st_ino)
    }
}

// ---------------------------------------------------------------------------------------------
// Signals: the handler only writes the signal number to a pipe; the main loop does the work.

static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);
/// The process that installed the handlers: a forked child that has not exec'd yet must never
/// write into the supervisor's queue.
static SIGNAL_OWNER: AtomicI32 = AtomicI32::new(0);
/// The bit of a queued byte that says the signal was sent by a process (kill, sigqueue, tgkill),
/// not by the kernel (a terminal's resize or job control, a fault).
pub const SIGNAL_FROM_USER: u8 = 0x80;

/// Signals whose default action dumps core because they report a fault of this very process.
fn is_fault(signal: libc::c_int) -> bool {
    matches!(
        signal,
        libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE | libc::SIGTRAP | libc::SIGSYS | libc::SIGABRT
    )
}

extern "C" fn on_signal(signal: libc::c_int, info: *mut libc::siginfo_t, _context: *mut libc::c_void) {
    // SAFETY: only async-signal-safe calls (getpid, kill, sigaction, write); errno is saved and
    // restored; `info` is the kernel's siginfo for this delivery (checked for null).
    unsafe {
        let errno = *libc::__errno_location();
        let code = if info.is_null() { 0 } else { (*info).si_code };
        let sender = if info.is_null() { 0 } else { (*info).si_pid() };
        // SI_USER (0), SI_QUEUE (-1), SI_TKILL (-6), ...: sent by a process.
        let from_user = code <= 0;
        let own = libc::getpid() == SIGNAL_OWNER.load(Ordering::Relaxed);
        if is_fault(signal) {
            // SA_RESETHAND restored the default action on entry. A real fault (or our own
            // abort()) returns to it and dies of it, as it should; one sent with kill(2) by
            // another process is only an event: handle the next one too.
            if !from_user || sender == libc::getpid() || !own {
                *libc::__errno_location() = errno;
                return;
            }
            install_handler(signal);
        }
        if !from_user && matches!(signal, libc::SIGTTIN | libc::SIGTTOU) {
            // Job control of a terminal we write to from the background: stop, as by default.
            libc::kill(libc::getpid(), libc::SIGSTOP);
        }
        let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
        if own && fd >= 0 {
            let byte = (signal as u8 & !SIGNAL_FROM_USER) | if from_user { SIGNAL_FROM_USER } else { 0 };
            libc::write(fd, (&byte as *const u8).cast(), 1);
        }
        *libc::__errno_location() = errno;
    }
}

/// Installs `on_signal` for `signal`. Async-signal-safe (the fault path re-arms itself with it).
fn install_handler(signal: libc::c_int) -> libc::c_int {
    // SAFETY: a zeroed sigaction with our SA_SIGINFO handler, a full mask (handlers never nest)
    // and SA_RESTART; faults reset to the default action on entry (see on_signal).
    unsafe {
        let mut action: libc::sigaction = zeroed();
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        if is_fault(signal) {
            action.sa_flags |= libc::SA_RESETHAND;
        }
        if signal == libc::SIGCHLD {
            action.sa_flags |= libc::SA_NOCLDSTOP;
        }
        libc::sigfillset(&mut action.sa_mask);
        libc::sigaction(signal, &action, std::ptr::null_mut())
    }
}

/// Every signal whose default action would end or stop sockherd, plus SIGCHLD and SIGWINCH:
/// a signal nobody meant for us (logrotate's `systemctl kill -s USR1`) must never kill the
/// supervisor and orphan its generations. SIGKILL and SIGSTOP cannot be caught; SIGTSTP keeps
/// its default (a terminal's Ctrl-Z stops sockherd, as the user asks); SIGPIPE stays ignored
/// (as Rust's runtime sets it) and SIGCONT and SIGURG change nothing.
pub fn supervisor_signals() -> Vec<i32> {
    let mut signals: Vec<i32> = (1..32)
        .filter(|&s| {
            !matches!(s, libc::SIGKILL | libc::SIGSTOP | libc::SIGTSTP | libc::SIGPIPE | libc::SIGCONT | libc::SIGURG)
        })
        .collect();
    signals.extend(libc::SIGRTMIN()..=libc::SIGRTMAX());
    signals
}

/// Installs handlers for `signals` that queue each delivery on a pipe, and returns the pipe's
/// read end. Can be called once per process.
pub fn signal_pipe(signals: &[i32]) -> io::Result<OwnedFd> {
    let (read, write) = pipe()?;
    let write = std::mem::ManuallyDrop::new(write); // lives as long as the process
    if SIGNAL_PIPE.compare_exchange(-1, write.as_raw_fd(), Ordering::SeqCst, Ordering::SeqCst).is_err() {
        return Err(io::Error::other("signal handlers are already installed"));
    }
    SIGNAL_OWNER.store(getpid(), Ordering::SeqCst);
    for &signal in signals {
        cvt(install_handler(signal)).map_err(|e| io::Error::new(e.kind(), format!("signal {signal}: {e}")))?;
    }
    Ok(read)
}

/// Reads the queued signals as `(number, sent by a process)` (empty when none are pending).
pub fn read_signals(pipe: BorrowedFd<'_>) -> Vec<(i32, bool)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        // SAFETY: reads into a local buffer from a borrowed non-blocking descriptor.
        let n = unsafe { libc::read(pipe.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        out.extend(buf[..n as usize].iter().map(|&b| (i32::from(b & !SIGNAL_FROM_USER), b & SIGNAL_FROM_USER != 0)));
    }
    out
}

/// Runs `f` (a fork) with every signal blocked, so no signal is handled by a forked child's copy
/// of our handlers before it resets them; the child inherits the mask and unblocks it itself
/// ([`reset_signals_in_child`]).
pub fn with_signals_blocked<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: sigset_t values on the stack; pthread_sigmask on the calling (only) thread.
    unsafe {
        let mut all: libc::sigset_t = zeroed();
        let mut old: libc::sigset_t = zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        let result = f();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        result
    }
}

/// Spawns `command` as a child that starts with default signal dispositions and an empty mask,
/// whatever sockherd's own handlers and mask are.
pub fn spawn_clean(command: &mut std::process::Command) -> io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook only calls sigaction and sigprocmask, which are async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            reset_signals_in_child();
            Ok(())
        });
    }
    with_signals_blocked(|| command.spawn())
}

/// Resets every signal's disposition to default and unblocks all signals. Used in children,
/// which must not inherit our handlers' queue or a blocked mask.
fn reset_signals_in_child() {
    // SAFETY: sigaction/sigprocmask are async-signal-safe; the structs are on the stack.
    unsafe {
        let mut action: libc::sigaction = zeroed();
        action.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut action.sa_mask);
        for signal in 1..libc::SIGRTMIN() {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                libc::sigaction(signal, &action, std::ptr::null_mut());
            }
        }
        let mut empty: libc::sigset_t = zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
}

// ---------------------------------------------------------------------------------------------
// Exec: everything the child needs, built before fork, applied with async-signal-safe calls.

/// A program image ready to exec: path, argv, envp and the sockets to place at fds 3.., all
/// allocated before fork. [`ExecImage::exec`] only moves descriptors and calls execve.
pub struct ExecImage {
    path: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _envp: Vec<CString>,
    envp_ptrs: Vec<*const libc::c_char>,
    /// Index in envp of LISTEN_PID, whose value is the exec'ing process's own pid.
    listen_pid_slot: Option<usize>,
    listen_pid_buf: Box<[u8; 48]>,
    /// Index in envp of LISTEN_PIDFDID, the exec'ing process's own pidfd inode id: the last
    /// entry, so that it can be left out (a null pointer there) if the id cannot be had.
    listen_pidfdid_slot: Option<usize>,
    listen_pidfdid_buf: Box<[u8; 48]>,
    /// Descriptors that become 3, 4, ... in the new image, in this order.
    sockets: Vec<RawFd>,
    scratch: Vec<RawFd>,
    /// A lower CPU priority for the new image, until its supervisor sets it back.
    boot_priority: Option<BootPriority>,
    /// A cgroup's `cgroup.procs`, open for writing: the child writes itself into it first, so
    /// that nothing it ever forks starts outside that cgroup.
    cgroup_procs: Option<RawFd>,
}

// SAFETY: the raw pointers point into heap buffers owned by the same struct (CStrings and a
// Box), which never move or change after construction, so the struct can cross threads.
unsafe impl Send for ExecImage {}
unsafe impl Sync for ExecImage {}

/// The LISTEN_PID and LISTEN_PIDFDID variable names, for the entries written at exec time.
const LISTEN_PID_PREFIX: &[u8] = b"LISTEN_PID=";
const LISTEN_PIDFDID_PREFIX: &[u8] = b"LISTEN_PIDFDID=";

impl ExecImage {
    /// `env` entries are `KEY=VALUE`; pass `listen_pid` to add `LISTEN_PID=<pid of the new image>`
    /// and, where the kernel has pidfd inode ids, `LISTEN_PIDFDID=<its pidfd inode id>` (as
    /// systemd >= 259 does; libsystemd's sd_listen_fds() checks both).
    /// The descriptors in `sockets` must stay open until exec (the caller keeps owning them).
    pub fn new(
        path: &OsStr,
        argv: &[&OsStr],
        env: &[Vec<u8>],
        listen_pid: bool,
        sockets: Vec<RawFd>,
    ) -> io::Result<Self> {
        let cstring = |bytes: &[u8]| {
            CString::new(bytes).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "argument or environment entry contains a NUL byte")
            })
        };
        let path = cstring(path.as_bytes())?;
        let argv: Vec<CString> = argv.iter().map(|a| cstring(a.as_bytes())).collect::<io::Result<_>>()?;
        let mut envp: Vec<CString> = env.iter().map(|e| cstring(e)).collect::<io::Result<_>>()?;
        let listen_pid_slot = listen_pid.then(|| {
            envp.push(CString::new(LISTEN_PID_PREFIX).expect("no NUL"));
            envp.len() - 1
        });
        // Checked here, before fork: the child only computes the id.
        let listen_pidfdid_slot = (listen_pid && pidfd_ids_supported()).then(|| {
            envp.push(CString::new(LISTEN_PIDFDID_PREFIX).expect("no NUL"));
            envp.len() - 1
        });
        let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
        envp_ptrs.push(std::ptr::null());
        let mut listen_pid_buf = Box::new([0u8; 48]);
        listen_pid_buf[..LISTEN_PID_PREFIX.len()].copy_from_slice(LISTEN_PID_PREFIX);
        let mut listen_pidfdid_buf = Box::new([0u8; 48]);
        listen_pidfdid_buf[..LISTEN_PIDFDID_PREFIX.len()].copy_from_slice(LISTEN_PIDFDID_PREFIX);
        let scratch = vec![-1; sockets.len()];
        Ok(ExecImage {
            path,
            _argv: argv,
            argv_ptrs,
            _envp: envp,
            envp_ptrs,
            listen_pid_slot,
            listen_pid_buf,
            listen_pidfdid_slot,
            listen_pidfdid_buf,
            sockets,
            scratch,
            boot_priority: None,
            cgroup_procs: None,
        })
    }

    /// The new image starts at this (lower) priority.
    pub fn set_boot_priority(&mut self, priority: BootPriority) {
        self.boot_priority = Some(priority);
    }

    /// The new image starts in the cgroup whose `cgroup.procs` is open as `procs` (which must
    /// stay open until exec): the child moves itself there before anything else.
    pub fn enter_cgroup(&mut self, procs: BorrowedFd<'_>) {
        self.cgroup_procs = Some(procs.as_raw_fd());
    }

    /// Replaces the current process image. Returns only on failure, with the error.
    ///
    /// Async-signal-safe: runs in a forked child (from `Command::pre_exec`) as well as in
    /// place for `sockherd exec`. No allocation happens here.
    pub fn exec(&mut self) -> io::Error {
        if let Some(procs) = self.cgroup_procs {
            // "0" moves the writing process. A failure is an exec failure: the generation must
            // never run outside its cgroup.
            // SAFETY: write(2) of a static byte to a descriptor the parent keeps open.
            if unsafe { libc::write(procs, b"0".as_ptr().cast(), 1) } != 1 {
                return io::Error::last_os_error();
            }
        }
        reset_signals_in_child();
        let n = self.sockets.len() as RawFd;
        let first = 3;
        // Move every socket above all the numbers involved first, so that placing socket i at
        // 3+i never overwrites a socket not yet placed.
        let max_source = self.sockets.iter().copied().max().unwrap_or(0);
        let above = (first + n).max(max_source + 1);
        for (i, &fd) in self.sockets.iter().enumerate() {
            // SAFETY: fcntl F_DUPFD_CLOEXEC on a descriptor the parent kept open.
            let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above) };
            if dup == -1 {
                return io::Error::last_os_error();
            }
            self.scratch[i] = dup;
        }
        for (i, &dup) in self.scratch.iter().enumerate() {
            let target = first + i as RawFd;
            // SAFETY: dup2 onto a number we are allowed to replace (3.. are ours to assign).
            // dup2(fd, fd) would not clear FD_CLOEXEC, hence the explicit F_SETFD below, which
            // is also what makes `target` survive exec.
            unsafe {
                if libc::dup2(dup, target) == -1 || libc::fcntl(target, libc::F_SETFD, 0) == -1 {
                    return io::Error::last_os_error();
                }
            }
        }
        // Every other descriptor above the sockets must not reach the new image: mark them all
        // close-on-exec (not closed now: std's exec-error pipe must stay usable until execve).
        // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                (first + n) as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            )
        };
        if ret == -1 {
            // Kernels before 5.11: walk the table instead.
            let limit = open_file_limit().unwrap_or(65536).min(1 << 20) as RawFd;
            for fd in (first + n)..limit {
                // SAFETY: fcntl on any integer is harmless (EBADF when not open).
                unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            }
        }
        if let Some(slot) = self.listen_pid_slot {
            // SAFETY: getpid is async-signal-safe.
            let pid = unsafe { libc::getpid() };
            write_decimal(&mut self.listen_pid_buf[LISTEN_PID_PREFIX.len()..], pid as u64);
            self.envp_ptrs[slot] = self.listen_pid_buf.as_ptr().cast();
        }
        if let Some(slot) = self.listen_pidfdid_slot {
            // Our own id, never an inherited one (systemd's names sockherd). A pidfd opened now
            // names this process, which keeps its pid (and id) across execve.
            match own_pidfd_id_in_child() {
                Some(id) => {
                    write_decimal(&mut self.listen_pidfdid_buf[LISTEN_PIDFDID_PREFIX.len()..], id);
                    self.envp_ptrs[slot] = self.listen_pidfdid_buf.as_ptr().cast();
                }
                // Left out (the slot is the last entry): LISTEN_PID alone still names us.
                None => self.envp_ptrs[slot] = std::ptr::null(),
            }
        }
        if let Some(priority) = &self.boot_priority {
            priority.apply_in_child();
        }
        // SAFETY: path, argv and envp are NUL-terminated arrays of NUL-terminated strings that
        // live in `self` for the duration of the call.
        unsafe { libc::execve(self.path.as_ptr(), self.argv_ptrs.as_ptr(), self.envp_ptrs.as_ptr()) };
        io::Error::last_os_error()
    }
}

/// Writes `value` in decimal followed by a NUL into `buf`, without allocating.
fn write_decimal(buf: &mut [u8], mut value: u64) {
    let mut digits = [0u8; 20];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (value % 10) as u8;
        len += 1;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[i] = digits[len - 1 - i];
    }
    buf[len] = 0;
}

/// The uid of the process at the other end of a unix stream socket.
pub fn peer_uid(fd: BorrowedFd<'_>) -> io::Result<(Pid, u32)> {
    // SAFETY: ucred is a plain struct; len describes it.
    let mut cred: libc::ucred = unsafe { zeroed() };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    Ok((cred.pid, cred.uid))
}

pub fn geteuid() -> u32 {
    // SAFETY: cannot fail.
    unsafe { libc::geteuid() }
}

/// Sends `data` with one descriptor attached (SCM_RIGHTS) on a connected or addressed datagram
/// socket. Used for sd_notify's BARRIER=1.
pub fn send_with_fd(sock: BorrowedFd<'_>, data: &[u8], fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: the iovec and control buffer are local and sized with CMSG_SPACE; the descriptor
    // numbers are borrowed and stay open during the call.
    unsafe {
        let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
        let space = libc::CMSG_SPACE(size_of::<RawFd>() as u32) as usize;
        let mut control = vec![0u8; space];
        let mut msg: libc::msghdr = zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd.as_raw_fd());
        let sent = libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL);
        if sent == -1 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }
}

/// Turns on SO_PASSCRED so every datagram received carries its sender's credentials.
pub fn set_passcred(fd: BorrowedFd<'_>) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with a local c_int.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as _,
        )
    })?;
    Ok(())
}

/// CLOCK_MONOTONIC in microseconds, as sd_notify's MONOTONIC_USEC wants it.
pub fn monotonic_usec() -> u64 {
    // SAFETY: clock_gettime fills a local timespec; CLOCK_MONOTONIC always exists on Linux.
    let mut ts: libc::timespec = unsafe { zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// Sets the process umask and returns the previous one.
pub fn umask(mask: u32) -> u32 {
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(mask as libc::mode_t) as u32 }
}

/// Signal names we accept and print, with their numbers.
pub const SIGNALS: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("TERM", libc::SIGTERM),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("WINCH", libc::SIGWINCH),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("ALRM", libc::SIGALRM),
    ("PIPE", libc::SIGPIPE),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("SEGV", libc::SIGSEGV),
    ("STKFLT", libc::SIGSTKFLT),
    ("TSTP", libc::SIGTSTP),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("IO", libc::SIGIO),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

/// Forks a child in a new process group (its pid is the group id) that starts in `dir` and
/// execs `image`. An exec failure (ENOENT, EACCES, ...) is returned here, from the parent.
pub fn spawn(mut image: ExecImage, dir: Option<&std::path::Path>) -> io::Result<Pid> {
    use std::os::unix::process::CommandExt;
    // The program given to Command is never executed: the pre_exec hook execs the image and
    // only returns (to std's error reporting) when that fails.
    let mut command = std::process::Command::new("/");
    command.process_group(0);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    // std reports an exec failure through a pipe it opens at spawn, at the lowest free numbers.
    // Were those among the targets 3.., the child's fd plan would put a socket over the pipe's
    // write end and the failure would be lost (the parent would see a successful exec). The
    // free target numbers are held until the fork is done.
    let held = hold_free_fds(3, image.sockets.len())?;
    // SAFETY: the hook only calls async-signal-safe functions on memory allocated before fork
    // (see ExecImage::exec), and it never returns into std except with an error.
    unsafe {
        command.pre_exec(move || Err(image.exec()));
    }
    let child = with_signals_blocked(|| command.spawn());
    drop(held);
    Ok(child?.id() as Pid)
}

/// Occupies every free descriptor number in `first..first + count` with a close-on-exec
/// /dev/null (sockherd is single-threaded: nothing else opens descriptors meanwhile).
fn hold_free_fds(first: RawFd, count: usize) -> io::Result<Vec<OwnedFd>> {
    let null: OwnedFd = std::fs::File::open("/dev/null")?.into();
    let mut held = Vec::new();
    for target in first..first + count as RawFd {
        if fd_is_open(target) {
            continue;
        }
        // SAFETY: dup3 onto a number that is free (checked just above, single-threaded); the
        // new descriptor is ours.
        let fd = cvt(unsafe { libc::dup3(null.as_raw_fd(), target, libc::O_CLOEXEC) })?;
        held.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    held.push(null);
    Ok(held)
}

/// The process group of `pid`, or None when it no longer exists.
pub fn getpgid(pid: Pid) -> Option<Pid> {
    // SAFETY: getpgid takes a plain integer.
    let pgid = unsafe { libc::getpgid(pid) };
    (pgid >= 0).then_some(pgid)
}

// ---------------------------------------------------------------------------------------------
// pidfds: a process held by a descriptor, signalled and watched without racing pid reuse.

/// A process referred to by a pidfd (pidfd_open(2), Linux ≥ 5.3). Unlike a pid, it can never
/// come to mean another process: signals sent through it reach this one or fail with ESRCH,
/// and it polls readable once the process has exited (for any process, not only our children).
#[derive(Debug)]
pub struct Pidfd {
    fd: OwnedFd,
    pid: Pid,
}

impl Pidfd {
    /// Opens a pidfd for `pid` (ESRCH when there is no such process).
    pub fn open(pid: Pid) -> io::Result<Pidfd> {
        Ok(Pidfd { fd: pidfd_open(pid)?, pid })
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }

    /// Sends `signal`. Returns false when the process has already exited.
    pub fn signal(&self, signal: i32) -> io::Result<bool> {
        pidfd_send_signal(self.as_fd(), signal)
    }

    /// Whether the process has exited (a zombie counts as exited).
    pub fn exited(&self) -> bool {
        poll_readable(&[self.as_fd()], Some(Duration::ZERO)).map(|r| r[0]).unwrap_or(false)
    }
}

/// The size of a memory page, the unit of `/proc/PID/statm`.
pub fn page_size() -> u64 {
    // SAFETY: sysconf takes a constant name and returns a number.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as u64 } else { 4096 }
}

/// USER_HZ: the unit of the clock tick counts /proc reports (process start times).
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf takes a constant name and returns a number.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as u64 } else { 100 }
}

/// Receives one datagram (waiting for it) and takes the descriptors attached to it: what
/// systemd gets from an sd_notify message, for the tests of what we send.
#[cfg(test)]
pub fn recv_with_fds(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    // SAFETY: iovec and control buffer are local; the control messages are walked with the CMSG
    // macros within `msg_controllen`, and each descriptor the kernel installed is owned once.
    unsafe {
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        let mut control = [0u64; 64];
        let mut msg: libc::msghdr = zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of::<[u64; 64]>() as _;
        let n = libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n == -1 {
            return Err(io::Error::last_os_error());
        }
        let mut fds = Vec::new();
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let header = &*cmsg;
            if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
                let count = (header.cmsg_len as usize - libc::CMSG_LEN(0) as usize) / size_of::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(
                        libc::CMSG_DATA(cmsg).cast::<RawFd>().add(i),
                    )));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        Ok((n as usize, fds))
    }
}

// ---------------------------------------------------------------------------------------------
// Notify senders: who sent a datagram, checked while it lives.

/// SO_PASSPIDFD and SCM_PIDFD (Linux 6.5): every datagram received carries a pidfd of its
/// sender. Not in the libc crate's exported constants.
#[cfg(any(target_arch = "sparc", target_arch = "sparc64"))]
const SO_PASSPIDFD: libc::c_int = 0x55;
#[cfg(not(any(target_arch = "sparc", target_arch = "sparc64")))]
const SO_PASSPIDFD: libc::c_int = 76;
const SCM_PIDFD: libc::c_int = 4;

/// Turns on SO_PASSPIDFD. Fails (ENOPROTOOPT) on kernels before 6.5, where the sender is
/// checked by pid instead.
pub fn set_passpidfd(fd: BorrowedFd<'_>) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with a local c_int.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PASSPIDFD,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as _,
        )
    })?;
    Ok(())
}

/// One datagram received on a notify socket, with what the kernel says of its sender.
#[derive(Debug)]
pub struct Received {
    /// Bytes placed in the buffer.
    pub len: usize,
    /// The datagram's real length: more than `len` when it did not fit.
    pub full_len: usize,
    /// The sender's pid (SCM_CREDENTIALS; SO_PASSCRED must be on).
    pub pid: Option<Pid>,
    /// The sender, held (SCM_PIDFD; SO_PASSPIDFD must be on).
    pub pidfd: Option<Pidfd>,
    /// Descriptors passed along (SCM_RIGHTS), e.g. BARRIER=1's pipe end.
    pub fds: Vec<OwnedFd>,
}

/// Receives one datagram without blocking; None when nothing is pending. Room is made for the
/// credentials, a pidfd and a few passed descriptors: the kernel closes any it cannot fit.
pub fn recv_notify(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<Received>> {
    // SAFETY: iovec and control buffer are local; we walk the control messages with the CMSG
    // macros within `msg_controllen`, and take ownership of each descriptor the kernel
    // installed for us exactly once.
    unsafe {
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        let mut control = [0u64; 24]; // 192 bytes, aligned for cmsghdr
        let mut msg: libc::msghdr = zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of::<[u64; 24]>() as _;
        let n = libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC | libc::MSG_TRUNC);
        if n == -1 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(err);
        }
        let mut received = Received {
            len: (n as usize).min(buf.len()),
            full_len: n as usize,
            pid: None,
            pidfd: None,
            fds: Vec::new(),
        };
        let mut pidfd_received = None;
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let header = &*cmsg;
            let payload = header.cmsg_len as usize - libc::CMSG_LEN(0) as usize;
            if header.cmsg_level == libc::SOL_SOCKET {
                match header.cmsg_type {
                    libc::SCM_CREDENTIALS if payload >= size_of::<libc::ucred>() => {
                        let cred = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::ucred>());
                        received.pid = Some(cred.pid);
                    }
                    SCM_PIDFD if payload >= size_of::<RawFd>() => {
                        let pidfd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
                        pidfd_received = Some(OwnedFd::from_raw_fd(pidfd));
                    }
                    libc::SCM_RIGHTS => {
                        for i in 0..payload / size_of::<RawFd>() {
                            let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>().add(i));
                            received.fds.push(OwnedFd::from_raw_fd(fd));
                        }
                    }
                    _ => {}
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        if let (Some(fd), Some(pid)) = (pidfd_received, received.pid) {
            received.pidfd = Some(Pidfd { fd, pid });
        }
        Ok(Some(received))
    }
}

/// Fills `buf` with random bytes from the kernel (getrandom(2)), for names nobody can guess.
pub fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: getrandom writes at most `len` bytes into the rest of our buffer.
        let n = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n == -1 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        filled += n as usize;
    }
    Ok(())
}

/// Takes an exclusive flock(2) on `fd`, waiting for it; released when the descriptor closes.
pub fn flock_exclusive(fd: BorrowedFd<'_>) -> io::Result<()> {
    loop {
        // SAFETY: flock on a borrowed descriptor.
        match cvt(unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other.map(drop),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CPU priority: a booting generation's nice value and policy, and setting them back per thread.

/// sockherd's own nice value.
pub fn own_nice() -> i32 {
    // SAFETY: getpriority has no memory arguments. -1 is a valid value, told apart from an
    // error by errno, which cannot be set for PRIO_PROCESS of ourselves: take it as it is.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
}

/// Sets the nice value of one thread (`tid`; Linux keeps nice values per thread).
pub fn set_thread_nice(tid: Pid, nice: i32) -> io::Result<()> {
    // SAFETY: setpriority has no memory arguments.
    cvt(unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) }).map(drop)
}

/// Puts one thread back on the normal policy (SCHED_OTHER), its nice value kept.
pub fn set_thread_normal_policy(tid: Pid) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: param is a valid sched_param for the call's duration.
    cvt(unsafe { libc::sched_setscheduler(tid, libc::SCHED_OTHER, &param) }).map(drop)
}

/// sockherd's own scheduling policy (SCHED_OTHER, SCHED_BATCH, ...).
pub fn own_policy() -> io::Result<i32> {
    // SAFETY: no memory arguments.
    cvt(unsafe { libc::sched_getscheduler(0) })
}

/// Whether this process may set its own nice value and policy (to what they are: no change).
/// A seccomp filter that refuses them (systemd's `SystemCallFilter=~@resources` with
/// `SystemCallErrorNumber=EPERM`) makes them fail with EPERM for every process of the unit.
pub fn priority_calls_allowed(own_nice: i32) -> io::Result<()> {
    let policy = own_policy()?;
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: param is a valid sched_param for the call's duration; no memory arguments else.
    cvt(unsafe { libc::sched_setscheduler(0, policy, &param) })?;
    cvt(unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, own_nice) }).map(drop)
}

/// RLIMIT_NICE (soft, hard).
pub fn nice_rlimit() -> io::Result<(u64, u64)> {
    // SAFETY: rlimit is a plain struct, filled by the call.
    let mut limit: libc::rlimit = unsafe { zeroed() };
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NICE, &mut limit) })?;
    Ok((limit.rlim_cur as u64, limit.rlim_max as u64))
}

/// Raises RLIMIT_NICE's soft limit (up to the hard one, as any process may).
pub fn set_nice_rlimit(soft: u64) -> io::Result<()> {
    let (_, hard) = nice_rlimit()?;
    let limit = libc::rlimit { rlim_cur: soft as libc::rlim_t, rlim_max: hard as libc::rlim_t };
    // SAFETY: limit is a valid rlimit for the call's duration.
    cvt(unsafe { libc::setrlimit(libc::RLIMIT_NICE, &limit) }).map(drop)
}

/// The priority a generation boots at, applied in the child between fork and exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootPriority {
    /// The nice value, if it is to change (only where sockherd can set it back).
    pub nice: Option<i32>,
    /// SCHED_BATCH: the scheduler treats it as CPU-bound and does not let its wakeups preempt.
    pub batch: bool,
}

impl BootPriority {
    /// Async-signal-safe (setpriority and sched_setscheduler are plain system calls); the new
    /// image and every process and thread it creates inherit both. Best effort: neither call
    /// can fail for a process lowering its own priority.
    fn apply_in_child(&self) {
        if let Some(nice) = self.nice {
            // SAFETY: no memory arguments.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
        }
        if self.batch {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: param lives on this stack frame for the call's duration.
            unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
        }
    }
}

/// The value of extended attribute `name` of `path` (at most 256 bytes).
pub fn getxattr(path: &std::path::Path, name: &str) -> io::Result<Vec<u8>> {
    let path = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let name = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut value = vec![0u8; 256];
    // SAFETY: both strings are NUL-terminated and live for the call; the kernel writes at most
    // value.len() bytes into the buffer.
    let n = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    value.truncate(n as usize);
    Ok(value)
}

/// A netlink socket for sock_diag (`NETLINK_SOCK_DIAG`): the kernel's view of sockets, the
/// listen queues included. Answers come within `timeout` or not at all.
pub fn sock_diag_socket(timeout: Duration) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the new descriptor is owned at once.
    let fd =
        cvt(unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG) })?;
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: `tv` is a valid timeval whose size is passed along; the descriptor is ours.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    })?;
    Ok(fd)
}

/// Sends one datagram on a socket with a default destination (a netlink socket: the kernel).
pub fn send(fd: BorrowedFd<'_>, data: &[u8]) -> io::Result<usize> {
    // SAFETY: the buffer is valid for `data.len()` bytes; the descriptor is borrowed.
    let n = unsafe { libc::send(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}

/// Receives one datagram into `buf`; its length.
pub fn recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the buffer is valid and writable for `buf.len()` bytes; the descriptor is borrowed.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}

// ---------------------------------------------------------------------------------------------
// Re-exec: the supervisor replaces its own image, same pid, keeping chosen descriptors.

/// The build's label, empty unless stamped after the build
/// (`objcopy --update-section .sockherd_build=FILE`): a package stamps its own version there,
/// and two builds of one source tell themselves apart by it (see `reexec::version`).
#[used]
#[unsafe(link_section = ".sockherd_build")]
static BUILD_LABEL: [u8; 64] = [0; 64];

/// [`BUILD_LABEL`] as the file holds it now, not as it was compiled.
pub fn build_label() -> [u8; 64] {
    // SAFETY: a volatile read of a static array: the optimizer may not assume the zeros it was
    // compiled with, since the section may have been rewritten since.
    unsafe { std::ptr::read_volatile(&raw const BUILD_LABEL) }
}

/// Waits for the child `pid` to exit and reaps it.
pub fn wait_pid(pid: Pid) -> io::Result<ExitStatus> {
    assert!(pid > 0, "wait_pid({pid}) would wait for a group");
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid writes the status into a local c_int.
        match unsafe { libc::waitpid(pid, &mut status, 0) } {
            -1 => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
            _ => return Ok(ExitStatus::from_raw(status)),
        }
    }
}

/// Makes the pipe's buffer hold at least `bytes` (F_SETPIPE_SZ).
pub fn set_pipe_size(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    let bytes = libc::c_int::try_from(bytes).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: fcntl with an integer argument on a borrowed descriptor.
    let size = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETPIPE_SZ) })?;
    if size < bytes {
        // SAFETY: as above.
        cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, bytes) })?;
    }
    Ok(())
}

/// The signal mask before [`block_all_signals`], to put back.
pub struct SignalMask(libc::sigset_t);

/// Blocks every signal on the calling (only) thread. A blocked signal stays pending, across an
/// execve too, until a mask without it: the next image gets what arrived meanwhile.
pub fn block_all_signals() -> SignalMask {
    // SAFETY: sigset_t values on the stack; pthread_sigmask on the calling thread.
    unsafe {
        let mut all: libc::sigset_t = zeroed();
        let mut old: libc::sigset_t = zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        SignalMask(old)
    }
}

/// Puts back the mask [`block_all_signals`] replaced.
pub fn restore_signal_mask(mask: SignalMask) {
    // SAFETY: a mask read by pthread_sigmask.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &mask.0, std::ptr::null_mut()) };
}

/// Unblocks every signal: a re-executed supervisor, its handlers installed, takes the signals
/// that waited through the exec.
pub fn unblock_all_signals() {
    // SAFETY: an empty sigset_t on the stack.
    unsafe {
        let mut empty: libc::sigset_t = zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
}

/// The program a re-exec runs: a path, or an open descriptor of the file (execveat with
/// AT_EMPTY_PATH), which still names the image it was opened on after the path was replaced.
pub enum ExecTarget<'a> {
    Path(&'a OsStr),
    Fd(BorrowedFd<'a>),
}

/// Replaces this process's image with `target`, `argv` and `env` (`NAME=value` entries).
/// Returns only on failure, with the process as it was.
pub fn exec_self(target: ExecTarget<'_>, argv: &[&OsStr], env: &[Vec<u8>]) -> io::Error {
    let to_c =
        |bytes: &[u8]| CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte"));
    let args: Vec<CString> = match argv.iter().map(|a| to_c(a.as_bytes())).collect() {
        Ok(args) => args,
        Err(e) => return e,
    };
    let vars: Vec<CString> = match env.iter().map(|e| to_c(e)).collect() {
        Ok(vars) => vars,
        Err(e) => return e,
    };
    let mut arg_ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    arg_ptrs.push(std::ptr::null());
    let mut env_ptrs: Vec<*const libc::c_char> = vars.iter().map(|v| v.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());
    match target {
        ExecTarget::Path(path) => {
            let path = match to_c(path.as_bytes()) {
                Ok(path) => path,
                Err(e) => return e,
            };
            // SAFETY: NUL-terminated arrays of pointers into CStrings that outlive the call.
            unsafe { libc::execve(path.as_ptr(), arg_ptrs.as_ptr(), env_ptrs.as_ptr()) };
        }
        ExecTarget::Fd(fd) => {
            // SAFETY: as above; an empty path with AT_EMPTY_PATH runs the file `fd` is open on.
            unsafe {
                libc::syscall(
                    libc::SYS_execveat,
                    fd.as_raw_fd(),
                    c"".as_ptr(),
                    arg_ptrs.as_ptr(),
                    env_ptrs.as_ptr(),
                    libc::AT_EMPTY_PATH,
                )
            };
        }
    }
    io::Error::last_os_error()
}

/// Whether the open descriptor number `fd` is a socket (false when it is not open).
pub fn fd_is_socket(fd: RawFd) -> bool {
    // SAFETY: fstat fills a local struct; any integer is a valid argument (EBADF otherwise).
    let mut st: libc::stat = unsafe { zeroed() };
    (unsafe { libc::fstat(fd, &mut st) }) == 0 && is_socket_mode(st.st_mode)
}

/// Whether `fd` is an open pipe (FIFO).
pub fn fd_is_pipe(fd: RawFd) -> bool {
    // SAFETY: fstat fills a local struct; any integer is a valid argument (EBADF otherwise).
    let mut st: libc::stat = unsafe { zeroed() };
    (unsafe { libc::fstat(fd, &mut st) }) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFIFO
}

/// What an inherited descriptor (not ours to own or close) holds up to its end, read without
/// ever waiting: None when a read would wait, that is while a writer still holds it open with
/// nothing more written. An error past `limit` bytes.
pub fn read_to_end_now(fd: RawFd, limit: usize) -> io::Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd on the stack; a zero timeout never blocks.
        let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
        if ready < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if ready == 0 {
            return Ok(None);
        }
        // SAFETY: reads into a local buffer; poll said a read does not block.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            0 => return Ok(Some(out)),
            n if n > 0 => out.extend_from_slice(&buf[..n as usize]),
            _ => {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => return Ok(None),
                    _ => return Err(err),
                }
            }
        }
        if out.len() > limit {
            return Err(io::Error::other(format!("more than {limit} bytes")));
        }
    }
}

/// Removes `name` from our environment, so that no child of ours gets it. Only while this
/// process has a single thread: libc's getenv, called by any thread (by C code too, which no
/// lock of std's covers), may read the environment while it changes. With more threads it
/// changes nothing and says so.
pub fn remove_env(name: &str) -> io::Result<()> {
    let threads = std::fs::read_dir("/proc/self/task")?.count();
    if threads != 1 {
        return Err(io::Error::other(format!("{threads} threads run (/proc/self/task): the environment stays")));
    }
    // SAFETY: this is the process's only thread, checked above; only this thread could start
    // another one, and it is here.
    unsafe { std::env::remove_var(name) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// Waits for one specific child (never another test's).
    fn wait_for(pid: Pid) -> ExitStatus {
        let mut status = 0;
        // SAFETY: waitpid on our own child, status into a local.
        let ret = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(ret, pid, "waitpid({pid}): {}", io::Error::last_os_error());
        ExitStatus::from_raw(status)
    }

    #[test]
    fn pidfd_open_refuses_what_is_no_process() {
        assert_eq!(pidfd_open(0).unwrap_err().raw_os_error(), Some(libc::EINVAL));
        assert_eq!(pidfd_open(-5).unwrap_err().raw_os_error(), Some(libc::EINVAL));
        // Above any pid_max (at most 2^22).
        let err = pidfd_open(i32::MAX).unwrap_err().raw_os_error();
        assert!(matches!(err, Some(libc::ESRCH) | Some(libc::EINVAL)), "{err:?}");
        let pidfd = pidfd_open(getpid()).unwrap();
        assert!(pidfd.as_raw_fd() > 2);
        // Close-on-exec, as pidfd_open(2) promises.
        // SAFETY: F_GETFD on a descriptor we own.
        assert_ne!(unsafe { libc::fcntl(pidfd.as_raw_fd(), libc::F_GETFD) } & libc::FD_CLOEXEC, 0);
    }

    #[test]
    fn pidfd_send_signal_reaches_the_process_and_then_knows_it_is_gone() {
        let mut child = Command::new("sleep").arg("60").stdin(Stdio::null()).spawn().expect("spawn sleep");
        let pid = child.id() as Pid;
        let pidfd = pidfd_open(pid).unwrap();
        assert!(pidfd_send_signal(pidfd.as_fd(), libc::SIGTERM).unwrap());
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        // Reaped: the pidfd still names that process, which is gone; even if the pid were reused,
        // nothing else would be signalled.
        assert!(!pidfd_send_signal(pidfd.as_fd(), libc::SIGTERM).unwrap());
        let ours = pidfd_open(getpid()).unwrap();
        assert_eq!(pidfd_send_signal(ours.as_fd(), -1).unwrap_err().raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn pidfd_inode_ids_name_one_process_each() {
        let ours = pid_inode_id(getpid()).unwrap();
        assert_eq!(ours, pidfd_inode_id(pidfd_open(getpid()).unwrap().as_fd()).unwrap());
        let mut child = Command::new("sleep").arg("60").stdin(Stdio::null()).spawn().expect("spawn sleep");
        let theirs = pid_inode_id(child.id() as Pid).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        if pidfd_ids_supported() {
            let (ours, theirs) = (ours.unwrap(), theirs.unwrap());
            assert_ne!(ours, theirs);
            // The same id from a second pidfd, and from the async-signal-safe path of a child.
            assert_eq!(Some(ours), pid_inode_id(getpid()).unwrap());
            assert_eq!(Some(ours), own_pidfd_id_in_child());
        } else {
            assert_eq!((ours, theirs), (None, None));
        }
    }

    /// LISTEN_PID and LISTEN_PIDFDID name the exec'd child itself, whatever our environment says.
    #[test]
    fn exec_image_gives_the_child_its_own_listen_pid_and_pidfd_id() {
        let dir = std::env::temp_dir().join(format!("sockherd-sys-{}", getpid()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("env");
        let script = format!("echo \"$LISTEN_PID ${{LISTEN_PIDFDID-unset}}\" >{}", out.display());
        let argv = [OsStr::new("sh"), OsStr::new("-c"), OsStr::new(&script)];
        // (An inherited LISTEN_PIDFDID never gets this far: command::environment drops it.)
        let env = vec![b"PATH=/usr/bin:/bin".to_vec()];
        let image = ExecImage::new(OsStr::new("/bin/sh"), &argv, &env, true, Vec::new()).unwrap();
        let pid = spawn(image, None).unwrap();
        // While the child is alive or a zombie, its pid still names it.
        let id = pid_inode_id(pid).unwrap();
        assert!(wait_for(pid).success());
        let seen = std::fs::read_to_string(&out).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let want = match id {
            Some(id) => format!("{pid} {id}\n"),
            None => format!("{pid} unset\n"),
        };
        assert_eq!(seen, want);
    }
}
