#!/usr/bin/env bash
# vmm run --workload bench over vhost-user with --interrupts function and event, against
# `vmm serve blk` and qemu-storage-daemon on one raw image in /dev/shm; every configuration (and
# every build, when a second one is given) interleaved within each round. Prints one line per
# run: round backend build interrupts load1 iops p50_us p99_us.
# Usage: bench/scripts/vhost-user-interrupts-bench.sh [ROUNDS] [SECONDS] [IODEPTH] [OTHER_VMM_DLL]
#   OTHER_VMM_DLL: a vmm.dll built from another commit (dotnet build src/Vmm.Host -c Release -o DIR),
#   run beside this tree's build as "other".
set -euo pipefail
rounds=${1:-5}
seconds=${2:-5}
depth=${3:-32}
other=${4:-}
root=$(cd -- "$(dirname -- "$0")/../.." && pwd)
VMM_BUILD_ONLY=1 "$root/vmm"
this="$root/src/Vmm.Host/bin/Release/net10.0/vmm.dll"
dir=$(mktemp -d /dev/shm/vmm-vu-irq-bench.XXXXXX)
img="$dir/bench.img"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
head -c 256M /dev/urandom >"$img"
dotnet "$this" serve blk --socket "$dir/vmm.sock" --disk "$img" 2>"$dir/serve.log" & pids+=($!)
qemu-storage-daemon --blockdev "driver=file,node-name=file0,filename=$img" \
  --blockdev driver=raw,node-name=disk0,file=file0 \
  --export "type=vhost-user-blk,id=vub0,node-name=disk0,addr.type=unix,addr.path=$dir/qsd.sock,writable=on,num-queues=1,logical-block-size=512" \
  2>"$dir/qsd.log" & pids+=($!)
for s in vmm qsd; do for _ in $(seq 300); do [[ -S "$dir/$s.sock" ]] && break; sleep 0.1; done; done

builds=(this)
[[ -n "$other" ]] && builds+=(other)
for round in $(seq "$rounds"); do
  for backend in vmm qsd; do
    for build in "${builds[@]}"; do
      dll=$this
      [[ $build == other ]] && dll=$other
      for irq in function event; do
        out=$(dotnet "$dll" run --vhost-user "$dir/$backend.sock,type=blk" --workload bench --seconds "$seconds" --json \
          --rw randread --block-size 4k --iodepth "$depth" --interrupts "$irq" | tail -1)
        fig=$(sed -n 's/.*"iops":\([0-9.]*\).*"p50_us":\([0-9.]*\),"p99_us":\([0-9.]*\).*/\1 \2 \3/p' <<<"$out")
        echo "$round $backend $build $irq $(cut -d' ' -f1 /proc/loadavg) ${fig:-$out}"
      done
    done
  done
done
