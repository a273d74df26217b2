//! Socket activation for real: Debian's `systemd-socket-activate` listens on a TCP port and a
//! unix socket (named `http` and `admin`), and on the first connection execs
//! `sockherd run|exec --flavor F -- probe_env.py REPORT serve` with LISTEN_FDS/LISTEN_PID/
//! LISTEN_FDNAMES. The probe reports its environment and descriptors as `key=value` lines;
//! each test checks that report against what the flavor promises (src/flavor.rs).
mod common;

use common::*;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// How long anything in these tests may take to happen: each normally takes milliseconds, but
/// the bound is generous for a loaded CI machine.
const PATIENCE: Duration = Duration::from_secs(20);

/// Prefixes of every variable that describes inherited sockets in some server's convention.
/// The probe's variables with these prefixes must be exactly the flavor's set.
const CONVENTION_PREFIXES: &[&str] =
    &["LISTEN_", "UNICORN_", "GUNICORN_", "SERVER_STARTER_", "EINHORN_", "NGINX", "PUMA_INHERIT_"];

/// Stale convention variables the activator puts in sockherd's environment: sockets sockherd
/// does not have. None of them may reach the server.
const STALE: &[&str] = &[
    "UNICORN_FD=9",
    "EINHORN_FD_COUNT=7",
    "EINHORN_FD_0=9",
    "EINHORN_FD_5=9",
    "NGINX=9;",
    "GUNICORN_FD=9",
    "GUNICORN_PID=1",
    "SERVER_STARTER_PORT=127.0.0.1:1=9",
    "SERVER_STARTER_GENERATION=5",
    "PUMA_INHERIT_0=9:tcp://127.0.0.1:1",
    "LISTEN_FDS_FIRST_FD=9",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Run,
    Exec,
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Mode::Run => "run",
            Mode::Exec => "exec",
        }
    }

    /// sockherd's arguments for `flavor`. In run mode the generation counts as ready once
    /// exec'd: these tests look at the activated sockets alone, not at the private probe socket
    /// a probe readiness adds (see `run_adds_a_private_probe_socket_for_probe_readiness`).
    fn args(self, flavor: &str) -> Vec<&str> {
        match self {
            Mode::Run => vec!["run", "--ready", "exec", "--flavor", flavor],
            Mode::Exec => vec!["exec", "--flavor", flavor],
        }
    }
}

fn probe_env() -> PathBuf {
    repo().join("tests/support/probe_env.py")
}

/// The real python interpreter (not a pyenv shim script), so the probe starts fast and the
/// activator's minimal environment (PATH, HOME, USER, TERM) is enough to run it.
fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let out =
            Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output().expect("run python3");
        PathBuf::from(String::from_utf8(out.stdout).expect("utf-8").trim())
    })
}

/// The probe's `key=value` report.
struct Report {
    text: String,
    map: BTreeMap<String, String>,
}

impl Report {
    fn read(path: &Path) -> Option<Report> {
        let text = std::fs::read_to_string(path).ok()?;
        let map =
            text.lines().filter_map(|line| line.split_once('=')).map(|(k, v)| (k.to_string(), unescape(v))).collect();
        Some(Report { text, map })
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(String::as_str)
    }

    fn pid(&self) -> i32 {
        self.get("pid").and_then(|p| p.parse().ok()).expect("report has a pid")
    }

    fn ppid(&self) -> i32 {
        self.get("ppid").and_then(|p| p.parse().ok()).expect("report has a ppid")
    }

    fn env(&self, name: &str) -> Option<&str> {
        self.get(&format!("env.{name}"))
    }

    /// The socket-convention variables the probe got.
    fn convention_env(&self) -> BTreeMap<String, String> {
        self.map
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("env.").map(|name| (name.to_string(), v.clone())))
            .filter(|(name, _)| CONVENTION_PREFIXES.iter().any(|p| name.starts_with(p)))
            .collect()
    }

    fn fd(&self, fd: i32, key: &str) -> Option<&str> {
        self.get(&format!("fd.{fd}.{key}"))
    }
}

fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// LISTEN_PID, and LISTEN_PIDFDID where the kernel has pidfd ids: both name the probe itself.
fn listen_pid_vars(report: &Report) -> Vec<(&'static str, String)> {
    let mut vars = vec![("LISTEN_PID", report.pid().to_string())];
    if report.get("pidfd_ids") == Some("1") {
        vars.push(("LISTEN_PIDFDID", report.get("pidfdid").unwrap_or_default().to_string()));
    }
    vars
}

/// The variables `flavor` must give a server holding the TCP socket at fd 3 and the unix socket
/// at fd 4 (named http and admin), as generation 1, the probe that wrote `report`.
fn expected_env(flavor: &str, report: &Report, tcp: &str, unix: &Path) -> BTreeMap<String, String> {
    let unix = unix.display().to_string();
    let listen_pid = listen_pid_vars(report);
    let pairs: Vec<(&str, String)> = match flavor {
        "systemd" => [vec![("LISTEN_FDS", "2".into()), ("LISTEN_FDNAMES", "http:admin".into())], listen_pid].concat(),
        "gunicorn" | "puma" => [vec![("LISTEN_FDS", "2".into())], listen_pid].concat(),
        "unicorn" => vec![("UNICORN_FD", "3,4".into())],
        "server-starter" => {
            vec![("SERVER_STARTER_PORT", format!("{tcp}=3;{unix}=4")), ("SERVER_STARTER_GENERATION", "1".into())]
        }
        "einhorn" => vec![("EINHORN_FD_COUNT", "2".into()), ("EINHORN_FD_0", "3".into()), ("EINHORN_FD_1", "4".into())],
        "nginx" => vec![("NGINX", "3;4;".into())],
        other => panic!("no expectation for flavor {other}"),
    };
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// The inode of the socket at descriptor `fd` of process `pid`, if that is a socket.
fn fd_socket_inode(pid: i32, fd: i32) -> Option<u64> {
    let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    target.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// The inode of the listening unix socket bound to `path`, from /proc/net/unix. (Not
/// `listening_inodes()`: it also reads /proc/net/tcp, which on a busy machine holds tens of
/// thousands of TIME_WAIT lines and takes seconds to read, too slow to poll.)
fn listening_unix_inode(path: &Path) -> Option<u64> {
    let path = path.to_str()?;
    std::fs::read_to_string("/proc/net/unix").ok()?.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // Flags 00010000 = __SO_ACCEPTCON (listening); column 6 is the inode, 7 the path.
        (cols.len() > 7 && cols[3] == "00010000" && cols[7] == path).then(|| cols[6].parse().ok()).flatten()
    })
}

/// A `systemd-socket-activate` waiting for its first connection, with sockherd as its command.
/// Fields drop in order: the process is stopped before its directory goes.
struct Activator {
    proc: Proc,
    _dir: TempDir,
    addr: String,
    sock: PathBuf,
    report: PathBuf,
    /// Inodes of the listening sockets the activator opened, before anything was handed on.
    tcp_inode: u64,
    unix_inode: u64,
}

