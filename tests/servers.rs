//! Real app servers (gunicorn, unicorn, puma) under `sockherd run` and `sockherd exec`: they
//! serve through the sockets sockherd hands them and bind nothing of their own, they stop the
//! graceful way on TERM and the fast way on QUIT, `--stop-timeout` ends with SIGKILL to the whole
//! process group, and sockherd's exit status follows the server's.
//!
//! Traffic goes only to 127.0.0.1 and to unix sockets under the test directory.
mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a server may take to answer its first request (they boot in 1-4 s; tests run in
/// parallel on small machines).
const BOOT: Duration = Duration::from_secs(30);

/// Workers in each of the contrib configurations (gunicorn, unicorn and puma alike).
const WORKERS: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Gunicorn,
    Unicorn,
    Puma,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Run,
    Exec,
}

impl Server {
    fn flavor(self) -> &'static str {
        match self {
            Server::Gunicorn => "gunicorn",
            Server::Unicorn => "unicorn",
            Server::Puma => "puma",
        }
    }

    /// The server's command line, run in contrib/app (`--chdir`).
    fn command(self) -> Vec<String> {
        let conf = |rel: &str| contrib(rel).display().to_string();
        let args: Vec<String> = match self {
            Server::Gunicorn => vec![
                "python3".into(),
                "-m".into(),
                "gunicorn".into(),
                "-c".into(),
                conf("gunicorn/gunicorn.conf.py"),
                "app:app".into(),
            ],
            Server::Unicorn => vec!["unicorn".into(), "-c".into(), conf("unicorn/unicorn.conf.rb"), "config.ru".into()],
            Server::Puma => vec!["puma".into(), "-C".into(), conf("puma/puma.rb"), "config.ru".into()],
        };
        args
    }

    /// The TCP port the server binds by default when it is given no socket (gunicorn
    /// 127.0.0.1:8000, unicorn 0.0.0.0:8080, puma 0.0.0.0:9292).
    fn default_port(self) -> u16 {
        match self {
            Server::Gunicorn => 8000,
            Server::Unicorn => 8080,
            Server::Puma => 9292,
        }
    }
}

/// A server started under sockherd with one TCP and one unix socket.
struct Service {
    proc: Proc,
    addr: String,
    port: u16,
    sock: PathBuf,
}

/// Starts `sockherd <mode> --flavor F --listen 127.0.0.1:P --listen DIR/app.sock --chdir
/// contrib/app -- <server>`.
fn start(server: Server, mode: Mode, dir: &TempDir) -> Service {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let sock = dir.join("app.sock");
    let app = contrib("app");
    let mode_arg = match mode {
        Mode::Run => "run",
        Mode::Exec => "exec",
    };
    let mut cmd = sockherd_cmd(&[mode_arg, "--flavor", server.flavor(), "--listen", &addr, "--listen"]);
    cmd.arg(&sock).arg("--chdir").arg(&app);
    if mode == Mode::Run {
        // The flavors' default readiness probe hands the generation one more socket of its own
        // (tests/activation.rs covers it); here only the sockets sockherd was told to bind count.
        cmd.args(["--ready", "delay:1"]);
    }
    cmd.arg("--").args(server.command());
    let proc = Proc::spawn(cmd, dir.path(), "sockherd");
    Service { proc, addr, port, sock }
}

/// `master=<pid>` from the example app's answer.
fn master_of(proc: &Proc, response: &Response) -> i32 {
    response
        .body
        .split_whitespace()
        .find_map(|w| w.strip_prefix("master="))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| proc.fail(&format!("no master=<pid> in the answer {response:?}")))
}

/// Hex of 127.0.0.1 as /proc/net/tcp shows it (host byte order).
fn loopback_hex() -> String {
    format!("{:08X}", u32::from_ne_bytes([127, 0, 0, 1]))
}

/// Listening TCP sockets (from /proc/net/tcp and tcp6) on `port`, any address.
fn tcp_listeners_on(port: u16) -> Vec<(String, u64)> {
    let suffix = format!(":{port:04X}");
    listening_inodes().into_iter().filter(|(addr, _)| addr.ends_with(&suffix) && !addr.starts_with('/')).collect()
}

/// The inode of the listening socket at `addr` (127.0.0.1:port) or unix `path`.
fn listening_inode_tcp(port: u16) -> Option<u64> {
    let want = format!("{}:{port:04X}", loopback_hex());
    listening_inodes().into_iter().find(|(a, _)| *a == want).map(|(_, i)| i)
}

