//! What sockherd creates and hands on, with other local users and other instances around: a
//! unix socket file has its mode from the moment it exists, two instances racing for a stale
//! socket never both "win", a readiness command gets nothing systemd meant for sockherd, an
//! environment name that is not UTF-8 still reaches the server, and a supervisor's answer is
//! checked before `status --json` prints it.
mod common;

use common::*;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

/// `mode=0600` with a umask of 000: the socket file must never exist with the umask's
/// permissions (0777), not even between bind(2) and a chmod. strace shows the order: the
/// umask is narrowed before the bind, and nothing changes the mode after it.
#[test]
fn socket_mode_is_set_at_bind() {
    require!("python3", "strace");
    let dir = TempDir::new("mode-at-bind");
    let sock = dir.join("app.sock");
    let trace = dir.join("trace");
    let spec = format!("{},mode=0600", sock.display());
    let inner = sockherd_cmd(&["run", "--ready", "exec", "--listen", &spec, "--", "sleep", "300"]);
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"umask 000; exec strace -f -qq -o "$0" -e trace=umask,bind,chmod,fchmod,fchmodat "$@""#)
        .arg(&trace)
        .arg(inner.get_program())
        .args(inner.get_args());
    for var in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "JOURNAL_STREAM", "WATCHDOG_USEC"] {
        cmd.env_remove(var);
    }
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    proc.wait_for_stderr("started generation 1", Duration::from_secs(20));
    let mode = std::fs::metadata(&sock).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
    let text = std::fs::read_to_string(&trace).unwrap_or_default();
    let path = sock.display().to_string();
    let calls: Vec<&str> =
        text.lines().filter(|l| l.contains("umask(") || (l.contains(&path) && !l.contains("connect("))).collect();
    let bind =
        calls.iter().position(|l| l.contains("bind(")).unwrap_or_else(|| proc.fail(&format!("no bind in:\n{text}")));
    let umask_before = calls[..bind].iter().rev().find(|l| l.contains("umask("));
    let changed_after = calls[bind + 1..].iter().find(|l| l.contains("chmod"));
    if mode != 0o600 || umask_before.is_none_or(|l| !l.contains("umask(0177)")) || changed_after.is_some() {
        proc.fail(&format!(
            "{} is {mode:o}; the umask before bind was {umask_before:?}; changed after bind: {changed_after:?}\n{}",
            sock.display(),
            calls.join("\n")
        ));
    }
}

/// Several instances start at once on the same stale socket file (left by a server that died).
/// Exactly one may take it: the others fail with "address in use", and the file leads to the
/// one left. Without a lock, one could unlink the socket another had just bound, and both
/// would run, one of them on a socket nobody can reach.
#[test]
fn instances_racing_for_a_stale_socket_never_both_win() {
    require!("python3");
    const ROUNDS: usize = 8;
    const INSTANCES: usize = 6;
    for round in 0..ROUNDS {
        let dir = TempDir::new("stale-race");
        let sock = dir.join("app.sock");
        let made = Command::new("python3")
            .args(["-c", "import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(1)"])
            .arg(&sock)
            .status()
            .unwrap();
        assert!(made.success() && sock.exists(), "could not leave a stale socket at {}", sock.display());
        let mut procs: Vec<Proc> = (0..INSTANCES)
            .map(|i| {
                let mut cmd = sockherd_cmd(&["run", "--ready", "exec", "--listen"]);
                cmd.arg(&sock).arg("--").arg(probe()).arg(dir.path().join(format!("report{i}.json"))).arg("serve");
                Proc::spawn(cmd, dir.path(), &format!("sockherd{i}"))
            })
            .collect();
        // Each either fails or starts its generation.
        for p in &mut procs {
            let settled = wait_until(Duration::from_secs(30), || {
                p.try_status().is_some() || p.stderr().contains("started generation 1")
            });
            if !settled {
                p.fail("neither started nor failed");
            }
        }
        let running: Vec<&Proc> = procs.iter().filter(|p| !p.stderr().contains("address in use")).collect();
        if running.len() != 1 {
            let all: Vec<String> =
                procs.iter().map(|p| format!("pid {}: {}", p.pid(), p.stderr().replace('\n', " | "))).collect();
            panic!("round {round}: {} instances took {}:\n{}", running.len(), sock.display(), all.join("\n"));
        }
        let answer = http_get_unix(&sock, "/");
        let winner_children = descendants(running[0].pid());
        if !winner_children.iter().any(|c| answer.as_ref().is_ok_and(|a| a.body.trim() == format!("probe {c}"))) {
            running[0].fail(&format!(
                "round {round}: {} answers {answer:?}, not the generation of the instance left ({winner_children:?})",
                sock.display()
            ));
        }
    }
}

