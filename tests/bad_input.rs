//! Bad input: every way the environment, the command line or the file system can be wrong makes
//! the real `sockherd` binary exit cleanly with the right code and one line that names the
//! problem, without a panic, without leaving a process behind, and without touching files it has
//! no business with.
//!
//! Socket activation is faked by `tests/support/fake_activate.py`, which puts the descriptors at
//! fds 3.. and execs sockherd, so LISTEN_PID can be sockherd's own pid.
mod common;

use common::*;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Every failing run must be over well within this.
const TIMEOUT: Duration = Duration::from_secs(20);

/// Variables the test runner's own environment must not pass on (as `sockherd_cmd` does).
const FOREIGN_VARS: [&str; 6] =
    ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "JOURNAL_STREAM", "WATCHDOG_USEC"];

const FLAVORS: [&str; 7] = ["systemd", "gunicorn", "unicorn", "puma", "server-starter", "einhorn", "nginx"];

fn fake_activate() -> PathBuf {
    repo().join("tests/support/fake_activate.py")
}

static RUNS: AtomicU32 = AtomicU32::new(0);

/// One test's world: a temp dir whose `out/` holds captured output, `cwd/` is sockherd's working
/// directory, and everything else belongs to the test. Every process started for the test
/// carries `SOCKHERD_TEST_MARK=<mark>` (inherited by anything it starts), so leftovers can be
/// found by their environment.
struct Case {
    dir: TempDir,
    out: PathBuf,
    cwd: PathBuf,
    mark: String,
}

