//! The Debian package as an operator installs it: `dpkg -i` inside a systemd harness box (the
//! box's throwaway overlay of the root, never the host), then the binary, the unit templates,
//! the man pages and the shell completions where Debian looks for them; an upgrade re-executes
//! the running supervisors (the postinst) unless the operator opted out.
//!
//! The package is built beforehand by `packaging/build-deb` (a release build and cargo-deb take
//! minutes; CI runs it before `cargo test`). A missing or stale package is a missing
//! prerequisite: skipped with the reason, or a failure under SOCKHERD_TEST_REQUIRE=1.
mod common;

use common::sdbox::{SdBox, Systemd};
use common::*;

/// A box with the package installed by `dpkg -i`. The host's systemd: nothing the package
/// holds depends on the systemd version (the units it ships are verified and run on every
/// version of the matrix by tests/systemd.rs).
fn installed(tag: &str) -> Option<SdBox> {
    let deb = built_deb()?;
    let sdbox = SdBox::boot_on(tag, Systemd::V252)?;
    let out = sdbox.ok(&format!("test ! -e /usr/bin/sockherd; dpkg -i {} 2>&1", deb.display()));
    eprintln!("{tag}: {}", out.lines().last().unwrap_or_default());
    Some(sdbox)
}

#[test]
fn deb_installs_the_binary_and_the_unit_templates() {
    let Some(b) = installed("deb-bin") else { return };
    let version = b.ok("/usr/bin/sockherd --version");
    if version.trim() != format!("sockherd {}", env!("CARGO_PKG_VERSION")) {
        b.fail(&format!("/usr/bin/sockherd --version said {version:?}"));
    }
    // The templates exactly as in units/, and the examples as in contrib/.
    b.ok(&format!(
        "diff -r {units} /usr/share/sockherd/units && diff -r {contrib} /usr/share/sockherd/contrib",
        units = repo().join("units").display(),
        contrib = repo().join("contrib").display()
    ));
    // The installed binary writes units that run itself.
    let unit = b.ok("cd / && sockherd unit web -l 127.0.0.1:8080 --systemd-version 252 -- /usr/bin/server 2>/dev/null");
    if !unit.contains("\nExecStart=/usr/bin/sockherd run --flavor systemd -- /usr/bin/server\n") {
        b.fail(&format!("the installed sockherd's unit does not run /usr/bin/sockherd:\n{unit}"));
    }
    // Each path on its own: one left behind must fail the test even if the other is gone.
    let removed = b.ok(
        "dpkg -r sockherd >/dev/null 2>&1; for p in /usr/bin/sockherd /usr/share/sockherd /usr/share/man/man1/sockherd.1.gz \
         /usr/share/bash-completion/completions/sockherd; do if [ -e \"$p\" ]; then echo \"left=$p\"; fi; done",
    );
    if removed.contains("left=") {
        b.fail(&format!("dpkg -r sockherd left files behind:\n{removed}"));
    }
}

#[test]
fn deb_man_pages_render() {
    require!("man");
    let Some(b) = installed("deb-man") else { return };
    let listed = b.ok("dpkg -L sockherd | grep /usr/share/man/man1/ | sort");
    for page in
        ["sockherd.1.gz", "sockherd-run.1.gz", "sockherd-reload.1.gz", "sockherd-status.1.gz", "sockherd-unit.1.gz"]
    {
        if !listed.contains(&format!("/usr/share/man/man1/{page}\n")) {
            b.fail(&format!("the package has no {page}:\n{listed}"));
        }
    }
    let out = b.sh("MANPAGER=cat MANWIDTH=100 man sockherd");
    let page = String::from_utf8_lossy(&out.stdout);
    // man justifies lines: compare with single spaces.
    let flat = page.split_whitespace().collect::<Vec<_>>().join(" ");
    let warnings = String::from_utf8_lossy(&out.stderr);
    for want in [
        "NAME",
        "sockherd - Hands systemd's",
        "SUBCOMMANDS",
        "sockherd-unit(1)",
        "EXIT STATUS",
        "/usr/share/sockherd/units/",
    ] {
        if !out.status.success() || !flat.contains(want) {
            b.fail(&format!("`man sockherd` ({:?}) lacks {want:?}:\n{page}\n{warnings}", out.status));
        }
    }
    if !warnings.trim().is_empty() {
        b.fail(&format!("`man sockherd` warned:\n{warnings}"));
    }
    let unit = b.ok("MANPAGER=cat MANWIDTH=100 man sockherd-unit");
    if !unit.contains("--systemd-version") || !unit.contains("--listen") {
        b.fail(&format!("`man sockherd-unit` lacks its options:\n{unit}"));
    }
}

