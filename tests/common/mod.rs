//! Test harness: runs the real `sockherd` binary against real servers and clients.
//!
//! - `require!("tool")` skips a test with a printed reason when a prerequisite is missing, and
//!   fails it instead when `SOCKHERD_TEST_REQUIRE=1` (CI).
//! - `Proc` runs a command with stdout/stderr captured to files, stops it by pid when dropped,
//!   and `proc.fail(msg)` panics with the command, its status and all its output.
//! - HTTP/1.0 clients over TCP and unix sockets, `wait_until` with deadlines, free ports.
#![allow(dead_code)]

pub mod run;
pub mod sdbox;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub fn sockherd() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sockherd"))
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn contrib(rel: &str) -> PathBuf {
    repo().join("contrib").join(rel)
}

pub fn probe() -> PathBuf {
    repo().join("tests/support/probe.py")
}

pub fn strict() -> bool {
    std::env::var("SOCKHERD_TEST_REQUIRE").map(|v| v == "1").unwrap_or(false)
}

/// Whether `program` can be found in PATH (or is an existing path).
pub fn have(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).exists();
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

/// Whether a python module can be imported (e.g. "gunicorn").
pub fn have_python_module(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Skips the calling test (returns from it) when `ok` is false, or fails it under
/// SOCKHERD_TEST_REQUIRE=1.
pub fn prerequisite(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    if strict() {
        panic!("prerequisite missing: {what} (SOCKHERD_TEST_REQUIRE=1 turns this skip into a failure)");
    }
    eprintln!("SKIPPED: prerequisite missing: {what}");
    false
}

/// `require!("curl", "unicorn")` — each a program in PATH; `require!(python: "gunicorn")`.
#[macro_export]
macro_rules! require {
    (python: $($m:expr),+) => {
        $( if !common::prerequisite(common::have_python_module($m), &format!("python module {}", $m)) { return; } )+
    };
    (root) => {
        if !common::prerequisite(common::is_root(), "running as root") { return; }
    };
    ($($p:expr),+) => {
        $( if !common::prerequisite(common::have($p), &format!("program {} in PATH", $p)) { return; } )+
    };
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

/// A temporary directory, removed on drop unless the test panicked.
pub struct TempDir(PathBuf);

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let base = std::env::var_os("SOCKHERD_TEST_TMP").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
        let dir =
            base.join(format!("sockherd-{tag}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst)));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            eprintln!("kept test directory {}", self.0.display());
        }
    }
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `check` every 20 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running command whose output goes to files; stopped (by pid) when dropped.
pub struct Proc {
    pub child: Child,
    pub description: String,
    stdout: PathBuf,
    stderr: PathBuf,
    /// Extra log files to show on failure (an app server's own log, ...).
    pub logs: Vec<PathBuf>,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Starts `cmd` with output captured in `dir`. The child gets its own process group so
    /// dropping it can clean up everything it started.
    pub fn spawn(mut cmd: Command, dir: &Path, tag: &str) -> Proc {
        let stdout = dir.join(format!("{tag}.stdout"));
        let stderr = dir.join(format!("{tag}.stderr"));
        cmd.stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .process_group(0);
        let description = format!("{cmd:?}");
        let child = cmd.spawn().unwrap_or_else(|e| panic!("failed to start {description}: {e}"));
        Proc { child, description, stdout, stderr, logs: Vec::new(), status: None }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn signal(&self, signal: i32) {
        // The pid is our own child, not yet reaped (we reap only in wait/try_wait).
        let _ = Command::new("kill").arg(format!("-{signal}")).arg(self.pid().to_string()).status();
    }

    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_until(timeout, || self.try_status().is_some());
        self.try_status()
    }

    /// Waits for exit, failing the test if it takes longer than `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.wait_timeout(timeout) {
            Some(status) => status,
            None => self.fail(&format!("did not exit within {timeout:?}")),
        }
    }

    /// Panics with everything known about the process.
    pub fn fail(&self, message: &str) -> ! {
        let mut report = format!(
            "{message}\n--- command: {}\n--- status: {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.description,
            self.status,
            self.stdout(),
            self.stderr()
        );
        for log in &self.logs {
            report.push_str(&format!("\n--- {}:\n{}", log.display(), std::fs::read_to_string(log).unwrap_or_default()));
        }
        panic!("{report}");
    }

    /// Waits until stderr contains `needle`, failing the test after `timeout`.
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) {
        let found = wait_until(timeout, || self.stderr().contains(needle) || self.try_status().is_some());
        if !found || !self.stderr().contains(needle) {
            self.fail(&format!("stderr never showed {needle:?} within {timeout:?}"));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_status().is_some() {
            return;
        }
        let pid = self.pid();
        let family = descendants(pid);
        self.signal(libc_sigterm());
        if self.wait_timeout(Duration::from_secs(10)).is_none() {
            self.signal(9);
            let _ = self.child.wait();
        }
        // Anything it started that is still around (only processes descended from our child).
        for p in family {
            if pid_alive(p) {
                let _ = Command::new("kill").arg("-9").arg(p.to_string()).status();
            }
        }
    }
}

