//! `sockherd status` as an operator meets it: the table during and after a handoff, worker
//! counts, `--json`, the refusals; and `sockherd status UNIT` inside a real systemd
//! (tests/support/sdbox): systemd's view, the supervisor at MainPID, a main process that is not
//! a supervisor, and the exit codes 0, 3 and 4.
mod common;

use common::sdbox::{Deployment, Server, Systemd};
use common::*;
use std::time::Duration;

/// One row of the GEN table: (number, pid, state, workers, cpu, memory, age, release).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    number: u64,
    pid: i32,
    state: String,
    workers: String,
    release: String,
}

/// The rows of the generations table in `sockherd status` text output.
fn generation_rows(text: &str) -> Vec<Row> {
    text.lines()
        .skip_while(|l| !l.starts_with("GEN "))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| !l.starts_with(' '))
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            Row {
                number: cols[0].parse().unwrap_or_else(|_| panic!("bad row {l:?} in:\n{text}")),
                pid: cols[1].parse().unwrap_or(0),
                state: cols[2].to_string(),
                workers: cols[3].to_string(),
                // The memory column has spaces in it ("90 MiB pss"): the release is the last.
                release: cols.last().unwrap_or(&"").to_string(),
            }
        })
        .collect()
}

/// `sockherd status --pid PID [extra]`: (exit code, stdout, stderr).
fn status(pid: i32, extra: &[&str]) -> (Option<i32>, String, String) {
    let pid = pid.to_string();
    let mut args = vec!["status", "--pid", &pid];
    args.extend_from_slice(extra);
    let out = sockherd_cmd(&args).output().expect("run sockherd status");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls the text status until `check` holds; fails through `proc` after `timeout`.
fn wait_status(proc: &Proc, what: &str, timeout: Duration, check: impl Fn(&[Row]) -> bool) -> String {
    let mut last = String::new();
    let ok = wait_until(timeout, || {
        let (code, out, err) = status(proc.pid(), &[]);
        last = format!("exit {code:?}\n{out}{err}");
        code == Some(0) && check(&generation_rows(&out))
    });
    if !ok {
        proc.fail(&format!("`sockherd status` never showed {what} within {timeout:?}; last:\n{last}"));
    }
    last
}

#[test]
fn status_shows_two_generations_during_a_handoff_and_one_after() {
    let dir = TempDir::new("status-handoff");
    let addr = format!("127.0.0.1:{}", free_port());
    let app = contrib("app").display().to_string();
    let mut cmd = sockherd_cmd(&["run", "--listen", &addr, "--chdir", &app, "--", "python3", "serve.py"]);
    // A generation started while the hold file exists stays in its import (and so does not send
    // READY=1) until the test removes it: the handoff lasts as long as the test looks.
    let hold = dir.join("hold");
    cmd.env("APP_BOOT_HOLD", &hold);
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    wait_http_ok(&mut proc, &addr, Duration::from_secs(30));
    let one = wait_status(&proc, "generation 1 serving", Duration::from_secs(10), |rows| {
        rows.len() == 1 && rows[0].number == 1 && rows[0].state == "serving"
    });
    if !one.contains("last reload: none since start") || !one.contains(&addr) || !one.contains("readiness notify") {
        proc.fail(&format!("before any reload, status should show the socket, readiness and no reload:\n{one}"));
    }

    std::fs::write(&hold, "").unwrap();
    proc.signal(1); // SIGHUP: a reload
    let during =
        wait_status(&proc, "generation 2 starting beside generation 1 serving", Duration::from_secs(30), |rows| {
            rows.len() == 2
                && rows.iter().any(|r| r.number == 1 && r.state == "serving")
                && rows.iter().any(|r| r.number == 2 && r.state == "starting")
        });
    eprintln!("during the handoff:\n{during}");
    if !during.contains(": reloading (") {
        proc.fail(&format!("during the handoff the supervisor should say it is reloading:\n{during}"));
    }

    std::fs::remove_file(&hold).unwrap();
    let after = wait_status(&proc, "generation 2 alone, serving", Duration::from_secs(60), |rows| {
        rows.len() == 1 && rows[0].number == 2 && rows[0].state == "serving"
    });
    eprintln!("after the handoff:\n{after}");
    if !after.contains("last reload: ok at ") || !after.contains(": running (") {
        proc.fail(&format!("after the handoff, status should show a successful last reload:\n{after}"));
    }
}

#[test]
fn status_counts_workers_and_json_carries_them() {
    require!(python: "gunicorn");
    let dir = TempDir::new("status-workers");
    let addr = format!("127.0.0.1:{}", free_port());
    let app = contrib("app").display().to_string();
    let conf = contrib("gunicorn/gunicorn.conf.py").display().to_string();
    let cmd = sockherd_cmd(&[
        "run", "--flavor", "gunicorn", "--listen", &addr, "--chdir", &app, "--", "python3", "-m", "gunicorn", "-c",
        &conf, "app:app",
    ]);
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    wait_http_ok(&mut proc, &addr, Duration::from_secs(30));
    // contrib/gunicorn/gunicorn.conf.py asks for 2 workers.
    let text = wait_status(&proc, "generation 1 serving with 2 workers", Duration::from_secs(20), |rows| {
        rows.len() == 1 && rows[0].workers == "2" && rows[0].state == "serving"
    });
    let rows = generation_rows(&text);
    let release = std::fs::canonicalize(contrib("app")).unwrap().display().to_string();
    if rows[0].release != release {
        proc.fail(&format!("the release column should be {release}:\n{text}"));
    }
    let (code, json, err) = status(proc.pid(), &["--json"]);
    let compact: String = json.split_whitespace().collect();
    if code != Some(0)
        || !compact.starts_with('{')
        || !compact.contains(&format!("\"pid\":{},\"state\":\"serving\"", rows[0].pid))
        || !compact.contains("\"workers\":2")
        || !compact.contains("\"flavor\":\"gunicorn\"")
    {
        proc.fail(&format!(
            "`status --json` should carry the same generation with \"workers\":2: {code:?} {json}{err}"
        ));
    }
    // Its resources, process-group mode: the PSS of master and workers summed (gunicorn with
    // its app loaded takes several MiB), CPU spent booting.
    let parsed = sockherd::status::Json::parse(json.trim()).unwrap();
    let g = &parsed.get("generations").arr()[0];
    let memory = g.get("memory_bytes").num().unwrap_or(0.0);
    if g.get("memory_source").str() != Some("pss") || memory < (4 << 20) as f64 || g.get("cpu_ms").num().is_none() {
        proc.fail(&format!("`status --json` should carry the generation's PSS and CPU: {json}"));
    }
    if !text.contains(" MiB pss  ") {
        proc.fail(&format!("the table should show the same memory: {json}\n{text}"));
    }
    // Outside a delegated cgroup (here, a test process's) generations are process groups, and
    // both forms say so, with why and what is lost.
    let membership = parsed.get("membership");
    if membership.get("mode").str() != Some("process-group")
        || !membership.get("why").str().is_some_and(|w| w.contains("not delegated"))
        || !membership.get("lost").str().is_some_and(|l| l.contains("escapes the drain"))
        || parsed.get("generations").arr()[0].get("cgroup").str().is_some()
    {
        proc.fail(&format!("`status --json` should say generations are process groups, why and what is lost: {json}"));
    }
    if !text.contains("\ngenerations are process groups, not cgroups (") {
        proc.fail(&format!("`status` should say generations are process groups:\n{text}"));
    }
}

#[test]
fn status_of_a_process_that_is_no_supervisor_exits_1_and_says_so() {
    let (code, out, err) = status(std::process::id() as i32, &[]);
    if code != Some(1) || !out.is_empty() || !err.contains("is not a sockherd supervisor") {
        panic!("expected exit 1 naming the missing supervisor, got {code:?}: {out}{err}");
    }
}

#[test]
fn status_without_a_target_says_how_to_name_one() {
    let mut cmd = sockherd_cmd(&["status"]);
    cmd.env_remove("MAINPID");
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.code() != Some(1) || !err.contains("pass a unit (sockherd status app) or --pid PID") {
        panic!("expected exit 1 explaining how to name a supervisor, got {:?}: {err}", out.status);
    }
}

#[test]
fn status_of_a_socket_unit_points_to_its_service() {
    let out = sockherd_cmd(&["status", "app.socket"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.code() != Some(1) || !err.contains("is a socket unit") || !err.contains("app.service") {
        panic!("expected a refusal naming app.service, got {:?}: {err}", out.status);
    }
}

#[test]
fn status_unit_and_pid_conflict() {
    let out = sockherd_cmd(&["status", "app", "--pid", "1"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.code() != Some(2) || !err.contains("cannot be used with") {
        panic!("expected a usage error, got {:?}: {err}", out.status);
    }
}

/// Inside systemd: `sockherd status app` shows systemd's view and the supervisor's table, and
/// exits 0; after `systemctl stop` it exits 3; an unknown unit exits 4; a unit whose main
/// process is not a supervisor shows what systemd knows and says so.
fn status_of_a_unit_inside_systemd(systemd: Systemd) {
    require!("curl");
    let Some(d) = Deployment::install_on("status-unit", Server::Gunicorn, systemd) else { return };
    d.start();
    let main_pid = d.sdbox.property("MainPID");
    // gunicorn is ready once one worker answers; its second worker boots a moment later.
    let mut text = String::new();
    wait_until(Duration::from_secs(20), || {
        text = d.sdbox.ok("sockherd status app; echo \"exit=$?\"");
        generation_rows(&text).first().is_some_and(|r| r.workers == "2")
    });
    eprintln!("sockherd status app:\n{text}");
    let rows = generation_rows(&text);
    if !text.contains(&format!("app.service: active (running), main pid {main_pid}"))
        || !text.contains("  status: serving generation 1")
        || !text.contains(&format!("sockherd supervisor pid {main_pid}: running (flavor gunicorn, readiness booted)"))
        || rows.len() != 1
        || rows[0].state != "serving"
        || rows[0].workers != "2"
        || !rows[0].release.starts_with("/srv/app/releases/r1")
        || !text.contains("http  127.0.0.1:8080")
        || !text.contains("unix  /run/app.sock")
        || !text.ends_with("exit=0\n")
        || !text.contains("\ngenerations are cgroups: gen-N under /sys/fs/cgroup/system.slice/app.service")
    {
        d.sdbox.fail(&format!("unexpected `sockherd status app`:\n{text}"));
    }
    let json = d.sdbox.ok("sockherd status app.service --json");
    if !json.starts_with("{\"unit\":\"app.service\",\"load_state\":\"loaded\",\"active_state\":\"active\"")
        || !json.contains(&format!("\"main_pid\":{main_pid}"))
        || !json.contains(&format!("\"supervisor\":{{\"pid\":{main_pid},"))
        || !json.contains("\"membership\":{\"mode\":\"cgroup\",\"path\":\"/sys/fs/cgroup/system.slice/app.service\"")
        || !json.contains("\"cgroup\":\"/sys/fs/cgroup/system.slice/app.service/gen-1\"")
    {
        d.sdbox.fail(&format!("unexpected `sockherd status app.service --json`:\n{json}"));
    }

    // A main process that is no supervisor (native mode looks like this).
    let native = d.sdbox.ok("printf '[Service]\\nExecStart=/bin/sleep infinity\\n' >/run/systemd/system/plain.service
systemctl daemon-reload && systemctl start plain
sockherd status plain; echo \"exit=$?\"");
    if !native.contains("plain.service: active (running), main pid")
        || !native.contains("is not a sockherd supervisor (native mode?")
        || !native.ends_with("exit=0\n")
    {
        d.sdbox.fail(&format!("unexpected status of a unit without supervisor:\n{native}"));
    }

    let missing = d.sdbox.ok("sockherd status nosuch 2>&1; echo \"exit=$?\"");
    if !missing.contains("unit nosuch.service not found") || !missing.ends_with("exit=4\n") {
        d.sdbox.fail(&format!("unexpected status of a unit that does not exist:\n{missing}"));
    }

    d.sdbox.ok("systemctl stop app");
    let stopped = d.sdbox.ok("sockherd status app; echo \"exit=$?\"");
    if !stopped.starts_with("app.service: inactive (dead)") || !stopped.ends_with("exit=3\n") {
        d.sdbox.fail(&format!("unexpected status of a stopped unit:\n{stopped}"));
    }
}
on_every_systemd!(status_of_a_unit_inside_systemd);
