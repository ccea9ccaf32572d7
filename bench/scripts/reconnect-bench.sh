#!/usr/bin/env bash
# Reconnect on return: how long after a restarted back-end's socket appears the VMM has its
# connection back with every ring replayed. `vmm serve blk` is killed (SIGKILL, so its socket
# file stays behind) under `vmm run --workload idle`, kept down for OUTAGE seconds, and started
# again; the backoff cap is 60 s, so without the socket watch the next attempt would be seconds
# away. "Socket back" is the moment the new socket file replaces the stale one (a poll loop of
# shell builtins on the path, comparing inodes); "restored" is the moment vmm run prints
# "connection restored" (its stderr lines stamped as they arrive). Both clocks are
# $EPOCHREALTIME. Prints one line per run: outage_s run latency_ms seen_ms trigger load1, where
# seen_ms is socket back -> vmm run's "socket is back" line (the watch alone) and latency_ms
# socket back -> "connection restored" (the watch, the new back-end's first connection, the
# handshake and the replay of every ring); then the medians per outage.
# The back-end is the one `./vmm serve` runs: the native vmm-serve binary when it is built
# (clang installed), else the managed one; SERVE=managed forces the managed back-end.
# Usage: bench/scripts/reconnect-bench.sh [RUNS] [OUTAGES...]   (default: 5 runs of 1, 4 and 10 s)
set -euo pipefail
runs=${1:-5}
shift || true
outages=("${@:-1 4 10}")
read -r -a outages <<<"${outages[*]}"
root=$(cd -- "$(dirname -- "$0")/../.." && pwd)
VMM_BUILD_ONLY=1 "$root/vmm"
dll="$root/src/Vmm.Host/bin/Release/net10.0/vmm.dll"
native="$root/src/Vmm.Host.Serve/bin/aot/native/vmm-serve"
serve=(dotnet "$dll")
if [[ "${SERVE:-native}" == native && -x "$native" ]]; then serve=("$native"); fi
echo "# back-end: ${serve[*]}; $(nproc) cpus, load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
dir=$(mktemp -d /dev/shm/vmm-reconnect-bench.XXXXXX)
sock="$dir/blk.sock"
img="$dir/disk.img"
serve_pid=
run_pid=
cleanup() {
  [[ -n "$run_pid" ]] && kill -TERM "$run_pid" 2>/dev/null || true
  [[ -n "$serve_pid" ]] && kill -TERM "$serve_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
head -c 16M /dev/urandom >"$img"

start_serve() {
  "${serve[@]}" serve blk --socket "$sock" --disk "$img" 2>>"$dir/serve.log" &
  serve_pid=$!
}

start_serve
until [[ -S "$sock" ]]; do sleep 0.05; done

# vmm run's stderr, each line stamped on arrival.
mkfifo "$dir/run.err"
dotnet "$dll" run --vhost-user "$sock,type=blk,reconnect-max-delay=60" --workload idle 2>"$dir/run.err" >/dev/null &
run_pid=$!
while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done <"$dir/run.err" >"$dir/run.log" &
until grep -q 'running' "$dir/run.log" 2>/dev/null; do sleep 0.1; done

restored_count() { grep -c 'connection restored' "$dir/run.log" || true; }

declare -A results seen_all
median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -n | awk '{ v[NR] = $1 } END { if (NR) print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2); else print "-" }'; }
for outage in "${outages[@]}"; do
  for run in $(seq "$runs"); do
    before=$(restored_count)
    kill -KILL "$serve_pid"
    wait "$serve_pid" 2>/dev/null || true
    ln -f "$sock" "$dir/stale"
    sleep "$outage"
    start_serve
    until [[ -S "$sock" && ! "$sock" -ef "$dir/stale" ]]; do :; done
    back=$EPOCHREALTIME
    until (( $(restored_count) > before )); do sleep 0.005; done
    restored=$(grep 'connection restored' "$dir/run.log" | tail -1 | cut -d' ' -f1)
    trigger=timer
    seen_ms=-
    seen=$(tail -n 4 "$dir/run.log" | grep 'socket is back' | tail -1 | cut -d' ' -f1 || true)
    if [[ -n "$seen" ]]; then
      trigger=watch
      seen_ms=$(awk -v a="$back" -v b="$seen" 'BEGIN { printf "%.1f", (b - a) * 1000 }')
      seen_all[$outage]+="$seen_ms "
    fi
    ms=$(awk -v a="$back" -v b="$restored" 'BEGIN { printf "%.1f", (b - a) * 1000 }')
    results[$outage]+="$ms "
    printf '%s %s %s %s %s %s\n' "$outage" "$run" "$ms" "$seen_ms" "$trigger" "$(cut -d' ' -f1 /proc/loadavg)"
  done
done

for outage in "${outages[@]}"; do
  printf 'median outage=%ss runs=%s latency_ms=%s seen_ms=%s\n' "$outage" "$runs" "$(median "${results[$outage]}")" "$(median "${seen_all[$outage]:-}")"
done
