#!/usr/bin/env python3
"""A server that will not stop gracefully: for the --stop-timeout tests (tests/servers.rs).

Holds the inherited sockets (fds 3..), forks one child that stays in its process group and
ignores SIGTERM, then writes {"pid": <self>, "child": <child pid>} as JSON to argv[1]. Every
SIGTERM it receives is appended to argv[1] + ".signals" and otherwise ignored, so only a
SIGKILL ends it (and the child).

With argv[2] == "master-obeys", the master exits 0 on SIGTERM (after logging it) and only the
child stays behind: a worker that will not stop, in the group of a master that did.
"""
import json, os, signal, sys

report = sys.argv[1]
master_obeys = len(sys.argv) > 2 and sys.argv[2] == "master-obeys"
log = report + ".signals"

child = os.fork()
if child == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        signal.pause()


def on_term(signum, frame):
    with open(log, "a") as f:
        f.write("%s\n" % signal.Signals(signum).name[3:])
    if master_obeys:
        os._exit(0)


signal.signal(signal.SIGTERM, on_term)
with open(report + ".tmp", "w") as f:
    json.dump({"pid": os.getpid(), "child": child}, f)
os.rename(report + ".tmp", report)
while True:
    signal.pause()
