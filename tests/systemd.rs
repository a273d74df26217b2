//! The units as shipped, inside a real systemd (tests/support/sdbox): socket activation,
//! `systemctl reload` under load, a `current` flip, a broken release, journald fields, stop,
//! and restart with the sockets held by systemd, on every systemd of the matrix (252, 254, 257,
//! 262). systemd 252 uses ExecReload=`sockherd reload`; 253 and later the Type=notify-reload
//! drop-in.
mod common;

use common::sdbox::{CURL_LOOP, Deployment, Server, Systemd, report_number as number, report_value as value};

const RELOADS: usize = 10;

/// Runs `reloads` `systemctl reload app` while hey (4 keep-alive connections) and two
/// fresh-connection curl loops (TCP and unix) load the app, all inside the box. Returns the
/// box's report: one `key=value` per line.
fn reload_under_load(d: &Deployment, reloads: usize) -> String {
    d.sdbox.ok(&format!(
        r#"
set -u
rm -f /tmp/load.stop /tmp/load.*
{CURL_LOOP}
loop tcp http://127.0.0.1:8080/ & tcp=$!
loop unix --unix-socket /run/app.sock http://app/ & unix=$!
hey -z 300s -c 4 http://127.0.0.1:8080/ >/tmp/load.hey 2>&1 & hey=$!
mainpids=""
for i in $(seq {reloads}); do
  if ! out=$(systemctl reload app 2>&1); then echo "reload.failed=$i $out"; fi
  mainpids="$mainpids $(systemctl show -P MainPID app)"
  systemctl show -P StatusText app | grep -o 'serving generation [0-9]*' | sed 's/ /_/g; s/^/status=/'
done
sleep 0.5
touch /tmp/load.stop; kill -INT $hey; wait $tcp $unix $hey
cat /tmp/load.tcp.result /tmp/load.unix.result | tr ' ' '\n'
echo "mainpids=$mainpids"
echo "masters=$(cat /tmp/load.*.masters | sort -u | wc -l)"
echo "hey.200=$(awk '$1 == "[200]" {{n += $2}} END {{print n + 0}}' /tmp/load.hey)"
# Every line of hey's status code distribution (a 4xx/5xx is a failed request too, and hey
# counts it there, not under its error distribution).
sed -n '/Status code distribution/,/^$/p' /tmp/load.hey | grep -o '\[[0-9]*\][[:space:]]*[0-9]*' | tr -s ' ' | sed 's/^/hey.status=/'
grep -q 'Error distribution' /tmp/load.hey && echo "hey.errors=$(sed -n '/Error distribution/,$p' /tmp/load.hey | tr '\n' ' ')"
grep -h -v '^HTTP 200' /tmp/load.tcp.err /tmp/load.unix.err | head -5 | sed 's/^/error=/'
true
"#
    ))
}

/// `systemctl stop app` leaves no process in app.service's cgroup. The processes are found by
/// their cgroup (/proc/PID/cgroup names app.service), not by user: before the stop there must be
/// at least `expected` (sockherd or the master, and the workers), after it none, and none of
/// those pids may live on.
fn stop_leaves_nothing_in_the_cgroup(d: &Deployment, expected: usize) {
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
    if before < expected || value(&report, "state") != Some("inactive") || !after.is_empty() || !alive.is_empty() {
        d.sdbox.fail(&format!(
            "after systemctl stop, app.service's cgroup should be empty (it had {before} processes, expected at least {expected}):\n{report}"
        ));
    }
}

