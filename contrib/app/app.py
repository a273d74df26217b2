"""Example WSGI app used by the quick start, the tests and the unit examples.

GET /            -> "release=<release> pid=<worker pid> master=<master pid>"
GET /slow?s=N    -> the same after sleeping N seconds (a request in flight during a reload)
GET /env         -> the socket-related environment the server saw
GET /health      -> "ok"

The release is the content of a RELEASE file in the working directory, else the directory's name.
A file named BROKEN in the working directory makes the import fail (a broken deploy);
APP_BOOT_SLEEP=N delays the import (a slow boot); APP_BOOT_HOLD=PATH holds it while PATH exists.
APP_EXIT_MARK=DIR: each process that imported the app writes DIR/exit-<pid> from an exit handler
(atexit) and prints a line saying so, unflushed: both show that its exit ran what an exit runs.
"""
import os
import time

if os.path.exists("BROKEN"):
    raise RuntimeError("this release is broken on purpose (BROKEN file present)")
time.sleep(float(os.environ.get("APP_BOOT_SLEEP", "0")))
# APP_BOOT_HOLD=PATH holds the import while PATH exists (a boot that lasts exactly as long as a
# test wants: no race with the machine's speed).
while os.environ.get("APP_BOOT_HOLD") and os.path.exists(os.environ["APP_BOOT_HOLD"]):
    time.sleep(0.02)

if os.environ.get("APP_EXIT_MARK"):
    import atexit

    _MARKS = os.environ["APP_EXIT_MARK"]

    def _exit_handler():
        with open(os.path.join(_MARKS, "exit-%d" % os.getpid()), "w") as f:
            f.write("exit handler ran\n")
        # No flush: the line reaches the output only if the exit flushes stdout.
        print("app: exit handler of %d ran" % os.getpid())

    atexit.register(_exit_handler)

try:
    with open("RELEASE") as f:
        RELEASE = f.read().strip()
except OSError:
    RELEASE = os.path.basename(os.getcwd())

ENV_KEYS = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_PIDFDID", "LISTEN_FDNAMES", "UNICORN_FD", "NOTIFY_SOCKET", "PWD")


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/slow":
        query = dict(p.split("=", 1) for p in environ.get("QUERY_STRING", "").split("&") if "=" in p)
        time.sleep(float(query.get("s", "1")))
    if path == "/health":
        body = "ok\n"
    elif path == "/env":
        body = "".join("%s=%s\n" % (k, os.environ[k]) for k in ENV_KEYS if k in os.environ)
    else:
        body = "release=%s pid=%d master=%d\n" % (RELEASE, os.getpid(), os.getppid())
    data = body.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]


application = app
