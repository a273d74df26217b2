#!/usr/bin/env python3
"""A server whose readiness probe socket answers only when the test says so (tests/activation.rs).

    gated_http.py REPORT

Takes its sockets the systemd way (LISTEN_FDS from fd 3, LISTEN_PID must be its own pid,
LISTEN_FDNAMES names them), writes its pid to REPORT once it listens, then serves HTTP/1.0:
- on every socket but the one named `sockherd-probe`: 200 "gated <pid>";
- on `sockherd-probe`: nothing at all (connections wait in the backlog) while REPORT.probe does
  not exist; once it does, each request is answered with the status code the file holds
  (200 when empty), e.g. 503, 302, 404.
Every request it answers is appended to REPORT.requests as `SOCKET-NAME METHOD PATH USER-AGENT`.
REPORT's second line is its NOTIFY_SOCKET (empty without one); once REPORT.notify exists it sends
READY=1 there, once. SIGTERM makes it exit 0.
"""
import os, select, signal, socket, sys

report = sys.argv[1]
if os.environ.get("LISTEN_PID") != str(os.getpid()):
    sys.exit("gated_http.py: LISTEN_PID is not this process")
count = int(os.environ.get("LISTEN_FDS", "0"))
names = os.environ.get("LISTEN_FDNAMES", "").split(":") if count else []
names += ["unknown"] * (count - len(names))
listeners = {}
for i in range(count):
    s = socket.socket(fileno=3 + i)
    if s.type == socket.SOCK_STREAM:
        listeners[s] = names[i]
signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
notify_socket = os.environ.get("NOTIFY_SOCKET", "")
with open(report + ".tmp", "w") as f:
    f.write("%d\n%s\n" % (os.getpid(), notify_socket))
os.rename(report + ".tmp", report)

gate = report + ".probe"
notified = False
while True:
    if notify_socket and not notified and os.path.exists(report + ".notify"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as n:
            n.connect(notify_socket if not notify_socket.startswith("@") else "\0" + notify_socket[1:])
            n.sendall(b"READY=1")
        notified = True
    open_now = os.path.exists(gate)
    watched = [s for s, name in listeners.items() if name != "sockherd-probe" or open_now]
    ready, _, _ = select.select(watched, [], [], 0.05)
    for s in ready:
        name = listeners[s]
        conn, _ = s.accept()
        conn.settimeout(10)
        request = b""
        try:
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                request += chunk
        except OSError:
            conn.close()
            continue
        lines = request.decode(errors="replace").split("\r\n")
        method, path = (lines[0].split() + ["?", "?"])[:2]
        agent = next((l.split(":", 1)[1].strip() for l in lines if l.lower().startswith("user-agent:")), "-")
        with open(report + ".requests", "a") as f:
            f.write("%s %s %s %s\n" % (name, method, path, agent))
        code = 200
        if name == "sockherd-probe":
            text = open(gate).read().strip()
            code = int(text) if text else 200
        body = "gated %d\n" % os.getpid()
        reason = {200: "OK", 302: "Found", 404: "Not Found", 503: "Service Unavailable"}.get(code, "Status")
        extra = "Location: /\r\n" if 300 <= code < 400 else ""
        conn.sendall(("HTTP/1.0 %d %s\r\n%sContent-Length: %d\r\n\r\n%s" % (code, reason, extra, len(body), body)).encode())
        conn.close()
