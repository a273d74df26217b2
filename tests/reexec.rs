//! `sockherd reexec`: the supervisor re-executes a new sockherd binary in place (same pid), the
//! serving generation untouched and no request lost; binaries that cannot take over are refused
//! and leave it as it was; a reexec waits for a handoff in flight; signals and control requests
//! that arrive during the exec are not lost.
//!
//! A second build is the test binary with its `.sockherd_build` section stamped (objcopy), so it
//! names itself `sockherd 0.1.0 (build second)`: another file with another version string.
//! Supervisors here bind their own sockets (`--listen`); tests/systemd_reexec.rs does the same
//! under real systemd with the shipped units.
mod common;

use common::run::status_json;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Two builds, each named `sockherd` in a directory of its own: `a` as built, `b` stamped.
struct Builds {
    dir: TempDir,
}

impl Builds {
    fn new(tag: &str) -> Option<Builds> {
        if !prerequisite(have("objcopy"), "program objcopy in PATH (binutils)") {
            return None;
        }
        let dir = TempDir::new(tag);
        for name in ["a", "b"] {
            std::fs::create_dir_all(dir.join(name)).unwrap();
        }
        std::fs::copy(sockherd(), dir.join("a/sockherd")).unwrap();
        let mut label = b"second".to_vec();
        label.resize(64, 0);
        std::fs::write(dir.join("label"), label).unwrap();
        let out = std::process::Command::new("objcopy")
            .arg(format!("--update-section=.sockherd_build={}", dir.join("label").display()))
            .arg(sockherd())
            .arg(dir.join("b/sockherd"))
            .output()
            .unwrap();
        assert!(out.status.success(), "objcopy failed: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::copy(dir.join("b/sockherd"), dir.join("b-pristine")).unwrap();
        Some(Builds { dir })
    }

    fn a(&self) -> PathBuf {
        self.dir.join("a/sockherd")
    }

    fn b(&self) -> PathBuf {
        self.dir.join("b/sockherd")
    }

    /// Replaces the file at `path` (a or b) by a copy of `with`, renamed over it.
    fn replace(&self, path: &Path, with: &Path) {
        let staged = path.with_extension("new");
        std::fs::copy(with, &staged).unwrap();
        std::fs::rename(&staged, path).unwrap();
    }

    /// What the file at `path` (a or b) holds as made.
    fn pristine(&self, path: &Path) -> PathBuf {
        if path == self.a() { sockherd() } else { self.dir.join("b-pristine") }
    }

    /// A script standing in for another build, in the builds' directory.
    fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, format!("#!/bin/bash\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }
}

const VERSION_A: &str = concat!("sockherd ", env!("CARGO_PKG_VERSION"));
const VERSION_B: &str = concat!("sockherd ", env!("CARGO_PKG_VERSION"), " (build second)");

/// `<build>/sockherd run --listen 127.0.0.1:<free> --listen <dir>/app.sock <extra> -- <command>`.
struct Herd {
    proc: Proc,
    addr: String,
    sock: PathBuf,
}

impl Herd {
    fn start(binary: &Path, dir: &Path, extra: &[&str], command: &[&str]) -> Herd {
        let addr = format!("127.0.0.1:{}", free_port());
        let sock = dir.join("app.sock");
        let mut cmd = sockherd_cmd_of(binary, &["run", "--listen", &addr, "--listen", &sock.display().to_string()]);
        cmd.args(extra).arg("--").args(command);
        // The runtime directory (and its control socket) in the test's directory.
        cmd.env("XDG_RUNTIME_DIR", dir).env_remove("RUNTIME_DIRECTORY");
        let mut proc = Proc::spawn(cmd, dir, "sockherd");
        let deadline = Duration::from_secs(30);
        common::run::wait_generations(&mut proc, "a generation serving", deadline, |g| {
            g.iter().any(|g| g.state == "serving")
        });
        Herd { proc, addr, sock }
    }

    fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// (version, reexecs, serving generation's (number, pid)).
    fn state(&self) -> (String, u64, Option<(u64, i32)>) {
        let Some(json) = status_json(self.pid()) else { self.proc.fail("status did not answer") };
        let serving = json
            .get("generations")
            .arr()
            .iter()
            .find(|g| g.get("state").str() == Some("serving"))
            .map(|g| (g.get("number").num().unwrap_or(0.0) as u64, g.get("pid").num().unwrap_or(0.0) as i32));
        (json.get("version").str().unwrap_or("").to_string(), json.get("reexecs").num().unwrap_or(-1.0) as u64, serving)
    }

    /// `sockherd reexec --pid <us> [--binary B]`: (success, stderr).
    fn reexec(&self, binary: Option<&Path>) -> (bool, String) {
        let pid = self.pid().to_string();
        let mut args = vec!["reexec", "--pid", &pid, "--timeout", "60s"];
        let shown;
        if let Some(b) = binary {
            shown = b.display().to_string();
            args.extend(["--binary", &shown]);
        }
        let out = sockherd_cmd(&args).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Fresh-connection request loops over TCP and the unix socket until stopped, counting what
/// failed.
struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<(usize, Vec<String>)>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(herd: &Herd, per_socket: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new((0, Vec::new())));
        let mut threads = Vec::new();
        for i in 0..per_socket * 2 {
            let (stop, tally, addr, sock) = (stop.clone(), tally.clone(), herd.addr.clone(), herd.sock.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let result = if i % 2 == 0 { http_get(&addr, "/") } else { http_get_unix(&sock, "/") };
                    let mut t = tally.lock().unwrap();
                    match result {
                        Ok(r) if r.status == 200 => t.0 += 1,
                        Ok(r) => t.1.push(format!("HTTP {}", r.status)),
                        Err(e) => t.1.push(e.to_string()),
                    }
                }
            }));
        }
        Load { stop, tally, threads }
    }

    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        Arc::try_unwrap(self.tally).ok().unwrap().into_inner().unwrap()
    }
}

