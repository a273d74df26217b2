#!/usr/bin/env bash
# load.sh OUT LOADREC TCP_ADDR UNIX_PATH MAX_SECONDS [RECORDER_PRIORITY]: the benchmark's load,
# all at once, until OUT/stop appears (or MAX_SECONDS pass):
#   wrk  -c4 keep-alive                  TCP   (throughput, its own error counters)
#   hey  -c4 -disable-keepalive          TCP   (fresh connections, Go's HTTP client)
#   loadrec: 2 keep-alive + 2 fresh connections on TCP, and the same on the unix socket
#            (every request recorded: the timelines, gaps and percentiles come from it)
# RECORDER_PRIORITY "rt": loadrec runs SCHED_FIFO (chrt -f 1), so that when it shares its CPU
# with wrk and hey, which keep that CPU busy, it never waits behind them to read an answer or
# send the next request: the measuring client then behaves like one on a host of its own, and
# what it records is the server's doing. It uses little CPU, so wrk and hey lose little.
# Runs on the host or inside a systemd box (tests/support/sdbox run), same script.
set -u
out=$1 loadrec=$2 tcp=$3 unix=$4 max=$5 priority=${6:-}
recorder=("$loadrec")
case $priority in
  "") ;;
  rt) recorder=(chrt -f 1 "$loadrec") ;;
  *) echo "load.sh: unknown recorder priority '$priority' (expected rt)" >&2; exit 2 ;;
esac
specs=("tcp:$tcp/keepalive/2" "tcp:$tcp/close/2")
if [ -n "$unix" ]; then specs+=("unix:$unix/keepalive/2" "unix:$unix/close/2"); fi
wrk -t1 -c4 -d"${max}s" --timeout 10s "http://$tcp/" >"$out/wrk.txt" 2>&1 & wrk=$!
hey -z "${max}s" -c 4 -t 10 -disable-keepalive "http://$tcp/" >"$out/hey.txt" 2>&1 & hey=$!
"${recorder[@]}" --out "$out/requests.csv" --stop-file "$out/stop" --max-seconds "$max" --timeout 10 "${specs[@]}" \
  2>"$out/loadrec.err" & rec=$!
date +%s.%N >"$out/started"
while [ ! -e "$out/stop" ] && kill -0 "$rec" 2>/dev/null; do sleep 0.05; done
date +%s.%N >"$out/stopped"
# Whether each generator was still running when the reloads ended (one that stopped early, or
# never started, measured nothing for the later reloads), then their exit statuses.
for name in wrk hey; do
  pid=${!name}
  if kill -0 "$pid" 2>/dev/null; then echo 1 >"$out/$name.alive"; else echo 0 >"$out/$name.alive"; fi
done
kill -INT "$wrk" "$hey" 2>/dev/null
wait "$wrk"; echo $? >"$out/wrk.rc"
wait "$hey"; echo $? >"$out/hey.rc"
wait "$rec"; echo $? >"$out/loadrec.rc"
touch "$out/done"
