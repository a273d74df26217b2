//! Native upgrade mode inside a real systemd, with units/unicorn-native and units/nginx as
//! shipped: `systemctl reload app` drives the server's own USR2 upgrade, and systemd's MainPID
//! follows the new master each time.
mod common;

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
done
sleep 0.5
touch /tmp/load.stop; kill -INT $hey; wait $tcp $unix $hey
cat /tmp/load.tcp.result /tmp/load.unix.result | tr ' ' '\n'
echo "hey.200=$(awk '/\[200\]/ {{print $2}}' /tmp/load.hey)"
grep -q 'Error distribution' /tmp/load.hey && echo "hey.errors=$(sed -n '/Error distribution/,$p' /tmp/load.hey | tr '\n' ' ')"
grep -h -v '^HTTP 200' /tmp/load.tcp.err /tmp/load.unix.err | head -5 | sed 's/^/error=/'
echo "masters=$(pgrep -u app -f 'master' | wc -l)"
true
"#
    ))
}

/// Every reload succeeded, MainPID changed each time to a live master, and no request failed.
fn check_reloads(d: &Deployment, report: &str) {
    if let Some(failed) = value(report, "reload.failed") {
        d.sdbox.fail(&format!("systemctl reload failed: {failed}\n{report}"));
    }
    let pids: Vec<&str> = (0..=RELOADS).map(|i| value(report, &format!("mainpid.{i}")).unwrap_or("0")).collect();
    let mut distinct = pids.clone();
    distinct.sort();
    distinct.dedup();
    if distinct.len() != RELOADS + 1 || pids.contains(&"0") {
        d.sdbox.fail(&format!("MainPID did not move to a new master on every reload: {pids:?}\n{report}"));
    }
    let fails = number(report, "tcp.fail") + number(report, "unix.fail");
    if fails > 0 || value(report, "hey.errors").is_some() || value(report, "error").is_some() {
        d.sdbox.fail(&format!("requests failed during native reloads:\n{report}"));
    }
    if number(report, "tcp.ok") < 20 || number(report, "unix.ok") < 20 || number(report, "hey.200") < 100 {
        d.sdbox.fail(&format!("too few requests to call it a load:\n{report}"));
    }
    if number(report, "masters") != 1 {
        d.sdbox.fail(&format!("expected exactly one master left after the reloads:\n{report}"));
    }
}

fn stop_leaves_nothing(d: &Deployment) {
    d.sdbox.ok("systemctl stop app");
    let left = d.sdbox.ok("systemctl show -P ActiveState app; pgrep -u app -a || true");
    if left.trim() != "inactive" {
        d.sdbox.fail(&format!("after systemctl stop: {left}"));
    }
}

fn unicorn_native_upgrades_hand_mainpid_to_each_new_master(systemd: Systemd) {
    require!("curl", "hey");
    let Some(d) = Deployment::install_on("native-unicorn", Server::UnicornNative, systemd) else { return };
    d.start();
    let report = native_reloads_under_load(&d, RELOADS);
    eprintln!("unicorn native: {}", report.replace('\n', " "));
    check_reloads(&d, &report);
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

/// A unit without NotifyAccess=all would lose the new master: the reload refuses to start.
fn native_reload_refuses_a_unit_without_notify_access_all(systemd: Systemd) {
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
on_every_systemd!(native_reload_refuses_a_unit_without_notify_access_all);

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
