#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md, step by step, on any CUDA host.
#
#   bench/gpu.sh wheels           where the package index is reachable: the service's dependencies
#                                 that a bare torch image lacks, as wheels for PYTHON_VERSION, in .whl/
#   bench/gpu.sh check            on the CUDA host: tests/gpu and tests/unit (the CUDA paths themselves)
#   bench/gpu.sh sweep [ARGS]     ours against the baseline, 1080p30 streams, 1 to 32 (about 10 min)
#   bench/gpu.sh soak N [ARGS]    N streams of ours for 10 minutes (about 11 min)
#   bench/gpu.sh all [ARGS]       check, sweep, then the soak at the sweep's best count
#
# On the CUDA host, wheels in .whl/ (if any) are installed into /tmp/site first, never into the
# host's own environment. Results (JSON and a log per step) go to $OUT, or bench-results/.
# ARGS are passed to bench/bench_pipeline.py (e.g. --compile --warmup 60).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
RESULTS=${OUT:-bench-results}
export PYTHONPATH="rt-detr-service:tests${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

# What the service imports beyond torch, torchvision, transformers, numpy, OpenCV, httpx,
# prometheus-client and pytest (which CUDA images carry): the versions rt-detr-service pins.
WHEELS=(
    av==18.1.0 fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.3 pydantic_core==2.50.4
    pydantic-settings==2.16.3 python-dotenv==1.2.4 typing-inspection==0.4.5 annotated-types==0.8.0
    uvicorn==0.54.0 websockets==17.4 httptools==0.9.0
)

wheels() {
    local platforms=()
    for n in 2_17 2_24 2_27 2_28 2_31 2_34; do platforms+=(--platform "manylinux_${n}_x86_64"); done
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" \
        --implementation cp "${platforms[@]}" --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
        --dest .whl "${WHEELS[@]}"
    du -sh .whl
}

install_wheels() {
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl
        export PYTHONPATH="$PYTHONPATH:/tmp/site"
    fi
    "$PYTHON" - <<'EOF'
import torch
if not torch.cuda.is_available():
    raise SystemExit("bench/gpu.sh: torch sees no CUDA device here")
print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}", flush=True)
EOF
    mkdir -p "$RESULTS"
}

check() {
    "$PYTHON" -m pytest -q -p no:cacheprovider tests/gpu tests/unit 2>&1 | tee "$RESULTS/check.log"
}

sweep() {
    "$PYTHON" bench/bench_pipeline.py --device cuda --json "$RESULTS/sweep.json" "$@" 2>&1 |
        tee "$RESULTS/sweep.log"
}

soak() {
    local streams=$1
    shift
    "$PYTHON" bench/bench_pipeline.py --device cuda --only ours --streams "$streams" --warmup 10 --duration 30 \
        --soak 600 --json "$RESULTS/soak.json" "$@" 2>&1 | tee "$RESULTS/soak.log"
}

best_count() {
    "$PYTHON" - "$RESULTS/sweep.json" <<'EOF'
import json, sys
counts = json.load(open(sys.argv[1]))["ours"]["counts"]
print(max((c["streams"] for c in counts if c["sustained"]), default=1))
EOF
}

step=${1:-}
shift || true
case "$step" in
wheels) wheels ;;
check)
    install_wheels
    check
    ;;
sweep)
    install_wheels
    sweep "$@"
    ;;
soak)
    [[ ${1:-} =~ ^[0-9]+$ ]] || { echo "usage: bench/gpu.sh soak N [ARGS]" >&2; exit 2; }
    install_wheels
    soak "$@"
    ;;
all)
    install_wheels
    check
    sweep "$@"
    soak "$(best_count)" "$@"
    ;;
*)
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