impl Activator {
    /// Starts the activator with `-E` for each of `setenv`, running
    /// `sockherd SOCKHERD_ARGS... -- python probe_env.py REPORT serve` on the first connection.
    fn start(dir: TempDir, setenv: &[&str], sockherd_args: &[&str]) -> Activator {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let sock = dir.join("admin.sock");
        assert!(sock.as_os_str().len() < 100, "unix socket path too long: {}", sock.display());
        let report = dir.join("report");
        let mut cmd = Command::new("systemd-socket-activate");
        cmd.current_dir(dir.path()).arg("-l").arg(&addr).arg("-l").arg(&sock).arg("--fdname=http:admin");
        for var in setenv {
            cmd.arg("-E").arg(var);
        }
        cmd.arg("--").arg(sockherd()).args(sockherd_args);
        cmd.arg("--").arg(python()).arg(probe_env()).arg(&report).arg("serve");
        // The activator passes on sockets it inherited itself: it must not think it has any.
        for var in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            cmd.env_remove(var);
        }
        let mut proc = Proc::spawn(cmd, dir.path(), "activator");
        // The activator opens, binds and listens on each address in turn (TCP at fd 3, then the
        // unix socket at fd 4), so once fd 4 is the listening unix socket, both are ready.
        let mut inodes = None;
        let ready = wait_until(PATIENCE, || {
            let pid = proc.pid();
            let unix = fd_socket_inode(pid, 4).filter(|ino| listening_unix_inode(&sock) == Some(*ino));
            inodes = fd_socket_inode(pid, 3).zip(unix);
            inodes.is_some() || proc.try_status().is_some()
        });
        let Some((tcp_inode, unix_inode)) = inodes.filter(|_| ready) else {
            proc.fail(&format!("the activator never listened on {addr} (fd 3) and {} (fd 4)", sock.display()));
        };
        Activator { proc, _dir: dir, addr, sock, report, tcp_inode, unix_inode }
    }

    /// Connects to the TCP socket (which makes the activator exec sockherd) and waits for the
    /// probe's report. Returns the report and the triggering connection.
    fn trigger(&mut self) -> (Report, TcpStream) {
        let stream = TcpStream::connect(&self.addr)
            .unwrap_or_else(|e| self.proc.fail(&format!("connect to {}: {e}", self.addr)));
        let report = self.report.clone();
        let proc = &mut self.proc;
        wait_until(PATIENCE, || report.exists() || proc.try_status().is_some());
        match Report::read(&report) {
            Some(r) => (r, stream),
            None => self.proc.fail("the probe wrote no report after the triggering connection"),
        }
    }

    /// Connects (triggering activation) and waits for the process to exit, which it must.
    fn trigger_expecting_exit(&mut self) -> std::process::ExitStatus {
        let _stream = TcpStream::connect(&self.addr)
            .unwrap_or_else(|e| self.proc.fail(&format!("connect to {}: {e}", self.addr)));
        self.proc.wait_exit(PATIENCE)
    }

    fn fail(&self, problems: &[String], report: &Report) -> ! {
        self.proc.fail(&format!("{}\n--- probe report:\n{}", problems.join("\n"), report.text))
    }

    /// Everything a flavor promises about the handed-over sockets, checked in one report: the
    /// exact convention variables, fds 3 and 4 (same inodes as the activator's sockets, not
    /// close-on-exec, listening, right addresses, blocking as the activator made them but for
    /// nginx), no other descriptor, and who the probe is.
    fn check_handover(&self, mode: Mode, flavor: &str, report: &Report) -> Vec<String> {
        let mut problems = Vec::new();
        let pid = report.pid();
        let want = expected_env(flavor, report, &self.addr, &self.sock);
        let got = report.convention_env();
        if got != want {
            problems.push(format!("{flavor} convention variables: got {got:?}, want exactly {want:?}"));
        }
        if report.get("fds") != Some("3,4") {
            problems.push(format!("descriptors from 3 up: got {:?}, want exactly 3,4 (no leaks)", report.get("fds")));
        }
        let sock = self.sock.display().to_string();
        // nginx polls, then accepts, on an inherited socket as it finds it (it makes only the
        // sockets it binds itself non-blocking): on a blocking one, a worker that loses a
        // connection to another process blocks in accept(), and every connection it holds waits.
        // Every other flavor gets the socket's mode untouched: blocking, as the activator (like
        // systemd without NonBlocking=yes) hands it over.
        let nonblocking = if flavor == "nginx" { "1" } else { "0" };
        for (fd, inode, family, address) in
            [(3, self.tcp_inode, "inet", self.addr.as_str()), (4, self.unix_inode, "unix", sock.as_str())]
        {
            let inode = inode.to_string();
            for (key, want) in [
                ("socket", "1"),
                ("cloexec", "0"),
                ("nonblocking", nonblocking),
                ("listening", "1"),
                ("inode", inode.as_str()),
                ("family", family),
                ("address", address),
            ] {
                if report.fd(fd, key) != Some(want) {
                    problems.push(format!("fd {fd} {key}: got {:?}, want {want:?}", report.fd(fd, key)));
                }
            }
        }
        let sockherd_pid = self.proc.pid();
        match mode {
            // nginx takes sockets only as a "new binary" and then ignores USR2 while its first
            // parent lives, so `exec --flavor nginx` starts it as a child and hands it over.
            Mode::Exec if flavor == "nginx" => {
                if report.ppid() != sockherd_pid {
                    problems.push(format!("exec nginx: probe {pid} should be a child of sockherd {sockherd_pid}"));
                }
            }
            // exec keeps the pid: activator, sockherd and the probe are one process.
            Mode::Exec => {
                if pid != sockherd_pid {
                    problems.push(format!("exec: probe pid {pid} is not sockherd's pid {sockherd_pid}"));
                }
            }
            Mode::Run => {
                if pid == sockherd_pid || report.ppid() != sockherd_pid {
                    problems.push(format!(
                        "run: probe pid {pid} (parent {}) should be a child of sockherd (pid {sockherd_pid})",
                        report.ppid()
                    ));
                }
                let exe = std::fs::read_link(format!("/proc/{sockherd_pid}/exe")).ok();
                if exe.is_none()
                    || exe.as_ref().map(std::fs::canonicalize).and_then(Result::ok)
                        != std::fs::canonicalize(sockherd()).ok()
                {
                    problems.push(format!("run: the probe's parent runs {exe:?}, not sockherd"));
                }
            }
        }
        problems
    }

    /// Sends a request on `stream` (the probe must accept it on the handed-over socket) and
    /// checks the answer comes from the probe with pid `pid`; then the same over the unix socket.
    fn check_serving(&self, mut stream: TcpStream, pid: i32) -> Vec<String> {
        let mut problems = Vec::new();
        let want = format!("probe {pid}\n");
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut raw = String::new();
        let answer = stream
            .write_all(b"GET / HTTP/1.0\r\n\r\n")
            .and_then(|_| stream.read_to_string(&mut raw))
            .map(|_| raw.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default());
        if answer.as_deref().ok() != Some(want.as_str()) {
            problems.push(format!("the triggering TCP connection got {answer:?}, want {want:?}"));
        }
        match http_get_unix(&self.sock, "/") {
            Ok(r) if r.status == 200 && r.body == want => {}
            other => problems.push(format!("GET over {} got {other:?}, want {want:?}", self.sock.display())),
        }
        problems
    }
}