fn app() -> PathBuf {
    contrib("app")
}

#[test]
fn ten_reexecs_under_load_lose_no_request_and_keep_pid_and_generation() {
    require!("unicorn");
    let Some(builds) = Builds::new("reexec-ten") else { return };
    let dir = TempDir::new("reexec-ten-run");
    let conf = contrib("unicorn/unicorn.conf.rb").display().to_string();
    let chdir = app().display().to_string();
    let herd = Herd::start(
        &builds.a(),
        dir.path(),
        &["--flavor", "unicorn", "--chdir", &chdir],
        &["unicorn", "-c", &conf, "config.ru"],
    );
    let (version, reexecs, serving) = herd.state();
    assert_eq!((version.as_str(), reexecs), (VERSION_A, 0));
    let serving = serving.expect("a serving generation");
    let load = Load::start(&herd, 2);
    std::thread::sleep(Duration::from_millis(300));
    for i in 1..=10u64 {
        // Alternately build b and build a: by path, and every third time without a path, after
        // the file at the path sockherd was started from was replaced the way a package upgrade
        // replaces it (a new file renamed over the name).
        let (binary, expect) = if i % 2 == 1 { (builds.b(), VERSION_B) } else { (builds.a(), VERSION_A) };
        let (ok, stderr) = if i % 3 == 0 {
            // The path of the running image (it reads "... (deleted)" once replaced).
            let link = std::fs::read_link(format!("/proc/{}/exe", herd.pid())).unwrap();
            let running = PathBuf::from(link.to_string_lossy().trim_end_matches(" (deleted)"));
            builds.replace(&running, &builds.pristine(&binary));
            let result = herd.reexec(None);
            builds.replace(&running, &builds.pristine(&running));
            result
        } else {
            herd.reexec(Some(&binary))
        };
        assert!(ok && stderr.contains("took over from"), "reexec {i} to {} failed: {stderr}", binary.display());
        assert_eq!(herd.state().0, expect, "reexec {i}");
        let (_, reexecs, now) = herd.state();
        assert_eq!(reexecs, i, "reexec {i}: the count");
        assert_eq!(now, Some(serving), "reexec {i}: the serving generation changed");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ok, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during 10 reexecs: {:?}",
        failures.len(),
        ok + failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 50, "only {ok} requests were made");
    // A reload afterwards: a new generation on the same sockets.
    let out = sockherd_cmd(&["reload", "--pid", &herd.pid().to_string()]).output().unwrap();
    assert!(out.status.success(), "reload after the reexecs failed: {}", String::from_utf8_lossy(&out.stderr));
    let (_, _, after) = herd.state();
    assert!(after.is_some_and(|(n, p)| n == serving.0 + 1 && p != serving.1), "after the reload: {after:?}");
    assert!(http_get(&herd.addr, "/").is_ok_and(|r| r.status == 200));
}

