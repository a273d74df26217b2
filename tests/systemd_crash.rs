//! A crash of sockherd itself (SIGKILL, or the kernel's OOM killer, which sends the same),
//! inside a real systemd (tests/support/sdbox), under load: the shipped gunicorn units with
//! socket units, then `sockherd unit --no-socket-units` (the fd store). systemd restarts the
//! service (`Restart=on-failure` takes a SIGKILL for a failure), the sockets outlive sockherd (in
//! the socket units, or in the fd store), so no connection is refused: those made while it is
//! down wait in the listen queue. What becomes of the requests in flight is the units'
//! `KillMode=`: `mixed` SIGKILLs the old workers at once and they are lost; `control-group`
//! (the gunicorn unit's) sends them gunicorn's graceful SIGTERM, and they are answered.
mod common;

use common::sdbox::{Deployment, SdBox, Server, Systemd, report_number as number, report_value as value};

/// Four curl loops on TCP (a fresh connection per request): two fast, two of 0.5 s (so that
/// requests are in flight whenever sockherd dies). sockherd is killed with SIGKILL after a
/// second of load; the load goes on until the service is back and serves for another second.
/// Each request is logged with its start and end (ns) and curl's exit code; `inflight` counts
/// those that started before the kill and ended after it.
const KILL_UNDER_LOAD: &str = r#"
set -u
rm -f /tmp/l.*
loop() { # name url
  local name=$1 url=$2
  while [ ! -e /tmp/l.stop ]; do
    s=$(date +%s%N); code=$(curl -sS -m 30 -o /dev/null -w '%{http_code}' "$url" 2>>/tmp/l.err); rc=$?
    echo "$s $(date +%s%N) $rc $code" >>/tmp/l.$name
  done
}
loop fast1 http://127.0.0.1:8080/ & loop fast2 http://127.0.0.1:8080/ &
loop slow1 'http://127.0.0.1:8080/slow?s=0.5' & loop slow2 'http://127.0.0.1:8080/slow?s=0.5' &
sleep 1
cg=$(systemctl show -P ControlGroup app)
before=$(cat /sys/fs/cgroup$cg/*/cgroup.procs | sort -n | tr '\n' ' ')
restarts=$(systemctl show -P NRestarts app)
main=$(systemctl show -P MainPID app)
kill=$(date +%s%N)
kill -KILL "$main"
back=""
for i in $(seq 1500); do
  now=$(systemctl show -P MainPID app)
  if [ "$(systemctl show -P ActiveState app)" = active ] && [ "$now" != 0 ] && [ "$now" != "$main" ]; then
    back=$(( ($(date +%s%N) - kill) / 1000000 )); break
  fi
  sleep 0.02
done
sleep 1
touch /tmp/l.stop; wait
echo "back_ms=$back"
echo "restarts=$(( $(systemctl show -P NRestarts app) - restarts ))"
echo "before=$before"
echo "after=$(cat /sys/fs/cgroup$cg/*/cgroup.procs | sort -n | tr '\n' ' ')"
echo "generations=$(for d in /sys/fs/cgroup$cg/gen-*; do grep -q 'populated 1' $d/cgroup.events && basename $d; done | tr '\n' ' ')"
cat /tmp/l.fast* /tmp/l.slow* | awk -v k=$kill '
  { n++; if ($3 == 0 && $4 == 200) ok++; else fail++
    if ($1 < k && $2 > k) { inflight++; if ($3 == 0 && $4 == 200) inflight_ok++ }
    if ($1 > k && $3 == 0 && $4 == 200 && $2 - $1 > wait) wait = $2 - $1 }
  END { print "ok=" ok+0; print "fail=" fail+0; print "inflight=" inflight+0; print "inflight_ok=" inflight_ok+0
        print "queued_wait_ms=" int(wait / 1000000) }'
sort /tmp/l.err 2>/dev/null | uniq -c | sort -rn | head -3 | sed 's/^ */error=/'
true
"#;

/// Kills sockherd under load and checks what the units promise: no request fails (none
/// refused, none in flight lost), at least one was in flight (else the load proved nothing),
/// systemd restarted the service once, and no process of the old instance is left: every
/// process in the service's cgroup is new, in one generation.
fn kill_and_check(b: &SdBox, what: &str) {
    let report = b.ok(KILL_UNDER_LOAD);
    eprintln!("{} {what}: {}", b.systemd, report.replace('\n', " "));
    let before: Vec<&str> = value(&report, "before").unwrap_or("").split_whitespace().collect();
    let after: Vec<&str> = value(&report, "after").unwrap_or("").split_whitespace().collect();
    let generations = value(&report, "generations").unwrap_or("").split_whitespace().count();
    if value(&report, "back_ms").unwrap_or("").is_empty() || number(&report, "restarts") != 1 {
        b.fail(&format!("{what}: the service should be back after one restart:\n{report}"));
    }
    if before.len() < 4 || after.len() < 4 || after.iter().any(|p| before.contains(p)) || generations != 1 {
        b.fail(&format!(
            "{what}: after the restart, every process should be new and in one generation (sockherd, master, 2 workers):\n{report}"
        ));
    }
    if number(&report, "inflight") == 0 || number(&report, "ok") < 20 {
        b.fail(&format!("{what}: the load had no request in flight at the kill (or too few ran):\n{report}"));
    }
    if number(&report, "fail") != 0 {
        b.fail(&format!("{what}: requests failed across the SIGKILL of sockherd:\n{report}"));
    }
}

fn sigkill_of_sockherd_loses_no_request(systemd: Systemd) {
    require!("curl");
    let Some(d) = Deployment::install_on("crash", Server::Gunicorn, systemd) else { return };
    d.start();
    kill_and_check(&d.sdbox, "with socket units");

    // The same app from `sockherd unit --no-socket-units`: sockherd binds, the fd store keeps.
    let b = &d.sdbox;
    b.ok("set -e
systemctl stop app app-http.socket app-unix.socket
rm -rf /etc/systemd/system/app.service /etc/systemd/system/app-*.socket /etc/systemd/system/app.service.d
sockherd unit app --no-socket-units --flavor gunicorn --user app --chdir /srv/app/current \
  --listen 127.0.0.1:8080,name=http --listen /run/app/app.sock,name=unix --output /etc/systemd/system \
  -- /srv/app/shared/venv/bin/python -m gunicorn -c gunicorn.conf.py app:app >/dev/null
systemctl daemon-reload && systemctl enable --now app
curl -sS -m 30 -o /dev/null http://127.0.0.1:8080/");
    kill_and_check(b, "with the fd store");
}
on_every_systemd!(sigkill_of_sockherd_loses_no_request);
