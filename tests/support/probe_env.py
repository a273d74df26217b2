#!/usr/bin/env python3
"""A stand-in server reporting what it inherited as `key=value` lines (no JSON parser needed).

Writes to the path in argv[1] (atomically, via rename), one entry per line:

    pid=<pid>            ppid=<parent pid>
    pidfdid=<its pidfd's inode id>   pidfd_ids=1|0 (whether the kernel gives each process its own)
    env.<NAME>=<value>   every environment variable
    fds=3,4              every open descriptor from 3 up
    fd.<n>.cloexec=0|1   fd.<n>.nonblocking=0|1 (O_NONBLOCK, as inherited)
    fd.<n>.inode=<st_ino>   fd.<n>.socket=0|1
    fd.<n>.family=inet|inet6|unix|<number>       fd.<n>.address=127.0.0.1:8080 or /path
    fd.<n>.listening=0|1

Values escape backslash as `\\` and newline as `\n`. With argv[2] == "serve" it then answers
HTTP/1.0 on every inherited listening stream socket with "probe <pid>". It exits 0 on TERM,
INT, QUIT, HUP and USR2 (whatever stop signal a flavor uses), so it never dumps core.
"""
import fcntl, os, select, signal, socket, stat, sys


def escape(value):
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def describe(fd):
    st = os.fstat(fd)
    info = {"cloexec": int(bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)),
            "nonblocking": int(bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK)),
            "inode": st.st_ino, "socket": int(stat.S_ISSOCK(st.st_mode))}
    if info["socket"]:
        s = socket.socket(fileno=os.dup(fd))
        try:
            info["family"] = {socket.AF_INET: "inet", socket.AF_INET6: "inet6",
                              socket.AF_UNIX: "unix"}.get(s.family, str(int(s.family)))
            name = s.getsockname()
            if isinstance(name, bytes):  # abstract unix socket
                name = "@" + name[1:].decode("utf-8", "replace")
            elif isinstance(name, tuple):
                name = ("%s:%d" if s.family == socket.AF_INET else "[%s]:%d") % (name[0], name[1])
            info["address"] = name
            info["listening"] = int(bool(s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)))
            info["stream"] = int(s.type == socket.SOCK_STREAM)
        finally:
            s.close()
    return info


def main():
    out = sys.argv[1]
    fds = {}
    for n in sorted(int(n) for n in os.listdir("/proc/self/fd")):
        if n < 3:
            continue
        try:
            fds[n] = describe(n)
        except OSError:
            pass  # the descriptor listdir used, closed by now
    own = os.fstat(os.pidfd_open(os.getpid())).st_ino
    # pidfs (Linux 6.9) gives each process its own inode; the older anonymous inode is shared.
    pidfd_ids = int(own != os.fstat(os.pidfd_open(os.getppid())).st_ino)
    lines = ["pid=%d" % os.getpid(), "ppid=%d" % os.getppid(), "pidfdid=%d" % own, "pidfd_ids=%d" % pidfd_ids,
             "fds=" + ",".join(str(n) for n in fds)]
    for name, value in sorted(os.environ.items()):
        lines.append("env.%s=%s" % (name, escape(value)))
    for n, info in fds.items():
        for key, value in info.items():
            lines.append("fd.%d.%s=%s" % (n, key, escape(str(value))))
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.rename(tmp, out)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR2):
        signal.signal(sig, lambda *a: os._exit(0))
    if len(sys.argv) > 2 and sys.argv[2] == "serve":
        listeners = [socket.socket(fileno=n) for n, i in fds.items()
                     if i.get("listening") == 1 and i.get("stream") == 1]
        while listeners:
            ready, _, _ = select.select(listeners, [], [])
            for listener in ready:
                conn, _ = listener.accept()
                request = b""
                while b"\r\n\r\n" not in request:  # clients may write a request in pieces
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    request += chunk
                body = "probe %d\n" % os.getpid()
                conn.sendall(("HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                              % (len(body), body)).encode())
                conn.close()
    while True:
        signal.pause()


main()
