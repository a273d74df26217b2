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
