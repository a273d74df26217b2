# gunicorn settings for running under sockherd (sockets come from LISTEN_FDS, never bound here).
import atexit
import gc
import os
import sys
import threading
import traceback

workers = 2
# gunicorn >= 25.1 opens a control socket shared by every instance of the user; a second
# generation would unlink the first one's. sockherd is the control interface.
control_socket_disable = True
# TERM drains workers for up to this long; keep it below sockherd's --stop-timeout.
graceful_timeout = 20


# A reload ends with the old generation exiting while the new one takes all the traffic. Python's
# own teardown at exit (a last garbage collection over every object, then every module freed)
# costs a gunicorn process 40-65 ms of CPU, and, writing to the pages it shares with its master,
# copies them: the exiting generation takes that CPU from the serving one exactly when it carries
# the whole load. The two hooks below skip that work. A clean exit of a worker, and the master's,
# still runs the threads' shutdown, the atexit handlers and the flush of stdout and stderr; what
# only the teardown does is skipped: objects' __del__ methods and weakref callbacks, the flush of
# a file left open and unflushed, the removal of a NamedTemporaryFile left open, a database
# connection's goodbye to its server. An app that needs one of those at exit does it in an atexit
# handler, or leaves the hooks out. Merge these with hooks of the same name you already have
# (exit_without_teardown is no gunicorn setting: gunicorn leaves it alone).


def worker_exit(server, worker):
    """A worker that ends cleanly (its SystemExit(0) on the way out) leaves without the teardown
    (exit_without_teardown below): about 1 ms of CPU instead of 40-65. A worker that fails (a
    boot error, an app that does not load) keeps Python's exit and its status, which the master
    reads to halt."""
    ending = sys.exc_info()[1]
    clean = isinstance(ending, SystemExit) and (
        ending.code is None or (isinstance(ending.code, int) and ending.code == 0)
    )
    # The master calls this hook too (for a worker that was already gone): only a worker ends here.
    if not clean or worker.pid != os.getpid():
        return
    exit_without_teardown(0, "worker %d" % os.getpid())


def on_exit(server):
    """The master's exit. gunicorn calls this from its halt(), right before sys.exit(exit_status);
    the status is halt's (a worker that failed to boot makes it 3, an app that does not load 4),
    read from halt's frame, as the hook is not given it. With it, the master leaves without the
    teardown too (3.3-3.5 ms of CPU from 0.3 s before its stop signal to its exit, against
    15-17 ms with only gc.freeze() and 45-74 ms with neither). Called from anywhere else, or on a
    Python with neither the steps nor the frame, the master exits as Python does, its objects
    frozen out of its last collection where gc.freeze() exists."""
    caller = sys._getframe(1) if hasattr(sys, "_getframe") else None
    status = caller.f_locals.get("exit_status") if caller and caller.f_code.co_name == "halt" else None
    if type(status) is int:
        exit_without_teardown(status, "master %d" % os.getpid())
    freeze = getattr(gc, "freeze", None)
    if freeze is not None:
        freeze()


def exit_without_teardown(status, who):
    """Runs what a normal exit runs before the teardown, in the same order (threads: executors
    shut down and non-daemon threads joined; the atexit handlers, logging's among them; the
    standard streams flushed), then leaves with os._exit(status), as multiprocessing's children
    do. An error in a step is printed and the next step runs, as in Python's own exit; a stream
    that cannot be flushed makes the status 120, as there. Returns (and the exit stays Python's)
    only where CPython's steps are missing."""
    # CPython's own steps of an exit; where one is missing, the exit stays Python's.
    shutdown_threads = getattr(threading, "_shutdown", None)
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if shutdown_threads is None or run_exit_handlers is None:
        return
    for step in (shutdown_threads, run_exit_handlers):
        try:
            step()
        except BaseException:
            traceback.print_exc()
    for stream in (sys.stdout, sys.stderr):
        if stream is None:
            continue
        try:
            stream.flush()
        except Exception as e:
            status = 120
            try:
                os.write(2, ("%s: flushing %s failed at exit: %s\n" % (who, getattr(stream, "name", "a stream"), e)).encode())
            except Exception:
                pass
    os._exit(status)