/// How a run to completion went.
struct Outcome {
    description: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Case {
    fn new(tag: &str) -> Case {
        let dir = TempDir::new(tag);
        let out = dir.join("out");
        let cwd = dir.join("cwd");
        std::fs::create_dir(&out).unwrap();
        std::fs::create_dir(&cwd).unwrap();
        let mark = format!("bad-input-{tag}-{}-{}", std::process::id(), RUNS.fetch_add(1, Ordering::SeqCst));
        Case { dir, out, cwd, mark }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// `sockherd ARGS...`, marked, in `cwd/`.
    fn sockherd(&self, args: &[&str]) -> Command {
        let mut cmd = sockherd_cmd(args);
        cmd.env("SOCKHERD_TEST_MARK", &self.mark).current_dir(&self.cwd);
        cmd
    }

    /// `fake_activate.py FAKE... -- sockherd ARGS...`: sockherd exec'd with activated fds.
    fn activated(&self, fake: &[&str], args: &[&str]) -> Command {
        let mut cmd = Command::new("python3");
        cmd.arg(fake_activate()).args(fake).arg("--").arg(sockherd()).args(args);
        for var in FOREIGN_VARS {
            cmd.env_remove(var);
        }
        cmd.env("SOCKHERD_TEST_MARK", &self.mark).current_dir(&self.cwd);
        cmd
    }

    fn spawn(&self, cmd: Command) -> Proc {
        let tag = format!("run{}", RUNS.fetch_add(1, Ordering::SeqCst));
        Proc::spawn(cmd, &self.out, &tag)
    }

    /// Runs `cmd` to completion and checks that the files of the test directory are exactly as
    /// before and that no process of this test is left.
    fn run(&self, cmd: Command) -> Outcome {
        let before = snapshot(self.dir.path());
        let outcome = self.run_changing_files(cmd);
        let after = snapshot(self.dir.path());
        if before != after {
            outcome.fail(&format!(
                "sockherd changed files it had no business with:\nbefore: {before:#?}\nafter: {after:#?}"
            ));
        }
        outcome
    }

    /// Like `run`, without the check on files (the caller checks what should have changed).
    fn run_changing_files(&self, cmd: Command) -> Outcome {
        let mut proc = self.spawn(cmd);
        let status = proc.wait_exit(TIMEOUT);
        let outcome =
            Outcome { description: proc.description.clone(), status, stdout: proc.stdout(), stderr: proc.stderr() };
        self.assert_nothing_left(&outcome.description);
        outcome
    }

    /// Fails (after killing them) if processes started for this test are still alive.
    fn assert_nothing_left(&self, what: &str) {
        let mut left = marked_processes(&self.mark);
        // A process that is exiting right now may need a moment to be gone.
        if !left.is_empty() && wait_until(Duration::from_secs(2), || marked_processes(&self.mark).is_empty()) {
            left.clear();
        }
        if !left.is_empty() {
            let described: Vec<String> = left.iter().map(|p| describe_process(*p)).collect();
            for pid in &left {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
            panic!("{what} left processes behind: {described:?}");
        }
    }
}

impl Outcome {
    fn fail(&self, message: &str) -> ! {
        panic!(
            "{message}\n--- command: {}\n--- status: {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.description, self.status, self.stdout, self.stderr
        );
    }

    fn check_clean(&self) {
        if self.stderr.contains("panicked") || self.stderr.contains("RUST_BACKTRACE") {
            self.fail("sockherd panicked");
        }
        if self.status.code().is_none() {
            self.fail("sockherd was killed by a signal instead of exiting");
        }
    }

    /// sockherd's own error: exit `code`, nothing on stdout, and exactly one
    /// `sockherd: error: ` line on stderr, which contains every one of `words`. Other stderr
    /// lines may only be sockherd's own informational lines.
    fn expect_error(&self, code: i32, words: &[&str]) -> &Outcome {
        self.check_clean();
        if self.status.code() != Some(code) {
            self.fail(&format!("expected exit code {code}"));
        }
        if !self.stdout.is_empty() {
            self.fail("expected nothing on stdout");
        }
        let errors: Vec<&str> = self.stderr.lines().filter(|l| l.starts_with("sockherd: error: ")).collect();
        if errors.len() != 1 {
            self.fail(&format!("expected exactly one 'sockherd: error: ' line, got {}", errors.len()));
        }
        if let Some(stray) = self.stderr.lines().find(|l| !l.starts_with("sockherd: ")) {
            self.fail(&format!("stderr has a line that is not sockherd's: {stray:?}"));
        }
        if self.stderr.lines().any(|l| l.starts_with("sockherd: warning: ")) {
            self.fail("a failed start should not also warn");
        }
        for word in words {
            if !errors[0].contains(word) {
                self.fail(&format!("the error line does not mention {word:?}"));
            }
        }
        self
    }

    /// A clap usage error: exit 2, nothing on stdout, stderr starts with an `error:` line, and
    /// the error (its first line, or the lines up to the blank line / usage) contains `words`.
    fn expect_usage_error(&self, first_line_only: bool, words: &[&str]) -> &Outcome {
        self.check_clean();
        if self.status.code() != Some(2) {
            self.fail("expected exit code 2 (usage error)");
        }
        if !self.stdout.is_empty() {
            self.fail("expected nothing on stdout");
        }
        let first = self.stderr.lines().next().unwrap_or_default();
        if !first.starts_with("error:") {
            self.fail("the first stderr line should start with 'error:'");
        }
        let error: String = if first_line_only {
            first.to_string()
        } else {
            self.stderr.lines().take_while(|l| !l.is_empty() && !l.starts_with("Usage:")).collect::<Vec<_>>().join("\n")
        };
        for word in words {
            if !error.contains(word) {
                self.fail(&format!("the error does not mention {word:?}"));
            }
        }
        self
    }
}

/// Every file under `dir` except the captured output: path → (type, inode, size, mtime, content).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path == dir.join("out") {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let kind = if meta.is_dir() {
                stack.push(path.clone());
                "dir"
            } else if meta.file_type().is_symlink() {
                "symlink"
            } else if meta.is_file() {
                "file"
            } else {
                "other"
            };
            let content = if meta.is_file() && meta.len() < 4096 {
                std::fs::read_to_string(&path).unwrap_or_default()
            } else {
                String::new()
            };
            let info = format!(
                "{kind} ino={} size={} mtime={}.{} mode={:o} {content:?}",
                meta.ino(),
                meta.len(),
                meta.mtime(),
                meta.mtime_nsec(),
                meta.mode()
            );
            out.insert(path, info);
        }
    }
    out
}

