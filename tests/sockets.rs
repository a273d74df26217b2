//! The `--listen` specs the README documents, each actually bound and served (tests/support/
//! probe.py answers `probe <pid>` on every socket it inherits), and the unix socket files
//! sockherd must never remove: an activated one, and one somebody replaced.
mod common;

use common::run::wait_file;
use common::*;
use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::process::Command;
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(60);

/// `sockherd run --ready exec <listen...> -- python3 probe.py REPORT serve`, once the probe wrote
/// its report. Returns the process and the probe's pid.
fn serve(dir: &TempDir, args: &[&str]) -> (Proc, i32) {
    let report = dir.join("report.json");
    let mut all = vec!["run", "--ready", "exec"];
    all.extend_from_slice(args);
    all.push("--");
    let mut cmd = sockherd_cmd(&all);
    cmd.arg("python3").arg(probe()).arg(&report).arg("serve");
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    let json = wait_file(&mut proc, &report, PATIENCE);
    let pid = json
        .split("\"pid\":")
        .nth(1)
        .and_then(|r| r.trim_start().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .unwrap_or_else(|| proc.fail(&format!("bad report {json:?}")));
    (proc, pid)
}

fn expect_probe(proc: &Proc, what: &str, answer: std::io::Result<Response>, pid: i32) {
    match answer {
        Ok(r) if r.status == 200 && r.body == format!("probe {pid}\n") => {}
        other => proc.fail(&format!("{what} should be served by the probe {pid}: {other:?}")),
    }
}

fn get_over(mut stream: impl Read + Write) -> std::io::Result<Response> {
    stream.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let status = raw.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok(Response { status, body })
}

#[test]
fn abstract_socket_is_bound_and_served() {
    require!("python3");
    let dir = TempDir::new("abstract");
    let name = format!("sockherd-test-{}-abstract", std::process::id());
    let (proc, pid) = serve(&dir, &["--listen", &format!("@{name}")]);
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let answer = UnixStream::connect_addr(&addr).and_then(get_over);
    expect_probe(&proc, &format!("@{name}"), answer, pid);
}

#[test]
fn unix_socket_mode_is_applied() {
    require!("python3");
    let dir = TempDir::new("mode");
    let sock = dir.join("app.sock");
    // 0604 can come from no umask: it was set by mode=.
    let (proc, pid) = serve(&dir, &["--listen", &format!("{},mode=0604", sock.display())]);
    let mode = std::fs::metadata(&sock).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
    if mode != 0o604 {
        proc.fail(&format!("{} has mode {mode:o}, not 604", sock.display()));
    }
    expect_probe(&proc, "the unix socket", http_get_unix(&sock, "/"), pid);
}

#[test]
fn backlog_is_applied() {
    require!("python3", "ss");
    let dir = TempDir::new("backlog");
    let port = free_port();
    let (proc, _pid) = serve(&dir, &["--listen", &format!("127.0.0.1:{port},backlog=7")]);
    // For a listening socket, ss shows the backlog as Send-Q.
    let out = Command::new("ss").args(["-ltnH", &format!("sport = :{port}")]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let send_q: Vec<&str> = text.lines().filter_map(|l| l.split_whitespace().nth(2)).collect();
    if send_q != ["7"] {
        proc.fail(&format!("the socket on port {port} should have backlog 7 (ss Send-Q): {text:?}"));
    }
}

#[test]
fn ipv6_address_is_bound_and_served() {
    require!("python3");
    if !prerequisite(std::net::TcpListener::bind("[::1]:0").is_ok(), "an IPv6 loopback address (::1)") {
        return;
    }
    let dir = TempDir::new("ipv6");
    let port = std::net::TcpListener::bind("[::1]:0").unwrap().local_addr().unwrap().port();
    let (proc, pid) = serve(&dir, &["--listen", &format!("[::1]:{port}")]);
    expect_probe(&proc, "[::1]", http_get(&format!("[::1]:{port}"), "/"), pid);
}

#[test]
fn localhost_is_bound_on_127_0_0_1() {
    require!("python3");
    let dir = TempDir::new("localhost");
    let port = free_port();
    let (proc, pid) = serve(&dir, &["--listen", &format!("localhost:{port}")]);
    expect_probe(&proc, "127.0.0.1", http_get(&format!("127.0.0.1:{port}"), "/"), pid);
}

/// `--fallback` without socket activation: the `--listen` sockets are bound.
#[test]
fn fallback_binds_listen_when_not_activated() {
    require!("python3");
    let dir = TempDir::new("fallback-plain");
    let addr = format!("127.0.0.1:{}", free_port());
    let (proc, pid) = serve(&dir, &["--fallback", "--listen", &addr]);
    expect_probe(&proc, &addr, http_get(&addr, "/"), pid);
}

/// A unix socket systemd (here systemd-socket-activate) passed is not sockherd's: after a clean
/// stop its file is still there.
#[test]
fn activated_unix_socket_is_never_unlinked() {
    require!("systemd-socket-activate", "python3");
    let dir = TempDir::new("keep-activated");
    let sock = dir.join("app.sock");
    let report = dir.join("report.json");
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg("-l").arg(&sock).arg("--").arg(sockherd()).args(["run", "--ready", "exec", "--"]);
    cmd.arg("python3").arg(probe()).arg(&report).arg("serve");
    for var in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        cmd.env_remove(var);
    }
    let mut proc = Proc::spawn(cmd, dir.path(), "activator");
    if !wait_until(PATIENCE, || sock.exists()) {
        proc.fail("the activator never created its socket");
    }
    // The first connection makes the activator exec sockherd (same pid).
    let first = UnixStream::connect(&sock).unwrap_or_else(|e| proc.fail(&format!("connect: {e}")));
    wait_file(&mut proc, &report, PATIENCE);
    drop(first);
    proc.signal(15);
    let status = proc.wait_exit(PATIENCE);
    if status.code() != Some(0) || !proc.stderr().contains("received socket fd 3") {
        proc.fail("sockherd (activated) should exit 0 after SIGTERM");
    }
    if !std::fs::symlink_metadata(&sock).is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type())) {
        proc.fail(&format!("{} (passed by the activator) was removed", sock.display()));
    }
}

/// A socket file sockherd created but somebody replaced meanwhile is not sockherd's any more:
/// its exit leaves the new one in place.
#[test]
fn replaced_unix_socket_is_never_unlinked() {
    require!("python3");
    let dir = TempDir::new("keep-replaced");
    let sock = dir.join("app.sock");
    let (mut proc, _pid) = serve(&dir, &["--listen", &sock.display().to_string()]);
    std::fs::remove_file(&sock).unwrap();
    let ours = UnixListener::bind(&sock).unwrap();
    proc.signal(15);
    let status = proc.wait_exit(PATIENCE);
    if status.code() != Some(0) {
        proc.fail("sockherd should exit 0 after SIGTERM");
    }
    ours.set_nonblocking(true).unwrap();
    if UnixStream::connect(&sock).is_err() {
        proc.fail(&format!("{} (replaced by the test) was removed by sockherd's exit", sock.display()));
    }
}
