//! The control channel against other local users: nobody can pose as a supervisor, take its
//! name first, exhaust it, or make `sockherd reload` signal a supervisor; an unreachable
//! supervisor is an error that says why.
//!
//! Hostile processes run as user nobody (setpriv), from `tests/support/impostor.py`.
mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const NOBODY: &str = "65534";
/// The system's python: other users cannot run root's (a pyenv shim under /root, say).
const PYTHON: &str = "/usr/bin/python3";

fn impostor() -> PathBuf {
    repo().join("tests/support/impostor.py")
}

/// `setpriv` to user nobody, then `program`.
fn as_nobody(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([&format!("--reuid={NOBODY}"), &format!("--regid={NOBODY}"), "--clear-groups"]).arg(program);
    cmd
}

/// A test directory nobody may write into (reports, the servers' files).
fn shared_dir(tag: &str) -> TempDir {
    let dir = TempDir::new(tag);
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// `sockherd run --ready exec --listen <addr> -- python3 probe.py <dir>/report.json serve`.
fn supervisor(dir: &Path, addr: &str) -> Command {
    let mut cmd = sockherd_cmd(&["run", "--ready", "exec", "--listen", addr, "--", PYTHON]);
    cmd.arg(probe()).arg(dir.join("report.json")).arg("serve");
    cmd
}

fn reload(pid: i32, extra: &[&str]) -> Output {
    let pid = pid.to_string();
    let mut args = vec!["reload", "--pid", &pid, "--timeout", "60s"];
    args.extend_from_slice(extra);
    sockherd_cmd(&args).output().unwrap()
}

fn wait_for_file(proc: &mut Proc, path: &Path, what: &str) {
    if !wait_until(Duration::from_secs(20), || path.exists() || proc.try_status().is_some()) || !path.exists() {
        proc.fail(&format!("{what} never appeared ({})", path.display()));
    }
}

/// A process of another user binds the abstract name sockherd 0.1 listened on,
/// `@sockherd/<pid>/control`, for a pid where no supervisor runs. `sockherd reload --pid` must
/// not take its "ok" for a reload: the pid is not a supervisor, and the command says so.
#[test]
fn impostor_on_the_old_abstract_name_is_not_believed() {
    require!(PYTHON, "setpriv");
    require!(root);
    let dir = shared_dir("impostor");
    // Stands for a native-mode master: a process where no supervisor listens.
    let target = Proc::spawn(
        {
            let mut cmd = Command::new("python3");
            cmd.args(["-c", "import signal; signal.pause()"]);
            cmd
        },
        dir.path(),
        "target",
    );
    let ready = dir.join("impostor.ready");
    let mut cmd = as_nobody(PYTHON);
    cmd.arg(impostor()).arg("abstract").arg(format!("sockherd/{}/control", target.pid())).arg(&ready);
    let mut fake = Proc::spawn(cmd, dir.path(), "impostor");
    wait_for_file(&mut fake, &ready, "the impostor's socket");
    let out = reload(target.pid(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || stderr.contains("reload succeeded") || stderr.contains("impostor") {
        fake.fail(&format!("`sockherd reload` believed the impostor: {:?}\n{stderr}", out.status));
    }
    if !stderr.contains("is not a sockherd supervisor") || !stderr.contains("--native") {
        fake.fail(&format!("the refusal must say the pid is no supervisor and name --native: {stderr}"));
    }
}

/// A shell that execs `sockherd run ...` once the file `go` exists: the supervisor's pid is
/// known (the shell's) before it starts.
fn supervisor_after_go(dir: &Path, addr: &str) -> Proc {
    let inner = supervisor(dir, addr);
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(r#"while [ ! -e go ]; do sleep 0.05; done; exec "$0" "$@""#).arg(inner.get_program());
    cmd.args(inner.get_args());
    for var in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "JOURNAL_STREAM", "WATCHDOG_USEC"] {
        cmd.env_remove(var);
    }
    cmd.current_dir(dir);
    Proc::spawn(cmd, dir, "sockherd")
}

/// Another user takes `@sockherd/<pid>/control` before sockherd starts with that pid: sockherd
/// starts anyway (sockherd 0.1 failed to bind its control socket and exited), and a reload
/// reaches it, not the impostor.
#[test]
fn a_control_name_taken_before_start_is_not_fatal() {
    require!(PYTHON, "setpriv");
    require!(root);
    let dir = shared_dir("taken-name");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut proc = supervisor_after_go(dir.path(), &addr);
    let ready = dir.join("impostor.ready");
    let mut cmd = as_nobody(PYTHON);
    cmd.arg(impostor()).arg("abstract").arg(format!("sockherd/{}/control", proc.pid())).arg(&ready);
    let mut fake = Proc::spawn(cmd, dir.path(), "impostor");
    wait_for_file(&mut fake, &ready, "the impostor's socket");
    std::fs::write(dir.join("go"), "").unwrap();
    wait_http_ok(&mut proc, &addr, Duration::from_secs(20));
    let out = reload(proc.pid(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || stderr.contains("impostor") || !proc.stderr().contains("started generation 2") {
        proc.fail(&format!("the reload did not reach the real supervisor: {:?}\n{stderr}", out.status));
    }
}

/// Another user creates the directory sockherd 0.1 used as its runtime directory when neither
/// $RUNTIME_DIRECTORY nor $XDG_RUNTIME_DIR is set (`/tmp/sockherd.<pid>`) before a supervisor
/// of a third user starts with that pid: it starts anyway, in a directory nobody could guess.
#[test]
fn a_runtime_directory_taken_before_start_is_not_fatal() {
    require!(PYTHON, "setpriv");
    require!(root);
    let dir = shared_dir("taken-dir");
    let addr = format!("127.0.0.1:{}", free_port());
    // The supervisor runs as nobody; the squatter as daemon (uid 1).
    let inner = supervisor(dir.path(), &addr);
    let mut cmd = Command::new("setpriv");
    cmd.args([&format!("--reuid={NOBODY}"), &format!("--regid={NOBODY}"), "--clear-groups", "sh", "-c"])
        .arg(r#"while [ ! -e go ]; do sleep 0.05; done; exec "$0" "$@""#)
        .arg(inner.get_program())
        .args(inner.get_args())
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("RUNTIME_DIRECTORY")
        .env_remove("TMPDIR")
        .current_dir(dir.path());
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    let squatted = PathBuf::from(format!("/tmp/sockherd.{}", proc.pid()));
    let made = Command::new("setpriv")
        .args(["--reuid=1", "--regid=1", "--clear-groups", "mkdir", "-m", "0755"])
        .arg(&squatted)
        .status()
        .unwrap();
    if !made.success() {
        proc.fail(&format!("could not create {} as uid 1", squatted.display()));
    }
    std::fs::write(dir.join("go"), "").unwrap();
    let served = wait_until(Duration::from_secs(20), || {
        matches!(http_get(&addr, "/"), Ok(r) if r.status == 200) || proc.try_status().is_some()
    });
    let _ = std::fs::remove_dir(&squatted);
    if !served || proc.try_status().is_some() {
        proc.fail(&format!("a directory made by another user at {} stopped sockherd", squatted.display()));
    }
}

/// The supervisor runs in another network namespace (an abstract socket name, sockherd 0.1's
/// control channel, is invisible there; its own command line mentions unicorn): `sockherd
/// reload` from here reaches it and the reload succeeds. sockherd 0.1 fell back to driving
/// "unicorn" natively and sent the supervisor SIGUSR2, which killed it.
#[test]
fn reload_reaches_a_supervisor_in_another_network_namespace() {
    require!("python3", "unshare");
    require!(root);
    let dir = TempDir::new("unicorn-netns");
    let sock = dir.join("app.sock");
    let inner = {
        let mut cmd = sockherd_cmd(&["run", "--ready", "exec", "--listen"]);
        cmd.arg(&sock).arg("--").arg(probe()).arg(dir.join("report.json")).arg("serve");
        cmd
    };
    let mut cmd = Command::new("unshare");
    cmd.args(["--net", "--"]).arg(inner.get_program()).args(inner.get_args());
    for var in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "JOURNAL_STREAM", "WATCHDOG_USEC"] {
        cmd.env_remove(var);
    }
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    wait_http_ok_unix(&mut proc, &sock, Duration::from_secs(20));
    let out = reload(proc.pid(), &[]);
    if !out.status.success() || proc.try_status().is_some() || !proc.stderr().contains("started generation 2") {
        proc.fail(&format!(
            "reload across network namespaces: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    wait_http_ok_unix(&mut proc, &sock, Duration::from_secs(20));
}

/// Native mode signals the server's master with USR2: never a sockherd. `--flavor unicorn`
/// without `--native` is a usage error; with it, the pid of a live `sockherd run` is refused.
/// Neither the supervisor nor its server gets any signal.
#[test]
fn native_reload_never_signals_a_supervisor() {
    require!("python3");
    let dir = TempDir::new("native-guard");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = sockherd_cmd(&["run", "--ready", "exec", "--listen", &addr, "--", "python3"]);
    cmd.arg(repo().join("tests/support/signal_logger.py")).arg(dir.join("server.pid"));
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    wait_for_file(&mut proc, &dir.join("server.pid"), "the server's pid file");
    for extra in [&["--flavor", "unicorn"][..], &["--native", "--flavor", "unicorn"], &["--native"]] {
        let out = reload(proc.pid(), extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            proc.fail(&format!("reload {extra:?} of a supervisor succeeded: {stderr}"));
        }
        if extra.contains(&"--native") && !stderr.contains("runs sockherd") {
            proc.fail(&format!("reload {extra:?}: the refusal must say the pid runs sockherd: {stderr}"));
        }
    }
    std::thread::sleep(Duration::from_millis(300)); // a signal sent would have arrived by now
    if proc.try_status().is_some() || dir.join("server.pid.signals").exists() {
        proc.fail(&format!(
            "a native reload signalled the supervisor or its server (signals: {:?})",
            std::fs::read_to_string(dir.join("server.pid.signals")).ok()
        ));
    }
    let out = reload(proc.pid(), &[]);
    if !out.status.success() {
        proc.fail(&format!("the supervisor no longer reloads: {}", String::from_utf8_lossy(&out.stderr)));
    }
}

/// `sockherd reload --pid` of a process that is no supervisor fails, says so and names
/// `--native`, and leaves the process alone: it is never driven natively unless asked.
#[test]
fn reload_of_a_plain_process_is_an_error_not_a_native_upgrade() {
    require!("python3");
    let dir = TempDir::new("plain-unicorn");
    let mut cmd = Command::new("python3");
    cmd.arg(repo().join("tests/support/signal_logger.py")).arg(dir.join("unicorn.pid"));
    let mut server = Proc::spawn(cmd, dir.path(), "unicorn-master");
    wait_for_file(&mut server, &dir.join("unicorn.pid"), "the server's pid file");
    let out = reload(server.pid(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() != Some(1) || !stderr.contains("not a sockherd supervisor") || !stderr.contains("--native") {
        server.fail(&format!("reload of a plain process: {:?}\n{stderr}", out.status));
    }
    std::thread::sleep(Duration::from_millis(300));
    if server.try_status().is_some() || dir.join("unicorn.pid.signals").exists() {
        server.fail("the plain process was signalled");
    }
}

/// Clock ticks of CPU time (user + system) a process has used, from /proc/PID/stat.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    // After the comm: state is field 0, utime 11, stime 12.
    let get = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

fn ticks_per_second() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().ok();
    out.and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok()).unwrap_or(100.0)
}

/// The control socket of a running supervisor: the `control` file in its runtime directory
/// (`/tmp/sockherd-<pid>-<random>/` without RUNTIME_DIRECTORY or XDG_RUNTIME_DIR), or
/// `@sockherd/<pid>/control`, where sockherd 0.1 listened.
fn control_socket(pid: i32) -> String {
    let mut found = None;
    wait_until(Duration::from_secs(5), || {
        found = std::fs::read_dir("/tmp")
            .ok()
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("sockherd-{pid}-"))))
            .map(|d| d.join("control"))
            .filter(|c| c.exists());
        found.is_some()
    });
    found.map(|p| p.display().to_string()).unwrap_or_else(|| format!("@sockherd/{pid}/control"))
}

/// A supervisor under a low descriptor limit (64) and 200 connections held on its control
/// socket by a process of its own user (who can reach it: only root and that user can). It
/// must not spin (sockherd 0.1 looped on EMFILE at ~50 % CPU, logging "accept failed" tens of
/// thousands of times a second) and a reload asked by root must still start, probe and serve a
/// new generation.
#[test]
fn control_flood_neither_spins_nor_blocks_a_reload() {
    require!(PYTHON, "setpriv", "prlimit");
    require!(root);
    let dir = shared_dir("flood");
    let addr = format!("127.0.0.1:{}", free_port());
    let inner = supervisor(dir.path(), &addr);
    let mut cmd = Command::new("prlimit");
    cmd.arg("--nofile=64:64")
        .arg("--")
        .args(["setpriv", &format!("--reuid={NOBODY}"), &format!("--regid={NOBODY}"), "--clear-groups"])
        .arg(inner.get_program())
        .args(inner.get_args())
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("RUNTIME_DIRECTORY")
        .env_remove("TMPDIR");
    for var in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "JOURNAL_STREAM", "WATCHDOG_USEC"] {
        cmd.env_remove(var);
    }
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    wait_http_ok(&mut proc, &addr, Duration::from_secs(20));
    let pid = proc.pid();
    let flood = |user_is_nobody: bool, path: String, tag: &str| {
        let report = dir.path().join(format!("{tag}.json"));
        let mut cmd = if user_is_nobody {
            as_nobody(PYTHON)
        } else {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=1", "--regid=1", "--clear-groups", PYTHON]);
            c
        };
        cmd.arg(impostor()).arg("flood").arg(path).arg("200").arg(&report);
        let mut p = Proc::spawn(cmd, dir.path(), tag);
        wait_for_file(&mut p, &report, "the flood's report");
        (p, std::fs::read_to_string(&report).unwrap())
    };
    // The service's own user can reach the socket: 200 connections held, and whatever the
    // supervisor does with them, it must stay calm.
    let (_same, same_report) = flood(true, control_socket(pid), "flood-nobody");
    eprintln!("flood by nobody: {same_report}");
    let window = Duration::from_secs(3);
    let (ticks, started) = (cpu_ticks(pid), Instant::now());
    std::thread::sleep(window);
    let used = (cpu_ticks(pid) - ticks) as f64 / ticks_per_second();
    let ratio = used / started.elapsed().as_secs_f64();
    eprintln!("sockherd used {used:.2} s of CPU in {:.1} s of flood ({ratio:.3})", started.elapsed().as_secs_f64());
    let accept_failures = proc.stderr().matches("accept failed").count();
    if ratio > 0.2 || accept_failures > 20 {
        proc.fail(&format!(
            "sockherd spins under the flood: CPU {ratio:.3} of a core, {accept_failures} accept failures"
        ));
    }
    let out = reload(pid, &[]);
    if !out.status.success() {
        proc.fail(&format!("root's reload failed during the flood: {}", String::from_utf8_lossy(&out.stderr)));
    }
    wait_http_ok(&mut proc, &addr, Duration::from_secs(20));
    // Another user cannot even connect (the directory is the service user's, 0700).
    let (_other, other_report) = flood(false, control_socket(pid), "flood-uid1");
    if !other_report.contains("\"connected\": 0") {
        proc.fail(&format!("uid 1 connected to the control socket of a supervisor running as nobody: {other_report}"));
    }
}
