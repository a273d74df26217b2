//! The einhorn and Server::Starter flavors with a server that speaks each: a minimal
//! einhorn-protocol server (tests/support/einhorn_server.py; einhorn is not packaged for Debian)
//! and starman under `--flavor server-starter`. Each serves through TCP (and einhorn through a
//! unix socket too), reloads onto a new master, and stops the flavor's graceful way.
mod common;

use common::run::{lines, support, wait_file, wait_generations};
use common::*;
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(60);

#[test]
fn einhorn_server_serves_reloads_and_stops_on_usr2() {
    require!("python3");
    let dir = TempDir::new("einhorn");
    let addr = format!("127.0.0.1:{}", free_port());
    let sock = dir.join("app.sock");
    let report = dir.join("report");
    let sock_arg = sock.display().to_string();
    let mut cmd = sockherd_cmd(&["run", "--flavor", "einhorn", "--listen", &addr, "--listen", &sock_arg, "--"]);
    cmd.arg("python3").arg(support("einhorn_server.py")).arg(&report);
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    let first: i32 = wait_file(&mut proc, &report, PATIENCE).trim().parse().unwrap_or(0);
    // The flavor's default readiness: delay:1.
    wait_generations(&mut proc, "generation 1 serving", PATIENCE, |g| g.len() == 1 && g[0].state == "serving");
    let want = format!("einhorn {first} fds=3,4\n");
    for answer in [http_get(&addr, "/"), http_get_unix(&sock, "/")] {
        if !matches!(&answer, Ok(r) if r.status == 200 && r.body == want) {
            proc.fail(&format!("the einhorn server should answer {want:?} on both sockets: {answer:?}"));
        }
    }
    let out = sockherd_cmd(&["reload", "--pid", &proc.pid().to_string(), "--timeout", "60s"]).output().unwrap();
    if !out.status.success() {
        proc.fail(&format!("reload failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let second: i32 = std::fs::read_to_string(&report).unwrap_or_default().trim().parse().unwrap_or(0);
    let answer = http_get(&addr, "/");
    if second == first || !matches!(&answer, Ok(r) if r.body == format!("einhorn {second} fds=3,4\n")) {
        proc.fail(&format!("after the reload the new server ({second}) should answer: {answer:?}"));
    }
    if !wait_until(PATIENCE, || !pid_alive(first)) || lines(&report.with_extension("signals")) != ["USR2"] {
        proc.fail(&format!(
            "the old server should have stopped on USR2 (einhorn's graceful stop): {:?}",
            lines(&report.with_extension("signals"))
        ));
    }
    proc.signal(15);
    let status = proc.wait_exit(PATIENCE);
    if status.code() != Some(0) || lines(&report.with_extension("signals")) != ["USR2", "USR2"] {
        proc.fail(&format!(
            "TERM to sockherd should stop the server with USR2 and exit 0: {status:?}, {:?}",
            lines(&report.with_extension("signals"))
        ));
    }
}

/// Body field `master=<pid>` of the example apps.
fn master(body: &str) -> Option<i32> {
    body.split_whitespace().find_map(|w| w.strip_prefix("master="))?.parse().ok()
}

#[test]
fn server_starter_flavor_with_starman() {
    require!("starman");
    let dir = TempDir::new("starman");
    let addr = format!("127.0.0.1:{}", free_port());
    let app = contrib("app").display().to_string();
    let psgi = repo().join("bench/apps/app.psgi").display().to_string();
    // starman's graceful stop is QUIT; --disable-keepalive as in the benchmark.
    let cmd = sockherd_cmd(&[
        "run",
        "--flavor",
        "server-starter",
        "--stop-signal",
        "QUIT",
        "--listen",
        &addr,
        "--chdir",
        &app,
        "--",
        "starman",
        "--workers",
        "2",
        "--disable-keepalive",
        "--preload-app",
        &psgi,
    ]);
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    let first = wait_http_ok(&mut proc, &addr, PATIENCE);
    let gens =
        wait_generations(&mut proc, "generation 1 serving", PATIENCE, |g| g.len() == 1 && g[0].state == "serving");
    if master(&first.body) != Some(gens[0].pid) || !first.body.starts_with("release=app ") {
        proc.fail(&format!("starman's master should be generation 1 ({gens:?}): {first:?}"));
    }
    let out = sockherd_cmd(&["reload", "--pid", &proc.pid().to_string(), "--timeout", "60s"]).output().unwrap();
    if !out.status.success() {
        proc.fail(&format!("reload failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let gens =
        wait_generations(&mut proc, "generation 2 serving alone", PATIENCE, |g| g.len() == 1 && g[0].number == 2);
    let answer = http_get(&addr, "/");
    if !matches!(&answer, Ok(r) if master(&r.body) == Some(gens[0].pid)) {
        proc.fail(&format!("after the reload generation 2 ({gens:?}) should answer: {answer:?}"));
    }
    proc.signal(15);
    let status = proc.wait_exit(PATIENCE);
    if status.code() != Some(0) {
        proc.fail("sockherd should exit 0 when starman stopped on QUIT");
    }
}
