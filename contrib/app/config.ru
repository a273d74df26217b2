# Example Rack app for unicorn and puma, the twin of app.py (same routes, same answers).
# A BROKEN file in the working directory makes loading fail; APP_BOOT_SLEEP=N delays it.
raise "this release is broken on purpose (BROKEN file present)" if File.exist?("BROKEN")
sleep Float(ENV.fetch("APP_BOOT_SLEEP", "0"))

release = File.exist?("RELEASE") ? File.read("RELEASE").strip : File.basename(Dir.pwd)
env_keys = %w[LISTEN_FDS LISTEN_PID LISTEN_FDNAMES UNICORN_FD NOTIFY_SOCKET PWD]

run lambda { |env|
  path = env["PATH_INFO"]
  if path == "/slow"
    seconds = env["QUERY_STRING"].to_s[/(?:^|&)s=([0-9.]+)/, 1] || "1"
    sleep Float(seconds)
  end
  body = case path
         when "/health" then "ok\n"
         when "/env" then env_keys.select { |k| ENV.key?(k) }.map { |k| "#{k}=#{ENV[k]}\n" }.join
         else "release=#{release} pid=#{Process.pid} master=#{Process.ppid}\n"
         end
  [200, { "Content-Type" => "text/plain", "Content-Length" => body.bytesize.to_s }, [body]]
}
