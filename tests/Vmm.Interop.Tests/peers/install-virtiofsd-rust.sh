#!/usr/bin/env bash
# install-virtiofsd-rust.sh: installs (or finds cached) the Rust virtiofsd of Debian 13
# (trixie) for the interop tests, without touching the system's packages or apt sources.
#
# Usage: install-virtiofsd-rust.sh [--quiet]
# Prints one line on stdout: the path of a launcher script that runs virtiofsd with its
# arguments. Everything else goes to stderr. Exit code non-zero, with one sentence on
# stderr, when it cannot be installed.
#
# Debian 12 has no build of the Rust virtiofsd, and Debian 13's needs glibc >= 2.39. So
# the .debs of virtiofsd and of the libraries it links (libc6, libseccomp2, libcap-ng0,
# libgcc-s1) are fetched with `apt-get download` through a private apt configuration (a
# sources list and a lists directory of its own under the cache), unpacked with
# `dpkg-deb -x`, and the launcher runs the binary through trixie's own dynamic loader
# (`ld-linux-x86-64.so.2 --library-path ...`): the system's libc is never replaced.
#
# Cache: ${XDG_CACHE_HOME:-$HOME/.cache}/managedvmm/peers/virtiofsd-rust/, rebuilt when this
# script changes (its sha256 is in `stamp`). Safe to run concurrently (flock).
set -euo pipefail

quiet=0
[[ "${1:-}" == --quiet ]] && quiet=1

say() { ((quiet)) || echo "install-virtiofsd-rust: $*" >&2; }
die() { echo "install-virtiofsd-rust: $*" >&2; exit 1; }

self=$(readlink -f -- "${BASH_SOURCE[0]}")
self_sum=$(sha256sum "$self" | cut -d' ' -f1)
dir="${XDG_CACHE_HOME:-$HOME/.cache}/managedvmm/peers/virtiofsd-rust"
launcher="$dir/virtiofsd"
mkdir -p "$dir"

exec 9>"$dir/.lock"
flock 9

if [[ -f "$dir/stamp" && "$(cat "$dir/stamp")" == "$self_sum" && -x "$launcher" ]]; then
  echo "$launcher"
  exit 0
fi

[[ $(uname -m) == x86_64 ]] || die "only x86_64 is supported (the loader path is amd64's)"
for tool in apt-get dpkg-deb; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' is not installed"
done

packages=(virtiofsd libc6 libseccomp2 libcap-ng0 libgcc-s1)
apt_dir="$dir/apt"
root="$dir/root"
debs="$dir/debs"
rm -rf "$apt_dir" "$root"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial" "$debs" "$root"
: >"$apt_dir/status"
cat >"$apt_dir/sources.list" <<'EOF'
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main
EOF

# Only this private configuration: no system sources, no system package state.
apt_opts=(
  -o Dir::Etc::SourceList="$apt_dir/sources.list"
  -o Dir::Etc::SourceParts=/nonexistent
  -o Dir::State::Lists="$apt_dir/lists"
  -o Dir::State::Status="$apt_dir/status"
  -o Dir::Cache="$apt_dir/cache"
  -o Dir::Cache::Archives="$apt_dir/archives"
  -o APT::Get::List-Cleanup=0
)
mkdir -p "$apt_dir/cache"

log="$apt_dir/apt.log"
say "reading Debian 13 package lists (private apt configuration)"
apt-get "${apt_opts[@]}" update >"$log" 2>&1 || { cat "$log" >&2; die "apt-get update of the trixie lists failed"; }

for pkg in "${packages[@]}"; do
  say "downloading $pkg"
  (cd "$debs" && rm -f "${pkg}"_*.deb && apt-get "${apt_opts[@]}" download "$pkg" >"$log" 2>&1) ||
    { cat "$log" >&2; die "apt-get download $pkg (trixie) failed"; }
  deb=$(ls -1 "$debs/${pkg}"_*.deb | head -n1)
  dpkg-deb -x "$deb" "$root"
done

loader="$root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
binary="$root/usr/libexec/virtiofsd"
[[ -x "$binary" ]] || binary="$root/usr/bin/virtiofsd"
[[ -f "$loader" ]] || die "trixie's libc6 has no $loader"
[[ -x "$binary" ]] || die "the virtiofsd package has no binary in usr/libexec or usr/bin"

cat >"$launcher.next" <<EOF
#!/bin/sh
# Debian 13's virtiofsd through Debian 13's own loader and libraries (install-virtiofsd-rust.sh).
exec "$loader" --library-path "$root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu" "$binary" "\$@"
EOF
chmod +x "$launcher.next"
"$launcher.next" --version >"$log" 2>&1 || { cat "$log" >&2; die "the installed virtiofsd does not run"; }
mv -f "$launcher.next" "$launcher"
rm -rf "$apt_dir/lists" "$apt_dir/archives"   # the package lists are large and not needed again
echo "$self_sum" >"$dir/stamp"
say "installed $(head -n1 "$log")"
echo "$launcher"
