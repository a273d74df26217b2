"""The smallest server that takes LISTEN_FDS: for the 1,000-reload churn, where the launcher's
own bookkeeping is measured, not an app. Answers every GET with "release=tiny pid=P master=P".
TERM: finish the request in hand, then exit (a wakeup pipe ends the wait; the handler itself does
nothing else, so no accepted connection is ever dropped). Run with python3 -S -E (~15 ms start)."""
import os, select, signal, socket

stop = False


def on_term(signum, frame):
    global stop
    stop = True


wake_r, wake_w = os.pipe()
os.set_blocking(wake_w, False)
signal.set_wakeup_fd(wake_w)
signal.signal(signal.SIGTERM, on_term)
n = int(os.environ.get("LISTEN_FDS", "0")) if os.environ.get("LISTEN_PID") == str(os.getpid()) else 0
listeners = [socket.socket(fileno=fd) for fd in range(3, 3 + n)]
body = ("release=tiny pid=%d master=%d\n" % (os.getpid(), os.getpid())).encode()
answer = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
while not stop:
    ready, _, _ = select.select(listeners + [wake_r], [], [])
    for listener in ready:
        if stop or listener == wake_r:
            break
        # Blocking accept (O_NONBLOCK is shared with the other generations: leave it alone). If
        # another generation took the connection, we wait here for the next one.
        conn, _ = listener.accept()
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
