#!/usr/bin/env python3
"""The sockherd benchmark suite's driver (run it through bench/run; see bench/README.md).

Four parts, in one run, on the same apps (contrib/app, bench/apps/app.psgi):
 1. deploy: every method reloads the app 20 times (3 in --short) under load (bench/lib/load.sh:
    wrk, hey, and loadrec recording every request), on TCP and on a unix socket;
 2. overhead: the same app under sockherd and with no launcher, wrk interleaved, as a ratio;
    and sockherd's handoff time against the app's own boot time;
 3. footprint: RSS, size, CPU time and wakeups of the idle launchers (sockherd, start_server,
    rainbow-saddle), side by side for the same 60 s;
 4. scale: handoff time and sockherd CPU against sockets x workers; fds and processes before
    and after 1,000 reloads;
 5. membership: sockherd's CPU per handoff and wakeups with generations as cgroups against
    process groups, with and without 2,000 extra idle processes on the host.
Raw data goes to bench/out/<run>/, the report to RESULTS.md and the plot to reloads.png.

Every duration is bounded; traffic goes to 127.0.0.1, unix sockets, or loopback inside the
systemd boxes it boots (tests/support/sdbox: private network namespaces). It only ever signals
processes it started (by pid, or the process group of one it started) and boxes it booted.
Stdlib only, plus matplotlib for the plot.
"""
import argparse
import csv
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import traceback

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
# bench/run builds both with cargo, which puts them under CARGO_TARGET_DIR when it is set.
SOCKHERD = os.path.join(os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"), "release/sockherd")
LOADREC = os.path.join(os.environ.get("CARGO_TARGET_DIR") or os.path.join(BENCH, "loadrec/target"), "release/sockherd-loadrec")
LOAD_SH = os.path.join(BENCH, "lib/load.sh")
PROBE = os.path.join(BENCH, "lib/probe.py")
SDBOX = os.path.join(ROOT, "tests/support/sdbox")
CONTRIB = os.path.join(ROOT, "contrib")
APP_DIR = os.path.join(CONTRIB, "app")
VENV = os.environ.get("SOCKHERD_TEST_VENV", "/opt/sockherd-test/venv")
SYSTEMD_254 = os.environ.get("SOCKHERD_SYSTEMD_254", "/var/tmp/sockherd-systemd-254")
HZ = os.sysconf("SC_CLK_TCK")


def log(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


# ----- small process helpers -------------------------------------------------------------------


def sh(cmd, timeout=120, check=False, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError("%s failed (%d): %s%s" % (cmd, r.returncode, r.stdout, r.stderr))
    return r


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def python_with(module):
    for py in [shutil.which("python3"), os.path.join(VENV, "bin/python"), "/usr/bin/python3"]:
        if py and os.path.exists(py) and sh([py, "-c", "import " + module]).returncode == 0:
            return py
    return None


GUNICORN_PY = python_with("gunicorn")


class Proc:
    """A process we started, in its own process group; output to files in `outdir`."""

    def __init__(self, argv, outdir, tag, cwd=None, env=None):
        self.tag = tag
        self.out = open(os.path.join(outdir, tag + ".log"), "w")
        self.argv = argv
        self.p = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=self.out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.p.pid

    def alive(self):
        return self.p.poll() is None

    def send(self, sig):
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, sig=signal.SIGTERM, timeout=40):
        """Graceful signal, then SIGKILL to the process group we created for it."""
        try:
            self.send(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        finally:
            try:
                os.killpg(self.pid, signal.SIGKILL)  # leftovers of *our* group only
            except ProcessLookupError:
                pass
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                pass
            self.out.close()


def read_proc(pid, name):
    try:
        with open("/proc/%d/%s" % (pid, name)) as f:
            return f.read()
    except OSError:
        return ""


def proc_status(pid):
    out = {}
    for line in read_proc(pid, "status").splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def kib(pid, key):
    v = proc_status(pid).get(key, "0 kB").split()
    return int(v[0]) if v else 0


def schedstat(pid):
    """(ns on CPU, times scheduled in) from /proc/PID/schedstat."""
    parts = read_proc(pid, "schedstat").split()
    return (int(parts[0]), int(parts[2])) if len(parts) >= 3 else (0, 0)


def ctxt(pid):
    s = proc_status(pid)
    return int(s.get("voluntary_ctxt_switches", 0)), int(s.get("nonvoluntary_ctxt_switches", 0))


def fd_count(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return -1


def descendants(pid):
    parent = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = read_proc(int(name), "stat")
            if stat:
                rest = stat.rsplit(")", 1)[-1].split()
                parent[int(name)] = int(rest[1])
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        for c, pp in parent.items():
            if pp == p:
                out.append(c)
                frontier.append(c)
    return out


def group_members(pgid):
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            rest = read_proc(int(name), "stat").rsplit(")", 1)[-1].split()
            if len(rest) > 2 and int(rest[2]) == pgid:
                out.append(int(name))
    return out


_STATUS_JSON = None


def handoff_times(message, took_ms):
    """(ms to the new generation ready, ms to the end of the handoff) from a reload's message:
    newer builds end a handoff when the old generation closed its sockets and say "ready after
    X ms"; older ones end it at ready."""
    m = re.search(r"ready after (\d+) ms", message or "")
    return (int(m.group(1)) if m else took_ms), took_ms


def sockherd_status(pid):
    """`sockherd status --pid PID` as JSON (newer builds print a table unless --json)."""
    global _STATUS_JSON
    if _STATUS_JSON is None:
        _STATUS_JSON = ["--json"] if "--json" in sh([SOCKHERD, "status", "--help"], timeout=15).stdout else []
    r = sh([SOCKHERD, "status", "--pid", str(pid)] + _STATUS_JSON, timeout=15)
    try:
        return json.loads(r.stdout)
    except ValueError:
        return None


def wait_until(check, timeout, step=0.02):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return True
        time.sleep(step)
    return check()


def wait_serving(pid, timeout):
    """Until `sockherd run` (pid) has a generation serving and none starting: a reload asked
    for before that is never started (see bench/README.md, "sockherd bugs found")."""
    def check():
        st = sockherd_status(pid) or {}
        gens = st.get("generations", [])
        return any(g["state"] == "serving" for g in gens) and not any(g["state"] == "starting" for g in gens)
    return wait_until(check, timeout, step=0.05)


def http_ok(addr, timeout=2.0):
    try:
        s = socket.create_connection(tuple([addr.rsplit(":", 1)[0], int(addr.rsplit(":", 1)[1])]), timeout=timeout)
        s.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        data = s.recv(64)
        s.close()
        return data.startswith(b"HTTP/1.") and b" 200 " in data[:16]
    except OSError:
        return False


# ----- where a method runs: the host, or a systemd box -----------------------------------------


class Host:
    kind = "host"

    def __init__(self, outdir):
        self.outdir = outdir

    def popen(self, argv, tag):
        return Proc(argv, self.outdir, tag)

    def bash(self, script, timeout=120):
        return sh(["bash", "-c", script], timeout=timeout)

    def python(self):
        return sys.executable


class Box:
    """systemd (252 from the host, or a tree on top) as PID 1 of private namespaces."""
    kind = "box"
    counter = 0

    def __init__(self, tag, outdir, lower=None):
        Box.counter += 1
        self.name = "bench-%s-%d-%d" % (tag, os.getpid(), Box.counter)
        self.outdir = outdir
        # A measurement wants the machine to itself: take the box lock exclusively for the box's
        # life (test boxes take it shared, tests/common/sdbox.rs, and wait); wait for it at most
        # 15 minutes.
        import fcntl
        os.makedirs("/run/sockherd-sdbox", exist_ok=True)
        self.lock = open("/run/sockherd-sdbox/lock", "a")
        deadline = time.time() + 900
        while True:
            try:
                fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.time() > deadline:
                    self.lock.close()
                    raise RuntimeError("another systemd box held /run/sockherd-sdbox/lock for 15 minutes")
                time.sleep(0.2)
        argv = [SDBOX, "start", self.name, "--bind", ROOT]
        if lower:
            argv += ["--lower", lower]
        if os.path.isdir(VENV):
            argv += ["--bind", VENV]
        r = sh(argv, timeout=180)
        if r.returncode != 0:
            self.lock.close()
            raise RuntimeError("failed to boot a systemd box: %s%s" % (r.stdout, r.stderr))

    def popen(self, argv, tag):
        return Proc([SDBOX, "run", self.name] + argv, self.outdir, tag)

    def bash(self, script, timeout=120):
        return sh([SDBOX, "run", self.name, "bash", "-c", script], timeout=timeout)

    def ok(self, script, timeout=120):
        r = self.bash(script, timeout)
        if r.returncode != 0:
            raise RuntimeError("in box %s: script failed (%d):\n%s\n%s%s" % (self.name, r.returncode, script, r.stdout, r.stderr))
        return r.stdout

    def python(self):
        return "/usr/bin/python3"

    def stop(self):
        try:
            sh([SDBOX, "stop", self.name], timeout=60)
        finally:
            self.lock.close()  # releases the flock


# ----- the deploy methods ----------------------------------------------------------------------

SERVERS = ["gunicorn", "unicorn", "puma"]
# The variant of the sockherd-host-* methods with `--boot-priority on`.
BOOT_PRIORITY_ON = "boot-priority-on"
# The sockherd-host-* methods whose server and load run on CPUs of their own.
PINNED = "pinned"


def cpu_split():
    """(the server's CPUs, the load's CPU): the last CPU we may run on for the load generators,
    the others for the server; None with fewer than two."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return cpus[:-1], cpus[-1]


def cpu_list(cpus):
    return ",".join(str(c) for c in cpus)


def server_cmd(server, selfbind=None, conf_dir=CONTRIB):
    """The server's command line in contrib/app (or a release dir); `selfbind`: (tcp, unix) for
    a server that binds its own sockets (no launcher)."""
    if server == "gunicorn":
        argv = [GUNICORN_PY, "-m", "gunicorn", "-c", os.path.join(conf_dir, "gunicorn/gunicorn.conf.py")]
        if selfbind:
            argv += ["-b", selfbind[0]] + (["-b", "unix:" + selfbind[1]] if selfbind[1] else [])
        return argv + ["app:app"], {}
    if server == "unicorn":
        if selfbind:
            env = {"BENCH_LISTEN": ",".join(x for x in selfbind if x)}
            return ["unicorn", "-c", os.path.join(BENCH, "apps/unicorn-selfbind.rb"), "config.ru"], env
        return ["unicorn", "-c", os.path.join(conf_dir, "unicorn/unicorn.conf.rb"), "config.ru"], {}
    if server == "puma":
        if selfbind:
            binds = ["tcp://" + selfbind[0]] + (["unix://" + selfbind[1]] if selfbind[1] else [])
            return ["puma", "-C", os.path.join(BENCH, "apps/puma-selfbind.rb"), "config.ru"], {"BENCH_BIND": ",".join(binds)}
        return ["puma", "-C", os.path.join(conf_dir, "puma/puma.rb"), "config.ru"], {}
    if server == "starman":
        # --disable-keepalive: a starman worker serves one keep-alive connection until the client
        # closes it, so wrk's 4 connections would hold both workers forever (starving every
        # other client, and the old generation could never drain). Same flags under both launchers.
        return ["starman", "--workers", "2", "--disable-keepalive", "--preload-app", os.path.join(BENCH, "apps/app.psgi")], {}
    raise ValueError(server)


class Method:
    """One way of deploying: sets the app up, performs one reload, tears it down.

    setup() -> (target, tcp_addr, unix_path); reload() -> dict(t0, t1, rc, out, old=[pids]) and
    then the driver waits for a new generation (crit: "master" or "worker") and for the old
    one to be gone. `sockherd` marks the methods the zero-failure property applies to."""
    crit = "master"
    sockherd = False
    where = "host"
    unix = True
    # Whether each "reload" starts a new generation (the run waits for it and for the old one
    # to be gone); a reexec of the launcher keeps the one that serves.
    new_generation = True

    def __init__(self, name, server, label, note=""):
        self.name, self.server, self.label, self.note = name, server, label, note

    def available(self):
        return None  # or a reason it cannot run

    def handoff_ms(self):
        return []  # sockherd's own measure of each handoff, when it has one


def have(prog):
    return shutil.which(prog) is not None


class SockherdHost(Method):
    sockherd = True

    def __init__(self, server, flavor=None, extra=(), variant=None, label=None, quiet=False, pinned=False):
        self.quiet = quiet
        # pinned: the server (sockherd and every generation) on CPUs the load generators never
        # run on, as if the clients were on other hosts: what competes for the server's CPU is
        # then the server's own processes only, a booting generation against the serving one.
        self.pinned = pinned
        self.load_prefix = []
        self.client_cpus = None  # the driver's and its clients' CPUs while this method runs (pinned)
        # The recorder's priority on the load generators' CPU (load.sh): "rt" when pinned.
        self.recorder_priority = ""
        self.placement = "shared"
        label = label or ("sockherd run (no systemd)" if server != "starman" else "sockherd run --flavor server-starter")
        super().__init__("sockherd-host-" + server + ("-" + PINNED if pinned else "") + ("-" + variant if variant else ""),
                         server, label)
        self.variant = variant
        self.flavor = flavor or server
        self.extra = list(extra)
        self.unix = server != "starman"
        self.took = []

    def available(self):
        if self.server == "gunicorn" and not GUNICORN_PY:
            return "gunicorn (python module) not installed"
        if not have(server_cmd(self.server)[0][0]) and self.server != "gunicorn":
            return "%s not installed" % self.server
        if self.pinned and not cpu_split():
            return "one CPU only: the server and the load cannot have CPUs of their own"
        if self.pinned and not have("taskset"):
            return "taskset (util-linux) not installed"
        if self.pinned and not have("chrt"):
            return "chrt (util-linux) not installed"
        if self.pinned and subprocess.run(["chrt", "-f", "1", "true"], capture_output=True).returncode != 0:
            return "chrt -f 1 is not allowed here (the recorder runs SCHED_FIFO: needs CAP_SYS_NICE)"
        return None

    def setup(self, outdir):
        self.target = Host(outdir)
        self.tcp = "127.0.0.1:%d" % free_port()
        self.sock = os.path.join(outdir, "app.sock") if self.unix else ""
        argv, env = server_cmd(self.server)
        cmd = [SOCKHERD, "run", "--flavor", self.flavor, "--listen", self.tcp]
        if self.sock:
            cmd += ["--listen", self.sock]
        cmd += ["--chdir", APP_DIR] + self.extra + ["--"] + argv
        if self.pinned:
            server_cpus, load_cpu = cpu_split()
            cmd = ["taskset", "-c", cpu_list(server_cpus)] + cmd
            self.load_prefix = ["taskset", "-c", str(load_cpu)]
            self.client_cpus = {load_cpu}
            # wrk and hey keep the load CPU busy; the recorder, on it too, would wait behind them
            # (up to 37 ms between two answers in one run) and count its own wait as the server's gap.
            self.recorder_priority = "rt"
            self.placement = "server on CPU%s %s, load on CPU %d" % (
                "s" if len(server_cpus) > 1 else "", cpu_list(server_cpus), load_cpu)
        self.proc = Proc(cmd, outdir, "sockherd", env=dict(os.environ, **env))
        if not (wait_until(lambda: http_ok(self.tcp), 60) and wait_serving(self.proc.pid, 60)):
            raise RuntimeError("sockherd + %s did not serve within 60 s" % self.server)

    def reload(self):
        t0 = time.time()
        r = sh([SOCKHERD, "reload", "--pid", str(self.proc.pid), "--timeout", "120s"], timeout=130)
        t1 = time.time()
        st = sockherd_status(self.proc.pid)
        if st and st.get("last_reload"):
            self.took.append(handoff_times(st["last_reload"].get("message"), st["last_reload"]["took_ms"]))
        return dict(t0=t0, t1=t1, rc=r.returncode, out=(r.stdout + r.stderr).strip()[-300:])

    def handoff_ms(self):
        return self.took

    def teardown(self):
        self.proc.stop(signal.SIGTERM)


class BoxMethod(Method):
    """The units in units/ as shipped, in a systemd box (the Deployment of tests/common/sdbox.rs)."""
    where = "box"

    def __init__(self, name, server, label, systemd_254=False, action="reload", unit_dir=None, note=""):
        super().__init__(name, server, label, note)
        self.systemd_254 = systemd_254
        self.action = action
        self.unit_dir = unit_dir or server

    def available(self):
        if os.geteuid() != 0:
            return "needs root (systemd boxes)"
        if not shutil.which("unshare") or not shutil.which("nsenter") or not os.path.exists("/lib/systemd/systemd"):
            return "needs unshare, nsenter and systemd"
        if self.systemd_254 and not os.path.exists(os.path.join(SYSTEMD_254, "usr/lib/systemd/systemd")):
            return "systemd 254 tree missing at %s (tests/support/fetch-systemd bookworm-backports %s)" % (SYSTEMD_254, SYSTEMD_254)
        if self.server == "gunicorn" and not os.path.exists(os.path.join(VENV, "bin/gunicorn")):
            return "gunicorn venv %s missing (.ci/run makes it)" % VENV
        if self.server in ("unicorn", "puma") and not have(self.server):
            return "%s not installed" % self.server
        return None

    def release_files(self):
        if self.unit_dir == "unicorn-native":
            return [os.path.join(CONTRIB, "app/config.ru"), os.path.join(CONTRIB, "unicorn/unicorn-native.conf.rb")]
        return {
            "gunicorn": [os.path.join(CONTRIB, "app/app.py"), os.path.join(CONTRIB, "gunicorn/gunicorn.conf.py")],
            "unicorn": [os.path.join(CONTRIB, "app/config.ru"), os.path.join(CONTRIB, "unicorn/unicorn.conf.rb")],
            "puma": [os.path.join(CONTRIB, "app/config.ru"), os.path.join(CONTRIB, "puma/puma.rb")],
        }[self.server] + [os.path.join(BENCH, "apps/unicorn-selfbind.rb"), os.path.join(BENCH, "apps/puma-selfbind.rb")]

    def install(self, box):
        units = os.path.join(ROOT, "units")
        dropin = ""
        if self.systemd_254:
            dropin = ("mkdir -p /etc/systemd/system/app.service.d && cp %s/notify-reload.conf /etc/systemd/system/app.service.d/\n" % units)
        box.ok("""set -e
useradd --system --user-group --no-create-home app
install -m 0755 {bin} /usr/bin/sockherd
mkdir -p /srv/app/releases/r1 /srv/app/shared
cp {files} /srv/app/releases/r1/
echo r1 > /srv/app/releases/r1/RELEASE
ln -s {venv} /srv/app/shared/venv
ln -s releases/r1 /srv/app/current
chown -R app:app /srv/app
cp {units}/app-http.socket {units}/app-unix.socket {units}/{unit_dir}/app.service /etc/systemd/system/
{dropin}systemctl daemon-reload
""".format(bin=SOCKHERD, files=" ".join(self.release_files()), venv=VENV, units=units, unit_dir=self.unit_dir, dropin=dropin))

    def setup(self, outdir):
        self.box = Box(self.server, outdir, SYSTEMD_254 if self.systemd_254 else None)
        self.target = self.box
        self.tcp, self.sock = "127.0.0.1:8080", "/run/app.sock"
        try:
            self.install(self.box)
            self.start()
        except Exception:
            self.box.stop()
            raise

    def start(self):
        self.box.ok("systemctl start app-http.socket app-unix.socket && curl -sS -m 60 http://127.0.0.1:8080/ >/dev/null")

    def reload(self):
        # systemd refuses a 6th start within 10 s (StartLimitBurst=5, StartLimitIntervalSec=10s):
        # 20 restarts a second apart would measure that limit (restart 5 fails, the service stays
        # down ~60 s; seen in a first run), not the method. Reset the counter first, untimed, as
        # if the deploys were spaced out. Reloads are not starts: nothing to reset for them.
        pre = "systemctl reset-failed app 2>/dev/null; " if self.action == "restart" else ""
        r = self.box.bash(pre + 's=$(date +%%s.%%N); out=$(systemctl %s app 2>&1); rc=$?; e=$(date +%%s.%%N); echo "$s $e $rc"; echo "$out" | tail -3' % self.action, timeout=150)
        lines = r.stdout.strip().splitlines()
        try:
            t0, t1, rc = lines[0].split()
            return dict(t0=float(t0), t1=float(t1), rc=int(rc), out="\n".join(lines[1:])[-300:])
        except (IndexError, ValueError):
            return dict(t0=time.time(), t1=time.time(), rc=-1, out=(r.stdout + r.stderr)[-300:])

    def handoff_ms(self):
        if not self.sockherd:
            return []
        # --sync: journald may still be catching up after the load (it was starved of CPU).
        r = self.box.bash("journalctl --sync; journalctl -u app SOCKHERD_EVENT=reload_done -o json --no-pager")
        out = []
        for line in r.stdout.splitlines():
            try:
                e = json.loads(line)
                out.append(handoff_times(e.get("MESSAGE") if isinstance(e.get("MESSAGE"), str) else "", int(e.get("SOCKHERD_HANDOFF_MS", ""))))
            except ValueError:
                pass
        return out

    def teardown(self):
        try:
            self.journal = self.box.bash("journalctl -u app --no-pager -o short-monotonic | tail -60").stdout
        finally:
            self.box.stop()


class SockherdBox(BoxMethod):
    sockherd = True

    def __init__(self, server, systemd_254):
        v = "254 notify-reload" if systemd_254 else "252 ExecReload"
        super().__init__("sockherd-sd%s-%s" % ("254" if systemd_254 else "252", server), server,
                         "sockherd run, systemd %s (systemctl reload)" % v, systemd_254=systemd_254)


class ReexecBox(BoxMethod):
    """`sockherd reexec app` instead of a reload: the launcher upgraded in place (units as shipped,
    systemd 252), alternating between the built binary and a copy stamped `second`
    (.sockherd_build), each installed at /usr/bin/sockherd by rename as a package upgrade does.
    A reexec counts as ok when the new version took over with the same MainPID and the same
    serving generation; "reload -> new serving" is the `sockherd reexec` command's time, and
    sockherd's own column the time from the old image's handover to the new one's takeover."""
    sockherd = True
    new_generation = False
    crit = "none"

    def __init__(self, server):
        super().__init__("sockherd-reexec-sd252-" + server, server, "sockherd reexec (upgrade the launcher)",
                         note="systemd 252, units as shipped; each reexec alternates two builds installed by rename")
        self.count = 0

    def available(self):
        if not have("objcopy"):
            return "objcopy (binutils) not installed: it makes the second build"
        return super().available()

    def install(self, box):
        super().install(box)
        box.ok("""set -e
mkdir -p /opt/builds/first /opt/builds/second
cp /usr/bin/sockherd /opt/builds/first/sockherd
head -c 64 /dev/zero >/tmp/label; printf second | dd of=/tmp/label conv=notrunc status=none
objcopy --update-section .sockherd_build=/tmp/label /usr/bin/sockherd /opt/builds/second/sockherd
""")

    def start(self):
        super().start()
        # The first generation serves once its settle time has passed.
        wait_until(lambda: self.status()[3] is not None, 60, step=0.2)
        self.main_pid, _, _, self.serving = self.status()
        if self.serving is None:
            raise RuntimeError("no serving generation 60 s after the start")

    def status(self):
        """(MainPID, version, reexecs, serving generation's pid) as the supervisor says."""
        r = self.box.bash("""main=$(systemctl show -P MainPID app); echo "$main"
/opt/builds/first/sockherd status --pid "$main" --json""")
        lines = r.stdout.splitlines()
        try:
            st = json.loads("\n".join(lines[1:]))
            serving = [g["pid"] for g in st["generations"] if g.get("state") == "serving"]
            return lines[0].strip(), st["version"], st["reexecs"], serving[0] if serving else None
        except (ValueError, KeyError, IndexError):
            return (lines[0].strip() if lines else ""), None, None, None

    def reload(self):
        self.count += 1
        build = "second" if self.count % 2 else "first"
        r = self.box.bash("""cp /opt/builds/{b}/sockherd /usr/bin/sockherd.dpkg-new && mv -f /usr/bin/sockherd.dpkg-new /usr/bin/sockherd
s=$(date +%s.%N); out=$(sockherd reexec app 2>&1); rc=$?; e=$(date +%s.%N); echo "$s $e $rc"; echo "$out" | tail -3""".format(b=build), timeout=150)
        lines = r.stdout.strip().splitlines()
        try:
            t0, t1, rc = lines[0].split()
            ev = dict(t0=float(t0), t1=float(t1), rc=int(rc), out="\n".join(lines[1:])[-300:])
        except (IndexError, ValueError):
            return dict(t0=time.time(), t1=time.time(), rc=-1, out=(r.stdout + r.stderr)[-300:])
        main_pid, version, reexecs, serving = self.status()
        expect = "(build second)" in version if version else False
        if ev["rc"] == 0 and (main_pid != self.main_pid or serving != self.serving or reexecs != self.count
                              or expect != (build == "second")):
            ev["rc"] = 1
            ev["out"] = "after the reexec: MainPID %s (was %s), version %s, reexecs %s, serving pid %s (was %s)" % (
                main_pid, self.main_pid, version, reexecs, serving, self.serving)
        ev["t_new"] = ev["t1"] if ev["rc"] == 0 else None
        return ev

    def handoff_ms(self):
        # From the old image's "hands over" to the new one's "re-executed" line: how long the
        # launcher was away (the serving generation is not).
        r = self.box.bash("journalctl --sync; journalctl -u app -o json --no-pager SOCKHERD_EVENT=reexec + SOCKHERD_EVENT=reexec_done")
        out, handed = [], None
        for line in r.stdout.splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            at = int(e.get("__MONOTONIC_TIMESTAMP", 0))
            if e.get("SOCKHERD_EVENT") == "reexec" and "hands over" in str(e.get("MESSAGE")):
                handed = at
            elif e.get("SOCKHERD_EVENT") == "reexec_done" and handed:
                out.append(((at - handed) / 1000.0, (at - handed) / 1000.0))
                handed = None
        return out


class NativeBox(BoxMethod):
    """unicorn's own USR2 driven by `sockherd reload --native` (units/unicorn-native)."""
    sockherd = True

    def __init__(self):
        super().__init__("sockherd-native-unicorn", "unicorn", "sockherd native mode (USR2 + MAINPID, systemd 252)",
                         unit_dir="unicorn-native")

    def available(self):
        help_text = sh([SOCKHERD, "reload", "--help"]).stdout if os.path.exists(SOCKHERD) else ""
        if "--native" not in help_text:
            return "not available in this build (`sockherd reload --help` has no --native)"
        for f in [os.path.join(ROOT, "units/unicorn-native/app.service"), os.path.join(CONTRIB, "unicorn/unicorn-native.conf.rb")]:
            if not os.path.exists(f):
                return "not available in this build (%s missing)" % os.path.relpath(f, ROOT)
        return super().available()

    def handoff_ms(self):
        r = self.box.bash("journalctl --sync; journalctl -u app -o json --no-pager")
        out = []
        for line in r.stdout.splitlines():
            try:
                e = json.loads(line)
                if e.get("SOCKHERD_HANDOFF_MS") is not None:
                    out.append(handoff_times(e.get("MESSAGE") if isinstance(e.get("MESSAGE"), str) else "", int(e["SOCKHERD_HANDOFF_MS"])))
            except ValueError:
                pass
        return out


class RestartSocketBox(BoxMethod):
    def __init__(self, server):
        super().__init__("restart-socket-" + server, server, "systemctl restart, socket units hold the sockets",
                         action="restart")


class RestartNaiveBox(BoxMethod):
    """The server binds its own sockets; `systemctl restart` (the naive way)."""

    def __init__(self, server):
        super().__init__("restart-naive-" + server, server, "systemctl restart, no socket activation", action="restart")

    def install(self, box):
        super().install(box)
        cmd = {
            "gunicorn": ("notify", "TERM", "/srv/app/shared/venv/bin/python -m gunicorn -c gunicorn.conf.py "
                                           "-b 127.0.0.1:8080 -b unix:/run/app/app.sock app:app", ""),
            "unicorn": ("simple", "QUIT", "/usr/bin/unicorn -c unicorn-selfbind.rb config.ru",
                        "Environment=BENCH_LISTEN=127.0.0.1:8080,/run/app/app.sock\n"),
            "puma": ("notify", "TERM", "/usr/bin/puma -C puma-selfbind.rb config.ru",
                     "Environment=BENCH_BIND=tcp://127.0.0.1:8080,unix:///run/app/app.sock\n"),
        }[self.server]
        # unicorn-selfbind.rb finds the contrib config next to it in a release: copy it there.
        unit = """[Unit]
Description=app ({server} binding its own sockets; the benchmark's naive restart)
[Service]
Type={type}
ExecStart={cmd}
{env}KillMode=mixed
KillSignal=SIG{sig}
TimeoutStopSec=45
User=app
Group=app
RuntimeDirectory=app
WorkingDirectory=/srv/app/current
""".format(server=self.server, type=cmd[0], sig=cmd[1], cmd=cmd[2], env=cmd[3])
        box.ok("""set -e
mkdir -p /srv/contrib/unicorn && cp {contrib}/unicorn/unicorn.conf.rb /srv/contrib/unicorn/
sed -i 's|File.join(File.dirname(__FILE__), "../../contrib/unicorn/unicorn.conf.rb")|"/srv/contrib/unicorn/unicorn.conf.rb"|' /srv/app/releases/r1/unicorn-selfbind.rb
cat > /etc/systemd/system/app-naive.service <<'UNIT'
{unit}UNIT
systemctl daemon-reload
""".format(contrib=CONTRIB, unit=unit))

    def start(self):
        self.sock = "/run/app/app.sock"
        self.box.ok("systemctl start app-naive.service && for i in $(seq 600); do curl -sS -m 5 -o /dev/null http://127.0.0.1:8080/ 2>/dev/null && exit 0; sleep 0.1; done; exit 1")

    def reload(self):
        # The start rate limit, as for the socket-activated restart (see BoxMethod.reload).
        r = self.box.bash('systemctl reset-failed app-naive 2>/dev/null; s=$(date +%s.%N); out=$(systemctl restart app-naive 2>&1); rc=$?; e=$(date +%s.%N); echo "$s $e $rc"; echo "$out" | tail -3', timeout=150)
        lines = r.stdout.strip().splitlines()
        try:
            t0, t1, rc = lines[0].split()
            return dict(t0=float(t0), t1=float(t1), rc=int(rc), out="\n".join(lines[1:])[-300:])
        except (IndexError, ValueError):
            return dict(t0=time.time(), t1=time.time(), rc=-1, out=(r.stdout + r.stderr)[-300:])

    def teardown(self):
        try:
            self.journal = self.box.bash("journalctl -u app-naive --no-pager -o short-monotonic | tail -60").stdout
        finally:
            self.box.stop()


class RestartFdStoreBox(BoxMethod):
    """No socket units: `sockherd run --listen` binds the sockets and keeps them in systemd's fd
    store (the unit `sockherd unit --no-socket-units` writes); `systemctl restart`."""

    COMMANDS = {
        "gunicorn": "/srv/app/shared/venv/bin/python -m gunicorn -c gunicorn.conf.py app:app",
        "unicorn": "/usr/bin/unicorn -c unicorn.conf.rb config.ru",
        "puma": "/usr/bin/puma -C puma.rb config.ru",
    }

    def __init__(self, server):
        super().__init__("restart-fdstore-" + server, server, "systemctl restart, fd store (no socket units)",
                         action="restart")

    def install(self, box):
        super().install(box)
        box.ok("""set -e
rm -rf /etc/systemd/system/app.service /etc/systemd/system/app-*.socket /etc/systemd/system/app.service.d
sockherd unit app --no-socket-units --flavor {server} --user app --chdir /srv/app/current \\
  --listen 127.0.0.1:8080,name=http --listen /run/app/app.sock,name=unix --output /etc/systemd/system -- {cmd}
systemctl daemon-reload
""".format(server=self.server, cmd=self.COMMANDS[self.server]))

    def start(self):
        self.sock = "/run/app/app.sock"
        self.box.ok("systemctl enable --now app && curl -sS -m 60 http://127.0.0.1:8080/ >/dev/null")


class CrashBox(BoxMethod):
    """The shipped units (socket units) with `Restart=always`: sockherd gets SIGKILL (as from
    the OOM killer) and systemd restarts the service. The "reload" is the kill; it ends when the
    service is active again with a new main process."""

    def __init__(self, server):
        super().__init__("crash-socket-" + server, server, "SIGKILL of sockherd, Restart=always (socket units)",
                         action="restart")

    def install(self, box):
        super().install(box)
        box.ok("mkdir -p /etc/systemd/system/app.service.d && printf '[Service]\\nRestart=always\\n' "
               ">/etc/systemd/system/app.service.d/restart-always.conf && systemctl daemon-reload")

    def reload(self):
        # The start rate limit, as for the restarts (see BoxMethod.reload): reset, untimed.
        r = self.box.bash("""systemctl reset-failed app 2>/dev/null; main=$(systemctl show -P MainPID app)
s=$(date +%s.%N); kill -KILL "$main"; rc=1
for i in $(seq 6000); do
  now=$(systemctl show -P MainPID app)
  if [ "$(systemctl show -P ActiveState app)" = active ] && [ "$now" != 0 ] && [ "$now" != "$main" ]; then rc=0; break; fi
  sleep 0.02
done
e=$(date +%s.%N); echo "$s $e $rc"; systemctl show -p NRestarts -p MainPID app | tr '\\n' ' '""", timeout=150)
        lines = r.stdout.strip().splitlines()
        try:
            t0, t1, rc = lines[0].split()
            return dict(t0=float(t0), t1=float(t1), rc=int(rc), out="\n".join(lines[1:])[-300:])
        except (IndexError, ValueError):
            return dict(t0=time.time(), t1=time.time(), rc=-1, out=(r.stdout + r.stderr)[-300:])


class Dance(Method):
    """The server binds its own sockets; its own upgrade signals, by hand (on the host)."""

    def __init__(self, server, label, crit):
        super().__init__("dance-" + server, server, label)
        self.crit = crit

    def available(self):
        if self.server == "gunicorn" and not GUNICORN_PY:
            return "gunicorn not installed"
        if self.server != "gunicorn" and not have(self.server):
            return "%s not installed" % self.server
        return None

    def setup(self, outdir):
        self.target = Host(outdir)
        self.tcp = "127.0.0.1:%d" % free_port()
        self.sock = os.path.join(outdir, "app.sock")
        argv, env = server_cmd(self.server, selfbind=(self.tcp, self.sock))
        self.proc = Proc(argv, outdir, self.server, cwd=APP_DIR, env=dict(os.environ, **env))
        if not wait_until(lambda: http_ok(self.tcp), 60):
            raise RuntimeError("%s did not serve within 60 s" % self.server)
        self.master = self.proc.pid

    def reload(self):
        t0 = time.time()
        if self.server == "unicorn":
            # USR2: a new master alongside; once it serves, QUIT the old one (unicorn's recipe).
            old = self.master
            os.kill(old, signal.SIGUSR2)
            r = json.loads(sh([sys.executable, PROBE, "new", self.tcp, "master", str(old), "60"], timeout=70).stdout)
            if r.get("master"):
                self.master = r["master"]
                os.kill(old, signal.SIGQUIT)
            return dict(t0=t0, t1=time.time(), rc=0 if r.get("master") else 1, out=json.dumps(r), old=[old])
        sig = signal.SIGHUP if self.server == "gunicorn" else signal.SIGUSR2
        os.kill(self.master, sig)
        return dict(t0=t0, t1=time.time(), rc=0, out="")

    def teardown(self):
        # The current master (after USR2 it is not the process we started, but it is in our
        # process group, and Proc.stop kills what is left of the group).
        try:
            if self.master != self.proc.pid:
                os.kill(self.master, {"unicorn": signal.SIGQUIT}.get(self.server, signal.SIGTERM))
                wait_until(lambda: not os.path.exists("/proc/%d" % self.master), 30)
        except ProcessLookupError:
            pass
        self.proc.stop({"unicorn": signal.SIGQUIT}.get(self.server, signal.SIGTERM))


class RainbowSaddle(Method):
    def __init__(self):
        super().__init__("rainbow-saddle-gunicorn", "gunicorn", "rainbow-saddle (HUP: gunicorn USR2 + TERM old)")

    def available(self):
        if not have("rainbow-saddle"):
            return "rainbow-saddle not installed (pip install rainbow-saddle)"
        return None if GUNICORN_PY else "gunicorn not installed"

    def setup(self, outdir):
        self.target = Host(outdir)
        self.tcp = "127.0.0.1:%d" % free_port()
        self.sock = os.path.join(outdir, "app.sock")
        argv, _ = server_cmd("gunicorn", selfbind=(self.tcp, self.sock))
        self.proc = Proc([shutil.which("rainbow-saddle"), "--pid", os.path.join(outdir, "rs.pid"),
                          "--gunicorn-pidfile", os.path.join(outdir, "gunicorn.pid")] + argv, outdir, "rainbow-saddle", cwd=APP_DIR)
        if not wait_until(lambda: http_ok(self.tcp), 60):
            raise RuntimeError("rainbow-saddle + gunicorn did not serve within 60 s")

    def reload(self):
        t0 = time.time()
        self.proc.send(signal.SIGHUP)
        return dict(t0=t0, t1=time.time(), rc=0, out="")

    def teardown(self):
        self.proc.stop(signal.SIGTERM)


class StartServer(Method):
    unix = False

    def __init__(self):
        super().__init__("start_server-starman", "starman", "Server::Starter start_server (HUP)")

    def available(self):
        return None if have("start_server") and have("starman") else "start_server or starman not installed"

    def setup(self, outdir):
        self.target = Host(outdir)
        self.tcp = "127.0.0.1:%d" % free_port()
        self.sock = ""
        argv, _ = server_cmd("starman")
        self.proc = Proc(["start_server", "--port", self.tcp, "--signal-on-hup=QUIT", "--signal-on-term=QUIT",
                          "--pid-file", os.path.join(outdir, "ss.pid"),
                          "--status-file", os.path.join(outdir, "ss.status"), "--"] + argv, outdir, "start_server", cwd=APP_DIR)
        if not wait_until(lambda: http_ok(self.tcp), 60):
            raise RuntimeError("start_server + starman did not serve within 60 s")

    def reload(self):
        t0 = time.time()
        self.proc.send(signal.SIGHUP)
        return dict(t0=t0, t1=time.time(), rc=0, out="")

    def teardown(self):
        self.proc.stop(signal.SIGTERM)


def deploy_methods():
    ms = []
    for s in SERVERS:
        # Each followed by as long a time of the same load with no reload: the server's own
        # longest gap, which a reload's can only be judged against (full run only).
        ms.append(SockherdHost(s, quiet=True))
        # The same with the boot priority, right after it (same load, same machine state): its
        # effect on the serving generation during reloads. Full run only.
        ms.append(SockherdHost(s, extra=["--boot-priority", "on"], variant=BOOT_PRIORITY_ON,
                               label="sockherd run --boot-priority on (no systemd)", quiet=True))
    for s in SERVERS:
        # The same pair with the server and its load on CPUs of their own: the load generators
        # stand for clients on other hosts, and a reload's boot competes with the serving
        # generation only. Sharing both CPUs, the load generators' session takes half of them
        # from the server (autogroup), and puma's own gap is longer than the goal with no reload
        # at all (bench/floor).
        ms.append(SockherdHost(s, quiet=True, pinned=True,
                               label="sockherd run, server and load on CPUs of their own (no systemd)"))
        ms.append(SockherdHost(s, extra=["--boot-priority", "on"], variant=BOOT_PRIORITY_ON, quiet=True, pinned=True,
                               label="sockherd run --boot-priority on, server and load on CPUs of their own (no systemd)"))
    for s in SERVERS:
        ms.append(SockherdBox(s, False))
    for s in SERVERS:
        ms.append(SockherdBox(s, True))
    for s in SERVERS:
        ms.append(ReexecBox(s))
    ms.append(NativeBox())
    for s in SERVERS:
        ms.append(RestartSocketBox(s))
    for s in SERVERS:
        ms.append(RestartNaiveBox(s))
    for s in SERVERS:
        ms.append(RestartFdStoreBox(s))
    for s in SERVERS:
        ms.append(CrashBox(s))
    ms.append(Dance("unicorn", "unicorn USR2 + QUIT by hand", "master"))
    ms.append(Dance("gunicorn", "gunicorn HUP by hand", "worker"))
    ms.append(Dance("puma", "puma USR2 (hot restart in place) by hand", "worker"))
    ms.append(RainbowSaddle())
    ms.append(StartServer())
    # starman's graceful stop is QUIT (TERM ends workers mid-request): tell both launchers.
    ms.append(SockherdHost("starman", flavor="server-starter", extra=["--stop-signal", "QUIT"]))
    return ms


# ----- one deploy run --------------------------------------------------------------------------

# How long the old generation may take to be gone after a reload; one still alive then fails the
# run (ev["left"]).
GONE_TIMEOUT = 45


def probe(target, *args, timeout=80):
    r = target.bash("%s %s %s" % (target.python(), PROBE, " ".join(str(a) for a in args)), timeout=timeout)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": (r.stdout + r.stderr)[-300:]}


def run_deploy(method, cfg, outroot):
    outdir = os.path.join(outroot, method.name)
    os.makedirs(outdir, exist_ok=True)
    result = dict(name=method.name, server=method.server, label=method.label, sockherd=method.sockherd,
                  where=method.where, note=method.note, reloads=[], unix=method.unix)
    why = method.available()
    if why:
        result["skipped"] = why
        log("%s: not run: %s" % (method.name, why))
        return result
    log("%s: %s (%s)" % (method.name, method.label, method.server))
    started = time.time()
    method.setup(outdir)
    load = None
    # Where the server has CPUs of its own, this driver and every client it starts (the
    # reload command, the probes, `sockherd status`) run on the load's CPU as well: clients on
    # other hosts. A probe's Python start costs tens of ms of CPU; on the server's CPU it would
    # be a gap of the server's.
    driver_cpus = os.sched_getaffinity(0)
    try:
        if getattr(method, "client_cpus", None):
            os.sched_setaffinity(0, method.client_cpus)
        target = method.target
        ident = probe(target, "ident", method.tcp)
        old_master = ident.get("master")
        # A run that keeps its load as long again after the reloads (below) gets twice the time.
        load_max = cfg.load_max * (2 if getattr(method, "quiet", False) else 1)
        result["placement"] = getattr(method, "placement", None)
        load = target.popen(getattr(method, "load_prefix", []) + [
            "bash", LOAD_SH, outdir, LOADREC, method.tcp, method.sock if method.unix else "", str(load_max),
            getattr(method, "recorder_priority", "")], "load")
        wait_until(lambda: os.path.exists(os.path.join(outdir, "started")), 30)
        time.sleep(cfg.steady)
        for i in range(cfg.reloads):
            if method.crit == "worker":
                ident = probe(target, "ident", method.tcp)
                old_ids = ident.get("workers") or [ident.get("worker")]
                old_master = ident.get("master")
            else:
                old_ids = [old_master]
            ev = method.reload()
            if not method.new_generation:
                ev["i"] = i + 1
                result["reloads"].append(ev)
                status = "ok" if ev["rc"] == 0 else "FAILED rc=%s %s" % (ev["rc"], ev.get("out", "")[-120:])
                log("  %d/%d: %s after %.0f ms" % (i + 1, cfg.reloads, status, (ev["t1"] - ev["t0"]) * 1000))
                time.sleep(cfg.pause)
                continue
            new = probe(target, "new", method.tcp, method.crit, ",".join(str(p) for p in old_ids if p), 60)
            ev["t_new"] = new.get("t")
            ev["new_master"] = new.get("master")
            gone_pids = ev.pop("old", None) or (old_ids if method.crit == "worker" else [old_master])
            gone = probe(target, "gone", ",".join(str(p) for p in gone_pids if p), GONE_TIMEOUT)
            ev["t_gone"] = gone.get("t")
            ev["left"] = gone.get("left")
            if new.get("master"):
                old_master = new["master"]
            ev["i"] = i + 1
            result["reloads"].append(ev)
            status = "ok" if ev["rc"] == 0 and ev["t_new"] else "FAILED rc=%s %s" % (ev["rc"], ev.get("out", "")[-120:])
            log("  reload %d/%d: %s, new generation serving after %s ms" % (
                i + 1, cfg.reloads, status, "%.0f" % ((ev["t_new"] - ev["t0"]) * 1000) if ev["t_new"] else "-"))
            time.sleep(cfg.pause)
        if getattr(method, "quiet", False) and not cfg.short and result["reloads"]:
            # The server's own floor: the same load for as long as the reloads took, no reload
            # (the last old generation is gone by now), so a gap reads as "reload adds X ms".
            q0 = time.time()
            load_end = float(read_text(os.path.join(outdir, "started")) or q0) + load_max - cfg.cooldown - 1
            time.sleep(max(0.0, min(q0 - result["reloads"][0]["t0"], load_end - q0)))
            result["quiet_window"] = [q0, time.time()]
        time.sleep(cfg.cooldown)
    finally:
        os.sched_setaffinity(0, driver_cpus)
        if load:
            open(os.path.join(outdir, "stop"), "w").close()
            try:
                load.p.wait(60)
            except subprocess.TimeoutExpired:
                pass
            load.stop(signal.SIGINT, timeout=5)
        try:
            result["handoff_ms"] = method.handoff_ms()
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            result["handoff_error"] = str(e)
        method.teardown()
        if getattr(method, "journal", None):
            with open(os.path.join(outdir, "journal.txt"), "w") as f:
                f.write(method.journal)
    result["seconds"] = time.time() - started
    result.update(analyze_deploy(outdir, result, method.crit))
    log("  %s: %d requests, %d failed, longest gap %.0f ms" % (method.name, result["requests"], result["failed"], result["gap_ms"]))
    return result


# ----- analysis of one deploy run ----------------------------------------------------------------


def pct(values, p):
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def parse_wrk(text):
    out = {"requests": 0, "errors": {}}
    m = re.search(r"(\d+) requests in", text)
    if m:
        out["requests"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        for k, v in zip(["refused", "reset", "reset", "timeout"], m.groups()):
            out["errors"][k] = out["errors"].get(k, 0) + int(v)
    # "N requests" counts responses (non-2xx included); socket errors are attempts on top.
    out["requests"] += sum(out["errors"].values())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        out["errors"]["5xx"] = int(m.group(1))
    return out


def classify_message(msg):
    m = msg.lower()
    if "refused" in m or "no such file" in m:
        return "refused"
    if "reset" in m or "broken pipe" in m or "eof" in m:
        return "reset"
    if "timeout" in m or "deadline" in m:
        return "timeout"
    return "other"


def parse_hey(text):
    out = {"requests": 0, "errors": {}}
    for m in re.finditer(r"\[(\d{3})\]\s+(\d+) responses", text):
        code, n = int(m.group(1)), int(m.group(2))
        out["requests"] += n
        if code >= 500:
            out["errors"]["5xx"] = out["errors"].get("5xx", 0) + n
        elif code >= 400:
            out["errors"]["other"] = out["errors"].get("other", 0) + n
    if "Error distribution" in text:
        for m in re.finditer(r"^\s*\[(\d+)\]\s+(.*)$", text.split("Error distribution:", 1)[1], re.M):
            k = classify_message(m.group(2))
            out["errors"][k] = out["errors"].get(k, 0) + int(m.group(1))
            out["requests"] += int(m.group(1))
    return out


def read_requests(path):
    rows = []
    try:
        with open(path) as f:
            for r in csv.DictReader(f):
                # wait_ms: the recorder thread's own wait for a CPU since its previous request
                # ended (empty where the kernel keeps no run_delay, or from an older loadrec).
                wait = r.get("wait_ms")
                rows.append((float(r["start"]), float(r["latency_ms"]), r["outcome"], int(r["spec"]),
                             r["reused"] == "1", int(r["worker"]), int(r["master"]),
                             float(wait) if wait else None))
    except OSError:
        pass
    rows.sort(key=lambda r: r[:7])
    return rows


def outcome_class(outcome):
    if outcome.isdigit():
        code = int(outcome)
        return "ok" if code < 400 else ("5xx" if code >= 500 else "other")
    return {"eof": "reset", "noent": "refused", "error": "other"}.get(outcome, outcome)


def read_text(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def load_problems(outdir, rows, wrk, hey):
    """Why the load of a deploy run does not count: a generator that printed no report (missing
    or crashed: its 0 errors would mean nothing), stopped before the reloads ended, exited
    non-zero, or made no request at all. bench/lib/load.sh writes NAME.alive and NAME.rc."""
    problems = []
    texts = {"wrk": read_text(os.path.join(outdir, "wrk.txt")), "hey": read_text(os.path.join(outdir, "hey.txt"))}
    if not texts["wrk"] or not re.search(r"\d+ requests in", texts["wrk"]):
        problems.append("wrk printed no report (missing or crashed): %r" % (texts["wrk"] or "")[-200:])
    if not texts["hey"] or "Summary:" not in texts["hey"]:
        problems.append("hey printed no report (missing or crashed): %r" % (texts["hey"] or "")[-200:])
    for name in ("wrk", "hey"):
        alive = (read_text(os.path.join(outdir, name + ".alive")) or "").strip()
        if alive != "1":
            problems.append("%s was not running when the reloads ended (%s)" % (name, "stopped early" if alive == "0" else "no record"))
    for name in ("wrk", "hey", "loadrec"):
        rc = (read_text(os.path.join(outdir, name + ".rc")) or "").strip()
        if rc != "0":
            problems.append("%s exited %s" % (name, rc or "with no recorded status"))
    for name, n in (("loadrec", len(rows)), ("wrk", wrk["requests"]), ("hey", hey["requests"])):
        if n == 0:
            problems.append("%s made no request" % name)
    return problems


def longest_gap(done, t0, t1):
    """The longest time in [t0, t1] with no completion in `done` (sorted), and where it was."""
    points = [t0] + [t for t in done if t0 <= t <= t1] + [t1]
    if len(points) < 2:
        return None, (None, None)
    a, b = max(zip(points, points[1:]), key=lambda p: p[1] - p[0])
    return (b - a) * 1000.0, (a, b)


def gap_place(rows, specs, reloads, a, b):
    """Where the gap [a, b] fell in its reload: ms after the reload command; the phase (boot:
    before the new generation answered its first request on this transport; overlap: both
    generations answering; drain: the old one answered its last); and which generation the
    requests in flight across the whole gap were waiting on (old, new); and, where a completion
    ended the gap (not the window's end), how long the recorder thread that completed it had
    itself waited for a CPU since its previous request ended (client_wait_ms: at most the
    client's part of the gap, when it shares a CPU with the load generators)."""
    ev = max((e for e in reloads if e["t0"] <= b), key=lambda e: e["t0"], default=None)
    if not ev:
        return None
    new = ev.get("new_master")
    mine = [r for r in rows if r[3] in specs and outcome_class(r[2]) == "ok" and r[0] + r[1] / 1000.0 >= ev["t0"]]
    new_first = min((r[0] + r[1] / 1000.0 for r in mine if r[6] == new), default=None)
    old_last = max((r[0] + r[1] / 1000.0 for r in mine if r[6] != new and r[0] < (ev.get("t_gone") or b)), default=None)
    if new_first is None or a < new_first:
        phase = "boot"
    elif old_last is not None and a < old_last:
        phase = "overlap"
    else:
        phase = "drain"
    waiting = sorted({"new" if r[6] == new else "old" for r in rows
                      if r[3] in specs and r[0] <= a and r[0] + r[1] / 1000.0 >= b})
    ender = next((r for r in rows if r[3] in specs and outcome_class(r[2]) == "ok" and r[0] + r[1] / 1000.0 == b), None)
    return dict(reload=ev.get("i"), offset_ms=(a - ev["t0"]) * 1000.0, phase=phase, waiting=waiting,
                client_wait_ms=ender[7] if ender else None,
                reload_returned_ms=(ev["t1"] - ev["t0"]) * 1000.0 if ev.get("t1") else None)


def analyze_deploy(outdir, result, crit):
    rows = read_requests(os.path.join(outdir, "requests.csv"))
    wrk = parse_wrk(open(os.path.join(outdir, "wrk.txt")).read() if os.path.exists(os.path.join(outdir, "wrk.txt")) else "")
    hey = parse_hey(open(os.path.join(outdir, "hey.txt")).read() if os.path.exists(os.path.join(outdir, "hey.txt")) else "")
    errors = {}
    samples = []
    for r in rows:
        c = outcome_class(r[2])
        if c != "ok":
            errors[c] = errors.get(c, 0) + 1
            if len(samples) < 5:
                samples.append("%s on %s%s" % (r[2], "tcp" if r[3] < 2 else "unix", " (reused keep-alive connection)" if r[4] else ""))
    rec_failed = sum(errors.values())
    for src in (wrk, hey):
        for k, v in src["errors"].items():
            errors[k] = errors.get(k, 0) + v
    failed = sum(errors.values())
    reloads = result["reloads"]
    # Reload windows: from the reload command to the old generation gone (or the new serving).
    windows = []
    for ev in reloads:
        end = max([t for t in (ev.get("t1"), ev.get("t_new"), ev.get("t_gone")) if t] or [ev["t0"]])
        windows.append((ev["t0"], max(end, ev["t0"] + 0.2)))
    first = reloads[0]["t0"] if reloads else None
    last = windows[-1][1] if windows else None
    load_start = float(open(os.path.join(outdir, "started")).read()) if os.path.exists(os.path.join(outdir, "started")) else (rows[0][0] if rows else 0)
    steady, during = [], []
    wi = 0
    for r in rows:
        if outcome_class(r[2]) != "ok":
            continue
        t, lat = r[0], r[1]
        if first and load_start + 0.5 <= t < first:
            steady.append(lat)
        elif windows:
            end = t + lat / 1000.0
            while wi < len(windows) and windows[wi][1] < t:
                wi += 1
            if wi < len(windows) and end >= windows[wi][0] and t <= windows[wi][1]:
                during.append(lat)
    # Longest gap with no completed request, per transport, over the reload phase, and where it
    # fell; the same over the no-reload window of as long, if the method had one.
    gaps, gap_at = {}, {}
    quiet = result.get("quiet_window")
    quiet_gaps = {}
    if first:
        for transport, specs in (("tcp", (0, 1)), ("unix", (2, 3))):
            if not any(r[3] in specs for r in rows):
                continue
            done = sorted(r[0] + r[1] / 1000.0 for r in rows if r[3] in specs and outcome_class(r[2]) == "ok")
            gap, (a, b) = longest_gap(done, first, last)
            gaps[transport] = gap
            if gap is not None:
                gap_at[transport] = gap_place(rows, specs, reloads, a, b)
            if quiet:
                quiet_gaps[transport] = longest_gap(done, quiet[0], quiet[1])[0]
    # Time from each reload to the first request answered by the new generation (clients' view).
    to_new = []
    seen = set()
    idx = 0
    key = 5 if crit == "worker" else 6
    for ev in reloads:
        if crit == "none":
            # No new generation: the method's own end (a reexec's answer).
            ev["to_new_ms"] = (ev["t_new"] - ev["t0"]) * 1000.0 if ev.get("t_new") else None
            if ev["to_new_ms"] is not None:
                to_new.append(ev["to_new_ms"])
            continue
        while idx < len(rows) and rows[idx][0] < ev["t0"]:
            if outcome_class(rows[idx][2]) == "ok":
                seen.add(rows[idx][key])
            idx += 1
        j = idx
        found = None
        while j < len(rows) and rows[j][0] < ev["t0"] + 120:
            r = rows[j]
            if outcome_class(r[2]) == "ok" and r[key] not in seen and r[key]:
                found = r[0] + r[1] / 1000.0
                break
            j += 1
        if found is None and ev.get("t_new"):
            found = ev["t_new"]
        ev["to_new_ms"] = (found - ev["t0"]) * 1000.0 if found else None
        if found:
            to_new.append(ev["to_new_ms"])
    quiet_lat = [r[1] for r in rows if quiet and quiet[0] <= r[0] < quiet[1] and outcome_class(r[2]) == "ok"]
    duration = (rows[-1][0] - rows[0][0]) if rows else 0
    ok_reloads = sum(1 for ev in reloads if ev["rc"] == 0 and ev.get("t_new"))
    return dict(
        problems=load_problems(outdir, rows, wrk, hey) + [
            "reload %d: old generation still alive %s s after the reload: pids %s" % (ev.get("i", 0), GONE_TIMEOUT, ev["left"])
            for ev in reloads if ev.get("left")],
        requests=len(rows) + wrk["requests"] + hey["requests"],
        recorded=len(rows), wrk_requests=wrk["requests"], hey_requests=hey["requests"],
        rps=(wrk["requests"] + hey["requests"] + len(rows)) / duration if duration else 0,
        failed=failed, errors=errors, recorder_failed=rec_failed, error_samples=samples,
        steady=dict(n=len(steady), p50=pct(steady, 50), p99=pct(steady, 99), max=max(steady) if steady else None),
        during=dict(n=len(during), p50=pct(during, 50), p99=pct(during, 99), max=max(during) if during else None),
        gaps=gaps, gap_ms=max([g for g in gaps.values() if g is not None] or [0]), gap_at=gap_at,
        quiet=dict(seconds=quiet[1] - quiet[0], gaps=quiet_gaps,
                   gap_ms=max([g for g in quiet_gaps.values() if g is not None] or [0]),
                   p50=pct(quiet_lat, 50), p99=pct(quiet_lat, 99), max=max(quiet_lat) if quiet_lat else None) if quiet else None,
        to_new=dict(p50=pct(to_new, 50), max=max(to_new) if to_new else None, n=len(to_new)),
        reloads_ok=ok_reloads, load_start=load_start,
    )


# ----- 2. overhead ---------------------------------------------------------------------------------


def run_wrk(addr, seconds, conns=8):
    r = sh(["wrk", "-t1", "-c%d" % conns, "-d%ds" % seconds, "--timeout", "10s", "--latency", "http://%s/" % addr], timeout=seconds + 30)
    return parse_wrk_latency(r.stdout)


def parse_wrk_latency(text):
    out = {"rps": 0.0, "p50": None, "p99": None, "errors": 0}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        out["rps"] = float(m.group(1))

    def ms(s):
        v, unit = float(re.match(r"([\d.]+)", s).group(1)), re.sub(r"[\d.]", "", s)
        return v * {"us": 0.001, "ms": 1.0, "s": 1000.0}.get(unit, 1.0)
    for p, k in (("50%", "p50"), ("99%", "p99")):
        m = re.search(r"^\s+%s\s+(\S+)" % re.escape(p), text, re.M)
        if m:
            out[k] = ms(m.group(1))
    w = parse_wrk(text)
    out["errors"] = sum(w["errors"].values())
    return out


def run_wrk_pair(addr_a, addr_b, seconds, conns=8):
    """wrk on two servers at the same time; [result a, result b]."""
    procs = [subprocess.Popen(["wrk", "-t1", "-c%d" % conns, "-d%ds" % seconds, "--timeout", "10s", "--latency", "http://%s/" % a],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for a in (addr_a, addr_b)]
    out = []
    for p in procs:
        text, _ = p.communicate(timeout=seconds + 30)
        out.append(parse_wrk_latency(text))
    return out


def measure_boot(server, outdir, samples):
    """The app's own boot time, no launcher: exec to the first 200 (polling every 5 ms)."""
    times = []
    for i in range(samples):
        tcp = "127.0.0.1:%d" % free_port()
        argv, env = server_cmd(server, selfbind=(tcp, None))
        t0 = time.time()
        p = Proc(argv, outdir, "boot-%s-%d" % (server, i), cwd=APP_DIR, env=dict(os.environ, **env))
        ok = wait_until(lambda: http_ok(tcp, timeout=30), 60, step=0.005)
        t1 = time.time()
        p.stop(signal.SIGQUIT if server == "unicorn" else signal.SIGTERM)
        if ok:
            times.append((t1 - t0) * 1000.0)
    return times


def run_overhead(cfg, outroot):
    outdir = os.path.join(outroot, "overhead")
    os.makedirs(outdir, exist_ok=True)
    results = []
    for server in SERVERS:
        if (server == "gunicorn" and not GUNICORN_PY) or (server != "gunicorn" and not have(server)):
            results.append(dict(server=server, skipped="%s not installed" % server))
            continue
        log("overhead: %s with and without sockherd, %d interleaved pairs of %d s" % (server, cfg.pairs, cfg.pair_seconds))
        a_tcp = "127.0.0.1:%d" % free_port()
        b_tcp = "127.0.0.1:%d" % free_port()
        argv, env = server_cmd(server)
        with_ = Proc([SOCKHERD, "run", "--flavor", server, "--listen", a_tcp, "--chdir", APP_DIR, "--"] + argv,
                     outdir, "with-" + server, env=dict(os.environ, **env))
        argv_b, env_b = server_cmd(server, selfbind=(b_tcp, None))
        without = Proc(argv_b, outdir, "without-" + server, cwd=APP_DIR, env=dict(os.environ, **env_b))
        # The same under sockherd with a readiness that adds no socket (`delay:2`): the default
        # `probe` hands each generation one more listening socket, and a server may take another
        # code path with two listeners than with one (gunicorn's sync worker does).
        c_tcp = "127.0.0.1:%d" % free_port()
        noprobe = Proc([SOCKHERD, "run", "--flavor", server, "--ready", "delay:2", "--listen", c_tcp, "--chdir", APP_DIR, "--"] + argv,
                       outdir, "with-noprobe-" + server, env=dict(os.environ, **env))
        res = dict(server=server, pairs=[])
        try:
            if not (wait_until(lambda: http_ok(a_tcp), 60) and wait_until(lambda: http_ok(b_tcp), 60) and wait_until(lambda: http_ok(c_tcp), 60)
                    and wait_serving(with_.pid, 60) and wait_serving(noprobe.pid, 60)):
                raise RuntimeError("a server did not come up")
            run_wrk(a_tcp, 1)  # warm both
            run_wrk(b_tcp, 1)
            for i in range(cfg.pairs):
                order = [("with", a_tcp), ("without", b_tcp)]
                if i % 2:
                    order.reverse()  # ABBA: neither side always runs first
                pair = {}
                for side, addr in order:
                    pair[side] = run_wrk(addr, cfg.pair_seconds)
                pair["ratio"] = pair["with"]["rps"] / pair["without"]["rps"] if pair["without"]["rps"] else None
                # The same, both at once: two wrk side by side, so whatever else the machine does
                # hits both sides alike; the servers share the 2 cores, and a launcher in the
                # request path would show as the side that gets fewer requests through.
                both = run_wrk_pair(a_tcp, b_tcp, cfg.pair_seconds)
                pair["both"] = both
                pair["ratio_both"] = both[0]["rps"] / both[1]["rps"] if both[1]["rps"] else None
                np = run_wrk_pair(c_tcp, b_tcp, cfg.pair_seconds)
                pair["ratio_noprobe"] = np[0]["rps"] / np[1]["rps"] if np[1]["rps"] else None
                res["pairs"].append(pair)
                log("  pair %d: with %.0f req/s, without %.0f req/s, ratio %.3f; at once %.0f vs %.0f, ratio %.3f; no probe socket, at once: %.3f" % (
                    i + 1, pair["with"]["rps"], pair["without"]["rps"], pair["ratio"] or 0, both[0]["rps"], both[1]["rps"], pair["ratio_both"] or 0, pair["ratio_noprobe"] or 0))
            ratios = [p["ratio"] for p in res["pairs"] if p["ratio"]]
            res["ratio_median"] = statistics.median(ratios) if ratios else None
            res["ratio_min"], res["ratio_max"] = (min(ratios), max(ratios)) if ratios else (None, None)
            ratios = [p["ratio_both"] for p in res["pairs"] if p["ratio_both"]]
            res["ratio_both_median"] = statistics.median(ratios) if ratios else None
            res["ratio_both_min"], res["ratio_both_max"] = (min(ratios), max(ratios)) if ratios else (None, None)
            ratios = [p["ratio_noprobe"] for p in res["pairs"] if p["ratio_noprobe"]]
            res["ratio_noprobe_median"] = statistics.median(ratios) if ratios else None
            res["ratio_noprobe_min"], res["ratio_noprobe_max"] = (min(ratios), max(ratios)) if ratios else (None, None)
            for side in ("with", "without"):
                res[side] = dict(rps=statistics.median([p[side]["rps"] for p in res["pairs"]]),
                                 p50=statistics.median([p[side]["p50"] or 0 for p in res["pairs"]]),
                                 p99=statistics.median([p[side]["p99"] or 0 for p in res["pairs"]]),
                                 errors=sum(p[side]["errors"] for p in res["pairs"]))
            # Handoff vs the app's own boot, idle: sockherd's handoff time for a reload of this
            # server, against the time the same server takes from exec to its first answer.
            took = []
            res["failed_reloads"] = 0
            for _ in range(cfg.boot_samples):
                r = sh([SOCKHERD, "reload", "--pid", str(with_.pid), "--timeout", "120s"], timeout=130)
                st = sockherd_status(with_.pid)
                if r.returncode != 0:
                    res["failed_reloads"] += 1
                    res.setdefault("reload_errors", []).append(r.stderr.strip()[-200:])
                if r.returncode == 0 and st and st.get("last_reload"):
                    took.append(handoff_times(st["last_reload"].get("message"), st["last_reload"]["took_ms"])[0])
                wait_until(lambda: (sockherd_status(with_.pid) or {}).get("generations", [None, None]).__len__() == 1, 40, step=0.05)
            res["handoff_ms"] = took
        finally:
            with_.stop(signal.SIGTERM)
            noprobe.stop(signal.SIGTERM)
            without.stop(signal.SIGQUIT if server == "unicorn" else signal.SIGTERM)
        res["boot_ms"] = measure_boot(server, outdir, cfg.boot_samples)
        if res["handoff_ms"] and res["boot_ms"]:
            res["handoff_overhead_ms"] = statistics.median(res["handoff_ms"]) - statistics.median(res["boot_ms"])
        log("  %s: ratio %s, handoff %s ms vs boot %s ms" % (server, fmt(res.get("ratio_median"), 3),
                                                           fmt(med(res["handoff_ms"])), fmt(med(res["boot_ms"]))))
        results.append(res)
    return results


def med(v):
    return statistics.median(v) if v else None


def fmt(v, digits=0, unit=""):
    if v is None:
        return "-"
    return ("%." + str(digits) + "f%s") % (v, unit)


# ----- 3. footprint --------------------------------------------------------------------------------


def run_footprint(cfg, outroot):
    outdir = os.path.join(outroot, "footprint")
    os.makedirs(outdir, exist_ok=True)
    launchers = []
    procs = []
    try:
        if GUNICORN_PY:
            tcp = "127.0.0.1:%d" % free_port()
            argv, _ = server_cmd("gunicorn")
            p = Proc([SOCKHERD, "run", "--flavor", "gunicorn", "--listen", tcp, "--chdir", APP_DIR, "--"] + argv, outdir, "sockherd-gunicorn")
            procs.append(p)
            launchers.append(dict(name="sockherd (gunicorn)", proc=p, tcp=tcp, reload=lambda p=p: sh([SOCKHERD, "reload", "--pid", str(p.pid)], timeout=130)))
        if have("starman"):
            tcp = "127.0.0.1:%d" % free_port()
            argv, _ = server_cmd("starman")
            p = Proc([SOCKHERD, "run", "--flavor", "server-starter", "--stop-signal", "QUIT", "--listen", tcp, "--chdir", APP_DIR, "--"] + argv, outdir, "sockherd-starman")
            procs.append(p)
            launchers.append(dict(name="sockherd (starman)", proc=p, tcp=tcp, reload=lambda p=p: sh([SOCKHERD, "reload", "--pid", str(p.pid)], timeout=130)))
        if have("start_server") and have("starman"):
            tcp = "127.0.0.1:%d" % free_port()
            argv, _ = server_cmd("starman")
            p = Proc(["start_server", "--port", tcp, "--signal-on-hup=QUIT", "--signal-on-term=QUIT", "--"] + argv, outdir, "start_server", cwd=APP_DIR)
            procs.append(p)
            launchers.append(dict(name="start_server (starman)", proc=p, tcp=tcp, reload=lambda p=p: p.send(signal.SIGHUP)))
        else:
            launchers.append(dict(name="start_server (starman)", skipped="start_server or starman not installed"))
        if have("rainbow-saddle") and GUNICORN_PY:
            tcp = "127.0.0.1:%d" % free_port()
            argv, _ = server_cmd("gunicorn", selfbind=(tcp, None))
            p = Proc([shutil.which("rainbow-saddle"), "--pid", os.path.join(outdir, "rs.pid"), "--gunicorn-pidfile",
                      os.path.join(outdir, "rs-gunicorn.pid")] + argv, outdir, "rainbow-saddle", cwd=APP_DIR)
            procs.append(p)
            launchers.append(dict(name="rainbow-saddle (gunicorn)", proc=p, tcp=tcp, reload=lambda p=p: p.send(signal.SIGHUP)))
        else:
            launchers.append(dict(name="rainbow-saddle (gunicorn)", skipped="rainbow-saddle not installed (pip install rainbow-saddle)"))
        live = [l for l in launchers if "proc" in l]
        for l in live:
            if not wait_until(lambda: http_ok(l["tcp"]), 60):
                l["skipped"] = "did not serve within 60 s"
            elif l["name"].startswith("sockherd") and not wait_serving(l["proc"].pid, 60):
                l["skipped"] = "generation 1 not ready within 60 s"
        live = [l for l in live if "skipped" not in l]
        # Two reloads each, so the footprint is that of a launcher that has worked, then quiet.
        for _ in range(2):
            for l in live:
                r = l["reload"]()
                # sockherd's reloads are `sockherd reload` runs: each must succeed.
                if r is not None and r.returncode != 0:
                    l["failed_reloads"] = l.get("failed_reloads", 0) + 1
                    l.setdefault("reload_errors", []).append(r.stderr.strip()[-200:])
            time.sleep(3)
        time.sleep(3)
        log("footprint: %d launchers idle for %d s, side by side" % (len(live), cfg.idle))
        before = {l["name"]: (schedstat(l["proc"].pid), ctxt(l["proc"].pid)) for l in live}
        time.sleep(cfg.idle)
        for l in live:
            pid = l["proc"].pid
            (cpu0, n0), (v0, nv0) = before[l["name"]]
            cpu1, n1 = schedstat(pid)
            v1, nv1 = ctxt(pid)
            st = proc_status(pid)
            l.update(pid=pid, rss_kib=kib(pid, "VmRSS"), hwm_kib=kib(pid, "VmHWM"), anon_kib=kib(pid, "RssAnon"),
                     file_kib=kib(pid, "RssFile"), threads=int(st.get("Threads", 0)),
                     cpu_ms=(cpu1 - cpu0) / 1e6, wakeups=n1 - n0, ctxt=(v1 - v0) + (nv1 - nv0), fds=fd_count(pid))
            log("  %s: RSS %d KiB, CPU %.1f ms, %d wakeups in %d s" % (l["name"], l["rss_kib"], l["cpu_ms"], l["wakeups"], cfg.idle))
    finally:
        for p in procs:
            p.stop(signal.SIGTERM)
    sizes = {}
    sizes["sockherd"] = (os.path.getsize(SOCKHERD), "static-ish Rust binary (stripped, libc only)")
    ss = shutil.which("start_server")
    if ss:
        pm = "/usr/share/perl5/Server/Starter.pm"
        sizes["start_server"] = (os.path.getsize(ss) + (os.path.getsize(pm) if os.path.exists(pm) else 0),
                                 "Perl script + Server/Starter.pm; needs perl")
    try:
        import importlib.util
        spec = importlib.util.find_spec("rainbowsaddle")
        if spec and spec.origin:
            sizes["rainbow-saddle"] = (os.path.getsize(spec.origin), "Python module; needs python3 + psutil")
    except ImportError:
        pass
    return dict(launchers=[{k: v for k, v in l.items() if k not in ("proc", "reload")} for l in launchers], sizes=sizes, idle=cfg.idle)


# ----- 4. scale ----------------------------------------------------------------------------------


def run_scale(cfg, outroot):
    outdir = os.path.join(outroot, "scale")
    os.makedirs(outdir, exist_ok=True)
    rows = []
    if not have("unicorn"):
        return dict(skipped="unicorn not installed", rows=[])
    for sockets, workers in cfg.scale_grid:
        log("scale: unicorn, %d sockets, %d workers, %d reloads" % (sockets, workers, cfg.scale_reloads))
        argv = [SOCKHERD, "run", "--flavor", "unicorn"]
        for _ in range(sockets):
            argv += ["--listen", "127.0.0.1:0"]
        argv += ["--chdir", APP_DIR, "--", "unicorn", "-c", os.path.join(BENCH, "apps/unicorn-scale.rb"), "config.ru"]
        p = Proc(argv, outdir, "scale-%d-%d" % (sockets, workers), env=dict(os.environ, BENCH_WORKERS=str(workers)))
        row = dict(sockets=sockets, workers=workers, took=[], cpu_us=[], failed=0)
        try:
            if not wait_until(lambda: (sockherd_status(p.pid) or {}).get("state") == "running"
                              and any(g["state"] == "serving" for g in (sockherd_status(p.pid) or {}).get("generations", [])), 90, step=0.1):
                raise RuntimeError("did not start")
            # wait for all workers
            time.sleep(0.5 + workers * 0.02)
            for _ in range(cfg.scale_reloads):
                # The old generation's pids, read before the measured window: while it runs, the
                # driver asks sockherd nothing (`sockherd status` walks /proc and would be counted).
                old = [g["pid"] for g in (sockherd_status(p.pid) or {}).get("generations", [])]
                time.sleep(0.2)
                cpu0 = schedstat(p.pid)[0]
                r = sh([SOCKHERD, "reload", "--pid", str(p.pid), "--timeout", "120s"], timeout=130)
                # the whole handoff: until the old master and every process of its group are gone
                wait_until(lambda: not any(os.path.exists("/proc/%d" % q) for q in old + [c for o in old for c in group_members(o)]), 60, step=0.05)
                time.sleep(0.3)  # sockherd notices the group is empty within 100 ms
                row["cpu_us"].append((schedstat(p.pid)[0] - cpu0) / 1000.0)
                st = sockherd_status(p.pid)
                if r.returncode != 0:
                    row["failed"] += 1
                elif st and st.get("last_reload"):
                    ready, whole = handoff_times(st["last_reload"].get("message"), st["last_reload"]["took_ms"])
                    row["took"].append(ready)
                    row.setdefault("whole", []).append(whole)
            row["rss_kib"] = kib(p.pid, "VmRSS")
        except Exception as e:  # noqa: BLE001
            row["error"] = str(e)
        finally:
            p.stop(signal.SIGTERM)
        log("  handoff %s ms, sockherd CPU %s us per reload" % (fmt(med(row["took"])), fmt(med(row["cpu_us"]))))
        rows.append(row)
    return dict(rows=rows, reloads=cfg.scale_reloads)


def delegated_cgroup(tag):
    """A cgroup of our own on the host's cgroup2 tree, marked delegated the way systemd marks a
    `Delegate=yes` unit's (the `trusted.delegate` xattr), so that a sockherd started in it runs
    its generations as cgroups. (path, None), or (None, why not)."""
    root = "/sys/fs/cgroup" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "/sys/fs/cgroup/unified"
    if os.geteuid() != 0:
        return None, "needs root (to create a cgroup and mark it delegated)"
    if not os.path.exists(os.path.join(root, "cgroup.procs")):
        return None, "no cgroup2 hierarchy"
    path = os.path.join(root, "sockherd-bench-%d-%s" % (os.getpid(), tag))
    os.mkdir(path)
    try:
        os.setxattr(path, "trusted.delegate", b"1")
    except OSError as e:
        os.rmdir(path)
        return None, "cannot mark %s delegated: %s" % (path, e)
    return path, None


def remove_cgroup(path):
    """Kills what is left in a cgroup this benchmark created, then removes it and its children."""
    if not path or not os.path.isdir(path):
        return
    for dirpath, dirnames, _ in os.walk(path, topdown=False):
        try:
            with open(os.path.join(dirpath, "cgroup.kill"), "w") as f:
                f.write("1")
        except OSError:
            pass
        wait_until(lambda: "populated 0" in read_text(os.path.join(dirpath, "cgroup.events")), 10, step=0.05)
        try:
            os.rmdir(dirpath)
        except OSError as e:
            log("  could not remove cgroup %s: %s" % (dirpath, e))


def in_cgroup(path, argv):
    """argv started inside cgroup `path` (the shell moves itself there, then execs argv)."""
    return ["sh", "-c", 'echo $$ >"$0/cgroup.procs" && exec "$@"', path] + argv


def run_membership(cfg, outroot):
    """sockherd's CPU per handoff and its wakeups, generations as cgroups against process groups,
    in one run: unicorn with 32 workers on the host, with and without 2,000 extra idle processes
    (process-group mode reads /proc of every process while a drain lasts); its wakeups while idle,
    and during a reload whose old generation holds the sockets 2 s after its stop signal."""
    outdir = os.path.join(outroot, "membership")
    os.makedirs(outdir, exist_ok=True)
    if not have("unicorn"):
        return dict(skipped="unicorn not installed", rows=[])
    probe_cg, why = delegated_cgroup("probe")
    if not probe_cg:
        return dict(skipped=why, rows=[])
    remove_cgroup(probe_cg)
    rows, drains, idle_procs = [], [], []
    try:
        for extra in (0, cfg.membership_extra):
            if extra and not idle_procs:
                log("membership: starting %d idle processes" % extra)
                idle_procs = [subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL) for _ in range(extra)]
            for mode in ("cgroup", "process-group"):
                rows.append(membership_cell(cfg, outdir, mode, extra))
    finally:
        for p in idle_procs:
            p.kill()
        for p in idle_procs:
            p.wait()
    for mode in ("cgroup", "process-group"):
        drains.append(membership_drain(cfg, outdir, mode))
    return dict(rows=rows, drains=drains, reloads=cfg.membership_reloads, idle_s=cfg.membership_idle,
                workers=32, extra=cfg.membership_extra)


def membership_cell(cfg, outdir, mode, extra):
    tag = "%s-%d" % (mode, extra)
    log("membership: unicorn, 32 workers, generations as %s, %d extra processes, %d reloads" % (mode, extra, cfg.membership_reloads))
    row = dict(mode=mode, extra=extra, cpu_us=[], took=[], failed=0)
    cg = None
    argv = [SOCKHERD, "run", "--flavor", "unicorn", "--listen", "127.0.0.1:0", "--chdir", APP_DIR, "--",
            "unicorn", "-c", os.path.join(BENCH, "apps/unicorn-scale.rb"), "config.ru"]
    if mode == "cgroup":
        cg, why = delegated_cgroup(tag)
        if not cg:
            row["error"] = why
            return row
        argv = in_cgroup(cg, argv)
    p = Proc(argv, outdir, "membership-" + tag, env=dict(os.environ, BENCH_WORKERS="32"))
    try:
        if not wait_until(lambda: any(g["state"] == "serving" for g in (sockherd_status(p.pid) or {}).get("generations", [])), 90, step=0.1):
            raise RuntimeError("did not start")
        st = sockherd_status(p.pid) or {}
        row["mechanism"] = (st.get("membership") or {}).get("mode", "?")
        if row["mechanism"] != mode:
            raise RuntimeError("sockherd runs generations as %s, not %s: %s" % (row["mechanism"], mode, (st.get("membership") or {}).get("describe")))
        time.sleep(1.5)  # every worker forked
        v0 = ctxt(p.pid)[0]
        time.sleep(cfg.membership_idle)
        row["idle_wakeups"] = ctxt(p.pid)[0] - v0
        for _ in range(cfg.membership_reloads):
            old = [g for g in (sockherd_status(p.pid) or {}).get("generations", [])]
            old_pids = [g["pid"] for g in old]
            old_cgroups = [g.get("cgroup") for g in old if g.get("cgroup")]
            time.sleep(0.2)
            cpu0 = schedstat(p.pid)[0]
            r = sh([SOCKHERD, "reload", "--pid", str(p.pid), "--timeout", "120s"], timeout=130)
            if mode == "cgroup":
                wait_until(lambda: not any(os.path.exists(c) for c in old_cgroups), 60, step=0.05)
            else:
                wait_until(lambda: not any(os.path.exists("/proc/%d" % q) for q in old_pids + [c for o in old_pids for c in group_members(o)]), 60, step=0.05)
            time.sleep(0.3)
            row["cpu_us"].append((schedstat(p.pid)[0] - cpu0) / 1000.0)
            st = sockherd_status(p.pid)
            if r.returncode != 0:
                row["failed"] += 1
            elif st and st.get("last_reload"):
                row["took"].append(st["last_reload"]["took_ms"])
    except Exception as e:  # noqa: BLE001
        row["error"] = str(e)
    finally:
        p.stop(signal.SIGTERM)
        remove_cgroup(cg)
    log("  sockherd CPU %s us per handoff, %s wakeups idle in %d s" % (fmt(med(row["cpu_us"])), row.get("idle_wakeups"), cfg.membership_idle))
    return row


def membership_drain(cfg, outdir, mode):
    """sockherd's wakeups during one reload whose old generation keeps the sockets 2 s after its
    stop signal (tests/support/scenario_server.py, hold-after-term:2)."""
    log("membership: wakeups during a 2 s drain, generations as %s" % mode)
    row = dict(mode=mode)
    release = os.path.join(outdir, "drain-release-" + mode)
    os.makedirs(release, exist_ok=True)
    for name, text in (("RELEASE", "r1"), ("BEHAVIOR", "hold-after-term:2")):
        with open(os.path.join(release, name), "w") as f:
            f.write(text + "\n")
    argv = [SOCKHERD, "run", "--listen", "127.0.0.1:0", "--chdir", release, "--",
            sys.executable, os.path.join(ROOT, "tests/support/scenario_server.py")]
    cg = None
    if mode == "cgroup":
        cg, why = delegated_cgroup("drain")
        if not cg:
            row["error"] = why
            return row
        argv = in_cgroup(cg, argv)
    # The old generation's stop signal, as the server records it (nothing asks sockherd, which
    # would wake it): where the drain begins.
    signals = os.path.join(outdir, "drain-signals-" + mode)
    if os.path.exists(signals):
        os.unlink(signals)
    p = Proc(argv, outdir, "membership-drain-" + mode, env=dict(os.environ, SCENARIO_LOG=signals))
    try:
        if not wait_until(lambda: any(g["state"] == "serving" for g in (sockherd_status(p.pid) or {}).get("generations", [])), 60, step=0.1):
            raise RuntimeError("did not start")
        time.sleep(0.5)
        v0 = ctxt(p.pid)[0]
        t0 = time.monotonic()
        reload = subprocess.Popen([SOCKHERD, "reload", "--pid", str(p.pid), "--timeout", "60s"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def terminated():
            try:
                with open(signals) as f:
                    return " SIGTERM" in f.read()
            except OSError:
                return False
        drain0 = None
        if wait_until(terminated, 60, step=0.002):
            drain0 = (ctxt(p.pid)[0], time.monotonic())
        rc = reload.wait(70)
        v1, t1 = ctxt(p.pid)[0], time.monotonic()
        row["seconds"] = t1 - t0
        row["wakeups"] = v1 - v0
        if drain0:
            row["drain_wakeups"] = v1 - drain0[0]
            row["drain_seconds"] = t1 - drain0[1]
        row["ok"] = rc == 0
    except Exception as e:  # noqa: BLE001
        row["error"] = str(e)
    finally:
        p.stop(signal.SIGTERM)
        remove_cgroup(cg)
    log("  %s wakeups during a %.1f s reload, %s of them in its %.1f s drain" % (
        row.get("wakeups"), row.get("seconds", 0), row.get("drain_wakeups", "?"), row.get("drain_seconds", 0)))
    return row


def run_churn(cfg, outroot):
    """fds and processes of sockherd before and after N reloads of a tiny server, under a light
    recorded load (every request must succeed)."""
    outdir = os.path.join(outroot, "churn")
    os.makedirs(outdir, exist_ok=True)
    tcp = "127.0.0.1:%d" % free_port()
    sock = os.path.join(outdir, "app.sock")
    p = Proc([SOCKHERD, "run", "--listen", tcp, "--listen", sock, "--ready", "probe", "--",
              "/usr/bin/python3", "-S", "-E", os.path.join(BENCH, "apps/tiny.py")], outdir, "sockherd")
    res = dict(reloads=cfg.churn, failed_reloads=0)
    load = None
    try:
        if not (wait_until(lambda: http_ok(tcp), 30) and wait_serving(p.pid, 30)):
            raise RuntimeError("tiny server did not serve")

        def snapshot():
            kids = descendants(p.pid)
            return dict(fds=fd_count(p.pid), processes=1 + len(kids), rss_kib=kib(p.pid, "VmRSS"),
                        threads=int(proc_status(p.pid).get("Threads", 0)),
                        runtime_files=len(os.listdir(os.path.join(os.environ.get("XDG_RUNTIME_DIR", "/tmp"), "sockherd.%d" % p.pid)))
                        if os.path.isdir(os.path.join(os.environ.get("XDG_RUNTIME_DIR", "/tmp"), "sockherd.%d" % p.pid)) else None)
        res["before"] = snapshot()
        load = Proc([LOADREC, "--out", os.path.join(outdir, "requests.csv"), "--stop-file", os.path.join(outdir, "stop"),
                     "--max-seconds", str(cfg.churn * 2 + 120), "tcp:%s/close/1" % tcp, "unix:%s/close/1" % sock], outdir, "loadrec")
        log("churn: %d reloads of a tiny server under a light load" % cfg.churn)
        t0 = time.time()
        cpu0 = schedstat(p.pid)[0]
        for i in range(cfg.churn):
            r = sh([SOCKHERD, "reload", "--pid", str(p.pid), "--timeout", "60s"], timeout=70)
            if r.returncode != 0:
                res["failed_reloads"] += 1
                res.setdefault("reload_errors", []).append(r.stderr.strip()[-200:])
            if (i + 1) % 250 == 0:
                log("  %d reloads" % (i + 1))
        res["seconds"] = time.time() - t0
        res["cpu_us_per_reload"] = (schedstat(p.pid)[0] - cpu0) / 1000.0 / cfg.churn
        wait_until(lambda: len((sockherd_status(p.pid) or {}).get("generations", [1, 2])) == 1 and len(descendants(p.pid)) <= res["before"]["processes"] - 1, 60, step=0.05)
        time.sleep(0.5)
        res["after"] = snapshot()
    finally:
        if load:
            open(os.path.join(outdir, "stop"), "w").close()
            try:
                load.p.wait(30)
            except subprocess.TimeoutExpired:
                pass
            load.stop(signal.SIGINT, timeout=5)
        p.stop(signal.SIGTERM)
    rows = read_requests(os.path.join(outdir, "requests.csv"))
    res["requests"] = len(rows)
    res["failed"] = sum(1 for r in rows if outcome_class(r[2]) != "ok")
    res["error_samples"] = [r[2] for r in rows if outcome_class(r[2]) != "ok"][:5]
    # What sockherd holds must come back to where it was: fds, processes, threads, runtime files.
    before, after = res.get("before") or {}, res.get("after") or {}
    res["leaks"] = ["%s %s -> %s" % (k, before.get(k), after.get(k)) for k in ("fds", "processes", "threads", "runtime_files")
                    if before.get(k) is not None and after.get(k) is not None and after[k] > before[k]]
    if not after:
        res["leaks"].append("no snapshot of sockherd after the reloads")
    log("  churn: before %s, after %s, %d requests, %d failed" % (res.get("before"), res.get("after"), res["requests"], res["failed"]))
    return res


# ----- machine and versions ------------------------------------------------------------------------


def first_line(cmd):
    try:
        r = sh(cmd, timeout=20)
        return (r.stdout or r.stderr).strip().splitlines()[0]
    except Exception:  # noqa: BLE001
        return "not installed"


def dpkg_version(pkg):
    r = sh(["dpkg-query", "-W", "-f=${Version}", pkg], timeout=10)
    return r.stdout.strip() if r.returncode == 0 else "not installed"


def machine_info():
    cpu = "unknown"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = "?"
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal"):
            mem = "%.1f GiB" % (int(line.split()[1]) / 1024 / 1024)
    v254 = "not present"
    if os.path.exists(os.path.join(SYSTEMD_254, "usr/lib/systemd/systemd")):
        v254 = first_line([os.path.join(SYSTEMD_254, "usr/lib/systemd/systemd"), "--version"]) if False else "present at %s" % SYSTEMD_254
        for cand in ["usr/share/doc/systemd/changelog.Debian.gz"]:
            path = os.path.join(SYSTEMD_254, cand)
            if os.path.exists(path):
                r = sh(["bash", "-c", "zcat %s | head -1" % path])
                m = re.search(r"\(([^)]+)\)", r.stdout)
                if m:
                    v254 = "systemd %s (bookworm-backports, unpacked at %s)" % (m.group(1), SYSTEMD_254)
    git = sh(["git", "-C", ROOT, "describe", "--always", "--dirty"], timeout=10).stdout.strip()
    return {
        "nproc": os.cpu_count(), "cpu": cpu, "memory": mem, "kernel": platform.release(),
        "os": first_line(["bash", "-c", ". /etc/os-release; echo $PRETTY_NAME"]),
        "versions": {
            "sockherd": "%s (git %s, release build, %s)" % (first_line([SOCKHERD, "--version"]), git, first_line(["rustc", "--version"])),
            "gunicorn": first_line([GUNICORN_PY, "-m", "gunicorn", "--version"]) + " (PyPI, %s); in the boxes: %s" % (
                GUNICORN_PY, first_line([os.path.join(VENV, "bin/python"), "-m", "gunicorn", "--version"])) if GUNICORN_PY else "not installed",
            "python": first_line([GUNICORN_PY or "python3", "--version"]),
            "unicorn": "%s (Debian %s)" % (first_line(["unicorn", "-v"]), dpkg_version("unicorn")),
            "puma": "%s (Debian %s, ruby-sd-notify %s)" % (first_line(["puma", "--version"]), dpkg_version("puma"), dpkg_version("ruby-sd-notify")),
            "ruby": first_line(["ruby", "--version"]),
            "starman": "Debian %s" % dpkg_version("starman"),
            "Server::Starter (start_server)": "Debian libserver-starter-perl %s" % dpkg_version("libserver-starter-perl"),
            "perl": first_line(["perl", "-e", "print $^V"]),
            "rainbow-saddle": first_line(["bash", "-c", "pip show rainbow-saddle 2>/dev/null | sed -n 's/^Version: //p'"]) or "not installed",
            "wrk": "Debian %s" % dpkg_version("wrk"),
            "hey": "Debian %s" % dpkg_version("hey"),
            "systemd (host, in the boxes)": "Debian %s (not PID 1 on the host; booted in private namespaces)" % dpkg_version("systemd"),
            "systemd 254": v254,
            "matplotlib": first_line([sys.executable, "-c", "import matplotlib; print(matplotlib.__version__)"]),
        },
    }


# ----- main ---------------------------------------------------------------------------------------


class Config:
    def __init__(self, short):
        self.short = short
        self.reloads = 3 if short else 20
        self.steady = 2.0 if short else 4.0
        self.pause = 0.3
        self.cooldown = 1.0 if short else 1.5
        self.load_max = 300 if short else 600
        self.pairs = 2 if short else 6
        self.pair_seconds = 2 if short else 4
        self.boot_samples = 2 if short else 5
        self.idle = 10 if short else 60
        self.scale_grid = [(1, 1), (64, 32)] if short else [(s, w) for s in (1, 8, 64) for w in (1, 8, 32)]
        self.scale_reloads = 2 if short else 5
        self.churn = 50 if short else 1000
        self.membership_reloads = 1 if short else 5
        self.membership_idle = 3 if short else 10
        self.membership_extra = 2000


# CI's short mode: every sockherd method but one. Every server under `sockherd run` on the host,
# in systemd 252 (ExecReload=) and in systemd 254 (notify-reload), and unicorn's native upgrade.
# Not sockherd-host-starman (the server-starter flavor): starman itself now and then drops a
# connection it accepted when its old generation stops, under start_server as under sockherd
# (RESULTS.md), which would fail CI for the server's reason; the flavor is covered by
# tests/dialects.rs (starman under --flavor server-starter: serves, reloads, stops) and
# tests/activation.rs, and its load run by the full benchmark.
SHORT_METHODS = {"sockherd-host-%s" % s for s in SERVERS} | {"sockherd-sd252-%s" % s for s in SERVERS} \
    | {"sockherd-sd254-%s" % s for s in SERVERS} | {"sockherd-native-unicorn"}


def reanalyze(args):
    path = os.path.join(args.reanalyze, "results.json")
    with open(path) as f:
        report = json.load(f)
    for d in report["deploy"]:
        if d.get("reloads") and not d.get("skipped") and not d.get("error"):
            crit = "worker" if d["name"] in ("dance-gunicorn", "dance-puma") else "master"
            if d["name"].startswith("sockherd-reexec-"):
                crit = "none"
            d.update(analyze_deploy(os.path.join(args.reanalyze, d["name"]), d, crit))
    with open(path, "w") as f:
        json.dump(report, f, indent=1, default=str)
    import report as rep
    full = report["mode"] == "full"
    results_path = args.results or (os.path.join(BENCH, "RESULTS.md") if full else os.path.join(args.reanalyze, "RESULTS.md"))
    plot_path = args.plot or (os.path.join(BENCH, "reloads.png") if full else os.path.join(args.reanalyze, "reloads.png"))
    rep.write_plot(report, args.reanalyze, plot_path)
    rep.write_results(report, results_path, os.path.relpath(plot_path, os.path.dirname(results_path)))
    verdict = rep.zero_failure_verdict(report, strict_mode(report["mode"] == "short"))
    for line in verdict["lines"]:
        log(line)
    log("report: %s; plot: %s" % (results_path, plot_path))
    return 0 if verdict["ok"] else 1


def strict_mode(short):
    """--short (CI) and SOCKHERD_TEST_REQUIRE=1 fail the run on a sockherd method or part that
    could not run, as the test suite fails on a missing prerequisite."""
    return short or os.environ.get("SOCKHERD_TEST_REQUIRE") == "1"


def interrupted(signum, frame):
    raise KeyboardInterrupt("signal %d" % signum)


def main():
    # TERM or INT (even when started in the background, where INT comes ignored): unwind, so
    # every method's teardown runs and no box or server is left behind.
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--short", action="store_true", help="CI mode: a handful of reloads, sockherd methods only; exit 1 on any failed request")
    ap.add_argument("--only", default="", help="comma-separated parts (deploy,overhead,footprint,scale,churn,membership) or deploy method names")
    ap.add_argument("--out", default=None, help="raw data directory (default bench/out/<mode>-<time>)")
    ap.add_argument("--results", default=None, help="where to write the report (default bench/RESULTS.md, or bench/out/... in --short)")
    ap.add_argument("--plot", default=None, help="where to write the plot (default bench/reloads.png, or bench/out/... in --short)")
    ap.add_argument("--reanalyze", metavar="RUN_DIR", help="recompute the deploy analysis of a run from its raw data, then rewrite its report")
    args = ap.parse_args()
    if args.reanalyze:
        return reanalyze(args)
    cfg = Config(args.short)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    outroot = args.out or os.path.join(BENCH, "out", "%s-%s" % ("short" if args.short else "full", stamp))
    os.makedirs(outroot, exist_ok=True)
    results_path = args.results or (os.path.join(outroot, "RESULTS.md") if args.short else os.path.join(BENCH, "RESULTS.md"))
    plot_path = args.plot or (os.path.join(outroot, "reloads.png") if args.short else os.path.join(BENCH, "reloads.png"))
    only = {x for x in args.only.split(",") if x}
    parts = {"deploy", "overhead", "footprint", "scale", "churn", "membership"}
    want_parts = (only & parts) or (parts if not only else set())
    want_methods = only - parts
    if want_methods:
        want_parts.add("deploy")
    started = time.time()
    command = "bench/run" + (" --short" if args.short else "") + ("" if not args.only else " --only " + args.only)
    report = dict(command=command, mode="short" if args.short else "full", started=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                  machine=machine_info(), config=vars(cfg), deploy=[], overhead=None, footprint=None, scale=None, churn=None, membership=None)
    log("sockherd benchmark, %s mode; raw data in %s" % (report["mode"], outroot))

    def save():
        with open(os.path.join(outroot, "results.json"), "w") as f:
            json.dump(report, f, indent=1, default=str)

    if "deploy" in want_parts:
        for m in deploy_methods():
            if want_methods and m.name not in want_methods:
                continue
            if args.short and not want_methods and m.name not in SHORT_METHODS:
                continue
            try:
                report["deploy"].append(run_deploy(m, cfg, outroot))
            except Exception as e:  # noqa: BLE001 - one broken method must not hide the others
                traceback.print_exc()
                report["deploy"].append(dict(name=m.name, server=m.server, label=m.label, sockherd=m.sockherd,
                                             where=m.where, error=str(e)[-500:], reloads=[]))
            save()
    for part, fn in (("overhead", run_overhead), ("footprint", run_footprint), ("scale", run_scale), ("churn", run_churn),
                     ("membership", run_membership)):
        if part in want_parts:
            try:
                report[part] = fn(cfg, outroot)
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                report[part] = dict(error=str(e)[-500:])
            save()
    report["seconds"] = time.time() - started
    save()
    import report as rep  # bench/report.py: RESULTS.md and the plot
    rep.write_plot(report, outroot, plot_path)
    rep.write_results(report, results_path, os.path.relpath(plot_path, os.path.dirname(results_path)))
    verdict = rep.zero_failure_verdict(report, strict_mode(args.short))
    log("report: %s; plot: %s; took %.0f s" % (results_path, plot_path, report["seconds"]))
    for line in verdict["lines"]:
        log(line)
    if not verdict["ok"]:
        log("FAILED: see the lines marked FAILED above")
        return 1
    log("OK: zero failed requests for every sockherd method that ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
