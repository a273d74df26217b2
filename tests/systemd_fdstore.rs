//! `sockherd run --listen` without socket units, inside a real systemd (tests/support/sdbox):
//! the unit `sockherd unit --no-socket-units` writes keeps the sockets sockherd binds in
//! systemd's fd store, so that `systemctl restart` under load refuses no connection; the same
//! unit without a store refuses some (the comparison proves the load would have seen it).
mod common;

use common::sdbox::{SdBox, Systemd, report_number as number, report_value as value};
use common::*;

const RESTARTS: usize = 20;
/// Restarts without the store: enough to see refusals, kept few for the box test's time.
const RESTARTS_WITHOUT_STORE: usize = 5;

/// `restarts` `systemctl restart app` while four curl loops (two on TCP, two on the unix
/// socket; a fresh connection per request) load the app, all inside the box. Returns the box's
/// report: one `key=value` per line.
fn restarts_under_load(b: &SdBox, restarts: usize) -> String {
    b.ok(&format!(
        r#"
set -u
rm -f /tmp/load.*
loop() {{ # name curl-args...
  local name=$1; shift; local ok=0 fail=0
  while [ ! -e /tmp/load.stop ]; do
    if curl -sS --fail -m 30 -o /dev/null "$@" 2>>/tmp/load.$name.err; then ok=$((ok+1)); else fail=$((fail+1)); fi
  done
  echo "$name.ok=$ok $name.fail=$fail" >/tmp/load.$name.result
}}
loop tcp1 http://127.0.0.1:8080/ & loop tcp2 http://127.0.0.1:8080/ &
loop unix1 --unix-socket /run/app/app.sock http://app/ & loop unix2 --unix-socket /run/app/app.sock http://app/ &
sleep 0.5
mainpids=""
for i in $(seq {restarts}); do
  systemctl restart app || echo "restart.failed=$i"
  mainpids="$mainpids $(systemctl show -P MainPID app)"
done
sleep 0.5
touch /tmp/load.stop; wait
cat /tmp/load.*.result | tr ' ' '\n'
cat /tmp/load.*.result | tr ' ' '\n' | awk -F= '/\.ok=/ {{ok+=$2}} /\.fail=/ {{fail+=$2}} END {{print "ok=" ok; print "fail=" fail}}'
echo "mainpids=$mainpids"
cat /tmp/load.*.err 2>/dev/null | sort | uniq -c | sort -rn | head -3 | sed 's/^ */error=/'
true
"#
    ))
}

