#!/usr/bin/env python3
"""A server whose sd_notify messages are hostile or unusual, for the notify proxy's tests.

Usage: notifier.py MODE [REPORT]   (MODE may also come from the file MODE in the working
directory, for systemd units that run this script as their server)

Serves HTTP/1.0 on every inherited listening socket (fds 3.. per LISTEN_FDS), answering
"notifier <pid> <mode>", and tells its NOTIFY_SOCKET, by MODE:

  plain     READY=1 with STATUS=plain
  inject    READY=1 and STATUS=x\\rWATCHDOG=trigger\\rMAINPID=<own pid>\\rSTOPPING=1 in one datagram
  long      READY=1 and a 4,050-byte STATUS= in one datagram
  nul       a datagram STATUS=before<NUL>after, then READY=1 alone
  helper    READY=1 from a short-lived child that waits for BARRIER=1 before it exits
  silent    nothing: someone else is expected to send READY=1

With REPORT, writes {"pid": ..., "notify_socket": ...} there (atomically) before notifying.
"""
import array, json, os, select, signal, socket, sys


def notify_socket():
    path = os.environ.get("NOTIFY_SOCKET", "")
    if path.startswith("@"):
        path = "\0" + path[1:]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.connect(path)
    return sock


def send(payload):
    sock = notify_socket()
    sock.send(payload)
    sock.close()


def barrier(sock, timeout=20.0):
    """sd_notify_barrier(3): BARRIER=1 with a pipe's write end; wait until it is closed."""
    r, w = os.pipe()
    sock.sendmsg([b"BARRIER=1"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [w]))])
    os.close(w)
    poller = select.poll()
    poller.register(r, select.POLLIN)
    done = poller.poll(timeout * 1000)
    os.close(r)
    return bool(done)


def tell(mode):
    pid = os.getpid()
    if mode == "plain":
        send(b"READY=1\nSTATUS=plain")
    elif mode == "inject":
        send(b"READY=1\nSTATUS=x\rWATCHDOG=trigger\rMAINPID=%d\rSTOPPING=1" % pid)
    elif mode == "long":
        send(b"READY=1\nSTATUS=" + b"s" * 4050)
    elif mode == "nul":
        send(b"STATUS=before\0after")
        send(b"READY=1")
    elif mode == "helper":
        child = os.fork()
        if child == 0:
            sock = notify_socket()
            sock.send(b"READY=1\nSTATUS=from a helper")
            ok = barrier(sock)
            os._exit(0 if ok else 3)
        _, status = os.waitpid(child, 0)
        sys.stderr.write("notifier: helper exited with %d\n" % os.waitstatus_to_exitcode(status))
        sys.stderr.flush()
    elif mode == "silent":
        pass
    else:
        sys.exit("notifier.py: unknown mode %r" % mode)


def listeners():
    count = int(os.environ.get("LISTEN_FDS", "0"))
    out = []
    for fd in range(3, 3 + count):
        s = socket.socket(fileno=fd)
        if s.type == socket.SOCK_STREAM and s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            out.append(s)
        else:
            s.detach()
    return out


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else open("MODE").read().strip()
    report = sys.argv[2] if len(sys.argv) > 2 else None
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    servers = listeners()
    if report:
        tmp = report + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"pid": os.getpid(), "notify_socket": os.environ.get("NOTIFY_SOCKET")}, f)
        os.rename(tmp, report)
    tell(mode)
    body = ("notifier %d %s\n" % (os.getpid(), mode)).encode()
    while True:
        ready, _, _ = select.select(servers, [], [])
        for server in ready:
            conn, _ = server.accept()
            try:
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    request += chunk
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            except OSError:
                pass
            conn.close()


main()
