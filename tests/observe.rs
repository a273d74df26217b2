//! Observing a deploy: the listen queues as the kernel counts them (`sockherd status`), the
//! handoff's queue peak in its `reload_done` event and in `--metrics-file`, and inside a real
//! systemd `sockherd history` of five reloads and a rollback, from the unit's journal.
mod common;

use common::run::status_json;
use common::sdbox::{Deployment, Server, Systemd};
use common::*;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Each socket's (address, queued) in `sockherd status --json`.
fn queued(pid: i32) -> Vec<(String, Option<f64>)> {
    let Some(json) = status_json(pid) else { return Vec::new() };
    json.get("sockets")
        .arr()
        .iter()
        .map(|s| (s.get("address").str().unwrap_or("").to_string(), s.get("queue").get("queued").num()))
        .collect()
}

fn kill(pid: i32, signal: &str) {
    let _ = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
}

/// Curl clients waiting for an answer; killed by pid when dropped.
struct Clients(Vec<Child>);

impl Drop for Clients {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Generation 1 stops accepting (SIGSTOP: its workers are stuck) while generation 2 is still
/// booting: clients pile up in the kernel's accept queues. `status` shows as many queued as
/// there are clients waiting, on each socket; once generation 2 serves they are answered, and
/// the reload's `reload_done` event, the status's last reload and the metrics file carry the peak.
#[test]
fn clients_waiting_during_a_slow_handoff_are_counted_and_their_peak_is_logged() {
    require!("curl");
    let dir = TempDir::new("observe-queue");
    let addr = format!("127.0.0.1:{}", free_port());
    let sock = dir.join("app.sock");
    let metrics = dir.join("metrics.prom");
    let app = contrib("app").display().to_string();
    let hold = dir.join("hold");
    let mut cmd = sockherd_cmd(&[
        "run",
        "--listen",
        &addr,
        "--listen",
        &sock.display().to_string(),
        "--metrics-file",
        &metrics.display().to_string(),
        "--chdir",
        &app,
        "--",
        "python3",
        "serve.py",
    ]);
    // A generation started while the hold file exists stays in its boot (not accepting).
    cmd.env("APP_BOOT_HOLD", &hold);
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    wait_http_ok(&mut proc, &addr, Duration::from_secs(30));
    let gen1 = common::run::wait_generations(&mut proc, "generation 1 serving", Duration::from_secs(10), |g| {
        g.len() == 1 && g[0].state == "serving"
    })[0]
        .pid;
    if queued(proc.pid()) != vec![(addr.clone(), Some(0.0)), (sock.display().to_string(), Some(0.0))] {
        proc.fail(&format!("an idle service should show empty queues: {:?}", queued(proc.pid())));
    }

    std::fs::write(&hold, "").unwrap();
    proc.signal(1); // SIGHUP: a reload
    common::run::wait_generations(&mut proc, "generation 2 starting", Duration::from_secs(20), |g| {
        g.iter().any(|g| g.number == 2 && g.state == "starting")
    });
    kill(gen1, "STOP");
    let (tcp_clients, unix_clients) = (4, 2);
    let mut clients = Clients(Vec::new());
    for i in 0..tcp_clients + unix_clients {
        let mut curl = Command::new("curl");
        curl.args(["-sS", "-m", "60"]);
        if i < tcp_clients {
            curl.arg(format!("http://{addr}/"));
        } else {
            curl.args(["--unix-socket", &sock.display().to_string(), "http://app/"]);
        }
        clients.0.push(curl.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start curl"));
    }
    let expected =
        vec![(addr.clone(), Some(tcp_clients as f64)), (sock.display().to_string(), Some(unix_clients as f64))];
    let mut seen = Vec::new();
    let counted = wait_until(Duration::from_secs(15), || {
        seen = queued(proc.pid());
        seen == expected
    });
    if !counted {
        kill(gen1, "CONT");
        proc.fail(&format!("status never showed the waiting clients {expected:?}; last {seen:?}"));
    }
    let table = sockherd_cmd(&["status", "--pid", &proc.pid().to_string()]).output().unwrap();
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    eprintln!("while clients wait:\n{table}");
    let row = table.lines().find(|l| l.starts_with("3 ") && l.contains(&addr)).unwrap_or("");
    if !table.contains("QUEUED  BACKLOG  ACTIVE") || row.split_whitespace().nth(3) != Some("4") {
        kill(gen1, "CONT");
        proc.fail(&format!("the status table should show 4 queued on {addr}:\n{table}"));
    }

    // Generation 2 boots and answers every waiting client; generation 1 may then drain.
    std::fs::remove_file(&hold).unwrap();
    let mut answers = Vec::new();
    for c in std::mem::take(&mut clients.0) {
        let out = c.wait_with_output().unwrap();
        answers.push(String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr));
    }
    kill(gen1, "CONT");
    if answers.iter().any(|a| !a.contains("pid=")) {
        proc.fail(&format!("every waiting client should be answered by generation 2: {answers:?}"));
    }
    let mut done = String::new();
    wait_until(Duration::from_secs(30), || {
        done = proc.stderr().lines().find(|l| l.contains("reload done:")).unwrap_or("").to_string();
        !done.is_empty()
    });
    let peak = done
        .split("listen queue peak ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse::<i64>().ok())
        .unwrap_or_else(|| proc.fail(&format!("the reload_done event carries no queue peak: {done:?}")));
    let waiting = (tcp_clients + unix_clients) as i64;
    if (peak - waiting).abs() > 1 || done.contains(", 0 ms above zero") {
        proc.fail(&format!("the handoff's peak should be {waiting} (±1), for some time: {done:?}"));
    }
    let after = sockherd_cmd(&["status", "--pid", &proc.pid().to_string()]).output().unwrap();
    let after = String::from_utf8_lossy(&after.stdout).into_owned();
    eprintln!("after the handoff:\n{after}");
    if !after.contains(&format!("listen queue peak {peak} (")) {
        proc.fail(&format!("status's last reload should show the peak {peak}:\n{after}"));
    }
    let text = std::fs::read_to_string(&metrics).unwrap_or_default();
    eprintln!("{}:\n{text}", metrics.display());
    for line in [
        "sockherd_reloads_total{outcome=\"ok\"} 1\n".to_string(),
        format!("sockherd_last_reload_queue_peak {peak}\n"),
        "sockherd_last_reload_success 1\n".to_string(),
    ] {
        if !text.contains(&line) {
            proc.fail(&format!("the metrics file lacks {line:?}:\n{text}"));
        }
    }
    // No temporary file is left beside it (each write renames its own). Looked for once
    // sockherd has exited: while it runs, a write may be between its temporary file and the
    // rename (the draining generation's exit is one), and its last write is the one at exit.
    proc.signal(libc::SIGTERM);
    let status = proc.wait_exit(Duration::from_secs(30));
    if !status.success() {
        proc.fail(&format!("sockherd should exit 0 on SIGTERM, not {status}"));
    }
    let text = std::fs::read_to_string(&metrics).unwrap_or_default();
    if !text.contains("\nsockherd_up 0\n") {
        proc.fail(&format!("the metrics file should say sockherd_up 0 once sockherd exited:\n{text}"));
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("metrics.prom.tmp"))
        .collect();
    if !leftovers.is_empty() {
        proc.fail(&format!("temporary metrics files left: {leftovers:?}"));
    }
}

/// Inside systemd 252 with the shipped units: five reloads and a rollback (a broken release
/// fails its reload; `current` goes back, as the deploy recipe does), then `sockherd history
/// app` lists the six in order, the failure with its reason, and `--json` parses.
#[test]
fn history_lists_five_reloads_and_a_rollback_from_the_journal() {
    let Some(d) = Deployment::install_on("history", Server::Libsystemd, Systemd::V252) else { return };
    d.start();
    // (release, whether the reload succeeds)
    let steps = [("r2", true), ("r2", true), ("r3", false), ("r2", true), ("r1", true), ("r2", true)];
    for (release, ok) in steps {
        d.flip(release);
        let (code, out, _) = d.reload();
        if (code == 0) != ok {
            d.sdbox.fail(&format!("reload onto {release}: exit {code}, expected success {ok}: {out}"));
        }
        if !ok {
            d.flip("r2"); // the rollback: current points at the release that still serves
        }
    }
    let text = d.sdbox.ok("sockherd history app");
    eprintln!("sockherd history app:\n{text}");
    let rows: Vec<&str> = text.lines().skip(1).filter(|l| !l.starts_with("  ")).collect();
    let outcomes: Vec<&str> = rows.iter().map(|r| if r.contains(" FAILED ") { "FAILED" } else { "ok" }).collect();
    if rows.len() != 6 || outcomes != ["ok", "ok", "FAILED", "ok", "ok", "ok"] {
        d.sdbox.fail(&format!("history should list six reloads, the third failed:\n{text}"));
    }
    let releases: Vec<&str> = rows.iter().map(|r| r.split_whitespace().nth(4).unwrap_or("")).collect();
    let expected = ["/srv/app/releases/r2", "/srv/app/releases/r2", "/srv/app/releases/r3", "/srv/app/releases/r2"];
    if releases[..4] != expected || releases[4] != "/srv/app/releases/r1" {
        d.sdbox.fail(&format!("history's releases are {releases:?}:\n{text}"));
    }
    let reason = text.lines().find(|l| l.starts_with("  reason: ")).unwrap_or("");
    if !reason.contains("generation 4") || !reason.contains("still serving") {
        d.sdbox.fail(&format!("the rollback's reason should name the failed generation and who still serves:\n{text}"));
    }
    let json = d.sdbox.ok("sockherd history app --json");
    let parsed: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| d.sdbox.fail(&format!("--json is not JSON ({e}): {json}")));
    let items = parsed.as_array().cloned().unwrap_or_default();
    let generations: Vec<u64> = items.iter().filter_map(|i| i["generation"].as_u64()).collect();
    if generations != [2, 3, 4, 5, 6, 7] || items[2]["outcome"] != "failed" || !items[2]["reason"].is_string() {
        d.sdbox.fail(&format!("history --json: {json}"));
    }
    if items.iter().any(|i| !i["handoff_ms"].is_u64() || !i["queue_peak"].is_u64()) {
        d.sdbox.fail(&format!("every reload should carry its handoff time and queue peak: {json}"));
    }
    // The fields behind it, as journalctl shows them.
    let fields = d
        .sdbox
        .ok("journalctl -u app SOCKHERD_EVENT=reload_failed -o verbose --no-pager | grep -E '^ *(MESSAGE|SOCKHERD_)'");
    eprintln!("journalctl -u app SOCKHERD_EVENT=reload_failed -o verbose:\n{fields}");
    if !fields.contains("SOCKHERD_QUEUE_PEAK=") || !fields.contains("SOCKHERD_QUEUE_MS=") {
        d.sdbox.fail(&format!("the reload's journal entry lacks its queue peak:\n{fields}"));
    }
    let since = d.sdbox.ok("sockherd history app --since '-1h' --json");
    if serde_json::from_str::<serde_json::Value>(&since).ok().and_then(|v| v.as_array().map(Vec::len)) != Some(6) {
        d.sdbox.fail(&format!("--since -1h should keep all six: {since}"));
    }
}

/// A metrics file that can never be written is refused before anything starts; a bad unit name
/// for `history` is refused with the reason.
#[test]
fn bad_metrics_file_and_unit_names_are_refused() {
    let dir = TempDir::new("observe-bad");
    let missing = dir.join("no/such/dir/metrics.prom");
    let (status, _, stderr) = run_sockherd(
        &["run", "--listen", "127.0.0.1:0", "--metrics-file", &missing.display().to_string(), "--", "true"],
        dir.path(),
        Duration::from_secs(20),
    );
    let expected =
        format!("invalid --metrics-file {}: no directory {}", missing.display(), dir.join("no/such/dir").display());
    if status.code() != Some(1) || !stderr.contains(&expected) || stderr.contains("panicked") {
        panic!("run with --metrics-file in a missing directory: {status:?}\n{stderr}\nexpected {expected:?}");
    }
    let (status, _, stderr) = run_sockherd(&["history", "app/x"], dir.path(), Duration::from_secs(20));
    if status.code() != Some(1) || !stderr.contains("invalid unit 'app/x'") {
        panic!("history of a bad unit name: {status:?}\n{stderr}");
    }
}

/// The metrics file's generation gauges for `state`, or None while the file is missing.
fn generations_in(metrics: &std::path::Path, state: &str) -> Option<u64> {
    let text = std::fs::read_to_string(metrics).ok()?;
    let prefix = format!("sockherd_generations{{state=\"{state}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
}

/// Generation 1 boots (held by its hold file), reports ready, settles 3 s and serves: the
/// metrics file tells each state while the generation is in it, from the spawn on (a scraper
/// sees a boot that hangs as `starting`, not as an absent file).
#[test]
fn the_metrics_file_shows_a_generation_starting_settling_and_serving() {
    let dir = TempDir::new("observe-states");
    let addr = format!("127.0.0.1:{}", free_port());
    let metrics = dir.join("metrics.prom");
    let hold = dir.join("hold");
    std::fs::write(&hold, "").unwrap();
    let app = contrib("app").display().to_string();
    let metrics_arg = metrics.display().to_string();
    let args = ["run", "--listen", &addr, "--metrics-file", &metrics_arg, "--ready-settle", "3s"];
    let mut cmd = sockherd_cmd(&[&args[..], &["--chdir", &app, "--", "python3", "serve.py"]].concat());
    cmd.env("APP_BOOT_HOLD", &hold);
    let proc = Proc::spawn(cmd, dir.path(), "sockherd");
    let shows = |state: &str| {
        let mut last = None;
        let seen = wait_until(Duration::from_secs(20), || {
            last = std::fs::read_to_string(&metrics).ok();
            generations_in(&metrics, state) == Some(1)
        });
        if !seen {
            proc.fail(&format!("the metrics file never showed one generation {state}; last:\n{last:?}"));
        }
    };
    shows("starting");
    std::fs::remove_file(&hold).unwrap();
    shows("settling");
    if generations_in(&metrics, "starting") != Some(0) {
        proc.fail("a settling generation is counted as starting too");
    }
    shows("serving");
}

/// `cmd` run by `sh` under `umask 077`, environment and all.
fn under_umask_077(cmd: Command) -> Command {
    let mut sh = Command::new("sh");
    sh.args(["-c", "umask 077 && exec \"$@\"", "sh"]).arg(cmd.get_program()).args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => sh.env(key, value),
            None => sh.env_remove(key),
        };
    }
    sh
}

