# contrib/unicorn/unicorn.conf.rb with the worker count from BENCH_WORKERS (the scale benchmark).
instance_eval(File.read(File.join(File.dirname(__FILE__), "../../contrib/unicorn/unicorn.conf.rb")))
worker_processes Integer(ENV.fetch("BENCH_WORKERS", "2"))
