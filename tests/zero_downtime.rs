//! The product's promise: 20 reloads under concurrent load lose zero requests, for gunicorn,
//! unicorn and puma, over TCP and over a unix socket. Every reload must produce a new master.
//!
//! Load, all at once: wrk with 4 connections, hey with 4 connections (Go's HTTP client), and
//! fresh-connection request loops on TCP and on the unix socket.
//!
//! puma needs `queue_requests false` (contrib/puma/puma.rb) for this: with its reactor on, a
//! draining puma closes connections it accepted but whose request has not arrived yet, and
//! idle keep-alive ones, and wrk counted 3-5 read errors in 30,000-80,000 requests over 20
//! reloads.
mod common;

use common::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

const RELOADS: usize = 20;

#[derive(Default)]
struct Tally {
    ok: usize,
    failures: Vec<String>,
    masters: BTreeSet<String>,
}

/// Request loops, each opening a fresh connection per request, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    threads: Vec<JoinHandle<()>>,
}

enum Target {
    Tcp(String),
    Unix(PathBuf),
}

impl Load {
    fn start(targets: Vec<Target>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let threads = targets
            .into_iter()
            .map(|target| {
                let stop = stop.clone();
                let tally = tally.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let result = match &target {
                            Target::Tcp(addr) => http_get(addr, "/"),
                            Target::Unix(path) => http_get_unix(path, "/"),
                        };
                        let mut t = tally.lock().unwrap();
                        match result {
                            Ok(r) if r.status == 200 => {
                                t.ok += 1;
                                if let Some(m) = r.body.split_whitespace().find(|w| w.starts_with("master=")) {
                                    t.masters.insert(m.to_string());
                                }
                            }
                            Ok(r) => t.failures.push(format!("HTTP {}: {}", r.status, r.body.trim())),
                            Err(e) => t.failures.push(e.to_string()),
                        }
                    }
                })
            })
            .collect();
        Load { stop, tally, threads }
    }

    fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        Arc::try_unwrap(self.tally).ok().unwrap().into_inner().unwrap()
    }
}

/// wrk's counters, from its report.
struct WrkReport {
    requests: u64,
    errors: String,
    text: String,
}

fn wrk_report(text: String) -> WrkReport {
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let errors =
        text.lines().filter(|l| l.contains("Socket errors") || l.contains("Non-2xx")).collect::<Vec<_>>().join("; ");
    WrkReport { requests, errors, text }
}