#[test]
fn binaries_that_cannot_take_over_are_refused_and_change_nothing() {
    require!("python3");
    let Some(builds) = Builds::new("reexec-refused") else { return };
    let dir = TempDir::new("reexec-refused-run");
    let chdir = app().display().to_string();
    let herd = Herd::start(&builds.a(), dir.path(), &["--chdir", &chdir], &["python3", "serve.py"]);
    let before = herd.state();
    let not_executable = builds.dir.join("not-executable");
    std::fs::copy(builds.b(), &not_executable).unwrap();
    std::fs::set_permissions(&not_executable, std::fs::Permissions::from_mode(0o644)).unwrap();
    let real = sockherd().display().to_string();
    let cases: Vec<(&str, PathBuf, &str)> = vec![
        ("not executable", not_executable, "Permission denied"),
        ("not sockherd", PathBuf::from("/bin/true"), "without an answer"),
        ("missing", builds.dir.join("no-such-file"), "No such file"),
        (
            "another state version",
            builds.script("older", "echo 'refuses state version 1: sockherd 0.0.9 reads versions 0 to 0'; exit 1"),
            "refuses state version 1",
        ),
        // Accepts, then is gone by the time of the exec (an upgrade in between).
        ("gone at exec", builds.script("vanishing", "chmod -x \"$0\"; echo 'accepts sockherd 9.9'"), "failed to execute"),
        // Accepts, then refuses the command line once executed: the old image runs again.
        (
            "refuses after the exec",
            builds.script(
                "refusing",
                &format!(
                    "if [ \"$1\" = reexec-check ]; then echo 'accepts sockherd 9.9'; exit 0; fi\nexec {real} \"$1\" --ready nonsense \"${{@:2}}\""
                ),
            ),
            "the old one resumed",
        ),
    ];
    for (what, binary, says) in cases {
        let (ok, stderr) = herd.reexec(Some(&binary));
        assert!(!ok, "{what}: reexec to {} succeeded: {stderr}", binary.display());
        assert!(stderr.contains(says), "{what}: expected {says:?} in: {stderr}");
        let now = herd.state();
        assert_eq!((now.0.as_str(), now.2), (before.0.as_str(), before.2), "{what}: the supervisor changed");
        assert!(http_get(&herd.addr, "/").is_ok_and(|r| r.status == 200), "{what}: not serving");
        assert!(http_get_unix(&herd.sock, "/").is_ok_and(|r| r.status == 200), "{what}: not serving on unix");
    }
    // And it still re-executes when given a build that can.
    let (ok, stderr) = herd.reexec(Some(&builds.b()));
    assert!(ok, "{stderr}");
    assert_eq!(herd.state().0, VERSION_B);
}

/// Build a supervising with a readiness delay of `delay` seconds, and a `sockherd reload` under
/// way (its second generation started, not yet ready): the herd, the generation serving before
/// the reload, the reload's client.
fn reload_in_flight(builds: &Builds, dir: &TempDir, delay: u32) -> (Herd, Option<(u64, i32)>, std::process::Child) {
    let chdir = app().display().to_string();
    let ready = format!("delay:{delay}");
    let herd = Herd::start(
        &builds.a(),
        dir.path(),
        &["--chdir", &chdir, "--ready", &ready, "--ready-settle", "0"],
        &["python3", "serve.py"],
    );
    let (_, _, first) = herd.state();
    let pid = herd.pid().to_string();
    let reload = sockherd_cmd(&["reload", "--pid", &pid]).stderr(std::process::Stdio::piped()).spawn().unwrap();
    assert!(wait_until(Duration::from_secs(5), || herd.state().2.is_some() && generations_of(&herd) >= 2));
    (herd, first, reload)
}

