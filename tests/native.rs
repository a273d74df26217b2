//! Native upgrade mode inside a real systemd, with units/unicorn-native and units/nginx as
//! shipped: `systemctl reload app` drives the server's own USR2 upgrade, and systemd's MainPID
//! follows the new master each time. And outside systemd, against a real unicorn (or a
//! purpose-built server where a race must be forced): which process is the new master, when it
//! is ready, and what a drain timeout may kill.
mod common;

use std::process::Command;
use std::time::Duration;

use common::Proc;
use common::sdbox::{Deployment, Server, Systemd, report_number as number, report_value as value};

const RELOADS: usize = 10;

/// `systemctl reload` `reloads` times under load (hey with 4 keep-alive connections, curl
/// loops on TCP and unix); reports MainPID after each reload and the load's outcome.
fn native_reloads_under_load(d: &Deployment, reloads: usize) -> String {
    let hey_flags = std::env::var("SOCKHERD_TEST_HEY_FLAGS").unwrap_or_default();
    d.sdbox.ok(&format!(
        r#"
set -u
HEY_FLAGS="{hey_flags}"
rm -f /tmp/load.*
loop() {{ local name=$1; shift; local ok=0 fail=0
  while [ ! -e /tmp/load.stop ]; do
    code=$(curl -sS -m 30 -o /dev/null -w '%{{http_code}}' "$@" 2>>/tmp/load.$name.err)
    if [ "$code" = 200 ]; then ok=$((ok+1)); else fail=$((fail+1)); echo "HTTP $code" >>/tmp/load.$name.err; fi
  done; echo "$name.ok=$ok $name.fail=$fail" >/tmp/load.$name.result; }}
loop tcp http://127.0.0.1:8080/ & tcp=$!
loop unix --unix-socket /run/app.sock http://app/ & unix=$!
hey -z 300s -c 4 $HEY_FLAGS http://127.0.0.1:8080/ >/tmp/load.hey 2>&1 & hey=$!
echo "mainpid.0=$(systemctl show -P MainPID app)"
for i in $(seq {reloads}); do
  if ! out=$(systemctl reload app 2>&1); then echo "reload.failed=$i $out"; fi
  echo "mainpid.$i=$(systemctl show -P MainPID app)"
  echo "pidfile.$i=$(cat /run/app/*.pid 2>/dev/null | head -1)"
done
sleep 0.5
touch /tmp/load.stop; kill -INT $hey; wait $tcp $unix $hey
cat /tmp/load.tcp.result /tmp/load.unix.result | tr ' ' '\n'
echo "hey.200=$(awk '$1 == "[200]" {{n += $2}} END {{print n + 0}}' /tmp/load.hey)"
sed -n '/Status code distribution/,/^$/p' /tmp/load.hey | grep -o '\[[0-9]*\][[:space:]]*[0-9]*' | tr -s ' ' | sed 's/^/hey.status=/'
grep -q 'Error distribution' /tmp/load.hey && echo "hey.errors=$(sed -n '/Error distribution/,$p' /tmp/load.hey | tr '\n' ' ')"
grep -h -v '^HTTP 200' /tmp/load.tcp.err /tmp/load.unix.err | head -5 | sed 's/^/error=/'
echo "masters=$(pgrep -u app -f 'master' | wc -l)"
true
"#
    ))
}

