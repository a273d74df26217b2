//! The notify proxy: what a generation sends on its private NOTIFY_SOCKET never speaks for
//! sockherd to systemd, and only the generation's own processes can make it ready.
//!
//! sockherd runs under a stand-in for systemd's notify socket that keeps every datagram and
//! reads them as systemd 252 does: lines end at `\n` or `\r`, a datagram of 4,096 bytes or more
//! or with a NUL byte is dropped whole. The servers are `tests/support/notifier.py` in one of
//! its modes.
mod common;

use common::*;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn notifier() -> PathBuf {
    repo().join("tests/support/notifier.py")
}

/// A notify socket that records what sockherd sends to "systemd".
struct FakeSystemd {
    path: PathBuf,
    datagrams: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeSystemd {
    fn new(dir: &Path) -> FakeSystemd {
        let path = dir.join("systemd-notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the stand-in notify socket");
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let datagrams = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (datagrams, stop) = (datagrams.clone(), stop.clone());
            std::thread::spawn(move || {
                // Larger than systemd's buffer, to see how long a datagram really was.
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::SeqCst) {
                    if let Ok(n) = socket.recv(&mut buf) {
                        datagrams.lock().unwrap().push(buf[..n].to_vec());
                    }
                }
            })
        };
        FakeSystemd { path, datagrams, stop, thread: Some(thread) }
    }

    fn datagrams(&self) -> Vec<Vec<u8>> {
        self.datagrams.lock().unwrap().clone()
    }

    /// The datagrams systemd would process, each as its list of tags.
    fn accepted(&self) -> Vec<Vec<String>> {
        self.datagrams()
            .iter()
            .filter(|d| d.len() < 4096 && !d.contains(&0))
            .map(|d| {
                String::from_utf8_lossy(d).split(['\n', '\r']).filter(|l| !l.is_empty()).map(String::from).collect()
            })
            .collect()
    }

    fn saw_ready(&self) -> bool {
        self.accepted().iter().any(|tags| tags.iter().any(|t| t == "READY=1"))
    }

    /// Every datagram, readable, for a failure message.
    fn dump(&self) -> String {
        self.datagrams().iter().map(|d| format!("  {} bytes: {:?}\n", d.len(), String::from_utf8_lossy(d))).collect()
    }
}

impl Drop for FakeSystemd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `sockherd run --ready notify --listen 127.0.0.1:<free> -- notifier.py MODE REPORT` under the
/// stand-in systemd, not started yet, and its address.
fn command(dir: &TempDir, systemd: &FakeSystemd, mode: &str, extra: &[&str]) -> (std::process::Command, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut args = vec!["run", "--ready", "notify", "--listen", &addr];
    args.extend_from_slice(extra);
    args.push("--");
    let mut cmd = sockherd_cmd(&args);
    cmd.arg(notifier()).arg(mode).arg(dir.join("report.json"));
    cmd.env("NOTIFY_SOCKET", &systemd.path);
    (cmd, addr)
}

/// [`command`], started.
fn start(dir: &TempDir, systemd: &FakeSystemd, mode: &str, extra: &[&str]) -> (Proc, String) {
    let (cmd, addr) = command(dir, systemd, mode, extra);
    (Proc::spawn(cmd, dir.path(), "sockherd"), addr)
}

fn wait_ready(proc: &mut Proc, systemd: &FakeSystemd) {
    if !wait_until(Duration::from_secs(30), || systemd.saw_ready() || proc.try_status().is_some())
        || !systemd.saw_ready()
    {
        proc.fail(&format!("systemd never got a READY=1 it would accept; sockherd sent:\n{}", systemd.dump()));
    }
}

fn reload(proc: &Proc) -> std::process::Output {
    sockherd_cmd(&["reload", "--pid", &proc.pid().to_string(), "--timeout", "60s"]).output().unwrap()
}

