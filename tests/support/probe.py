#!/usr/bin/env python3
"""A stand-in server for tests: reports what it inherited, then waits to be stopped.

Writes JSON to the path in argv[1]: its pid, the socket-convention variables, and for every open
descriptor from 3 up: close-on-exec flag, inode, socket family/address. With argv[2] == "serve",
it then accepts HTTP/1.0 connections on every inherited stream socket and answers "probe <pid>".
"""
import json, os, signal, socket, stat, sys, select

VARS = ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "UNICORN_FD", "GUNICORN_FD", "GUNICORN_PID",
        "SERVER_STARTER_PORT", "SERVER_STARTER_GENERATION", "EINHORN_FD_COUNT", "NGINX",
        "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "PWD", "SOCKHERD_TEST_MARK"]

def describe(fd):
    st = os.fstat(fd)
    info = {"fd": fd, "cloexec": bool(__import__("fcntl").fcntl(fd, __import__("fcntl").F_GETFD) & 1),
            "inode": st.st_ino, "socket": stat.S_ISSOCK(st.st_mode)}
    if info["socket"]:
        s = socket.socket(fileno=os.dup(fd))
        try:
            info["family"] = {socket.AF_INET: "inet", socket.AF_INET6: "inet6", socket.AF_UNIX: "unix"}.get(s.family, str(s.family))
            name = s.getsockname()
            info["address"] = name if isinstance(name, str) else "%s:%d" % (name[0], name[1]) if s.family == socket.AF_INET else "[%s]:%d" % (name[0], name[1])
            info["listening"] = bool(s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
        finally:
            s.close()
    return info

def main():
    out = sys.argv[1]
    fds = []
    for entry in sorted(int(n) for n in os.listdir("/proc/self/fd")):
        if entry < 3:
            continue
        try:
            fds.append(describe(entry))
        except OSError:
            pass  # the descriptor used by listdir itself
    report = {"pid": os.getpid(), "ppid": os.getppid(), "cwd": os.getcwd(),
              "env": {k: os.environ[k] for k in VARS if k in os.environ},
              "einhorn": {k: v for k, v in os.environ.items() if k.startswith("EINHORN_FD_")},
              "fds": fds}
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f)
    os.rename(tmp, out)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    if len(sys.argv) > 2 and sys.argv[2] == "serve":
        listeners = [socket.socket(fileno=d["fd"]) for d in fds if d.get("listening")]
        while True:
            ready, _, _ = select.select(listeners, [], [])
            for l in ready:
                conn, _ = l.accept()
                try:
                    request = b""
                    while b"\r\n\r\n" not in request:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        request += chunk
                    body = "probe %d\n" % os.getpid()
                    conn.sendall(("HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)).encode())
                except OSError:
                    pass  # a client that went away (a connect-only liveness check) is no failure
                conn.close()
    while True:
        signal.pause()

main()