/// Every reload succeeded, MainPID changed each time to the master the pid file names, and no
/// request failed.
fn check_reloads(d: &Deployment, report: &str) {
    if let Some(failed) = value(report, "reload.failed") {
        d.sdbox.fail(&format!("systemctl reload failed: {failed}\n{report}"));
    }
    let reloads = (1..).take_while(|i| value(report, &format!("mainpid.{i}")).is_some()).count();
    let pids: Vec<&str> = (0..=reloads).map(|i| value(report, &format!("mainpid.{i}")).unwrap_or("0")).collect();
    let mut distinct = pids.clone();
    distinct.sort();
    distinct.dedup();
    if reloads == 0 || distinct.len() != reloads + 1 || pids.contains(&"0") {
        d.sdbox.fail(&format!("MainPID did not move to a new master on every reload: {pids:?}\n{report}"));
    }
    let named: Vec<&str> = (1..=reloads).map(|i| value(report, &format!("pidfile.{i}")).unwrap_or("")).collect();
    if named != pids[1..] {
        d.sdbox.fail(&format!("MainPID {:?} is not the master the pid file names {named:?}\n{report}", &pids[1..]));
    }
    let fails = number(report, "tcp.fail") + number(report, "unix.fail");
    if fails > 0 || value(report, "hey.errors").is_some() || value(report, "error").is_some() {
        d.sdbox.fail(&format!("requests failed during native reloads:\n{report}"));
    }
    let statuses: Vec<&str> = report.lines().filter_map(|l| l.strip_prefix("hey.status=")).collect();
    if statuses.is_empty() || statuses.iter().any(|s| !s.starts_with("[200]")) {
        d.sdbox
            .fail(&format!("hey got answers other than 200 (every status line must be [200]): {statuses:?}\n{report}"));
    }
    if number(report, "tcp.ok") < 20 || number(report, "unix.ok") < 20 || number(report, "hey.200") < 100 {
        d.sdbox.fail(&format!("too few requests to call it a load:\n{report}"));
    }
    if number(report, "masters") != 1 {
        d.sdbox.fail(&format!("expected exactly one master left after the reloads:\n{report}"));
    }
}

/// `systemctl stop app` leaves no process in app.service's cgroup: found by cgroup
/// (/proc/PID/cgroup), not by user; the master and its workers (at least 3) before, none after.
fn stop_leaves_nothing(d: &Deployment) {
    let report = d.sdbox.ok(
        r#"
in_unit() { grep -l -E '/app\.service(/|$)' /proc/[0-9]*/cgroup 2>/dev/null | cut -d/ -f3 | sort -n | tr '\n' ' '; }
before=$(in_unit)
echo "before=$before"
systemctl stop app
echo "state=$(systemctl show -P ActiveState app)"
echo "after=$(in_unit)"
alive=""; for p in $before; do [ -d /proc/$p ] && [ "$(cut -d' ' -f3 /proc/$p/stat 2>/dev/null)" != Z ] && alive="$alive $p"; done
echo "alive=$alive"
"#,
    );
    let before = value(&report, "before").unwrap_or("").split_whitespace().count();
    let after = value(&report, "after").unwrap_or("").trim().to_string();
    let alive = value(&report, "alive").unwrap_or("").trim().to_string();
    if before < 3 || value(&report, "state") != Some("inactive") || !after.is_empty() || !alive.is_empty() {
        d.sdbox.fail(&format!(
            "after systemctl stop, app.service's cgroup should be empty (it had {before} processes, expected at least 3):\n{report}"
        ));
    }
}

fn unicorn_native_upgrades_hand_mainpid_to_each_new_master(systemd: Systemd) {
    require!("curl", "hey");
    let Some(d) = Deployment::install_on("native-unicorn", Server::UnicornNative, systemd) else { return };
    // NotifyAccess=exec, as shipped, is all systemd needs to take MAINPID= from ExecReload=
    // (`all` is not needed: nothing a worker sends should be taken).
    if d.sdbox.property("NotifyAccess") != "exec" {
        d.sdbox.fail("the shipped unit should say NotifyAccess=exec");
    }
    d.start();
    let report = native_reloads_under_load(&d, RELOADS);
    eprintln!("unicorn native on {systemd:?}: {}", report.replace('\n', " "));
    check_reloads(&d, &report);
    // From 257 on the new master goes over as a pidfd (MAINPIDFD=1), before as MAINPID=.
    let how = if systemd.version() >= 257 { "handed over by pidfd (MAINPIDFD=1)" } else { "handed over by MAINPID=" };
    let told = d.sdbox.ok(&format!("journalctl -u app -o cat --no-pager | grep -c '{how}' || true"));
    if told.trim().parse::<usize>().unwrap_or(0) < RELOADS {
        d.sdbox.fail(&format!("expected {RELOADS} reloads to say '{how}', {} did", told.trim()));
    }
    stop_leaves_nothing(&d);
}
on_every_systemd!(unicorn_native_upgrades_hand_mainpid_to_each_new_master);

