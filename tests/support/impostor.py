#!/usr/bin/env python3
"""Hostile local processes for the control channel's tests (run as another user, e.g. nobody).

  impostor.py abstract NAME READY     bind the abstract unix socket @NAME, create the file READY,
                                      answer every request with "ok ..." (sockherd's control
                                      channel up to 0.1 listened on @sockherd/<pid>/control)
  impostor.py flood PATH COUNT REPORT open COUNT connections to the unix socket PATH (@NAME for an
                                      abstract one; failures
                                      counted by errno), write {"connected": n, "errors": {...}}
                                      to REPORT, then hold them all without sending anything
"""
import errno, json, os, signal, socket, sys


def abstract(name, ready):
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind("\0" + name)
    server.listen(64)
    open(ready, "w").close()
    while True:
        conn, _ = server.accept()
        conn.settimeout(5)
        try:
            conn.recv(1024)
            conn.sendall(b"ok generation 2 (pid 1) serves (an impostor's answer)\n")
        except OSError:
            pass
        conn.close()


def flood(path, count, report):
    if path.startswith("@"):
        path = "\0" + path[1:]
    held, errors = [], {}
    for _ in range(count):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(path)
            held.append(s)
        except BlockingIOError:
            held.append(s)  # queued in the backlog: held all the same
        except OSError as e:
            errors[errno.errorcode.get(e.errno, str(e.errno))] = errors.get(errno.errorcode.get(e.errno, str(e.errno)), 0) + 1
            s.close()
    tmp = report + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"connected": len(held), "errors": errors}, f)
    os.rename(tmp, report)
    while True:
        signal.pause()


signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
if sys.argv[1] == "abstract":
    abstract(sys.argv[2], sys.argv[3])
elif sys.argv[1] == "flood":
    flood(sys.argv[2], int(sys.argv[3]), sys.argv[4])
else:
    sys.exit("impostor.py: unknown mode %r" % sys.argv[1])
