# gunicorn settings for running under sockherd (sockets come from LISTEN_FDS, never bound here).
workers = 2
# gunicorn >= 25.1 opens a control socket shared by every instance of the user; a second
# generation would unlink the first one's. sockherd is the control interface.
control_socket_disable = True
# TERM drains workers for up to this long; keep it below sockherd's --stop-timeout.
graceful_timeout = 20
