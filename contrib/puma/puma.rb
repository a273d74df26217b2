# puma settings for running under sockherd --flavor puma: use exactly the sockets systemd or
# sockherd passed in LISTEN_FDS, and bind nothing else (puma's default is tcp://0.0.0.0:9292).
# `bind_to_activated_sockets 'only'` is safe here because sockherd starts a fresh puma for every
# generation; puma's own USR2 restart with it falls back to 0.0.0.0:9292, so never send USR2.
bind_to_activated_sockets "only"
workers 2
threads 1, 4
# Load the app before forking workers: a release that does not load fails the new generation at
# once instead of at sockherd's ready timeout.
preload_app!
# On a graceful stop, puma's reactor closes connections it accepted whose request has not fully
# arrived yet (and idle keep-alive ones); a client sending at that instant sees a reset. Without
# the reactor, every accepted connection goes to a thread that reads and answers it. Keep this
# behind a proxy that buffers slow clients (nginx), as puma's own docs advise for it.
queue_requests false
# Before the master forks its workers: age the objects the boot made into Ruby's old generation
# (an object that survives three collections is old; four minor ones age them all). Otherwise
# every new worker runs a full collection within its first requests (measured: 23-26 ms of GC
# in its first 0.6 s, all its threads stopped), just as the new generation takes over, and its
# first requests wait behind it. With this, one minor collection of about 2 ms. In the
# benchmark, the longest request a new generation answered in its first 0.5 s went from 98 ms
# to 27 ms (median of 20 reloads; the old workers meanwhile: 14-17 ms). Puma 5's
# `nakayoshi_fork` did this (and a compaction), and is gone in puma 6; Ruby 3.3's
# `Process.warmup` does it too.
before_fork do
  4.times { GC.start(full_mark: false) }
end
