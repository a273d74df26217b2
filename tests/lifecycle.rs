//! `sockherd run`'s life as the README promises it, against the real binary: which signal a
//! stopping or draining generation gets (per flavor, `--stop-signal`, SIGINT), `--drain-timeout`,
//! a serving generation that exits 0 by itself, `reload --timeout` and `--join`, `status` of a
//! draining generation and for another user, the runtime directory and `PWD`.
//!
//! Generations are held starting by a gate file (`--ready cmd:test -e GATE`), so every check is
//! an ordering, never a race with the machine's speed.
mod common;

use common::run::{generations, line_with, lines, support, wait_file, wait_generations};
use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const PATIENCE: Duration = Duration::from_secs(60);

fn run_cmd(extra: &[&str], server: &[&str]) -> std::process::Command {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut args = vec!["run", "--listen", &addr];
    args.extend_from_slice(extra);
    args.push("--");
    args.extend_from_slice(server);
    sockherd_cmd(&args)
}

/// `--ready` that holds every generation after the first until `gate` exists.
fn gated_after_first(gate: &Path) -> String {
    format!("cmd:test \"$SOCKHERD_GENERATION\" = 1 || test -e '{}'", gate.display())
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// signal_logger.py under `sockherd run --ready exec --flavor F`, then `signal` to sockherd:
/// returns the signal the server got (by name, "" for none) and sockherd's exit status.
fn stop_with(flavor: &str, signal: i32) -> (String, std::process::ExitStatus, Proc, TempDir) {
    let dir = TempDir::new(&format!("stop-{flavor}-{signal}"));
    let report = dir.join("report");
    let logger = path_str(&support("signal_logger.py"));
    let report_arg = path_str(&report);
    let cmd = run_cmd(&["--ready", "exec", "--flavor", flavor], &["python3", &logger, &report_arg]);
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    let server: i32 = wait_file(&mut proc, &report, PATIENCE).trim().parse().unwrap_or(0);
    if ppid(server) != Some(proc.pid()) {
        proc.fail(&format!("the server {server} is not sockherd's child"));
    }
    proc.signal(signal);
    let status = proc.wait_exit(PATIENCE);
    let got = std::fs::read_to_string(dir.join("report.signals")).unwrap_or_default().trim().to_string();
    (got, status, proc, dir)
}

/// TERM to sockherd reaches the server as its flavor's graceful signal, QUIT as its fast one;
/// sockherd exits 0 when the server obeyed.
fn flavor_signals(flavor: &str, graceful: &str, fast: &str) {
    require!("python3");
    for (asked, want) in [(15, graceful), (3, fast)] {
        let (got, status, proc, _dir) = stop_with(flavor, asked);
        if got != want || status.code() != Some(0) {
            proc.fail(&format!(
                "signal {asked} to sockherd --flavor {flavor}: the server should get SIG{want} and sockherd exit 0; \
                 it got {got:?}, sockherd {status:?}"
            ));
        }
    }
}

#[test]
fn systemd_flavor_stops_with_term_and_fast_with_int() {
    flavor_signals("systemd", "TERM", "INT");
}

#[test]
fn gunicorn_flavor_stops_with_term_and_fast_with_int() {
    flavor_signals("gunicorn", "TERM", "INT");
}

#[test]
fn unicorn_flavor_stops_with_quit_and_fast_with_term() {
    flavor_signals("unicorn", "QUIT", "TERM");
}

#[test]
fn puma_flavor_stops_with_term_and_fast_with_int() {
    flavor_signals("puma", "TERM", "INT");
}

#[test]
fn einhorn_flavor_stops_with_usr2_and_fast_with_term() {
    flavor_signals("einhorn", "USR2", "TERM");
}

#[test]
fn nginx_flavor_stops_with_quit_and_fast_with_term() {
    flavor_signals("nginx", "QUIT", "TERM");
}

/// server-starter: TERM graceful; the fast stop is SIGKILL, which no server can log: sockherd
/// exits 137 (128 + SIGKILL) and the server logged nothing.
#[test]
fn server_starter_flavor_stops_with_term_and_fast_with_kill() {
    require!("python3");
    let (got, status, proc, _dir) = stop_with("server-starter", 15);
    if got != "TERM" || status.code() != Some(0) {
        proc.fail(&format!("TERM: the server should get SIGTERM and sockherd exit 0: got {got:?}, {status:?}"));
    }
    let (got, status, proc, _dir) = stop_with("server-starter", 3);
    if !got.is_empty() || status.code() != Some(137) {
        proc.fail(&format!(
            "QUIT: the server should be killed (SIGKILL) and sockherd exit 137: got {got:?}, {status:?}"
        ));
    }
}

/// SIGINT to `run` is a graceful stop, like TERM: a unicorn-flavored server gets QUIT.
#[test]
fn sigint_stops_gracefully() {
    require!("python3");
    let (got, status, proc, _dir) = stop_with("unicorn", 2);
    if got != "QUIT" || status.code() != Some(0) {
        proc.fail(&format!(
            "SIGINT: the server should get SIGQUIT (unicorn's graceful) and sockherd exit 0: {got:?} {status:?}"
        ));
    }
}

/// `--stop-signal` replaces the flavor's graceful signal when the service stops.
#[test]
fn stop_signal_is_what_a_stopping_generation_gets() {
    require!("python3");
    let dir = TempDir::new("stop-signal");
    let report = dir.join("report");
    let (logger, report_arg) = (path_str(&support("signal_logger.py")), path_str(&report));
    let cmd = run_cmd(&["--ready", "exec", "--stop-signal", "USR1"], &["python3", &logger, &report_arg]);
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    wait_file(&mut proc, &report, PATIENCE);
    proc.signal(15);
    let status = proc.wait_exit(PATIENCE);
    let got = lines(&dir.join("report.signals"));
    if got != ["USR1"] || status.code() != Some(0) {
        proc.fail(&format!(
            "with --stop-signal USR1, TERM to sockherd should reach the server as USR1: {got:?} {status:?}"
        ));
    }
}

/// `--stop-signal` is also what the old generation gets when a reload drains it.
#[test]
fn stop_signal_is_what_a_draining_generation_gets() {
    require!("python3");
    let dir = TempDir::new("stop-signal-drain");
    let report = dir.join("report");
    let (logger, report_arg) = (path_str(&support("signal_logger.py")), path_str(&report));
    let cmd = run_cmd(&["--ready", "exec", "--stop-signal", "USR1"], &["python3", &logger, &report_arg]);
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    let first: i32 = wait_file(&mut proc, &report, PATIENCE).trim().parse().unwrap_or(0);
    let out = sockherd_cmd(&["reload", "--pid", &proc.pid().to_string(), "--timeout", "60s"]).output().unwrap();
    if !out.status.success() {
        proc.fail(&format!("reload failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    if !wait_until(PATIENCE, || !pid_alive(first)) {
        proc.fail(&format!("generation 1 ({first}) did not stop after the reload"));
    }
    let got = lines(&dir.join("report.signals"));
    if got != ["USR1"] {
        proc.fail(&format!("the drained generation should have got SIGUSR1 (--stop-signal), it logged {got:?}"));
    }
}

/// `--drain-timeout`: an old generation that ignores its graceful signal is SIGKILLed, its whole
/// process group (master and a child that ignores TERM too), after the drain timeout and not
/// before; the reload then completes.
#[test]
fn drain_timeout_kills_the_old_generation_group_wide() {
    require!("python3");
    let dir = TempDir::new("drain-timeout");
    let report = dir.join("report.json");
    let (server, report_arg) = (path_str(&support("stubborn_server.py")), path_str(&report));
    let cmd = run_cmd(
        &["--ready", "exec", "--drain-timeout", "2s", "--stop-timeout", "1s"],
        &["python3", &server, &report_arg],
    );
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    let json = wait_file(&mut proc, &report, PATIENCE);
    let number = |key: &str| -> i32 {
        let rest = &json[json.find(&format!("\"{key}\":")).expect("key") + key.len() + 3..];
        rest.trim_start().split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
    };
    let (master, child) = (number("pid"), number("child"));
    std::fs::remove_file(&report).unwrap();
    let asked = Instant::now();
    let out = sockherd_cmd(&["reload", "--pid", &proc.pid().to_string(), "--timeout", "60s"]).output().unwrap();
    let took = asked.elapsed();
    if !out.status.success() {
        proc.fail(&format!(
            "the reload should succeed once the old generation is killed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    if pid_alive(master) || pid_alive(child) {
        proc.fail(&format!("generation 1's master {master} or its child {child} survived the drain timeout"));
    }
    if took < Duration::from_secs(2) {
        proc.fail(&format!("the old generation was gone after {took:?}, before the 2 s drain timeout"));
    }
    let log = proc.stderr();
    let drain = line_with(&log, &["draining generation 1 "]);
    let kill = line_with(&log, &["generation 1 ", "sending SIGKILL to its process group"]);
    if !matches!((drain, kill), (Some(d), Some(k)) if d < k) {
        proc.fail("sockherd should say it drains generation 1, then that it sends SIGKILL to its process group");
    }
    if lines(&report.with_extension("json.signals")) != ["TERM"] {
        proc.fail(&format!(
            "the old master should have got one SIGTERM first: {:?}",
            lines(&report.with_extension("json.signals"))
        ));
    }
}

/// A serving generation that exits 0 by itself takes the service down: `run` exits non-zero.
#[test]
fn serving_generation_exiting_0_by_itself_makes_run_fail() {
    let dir = TempDir::new("exit-0");
    let quit = dir.join("quit");
    let script = format!("while [ ! -e '{}' ]; do sleep 0.05; done; exit 0", quit.display());
    let cmd = run_cmd(&["--ready", "exec"], &["sh", "-c", &script]);
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    proc.wait_for_stderr(" is ready after ", PATIENCE);
    std::fs::write(&quit, "").unwrap();
    let status = proc.wait_exit(PATIENCE);
    if status.success() || status.code() != Some(1) || !proc.stderr().contains("exited on its own") {
        proc.fail("a serving generation exiting 0 by itself should make sockherd exit 1, saying it exited on its own");
    }
}

/// `sockherd reload --timeout`: the client gives up (exit 1, saying so) while the handoff goes
/// on; the old generation serves meanwhile, the new one still comes.
#[test]
fn reload_timeout_expires_while_the_handoff_goes_on() {
    require!("python3");
    let dir = TempDir::new("reload-timeout");
    let gate = dir.join("gate");
    let report = dir.join("report");
    let (server, report_arg) = (path_str(&support("gated_http.py")), path_str(&report));
    let cmd = run_cmd(&["--ready", &gated_after_first(&gate)], &["python3", &server, &report_arg]);
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    wait_generations(&mut proc, "generation 1 serving", PATIENCE, |g| g.len() == 1 && g[0].state == "serving");
    let out = sockherd_cmd(&["reload", "--pid", &proc.pid().to_string(), "--timeout", "2s"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() != Some(1) || !stderr.contains("did not answer within 2s") {
        proc.fail(&format!("reload --timeout 2s should give up with exit 1: {:?} {stderr}", out.status));
    }
    let gens = generations(proc.pid());
    if !gens.iter().any(|g| g.number == 1 && g.state == "serving")
        || !gens.iter().any(|g| g.number == 2 && g.state == "starting")
    {
        proc.fail(&format!("generation 1 should serve while generation 2 still starts: {gens:?}"));
    }
    std::fs::write(&gate, "").unwrap();
    wait_generations(&mut proc, "generation 2 serving alone", PATIENCE, |g| g.len() == 1 && g[0].number == 2);
}

/// `sockherd reload --join` with no SIGHUP-started handoff: it starts a reload of its own and
/// reports it.
#[test]
fn join_alone_starts_a_reload() {
    require!("python3");
    let dir = TempDir::new("join-alone");
    let report = dir.join("report");
    let (server, report_arg) = (path_str(&support("gated_http.py")), path_str(&report));
    let cmd = run_cmd(&["--ready", "exec"], &["python3", &server, &report_arg]);
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    wait_generations(&mut proc, "generation 1 serving", PATIENCE, |g| g.len() == 1 && g[0].state == "serving");
    let out =
        sockherd_cmd(&["reload", "--join", "--pid", &proc.pid().to_string(), "--timeout", "60s"]).output().unwrap();
    if !out.status.success() || !String::from_utf8_lossy(&out.stderr).contains("reload succeeded: generation 2 ") {
        proc.fail(&format!("reload --join alone: {:?} {}", out.status, String::from_utf8_lossy(&out.stderr)));
    }
}

/// `sockherd reload --join` after a SIGHUP (systemd's notify-reload): it reports the outcome of
/// the handoff the SIGHUP started, and starts none of its own.
#[test]
fn join_reports_the_handoff_a_sighup_started() {
    require!("python3");
    let dir = TempDir::new("join-hup");
    let gate = dir.join("gate");
    let report = dir.join("report");
    let (server, report_arg) = (path_str(&support("gated_http.py")), path_str(&report));
    let cmd = run_cmd(&["--ready", &gated_after_first(&gate)], &["python3", &server, &report_arg]);
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    wait_generations(&mut proc, "generation 1 serving", PATIENCE, |g| g.len() == 1 && g[0].state == "serving");
    proc.signal(1);
    wait_generations(&mut proc, "generation 2 starting", PATIENCE, |g| g.iter().any(|g| g.number == 2));
    let mut join = Proc::spawn(
        sockherd_cmd(&["reload", "--join", "--pid", &proc.pid().to_string(), "--timeout", "60s"]),
        dir.path(),
        "join",
    );
    // The join waits for the held handoff (and so has not exited) until the gate opens.
    if join.wait_timeout(Duration::from_millis(500)).is_some() {
        join.fail("reload --join returned while the SIGHUP's handoff was still in flight");
    }
    std::fs::write(&gate, "").unwrap();
    let status = join.wait_exit(PATIENCE);
    if !status.success() || !join.stderr().contains("reload succeeded: generation 2 ") {
        join.fail("reload --join should report the SIGHUP's handoff to generation 2");
    }
    wait_generations(&mut proc, "generation 2 serving alone", PATIENCE, |g| g.len() == 1 && g[0].number == 2);
    if proc.stderr().contains("started generation 3") {
        proc.fail("reload --join started a reload of its own");
    }
}

/// `sockherd status` shows an old generation that still runs after its graceful signal as
/// `draining` beside the serving one.
#[test]
fn status_shows_a_draining_generation() {
    require!("python3");
    let dir = TempDir::new("status-draining");
    let report = dir.join("report.json");
    let (server, report_arg) = (path_str(&support("stubborn_server.py")), path_str(&report));
    let cmd = run_cmd(
        &["--ready", "exec", "--drain-timeout", "5m", "--stop-timeout", "1s"],
        &["python3", &server, &report_arg],
    );
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    wait_file(&mut proc, &report, PATIENCE);
    let reload = Proc::spawn(sockherd_cmd(&["reload", "--pid", &proc.pid().to_string()]), dir.path(), "reload");
    wait_generations(&mut proc, "generation 1 draining beside generation 2 serving", PATIENCE, |g| {
        g.len() == 2
            && g.iter().any(|g| g.number == 1 && g.state == "draining")
            && g.iter().any(|g| g.number == 2 && g.state == "serving")
    });
    let (code, text) = {
        let out = sockherd_cmd(&["status", "--pid", &proc.pid().to_string()]).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let row = text.lines().find(|l| l.starts_with("1 "));
    if code != Some(0) || row.is_none_or(|r| r.split_whitespace().nth(2) != Some("draining")) {
        proc.fail(&format!("the status table should show generation 1 draining:\n{text}"));
    }
    drop(reload);
}

/// `sockherd status` from another user is refused with the fix (root or the service's user).
#[test]
fn status_from_another_user_is_refused() {
    require!("python3", "setpriv");
    if !prerequisite(is_root(), "root (to run the client as another user)") {
        return;
    }
    let dir = TempDir::new("status-peer");
    let report = dir.join("report");
    let (server, report_arg) = (path_str(&support("gated_http.py")), path_str(&report));
    let cmd = run_cmd(&["--ready", "exec"], &["python3", &server, &report_arg]);
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    wait_generations(&mut proc, "generation 1 serving", PATIENCE, |g| g.len() == 1);
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(sockherd())
        .args(["status", "--pid", &proc.pid().to_string()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() != Some(1)
        || !out.stdout.is_empty()
        || !stderr.contains("permission denied")
        || !stderr.contains("as root")
    {
        proc.fail(&format!("status as uid 65534: {:?} {stderr}", out.status));
    }
}

/// The runtime directory: the generations' notify sockets live in
/// `$RUNTIME_DIRECTORY/sockherd-<pid>/`; a generation's socket goes with it, the directory with
/// sockherd.
#[test]
fn runtime_directory_is_cleaned_up() {
    require!("python3");
    let dir = TempDir::new("runtime-dir");
    let runtime = dir.join("runtime");
    std::fs::create_dir(&runtime).unwrap();
    let report = dir.join("report");
    std::fs::write(report.with_extension("notify"), "").unwrap(); // every generation notifies at once
    let (server, report_arg) = (path_str(&support("gated_http.py")), path_str(&report));
    let mut cmd = run_cmd(&["--ready", "notify"], &["python3", &server, &report_arg]);
    cmd.env("RUNTIME_DIRECTORY", &runtime);
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    let ours: PathBuf = runtime.join(format!("sockherd-{}", proc.pid()));
    wait_generations(&mut proc, "generation 1 serving", PATIENCE, |g| g.len() == 1 && g[0].state == "serving");
    if !ours.join("notify.1").exists() {
        proc.fail(&format!("{} should hold generation 1's notify socket", ours.display()));
    }
    let out = sockherd_cmd(&["reload", "--pid", &proc.pid().to_string(), "--timeout", "60s"]).output().unwrap();
    if !out.status.success() {
        proc.fail(&format!("reload failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    wait_generations(&mut proc, "generation 2 alone", PATIENCE, |g| g.len() == 1 && g[0].number == 2);
    if !wait_until(PATIENCE, || !ours.join("notify.1").exists()) || !ours.join("notify.2").exists() {
        proc.fail("generation 1's notify socket should go with it, generation 2's stay");
    }
    proc.signal(15);
    proc.wait_exit(PATIENCE);
    if ours.exists() {
        proc.fail(&format!("{} was left after sockherd exited", ours.display()));
    }
}

/// `--chdir` through a symlink: the server runs in the resolved release, with `PWD` set to it.
#[test]
fn chdir_sets_pwd_to_the_resolved_release() {
    require!("python3");
    let dir = TempDir::new("pwd");
    let release = dir.join("releases/r1");
    std::fs::create_dir_all(&release).unwrap();
    std::os::unix::fs::symlink("releases/r1", dir.join("current")).unwrap();
    let report = dir.join("report.json");
    let (probe_py, report_arg, current) = (path_str(&probe()), path_str(&report), path_str(&dir.join("current")));
    let cmd = run_cmd(&["--ready", "exec", "--chdir", &current], &["python3", &probe_py, &report_arg]);
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    let json = wait_file(&mut proc, &report, PATIENCE);
    let resolved = std::fs::canonicalize(&release).unwrap().display().to_string();
    let compact: String = json.split_whitespace().collect();
    if !compact.contains(&format!("\"cwd\":\"{resolved}\"")) || !compact.contains(&format!("\"PWD\":\"{resolved}\"")) {
        proc.fail(&format!("the server should run in {resolved} with PWD={resolved}: {json}"));
    }
}