fn serving_master(sockherd_pid: i32) -> Option<i32> {
    let (status, out, _) = run_status(sockherd_pid);
    if !status {
        return None;
    }
    // {"number":N,"pid":P,"state":"serving",...}
    let at = out.find("\"state\":\"serving\"")?;
    let before = &out[..at];
    let pid_at = before.rfind("\"pid\":")?;
    before[pid_at + 6..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

fn run_status(pid: i32) -> (bool, String, String) {
    let out = sockherd_cmd(&["status", "--json", "--pid", &pid.to_string()]).output().expect("run sockherd status");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts the server under sockherd on a TCP port and a unix socket, runs 20 reloads under
/// load, and checks that nothing failed and that every reload brought a new master.
fn reloads_under_load(tag: &str, flavor: &str, command: &[&str], app_dir: &Path) {
    require!("wrk");
    let dir = TempDir::new(tag);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let sock = dir.join("app.sock");
    let mut cmd = sockherd_cmd(&["run", "--flavor", flavor, "--listen", &addr, "--listen"]);
    cmd.arg(&sock).arg("--chdir").arg(app_dir).arg("--").args(command);
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    wait_http_ok(&mut proc, &addr, Duration::from_secs(30));
    wait_http_ok_unix(&mut proc, &sock, Duration::from_secs(30));
    // Answering is not serving yet: generation 1 serves once its settle period is over.
    if !wait_until(Duration::from_secs(30), || serving_master(proc.pid()).is_some()) {
        proc.fail("generation 1 answered but never counted as serving");
    }

    let mut wrk = Proc::spawn(
        {
            let mut c = std::process::Command::new("wrk");
            // wrk's default 2 s timeout would count a slow answer on a loaded machine as an
            // error; -d is only a backstop: it is stopped after the reloads, and must still be
            // running then (checked below), so no reload goes without its load.
            c.args(["-t1", "-c4", "-d3600s", "--timeout", "30s", &format!("http://{addr}/")]);
            c
        },
        dir.path(),
        "wrk",
    );
    let mut hey = Proc::spawn(
        {
            let mut c = std::process::Command::new("hey");
            c.args(["-z", "3600s", "-c", "4", "-t", "30", &format!("http://{addr}/")]);
            c
        },
        dir.path(),
        "hey",
    );
    let load = Load::start(vec![
        Target::Tcp(addr.clone()),
        Target::Tcp(addr.clone()),
        Target::Unix(sock.clone()),
        Target::Unix(sock.clone()),
    ]);
    // Answering is not serving yet: the first generation serves once it stayed up for
    // --ready-settle after it was ready.
    let mut first = None;
    wait_until(Duration::from_secs(30), || {
        first = serving_master(proc.pid());
        first.is_some()
    });
    let mut masters = vec![first.unwrap_or_else(|| proc.fail("status shows no serving generation"))];
    for i in 0..RELOADS {
        let out = sockherd_cmd(&["reload", "--pid", &proc.pid().to_string(), "--timeout", "60s"]).output().unwrap();
        if !out.status.success() {
            proc.fail(&format!("reload {} failed: {}", i + 1, String::from_utf8_lossy(&out.stderr)));
        }
        let master = serving_master(proc.pid()).unwrap_or_else(|| proc.fail("status shows no serving generation"));
        masters.push(master);
    }
    // Let the last drain finish under load too: one generation left, and every old master gone.
    let drained = wait_until(Duration::from_secs(120), || {
        let (ok, json, _) = run_status(proc.pid());
        ok && json.matches("\"number\":").count() == 1
    });
    if !drained {
        proc.fail(&format!("the old generations never drained: status {:?}", run_status(proc.pid()).1));
    }
    let old_masters: Vec<i32> = masters[..RELOADS].iter().copied().filter(|&m| pid_alive(m)).collect();
    if !old_masters.is_empty() {
        proc.fail(&format!(
            "status shows one generation, but old masters still live: {old_masters:?} (masters in order: {masters:?})"
        ));
    }
    // The load generators ran through every reload (neither stopped early or crashed).
    for (name, generator) in [("wrk", &mut wrk), ("hey", &mut hey)] {
        if let Some(status) = generator.try_status() {
            generator.fail(&format!("{name} stopped before the reloads ended ({status:?})"));
        }
    }
    let tally = load.finish();
    wrk.signal(2); // SIGINT: wrk prints its report and exits
    wrk.wait_exit(Duration::from_secs(30));
    let report = wrk_report(wrk.stdout());
    hey.signal(2); // SIGINT: hey stops and prints its summary
    hey.wait_exit(Duration::from_secs(30));
    let hey_report = hey.stdout();
    // The status code lines begin with the code; a latency histogram's bucket may count
    // "[200]" too ("0.035 [200] |"), so only a line that starts with it counts.
    let hey_200 = hey_report
        .lines()
        .find(|l| l.trim_start().starts_with("[200]"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    let hey_clean = !hey_report.contains("Error distribution")
        && hey_report.lines().filter(|l| l.trim_start().starts_with('[')).all(|l| l.trim_start().starts_with("[200]"));

    let distinct: BTreeSet<i32> = masters.iter().copied().collect();
    eprintln!(
        "{tag}: {RELOADS} reloads; loops {} ok, {} failed; wrk {} requests {}; hey {} x 200{}; masters seen by clients {}",
        tally.ok,
        tally.failures.len(),
        report.requests,
        if report.errors.is_empty() { "no errors".to_string() } else { report.errors.clone() },
        hey_200,
        if hey_clean { ", no errors" } else { ", ERRORS" },
        tally.masters.len()
    );
    if !tally.failures.is_empty() {
        proc.fail(&format!(
            "{} requests failed during reloads, e.g. {:?}",
            tally.failures.len(),
            &tally.failures[..tally.failures.len().min(5)]
        ));
    }
    if !report.errors.is_empty() || report.requests == 0 {
        proc.fail(&format!("wrk saw errors or no requests:\n{}", report.text));
    }
    if !hey_clean || hey_200 == 0 {
        proc.fail(&format!("hey saw errors or no requests:\n{hey_report}"));
    }
    if distinct.len() != RELOADS + 1 {
        proc.fail(&format!("expected {} distinct masters over {RELOADS} reloads, got {masters:?}", RELOADS + 1));
    }
    if tally.ok < 100 {
        proc.fail(&format!("the request loops completed only {} requests: not a real load", tally.ok));
    }
    proc.signal(15);
    let status = proc.wait_exit(Duration::from_secs(40));
    if status.code() != Some(0) {
        proc.fail("sockherd did not exit 0 after SIGTERM");
    }
}

#[test]
fn gunicorn_reloads_under_load_lose_nothing() {
    require!(python: "gunicorn");
    let conf = contrib("gunicorn/gunicorn.conf.py");
    reloads_under_load(
        "zd-gunicorn",
        "gunicorn",
        &["python3", "-m", "gunicorn", "-c", conf.to_str().unwrap(), "app:app"],
        &contrib("app"),
    );
}

#[test]
fn unicorn_reloads_under_load_lose_nothing() {
    require!("unicorn");
    let conf = contrib("unicorn/unicorn.conf.rb");
    reloads_under_load(
        "zd-unicorn",
        "unicorn",
        &["unicorn", "-c", conf.to_str().unwrap(), "config.ru"],
        &contrib("app"),
    );
}

#[test]
fn puma_reloads_under_load_lose_nothing() {
    require!("puma");
    let conf = contrib("puma/puma.rb");
    reloads_under_load("zd-puma", "puma", &["puma", "-C", conf.to_str().unwrap(), "config.ru"], &contrib("app"));
}
