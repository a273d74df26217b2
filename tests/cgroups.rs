//! Generations as cgroups, inside a real systemd with the units as shipped (units/generic,
//! which delegates its cgroup): a worker that leaves its process group and ignores SIGTERM is
//! drained and killed with its generation, and the reload is not reported done while it holds
//! the sockets; a server that daemonizes gets a clear error and leaves nothing behind; each
//! generation is a `gen-N` cgroup of the service; a unit whose cgroup is left read-only is told
//! so and served with process groups. On systemd 252 (the host's) and 262 (the
//! newest of the matrix). The server is tests/support/scenario_server.py. And on the host, in a
//! cgroup the test creates and marks delegated: `gunicorn --daemon`; a worker in a cgroup its
//! generation made under gen-N; a forking generation killed without `cgroup.kill`; a drain that
//! wakes sockherd on no timer.
mod common;

use common::sdbox::{SdBox, Systemd, report_number as number, report_value as value, scenario_box};
use common::*;
use std::time::{Duration, Instant};

/// The drain timeout the scenarios run with: short, and long enough to tell from an instant.
const DRAIN_TIMEOUT_S: u64 = 3;

/// A scenario box (releases r1 and r2 with BEHAVIOR `r1` and `r2`, units/generic as shipped),
/// its ExecStart= given a short --drain-timeout.
fn install(tag: &str, systemd: Systemd, r1: &str, r2: &str) -> Option<SdBox> {
    let scenario = format!(
        "Environment=SCENARIO_ESCAPEE=/srv/app/shared/escapee.pid\nExecStart=\nExecStart=/usr/bin/sockherd run \
         --drain-timeout {DRAIN_TIMEOUT_S}s --chdir /srv/app/current -- /srv/app/current/bin/server"
    );
    scenario_box(tag, systemd, [r1, r2], &scenario)
}

/// The service's cgroup, as the box sees it.
const UNIT_CGROUP: &str = "/sys/fs/cgroup/system.slice/app.service";

