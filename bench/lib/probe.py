#!/usr/bin/env python3
"""probe.py: what the benchmark driver asks of a running server, run where the server runs (on
the host, or inside a systemd box, whose pids and loopback are its own). Prints one JSON line.

  probe.py ident ADDR                       who answers now: {"master": M, "worker": W, "workers": [...]}
  probe.py new ADDR CRIT OLD TIMEOUT        poll until an answer comes from a new generation:
                                            CRIT=master: master not in OLD; CRIT=worker: worker
                                            not in OLD (comma-separated pids). {"t": ..., "master":..}
  probe.py gone PIDS TIMEOUT                wait until none of PIDS is alive. {"t": ..., "left": [...]}
ADDR is HOST:PORT or a unix socket path. Stdlib only; bounded by TIMEOUT.
"""
import json, os, socket, sys, time


def get(addr, timeout=5.0):
    if addr.startswith("/"):
        s = socket.socket(socket.AF_UNIX)
        target = addr
    else:
        host, port = addr.rsplit(":", 1)
        s = socket.socket(socket.AF_INET)
        target = (host, int(port))
    s.settimeout(timeout)
    try:
        s.connect(target)
        s.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    body = data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace")
    fields = dict(w.split("=", 1) for w in body.split() if "=" in w)
    return int(fields.get("master", 0)), int(fields.get("pid", 0))


def children(pid):
    out = []
    try:
        for tid in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/children" % (pid, tid)) as f:
                out += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return out


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def main():
    cmd = sys.argv[1]
    if cmd == "ident":
        master, worker = get(sys.argv[2])
        print(json.dumps({"master": master, "worker": worker, "workers": children(master)}))
    elif cmd == "new":
        addr, crit, old, timeout = sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
        old = {int(p) for p in old.split(",") if p}
        deadline = time.time() + timeout
        last = ""
        while time.time() < deadline:
            try:
                master, worker = get(addr)
                if (master if crit == "master" else worker) not in old and master:
                    print(json.dumps({"t": time.time(), "master": master, "worker": worker}))
                    return
            except OSError as e:
                last = str(e)
            time.sleep(0.01)
        print(json.dumps({"t": None, "error": "no new generation answered within %ss %s" % (timeout, last)}))
    elif cmd == "gone":
        pids, timeout = [int(p) for p in sys.argv[2].split(",") if p], float(sys.argv[3])
        deadline = time.time() + timeout
        while time.time() < deadline and any(alive(p) for p in pids):
            time.sleep(0.01)
        print(json.dumps({"t": time.time(), "left": [p for p in pids if alive(p)]}))
    else:
        sys.exit("usage: probe.py ident|new|gone ...")


if __name__ == "__main__":
    main()
