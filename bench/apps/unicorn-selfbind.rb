# contrib/unicorn/unicorn.conf.rb for a unicorn that binds its own sockets (no launcher): the
# benchmark's "no sockherd" baseline and the USR2+QUIT dance. BENCH_LISTEN="addr,path,...".
instance_eval(File.read(File.join(File.dirname(__FILE__), "../../contrib/unicorn/unicorn.conf.rb")))
ENV.fetch("BENCH_LISTEN").split(",").each { |address| listen address }
