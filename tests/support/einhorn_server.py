#!/usr/bin/env python3
"""A minimal server speaking einhorn's socket protocol, for tests/dialects.rs (einhorn itself is
not packaged for Debian).

    einhorn_server.py REPORT

Takes its listening sockets the way an einhorn worker does: EINHORN_FD_COUNT=N and
EINHORN_FD_0..EINHORN_FD_{N-1} naming the descriptors; refuses to start when the count and the
variables disagree, or when LISTEN_FDS is set (not its dialect). Writes its pid to REPORT, then
answers HTTP/1.0 on every socket with "einhorn <pid> fds=<fd,fd>". einhorn's graceful stop is
SIGUSR2: it stops accepting, logs "USR2" to REPORT.signals and exits 0; SIGTERM (the fast stop)
logs "TERM" and exits 0 at once.
"""
import os, select, signal, socket, sys

report = sys.argv[1]
if "LISTEN_FDS" in os.environ:
    sys.exit("einhorn_server.py: LISTEN_FDS is set: that is the systemd dialect, not einhorn's")
count = int(os.environ["EINHORN_FD_COUNT"])
fds = [int(os.environ["EINHORN_FD_%d" % i]) for i in range(count)]
if any(k.startswith("EINHORN_FD_") and k != "EINHORN_FD_COUNT" and int(k[len("EINHORN_FD_"):]) >= count
       for k in os.environ):
    sys.exit("einhorn_server.py: EINHORN_FD_* variables beyond EINHORN_FD_COUNT")
listeners = [socket.socket(fileno=fd) for fd in fds]
stopping = []


def log(name):
    with open(report + ".signals", "a") as f:
        f.write(name + "\n")


def graceful(signum, frame):
    log("USR2")
    stopping.append(True)


def fast(signum, frame):
    log("TERM")
    os._exit(0)


signal.signal(signal.SIGUSR2, graceful)
signal.signal(signal.SIGTERM, fast)
with open(report + ".tmp", "w") as f:
    f.write("%d\n" % os.getpid())
os.rename(report + ".tmp", report)
body = ("einhorn %d fds=%s\n" % (os.getpid(), ",".join(str(fd) for fd in fds))).encode()
while not stopping:
    try:
        ready, _, _ = select.select(listeners, [], [], 0.1)
    except InterruptedError:
        continue
    for l in ready:
        try:
            conn, _ = l.accept()
        except BlockingIOError:
            continue
        conn.settimeout(10)
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = conn.recv(65536)
            if not chunk:
                break
            request += chunk
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        conn.close()
sys.exit(0)
