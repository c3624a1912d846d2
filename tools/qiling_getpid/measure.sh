#!/usr/bin/env bash
# Compare underbridge IPC round trips with a Qiling getpid, measured the same way
# (a loop of calls, wall time per call), interleaved on the same machine.
#
# Qiling is installed into a scratch virtualenv OUTSIDE the repo; it is never a
# dependency of underbridge.
#
#   tools/qiling_getpid/measure.sh            # defaults below
#   RUNS=3 QL_N="20000 100000" UB_ROUNDS=5000 tools/qiling_getpid/measure.sh
#
# Env: QL_VENV (default /tmp/qiling-venv), UNDERBRIDGE (default: the repo's
# .venv/bin/underbridge, made by `make test`), RUNS (3),
# QL_N (list of loop counts, default "20000 100000"), UB_ROUNDS (5000),
# WORK (scratch dir for the binary and rootfs, default /tmp/qiling_getpid_work).
#
# Qiling per getpid = (t(N) - t(0)) / N, where t is the wall time of ql.run()
# alone (Qiling construction and ELF loading excluded), each t the best of RUNS.
# Underbridge: wall_us_per_rtt from `underbridge bench ipc --json`, best of RUNS.
# One "run" does every Qiling size and both underbridge modes, so the two
# sides alternate and share the machine's noise.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
QL_VENV="${QL_VENV:-/tmp/qiling-venv}"
RUNS="${RUNS:-3}"
QL_N="${QL_N:-20000 100000}"
UB_ROUNDS="${UB_ROUNDS:-5000}"
WORK="${WORK:-/tmp/qiling_getpid_work}"
UNDERBRIDGE="${UNDERBRIDGE:-$HERE/../../.venv/bin/underbridge}"

# 1. scratch venv with qiling
if [ ! -x "$QL_VENV/bin/python" ] || ! "$QL_VENV/bin/python" -c "import qiling" 2>/dev/null; then
  python3 -m venv "$QL_VENV"
  "$QL_VENV/bin/pip" install -q "qiling==1.4.6"  # the version the README's figures used
fi

# 2. the static getpid loop (raw `syscall`, rax=39: no libc caching)
mkdir -p "$WORK/rootfs"
musl-gcc -static -O2 -o "$WORK/rootfs/getpid_loop" "$HERE/getpid_loop.c"

cat > "$WORK/ql_run.py" <<'PY'
import os, sys, time
from qiling import Qiling
from qiling.const import QL_VERBOSE
rootfs, n = sys.argv[1], int(sys.argv[2])
ql = Qiling([os.path.join(rootfs, "getpid_loop"), str(n)], rootfs, verbose=QL_VERBOSE.DISABLED)
t = time.perf_counter()
ql.run()
print(f"RESULT {time.perf_counter() - t:.6f}")
PY

# 3. interleaved runs and the table
python3 - "$QL_VENV/bin/python" "$WORK" "$UNDERBRIDGE" "$RUNS" "$UB_ROUNDS" $QL_N <<'PY'
import json, subprocess, sys
qlpy, work, ub, runs, ub_rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
sizes = [int(x) for x in sys.argv[6:]]
ver = subprocess.run([qlpy, "-c", "import qiling, unicorn; print(qiling.__version__, unicorn.__version__)"],
                     capture_output=True, text=True, check=True).stdout.split()
ubver = subprocess.run([ub.replace("/underbridge", "/python"), "-c", "import unicorn; print(unicorn.__version__)"],
                       capture_output=True, text=True).stdout.strip() or "?"
print(f"qiling {ver[0]} (unicorn {ver[1]} in {qlpy.rsplit('/bin/', 1)[0]}); underbridge unicorn {ubver}")

def ql_time(n):
    out = subprocess.run([qlpy, f"{work}/ql_run.py", f"{work}/rootfs", str(n)],
                         capture_output=True, text=True, check=True).stdout
    return float([l for l in out.splitlines() if l.startswith("RESULT ")][-1].split()[1])

def ub_bench(mode):
    out = subprocess.run([ub, "bench", "ipc", "--mode", mode, "--rounds", str(ub_rounds), "--json"],
                         capture_output=True, text=True, check=True).stdout
    return {r["path"]: r["wall_us_per_rtt"] for r in json.loads(out)["results"]}

qt = {n: [] for n in [0] + sizes}           # seconds of ql.run() per run
ubr = {}                                     # (mode, path) -> [us per rtt]
for i in range(runs):
    for n in [0] + sizes:
        qt[n].append(ql_time(n))
    for mode in ("sel4", "underbridge"):
        for path, us in ub_bench(mode).items():
            ubr.setdefault((mode, path), []).append(us)
    print(f"run {i+1}: " + "  ".join(f"ql t({n})={qt[n][-1]:.3f}s" for n in qt) + "  "
          + "  ".join(f"{m}/{p}={v[-1]:.1f}us" for (m, p), v in ubr.items()), flush=True)

print()
print("Qiling getpid, us per call = (t(N) - t(0)) / N:")
qbest = {}
for n in sizes:
    per_run = [(qt[n][i] - qt[0][i]) / n * 1e6 for i in range(runs)]
    qbest[n] = (min(qt[n]) - min(qt[0])) / n * 1e6
    print(f"  N={n:>7}: per run " + ", ".join(f"{x:.1f}" for x in per_run)
          + f"; best-of-{runs} t(N)-t(0): {qbest[n]:.1f} us")
ref_n = max(sizes)
ref = qbest[ref_n]
print(f"  reference: N={ref_n}, {ref:.1f} us per getpid")
print()
print(f"{'path':<28}{'runs (us)':<26}{'best us':>8}   {'this / Qiling getpid':<22}{'Qiling getpid / this'}")
print(f"{'Qiling getpid (N=%d)' % ref_n:<28}{'':<26}{ref:>8.1f}   {'1.00':<22}1.00")
for (mode, path), v in ubr.items():
    b = min(v)
    print(f"{mode + ' ' + path:<28}{', '.join(f'{x:.1f}' for x in v):<26}{b:>8.1f}   "
          f"{f'{b/ref:.2f}':<22}{ref/b:.2f}x")
PY
