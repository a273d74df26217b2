#!/usr/bin/env python3
"""A server that misbehaves on purpose, for the lifecycle scenarios (tests/faults.rs).

It speaks the systemd dialect (LISTEN_FDS from fd 3, LISTEN_PID its own pid, READY=1 on
NOTIFY_SOCKET once it accepts) and answers every GET with
`release=<RELEASE file> pid=<pid> master=<pid>`, `GET /slow?s=N` after N seconds, and
`GET /health` with 200 (503 in `unhealthy` mode). What it does wrong comes from the file
BEHAVIOR in its working directory (the release), so one release of a deploy can be broken:

  serve                  (default) serve until told to stop
  slow-ready:S           serve, but send READY=1 only S seconds after it started
  crash-after-ready:S    send READY=1 (and create the file READY in its working directory),
                         serve, and exit 1 S seconds later
  unhealthy              serve, but /health answers 503
  hold-after-term:S      on SIGTERM keep holding the listening sockets (without accepting) for
                         S seconds before finishing, as a server draining long requests does
  escape-worker          also fork a worker that leaves the process group (setsid(), as an app
                         helper started with start_new_session does), ignores SIGTERM and keeps
                         accepting; its pid goes to the file named by $SCENARIO_ESCAPEE
  subgroup-worker        escape-worker, whose worker also moves itself into a cgroup it makes
                         under its own (`worker`, as an app that uses its delegated cgroup does)
  daemonize              daemonize as `gunicorn --daemon` does: fork, setsid, fork again; the
                         grandchild serves and the process sockherd started exits 0 at once

On SIGTERM it stops accepting, lets requests in flight finish, and exits 0. SIGUSR1, SIGTTIN,
SIGTTOU, SIGWINCH and SIGHUP are only recorded. Every signal it receives is appended as
"<pid> <NAME>" to the file named by $SCENARIO_LOG, when set.
"""
import os
import signal
import socket
import sys
import threading
import time

PID = os.getpid()
LOG = os.environ.get("SCENARIO_LOG")


def read(name, default=""):
    try:
        with open(name) as f:
            return f.read().strip()
    except OSError:
        return default


RELEASE = read("RELEASE", "none")
BEHAVIOR = read("BEHAVIOR", "serve")
MODE, _, ARG = BEHAVIOR.partition(":")
stopping = threading.Event()
in_flight = []
in_flight_lock = threading.Lock()


def record(name):
    if LOG:
        with open(LOG, "a") as f:
            f.write("%d %s\n" % (PID, name))


def notify(message):
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(path)
        s.sendall(message.encode())


def answer(conn):
    try:
        conn.settimeout(30)
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = conn.recv(65536)
            if not chunk:
                return
            request += chunk
        path = request.split(b" ", 2)[1].decode() if request.count(b" ") >= 2 else "/"
        status = "200 OK"
        if path.startswith("/slow"):
            seconds = float(path.partition("s=")[2] or "1")
            time.sleep(seconds)
        if path.startswith("/health") and MODE == "unhealthy":
            status = "503 Service Unavailable"
        body = "release=%s pid=%d master=%d\n" % (RELEASE, PID, PID)
        conn.sendall(("HTTP/1.0 %s\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body)).encode())
    except OSError:
        pass
    finally:
        conn.close()


def accept_loop(listener):
    listener.settimeout(0.05)
    while not stopping.is_set():
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            continue
        except OSError:
            return
        thread = threading.Thread(target=answer, args=(conn,))
        with in_flight_lock:
            in_flight.append(thread)
        thread.start()


def enter_own_subgroup(name):
    """Moves this process into a new cgroup `name` under the cgroup2 cgroup it is in."""
    own = [l[3:] for l in read("/proc/self/cgroup").splitlines() if l.startswith("0::")][0]
    mount = [l.split(" - ")[0].split()[4] for l in read("/proc/self/mountinfo").splitlines()
             if l.split(" - ")[1].split()[0] == "cgroup2"][0]
    path = os.path.join(mount + own, name)
    os.mkdir(path)
    with open(os.path.join(path, "cgroup.procs"), "w") as f:
        f.write("%d\n" % os.getpid())


def escapee(listeners):
    """A worker out of its master's process group that only SIGKILL ends."""
    global PID
    if os.fork() != 0:
        return
    os.setsid()
    PID = os.getpid()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if MODE == "subgroup-worker":
        enter_own_subgroup("worker")
    path = os.environ.get("SCENARIO_ESCAPEE")
    if path:
        with open(path + ".tmp", "w") as f:
            f.write("%d\n" % PID)
        os.rename(path + ".tmp", path)
    threads = [threading.Thread(target=accept_loop, args=(l,), daemon=True) for l in listeners]
    for t in threads:
        t.start()
    while True:
        signal.pause()


def main():
    global PID
    if os.environ.get("LISTEN_PID") != str(PID):
        sys.exit("scenario_server: LISTEN_PID is not this process")
    if MODE == "daemonize":
        # The first child records the daemon's pid before it exits, and the master waits for it:
        # the pid is known before the process sockherd started is gone.
        child = os.fork()
        if child != 0:
            os.waitpid(child, 0)
            os._exit(0)
        os.setsid()
        daemon = os.fork()
        if daemon != 0:
            path = os.environ.get("SCENARIO_ESCAPEE")
            if path:
                with open(path + ".tmp", "w") as f:
                    f.write("%d\n" % daemon)
                os.rename(path + ".tmp", path)
            os._exit(0)
        PID = os.getpid()
    listeners = []
    for fd in range(3, 3 + int(os.environ.get("LISTEN_FDS", "0"))):
        sock = socket.socket(fileno=fd)
        if sock.type == socket.SOCK_STREAM:
            listeners.append(sock)
    term = threading.Event()

    def on_signal(signum, frame):
        name = signal.Signals(signum).name
        record(name)
        if signum == signal.SIGTERM:
            term.set()

    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGTTIN, signal.SIGTTOU, signal.SIGWINCH, signal.SIGHUP):
        signal.signal(sig, on_signal)
    if MODE in ("escape-worker", "subgroup-worker"):
        escapee(listeners)
    threads = [threading.Thread(target=accept_loop, args=(l,), daemon=True) for l in listeners]
    for t in threads:
        t.start()
    if MODE == "slow-ready":
        time.sleep(float(ARG))
    notify("READY=1\nSTATUS=release %s serving" % RELEASE)
    deadline = None
    if MODE == "crash-after-ready":
        open("READY", "w").close()
        deadline = time.monotonic() + float(ARG)
    while not term.is_set():
        if deadline is not None and time.monotonic() >= deadline:
            os._exit(1)
        term.wait(0.01)
    stopping.set()
    for t in threads:
        t.join()
    if MODE == "hold-after-term":
        time.sleep(float(ARG))
    for l in listeners:
        l.close()
    with in_flight_lock:
        pending = list(in_flight)
    for t in pending:
        t.join()
    sys.exit(0)


main()
