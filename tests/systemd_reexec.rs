//! `sockherd reexec` inside a real systemd (tests/support/sdbox), under load: the gunicorn units
//! as shipped (socket units; Type=notify-reload from 253) re-execute sockherd ten times in a row,
//! alternating between two builds with different version strings that an upgrade installs at
//! /usr/bin/sockherd by rename, as dpkg does. No request fails, MainPID and the serving
//! generation stay, `status` names each new version, and `systemctl reload` still works after;
//! a non-executable binary and one that refuses the state are refused while the old supervisor
//! keeps serving.
mod common;

use common::sdbox::{CURL_LOOP, Deployment, Server, Systemd, report_number as number, report_value as value};

const REEXECS: usize = 10;
/// The one done by systemd's own re-execute signal (`systemctl kill -s SIGRTMIN+25`).
const BY_SIGNAL: usize = 5;
/// The one that names its binary (`--binary`) at another path than the unit's.
const BY_PATH: usize = 8;
const FIRST: &str = concat!("sockherd ", env!("CARGO_PKG_VERSION"));
const SECOND: &str = concat!("sockherd ", env!("CARGO_PKG_VERSION"), " (build second)");

/// The build the `i`th reexec (from 1) installs and runs.
fn build_of(i: usize) -> (&'static str, &'static str) {
    if i % 2 == 1 { ("second", SECOND) } else { ("first", FIRST) }
}

/// /opt/builds/{first,second}/sockherd: the built binary and a copy stamped `second`
/// (.sockherd_build); /opt/builds/noexec/sockherd, the binary without execute permission;
/// /opt/builds/refuses/sockherd, a binary whose check refuses this state version (as a build
/// with another state layout answers).
fn install_builds(d: &Deployment) {
    let answer = d.sdbox.ok(
        r#"set -e
mkdir -p /opt/builds/first /opt/builds/second /opt/builds/noexec /opt/builds/refuses
cp /usr/bin/sockherd /opt/builds/first/sockherd
head -c 64 /dev/zero >/tmp/label; printf second | dd of=/tmp/label conv=notrunc status=none
objcopy --update-section .sockherd_build=/tmp/label /usr/bin/sockherd /opt/builds/second/sockherd
install -m 0644 /usr/bin/sockherd /opt/builds/noexec/sockherd
printf '#!/bin/sh\necho "refuses state version $2: sockherd 0.9.0 reads versions 2 to 2"\nexit 1\n' >/opt/builds/refuses/sockherd
chmod 0755 /opt/builds/refuses/sockherd
/opt/builds/second/sockherd reexec-check 1 -- run --flavor gunicorn -- true
"#,
    );
    if answer.trim() != format!("accepts {SECOND}") {
        d.sdbox.fail(&format!("the stamped copy's check answered {answer:?}"));
    }
}

/// The reexecs under load (wrk and hey on TCP with keep-alive, curl loops with a connection
/// per request on TCP and the unix socket), then a reload, then the two refused binaries, all
/// inside the box. Returns the box's report: one `key=value` per line.
fn reexecs_under_load(d: &Deployment) -> String {
    d.sdbox.ok(&format!(
        r#"
set -u
rm -f /tmp/load.stop /tmp/load.*
{CURL_LOOP}
main=$(systemctl show -P MainPID app)
# The supervisor as it says: version|reexecs|number:pid of each generation.
st() {{
  /opt/builds/first/sockherd status --pid "$main" --json | python3 -c 'import json, sys
s = json.load(sys.stdin)
print("%s|%d|%s" % (s["version"], s["reexecs"], ",".join("%d:%d" % (g["number"], g["pid"]) for g in s["generations"])))'
}}
unit() {{ echo "$(systemctl show -P MainPID app) $(systemctl show -P ActiveState app)/$(systemctl show -P SubState app)"; }}
# As dpkg installs a file: written beside it, renamed over it.
install_build() {{ cp /opt/builds/$1/sockherd /usr/bin/sockherd.dpkg-new && mv -f /usr/bin/sockherd.dpkg-new /usr/bin/sockherd; }}
ms() {{ echo $(( ($(date +%s%N) - $1) / 1000000 )); }}
loop tcp http://127.0.0.1:8080/ & tcp=$!
loop unix --unix-socket /run/app.sock http://app/ & unix=$!
hey -z 300s -c 4 http://127.0.0.1:8080/ >/tmp/load.hey 2>&1 & hey=$!
wrk -t1 -c4 -d300s http://127.0.0.1:8080/ >/tmp/load.wrk 2>&1 & wrk=$!
sleep 1
echo "before=$(st)"
for i in $(seq {REEXECS}); do
  if [ $((i % 2)) = 1 ]; then build=second; else build=first; fi
  install_build $build
  start=$(date +%s%N)
  case $i in
    {BY_SIGNAL}) systemctl kill -s SIGRTMIN+25 --kill-whom=main app; echo "reexec.$i=$? signal"
       for t in $(seq 300); do [ "$(st | cut -d'|' -f2)" = $i ] && break; sleep 0.1; done ;;
    {BY_PATH}) out=$(sockherd reexec app --binary /opt/builds/$build/sockherd 2>&1); echo "reexec.$i=$? $out" ;;
    *) out=$(sockherd reexec app 2>&1); echo "reexec.$i=$? $out" ;;
  esac
  echo "ms.$i=$(ms $start)"
  echo "after.$i=$(st)"
  echo "unit.$i=$(unit)"
