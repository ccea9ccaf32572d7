#!/usr/bin/env bash
# vmm run --vhost-user bench against `vmm serve blk` and qemu-storage-daemon, beside the
# in-process device, on one image in /dev/shm; configurations and back-ends interleaved
# within each round. Prints one line per run: round backend config json.
# Usage: bench/scripts/vhost-user-bench.sh [ROUNDS] [SECONDS]
set -euo pipefail
rounds=${1:-5}
seconds=${2:-5}
root=$(cd -- "$(dirname -- "$0")/../.." && pwd)
vmm="$root/vmm"
dir=$(mktemp -d /dev/shm/vmm-vu-bench.XXXXXX)
img="$dir/bench.img"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
head -c 256M /dev/urandom >"$img"
VMM_BUILD_ONLY=1 "$vmm"

"$vmm" serve blk --socket "$dir/vmm.sock" --disk "$img" 2>"$dir/serve.log" & pids+=($!)
qemu-storage-daemon --blockdev "driver=file,node-name=file0,filename=$img" \
  --blockdev driver=raw,node-name=disk0,file=file0 \
  --export "type=vhost-user-blk,id=vub0,node-name=disk0,addr.type=unix,addr.path=$dir/qsd.sock,writable=on,num-queues=1,logical-block-size=512" \
  2>"$dir/qsd.log" & pids+=($!)
for s in vmm qsd; do for _ in $(seq 300); do [[ -S "$dir/$s.sock" ]] && break; sleep 0.1; done; done

configs=("randread 1" "randread 32" "randwrite 32")
for round in $(seq "$rounds"); do
  for cfg in "${configs[@]}"; do
    read -r rw depth <<<"$cfg"
    for backend in inproc vmm qsd; do
      case $backend in
        inproc) dev=(--device "blk,disk=$img") ;;
        *) dev=(--vhost-user "$dir/$backend.sock,type=blk") ;;
      esac
      out=$("$vmm" run "${dev[@]}" --workload bench --seconds "$seconds" --json --rw "$rw" --block-size 4k --iodepth "$depth")
      echo "$round $backend $rw-$depth $out"
    done
  done
done
