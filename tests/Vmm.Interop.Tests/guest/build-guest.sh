#!/usr/bin/env bash
# build-guest.sh: builds (or finds cached) the Linux guest used by the interop tests:
# a Debian kernel (vmlinuz) and an initramfs (busybox + the virtio modules + /init, a
# set of test scenarios chosen on the kernel command line).
#
# Usage: build-guest.sh [--quiet]
# Prints one line on stdout: the directory holding `vmlinuz` and `initramfs.gz`.
# Everything else goes to stderr. Exit code non-zero, with one sentence on stderr, when
# the guest cannot be built.
#
# Cache: ${XDG_CACHE_HOME:-$HOME/.cache}/managedvmm/guest/<kernel version>/, rebuilt when
# this script or migcheck.c changes (their sha256 is stored in the `stamp` file). Idempotent
# and safe to run concurrently (flock).
#
# Needs: apt-get (download only), dpkg-deb, cpio, gzip, xz (only for .ko.xz modules), gcc
# with a static libc (libc6-dev) for /bin/migcheck (migcheck.c, scenario blk-migrate).
#
# Guest kernel command line (QEMU -append):
#   vmmtest=SCENARIO   blk-rw | blk-ro | blk-mq | blk-loop | blk-big | blk-migrate | rng
#   vmmtest.off=N      offset of the written area, in MiB (default 1)
#   vmmtest.mib=N      size of the written area, in MiB (default 4)
#   vmmtest.seed=S     pattern seed, [A-Za-z0-9_-] (default 0)
# The pattern for seed S is 64-byte lines, line i = printf "%-63s\n" "vmmtest S i",
# repeated to the size (the tests rebuild it on the host).
#
# Marker lines on the serial console (each starts with "VMMTEST "):
#   size=<sectors>  ro=<0|1>  before=<md5>  pattern=<md5>  md5=<md5>  write=ok|fail
#   queues=<n>  cpus=<n>  md5.cpu<N>=<md5>  pattern.cpu<N>=<md5>  run.hctx<N>=<times run>
#   writing=<n>
#   blk-big: write.direct=ok|fail  md5.direct=<md5>  md5.buffered=<md5>  write.buffered=ok|fail
#            pattern.b=<md5>  md5.b=<md5>  scattered=<free pages made single>
#   blk-migrate (migcheck.c): filled=<MiB of 0xFF>  read=<MiB>  data=ok|bad
#            data.bad=<pages that differ from pattern SEED>  data.ff=<pages still all 0xFF>
#   rng=<hex of 64 bytes>  rng2=<hex>  rng_current=<name>  error=<text>  done
set -euo pipefail

quiet=0
[[ "${1:-}" == --quiet ]] && quiet=1

say() { ((quiet)) || echo "build-guest: $*" >&2; }
die() { echo "build-guest: $*" >&2; exit 1; }

self=$(readlink -f -- "${BASH_SOURCE[0]}")
migcheck_src="$(dirname "$self")/migcheck.c"
self_sum=$(cat "$self" "$migcheck_src" | sha256sum | cut -d' ' -f1)
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/managedvmm/guest"
mkdir -p "$cache_root"

exec 9>"$cache_root/.lock"
flock 9

