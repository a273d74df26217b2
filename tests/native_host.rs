//! Native upgrade mode with real unicorn on the host (no systemd: there is no MAINPID to hand
//! over, the upgrade itself is the same): `sockherd reload` on a pid that is no `sockherd run`
//! supervisor drives the server's own USR2 upgrade by itself, and `--workers` is what the new
//! master must reach, or it is killed at the timeout and the old master keeps serving.
//! Inside systemd (MAINPID handoff, NotifyAccess=, nginx) see tests/native.rs.
mod common;

use common::*;
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(60);

/// `sockherd exec --flavor unicorn` with contrib's config and a pid file in `dir` (native mode
/// finds the new master by it): the unicorn master is the process started (exec keeps the pid).
fn unicorn(dir: &TempDir) -> (Proc, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let conf = dir.join("unicorn.conf.rb");
    std::fs::write(
        &conf,
        format!(
            "instance_eval(File.read({:?}))\npid {:?}\n",
            contrib("unicorn/unicorn.conf.rb").display().to_string(),
            pidfile(dir).display().to_string()
        ),
    )
    .unwrap();
    let conf = conf.display().to_string();
    let app = contrib("app").display().to_string();
    let cmd = sockherd_cmd(&[
        "exec",
        "--flavor",
        "unicorn",
        "--listen",
        &addr,
        "--chdir",
        &app,
        "--",
        "unicorn",
        "-c",
        &conf,
        "config.ru",
    ]);
    let mut proc = Proc::spawn(cmd, dir.path(), "unicorn");
    let answer = wait_http_ok(&mut proc, &addr, PATIENCE);
    if master(&answer.body) != Some(proc.pid()) {
        proc.fail(&format!("unicorn's master should be the exec'd process {}: {answer:?}", proc.pid()));
    }
    // Both workers booted, so the old master's worker count is the one the new must reach.
    let pid = proc.pid();
    if !wait_until(PATIENCE, || descendants(pid).len() >= 2) {
        proc.fail(&format!("unicorn never had its 2 workers: {:?}", descendants(pid)));
    }
    (proc, addr)
}

fn pidfile(dir: &TempDir) -> std::path::PathBuf {
    dir.join("unicorn.pid")
}

fn master(body: &str) -> Option<i32> {
    body.split_whitespace().find_map(|w| w.strip_prefix("master="))?.parse().ok()
}

/// `sockherd reload --pid PID --pidfile DIR/unicorn.pid [extra]` outside systemd.
fn reload(dir: &TempDir, pid: i32, extra: &[&str]) -> std::process::Output {
    let pid = pid.to_string();
    let pidfile = pidfile(dir).display().to_string();
    let mut args = vec!["reload", "--pid", &pid, "--pidfile", &pidfile];
    args.extend_from_slice(extra);
    let mut cmd = sockherd_cmd(&args);
    cmd.env_remove("INVOCATION_ID");
    cmd.output().expect("run sockherd reload")
}

/// Stops a master that is no longer our child (an upgraded unicorn is its old master's child,
/// re-parented when that one exits), by its pid.
fn quit(pid: i32) {
    let _ = std::process::Command::new("kill").arg("-QUIT").arg(pid.to_string()).status();
    wait_until(PATIENCE, || !pid_alive(pid));
}

