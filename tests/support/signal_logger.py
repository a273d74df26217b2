#!/usr/bin/env python3
"""Which stop signal reaches the server? (tests/servers.rs)

Holds the inherited sockets (fds 3..), writes its pid to argv[1] once its handlers are in place,
then waits. The first of TERM, INT, QUIT, HUP, USR1, USR2 to arrive is appended (by name,
without "SIG") to argv[1] + ".signals", and the process exits 0, as a server does after a stop.
"""
import os, signal, sys

report = sys.argv[1]
log = report + ".signals"


def stop(signum, frame):
    with open(log, "a") as f:
        f.write("%s\n" % signal.Signals(signum).name[3:])
    os._exit(0)


for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
    signal.signal(sig, stop)
with open(report + ".tmp", "w") as f:
    f.write("%d\n" % os.getpid())
os.rename(report + ".tmp", report)
while True:
    signal.pause()