/// One flavor in one mode: the probe started by activation gets exactly the flavor's view of
/// the two activated sockets, and serves on them.
fn hands_over(mode: Mode, flavor: &str) {
    require!("systemd-socket-activate", "python3");
    let mut act = Activator::start(TempDir::new(&format!("{}-{flavor}", mode.arg())), &[], &mode.args(flavor));
    let (report, stream) = act.trigger();
    let mut problems = act.check_handover(mode, flavor, &report);
    problems.extend(act.check_serving(stream, report.pid()));
    if !problems.is_empty() {
        act.fail(&problems, &report);
    }
}

macro_rules! handover_tests {
    ($($name:ident: $mode:expr, $flavor:expr;)*) => {
        $(
            #[test]
            fn $name() {
                hands_over($mode, $flavor);
            }
        )*
    };
}

handover_tests! {
    run_hands_activated_sockets_over_as_systemd: Mode::Run, "systemd";
    run_hands_activated_sockets_over_as_gunicorn: Mode::Run, "gunicorn";
    run_hands_activated_sockets_over_as_unicorn: Mode::Run, "unicorn";
    run_hands_activated_sockets_over_as_puma: Mode::Run, "puma";
    run_hands_activated_sockets_over_as_server_starter: Mode::Run, "server-starter";
    run_hands_activated_sockets_over_as_einhorn: Mode::Run, "einhorn";
    run_hands_activated_sockets_over_as_nginx: Mode::Run, "nginx";
    exec_hands_activated_sockets_over_as_systemd: Mode::Exec, "systemd";
    exec_hands_activated_sockets_over_as_gunicorn: Mode::Exec, "gunicorn";
    exec_hands_activated_sockets_over_as_unicorn: Mode::Exec, "unicorn";
    exec_hands_activated_sockets_over_as_puma: Mode::Exec, "puma";
    exec_hands_activated_sockets_over_as_server_starter: Mode::Exec, "server-starter";
    exec_hands_activated_sockets_over_as_einhorn: Mode::Exec, "einhorn";
    exec_hands_activated_sockets_over_as_nginx: Mode::Exec, "nginx";
}

