# unicorn settings for native upgrade mode: unicorn is the service's main process (started by
# `sockherd exec --flavor unicorn`), and `sockherd reload` drives its own USR2 upgrade.
#
# The new master re-execs with the old master's command line and working directory. For it to
# load the *new* release after `current` was flipped (and to survive the old release being
# deleted), every path goes through the symlink and is re-read at each upgrade:
# - start unicorn with `-c /srv/app/current/unicorn-native.conf.rb` (absolute, via current);
# - working_directory below is re-applied by every new master, so `config.ru` resolves in the
#   release current points to at that moment.
working_directory "/srv/app/current"
# sockherd reload --pidfile finds the new master by this file (unicorn renames the old one's to
# unicorn.pid.oldbin, and back if the new master dies).
pid "/run/app/unicorn.pid"
worker_processes 2
timeout 30
# With preload, a release whose code does not load kills the new master at once: a quick,
# clean failure of the reload, and the old master keeps serving.
preload_app true
# No before_fork hook that sends QUIT (or TTOU) to the ".oldbin" master, as unicorn's example
# config has: `sockherd reload` stops the old master itself once the new one's workers settled,
# and keeps it until then for a rollback. With the hook the old master is gone before the new
# one is judged (sockherd then hands the new master to systemd at once and says so).
