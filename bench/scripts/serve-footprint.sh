#!/usr/bin/env bash
# Footprint of a vhost-user-blk back-end process, side by side on one image in /dev/shm:
# start to listening socket (spawn to the first accepted connect(), polled every 0.2 ms),
# peak RSS (VmHWM of /proc/PID/status) idle and after a depth-32 randread load of
# `vmm run --workload bench`, for
#   native      src/Vmm.Host.Serve/bin/aot/native/vmm-serve serve blk ...  (the binary itself)
#   native-vmm  ./vmm serve blk ...                                         (through the script)
#   managed     dotnet src/Vmm.Host/bin/Release/net10.0/vmm.dll serve blk ...
#   managed-vmm VMM_SERVE_MANAGED=1 ./vmm serve blk ...
#   qsd         qemu-storage-daemon exporting the same image (vhost-user-blk)
# Backends are interleaved within each round. Prints one line per run, then the medians.
# Usage: bench/scripts/serve-footprint.sh [ROUNDS] [SECONDS] [BACKENDS...]
set -euo pipefail
root=$(cd -- "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/../.." && pwd)
rounds=${1:-5}; seconds=${2:-5}; shift $(($# < 2 ? $# : 2))
backends=("$@"); ((${#backends[@]})) || backends=(native native-vmm managed managed-vmm qsd)
VMM_BUILD_ONLY=1 "$root/vmm"
[[ -x "$root/src/Vmm.Host.Serve/bin/aot/native/vmm-serve" ]] || { echo "no native vmm-serve (is clang installed?)" >&2; exit 1; }
dir=$(mktemp -d /dev/shm/vmm-footprint.XXXXXX)
trap 'rm -rf "$dir"' EXIT
head -c 256M /dev/urandom >"$dir/disk.img"
echo "# $(date -u +%FT%TZ) $(nproc) cpus, load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
ROOT=$root DIR=$dir ROUNDS=$rounds SECONDS_=$seconds python3 - "${backends[@]}" <<'PY'
import json, os, signal, socket, statistics, subprocess, sys, time
root, d = os.environ["ROOT"], os.environ["DIR"]
rounds, seconds = int(os.environ["ROUNDS"]), os.environ["SECONDS_"]
img, sock = f"{d}/disk.img", f"{d}/blk.sock"
serve = ["serve", "blk", "--socket", sock, "--disk", img]
commands = {
    "native": ([f"{root}/src/Vmm.Host.Serve/bin/aot/native/vmm-serve", *serve], {}),
    "native-vmm": ([f"{root}/vmm", *serve], {}),
    "managed": (["dotnet", f"{root}/src/Vmm.Host/bin/Release/net10.0/vmm.dll", *serve], {}),
    "managed-vmm": ([f"{root}/vmm", *serve], {"VMM_SERVE_MANAGED": "1"}),
    "qsd": (["qemu-storage-daemon", "--blockdev", f"driver=file,node-name=file0,filename={img}",
             "--blockdev", "driver=raw,node-name=disk0,file=file0", "--export",
             f"type=vhost-user-blk,id=vub0,node-name=disk0,addr.type=unix,addr.path={sock},writable=on"], {}),
}
def hwm(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
def run_once(name):
    argv, extra = commands[name]
    if os.path.exists(sock): os.unlink(sock)
    env = dict(os.environ, **extra)
    t0 = time.monotonic()
    p = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(sock); break
        except OSError:
            if p.poll() is not None: raise SystemExit(f"{name} exited ({p.returncode}) before listening")
            time.sleep(0.0002)
        finally:
            s.close()
    start_ms = (time.monotonic() - t0) * 1000
    time.sleep(1)
    idle = hwm(p.pid)
    bench = subprocess.run([f"{root}/vmm", "run", "--vhost-user", f"{sock},type=blk", "--workload", "bench",
                            "--seconds", seconds, "--json", "--rw", "randread", "--block-size", "4k", "--iodepth", "32"],
                           capture_output=True, text=True, check=True)
    loaded = hwm(p.pid)
    p.send_signal(signal.SIGTERM); p.wait(30)
    iops = json.loads(bench.stdout.strip().splitlines()[-1]).get("iops")
    return start_ms, idle, loaded, iops
results = {n: [] for n in sys.argv[1:]}
for r in range(1, rounds + 1):
    for name in results:
        start_ms, idle, loaded, iops = run_once(name)
        results[name].append((start_ms, idle, loaded, iops))
        print(f"{r} {name:12} start {start_ms:7.1f} ms  VmHWM idle {idle/1024:6.1f} MB  loaded {loaded/1024:6.1f} MB  iops {iops}", flush=True)
print("# medians: backend start-ms VmHWM-idle-MB VmHWM-loaded-MB iops")
for name, rs in results.items():
    m = [statistics.median(x[i] for x in rs) for i in range(3)]
    iops = statistics.median(x[3] for x in rs if x[3] is not None) if any(x[3] is not None for x in rs) else None
    print(f"{name:12} {m[0]:7.1f} {m[1]/1024:6.1f} {m[2]/1024:6.1f} {iops}")
PY
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