/// Stale convention variables in sockherd's own environment never reach the server: it sees
/// only its flavor's variables (a stale variable of its own flavor is replaced, not kept),
/// while an unrelated variable passes through untouched.
fn stale_variables_are_dropped(mode: Mode, flavor: &str) {
    require!("systemd-socket-activate", "python3");
    let mut setenv = STALE.to_vec();
    setenv.push("SOCKHERD_TEST_MARK=kept");
    let mut act = Activator::start(TempDir::new(&format!("stale-{}", mode.arg())), &setenv, &mode.args(flavor));
    let (report, _stream) = act.trigger();
    let mut problems = act.check_handover(mode, flavor, &report);
    if report.env("SOCKHERD_TEST_MARK") != Some("kept") {
        problems.push(format!(
            "SOCKHERD_TEST_MARK: got {:?}, want \"kept\" (the -E variables did not reach the probe at all?)",
            report.env("SOCKHERD_TEST_MARK")
        ));
    }
    if !problems.is_empty() {
        act.fail(&problems, &report);
    }
}

#[test]
fn run_drops_stale_convention_variables() {
    stale_variables_are_dropped(Mode::Run, "systemd");
}

#[test]
fn exec_drops_stale_convention_variables() {
    // einhorn: a stale EINHORN_FD_0 must be replaced and a stale EINHORN_FD_5 must go.
    stale_variables_are_dropped(Mode::Exec, "einhorn");
}

/// sockherd started directly with LISTEN_PID naming another process (pid 1) and LISTEN_FDS set.
fn foreign_listen_pid_cmd(args: &[&str]) -> Command {
    let mut cmd = sockherd_cmd(args);
    cmd.env("LISTEN_FDS", "1").env("LISTEN_PID", "1").env("LISTEN_FDNAMES", "junk");
    cmd
}

#[test]
fn foreign_listen_pid_means_not_activated_so_listen_is_bound() {
    require!("python3");
    let dir = TempDir::new("foreign-pid");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let report_path = dir.join("report");
    let mut cmd = foreign_listen_pid_cmd(&["run", "--listen", &format!("{addr},name=web"), "--"]);
    cmd.arg(python()).arg(probe_env()).arg(&report_path).arg("serve");
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    let served = wait_http_ok(&mut proc, &addr, PATIENCE);
    let Some(report) = Report::read(&report_path) else {
        proc.fail("the probe answered but wrote no report");
    };
    let pid = report.pid();
    let mut problems = Vec::new();
    let want: BTreeMap<String, String> =
        [vec![("LISTEN_FDS", "1".to_string()), ("LISTEN_FDNAMES", "web".to_string())], listen_pid_vars(&report)]
            .concat()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
    if report.convention_env() != want {
        problems.push(format!("convention variables: got {:?}, want exactly {want:?}", report.convention_env()));
    }
    // The socket sockherd bound and holds is the one the probe has.
    let owned = socket_inodes(proc.pid());
    let inode = report.fd(3, "inode").and_then(|i| i.parse().ok());
    if !inode.is_some_and(|i| owned.contains(&i)) {
        problems.push(format!("fd 3 inode {inode:?} is none of the sockets sockherd holds: {owned:?}"));
    }
    for (key, want) in [("socket", "1"), ("cloexec", "0"), ("listening", "1"), ("address", addr.as_str())] {
        if report.fd(3, key) != Some(want) {
            problems.push(format!("fd 3 {key}: got {:?}, want {want:?}", report.fd(3, key)));
        }
    }
    if report.get("fds") != Some("3") {
        problems.push(format!("descriptors from 3 up: got {:?}, want exactly 3", report.get("fds")));
    }
    if report.ppid() != proc.pid() || served.body != format!("probe {pid}\n") {
        problems.push(format!(
            "probe pid {pid} (parent {}) answered {served:?}; sockherd is {}",
            report.ppid(),
            proc.pid()
        ));
    }
    if !problems.is_empty() {
        proc.fail(&format!("{}\n--- probe report:\n{}", problems.join("\n"), report.text));
    }
}

