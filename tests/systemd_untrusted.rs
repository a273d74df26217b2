//! Untrusted input against a real systemd (tests/support/sdbox), with the shipped units:
//! an app's notifications never speak for sockherd to PID 1 (MainPID stays, the unit is not
//! killed, reloads still work), and the control channel is reachable from every caller that
//! should reach it (ExecReload= inside the sandbox, root outside it, `+` ExecReload=, a
//! PrivateNetwork= service) and from no impostor.
mod common;

use common::sdbox::{Deployment, SdBox, Server, Systemd, report_value as value, run_unit_dropins};
use common::*;

/// A box with sockherd, user app, releases r1-r3 of tests/support/notifier.py (each with its
/// MODE), current -> r1, the generic units with its systemd's drop-ins. Nothing started.
fn install_notifier(tag: &str, systemd_254: bool, modes: [&str; 3]) -> Option<SdBox> {
    if !prerequisite(have("curl"), "program curl in PATH") {
        return None;
    }
    let systemd = if systemd_254 { Systemd::V254 } else { Systemd::V252 };
    let sdbox = SdBox::boot_on(tag, systemd)?;
    let units = repo().join("units");
    sdbox.ok(&format!(
        r#"set -e
useradd --system --user-group --no-create-home app
install -m 0755 {bin} /usr/bin/sockherd
i=0
for mode in {m1} {m2} {m3}; do
  i=$((i+1))
  mkdir -p /srv/app/releases/r$i/bin
  install -m 0755 {server} /srv/app/releases/r$i/bin/server
  echo $mode > /srv/app/releases/r$i/MODE
done
mkdir -p /srv/app/shared
ln -s releases/r1 /srv/app/current
chown -R app:app /srv/app
cp {units}/app-http.socket {units}/app-unix.socket {units}/generic/app.service /etc/systemd/system/
{dropins}systemctl daemon-reload
"#,
        bin = sockherd().display(),
        server = repo().join("tests/support/notifier.py").display(),
        units = units.display(),
        m1 = modes[0],
        m2 = modes[1],
        m3 = modes[2],
        dropins = run_unit_dropins(systemd),
    ));
    Some(sdbox)
}

