//! A fleet rollout with Ansible (contrib/ansible): the example playbook and the `sockherd_app`
//! role against three hosts, each a real systemd in a box of its own (tests/support/sdbox) with
//! its own network: a veth pair from a network namespace this test creates into the box,
//! 10.231.N.1 on the test's side and 10.231.N.2 in the box, sshd in the box as a unit, and
//! ansible-playbook connecting over ssh with a key made for the run. Nothing leaves those
//! namespaces.
//!
//! Under load on every host (a client per host against its public socket, through the veth
//! address, from the test's namespace): a first release everywhere, a good release in batches
//! of one, the same playbook again (no change), the next release in check mode (it would
//! change every host and changes none), a broken release (the first host fails its
//! reload, points `current` back and keeps serving; the others never get it), and the deploy
//! history of every host (`--tags history`). The role installs the .deb from
//! `packaging/build-deb`, as an operator's playbook would, and writes the units with the
//! packaged `sockherd unit`. `ansible-lint` must find nothing in contrib/ansible.
mod common;

use common::sdbox::{SdBox, Systemd, test_venv};
use common::*;
use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

const HOSTS: usize = 3;

/// ansible-playbook and ansible-lint (`$SOCKHERD_TEST_ANSIBLE`, default the venv .ci/run makes).
fn ansible_bin() -> PathBuf {
    std::env::var_os("SOCKHERD_TEST_ANSIBLE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/sockherd-test/ansible/bin"))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A network namespace of the test's own (`ip netns add`), deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(name: &str) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", name]).stderr(Stdio::null()).status();
        ip(&["netns", "add", name]);
        let netns = Netns { name: name.to_string() };
        ip(&["-n", name, "link", "set", "lo", "up"]);
        netns
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    if !out.status.success() {
        panic!("ip {}: {}", args.join(" "), text(&out));
    }
}

/// A host of the fleet: its box and its address on the veth pair.
struct Host {
    name: String,
    sdbox: SdBox,
    addr: String,
}

impl Host {
    /// Where `current` points, as `releases/rN`.
    fn current(&self) -> String {
        self.sdbox.ok("readlink /srv/app/current").trim().to_string()
    }

    fn has_release(&self, release: &str) -> bool {
        self.sdbox.sh(&format!("test -e /srv/app/releases/{release}")).status.success()
    }

    /// The journal's time of each of sockherd's events `event`, in order.
    fn event_times(&self, event: &str) -> Vec<SystemTime> {
        let out = self.sdbox.ok(&format!(
            "journalctl -u app.service -o json --output-fields=__REALTIME_TIMESTAMP SOCKHERD_EVENT={event}"
        ));
        out.lines()
            .map(|line| {
                let entry: serde_json::Value = serde_json::from_str(line).expect("journalctl -o json");
                let usec: u64 = entry["__REALTIME_TIMESTAMP"].as_str().and_then(|t| t.parse().ok()).expect("timestamp");
                SystemTime::UNIX_EPOCH + Duration::from_micros(usec)
            })
            .collect()
    }
}

/// What a host's client saw.
#[derive(Default, Debug, Clone)]
struct Seen {
    ok: u64,
    failed: u64,
    errors: Vec<String>,
    /// When each release answered first.
    first: BTreeMap<String, SystemTime>,
    last: String,
}

/// A client that GETs / on a host's public socket in a loop, from inside the test's network
/// namespace, until stopped: every answer that is not a 200 with `release=` is a failure.
struct Load {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(netns: &Path, addr: String) -> Load {
        let (seen, stop) = (Arc::new(Mutex::new(Seen::default())), Arc::new(AtomicBool::new(false)));
        let ns = std::fs::File::open(netns).expect("open the test's network namespace");
        let (s, st) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            // Only this thread enters the namespace.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                panic!("setns: {}", std::io::Error::last_os_error());
            }
            while !st.load(Ordering::SeqCst) {
                let answer = http_get(&addr, "/");
                let now = SystemTime::now();
                let mut seen = s.lock().unwrap();
                match answer {
                    Ok(r) if r.status == 200 && r.body.starts_with("release=") => {
                        let release = r.body["release=".len()..].split_whitespace().next().unwrap_or("").to_string();
                        seen.ok += 1;
                        seen.first.entry(release.clone()).or_insert(now);
                        seen.last = release;
                    }
                    other => {
                        seen.failed += 1;
                        if seen.errors.len() < 10 {
                            seen.errors.push(format!("{other:?}"));
                        }
                    }
                }
                drop(seen);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Load { seen, stop, thread: Some(thread) }
    }