fn listening_inode_unix(path: &Path) -> Option<u64> {
    let want = path.display().to_string();
    listening_inodes().into_iter().find(|(a, _)| *a == want).map(|(_, i)| i)
}

/// Waits until the tree under `root` has at least `n` processes, so every worker has booted.
fn wait_for_processes(proc: &mut Proc, root: i32, n: usize) {
    let ok = wait_until(BOOT, || descendants(root).len() >= n || proc.try_status().is_some());
    if !ok || proc.try_status().is_some() {
        proc.fail(&format!("expected at least {n} processes under pid {root}, found {:?}", descendants(root)));
    }
}

/// The proof for one server × mode: HTTP through both inherited sockets, the master is where
/// it should be, and nothing of the service listens on anything else. The default port is
/// checked by comparing its listeners before and after the start (never by connecting), so an
/// unrelated listener that was there before cannot fail the test.
fn serves_only_inherited_sockets(server: Server, mode: Mode) {
    let dir = TempDir::new(&format!("{}-{mode:?}", server.flavor()).to_lowercase());
    let default_before = tcp_listeners_on(server.default_port());
    let Service { mut proc, addr, port, sock } = start(server, mode, &dir);
    let pid = proc.pid();

    let over_tcp = wait_http_ok(&mut proc, &addr, BOOT);
    let over_unix = wait_http_ok_unix(&mut proc, &sock, BOOT);
    for response in [&over_tcp, &over_unix] {
        if !response.body.starts_with("release=app pid=") {
            proc.fail(&format!("not the example app's answer: {response:?}"));
        }
    }
    let master = master_of(&proc, &over_tcp);
    if master_of(&proc, &over_unix) != master {
        proc.fail(&format!("TCP and unix answers come from different masters: {over_tcp:?} {over_unix:?}"));
    }

    let allowed = match mode {
        Mode::Run => {
            // The master is sockherd's own child, and holds the very sockets sockherd bound.
            if ppid(master) != Some(pid) {
                proc.fail(&format!(
                    "master {master} is not a child of sockherd {pid} (its parent: {:?})",
                    ppid(master)
                ));
            }
            wait_for_processes(&mut proc, pid, 1 + WORKERS);
            let ours = socket_inodes(pid);
            let theirs = socket_inodes(master);
            // Not sockherd's own control socket (<runtime dir>/sockherd-<pid>[-<random>]/control).
            let listening: Vec<u64> = listening_inodes()
                .into_iter()
                .filter(|(path, _)| !(path.contains("/sockherd-") && path.ends_with("/control")))
                .map(|(_, i)| i)
                .collect();
            let held: Vec<u64> = ours.iter().copied().filter(|i| listening.contains(i)).collect();
            if held.len() != 2 || !held.iter().all(|i| theirs.contains(i)) {
                proc.fail(&format!(
                    "sockherd's listening sockets {held:?} are not all held by the master {master} ({theirs:?})"
                ));
            }
            ours
        }
        Mode::Exec => {
            // exec keeps the pid: the server's master is the process we started.
            if master != pid {
                proc.fail(&format!("under exec the master should be pid {pid}, the app says {master}"));
            }
            wait_for_processes(&mut proc, pid, WORKERS);
            let tcp = listening_inode_tcp(port).unwrap_or_else(|| proc.fail(&format!("{addr} is not listening")));
            let unix = listening_inode_unix(&sock)
                .unwrap_or_else(|| proc.fail(&format!("{} is not listening", sock.display())));
            let held = socket_inodes(pid);
            if !held.contains(&tcp) || !held.contains(&unix) {
                proc.fail(&format!(
                    "the master {pid} does not hold the sockets sockherd bound ({tcp}, {unix}): {held:?}"
                ));
            }
            vec![tcp, unix]
        }
    };

    let foreign = foreign_listeners(pid, &allowed);
    if !foreign.is_empty() {
        proc.fail(&format!("the server bound listeners of its own: {foreign:?} (allowed: {allowed:?})"));
    }
    let default_after = tcp_listeners_on(server.default_port());
    let appeared: Vec<_> = default_after.iter().filter(|l| !default_before.contains(l)).collect();
    if !appeared.is_empty() {
        proc.fail(&format!("something started listening on the default port {}: {appeared:?}", server.default_port()));
    }
}

