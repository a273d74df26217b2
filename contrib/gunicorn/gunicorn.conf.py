# gunicorn settings for running under sockherd (sockets come from LISTEN_FDS, never bound here).
import atexit
import gc
import os
import sys
import threading

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
# the whole load. The two hooks below skip that work; what a normal exit runs still runs.


def worker_exit(server, worker):
    """A worker that ends cleanly (its SystemExit(0) on the way out) runs what a normal exit
    runs before the teardown, in the same order (threads: executors shut down and non-daemon
    threads joined; the atexit handlers, logging's among them; the standard streams flushed),
    then leaves without the teardown, as multiprocessing's children do: about 1 ms of CPU instead
    of 40-65. A worker that fails (a boot error, an app that does not load) keeps Python's exit
    and its status, which the master reads to halt."""
    ending = sys.exc_info()[1]
    if not isinstance(ending, SystemExit) or ending.code not in (0, None):
        return
    # CPython's own steps of an exit; where one is missing, the exit stays Python's.
    shutdown_threads = getattr(threading, "_shutdown", None)
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if shutdown_threads is None or run_exit_handlers is None:
        return
    shutdown_threads()
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)


def on_exit(server):
    """The master's exit: its objects leave the garbage collector's reach, so that its last
    collection has nothing to visit (exit status and exit handlers unchanged)."""
    gc.freeze()