/// `STATUS=x\rWATCHDOG=trigger\rMAINPID=<pid>\rSTOPPING=1` from the app: systemd splits on
/// `\r` too, so forwarded raw these would be sockherd's own words (kill the unit, steal
/// MAINPID, announce a stop). Neither at start nor at a reload does any reach systemd.
#[test]
fn app_status_cannot_smuggle_tags_to_systemd() {
    require!("python3");
    let dir = TempDir::new("notify-inject");
    let systemd = FakeSystemd::new(dir.path());
    let (mut proc, addr) = start(&dir, &systemd, "inject", &[]);
    wait_ready(&mut proc, &systemd);
    wait_http_ok(&mut proc, &addr, Duration::from_secs(10));
    let out = reload(&proc);
    if !out.status.success() {
        proc.fail(&format!("reload failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    for tags in systemd.accepted() {
        if let Some(tag) =
            tags.iter().find(|t| t.starts_with("MAINPID=") || t.starts_with("WATCHDOG=") || t.as_str() == "STOPPING=1")
        {
            proc.fail(&format!("systemd would read {tag:?} from sockherd; it sent:\n{}", systemd.dump()));
        }
    }
    let statuses: Vec<String> = systemd.accepted().concat().into_iter().filter(|t| t.starts_with("STATUS=")).collect();
    if !statuses.iter().any(|s| s.contains("[x]")) {
        proc.fail(&format!("the app's own STATUS=x should still show in sockherd's; sent:\n{}", systemd.dump()));
    }
}

/// A 4,050-byte app status: sockherd's READY=1 must still reach systemd (it drops a datagram of
/// 4,096 bytes or more, and startup would hang until its timeout), with the status cut to about
/// 1 KiB.
#[test]
fn long_app_status_does_not_hide_ready_from_systemd() {
    require!("python3");
    let dir = TempDir::new("notify-long");
    let systemd = FakeSystemd::new(dir.path());
    let (mut proc, addr) = start(&dir, &systemd, "long", &[]);
    wait_ready(&mut proc, &systemd);
    wait_http_ok(&mut proc, &addr, Duration::from_secs(10));
    if let Some(d) = systemd.datagrams().iter().find(|d| d.len() >= 2048) {
        proc.fail(&format!("sockherd sent a {}-byte datagram; the app's text must be cut to ~1 KiB", d.len()));
    }
}

/// A datagram with a NUL byte is refused whole (as systemd refuses it), its text never reaches
/// sockherd's STATUS=, and the app's next READY=1 still counts.
#[test]
fn app_datagram_with_nul_is_refused_whole() {
    require!("python3");
    let dir = TempDir::new("notify-nul");
    let systemd = FakeSystemd::new(dir.path());
    let (mut proc, addr) = start(&dir, &systemd, "nul", &[]);
    wait_ready(&mut proc, &systemd);
    wait_http_ok(&mut proc, &addr, Duration::from_secs(10));
    if systemd.datagrams().iter().any(|d| d.contains(&0) || String::from_utf8_lossy(d).contains("after")) {
        proc.fail(&format!("the app's NUL datagram reached systemd:\n{}", systemd.dump()));
    }
    if !proc.stderr().contains("ignored a notification") || !proc.stderr().contains("NUL") {
        proc.fail("the refused datagram must be logged with its reason");
    }
}

/// sockherd's own state changes (READY=1, RELOADING=1, STOPPING=1, MAINPID=) each travel in a
/// datagram of their own, without the STATUS= text beside them: whatever that text holds, it
/// cannot make systemd drop or misread them.
#[test]
fn own_state_changes_travel_without_status_text() {
    require!("python3");
    let dir = TempDir::new("notify-alone");
    let systemd = FakeSystemd::new(dir.path());
    let (mut proc, addr) = start(&dir, &systemd, "plain", &[]);
    wait_ready(&mut proc, &systemd);
    wait_http_ok(&mut proc, &addr, Duration::from_secs(10));
    let out = reload(&proc);
    if !out.status.success() {
        proc.fail(&format!("reload failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    proc.signal(15);
    proc.wait_exit(Duration::from_secs(30));
    let states = ["READY=1", "RELOADING=1", "STOPPING=1", "MAINPID="];
    for tags in systemd.accepted() {
        if tags.iter().any(|t| states.iter().any(|s| t.starts_with(s))) && tags.iter().any(|t| t.starts_with("STATUS="))
        {
            proc.fail(&format!("a state change shares its datagram with STATUS=: {tags:?}\nall:\n{}", systemd.dump()));
        }
    }
    let all = systemd.accepted().concat();
    for state in ["READY=1", "RELOADING=1", "STOPPING=1"] {
        if !all.iter().any(|t| t == state) {
            proc.fail(&format!("systemd never got {state}; sent:\n{}", systemd.dump()));
        }
    }
}

/// The generation's NOTIFY_SOCKET path, from the report notifier.py writes.
fn notify_socket_of(proc: &mut Proc, report: &Path) -> String {
    if !wait_until(Duration::from_secs(30), || report.exists() || proc.try_status().is_some()) || !report.exists() {
        proc.fail("the server never wrote its report");
    }
    let text = std::fs::read_to_string(report).unwrap();
    let json = sockherd::status::Json::parse(&text).unwrap_or_else(|e| proc.fail(&format!("report {text:?}: {e}")));
    json.get("notify_socket").str().map(String::from).unwrap_or_else(|| proc.fail("no NOTIFY_SOCKET in the report"))
}

/// A process of the same user but outside the generation sends READY=1 on the generation's
/// NOTIFY_SOCKET and exits before sockherd reads it: it must not count (a sender already gone
/// cannot be told from anyone else). The generation never says READY=1 itself, so it must
/// miss its ready timeout.
#[test]
fn ready_from_a_sender_outside_the_generation_is_ignored() {
    require!("python3");
    let dir = TempDir::new("notify-foreign");
    let systemd = FakeSystemd::new(dir.path());
    let (mut proc, _) = start(&dir, &systemd, "silent", &["--ready-timeout", "6s"]);
    let socket = notify_socket_of(&mut proc, &dir.join("report.json"));
    // Freeze sockherd so the sender is surely gone when it reads the datagram.
    proc.signal(libc::SIGSTOP);
    let sent = std::process::Command::new("python3")
        .args(["-c", "import socket,sys; s=socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.connect(sys.argv[1]); s.send(b'READY=1')"])
        .arg(&socket)
        .status()
        .unwrap();
    proc.signal(libc::SIGCONT);
    if !sent.success() {
        proc.fail("the foreign sender failed to send");
    }
    let status = proc.wait_exit(Duration::from_secs(60));
    let stderr = proc.stderr();
    if status.success() || stderr.contains("is ready") || !stderr.contains("not ready within") {
        proc.fail("a READY=1 from outside the generation made it ready");
    }
    if !stderr.contains("ignored a notification") || !stderr.contains("already exited") {
        proc.fail("the foreign notification must be logged as ignored, with the reason");
    }
    if systemd.saw_ready() {
        proc.fail(&format!("systemd was told READY=1:\n{}", systemd.dump()));
    }
}

/// A short-lived helper of the generation (systemd-notify's way) that sends READY=1 and waits
/// for BARRIER=1 before it exits makes the generation ready, and its barrier is answered.
#[test]
fn ready_from_a_helper_that_waits_for_the_barrier_counts() {
    require!("python3");
    let dir = TempDir::new("notify-helper");
    let systemd = FakeSystemd::new(dir.path());
    let (mut proc, addr) = start(&dir, &systemd, "helper", &[]);
    wait_ready(&mut proc, &systemd);
    wait_http_ok(&mut proc, &addr, Duration::from_secs(10));
    proc.wait_for_stderr("notifier: helper exited with", Duration::from_secs(30));
    if !proc.stderr().contains("notifier: helper exited with 0") {
        proc.fail("the helper's BARRIER=1 was never answered");
    }
}

/// The real `systemd-notify --ready` from a generation's shell script: it exits right after
/// sending, but first waits for BARRIER=1 (unless --no-block), so its READY=1 is read while it
/// lives and counts.
#[test]
fn ready_from_systemd_notify_counts() {
    require!("systemd-notify");
    let dir = TempDir::new("notify-systemd-notify");
    let systemd = FakeSystemd::new(dir.path());
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = sockherd_cmd(&["run", "--ready", "notify", "--listen", &addr, "--", "sh", "-c"]);
    cmd.arg("systemd-notify --ready --status=booted-by-systemd-notify; echo notify-exit=$? >&2; exec sleep 300");
    cmd.env("NOTIFY_SOCKET", &systemd.path);
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    wait_ready(&mut proc, &systemd);
    if !proc.stderr().contains("notify-exit=0") {
        proc.fail("systemd-notify did not exit 0 (its barrier went unanswered?)");
    }
    let statuses = systemd.accepted().concat();
    if !statuses.iter().any(|t| t.starts_with("STATUS=") && t.contains("[booted-by-systemd-notify]")) {
        proc.fail(&format!("the helper's STATUS= should show in sockherd's; sent:\n{}", systemd.dump()));
    }
}

/// Relay mode: the app's own pings vouch for it, and sockherd pings by itself during a handoff
/// and one interval after it, while the new generation may not ping yet. A reexec right after a
/// reload is inside that interval: the new image keeps pinging until the interval is over (a
/// silent app here, so every ping is sockherd's), then stops, as without the exec.
#[test]
fn a_reexec_right_after_a_reload_keeps_the_watchdog_covered() {
    require!("python3");
    let dir = TempDir::new("notify-cover-reexec");
    let systemd = FakeSystemd::new(dir.path());
    let interval = Duration::from_secs(8);
    let (mut cmd, addr) = command(&dir, &systemd, "plain", &["--watchdog", "relay"]);
    cmd.env("WATCHDOG_USEC", interval.as_micros().to_string());
    cmd.env("XDG_RUNTIME_DIR", dir.path()).env_remove("RUNTIME_DIRECTORY");
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    wait_ready(&mut proc, &systemd);
    wait_http_ok(&mut proc, &addr, Duration::from_secs(10));
    let pings = || systemd.accepted().iter().filter(|tags| tags.iter().any(|t| t == "WATCHDOG=1")).count();

    let out = reload(&proc);
    let ended = std::time::Instant::now();
    if !out.status.success() {
        proc.fail(&format!("reload failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let pid = proc.pid().to_string();
    let out = sockherd_cmd(&["reexec", "--pid", &pid, "--timeout", "60s"]).output().unwrap();
    if !out.status.success() {
        proc.fail(&format!("reexec failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let after_exec = pings();
    let took = ended.elapsed();
    if took > interval / 4 {
        proc.fail(&format!("the reexec took {took:?}: too late to tell its pings from the cover's end"));
    }
    // The new image pings every half interval while the cover lasts: at least once more before
    // it ends.
    std::thread::sleep(interval - interval / 8 - took);
    let before_end = pings();
    if before_end <= after_exec {
        proc.fail(&format!(
            "no WATCHDOG=1 from the re-executed supervisor in the {:?} after the reload ended (systemd \
             would kill the service once the interval passed); sent:\n{}",
            interval - interval / 8,
            systemd.dump()
        ));
    }
    // And none after it: the cover ends an interval after the handoff, as it does without an exec.
    std::thread::sleep(interval / 4);
    let ended_cover = pings();
    std::thread::sleep(interval * 3 / 4);
    if pings() != ended_cover {
        proc.fail(&format!(
            "sockherd still pings {:?} after the handoff ended, for an app that never pinged; sent:\n{}",
            ended.elapsed(),
            systemd.dump()
        ));
    }
    proc.signal(libc::SIGTERM);
    proc.wait_exit(Duration::from_secs(30));
}
