# unicorn settings for running under sockherd --flavor unicorn: sockets arrive in UNICORN_FD, so
# there is no `listen` line. Do not send HUP to a unicorn that has no `listen` lines: it closes
# inherited sockets that its config does not name. sockherd never does.
worker_processes 2
timeout 30
# Load the app in the master: copy-on-write sharing with the workers, and a release whose code
# does not load fails the new master at once (a quick, loud reload failure) instead of leaving
# workers crash-looping until the ready timeout.
preload_app true
