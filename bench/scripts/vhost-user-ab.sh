#!/usr/bin/env bash
# A/B of two checkouts of this repository (say, main and a branch): each tree's
# `vmm run --vhost-user` against its own `vmm serve blk`, and each tree's in-process device,
# on one image in /dev/shm; trees and devices interleaved within each round.
# Prints one line per run: round tree-device config json (tree a or b).
# Usage: bench/scripts/vhost-user-ab.sh TREE_A TREE_B [ROUNDS] [SECONDS]
set -euo pipefail
a=$(cd -- "$1" && pwd); b=$(cd -- "$2" && pwd)
rounds=${3:-5}; seconds=${4:-5}
dir=$(mktemp -d /dev/shm/vmm-vu-ab.XXXXXX); img="$dir/bench.img"; pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
head -c 256M /dev/urandom >"$img"
for t in a b; do
  tree=$a; [[ $t == b ]] && tree=$b
  VMM_BUILD_ONLY=1 "$tree/vmm"
  "$tree/vmm" serve blk --socket "$dir/$t.sock" --disk "$img" 2>"$dir/$t.log" & pids+=($!)
done
for t in a b; do for _ in $(seq 300); do [[ -S "$dir/$t.sock" ]] && break; sleep 0.1; done; done
configs=("randread 1" "randread 32" "randwrite 32")
for round in $(seq "$rounds"); do
  for cfg in "${configs[@]}"; do
    read -r rw depth <<<"$cfg"
    for t in a b; do
      tree=$a; [[ $t == b ]] && tree=$b
      for kind in vu inproc; do
        if [[ $kind == vu ]]; then dev=(--vhost-user "$dir/$t.sock,type=blk"); else dev=(--device "blk,disk=$img"); fi
        out=$("$tree/vmm" run "${dev[@]}" --workload bench --seconds "$seconds" --json --rw "$rw" --block-size 4k --iodepth "$depth")
        echo "$round $t-$kind $rw-$depth $out"
      done
    done
  done
done