fn libc_sigterm() -> i32 {
    15
}

/// Whether a process exists (and is not a zombie).
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')).unwrap_or(false),
        Err(_) => false,
    }
}

/// The parent pid of a process.
pub fn ppid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// Every living descendant of `pid` (children, grandchildren, ...).
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut all: Vec<(i32, i32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            if let Some(p) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok())
                && let Some(pp) = ppid(p)
            {
                all.push((p, pp));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(p, pp) in &all {
            if pp == parent && pid_alive(p) {
                out.push(p);
                frontier.push(p);
            }
        }
    }
    out
}

/// An HTTP answer: status code and body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

fn http_exchange(mut stream: impl Read + Write, path: &str) -> std::io::Result<Response> {
    // One write: a server that answers after its first read must see the whole request.
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not an HTTP response: {text:?}"))
    })?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok(Response { status, body })
}

/// GET over a fresh TCP connection.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<Response> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    http_exchange(stream, path)
}

/// GET over a fresh unix socket connection.
pub fn http_get_unix(socket: &Path, path: &str) -> std::io::Result<Response> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    http_exchange(stream, path)
}

/// Waits until a GET on `addr` answers 200, failing the test through `proc` if it does not.
pub fn wait_http_ok(proc: &mut Proc, addr: &str, timeout: Duration) -> Response {
    let mut last = None;
    let ok = wait_until(timeout, || {
        let r = http_get(addr, "/");
        let done = matches!(&r, Ok(resp) if resp.status == 200);
        last = Some(r);
        done || proc.try_status().is_some()
    });
    match last {
        Some(Ok(resp)) if ok && resp.status == 200 => resp,
        other => proc.fail(&format!("{addr} did not answer 200 within {timeout:?}: {other:?}")),
    }
}

/// Like `wait_http_ok`, over a unix socket.
pub fn wait_http_ok_unix(proc: &mut Proc, socket: &Path, timeout: Duration) -> Response {
    let mut last = None;
    let ok = wait_until(timeout, || {
        let r = http_get_unix(socket, "/");
        let done = matches!(&r, Ok(resp) if resp.status == 200);
        last = Some(r);
        done || proc.try_status().is_some()
    });
    match last {
        Some(Ok(resp)) if ok && resp.status == 200 => resp,
        other => proc.fail(&format!("{} did not answer 200 within {timeout:?}: {other:?}", socket.display())),
    }
}

/// Inodes of the listening sockets (TCP and unix) a process has open, from /proc.
pub fn socket_inodes(pid: i32) -> Vec<u64> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for entry in entries.flatten() {
            if let Ok(target) = std::fs::read_link(entry.path())
                && let Some(ino) =
                    target.to_str().and_then(|t| t.strip_prefix("socket:[")).and_then(|t| t.strip_suffix(']'))
                && let Ok(ino) = ino.parse()
            {
                out.push(ino);
            }
        }
    }
    out
}