    fn seen(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }

    fn finish(mut self) -> Seen {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().expect("load thread");
        self.seen()
    }
}

/// One ansible-playbook run: its exit status, its output, and the recap per host.
struct Run {
    ok: bool,
    output: String,
    recap: BTreeMap<String, BTreeMap<String, u64>>,
    took: Duration,
}

impl Run {
    fn recap(&self, host: &str, key: &str) -> Option<u64> {
        self.recap.get(host).and_then(|r| r.get(key)).copied()
    }
}

struct Controller {
    dir: TempDir,
    netns: String,
}

impl Controller {
    /// `ansible-playbook -i inventory contrib/ansible/site.yml -e @vars.yml ARGS` in the test's
    /// namespace.
    fn playbook(&self, args: &[&str]) -> Run {
        let ansible = repo().join("contrib/ansible");
        let started = Instant::now();
        let out = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(ansible_bin().join("ansible-playbook"))
            .arg("-i")
            .arg(self.dir.join("inventory.ini"))
            .arg(ansible.join("site.yml"))
            .arg("-e")
            .arg(format!("@{}", self.dir.join("vars.json").display()))
            .args(args)
            .current_dir(self.dir.path())
            .env("ANSIBLE_CONFIG", ansible.join("ansible.cfg"))
            .env("ANSIBLE_ROLES_PATH", ansible.join("roles"))
            .env("ANSIBLE_HOME", self.dir.join("ansible-home"))
            .env("ANSIBLE_LOCAL_TEMP", self.dir.join("ansible-tmp"))
            .env("ANSIBLE_SSH_CONTROL_PATH_DIR", self.dir.join("cp"))
            .env("ANSIBLE_HOST_KEY_CHECKING", "False")
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_FORCE_COLOR", "0")
            .stdin(Stdio::null())
            .output()
            .expect("run ansible-playbook");
        let output = text(&out);
        let mut recap = BTreeMap::new();
        if let Some((_, tail)) = output.rsplit_once("PLAY RECAP") {
            for line in tail.lines() {
                let Some((host, counts)) = line.split_once(" : ") else { continue };
                let counts = counts
                    .split_whitespace()
                    .filter_map(|kv| kv.split_once('='))
                    .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
                    .collect();
                recap.insert(host.trim().to_string(), counts);
            }
        }
        Run { ok: out.status.success(), output, recap, took: started.elapsed() }
    }
}

/// contrib/ansible passes ansible-lint (its production profile) with nothing to report. Run on a
/// copy: ansible-lint keeps a cache beside the project.
fn lint(dir: &TempDir) {
    let copy = dir.join("lint");
    let out = Command::new("cp").arg("-r").arg(repo().join("contrib/ansible")).arg(&copy).output().expect("cp");
    assert!(out.status.success(), "copy contrib/ansible: {}", text(&out));
    let out = Command::new(ansible_bin().join("ansible-lint"))
        .args(["--offline", "--profile", "production", "--format", "pep8"])
        .current_dir(&copy)
        .env("ANSIBLE_HOME", dir.join("ansible-home"))
        .env("NO_COLOR", "1")
        .output()
        .expect("run ansible-lint");
    let report = text(&out);
    if !out.status.success() || !report.contains("0 failure(s), 0 warning(s)") {
        panic!("ansible-lint finds something in contrib/ansible ({}):\n{report}", out.status);
    }
    eprintln!("ansible-lint: {}", report.lines().filter(|l| l.contains("failure(s)")).collect::<Vec<_>>().join(" "));
}