/// The release symlink in native mode: after a `current` flip the new master serves the new
/// release, and deleting the old release does not break the next upgrade (the shipped config
/// keeps every path behind `current`).
fn unicorn_native_follows_the_current_symlink(systemd: Systemd) {
    require!("curl");
    let Some(d) = Deployment::install_on("native-flip", Server::UnicornNative, systemd) else { return };
    d.start();
    d.flip("r2");
    let (code, out, _) = d.reload();
    if code != 0 {
        d.sdbox.fail(&format!("native reload onto r2 failed ({code}): {out}"));
    }
    let answers = d.sdbox.ok("for i in 1 2 3 4; do curl -sS -m 10 http://127.0.0.1:8080/; curl -sS -m 10 --unix-socket /run/app.sock http://app/; done");
    if !answers.lines().all(|l| l.starts_with("release=r2")) || answers.lines().count() != 8 {
        d.sdbox.fail(&format!("after the flip and a native reload, answers were:\n{answers}"));
    }
    d.sdbox.ok("rm -rf /srv/app/releases/r1");
    let (code, out, _) = d.reload();
    if code != 0 {
        d.sdbox.fail(&format!("native reload after deleting the old release failed ({code}): {out}"));
    }
    let answer = d.sdbox.ok("curl -sS -m 10 http://127.0.0.1:8080/");
    if !answer.starts_with("release=r2") {
        d.sdbox.fail(&format!("after deleting r1 and reloading: {answer}"));
    }
}
on_every_systemd!(unicorn_native_follows_the_current_symlink);

