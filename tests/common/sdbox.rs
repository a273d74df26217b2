//! Tests inside a real systemd: `tests/support/sdbox` boots systemd as PID 1 of private
//! namespaces (cgroup included) on a throwaway overlay of the root (root only). A `Deployment`
//! installs the built sockherd as /usr/bin/sockherd, user app, a capistrano layout under
//! /srv/app and the unit files from units/ exactly as shipped.
//!
//! The reality matrix: every box test runs on each `Systemd` (252 from the host, 254, 257 and
//! 262 as trees from tests/support/fetch-systemd), and its name ends in `_on_systemd_<N>`, so
//! that `.ci/run` can choose cells by name.

use super::*;
use std::process::Output;
use std::time::Duration;

/// A bash function for box scripts: `loop NAME CURL-ARGS...` requests until /tmp/load.stop
/// exists, a fresh connection each, and writes `NAME.ok=N NAME.fail=N` to /tmp/load.NAME.result
/// (the masters that answered to /tmp/load.NAME.masters, what failed to /tmp/load.NAME.err).
pub const CURL_LOOP: &str = r#"loop() { # name curl-args...
  local name=$1; shift; local ok=0 fail=0
  while [ ! -e /tmp/load.stop ]; do
    code=$(curl -sS -m 30 -o /tmp/load.$name.body -w '%{http_code}' "$@" 2>>/tmp/load.$name.err)
    if [ "$code" = 200 ]; then ok=$((ok+1)); grep -o 'master=[0-9]*' /tmp/load.$name.body >>/tmp/load.$name.masters
    else fail=$((fail+1)); echo "HTTP $code" >>/tmp/load.$name.err; fi
  done
  echo "$name.ok=$ok $name.fail=$fail" >/tmp/load.$name.result
}"#;

/// A value of a `key=value` report printed by a script run in a box.
pub fn report_value<'a>(report: &'a str, key: &str) -> Option<&'a str> {
    report.lines().find_map(|l| l.strip_prefix(&format!("{key}=")))
}

/// A number of such a report (0 when missing).
pub fn report_number(report: &str, key: &str) -> u64 {
    report_value(report, key).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// A systemd of the reality matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Systemd {
    /// The host's (Debian 12): no Type=notify-reload.
    V252,
    /// bookworm-backports: Type=notify-reload (since 253), FileDescriptorStorePreserve=.
    V254,
    /// Debian 13: MAINPIDFD=1.
    V257,
    /// Debian unstable (2026-11-30): cgroup2 only (258), LISTEN_PIDFDID (259).
    V262,
}

impl Systemd {
    pub const ALL: [Systemd; 4] = [Systemd::V252, Systemd::V254, Systemd::V257, Systemd::V262];

    pub fn version(self) -> u32 {
        match self {
            Systemd::V252 => 252,
            Systemd::V254 => 254,
            Systemd::V257 => 257,
            Systemd::V262 => 262,
        }
    }

    /// The Debian suite tests/support/fetch-systemd takes it from; None for the host's own.
    pub fn suite(self) -> Option<&'static str> {
        match self {
            Systemd::V252 => None,
            Systemd::V254 => Some("bookworm-backports"),
            Systemd::V257 => Some("trixie"),
            Systemd::V262 => Some("sid"),
        }
    }

    /// The tree laid over the host root (`$SOCKHERD_SYSTEMD_<N>`, default
    /// /var/tmp/sockherd-systemd-<N>, as .ci/run fetches it); None for the host's own.
    pub fn tree(self) -> Option<PathBuf> {
        self.suite()?;
        let n = self.version();
        Some(
            std::env::var_os(format!("SOCKHERD_SYSTEMD_{n}"))
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(format!("/var/tmp/sockherd-systemd-{n}"))),
        )
    }

    /// The systemd whose tree is `lower` (None: the host's 252). A tree that is none of the
    /// matrix's is taken for 254, and the box's version check says so if it is not.
    pub fn of_tree(lower: Option<&Path>) -> Systemd {
        let Some(lower) = lower else { return Systemd::V252 };
        Systemd::ALL.into_iter().find(|s| s.tree().as_deref() == Some(lower)).unwrap_or(Systemd::V254)
    }

    /// DelegateSubgroup= exists since 254: the run units get units/delegate-subgroup.conf.
    pub fn delegate_subgroup(self) -> bool {
        self.version() >= 254
    }

    /// Type=notify-reload exists since 253: the units get units/notify-reload.conf.
    pub fn notify_reload(self) -> bool {
        self.version() >= 253
    }
}