/// Once sockherd exited, its metrics file says so (`sockherd_up 0`, no generation in any
/// state, no processes) instead of keeping the last gauges, which a scraper would read as a
/// service still serving; the counters stay. The file is readable by a scraper of another
/// user (0644) even under a umask of 077.
#[test]
fn the_metrics_file_says_sockherd_is_down_once_it_exited() {
    let dir = TempDir::new("observe-exit");
    let addr = format!("127.0.0.1:{}", free_port());
    let metrics = dir.join("metrics.prom");
    let app = contrib("app").display().to_string();
    let metrics_arg = metrics.display().to_string();
    let cmd = sockherd_cmd(&[
        "run",
        "--listen",
        &addr,
        "--metrics-file",
        &metrics_arg,
        "--ready-settle",
        "0",
        "--chdir",
        &app,
        "--",
        "python3",
        "serve.py",
    ]);
    let mut proc = Proc::spawn(under_umask_077(cmd), dir.path(), "sockherd");
    wait_http_ok(&mut proc, &addr, Duration::from_secs(30));
    if !wait_until(Duration::from_secs(10), || generations_in(&metrics, "serving") == Some(1)) {
        proc.fail("the metrics file never showed generation 1 serving");
    }
    let running = std::fs::read_to_string(&metrics).unwrap();
    if !running.contains("\nsockherd_up 1\n") {
        proc.fail(&format!("a running sockherd's metrics should say sockherd_up 1:\n{running}"));
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&metrics).unwrap().permissions());
    if mode & 0o777 != 0o644 {
        proc.fail(&format!("the metrics file's mode is {:o}, not 644 (umask 077)", mode & 0o777));
    }
    proc.signal(15);
    let status = proc.wait_exit(Duration::from_secs(30));
    let text = std::fs::read_to_string(&metrics).unwrap_or_default();
    eprintln!("{} after exit ({status:?}):\n{text}", metrics.display());
    for line in [
        "\nsockherd_up 0\n",
        "sockherd_generations{state=\"serving\"} 0\n",
        "sockherd_generations{state=\"starting\"} 0\n",
        "sockherd_reloads_total{outcome=\"ok\"} 0\n",
    ] {
        if !text.contains(line) {
            proc.fail(&format!("after exit the metrics file lacks {line:?}:\n{text}"));
        }
    }
    if text.contains("sockherd_generation_processes{") {
        proc.fail(&format!("after exit the metrics file still counts processes:\n{text}"));
    }
}