/// r1's worker calls setsid() and ignores SIGTERM. After a reload to r2 it must be gone once the
/// drain timeout passed, the reload must not end before (it held the sockets until then), and
/// from then on only r2 answers.
fn escaping_worker_is_killed_at_the_drain_timeout(systemd: Systemd) {
    let tag = format!("escape-{}", systemd.version());
    let Some(sdbox) = install(&tag, systemd, "escape-worker", "serve") else { return };
    let before = sdbox.ok(&format!(
        r#"for i in $(seq 100); do [ -s /srv/app/shared/escapee.pid ] && break; sleep 0.1; done
echo "escapee=$(cat /srv/app/shared/escapee.pid)"
echo "groups=$(cd {UNIT_CGROUP} && ls -d */ | tr -d / | tr '\n' ' ')"
echo "gen1=$(tr '\n' ' ' <{UNIT_CGROUP}/gen-1/cgroup.procs)"
echo "cgls=$(systemd-cgls --no-pager -u app.service 2>&1 | grep -o 'gen-[0-9]*' | tr '\n' ' ')"
echo "mechanism=$(sockherd status --pid $(systemctl show -P MainPID app) | grep -i '^generations are')"
"#
    ));
    eprintln!("{tag}: before: {}", before.replace('\n', " "));
    let escapee = value(&before, "escapee").unwrap_or("").to_string();
    if escapee.is_empty() {
        sdbox.fail(&format!("r1's escaping worker never wrote its pid:\n{before}"));
    }
    sdbox.ok("cd /srv/app && ln -sfn releases/r2 current.new && mv -T current.new current");
    let started = Instant::now();
    let out = sdbox.sh("systemctl reload app 2>&1; echo exit=$?");
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let after = sdbox.ok(&format!(
        r#"alive=no; [ -d /proc/{escapee} ] && [ "$(cut -d' ' -f3 /proc/{escapee}/stat 2>/dev/null)" != Z ] && alive=yes
echo "alive=$alive"
r1=0; r2=0
for i in $(seq 20); do
  case "$(curl -sS -m 10 http://127.0.0.1:8080/)" in release=r1*) r1=$((r1+1));; release=r2*) r2=$((r2+1));; esac
done
echo "r1=$r1"; echo "r2=$r2"
echo "groups=$(cd {UNIT_CGROUP} && ls -d */ | tr -d / | tr '\n' ' ')"
"#
    ));
    eprintln!("{tag}: reload took {took:?}: {} {}", text.trim(), after.replace('\n', " "));
    if !text.contains("exit=0") {
        sdbox.fail(&format!("the reload should succeed: {text}"));
    }
    if value(&after, "alive") != Some("no") {
        sdbox.fail(&format!(
            "r1's escaping worker {escapee} is still running after the reload ended ({took:?}):\n{after}"
        ));
    }
    if took < Duration::from_secs(DRAIN_TIMEOUT_S) {
        sdbox.fail(&format!(
            "the reload ended after {took:?}, before the drain timeout ({DRAIN_TIMEOUT_S}s) took the worker holding the sockets"
        ));
    }
    if number(&after, "r1") != 0 || number(&after, "r2") != 20 {
        sdbox.fail(&format!("after the reload only r2 may answer:\n{after}"));
    }
    // What the service looked like while r1 served.
    let groups: Vec<&str> = value(&before, "groups").unwrap_or("").split_whitespace().collect();
    if !groups.contains(&"gen-1") || !groups.contains(&"supervisor") {
        sdbox.fail(&format!("app.service's cgroup should hold supervisor and gen-1:\n{before}"));
    }
    if !value(&before, "gen1").unwrap_or("").split_whitespace().any(|p| p == escapee) {
        sdbox.fail(&format!("the escaping worker {escapee} should be in gen-1:\n{before}"));
    }
    if !value(&before, "cgls").unwrap_or("").contains("gen-1") {
        sdbox.fail(&format!("systemd-cgls should show gen-1:\n{before}"));
    }
    if !value(&before, "mechanism").unwrap_or("").contains("cgroup") {
        sdbox.fail(&format!("sockherd status should name the cgroup mechanism:\n{before}"));
    }

    let groups: Vec<&str> = value(&after, "groups").unwrap_or("").split_whitespace().collect();
    if groups.contains(&"gen-1") || !groups.contains(&"gen-2") {
        sdbox.fail(&format!("after the reload gen-1 should be removed and gen-2 serve:\n{after}"));
    }

    // A stop leaves nothing either (the escapee of r1 is gone already; r2 stops cleanly).
    let stop = sdbox.ok(&format!(
        "systemctl stop app; echo state=$(systemctl show -P ActiveState app); echo left=$(cat {UNIT_CGROUP}/cgroup.procs 2>/dev/null | wc -l)"
    ));
    if value(&stop, "state") != Some("inactive") || number(&stop, "left") != 0 {
        sdbox.fail(&format!("the stop should leave nothing:\n{stop}"));
    }
}