#[test]
fn a_reexec_during_a_handoff_waits_for_it_to_end() {
    require!("python3");
    let Some(builds) = Builds::new("reexec-wait") else { return };
    let dir = TempDir::new("reexec-wait-run");
    let (herd, first, reload) = reload_in_flight(&builds, &dir, 2);
    let asked = Instant::now();
    let (ok, stderr) = herd.reexec(Some(&builds.b()));
    let reload = reload.wait_with_output().unwrap();
    assert!(reload.status.success(), "the reload failed: {}", String::from_utf8_lossy(&reload.stderr));
    assert!(ok, "{stderr}");
    // It waited for the new generation's 2 s readiness delay.
    assert!(asked.elapsed() >= Duration::from_millis(1000), "the reexec did not wait: {:?}", asked.elapsed());
    let (version, _, serving) = herd.state();
    assert_eq!(version, VERSION_B);
    assert!(serving.is_some_and(|s| Some(s) != first), "generation 2 should serve: {serving:?}");
    assert!(herd.proc.stderr().contains("reexec: waiting for the handoff in flight to end"), "{}", herd.proc.stderr());
}

/// A client that gives up before the handoff ends does not cancel the reexec: it says so (not
/// "failed"), and the supervisor re-executes when the handoff ends.
#[test]
fn a_reexec_that_outlasts_its_client_still_happens_when_the_handoff_ends() {
    require!("python3");
    let Some(builds) = Builds::new("reexec-outlast") else { return };
    let dir = TempDir::new("reexec-outlast-run");
    let (herd, _, reload) = reload_in_flight(&builds, &dir, 3);
    let pid = herd.pid().to_string();
    let b = builds.b().display().to_string();
    let out = sockherd_cmd(&["reexec", "--pid", &pid, "--binary", &b, "--timeout", "1s"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("reexec not done yet: the supervisor") && stderr.contains("carries it out once no handoff"),
        "{stderr}"
    );
    assert_eq!(herd.state().0, VERSION_A, "not yet: the handoff is in flight");
    let reload = reload.wait_with_output().unwrap();
    assert!(reload.status.success(), "the reload failed: {}", String::from_utf8_lossy(&reload.stderr));
    assert!(
        wait_until(Duration::from_secs(10), || herd.state().0 == VERSION_B),
        "the reexec was not performed after the handoff: {}",
        herd.proc.stderr()
    );
    assert_eq!(herd.state().1, 1);
}

/// An install through a symlink (`/usr/local/bin/sockherd -> /opt/sockherd-1.2/sockherd`), which
/// an upgrade points at the new version: a plain reexec runs what the link points to now, not
/// the target the supervisor was started from.
#[test]
fn a_plain_reexec_follows_the_symlink_the_supervisor_was_started_through() {
    require!("python3");
    let Some(builds) = Builds::new("reexec-symlink") else { return };
    let dir = TempDir::new("reexec-symlink-run");
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    let link = dir.join("bin/sockherd");
    let point = |target: &Path| {
        let staged = dir.join("bin/sockherd.new");
        let _ = std::fs::remove_file(&staged);
        std::os::unix::fs::symlink(target, &staged).unwrap();
        std::fs::rename(&staged, &link).unwrap();
    };
    point(&builds.a());
    let chdir = app().display().to_string();
    let herd = Herd::start(&link, dir.path(), &["--chdir", &chdir], &["python3", "serve.py"]);
    assert_eq!(herd.state().0, VERSION_A);
    point(&builds.b());
    let (ok, stderr) = herd.reexec(None);
    assert!(ok, "{stderr}");
    assert_eq!(herd.state().0, VERSION_B, "the link's new target");
    // And the link again, not b's file, after that exec.
    point(&builds.a());
    let (ok, stderr) = herd.reexec(None);
    assert!(ok, "{stderr}");
    assert_eq!(herd.state().0, VERSION_A, "the link's target after a second upgrade");
}

fn generations_of(herd: &Herd) -> usize {
    common::run::generations(herd.pid()).len()
}

#[test]
fn the_reexec_signal_and_a_half_sent_request_cross_the_exec() {
    require!("python3");
    let Some(builds) = Builds::new("reexec-signal") else { return };
    let dir = TempDir::new("reexec-signal-run");
    let chdir = app().display().to_string();
    let herd = Herd::start(&builds.a(), dir.path(), &["--chdir", &chdir], &["python3", "serve.py"]);
    // Half a request on the control socket, then a reexec by signal (SIGRTMIN+25): the rest of
    // the request is answered by the new image.
    let control = control_socket(dir.path(), herd.pid());
    let mut stream = std::os::unix::net::UnixStream::connect(&control).unwrap();
    use std::io::{Read, Write};
    stream.write_all(b"sta").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    herd.proc.signal(libc::SIGRTMIN() + 25);
    assert!(wait_until(Duration::from_secs(10), || herd.state().1 == 1), "SIGRTMIN+25 did not re-execute");
    stream.write_all(b"tus\n").unwrap();
    let mut answer = String::new();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.contains("\"reexecs\":1"), "the request half sent before the exec: {answer:?}");
}