#[test]
fn foreign_listen_pid_without_listen_fails_naming_listen_pid() {
    require!("python3");
    let dir = TempDir::new("foreign-pid-fail");
    let report_path = dir.join("report");
    let mut cmd = foreign_listen_pid_cmd(&["run", "--"]);
    cmd.arg(python()).arg(probe_env()).arg(&report_path);
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    let status = proc.wait_exit(PATIENCE);
    if status.code() != Some(1) {
        proc.fail("sockherd with LISTEN_PID of another process and no --listen should exit 1");
    }
    if !proc.stderr().contains("LISTEN_PID") {
        proc.fail("the error does not say LISTEN_PID is why there are no sockets");
    }
    if report_path.exists() {
        proc.fail("the server was started although there were no sockets to hand over");
    }
}

fn fake_activate() -> PathBuf {
    repo().join("tests/support/fake_activate.py")
}

/// Whether this kernel gives every process its own pidfd inode id (pidfs, Linux 6.9).
fn kernel_has_pidfd_ids() -> bool {
    let out = Command::new(python())
        .args([
            "-c",
            "import os; print(os.fstat(os.pidfd_open(os.getpid())).st_ino != os.fstat(os.pidfd_open(1)).st_ino)",
        ])
        .output()
        .expect("run python3");
    String::from_utf8_lossy(&out.stdout).trim() == "True"
}

/// `fake_activate.py --fd unix:DIR/app.sock --listen-pidfdid ID -- sockherd MODE --flavor systemd
/// -- probe_env.py DIR/report serve`: sockherd activated with its own LISTEN_PID and the given
/// LISTEN_PIDFDID.
fn activated_with_pidfdid(dir: &TempDir, pidfdid: &str, mode: Mode) -> Proc {
    let mut cmd = Command::new(python());
    cmd.arg(fake_activate()).arg("--fd").arg(format!("unix:{}", dir.join("app.sock").display()));
    cmd.args(["--listen-pidfdid", pidfdid, "--", sockherd().to_str().expect("utf-8 path")]);
    cmd.args(mode.args("systemd")).arg("--").arg(python()).arg(probe_env()).arg(dir.join("report")).arg("serve");
    for var in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_PIDFDID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "JOURNAL_STREAM"] {
        cmd.env_remove(var);
    }
    Proc::spawn(cmd, dir.path(), "sockherd")
}

