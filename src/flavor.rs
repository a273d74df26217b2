//! Each app server's dialect: how it wants inherited sockets described, and how it stops.
//!
//! Sockets always arrive at fds 3, 4, ... in the order given (activation order, or `--listen`
//! order) with FD_CLOEXEC cleared, blocking or not as they came, but non-blocking for nginx
//! ([`Flavor::needs_nonblocking_sockets`]). What differs is the environment that describes them:
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

    /// Whether the server needs its listening sockets non-blocking and takes them as it finds
    /// them. nginx makes the sockets it binds non-blocking but adopts an inherited one as it is,
    /// and its workers poll, then accept. systemd hands sockets over blocking (NonBlocking=no),
    /// and other processes share them (the other generation during every reload): a worker
    /// that finds the connection taken blocks in accept() until another one comes, and every
    /// connection it holds waits (seen as requests unanswered until hey gave up after 20 s, in
    /// binary upgrades). gunicorn, unicorn and puma make the sockets non-blocking themselves;
    /// for every flavor but nginx sockherd leaves the mode as it is.
    pub fn needs_nonblocking_sockets(self) -> bool {
        matches!(self, Flavor::Nginx)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socket::Origin;
    use std::net::TcpListener;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn names_parse_back() {
        for flavor in Flavor::ALL {
            assert_eq!(flavor.name().parse::<Flavor>(), Ok(flavor));
            assert_eq!(flavor.to_string(), flavor.name());
        }
        assert_eq!(" Gunicorn ".parse::<Flavor>(), Ok(Flavor::Gunicorn));
        for alias in ["starter", "start-server", "start_server", "Server_Starter"] {
            assert_eq!(alias.parse::<Flavor>(), Ok(Flavor::ServerStarter), "{alias}");
        }
        let err = "uwsgi".parse::<Flavor>().unwrap_err();
        assert_eq!(
            err,
            "unknown flavor 'uwsgi' (expected one of: systemd, gunicorn, unicorn, puma, server-starter, einhorn, nginx)"
        );
    }

    #[test]
    fn only_nginx_needs_its_sockets_made_non_blocking() {
        for flavor in Flavor::ALL {
            assert_eq!(flavor.needs_nonblocking_sockets(), flavor == Flavor::Nginx, "{flavor}");
        }
    }

    #[test]
    fn stop_signals() {
        let table = [
            (Flavor::Systemd, Signal::TERM, Signal::INT),
            (Flavor::Gunicorn, Signal::TERM, Signal::INT),
            (Flavor::Unicorn, Signal::QUIT, Signal::TERM),
            (Flavor::Puma, Signal::TERM, Signal::INT),
            (Flavor::ServerStarter, Signal::TERM, Signal::KILL),
            (Flavor::Einhorn, Signal::USR2, Signal::TERM),
            (Flavor::Nginx, Signal::QUIT, Signal::TERM),
        ];
        for (flavor, graceful, fast) in table {
            assert_eq!((flavor.graceful_signal(), flavor.fast_signal()), (graceful, fast), "{flavor}");
        }
    }

    #[test]
    fn clean_exits() {
        let code = |c: i32| ExitStatus::from_raw(c << 8);
        let signal = |s: i32| ExitStatus::from_raw(s);
        for flavor in Flavor::ALL {
            assert!(flavor.is_clean_exit(code(0)), "{flavor}: exit 0");
            assert!(!flavor.is_clean_exit(code(1)), "{flavor}: exit 1");
            assert!(!flavor.is_clean_exit(code(15)), "{flavor}: exit 15 is not a signal");
            assert!(!flavor.is_clean_exit(signal(libc::SIGKILL)), "{flavor}: SIGKILL");
            let term_is_clean = matches!(flavor, Flavor::Puma | Flavor::Systemd | Flavor::ServerStarter);
            assert_eq!(flavor.is_clean_exit(signal(libc::SIGTERM)), term_is_clean, "{flavor}: SIGTERM");
        }
    }

    fn sockets() -> (Vec<Socket>, Vec<String>) {
        let mut sockets = Vec::new();
        let mut addrs = Vec::new();
        for name in ["http", "admin"] {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            addrs.push(listener.local_addr().unwrap().to_string());
            sockets.push(Socket::new(listener.into(), name.into(), Origin::Bound { created: None }).unwrap());
        }
        (sockets, addrs)
    }

    fn env(flavor: Flavor, generation: u64) -> (Vec<(String, String)>, bool, Vec<String>) {
        let (sockets, addrs) = sockets();
        let refs: Vec<&Socket> = sockets.iter().collect();
        let SocketEnv { vars, listen_pid } = flavor.socket_env(&refs, generation);
        (vars, listen_pid, addrs)
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn socket_environments() {
        assert_eq!(env(Flavor::Systemd, 1).0, pairs(&[("LISTEN_FDS", "2"), ("LISTEN_FDNAMES", "http:admin")]));
        assert!(env(Flavor::Systemd, 1).1);
        for flavor in [Flavor::Gunicorn, Flavor::Puma] {
            let (vars, listen_pid, _) = env(flavor, 1);
            assert_eq!(vars, pairs(&[("LISTEN_FDS", "2")]), "{flavor}");
            assert!(listen_pid, "{flavor}");
        }
        assert_eq!(env(Flavor::Unicorn, 1).0, pairs(&[("UNICORN_FD", "3,4")]));
        let (vars, listen_pid, addrs) = env(Flavor::ServerStarter, 7);
        let port = format!("{}=3;{}=4", addrs[0], addrs[1]);
        assert_eq!(vars, pairs(&[("SERVER_STARTER_PORT", &port), ("SERVER_STARTER_GENERATION", "7")]));
        assert!(!listen_pid);
        assert_eq!(
            env(Flavor::Einhorn, 1).0,
            pairs(&[("EINHORN_FD_COUNT", "2"), ("EINHORN_FD_0", "3"), ("EINHORN_FD_1", "4")])
        );
        assert_eq!(env(Flavor::Nginx, 1).0, pairs(&[("NGINX", "3;4;")]));
        for flavor in [Flavor::Unicorn, Flavor::ServerStarter, Flavor::Einhorn, Flavor::Nginx] {
            assert!(!env(flavor, 1).1, "{flavor} takes no LISTEN_PID");
        }
    }
}