#[test]
fn a_reexec_without_a_binary_runs_the_path_started_from_after_one_with_a_binary() {
    require!("python3");
    let Some(builds) = Builds::new("reexec-path") else { return };
    let dir = TempDir::new("reexec-path-run");
    let chdir = app().display().to_string();
    let herd = Herd::start(&builds.a(), dir.path(), &["--chdir", &chdir], &["python3", "serve.py"]);
    // A build tried from elsewhere, then the upgrade's own reexec: the file at the path the
    // supervisor was started from (build a), not the one the last reexec named again.
    let (ok, stderr) = herd.reexec(Some(&builds.b()));
    assert!(ok && herd.state().0 == VERSION_B, "{stderr}");
    let (ok, stderr) = herd.reexec(None);
    assert!(ok, "{stderr}");
    assert!(stderr.contains(&format!("{VERSION_A} took over from {VERSION_B}")), "{stderr}");
    let (version, reexecs, _) = herd.state();
    assert_eq!((version.as_str(), reexecs), (VERSION_A, 2));
    // And so on after that one (the path crossed two execs).
    let (ok, stderr) = herd.reexec(Some(&builds.b()));
    assert!(ok, "{stderr}");
    let (ok, stderr) = herd.reexec(None);
    assert!(ok && stderr.contains(&format!("{VERSION_A} took over from {VERSION_B}")), "{stderr}");
}

#[test]
fn a_stop_asked_during_the_exec_is_a_clean_stop() {
    require!("python3");
    let Some(builds) = Builds::new("reexec-stop") else { return };
    let chdir = app().display().to_string();
    // A SIGTERM sent while the reexec is under way must wait for the new image's handlers, never
    // end sockherd by the signal's default action. The exec takes milliseconds: a few rounds with
    // the signal at different moments.
    for round in 0..4u64 {
        let dir = TempDir::new("reexec-stop-run");
        let mut herd = Herd::start(&builds.a(), dir.path(), &["--chdir", &chdir], &["python3", "serve.py"]);
        let pid = herd.pid().to_string();
        let b = builds.b().display().to_string();
        let client = sockherd_cmd(&["reexec", "--pid", &pid, "--binary", &b])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(2 + round * 3));
        herd.proc.signal(15);
        let status = herd.proc.wait_exit(Duration::from_secs(30));
        let _ = { client }.wait();
        assert_eq!(
            status.signal(),
            None,
            "round {round}: sockherd died of a signal: {status:?}\n{}",
            herd.proc.stderr()
        );
        assert_eq!(status.code(), Some(0), "round {round}: {status:?}\n{}", herd.proc.stderr());
    }
}

/// The control socket of the supervisor `pid` started in `dir` ([`Herd::start`]).
fn control_socket(dir: &Path, pid: i32) -> PathBuf {
    dir.join(format!("sockherd-{pid}")).join("control")
}

