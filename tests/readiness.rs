//! Readiness as the README promises it, against the real binary: each strategy makes a generation
//! ready for its own reason and for no other. The servers (tests/support/gated_http.py) hold back
//! the answer a strategy waits for until the test releases it, so every check is an ordering:
//! not ready while the cause is missing (after the public sockets answered), ready once it came.
mod common;

use common::run::{Gen, generations, line_with, lines, support, wait_file, wait_generations};
use common::*;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

const PATIENCE: Duration = Duration::from_secs(60);

fn starting(gens: &[Gen]) -> bool {
    gens.len() == 1 && gens[0].number == 1 && gens[0].state == "starting"
}

fn serving(gens: &[Gen]) -> bool {
    gens.len() == 1 && gens[0].number == 1 && gens[0].state == "serving"
}

/// `sockherd run --listen 127.0.0.1:<free> <extra> -- gated_http.py DIR/report`; waits for the
/// server's report. Returns the process, its public address and the report path.
fn start_gated(dir: &TempDir, extra: &[&str]) -> (Proc, String, std::path::PathBuf) {
    let addr = format!("127.0.0.1:{}", free_port());
    let report = dir.join("report");
    let mut args = vec!["run", "--listen", &addr];
    args.extend_from_slice(extra);
    args.push("--");
    let mut cmd = sockherd_cmd(&args);
    cmd.arg("python3").arg(support("gated_http.py")).arg(&report);
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    wait_file(&mut proc, &report, PATIENCE);
    (proc, addr, report)
}

/// The public socket answers `count` times (so the server runs and serves), and the
/// generation is still starting afterwards.
fn public_answers_but_still_starting(proc: &mut Proc, addr: &str, count: usize) {
    for _ in 0..count {
        match http_get(addr, "/") {
            Ok(r) if r.status == 200 && r.body.starts_with("gated ") => {}
            other => proc.fail(&format!("the public socket should answer 200: {other:?}")),
        }
    }
    let gens = generations(proc.pid());
    if !starting(&gens) {
        proc.fail(&format!("generation 1 should still be starting, its readiness cause is held back: {gens:?}"));
    }
}

fn probe_requests(report: &Path) -> Vec<String> {
    lines(&report.with_extension("requests")).into_iter().filter(|l| l.starts_with("sockherd-probe ")).collect()
}

/// `--ready probe`: ready because its private probe socket answered, not because the public one
/// did: public answers leave it starting; the first answer on the probe socket makes it ready,
/// and that answer was to sockherd's own request.
#[test]
fn probe_is_ready_only_once_the_private_socket_answers() {
    require!("python3");
    let dir = TempDir::new("ready-probe");
    let (mut proc, addr, report) = start_gated(&dir, &["--ready", "probe"]);
    public_answers_but_still_starting(&mut proc, &addr, 5);
    if !probe_requests(&report).is_empty() {
        proc.fail("the probe socket answered although it was held back");
    }
    std::fs::write(report.with_extension("probe"), "").unwrap();
    wait_generations(&mut proc, "generation 1 serving", PATIENCE, serving);
    let requests = probe_requests(&report);
    if requests.first().map(String::as_str) != Some("sockherd-probe GET / sockherd-probe") {
        proc.fail(&format!("the answered probe request should be sockherd's GET /: {requests:?}"));
    }
}

/// `--ready probe:/PATH`: an answer outside 2xx/3xx does not make it ready (several 503s were
/// answered and it still starts); a 3xx does.
#[test]
fn probe_path_needs_a_2xx_or_3xx_answer() {
    require!("python3");
    let dir = TempDir::new("ready-probe-path");
    let report = dir.join("report");
    std::fs::write(report.with_extension("probe"), "503").unwrap();
    let (mut proc, addr, report) = start_gated(&dir, &["--ready", "probe:/health"]);
    if !wait_until(PATIENCE, || probe_requests(&report).len() >= 2) {
        proc.fail(&format!("sockherd should keep probing after a 503: {:?}", probe_requests(&report)));
    }
    public_answers_but_still_starting(&mut proc, &addr, 1);
    std::fs::write(report.with_extension("probe"), "302").unwrap();
    wait_generations(&mut proc, "generation 1 serving", PATIENCE, serving);
    let requests = probe_requests(&report);
    if requests.iter().any(|r| r != "sockherd-probe GET /health sockherd-probe") {
        proc.fail(&format!("every probe request should be GET /health: {requests:?}"));
    }
}

/// A bare `--ready probe` takes any HTTP answer, even a 503.
#[test]
fn bare_probe_takes_any_answer() {
    require!("python3");
    let dir = TempDir::new("ready-probe-any");
    let report = dir.join("report");
    std::fs::write(report.with_extension("probe"), "503").unwrap();
    let (mut proc, _addr, report) = start_gated(&dir, &["--ready", "probe"]);
    wait_generations(&mut proc, "generation 1 serving", PATIENCE, serving);
    if probe_requests(&report).is_empty() {
        proc.fail("ready without a probe request");
    }
}

