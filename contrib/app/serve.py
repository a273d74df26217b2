#!/usr/bin/env python3
"""A small server for app.py that needs nothing but Python's standard library, so the quick start
runs on a fresh machine. It speaks the systemd dialect, as any server sockherd's default flavor
runs: it serves every socket passed in LISTEN_FDS (from fd 3, only if LISTEN_PID is its own
pid), sends READY=1 to NOTIFY_SOCKET once it accepts, and on SIGTERM finishes the requests in
flight, then exits 0.

    sockherd run --listen 127.0.0.1:8080 --chdir contrib/app -- python3 serve.py

With --libsystemd it takes its sockets and says READY=1 the way servers linked against libsystemd
do, with sd_listen_fds(0) and sd_notify() of libsystemd.so.0 (through ctypes): the same checks as
every C server, LISTEN_PIDFDID included (systemd >= 259).
"""
import ctypes
import os
import signal
import socket
import sys
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

sys.path.insert(0, os.getcwd())
from app import app  # noqa: E402  (the working directory is the release)


class Server(ThreadingMixIn, WSGIServer):
    daemon_threads = False  # shutdown waits for requests in flight
    block_on_close = True

    def __init__(self, sock):
        WSGIServer.__init__(self, sock.getsockname(), WSGIRequestHandler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.address_family = sock.family
        self.server_name, self.server_port = "localhost", 0
        self.setup_environ()
        self.set_app(app)

    def get_request(self):
        conn, addr = self.socket.accept()
        # A unix socket's peer has no (host, port), which wsgiref indexes for REMOTE_ADDR.
        return conn, addr if isinstance(addr, tuple) else ("unix", 0)


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def libsystemd():
    return ctypes.CDLL("libsystemd.so.0", use_errno=True)


def inherited_sockets_by_libsystemd():
    count = libsystemd().sd_listen_fds(0)
    if count <= 0:
        seen = " ".join("%s=%s" % (k, os.environ.get(k, "-")) for k in ("LISTEN_PID", "LISTEN_PIDFDID", "LISTEN_FDS"))
        sys.exit("serve.py: sd_listen_fds(0) returned %d: no sockets for pid %d (%s)" % (count, os.getpid(), seen))
    return [s for s in (socket.socket(fileno=fd) for fd in range(3, 3 + count)) if s.type == socket.SOCK_STREAM]


def inherited_sockets():
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        sys.exit("serve.py: no sockets: LISTEN_PID is not this process (run it under sockherd or systemd)")
    count = int(os.environ.get("LISTEN_FDS", "0"))
    sockets = []
    for fd in range(3, 3 + count):
        sock = socket.socket(fileno=fd)
        if sock.type == socket.SOCK_STREAM:
            sockets.append(sock)
    return sockets


def notify(message):
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(path)
        s.sendall(message.encode())


def notify_by_libsystemd(message):
    libsystemd().sd_notify(0, message.encode())


def main():
    use_libsystemd = sys.argv[1:] == ["--libsystemd"]
    if sys.argv[1:] and not use_libsystemd:
        sys.exit("usage: serve.py [--libsystemd]")
    servers = []
    for sock in inherited_sockets_by_libsystemd() if use_libsystemd else inherited_sockets():
        server = Server(sock)
        server.RequestHandlerClass = QuietHandler
        servers.append(server)
    threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.1}) for s in servers]
    for t in threads:
        t.start()
    print("serve.py: listening on %d socket(s), pid %d" % (len(servers), os.getpid()), file=sys.stderr, flush=True)
    (notify_by_libsystemd if use_libsystemd else notify)("READY=1\nSTATUS=serving %d socket(s)" % len(servers))

    def stop(signum, frame):
        # Stop accepting, let requests in flight finish (server_close joins their threads).
        for s in servers:
            threading.Thread(target=s.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for t in threads:
        t.join()
    for s in servers:
        s.server_close()


if __name__ == "__main__":
    main()