/// `sockherd history` against a stand-in `journalctl` that prints what the real one does: a
/// field of 4096 bytes or more is `null` unless `--all` was given, and a value that is not
/// printable UTF-8 is an array of its bytes. A failed reload whose reason is long (a server's
/// whole error, say) keeps its reason, and one whose reason has a stray byte keeps the rest.
#[test]
fn history_keeps_long_and_binary_journal_fields() {
    require!("sh");
    let dir = TempDir::new("observe-journal");
    let long = format!("generation 2 (pid 9) exited with exit status 1 before it was ready: {}", "x".repeat(5000));
    let long_message = format!("\"reload failed: {long}\"");
    // "reload failed: generation 3 \xff\n" as bytes, as journalctl prints a non-UTF-8 value.
    let binary: Vec<String> = b"reload failed: generation 3 \xff exited\n".iter().map(|b| b.to_string()).collect();
    let entry = |at: u64, generation: u64, message: &str| {
        format!(
            "{{\"__REALTIME_TIMESTAMP\":\"{at}\",\"_SYSTEMD_INVOCATION_ID\":\"i\",\"SOCKHERD_EVENT\":\"reload_failed\",\"SOCKHERD_GENERATION\":\"{generation}\",\"MESSAGE\":{message}}}"
        )
    };
    std::fs::write(dir.join("long.json"), entry(1_800_000_000_000_000, 2, &long_message) + "\n").unwrap();
    std::fs::write(dir.join("null.json"), entry(1_800_000_000_000_000, 2, "null") + "\n").unwrap();
    std::fs::write(dir.join("binary.json"), entry(1_800_000_001_000_000, 3, &format!("[{}]", binary.join(","))) + "\n")
        .unwrap();
    let bin = dir.join("bin");
    std::fs::create_dir(&bin).unwrap();
    let fake = bin.join("journalctl");
    let script = format!(
        "#!/bin/sh\necho \"$*\" > '{args}'\ncase \" $* \" in *' --all '*) cat '{long}';; *) cat '{null}';; esac\ncat '{binary}'\n",
        args = dir.join("args").display(),
        long = dir.join("long.json").display(),
        null = dir.join("null.json").display(),
        binary = dir.join("binary.json").display(),
    );
    std::fs::write(&fake, script).unwrap();
    std::process::Command::new("chmod").arg("+x").arg(&fake).status().unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = sockherd_cmd(&["history", "app", "--json"]);
    cmd.env("PATH", &path);
    let mut proc = Proc::spawn(cmd, dir.path(), "history");
    let status = proc.wait_exit(Duration::from_secs(20));
    let args = std::fs::read_to_string(dir.join("args")).unwrap_or_default();
    let out = proc.stdout();
    eprintln!("journalctl {args}\nsockherd history app --json: {status:?}\n{out}");
    let parsed: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| proc.fail(&format!("--json is not JSON ({e})")));
    let reasons: Vec<&str> =
        parsed.as_array().into_iter().flatten().map(|r| r["reason"].as_str().unwrap_or("")).collect();
    if !status.success() || reasons.len() != 2 {
        proc.fail(&format!("history should list two failed reloads: {reasons:?}"));
    }
    if reasons[0] != long {
        proc.fail(&format!(
            "the long reason was lost (journalctl {args}): {:?}",
            &reasons[0][..reasons[0].len().min(80)]
        ));
    }
    if reasons[1] != "generation 3 \u{fffd} exited\n" {
        proc.fail(&format!("the reason with a stray byte: {:?}", reasons[1]));
    }
}