/// `sockherd run ... -- python3 serve.py` through bash, which first opens `redirect` (e.g.
/// `5< <(sleep 60)`) and sets SOCKHERD_REEXEC_STATE to `value`: a variable left in an
/// environment by mistake, naming whatever that descriptor is.
fn run_with_stale_state(dir: &Path, redirect: &str, value: &std::ffi::OsStr) -> (Proc, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = std::process::Command::new("bash");
    cmd.arg("-c").arg(format!("exec {redirect}; exec \"$0\" \"$@\"")).arg(sockherd());
    cmd.args(["run", "--listen", &addr, "--chdir", &app().display().to_string(), "--", "python3", "serve.py"]);
    cmd.env("XDG_RUNTIME_DIR", dir).env_remove("RUNTIME_DIRECTORY").env("SOCKHERD_REEXEC_STATE", value);
    for var in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_PIDFDID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "JOURNAL_STREAM"] {
        cmd.env_remove(var);
    }
    (Proc::spawn(cmd, dir, "sockherd"), addr)
}

/// A SOCKHERD_REEXEC_STATE that names nothing a supervisor handed over (no descriptor, a pipe of
/// someone else's with junk or with its writer still open, a file, a value that is not UTF-8)
/// does not prevent a start, never hangs it and never panics: the start is a first start, and
/// the variable is named in a warning.
#[test]
fn a_stale_state_variable_is_ignored_by_a_first_start() {
    use std::os::unix::ffi::OsStrExt;
    require!("python3");
    let cases: [(&str, &str, &[u8]); 6] = [
        ("no descriptor", "7</dev/null; exec 7<&-", b"7"),
        ("a state for another pid", "5< <(printf 'sockherd-reexec-state 1\\n{\"pid\":1}\\n'); wait $!", b"5"),
        ("a pipe with junk", "5< <(echo junk)", b"5"),
        ("a pipe whose writer stays open", "5< <(sleep 60)", b"5,6"),
        ("a regular file", "5</etc/passwd", b"5"),
        ("not UTF-8", "5</dev/null", b"5\xff"),
    ];
    for (what, redirect, value) in cases {
        let dir = TempDir::new("reexec-stale");
        let (mut proc, addr) = run_with_stale_state(dir.path(), redirect, std::ffi::OsStr::from_bytes(value));
        let served = wait_until(Duration::from_secs(30), || {
            proc.try_status().is_some() || http_get(&addr, "/").is_ok_and(|r| r.status == 200)
        });
        if !served || proc.try_status().is_some() {
            proc.fail(&format!("{what}: a stale SOCKHERD_REEXEC_STATE prevented the start"));
        }
        let stderr = proc.stderr();
        assert!(stderr.contains("ignoring SOCKHERD_REEXEC_STATE"), "{what}: no warning: {stderr}");
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    }
    // A state of sockherd's written for this very pid is a handover, even a damaged one: no
    // first start then, a precise error (bash's `exec` keeps its pid, `$$`). Its writer has
    // exited first (`wait $!` waits for the process substitution), as a handing-over image
    // always has: a writer still running makes it someone else's pipe, ignored above.
    let dir = TempDir::new("reexec-stale");
    let redirect = "5< <(printf 'sockherd-reexec-state 1\\n{\"pid\":%d}\\n' $$); wait $!";
    let (mut proc, _) = run_with_stale_state(dir.path(), redirect, std::ffi::OsStr::new("5"));
    let status = proc.wait_exit(Duration::from_secs(10));
    let stderr = proc.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot resume from the state the image before handed over: no generation"), "{stderr}");
    // A command line that does not parse is refused by the parser's own message, whatever the
    // stale variable names.
    for value in [&b"junk"[..], b"\xff", b"5"] {
        let out = sockherd_cmd(&["status", "--bogus"])
            .env("SOCKHERD_REEXEC_STATE", std::ffi::OsStr::from_bytes(value))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{value:?}: {stderr}");
        assert!(
            stderr.contains("unexpected argument '--bogus'") && !stderr.contains("panicked"),
            "{value:?}: {stderr}"
        );
    }
}

