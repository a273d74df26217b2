//! Each app server's dialect: how it wants inherited sockets described, and how it stops.
//!
//! Sockets always arrive at fds 3, 4, ... in the order given (activation order, or `--listen`
//! order) with FD_CLOEXEC cleared. What differs is the environment that describes them:
//!
//! | flavor         | environment                                                   |
//! |----------------|---------------------------------------------------------------|
//! | systemd        | LISTEN_FDS=n LISTEN_PID=<its pid> LISTEN_FDNAMES=a:b          |
//! | gunicorn, puma | LISTEN_FDS=n LISTEN_PID=<its pid>                             |
//! | unicorn        | UNICORN_FD=3,4 (no LISTEN_FDS: unicorn would add them twice)  |
//! | server-starter | SERVER_STARTER_PORT=127.0.0.1:8080=3;/run/a.sock=4 + _GENERATION |
//! | einhorn        | EINHORN_FD_COUNT=n EINHORN_FD_0=3 ...                         |
//! | nginx          | NGINX=3;4;                                                    |

use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::str::FromStr;

use crate::protocol::*;
use crate::signal::Signal;
use crate::socket::Socket;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Systemd,
    Gunicorn,
    Unicorn,
    Puma,
    ServerStarter,
    Einhorn,
    Nginx,
}

/// The socket-describing variables of one generation. `listen_pid` asks for
/// `LISTEN_PID=<pid of the exec'd process>`, which only exists after fork.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketEnv {
    pub vars: Vec<(String, String)>,
    pub listen_pid: bool,
}

impl Flavor {
    pub const ALL: [Flavor; 7] = [
        Flavor::Systemd,
        Flavor::Gunicorn,
        Flavor::Unicorn,
        Flavor::Puma,
        Flavor::ServerStarter,
        Flavor::Einhorn,
        Flavor::Nginx,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Flavor::Systemd => "systemd",
            Flavor::Gunicorn => "gunicorn",
            Flavor::Unicorn => "unicorn",
            Flavor::Puma => "puma",
            Flavor::ServerStarter => "server-starter",
            Flavor::Einhorn => "einhorn",
            Flavor::Nginx => "nginx",
        }
    }

    /// The signal that stops the server without dropping accepted requests.
    pub fn graceful_signal(self) -> Signal {
        match self {
            // gunicorn: QUIT/INT raise SystemExit inside requests (HTTP 500); TERM drains.
            Flavor::Systemd | Flavor::Gunicorn | Flavor::Puma | Flavor::ServerStarter => Signal::TERM,
            // unicorn and nginx: TERM is immediate, QUIT is graceful.
            Flavor::Unicorn | Flavor::Nginx => Signal::QUIT,
            // einhorn asks its workers to finish with USR2.
            Flavor::Einhorn => Signal::USR2,
        }
    }

    /// The signal that stops the server now, abandoning requests in flight.
    pub fn fast_signal(self) -> Signal {
        match self {
            Flavor::Systemd | Flavor::Gunicorn | Flavor::Puma => Signal::INT,
            Flavor::Unicorn | Flavor::Nginx | Flavor::Einhorn => Signal::TERM,
            Flavor::ServerStarter => Signal::KILL,
        }
    }

    /// Whether `status` is how this server ends when told to stop.
    pub fn is_clean_exit(self, status: ExitStatus) -> bool {
        if status.code() == Some(0) {
            return true;
        }
        match self {
            // puma in cluster mode re-raises SIGTERM after its graceful stop.
            Flavor::Puma => status.signal() == Some(libc::SIGTERM),
            // A generic server without a TERM handler dies of the default action: still a stop.
            Flavor::Systemd | Flavor::ServerStarter => status.signal() == Some(libc::SIGTERM),
            Flavor::Gunicorn | Flavor::Unicorn | Flavor::Einhorn | Flavor::Nginx => false,
        }
    }

    /// The variables describing `sockets`, placed at fds 3.. in order.
    pub fn socket_env(self, sockets: &[&Socket], generation: u64) -> SocketEnv {
        let n = sockets.len();
        let fds: Vec<i32> = (0..n as i32).map(|i| LISTEN_FDS_START + i).collect();
        let join = |sep: &str| fds.iter().map(|fd| fd.to_string()).collect::<Vec<_>>().join(sep);
        let mut vars = Vec::new();
        let mut listen_pid = false;
        match self {
            Flavor::Systemd => {
                vars.push((LISTEN_FDS.to_string(), n.to_string()));
                let names: Vec<&str> = sockets.iter().map(|s| s.name.as_str()).collect();
                vars.push((LISTEN_FDNAMES.to_string(), names.join(":")));
                listen_pid = true;
            }
            Flavor::Gunicorn | Flavor::Puma => {
                vars.push((LISTEN_FDS.to_string(), n.to_string()));
                listen_pid = true;
            }
            Flavor::Unicorn => vars.push((UNICORN_FD.to_string(), join(","))),
            Flavor::ServerStarter => {
                let ports: Vec<String> =
                    sockets.iter().zip(&fds).map(|(s, fd)| format!("{}={fd}", s.address())).collect();
                vars.push((SERVER_STARTER_PORT.to_string(), ports.join(";")));
                vars.push((SERVER_STARTER_GENERATION.to_string(), generation.to_string()));
            }
            Flavor::Einhorn => {
                vars.push((EINHORN_FD_COUNT.to_string(), n.to_string()));
                for (i, fd) in fds.iter().enumerate() {
                    vars.push((format!("{EINHORN_FD_PREFIX}{i}"), fd.to_string()));
                }
            }
            Flavor::Nginx => vars.push((NGINX.to_string(), fds.iter().map(|fd| format!("{fd};")).collect())),
        }
        SocketEnv { vars, listen_pid }
    }
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Flavor {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let wanted = text.trim().to_ascii_lowercase().replace('_', "-");
        let wanted =
            if wanted == "starter" || wanted == "start-server" { "server-starter".to_string() } else { wanted };
        Flavor::ALL.into_iter().find(|f| f.name() == wanted).ok_or_else(|| {
            let names: Vec<&str> = Flavor::ALL.iter().map(|f| f.name()).collect();
            format!("unknown flavor '{text}' (expected one of: {})", names.join(", "))
        })
    }
}
