#!/usr/bin/env python3
"""A preforking server with unicorn's binary upgrade, made to show one race of it (tests/native.rs).

    upgrading_master.py PIDFILE [WORKERS]

Takes its sockets from UNICORN_FD (as `sockherd exec --flavor unicorn` hands them over), writes
its pid to PIDFILE and forks WORKERS (default 2) workers that answer every HTTP request with
"release=fake pid=<worker> master=<master>". Its workers re-exec themselves with "worker" in
their command line, as unicorn's titles read.

Signals, as unicorn's: QUIT stops gracefully (workers finish their request; the pid file is
removed if it still names us); USR2 renames PIDFILE to PIDFILE.oldbin and starts a new master
from the same command line, which inherits the sockets and writes PIDFILE; if that new master
dies, the pid file is taken back.

The race: on USR2 the master first forks a child that keeps the master's title for 3 s before
it becomes a worker, and starts the new master 0.5 s later. That is what a worker respawned at
the wrong moment looks like to a reader of process titles: unicorn's and nginx's freshly forked
workers wear their master's title until they rename themselves.
"""
import os
import select
import signal
import socket
import sys
import time

SCRIPT = os.path.abspath(__file__)


def listeners():
    return [socket.socket(fileno=int(fd)) for fd in os.environ["UNICORN_FD"].split(",")]


def worker():
    """Answers requests until QUIT (after the current one) or until its master is gone."""
    master = os.getppid()
    quitting = []
    signal.signal(signal.SIGQUIT, lambda *_: quitting.append(1))
    socks = listeners()
    for s in socks:
        s.setblocking(False)
    while not quitting and os.getppid() == master:
        ready, _, _ = select.select(socks, [], [], 0.2)
        for s in ready:
            try:
                conn, _ = s.accept()
            except BlockingIOError:
                continue
            with conn:
                conn.setblocking(True)
                conn.settimeout(10)
                try:
                    conn.recv(65536)
                    body = "release=fake pid=%d master=%d\n" % (os.getpid(), master)
                    conn.sendall(
                        (
                            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                            % (len(body), body)
                        ).encode()
                    )
                except OSError:
                    pass


def become_worker():
    os.execv(sys.executable, [sys.executable, SCRIPT, "worker"])


def spawn_worker():
    pid = os.fork()
    if pid == 0:
        become_worker()
    return pid


def write_pidfile(path):
    with open(path + ".tmp", "w") as f:
        f.write("%d\n" % os.getpid())
    os.rename(path + ".tmp", path)


def master(pidfile, count):
    signals = []
    for sig in (signal.SIGQUIT, signal.SIGUSR2, signal.SIGCHLD):
        signal.signal(sig, lambda signum, _: signals.append(signum))
    write_pidfile(pidfile)
    workers = {spawn_worker() for _ in range(count)}
    new_master = None
    while True:
        while not signals:
            time.sleep(0.05)
        sig = signals.pop(0)
        if sig == signal.SIGCHLD:
            while True:
                try:
                    pid, _ = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                workers.discard(pid)
                if pid == new_master:
                    new_master = None
                    os.rename(pidfile + ".oldbin", pidfile)
        elif sig == signal.SIGUSR2 and new_master is None:
            os.rename(pidfile, pidfile + ".oldbin")
            lingering = os.fork()
            if lingering == 0:
                signal.signal(signal.SIGQUIT, lambda *_: os._exit(0))
                time.sleep(3)
                become_worker()
            workers.add(lingering)
            time.sleep(0.5)
            new_master = os.fork()
            if new_master == 0:
                os.execv(sys.executable, [sys.executable] + sys.argv)
        elif sig == signal.SIGQUIT:
            for pid in workers:
                try:
                    os.kill(pid, signal.SIGQUIT)
                except ProcessLookupError:
                    pass
            for pid in workers:
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
            try:
                with open(pidfile) as f:
                    if f.read().strip() == str(os.getpid()):
                        os.unlink(pidfile)
            except FileNotFoundError:
                pass
            return


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        worker()
    else:
        master(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2)
