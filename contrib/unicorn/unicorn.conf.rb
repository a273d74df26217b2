# unicorn settings for running under sockherd --flavor unicorn: sockets arrive in UNICORN_FD, so
# there is no `listen` line. Do not send HUP to a unicorn that has no `listen` lines: it closes
# inherited sockets that its config does not name. sockherd never does.
worker_processes 2
timeout 30
preload_app false
