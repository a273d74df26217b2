//! Zero-downtime reloads with `sockherd run`: a new generation on the same sockets, readiness,
//! drain, rollback of broken or hung releases, coalescing, stopping mid-handoff, leaks over many
//! reloads, and a crash of the serving generation.
//!
//! Releases use a capistrano layout: `releases/<name>/` holds a copy of the example app and a
//! RELEASE file, `current` is a symlink flipped atomically (symlink to a temporary name, then
//! rename over `current`), and sockherd runs with `--chdir <dir>/current`, which it resolves
//! anew for every generation.
mod common;

use sockherd::status::Json;

use common::*;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

// ----- app servers -------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Gunicorn,
    Unicorn,
    Puma,
}

impl Server {
    fn flavor(self) -> &'static str {
        match self {
            Server::Gunicorn => "gunicorn",
            Server::Unicorn => "unicorn",
            Server::Puma => "puma",
        }
    }

    /// The server's command line, run from the release directory.
    fn command(self) -> Vec<String> {
        let conf = |rel: &str| contrib(rel).display().to_string();
        match self {
            Server::Gunicorn => vec!["python3", "-m", "gunicorn", "-c", &conf("gunicorn/gunicorn.conf.py"), "app:app"]
                .into_iter()
                .map(String::from)
                .collect(),
            Server::Unicorn => vec!["unicorn".into(), "-c".into(), conf("unicorn/unicorn.conf.rb"), "config.ru".into()],
            Server::Puma => vec!["puma".into(), "-C".into(), conf("puma/puma.rb"), "config.ru".into()],
        }
    }
}

/// Skips (or fails, under SOCKHERD_TEST_REQUIRE=1) unless `server` is installed.
macro_rules! require_server {
    ($server:expr) => {
        match $server {
            Server::Gunicorn => require!(python: "gunicorn"),
            Server::Unicorn => require!("unicorn"),
            Server::Puma => require!("puma"),
        }
    };
}

// ----- capistrano layout ---------------------------------------------------------------------------

struct Deploy {
    dir: TempDir,
}

impl Deploy {
    /// `releases/<name>` for each name (app.py, config.ru, RELEASE), `current` -> the first.
    fn new(tag: &str, releases: &[&str]) -> Deploy {
        let deploy = Deploy { dir: TempDir::new(tag) };
        for name in releases {
            deploy.add_release(name);
        }
        deploy.flip(releases[0]);
        deploy
    }

    fn add_release(&self, name: &str) -> PathBuf {
        let release = self.release(name);
        std::fs::create_dir_all(&release).unwrap();
        for file in ["app.py", "config.ru"] {
            std::fs::copy(contrib(&format!("app/{file}")), release.join(file)).unwrap();
        }
        std::fs::write(release.join("RELEASE"), format!("{name}\n")).unwrap();
        release
    }

    fn release(&self, name: &str) -> PathBuf {
        self.dir.join("releases").join(name)
    }

    fn current(&self) -> PathBuf {
        self.dir.join("current")
    }

