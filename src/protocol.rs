//! Names from the protocols sockherd speaks: sd_listen_fds(3), sd_notify(3), the journal's native
//! protocol, and each app server's own socket-inheritance variables.

/// sd_listen_fds(3): the first passed descriptor.
pub const LISTEN_FDS_START: i32 = 3;
pub const LISTEN_FDS: &str = "LISTEN_FDS";
pub const LISTEN_PID: &str = "LISTEN_PID";
/// systemd >= 259: the pidfd inode id of the process the descriptors are for, beside
/// LISTEN_PID; libsystemd's sd_listen_fds() returns 0 when it does not name the caller.
pub const LISTEN_PIDFDID: &str = "LISTEN_PIDFDID";
pub const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
/// Name systemd gives a socket without FileDescriptorName=.
pub const UNKNOWN_FDNAME: &str = "unknown";

/// sd_notify(3).
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
pub const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
pub const WATCHDOG_PID: &str = "WATCHDOG_PID";
pub const READY: &str = "READY=1";
pub const RELOADING: &str = "RELOADING=1";
pub const STOPPING: &str = "STOPPING=1";
pub const WATCHDOG: &str = "WATCHDOG=1";
pub const BARRIER: &str = "BARRIER=1";
pub const STATUS: &str = "STATUS";
pub const MAINPID: &str = "MAINPID";
/// The new main process as a pidfd attached to the message (systemd ≥ 257).
pub const MAINPIDFD: &str = "MAINPIDFD=1";
/// The pidfd inode id of `$MAINPID`, set beside it for ExecReload= and friends (systemd >= 258).
pub const MAINPIDFDID: &str = "MAINPIDFDID";
/// The number of fd store slots (FileDescriptorStoreMax=) for the service's main process.
pub const FDSTORE: &str = "FDSTORE";
/// Puts the attached descriptors into the service's fd store, under `FDNAME=`.
pub const FDSTORE_ADD: &str = "FDSTORE=1";
/// Removes (and closes) every descriptor of the fd store named `FDNAME=`.
pub const FDSTORE_REMOVE: &str = "FDSTOREREMOVE=1";
pub const FDNAME: &str = "FDNAME";
/// systemd does not watch the stored descriptor for POLLHUP/POLLERR.
pub const FDPOLL_OFF: &str = "FDPOLL=0";
pub const MONOTONIC_USEC: &str = "MONOTONIC_USEC";
pub const EXTEND_TIMEOUT_USEC: &str = "EXTEND_TIMEOUT_USEC";

/// systemd's journal: `JOURNAL_STREAM=<dev>:<ino>` of stderr, and the native socket.
pub const JOURNAL_STREAM: &str = "JOURNAL_STREAM";
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// App servers' own variables.
pub const UNICORN_FD: &str = "UNICORN_FD";
pub const GUNICORN_FD: &str = "GUNICORN_FD";
pub const GUNICORN_PID: &str = "GUNICORN_PID";
pub const SERVER_STARTER_PORT: &str = "SERVER_STARTER_PORT";
pub const SERVER_STARTER_GENERATION: &str = "SERVER_STARTER_GENERATION";
pub const EINHORN_FD_COUNT: &str = "EINHORN_FD_COUNT";
/// `EINHORN_FD_0`, `EINHORN_FD_1`, ...
pub const EINHORN_FD_PREFIX: &str = "EINHORN_FD_";
pub const NGINX: &str = "NGINX";
/// `PUMA_INHERIT_0`, ...: puma's own re-exec protocol; never inherited from us.
pub const PUMA_INHERIT_PREFIX: &str = "PUMA_INHERIT_";
/// systemfd's first descriptor when it is not 3, read by listenfd (not systemd's protocol).
pub const LISTEN_FDS_FIRST_FD: &str = "LISTEN_FDS_FIRST_FD";

/// Variables that describe inherited sockets. A child never inherits them from our own
/// environment: they would describe descriptors it does not have.
pub fn is_socket_convention_var(name: &str) -> bool {
    matches!(
        name,
        LISTEN_FDS
            | LISTEN_PID
            | LISTEN_PIDFDID
            | LISTEN_FDNAMES
            | LISTEN_FDS_FIRST_FD
            | UNICORN_FD
            | GUNICORN_FD
            | GUNICORN_PID
            | SERVER_STARTER_PORT
            | SERVER_STARTER_GENERATION
            | EINHORN_FD_COUNT
            | NGINX
    ) || name.starts_with(EINHORN_FD_PREFIX)
        || name.starts_with(PUMA_INHERIT_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_convention_variables() {
        for name in [
            "LISTEN_FDS",
            "LISTEN_PID",
            "LISTEN_PIDFDID",
            "LISTEN_FDNAMES",
            "LISTEN_FDS_FIRST_FD",
            "UNICORN_FD",
            "GUNICORN_FD",
            "GUNICORN_PID",
            "SERVER_STARTER_PORT",
            "SERVER_STARTER_GENERATION",
            "EINHORN_FD_COUNT",
            "EINHORN_FD_0",
            "EINHORN_FD_12",
            "NGINX",
            "PUMA_INHERIT_0",
        ] {
            assert!(is_socket_convention_var(name), "{name}");
        }
        for name in [
            "PATH",
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
            "FDSTORE",
            "MAINPIDFDID",
            "SYSTEMD_EXEC_PID",
            "LISTEN",
            "NGINX_CONF",
            "EINHORN_FD",
            "PUMA_INHERIT",
        ] {
            assert!(!is_socket_convention_var(name), "{name}");
        }
    }
}