/// Each release's app sends what no app may say for sockherd: `STATUS=x\rWATCHDOG=trigger\r
/// MAINPID=<its pid>\rSTOPPING=1`, a 4,050-byte status, a NUL byte. For each: the service
/// starts (a READY=1 that systemd dropped would hang it until TimeoutStartSec), its MainPID is
/// sockherd's and stays so, it is not killed, `systemctl reload` onto the next release works,
/// and it stops cleanly.
fn notifications_cannot_speak_for_sockherd(systemd_254: bool) {
    let tag = format!("notify-untrusted-{}", if systemd_254 { "254" } else { "252" });
    let Some(sdbox) = install_notifier(&tag, systemd_254, ["inject", "long", "nul"]) else { return };
    let report = sdbox.ok(r#"set -u
flip() { cd /srv/app && ln -sfn releases/$1 current.new && mv -T current.new current; cd /; }
check() { # name
  echo "$1.active=$(systemctl show -P ActiveState app)"
  pid=$(systemctl show -P MainPID app)
  echo "$1.mainpid=$pid"
  echo "$1.exe=$(readlink /proc/$pid/exe)"
  echo "$1.status=$(systemctl show -P StatusText app | tr -d '\r' | cut -c1-200)"
}
systemctl start app-http.socket app-unix.socket
for r in r1 r2 r3; do
  flip $r
  timeout 60 systemctl start app; echo "$r.start=$?"
  curl -sS -m 30 http://127.0.0.1:8080/ >/dev/null; echo "$r.curl=$?"
  sleep 2
  check $r
  flip r1; [ $r = r1 ] && flip r2
  timeout 60 systemctl reload app; echo "$r.reload=$?"
  sleep 2
  check $r.after
  timeout 60 systemctl stop app; echo "$r.stop=$?"
  echo "$r.result=$(systemctl show -P Result app)"
done
journalctl -u app -o cat --no-pager | grep -i -E 'watchdog|MAINPID|notification' | tail -5 | sed 's/^/journal=/'
true
"#);
    eprintln!("{tag}:\n{report}");
    for r in ["r1", "r2", "r3"] {
        let exe = value(&report, &format!("{r}.exe")).unwrap_or("");
        let after_pid = value(&report, &format!("{r}.after.mainpid"));
        let checks = [
            (format!("{r}.start"), value(&report, &format!("{r}.start")) == Some("0")),
            (format!("{r}.active"), value(&report, &format!("{r}.active")) == Some("active")),
            (format!("{r}.exe"), exe.ends_with("/sockherd")),
            (format!("{r}.reload"), value(&report, &format!("{r}.reload")) == Some("0")),
            (format!("{r}.after.active"), value(&report, &format!("{r}.after.active")) == Some("active")),
            (format!("{r}.after.mainpid"), after_pid == value(&report, &format!("{r}.mainpid"))),
            (format!("{r}.stop"), value(&report, &format!("{r}.stop")) == Some("0")),
            (format!("{r}.result"), value(&report, &format!("{r}.result")) == Some("success")),
            (
                format!("{r}.status"),
                !value(&report, &format!("{r}.status")).unwrap_or("").contains("WATCHDOG=")
                    && !value(&report, &format!("{r}.status")).unwrap_or("").contains("after"),
            ),
        ];
        if let Some((what, _)) = checks.iter().find(|(_, ok)| !ok) {
            sdbox.fail(&format!("{what} is wrong:\n{report}"));
        }
    }
}

#[test]
fn app_notifications_cannot_speak_for_sockherd_on_systemd_252() {
    notifications_cannot_speak_for_sockherd(false);
}

#[test]
fn app_notifications_cannot_speak_for_sockherd_on_systemd_254_notify_reload() {
    notifications_cannot_speak_for_sockherd(true);
}

/// The control socket of a supervisor under the shipped gunicorn unit (RuntimeDirectory=,
/// PrivateTmp=, PrivateUsers=, ProtectProc=invisible) is reached by `systemctl reload`
/// (ExecReload= inside the sandbox), by root outside it (`sockherd status app`, `reload --pid`),
/// by a `+` ExecReload= (root, outside the sandbox), and with PrivateNetwork= too, where
/// sockherd 0.1's abstract socket name was invisible from outside (`status app` then called the
/// supervisor "not a supervisor" and `reload --pid` drove it natively with SIGUSR2).
#[test]
fn control_socket_reached_from_every_caller_in_systemd() {
    require!("curl", "python3");
    let Some(d) = Deployment::install("control-callers", Server::Gunicorn, None, false) else { return };
    d.start();
    let report = d.sdbox.ok(r#"set -u
pid=$(systemctl show -P MainPID app)
echo "mainpid=$pid"
systemctl reload app; echo "execreload=$?"
sockherd status app >/tmp/status.out 2>&1; echo "status_root=$?"
grep -c 'serving' /tmp/status.out | sed 's/^/status_serving=/'
sockherd reload --pid $pid >/dev/null 2>&1; echo "reload_root=$?"
runuser -u app -- sockherd status --pid $pid >/tmp/status.app 2>&1; echo "status_app_outside=$?"
head -c 300 /tmp/status.app | tr '\n' ' ' | sed 's/^/status_app_outside_says=/'; echo
mkdir -p /etc/systemd/system/app.service.d
printf '[Service]\nPrivateNetwork=yes\n' >/etc/systemd/system/app.service.d/net.conf
systemctl daemon-reload && systemctl restart app
curl -sS -m 30 -o /dev/null http://127.0.0.1:8080/; echo "privnet_curl=$?"
systemctl reload app; echo "privnet_execreload=$?"
pid=$(systemctl show -P MainPID app)
sockherd status app >/tmp/status.net 2>&1; echo "privnet_status_root=$?"
grep -c 'serving generation' /tmp/status.net | sed 's/^/privnet_status_serving=/'
sockherd reload --pid $pid >/dev/null 2>&1; echo "privnet_reload_root=$?"
echo "privnet_mainpid_after=$(systemctl show -P MainPID app) (was $pid)"
printf '[Service]\nExecReload=\nExecReload=+/usr/bin/sockherd reload\n' >/etc/systemd/system/app.service.d/plus.conf
systemctl daemon-reload
systemctl reload app; echo "plus_execreload=$?"
echo "active=$(systemctl show -P ActiveState app)"
true
"#);
    eprintln!("control-callers:\n{report}");
    for key in [
        "execreload",
        "status_root",
        "reload_root",
        "privnet_curl",
        "privnet_execreload",
        "privnet_status_root",
        "privnet_reload_root",
        "plus_execreload",
    ] {
        if value(&report, key) != Some("0") {
            d.sdbox.fail(&format!("{key} failed:\n{report}"));
        }
    }
    if value(&report, "active") != Some("active") {
        d.sdbox.fail(&format!("the service is not active after all that:\n{report}"));
    }
    for key in ["status_serving", "privnet_status_serving"] {
        if value(&report, key).is_none_or(|n| n == "0") {
            d.sdbox.fail(&format!("sockherd status app did not show a serving generation ({key}):\n{report}"));
        }
    }
    // Outside the sandbox, the service's own user cannot look into a PrivateUsers= process
    // (another user namespace): it must be told so, not misled.
    if value(&report, "status_app_outside") != Some("0")
        && !value(&report, "status_app_outside_says").unwrap_or("").contains("permission denied")
    {
        d.sdbox.fail(&format!("user app outside the sandbox got an unclear refusal:\n{report}"));
    }
}