/// Living processes whose environment has `SOCKHERD_TEST_MARK=<mark>`.
fn marked_processes(mark: &str) -> Vec<i32> {
    let needle = format!("SOCKHERD_TEST_MARK={mark}");
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|var| var == needle.as_bytes()) && pid_alive(pid) {
            out.push(pid);
        }
    }
    out
}

fn describe_process(pid: i32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    format!("{pid}: {}", String::from_utf8_lossy(&cmdline).replace('\0', " "))
}

/// Writes `content` to `path` with permissions `mode`.
fn write_file(path: &Path, content: &str, mode: u32) {
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Reads the probe's JSON report once it exists.
fn wait_report(proc: &mut Proc, report: &Path) -> String {
    if !wait_until(Duration::from_secs(10), || report.exists() || proc.try_status().is_some()) || !report.exists() {
        proc.fail("the probe never wrote its report");
    }
    std::fs::read_to_string(report).unwrap()
}

/// Stops a running sockherd with SIGTERM and expects a clean exit 0.
fn stop(proc: &mut Proc) {
    proc.signal(15);
    let status = proc.wait_exit(Duration::from_secs(10));
    if status.code() != Some(0) {
        proc.fail("sockherd did not exit 0 after SIGTERM");
    }
}

fn listen_fds(value: &str) -> String {
    format!("LISTEN_FDS={value}")
}

// ---------------------------------------------------------------------------------------------
// LISTEN_FDS / LISTEN_FDNAMES / LISTEN_PID meant for sockherd, but wrong.

#[test]
fn listen_fds_not_a_number() {
    require!("python3");
    let case = Case::new("fds-abc");
    let out = case.run(case.activated(&["--fd", "tcp", "--set", &listen_fds("abc")], &["run", "--", "true"]));
    out.expect_error(1, &["LISTEN_FDS", "'abc'", "expected a number"]);
}

#[test]
fn listen_fds_negative() {
    require!("python3");
    let case = Case::new("fds-neg");
    let out = case.run(case.activated(&["--fd", "tcp", "--set", &listen_fds("-1")], &["run", "--", "true"]));
    out.expect_error(1, &["LISTEN_FDS", "'-1'", "negative"]);
}

#[test]
fn listen_fds_huge() {
    require!("python3");
    let case = Case::new("fds-huge");
    // Beyond any integer type sockherd might parse into.
    let out = case
        .run(case.activated(&["--fd", "tcp", "--set", &listen_fds("99999999999999999999")], &["run", "--", "true"]));
    out.expect_error(1, &["LISTEN_FDS", "99999999999999999999", "out of range"]);
    // A number that parses but that no process could have open (RLIMIT_NOFILE is at most
    // fs.nr_open, about 2^30): refused before looking at 4 billion descriptors.
    let out = case.run(case.activated(&["--fd", "tcp", "--set", &listen_fds("4000000000")], &["run", "--", "true"]));
    out.expect_error(1, &["LISTEN_FDS", "4000000000", "limit"]);
}

#[test]
fn listen_fds_more_than_are_open() {
    require!("python3");
    let case = Case::new("fds-missing");
    let sock = case.path("activated.sock");
    let unix = format!("unix:{}", sock.display());
    // fds 3 (TCP) and 4 (unix) exist; LISTEN_FDS=3 promises a fd 5 that is not open.
    let cmd = case.activated(&["--fd", "tcp", "--fd", &unix, "--set", &listen_fds("3")], &["run", "--", "true"]);
    // The activator creates the unix socket's file during the run, so the directory does change.
    let out = case.run_changing_files(cmd);
    out.expect_error(1, &["LISTEN_FDS=3 promises fds 3-5, but fd 5 is not open"]);
    if !sock.exists() {
        out.fail("sockherd removed the activated unix socket's file, which is not its own");
    }
}

#[test]
fn activated_fd_is_a_regular_file() {
    require!("python3");
    let case = Case::new("fd-file");
    let file = case.path("data.txt");
    write_file(&file, "not a socket\n", 0o644);
    let out = case.run(case.activated(
        &["--fd", "tcp", "--fd", &format!("file:{}", file.display()), "--set", "LISTEN_FDNAMES=http:data"],
        &["run", "--", "true"],
    ));
    out.expect_error(1, &["activated fd 4", "data", "not a socket", "regular file"]);
}

#[test]
fn activated_fd_is_a_socket_that_does_not_listen() {
    require!("python3");
    for kind in ["unbound", "connected"] {
        let case = Case::new(&format!("fd-{kind}"));
        let out = case.run(case.activated(&["--fd", kind], &["run", "--", "true"]));
        out.expect_error(1, &["activated fd 3", "not a listening"]);
    }
}

#[test]
fn listen_fdnames_count_mismatch() {
    require!("python3");
    let case = Case::new("fdnames");
    let out = case
        .run(case.activated(&["--fd", "tcp", "--fd", "tcp", "--set", "LISTEN_FDNAMES=http"], &["run", "--", "true"]));
    out.expect_error(1, &["LISTEN_FDNAMES", "'http'", "1 name", "LISTEN_FDS=2"]);
}

#[test]
fn listen_pid_not_a_number() {
    require!("python3");
    let case = Case::new("pid-abc");
    let out = case.run(case.activated(&["--fd", "tcp", "--listen-pid", "abc"], &["run", "--", "true"]));
    out.expect_error(1, &["LISTEN_PID", "'abc'"]);
}

// ---------------------------------------------------------------------------------------------
// LISTEN_PID naming another process: the variables are not ours.

#[test]
fn listen_pid_of_another_process_without_listen_means_no_sockets() {
    require!("python3");
    let case = Case::new("pid-other");
    let other = std::process::id().to_string(); // alive, and certainly not sockherd
    let out = case.run(case.activated(&["--fd", "tcp", "--listen-pid", &other], &["run", "--", "true"]));
    out.expect_error(1, &["no sockets", &format!("LISTEN_PID={other}"), "another process", "--listen"]);
}

#[test]
fn listen_pid_of_another_process_with_listen_binds_and_serves() {
    require!("python3");
    let case = Case::new("pid-other-listen");
    let other = std::process::id().to_string();
    let addr = format!("127.0.0.1:{}", free_port());
    let report = case.path("report.json");
    // Two inherited listeners at fds 3 and 4 that are not ours: the server must get only the
    // --listen socket, at fd 3, described as one socket.
    let mut cmd = case.activated(
        &["--fd", "tcp", "--fd", "tcp", "--set", "LISTEN_FDNAMES=a:b", "--listen-pid", &other],
        &["run", "--listen", &format!("{addr},name=web"), "--"],
    );
    cmd.arg(probe()).arg(&report).arg("serve");
    let mut proc = case.spawn(cmd);
    let response = wait_http_ok(&mut proc, &addr, Duration::from_secs(10));
    if !response.body.starts_with("probe ") {
        proc.fail(&format!("unexpected answer {response:?}"));
    }
    let text = wait_report(&mut proc, &report);
    let probe_pid = text.split("\"pid\": ").nth(1).and_then(|r| r.split(',').next()).unwrap_or("?").to_string();
    for want in [
        format!("\"address\": \"{addr}\""),
        "\"LISTEN_FDS\": \"1\"".to_string(),
        "\"LISTEN_FDNAMES\": \"web\"".to_string(),
        format!("\"LISTEN_PID\": \"{probe_pid}\""),
    ] {
        if !text.contains(&want) {
            proc.fail(&format!("the probe's report lacks {want}: {text}"));
        }
    }
    if text.matches("\"fd\": ").count() != 1 {
        proc.fail(&format!("the server got other descriptors than its one socket: {text}"));
    }
    if !proc.stderr().contains(&format!("listening on {addr}")) {
        proc.fail("sockherd did not say it bound the --listen address");
    }
    stop(&mut proc);
    case.assert_nothing_left("a stopped sockherd");
}

// ---------------------------------------------------------------------------------------------
// --listen specs that do not parse: usage errors that quote the spec.

#[test]
fn unparsable_listen_specs() {
    let case = Case::new("bad-spec");
    let x = case.path("x");
    let x = x.display();
    let root_x_existed = Path::new("/x").exists();
    for (spec, why) in [
        ("nonsense".to_string(), "expected HOST:PORT"),
        ("127.0.0.1:99999".to_string(), "'99999' is not a port number"),
        ("example.com:80".to_string(), "'example.com' is not an IPv4 address"),
        ("unix:relative".to_string(), "must be absolute"),
        (format!("{x},mode=999"), "mode=999"),
        (format!("{x},bogus=1"), "unknown option 'bogus'"),
        ("/x,mode=999".to_string(), "octal"),
        ("/x,bogus=1".to_string(), "unknown option"),
        (String::new(), "empty address"),
    ] {
        let out = case.run(case.sockherd(&["run", "--listen", &spec, "--", "true"]));
        out.expect_usage_error(true, &["--listen", &format!("'{spec}'"), why]);
    }
    assert_eq!(Path::new("/x").exists(), root_x_existed, "a refused spec changed /x");
}

// ---------------------------------------------------------------------------------------------
// Addresses that cannot be bound.

#[test]
fn tcp_address_in_use() {
    let case = Case::new("tcp-in-use");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let report = case.path("report.json");
    let mut cmd = case.sockherd(&["run", "--listen", &addr, "--"]);
    cmd.arg(probe()).arg(&report);
    let out = case.run(cmd);
    out.expect_error(1, &["failed to bind", &addr, "address in use"]);
    if report.exists() {
        out.fail("the server was started although its socket could not be bound");
    }
    // Our listener is unharmed.
    std::net::TcpStream::connect(&addr).unwrap();
}

#[test]
fn unix_address_in_use() {
    let case = Case::new("unix-in-use");
    let sock = case.path("live.sock");
    let live = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let spec = sock.display().to_string();
    let out = case.run(case.sockherd(&["run", "--listen", &spec, "--", "true"]));
    out.expect_error(1, &["failed to bind", &spec, "address in use"]);
    // The socket file was left alone and still reaches our listener.
    std::os::unix::net::UnixStream::connect(&sock)
        .unwrap_or_else(|e| out.fail(&format!("the live socket no longer works: {e}")));
    drop(live);
}

#[test]
fn stale_unix_socket_is_replaced() {
    require!("python3");
    let case = Case::new("unix-stale");
    let sock = case.path("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap()); // the file stays, nobody listens
    let report = case.path("report.json");
    let mut cmd = case.sockherd(&["run", "--listen", &sock.display().to_string(), "--"]);
    cmd.arg(probe()).arg(&report).arg("serve");
    let mut proc = case.spawn(cmd);
    let response = wait_http_ok_unix(&mut proc, &sock, Duration::from_secs(10));
    if !response.body.starts_with("probe ") {
        proc.fail(&format!("unexpected answer {response:?}"));
    }
    stop(&mut proc);
    case.assert_nothing_left("a stopped sockherd");
    if sock.exists() {
        proc.fail("the socket file sockherd created in place of the stale one was left behind");
    }
}

#[test]
fn regular_file_at_unix_path_is_refused_and_untouched() {
    let case = Case::new("unix-file");
    let path = case.path("precious.txt");
    write_file(&path, "precious data\n", 0o600);
    let spec = path.display().to_string();
    // `run` compares the whole directory, inode and mtime included, before and after.
    let out = case.run(case.sockherd(&["run", "--listen", &spec, "--", "true"]));
    out.expect_error(1, &[&spec, "not a socket", "refusing"]);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious data\n");
}

/// A datagram socket at the path: connecting to it fails with another error than "refused", so
/// sockherd cannot tell whether it is in use: it refuses, and leaves it alone.
#[test]
fn datagram_socket_at_unix_path_is_refused_and_untouched() {
    let case = Case::new("unix-dgram");
    let path = case.path("dgram.sock");
    let dgram = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    let inode = std::fs::metadata(&path).unwrap().ino();
    let spec = path.display().to_string();
    let out = case.run(case.sockherd(&["run", "--listen", &spec, "--", "true"]));
    out.expect_error(1, &[&spec, "cannot tell whether the existing socket is in use"]);
    if std::fs::metadata(&path).map(|m| m.ino()).ok() != Some(inode) {
        out.fail("the datagram socket's file was replaced");
    }
    drop(dgram);
}

/// A path through a regular file (not a directory): the check for a stale socket says it cannot
/// look at the path, before anything is bound.
#[test]
fn unix_path_through_a_file_cannot_be_looked_at() {
    let case = Case::new("unix-notdir");
    let file = case.path("file");
    write_file(&file, "", 0o600);
    let spec = file.join("app.sock").display().to_string();
    let out = case.run(case.sockherd(&["run", "--listen", &spec, "--", "true"]));
    out.expect_error(1, &[&format!("failed to stat {spec}")]);
}

// ---------------------------------------------------------------------------------------------
// Other usage errors.

#[test]
fn unknown_flavor_lists_the_known_ones() {
    let case = Case::new("flavor");
    let out = case.run(case.sockherd(&["run", "--flavor", "bogus", "--listen", "127.0.0.1:0", "--", "true"]));
    let mut words = vec!["--flavor", "'bogus'"];
    words.extend(FLAVORS);
    out.expect_usage_error(true, &words);
}

#[test]
fn missing_command_is_a_usage_error() {
    let case = Case::new("no-command");
    let sock = case.path("app.sock");
    let spec = sock.display().to_string();
    for sub in ["run", "exec"] {
        // Nothing after the spec, and nothing after `--`.
        for args in [vec![sub, "--listen", &spec], vec![sub, "--listen", &spec, "--"]] {
            let out = case.run(case.sockherd(&args));
            out.expect_usage_error(false, &["required", "<COMMAND>"]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Commands that cannot run: the shell's 127 and 126.

#[test]
fn command_not_found() {
    let case = Case::new("not-found");
    for sub in ["run", "exec"] {
        for command in ["/nonexistent/server", "no-such-program-xyz"] {
            let out = case.run(case.sockherd(&[sub, "--listen", "127.0.0.1:0", "--", command, "--port", "1"]));
            out.expect_error(127, &["command not found", command]);
        }
    }
}

#[test]
fn command_not_executable() {
    let case = Case::new("not-exec");
    let script = case.path("server.sh");
    write_file(&script, "#!/bin/sh\necho should not run\n", 0o644);
    let shown = script.display().to_string();
    for sub in ["run", "exec"] {
        let out = case.run(case.sockherd(&[sub, "--listen", "127.0.0.1:0", "--", &shown]));
        out.expect_error(126, &[&shown, "not executable"]);
    }
}

#[test]
fn script_interpreter_missing() {
    let case = Case::new("no-interp");
    let script = case.path("server.sh");
    write_file(&script, "#!/nonexistent/interpreter\necho should not run\n", 0o755);
    let shown = script.display().to_string();
    for sub in ["run", "exec"] {
        let out = case.run(case.sockherd(&[sub, "--listen", "127.0.0.1:0", "--", &shown]));
        out.expect_error(127, &[&shown, "interpreter", "does not exist"]);
    }
}

#[test]
fn chdir_to_missing_directory() {
    let case = Case::new("chdir");
    let missing = case.path("releases/missing");
    let shown = missing.display().to_string();
    for sub in ["run", "exec"] {
        let out = case.run(case.sockherd(&[sub, "--chdir", &shown, "--listen", "127.0.0.1:0", "--", "true"]));
        out.expect_error(1, &["--chdir", &shown]);
    }
}

// ---------------------------------------------------------------------------------------------
// `sockherd exec` with bad activation variables.

#[test]
fn exec_with_bad_listen_fds() {
    require!("python3");
    let case = Case::new("exec-fds");
    let out = case.run(case.activated(&["--fd", "tcp", "--set", &listen_fds("abc")], &["exec", "--", "true"]));
    out.expect_error(1, &["LISTEN_FDS", "'abc'"]);
    let out = case.run(case.activated(&["--fd", "tcp", "--set", &listen_fds("2")], &["exec", "--", "true"]));
    out.expect_error(1, &["LISTEN_FDS=2", "fd 4", "not open"]);
    // --fallback does not turn broken activation variables into "not activated".
    let out = case.run(case.activated(
        &["--fd", "tcp", "--set", &listen_fds("-1")],
        &["exec", "--fallback", "--listen", "127.0.0.1:0", "--", "true"],
    ));
    out.expect_error(1, &["LISTEN_FDS", "'-1'", "negative"]);
}

// ---------------------------------------------------------------------------------------------
// A failed start must not leave behind the unix socket files sockherd created for it.

#[test]
fn failed_start_removes_the_unix_socket_it_created_run() {
    failed_start_removes_the_unix_socket_it_created("run");
}

#[test]
fn failed_start_removes_the_unix_socket_it_created_exec() {
    failed_start_removes_the_unix_socket_it_created("exec");
}

/// The command does not exist: the socket file bound for it must go again.
fn failed_start_removes_the_unix_socket_it_created(sub: &str) {
    let case = Case::new(&format!("cleanup-cmd-{sub}"));
    let sock = case.path("app.sock");
    let spec = sock.display().to_string();
    let out = case.run_changing_files(case.sockherd(&[sub, "--listen", &spec, "--", "/nonexistent/server"]));
    out.expect_error(127, &["command not found", "/nonexistent/server"]);
    expect_removed(&out, &sock);
}

#[test]
fn failed_chdir_removes_the_unix_socket_it_created_run() {
    failed_chdir_removes_the_unix_socket_it_created("run");
}

#[test]
fn failed_chdir_removes_the_unix_socket_it_created_exec() {
    failed_chdir_removes_the_unix_socket_it_created("exec");
}

/// --chdir names no directory: the socket file bound before that was noticed must go again.
fn failed_chdir_removes_the_unix_socket_it_created(sub: &str) {
    let case = Case::new(&format!("cleanup-chdir-{sub}"));
    let sock = case.path("app.sock");
    let spec = sock.display().to_string();
    let missing = case.path("missing").display().to_string();
    let out = case.run_changing_files(case.sockherd(&[sub, "--chdir", &missing, "--listen", &spec, "--", "true"]));
    out.expect_error(1, &["--chdir", &missing]);
    expect_removed(&out, &sock);
}

#[test]
fn failed_bind_removes_the_unix_socket_created_before_it() {
    let case = Case::new("cleanup-bind");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let sock = case.path("first.sock");
    let spec = sock.display().to_string();
    let out = case.run_changing_files(case.sockherd(&["run", "--listen", &spec, "--listen", &addr, "--", "true"]));
    out.expect_error(1, &["failed to bind", &addr, "address in use"]);
    expect_removed(&out, &sock);
}

fn expect_removed(out: &Outcome, sock: &Path) {
    if std::fs::symlink_metadata(sock).is_ok() {
        out.fail(&format!("sockherd failed but left behind the unix socket file it had created: {}", sock.display()));
    }
}
