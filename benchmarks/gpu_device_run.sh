#!/usr/bin/env bash
# The GPU power-cap benchmark on the accelerator machine, as one prepared command.
#
# 1. Here, once, from the repository root (needs PyPI and a C compiler):
#
#        PYTHON=/tmp/venv/bin/python bash benchmarks/gpu_device_run.sh prepare
#
#    (PYTHON: a Python that has cffi and pycparser; default python3)
#
#    builds nrgloops/_native.abi3.so here and downloads the cffi and pycparser
#    wheels for the device's Python 3.12 into .whl/ (ignored by git through
#    .git/info/exclude).  The device machine has no network and no cffi; its
#    python3 has torch, numpy, matplotlib and pytest.
#
# 2. The device tool's run, with:
#        command:   bash benchmarks/gpu_device_run.sh
#        carry:     [".whl", "nrgloops/_native.abi3.so"]
#        timeout_s: 420
#    It installs the wheels under /tmp/site, uses the carried extension (or
#    builds it there if that one does not load), checks the NVML meter on the
#    real GPU, runs benchmarks/gpu_cap.py under a hard limit of NRG_GPU_LIMIT_S
#    seconds (default 330; it takes about 2 minutes), and leaves in $OUT:
#    gpu_cap.csv, gpu_cap.json, gpu_cap.png, gpu_cap.log, nvidia-smi.txt.  The
#    PASS/FAIL checks and the summary table are the last lines it prints; its
#    exit status is the benchmark's: 1 when a check FAILs.  NRG_GPU_ARGS adds
#    options to gpu_cap.py (e.g. "--caps 300,350"; the tests run the whole
#    script with "--dry-run ..." on a simulated GPU).
#
# Read only: only nvidia-smi queries and NVML getters; no GPU setting is touched.
set -u
cd "$(dirname "$0")/.."

if [ "${1:-}" = prepare ]; then
    PY=${PYTHON:-python3}
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    CFFI=$("$PY" -c 'import cffi; print(cffi.__version__)') || exit 1
    PYC=$("$PY" -c 'import pycparser; print(pycparser.__version__)') || exit 1
    rm -rf .whl && mkdir -p .whl
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
        -d .whl "cffi==$CFFI" "pycparser==$PYC" || exit 1
    if command -v flock >/dev/null; then
        flock /tmp/nrg-build.lock "$PY" setup.py -q build_ext --inplace 2>&1 | grep -v -i warn
    else
        "$PY" setup.py -q build_ext --inplace
    fi
    ls -l .whl nrgloops/_native.abi3.so || exit 1
    echo "ready: run this script on the device with carry [\".whl\", \"nrgloops/_native.abi3.so\"]"
    exit 0
fi

set -o pipefail
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=python3
LIMIT=${NRG_GPU_LIMIT_S:-330}
T0=$(date +%s)

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,power.limit,power.draw,temperature.gpu,clocks.sm \
    --format=csv 2>&1 | tee "$OUT/nvidia-smi.txt"
"$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.cuda.is_available())'

echo "== install"
if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c 'import nrgloops._native' 2>/dev/null; then
    echo "the carried extension does not load here; building it"
    "$PY" setup.py -q build_ext --inplace 2>&1 | tail -5
fi
"$PY" -c 'import nrgloops; print("nrgloops", nrgloops.__version__, "imports")' || exit 1

echo "== the NVML meter on the real GPU"
timeout 60 "$PY" - <<'EOF'
import time
from nrgloops import Sampler
from nrgloops.meters.nvml import open_nvml
for mode in ("auto", "power"):
    m = open_nvml(mode=mode)
    with Sampler(m) as s:
        time.sleep(1.0)
        print(f"{mode:>5}: {m.mode} mode, {s.power(window=0.5):.1f} W idle over 0.5 s, "
              f"{s.samples} samples, {s.errors} errors, last status {m.last_status_text}")
    print("       " + m.description)
EOF

echo "== benchmark (limit ${LIMIT} s)"
# shellcheck disable=SC2086  # NRG_GPU_ARGS: words, on purpose
timeout -k 10 "$LIMIT" "$PY" benchmarks/gpu_cap.py --out "$OUT" ${NRG_GPU_ARGS:-} 2>&1 |
    tee "$OUT/gpu_cap.log"
rc=$?
echo "== done: exit $rc after $(( $(date +%s) - T0 )) s; files in \$OUT:"
ls -l "$OUT"
exit $rc