/// A check command (`--ready cmd:`) started by a re-executed supervisor gets no variable of the
/// handover: it names descriptors that are not the command's (and, to a sockherd it runs, a
/// state that is not its own).
#[test]
fn a_check_command_after_a_reexec_gets_nothing_of_the_handover() {
    require!("python3");
    let Some(builds) = Builds::new("reexec-check-env") else { return };
    let dir = TempDir::new("reexec-check-env-run");
    let chdir = app().display().to_string();
    let env_file = dir.join("env");
    let ready = format!("cmd:env > {}.$SOCKHERD_GENERATION", env_file.display());
    let herd = Herd::start(&builds.a(), dir.path(), &["--chdir", &chdir, "--ready", &ready], &["python3", "serve.py"]);
    let (ok, stderr) = herd.reexec(Some(&builds.b()));
    assert!(ok, "{stderr}");
    let out = sockherd_cmd(&["reload", "--pid", &herd.pid().to_string()]).output().unwrap();
    assert!(out.status.success(), "reload: {}", String::from_utf8_lossy(&out.stderr));
    let env = std::fs::read_to_string(format!("{}.2", env_file.display())).expect("generation 2's check ran");
    assert!(env.contains("SOCKHERD_GENERATION=2"), "{env}");
    assert!(!env.contains("SOCKHERD_REEXEC"), "the check command got the handover's variables:\n{env}");
}

/// After a new binary could not take over and the old image resumed, the path a plain `reexec`
/// uses is still the path sockherd runs from, not the kernel's "PATH (deleted)" of the old file
/// an upgrade replaced: a fixed upgrade at that path is taken.
#[test]
fn after_a_failed_takeover_a_plain_reexec_takes_the_binary_installed_now() {
    require!("python3");
    let Some(builds) = Builds::new("reexec-deleted") else { return };
    let dir = TempDir::new("reexec-deleted-run");
    let chdir = app().display().to_string();
    let herd = Herd::start(&builds.a(), dir.path(), &["--chdir", &chdir], &["python3", "serve.py"]);
    let real = sockherd().display().to_string();
    let refusing = builds.script(
        "refusing",
        &format!(
            "if [ \"$1\" = reexec-check ]; then echo 'accepts sockherd 9.9'; exit 0; fi\nexec {real} \"$1\" --ready nonsense \"${{@:2}}\""
        ),
    );
    // An upgrade installs a build that refuses the command line once executed.
    builds.replace(&builds.a(), &refusing);
    let (ok, stderr) = herd.reexec(None);
    assert!(!ok && stderr.contains("the old one resumed"), "{stderr}");
    // The fixed upgrade.
    builds.replace(&builds.a(), &builds.pristine(&builds.b()));
    let (ok, stderr) = herd.reexec(None);
    assert!(ok, "a plain reexec after the failed one: {stderr}");
    assert_eq!(herd.state().0, VERSION_B);
}

/// The serving master dying while a reexec that then fails was under way (here: during the new
/// binary's check) is noticed at once by the old image, as it is without a reexec: the service
/// stops with the master's status instead of staying up with nothing serving.
#[test]
fn a_master_that_dies_during_a_failed_reexec_is_noticed() {
    require!("python3");
    let Some(builds) = Builds::new("reexec-master-dies") else { return };
    let dir = TempDir::new("reexec-master-dies-run");
    let chdir = app().display().to_string();
    let mut herd = Herd::start(&builds.a(), dir.path(), &["--chdir", &chdir], &["python3", "serve.py"]);
    let (_, _, serving) = herd.state();
    let master = serving.expect("a serving generation").1;
    // Accepts after a second, and is no longer executable by the time of the exec.
    let slow = builds.script("slow", "sleep 1; chmod -x \"$0\"; echo 'accepts sockherd 9.9'");
    let pid = herd.pid().to_string();
    let client = sockherd_cmd(&["reexec", "--pid", &pid, "--binary", &slow.display().to_string()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let _ = std::process::Command::new("kill").arg("-9").arg(master.to_string()).status();
    let answer = client.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&answer.stderr).contains("failed to execute"), "{answer:?}");
    let Some(status) = herd.proc.wait_timeout(Duration::from_secs(10)) else {
        herd.proc.fail("the master died during the reexec, and the supervisor did not notice")
    };
    assert_eq!(status.code(), Some(128 + 9), "{status:?}\n{}", herd.proc.stderr());
    assert!(herd.proc.stderr().contains("exited on its own"), "{}", herd.proc.stderr());
}