#[test]
fn deb_installs_shell_completions() {
    let Some(b) = installed("deb-completions") else { return };
    b.ok("test -s /usr/share/zsh/vendor-completions/_sockherd && test -s /usr/share/fish/vendor_completions.d/sockherd.fish");
    // bash: the file defines the completion, and completing `sockherd st` offers status.
    let bash = b.ok(
        "bash -c 'source /usr/share/bash-completion/completions/sockherd && complete -p sockherd && \
         COMP_WORDS=(sockherd st) COMP_CWORD=1 COMP_LINE=\"sockherd st\" COMP_POINT=11 && _sockherd sockherd st sockherd && \
         echo \"offers: ${COMPREPLY[*]}\"'",
    );
    if !bash.contains("complete -o bashdefault -o default -o nosort -F _sockherd sockherd")
        || !bash.contains("offers: status")
    {
        b.fail(&format!("bash completion:\n{bash}"));
    }
}

/// What `sockherd status --json` of app.service's supervisor says, with its MainPID.
#[derive(Debug, PartialEq)]
struct Supervisor {
    main_pid: String,
    version: String,
    reexecs: u64,
    serving_pid: u64,
}

fn supervisor(b: &SdBox) -> Supervisor {
    let main_pid = b.property("MainPID");
    let text = b.ok(&format!("sockherd status --json --pid {main_pid}"));
    let json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| b.fail(&format!("status --json: {e}:\n{text}")));
    let serving = json["generations"].as_array().and_then(|g| g.iter().find(|g| g["state"] == "serving"));
    Supervisor {
        main_pid,
        version: json["version"].as_str().unwrap_or_default().to_string(),
        reexecs: json["reexecs"].as_u64().unwrap_or(u64::MAX),
        serving_pid: serving.and_then(|g| g["pid"].as_u64()).unwrap_or(0),
    }
}