/// A release on the controller: the example app and gunicorn's config; broken when `broken`.
fn release(dir: &TempDir, name: &str, broken: bool) -> PathBuf {
    let path = dir.join(&format!("releases/{name}"));
    std::fs::create_dir_all(&path).unwrap();
    for file in ["app/app.py", "gunicorn/gunicorn.conf.py"] {
        std::fs::copy(contrib(file), path.join(Path::new(file).file_name().unwrap())).unwrap();
    }
    std::fs::write(path.join("RELEASE"), format!("{name}\n")).unwrap();
    if broken {
        std::fs::write(path.join("BROKEN"), "").unwrap();
    }
    path
}

/// Gives a box its network (eth0, the box's end of a veth pair from `netns`) and sshd, started
/// as a unit, that lets in the holder of `key`.
fn connect(host: &Host, index: usize, netns: &Netns, key: &str) {
    let peer = format!("fleet{index}");
    let pid = host.sdbox.pid().to_string();
    ip(&["-n", &netns.name, "link", "add", &peer, "type", "veth", "peer", "name", "eth0", "netns", &pid]);
    ip(&["-n", &netns.name, "addr", "add", &format!("10.231.{index}.1/24"), "dev", &peer]);
    ip(&["-n", &netns.name, "link", "set", &peer, "up"]);
    host.sdbox.ok(&format!(
        "set -e
ip addr add {addr}/24 dev eth0
ip link set eth0 up
mkdir -p /etc/ssh/fleet
ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/fleet/host_ed25519
echo '{key}' >/etc/ssh/fleet/authorized_keys
cat >/etc/ssh/fleet/sshd_config <<EOF
ListenAddress {addr}
HostKey /etc/ssh/fleet/host_ed25519
AuthorizedKeysFile /etc/ssh/fleet/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
Subsystem sftp internal-sftp
EOF
cat >/etc/systemd/system/fleet-sshd.service <<EOF
[Unit]
Description=sshd for the fleet test
[Service]
ExecStartPre=/usr/sbin/sshd -t -f /etc/ssh/fleet/sshd_config
ExecStart=/usr/sbin/sshd -D -e -f /etc/ssh/fleet/sshd_config
RuntimeDirectory=sshd
EOF
systemctl daemon-reload
systemctl start fleet-sshd.service
",
        addr = host.addr,
    ));
}

/// Fails the test with the playbook's output and every host's journal.
fn fail(hosts: &[Host], what: &str, run: &Run) -> ! {
    let journals: String = hosts
        .iter()
        .map(|h| {
            let j = h.sdbox.sh("journalctl -u 'app*' --no-pager -o short-monotonic | tail -40");
            format!("--- {} journal:\n{}", h.name, text(&j))
        })
        .collect();
    panic!("{what}\n--- ansible-playbook output:\n{}\n{journals}", run.output)
}