impl std::fmt::Display for Systemd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "systemd {}", self.version())
    }
}

/// `on_every_systemd!(name, |systemd| body)`: a module `name` with one test per systemd of the
/// matrix, `name::on_systemd_252` ... `name::on_systemd_262`, each calling the body with its
/// `Systemd`. `on_every_systemd!(f)` does so for a function `f(Systemd)`, in a module `f`.
#[macro_export]
macro_rules! on_every_systemd {
    ($name:ident) => {
        $crate::on_every_systemd!($name, $name);
    };
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            use $crate::common::sdbox::Systemd;
            fn body(systemd: Systemd) {
                let f: fn(Systemd) = $body;
                f(systemd)
            }
            #[test]
            fn on_systemd_252() {
                body(Systemd::V252)
            }
            #[test]
            fn on_systemd_254() {
                body(Systemd::V254)
            }
            #[test]
            fn on_systemd_257() {
                body(Systemd::V257)
            }
            #[test]
            fn on_systemd_262() {
                body(Systemd::V262)
            }
        }
    };
}

/// A world-readable virtualenv with gunicorn, for the app user (see .ci/run).
pub fn test_venv() -> PathBuf {
    std::env::var_os("SOCKHERD_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/sockherd-test/venv"))
}

fn sdbox_script() -> PathBuf {
    repo().join("tests/support/sdbox")
}

pub struct SdBox {
    pub name: String,
    pub systemd: Systemd,
    /// Held for the box's life: shared with every other test box, exclusive for whoever needs
    /// the machine to itself (the benchmark, and the harness before boxes had cgroups of their
    /// own, which took it exclusively); plus one of the `SOCKHERD_TEST_BOXES` slots.
    _locks: BoxLocks,
}