#[test]
fn gunicorn_run_serves_tcp_and_unix_and_binds_nothing_else() {
    require!("python3");
    require!(python: "gunicorn");
    serves_only_inherited_sockets(Server::Gunicorn, Mode::Run);
}

#[test]
fn gunicorn_exec_serves_tcp_and_unix_and_binds_nothing_else() {
    require!("python3");
    require!(python: "gunicorn");
    serves_only_inherited_sockets(Server::Gunicorn, Mode::Exec);
}

#[test]
fn unicorn_run_serves_tcp_and_unix_and_binds_nothing_else() {
    require!("unicorn");
    serves_only_inherited_sockets(Server::Unicorn, Mode::Run);
}

#[test]
fn unicorn_exec_serves_tcp_and_unix_and_binds_nothing_else() {
    require!("unicorn");
    serves_only_inherited_sockets(Server::Unicorn, Mode::Exec);
}

#[test]
fn puma_run_serves_tcp_and_unix_and_binds_nothing_else() {
    require!("puma");
    serves_only_inherited_sockets(Server::Puma, Mode::Run);
}

#[test]
fn puma_exec_serves_tcp_and_unix_and_binds_nothing_else() {
    require!("puma");
    serves_only_inherited_sockets(Server::Puma, Mode::Exec);
}

/// A full HTTP answer, with its headers.
#[derive(Debug)]
struct FullResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl FullResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn read_response(mut stream: TcpStream) -> std::io::Result<FullResponse> {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not an HTTP response: {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let headers =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    Ok(FullResponse { status, headers, body: body.to_string() })
}

/// Whether the connection from local port `client_port` to 127.0.0.1:`server_port` has been
/// accepted by one of `pids`: the server side of it is ESTABLISHED and has an inode (a socket
/// still in the accept queue has none) that one of those processes holds.
fn accepted_by(pids: &[i32], server_port: u16, client_port: u16) -> bool {
    let local = format!("{}:{server_port:04X}", loopback_hex());
    let remote = format!("{}:{client_port:04X}", loopback_hex());
    let inode = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default().lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols.len() > 9 && cols[1] == local && cols[2] == remote && cols[3] == "01")
            .then(|| cols[9].parse::<u64>().unwrap_or(0))
    });
    match inode {
        Some(inode) if inode != 0 => pids.iter().any(|&p| socket_inodes(p).contains(&inode)),
        _ => false,
    }
}

/// TERM to `sockherd run` while a slow request is in a worker's hands: the request completes,
/// sockherd exits 0, and no process of the service is left.
fn term_stops_gracefully(server: Server) {
    let dir = TempDir::new(&format!("{}-graceful", server.flavor()));
    let Service { mut proc, addr, port, sock } = start(server, Mode::Run, &dir);
    let pid = proc.pid();
    wait_http_ok(&mut proc, &addr, BOOT);
    wait_http_ok_unix(&mut proc, &sock, BOOT);
    wait_for_processes(&mut proc, pid, 1 + WORKERS);
    let family = descendants(pid);

    let mut stream = TcpStream::connect(&addr).unwrap_or_else(|e| proc.fail(&format!("connect {addr}: {e}")));
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let client_port = stream.local_addr().unwrap().port();
    let sent = Instant::now();
    stream.write_all(b"GET /slow?s=2 HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let client = std::thread::spawn(move || read_response(stream));
    if !wait_until(Duration::from_secs(30), || accepted_by(&family, port, client_port)) {
        proc.fail("no worker accepted the slow request within 30s");
    }

    proc.signal(15);
    let response = client.join().expect("client thread panicked");
    let took = sent.elapsed();
    let status = proc.wait_exit(Duration::from_secs(30));

    let response =
        response.unwrap_or_else(|e| proc.fail(&format!("the in-flight request failed during the graceful stop: {e}")));
    let length: Option<usize> = response.header("Content-Length").and_then(|l| l.parse().ok());
    if response.status != 200 || !response.body.starts_with("release=app pid=") || length != Some(response.body.len()) {
        proc.fail(&format!("the in-flight request did not complete: {response:?}"));
    }
    if took < Duration::from_millis(1900) {
        proc.fail(&format!("the slow request answered after {took:?}, before its 2s sleep could finish: {response:?}"));
    }
    if status.code() != Some(0) {
        proc.fail("sockherd did not exit 0 after a graceful stop on SIGTERM");
    }
    let left: Vec<i32> = family.iter().copied().filter(|&p| pid_alive(p)).collect();
    if !left.is_empty() {
        proc.fail(&format!("processes of the service outlived the stop: {left:?} (of {family:?})"));
    }
}

#[test]
fn gunicorn_term_finishes_the_request_in_flight_then_exits_0() {
    require!("python3");
    require!(python: "gunicorn");
    term_stops_gracefully(Server::Gunicorn);
}

#[test]
fn unicorn_term_finishes_the_request_in_flight_then_exits_0() {
    // unicorn's graceful stop is QUIT (TERM would reset the request): sockherd translates.
    require!("unicorn");
    term_stops_gracefully(Server::Unicorn);
}

#[test]
fn puma_term_finishes_the_request_in_flight_then_exits_0() {
    // puma in cluster mode dies of SIGTERM after its graceful stop: still a clean exit.
    require!("puma");
    term_stops_gracefully(Server::Puma);
}

fn support(script: &str) -> PathBuf {
    repo().join("tests/support").join(script)
}

/// Waits for a file a support script writes once it is set up, and returns its content.
fn wait_for_file(proc: &mut Proc, path: &Path) -> String {
    if !wait_until(Duration::from_secs(15), || path.exists() || proc.try_status().is_some()) || !path.exists() {
        proc.fail(&format!("{} never appeared", path.display()));
    }
    std::fs::read_to_string(path).unwrap()
}

/// The process group of a process.
fn pgid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(2)?.parse().ok()
}

