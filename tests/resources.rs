//! A generation's resources: the memory budget that refuses a reload the service has no room
//! for (the old generation keeps serving), and the lower CPU priority a reload's generation
//! boots at, set back for every process and thread once it is ready.
mod common;

use common::run::status_json;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Every process of process group `pgid`, each with its threads' (nice, policy).
fn group_priorities(pgid: i32) -> Vec<(i32, Vec<(i32, u32)>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
        if fields.get(2).and_then(|g| g.parse::<i32>().ok()) != Some(pgid) {
            continue;
        }
        let mut threads = Vec::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
            if let Some(priority) = sockherd::resources::stat_priority(&stat) {
                threads.push(priority);
            }
        }
        out.push((pid, threads));
    }
    out
}

fn generation_pid(json: &sockherd::status::Json, number: u64) -> Option<i32> {
    json.get("generations")
        .arr()
        .iter()
        .find(|g| g.get("number").num() == Some(number as f64))
        .and_then(|g| g.get("pid").num())
        .map(|p| p as i32)
}

const SCHED_OTHER: u32 = 0;
const SCHED_BATCH: u32 = 3;

/// gunicorn with two workers, each with a second thread (the app starts one at import), and
/// `--boot-priority on`: until
/// generation 2 is ready (its readiness command waits for a file), every thread of its master
/// and workers runs at nice +10 and SCHED_BATCH; once ready, at sockherd's own priority.
#[test]
fn a_booting_generation_runs_at_lower_priority_until_ready() {
    require!(python: "gunicorn");
    let dir = TempDir::new("boot-priority");
    std::fs::write(
        dir.join("app.py"),
        "import threading, time\n\
         threading.Thread(target=lambda: time.sleep(3600), daemon=True).start()\n\
         def application(environ, start_response):\n    \
             start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
             return [b'ok']\n",
    )
    .unwrap();
    let go = dir.join("go");
    std::fs::write(&go, "").unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let ready = format!("cmd:test -e {}", go.display());
    let chdir = dir.path().to_str().unwrap();
    let mut herd = Proc::spawn(
        sockherd_cmd(&[
            "run",
            "--boot-priority",
            "on",
            "--listen",
            &addr,
            "--flavor",
            "gunicorn",
            "--ready",
            &ready,
            "--ready-settle",
            "0",
            "--chdir",
            chdir,
            "--",
            "python3",
            "-m",
            "gunicorn",
            "--workers",
            "2",
            "app:application",
        ]),
        dir.path(),
        "sockherd",
    );
    wait_http_ok(&mut herd, &addr, Duration::from_secs(30));
    let own_nice = std::fs::read_to_string(format!("/proc/{}/stat", herd.pid()))
        .ok()
        .and_then(|s| sockherd::resources::stat_priority(&s))
        .map(|(nice, _)| nice)
        .unwrap();
    let boot_nice = (own_nice + 10).min(19);

    // Generation 1 has no serving generation to leave the CPU to: it starts at normal priority.
    let gen1 = generation_pid(&status_json(herd.pid()).unwrap(), 1).unwrap();
    let first = group_priorities(gen1);
    assert!(first.iter().flat_map(|(_, t)| t).all(|&p| p == (own_nice, SCHED_OTHER)), "generation 1: {first:?}");

    std::fs::remove_file(&go).unwrap();
    let reload = Proc::spawn(
        sockherd_cmd(&["reload", "--pid", &herd.pid().to_string(), "--timeout", "60s"]),
        dir.path(),
        "reload",
    );
    // Booting: master and both workers (gunicorn's arbiter forks them right away), and each
    // worker's second thread.
    let mut booting = Vec::new();
    let found = wait_until(Duration::from_secs(30), || {
        let Some(pid) = status_json(herd.pid()).and_then(|j| generation_pid(&j, 2)) else { return false };
        booting = group_priorities(pid);
        booting.len() >= 3 && booting.iter().filter(|(_, t)| t.len() >= 2).count() >= 2
    });
    if !found {
        herd.fail(&format!("generation 2 never showed a master and two workers with two threads: {booting:?}"));
    }
    assert!(
        booting.iter().flat_map(|(_, t)| t).all(|&p| p == (boot_nice, SCHED_BATCH)),
        "while booting, every thread of generation 2 runs at nice {boot_nice} and SCHED_BATCH: {booting:?}"
    );
    let json = status_json(herd.pid()).unwrap();
    let gen2 = json.get("generations").arr().iter().find(|g| g.get("number").num() == Some(2.0)).unwrap();
    assert_eq!(gen2.get("boot_priority").bool(), Some(true), "{json:?}");

    std::fs::write(&go, "").unwrap();
    let mut reload = reload;
    let status = reload.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "reload failed: {}{}", reload.stdout(), reload.stderr());
    let gen2 = generation_pid(&status_json(herd.pid()).unwrap(), 2).unwrap();
    let ready = group_priorities(gen2);
    assert!(ready.len() >= 3, "{ready:?}");
    assert!(
        ready.iter().flat_map(|(_, t)| t).all(|&p| p == (own_nice, SCHED_OTHER)),
        "once ready, every thread of generation 2 is back at nice {own_nice} and SCHED_OTHER: {ready:?}"
    );
}