/// An upgrade of the package re-executes each running supervisor into the new binary (the
/// postinst runs `sockherd reexec`): same MainPID, same serving generation, the new version in
/// `status`; a reexec that fails does not fail the upgrade and says how to restart instead; the
/// opt-out (SOCKHERD_REEXEC_ON_UPGRADE=no in /etc/default/sockherd, or in the environment of
/// the dpkg run, which wins over the file) leaves the supervisors alone.
///
/// The upgrades are the built package repacked by dpkg-deb with a bumped version and its binary
/// stamped by objcopy (`sockherd 0.1.0 (build upN)`): seconds instead of the minutes of a
/// release build per version; the postinst, the conffile and the rest are the built package's.
#[test]
fn deb_upgrade_reexecs_the_running_supervisors() {
    require!("curl", "objcopy", "dpkg-deb");
    let Some(deb) = built_deb() else { return };
    let Some(b) = SdBox::boot_on("deb-upgrade", Systemd::V252) else { return };
    let version = env!("CARGO_PKG_VERSION");
    // An install took 11-14 s, most of it man-db's trigger rebuilding its index and dpkg's fsync
    // of each file; neither is what this test is about, and the box is thrown away.
    b.ok("rm -f /var/lib/man-db/auto-update && echo force-unsafe-io >/etc/dpkg/dpkg.cfg.d/unsafe-io");
    let first = b.ok(&format!("dpkg -i {} 2>&1", deb.display()));
    if first.contains("sockherd:") {
        b.fail(&format!("a first install has no supervisor to re-execute, yet said:\n{first}"));
    }
    sdbox::start_scenario(&b, ["serve", "serve"], "");
    let started = std::time::Instant::now();
    b.ok(&format!(
        r#"set -e
mkdir -p /var/tmp/up && cd /var/tmp/up
dpkg-deb -R {deb} tree
for n in 2 3 4 5 6; do
  printf 'up%s' $n >label && truncate -s 64 label
  objcopy --update-section .sockherd_build=label tree/usr/bin/sockherd
  sed -i "s/^Version: .*/Version: {version}-$n/" tree/DEBIAN/control
  dpkg-deb -Zgzip -z1 -b tree sockherd-$n.deb >/dev/null
done"#,
        deb = deb.display()
    ));
    eprintln!("5 packages repacked in {} ms", started.elapsed().as_millis());
    let upgrade = |n: u32, env: &str| {
        let started = std::time::Instant::now();
        let out = b.ok(&format!("{env} dpkg -i /var/tmp/up/sockherd-{n}.deb 2>&1"));
        eprintln!("--- upgrade to -{n} {env} ({} ms):\n{out}", started.elapsed().as_millis());
        out
    };
    let before = supervisor(&b);
    if before.version != format!("sockherd {version}") || before.reexecs != 0 || before.serving_pid == 0 {
        b.fail(&format!("before the upgrade: {before:?}"));
    }
    let main = &before.main_pid;
    let expect = |what: &str, build: &str, reexecs: u64| {
        let now = supervisor(&b);
        let want = Supervisor {
            main_pid: before.main_pid.clone(),
            version: format!("sockherd {version} (build {build})"),
            reexecs,
            serving_pid: before.serving_pid,
        };
        if now != want {
            b.fail(&format!("{what}: the supervisor is {now:?}, expected {want:?}"));
        }
        let answer = b.ok("curl -sS -m 10 http://127.0.0.1:8080/");
        if !answer.starts_with(&format!("release=r1 pid={} ", before.serving_pid)) {
            b.fail(&format!("{what}: the generation that served answered {answer:?}"));
        }
    };

    // The upgrade: the new binary took over, same pid, same generation.
    let out = upgrade(2, "");
    if !out.contains(&format!("sockherd: app.service (pid {main}): re-executed")) {
        b.fail(&format!("the upgrade's postinst did not report app.service re-executed:\n{out}"));
    }
    expect("after the upgrade", "up2", 1);

    // The postinst again (dpkg-reconfigure, a configure after an interrupted run): the
    // supervisor runs the installed binary already.
    let out = b.ok(&format!("/var/lib/dpkg/info/sockherd.postinst configure {version}-1 2>&1"));
    if !out.contains(&format!("sockherd: app.service (pid {main}) runs the installed sockherd already")) {
        b.fail(&format!("a configure with nothing upgraded:\n{out}"));
    }
    expect("after a configure with nothing upgraded", "up2", 1);

    // A supervisor that cannot be reached: the upgrade succeeds, says why and how to restart.
    let out = b.ok("set -e; s=$(find /run/app -name control -type s); mv \"$s\" \"$s.away\"; \
         rc=0; dpkg -i /var/tmp/up/sockherd-3.deb 2>&1 || rc=$?; echo dpkg=$rc; mv \"$s.away\" \"$s\"");
    eprintln!("--- upgrade to -3, the control socket moved away:\n{out}");
    if !out.contains("dpkg=0")
        || !out.contains(&format!("sockherd: warning: app.service (pid {main}) still runs the old sockherd: "))
        || !out.contains("systemctl restart app.service")
    {
        b.fail(&format!("an upgrade whose reexec failed:\n{out}"));
    }
    expect("after a failed reexec", "up2", 1);

    // Opted out in /etc/default/sockherd (the operator's change is kept across upgrades).
    b.ok("sed -i 's/^#SOCKHERD_REEXEC_ON_UPGRADE=yes$/SOCKHERD_REEXEC_ON_UPGRADE=no/' /etc/default/sockherd");
    let out = upgrade(4, "");
    let conffile = b.ok("grep -c '^SOCKHERD_REEXEC_ON_UPGRADE=no$' /etc/default/sockherd; readlink /proc/$(systemctl show -P MainPID app)/exe");
    if out.contains("re-executed")
        || !out.contains("SOCKHERD_REEXEC_ON_UPGRADE=no: the running supervisors keep the old binary")
        || conffile != "1\n/usr/bin/sockherd (deleted)\n"
    {
        b.fail(&format!("an upgrade opted out in /etc/default/sockherd:\n{out}\n{conffile}"));
    }
    expect("after an upgrade opted out in the file", "up2", 1);

    // The environment of the dpkg run wins over the file, either way.
    let out = upgrade(5, "SOCKHERD_REEXEC_ON_UPGRADE=yes");
    if !out.contains(&format!("sockherd: app.service (pid {main}): re-executed")) {
        b.fail(&format!("SOCKHERD_REEXEC_ON_UPGRADE=yes over the file's no:\n{out}"));
    }
    expect("after an upgrade with =yes over the file's no", "up5", 2);
    b.ok("sed -i 's/^SOCKHERD_REEXEC_ON_UPGRADE=no$/SOCKHERD_REEXEC_ON_UPGRADE=yes/' /etc/default/sockherd");
    let out = upgrade(6, "SOCKHERD_REEXEC_ON_UPGRADE=no");
    if out.contains("re-executed") || !out.contains("SOCKHERD_REEXEC_ON_UPGRADE=no: ") {
        b.fail(&format!("SOCKHERD_REEXEC_ON_UPGRADE=no over the file's yes:\n{out}"));
    }
    expect("after an upgrade with =no over the file's yes", "up5", 2);
}
