#!/usr/bin/env python3
"""Poses as systemd socket activation (sd_listen_fds(3)) for tests, then execs a program.

Usage: fake_activate.py [--fd KIND]... [--set NAME=VALUE]... [--listen-pid PID|self]
                        [--listen-pidfdid ID|self] -- PROGRAM ARGS...

Each --fd puts one descriptor at fds 3, 4, ... (in order), with FD_CLOEXEC cleared:
  tcp             a listening TCP socket on 127.0.0.1 (kernel-chosen port)
  unix:PATH       a listening unix stream socket bound to PATH
  file:PATH       PATH opened read-only (a regular file)
  unbound         a TCP socket that was never bound nor listened on
  connected       one end of a connected unix socket pair (the other end is closed at exec)

The environment gets LISTEN_FDS=<number of --fd>, LISTEN_PID=<our pid, which execve keeps> and no
LISTEN_FDNAMES; --set NAME=VALUE overrides any of them (any text, valid or not), --unset NAME
removes one, --listen-pid sets LISTEN_PID to another value, --listen-pidfdid sets LISTEN_PIDFDID
(self: the inode id of a pidfd of this process, which execve keeps). Every other descriptor above
2 is made close-on-exec, so the program sees exactly fds 0-2 plus the requested ones.
"""
import fcntl, os, socket, sys


def make(kind, keep):
    """Creates the object for one --fd and returns its descriptor number."""
    if kind == "tcp":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        s.listen(16)
    elif kind.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(kind[len("unix:"):])
        s.listen(16)
    elif kind.startswith("file:"):
        return os.open(kind[len("file:"):], os.O_RDONLY | os.O_CLOEXEC)
    elif kind == "unbound":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    elif kind == "connected":
        s, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        keep.append(peer.detach())
    else:
        sys.exit("fake_activate.py: unknown --fd kind %r" % kind)
    return s.detach()


def main():
    args = sys.argv[1:]
    kinds, sets, unsets, listen_pid, listen_pidfdid = [], {}, [], "self", None
    while args and args[0] != "--":
        flag = args.pop(0)
        if not args:
            sys.exit("fake_activate.py: %s needs a value" % flag)
        value = args.pop(0)
        if flag == "--fd":
            kinds.append(value)
        elif flag == "--set":
            name, _, val = value.partition("=")
            sets[name] = val
        elif flag == "--unset":
            unsets.append(value)
        elif flag == "--listen-pid":
            listen_pid = value
        elif flag == "--listen-pidfdid":
            listen_pidfdid = value
        else:
            sys.exit("fake_activate.py: unknown option %r" % flag)
    if not args or len(args) < 2:
        sys.exit("fake_activate.py: expected -- PROGRAM ARGS...")
    program = args[1:]

    keep = []  # peers of connected sockets, kept open (above the targets) until exec
    sources = [make(kind, keep) for kind in kinds]
    n = len(sources)
    # Move everything above both the sources and the targets first, so that no dup2 below lands
    # on a number that is still needed as a source.
    floor = max(sources + keep + [3 + n]) + 1
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor) for fd in sources]
    keep_high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor) for fd in keep]
    for fd in sources + keep:
        os.close(fd)
    # Any stray inherited descriptor must not reach the program.
    for entry in os.listdir("/proc/self/fd"):
        fd = int(entry)
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass  # the directory descriptor listdir used, already closed
    for i, fd in enumerate(high):
        target = 3 + i
        os.dup2(fd, target, inheritable=True)
        # dup2 onto a different number clears FD_CLOEXEC; say so explicitly anyway.
        os.set_inheritable(target, True)
        os.close(fd)

    env = dict(os.environ)
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_PIDFDID", "LISTEN_FDNAMES"):
        env.pop(name, None)
    env["LISTEN_FDS"] = str(n)
    env["LISTEN_PID"] = str(os.getpid()) if listen_pid == "self" else listen_pid
    if listen_pidfdid == "self":
        env["LISTEN_PIDFDID"] = str(os.fstat(os.pidfd_open(os.getpid())).st_ino)
    elif listen_pidfdid is not None:
        env["LISTEN_PIDFDID"] = listen_pidfdid
    env.update(sets)
    for name in unsets:
        env.pop(name, None)
    os.execve(program[0], program, env)


main()