/// A generation that is still not ready at half its `--ready-timeout` is set back to normal
/// priority (a boot starved by a busy serving generation must not fail the reload), while it is
/// still starting.
#[test]
fn a_generation_still_booting_at_half_its_ready_timeout_gets_its_priority_back() {
    require!("python3");
    let dir = TempDir::new("boot-priority-timeout");
    let go = dir.join("go");
    std::fs::write(&go, "").unwrap();
    let ready = format!("cmd:test -e {}", go.display());
    let mut herd = Proc::spawn(
        sockherd_cmd(&[
            "run",
            "--boot-priority",
            "on",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--ready",
            &ready,
            "--ready-settle",
            "0",
            "--ready-timeout",
            "6s",
            "--",
            "python3",
            "-c",
            "import time; time.sleep(600)",
        ]),
        dir.path(),
        "sockherd",
    );
    common::run::wait_generations(&mut herd, "generation 1 serving", Duration::from_secs(30), |g| {
        g.len() == 1 && g[0].state == "serving"
    });
    let own_nice = std::fs::read_to_string(format!("/proc/{}/stat", herd.pid()))
        .ok()
        .and_then(|s| sockherd::resources::stat_priority(&s))
        .map(|(nice, _)| nice)
        .unwrap();
    std::fs::remove_file(&go).unwrap();
    let mut reload = Proc::spawn(
        sockherd_cmd(&["reload", "--pid", &herd.pid().to_string(), "--timeout", "60s"]),
        dir.path(),
        "reload",
    );
    let gen2 = common::run::wait_generations(&mut herd, "generation 2 starting", Duration::from_secs(10), |g| {
        g.iter().any(|g| g.number == 2)
    });
    let pid = gen2.iter().find(|g| g.number == 2).unwrap().pid;
    let mut seen = Vec::new();
    let low = wait_until(Duration::from_secs(2), || {
        seen = group_priorities(pid);
        !seen.is_empty() && seen.iter().flat_map(|(_, t)| t).all(|&(_, policy)| policy == SCHED_BATCH)
    });
    assert!(low, "generation 2 should boot at SCHED_BATCH: {seen:?}");
    let normal = wait_until(Duration::from_secs(5), || {
        seen = group_priorities(pid);
        !seen.is_empty() && seen.iter().flat_map(|(_, t)| t).all(|&p| p == (own_nice, SCHED_OTHER))
    });
    let still_starting = common::run::generations(herd.pid()).iter().any(|g| g.number == 2 && g.state == "starting");
    assert!(
        normal && still_starting,
        "set back while starting, before the 6 s timeout: {seen:?}, starting {still_starting}"
    );
    assert!(herd.stderr().contains("generation 2 is not ready after"), "{}", herd.stderr());
    // And the reload still fails at the timeout, as it would have.
    assert_eq!(reload.wait_exit(Duration::from_secs(30)).code(), Some(1), "{}", reload.stderr());
}