/// A broken release: the new master dies, the reload fails, the old master keeps serving under
/// the same MainPID, and no request fails.
fn unicorn_native_broken_release_keeps_the_old_master(systemd: Systemd) {
    require!("curl");
    let Some(d) = Deployment::install_on("native-broken", Server::UnicornNative, systemd) else { return };
    d.start();
    let main_pid = d.sdbox.property("MainPID");
    d.flip("r3");
    let during = d.sdbox.ok(r#"
(fail=0; ok=0; while [ ! -e /tmp/broken.stop ]; do
   if curl -sS -m 30 http://127.0.0.1:8080/ 2>&1 | grep -q '^release=r1'; then ok=$((ok+1)); else fail=$((fail+1)); fi
 done; echo "ok=$ok fail=$fail" >/tmp/broken.result) &
loop=$!
systemctl reload app >/tmp/broken.out 2>&1; echo "code=$?"
sleep 0.5; touch /tmp/broken.stop; wait $loop; cat /tmp/broken.result
journalctl -u app -o cat --no-pager | grep -i 'native upgrade failed' | tail -1
"#);
    eprintln!("unicorn native broken: {}", during.replace('\n', " "));
    if value(&during, "code") == Some("0") {
        d.sdbox.fail(&format!("a native reload onto a broken release succeeded:\n{during}"));
    }
    if !during.contains("fail=0") || during.contains("ok=0 ") || !during.contains("still serving") {
        d.sdbox.fail(&format!("requests failed, or the failure was not explained:\n{during}"));
    }
    if d.sdbox.property("MainPID") != main_pid || d.sdbox.property("ActiveState") != "active" {
        d.sdbox.fail(&format!("MainPID moved or the service is down after a failed native reload (was {main_pid})"));
    }
    let pidfile = d.sdbox.ok("cat /run/app/unicorn.pid");
    if pidfile.trim() != main_pid {
        d.sdbox.fail(&format!("unicorn's pid file says {pidfile:?}, the old master is {main_pid}"));
    }
    stop_leaves_nothing(&d);
}
on_every_systemd!(unicorn_native_broken_release_keeps_the_old_master);

fn nginx_binary_upgrade_hands_mainpid_to_each_new_master(systemd: Systemd) {
    require!("curl", "hey");
    let Some(d) = Deployment::install_on("native-nginx", Server::Nginx, systemd) else { return };
    d.start();
    let report = native_reloads_under_load(&d, RELOADS);
    eprintln!("nginx native: {}", report.replace('\n', " "));
    check_reloads(&d, &report);
    stop_leaves_nothing(&d);
}
on_every_systemd!(nginx_binary_upgrade_hands_mainpid_to_each_new_master);

/// A unit with NotifyAccess=main would lose the new master (systemd ignores MAINPID= from the
/// reload): the reload refuses to start.
fn native_reload_refuses_a_unit_with_notify_access_main(systemd: Systemd) {
    require!("curl");
    let Some(d) = Deployment::install_on("native-access", Server::UnicornNative, systemd) else { return };
    d.sdbox.ok("mkdir -p /etc/systemd/system/app.service.d && printf '[Service]\\nNotifyAccess=main\\n' >/etc/systemd/system/app.service.d/access.conf && systemctl daemon-reload");
    d.start();
    let main_pid = d.sdbox.property("MainPID");
    let (code, out, _) = d.reload();
    let journal = d.sdbox.ok("journalctl -u app -o cat --no-pager | grep -i NotifyAccess | tail -2");
    if code == 0 || !journal.contains("NotifyAccess=main") {
        d.sdbox.fail(&format!("reload with NotifyAccess=main: code {code}, output {out}, journal {journal}"));
    }
    if d.sdbox.property("MainPID") != main_pid || d.sdbox.ok("pgrep -u app -f master | wc -l").trim() != "1" {
        d.sdbox.fail("a refused native reload must not touch the server");
    }
}
on_every_systemd!(native_reload_refuses_a_unit_with_notify_access_main);

/// unicorn's well-known `before_fork` hook (in its example config): the new master sends TTOU,
/// then QUIT, to the `.oldbin` master as it forks its workers.
const BEFORE_FORK_QUIT: &str = r##"
before_fork do |server, worker|
  old_pid = "#{server.config[:pid]}.oldbin"
  if old_pid != server.pid
    begin
      sig = (worker.nr + 1) >= server.worker_processes ? :QUIT : :TTOU
      Process.kill(sig, File.read(old_pid).to_i)
    rescue Errno::ENOENT, Errno::ESRCH
    end
  end
end
"##;

fn append_to_config(d: &Deployment, releases: &[&str], text: &str) {
    for release in releases {
        let path = format!("/srv/app/releases/{release}/unicorn-native.conf.rb");
        d.sdbox.ok(&format!("cat >>{path} <<'EOF'\n{text}\nEOF"));
    }
}

/// With the before_fork hook the old master exits during `systemctl reload`, long before the
/// new master's workers settled. systemd keeps a unit whose main process exits while ExecReload=
/// runs and takes MAINPID= from the reload afterwards (without it, the unit stops when the
/// reload ends): the new master is handed over the moment the old one exits, and the reload
/// says what happened and names the fix. MainPID follows, no request fails.
#[test]
fn unicorn_native_before_fork_quit_hands_over_at_once() {
    require!("curl", "hey");
    let Some(d) = Deployment::install("native-before-fork", Server::UnicornNative, None, false) else { return };
    append_to_config(&d, &["r1", "r2"], BEFORE_FORK_QUIT);
    d.start();
    let report = native_reloads_under_load(&d, 5);
    eprintln!("before_fork: {}", report.replace('\n', " "));
    check_reloads(&d, &report);
    let warned = d
        .sdbox
        .ok("journalctl -u app -o cat --no-pager | grep -c 'exited before the new master .* before_fork hook' || true");
    if warned.trim().parse::<usize>().unwrap_or(0) < 5 {
        d.sdbox.fail(&format!("the reloads did not say the old master was stopped by the before_fork hook ({warned})"));
    }
}

/// The same hook with a release whose workers crash-loop: the old master is gone before the
/// new one could be judged, so nothing is left to roll back to. The reload fails, says why and
/// names the fix, and systemd still follows the new master: the unit neither stops nor reports
/// a successful reload.
#[test]
fn unicorn_native_before_fork_quit_with_crash_looping_workers_fails_loudly() {
    require!("curl");
    let Some(d) = Deployment::install("native-before-fork-crash", Server::UnicornNative, None, false) else { return };
    append_to_config(&d, &["r1", "r2"], BEFORE_FORK_QUIT);
    append_to_config(&d, &["r2"], "after_fork { |server, worker| sleep 0.3; exit!(1) }");
    d.sdbox.ok("mkdir -p /etc/systemd/system/app.service.d && printf '[Service]\\nExecReload=\\nExecReload=+/usr/bin/sockherd reload --native --flavor unicorn --pidfile /run/app/unicorn.pid --timeout 10s\\n' >/etc/systemd/system/app.service.d/timeout.conf && systemctl daemon-reload");
    d.start();
    let old = d.sdbox.property("MainPID");
    d.flip("r2");
    let (code, out, _) = d.reload();
    let journal = d.sdbox.ok("journalctl -u app -o cat --no-pager | grep 'native upgrade failed' | tail -1");
    if code == 0 || !journal.contains("not ready") || !journal.contains("before_fork hook") {
        d.sdbox.fail(&format!(
            "a reload onto crash-looping workers after the before_fork QUIT: code {code}, {out}\n{journal}"
        ));
    }
    let main_pid = d.sdbox.property("MainPID");
    let named = d.sdbox.ok("cat /run/app/unicorn.pid").trim().to_string();
    if d.sdbox.property("ActiveState") != "active" || main_pid == old || main_pid != named {
        d.sdbox.fail(&format!("after the failed reload: MainPID {main_pid} (was {old}), pid file {named}"));
    }
}

/// gunicorn's own USR2 cannot work with systemd's sockets: refused with a pointer to `run`.
#[test]
fn native_reload_refuses_gunicorn() {
    let dir = common::TempDir::new("native-gunicorn");
    let (status, _, stderr) = common::run_sockherd(
        &["reload", "--native", "--flavor", "gunicorn", "--pid", "1"],
        dir.path(),
        std::time::Duration::from_secs(10),
    );
    if status.code() != Some(1) || !stderr.contains("EBADF") || !stderr.contains("sockherd run --flavor gunicorn") {
        panic!("expected a refusal pointing to `sockherd run`, got {status:?}: {stderr}");
    }
}

// ---------------------------------------------------------------------------------------------
// Native upgrades of a real unicorn outside systemd (no MAINPID handoff, the same upgrade):
// finding the new master, telling when it is ready, draining the old one.

/// A unicorn served by `sockherd exec` on a loopback port from `DIR/current`, upgraded with
/// `sockherd reload --native`. Releases r1 and r2 each get their own unicorn config (`pid`
/// outside the releases, `working_directory` through `current`), so a deploy can change it.
/// Everything unicorn starts stays in the process group of the first master: dropped, the
/// group is killed.
struct HostUnicorn {
    _group: GroupKill,
    server: Proc,
    dir: common::TempDir,
    port: u16,
}

impl HostUnicorn {
    /// `r1` and `r2` are the unicorn settings of each release (beside the common ones).
    fn start(tag: &str, r1: &str, r2: &str) -> HostUnicorn {
        let dir = common::TempDir::new(tag);
        for (release, settings) in [("r1", r1), ("r2", r2)] {
            let root = dir.join(&format!("releases/{release}"));
            std::fs::create_dir_all(&root).unwrap();
            std::fs::copy(common::contrib("app/config.ru"), root.join("config.ru")).unwrap();
            std::fs::write(root.join("RELEASE"), format!("{release}\n")).unwrap();
            let config = format!(
                "working_directory \"{current}\"\npid \"{pid}\"\npreload_app true\ntimeout 60\n{settings}\n",
                current = dir.join("current").display(),
                pid = dir.join("unicorn.pid").display(),
            );
            std::fs::write(root.join("unicorn.conf.rb"), config).unwrap();
        }
        std::os::unix::fs::symlink("releases/r1", dir.join("current")).unwrap();
        let port = common::free_port();
        let mut cmd = common::sockherd_cmd(&["exec", "--flavor", "unicorn", "--listen"]);
        cmd.arg(format!("127.0.0.1:{port}")).arg("--chdir").arg(dir.join("current"));
        cmd.args(["--", "unicorn", "-c"]).arg(dir.join("current/unicorn.conf.rb")).arg("config.ru");
        cmd.env_remove("INVOCATION_ID");
        let mut server = Proc::spawn(cmd, dir.path(), "unicorn");
        let group = GroupKill(server.pid());
        common::wait_http_ok(&mut server, &format!("127.0.0.1:{port}"), Duration::from_secs(60));
        HostUnicorn { _group: group, server, dir, port }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn flip(&self, release: &str) {
        let tmp = self.dir.join("current.new");
        std::os::unix::fs::symlink(format!("releases/{release}"), &tmp).unwrap();
        std::fs::rename(tmp, self.dir.join("current")).unwrap();
    }

    fn pidfile(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.join("unicorn.pid")).ok()?.trim().parse().ok()
    }

    /// `sockherd reload --native` of the first master with `args` added: (exit code, stderr).
    fn reload(&self, args: &[&str]) -> (Option<i32>, String) {
        let pid = self.server.pid().to_string();
        let pidfile = self.dir.join("unicorn.pid");
        let mut cmd = common::sockherd_cmd(&["reload", "--native", "--flavor", "unicorn", "--pid", &pid, "--pidfile"]);
        cmd.arg(&pidfile).args(args).env_remove("INVOCATION_ID");
        let mut proc = Proc::spawn(cmd, self.dir.path(), "reload");
        let status = proc.wait_exit(Duration::from_secs(120));
        (status.code(), proc.stderr())
    }

    /// The unicorn masters alive in the group (by title: a test's view, not sockherd's).
    fn masters(&self) -> Vec<i32> {
        group_members(self.server.pid())
            .into_iter()
            .filter(|&p| std::fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default().contains("master"))
            .collect()
    }

    /// Fails the test with everything: the reload's output, the server's, the processes.
    fn fail(&self, message: &str) -> ! {
        let ps = Command::new("ps")
            .args(["-o", "pid,ppid,pgid,stat,args", "-g", &self.server.pid().to_string()])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let reload = std::fs::read_to_string(self.dir.join("reload.stderr")).unwrap_or_default();
        self.server.fail(&format!("{message}\n--- processes:\n{ps}--- last reload's stderr:\n{reload}"))
    }
}

/// Living members of a process group.
fn group_members(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 3 && fields[0] != "Z" && fields[2] == pgid.to_string() {
            out.push(pid);
        }
    }
    out
}