fn json_number(json: &str, key: &str) -> Option<i32> {
    let rest = &json[json.find(&format!("\"{key}\":"))? + key.len() + 3..];
    rest.trim_start().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// What a `--stop-timeout 1s` stop of tests/support/stubborn_server.py came to.
struct Killed {
    proc: Proc,
    status: std::process::ExitStatus,
    took: Duration,
}

/// Starts the stubborn server (a master and a child in its process group that ignores TERM;
/// the master ignores TERM too unless `master_obeys`), sends TERM to sockherd, and checks
/// what holds in every case: the graceful signal was delivered once, SIGKILL came after the
/// timeout and not much later, and no process of the service is left.
fn stop_after_timeout(tag: &str, master_obeys: bool) -> Killed {
    let dir = TempDir::new(tag);
    let report = dir.join("report.json");
    let port = free_port();
    let mut cmd = sockherd_cmd(&[
        "run",
        "--ready",
        "exec",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--stop-timeout",
        "1s",
        "--",
        "python3",
    ]);
    cmd.arg(support("stubborn_server.py")).arg(&report);
    if master_obeys {
        cmd.arg("master-obeys");
    }
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    let pid = proc.pid();
    let json = wait_for_file(&mut proc, &report);
    let (Some(master), Some(child)) = (json_number(&json, "pid"), json_number(&json, "child")) else {
        proc.fail(&format!("bad report {json:?}"));
    };
    if ppid(master) != Some(pid) || pgid(child) != Some(master) {
        proc.fail(&format!("expected master {master} (child of {pid}) and its child {child} in group {master}; got ppid {:?}, pgid {:?}", ppid(master), pgid(child)));
    }
    let family = descendants(pid);

    let signals = dir.join("report.json.signals");
    let asked = Instant::now();
    proc.signal(15);
    let status = proc.wait_exit(Duration::from_secs(60));
    let took = asked.elapsed();

    if std::fs::read_to_string(&signals).unwrap_or_default() != "TERM\n" {
        proc.fail(&format!(
            "the server should have received exactly one SIGTERM, its log: {:?}",
            std::fs::read_to_string(&signals)
        ));
    }
    // Causality, not speed: the SIGKILL came only after the timeout (a lower bound cannot flake
    // on a loaded machine), and it came at all (the bounded wait above).
    if took < Duration::from_millis(950) {
        proc.fail(&format!("sockherd exited after {took:?}, before the 1s --stop-timeout"));
    }
    let left: Vec<i32> = family.iter().copied().filter(|&p| pid_alive(p)).collect();
    if !left.is_empty() || pid_alive(child) {
        proc.fail(&format!("processes survived the SIGKILL: {left:?} (of {family:?}, child {child})"));
    }
    Killed { proc, status, took }
}

#[test]
fn stop_timeout_kills_the_whole_process_group_of_a_server_ignoring_term() {
    require!("python3");
    let Killed { proc, status, took } = stop_after_timeout("stop-timeout", false);
    if status.code() != Some(137) {
        proc.fail(&format!(
            "sockherd should exit 137 (128 + SIGKILL) when the server had to be killed (after {took:?})"
        ));
    }
}

#[test]
fn stop_timeout_kills_a_worker_that_outlives_its_obedient_master_and_reports_failure() {
    // The master exits 0 on TERM, its child does not stop: the stop still needed SIGKILL, so it
    // was not clean, and sockherd must not report success.
    require!("python3");
    let Killed { proc, status, took } = stop_after_timeout("stop-timeout-worker", true);
    // Exactly 137 (128 + SIGKILL), the documented status of a stop that needed SIGKILL: any
    // other non-zero status (a panic's 101, a plain failure's 1) is a different outcome.
    if status.code() != Some(137) {
        proc.fail(&format!(
            "sockherd should exit 137 (128 + SIGKILL) because the stop needed SIGKILL after the 1s \
             --stop-timeout, although the master itself exited 0; got {status:?} after {took:?}"
        ));
    }
}

/// QUIT to `sockherd run --flavor F` sends F's fast-stop signal, seen by a server that logs it.
fn quit_sends_the_fast_signal(flavor: &str, expected: &str) {
    let dir = TempDir::new(&format!("fast-{flavor}"));
    let report = dir.join("report");
    let sock = dir.join("app.sock");
    let mut cmd = sockherd_cmd(&[
        "run",
        "--ready",
        "exec",
        "--flavor",
        flavor,
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--listen",
    ]);
    cmd.arg(&sock).arg("--").arg("python3").arg(support("signal_logger.py")).arg(&report);
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    let server: i32 = wait_for_file(&mut proc, &report).trim().parse().unwrap_or_else(|_| proc.fail("bad report"));
    if ppid(server) != Some(proc.pid()) {
        proc.fail(&format!("the server {server} is not sockherd's child"));
    }
    proc.signal(3);
    let status = proc.wait_exit(Duration::from_secs(15));
    let got = std::fs::read_to_string(dir.join("report.signals")).unwrap_or_default();
    if got != format!("{expected}\n") {
        proc.fail(&format!("QUIT to sockherd should reach the {flavor} server as SIG{expected}, it got {got:?}"));
    }
    if status.code() != Some(0) {
        proc.fail("sockherd should exit 0 after a requested stop the server obeyed");
    }
}

#[test]
fn quit_makes_a_gunicorn_flavored_server_stop_fast_with_int() {
    require!("python3");
    quit_sends_the_fast_signal("gunicorn", "INT");
}

#[test]
fn quit_makes_a_unicorn_flavored_server_stop_fast_with_term() {
    require!("python3");
    quit_sends_the_fast_signal("unicorn", "TERM");
}

#[test]
fn server_exiting_with_status_3_makes_sockherd_exit_3() {
    require!("sh");
    let dir = TempDir::new("exit-3");
    let listen = format!("127.0.0.1:{}", free_port());
    let (status, _, stderr) =
        run_sockherd(&["run", "--listen", &listen, "--", "sh", "-c", "exit 3"], dir.path(), Duration::from_secs(15));
    assert_eq!(status.code(), Some(3), "sockherd should exit with the server's status 3; stderr:\n{stderr}");
}

#[test]
fn server_killed_by_sigkill_makes_sockherd_exit_137() {
    require!("python3");
    let dir = TempDir::new("exit-137");
    let report = dir.join("report.json");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = sockherd_cmd(&["run", "--ready", "exec", "--listen", &addr, "--"]);
    cmd.arg(probe()).arg(&report).arg("serve");
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    wait_http_ok(&mut proc, &addr, BOOT);
    let json = wait_for_file(&mut proc, &report);
    let server = json_number(&json, "pid").unwrap_or_else(|| proc.fail(&format!("bad report {json:?}")));
    if ppid(server) != Some(proc.pid()) {
        proc.fail(&format!("the probe {server} is not sockherd's child"));
    }
    // The probe is our own descendant (sockherd's child), killed by its pid.
    let _ = std::process::Command::new("kill").arg("-9").arg(server.to_string()).status();
    let status = proc.wait_exit(Duration::from_secs(15));
    if status.code() != Some(137) {
        proc.fail("sockherd should exit 137 (128 + SIGKILL) when its server was killed by SIGKILL");
    }
}
