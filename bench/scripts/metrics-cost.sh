#!/usr/bin/env bash
# What the metrics cost on the data path: tree A (before metrics) against tree B (with them),
# and B again with --stats on both `vmm serve` and `vmm run` (a MeterListener attached, so the
# latency histograms are recorded too). Each tree's `vmm run --vhost-user` against its own
# `vmm serve blk`, and each tree's in-process device, on one image in /dev/shm; variants
# interleaved within each round. Prints one line per run: round variant-device config load1 json;
# then the median IOPS per variant, device and config.
# Usage: bench/scripts/metrics-cost.sh TREE_A TREE_B [ROUNDS] [SECONDS]
set -euo pipefail
a=$(cd -- "$1" && pwd); b=$(cd -- "$2" && pwd)
rounds=${3:-3}; seconds=${4:-5}
dir=$(mktemp -d /dev/shm/vmm-metrics-cost.XXXXXX); img="$dir/bench.img"; pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
head -c 256M /dev/urandom >"$img"
VMM_BUILD_ONLY=1 "$a/vmm"; VMM_BUILD_ONLY=1 "$b/vmm"
"$a/vmm" serve blk --socket "$dir/a.sock" --disk "$img" 2>"$dir/a.log" & pids+=($!)
"$b/vmm" serve blk --socket "$dir/b.sock" --disk "$img" 2>"$dir/b.log" & pids+=($!)
"$b/vmm" serve blk --socket "$dir/c.sock" --disk "$img" --stats 2>/dev/null & pids+=($!)
for t in a b c; do for _ in $(seq 300); do [[ -S "$dir/$t.sock" ]] && break; sleep 0.1; done; done
configs=("randread 1" "randread 32")
for round in $(seq "$rounds"); do
  for cfg in "${configs[@]}"; do
    read -r rw depth <<<"$cfg"
    for kind in vu inproc; do
      for t in a b c; do
        tree=$a; [[ $t != a ]] && tree=$b
        stats=(); [[ $t == c ]] && stats=(--stats)
        if [[ $kind == vu ]]; then dev=(--vhost-user "$dir/$t.sock,type=blk"); else dev=(--device "blk,disk=$img"); fi
        out=$("$tree/vmm" run "${dev[@]}" --workload bench --seconds "$seconds" --json --rw "$rw" --block-size 4k --iodepth "$depth" "${stats[@]}" 2>/dev/null)
        echo "$round $t-$kind $rw-$depth $(cut -d' ' -f1 /proc/loadavg) $out"
      done
    done
  done
done | tee "$dir/runs.txt"
echo "median IOPS (variant-device config):"
awk '{ match($0, /"iops":[0-9.]+/); v = substr($0, RSTART + 7, RLENGTH - 7); k = $2 " " $3; vals[k] = vals[k] " " v }
     END { for (k in vals) { n = split(vals[k], x, " "); asort(x); printf "%s %s\n", k, x[int((n + 1) / 2)] } }' "$dir/runs.txt" | sort
