#!/usr/bin/env bash
# vmm run --vhost-user bench against `vmm serve blk` and qemu-storage-daemon on one raw image on
# a real disk, with the host page cache dropped before every run (needs root), in each cache
# mode: ours with --cache none and --cache writeback, qsd with cache.direct=on,aio=io_uring and
# with its defaults. Back-ends and configurations are interleaved within each round. Measures
# the back-end's CPU time per I/O from /proc/PID/stat (utime + stime, all threads).
# Prints one line per run: round backend config load1 cpu_us_per_io json; then medians.
# Usage: bench/scripts/disk-bench.sh [ROUNDS] [SECONDS] [DIR] [IMAGE_MIB]
set -euo pipefail
rounds=${1:-3}
seconds=${2:-5}
base=${3:-/var/tmp}
mib=${4:-2048}
root=$(cd -- "$(dirname -- "$0")/../.." && pwd)
vmm="$root/vmm"
[[ $(id -u) == 0 ]] || { echo "run as root: the page cache is dropped before every run" >&2; exit 2; }
dir=$(mktemp -d "$base/vmm-disk-bench.XXXXXX")
img="$dir/bench.img"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
# Random bytes, not a sparse file: a read of a hole never reaches the disk.
head -c "${mib}M" /dev/urandom >"$img"
sync
VMM_BUILD_ONLY=1 "$vmm"

start_qsd() { # name, extra options of the file node
  qemu-storage-daemon --blockdev "driver=file,node-name=file0,filename=$img$2" \
    --blockdev driver=raw,node-name=disk0,file=file0 \
    --export "type=vhost-user-blk,id=vub0,node-name=disk0,addr.type=unix,addr.path=$dir/$1.sock,writable=on,num-queues=1,logical-block-size=512" \
    2>"$dir/$1.log" & pids+=($!); eval "pid_${1//-/_}=$!"
}
"$vmm" serve blk --socket "$dir/vmm-none.sock" --disk "$img" --cache none 2>"$dir/vmm-none.log" & pids+=($!); pid_vmm_none=$!
"$vmm" serve blk --socket "$dir/vmm-wb.sock" --disk "$img" --cache writeback 2>"$dir/vmm-wb.log" & pids+=($!); pid_vmm_wb=$!
start_qsd qsd-direct ",cache.direct=on,aio=io_uring"
start_qsd qsd-default ""
for s in vmm-none vmm-wb qsd-direct qsd-default; do for _ in $(seq 300); do [[ -S "$dir/$s.sock" ]] && break; sleep 0.1; done; done
grep -h "Disk " "$dir"/vmm-*.log >&2 || true
# One unmeasured second per back-end first: ours compiles its data path on first use (JIT).
for backend in vmm-none vmm-wb qsd-direct qsd-default; do
  "$vmm" run --vhost-user "$dir/$backend.sock,type=blk" --workload bench --seconds 1 --json --rw randrw --iodepth 8 >/dev/null
done

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
configs=("randread 4k 1" "randread 4k 8" "randread 4k 32" "randwrite 4k 1" "randwrite 4k 8" "randwrite 4k 32" "read 128k 8" "write 128k 8")
out="$dir/runs.txt"
backends=(vmm-none qsd-direct vmm-wb qsd-default)
for round in $(seq "$rounds"); do
  # The order of the back-ends rotates from round to round: whoever runs first after a
  # configuration change meets the disk in another state (a write-back cache still draining).
  order=("${backends[@]:$(( (round - 1) % 4 ))}" "${backends[@]:0:$(( (round - 1) % 4 ))}")
  for cfg in "${configs[@]}"; do
    read -r rw bs depth <<<"$cfg"
    for backend in "${order[@]}"; do
      pidvar="pid_${backend//-/_}"; pid=${!pidvar}
      sync; echo 3 >/proc/sys/vm/drop_caches
      load=$(cut -d' ' -f1 /proc/loadavg)
      before=$(cpu_ticks "$pid")
      json=$("$vmm" run --vhost-user "$dir/$backend.sock,type=blk" --workload bench --seconds "$seconds" --json --rw "$rw" --block-size "$bs" --iodepth "$depth")
      after=$(cpu_ticks "$pid")
      ios=$(sed -E 's/.*"ios":([0-9]+).*/\1/' <<<"$json")
      cpu=$(awk -v t=$((after - before)) -v hz="$hz" -v n="$ios" 'BEGIN { printf "%.1f", n ? t * 1e6 / hz / n : 0 }')
      echo "$round $backend $rw-$bs-$depth $load $cpu $json" | tee -a "$out"
    done
  done
done

echo
echo "medians: config backend iops p50_us p99_us cpu_us_per_io (load1 range)"
for cfg in "${configs[@]}"; do
  read -r rw bs depth <<<"$cfg"
  for backend in "${backends[@]}"; do
    grep " $backend $rw-$bs-$depth " "$out" | awk '
      function med(a, n,   i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
                                      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
      { n++; match($0, /"iops":[0-9.]+/); iops[n] = substr($0, RSTART + 7, RLENGTH - 7) + 0
        match($0, /"p50_us":[0-9.]+/); p50[n] = substr($0, RSTART + 9, RLENGTH - 9) + 0
        match($0, /"p99_us":[0-9.]+/); p99[n] = substr($0, RSTART + 9, RLENGTH - 9) + 0
        cpu[n] = $5 + 0; load = load (load ? "/" : "") $4; cfg = $3; be = $2 }
      END { printf "%s %s %.1f %.1f %.1f %.1f (%s)\n", cfg, be, med(iops, n), med(p50, n), med(p99, n), med(cpu, n), load }'
  done
done
