//! Lifecycle faults that only a real systemd shows (tests/support/sdbox): a signal sent to the
//! whole unit (`systemctl kill -s USR1 app`, logrotate's postrotate) must not stop sockherd, and
//! a reload whose drain outlasts TimeoutStartSec= must still succeed, because sockherd extends
//! systemd's timeout for each phase it enters. The units are units/generic as shipped (plus a
//! drop-in that names what each scenario changes); the server is tests/support/scenario_server.py.
mod common;

use common::sdbox::{SdBox, Systemd, scenario_box};

use std::time::Duration;

/// A scenario box (releases r1 and r2 with the given BEHAVIOR each, units/generic as shipped,
/// with the drop-ins of 252 or 254) with `dropin`'s settings and a signal log.
fn install(tag: &str, systemd_254: bool, r1: &str, r2: &str, dropin: &str) -> Option<SdBox> {
    let systemd = if systemd_254 { Systemd::V254 } else { Systemd::V252 };
    scenario_box(tag, systemd, [r1, r2], &format!("Environment=SCENARIO_LOG=/srv/app/shared/signals.log\n{dropin}"))
}

/// `systemctl kill -s USR1 app` signals every process of the unit, sockherd included. sockherd
/// must survive it (and USR2, ALRM, ...), forward the server's own signals to the serving
/// master, and keep reloading.
fn unit_wide_signals(systemd_254: bool) {
    let tag = format!("kill-{}", if systemd_254 { "254" } else { "252" });
    let Some(sdbox) = install(&tag, systemd_254, "serve", "serve", "") else { return };
    let main_pid = sdbox.property("MainPID");
    let report = sdbox.ok(r#"set -u
systemctl kill -s USR1 app
systemctl kill -s SIGALRM --kill-whom=main app
systemctl kill -s SIGPWR --kill-whom=main app
sleep 1
systemctl kill -s USR1 --kill-whom=main app
sleep 1
echo "active=$(systemctl show -P ActiveState app)"
echo "mainpid=$(systemctl show -P MainPID app)"
echo "usr1=$(grep -c SIGUSR1 /srv/app/shared/signals.log)"
echo "nrestarts=$(systemctl show -P NRestarts app)"
"#);
    eprintln!("{tag}: {}", report.replace('\n', " "));
    use common::sdbox::{report_number as number, report_value as value};
    if value(&report, "active") != Some("active") || value(&report, "mainpid") != Some(main_pid.as_str()) {
        sdbox.fail(&format!("sockherd must survive signals sent to the unit:\n{report}"));
    }
    if number(&report, "nrestarts") != 0 {
        sdbox.fail(&format!("the service must not have restarted:\n{report}"));
    }
    // systemd's USR1 to every process reaches the master directly and, forwarded, once more;
    // the one sent to the main process only is forwarded.
    if number(&report, "usr1") < 2 {
        sdbox.fail(&format!("the server should have received USR1 from the unit-wide kill and the forward:\n{report}"));
    }
    let reload = sdbox.sh("systemctl reload app 2>&1");
    if !reload.status.success() {
        sdbox.fail(&format!("systemctl reload failed after the signals: {}", String::from_utf8_lossy(&reload.stdout)));
    }
}

#[test]
fn unit_wide_signals_do_not_stop_the_service_252() {
    unit_wide_signals(false);
}

#[test]
fn unit_wide_signals_do_not_stop_the_service_254() {
    unit_wide_signals(true);
}

/// The old generation takes 18 s to let go of the sockets after its stop signal, far beyond
/// TimeoutStartSec=10s (which bounds a reload) and the ready timeout (5 s): sockherd extends
/// systemd's timeout as it enters each phase, so `systemctl reload` succeeds.
fn drain_outlasts_the_reload_timeout(systemd_254: bool) {
    let tag = format!("drain-{}", if systemd_254 { "254" } else { "252" });
    let dropin = "TimeoutStartSec=10s\nExecStart=\nExecStart=/usr/bin/sockherd run --ready-timeout 5s --chdir /srv/app/current -- /srv/app/current/bin/server";
    let Some(sdbox) = install(&tag, systemd_254, "hold-after-term:18", "serve", dropin) else { return };
    sdbox.ok("cd /srv/app && ln -sfn releases/r2 current.new && mv -T current.new current");
    let started = std::time::Instant::now();
    let out = sdbox.sh("systemctl reload app 2>&1; echo exit=$?");
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{tag}: reload took {took:?}: {}", text.trim());
    if !text.contains("exit=0") {
        sdbox.fail(&format!("the reload must succeed although its drain outlasts TimeoutStartSec: {text}"));
    }
    if took < Duration::from_secs(18) {
        sdbox.fail(&format!("the reload ended after {took:?}, before the old generation let go (18 s)"));
    }
    let answer = sdbox.ok("curl -sS -m 30 http://127.0.0.1:8080/");
    if !answer.starts_with("release=r2") {
        sdbox.fail(&format!("after the reload r2 should serve: {answer:?}"));
    }
    let state = sdbox.property("ActiveState");
    if state != "active" {
        sdbox.fail(&format!("the service should be active after the reload, is {state}"));
    }
}

#[test]
fn drain_outlasts_the_reload_timeout_252() {
    drain_outlasts_the_reload_timeout(false);
}

#[test]
fn drain_outlasts_the_reload_timeout_254() {
    drain_outlasts_the_reload_timeout(true);
}

/// systemd's watchdog (`WatchdogSec=3s`) means something: a service whose generation stops
/// answering is restarted. `--watchdog probe` (gunicorn, unicorn: servers that never ping)
/// pings for each answer of the generation's private probe; `relay` (puma's default) passes on
/// puma's own pings and pings by itself only during a handoff. First the service stays up
/// through a few intervals and a reload; then its server is frozen (SIGSTOP: the workers for
/// gunicorn, the master, which pings, for puma) and systemd must restart it.
fn watchdog_restarts_a_hung_generation(server: common::sdbox::Server, mode: &str, frozen: &str) {
    use common::sdbox::{Deployment, report_number as number, report_value as value};
    require!("curl");
    let tag = format!("watchdog-{}", server.flavor());
    let Some(d) = Deployment::install(&tag, server, None, false) else { return };
    let exec_start = d.sdbox.ok("systemctl show -P ExecStart app | grep -o 'argv\\[\\]=[^;]*' | sed 's/argv\\[\\]=//'");
    // The probe watchdog asks the private probe socket, which only `--ready probe` gives (not
    // gunicorn's default readiness, `booted`).
    let ready = if mode == "probe" { " --ready probe" } else { "" };
    let exec_start =
        exec_start.trim().replacen(" run ", &format!(" run --watchdog {mode}{ready} --stop-timeout 3s "), 1);
    d.sdbox.ok(&format!(
        "mkdir -p /etc/systemd/system/app.service.d
printf '[Service]\\nWatchdogSec=3s\\nTimeoutStopSec=15s\\nExecStart=\\nExecStart={exec_start}\\n' >/etc/systemd/system/app.service.d/watchdog.conf
systemctl daemon-reload"
    ));
    d.start();
    let main_pid = d.sdbox.property("MainPID");
    let healthy = d.sdbox.ok("sleep 4; systemctl reload app; sleep 5
echo nrestarts=$(systemctl show -P NRestarts app)
echo active=$(systemctl show -P ActiveState app)
echo mainpid=$(systemctl show -P MainPID app)");
    eprintln!("{tag}: healthy: {}", healthy.replace('\n', " "));
    if number(&healthy, "nrestarts") != 0 || value(&healthy, "mainpid") != Some(main_pid.as_str()) {
        d.sdbox.fail(&format!("a healthy service must not be restarted by the watchdog:\n{healthy}"));
    }
    // Freeze the server: its pings (or its probe answers) stop.
    let status: serde_free::Status =
        serde_free::Status(d.sdbox.ok("sockherd status --json --pid $(systemctl show -P MainPID app)"));
    let master = status.serving_master();
    let targets = match frozen {
        "workers" => format!("$(pgrep -P {master})"),
        _ => master.to_string(),
    };
    let restarted = d.sdbox.ok(&format!(
        "kill -STOP {targets}
for i in $(seq 120); do [ \"$(systemctl show -P NRestarts app)\" -ge 1 ] && [ \"$(systemctl show -P ActiveState app)\" = active ] && break; sleep 0.5; done
echo nrestarts=$(systemctl show -P NRestarts app)
echo active=$(systemctl show -P ActiveState app)
echo watchdog=$(journalctl -u app --no-pager | grep -c -i 'watchdog timeout')
curl -sS -m 30 -o /dev/null -w 'http=%{{http_code}}\\n' http://127.0.0.1:8080/"
    ));
    eprintln!("{tag}: frozen: {}", restarted.replace('\n', " "));
    if number(&restarted, "nrestarts") < 1 || number(&restarted, "watchdog") < 1 {
        d.sdbox.fail(&format!("systemd's watchdog should have restarted the frozen service:\n{restarted}"));
    }
    if value(&restarted, "active") != Some("active") || value(&restarted, "http") != Some("200") {
        d.sdbox.fail(&format!("the restarted service should serve:\n{restarted}"));
    }
}

/// The serving master's pid from `sockherd status --json`, without a JSON library in the test.
mod serde_free {
    pub struct Status(pub String);

    impl Status {
        pub fn serving_master(&self) -> i32 {
            let json = sockherd::status::Json::parse(self.0.trim()).expect("status JSON");
            json.get("generations")
                .arr()
                .iter()
                .find(|g| g.get("state").str() == Some("serving"))
                .and_then(|g| g.get("pid").num())
                .expect("a serving generation") as i32
        }
    }
}

#[test]
fn watchdog_probe_restarts_a_gunicorn_whose_workers_hang() {
    watchdog_restarts_a_hung_generation(common::sdbox::Server::Gunicorn, "probe", "workers");
}

#[test]
fn watchdog_relay_restarts_a_puma_that_stops_pinging() {
    watchdog_restarts_a_hung_generation(common::sdbox::Server::Puma, "relay", "master");
}