/// A deploy that lowers the worker count (3 → 1): the new master is ready once its one worker
/// is settled, instead of waiting forever for the old master's three.
#[test]
fn native_reload_with_fewer_workers_becomes_ready() {
    require!("unicorn");
    let app = HostUnicorn::start("native-fewer", "worker_processes 3", "worker_processes 1");
    let old = app.server.pid();
    app.flip("r2");
    let (code, stderr) = app.reload(&["--timeout", "30s"]);
    if code != Some(0) {
        app.fail(&format!("the reload onto one worker failed ({code:?}):\n{stderr}"));
    }
    let new = app.pidfile().unwrap_or(0);
    let answer = common::http_get(&app.addr(), "/").map(|r| r.body).unwrap_or_default();
    if new == old || !answer.starts_with("release=r2") || app.masters() != vec![new] {
        app.fail(&format!(
            "after the reload: pid file {new} (old {old}), masters {:?}, answer {answer:?}",
            app.masters()
        ));
    }
}

/// A new master whose workers crash right after they start (unicorn respawns them at once) is
/// never ready, however many workers it shows at one instant: the reload fails, the new master
/// is stopped, and the old one keeps serving and takes its pid file back.
#[test]
fn native_reload_refuses_a_master_whose_workers_crash_loop() {
    require!("unicorn");
    let crash = "worker_processes 2\nafter_fork { |server, worker| sleep 0.3; exit!(1) }";
    let app = HostUnicorn::start("native-crashloop", "worker_processes 2", crash);
    let old = app.server.pid();
    app.flip("r2");
    let (code, stderr) = app.reload(&["--timeout", "8s"]);
    if code == Some(0) {
        app.fail(&format!("a reload onto crash-looping workers succeeded:\n{stderr}"));
    }
    let back = common::wait_until(Duration::from_secs(30), || app.masters() == vec![old] && app.pidfile() == Some(old));
    let answer = common::http_get(&app.addr(), "/").map(|r| r.body).unwrap_or_default();
    if !back || !answer.starts_with("release=r1") {
        app.fail(&format!(
            "after the failed reload: masters {:?} (old {old}), pid file {:?}, answer {answer:?}\n{stderr}",
            app.masters(),
            app.pidfile()
        ));
    }
}