/// The whole life of the service on one systemd: activation, reloads under load, a new
/// release, a broken release, journald, stop.
fn lifecycle(server: Server, systemd: Systemd) {
    require!("curl", "hey");
    let tag = format!("{}-{}", server.flavor(), systemd.version());
    let Some(d) = Deployment::install_on(server.flavor(), server, systemd) else { return };
    d.start();
    let main_pid = d.sdbox.property("MainPID");

    // 1. Reloads under load: every one succeeds, MainPID stays, no request fails.
    let report = reload_under_load(&d, RELOADS);
    eprintln!("{tag}: {}", report.replace('\n', " "));
    if let Some(failed) = value(&report, "reload.failed") {
        d.sdbox.fail(&format!("systemctl reload failed: {failed}\n{report}"));
    }
    let fails = number(&report, "tcp.fail") + number(&report, "unix.fail");
    if fails > 0 || value(&report, "hey.errors").is_some() || value(&report, "error").is_some() {
        d.sdbox.fail(&format!("requests failed during reloads:\n{report}"));
    }
    let statuses: Vec<&str> = report.lines().filter_map(|l| l.strip_prefix("hey.status=")).collect();
    if statuses.is_empty() || statuses.iter().any(|s| !s.starts_with("[200]")) {
        d.sdbox
            .fail(&format!("hey got answers other than 200 (every status line must be [200]): {statuses:?}\n{report}"));
    }
    if number(&report, "tcp.ok") < 20 || number(&report, "unix.ok") < 20 || number(&report, "hey.200") < 100 {
        d.sdbox.fail(&format!("too few requests to call it a load:\n{report}"));
    }
    let pids: Vec<&str> = value(&report, "mainpids").unwrap_or("").split_whitespace().collect();
    if pids.len() != RELOADS || pids.iter().any(|p| *p != main_pid) {
        d.sdbox.fail(&format!("MainPID changed during reloads (was {main_pid}): {pids:?}"));
    }
    let generations: Vec<&str> = report.lines().filter_map(|l| l.strip_prefix("status=")).collect();
    let last = format!("serving_generation_{}", RELOADS + 1);
    if generations.last() != Some(&last.as_str()) {
        d.sdbox.fail(&format!("expected {last} after {RELOADS} reloads, StatusText said {generations:?}"));
    }

    // 2. A new release: flip current, reload, everything comes from r2; r1 can then go.
    d.flip("r2");
    let (code, out, _) = d.reload();
    if code != 0 {
        d.sdbox.fail(&format!("reload onto r2 failed ({code}): {out}"));
    }
    let answers = d.sdbox.ok("for i in 1 2 3 4 5; do curl -sS -m 10 http://127.0.0.1:8080/; curl -sS -m 10 --unix-socket /run/app.sock http://app/; done");
    if answers.lines().count() != 10 || !answers.lines().all(|l| l.starts_with("release=r2")) {
        d.sdbox.fail(&format!("after the flip to r2 and a reload, answers were:\n{answers}"));
    }
    d.sdbox.ok("rm -rf /srv/app/releases/r1");
    let (code, out, _) = d.reload();
    if code != 0 {
        d.sdbox.fail(&format!("reload after deleting the old release failed ({code}): {out}"));
    }

    // 3. A broken release: the reload fails, loudly and quickly; r2 keeps serving, nothing fails.
    d.flip("r3");
    let during = d.sdbox.ok(r#"
(fail=0; ok=0; while [ ! -e /tmp/broken.stop ]; do
   if curl -sS -m 30 http://127.0.0.1:8080/ 2>&1 | grep -q '^release=r2'; then ok=$((ok+1)); else fail=$((fail+1)); fi
 done; echo "ok=$ok fail=$fail" >/tmp/broken.result) &
loop=$!
start=$(date +%s%N)
systemctl reload app >/tmp/broken.out 2>&1; echo "code=$?"
echo "ms=$(( ($(date +%s%N) - start) / 1000000 ))"
touch /tmp/broken.stop; wait $loop; cat /tmp/broken.result
"#);
    eprintln!("{tag}: broken release: {}", during.replace('\n', " "));
    if value(&during, "code") == Some("0") {
        d.sdbox.fail(&format!("systemctl reload of a broken release succeeded:\n{during}"));
    }
    if !during.contains("fail=0") || during.contains("ok=0 ") {
        d.sdbox.fail(&format!("requests failed or none succeeded during the failed reload:\n{during}"));
    }
    let still = d.sdbox.ok("curl -sS -m 10 http://127.0.0.1:8080/");
    if !still.starts_with("release=r2")
        || d.sdbox.property("ActiveState") != "active"
        || d.sdbox.property("MainPID") != main_pid
    {
        d.sdbox.fail(&format!(
            "after the failed reload: {still:?}, expected r2 served by an active service with MainPID {main_pid}"
        ));
    }
    let status = d.sdbox.property("StatusText");
    if !status.contains("reload failed") {
        d.sdbox.fail(&format!("StatusText does not tell about the failed reload: {status}"));
    }

    // 4. journald: structured fields answer "what went wrong in the last deploy".
    let rollback = d.sdbox.ok("journalctl -u app SOCKHERD_EVENT=rollback -o cat --no-pager");
    if !rollback.contains("r3") {
        d.sdbox
            .fail(&format!("journalctl -u app SOCKHERD_EVENT=rollback does not name the broken release:\n{rollback}"));
    }
    let spawned = d.sdbox.ok("journalctl -u app SOCKHERD_EVENT=spawn SOCKHERD_GENERATION=2 -o cat --no-pager");
    if !spawned.contains("generation 2") {
        d.sdbox.fail(&format!("journalctl SOCKHERD_EVENT=spawn SOCKHERD_GENERATION=2 found:\n{spawned}"));
    }
    let handoffs = d.sdbox.ok(
        "journalctl -u app SOCKHERD_EVENT=reload_done -o verbose --no-pager | grep -c SOCKHERD_HANDOFF_MS= || true",
    );
    if handoffs.trim().parse::<usize>().unwrap_or(0) < RELOADS {
        d.sdbox.fail(&format!("expected {RELOADS}+ reload_done events with SOCKHERD_HANDOFF_MS, found {handoffs}"));
    }
    // The server's own output: what came through the unit's stdout/stderr stream
    // (_TRANSPORT=stdout), not sockherd's native journal entries (SYSLOG_IDENTIFIER=sockherd,
    // _TRANSPORT=journal; the stream's identifier is "sockherd" too, after ExecStart's binary),
    // and a line only the server writes when its workers boot.
    let (server_line, server_says) = match server {
        Server::Gunicorn => ("Booting worker with pid", "gunicorn's"),
        Server::Unicorn => ("worker=[0-9]+ ready", "unicorn's"),
        Server::Puma => ("Worker [0-9]+ \\(PID: [0-9]+\\) booted", "puma's"),
        Server::UnicornNative | Server::Nginx | Server::Libsystemd => {
            unreachable!("the lifecycle runs gunicorn, unicorn and puma")
        }
    };
    let app_output = d
        .sdbox
        .ok(&format!("journalctl -u app _TRANSPORT=stdout -o cat --no-pager | grep -c -E '{server_line}' || true"));
    if app_output.trim().parse::<usize>().unwrap_or(0) == 0 {
        let stream = d.sdbox.ok("journalctl -u app _TRANSPORT=stdout -o cat --no-pager | tail -20");
        d.sdbox.fail(&format!(
            "{server_says} own output ({server_line:?}) is not in the unit's journal; its stdout stream has:\n{stream}"
        ));
    }

    // 5. Stop: nothing of the service is left in its cgroup.
    d.flip("r2");
    stop_leaves_nothing_in_the_cgroup(&d, 1 + 2);
    // Every event this life went through is in the journal under its SOCKHERD_EVENT (the three
    // above are checked for their content): the sockets received, each generation's spawn,
    // readiness, exit and drain, the reloads' start and end, the failed one, and the stop.
    let counts = d
        .sdbox
        .ok("for e in socket spawn ready reload reload_done reload_failed rollback drain_start drain exit stop; do \
           echo \"$e=$(journalctl -u app SOCKHERD_EVENT=$e -o cat --no-pager | wc -l)\"; done");
    let missing: Vec<&str> = counts.lines().filter(|l| l.ends_with("=0")).collect();
    if !missing.is_empty() {
        d.sdbox.fail(&format!("journal events missing after a whole life of the service: {missing:?}\n{counts}"));
    }

    // The sockets stay with systemd, and the next request starts the service again.
    let again = d.sdbox.ok("curl -sS -m 60 http://127.0.0.1:8080/");
    if !again.starts_with("release=r2") {
        d.sdbox.fail(&format!("after stop, a request through the socket unit answered {again:?}"));
    }
}

on_every_systemd!(gunicorn, |systemd| lifecycle(Server::Gunicorn, systemd));
on_every_systemd!(unicorn, |systemd| lifecycle(Server::Unicorn, systemd));
on_every_systemd!(puma, |systemd| lifecycle(Server::Puma, systemd));

/// `systemctl restart app` with the socket units active: connections made while the service is
/// down queue in systemd's sockets and are answered by the new instance; none is refused.
fn restart_queues_connections_in_the_socket_units(systemd: Systemd) {
    require!("curl");
    let Some(d) = Deployment::install_on("restart", Server::Gunicorn, systemd) else { return };
    d.start();
    let report = d.sdbox.ok(
        r#"
rm -f /tmp/r.*
for n in 1 2 3 4; do
  (ok=0; fail=0; while [ ! -e /tmp/r.stop ]; do
     if curl -sS -m 60 -o /dev/null -w '%{http_code}' http://127.0.0.1:8080/ 2>>/tmp/r.err | grep -q 200; then ok=$((ok+1)); else fail=$((fail+1)); fi
   done; echo "ok=$ok fail=$fail" >/tmp/r.$n) &
done
sleep 0.5
before=$(systemctl show -P MainPID app)
systemctl restart app; echo "restart=$?"
sleep 1
after=$(systemctl show -P MainPID app)
touch /tmp/r.stop; wait
cat /tmp/r.1 /tmp/r.2 /tmp/r.3 /tmp/r.4
echo "mainpid=$before->$after"
cat /tmp/r.err 2>/dev/null | head -3
"#,
    );
    eprintln!("restart: {}", report.replace('\n', " "));
    let lines: Vec<&str> = report.lines().filter(|l| l.starts_with("ok=")).collect();
    if !report.contains("restart=0") || lines.len() != 4 || lines.iter().any(|l| !l.ends_with("fail=0")) {
        d.sdbox.fail(&format!("connections failed during systemctl restart:\n{report}"));
    }
    let pids = value(&report, "mainpid").unwrap_or("");
    if pids.split("->").collect::<Vec<_>>().windows(2).any(|w| w[0] == w[1]) {
        d.sdbox.fail(&format!("systemctl restart did not start a new main process: {pids}"));
    }
}
on_every_systemd!(restart_queues_connections_in_the_socket_units);

/// contrib/deploy/deploy.sh against the shipped gunicorn units: a good release deploys and
/// serves; a broken one fails the deploy, keeps the previous release serving and points
/// `current` back at it.
fn deploy_recipe_deploys_and_fails_loudly(systemd: Systemd) {
    require!("curl");
    let Some(d) = Deployment::install_on("deploy", Server::Gunicorn, systemd) else { return };
    d.start();
    let deploy = common::repo().join("contrib/deploy/deploy.sh");
    let good = d.sdbox.sh(&format!(
        "cp -a /srv/app/releases/r2 /tmp/good && echo good > /tmp/good/RELEASE && chown -R app:app /tmp/good && {} /tmp/good /srv/app app",
        deploy.display()
    ));
    let answer = d.sdbox.ok("curl -sS -m 10 http://127.0.0.1:8080/");
    if !good.status.success() || !answer.starts_with("release=good") {
        d.sdbox.fail(&format!(
            "a good deploy: {:?} {}, then served {answer:?}",
            good.status,
            String::from_utf8_lossy(&good.stderr)
        ));
    }
    let before = d.sdbox.ok("readlink /srv/app/current");
    let bad = d.sdbox.sh(&format!(
        "cp -a /srv/app/releases/r3 /tmp/bad && chown -R app:app /tmp/bad && {} /tmp/bad /srv/app app",
        deploy.display()
    ));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    let after = d.sdbox.ok("readlink /srv/app/current");
    let answer = d.sdbox.ok("curl -sS -m 10 http://127.0.0.1:8080/");
    if bad.status.success()
        || !stderr.contains("reload of app failed")
        || after != before
        || !answer.starts_with("release=good")
    {
        d.sdbox.fail(&format!(
            "a broken deploy: {:?} {stderr}; current {before:?} -> {after:?}; served {answer:?}",
            bad.status
        ));
    }
}
on_every_systemd!(deploy_recipe_deploys_and_fails_loudly);

/// WatchdogSec=: sockherd pings systemd while the serving generation lives, so systemd sees
/// fresh pings (WatchdogTimestamp advances) and never kills the service.
fn watchdog_pings_while_the_generation_serves(systemd: Systemd) {
    require!("curl");
    let Some(d) = Deployment::install_on("watchdog", Server::Gunicorn, systemd) else { return };
    d.sdbox.ok("mkdir -p /etc/systemd/system/app.service.d && printf '[Service]\nWatchdogSec=1s\n' >/etc/systemd/system/app.service.d/watchdog.conf && systemctl daemon-reload");
    d.start();
    let main_pid = d.sdbox.property("MainPID");
    let mut stamps = std::collections::BTreeSet::new();
    // A generous deadline: 4 distinct timestamps take about 1.5 s of 500 ms pings.
    let pinged = common::wait_until(std::time::Duration::from_secs(60), || {
        stamps.insert(d.sdbox.property("WatchdogTimestampMonotonic"));
        stamps.len() >= 4
    });
    if !pinged {
        d.sdbox.fail(&format!("WatchdogTimestamp did not advance: {stamps:?}"));
    }
    if d.sdbox.property("MainPID") != main_pid || d.sdbox.property("NRestarts") != "0" {
        d.sdbox.fail("the watchdog restarted the service");
    }
}
on_every_systemd!(watchdog_pings_while_the_generation_serves);

/// The generation answering on port `port`, as the box sees it: its answer, pid, the socket
/// variables it was given (contrib/app's /env), and the inode id of a pidfd of that pid.
fn generation_view(d: &Deployment, port: u16) -> String {
    d.sdbox.ok(&format!(
        r#"
answer=$(curl -sS -m 30 http://127.0.0.1:{port}/); echo "answer=$answer"
curl -sS -m 30 http://127.0.0.1:{port}/env
pid=$(echo "$answer" | sed -n 's/.* pid=\([0-9]*\) .*/\1/p'); echo "pid=$pid"
echo "pidfdid=$(python3 -c 'import os, sys; print(os.fstat(os.pidfd_open(int(sys.argv[1]))).st_ino)' "$pid")"
"#
    ))
}

/// Whether this kernel gives every process its own pidfd inode (pidfs, Linux 6.9): then two
/// processes' pidfds differ in st_ino, which they never do on the older anonymous inode.
fn kernel_has_pidfd_ids(d: &Deployment) -> bool {
    d.sdbox.ok("python3 -c 'import os; print(os.fstat(os.pidfd_open(os.getpid())).st_ino != os.fstat(os.pidfd_open(1)).st_ino)'").trim()
        == "True"
}

/// Checks that the generation answering on `port` was handed its sockets for itself: LISTEN_PID
/// is its pid and, on a kernel with pidfd ids, LISTEN_PIDFDID its own pidfd's inode id (never
/// systemd's value for sockherd). Returns its pid.
fn check_listen_vars(d: &Deployment, port: u16, release: &str, pidfd_ids: bool, when: &str) -> String {
    let view = generation_view(d, port);
    let pid = value(&view, "pid").unwrap_or("").to_string();
    let ok = value(&view, "answer").is_some_and(|a| a.starts_with(&format!("release={release} ")))
        && !pid.is_empty()
        && value(&view, "LISTEN_PID") == Some(pid.as_str())
        && value(&view, "LISTEN_FDS") == Some("2")
        && value(&view, "LISTEN_PIDFDID") == if pidfd_ids { value(&view, "pidfdid") } else { None };
    if !ok {
        d.sdbox.fail(&format!(
            "{when}: expected {release} served by a process whose LISTEN_PID is its pid and LISTEN_PIDFDID {}:\n{view}",
            if pidfd_ids { "its pidfd's inode id" } else { "unset (no pidfd ids on this kernel)" }
        ));
    }
    pid
}

/// A server that takes its sockets with libsystemd's own sd_listen_fds(0), as C servers do
/// (units/generic as shipped, contrib/app/serve.py --libsystemd): every generation of `sockherd
/// run` is handed them for itself, so libsystemd's checks pass on every systemd — 259 and later
/// included, which give sockherd a LISTEN_PIDFDID naming sockherd — and it serves through
/// reloads. Under `sockherd exec` (same pid) it serves too.
fn libsystemd_server_serves_through_reloads(systemd: Systemd) {
    require!("curl");
    let Some(d) = Deployment::install_on("libsystemd", Server::Libsystemd, systemd) else { return };
    let pidfd_ids = kernel_has_pidfd_ids(&d);
    d.start();
    let first = check_listen_vars(&d, 8080, "r1", pidfd_ids, "generation 1");
    let (code, out, _) = d.reload();
    if code != 0 {
        d.sdbox.fail(&format!("systemctl reload failed ({code}): {out}"));
    }
    let second = check_listen_vars(&d, 8080, "r1", pidfd_ids, "generation 2");
    d.flip("r2");
    let (code, out, _) = d.reload();
    if code != 0 {
        d.sdbox.fail(&format!("systemctl reload onto r2 failed ({code}): {out}"));
    }
    let third = check_listen_vars(&d, 8080, "r2", pidfd_ids, "generation 3");
    if first == second || second == third {
        d.sdbox.fail(&format!("the reloads did not start new generations: pids {first}, {second}, {third}"));
    }

    // `sockherd exec`: the server becomes the service's main process, same pid as sockherd.
    d.sdbox.ok(
        "set -e
printf '[Socket]\\nListenStream=127.0.0.1:8081\\nListenStream=/run/direct.sock\\n' >/etc/systemd/system/direct.socket
printf '[Service]\\nType=notify\\nUser=app\\nExecStart=/usr/bin/sockherd exec --chdir /srv/app/current -- /srv/app/current/bin/server\\n' >/etc/systemd/system/direct.service
systemctl daemon-reload && systemctl start direct.socket",
    );
    let direct = check_listen_vars(&d, 8081, "r2", pidfd_ids, "sockherd exec");
    let main_pid = d.sdbox.ok("systemctl show -P MainPID direct.service").trim().to_string();
    if direct != main_pid {
        d.sdbox.fail_unit("direct", &format!("under sockherd exec, pid {direct} answered but MainPID is {main_pid}"));
    }
}
on_every_systemd!(libsystemd_server_serves_through_reloads);

/// What a short-lived `sockherd reload` (ExecReload=) says reaches its unit's journal, every
/// time: journald tells a native entry's unit from its sender's cgroup, which it cannot read
/// once the sender has exited, so such commands write to stderr, whose stream names the unit.
fn client_messages_stay_in_their_units_journal(systemd: Systemd) {
    let Some(b) = common::sdbox::SdBox::boot_on("client-journal", systemd) else { return };
    b.ok(&format!(
        "install -m 0755 {} /usr/bin/sockherd
printf '[Service]\\nType=oneshot\\nExecStart=/usr/bin/sockherd reload --pid 1\\n' >/run/systemd/system/client@.service
systemctl daemon-reload",
        common::sockherd().display()
    ));
    let report = b.ok(
        "for i in $(seq 40); do systemctl start client@$i 2>/dev/null; done
journalctl --sync
for i in $(seq 40); do journalctl -u client@$i -o cat --no-pager | grep -q 'not a sockherd supervisor' || echo \"lost=$i\"; done
true",
    );
    if report.contains("lost=") {
        b.fail_unit("client@1", &format!("messages of sockherd reload missing from their unit's journal:\n{report}"));
    }
}
on_every_systemd!(client_messages_stay_in_their_units_journal);
