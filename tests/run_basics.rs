//! `sockherd run` with sockets it binds itself: the server gets them and serves.
mod common;

use common::*;
use std::time::Duration;

#[test]
fn run_serves_tcp_and_unix_through_the_probe() {
    require!("python3");
    let dir = TempDir::new("run-basics");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let sock = dir.join("app.sock");
    let report = dir.join("report.json");
    let mut cmd = sockherd_cmd(&[
        "run",
        "--listen",
        &format!("{addr},name=http"),
        "--listen",
        &format!("{},name=admin", sock.display()),
        "--",
    ]);
    cmd.arg(probe()).arg(&report).arg("serve");
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    let first = wait_http_ok(&mut proc, &addr, Duration::from_secs(10));
    let second = wait_http_ok_unix(&mut proc, &sock, Duration::from_secs(10));
    if !first.body.starts_with("probe ") || first.body != second.body {
        proc.fail(&format!("unexpected answers: {first:?} {second:?}"));
    }
    proc.signal(15);
    let status = proc.wait_exit(Duration::from_secs(10));
    if status.code() != Some(0) {
        proc.fail("sockherd did not exit 0 after SIGTERM");
    }
    if sock.exists() {
        proc.fail("the unix socket file sockherd created was left behind");
    }
}

/// The control socket serves only root and the supervisor's own user: `sockherd reload` from
/// another user cannot even find it (the process's descriptors and its 0700 runtime directory
/// are closed to that user), says why, and starts nothing.
#[test]
fn reload_from_another_user_is_refused() {
    require!("python3", "setpriv");
    if !prerequisite(is_root(), "root (to run the client as another user)") {
        return;
    }
    let dir = TempDir::new("peer");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = sockherd_cmd(&["run", "--ready", "exec", "--listen", &addr, "--"]);
    cmd.arg(probe()).arg(dir.join("report.json")).arg("serve");
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    wait_http_ok(&mut proc, &addr, Duration::from_secs(10));
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(sockherd())
        .args(["reload", "--pid", &proc.pid().to_string()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || !stderr.contains("permission denied") {
        proc.fail(&format!("reload as uid 65534: {:?} {stderr}", out.status));
    }
    if !stderr.contains("run as root or as the service's user") {
        proc.fail(&format!("the refusal must say who may ask: {stderr}"));
    }
    // It started nothing, not even later: the next reload, by the supervisor's own user, is the
    // one that starts generation 2, and it is the only generation started after the first.
    let allowed = sockherd_cmd(&["reload", "--pid", &proc.pid().to_string(), "--timeout", "60s"]).output().unwrap();
    let started: Vec<String> = proc
        .stderr()
        .lines()
        .filter_map(|l| l.strip_prefix("sockherd: started generation "))
        .filter_map(|rest| rest.split_whitespace().next().map(String::from))
        .collect();
    if !allowed.status.success()
        || !String::from_utf8_lossy(&allowed.stderr).contains("reload succeeded: generation 2 ")
        || started != ["1", "2"]
    {
        proc.fail(&format!(
            "after the refused request, an allowed reload should start generation 2 and only it; started {started:?}; \
             the allowed reload: {:?} {}",
            allowed.status,
            String::from_utf8_lossy(&allowed.stderr)
        ));
    }
}

/// A reload asked for while generation 1 is still starting waits for it, then runs. Generation 1
/// is held unready by a gate file (`--ready cmd:test -e GATE`), so the reload is asked for while
/// it starts whatever the machine's speed.
#[test]
fn reload_during_the_first_start_runs_once_it_is_ready() {
    require!("python3");
    let dir = TempDir::new("early-reload");
    let addr = format!("127.0.0.1:{}", free_port());
    let gate = dir.join("gate");
    let ready = format!("cmd:test -e '{}'", gate.display());
    let mut cmd = sockherd_cmd(&["run", "--ready", &ready, "--listen", &addr, "--"]);
    cmd.arg(probe()).arg(dir.join("report.json")).arg("serve");
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    proc.wait_for_stderr("started generation 1", Duration::from_secs(30));
    let client = Proc::spawn(
        sockherd_cmd(&["reload", "--pid", &proc.pid().to_string(), "--timeout", "60s"]),
        dir.path(),
        "reload",
    );
    proc.wait_for_stderr("reload requested while generation 1 is starting", Duration::from_secs(30));
    if proc.stderr().contains(" is ready after ") || proc.stderr().contains("started generation 2") {
        proc.fail("generation 1 was ready, or generation 2 started, before the gate opened");
    }
    std::fs::write(&gate, "").unwrap();
    let mut client = client;
    let status = client.wait_exit(Duration::from_secs(60));
    if !status.success() || !client.stderr().contains("reload succeeded: generation 2 ") {
        proc.fail(&format!("early reload: {status:?} {}", client.stderr()));
    }
    // Order: generation 2 was started only after generation 1 was ready.
    let log = proc.stderr();
    let ready_line = log.lines().position(|l| l.contains("generation 1 (pid ") && l.contains(" is ready after "));
    let second_line = log.lines().position(|l| l.contains("started generation 2 "));
    if !matches!((ready_line, second_line), (Some(r), Some(s)) if r < s) {
        proc.fail(&format!(
            "generation 2 should start only after generation 1 is ready (ready at line {ready_line:?}, \
             generation 2 started at line {second_line:?})"
        ));
    }
}

/// The pidfd inode id of `pid` (pidfs), or None where this kernel has no such ids.
fn pidfd_id(pid: i32) -> Option<String> {
    let script = "import os, sys\nown, init = (os.fstat(os.pidfd_open(p)).st_ino for p in (int(sys.argv[1]), 1))\nprint(own if own != init else '')";
    let out = std::process::Command::new("python3").args(["-c", script, &pid.to_string()]).output().unwrap();
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string()).filter(|id| !id.is_empty())
}

/// As ExecReload=, `sockherd reload` takes `$MAINPID`; systemd >= 258 also gives `$MAINPIDFDID`,
/// the main process's pidfd inode id. A MAINPID whose process has another id is not the
/// service's main process any more (the pid was reused): refused, nothing reloaded. The right
/// id reloads.
#[test]
fn reload_by_mainpid_checks_mainpidfdid() {
    require!("python3");
    let dir = TempDir::new("mainpidfdid");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = sockherd_cmd(&["run", "--ready", "exec", "--listen", &addr, "--"]);
    cmd.arg(probe()).arg(dir.join("report.json")).arg("serve");
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    wait_http_ok(&mut proc, &addr, Duration::from_secs(10));
    let pid = proc.pid().to_string();
    let reload = |id: &str| {
        sockherd_cmd(&["reload", "--timeout", "20s"]).env("MAINPID", &pid).env("MAINPIDFDID", id).output().unwrap()
    };
    let Some(id) = pidfd_id(proc.pid()) else {
        eprintln!("this kernel has no pidfd ids: MAINPIDFDID cannot be compared");
        return;
    };
    let wrong = (id.parse::<u64>().unwrap() + 1).to_string();
    let out = reload(&wrong);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() != Some(1) || !stderr.contains(&format!("MAINPID={pid} no longer names")) {
        proc.fail(&format!("reload with MAINPIDFDID={wrong} (the supervisor's is {id}): {:?} {stderr}", out.status));
    }
    if proc.stderr().contains("started generation 2") {
        proc.fail("a refused reload started a generation");
    }
    let out = reload(&id);
    if !out.status.success() || !String::from_utf8_lossy(&out.stderr).contains("generation 2") {
        proc.fail(&format!(
            "reload with the right MAINPIDFDID: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
}

/// NOTIFY_SOCKET in a form sockherd cannot speak to (vsock, systemd 253's way for a VM's
/// manager): a precise warning, and the service runs on without notifications.
#[test]
fn vsock_notify_socket_is_refused_precisely_and_the_server_runs() {
    require!("python3");
    let dir = TempDir::new("vsock-notify");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = sockherd_cmd(&["run", "--ready", "exec", "--listen", &addr, "--"]);
    cmd.arg(probe()).arg(dir.join("report.json")).arg("serve").env("NOTIFY_SOCKET", "vsock:2:1234");
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    wait_http_ok(&mut proc, &addr, Duration::from_secs(10));
    if !proc.stderr().contains("cannot reach NOTIFY_SOCKET=vsock:2:1234: a vsock address") {
        proc.fail("expected a warning that names the vsock NOTIFY_SOCKET and why it cannot be used");
    }
}
