#!/usr/bin/env bash
# What the metrics cost on the data path: tree A (before metrics) against tree B (with them),
# and B again with --stats on both `vmm serve` and `vmm run` (a MeterListener attached, so the
# latency histograms are recorded too). Each tree's `vmm run --vhost-user` against its own
# `vmm serve blk`, and each tree's in-process device, on one image in /dev/shm; variants
# interleaved within each round. Measures the back-end's CPU time per I/O from /proc/PID/stat
# (utime + stime, all threads; vhost-user runs only, "-" in-process). Prints one line per run:
# round variant-device config load1 cpu_us_per_io json; then the medians of IOPS and of CPU
# per I/O for each variant, device and config.
# Usage: bench/scripts/metrics-cost.sh TREE_A TREE_B [ROUNDS] [SECONDS]
# VARIANTS (default "a b c"), KINDS ("vu inproc") and CONFIGS ("randread 1,randread 32") narrow a run.
set -euo pipefail
a=$(cd -- "$1" && pwd); b=$(cd -- "$2" && pwd)
rounds=${3:-3}; seconds=${4:-5}
dir=$(mktemp -d /dev/shm/vmm-metrics-cost.XXXXXX); img="$dir/bench.img"; pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
head -c 256M /dev/urandom >"$img"
VMM_BUILD_ONLY=1 "$a/vmm"; VMM_BUILD_ONLY=1 "$b/vmm"
"$a/vmm" serve blk --socket "$dir/a.sock" --disk "$img" 2>"$dir/a.log" & pids+=($!); pid_a=$!
"$b/vmm" serve blk --socket "$dir/b.sock" --disk "$img" 2>"$dir/b.log" & pids+=($!); pid_b=$!
"$b/vmm" serve blk --socket "$dir/c.sock" --disk "$img" --stats 2>/dev/null & pids+=($!); pid_c=$!
cpu_ticks() { # utime + stime of a process (and its exec'd dotnet), in clock ticks
  awk '{ print $14 + $15 }' "/proc/$1/stat"
}
tick_us=$((1000000 / $(getconf CLK_TCK)))
for t in a b c; do for _ in $(seq 300); do [[ -S "$dir/$t.sock" ]] && break; sleep 0.1; done; done
IFS=, read -r -a configs <<<"${CONFIGS:-randread 1,randread 32}"
read -r -a kinds <<<"${KINDS:-vu inproc}"
read -r -a variants <<<"${VARIANTS:-a b c}"
for round in $(seq "$rounds"); do
  for cfg in "${configs[@]}"; do
    read -r rw depth <<<"$cfg"
    for kind in "${kinds[@]}"; do
      for t in "${variants[@]}"; do
        tree=$a; [[ $t != a ]] && tree=$b
        stats=(); [[ $t == c ]] && stats=(--stats)
        if [[ $kind == vu ]]; then dev=(--vhost-user "$dir/$t.sock,type=blk"); else dev=(--device "blk,disk=$img"); fi
        pid_var=pid_$t; before=$(cpu_ticks "${!pid_var}")
        out=$("$tree/vmm" run "${dev[@]}" --workload bench --seconds "$seconds" --json --rw "$rw" --block-size 4k --iodepth "$depth" "${stats[@]}" 2>/dev/null)
        after=$(cpu_ticks "${!pid_var}")
        ios=$(sed -n 's/.*"ios":\([0-9]*\).*/\1/p' <<<"$out")
        cpu="-"; [[ $kind == vu && ${ios:-0} -gt 0 ]] && cpu=$(awk -v t=$((after - before)) -v us="$tick_us" -v n="$ios" 'BEGIN { printf "%.3f", t * us / n }')
        echo "$round $t-$kind $rw-$depth $(cut -d' ' -f1 /proc/loadavg) $cpu $out"
      done
    done
  done
done | tee "$dir/runs.txt"
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR ? v[int((NR + 1) / 2)] : "-") }'; }
echo "medians: variant-device config iops cpu_us_per_io"
for key in $(awk '{ print $2 "/" $3 }' "$dir/runs.txt" | sort -u); do
  rows=$(awk -v k="$key" '$2 "/" $3 == k' "$dir/runs.txt")
  iops=$(sed -n 's/.*"iops":\([0-9.]*\).*/\1/p' <<<"$rows" | median)
  cpu=$(awk '$5 != "-" { print $5 }' <<<"$rows" | median)
  echo "${key/\// } $iops $cpu"
done