# The kernel package is the one linux-image-amd64 depends on, e.g. linux-image-6.1.0-56-amd64.
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }' || true)
if [[ -z "$kpkg" ]]; then
  # No package lists (offline): use the newest cache entry that kept its kernel .deb.
  kdeb=$(ls -1 "$cache_root"/*/debs/linux-image-[0-9]*.deb 2>/dev/null | LC_ALL=C sort -V | tail -n1 || true)
  [[ -n "$kdeb" ]] ||
    die "cannot resolve the kernel package: 'apt-cache depends linux-image-amd64' gave nothing (run apt-get update as root)"
  kpkg=$(basename "$kdeb")
  kpkg=${kpkg%%_*}
  say "no apt package lists; using the cached $kpkg"
fi
kver=${kpkg#linux-image-}
dir="$cache_root/$kver"

if [[ -f "$dir/stamp" && "$(cat "$dir/stamp")" == "$self_sum" && -f "$dir/vmlinuz" && -f "$dir/initramfs.gz" ]]; then
  echo "$dir"
  exit 0
fi

for tool in apt-get dpkg-deb cpio gzip gcc; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' is not installed"
done

mkdir -p "$dir/debs"
work=$(mktemp -d "${TMPDIR:-/tmp}/build-guest.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Downloads package $1 into $dir/debs (kept: the .debs are the expensive part).
download() {
  local pkg=$1 deb
  deb=$(ls -1 "$dir/debs/${pkg}_"*.deb 2>/dev/null | head -n1 || true)
  if [[ -z "$deb" ]]; then
    say "downloading $pkg"
    (cd "$work" && apt-get download "$pkg" >/dev/null 2>"$work/apt.log") ||
      { cat "$work/apt.log" >&2; die "apt-get download $pkg failed"; }
    mv "$work/${pkg}_"*.deb "$dir/debs/"
    deb=$(ls -1 "$dir/debs/${pkg}_"*.deb | head -n1)
  fi
  echo "$deb"
}

kdeb=$(download "$kpkg")
bdeb=$(download busybox-static)

say "unpacking $kpkg"
dpkg-deb -x "$kdeb" "$work/kernel"
dpkg-deb -x "$bdeb" "$work/busybox"
[[ -f "$work/kernel/boot/vmlinuz-$kver" ]] || die "no boot/vmlinuz-$kver in $kdeb"
[[ -x "$work/busybox/bin/busybox" ]] || die "no bin/busybox in $bdeb"

moddir="$work/kernel/lib/modules/$kver/kernel"
root="$work/root"
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,modules}
cp "$work/busybox/bin/busybox" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
  [[ -e "$root/bin/$applet" ]] || ln -s busybox "$root/bin/$applet"
done
gcc -static -O2 -Wall -o "$root/bin/migcheck" "$migcheck_src" 2>"$work/gcc.log" ||
  { cat "$work/gcc.log" >&2; die "cannot build migcheck (gcc -static needs libc6-dev)"; }

# Copies module $1 (a path under $moddir without the .ko suffix) into /modules as NAME.ko.
# Returns 1 when the kernel has no such module (built in or absent).
add_module() {
  local base=$moddir/$1 name
  name=$(basename "$1")
  if [[ -f "$base.ko" ]]; then
    cp "$base.ko" "$root/modules/$name.ko"
  elif [[ -f "$base.ko.xz" ]]; then
    command -v xz >/dev/null 2>&1 || die "'xz' is not installed (needed for $name.ko.xz)"
    xz -dc "$base.ko.xz" >"$root/modules/$name.ko"
  elif [[ -f "$base.ko.zst" ]]; then
    command -v zstd >/dev/null 2>&1 || die "'zstd' is not installed (needed for $name.ko.zst)"
    zstd -qdc "$base.ko.zst" >"$root/modules/$name.ko"
  else
    return 1
  fi
  echo "$name" >>"$root/modules/order"
}

# Dependency order (from each module's depends=): the Debian .deb has no modules.dep.
: >"$root/modules/order"
for m in drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_modern_dev \
         drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci drivers/block/virtio_blk; do
  add_module "$m" || say "note: ${m##*/} is not a module (built in?)"
done
add_module drivers/char/hw_random/rng-core || true
add_module drivers/char/hw_random/virtio-rng || say "note: virtio-rng is not a module (built in?)"

cp "$work/kernel/boot/vmlinuz-$kver" "$work/vmlinuz"

cat >"$root/init" <<'INIT'
#!/bin/sh
# Guest /init for the ManagedVmm interop tests (generated by build-guest.sh).
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp

mark() { echo "VMMTEST $*"; }
finish() { sync; mark done; poweroff -f; sleep 10; }

for m in $(cat /modules/order); do
  insmod /modules/$m.ko || mark "error=insmod-$m"
done

