"""The smallest server that takes LISTEN_FDS: for the 1,000-reload churn, where the launcher's
own bookkeeping is measured, not an app. Answers every GET with "release=tiny pid=P master=P";
TERM ends it after the request in hand. Run with python3 -S -E (starts in ~15 ms)."""
import os, select, signal, socket

stop = False
busy = False


def on_term(signum, frame):
    global stop
    stop = True
    if not busy:  # idle in select(): nothing in hand, go now (select would restart otherwise)
        os._exit(0)


signal.signal(signal.SIGTERM, on_term)
n = int(os.environ.get("LISTEN_FDS", "0")) if os.environ.get("LISTEN_PID") == str(os.getpid()) else 0
listeners = [socket.socket(fileno=fd) for fd in range(3, 3 + n)]
body = ("release=tiny pid=%d master=%d\n" % (os.getpid(), os.getpid())).encode()
answer = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
while not stop:
    try:
        ready, _, _ = select.select(listeners, [], [], 1.0)
    except InterruptedError:
        continue
    for listener in ready:
        try:
            # Blocking accept (the sockets' O_NONBLOCK is shared with the other generations: leave
            # it alone); if another generation took the connection, TERM still ends us here.
            conn, _ = listener.accept()
        except InterruptedError:
            continue
        busy = True
        conn.settimeout(5)
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            conn.sendall(answer)
        except OSError:
            pass
        finally:
            conn.close()
            busy = False