#[test]
fn ansible_rolls_out_to_three_hosts_in_batches_and_stops_at_a_failed_reload() {
    let started = Instant::now();
    require!(root);
    require!("ip", "ssh", "ssh-keygen");
    if !prerequisite(
        ansible_bin().join("ansible-playbook").exists() && ansible_bin().join("ansible-lint").exists(),
        &format!("ansible-playbook and ansible-lint in {} (.ci/run installs them)", ansible_bin().display()),
    ) || !prerequisite(Path::new("/usr/sbin/sshd").exists(), "/usr/sbin/sshd (package openssh-server)")
        || !common::sdbox::Server::Gunicorn.available()
    {
        return;
    }
    let Some(deb) = built_deb() else { return };
    let dir = TempDir::new("fleet");
    lint(&dir);

    let Some(boxes) = SdBox::boot_fleet("fleet", Systemd::V252, HOSTS) else { return };
    let netns = Netns::new(&format!("sockherd-fleet-{}", std::process::id()));
    let key = dir.join("id_ed25519");
    let out = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", ""]).arg("-f").arg(&key).output().unwrap();
    assert!(out.status.success(), "ssh-keygen: {}", text(&out));
    let public = std::fs::read_to_string(dir.join("id_ed25519.pub")).unwrap();
    let hosts: Vec<Host> = boxes
        .into_iter()
        .enumerate()
        .map(|(i, sdbox)| Host { name: format!("host{}", i + 1), sdbox, addr: format!("10.231.{}.2", i + 1) })
        .collect();
    for (i, host) in hosts.iter().enumerate() {
        connect(host, i + 1, &netns, public.trim());
    }
    eprintln!("fleet: {HOSTS} hosts up, with sshd, after {:.1} s", started.elapsed().as_secs_f64());

    let mut inventory = String::from("[app]\n");
    for host in &hosts {
        inventory.push_str(&format!("{} ansible_host={}\n", host.name, host.addr));
    }
    inventory.push_str(&format!(
        "\n[app:vars]\nansible_user=root\nansible_ssh_private_key_file={}\n\
         ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'\n\
         ansible_python_interpreter=/usr/bin/python3\n",
        key.display()
    ));
    std::fs::write(dir.join("inventory.ini"), inventory).unwrap();
    let venv = test_venv();
    let vars = serde_json::json!({
        "sockherd_app_package_deb": deb.display().to_string(),
        "sockherd_app_listen": ["{{ ansible_host }}:8080", "/run/app.sock"],
        "sockherd_app_command": [venv.join("bin/python").display().to_string(), "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:app"],
        "sockherd_app_health_url": "http://{{ ansible_host }}:8080/health",
        "sockherd_app_health_contains": "ok",
        "sockherd_app_health_from_controller": true,
    });
    std::fs::write(dir.join("vars.json"), vars.to_string()).unwrap();
    for name in ["r1", "r2"] {
        release(&dir, name, false);
    }
    release(&dir, "r3", true);
    let controller = Controller { netns: netns.name.clone(), dir };
    let deploy = |name: &str, args: &[&str]| {
        let src = controller.dir.join(&format!("releases/{name}"));
        let mut all = vec!["-e".to_string(), format!("sockherd_app_release={name}")];
        all.extend(["-e".to_string(), format!("sockherd_app_release_src={}", src.display())]);
        all.extend(args.iter().map(|a| a.to_string()));
        let all: Vec<&str> = all.iter().map(|a| a.as_str()).collect();
        let run = controller.playbook(&all);
        eprintln!("fleet: ansible-playbook {name} {args:?}: ok={} in {:.1} s", run.ok, run.took.as_secs_f64());
        run
    };
    // The first release, everywhere at once: installs the package, the units, starts the app.
    let first = deploy("r1", &["-e", r#"{"sockherd_rollout_serial": 3}"#]);
    if !first.ok {
        fail(&hosts, "the first deploy (r1) failed", &first);
    }
    let loads: Vec<Load> = hosts.iter().map(|h| Load::start(&netns.path(), format!("{}:8080", h.addr))).collect();
    let serving = wait_until(Duration::from_secs(30), || loads.iter().all(|l| l.seen().last == "r1"));
    if !serving {
        let seen: Vec<Seen> = loads.iter().map(Load::seen).collect();
        fail(&hosts, &format!("r1 does not answer through every host's veth address: {seen:?}"), &first);
    }

    // A good release, in batches of one (the playbook's default serial), under load.
    let good = deploy("r2", &[]);
    if !good.ok {
        fail(&hosts, "the rollout of a good release (r2) failed", &good);
    }
    for host in &hosts {
        if host.current() != "releases/r2" || good.recap(&host.name, "failed") != Some(0) {
            fail(&hosts, &format!("{}: current -> {} after r2's rollout", host.name, host.current()), &good);
        }
    }
    // Batches: host N+1's reload started only after host N served r2 (its client saw r2) and its
    // reload was done.
    for pair in hosts.windows(2).zip(loads.windows(2)) {
        let ([prev, next], [prev_load, _]) = pair else { unreachable!() };
        let served = prev_load.seen().first.get("r2").copied().expect("r2 seen on the previous host");
        let done = *prev.event_times("reload_done").last().expect("reload_done on the previous host");
        let next_reload = next.event_times("reload");
        if next_reload.len() != 1 || next_reload[0] < served || next_reload[0] < done {
            fail(
                &hosts,
                &format!(
                    "{} reloaded at {next_reload:?}, before {} was done ({done:?}) or served r2 ({served:?})",
                    next.name, prev.name
                ),
                &good,
            );
        }
    }

    // The same playbook again: nothing to change anywhere (every host at once: whether a run
    // changes something does not depend on its batches).
    let again = deploy("r2", &["-e", r#"{"sockherd_rollout_serial": 3}"#]);
    let unchanged = hosts.iter().all(|h| again.recap(&h.name, "changed") == Some(0));
    if !again.ok || !unchanged {
        fail(&hosts, "a second run of the same release changed something (or failed)", &again);
    }

    // Check mode: the next release would change every host, and changes none.
    let check = deploy("r3", &["--check", "-e", r#"{"sockherd_rollout_serial": 3}"#]);
    let would = hosts.iter().all(|h| check.recap(&h.name, "changed").is_some_and(|n| n > 0));
    if !check.ok || !would {
        fail(&hosts, "a check-mode run of a new release failed or would change nothing", &check);
    }
    for host in &hosts {
        if host.has_release("r3") || host.current() != "releases/r2" || host.event_times("reload").len() != 1 {
            fail(&hosts, &format!("{}: the check-mode run changed the host", host.name), &check);
        }
    }

    // A broken release: the first host's reload fails, it points current back at r2 and keeps
    // serving it; the play stops there.
    let broken = deploy("r3", &[]);
    let (head, rest) = hosts.split_first().unwrap();
    if broken.ok || broken.recap(&head.name, "failed") != Some(1) || broken.recap(&head.name, "rescued") != Some(1) {
        fail(&hosts, "the rollout of a broken release did not fail on the first host", &broken);
    }
    if !broken.output.contains("Unable to reload service app.service") {
        fail(&hosts, "the first host's failure is not the reload's", &broken);
    }
    if head.current() != "releases/r2" || !head.has_release("r3") || head.event_times("reload_failed").len() != 1 {
        fail(&hosts, &format!("{}: current -> {} after its failed reload", head.name, head.current()), &broken);
    }
    for host in rest {
        if host.has_release("r3") || host.current() != "releases/r2" || broken.recap.contains_key(&host.name) {
            fail(&hosts, &format!("{} got the broken release after the first host failed", host.name), &broken);
        }
    }
    // Every host still answers, with r2.
    let after = Instant::now() + Duration::from_secs(2);
    wait_until(Duration::from_secs(10), || Instant::now() > after);
    let mut report = Vec::new();
    for (host, load) in hosts.iter().zip(loads) {
        let seen = load.finish();
        report.push(format!("{}: {} ok, {} failed", host.name, seen.ok, seen.failed));
        if seen.failed != 0 || seen.last != "r2" || seen.first.contains_key("r3") || seen.ok < 50 {
            fail(&hosts, &format!("{}: the client saw {seen:?}", host.name), &broken);
        }
    }
    eprintln!("fleet: under load through the rollouts: {}", report.join("; "));

    // Each host's deploy history, from the same playbook.
    let history = controller.playbook(&["--tags", "history"]);
    if !history.ok {
        fail(&hosts, "the history run failed", &history);
    }
    for host in &hosts {
        let Some((_, from)) = history.output.split_once(&format!("ok: [{}] => ", host.name)) else {
            fail(&hosts, &format!("no history for {}", host.name), &history);
        };
        let shown = from.split("\nok: [").next().unwrap_or_default();
        let r2 = shown.contains("reload done: generation 2 (pid ") && shown.contains("/srv/app/releases/r2) serves");
        let r3 = shown.contains("reload failed:") && shown.contains("/srv/app/releases/r3)");
        if !shown.contains("/srv/app/releases/r1) is ready") || !r2 || r3 != (host.name == head.name) {
            fail(&hosts, &format!("{}'s history does not show its deploys", host.name), &history);
        }
    }
    eprintln!("fleet: done in {:.1} s", started.elapsed().as_secs_f64());
}