done
out=$(systemctl reload app 2>&1); echo "reload=$? $out"
# The old generation may still be draining when the reload returns.
for t in $(seq 300); do st | grep -q '|1:' || break; sleep 0.1; done
echo "after.reload=$(st)"
echo "unit.reload=$(unit)"
# A broken upgrade: the file at the unit's path is not executable.
install -m 0644 /opt/builds/first/sockherd /usr/bin/sockherd.dpkg-new && mv -f /usr/bin/sockherd.dpkg-new /usr/bin/sockherd
out=$(/opt/builds/first/sockherd reexec app 2>&1); echo "noexec=$? $out"
install_build first
out=$(sockherd reexec app --binary /opt/builds/refuses/sockherd 2>&1); echo "refuses=$? $out"
echo "after.refused=$(st)"
echo "unit.refused=$(unit)"
sleep 0.5
touch /tmp/load.stop; kill -INT $hey $wrk; wait $tcp $unix $hey $wrk
cat /tmp/load.tcp.result /tmp/load.unix.result | tr ' ' '\n'
echo "masters=$(cat /tmp/load.*.masters | sort -u | wc -l)"
echo "hey.200=$(awk '/\[200\]/ {{print $2}}' /tmp/load.hey)"
sed -n '/Status code distribution/,/^$/p' /tmp/load.hey | grep -o '\[[0-9]*\][[:space:]]*[0-9]*' | tr -s ' ' | sed 's/^/hey.status=/'
grep -q 'Error distribution' /tmp/load.hey && echo "hey.errors=$(sed -n '/Error distribution/,$p' /tmp/load.hey | tr '\n' ' ')"
echo "wrk.requests=$(grep -o '[0-9]* requests in' /tmp/load.wrk | cut -d' ' -f1)"
grep -E 'Socket errors|Non-2xx' /tmp/load.wrk | sed 's/^ */wrk.errors=/'
grep -h -v '^HTTP 200' /tmp/load.tcp.err /tmp/load.unix.err | head -5 | sed 's/^/error=/'
echo "journal.done=$(journalctl -u app SOCKHERD_EVENT=reexec_done -o cat --no-pager | wc -l)"
echo "journal.failed=$(journalctl -u app SOCKHERD_EVENT=reexec_failed -o cat --no-pager | wc -l)"
true
"#
    ))
}