scenario=; off=1; mib=4; seed=0
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    vmmtest=*) scenario=${arg#vmmtest=} ;;
    vmmtest.off=*) off=${arg#vmmtest.off=} ;;
    vmmtest.mib=*) mib=${arg#vmmtest.mib=} ;;
    vmmtest.seed=*) seed=${arg#vmmtest.seed=} ;;
  esac
done
mark "scenario=$scenario"

# pattern SEED MIB > file: 64-byte lines "vmmtest SEED i" padded with spaces.
pattern() {
  awk -v seed="$1" -v n=$(($2 * 16384)) 'BEGIN { for (i = 0; i < n; i++) printf "%-63s\n", "vmmtest " seed " " i }'
}

wait_for() {
  i=0
  while [ ! -e "$1" ]; do
    i=$((i + 1))
    [ $i -gt 100 ] && { mark "error=no-$1"; return 1; }
    sleep 0.1
  done
}

md5_of() { dd if=/dev/vda bs=1M skip="$1" count="$2" iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1; }

blk_common() {
  wait_for /sys/block/vda/size || finish
  wait_for /dev/vda || finish
  mark "size=$(cat /sys/block/vda/size)"
  mark "ro=$(cat /sys/block/vda/ro)"
}

# write_at SEED OFF MIB [CPU]: writes the pattern, prints write=ok|fail.
write_at() {
  pattern "$1" "$3" >/tmp/p.$1
  mark "pattern=$(md5sum /tmp/p.$1 | cut -d' ' -f1)"
  if dd if=/tmp/p.$1 of=/dev/vda bs=1M seek="$2" oflag=direct conv=fsync 2>/tmp/dd.err; then
    mark "write=ok"
  else
    mark "write=fail"
    sed 's/^/dd: /' /tmp/dd.err
  fi
  rm -f /tmp/p.$1
}

case "$scenario" in
  blk-rw)
    blk_common
    mark "before=$(md5_of $off $mib)"
    write_at "$seed" "$off" "$mib"
    mark "md5=$(md5_of $off $mib)"
    ;;
  blk-ro)
    blk_common
    mark "before=$(md5_of $off $mib)"
    write_at "$seed" "$off" "$mib"
    mark "md5=$(md5_of $off $mib)"
    ;;
  blk-mq)
    blk_common
    mark "queues=$(ls /sys/block/vda/mq | wc -l)"
    mark "cpus=$(nproc)"
    # One writer and reader pinned to each CPU, on separate areas.
    n=$(nproc); c=0
    while [ $c -lt $n ]; do
      (
        o=$((off + c * mib))
        pattern "$seed-$c" "$mib" >/tmp/p.$c
        p=$(md5sum /tmp/p.$c | cut -d' ' -f1)
        if taskset -c $c dd if=/tmp/p.$c of=/dev/vda bs=64k seek=$((o * 16)) oflag=direct conv=fsync 2>/dev/null; then
          r=$(taskset -c $c dd if=/dev/vda bs=64k skip=$((o * 16)) count=$((mib * 16)) iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
          echo "VMMTEST pattern.cpu$c=$p"
          echo "VMMTEST md5.cpu$c=$r"
        else
          echo "VMMTEST write.cpu$c=fail"
        fi
      ) &
      c=$((c + 1))
    done
    wait
    # How often each hardware queue was run (blk-mq debugfs).
    if mount -t debugfs debugfs /sys/kernel/debug; then
      for h in /sys/kernel/debug/block/vda/hctx*; do
        [ -f "$h/run" ] && mark "run.${h##*/}=$(cat "$h/run")"
      done
    else
      mark "debugfs=fail"
    fi
    ;;
  blk-loop)
    # Writes forever (different data each round) until the VM is killed.
    blk_common
    pattern "$seed-a" "$mib" >/tmp/pa
    pattern "$seed-b" "$mib" >/tmp/pb
    i=0
    while true; do
      i=$((i + 1))
      mark "writing=$i"
      if [ $((i % 2)) -eq 0 ]; then f=/tmp/pa; else f=/tmp/pb; fi
      dd if=$f of=/dev/vda bs=64k seek=$((off * 16)) oflag=direct conv=fsync 2>/dev/null || { mark "write=fail"; break; }
    done
    ;;
  blk-big)
    # 1 MiB requests over scattered guest pages, direct and through the page cache: Linux
    # then builds requests of as many segments as the device's seg_max allows, each one
    # an indirect table (virtio_blk). Guest memory is fragmented first, so that dd's
    # buffer and the page cache get single pages, not contiguous runs the block layer
    # would merge into few segments.
    blk_common
    mkdir /tmp/frag
    awk 'BEGIN { for (i = 0; i < 16384; i++) { f = "/tmp/frag/" i; printf "%4096s", "" > f; close(f) } }'
    rm -f /tmp/frag/*[02468]
    mark "scattered=$(ls /tmp/frag | wc -l)"
    pattern "$seed" "$mib" >/tmp/pa
    mark "pattern=$(md5sum /tmp/pa | cut -d' ' -f1)"
    if dd if=/tmp/pa of=/dev/vda bs=1M seek="$off" oflag=direct conv=fsync 2>/tmp/dd.err; then
      mark "write.direct=ok"
    else
      mark "write.direct=fail"
      sed 's/^/dd: /' /tmp/dd.err
    fi
    mark "md5.direct=$(md5_of $off $mib)"
    echo 3 >/proc/sys/vm/drop_caches
    mark "md5.buffered=$(dd if=/dev/vda bs=1M skip=$off count=$mib 2>/dev/null | md5sum | cut -d' ' -f1)"
    pattern "$seed-b" "$mib" >/tmp/pb
    mark "pattern.b=$(md5sum /tmp/pb | cut -d' ' -f1)"
    if dd if=/tmp/pb of=/dev/vda bs=1M seek=$((off + mib)) conv=fsync 2>/tmp/dd.err; then
      mark "write.buffered=ok"
    else
      mark "write.buffered=fail"
      sed 's/^/dd: /' /tmp/dd.err
    fi
    mark "md5.b=$(md5_of $((off + mib)) $mib)"
    ;;
  blk-migrate)
    # Live migration (MigrationInteropTests), in phases the host drives through sector 0 of
    # the image; /bin/migcheck (migcheck.c) holds the data in a buffer of its own, filled by
    # the device with O_DIRECT after QEMU sent it, and checks it on the destination. The host
    # wrote the data (MIB MiB at OFF) before boot: the guest's CPU never writes it.
    blk_common
    # One process keeps dirtying the same memory, so that QEMU keeps iterating while its
    # downtime limit is small (the host lifts it once the data is read).
    awk 'BEGIN { while (1) for (i = 0; i < 131072; i++) a[i] = i + n++ }' &
    dirtier=$!
    migcheck /dev/vda "$off" "$mib" "$seed"
    kill $dirtier
    ;;
  rng)
    wait_for /dev/hwrng || finish
    mark "rng_current=$(cat /sys/class/misc/hw_random/rng_current 2>/dev/null)"
    mark "rng=$(timeout 30 dd if=/dev/hwrng bs=64 count=1 iflag=fullblock 2>/dev/null | hexdump -v -e '/1 "%02x"')"
    mark "rng2=$(timeout 30 dd if=/dev/hwrng bs=64 count=1 iflag=fullblock 2>/dev/null | hexdump -v -e '/1 "%02x"')"
    ;;
  *)
    mark "error=unknown-scenario-$scenario"
    ;;
esac
finish
INIT
chmod +x "$root/init"

say "building initramfs"
(cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet -R 0:0) | gzip -9n >"$work/initramfs.gz"

mv -f "$work/vmlinuz" "$dir/vmlinuz"
mv -f "$work/initramfs.gz" "$dir/initramfs.gz"
cp "$root/modules/order" "$dir/modules"
echo "$self_sum" >"$dir/stamp"
say "guest ready in $dir"
echo "$dir"