    /// Points `current` at `releases/<name>` atomically: a reader sees the old or the new target,
    /// never a missing link.
    fn flip(&self, name: &str) {
        let tmp = self.dir.join("current.tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(Path::new("releases").join(name), &tmp).unwrap();
        std::fs::rename(&tmp, self.current()).unwrap();
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

// ----- a running `sockherd run` --------------------------------------------------------------------

struct Herd {
    proc: Proc,
    addr: String,
    sock: PathBuf,
    dir: PathBuf,
}

static CLIENTS: AtomicU32 = AtomicU32::new(0);

/// One `sockherd reload` (or `status`) run: its status, output and duration.
#[derive(Debug)]
struct ClientRun {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    took: Duration,
    /// When its exit was noticed (at most a millisecond late).
    ended: Instant,
}

impl Herd {
    /// `sockherd run --listen 127.0.0.1:<free> --listen <dir>/app.sock <extra...> -- <command>`.
    fn start(dir: &Path, extra: &[&str], command: &[String], env: &[(&str, &str)]) -> Herd {
        let addr = format!("127.0.0.1:{}", free_port());
        let sock = dir.join("app.sock");
        let sock_arg = sock.display().to_string();
        let mut args = vec!["run", "--listen", &addr, "--listen", &sock_arg];
        args.extend_from_slice(extra);
        args.push("--");
        let mut cmd = sockherd_cmd(&args);
        cmd.args(command);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let proc = Proc::spawn(cmd, dir, "sockherd");
        Herd { proc, addr, sock, dir: dir.to_path_buf() }
    }

    /// Capistrano style: `--flavor F --chdir <deploy>/current <extra...> -- <server command>`.
    fn start_server(deploy: &Deploy, server: Server, extra: &[&str], env: &[(&str, &str)]) -> Herd {
        let current = deploy.current().display().to_string();
        let mut args = vec!["--flavor", server.flavor(), "--chdir", &current];
        args.extend_from_slice(extra);
        Herd::start(deploy.path(), &args, &server.command(), env)
    }

    fn pid(&self) -> i32 {
        self.proc.pid()
    }

    fn fail(&self, message: &str) -> ! {
        self.proc.fail(message)
    }

    /// Runs `sockherd <verb> --pid <us>` to completion (bounded by `timeout`).
    fn client(&self, verb: &str, timeout: Duration) -> ClientRun {
        let started = Instant::now();
        let client = self.spawn_client(verb);
        self.finish_client(client, started, timeout)
    }

    /// Waits for a client started at `started`, noticing its exit within a millisecond (the
    /// harness's `wait_timeout` polls every 20 ms, which would hide what happens right after).
    fn finish_client(&self, mut client: Proc, started: Instant, timeout: Duration) -> ClientRun {
        let deadline = started + timeout;
        loop {
            if let Ok(Some(status)) = client.child.try_wait() {
                let ended = Instant::now();
                return ClientRun {
                    status,
                    stdout: client.stdout(),
                    stderr: client.stderr(),
                    took: ended - started,
                    ended,
                };
            }
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "`{}` did not finish within {timeout:?}; its stderr: {}",
                    client.description,
                    client.stderr()
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Starts `sockherd <verb...> --pid <us>` without waiting (`verb` may carry options).
    fn spawn_client(&self, verb: &str) -> Proc {
        let tag = format!("{}-{}", verb.replace(' ', ""), CLIENTS.fetch_add(1, Ordering::SeqCst));
        let pid = self.pid().to_string();
        let mut args: Vec<&str> = verb.split(' ').collect();
        args.extend(["--pid", &pid]);
        Proc::spawn(sockherd_cmd(&args), &self.dir, &tag)
    }

    fn reload(&self, timeout: Duration) -> ClientRun {
        self.client("reload", timeout)
    }

    fn status(&self) -> Status {
        let run = self.client("status --json", Duration::from_secs(10));
        if !run.status.success() {
            self.fail(&format!("`sockherd status` failed: {run:?}"));
        }
        match Json::parse(run.stdout.trim()) {
            Ok(json) => Status(json),
            Err(e) => self.fail(&format!("`sockherd status` printed no JSON ({e}): {:?}", run.stdout)),
        }
    }

    /// Polls `status` until `check` holds, failing the test after `timeout`.
    fn wait_status(&self, what: &str, timeout: Duration, mut check: impl FnMut(&Status) -> bool) -> Status {
        let mut last = None;
        let ok = wait_until(timeout, || {
            let status = self.status();
            let done = check(&status);
            last = Some(status);
            done
        });
        let last = last.expect("polled at least once");
        if !ok {
            self.fail(&format!("status never showed {what} within {timeout:?}; last: {:?}", last.0));
        }
        last
    }

    /// Waits until exactly one generation is left and it serves (every drain is over).
    fn wait_settled(&self, timeout: Duration) -> Generation {
        let status = self.wait_status("exactly one generation, serving", timeout, |s| {
            let gens = s.generations();
            s.state() == "running" && gens.len() == 1 && gens[0].state == "serving"
        });
        status.generations().remove(0)
    }

    fn wait_serving(&mut self, timeout: Duration) -> Response {
        let addr = self.addr.clone();
        let first = wait_http_ok(&mut self.proc, &addr, timeout);
        let sock = self.sock.clone();
        wait_http_ok_unix(&mut self.proc, &sock, timeout);
        first
    }

    /// `count` GETs over fresh TCP connections and `count` over fresh unix socket connections.
    fn answers(&self, count: usize) -> Vec<Answer> {
        let mut out = Vec::new();
        for i in 0..count * 2 {
            let (via, result) =
                if i % 2 == 0 { ("tcp", http_get(&self.addr, "/")) } else { ("unix", http_get_unix(&self.sock, "/")) };
            match result {
                Ok(r) if r.status == 200 => match Answer::parse(&r.body) {
                    Some(a) => out.push(a),
                    None => self.fail(&format!("unexpected body over {via}: {:?}", r.body)),
                },
                other => self.fail(&format!("GET / over {via} failed: {other:?}")),
            }
        }
        out
    }

    fn started_generations(&self) -> Vec<u64> {
        started_generations(&self.proc.stderr())
    }

    fn signal(&self, signal: i32) {
        send_signal(self.pid(), signal);
    }
}

/// Generation numbers in sockherd's "started generation N" log lines, in order.
fn started_generations(stderr: &str) -> Vec<u64> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("sockherd: started generation "))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

fn send_signal(pid: i32, signal: i32) {
    assert!(pid > 1);
    // SAFETY: kill(2) on one positive pid: a process this test started, or one sockherd
    // started under this test.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// The process group of `pid`, or None once it is gone.
fn pgid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(2)?.parse().ok()
}

/// The executable a process runs (None once it is gone).
fn exe(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}

/// How many of `pids` are in process group `group` and run `program`. A generation's group can
/// hold short-lived helpers while it starts (a pyenv `python3` shim is a bash script that runs
/// `pyenv-version-name` before it execs python): only the real server processes count.
fn members_running(pids: &[i32], group: i32, program: &Option<PathBuf>) -> usize {
    pids.iter().filter(|&&p| pgid(p) == Some(group) && program.is_some() && exe(p) == *program).count()
}

fn still_alive(pids: &[i32]) -> Vec<i32> {
    pids.iter().copied().filter(|&p| pid_alive(p)).collect()
}

/// `release=<r> pid=<worker> master=<master>`, as the example apps answer on `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    release: String,
    pid: i32,
    master: i32,
}

impl Answer {
    fn parse(body: &str) -> Option<Answer> {
        let mut release = None;
        let mut pid = None;
        let mut master = None;
        for field in body.split_whitespace() {
            match field.split_once('=')? {
                ("release", v) => release = Some(v.to_string()),
                ("pid", v) => pid = v.parse().ok(),
                ("master", v) => master = v.parse().ok(),
                _ => {}
            }
        }
        Some(Answer { release: release?, pid: pid?, master: master? })
    }
}

// ----- traffic during a reload ---------------------------------------------------------------------

/// One request of the background loop.
#[derive(Debug)]
struct Sample {
    at: Instant,
    via: &'static str,
    result: Result<Answer, String>,
}

/// Requests on fresh connections, alternately over TCP and the unix socket, from `threads`
/// threads pausing `pause` between requests, until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<Vec<Sample>>>,
}

impl Traffic {
    fn start(herd: &Herd, threads: usize, pause: Duration) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let handles = (0..threads)
            .map(|t| {
                let (addr, sock, flag) = (herd.addr.clone(), herd.sock.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut samples = Vec::new();
                    let mut i = t as u64;
                    while !flag.load(Ordering::SeqCst) {
                        let at = Instant::now();
                        let (via, result) = if i.is_multiple_of(2) {
                            ("tcp", http_get(&addr, "/"))
                        } else {
                            ("unix", http_get_unix(&sock, "/"))
                        };
                        let result = match result {
                            Ok(r) if r.status == 200 => {
                                Answer::parse(&r.body).ok_or_else(|| format!("body {:?}", r.body))
                            }
                            Ok(r) => Err(format!("HTTP {}: {:?}", r.status, r.body)),
                            Err(e) => Err(e.to_string()),
                        };
                        samples.push(Sample { at, via, result });
                        i += 1;
                        std::thread::sleep(pause);
                    }
                    samples
                })
            })
            .collect();
        Traffic { stop, handles }
    }

    fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        let mut all: Vec<Sample> = std::mem::take(&mut self.handles)
            .into_iter()
            .flat_map(|h| h.join().expect("traffic thread panicked"))
            .collect();
        all.sort_by_key(|s| s.at);
        all
    }
}

impl Drop for Traffic {
    /// A test that fails mid-reload must not leave its threads hammering a dead port.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn failures(samples: &[Sample]) -> Vec<&Sample> {
    samples.iter().filter(|s| s.result.is_err()).collect()
}

/// `sockherd status` output.
struct Status(Json);

#[derive(Debug, Clone)]
struct Generation {
    number: u64,
    pid: i32,
    state: String,
    release: Option<String>,
}

impl Status {
    fn state(&self) -> &str {
        self.0.get("state").str().unwrap_or("")
    }

    fn generations(&self) -> Vec<Generation> {
        self.0
            .get("generations")
            .arr()
            .iter()
            .map(|g| Generation {
                number: g.get("number").num().unwrap_or(0.0) as u64,
                pid: g.get("pid").num().unwrap_or(0.0) as i32,
                state: g.get("state").str().unwrap_or("").to_string(),
                release: g.get("release").str().map(String::from),
            })
            .collect()
    }

    fn generation(&self, number: u64) -> Option<Generation> {
        self.generations().into_iter().find(|g| g.number == number)
    }

    fn serving(&self) -> Option<Generation> {
        self.generations().into_iter().find(|g| g.state == "serving")
    }

    fn last_reload(&self) -> &Json {
        self.0.get("last_reload")
    }
}

// ----- 1. capistrano: flip `current`, reload, delete the old release, reload ---------------------------

fn capistrano_reload(server: Server) {
    let deploy = Deploy::new(&format!("cap-{}", server.flavor()), &["r1", "r2"]);
    let mut herd = Herd::start_server(&deploy, server, &["--ready-timeout", "30s"], &[]);
    herd.wait_serving(Duration::from_secs(30));

    let before = herd.answers(5);
    let g1 = herd.wait_settled(Duration::from_secs(10));
    if before.iter().any(|a| a.release != "r1" || a.master != g1.pid) {
        herd.fail(&format!("before any reload, expected release=r1 from generation 1 (pid {}): {before:?}", g1.pid));
    }

    // Deploy r2: flip `current`, reload. `sockherd reload` returns once r2 serves.
    deploy.flip("r2");
    let first = reload_under_traffic(&herd);
    let g2 = expect_serving(&herd, 2, &deploy.release("r2"));
    let mut stale = check_handoff(&herd, &first, "r2", g2.pid, "the first reload");

    // Clean up the old release the way capistrano does (keep_releases), then reload again:
    // nothing may still depend on releases/r1.
    std::fs::remove_dir_all(deploy.release("r1")).unwrap();
    let second = reload_under_traffic(&herd);
    let g3 = expect_serving(&herd, 3, &deploy.release("r2"));
    stale.extend(check_handoff(&herd, &second, "r2", g3.pid, "the second reload"));
    let masters = [g1.pid, g2.pid, g3.pid];
    if masters[0] == masters[1] || masters[1] == masters[2] || masters[0] == masters[2] {
        herd.fail(&format!("every reload must start a new master: {masters:?}"));
    }

    // Both old generations drain away completely.
    herd.wait_settled(Duration::from_secs(30));
    let leftovers = still_alive(&[g1.pid, g2.pid]);
    if !leftovers.is_empty() {
        herd.fail(&format!("old masters still alive after their drain: {leftovers:?}"));
    }
    eprintln!(
        "{}: handoffs {} ms and {} ms (status took_ms); `sockherd reload` took {:?} and {:?}; {} + {} requests during the reloads, none failed",
        server.flavor(),
        first.handoff_ms,
        second.handoff_ms,
        first.run.took,
        second.run.took,
        first.samples.len(),
        second.samples.len()
    );

    let family = descendants(herd.pid());
    herd.signal(libc::SIGTERM);
    let status = herd.proc.wait_exit(Duration::from_secs(30));
    if status.code() != Some(0) {
        herd.fail("sockherd did not exit 0 after SIGTERM");
    }
    let leftovers = still_alive(&family);
    if !leftovers.is_empty() {
        herd.fail(&format!("processes left after sockherd exited: {leftovers:?}"));
    }
    // Checked last, so that everything above is verified either way: once `sockherd reload`
    // returned, the old release must not answer anything any more.
    if !stale.is_empty() {
        herd.fail(&format!(
            "after `sockherd reload` returned, every request must be answered by the new generation; \
             these were answered by the old one:\n{}",
            stale.join("\n")
        ));
    }
}

/// A successful reload with requests on fresh connections all along (4 threads, no pause),
/// which go on for 300 ms after `sockherd reload` returned.
struct Handoff {
    run: ClientRun,
    samples: Vec<Sample>,
    after: Vec<Answer>,
    handoff_ms: f64,
}