/// r2 daemonizes (fork, setsid, fork; the process sockherd started exits 0): the reload fails
/// at once with the fix, nothing of r2 is left running, and r1 keeps serving.
fn daemonizing_server_is_refused(systemd: Systemd) {
    let tag = format!("daemon-{}", systemd.version());
    let Some(sdbox) = install(&tag, systemd, "serve", "daemonize") else { return };
    sdbox.ok("cd /srv/app && ln -sfn releases/r2 current.new && mv -T current.new current");
    let out = sdbox.sh("systemctl reload app 2>&1; echo exit=$?");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let after = sdbox.ok(&format!(
        r#"for i in $(seq 100); do [ -s /srv/app/shared/escapee.pid ] && break; sleep 0.1; done
daemon=$(cat /srv/app/shared/escapee.pid 2>/dev/null)
echo "daemon=$daemon"
sleep 1
alive=no; [ -n "$daemon" ] && [ -d /proc/$daemon ] && [ "$(cut -d' ' -f3 /proc/$daemon/stat 2>/dev/null)" != Z ] && alive=yes
echo "alive=$alive"
r1=0; r2=0
for i in $(seq 10); do
  case "$(curl -sS -m 10 http://127.0.0.1:8080/)" in release=r1*) r1=$((r1+1));; release=r2*) r2=$((r2+1));; esac
done
echo "r1=$r1"; echo "r2=$r2"
echo "active=$(systemctl show -P ActiveState app)"
echo "groups=$(cd {UNIT_CGROUP} && ls -d */ | tr -d / | tr '\n' ' ')"
echo "journal=$(journalctl -u app --no-pager -o cat | grep -c 'remove --daemon')"
"#
    ));
    eprintln!("{tag}: {} {}", text.trim(), after.replace('\n', " "));
    if text.contains("exit=0") {
        sdbox.fail(&format!("the reload to a daemonizing release must fail: {text}"));
    }
    if number(&after, "journal") == 0 {
        sdbox.fail(&format!("the journal should tell to remove --daemon: {text}\n{after}"));
    }
    if value(&after, "daemon").unwrap_or("").is_empty() {
        sdbox.fail(&format!("r2 should have daemonized (it writes its daemon's pid):\n{after}"));
    }
    if value(&after, "alive") != Some("no") {
        sdbox.fail(&format!("r2's daemon must not be left running:\n{after}"));
    }
    if number(&after, "r2") != 0 || number(&after, "r1") != 10 || value(&after, "active") != Some("active") {
        sdbox.fail(&format!("r1 should keep serving alone:\n{after}"));
    }
    if value(&after, "groups").unwrap_or("").contains("gen-2") {
        sdbox.fail(&format!("r2's cgroup should be removed:\n{after}"));
    }
}

/// Under ProtectControlGroups=yes the service's cgroup is writable only where ReadWritePaths=
/// names it. A unit that does not (here: a drop-in that resets ReadWritePaths=) has a delegated
/// cgroup it cannot write: sockherd must say so, naming the line to add, and
/// serve and reload with process groups instead of failing to start its generations.
fn read_only_cgroup_is_said_and_served_with_process_groups(systemd: Systemd) {
    let tag = format!("rocg-{}", systemd.version());
    let Some(sdbox) = scenario_box(
        &tag,
        systemd,
        ["serve", "serve"],
        "ProtectControlGroups=yes\nReadWritePaths=\nReadWritePaths=/srv/app/shared",
    ) else {
        return;
    };
    sdbox.ok("cd /srv/app && ln -sfn releases/r2 current.new && mv -T current.new current");
    let out = sdbox.sh("systemctl reload app 2>&1; echo exit=$?");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let after = sdbox.ok(&format!(
        r#"echo "answer=$(curl -sS -m 10 http://127.0.0.1:8080/ | head -c 10)"
echo "mechanism=$(sockherd status --pid $(systemctl show -P MainPID app) | grep -i '^generations are')"
echo "groups=$(cd {UNIT_CGROUP} && ls -d */ 2>/dev/null | tr -d / | tr '\n' ' ')"
"#
    ));
    eprintln!("{tag}: {} {}", text.trim(), after.replace('\n', " "));
    let mechanism = value(&after, "mechanism").unwrap_or("");
    let reason = format!(
        "its delegated cgroup {UNIT_CGROUP} is read-only here (ProtectControlGroups=yes): give the unit ReadWritePaths={UNIT_CGROUP}"
    );
    if !mechanism.contains("process groups") || !mechanism.contains(&reason) {
        sdbox.fail(&format!("sockherd status should say the generations are process groups, and why:\n{after}"));
    }
    if !text.contains("exit=0") || value(&after, "answer") != Some("release=r2") {
        sdbox.fail(&format!("the reload should succeed with process groups:\n{text}\n{after}"));
    }
    if value(&after, "groups").unwrap_or("").contains("gen-") {
        sdbox.fail(&format!("no generation cgroup can exist in a read-only cgroup:\n{after}"));
    }
}