/// systemd >= 259 names the process the sockets are for by LISTEN_PIDFDID too. sockherd takes
/// them when it names sockherd itself, and gives each server its own: in run mode the
/// generation's id (sockherd's would make libsystemd's sd_listen_fds() return 0 there), in exec
/// mode the same process's.
fn own_listen_pidfdid_is_accepted_and_the_server_gets_its_own(mode: Mode) {
    require!("python3");
    let dir = TempDir::new(&format!("pidfdid-{}", mode.arg()));
    let mut proc = activated_with_pidfdid(&dir, "self", mode);
    let served = wait_http_ok_unix(&mut proc, &dir.join("app.sock"), PATIENCE);
    let Some(report) = Report::read(&dir.join("report")) else {
        proc.fail("the probe answered but wrote no report");
    };
    let want: BTreeMap<String, String> =
        [vec![("LISTEN_FDS", "1".to_string()), ("LISTEN_FDNAMES", "unknown".to_string())], listen_pid_vars(&report)]
            .concat()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
    let same_pid = report.pid() == proc.pid();
    if report.convention_env() != want
        || served.body != format!("probe {}\n", report.pid())
        || same_pid != (mode == Mode::Exec)
    {
        proc.fail(&format!(
            "{} activated with its own LISTEN_PIDFDID: the probe (pid {}, sockherd {}) answered {served:?} with \
             variables {:?}, want exactly {want:?}\n--- probe report:\n{}",
            mode.arg(),
            report.pid(),
            proc.pid(),
            report.convention_env(),
            report.text
        ));
    }
}

#[test]
fn run_takes_its_own_listen_pidfdid_and_gives_the_generation_its_own() {
    own_listen_pidfdid_is_accepted_and_the_server_gets_its_own(Mode::Run);
}

#[test]
fn exec_takes_its_own_listen_pidfdid_and_passes_the_same() {
    own_listen_pidfdid_is_accepted_and_the_server_gets_its_own(Mode::Exec);
}

/// A LISTEN_PIDFDID naming another process: the sockets are not sockherd's, exactly as with a
/// LISTEN_PID of another process (where the kernel has pidfd ids; without, there is nothing to
/// compare and LISTEN_PID decides, as in libsystemd).
#[test]
fn foreign_listen_pidfdid_means_not_activated() {
    require!("python3");
    let dir = TempDir::new("pidfdid-foreign");
    let mut proc = activated_with_pidfdid(&dir, "1", Mode::Run);
    if !kernel_has_pidfd_ids() {
        eprintln!("this kernel has no pidfd ids: LISTEN_PIDFDID cannot be compared, LISTEN_PID decides");
        wait_http_ok_unix(&mut proc, &dir.join("app.sock"), PATIENCE);
        return;
    }
    let status = proc.wait_exit(PATIENCE);
    let stderr = proc.stderr();
    if status.code() != Some(1) || !stderr.contains("LISTEN_PIDFDID=1 names another process") {
        proc.fail("sockherd with a LISTEN_PIDFDID of another process and no --listen should exit 1 naming it");
    }
    if dir.join("report").exists() {
        proc.fail("the server was started although the sockets were not sockherd's");
    }
}

/// `--listen` alongside real activation, without `--fallback`: refused with a message that
/// names both options, and nothing is bound or started.
fn listen_with_activation_is_refused(mode: Mode) {
    require!("systemd-socket-activate", "python3");
    let other = format!("127.0.0.1:{}", free_port());
    let mut act =
        Activator::start(TempDir::new(&format!("refuse-{}", mode.arg())), &[], &[mode.arg(), "--listen", &other]);
    let status = act.trigger_expecting_exit();
    let stderr = act.proc.stderr();
    if status.code() != Some(1) {
        act.proc.fail("sockherd should exit 1 when --listen is given under socket activation");
    }
    if !stderr.contains("--listen") || !stderr.contains("--fallback") {
        act.proc.fail("the refusal should name --listen and --fallback");
    }
    // sockherd logs "sockherd: listening on ADDRESS" for each socket it binds itself.
    if stderr.contains("sockherd: listening on") || act.report.exists() {
        act.proc.fail("sockherd bound --listen or started the server although it refused");
    }
}

#[test]
fn run_refuses_listen_under_activation_without_fallback() {
    listen_with_activation_is_refused(Mode::Run);
}

#[test]
fn exec_refuses_listen_under_activation_without_fallback() {
    listen_with_activation_is_refused(Mode::Exec);
}

