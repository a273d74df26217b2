# contrib/puma/puma.rb for a puma that binds its own sockets (no launcher): the benchmark's
# "no sockherd" baseline, the USR2 dance and the restart without socket activation.
# BENCH_BIND="tcp://127.0.0.1:8080,unix:///run/app/app.sock".
workers 2
threads 1, 4
preload_app!
queue_requests false
ENV.fetch("BENCH_BIND").split(",").each { |uri| bind uri }