fn reload_under_traffic(herd: &Herd) -> Handoff {
    let traffic = Traffic::start(herd, 4, Duration::ZERO);
    std::thread::sleep(Duration::from_millis(100));
    let run = herd.reload(Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    let samples = traffic.finish();
    if !run.status.success() {
        herd.fail(&format!("`sockherd reload` failed: {run:?}"));
    }
    // And a few sequential ones, over both sockets.
    let after = herd.answers(5);
    let handoff_ms = herd.status().last_reload().get("took_ms").num().unwrap_or(-1.0);
    Handoff { run, samples, after, handoff_ms }
}

fn expect_serving(herd: &Herd, number: u64, release: &Path) -> Generation {
    let status = herd.status();
    match status.serving() {
        Some(g) if g.number == number && g.release.as_deref() == Some(release.to_str().unwrap()) => g,
        _ => herd.fail(&format!("expected generation {number} from {} to serve: {:?}", release.display(), status.0)),
    }
}

/// Fails the test if a request failed during the handoff. Returns the requests made after
/// `sockherd reload` returned that were not answered by the new generation (`release`, master
/// `master`).
fn check_handoff(herd: &Herd, handoff: &Handoff, release: &str, master: i32, what: &str) -> Vec<String> {
    let failed = failures(&handoff.samples);
    if !failed.is_empty() {
        herd.fail(&format!("{} of {} requests failed during {what}: {failed:?}", failed.len(), handoff.samples.len()));
    }
    let returned = handoff.run.ended;
    let after_count = handoff.samples.iter().filter(|s| s.at > returned).count();
    if after_count == 0 {
        herd.fail(&format!("no request was made after {what} returned"));
    }
    handoff
        .samples
        .iter()
        .filter(|s| s.at > returned)
        .filter_map(|s| match &s.result {
            Ok(a) if a.release != release || a.master != master => Some(format!(
                "{what} (new: release={release} master={master}): request opened {:?} after `sockherd reload` \
                 returned, over {}: {a:?} ({after_count} requests after the return)",
                s.at - returned,
                s.via
            )),
            _ => None,
        })
        .chain(
            handoff
                .after
                .iter()
                .filter(|a| a.release != release || a.master != master)
                .map(|a| format!("{what}: sequential request after the return: {a:?}")),
        )
        .collect()
}

#[test]
fn capistrano_reload_gunicorn() {
    require_server!(Server::Gunicorn);
    capistrano_reload(Server::Gunicorn);
}

#[test]
fn capistrano_reload_unicorn() {
    require_server!(Server::Unicorn);
    capistrano_reload(Server::Unicorn);
}

#[test]
fn capistrano_reload_puma() {
    require_server!(Server::Puma);
    capistrano_reload(Server::Puma);
}

/// contrib/gunicorn/gunicorn.conf.py ends a worker that exits cleanly, and the master, without
/// Python's teardown (bench/RESULTS.md: a drain's old processes took CPU from the serving ones),
/// and each must still run what an exit runs: every drained process's exit handler (atexit) ran,
/// the line it printed, unflushed on a block-buffered stdout, reached sockherd's output, and the
/// old master exited with the status gunicorn's halt() had for it (0). The app is preloaded
/// (`--preload`), so that the master has the app's exit handler too. A failing worker keeps its
/// exit status: `broken_release_rolls_back_gunicorn`.
#[test]
fn a_drained_gunicorn_generation_still_runs_its_exit_handlers() {
    require_server!(Server::Gunicorn);
    let deploy = Deploy::new("exit-handlers", &["r1", "r2"]);
    let marks = deploy.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    let marks_arg = marks.display().to_string();
    // PYTHONUNBUFFERED (set on some machines) would flush every print by itself.
    let env = [("APP_EXIT_MARK", marks_arg.as_str()), ("PYTHONUNBUFFERED", ""), ("GUNICORN_CMD_ARGS", "--preload")];
    let mut herd = Herd::start_server(&deploy, Server::Gunicorn, &[], &env);
    herd.wait_serving(Duration::from_secs(30));
    let g1 = herd.wait_settled(Duration::from_secs(10));
    let workers: Vec<i32> =
        descendants(herd.pid()).into_iter().filter(|&p| p != g1.pid && pgid(p) == Some(g1.pid)).collect();
    if workers.len() != 2 {
        herd.fail(&format!("generation 1 should have the config's 2 workers: {workers:?}"));
    }

    deploy.flip("r2");
    let run = herd.reload(Duration::from_secs(60));
    if !run.status.success() {
        herd.fail(&format!("the reload failed: {run:?}"));
    }
    herd.wait_settled(Duration::from_secs(30));
    let stdout = herd.proc.stdout();
    for (what, pid) in workers.iter().map(|&w| ("worker", w)).chain([("master", g1.pid)]) {
        let mark = std::fs::read_to_string(marks.join(format!("exit-{pid}"))).unwrap_or_default();
        if mark != "exit handler ran\n" {
            herd.fail(&format!("drained {what} {pid} did not run its exit handler (mark {mark:?})"));
        }
        if !stdout.contains(&format!("app: exit handler of {pid} ran")) {
            herd.fail(&format!("what {what} {pid}'s exit handler printed was lost; stdout: {stdout:?}"));
        }
    }
    let master_exit = format!("generation 1 (pid {}", g1.pid);
    let logged = herd.proc.stderr();
    let line = logged.lines().find(|l| l.contains(&master_exit) && l.contains(" exited: "));
    if !line.is_some_and(|l| l.contains("exited: exit status 0 after")) {
        herd.fail(&format!("the old master should have exited with status 0: {line:?}"));
    }
    eprintln!("drained workers {workers:?} and master {}: exit handlers ran, their output was flushed", g1.pid);
}

/// The master's `on_exit` hook (contrib/gunicorn/gunicorn.conf.py) reads the status gunicorn's
/// `halt()` is about to exit with from halt's frame, as gunicorn gives the hook none. Called from
/// a function named `halt`, it ends the process with that status, after the exit handlers and
/// with stdout flushed, and nothing after the hook runs; called from anywhere else, it returns
/// and the exit stays Python's. The config is run as Python runs it, with stand-ins for halt.
#[test]
fn the_gunicorn_masters_exit_hook_ends_it_with_halts_status_only_from_halt() {
    require_server!(Server::Gunicorn);
    let script = r#"
import atexit, runpy, sys
conf = runpy.run_path(sys.argv[1])
atexit.register(lambda: print("exit handler ran"))
def halt(reason=None, exit_status=0):
    conf["on_exit"](None)
    print("went on after the hook")
def stop(exit_status=0):
    conf["on_exit"](None)
    print("went on after the hook")
{"halt": halt, "stop": stop}[sys.argv[2]](exit_status=int(sys.argv[3]))
sys.exit(7)
"#;
    let config = contrib("gunicorn/gunicorn.conf.py");
    for (caller, status, code, printed) in [
        ("halt", "3", 3, "exit handler ran\n"),
        ("halt", "0", 0, "exit handler ran\n"),
        ("stop", "3", 7, "went on after the hook\nexit handler ran\n"),
    ] {
        let out = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(&config)
            .args([caller, status])
            .env_remove("PYTHONUNBUFFERED")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            (out.status.code(), stdout.as_ref()),
            (Some(code), printed),
            "on_exit called from {caller}() with exit_status {status}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// ----- 2. a broken release rolls back without a failed request ---------------------------------------

const BROKEN_READY_TIMEOUT: Duration = Duration::from_secs(8);

/// `expected` are fragments the failure message must contain (why the new generation failed).
fn broken_release_rolls_back(server: Server, expected: &[&str]) {
    let deploy = Deploy::new(&format!("broken-{}", server.flavor()), &["r1", "r2"]);
    std::fs::write(deploy.release("r2").join("BROKEN"), "").unwrap();
    let timeout_arg = format!("{}s", BROKEN_READY_TIMEOUT.as_secs());
    let mut herd = Herd::start_server(&deploy, server, &["--ready-timeout", &timeout_arg], &[]);
    herd.wait_serving(Duration::from_secs(30));
    let g1 = herd.wait_settled(Duration::from_secs(10));

    let traffic = Traffic::start(&herd, 1, Duration::from_millis(5));
    // The loop runs before the reload starts...
    std::thread::sleep(Duration::from_millis(200));
    deploy.flip("r2");
    let reload_started = Instant::now();
    let run = herd.reload(BROKEN_READY_TIMEOUT + Duration::from_secs(20));
    let reload_ended = Instant::now();
    // ...and goes on after it ended.
    std::thread::sleep(Duration::from_millis(500));
    let samples = traffic.finish();

    if run.status.success() {
        herd.fail(&format!("reloading into a broken release must fail: {run:?}"));
    }
    // Why it failed, not how fast: the new generation exited (the fragments below), it was not
    // killed at the ready timeout.
    if run.stderr.contains("not ready within") {
        herd.fail(&format!(
            "the reload should fail because the broken generation exited, not at the ready timeout: {run:?}"
        ));
    }
    let mut fragments = vec!["reload failed:", "generation 2", "still serving"];
    fragments.extend_from_slice(expected);
    for fragment in &fragments {
        if !run.stderr.contains(fragment) {
            herd.fail(&format!("`sockherd reload` should say {fragment:?}: {run:?}"));
        }
    }
    if !run.stderr.contains(&format!("generation 1 (pid {}", g1.pid)) {
        herd.fail(&format!("the failure should name generation 1 (pid {}) as still serving: {run:?}", g1.pid));
    }

    let failed = failures(&samples);
    let foreign: Vec<&Sample> =
        samples.iter().filter(|s| s.result.as_ref().is_ok_and(|a| a.release != "r1" || a.master != g1.pid)).collect();
    let during = samples.iter().filter(|s| s.at >= reload_started && s.at <= reload_ended).count();
    eprintln!(
        "{}: failed reload took {:?}; {} requests ({during} during the reload), {} failed, {} not from r1",
        server.flavor(),
        run.took,
        samples.len(),
        failed.len(),
        foreign.len()
    );
    if !failed.is_empty() || !foreign.is_empty() {
        herd.fail(&format!(
            "every request must be answered by r1 (master {}): failed {failed:?}; other answers {foreign:?}",
            g1.pid
        ));
    }
    if during < 3 {
        herd.fail(&format!("the request loop barely ran during the reload ({during} requests)"));
    }

    let status = herd.status();
    let last = status.last_reload();
    if last.get("ok").bool() != Some(false) || !last.get("message").str().unwrap_or("").contains("still serving") {
        herd.fail(&format!("status should show the failed reload: {:?}", status.0));
    }
    if !status.0.get("status").str().unwrap_or("").contains("reload failed") {
        herd.fail(&format!("the status line should mention the failed reload: {:?}", status.0));
    }
    // The broken generation is gone; generation 1 still serves, from r1.
    let g = herd.wait_settled(Duration::from_secs(10));
    if g.number != 1 || g.pid != g1.pid {
        herd.fail(&format!("generation 1 should still serve alone: {g:?}"));
    }
    let answers = herd.answers(3);
    if answers.iter().any(|a| a.release != "r1") {
        herd.fail(&format!("r1 should still answer: {answers:?}"));
    }
}

#[test]
fn broken_release_rolls_back_gunicorn() {
    require_server!(Server::Gunicorn);
    // Its workers fail to import the app; the master gives up and exits by itself.
    broken_release_rolls_back(Server::Gunicorn, &["exited with", "before it was ready"]);
}

#[test]
fn broken_release_rolls_back_unicorn() {
    require_server!(Server::Unicorn);
    // contrib's config preloads the app in the master, which fails to load it and exits.
    broken_release_rolls_back(Server::Unicorn, &["exited with", "before it was ready"]);
}

#[test]
fn broken_release_rolls_back_puma() {
    require_server!(Server::Puma);
    // contrib's config preloads the app (preload_app!): the master fails to load it and exits.
    broken_release_rolls_back(Server::Puma, &["exited with", "before it was ready"]);
}

// ----- 3. a release that never gets ready is killed at the ready timeout -------------------------------

/// Every descendant of sockherd outside generation 1's process group: what the reload started.
fn new_processes(herd: &Herd, g1: i32) -> Vec<i32> {
    descendants(herd.pid()).into_iter().filter(|&p| pgid(p) != Some(g1)).collect()
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " ").trim().to_string())
        .unwrap_or_default()
}

/// Starts a reload that cannot succeed, collects the processes it started once `complete`
/// says they are all there, and checks it is killed at `timeout` while generation 1 serves on.
/// Returns the reload client's run.
fn reload_times_out(
    herd: &Herd,
    timeout: Duration,
    g1: &Generation,
    complete: impl Fn(&Status, &[i32]) -> bool,
) -> ClientRun {
    let started = Instant::now();
    let client = herd.spawn_client("reload");
    let mut new = Vec::new();
    // Until shortly before the deadline: under load, a server started through a launcher shim
    // can take a while to show all its processes.
    let collected = wait_until(timeout.saturating_sub(Duration::from_millis(500)), || {
        let status = herd.status();
        new = new_processes(herd, g1.pid);
        status.generation(2).is_some_and(|g| g.state == "starting") && complete(&status, &new)
    });
    if !collected {
        herd.fail(&format!("the new generation never showed all its processes: {new:?}"));
    }
    let described: Vec<String> = new.iter().map(|&p| format!("{p} ({})", cmdline(p))).collect();
    let run = herd.finish_client(client, started, timeout + Duration::from_secs(20));
    if run.status.success() {
        herd.fail(&format!("a reload whose generation never gets ready must fail: {run:?}"));
    }
    // Not before the timeout (a lower bound cannot flake on a loaded machine); that it was the
    // timeout is said by the message, checked next.
    if run.took < timeout {
        herd.fail(&format!("the reload failed after {:?}, before the {timeout:?} ready timeout: {run:?}", run.took));
    }
    let expected = format!("not ready within {}s", timeout.as_secs());
    for fragment in ["reload failed:", "generation 2", &expected, "still serving"] {
        if !run.stderr.contains(fragment) {
            herd.fail(&format!("`sockherd reload` should say {fragment:?}: {run:?}"));
        }
    }
    // Everything the reload started is gone once sockherd forgot the generation.
    let g = herd.wait_settled(Duration::from_secs(10));
    if g.pid != g1.pid {
        herd.fail(&format!("generation 1 should still serve: {g:?}"));
    }
    let leftovers = still_alive(&new);
    if !leftovers.is_empty() {
        herd.fail(&format!("processes of the failed generation survived: {leftovers:?} of {described:?}"));
    }
    eprintln!("never ready: reload failed after {:?}; killed {described:?}", run.took);
    run
}

#[test]
fn hung_boot_is_killed_at_the_ready_timeout() {
    require_server!(Server::Gunicorn);
    // The release decides how it starts (bin/start in capistrano terms): r2's app hangs 120 s
    // in its import, so gunicorn's workers never answer the probe.
    let deploy = Deploy::new("hung", &["r1", "r2"]);
    let conf = contrib("gunicorn/gunicorn.conf.py");
    for (release, sleep) in [("r1", 0), ("r2", 120)] {
        let script = deploy.release(release).join("start");
        std::fs::write(
            &script,
            format!("#!/bin/sh\nAPP_BOOT_SLEEP={sleep} exec python3 -m gunicorn -c '{}' app:app\n", conf.display()),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    // Long enough for generation 1, and for generation 2 to show its processes, on a loaded
    // machine; short enough to wait for.
    let timeout = Duration::from_secs(20);
    let current = deploy.current().display().to_string();
    let mut herd = Herd::start(
        deploy.path(),
        &["--flavor", "gunicorn", "--chdir", &current, "--ready-timeout", "20s"],
        &["./start".to_string()],
        &[],
    );
    herd.wait_serving(Duration::from_secs(10));
    let g1 = herd.wait_settled(Duration::from_secs(10));

    deploy.flip("r2");
    // gunicorn: the master and its 2 workers, all in the generation's process group and running
    // the same python as generation 1's master.
    let python = exe(g1.pid);
    reload_times_out(&herd, timeout, &g1, |status, new| {
        status.generation(2).is_some_and(|g2| members_running(new, g2.pid, &python) == 3)
    });
    let answers = herd.answers(3);
    if answers.iter().any(|a| a.release != "r1" || a.master != g1.pid) {
        herd.fail(&format!("generation 1 (r1) should still answer: {answers:?}"));
    }
}

#[test]
fn hung_readiness_command_is_killed_with_its_generation() {
    require!("python3");
    // Generation 1 passes the check at once; generation 2's check hangs.
    let dir = TempDir::new("hung-cmd");
    let report = dir.join("report.json").display().to_string();
    let timeout = Duration::from_secs(10);
    let mut herd = Herd::start(
        dir.path(),
        &["--ready", "cmd:test \"$SOCKHERD_GENERATION\" = 1 || exec sleep 120", "--ready-timeout", "10s"],
        &[probe().display().to_string(), report, "serve".to_string()],
        &[],
    );
    herd.wait_serving(Duration::from_secs(10));
    let g1 = herd.wait_settled(Duration::from_secs(10));

    // The new server (python running probe.py, like generation 1) and its check command
    // (`sleep`, in a process group of its own).
    let python = exe(g1.pid);
    let run = reload_times_out(&herd, timeout, &g1, |status, new| {
        let Some(g2) = status.generation(2) else { return false };
        members_running(new, g2.pid, &python) == 1 && new.iter().any(|&p| cmdline(p).starts_with("sleep 120"))
    });
    // The command was started and was still running at the timeout: the message should say
    // so, not that it never ran.
    if run.stderr.contains("not run yet") {
        herd.fail(&format!(
            "the failure says the readiness command did not run, but it ran (and hung) until the timeout: {}",
            run.stderr.trim()
        ));
    }
    let body = http_get(&herd.addr, "/").map(|r| r.body).unwrap_or_default();
    if body.trim() != format!("probe {}", g1.pid) {
        herd.fail(&format!("generation 1 (pid {}) should still answer: {body:?}", g1.pid));
    }
}

// ----- 4. reload requests during a handoff coalesce into one follow-up ---------------------------------

/// gunicorn whose app import is held while a hold file exists (APP_BOOT_HOLD, contrib/app/app.py):
/// generation 1 boots freely; a generation started while the file exists stays starting until
/// the test removes it, however fast or slow the machine is.
struct Held {
    // Dropped in this order: the service stops before its directory goes.
    herd: Herd,
    hold: PathBuf,
    _deploy: Deploy,
}

impl Held {
    fn start(tag: &str, extra: &[&str]) -> Held {
        let deploy = Deploy::new(tag, &["r1"]);
        let hold = deploy.path().join("hold");
        let hold_arg = hold.display().to_string();
        let mut herd = Herd::start_server(&deploy, Server::Gunicorn, extra, &[("APP_BOOT_HOLD", &hold_arg)]);
        herd.wait_serving(Duration::from_secs(30));
        herd.wait_settled(Duration::from_secs(30));
        std::fs::write(&hold, "").unwrap();
        Held { herd, hold, _deploy: deploy }
    }

    fn release(&self) {
        let _ = std::fs::remove_file(&self.hold);
    }

    /// How many reload requests sockherd queued behind the handoff in flight (its log).
    fn queued(&self) -> usize {
        self.herd.proc.stderr().matches("reload requested while a handoff is in flight").count()
    }
}

#[test]
fn concurrent_reload_clients_coalesce() {
    require_server!(Server::Gunicorn);
    let held = Held::start("coalesce-clients", &[]);
    let herd = &held.herd;
    // Three deploys at once: one handoff starts (generation 2, held), the two others are queued
    // behind it and covered by a single follow-up.
    let started = Instant::now();
    let clients: Vec<Proc> = (0..3).map(|_| herd.spawn_client("reload")).collect();
    if !wait_until(Duration::from_secs(30), || held.queued() == 2) {
        herd.fail(&format!(
            "two of three concurrent reloads should be queued behind the first; queued {}",
            held.queued()
        ));
    }
    held.release();
    let runs: Vec<ClientRun> =
        clients.into_iter().map(|c| herd.finish_client(c, started, Duration::from_secs(120))).collect();
    let status = herd.wait_settled(Duration::from_secs(60));
    let status_json = herd.status();
    let mut covered = Vec::new();
    for run in &runs {
        if !run.status.success() {
            herd.fail(&format!("every concurrent `sockherd reload` should succeed: {runs:#?}"));
        }
        let number = run
            .stderr
            .split("reload succeeded: generation ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok());
        covered.push(number.unwrap_or(0));
    }
    covered.sort();
    if covered != [2, 3, 3] {
        herd.fail(&format!(
            "the first request should be covered by generation 2 and the two others by one follow-up, \
             generation 3; the answers name {covered:?}: {runs:#?}"
        ));
    }
    let started_gens = herd.started_generations();
    if started_gens != [1, 2, 3] || status.number != 3 {
        herd.fail(&format!(
            "exactly 2 new generations should start for 3 concurrent reloads; started {started_gens:?}; status {:?}",
            status_json.0
        ));
    }
}

#[test]
fn sighups_during_a_handoff_coalesce() {
    require_server!(Server::Gunicorn);
    let held = Held::start("coalesce-hup", &[]);
    let herd = &held.herd;
    herd.signal(libc::SIGHUP);
    let ok = wait_until(Duration::from_secs(30), || herd.started_generations().contains(&2));
    if !ok {
        herd.fail("SIGHUP did not start generation 2");
    }
    // Three more while generation 2 is held in its boot: one follow-up reload for all of them.
    // Each is sent once the previous one was seen (the kernel merges a signal sent while the
    // same one is still pending).
    for sent in 1..=3 {
        herd.signal(libc::SIGHUP);
        if !wait_until(Duration::from_secs(30), || held.queued() == sent) {
            herd.fail(&format!("SIGHUP {sent} during the handoff should be queued; queued {}", held.queued()));
        }
    }
    let status = herd.status();
    if status.generation(2).map(|g| g.state) != Some("starting".into()) {
        herd.fail(&format!("generation 2 should still be starting (held): {:?}", status.0));
    }
    held.release();
    let status = herd.wait_status("generation 3 serving, no handoff in flight", Duration::from_secs(60), |s| {
        s.state() == "running" && s.serving().is_some_and(|g| g.number >= 3)
    });
    let started_gens = herd.started_generations();
    if started_gens != [1, 2, 3] || status.serving().map(|g| g.number) != Some(3) {
        herd.fail(&format!(
            "SIGHUPs during a handoff should start exactly one follow-up generation; started {started_gens:?}; \
             status {:?}",
            status.0
        ));
    }
}

// ----- 5. SIGTERM during a handoff stops both generations --------------------------------------------

#[test]
fn sigterm_during_a_handoff_stops_both_generations() {
    require_server!(Server::Gunicorn);
    let mut held = Held::start("term-handoff", &["--stop-timeout", "30s"]);
    let started = Instant::now();
    let client = held.herd.spawn_client("reload");
    // Generation 2 is booting (its workers are held in the import): master + 2 workers.
    let mut family = Vec::new();
    let ok = wait_until(Duration::from_secs(30), || {
        let status = held.herd.status();
        family = descendants(held.herd.pid());
        let (Some(g1), Some(g2)) = (status.serving(), status.generation(2)) else { return false };
        let python = exe(g1.pid);
        g2.state == "starting"
            && members_running(&family, g1.pid, &python) == 3
            && members_running(&family, g2.pid, &python) == 3
    });
    if !ok {
        held.herd.fail(&format!("never saw both generations complete while generation 2 starts: {family:?}"));
    }
    held.herd.signal(libc::SIGTERM);
    // The held workers finish their import, see they were told to stop, and exit.
    held.release();
    let herd = &mut held.herd;
    let Some(status) = herd.proc.wait_timeout(Duration::from_secs(90)) else {
        herd.fail("sockherd did not exit after SIGTERM (its stop timeout is 30s)");
    };
    if status.code() != Some(0) {
        herd.fail(&format!(
            "sockherd should exit 0 when the serving generation stops cleanly, got {status:?} (signal {:?})",
            status.signal()
        ));
    }
    let leftovers = still_alive(&family);
    if !leftovers.is_empty() {
        let described: Vec<String> = leftovers.iter().map(|&p| format!("{p} ({})", cmdline(p))).collect();
        herd.fail(&format!("processes left after sockherd exited: {described:?}"));
    }
    let run = herd.finish_client(client, started, Duration::from_secs(30));
    if run.status.success() || !run.stderr.contains("stopping") {
        herd.fail(&format!("the pending `sockherd reload` should fail, saying the service stops: {run:?}"));
    }
    if herd.proc.stderr().contains("sending SIGKILL") {
        herd.fail("the stop needed SIGKILL: the generations should have stopped on SIGTERM");
    }
}

// ----- 6. many reloads leak nothing --------------------------------------------------------------------

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

fn vm_rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn runtime_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// How much sockherd's RSS may grow over 200 reloads: a leak of a few hundred bytes per reload
/// (a generation's record, a socket's state) would exceed it; allocator noise does not.
const RSS_GROWTH_KIB: u64 = 1024;

/// 200 reloads with readiness `ready`, of tests/support/gated_http.py, which answers its probe
/// socket and sends READY=1 at once: afterwards sockherd has the same fds, descendants and
/// runtime-directory files as before, and its RSS grew by less than RSS_GROWTH_KIB.
fn reloads_leak_nothing(ready: &str) {
    require!("python3");
    const RELOADS: u64 = 200;
    let dir = TempDir::new(&format!("many-{}", ready.replace(':', "-")));
    let report = dir.join("report");
    std::fs::write(report.with_extension("probe"), "").unwrap();
    std::fs::write(report.with_extension("notify"), "").unwrap();
    let runtime = dir.join("runtime");
    std::fs::create_dir(&runtime).unwrap();
    let runtime_arg = runtime.display().to_string();
    let server = repo().join("tests/support/gated_http.py").display().to_string();
    let mut herd = Herd::start(
        dir.path(),
        &["--ready", ready, "--ready-settle", "0"],
        &["python3".to_string(), server, report.display().to_string()],
        &[("RUNTIME_DIRECTORY", &runtime_arg)],
    );
    herd.wait_serving(Duration::from_secs(30));
    let first = herd.wait_settled(Duration::from_secs(30));
    let ours = runtime.join(format!("sockherd-{}", herd.pid()));
    // The generation's own server answers (its start-up, and any launcher shim, is over).
    let answers_itself = |pid: i32| http_get(&herd.addr, "/").is_ok_and(|r| r.body.trim() == format!("gated {pid}"));
    if !wait_until(Duration::from_secs(30), || answers_itself(first.pid)) {
        herd.fail(&format!("generation 1 (pid {}) never answered", first.pid));
    }
    let (fds_before, procs_before, rss_before, files_before) =
        (fd_count(herd.pid()), descendants(herd.pid()).len(), vm_rss_kib(herd.pid()), runtime_files(&ours));
    if !files_before.iter().any(|f| f == "control") {
        herd.fail(&format!("{} should hold the control socket, has {files_before:?}", ours.display()));
    }

    let started = Instant::now();
    for i in 0..RELOADS {
        let run = herd.reload(Duration::from_secs(60));
        if !run.status.success() {
            herd.fail(&format!("reload {} of {RELOADS} failed: {run:?}", i + 1));
        }
    }
    let reloads_took = started.elapsed();
    let last = herd.wait_settled(Duration::from_secs(60));
    if last.number != RELOADS + 1 {
        herd.fail(&format!("generation {} should serve after {RELOADS} reloads: {last:?}", RELOADS + 1));
    }
    if !wait_until(Duration::from_secs(30), || answers_itself(last.pid)) {
        herd.fail(&format!("the last generation (pid {}) never answered", last.pid));
    }
    let (fds_after, procs_after, rss_after, files_after) =
        (fd_count(herd.pid()), descendants(herd.pid()).len(), vm_rss_kib(herd.pid()), runtime_files(&ours));
    eprintln!(
        "--ready {ready}: {RELOADS} reloads in {reloads_took:?}; sockherd fds {fds_before} -> {fds_after}; \
         descendants {procs_before} -> {procs_after}; VmRSS {rss_before} KiB -> {rss_after} KiB; runtime files \
         {files_before:?} -> {files_after:?} ({} build)",
        if cfg!(debug_assertions) { "debug" } else { "release" }
    );
    // The control socket, and the notify and probe sockets named after their generation:
    // compare counts, and that none is left of an old generation.
    let current = [format!("notify.{}", last.number), format!("probe.{}", last.number), "control".to_string()];
    let stale: Vec<&String> = files_after.iter().filter(|f| !current.contains(f)).collect();
    if fds_after != fds_before
        || procs_after != procs_before
        || files_after.len() != files_before.len()
        || !stale.is_empty()
    {
        let fds: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", herd.pid()))
            .map(|d| d.flatten().map(|e| format!("{:?}", std::fs::read_link(e.path()).unwrap_or_default())).collect())
            .unwrap_or_default();
        herd.fail(&format!(
            "{RELOADS} reloads with --ready {ready} leaked: fds {fds_before} -> {fds_after} ({fds:?}), descendants \
             {procs_before} -> {procs_after}, runtime files {files_before:?} -> {files_after:?}"
        ));
    }
    if rss_after > rss_before + RSS_GROWTH_KIB {
        herd.fail(&format!(
            "sockherd's RSS grew from {rss_before} KiB to {rss_after} KiB over {RELOADS} reloads with --ready {ready} \
             (bound: {RSS_GROWTH_KIB} KiB)"
        ));
    }
}

#[test]
fn two_hundred_reloads_leak_nothing_with_exec() {
    reloads_leak_nothing("exec");
}

/// A probe generation gets a probe socket of its own each time (sockherd keeps no copy).
#[test]
fn two_hundred_reloads_leak_nothing_with_probe() {
    reloads_leak_nothing("probe");
}

/// A notify generation gets a notify socket file in the runtime directory each time: each goes
/// with its generation.
#[test]
fn two_hundred_reloads_leak_nothing_with_notify() {
    reloads_leak_nothing("notify");
}

// ----- 7. the serving generation crashing takes the service down ---------------------------------------

#[test]
fn crash_of_the_serving_generation_exits_nonzero() {
    require_server!(Server::Gunicorn);
    let deploy = Deploy::new("crash", &["r1"]);
    let mut herd = Herd::start_server(&deploy, Server::Gunicorn, &[], &[]);
    herd.wait_serving(Duration::from_secs(20));
    let g1 = herd.wait_settled(Duration::from_secs(10));
    let mut family = Vec::new();
    let python = exe(g1.pid);
    let complete = wait_until(Duration::from_secs(10), || {
        family = descendants(herd.pid());
        members_running(&family, g1.pid, &python) == 3
    });
    if !complete {
        herd.fail(&format!("generation 1 never showed its master and 2 workers: {family:?}"));
    }
    send_signal(g1.pid, libc::SIGKILL);
    let status = herd.proc.wait_exit(Duration::from_secs(30));
    if status.code() != Some(137) {
        herd.fail(&format!("sockherd should exit 137 (128 + SIGKILL) when its server is killed: {status:?}"));
    }
    if !herd.proc.stderr().contains("exited on its own") {
        herd.fail("sockherd should say the serving generation exited on its own");
    }
    let leftovers = still_alive(&family);
    if !leftovers.is_empty() {
        herd.fail(&format!("processes left after sockherd exited: {leftovers:?}"));
    }
}
