//! Readiness that no other user can reach and that costs the app nothing: the `probe` socket
//! is a unix socket in the private runtime directory (a loopback TCP port let any local user
//! into the app), and gunicorn's default readiness adds no socket at all, yet never declares a
//! generation ready before its workers loaded the app.
mod common;

use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// `key=value` lines of probe_env.py's report.
fn report_value(report: &str, key: &str) -> Option<String> {
    report.lines().find_map(|l| l.strip_prefix(&format!("{key}="))).map(String::from)
}

/// The probe socket a generation gets is a unix socket in a directory only sockherd's user can
/// enter; another user cannot connect to it.
#[test]
fn probe_socket_is_private_to_the_service_user() {
    require!("python3", "setpriv");
    require!(root);
    let dir = TempDir::new("probe-private");
    let addr = format!("127.0.0.1:{}", free_port());
    let report = dir.join("report");
    let mut cmd = sockherd_cmd(&["run", "--ready", "probe", "--listen", &addr, "--"]);
    cmd.arg(repo().join("tests/support/probe_env.py")).arg(&report).arg("serve");
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    proc.wait_for_stderr("is ready", Duration::from_secs(30));
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    // fd 3: the public socket; fd 4: the probe.
    let family = report_value(&text, "fd.4.family");
    let address = report_value(&text, "fd.4.address").unwrap_or_default();
    if family.as_deref() != Some("unix") || !address.starts_with('/') {
        proc.fail(&format!("the probe socket is {family:?} {address:?}, not a unix socket file:\n{text}"));
    }
    let parent = Path::new(&address).parent().unwrap();
    let meta = std::fs::metadata(parent).unwrap();
    if meta.permissions().mode() & 0o077 != 0 || meta.uid() != 0 {
        proc.fail(&format!("the probe's directory {} is {:o}, owned by {}", parent.display(), meta.mode(), meta.uid()));
    }
    let other = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c"])
        .arg("import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); print('connected')")
        .arg(&address)
        .output()
        .unwrap();
    if other.status.success() || String::from_utf8_lossy(&other.stdout).contains("connected") {
        proc.fail(&format!("user nobody connected to the probe socket {address}"));
    }
}

/// gunicorn's default readiness hands it no socket beyond the public ones (a second listener
/// sends gunicorn's sync workers down a slower accept path: 4-5 % of throughput).
#[test]
fn gunicorn_default_readiness_adds_no_socket() {
    require!(python: "gunicorn");
    let dir = TempDir::new("gunicorn-nosocket");
    let addr = format!("127.0.0.1:{}", free_port());
    let conf = contrib("gunicorn/gunicorn.conf.py").display().to_string();
    let app = contrib("app").display().to_string();
    let cmd = sockherd_cmd(&[
        "run", "--flavor", "gunicorn", "--listen", &addr, "--chdir", &app, "--", "python3", "-m", "gunicorn", "-c",
        &conf, "app:app",
    ]);
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    proc.wait_for_stderr("is ready", Duration::from_secs(60));
    // "release=app pid=<worker> master=<master>"
    let answer = http_get(&addr, "/").map(|r| r.body).unwrap_or_default();
    let master: i32 = answer
        .split_whitespace()
        .find_map(|w| w.strip_prefix("master="))
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| proc.fail(&format!("unexpected answer {answer:?}")));
    let listening: Vec<u64> = listening_inodes().into_iter().map(|(_, inode)| inode).collect();
    let held: Vec<u64> = socket_inodes(master).into_iter().filter(|i| listening.contains(i)).collect();
    if held.len() != 1 || !proc.stderr().contains("ready: booted") {
        proc.fail(&format!("gunicorn's master holds {} listening sockets (want the one public socket)", held.len()));
    }
}

/// A release whose app takes 3 s to import and then fails: gunicorn's own READY=1 (sent before
/// any worker imports the app) or its workers merely existing would let it replace the old
/// generation, and the service would die 3 s later. With the default readiness its workers
/// never load the app, so it is never ready: the reload fails and the old release serves.
#[test]
fn gunicorn_is_not_ready_before_its_workers_loaded_the_app() {
    require!(python: "gunicorn");
    let dir = TempDir::new("gunicorn-late-failure");
    for (release, body) in [
        ("good", "def app(environ, start_response):\n    start_response('200 OK', [])\n    return [b'good']\n"),
        ("late", "import time\ntime.sleep(3)\nraise RuntimeError('fails after a slow import')\n"),
    ] {
        let path = dir.join(release);
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("lateapp.py"), body).unwrap();
    }
    let current = dir.join("current");
    std::os::unix::fs::symlink("good", &current).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let conf = contrib("gunicorn/gunicorn.conf.py").display().to_string();
    let mut cmd = sockherd_cmd(&["run", "--flavor", "gunicorn", "--listen", &addr, "--chdir"]);
    cmd.arg(&current).args(["--", "python3", "-m", "gunicorn", "-c", &conf, "lateapp:app"]);
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    proc.wait_for_stderr("is ready", Duration::from_secs(60));
    let tmp = dir.join("current.tmp");
    std::os::unix::fs::symlink("late", &tmp).unwrap();
    std::fs::rename(&tmp, &current).unwrap();
    let out = sockherd_cmd(&["reload", "--pid", &proc.pid().to_string(), "--timeout", "120s"]).output().unwrap();
    if out.status.success() {
        proc.fail(&format!(
            "the reload onto an app that fails after 3 s succeeded: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let answer = http_get(&addr, "/").map(|r| r.body).unwrap_or_default();
    if answer != "good" || proc.try_status().is_some() {
        proc.fail(&format!("after the failed reload the old release must serve; got {answer:?}"));
    }
}