/// A pid that is no sockherd supervisor is never driven natively unless asked: without
/// `--native` the reload fails, says why and names the flag, and the server is untouched (no
/// signal, the same master serving). With `--native` the server's own upgrade runs.
#[test]
fn reload_of_a_server_that_is_no_supervisor_needs_native() {
    require!("unicorn");
    let dir = TempDir::new("native-auto");
    let (mut proc, addr) = unicorn(&dir);
    let old = proc.pid();
    let mut plain = sockherd_cmd(&["reload", "--pid", &old.to_string(), "--timeout", "20s"]);
    plain.env_remove("INVOCATION_ID");
    let refused = plain.output().expect("run sockherd reload");
    let said = String::from_utf8_lossy(&refused.stderr).into_owned();
    let serving = http_get(&addr, "/").ok().and_then(|r| master(&r.body));
    if refused.status.code() != Some(1)
        || !said.contains(&format!("pid {old}"))
        || !said.contains("is not a sockherd supervisor")
        || !said.contains("pass --native")
        || serving != Some(old)
        || pidfile(&dir).with_extension("pid.oldbin").exists()
    {
        proc.fail(&format!(
            "a reload of a plain unicorn without --native should fail and leave it alone: {:?}, master {serving:?}\n{said}",
            refused.status
        ));
    }
    let out = reload(&dir, old, &["--native", "--timeout", "60s"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let answer = http_get(&addr, "/");
    let new = answer.as_ref().ok().and_then(|r| master(&r.body));
    if let Some(new) = new.filter(|&n| n != old) {
        // Whatever happens next, the new master is ours to stop.
        let _cleanup = Stop(new);
        if !out.status.success() || !stderr.contains("upgrading without a MAINPID handoff") {
            proc.fail(&format!("the native reload: {:?}\n{stderr}", out.status));
        }
        let status = proc.wait_exit(PATIENCE);
        if status.code() != Some(0) {
            proc.fail(&format!("the old master should have stopped on QUIT (exit 0): {status:?}"));
        }
        return;
    }
    proc.fail(&format!("after the reload a new master should answer, not {old}: {answer:?}\n{stderr}"));
}

/// Quits a re-parented master when dropped.
struct Stop(i32);

impl Drop for Stop {
    fn drop(&mut self) {
        quit(self.0);
    }
}

#[test]
fn a_new_master_without_the_workers_asked_for_is_killed_and_the_old_one_serves() {
    require!("unicorn");
    let dir = TempDir::new("native-workers");
    let (proc, addr) = unicorn(&dir);
    let old = proc.pid();
    let before: Vec<i32> = descendants(old);
    // unicorn starts 2 workers; 5 never come: late, so killed at the timeout.
    let out = reload(&dir, old, &["--native", "--workers", "5", "--timeout", "8s"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.code() != Some(1)
        || !stderr.contains("(at least 5 wanted)")
        || !stderr.contains(&format!("old master {old} still serving"))
    {
        proc.fail(&format!("a reload whose new master never has 5 workers should fail: {:?}\n{stderr}", out.status));
    }
    let answer = http_get(&addr, "/");
    if !matches!(&answer, Ok(r) if master(&r.body) == Some(old)) {
        proc.fail(&format!("the old master {old} should still answer: {answer:?}"));
    }
    let extra: Vec<i32> = descendants(old).into_iter().filter(|p| !before.contains(p)).collect();
    if !wait_until(PATIENCE, || descendants(old).iter().all(|p| before.contains(p))) {
        proc.fail(&format!("the new master and its workers should be gone: {extra:?}"));
    }
}

/// Sends QUIT to the nginx master its pid file names when dropped: `sockherd exec` hands nginx
/// over and exits, so no test process is its parent and a failed check must not leave it.
struct NginxMaster(std::path::PathBuf);

impl NginxMaster {
    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(&self.0).ok()?.trim().parse().ok()
    }
}

impl Drop for NginxMaster {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            quit(pid);
        }
    }
}

/// The O_NONBLOCK flag of descriptor `fd` of `pid`, from /proc/PID/fdinfo (octal `flags:`).
fn fd_nonblocking(pid: i32, fd: i32) -> Option<bool> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?.trim();
    Some(i64::from_str_radix(flags, 8).ok()? & 0o4000 != 0)
}

/// `sockherd exec --flavor nginx` with `--listen` on TCP and on a unix socket: sockherd starts
/// nginx, hands it over and exits. nginx then serves on both, so the socket file sockherd
/// created is nginx's from then on and stays; and nginx holds both sockets non-blocking (it
/// uses inherited sockets as it finds them, and blocks in accept() on a blocking one).
#[test]
fn exec_nginx_leaves_its_sockets_to_nginx_non_blocking() {
    if !prerequisite(std::path::Path::new("/usr/sbin/nginx").exists(), "/usr/sbin/nginx (package nginx-light)") {
        return;
    }
    let dir = TempDir::new("nginx-exec");
    let addr = format!("127.0.0.1:{}", free_port());
    let sock = dir.join("app.sock");
    let d = dir.path().display().to_string();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "pid {d}/nginx.pid;\nworker_processes 2;\nerror_log stderr;\nevents {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/cb;\n  proxy_temp_path {d}/p;\n\
             fastcgi_temp_path {d}/f;\n  uwsgi_temp_path {d}/u;\n  scgi_temp_path {d}/s;\n\
             server {{ listen {addr}; listen unix:{}; location / {{ return 200 \"nginx\\n\"; }} }}\n}}\n",
            sock.display()
        ),
    )
    .unwrap();
    let master = NginxMaster(dir.join("nginx.pid"));
    let (conf, sock_arg) = (conf.display().to_string(), sock.display().to_string());
    let args =
        ["exec", "--flavor", "nginx", "--listen", &addr, "--listen", &sock_arg, "--", "/usr/sbin/nginx", "-c", &conf];
    let (status, _, err) = run_sockherd(&args, dir.path(), PATIENCE);
    let pid = master.pid();
    let report = format!("sockherd exec: {status}, nginx master {pid:?}\n--- stderr:\n{err}");
    assert!(status.success() && pid.is_some(), "nginx was not handed over:\n{report}");
    let pid = pid.unwrap();
    assert!(sock.exists(), "the socket file nginx listens on is gone after sockherd exec left:\n{report}");
    for (what, answer) in [("TCP", http_get(&addr, "/")), ("unix", http_get_unix(&sock, "/"))] {
        assert!(
            matches!(&answer, Ok(r) if r.status == 200 && r.body == "nginx\n"),
            "nginx does not answer over {what}: {answer:?}\n{report}"
        );
    }
    let workers = descendants(pid);
    assert!(!workers.is_empty(), "nginx master {pid} has no workers:\n{report}");
    for p in std::iter::once(pid).chain(workers) {
        for fd in [3, 4] {
            assert_eq!(
                fd_nonblocking(p, fd),
                Some(true),
                "fd {fd} of nginx process {p} is not non-blocking:\n{report}"
            );
        }
    }
}
