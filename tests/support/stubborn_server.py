#!/usr/bin/env python3
"""A server that will not stop gracefully: for the --stop-timeout tests (tests/servers.rs).

Holds the inherited sockets (fds 3..), forks one child that stays in its process group and
ignores SIGTERM, then writes {"pid": <self>, "child": <child pid>} as JSON to argv[1]. Every
SIGTERM it receives is appended to argv[1] + ".signals" and otherwise ignored, so only a
SIGKILL ends it (and the child).
"""
import json, os, signal, sys

report = sys.argv[1]
log = report + ".signals"

child = os.fork()
if child == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        signal.pause()


def on_term(signum, frame):
    with open(log, "a") as f:
        f.write("%s\n" % signal.Signals(signum).name[3:])


signal.signal(signal.SIGTERM, on_term)
with open(report + ".tmp", "w") as f:
    json.dump({"pid": os.getpid(), "child": child}, f)
os.rename(report + ".tmp", report)
while True:
    signal.pause()