/// The whole comparison on one systemd: 20 restarts with the fd store refuse nothing and each
/// start takes both sockets back from the store; a stop keeps them from 254 on
/// (FileDescriptorStorePreserve=yes) and not on 252; without the store, restarts refuse.
fn restart_without_socket_units_keeps_connections_in_the_fd_store(systemd: Systemd) {
    require!("curl");
    let Some(b) = SdBox::boot_on("fdstore", systemd) else { return };
    b.ok(&format!(
        r#"set -e
useradd --system --user-group --no-create-home app
install -m 0755 {bin} /usr/bin/sockherd
mkdir -p /srv/app/releases/r1/bin
install -m 0755 {server} /srv/app/releases/r1/bin/server
echo r1 > /srv/app/releases/r1/RELEASE
ln -s releases/r1 /srv/app/current
chown -R app:app /srv/app
"#,
        bin = sockherd().display(),
        server = repo().join("tests/support/scenario_server.py").display(),
    ));
    // As an operator would: the unit from the generator, for the box's own systemd.
    let wrote = b.ok("sockherd unit app --no-socket-units --user app --chdir /srv/app/current \
         --listen 127.0.0.1:8080,name=http --listen /run/app/app.sock,name=unix \
         --output /etc/systemd/system -- /srv/app/current/bin/server 2>&1");
    if !wrote.contains("enable --now app.service") || wrote.contains("warning") {
        b.fail(&format!("sockherd unit --no-socket-units said:\n{wrote}"));
    }
    let verify = b.ok("cd /etc/systemd/system && systemd-analyze verify app.service 2>&1; echo \"exit=$?\"");
    if !verify.ends_with("exit=0\n") || verify.lines().any(|l| l.contains("app.service")) {
        b.fail(&format!("systemd-analyze verify complained:\n{verify}"));
    }
    // 20 restarts in a row are more than systemd's default start limit (5 in 10 s) allows.
    b.ok("mkdir -p /etc/systemd/system/app.service.d && printf '[Unit]\\nStartLimitIntervalSec=0\\n' >/etc/systemd/system/app.service.d/no-start-limit.conf");
    // Enabled, as the README says: a unit nothing references is unloaded once stopped, and its
    // fd store with it on 254 even with FileDescriptorStorePreserve=yes.
    b.ok("systemctl daemon-reload && systemctl enable --now app");
    let first =
        b.ok("curl -sS -m 30 http://127.0.0.1:8080/; echo; curl -sS -m 30 --unix-socket /run/app/app.sock http://app/");
    if first.lines().filter(|l| l.starts_with("release=r1")).count() != 2 {
        b.fail(&format!("the first requests answered:\n{first}"));
    }
    let stored = b.ok("journalctl -u app -o cat --no-pager | grep -c \"in systemd's fd store as sockherd/\" || true");
    if stored.trim() != "2" {
        b.fail(&format!("the first start should store both sockets; the journal says so {} time(s)", stored.trim()));
    }

    // 1. With the fd store: nothing refused, every restart a new process with the same sockets.
    let report = restarts_under_load(&b, RESTARTS);
    eprintln!("{systemd} with the fd store: {}", report.replace('\n', " "));
    let pids: std::collections::BTreeSet<&str> = value(&report, "mainpids").unwrap_or("").split_whitespace().collect();
    if report.contains("restart.failed") || pids.len() != RESTARTS {
        b.fail(&format!("{RESTARTS} restarts should each start a new main process:\n{report}"));
    }
    if number(&report, "fail") != 0 || number(&report, "ok") < 200 {
        b.fail(&format!("with the fd store, requests failed during restarts (or too few ran):\n{report}"));
    }
    let taken = b.ok("journalctl -u app -o cat --no-pager | grep -c \"taken back from systemd's fd store\" || true");
    if taken.trim().parse::<usize>().unwrap_or(0) != 2 * RESTARTS {
        b.fail(&format!(
            "each of {RESTARTS} starts should take both sockets back from the store; the journal says {} times",
            taken.trim()
        ));
    }

    // 2. A stop: from 254 FileDescriptorStorePreserve=yes keeps the sockets, so a connection
    // made while the service is stopped waits for the next start; 252 empties the store at a
    // stop, and the connection is refused.
    let stopped = b.ok("systemctl stop app
(curl -sS -m 30 -o /dev/null -w 'tcp=%{http_code}\n' http://127.0.0.1:8080/ 2>&1; \
 curl -sS -m 30 -o /dev/null -w 'unix=%{http_code}\n' --unix-socket /run/app/app.sock http://app/ 2>&1) >/tmp/stopped &
sleep 1
echo \"state=$(systemctl show -P ActiveState app)\"
echo \"stored=$(systemctl show -P NFileDescriptorStore app)\"
systemctl start app; wait; cat /tmp/stopped");
    eprintln!("{systemd} stopped: {}", stopped.replace('\n', " "));
    let preserved = systemd.version() >= 254;
    let answered = value(&stopped, "tcp") == Some("200") && value(&stopped, "unix") == Some("200");
    let in_store = if preserved { "2" } else { "0" };
    if value(&stopped, "state") != Some("inactive")
        || value(&stopped, "stored") != Some(in_store)
        || answered != preserved
    {
        b.fail(&format!(
            "a connection made while the service was stopped should {} on {systemd}:\n{stopped}",
            if preserved { "be answered after the start (FileDescriptorStorePreserve=yes)" } else { "be refused" }
        ));
    }

    // 3. The same unit without a store: the sockets close with each sockherd, and clients see it.
    let preserve_off = if systemd.version() >= 254 { "FileDescriptorStorePreserve=no\n" } else { "" };
    b.ok(&format!(
        "mkdir -p /etc/systemd/system/app.service.d
printf '[Service]\\nFileDescriptorStoreMax=0\\n{preserve_off}' >/etc/systemd/system/app.service.d/no-store.conf
systemctl daemon-reload && systemctl stop app && systemctl start app"
    ));
    let report = restarts_under_load(&b, RESTARTS_WITHOUT_STORE);
    eprintln!("{systemd} without the fd store: {}", report.replace('\n', " "));
    if number(&report, "fail") == 0 {
        b.fail(&format!(
            "without the fd store, {RESTARTS_WITHOUT_STORE} restarts under this load should have failed requests \
             (else the load cannot show what the store prevents):\n{report}"
        ));
    }
}
on_every_systemd!(restart_without_socket_units_keeps_connections_in_the_fd_store);