#[test]
fn read_only_cgroup_is_said_and_served_with_process_groups_on_systemd_252() {
    read_only_cgroup_is_said_and_served_with_process_groups(Systemd::V252);
}

#[test]
fn read_only_cgroup_is_said_and_served_with_process_groups_on_systemd_262() {
    read_only_cgroup_is_said_and_served_with_process_groups(Systemd::V262);
}

#[test]
fn escaping_worker_is_killed_at_the_drain_timeout_on_systemd_252() {
    escaping_worker_is_killed_at_the_drain_timeout(Systemd::V252);
}

#[test]
fn escaping_worker_is_killed_at_the_drain_timeout_on_systemd_262() {
    escaping_worker_is_killed_at_the_drain_timeout(Systemd::V262);
}

#[test]
fn daemonizing_server_is_refused_on_systemd_252() {
    daemonizing_server_is_refused(Systemd::V252);
}

#[test]
fn daemonizing_server_is_refused_on_systemd_262() {
    daemonizing_server_is_refused(Systemd::V262);
}

/// `gunicorn --daemon` (its master forks, the fork calls setsid() and forks the arbiter, the
/// master exits 0) under `sockherd run` in a delegated cgroup on the host: the start fails with
/// the fix, and nothing of it is left. The cgroup is one this test creates on the host's cgroup2
/// tree and marks delegated as systemd marks a `Delegate=yes` unit's; it is removed afterwards.
#[test]
fn gunicorn_daemon_is_refused_and_leaves_nothing() {
    let gunicorn = common::sdbox::test_venv().join("bin/gunicorn");
    if !prerequisite(is_root(), "root (to create a cgroup and mark it delegated)")
        || !prerequisite(gunicorn.exists(), &format!("gunicorn at {}", gunicorn.display()))
    {
        return;
    }
    let Some(cgroup) = DelegatedCgroup::create("gunicorn-daemon") else { return };
    let addr = format!("127.0.0.1:{}", free_port());
    let out = std::process::Command::new("timeout")
        .arg("60")
        .args(["sh", "-c", r#"echo $$ >"$0/cgroup.procs" && exec "$@""#])
        .arg(&cgroup.0)
        .arg(sockherd())
        .args(["run", "--flavor", "gunicorn", "--listen", &addr, "--chdir"])
        .arg(contrib("app"))
        .arg("--")
        .arg(&gunicorn)
        .args(["--daemon", "-b", "127.0.0.1:0", "app:app"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run sockherd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let left = cgroup.processes();
    let generations: Vec<String> = std::fs::read_dir(&cgroup.0)
        .map(|d| {
            d.flatten().filter_map(|e| e.file_name().into_string().ok()).filter(|n| n.starts_with("gen-")).collect()
        })
        .unwrap_or_default();
    eprintln!("gunicorn --daemon: {:?}, left {left:?}, cgroups {generations:?}\n{stderr}", out.status);
    assert!(stderr.contains("generations are cgroups"), "sockherd should have run generations as cgroups:\n{stderr}");
    assert_eq!(out.status.code(), Some(1), "the start must fail:\n{stderr}");
    assert!(stderr.contains("daemonized") && stderr.contains("remove --daemon"), "the fix must be named:\n{stderr}");
    assert!(left.is_empty(), "gunicorn --daemon left processes {left:?}:\n{stderr}");
    assert!(generations.is_empty(), "the generation's cgroup should be removed: {generations:?}");
}

/// A drain in cgroup mode wakes sockherd only for what happens to the generation, never on a
/// timer: the old generation (tests/support/scenario_server.py, `hold-after-term:2`) keeps the
/// sockets 2 s after its stop signal, and sockherd's voluntary context switches over those
/// 2 s stay a handful (a 10 ms timer would make about 200, the 20 ms `/proc` poll of process-group
/// mode about 100). Host, in a cgroup the test creates and marks delegated.
#[test]
fn a_drain_in_cgroup_mode_wakes_no_timer() {
    if !prerequisite(is_root(), "root (to create a cgroup and mark it delegated)") {
        return;
    }
    let Some(cgroup) = DelegatedCgroup::create("drain-wakeups") else { return };
    let dir = TempDir::new("drain-wakeups");
    let release = dir.join("r1");
    std::fs::create_dir_all(&release).unwrap();
    std::fs::write(release.join("RELEASE"), "r1\n").unwrap();
    std::fs::write(release.join("BEHAVIOR"), "hold-after-term:2\n").unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", r#"echo $$ >"$0/cgroup.procs" && exec "$@""#])
        .arg(&cgroup.0)
        .arg(sockherd())
        .args(["run", "--listen", &addr, "--chdir"])
        .arg(&release)
        .args(["--", "python3"])
        .arg(run::support("scenario_server.py"));
    let mut proc = Proc::spawn(cmd, dir.path(), "sockherd");
    run::wait_generations(&mut proc, "generation 1 serving", Duration::from_secs(30), |g| {
        g.iter().any(|g| g.state == "serving")
    });
    let mode = run::status_json(proc.pid()).map(|j| j.get("membership").get("mode").str().unwrap_or("").to_string());
    assert_eq!(mode.as_deref(), Some("cgroup"), "sockherd should run generations as cgroups:\n{}", proc.stderr());
    let mut reload = sockherd_cmd(&["reload", "--pid", &proc.pid().to_string(), "--timeout", "30s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start sockherd reload");
    run::wait_generations(&mut proc, "generation 1 draining", Duration::from_secs(30), |g| {
        g.iter().any(|g| g.number == 1 && g.state == "draining")
    });
    let before = voluntary_switches(proc.pid());
    let since = Instant::now();
    let answered = reload.wait().expect("wait for sockherd reload");
    let (drain, after) = (since.elapsed(), voluntary_switches(proc.pid()));
    let wakeups = after - before;
    eprintln!("{wakeups} wakeups during a drain of {drain:?}");
    assert!(answered.success(), "the reload should succeed:\n{}", proc.stderr());
    assert!(drain >= Duration::from_millis(1500), "the old generation should have held the sockets ~2 s: {drain:?}");
    assert!(wakeups <= 30, "{wakeups} wakeups during a {drain:?} drain: something polls on a timer");
    proc.signal(libc::SIGTERM);
    proc.wait_exit(Duration::from_secs(30));
}

/// A sockherd killed with SIGKILL in a unit whose `KillMode=` leaves the rest of its cgroup
/// alone (`process`) leaves its generation serving in gen-1, unsupervised. The next sockherd of
/// the service must not fail on that leftover (each start did: gen-1 exists, populated, so every
/// restart failed and the old generation served on alone) nor serve beside it forever: the
/// leftover gets the stop signal, as at a stop, and is gone before generation 1 starts. Host, in
/// a cgroup the test creates and marks delegated.
#[test]
fn a_generation_left_by_a_killed_sockherd_is_stopped_at_the_next_start() {
    if let Some(said) = leftover_generation("leftover", "serve", &[]) {
        assert!(
            said.contains("gen-1") && said.contains("sent SIGTERM to its master, gone"),
            "the start should say so:\n{said}"
        );
    }
}

/// The same with a leftover that ignores its stop signal for 30 s: it is killed once the stop
/// timeout (1 s here) passed, and the start goes on.
#[test]
fn a_leftover_generation_that_outlasts_the_stop_timeout_is_killed() {
    if let Some(said) = leftover_generation("leftover-kill", "hold-after-term:30", &["--stop-timeout", "1s"]) {
        assert!(said.contains("gen-1") && said.contains("after SIGTERM: killed"), "the start should say so:\n{said}");
    }
}

/// Starts sockherd (generations of tests/support/scenario_server.py with BEHAVIOR `behavior`,
/// `extra` options) in a delegated cgroup, SIGKILLs it, starts another with the same socket,
/// and checks that the new one serves in its place and no process of the old generation is
/// left. Returns the new sockherd's stderr; None when skipped.
fn leftover_generation(tag: &str, behavior: &str, extra: &[&str]) -> Option<String> {
    if !prerequisite(is_root(), "root (to create a cgroup and mark it delegated)") {
        return None;
    }
    let cgroup = DelegatedCgroup::create(tag)?;
    let dir = TempDir::new(tag);
    let release = dir.join("r1");
    std::fs::create_dir_all(&release).unwrap();
    std::fs::write(release.join("RELEASE"), "r1\n").unwrap();
    std::fs::write(release.join("BEHAVIOR"), format!("{behavior}\n")).unwrap();
    // The socket outlives each sockherd, as a socket unit's does: held here, passed as fd 3.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a listening socket");
    let addr = listener.local_addr().unwrap().to_string();
    let start = |name: &str| {
        let log = dir.join(&format!("{name}.stderr"));
        let socket = std::os::fd::OwnedFd::from(listener.try_clone().expect("dup the listening socket"));
        let mut cmd = std::process::Command::new("sh");
        cmd.args([
            "-c",
            r#"echo $$ >"$0/cgroup.procs" && exec 3<&0 0</dev/null && LISTEN_FDS=1 LISTEN_PID=$$ exec "$@""#,
        ])
        .arg(&cgroup.0)
        .arg(sockherd())
        .arg("run")
        .args(extra)
        .arg("--chdir")
        .arg(&release)
        .args(["--", "python3"])
        .arg(run::support("scenario_server.py"))
        .env_remove("NOTIFY_SOCKET")
        .stdin(std::process::Stdio::from(socket))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
        let mut child = cmd.spawn().expect("start sockherd");
        let pid = child.id() as i32;
        let serving = wait_until(Duration::from_secs(30), || {
            run::generations(pid).iter().any(|g| g.state == "serving") || child.try_wait().ok().flatten().is_some()
        }) && run::generations(pid).iter().any(|g| g.state == "serving");
        let said = std::fs::read_to_string(&log).unwrap_or_default();
        if !serving {
            let _ = child.kill();
            let status = child.wait();
            panic!("{name} sockherd: no generation serving within 30 s ({status:?}):\n{said}");
        }
        (child, log)
    };
    let procs = |dir: &std::path::Path| -> Vec<String> {
        std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().lines().map(String::from).collect()
    };
    let (mut first, _) = start("first");
    let gen1 = cgroup.0.join("gen-1");
    let old = procs(&gen1);
    assert!(!old.is_empty(), "the first sockherd's generation 1 should be in {}", gen1.display());
    first.kill().expect("SIGKILL the first sockherd");
    first.wait().expect("reap the first sockherd");
    // What KillMode=process leaves: the generation, serving alone.
    assert_eq!(procs(&gen1), old, "the generation should outlive its killed sockherd");

    let (mut second, log) = start("second");
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    let now = procs(&gen1);
    // A zombie is gone: it waits only for whichever process it was reparented to to reap it.
    let alive: Vec<&String> = old.iter().filter(|p| p.parse().is_ok_and(pid_alive)).collect();
    eprintln!("old generation {old:?}, still alive {alive:?}, gen-1 now {now:?}\n{said}");
    let answer = http_get(&addr, "/").map(|r| r.body).unwrap_or_default();
    let _ = second.kill();
    let _ = second.wait();
    assert!(alive.is_empty(), "the old generation's processes {alive:?} outlived the next start:\n{said}");
    assert!(
        !now.is_empty() && now.iter().all(|p| !old.contains(p)),
        "gen-1 should hold the new generation only: {now:?}"
    );
    assert!(said.contains("of an earlier sockherd"), "the start should say what it found:\n{said}");
    assert!(answer.contains("release=r1"), "the new generation should serve: {answer:?}");
    Some(said)
}

/// A process's voluntary context switches so far: each is a sleep it woke from.
fn voluntary_switches(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no voluntary_ctxt_switches for pid {pid}"))
}

/// A generation that makes a cgroup of its own under gen-N (its escaping worker moves into
/// gen-1/worker, ignores SIGTERM and keeps accepting): the worker is the generation's, so the
/// reload is not done before the drain timeout took it, and it is gone after. On the host, in a
/// cgroup this test creates and marks delegated; the server is tests/support/scenario_server.py.
#[test]
fn a_worker_in_a_cgroup_under_its_generation_holds_the_handoff_until_killed() {
    if !prerequisite(is_root(), "root (to create a cgroup and mark it delegated)")
        || !prerequisite(have("python3"), "python3")
    {
        return;
    }
    let Some(cgroup) = DelegatedCgroup::create("subgroup") else { return };
    let dir = TempDir::new("subgroup-worker");
    for (release, behavior) in [("r1", "subgroup-worker"), ("r2", "serve")] {
        std::fs::create_dir_all(dir.join(&format!("releases/{release}"))).unwrap();
        std::fs::write(dir.join(&format!("releases/{release}/RELEASE")), release).unwrap();
        std::fs::write(dir.join(&format!("releases/{release}/BEHAVIOR")), behavior).unwrap();
    }
    std::os::unix::fs::symlink("releases/r1", dir.join("current")).unwrap();
    let escapee_file = dir.join("escapee.pid");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", r#"echo $$ >"$0/cgroup.procs" && exec "$@""#])
        .arg(&cgroup.0)
        .arg(sockherd())
        .args(["run", "--listen", &addr, "--ready-settle", "0"])
        .args(["--drain-timeout", &format!("{DRAIN_TIMEOUT_S}s"), "--chdir"])
        .arg(dir.join("current"))
        .args(["--", "python3"])
        .arg(repo().join("tests/support/scenario_server.py"))
        .env("SCENARIO_ESCAPEE", &escapee_file);
    for var in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_PIDFDID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "JOURNAL_STREAM"] {
        cmd.env_remove(var);
    }
    let mut herd = Proc::spawn(cmd, dir.path(), "sockherd");
    wait_http_ok(&mut herd, &addr, Duration::from_secs(30));
    if !wait_until(Duration::from_secs(10), || escapee_file.exists()) {
        herd.fail("r1's worker never wrote its pid");
    }
    let escapee = std::fs::read_to_string(&escapee_file).unwrap().trim().to_string();
    let in_worker = std::fs::read_to_string(cgroup.0.join("gen-1/worker/cgroup.procs")).unwrap_or_default();
    if !in_worker.lines().any(|p| p == escapee) {
        herd.fail(&format!("the worker {escapee} should be in gen-1/worker: {in_worker:?}"));
    }
    std::fs::remove_file(dir.join("current")).unwrap();
    std::os::unix::fs::symlink("releases/r2", dir.join("current")).unwrap();
    let pid = herd.pid().to_string();
    let started = Instant::now();
    let (status, _, stderr) =
        run_sockherd(&["reload", "--pid", &pid, "--timeout", "30s"], dir.path(), Duration::from_secs(40));
    let took = started.elapsed();
    let alive = pid_alive(escapee.parse().unwrap());
    let generations: Vec<String> = std::fs::read_dir(&cgroup.0)
        .map(|d| {
            d.flatten().filter_map(|e| e.file_name().into_string().ok()).filter(|n| n.starts_with("gen-")).collect()
        })
        .unwrap_or_default();
    eprintln!("reload took {took:?}: {status:?} {stderr}; worker alive: {alive}; cgroups {generations:?}");
    if !status.success() {
        herd.fail(&format!("the reload should succeed: {stderr}"));
    }
    if took < Duration::from_secs(DRAIN_TIMEOUT_S) {
        herd.fail(&format!(
            "the reload ended after {took:?}, before the drain timeout ({DRAIN_TIMEOUT_S}s) took the worker holding the sockets"
        ));
    }
    if !wait_until(Duration::from_secs(5), || !pid_alive(escapee.parse().unwrap())) {
        herd.fail(&format!("r1's worker {escapee} in gen-1/worker is still running after the reload"));
    }
    if !wait_until(Duration::from_secs(5), || !cgroup.0.join("gen-1").exists()) {
        herd.fail("gen-1 (with the worker's cgroup under it) should be removed");
    }
    herd.signal(15);
    herd.wait_exit(Duration::from_secs(30));
}

/// Without `cgroup.kill` (kernels before 5.14), a generation is killed by freezing its cgroup
/// and killing what its `cgroup.procs` lists until nothing is left: a real cgroup whose process
/// forks a new child every 5 ms, in a cgroup of its own under it, ends up empty.
#[test]
fn a_forking_generation_is_killed_without_cgroup_kill() {
    if !prerequisite(is_root(), "root (to create a cgroup)") {
        return;
    }
    let Some(cgroup) = DelegatedCgroup::create("kill-each") else { return };
    let inner = cgroup.0.join("sub");
    std::fs::create_dir(&inner).expect("create a cgroup under it");
    let mut forker = std::process::Command::new("sh")
        .args(["-c", r#"echo $$ >"$0/cgroup.procs" && while :; do sleep 30 & sleep 0.005; done"#])
        .arg(&inner)
        .spawn()
        .expect("sh");
    assert!(wait_until(Duration::from_secs(5), || cgroup.processes().len() > 10), "{:?}", cgroup.processes());
    let started = Instant::now();
    let killed = sockherd::cgroup::kill_each(&cgroup.0);
    let took = started.elapsed();
    let _ = forker.wait();
    let left = cgroup.processes();
    let frozen = std::fs::read_to_string(cgroup.0.join("cgroup.freeze")).unwrap_or_default();
    eprintln!("killed in {took:?}: {killed:?}, left {left:?}, cgroup.freeze {}", frozen.trim());
    killed.expect("kill_each");
    assert!(left.is_empty(), "left: {left:?}");
    assert_eq!(frozen.trim(), "0", "the cgroup must be thawed again");
}

/// A cgroup of the test's own on the host's cgroup2 tree, marked delegated; killed and removed
/// (with what sockherd created in it) on drop.
struct DelegatedCgroup(std::path::PathBuf);

impl DelegatedCgroup {
    fn create(tag: &str) -> Option<DelegatedCgroup> {
        let root = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .into_iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.join("cgroup.controllers").exists());
        if !prerequisite(root.is_some(), "a cgroup2 hierarchy") {
            return None;
        }
        let path = root.unwrap().join(format!("sockherd-test-{tag}-{}", std::process::id()));
        std::fs::create_dir(&path).expect("create a cgroup");
        let cgroup = DelegatedCgroup(path);
        let marked = std::process::Command::new("python3")
            .args(["-c", "import os, sys; os.setxattr(sys.argv[1], 'trusted.delegate', b'1')"])
            .arg(&cgroup.0)
            .status();
        if !prerequisite(marked.is_ok_and(|s| s.success()), "python3 marking the cgroup delegated (trusted.delegate)") {
            return None;
        }
        Some(cgroup)
    }

    /// Every process left anywhere in it.
    fn processes(&self) -> Vec<String> {
        let mut pids = Vec::new();
        for dir in self.dirs() {
            pids.extend(
                std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().lines().map(String::from),
            );
        }
        pids
    }

    /// It and every cgroup under it, deepest first.
    fn dirs(&self) -> Vec<std::path::PathBuf> {
        let mut dirs = vec![self.0.clone()];
        let mut next = 0;
        while let Some(dir) = dirs.get(next).cloned() {
            next += 1;
            let children = std::fs::read_dir(&dir).into_iter().flatten().flatten().map(|e| e.path());
            dirs.extend(children.filter(|p| p.is_dir()));
        }
        dirs.reverse();
        dirs
    }
}

impl Drop for DelegatedCgroup {
    fn drop(&mut self) {
        for dir in self.dirs() {
            let _ = std::fs::write(dir.join("cgroup.kill"), "1");
            wait_until(Duration::from_secs(5), || {
                std::fs::read_to_string(dir.join("cgroup.events")).is_ok_and(|e| e.contains("populated 0"))
            });
            let _ = std::fs::remove_dir(&dir);
        }
    }
}