/// The new master is the process the pid file names (a child of the old master, running the
/// same program), never a child that merely wears a master's title: the purpose-built server
/// forks a child that keeps its title for 3 s (a worker respawned at the moment of USR2) before
/// it starts the new master.
#[test]
fn native_reload_is_not_fooled_by_a_child_wearing_the_masters_title() {
    require!("python3");
    let dir = common::TempDir::new("native-title");
    let port = common::free_port();
    let pidfile = dir.join("app.pid");
    let mut cmd = common::sockherd_cmd(&["exec", "--flavor", "unicorn", "--listen"]);
    cmd.arg(format!("127.0.0.1:{port}")).args(["--", "python3"]);
    cmd.arg(common::repo().join("tests/support/upgrading_master.py")).arg(&pidfile).arg("2");
    let mut server = Proc::spawn(cmd, dir.path(), "server");
    let _group = GroupKill(server.pid());
    let addr = format!("127.0.0.1:{port}");
    common::wait_http_ok(&mut server, &addr, Duration::from_secs(30));
    let old = server.pid();
    let mut cmd = common::sockherd_cmd(&["reload", "--native", "--flavor", "unicorn", "--pid", &old.to_string()]);
    cmd.arg("--pidfile").arg(&pidfile).args(["--timeout", "20s"]).env_remove("INVOCATION_ID");
    let mut reload = Proc::spawn(cmd, dir.path(), "reload");
    let status = reload.wait_exit(Duration::from_secs(60));
    let new: i32 = std::fs::read_to_string(&pidfile).unwrap_or_default().trim().parse().unwrap_or(0);
    let masters: Vec<i32> = group_members(old)
        .into_iter()
        .filter(|&p| std::fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default().contains(".pid"))
        .collect();
    let answer = common::http_get(&addr, "/").map(|r| r.body).unwrap_or_default();
    if !status.success() || new == old || masters != vec![new] || !answer.contains(&format!("master={new}")) {
        reload.fail(&format!(
            "expected the pid file's new master to serve alone: status {status:?}, pid file {new} (old {old}), \
             masters {masters:?}, answer {answer:?}"
        ));
    }
}