/// Ten reexecs in a row under load on one systemd, then a reload, then two refused binaries.
fn reexec_under_load_keeps_serving(systemd: Systemd) {
    require!("curl", "hey", "wrk", "objcopy");
    let Some(d) = Deployment::install_on("reexec", Server::Gunicorn, systemd) else { return };
    // A watchdog: the new image must keep pinging systemd, or systemd kills the service.
    d.sdbox.ok("mkdir -p /etc/systemd/system/app.service.d && printf '[Service]\\nWatchdogSec=4s\\n' >/etc/systemd/system/app.service.d/watchdog.conf && systemctl daemon-reload");
    d.start();
    install_builds(&d);
    let main_pid = d.sdbox.property("MainPID");
    let report = reexecs_under_load(&d);
    eprintln!("reexec on {systemd}: {}", report.replace('\n', " "));
    let fail = |why: &str| -> ! { d.sdbox.fail(&format!("{why}\n--- report:\n{report}")) };

    // 1. Ten reexecs: each answered by the new image, which names both versions; the same
    // MainPID and generation; the unit active throughout.
    let before = value(&report, "before").unwrap_or("");
    let serving = before.strip_prefix(&format!("{FIRST}|0|")).unwrap_or_else(|| fail("status before the reexecs"));
    if !serving.starts_with("1:") {
        fail(&format!("generation 1 should serve before the reexecs, status says {serving}"));
    }
    let running = format!("{main_pid} active/running");
    let mut previous = FIRST;
    for i in 1..=REEXECS {
        let (_, version) = build_of(i);
        let said = value(&report, &format!("reexec.{i}")).unwrap_or("");
        let answered = format!("0 sockherd: re-executed: {version} took over from {previous}; generation 1 ");
        let ok = if i == BY_SIGNAL { said == "0 signal" } else { said.starts_with(&answered) };
        if !ok {
            fail(&format!("reexec {i} said {said:?}, expected it to start with {answered:?}"));
        }
        let status = value(&report, &format!("after.{i}")).unwrap_or("");
        if status != format!("{version}|{i}|{serving}") {
            fail(&format!("after reexec {i}, status says {status:?}: expected {version}, {i} reexecs, {serving}"));
        }
        let unit = value(&report, &format!("unit.{i}")).unwrap_or("");
        if unit != running {
            fail(&format!("after reexec {i}, the unit is {unit:?}, expected {running:?}"));
        }
        previous = version;
    }

    // 2. A reload afterwards: a new generation, the same main process, the unit active.
    let reload = value(&report, "reload").unwrap_or("");
    let after = value(&report, "after.reload").unwrap_or("");
    let (_, last) = build_of(REEXECS);
    let generation = after.strip_prefix(&format!("{last}|{REEXECS}|")).unwrap_or("");
    if !reload.starts_with('0') || !generation.starts_with("2:") || generation == serving {
        fail(&format!("systemctl reload after the reexecs: {reload:?}, then {after:?}"));
    }
    if value(&report, "unit.reload") != Some(running.as_str()) {
        fail(&format!("after the reload the unit should be {running:?}"));
    }

    // 3. Refused: a file that is not executable at the unit's path, and a build that refuses
    // the state; the old supervisor stays and serves.
    let noexec = value(&report, "noexec").unwrap_or("");
    if !noexec.starts_with("1 ") || !noexec.contains("/usr/bin/sockherd") || !noexec.contains("ermission denied") {
        fail(&format!("a non-executable binary: {noexec:?}"));
    }
    let refuses = value(&report, "refuses").unwrap_or("");
    if !refuses.starts_with("1 ") || !refuses.contains("refused: refuses state version 1") {
        fail(&format!("a binary refusing the state: {refuses:?}"));
    }
    if value(&report, "after.refused") != Some(after) || value(&report, "unit.refused") != Some(running.as_str()) {
        fail("after the refused reexecs the supervisor should be as it was after the reload");
    }

    // 4. Under load: no failed request, on any client; only the two generations answered.
    let fails = number(&report, "tcp.fail") + number(&report, "unix.fail");
    if fails > 0
        || value(&report, "hey.errors").is_some()
        || value(&report, "wrk.errors").is_some()
        || value(&report, "error").is_some()
    {
        fail("requests failed during the reexecs");
    }
    let statuses: Vec<&str> = report.lines().filter_map(|l| l.strip_prefix("hey.status=")).collect();
    if statuses.is_empty() || statuses.iter().any(|s| !s.starts_with("[200]")) {
        fail(&format!("hey got answers other than 200: {statuses:?}"));
    }
    if number(&report, "tcp.ok") < 20
        || number(&report, "unix.ok") < 20
        || number(&report, "hey.200") < 100
        || number(&report, "wrk.requests") < 100
    {
        fail("too few requests to call it a load");
    }
    if number(&report, "masters") != 2 {
        fail("the answers should come from two masters: generation 1, then 2 after the reload");
    }

    // 5. The new images' journal lines carry the unit; the watchdog kept being fed.
    if number(&report, "journal.done") != REEXECS as u64 || number(&report, "journal.failed") < 2 {
        fail(&format!("journalctl -u app should have {REEXECS} reexec_done and 2+ reexec_failed events"));
    }
    let mut stamps = std::collections::BTreeSet::new();
    let fed = common::wait_until(std::time::Duration::from_secs(20), || {
        stamps.insert(d.sdbox.property("WatchdogTimestampMonotonic"));
        stamps.len() >= 2
    });
    if !fed || d.sdbox.property("NRestarts") != "0" || d.sdbox.property("MainPID") != main_pid {
        fail(&format!("the watchdog should still be fed after the reexecs (timestamps {stamps:?})"));
    }
}
on_every_systemd!(reexec_under_load_keeps_serving);
