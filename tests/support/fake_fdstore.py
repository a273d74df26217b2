#!/usr/bin/env python3
"""Poses as systemd for a service with an fd store, for tests: holds the stored descriptors,
passes them at the start (LISTEN_FDS, LISTEN_FDNAMES) and answers the service's notify socket.

Usage: fake_fdstore.py [--stored KIND=NAME]... [--fdstore N|unset] [--delay SECONDS]
                       [--keep-removed] [--before SHELL-COMMAND] --log PATH -- PROGRAM ARGS...

Each --stored puts one descriptor in the store (and so at fds 3, 4, ... of PROGRAM, in order):
  tcp:HOST:PORT   a listening TCP socket on HOST:PORT
  unix:PATH       a listening unix stream socket bound to PATH
  pipe            the write end of a pipe (what a probe left behind)
  unbound         a TCP socket never bound nor listened on

--before runs a shell command once the stored descriptors exist, before PROGRAM starts (e.g. to
delete a stored socket's file, as a stop may). PROGRAM runs as our child (LISTEN_PID is its pid) with NOTIFY_SOCKET, and FDSTORE=N (default 4;
`unset` as systemd 252 leaves it). Like systemd, we keep our own copy of every stored descriptor
until it is removed. Each datagram is handled --delay seconds after it is read (systemd busy with
other work), in order:
  FDSTORE=1 + FDNAME=X + descriptors   stored under X (logged `add X`)
  FDSTOREREMOVE=1 + FDNAME=X           every descriptor named X closed (logged `remove X`);
                                       with --keep-removed only logged, the descriptors kept
  BARRIER=1 + a descriptor             that descriptor closed (logged `barrier`)
Other datagrams are logged as `other <first line>`. We exit with PROGRAM's status; a TERM or INT
we get is passed on to it. At the end the log gets `held NAME...` (what the store still holds).
"""
import array, fcntl, os, select, signal, socket, subprocess, sys, tempfile, time


def make(kind):
    if kind.startswith("tcp:"):
        host, _, port = kind[len("tcp:"):].rpartition(":")
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, int(port)))
        s.listen(16)
    elif kind.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(kind[len("unix:"):])
        s.listen(16)
    elif kind == "unbound":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    elif kind == "pipe":
        r, w = os.pipe()
        os.close(r)
        return w
    else:
        sys.exit("fake_fdstore.py: unknown --stored kind %r" % kind)
    return s.detach()


def main():
    args = sys.argv[1:]
    stored, fdstore, delay, log_path, keep_removed, before = [], "4", 0.0, None, False, None
    while args and args[0] != "--":
        flag = args.pop(0)
        if flag == "--keep-removed":
            keep_removed = True
            continue
        if not args:
            sys.exit("fake_fdstore.py: %s needs a value" % flag)
        value = args.pop(0)
        if flag == "--stored":
            kind, _, name = value.rpartition("=")
            stored.append((name, make(kind)))
        elif flag == "--fdstore":
            fdstore = value
        elif flag == "--delay":
            delay = float(value)
        elif flag == "--before":
            before = value
        elif flag == "--log":
            log_path = value
        else:
            sys.exit("fake_fdstore.py: unknown option %r" % flag)
    if not args or len(args) < 2 or log_path is None:
        sys.exit("fake_fdstore.py: expected --log PATH -- PROGRAM ARGS...")
    program = args[1:]
    log = open(log_path, "a", buffering=1)

    if before is not None and subprocess.call(["sh", "-c", before]) != 0:
        sys.exit("fake_fdstore.py: --before %r failed" % before)
    notify_dir = tempfile.mkdtemp(prefix="fake-fdstore-")
    notify_path = os.path.join(notify_dir, "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)

    pid = os.fork()
    if pid == 0:
        notify.close()
        fds = [fd for _, fd in stored]
        floor = max(fds + [3 + len(fds)]) + 1
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor) for fd in fds]
        for i, fd in enumerate(high):
            os.dup2(fd, 3 + i, inheritable=True)
        env = dict(os.environ)
        env.update({"LISTEN_FDS": str(len(fds)), "LISTEN_PID": str(os.getpid()),
                    "LISTEN_FDNAMES": ":".join(name for name, _ in stored), "NOTIFY_SOCKET": notify_path})
        env.pop("LISTEN_PIDFDID", None)
        if fdstore == "unset":
            env.pop("FDSTORE", None)
        else:
            env["FDSTORE"] = fdstore
        keep = set(range(3, 3 + len(fds)))
        for entry in os.listdir("/proc/self/fd"):
            fd = int(entry)
            if fd > 2 and fd not in keep:
                try:
                    os.set_inheritable(fd, False)
                except OSError:
                    pass
        os.execve(program[0], program, env)

    signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGTERM))
    signal.signal(signal.SIGINT, lambda *_: os.kill(pid, signal.SIGINT))
    store = list(stored)
    status = None
    while status is None:
        ready, _, _ = select.select([notify], [], [], 0.05)
        if ready:
            fds = array.array("i")
            data, ancdata, _, _ = notify.recvmsg(65536, socket.CMSG_SPACE(64 * fds.itemsize))
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            time.sleep(delay)
            fields = dict(line.partition("=")[::2] for line in data.decode("utf-8", "replace").split("\n") if line)
            name = fields.get("FDNAME", "stored")
            if fields.get("FDSTORE") == "1":
                store.extend((name, fd) for fd in fds)
                log.write("add %s\n" % name)
                fds = []
            elif fields.get("FDSTOREREMOVE") == "1" and keep_removed:
                log.write("remove %s (kept)\n" % name)
            elif fields.get("FDSTOREREMOVE") == "1":
                for _, fd in [e for e in store if e[0] == name]:
                    os.close(fd)
                store = [e for e in store if e[0] != name]
                log.write("remove %s\n" % name)
            elif fields.get("BARRIER") == "1":
                log.write("barrier\n")
            else:
                log.write("other %s\n" % data.decode("utf-8", "replace").split("\n")[0])
            for fd in fds:
                os.close(fd)
        done, code = os.waitpid(pid, os.WNOHANG)
        if done:
            status = code
    log.write("held %s\n" % " ".join(name for name, _ in store))
    os.unlink(notify_path)
    os.rmdir(notify_dir)
    sys.exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


main()