/// An old master still draining when --drain-timeout ends is killed, with its workers; the
/// new master (still its child at that moment) keeps serving.
#[test]
fn native_drain_timeout_kills_the_old_master_only() {
    require!("unicorn");
    let app = HostUnicorn::start("native-drain", "worker_processes 1", "worker_processes 1");
    let old = app.server.pid();
    let worker = common::descendants(old).first().copied().unwrap_or(0);
    let listening: Vec<u64> = common::listening_inodes().into_iter().map(|(_, ino)| ino).collect();
    let addr = app.addr();
    let slow = std::thread::spawn(move || common::http_get(&addr, "/slow?s=30"));
    // The old master's only worker holds the slow request.
    let busy = common::wait_until(Duration::from_secs(30), || {
        common::socket_inodes(worker).iter().any(|ino| !listening.contains(ino))
    });
    if !busy {
        app.fail("the slow request never reached the old master's worker");
    }
    let (code, stderr) = app.reload(&["--timeout", "30s", "--drain-timeout", "2s"]);
    let new = app.pidfile().unwrap_or(0);
    let answer = common::http_get(&app.addr(), "/").map(|r| r.body).unwrap_or_default();
    if code != Some(0) || new == old || !common::pid_alive(new) || !answer.contains(&format!("master={new}")) {
        app.fail(&format!(
            "after a drain timeout: exit {code:?}, pid file {new} (old {old}, alive {}), answer {answer:?}\n{stderr}",
            common::pid_alive(new)
        ));
    }
    if common::pid_alive(old) || common::pid_alive(worker) {
        app.fail("the old master or its busy worker survived the drain timeout");
    }
    let _ = slow.join();
}

/// Kills a process group with SIGKILL when dropped: the first master's group holds every master
/// and worker of every upgrade.
struct GroupKill(i32);

impl Drop for GroupKill {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.0)]).status();
    }
}

/// The pid file is what names the new master: without it, or with one that does not name the
/// main process now (a wrong path), the reload refuses before it sends anything.
#[test]
fn native_reload_needs_the_servers_own_pid_file() {
    let dir = common::TempDir::new("native-pidfile");
    let mut sleep = Command::new("sleep");
    sleep.arg("60");
    let mut server = Proc::spawn(sleep, dir.path(), "server");
    let pid = server.pid().to_string();
    std::fs::write(dir.join("stale.pid"), "1\n").unwrap();
    let stale = dir.join("stale.pid").display().to_string();
    for (args, expected) in [
        (vec!["--flavor", "unicorn"], "native upgrades need --pidfile PATH"),
        (vec!["--flavor", "unicorn", "--pidfile", &stale], "names 1, not the main process"),
    ] {
        let mut all = vec!["reload", "--native", "--pid", &pid];
        all.extend(args);
        let (status, _, stderr) = common::run_sockherd(&all, dir.path(), Duration::from_secs(30));
        if status.code() != Some(1) || !stderr.contains(expected) {
            server.fail(&format!("sockherd {all:?}: expected a refusal saying {expected:?}, got {status:?}: {stderr}"));
        }
    }
    if server.try_status().is_some() {
        server.fail("a refused native reload signalled the server");
    }
}

