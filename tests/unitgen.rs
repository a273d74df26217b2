//! `sockherd unit`: the generated `.socket` + `.service` pair as an operator uses it. Printed or
//! written, the reload style by systemd version, `systemd-analyze verify` for every flavor, the
//! refusals; and inside a real systemd (tests/support/sdbox, 252 and 254): written with
//! `--output /etc/systemd/system`, enabled with `systemctl enable --now`, serving through both
//! socket units, reloading onto a new release and failing the reload of a broken one.
mod common;

use common::sdbox::{Deployment, Server, Systemd};
use common::*;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const GUNICORN: [&str; 6] = ["/srv/app/shared/venv/bin/python", "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:app"];

fn unit(args: &[&str]) -> Output {
    sockherd_cmd(&[&["unit"], args].concat()).output().expect("run sockherd unit")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The `# FILE: name` sections of printed output.
fn files(stdout: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in stdout.lines() {
        if let Some(name) = line.strip_prefix("# FILE: ") {
            out.push((name.to_string(), String::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out
}

fn shop_args<'a>(version: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "shop",
        "--flavor",
        "gunicorn",
        "--user",
        "app",
        "--listen",
        "127.0.0.1:8080",
        "--listen",
        "/run/shop.sock",
        "--chdir",
        "/srv/app/current",
        "--sockherd",
        "/usr/bin/sockherd",
        "--systemd-version",
        version,
    ];
    args.extend_from_slice(extra);
    args.push("--");
    args.extend_from_slice(&GUNICORN);
    args
}

#[test]
fn unit_prints_each_file_after_a_separator() {
    let out = unit(&shop_args("252", &[]));
    let stdout = text(&out.stdout);
    let files = files(&stdout);
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    if !out.status.success() || names != ["shop-http.socket", "shop-unix.socket", "shop.service"] {
        panic!("expected three files, got {names:?} ({:?}):\n{stdout}{}", out.status, text(&out.stderr));
    }
    let service = &files[2].1;
    for want in [
        "ExecStart=/usr/bin/sockherd run --flavor gunicorn --chdir /srv/app/current -- /srv/app/shared/venv/bin/python -m gunicorn -c gunicorn.conf.py app:app\n",
        "Sockets=shop-http.socket shop-unix.socket\n",
        "User=app\n",
        "RuntimeDirectory=shop\n",
        "KillMode=control-group\n",
        "ProtectSystem=strict\n",
    ] {
        if !service.contains(want) {
            panic!("shop.service lacks {want:?}:\n{service}");
        }
    }
    if !files[1].1.contains("ListenStream=/run/shop.sock\n") || !files[1].1.contains("SocketGroup=app\n") {
        panic!("shop-unix.socket:\n{}", files[1].1);
    }
}

#[test]
fn unit_picks_the_reload_style_from_the_systemd_version() {
    for (version, kind, reload) in [
        ("252", "Type=notify\n", "ExecReload=/usr/bin/sockherd reload\n"),
        ("253", "Type=notify-reload\n", "ExecReload=/usr/bin/sockherd reload --join\n"),
    ] {
        let out = unit(&shop_args(version, &[]));
        let stdout = text(&out.stdout);
        if !out.status.success() || !stdout.contains(kind) || !stdout.contains(reload) {
            panic!("systemd {version}: expected {kind:?} and {reload:?}:\n{stdout}{}", text(&out.stderr));
        }
    }
    // Without --systemd-version: the installed systemd's (252 on Debian 12 has no notify-reload).
    if prerequisite(have("systemctl"), "program systemctl in PATH (the installed systemd's version)") {
        let version = Command::new("systemctl").arg("--version").output().unwrap();
        let first = text(&version.stdout).lines().next().unwrap_or_default().to_string();
        let number: u32 = first.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut args = shop_args("0", &[]);
        args.drain(13..15); // drop --systemd-version N
        let stdout = text(&unit(&args).stdout);
        let want = if number >= 253 { "Type=notify-reload\n" } else { "Type=notify\n" };
        if !stdout.contains(want) {
            panic!("installed {first}: expected {want:?}:\n{stdout}");
        }
    }
}

#[test]
fn unit_refuses_to_overwrite_without_force() {
    let dir = TempDir::new("unit-overwrite");
    let out_dir = dir.path().display().to_string();
    let first = unit(&shop_args("252", &["--output", &out_dir]));
    let stdout = text(&first.stdout);
    if !first.status.success()
        || !stdout.contains(&format!("wrote {out_dir}/shop.service"))
        || !stdout.contains("next: systemctl daemon-reload && systemctl enable --now shop-http.socket shop-unix.socket")
    {
        panic!("first write: {:?}\n{stdout}{}", first.status, text(&first.stderr));
    }
    std::fs::write(dir.join("shop.service"), "# edited by the operator\n").unwrap();
    let again = unit(&shop_args("252", &["--output", &out_dir]));
    let err = text(&again.stderr);
    if again.status.code() != Some(1) || !err.contains("refusing to overwrite") || !err.contains("--force") {
        panic!("second write without --force: {:?}\n{err}", again.status);
    }
    if std::fs::read_to_string(dir.join("shop.service")).unwrap() != "# edited by the operator\n" {
        panic!("a refused write changed shop.service");
    }
    let forced = unit(&shop_args("252", &["--output", &out_dir, "--force"]));
    if !forced.status.success() || !std::fs::read_to_string(dir.join("shop.service")).unwrap().contains("ExecStart=") {
        panic!("--force did not replace the file: {:?} {}", forced.status, text(&forced.stderr));
    }
}

/// Every flavor's pair passes `systemd-analyze verify` (systemd-252 style; the 254 style is
/// verified by the box test on 254). Offline: nothing is started.
#[test]
fn generated_units_pass_systemd_analyze_verify() {
    require!("systemd-analyze");
    let dir = TempDir::new("unit-verify");
    for flavor in ["gunicorn", "unicorn", "puma", "systemd", "nginx", "server-starter", "einhorn"] {
        let out_dir = dir.join(flavor);
        std::fs::create_dir_all(&out_dir).unwrap();
        let out_arg = out_dir.display().to_string();
        let sockherd_path = sockherd().display().to_string();
        let out = unit(&[
            "web",
            "--flavor",
            flavor,
            "--listen",
            "127.0.0.1:8080",
            "--listen",
            "/run/web.sock,mode=0600",
            "--listen",
            "[::1]:8081,name=admin",
            "--chdir",
            "/srv/web/current",
            "--writable",
            "/srv/web/shared",
            "--sockherd",
            &sockherd_path,
            "--systemd-version",
            "252",
            "--output",
            &out_arg,
            "--",
            "/usr/bin/env",
            "server",
            "100%",
            "$HOME",
        ]);
        if !out.status.success() {
            panic!("{flavor}: sockherd unit failed: {}", text(&out.stderr));
        }
        let units: Vec<String> = std::fs::read_dir(&out_dir)
            .unwrap()
            .map(|e| e.unwrap().path().display().to_string())
            .filter(|p| !Path::new(p).file_name().unwrap().to_string_lossy().starts_with('.'))
            .collect();
        if units.len() != 4 {
            panic!("{flavor}: expected 3 sockets and a service, got {units:?}");
        }
        let verify = Command::new("systemd-analyze").arg("verify").args(&units).output().unwrap();
        let complaints: Vec<String> = text(&verify.stderr)
            .lines()
            .chain(text(&verify.stdout).lines())
            .filter(|l| l.contains(&out_arg))
            .map(String::from)
            .collect();
        if !verify.status.success() || !complaints.is_empty() {
            panic!("{flavor}: systemd-analyze verify {:?}: {complaints:#?}\n{}", verify.status, text(&verify.stderr));
        }
    }
}

/// Every refusal names what was wrong and what to do.
#[test]
fn unit_errors_name_the_problem_and_the_fix() {
    let cases: [(&[&str], i32, &[&str]); 8] = [
        (&["web@1", "-l", "127.0.0.1:1", "--", "x"], 1, &["invalid NAME 'web@1'", "template units are not generated"]),
        (&["web", "-l", "127.0.0.1:1", "-C", "rel/dir", "--", "x"], 1, &["invalid --chdir 'rel/dir'", "absolute path"]),
        (
            &["web", "-l", "127.0.0.1:1,name=a", "-l", "127.0.0.1:2,name=a", "--", "x"],
            1,
            &["named 'a'", "another name="],
        ),
        (
            &["web", "-l", "127.0.0.1:1", "--sockherd", "sockherd", "--systemd-version", "252", "--", "x"],
            1,
            &["--sockherd sockherd is not an absolute path", "/usr/bin/sockherd"],
        ),
        (&["web", "-l", "127.0.0.1:1", "--user", "a b", "--", "x"], 1, &["invalid --user 'a b'"]),
        (
            &["web", "-l", "127.0.0.1:1", "--output", "/nonexistent/dir", "--systemd-version", "252", "--", "x"],
            1,
            &["--output /nonexistent/dir: no such directory", "create it"],
        ),
        (&["web", "--", "x"], 2, &["--listen"]),
        (&["web", "-l", "example.com:80", "--", "x"], 2, &["invalid value 'example.com:80'", "not an IPv4 address"]),
    ];
    for (args, code, words) in cases {
        let out = unit(args);
        let err = text(&out.stderr);
        if out.status.code() != Some(code) || words.iter().any(|w| !err.contains(w)) {
            panic!("sockherd unit {args:?}: expected exit {code} with {words:?}, got {:?}:\n{err}", out.status);
        }
    }
}

#[test]
fn unit_warns_when_the_sandbox_would_hide_the_binary() {
    let out = unit(&[
        "web",
        "-l",
        "127.0.0.1:1",
        "--sockherd",
        "/root/.cargo/bin/sockherd",
        "--systemd-version",
        "252",
        "--",
        "x",
    ]);
    let err = text(&out.stderr);
    if !out.status.success()
        || !err.contains("is under /root")
        || !err.contains("ProtectHome=yes")
        || !err.contains("--sockherd")
    {
        panic!("expected a warning about ProtectHome with the fix, got {:?}:\n{err}", out.status);
    }
}

/// Without `--sockherd`, ExecStart= names the sockherd run as it was run: through a symlink,
/// the link (an upgrade that points it at a new version reaches the service), unless the
/// sandbox would hide the link and not its target; then the target.
#[test]
fn unit_names_the_binary_as_it_was_run() {
    let exec_start = |binary: &Path| {
        let out = sockherd_cmd_of(binary, &["unit", "web", "-l", "127.0.0.1:1", "--systemd-version", "252", "--", "x"])
            .output()
            .expect("run sockherd unit");
        assert!(out.status.success(), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        let line = stdout.lines().find(|l| l.starts_with("ExecStart=")).expect("an ExecStart= line").to_string();
        line["ExecStart=".len()..].split(' ').next().unwrap_or("").to_string()
    };
    let target = std::fs::canonicalize(sockherd()).unwrap();
    let hidden = |p: &Path| ["/home", "/root", "/run/user", "/tmp", "/var/tmp"].iter().any(|d| p.starts_with(d));
    let links = |base: &Path| {
        let dir = base.join(format!("sockherd-unit-link-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(&target, dir.join("sockherd")).unwrap();
        dir
    };
    // A link beside the build, where the sandbox hides nothing: the link's path.
    let beside = links(target.parent().unwrap());
    let link = beside.join("sockherd");
    if hidden(&link) {
        eprintln!("skipped the visible link's case: the build is under a directory the sandbox hides");
    } else {
        assert_eq!(exec_start(&link), link.display().to_string());
    }
    std::fs::remove_dir_all(&beside).unwrap();
    // A link under /tmp (PrivateTmp=) to a target the sandbox does not hide: the target.
    let in_tmp = links(Path::new("/tmp"));
    if hidden(&target) {
        eprintln!("skipped the hidden link's case: the build itself is under a directory the sandbox hides");
    } else {
        assert_eq!(exec_start(&in_tmp.join("sockherd")), target.display().to_string());
    }
    std::fs::remove_dir_all(&in_tmp).unwrap();
}

// ----- inside systemd ------------------------------------------------------------------------------

/// Writes the units with `sockherd unit` inside the box, verifies, enables and serves them,
/// reloads onto r2 and fails the reload of the broken r3. The reload style follows the box's
/// systemd: Type=notify-reload from 253, Type=notify before.
fn generated_unit_serves_and_reloads(systemd: Systemd) {
    require!("curl");
    let expect_type = if systemd.notify_reload() { "notify-reload" } else { "notify" };
    let tag = format!("unitgen-{}", systemd.version());
    let Some(d) = Deployment::install_app_on("unitgen", Server::Gunicorn, systemd) else { return };
    let b = &d.sdbox;

    // As an operator would: no --sockherd, no --systemd-version.
    let wrote = b.ok(&format!(
        "sockherd unit shop --flavor gunicorn --user app --listen 127.0.0.1:8080 --listen /run/shop.sock \
         --chdir /srv/app/current --writable /srv/app/shared --output /etc/systemd/system -- {}",
        GUNICORN.join(" ")
    ));
    if !wrote.contains("enable --now shop-http.socket shop-unix.socket") {
        b.fail_unit("shop", &format!("sockherd unit said:\n{wrote}"));
    }
    let verify = b.ok(
        "cd /etc/systemd/system && systemd-analyze verify shop.service shop-http.socket shop-unix.socket 2>&1; echo \"exit=$?\"",
    );
    let complaints: Vec<&str> = verify.lines().filter(|l| l.contains("shop")).collect();
    if !verify.ends_with("exit=0\n") || !complaints.is_empty() {
        b.fail_unit("shop", &format!("systemd-analyze verify complained:\n{verify}"));
    }

    b.ok("systemctl daemon-reload && systemctl enable --now shop-http.socket shop-unix.socket");
    let first = b.ok("curl -sS -m 60 http://127.0.0.1:8080/; curl -sS -m 10 --unix-socket /run/shop.sock http://shop/");
    if first.lines().count() != 2 || !first.lines().all(|l| l.starts_with("release=r1 ")) {
        b.fail_unit("shop", &format!("first requests (socket activation) answered:\n{first}"));
    }
    let master =
        |answer: &str| answer.split_whitespace().find_map(|w| w.strip_prefix("master=")).unwrap_or("").to_string();
    let master1 = master(&first);
    let mut active = String::new();
    wait_until(Duration::from_secs(30), || {
        active = b.ok("systemctl show -P ActiveState shop").trim().to_string();
        active != "activating"
    });
    let service_type = b.ok("systemctl show -P Type shop").trim().to_string();
    let main_pid = b.ok("systemctl show -P MainPID shop").trim().to_string();
    if active != "active" || service_type != expect_type {
        b.fail_unit(
            "shop",
            &format!("shop.service is {active}, Type={service_type}; expected active, Type={expect_type}"),
        );
    }

    // A new release: flip, reload (synchronous), everything comes from r2, by a new master.
    b.ok("cd /srv/app && ln -sfn releases/r2 current.new && mv -T current.new current");
    let reload = b.sh("systemctl reload shop 2>&1");
    let answers = b.ok("for i in 1 2 3; do curl -sS -m 10 http://127.0.0.1:8080/; curl -sS -m 10 --unix-socket /run/shop.sock http://shop/; done");
    let status_text = b.ok("systemctl show -P StatusText shop");
    if !reload.status.success()
        || answers.lines().count() != 6
        || !answers.lines().all(|l| l.starts_with("release=r2 ") && master(l) != master1)
        || !status_text.contains("serving generation 2")
        || b.ok("systemctl show -P MainPID shop").trim() != main_pid
    {
        b.fail_unit(
            "shop",
            &format!(
                "reload onto r2: {:?} {}; answers (r1 master was {master1}):\n{answers}StatusText: {status_text}",
                reload.status,
                text(&reload.stdout)
            ),
        );
    }

    // Its own cgroup is writable under ProtectControlGroups=yes (ReadWritePaths= names it with
    // %n): the generations are cgroups of shop.service.
    let membership = b.ok("sockherd status --pid $(systemctl show -P MainPID shop) | grep -i '^generations are'");
    if !membership.contains("generations are cgroups: gen-N under /sys/fs/cgroup/system.slice/shop.service") {
        b.fail_unit("shop", &format!("the generations should be cgroups of shop.service: {membership}"));
    }

    // A broken release: the reload fails (exit status), r2 keeps serving.
    b.ok("cd /srv/app && ln -sfn releases/r3 current.new && mv -T current.new current");
    let broken = b.sh("systemctl reload shop 2>&1");
    let still = b.ok("curl -sS -m 10 http://127.0.0.1:8080/");
    if broken.status.success() || !still.starts_with("release=r2 ") {
        b.fail_unit("shop", &format!("reload of a broken release: {:?}; then served {still:?}", broken.status));
    }
    eprintln!("{tag}: served r1, reloaded onto r2 (master {master1} -> {}), refused r3", master(&answers));
}

on_every_systemd!(generated_unit_serves_and_reloads);

/// `--user` defaults to NAME and `--group` to the user; `--group` sets the service's Group= and
/// the unix socket file's SocketGroup=.
#[test]
fn unit_user_defaults_to_the_name_and_group_to_the_user() {
    let base =
        ["-l", "127.0.0.1:1", "-l", "/run/web.sock", "--sockherd", "/usr/bin/sockherd", "--systemd-version", "252"];
    let default = unit(&[&["web"][..], &base[..], &["--", "/usr/bin/server"][..]].concat());
    let files_default = files(&text(&default.stdout));
    let service = &files_default.iter().find(|(n, _)| n == "web.service").expect("web.service").1;
    let socket = &files_default.iter().find(|(n, _)| n == "web-unix.socket").expect("web-unix.socket").1;
    if !default.status.success()
        || !service.contains("\nUser=web\n")
        || !service.contains("\nGroup=web\n")
        || !socket.contains("\nSocketGroup=web\n")
    {
        panic!("without --user/--group: User=web, Group=web, SocketGroup=web expected:\n{service}\n{socket}");
    }
    let grouped =
        unit(&[&["web", "--user", "app", "--group", "www"][..], &base[..], &["--", "/usr/bin/server"][..]].concat());
    let files_grouped = files(&text(&grouped.stdout));
    let service = &files_grouped.iter().find(|(n, _)| n == "web.service").expect("web.service").1;
    let socket = &files_grouped.iter().find(|(n, _)| n == "web-unix.socket").expect("web-unix.socket").1;
    if !grouped.status.success()
        || !service.contains("\nUser=app\n")
        || !service.contains("\nGroup=www\n")
        || !socket.contains("\nSocketGroup=www\n")
    {
        panic!("--user app --group www: User=app, Group=www, SocketGroup=www expected:\n{service}\n{socket}");
    }
}

/// The warnings about what would fail at start: a relative command without `--chdir`, a user
/// that does not exist; and none for a sound unit.
#[test]
fn unit_warns_about_a_relative_command_and_a_missing_user() {
    let missing_user = format!("nouser{}", std::process::id());
    let out = unit(&[
        "web",
        "-l",
        "127.0.0.1:1",
        "--user",
        &missing_user,
        "--sockherd",
        "/usr/bin/sockherd",
        "--systemd-version",
        "252",
        "--",
        "bin/server",
    ]);
    let err = text(&out.stderr);
    if !out.status.success()
        || !err.contains("the command bin/server is a relative path and no --chdir is given")
        || !err.contains(&format!("user {missing_user} does not exist"))
        || !err.contains("useradd --system")
    {
        panic!("expected both warnings with their fixes, got {:?}:\n{err}", out.status);
    }
    let sound = unit(&[
        "web",
        "-l",
        "127.0.0.1:1",
        "--user",
        "root",
        "--chdir",
        "/srv/web/current",
        "--sockherd",
        "/usr/bin/sockherd",
        "--systemd-version",
        "252",
        "--",
        "bin/server",
    ]);
    let err = text(&sound.stderr);
    if !sound.status.success() || err.contains("warning") {
        panic!("a sound unit (existing user, --chdir for a relative command) should warn about nothing:\n{err}");
    }
}