/// Inodes of every listening socket on the machine (TCP, TCP6, unix) from /proc/net.
pub fn listening_inodes() -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // st == 0A is LISTEN; column 9 is the inode.
            if cols.len() > 9 && cols[3] == "0A" {
                out.push((cols[1].to_string(), cols[9].parse().unwrap_or(0)));
            }
        }
    }
    for line in std::fs::read_to_string("/proc/net/unix").unwrap_or_default().lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // Flags 00010000 = __SO_ACCEPTCON; column 6 is the inode, 7 the path.
        if cols.len() > 6 && cols[3] == "00010000" {
            out.push((cols.get(7).unwrap_or(&"").to_string(), cols[6].parse().unwrap_or(0)));
        }
    }
    out
}

/// The listening sockets some process of the tree under `root` holds that are not in `allowed`:
/// proof that a server bound something of its own.
pub fn foreign_listeners(root: i32, allowed: &[u64]) -> Vec<(String, u64)> {
    let listening = listening_inodes();
    let mut pids = descendants(root);
    pids.push(root);
    let mut out = Vec::new();
    for pid in pids {
        for ino in socket_inodes(pid) {
            if !allowed.contains(&ino)
                && let Some((addr, _)) = listening.iter().find(|(_, i)| *i == ino)
            {
                out.push((addr.clone(), ino));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// A `Command` for the sockherd binary with the given arguments.
pub fn sockherd_cmd(args: &[&str]) -> Command {
    sockherd_cmd_of(&sockherd(), args)
}

/// [`sockherd_cmd`] for another sockherd binary (a second build).
pub fn sockherd_cmd_of(binary: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(binary);
    cmd.args(args);
    // Never let the test runner's own environment pose as socket activation.
    for var in [
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_PIDFDID",
        "LISTEN_FDNAMES",
        "NOTIFY_SOCKET",
        "JOURNAL_STREAM",
        "WATCHDOG_USEC",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs sockherd to completion (bounded), returning (status, stdout, stderr).
pub fn run_sockherd(args: &[&str], dir: &Path, timeout: Duration) -> (ExitStatus, String, String) {
    let mut proc = Proc::spawn(sockherd_cmd(args), dir, "sockherd-once");
    let status = proc.wait_exit(timeout);
    (status, proc.stdout(), proc.stderr())
}

/// The newest modification time of the files under `path` that go into the package.
fn newest_mtime(path: &Path) -> std::time::SystemTime {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if !meta.is_dir() {
        return meta.modified().unwrap();
    }
    std::fs::read_dir(path)
        .unwrap()
        .flatten()
        .map(|e| newest_mtime(&e.path()))
        .max()
        .unwrap_or(std::time::SystemTime::UNIX_EPOCH)
}

/// target/debian/sockherd_<version>-*.deb, built by `packaging/build-deb`, if it exists and is
/// newer than what it packages; else a missing prerequisite (reported; None).
pub fn built_deb() -> Option<PathBuf> {
    let dir = repo().join("target/debian");
    let prefix = format!("sockherd_{}-", env!("CARGO_PKG_VERSION"));
    let deb = std::fs::read_dir(&dir).ok().and_then(|entries| {
        entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                name.starts_with(&prefix) && name.ends_with(".deb")
            })
            .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
    });
    let what = format!("{}/{prefix}*.deb (run packaging/build-deb)", dir.display());
    let deb = match deb {
        Some(deb) => deb,
        None => {
            prerequisite(false, &what);
            return None;
        }
    };
    let built = deb.metadata().unwrap().modified().unwrap();
    let sources = ["src", "units", "contrib", "packaging", "Cargo.toml", "Cargo.lock"]
        .iter()
        .map(|p| newest_mtime(&repo().join(p)))
        .max()
        .unwrap();
    if !prerequisite(built >= sources, &format!("{what}: {} is older than the sources", deb.display())) {
        return None;
    }
    Some(deb)
}