/// `--listen --fallback` under real activation: the activated sockets win, the `--listen`
/// ones are never bound.
fn fallback_prefers_activated_sockets(mode: Mode) {
    require!("systemd-socket-activate", "python3");
    let other_tcp = format!("127.0.0.1:{},name=other", free_port());
    let dir = TempDir::new(&format!("fallback-{}", mode.arg()));
    let other_sock = dir.join("other.sock");
    let other_unix = format!("{},name=other2", other_sock.display());
    let args = [mode.arg(), "--fallback", "--listen", &other_tcp, "--listen", &other_unix, "--flavor", "systemd"];
    let mut act = Activator::start(dir, &[], &args);
    let (report, stream) = act.trigger();
    let mut problems = act.check_handover(mode, "systemd", &report);
    problems.extend(act.check_serving(stream, report.pid()));
    // Nothing was bound from --listen: sockherd says so, and the probe got exactly the two
    // activated sockets (check_handover). (Not a look at other_port: a test elsewhere may
    // have taken it.)
    if act.proc.stderr().contains("sockherd: listening on") {
        problems.push("sockherd bound a --listen socket although it was activated".to_string());
    }
    if other_sock.exists() {
        problems.push(format!("the --listen socket {} was created too", other_sock.display()));
    }
    if !problems.is_empty() {
        act.fail(&problems, &report);
    }
}

#[test]
fn run_with_fallback_uses_activated_sockets() {
    fallback_prefers_activated_sockets(Mode::Run);
}

#[test]
fn exec_with_fallback_uses_activated_sockets() {
    fallback_prefers_activated_sockets(Mode::Exec);
}

/// `--ready probe`: the generation gets one more socket after the activated ones, a unix socket
/// in sockherd's private runtime directory, named `sockherd-probe`, not close-on-exec. That
/// readiness comes from an answer on that socket and on no other is proven by
/// tests/readiness.rs (`probe_is_ready_only_once_the_private_socket_answers`), whose server
/// holds the probe socket's answer back; this probe answers on every socket at once, so it
/// cannot tell.
#[test]
fn run_adds_a_private_probe_socket_for_probe_readiness() {
    require!("systemd-socket-activate", "python3");
    let mut act =
        Activator::start(TempDir::new("probe-socket"), &[], &["run", "--ready", "probe", "--flavor", "systemd"]);
    let (report, stream) = act.trigger();
    // The probe serves one connection at a time: answer the triggering one first.
    let mut problems = act.check_serving(stream, report.pid());
    if report.env("LISTEN_FDS") != Some("3") || report.env("LISTEN_FDNAMES") != Some("http:admin:sockherd-probe") {
        problems.push(format!(
            "LISTEN_FDS={:?} LISTEN_FDNAMES={:?}",
            report.env("LISTEN_FDS"),
            report.env("LISTEN_FDNAMES")
        ));
    }
    let address = report.fd(5, "address").unwrap_or_default().to_string();
    if report.fd(5, "family") != Some("unix")
        || !address.ends_with("/probe.1")
        || report.fd(5, "listening") != Some("1")
        || report.fd(5, "cloexec") != Some("0")
    {
        problems.push(format!(
            "fd 5 should be a listening unix socket (…/probe.1) without CLOEXEC, got address {address:?}"
        ));
    }
    // The socket is sockherd's own and private: not one of the activator's, and nothing but the
    // generation holds it (sockherd dropped its copy once the generation had it).
    let inode: Option<u64> = report.fd(5, "inode").and_then(|i| i.parse().ok());
    if inode.is_none() || inode == Some(act.tcp_inode) || inode == Some(act.unix_inode) {
        problems.push(format!("fd 5 should be a socket of its own, not an activated one: inode {inode:?}"));
    }
    if inode.is_some_and(|i| socket_inodes(act.proc.pid()).contains(&i)) {
        problems.push("sockherd still holds the probe socket: only the generation should".to_string());
    }
    if !problems.is_empty() {
        act.fail(&problems, &report);
    }
}
