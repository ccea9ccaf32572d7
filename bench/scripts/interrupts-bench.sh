#!/usr/bin/env bash
# vmm run --workload bench with --interrupts function and event, for the in-process blk device
# and for `vmm serve blk` over vhost-user, on one image in /dev/shm; every configuration (and
# every build, when a second one is given) interleaved within each round. Prints one line per
# run: round device build interrupts load1 iops p50_us p99_us.
# Usage: bench/scripts/interrupts-bench.sh [ROUNDS] [SECONDS] [IODEPTH] [OTHER_VMM_DLL]
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
dir=$(mktemp -d /dev/shm/vmm-irq-bench.XXXXXX)
img="$dir/bench.img"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
head -c 256M /dev/urandom >"$img"
dotnet "$this" serve blk --socket "$dir/vmm.sock" --disk "$img" 2>"$dir/serve.log" & pids+=($!)
for _ in $(seq 300); do [[ -S "$dir/vmm.sock" ]] && break; sleep 0.1; done

builds=(this)
[[ -n "$other" ]] && builds+=(other)
for round in $(seq "$rounds"); do
  for device in inproc vhost-user; do
    case $device in
      inproc) dev=(--device "blk,disk=$img") ;;
      vhost-user) dev=(--vhost-user "$dir/vmm.sock,type=blk") ;;
    esac
    for build in "${builds[@]}"; do
      dll=$this
      [[ $build == other ]] && dll=$other
      for irq in function event; do
        out=$(dotnet "$dll" run "${dev[@]}" --workload bench --seconds "$seconds" --json --rw randread \
          --block-size 4k --iodepth "$depth" --interrupts "$irq" | tail -1)
        fig=$(sed -n 's/.*"iops":\([0-9.]*\).*"p50_us":\([0-9.]*\),"p99_us":\([0-9.]*\).*/\1 \2 \3/p' <<<"$out")
        echo "$round $device $build $irq $(cut -d' ' -f1 /proc/loadavg) ${fig:-$out}"
      done
    done
  done
done