/// `--ready cmd:COMMAND`: retried while it fails, with SOCKHERD_GENERATION and SOCKHERD_PID
/// (the generation's master) set; ready at the first success.
#[test]
fn cmd_is_retried_with_generation_and_pid_until_it_succeeds() {
    require!("python3");
    let dir = TempDir::new("ready-cmd");
    let calls = dir.join("calls");
    let gate = dir.join("gate");
    let ready = format!(
        "cmd:echo \"$SOCKHERD_GENERATION $SOCKHERD_PID\" >>'{}'; test -e '{}'",
        calls.display(),
        gate.display()
    );
    let (mut proc, addr, report) = start_gated(&dir, &["--ready", &ready]);
    if !wait_until(PATIENCE, || lines(&calls).len() >= 3) {
        proc.fail(&format!("the readiness command should be retried while it fails: {:?}", lines(&calls)));
    }
    public_answers_but_still_starting(&mut proc, &addr, 1);
    std::fs::write(&gate, "").unwrap();
    let gens = wait_generations(&mut proc, "generation 1 serving", PATIENCE, serving);
    let master: i32 = std::fs::read_to_string(&report).unwrap().lines().next().unwrap().parse().unwrap();
    let want = format!("1 {master}");
    let calls = lines(&calls);
    if master != gens[0].pid || calls.iter().any(|c| *c != want) {
        proc.fail(&format!("every call should see SOCKHERD_GENERATION=1 SOCKHERD_PID={master}: {calls:?} ({gens:?})"));
    }
}

/// `--ready delay:SECS`: not ready before SECS, seen from outside (a lower bound: it cannot
/// flake on a loaded machine) and in sockherd's own measure.
#[test]
fn delay_is_not_ready_before_its_seconds() {
    require!("python3");
    let dir = TempDir::new("ready-delay");
    let before_spawn = Instant::now();
    let (proc, _addr, _report) = start_gated(&dir, &["--ready", "delay:3"]);
    let mut first_serving = None;
    let ok = wait_until(PATIENCE, || {
        let gens = generations(proc.pid());
        if serving(&gens) {
            first_serving = Some(before_spawn.elapsed());
            return true;
        }
        false
    });
    if !ok {
        proc.fail("generation 1 never became ready with delay:3");
    }
    let seen = first_serving.unwrap();
    if seen < Duration::from_secs(3) {
        proc.fail(&format!("generation 1 was serving {seen:?} after it was started, before its 3 s delay"));
    }
    let log = proc.stderr();
    let ms: Option<u64> = log
        .lines()
        .find_map(|l| l.split(" is ready after ").nth(1))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok());
    if ms.is_none_or(|ms| ms < 3000) {
        proc.fail(&format!("sockherd should say it was ready after 3000 ms or more: {ms:?}"));
    }
}

/// `--ready notify`: READY=1 from a process outside the generation is refused (and said so);
/// READY=1 from the generation's own master makes it ready.
#[test]
fn notify_refuses_a_sender_outside_the_generation() {
    require!("python3");
    let dir = TempDir::new("ready-notify");
    let (mut proc, addr, report) = start_gated(&dir, &["--ready", "notify"]);
    let text = std::fs::read_to_string(&report).unwrap();
    let notify_socket = text.lines().nth(1).unwrap_or("").to_string();
    if notify_socket.is_empty() {
        proc.fail(&format!("the generation got no NOTIFY_SOCKET: {text:?}"));
    }
    // This test process is alive and in no process group of the generation.
    let sender = UnixDatagram::unbound().unwrap();
    sender.send_to(b"READY=1", &notify_socket).unwrap_or_else(|e| proc.fail(&format!("send to {notify_socket}: {e}")));
    let refused = format!("ignored a notification from pid {}", std::process::id());
    proc.wait_for_stderr(&refused, PATIENCE);
    public_answers_but_still_starting(&mut proc, &addr, 1);
    std::fs::write(report.with_extension("notify"), "").unwrap();
    wait_generations(&mut proc, "generation 1 serving", PATIENCE, serving);
    let log = proc.stderr();
    if !matches!((line_with(&log, &[&refused]), line_with(&log, &[" is ready after "])), (Some(a), Some(b)) if a < b) {
        proc.fail("the refusal should come before the generation was ready");
    }
}

/// Durations take `1500ms`, `2m` and plain seconds: a `--ready-timeout 1500ms` that expires
/// says so in seconds, and the other forms are accepted where a duration goes.
#[test]
fn durations_in_milliseconds_minutes_and_plain_seconds() {
    require!("python3");
    let dir = TempDir::new("durations");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = sockherd_cmd(&[
        "run",
        "--listen",
        &addr,
        "--ready",
        "cmd:false",
        "--ready-timeout",
        "1500ms",
        "--stop-timeout",
        "2m",
        "--drain-timeout",
        "30",
        "--",
    ]);
    cmd.arg("python3").arg(support("gated_http.py")).arg(dir.join("report"));
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    let status = proc.wait_exit(PATIENCE);
    if status.code() != Some(1) || !proc.stderr().contains("not ready within 1.5s") {
        proc.fail("a 1500ms ready timeout should fail the start, saying 1.5s");
    }
}