/// What a box holds while it runs: the shared lock and a slot, or its share of a fleet's
/// exclusive lock.
enum BoxLocks {
    Slot(#[allow(dead_code)] std::fs::File, #[allow(dead_code)] std::fs::File),
    Fleet(#[allow(dead_code)] std::sync::Arc<std::fs::File>),
}

static BOXES: AtomicU32 = AtomicU32::new(0);

const STATE: &str = "/run/sockherd-sdbox";

/// How many boxes may run at once on this machine, across test threads, test binaries and
/// worktrees: `$SOCKHERD_TEST_BOXES`, default 2 (each box has its own cgroup, network and pid
/// namespace, so they do not interfere; the cap keeps a 2-core machine responsive).
fn box_slots() -> usize {
    std::env::var("SOCKHERD_TEST_BOXES").ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(2)
}

/// Takes the shared box lock and a free slot, waiting as long as it takes.
fn take_box_locks() -> (std::fs::File, std::fs::File) {
    std::fs::create_dir_all(STATE).expect("create /run/sockherd-sdbox");
    let lock = std::fs::File::create(format!("{STATE}/lock")).expect("open the box lock");
    lock.lock_shared().expect("take the box lock (shared)");
    loop {
        for slot in 0..box_slots() {
            let file = std::fs::File::create(format!("{STATE}/slot-{slot}")).expect("open a box slot");
            if file.try_lock().is_ok() {
                return (lock, file);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl SdBox {
    /// Boots a box with `systemd` (252 is the host's; the others are trees laid on top).
    /// Returns None, after printing why, when a prerequisite is missing and the test should skip.
    pub fn boot_on(tag: &str, systemd: Systemd) -> Option<SdBox> {
        if !SdBox::prerequisites(systemd) {
            return None;
        }
        let (lock, slot) = take_box_locks();
        Some(SdBox::start(tag, systemd, BoxLocks::Slot(lock, slot)))
    }

    /// Boots `n` boxes at once, in parallel, for a test of several hosts. They need more than
    /// the `SOCKHERD_TEST_BOXES` slots, so the fleet takes the box lock exclusively (waiting
    /// until no other box runs, as the benchmark does) and holds it until its last box is gone.
    pub fn boot_fleet(tag: &str, systemd: Systemd, n: usize) -> Option<Vec<SdBox>> {
        if !SdBox::prerequisites(systemd) {
            return None;
        }
        std::fs::create_dir_all(STATE).expect("create /run/sockherd-sdbox");
        let lock = std::fs::File::create(format!("{STATE}/lock")).expect("open the box lock");
        lock.lock().expect("take the box lock (exclusive)");
        let lock = std::sync::Arc::new(lock);
        let boots: Vec<_> = (0..n)
            .map(|i| {
                let (tag, lock) = (format!("{tag}{i}"), lock.clone());
                std::thread::spawn(move || SdBox::start(&tag, systemd, BoxLocks::Fleet(lock)))
            })
            .collect();
        // Join every boot before failing, so that no box is left running.
        let boxes: Vec<_> = boots.into_iter().map(|b| b.join()).collect();
        if boxes.iter().any(|b| b.is_err()) {
            panic!("a box of the fleet failed to boot (its panic is printed above)");
        }
        Some(boxes.into_iter().map(|b| b.unwrap()).collect())
    }

    /// The prerequisites of a box with `systemd`, each reported when missing.
    fn prerequisites(systemd: Systemd) -> bool {
        if !prerequisite(is_root(), "root (to boot systemd in private namespaces)")
            || !prerequisite(have("unshare") && have("nsenter"), "unshare and nsenter (util-linux)")
            || !prerequisite(Path::new("/lib/systemd/systemd").exists(), "/lib/systemd/systemd (package systemd)")
        {
            return false;
        }
        if let Some(lower) = systemd.tree() {
            return prerequisite(
                lower.join("usr/lib/systemd/systemd").exists(),
                &format!(
                    "{systemd} at {} (tests/support/fetch-systemd {} {0}; .ci/run fetches it)",
                    lower.display(),
                    systemd.suite().unwrap_or_default()
                ),
            );
        }
        true
    }

    /// PID 1 of the box, as the host sees it.
    pub fn pid(&self) -> u32 {
        let path = format!("{STATE}/{}.pid", self.name);
        let pid = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        pid.trim().parse().unwrap_or_else(|e| panic!("{path}: {pid:?}: {e}"))
    }

    fn start(tag: &str, systemd: Systemd, locks: BoxLocks) -> SdBox {
        let lower = systemd.tree();
        let name =
            format!("{tag}-{}-{}-{}", systemd.version(), std::process::id(), BOXES.fetch_add(1, Ordering::SeqCst));
        // Read-only: the box needs the binary, units/, contrib/ and tests/support/ only, and
        // nothing in the box can change the checkout.
        let mut cmd = Command::new(sdbox_script());
        cmd.args(["start", &name, "--bind-ro"]).arg(repo());
        if let Some(lower) = &lower {
            cmd.arg("--lower").arg(lower);
        }
        let venv = test_venv();
        if venv.exists() {
            cmd.arg("--bind-ro").arg(&venv);
        }
        let started = std::time::Instant::now();
        let out = cmd.output().expect("run tests/support/sdbox");
        if !out.status.success() {
            panic!(
                "failed to boot {systemd} in a box: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let sdbox = SdBox { name, systemd, _locks: locks };
        let version = sdbox.ok("systemctl --version | head -1");
        if !version.starts_with(&format!("systemd {} ", systemd.version())) {
            sdbox.fail_unit("sdbox", &format!("expected {systemd} in the box, got {}", version.trim()));
        }
        eprintln!("box {}: {} booted in {} ms", sdbox.name, version.trim(), started.elapsed().as_millis());
        sdbox
    }

    /// The calling convention of box tests written before the matrix: the host's systemd, or
    /// the tree at `lower` on top (one of the matrix's trees).
    pub fn boot(tag: &str, lower: Option<&Path>) -> Option<SdBox> {
        SdBox::boot_on(tag, Systemd::of_tree(lower))
    }

    /// Runs a bash script inside the box.
    pub fn sh(&self, script: &str) -> Output {
        Command::new(sdbox_script())
            .args(["run", &self.name, "bash", "-c", script])
            .stdin(Stdio::null())
            .output()
            .expect("run in box")
    }

    /// Runs a bash script inside the box; fails the test with everything if it fails.
    pub fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        if !out.status.success() {
            self.fail(&format!(
                "script failed ({}):\n{script}\n--- stdout:\n{}\n--- stderr:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Panics with the message and the box's view of app.service: status and journal.
    pub fn fail(&self, message: &str) -> ! {
        self.fail_unit("app", message)
    }

    /// Panics with the message and the box's view of `<unit>.service`: status and journal.
    pub fn fail_unit(&self, unit: &str, message: &str) -> ! {
        let state = self.sh(&format!("systemctl status '{unit}.service' '{unit}*.socket' --no-pager -l 2>&1 | head -40; echo '--- journal:'; journalctl -u '{unit}*' --no-pager -o short-monotonic 2>&1 | tail -150"));
        panic!("{message}\n--- box {}:\n{}", self.name, String::from_utf8_lossy(&state.stdout));
    }

    /// `systemctl show -P PROPERTY app`.
    pub fn property(&self, property: &str) -> String {
        self.ok(&format!("systemctl show -P {property} app.service")).trim().to_string()
    }
}

impl Drop for SdBox {
    fn drop(&mut self) {
        let _ = Command::new(sdbox_script()).args(["stop", &self.name]).status();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    Gunicorn,
    Unicorn,
    Puma,
    /// unicorn as the main process, upgraded by its own USR2 (units/unicorn-native).
    UnicornNative,
    /// nginx as the main process, binary upgrade by USR2 (units/nginx).
    Nginx,
    /// units/generic: contrib/app/serve.py taking its sockets with libsystemd's sd_listen_fds()
    /// (`serve.py --libsystemd`, run as the release's bin/server).
    Libsystemd,
}

impl Server {
    pub fn flavor(self) -> &'static str {
        match self {
            Server::Gunicorn => "gunicorn",
            Server::Unicorn | Server::UnicornNative => "unicorn",
            Server::Puma => "puma",
            Server::Nginx => "nginx",
            Server::Libsystemd => "systemd",
        }
    }

    /// The directory under units/ with this server's app.service.
    pub fn unit_dir(self) -> &'static str {
        match self {
            Server::UnicornNative => "unicorn-native",
            Server::Libsystemd => "generic",
            other => other.flavor(),
        }
    }

    /// Whether its unit is `sockherd run` with a choice of reload style (ExecReload= below 253,
    /// the notify-reload drop-in from 253); native units keep their own ExecReload=.
    pub fn has_reload_styles(self) -> bool {
        !matches!(self, Server::UnicornNative | Server::Nginx)
    }

    /// Whether its answers say `release=<rN>` (the example app; nginx answers by itself).
    pub fn tells_release(self) -> bool {
        self != Server::Nginx
    }

    /// Files of a release: the app and the server's config from contrib/.
    fn release_files(self) -> Vec<PathBuf> {
        match self {
            Server::Gunicorn => vec![contrib("app/app.py"), contrib("gunicorn/gunicorn.conf.py")],
            Server::Unicorn => vec![contrib("app/config.ru"), contrib("unicorn/unicorn.conf.rb")],
            Server::Puma => vec![contrib("app/config.ru"), contrib("puma/puma.rb")],
            Server::UnicornNative => vec![contrib("app/config.ru"), contrib("unicorn/unicorn-native.conf.rb")],
            Server::Nginx => vec![contrib("nginx/nginx.conf")],
            Server::Libsystemd => vec![contrib("app/app.py"), contrib("app/serve.py")],
        }
    }

    /// Checks (and reports) what the box needs for this server.
    pub fn available(self) -> bool {
        match self {
            Server::Gunicorn => prerequisite(
                test_venv().join("bin/gunicorn").exists(),
                &format!("gunicorn in the world-readable venv {} (.ci/run makes it)", test_venv().display()),
            ),
            Server::Unicorn | Server::UnicornNative => prerequisite(have("unicorn"), "program unicorn"),
            Server::Puma => prerequisite(have("puma"), "program puma"),
            Server::Nginx => {
                prerequisite(Path::new("/usr/sbin/nginx").exists(), "/usr/sbin/nginx (package nginx-light)")
            }
            Server::Libsystemd => prerequisite(
                Path::new("/usr/bin/python3").exists() && have_libsystemd(),
                "/usr/bin/python3 and libsystemd.so.0 (package libsystemd0)",
            ),
        }
    }
}

/// Whether the dynamic linker knows libsystemd.so.0.
fn have_libsystemd() -> bool {
    Command::new("ldconfig")
        .arg("-p")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).contains("libsystemd.so.0 "))
        .unwrap_or(false)
}

/// The shell lines that give a run unit (`sockherd run` as the main process) the drop-ins its
/// systemd takes: units/notify-reload.conf from 253, units/delegate-subgroup.conf from 254.
pub fn run_unit_dropins(systemd: Systemd) -> String {
    let units = repo().join("units");
    let mut lines = String::from("mkdir -p /etc/systemd/system/app.service.d\n");
    if systemd.notify_reload() {
        lines.push_str(&format!("cp {}/notify-reload.conf /etc/systemd/system/app.service.d/\n", units.display()));
    }
    if systemd.delegate_subgroup() {
        lines.push_str(&format!("cp {}/delegate-subgroup.conf /etc/systemd/system/app.service.d/\n", units.display()));
    }
    lines
}

/// A box for a scenario of tests/support/scenario_server.py: sockherd, user app, releases r1
/// and r2 of the scenario server (BEHAVIOR `behaviors[0]` and `behaviors[1]`), current -> r1,
/// units/generic as shipped with its systemd's drop-ins, and `scenario` (lines of `[Service]`
/// settings) in a drop-in of its own. Starts the sockets and the service and checks that r1
/// answers. None (after saying why) when a prerequisite is missing.
pub fn scenario_box(tag: &str, systemd: Systemd, behaviors: [&str; 2], scenario: &str) -> Option<SdBox> {
    if !prerequisite(have("curl"), "program curl in PATH") {
        return None;
    }
    let sdbox = SdBox::boot_on(tag, systemd)?;
    sdbox.ok(&format!("install -m 0755 {} /usr/bin/sockherd", sockherd().display()));
    start_scenario(&sdbox, behaviors, scenario);
    Some(sdbox)
}

/// `scenario_box`'s app and units in a box that has /usr/bin/sockherd already (the package's):
/// installs and starts them, and checks that r1 answers (curl is the caller's prerequisite).
pub fn start_scenario(sdbox: &SdBox, behaviors: [&str; 2], scenario: &str) {
    let units = repo().join("units");
    sdbox.ok(&format!(
        r#"set -e
useradd --system --user-group --no-create-home app
for r in r1 r2; do
  mkdir -p /srv/app/releases/$r/bin
  install -m 0755 {server} /srv/app/releases/$r/bin/server
  echo $r > /srv/app/releases/$r/RELEASE
done
echo '{r1}' > /srv/app/releases/r1/BEHAVIOR
echo '{r2}' > /srv/app/releases/r2/BEHAVIOR
mkdir -p /srv/app/shared
ln -s releases/r1 /srv/app/current
chown -R app:app /srv/app
cp {units}/app-http.socket {units}/app-unix.socket {units}/generic/app.service /etc/systemd/system/
{dropins}cat >/etc/systemd/system/app.service.d/scenario.conf <<'SCENARIO'
[Service]
{scenario}
SCENARIO
systemctl daemon-reload
systemctl start app-http.socket app-unix.socket app.service
"#,
        server = repo().join("tests/support/scenario_server.py").display(),
        units = units.display(),
        r1 = behaviors[0],
        r2 = behaviors[1],
        dropins = run_unit_dropins(sdbox.systemd),
    ));
    let answer = sdbox.ok("curl -sS -m 30 http://127.0.0.1:8080/");
    if !answer.starts_with("release=r1") {
        sdbox.fail(&format!("the first request answered {answer:?}"));
    }
}

/// The app as an operator deploys it: /srv/app/releases/rN, /srv/app/current, the shipped units.
pub struct Deployment {
    pub sdbox: SdBox,
    pub server: Server,
}

impl Deployment {
    /// Boots a box and installs the app with releases r1 and r2 (r3: broken), current -> r1,
    /// and, where the systemd has Type=notify-reload (253+), the notify-reload drop-in. Does not
    /// start anything.
    pub fn install_on(tag: &str, server: Server, systemd: Systemd) -> Option<Deployment> {
        Deployment::install_units(tag, server, systemd, systemd.notify_reload() && server.has_reload_styles())
    }

    /// The calling convention of box tests written before the matrix: the host's systemd or
    /// the tree at `lower`, and the notify-reload drop-in when `notify_reload`.
    pub fn install(tag: &str, server: Server, lower: Option<&Path>, notify_reload: bool) -> Option<Deployment> {
        Deployment::install_units(tag, server, Systemd::of_tree(lower), notify_reload)
    }

    fn install_units(tag: &str, server: Server, systemd: Systemd, notify_reload: bool) -> Option<Deployment> {
        let deployment = Deployment::install_app_on(tag, server, systemd)?;
        let units = repo().join("units");
        let mut dropin = if notify_reload {
            format!(
                "mkdir -p /etc/systemd/system/app.service.d && cp {}/notify-reload.conf /etc/systemd/system/app.service.d/\n",
                units.display()
            )
        } else {
            String::new()
        };
        if systemd.delegate_subgroup() && server.has_reload_styles() {
            dropin.push_str(&format!(
                "mkdir -p /etc/systemd/system/app.service.d && cp {}/delegate-subgroup.conf /etc/systemd/system/app.service.d/\n",
                units.display()
            ));
        }
        let sdbox = &deployment.sdbox;
        sdbox.ok(&format!(
            "set -e
cp {units}/app-http.socket {units}/app-unix.socket {units}/{flavor}/app.service /etc/systemd/system/
{dropin}systemctl daemon-reload
",
            units = units.display(),
            flavor = server.unit_dir(),
        ));
        // The units as shipped must pass systemd's own checks: verify, and an exposure score
        // below 3.0 (systemd-analyze counts tenths: --threshold=30).
        let checks = sdbox.sh(
            "cd /etc/systemd/system && systemd-analyze verify app.service app-http.socket app-unix.socket 2>&1 | grep -v '^/lib/systemd/system/'; \
             echo verify=${PIPESTATUS[0]}; \
             systemd-analyze security --offline=yes --threshold=30 app.service 2>&1 | tail -1; echo security=${PIPESTATUS[0]}",
        );
        let checks = String::from_utf8_lossy(&checks.stdout).into_owned();
        if !checks.contains("verify=0") || !checks.contains("security=0") {
            sdbox.fail(&format!("the shipped units fail systemd-analyze:\n{checks}"));
        }
        Some(deployment)
    }

    /// `install_app_on` in the calling convention of box tests written before the matrix.
    pub fn install_app(tag: &str, server: Server, lower: Option<&Path>) -> Option<Deployment> {
        Deployment::install_app_on(tag, server, Systemd::of_tree(lower))
    }

    /// Boots a box and installs everything but the units: /usr/bin/sockherd, user app, releases
    /// r1, r2 and r3 (broken) under /srv/app, current -> r1, /srv/app/shared/venv.
    pub fn install_app_on(tag: &str, server: Server, systemd: Systemd) -> Option<Deployment> {
        if !server.available() {
            return None;
        }
        let sdbox = SdBox::boot_on(tag, systemd)?;
        let mut copies = String::new();
        for release in ["r1", "r2", "r3"] {
            for file in server.release_files() {
                copies.push_str(&format!("cp {} /srv/app/releases/{release}/\n", file.display()));
            }
            copies.push_str(&format!("echo {release} > /srv/app/releases/{release}/RELEASE\n"));
            if server == Server::Libsystemd {
                // units/generic runs the release's bin/server.
                copies.push_str(&format!(
                    "mkdir -p /srv/app/releases/{release}/bin && printf '#!/bin/sh\\nexec /usr/bin/python3 serve.py --libsystemd\\n' >/srv/app/releases/{release}/bin/server && chmod 0755 /srv/app/releases/{release}/bin/server\n"
                ));
            }
        }
        sdbox.ok(&format!(
            "set -e
useradd --system --user-group --no-create-home app
install -m 0755 {bin} /usr/bin/sockherd
mkdir -p /srv/app/releases/r1 /srv/app/releases/r2 /srv/app/releases/r3 /srv/app/shared
{copies}touch /srv/app/releases/r3/BROKEN
ln -s {venv} /srv/app/shared/venv
ln -s releases/r1 /srv/app/current
chown -R app:app /srv/app
",
            bin = sockherd().display(),
            venv = test_venv().display(),
        ));
        Some(Deployment { sdbox, server })
    }

    /// Starts the socket units and activates the service with a first request.
    pub fn start(&self) {
        self.sdbox.ok("systemctl start app-http.socket app-unix.socket");
        let answer = self.sdbox.ok("curl -sS -m 60 --retry 0 http://127.0.0.1:8080/");
        let expected = if self.server.tells_release() { "release=r1" } else { "nginx worker=" };
        if !answer.starts_with(expected) {
            self.sdbox.fail(&format!("first request (socket activation) answered {answer:?}"));
        }
        // The first answer can come a moment before READY=1 reached systemd.
        let mut active = String::new();
        wait_until(Duration::from_secs(30), || {
            active = self.sdbox.property("ActiveState");
            active != "activating"
        });
        if active != "active" {
            self.sdbox.fail(&format!("app.service is {active} after activation"));
        }
    }

    /// Atomically points /srv/app/current at `release`.
    pub fn flip(&self, release: &str) {
        self.sdbox.ok(&format!("cd /srv/app && ln -sfn releases/{release} current.new && mv -T current.new current"));
    }

    /// `systemctl reload app`: (exit code, output, seconds it took).
    pub fn reload(&self) -> (i32, String, f64) {
        let started = std::time::Instant::now();
        let out = self.sdbox.sh("systemctl reload app 2>&1");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            started.elapsed().as_secs_f64(),
        )
    }
}
