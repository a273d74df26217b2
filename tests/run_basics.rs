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