/// sockherd's own memory cgroup in the v1 memory hierarchy, where a test can make a child
/// cgroup with a limit of its own.
fn v1_memory_cgroup() -> Option<PathBuf> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    sockherd::resources::memory_cgroups(&cgroups, &mounts)
        .into_iter()
        .map(|(dir, _)| dir)
        .find(|dir| dir.join("memory.limit_in_bytes").exists())
}

fn read_u64(path: &Path) -> u64 {
    std::fs::read_to_string(path).unwrap().trim().parse().unwrap()
}

/// A cgroup of the test's own, removed (once empty) on drop.
struct Cgroup(PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        wait_until(Duration::from_secs(10), || std::fs::remove_dir(&self.0).is_ok() || !self.0.exists());
    }
}

/// The service's memory limit cannot hold its serving generation once more: the reload fails at
/// once with the numbers, generation 1 keeps serving, and no generation 2 ever ran. With the
/// limit lifted, the same reload goes through.
///
/// The limit is a cgroup v1 memory limit (what MemoryMax= sets on a hybrid host) on a cgroup
/// the test makes under its own: the systemd boxes (tests/support/sdbox) get a cgroup2 tree
/// whose hierarchy has no memory controller on this kind of host, so a MemoryMax= inside them
/// limits nothing that sockherd could read.
#[test]
fn a_reload_the_memory_limit_cannot_hold_fails_and_the_old_generation_serves() {
    require!(root);
    require!("python3");
    let Some(parent) = v1_memory_cgroup() else {
        prerequisite(false, "a cgroup v1 memory controller (memory.limit_in_bytes) to set a limit in");
        return;
    };
    let dir = TempDir::new("memory-budget");
    // 64 MiB of touched anonymous memory, then serve fd 3.
    std::fs::write(
        dir.join("hog.py"),
        "import os, socket, http.server\n\
         ballast = bytearray(64 << 20)\n\
         ballast[::4096] = b'x' * len(range(0, len(ballast), 4096))\n\
         class H(http.server.BaseHTTPRequestHandler):\n    \
             def do_GET(self):\n        \
                 body = ('pid=%d' % os.getpid()).encode()\n        \
                 self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers()\n        \
                 self.wfile.write(body)\n    \
             def log_message(self, *args): pass\n\
         server = http.server.HTTPServer(('127.0.0.1', 0), H, bind_and_activate=False)\n\
         server.socket = socket.socket(fileno=3)\n\
         server.serve_forever()\n",
    )
    .unwrap();
    let cgroup = Cgroup(parent.join(format!("sockherd-test-budget-{}", std::process::id())));
    std::fs::create_dir(&cgroup.0).unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // sockherd enters the cgroup before it starts (it and everything it forks are charged there).
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
        .arg(&cgroup.0)
        .arg(sockherd())
        .args(["run", "--listen", &addr, "--ready", "exec", "--ready-settle", "0", "--", "python3"])
        .arg(dir.join("hog.py"));
    for var in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_PIDFDID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "JOURNAL_STREAM"] {
        cmd.env_remove(var);
    }
    let mut herd = Proc::spawn(cmd, dir.path(), "sockherd");
    let first = wait_http_ok(&mut herd, &addr, Duration::from_secs(30)).body;

    // Room for a little more than half of generation 1: what it uses now (its inactive page
    // cache, which the kernel reclaims first, not counted) plus 24 MiB.
    let usage = read_u64(&cgroup.0.join("memory.usage_in_bytes"));
    let stat = std::fs::read_to_string(cgroup.0.join("memory.stat")).unwrap();
    let inactive: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("total_inactive_file "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let limit = usage - inactive + (24 << 20);
    std::fs::write(cgroup.0.join("memory.limit_in_bytes"), limit.to_string()).unwrap();

    let pid = herd.pid().to_string();
    let (status, _, stderr) =
        run_sockherd(&["reload", "--pid", &pid, "--timeout", "30s"], dir.path(), Duration::from_secs(40));
    assert_eq!(status.code(), Some(1), "the reload must fail: {stderr}");
    for needle in ["needs ≈ ", "MiB free (memory.limit_in_bytes of ", "generation 1's PSS", "still serving"] {
        assert!(stderr.contains(needle), "the refusal must say {needle:?}: {stderr}");
    }
    let json = status_json(herd.pid()).unwrap();
    let generations = json.get("generations").arr();
    assert_eq!(generations.len(), 1, "no generation 2 was started: {json:?}");
    assert_eq!(generations[0].get("state").str(), Some("serving"));
    assert!(generations[0].get("memory_bytes").num().unwrap() >= (64 << 20) as f64, "{json:?}");
    assert_eq!(http_get(&addr, "/").unwrap().body, first, "generation 1 still answers");
    assert!(herd.stderr().contains("reload failed: not enough memory"), "{}", herd.stderr());

    // The same reload with the limit lifted goes through: the refusal was the limit's.
    std::fs::write(cgroup.0.join("memory.limit_in_bytes"), "-1").unwrap();
    let (status, _, stderr) =
        run_sockherd(&["reload", "--pid", &pid, "--timeout", "30s"], dir.path(), Duration::from_secs(40));
    assert!(status.success(), "{stderr}");
    let log = herd.stderr();
    // With room to spare, the processes' RSS (an upper bound, cheap to read) settles it: their
    // PSS is not read.
    assert!(log.contains("memory check passed for generation 3: needs at most "), "{log}");
    assert!(log.contains("(RSS of generation 1's "), "{log}");
    // reload_done tells what the new generation uses (in the journal as SOCKHERD_MEMORY_BYTES,
    // SOCKHERD_CPU_MS, SOCKHERD_PROCESSES).
    let done = log.lines().find(|l| l.contains("reload done:")).unwrap_or_else(|| panic!("{log}"));
    assert!(done.contains("[generation 3: ") && done.contains(", CPU ") && done.contains(" MiB (PSS)]"), "{done}");
    assert_ne!(http_get(&addr, "/").unwrap().body, first);

    herd.signal(15);
    herd.wait_exit(Duration::from_secs(30));
}

