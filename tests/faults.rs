//! Lifecycle faults of `sockherd run`, each replayed as the scenario an operator met: a server
//! that says ready and crashes, signals nobody meant for sockherd, a join racing a control
//! reload, a failed generation that already served, readiness that must wake the loop, a loop
//! that cannot wait any more. The servers are tests/support/scenario_server.py, told by a
//! BEHAVIOR file in each release how to misbehave.
mod common;

use common::*;
use sockherd::status::Json;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

fn scenario_server() -> String {
    repo().join("tests/support/scenario_server.py").display().to_string()
}

/// releases/<name>/{RELEASE,BEHAVIOR} and a `current` symlink, flipped atomically.
struct Releases {
    dir: TempDir,
}

impl Releases {
    fn new(tag: &str, releases: &[(&str, &str)]) -> Releases {
        let r = Releases { dir: TempDir::new(tag) };
        for (name, behavior) in releases {
            let path = r.dir.join("releases").join(name);
            std::fs::create_dir_all(&path).unwrap();
            std::fs::write(path.join("RELEASE"), name).unwrap();
            std::fs::write(path.join("BEHAVIOR"), behavior).unwrap();
        }
        r.flip(releases[0].0);
        r
    }

    fn flip(&self, name: &str) {
        let tmp = self.dir.join("current.tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(Path::new("releases").join(name), &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("current")).unwrap();
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The signals the servers recorded, as (pid, name).
    fn signals(&self) -> Vec<(i32, String)> {
        std::fs::read_to_string(self.dir.join("signals.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (pid, name) = l.split_once(' ')?;
                Some((pid.parse().ok()?, name.to_string()))
            })
            .collect()
    }
}

/// `sockherd run --listen 127.0.0.1:<free> --chdir <releases>/current <extra> -- scenario_server`.
struct Herd {
    proc: Proc,
    addr: String,
}

impl Herd {
    fn start(releases: &Releases, extra: &[&str]) -> Herd {
        let addr = format!("127.0.0.1:{}", free_port());
        let current = releases.path().join("current").display().to_string();
        let mut args = vec!["run", "--listen", &addr, "--chdir", &current];
        args.extend_from_slice(extra);
        args.extend(["--", "python3"]);
        let mut cmd = sockherd_cmd(&args);
        cmd.arg(scenario_server())
            .env("SCENARIO_LOG", releases.path().join("signals.log"))
            .env("SCENARIO_DIR", releases.path());
        let proc = Proc::spawn(cmd, releases.path(), "sockherd");
        Herd { proc, addr }
    }

    fn pid(&self) -> i32 {
        self.proc.pid()
    }

    fn fail(&self, message: &str) -> ! {
        self.proc.fail(message)
    }

    /// Runs `sockherd <args> --pid <us>` to completion.
    fn client(&self, args: &[&str], timeout: Duration) -> (ExitStatus, String) {
        let pid = self.pid().to_string();
        let mut all = args.to_vec();
        all.extend(["--pid", &pid]);
        let dir = self.proc_dir();
        let (status, _, stderr) = run_sockherd(&all, &dir, timeout);
        (status, stderr)
    }

    fn spawn_client(&self, args: &[&str], tag: &str) -> Proc {
        let pid = self.pid().to_string();
        let mut all = args.to_vec();
        all.extend(["--pid", &pid]);
        Proc::spawn(sockherd_cmd(&all), &self.proc_dir(), tag)
    }

    fn proc_dir(&self) -> PathBuf {
        std::env::temp_dir()
    }

    fn status(&self) -> Json {
        let pid = self.pid().to_string();
        let out = sockherd_cmd(&["status", "--json", "--pid", &pid]).output().unwrap();
        if !out.status.success() {
            self.fail(&format!("sockherd status failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        Json::parse(String::from_utf8_lossy(&out.stdout).trim()).unwrap_or_else(|e| self.fail(&e.to_string()))
    }

    /// (number, pid, state) of every generation.
    fn generations(&self) -> Vec<(u64, i32, String)> {
        let status = self.status();
        let mut out = Vec::new();
        for g in status.get("generations").arr() {
            let number = g.get("number").num().unwrap_or(0.0) as u64;
            let pid = g.get("pid").num().unwrap_or(0.0) as i32;
            let state = g.get("state").str().unwrap_or("").to_string();
            out.push((number, pid, state));
        }
        out
    }

    /// Waits until generation `number` alone serves, and returns its pid.
    fn wait_alone(&self, number: u64, timeout: Duration) -> i32 {
        let mut last = Vec::new();
        let ok = wait_until(timeout, || {
            last = self.generations();
            last.len() == 1 && last[0].0 == number && last[0].2 == "serving"
        });
        if !ok {
            self.fail(&format!("generation {number} never served alone within {timeout:?}: {last:?}"));
        }
        last[0].1
    }

    fn started(&self) -> Vec<u64> {
        self.proc
            .stderr()
            .lines()
            .filter_map(|l| l.strip_prefix("sockherd: started generation "))
            .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
            .collect()
    }

    fn get(&self, path: &str) -> Result<Response, String> {
        http_get(&self.addr, path).map_err(|e| e.to_string())
    }
}

fn signal_pid(pid: i32, signal: i32) {
    assert!(pid > 1);
    // SAFETY: kill(2) on one positive pid that this test started (sockherd or its child).
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Generation 1 serves release r1; `current` then points at r2 and a reload is asked for. The
/// reload must fail, generation 1 must never have been told to stop, and it keeps serving.
fn broken_after_ready(tag: &str, r2: &str, extra: &[&str], expected: &str) {
    require!("python3");
    let releases = Releases::new(tag, &[("r1", "serve"), ("r2", r2)]);
    let mut herd = Herd::start(&releases, extra);
    let addr = herd.addr.clone();
    wait_http_ok(&mut herd.proc, &addr, Duration::from_secs(20));
    let g1 = herd.wait_alone(1, Duration::from_secs(20));
    releases.flip("r2");
    let (status, stderr) = herd.client(&["reload", "--timeout", "60s"], Duration::from_secs(90));
    if status.success() || !stderr.contains(expected) {
        herd.fail(&format!("the reload must fail saying {expected:?}: {status:?} {stderr}"));
    }
    if herd.proc.try_status().is_some() {
        herd.fail("sockherd must keep running after a failed reload");
    }
    let told: Vec<_> = releases.signals().into_iter().filter(|(pid, _)| *pid == g1).collect();
    if !told.is_empty() {
        herd.fail(&format!("generation 1 (pid {g1}) must not be told anything: {told:?}"));
    }
    herd.wait_alone(1, Duration::from_secs(20));
    for _ in 0..5 {
        match herd.get("/") {
            Ok(r) if r.body.contains("release=r1") && r.body.contains(&format!("pid={g1}")) => {}
            other => herd.fail(&format!("generation 1 should still answer: {other:?}")),
        }
    }
    let last = herd.status();
    let ok = last.get("last_reload").get("ok").bool();
    if ok != Some(false) {
        herd.fail(&format!("status should say the last reload failed: {:?}", last));
    }
}

#[test]
fn ready_then_crash_fails_the_reload_with_notify() {
    broken_after_ready("crash-notify", "crash-after-ready:0.05", &["--ready", "notify"], "after it reported ready");
}

#[test]
fn ready_then_crash_fails_the_reload_with_probe() {
    broken_after_ready("crash-probe", "crash-after-ready:0.05", &["--ready", "probe"], "after it reported ready");
}

/// `cmd:` readiness: the command sees the server ready (it waits for the file the server creates
/// when it says ready), and the master exits 50 ms later.
#[test]
fn cmd_ready_then_crash_fails_the_reload() {
    let check = "cmd:test \"$SOCKHERD_GENERATION\" = 1 || { f=\"$(readlink -f \"$SCENARIO_DIR\"/current)/READY\"; \
                 while ! test -e \"$f\"; do sleep 0.002; done; }";
    broken_after_ready("crash-cmd", "crash-after-ready:0.05", &["--ready", check], "after it reported ready");
}

/// `systemctl kill -s USR1 app` (logrotate) and friends: sockherd survives every signal whose
/// default action would end it, forwards the servers' own control signals to the serving
/// master, and takes USR2 (every upgrading server's "upgrade") as a reload.
#[test]
fn signals_nobody_meant_for_sockherd_do_not_stop_it() {
    require!("python3");
    let releases = Releases::new("signals", &[("r1", "serve")]);
    let mut herd = Herd::start(&releases, &["--ready", "notify"]);
    let addr = herd.addr.clone();
    wait_http_ok(&mut herd.proc, &addr, Duration::from_secs(20));
    let g1 = herd.wait_alone(1, Duration::from_secs(20));
    let forwarded = [libc::SIGUSR1, libc::SIGTTIN, libc::SIGTTOU, libc::SIGWINCH];
    let ignored = [
        libc::SIGALRM,
        libc::SIGPWR,
        libc::SIGVTALRM,
        libc::SIGPROF,
        libc::SIGXCPU,
        libc::SIGIO,
        libc::SIGSTKFLT,
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGSYS,
        libc::SIGRTMIN() + 3,
        libc::SIGRTMAX(),
    ];
    for &signal in forwarded.iter().chain(&ignored) {
        signal_pid(herd.pid(), signal);
        std::thread::sleep(Duration::from_millis(20));
        if let Some(status) = herd.proc.try_status() {
            herd.fail(&format!("sockherd died of signal {signal}: {status:?}"));
        }
    }
    let names = ["USR1", "TTIN", "TTOU", "WINCH"];
    let ok = wait_until(Duration::from_secs(10), || {
        let got = releases.signals();
        names.iter().all(|n| got.iter().filter(|(p, s)| *p == g1 && s == &format!("SIG{n}")).count() == 1)
    });
    if !ok {
        herd.fail(&format!("generation 1 should get USR1, TTIN, TTOU and WINCH once each: {:?}", releases.signals()));
    }
    if herd.get("/").map(|r| r.status) != Ok(200) {
        herd.fail("generation 1 should still serve");
    }
    // USR2: a reload.
    signal_pid(herd.pid(), libc::SIGUSR2);
    herd.wait_alone(2, Duration::from_secs(30));
    herd.proc.signal(libc::SIGTERM);
    let status = herd.proc.wait_exit(Duration::from_secs(30));
    if status.code() != Some(0) {
        herd.fail(&format!("a clean stop after all that must exit 0: {status:?}"));
    }
}

/// A control reload is in flight when a SIGHUP (systemd's notify-reload) arrives; the SIGHUP's
/// follow-up handoff is already running when its ExecReload= (`--join`) connects. The join
/// reports that follow-up and starts nothing: three generations in all, not four.
#[test]
fn join_reports_the_handoff_covering_its_signal() {
    require!("python3");
    // Every generation takes 2 s to say it is ready.
    let releases = Releases::new("join", &[("r1", "slow-ready:2")]);
    let mut herd = Herd::start(&releases, &["--ready", "notify"]);
    let addr = herd.addr.clone();
    wait_http_ok(&mut herd.proc, &addr, Duration::from_secs(20));
    herd.wait_alone(1, Duration::from_secs(20));
    let started = Instant::now();
    let control = herd.spawn_client(&["reload", "--timeout", "60s"], "control-reload");
    if !wait_until(Duration::from_secs(20), || herd.started().contains(&2)) {
        herd.fail("the control reload did not start generation 2");
    }
    signal_pid(herd.pid(), libc::SIGHUP);
    if !wait_until(Duration::from_secs(30), || herd.started().contains(&3)) {
        herd.fail("the SIGHUP's follow-up reload did not start generation 3");
    }
    let (status, stderr) = herd.client(&["reload", "--join", "--timeout", "60s"], Duration::from_secs(90));
    if !status.success() || !stderr.contains("generation 3") {
        herd.fail(&format!("the join must report generation 3's handoff: {status:?} {stderr}"));
    }
    herd.wait_alone(3, Duration::from_secs(30));
    let mut control = control;
    let control_status = control.wait_exit(Duration::from_secs(60));
    if !control_status.success() || !control.stderr().contains("generation 2") {
        control.fail("the control reload must report generation 2");
    }
    // Nothing else was started meanwhile, nor afterwards.
    std::thread::sleep(Duration::from_millis(500));
    if herd.started() != [1, 2, 3] {
        herd.fail(&format!(
            "exactly generations 1, 2, 3 should start: {:?} in {:?}",
            herd.started(),
            started.elapsed()
        ));
    }
}

/// A reload whose new generation never passes its readiness check, though it already serves on
/// the shared socket: at the ready timeout it is told to stop gracefully, so the requests it
/// accepted complete (a SIGKILL would reset them).
#[test]
fn a_failed_generation_finishes_the_requests_it_accepted() {
    require!("python3");
    let releases = Releases::new("failed-drain", &[("r1", "serve"), ("r2", "unhealthy")]);
    let mut herd = Herd::start(&releases, &["--ready", "probe:/health", "--ready-timeout", "4s"]);
    let addr = herd.addr.clone();
    wait_http_ok(&mut herd.proc, &addr, Duration::from_secs(20));
    herd.wait_alone(1, Duration::from_secs(20));
    releases.flip("r2");
    let reload = herd.spawn_client(&["reload", "--timeout", "60s"], "reload");
    // Slow requests, a new one every 100 ms, until well past the ready timeout.
    let clients: Vec<_> = (0..70)
        .map(|i| {
            std::thread::sleep(Duration::from_millis(100));
            let addr = addr.clone();
            std::thread::spawn(move || (i, http_get(&addr, "/slow?s=1.5").map_err(|e| e.to_string())))
        })
        .collect();
    let results: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let mut reload = reload;
    let reload_status = reload.wait_exit(Duration::from_secs(60));
    if reload_status.success() {
        reload.fail("the reload of a release that never gets healthy must fail");
    }
    let failed: Vec<_> = results.iter().filter(|(_, r)| !matches!(r, Ok(resp) if resp.status == 200)).collect();
    let by_r2 = results.iter().filter(|(_, r)| matches!(r, Ok(resp) if resp.body.contains("release=r2"))).count();
    if !failed.is_empty() {
        herd.fail(&format!("requests failed around the rollback: {failed:?}"));
    }
    if by_r2 == 0 {
        herd.fail("no request reached the failed generation: the scenario did not happen");
    }
    eprintln!("{} slow requests, {by_r2} answered by the failed generation, 0 failed", results.len());
}

/// `--ready exec` wakes the loop itself: generation 1 is ready at once, not at the next
/// unrelated wakeup (the ready timeout, 60 s here).
#[test]
fn ready_exec_is_noticed_at_once() {
    require!("python3");
    let releases = Releases::new("exec-ready", &[("r1", "serve")]);
    let herd = Herd::start(&releases, &["--ready", "exec", "--ready-timeout", "60s"]);
    let ok = wait_until(Duration::from_secs(30), || herd.proc.stderr().contains("is ready after"));
    if !ok {
        herd.fail("generation 1 with --ready exec was not ready within half its ready timeout");
    }
}

/// A reload asked for while generation 1 starts is queued, and the log says so truthfully.
#[test]
fn a_reload_during_the_first_start_says_what_it_waits_for() {
    require!("python3");
    let releases = Releases::new("early", &[("r1", "serve")]);
    let herd = Herd::start(&releases, &["--ready", "delay:2"]);
    if !wait_until(Duration::from_secs(10), || herd.started().contains(&1)) {
        herd.fail("generation 1 never started");
    }
    let (status, stderr) = herd.client(&["reload", "--timeout", "30s"], Duration::from_secs(40));
    if !status.success() {
        herd.fail(&format!("the early reload should run once generation 1 serves: {stderr}"));
    }
    let log = herd.proc.stderr();
    if !log.contains("reload requested while generation 1 is starting") || log.contains("handoff is in flight") {
        herd.fail("the queued reload should be logged as waiting for generation 1, not for a handoff");
    }
}

/// When sockherd can no longer wait for events (poll fails: here its descriptor limit is cut
/// below the descriptors it polls), it stops every generation and exits non-zero instead of
/// leaving them running unsupervised.
#[test]
fn a_loop_that_cannot_wait_stops_every_generation() {
    require!("python3", "prlimit");
    let releases = Releases::new("poll-fails", &[("r1", "serve")]);
    let mut herd = Herd::start(&releases, &["--ready", "notify", "--stop-timeout", "5s"]);
    let addr = herd.addr.clone();
    wait_http_ok(&mut herd.proc, &addr, Duration::from_secs(20));
    let g1 = herd.wait_alone(1, Duration::from_secs(20));
    let out = std::process::Command::new("prlimit")
        .args(["--pid", &herd.pid().to_string(), "--nofile=1:1"])
        .output()
        .unwrap();
    if !out.status.success() {
        herd.fail(&format!("prlimit failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    // Wake the loop (SIGCHLD: it reaps and finds nothing) so that its next poll fails.
    signal_pid(herd.pid(), libc::SIGCHLD);
    let status = herd.proc.wait_exit(Duration::from_secs(30));
    if status.success() {
        herd.fail(&format!("sockherd must exit non-zero when it cannot wait for events: {status:?}"));
    }
    if pid_alive(g1) {
        herd.fail(&format!("generation 1 (pid {g1}) was left running"));
    }
    if !herd.proc.stderr().contains("waiting for events failed") {
        herd.fail("sockherd should say why it stopped");
    }
}

/// nginx under `sockherd run` with its default readiness: it closes every inherited socket its
/// config does not `listen` on (a probe socket's too), so it is ready by its workers. It serves,
/// and a reload hands over to a new master.
#[test]
fn nginx_is_ready_under_run_by_default() {
    require!("curl");
    if !prerequisite(Path::new("/usr/sbin/nginx").exists(), "/usr/sbin/nginx (package nginx-light)") {
        return;
    }
    let dir = TempDir::new("nginx-run");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let d = dir.path().display();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "pid {d}/nginx.pid;\nworker_processes 2;\nerror_log stderr;\ndaemon off;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/cb;\n  proxy_temp_path {d}/px;\n\
               fastcgi_temp_path {d}/fc;\n  uwsgi_temp_path {d}/uw;\n  scgi_temp_path {d}/sc;\n\
               server {{ listen {addr}; location / {{ default_type text/plain; return 200 \"nginx worker=$pid\\n\"; }} }}\n}}\n"
        ),
    )
    .unwrap();
    let conf_arg = conf.display().to_string();
    let cmd = sockherd_cmd(&[
        "run",
        "--flavor",
        "nginx",
        "--ready-timeout",
        "20s",
        "--listen",
        &addr,
        "--",
        "/usr/sbin/nginx",
        "-c",
        &conf_arg,
    ]);
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    let first = wait_http_ok(&mut proc, &addr, Duration::from_secs(20));
    if !first.body.starts_with("nginx worker=") {
        proc.fail(&format!("unexpected answer: {first:?}"));
    }
    let pid = proc.pid().to_string();
    let (status, _, stderr) =
        run_sockherd(&["reload", "--pid", &pid, "--timeout", "60s"], dir.path(), Duration::from_secs(90));
    if !status.success() || !stderr.contains("generation 2") {
        proc.fail(&format!("the reload of nginx under run must succeed: {status:?} {stderr}"));
    }
    let log = proc.stderr();
    if !log.contains("ready: workers") || !log.contains("generation 2") {
        proc.fail("nginx should have been started with the workers readiness, twice");
    }
    wait_http_ok(&mut proc, &addr, Duration::from_secs(10));
    proc.signal(libc::SIGTERM);
    let status = proc.wait_exit(Duration::from_secs(30));
    if status.code() != Some(0) {
        proc.fail(&format!("nginx under run should stop cleanly: {status:?}"));
    }
}

/// sockherd blocks every signal while it forks (so a signal sent to a child before it execs is
/// never handled by that child's copy of sockherd's handler); the generation must still start
/// with nothing blocked, ignored or caught. The generation is `cp` copying its own
/// /proc/self/status (a shell would clear its mask itself and hide a mistake). Signals 32 and 33
/// are glibc's own, left as the test runner had them; they are not compared.
#[test]
fn generations_start_with_default_signal_handling() {
    require!("cp");
    let dir = TempDir::new("sigmask");
    let addr = format!("127.0.0.1:{}", free_port());
    let copy = dir.join("server").display().to_string();
    let cmd = sockherd_cmd(&[
        "run",
        "--ready",
        "exec",
        "--ready-settle",
        "0",
        "--listen",
        &addr,
        "--",
        "cp",
        "/proc/self/status",
        &copy,
    ]);
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    // cp exits at once: sockherd reports the serving generation gone and exits non-zero.
    proc.wait_exit(Duration::from_secs(20));
    let status = std::fs::read_to_string(&copy).unwrap_or_default();
    let glibc_internal: u64 = (1 << 31) | (1 << 32);
    let masks: Vec<(String, u64)> = status
        .lines()
        .filter(|l| l.starts_with("SigBlk:") || l.starts_with("SigIgn:") || l.starts_with("SigCgt:"))
        .map(|l| {
            let (name, hex) = l.split_once(':').unwrap_or_default();
            (name.to_string(), u64::from_str_radix(hex.trim(), 16).unwrap_or(u64::MAX))
        })
        .collect();
    if masks.len() != 3 || masks.iter().any(|(_, m)| m & !glibc_internal != 0) {
        proc.fail(&format!("the generation must start with no signal blocked, ignored or caught: {masks:x?}"));
    }
}