/// A pid that runs sockherd itself (a `sockherd run` supervisor) is never driven natively:
/// its USR2 is not an upgrade. The reload refuses and the supervisor keeps running.
#[test]
fn native_reload_never_drives_a_sockherd_process() {
    require!("python3");
    let dir = common::TempDir::new("native-sockherd");
    let port = common::free_port();
    let mut cmd = common::sockherd_cmd(&["run", "--ready", "exec", "--listen"]);
    cmd.arg(format!("127.0.0.1:{port}")).arg("--chdir").arg(common::contrib("app")).args(["--", "python3", "serve.py"]);
    let mut supervisor = Proc::spawn(cmd, dir.path(), "supervisor");
    common::wait_http_ok(&mut supervisor, &format!("127.0.0.1:{port}"), Duration::from_secs(30));
    std::fs::write(dir.join("app.pid"), format!("{}\n", supervisor.pid())).unwrap();
    let pid = supervisor.pid().to_string();
    let pidfile = dir.join("app.pid").display().to_string();
    let (status, _, stderr) = common::run_sockherd(
        &["reload", "--native", "--flavor", "unicorn", "--pid", &pid, "--pidfile", &pidfile],
        dir.path(),
        Duration::from_secs(30),
    );
    if status.code() != Some(1) || !stderr.contains("runs sockherd itself") {
        supervisor.fail(&format!("expected a refusal to drive sockherd natively, got {status:?}: {stderr}"));
    }
    if supervisor.try_status().is_some() || common::http_get(&format!("127.0.0.1:{port}"), "/").is_err() {
        supervisor.fail("the supervisor stopped serving after a refused native reload");
    }
}

/// puma's own USR2 re-execs in the same pid: refused with a pointer to `run`.
#[test]
fn native_reload_refuses_puma() {
    let dir = common::TempDir::new("native-puma");
    let (status, _, stderr) = common::run_sockherd(
        &["reload", "--native", "--flavor", "puma", "--pid", "1"],
        dir.path(),
        std::time::Duration::from_secs(10),
    );
    if status.code() != Some(1) || !stderr.contains("same pid") || !stderr.contains("sockherd run --flavor puma") {
        panic!("expected a refusal pointing to `sockherd run`, got {status:?}: {stderr}");
    }
}

/// A broken nginx release (its nginx.conf does not parse): the new binary exits at once, the
/// reload fails, the old master keeps serving under the same MainPID and its pid file, and no
/// request fails.
#[test]
fn nginx_broken_release_keeps_the_old_master() {
    require!("curl");
    let Some(d) = Deployment::install("native-nginx-broken", Server::Nginx, None, false) else { return };
    d.start();
    let main_pid = d.sdbox.property("MainPID");
    d.sdbox.ok("printf 'this is not nginx configuration;\\n' >/srv/app/releases/r3/nginx.conf");
    d.flip("r3");
    let during = d.sdbox.ok(r#"
(fail=0; ok=0; while [ ! -e /tmp/broken.stop ]; do
   if curl -sS -m 30 http://127.0.0.1:8080/ 2>&1 | grep -q '^nginx worker='; then ok=$((ok+1)); else fail=$((fail+1)); fi
 done; echo "ok=$ok fail=$fail" >/tmp/broken.result) &
loop=$!
systemctl reload app >/tmp/broken.out 2>&1; echo "code=$?"
sleep 0.5; touch /tmp/broken.stop; wait $loop; cat /tmp/broken.result
journalctl -u app -o cat --no-pager | grep -i 'native upgrade failed' | tail -1
"#);
    eprintln!("nginx native broken: {}", during.replace('\n', " "));
    if value(&during, "code") == Some("0") {
        d.sdbox.fail(&format!("a native reload onto a broken nginx release succeeded:\n{during}"));
    }
    if !during.contains("fail=0") || during.contains("ok=0 ") || !during.contains("still serving") {
        d.sdbox.fail(&format!("requests failed, or the failure was not explained:\n{during}"));
    }
    if d.sdbox.property("MainPID") != main_pid || d.sdbox.property("ActiveState") != "active" {
        d.sdbox.fail(&format!("MainPID moved or the service is down after a failed nginx reload (was {main_pid})"));
    }
    let pidfile = d.sdbox.ok("cat /run/app/nginx.pid");
    if pidfile.trim() != main_pid {
        d.sdbox.fail(&format!("nginx's pid file says {pidfile:?}, the old master is {main_pid}"));
    }
    stop_leaves_nothing(&d);
}