/// Inside real systemd, the gunicorn units as shipped: a reload checks the memory budget from
/// what it can read there (the box's cgroup2 tree has no memory controller on a hybrid host, so
/// no MemoryMax= is readable and the host's MemAvailable bounds the room; the serving
/// generation's size is bounded by its RSS, which fits), passes it, and `reload_done` in the journal carries the new
/// generation's resources.
fn budget_and_priority_inside_systemd(systemd: common::sdbox::Systemd) {
    use common::sdbox::{Deployment, Server};
    require!(root);
    let Some(d) = Deployment::install_on("resources", Server::Gunicorn, systemd) else {
        prerequisite(false, &format!("a box with {systemd} and gunicorn"));
        return;
    };
    d.start();
    d.flip("r2");
    let (code, out, _) = d.reload();
    if code != 0 {
        d.sdbox.fail_unit("app", &format!("systemctl reload failed ({code}): {out}"));
    }
    let log = d.sdbox.ok("journalctl -u app -o cat --no-pager");
    for needle in ["memory check passed for generation 2: needs at most ", "(RSS of generation 1's "] {
        if !log.contains(needle) {
            d.sdbox.fail(&format!("the journal should say {needle:?}:\n{log}"));
        }
    }
    let done = d.sdbox.ok("journalctl -u app SOCKHERD_EVENT=reload_done -o verbose --no-pager");
    let memory: u64 = done
        .lines()
        .find_map(|l| l.trim().strip_prefix("SOCKHERD_MEMORY_BYTES="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if !done.contains("SOCKHERD_MEMORY_SOURCE=pss") || memory < 4 << 20 || !done.contains("SOCKHERD_CPU_MS=") {
        d.sdbox.fail(&format!("reload_done should carry generation 2's PSS and CPU:\n{done}"));
    }
}

// Two cells only (the oldest and the newest systemd), named outside the matrix's
// `::on_systemd_<N>` pattern, whose table has a row for every test that uses it.
#[test]
fn budget_and_priority_inside_systemd_252() {
    budget_and_priority_inside_systemd(common::sdbox::Systemd::V252)
}

#[test]
fn budget_and_priority_inside_systemd_262() {
    budget_and_priority_inside_systemd(common::sdbox::Systemd::V262)
}