/// A `cmd:` readiness check is not the service: the sockets systemd passed sockherd
/// (LISTEN_*), its watchdog (WATCHDOG_*) and its notify socket stay out of its environment.
#[test]
fn readiness_command_gets_nothing_meant_for_sockherd() {
    require!("python3");
    let dir = TempDir::new("cmd-env");
    let seen = dir.join("check.env");
    let check = format!("cmd:env > {}", seen.display());
    let mut cmd = std::process::Command::new(repo().join("tests/support/fake_activate.py"));
    cmd.args(["--fd", "tcp", "--set", "LISTEN_FDNAMES=http", "--"])
        .arg(sockherd())
        .args(["run", "--ready", &check, "--"])
        .arg(probe())
        .arg(dir.join("report.json"))
        .arg("serve")
        .env("WATCHDOG_USEC", "600000000")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM");
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    proc.wait_for_stderr("is ready", Duration::from_secs(30));
    let env = std::fs::read_to_string(&seen).unwrap_or_default();
    let leaked: Vec<&str> = env
        .lines()
        .filter(|l| {
            ["LISTEN_FDS=", "LISTEN_PID=", "LISTEN_FDNAMES=", "WATCHDOG_USEC=", "WATCHDOG_PID=", "NOTIFY_SOCKET="]
                .iter()
                .any(|v| l.starts_with(v))
        })
        .collect();
    if !leaked.is_empty() || !env.contains("SOCKHERD_GENERATION=1") {
        proc.fail(&format!("the readiness command saw {leaked:?}; its whole environment:\n{env}"));
    }
}

/// An environment variable whose name is not UTF-8 is not sockherd's business: the server gets
/// it byte for byte (sockherd 0.1 dropped it without a word).
#[test]
fn non_utf8_environment_names_reach_the_server() {
    require!("python3");
    let dir = TempDir::new("env-bytes");
    let seen = dir.join("server.env");
    let name = OsStr::from_bytes(b"SOCKHERD_T\xffST");
    let mut cmd = sockherd_cmd(&["run", "--ready", "exec", "--listen", "127.0.0.1:0", "--", "python3", "-c"]);
    // The environment as the kernel gave it (a shell would drop a name it cannot use).
    cmd.arg(
        "import sys, time; open(sys.argv[1], 'wb').write(open('/proc/self/environ', 'rb').read()); time.sleep(300)",
    )
    .arg(&seen)
    .env(name, "kept");
    let proc = Proc::spawn(cmd, dir.path(), "sockherd");
    if !wait_until(Duration::from_secs(20), || std::fs::metadata(&seen).is_ok_and(|m| m.len() > 0)) {
        proc.fail("the server never wrote its environment");
    }
    let env = std::fs::read(&seen).unwrap();
    if !env.split(|&b| b == 0).any(|l| l == b"SOCKHERD_T\xffST=kept") {
        proc.fail(&format!("the server's environment lacks the non-UTF-8 name:\n{}", String::from_utf8_lossy(&env)));
    }
}

/// A process posing as a supervisor answers `status` with something that is not JSON:
/// `status --json` prints nothing of it (its output must parse) and fails, saying why.
#[test]
fn status_json_is_checked_before_it_is_printed() {
    require!("python3");
    let dir = TempDir::new("status-garbage");
    let ready = dir.join("fake.ready");
    // Listens where sockherd 0.1 listened and where sockherd listens now, and answers status
    // with a JSON object followed by garbage.
    let fake = r#"
import os, socket, sys, threading
pid = os.getpid()
d = "/tmp/sockherd-%d-fakefakefakefake" % pid
os.mkdir(d, 0o700)
servers = []
for addr in ("\0sockherd/%d/control" % pid, d + "/control"):
    s = socket.socket(socket.AF_UNIX); s.bind(addr); s.listen(8); servers.append(s)
open(sys.argv[1], "w").close()
def serve(s):
    while True:
        c, _ = s.accept(); c.recv(100)
        c.sendall(b'{"pid": %d, "state": "running"}\n]}{"injected": true}\n' % pid); c.close()
for s in servers[1:]:
    threading.Thread(target=serve, args=(s,), daemon=True).start()
try:
    serve(servers[0])
finally:
    os.unlink(d + "/control"); os.rmdir(d)
"#;
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(fake).arg(&ready);
    let mut proc = Proc::spawn(cmd, dir.path(), "fake-supervisor");
    if !wait_until(Duration::from_secs(20), || ready.exists() || proc.try_status().is_some()) || !ready.exists() {
        proc.fail("the fake supervisor did not start");
    }
    let out = sockherd_cmd(&["status", "--json", "--pid", &proc.pid().to_string()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(format!("/tmp/sockherd-{}-fakefakefakefake", proc.pid()));
    if out.status.success() || stdout.contains("injected") || !stderr.contains("not JSON") {
        proc.fail(&format!("status --json of a garbage answer: {:?}\nstdout: {stdout}\nstderr: {stderr}", out.status));
    }
}
