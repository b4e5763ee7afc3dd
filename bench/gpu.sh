#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md, step by step, on any CUDA host.
#
#   bench/gpu.sh wheels             where the package index is reachable: the service's dependencies
#                                   that a bare torch image lacks, as wheels for PYTHON_VERSION, in .whl/
#   bench/gpu.sh quick              THE ONE COMMAND for a short lease (at most QUICK_BUDGET s, 480):
#                                   the figures that matter most, in this order, JSON saved after each
#                                   step so a run cut short keeps what it measured: tests/gpu; the
#                                   largest count of 1080p30 streams ours sustains with torch fp16
#                                   (8, 16, 24, 32, 48; 16's p50/p99 among them); the same with
#                                   TensorRT where it imports; the baseline's count; a 2-minute
#                                   memory check at 16 streams -> quick-*.json, quick.log
#   bench/gpu.sh check              tests/gpu and tests/unit on the GPU (about 1 to 2 min)
#   bench/gpu.sh sweep-baseline     the baseline at 1 and 2 1080p30 streams -> baseline.json (about 2 to 3 min)
#   bench/gpu.sh sweep-ours         ours at 1,4,8,12,16,24,32 streams, up to the first count it cannot
#                                   sustain -> ours.json (about 6 to 8 min)
#   bench/gpu.sh soak-start N       N streams of ours for 10 minutes (--max-batch N) -> soak.json, run
#                                   detached (about 12 min in all); the command itself stays up to
#                                   SOAK_HOLD seconds (560), printing progress, to keep a lent machine
#   bench/gpu.sh soak-wait          waits (up to SOAK_WAIT s, 570) for that soak to end, then copies
#                                   soak.json and soak.log to the results
#   bench/gpu.sh sweep | soak N     both sides 1 to 32 -> sweep.json (about 12 min) | soak N in the foreground
#   bench/gpu.sh all                hosts without a time limit: check, sweep, then the soak at ours' best
#                                   count, all in the foreground; a failed step is reported, the rest run,
#                                   and the exit status is non-zero if any failed (about 30 min)
# ARGS after any bench step are passed to bench/bench_pipeline.py (e.g. --compile --warmup 60).
#
# On the CUDA host, wheels in .whl/ (if any) are installed into /tmp/site, never into the host's
# own environment, and checked (requirements met, the service imports) before any step runs.
# Results (JSON and a log per step) go to $BENCH_RESULTS, else $OUT, else bench-results/; the
# detached soak writes to $BENCH_RESULTS, else /tmp/bench-results (it outlives $OUT).
#
# On a lent machine with a 10-minute limit per command (see docs/benchmarks.md), carrying .whl:
#   1. bench/gpu.sh check; bench/gpu.sh sweep-baseline    2. bench/gpu.sh sweep-ours
#   3. bench/gpu.sh soak-start N                          4. bench/gpu.sh soak-wait  (within 30 s of 3)
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
RESULTS=${BENCH_RESULTS:-${OUT:-bench-results}}
QUICK_BUDGET=${QUICK_BUDGET:-480}
SOAK_DIR=${BENCH_RESULTS:-/tmp/bench-results}
SOAK_HOLD=${SOAK_HOLD:-560}
SOAK_WAIT=${SOAK_WAIT:-570}
export PYTHONPATH="rt-detr-service:tests${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PIP_ROOT_USER_ACTION=ignore

# What the service, its tests and the benchmark import beyond what CUDA images carry (torch,
# torchvision, transformers, numpy, OpenCV, Pillow, httpx, prometheus-client, pytest, uvloop,
# anyio, h11, click, PyYAML), with every requirement of these, recursively: the versions of the
# project's .venv. typing-extensions: pydantic 2.14 needs >= 4.16, newer than images may have.
# The results path adds the tracker (trackers, with supervision and its small needs) and the event
# store (SQLAlchemy); the outputs' clients (paho-mqtt, confluent-kafka) load only when configured.
WHEELS=(
    trackers==2.6.1 supervision==0.31.2 pydeprecate==0.13.0 defusedxml==0.7.1 SQLAlchemy==2.1.9
    av==18.1.0 fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.3 pydantic_core==2.50.4
    pydantic-settings==2.16.3 python-dotenv==1.2.4 typing-inspection==0.4.5 annotated-types==0.8.0
    uvicorn==0.54.0 websockets==17.4 httptools==0.9.0 opentelemetry-api==1.45.2 annotated-doc==0.0.7
    typing-extensions==4.16.0
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
    # Fails in seconds, naming what is missing, rather than minutes later inside a step.
    "$PYTHON" - <<'EOF'
import importlib.metadata as md
import sys

try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement

# trackers asks for opencv-python; the image's opencv-python-headless is the same cv2 (the
# project installs trackers without its dependencies for that reason).
SAME = {"opencv-python": "opencv-python-headless"}
gaps = []
for dist in md.distributions(path=["/tmp/site"]):
    for line in dist.requires or []:
        req = Requirement(line)
        req.name = SAME.get(req.name, req.name)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # an extra, or another platform or Python
        try:
            have = md.version(req.name)
        except md.PackageNotFoundError:
            have = None
        if have is None or not req.specifier.contains(have, prereleases=True):
            gaps.append(f"{dist.metadata['Name']} needs {req}, found {have or 'nothing'}")
if gaps:
    sys.exit("bench/gpu.sh: missing requirements (add them to WHEELS):\n  " + "\n  ".join(gaps))

import av, fastapi, pydantic_settings, uvicorn, websockets  # noqa: E401,F401
import rtdetr_service.web.app  # noqa: F401
import torch

if not torch.cuda.is_available():
    sys.exit("bench/gpu.sh: torch sees no CUDA device here")
print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}; fastapi {fastapi.__version__}, av {av.__version__}")
EOF
    mkdir -p "$RESULTS"
}

check() {
    "$PYTHON" -m pytest -q -p no:cacheprovider tests/gpu tests/unit 2>&1 | tee "$RESULTS/check.log"
}

bench() {  # bench NAME [ARGS]: bench_pipeline.py on CUDA, JSON to NAME.json, log to NAME.log
    local name=$1
    shift
    "$PYTHON" bench/bench_pipeline.py --device cuda --json "$RESULTS/$name.json" "$@" 2>&1 |
        tee "$RESULTS/$name.log"
}

soak_args() {  # soak_args N: the soak alone (no sweep), N streams, batches of up to N, 10 minutes
    echo --device cuda --only ours --soak-only --soak-streams "$1" --max-batch "$1" --soak 600
}

best_count() {
    "$PYTHON" - "$RESULTS/sweep.json" <<'EOF'
import json, sys
counts = json.load(open(sys.argv[1]))["ours"]["counts"]
print(max((c["streams"] for c in counts if c["sustained"]), default=1))
EOF
}

soak_pid() {  # the running soak's pid, or nothing
    local pid
    pid=$(cat "$SOAK_DIR/soak.pid" 2>/dev/null) || return 0
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then echo "$pid"; fi
}

soak_collect() {  # the soak has ended: its outcome, and its files among the results
    local rc
    rc=$(cat "$SOAK_DIR/soak.rc" 2>/dev/null || echo "unknown")
    mkdir -p "$RESULTS"
    if [[ $(realpath "$RESULTS") != $(realpath "$SOAK_DIR") ]]; then
        for f in soak.json soak.log; do [[ -f $SOAK_DIR/$f ]] && cp "$SOAK_DIR/$f" "$RESULTS/"; done
    fi
    tail -n 25 "$SOAK_DIR/soak.log" 2>/dev/null || true
    echo "soak: ended with status $rc; results in $RESULTS"
    [[ $rc == 0 && -f $SOAK_DIR/soak.json ]]
}

soak_start() {
    local streams=$1 pid
    shift
    mkdir -p "$SOAK_DIR"
    if pid=$(soak_pid) && [[ -n $pid ]]; then
        echo "a soak is running already (pid $pid): bench/gpu.sh soak-wait" >&2
        return 1
    fi
    rm -f "$SOAK_DIR"/soak.{json,log,pid,rc}
    # Its own session (setsid): a lent machine kills what a command leaves running, except that.
    # shellcheck disable=SC2016,SC2046
    setsid nohup bash -c 'dir=$1; shift; echo $$ >"$dir/soak.pid"; "$@"; echo $? >"$dir/soak.rc"' soak "$SOAK_DIR" \
        "$PYTHON" bench/bench_pipeline.py $(soak_args "$streams") --json "$SOAK_DIR/soak.json" "$@" \
        >"$SOAK_DIR/soak.log" 2>&1 </dev/null &
    for _ in $(seq 50); do [[ -s $SOAK_DIR/soak.pid ]] && break; sleep 0.1; done
    echo "soak: $streams streams, pid $(cat "$SOAK_DIR/soak.pid"), log $SOAK_DIR/soak.log"
    soak_follow "$SOAK_HOLD" ||
        echo "soak: still running after ${SOAK_HOLD} s; run bench/gpu.sh soak-wait within 30 s to keep the machine"
}

soak_follow() {  # soak_follow SECONDS: progress until the soak ends (then collect) or SECONDS pass (1)
    local limit=$1 start=$SECONDS pid left
    while pid=$(soak_pid) && [[ -n $pid ]]; do
        left=$((limit - (SECONDS - start)))
        if ((left <= 0)); then return 1; fi
        sleep $((left < 5 ? left : 5))
        if (((SECONDS - start) % 30 < 5)); then
            echo "soak: $((SECONDS - start)) s: $(tail -n 1 "$SOAK_DIR/soak.log" 2>/dev/null | cut -c1-160)"
        fi
    done
    soak_collect || exit 1
}

soak_wait() {
    if [[ ! -f $SOAK_DIR/soak.pid ]]; then
        echo "no soak was started on this machine (was it handed back?): bench/gpu.sh soak-start N" >&2
        return 1
    fi
    if ! soak_follow "$SOAK_WAIT"; then
        mkdir -p "$RESULTS"
        cp "$SOAK_DIR/soak.log" "$RESULTS/" 2>/dev/null || true
        echo "soak: still running after ${SOAK_WAIT} s (log so far copied); run bench/gpu.sh soak-wait again" >&2
        return 1
    fi
}

quick() {  # the priority figures within QUICK_BUDGET seconds, each step bounded by what is left
    local started=$SECONDS
    # run CAP NAME CMD...: CMD for at most min(CAP, the budget left) seconds, its output in NAME.log
    run() {
        local cap=$1 name=$2 budget=$((QUICK_BUDGET - (SECONDS - started)))
        shift 2
        ((budget < cap)) || budget=$cap
        if ((budget < 20)); then
            echo "quick: no time left for $name" | tee -a "$RESULTS/quick.log"
            return 0
        fi
        echo "quick: $name (up to ${budget} s)" | tee -a "$RESULTS/quick.log"
        timeout --signal=INT --kill-after=10 "$budget" "$@" 2>&1 | tee "$RESULTS/$name.log" ||
            echo "quick: $name ended early (status ${PIPESTATUS[0]})" | tee -a "$RESULTS/quick.log"
    }
    local bench_py=("$PYTHON" bench/bench_pipeline.py --device cuda)
    local search=(--warmup 5 --duration 10 --streams "8,16,24,32,48")
    run 60 quick-check "$PYTHON" -m pytest -q -p no:cacheprovider tests/gpu
    run 130 quick-ours-torch "${bench_py[@]}" --only ours --backend torch "${search[@]}" \
        --json "$RESULTS/quick-ours-torch.json" "$@"
    if "$PYTHON" -c "import tensorrt" 2>/dev/null; then
        run 130 quick-ours-tensorrt "${bench_py[@]}" --only ours --backend tensorrt "${search[@]}" \
            --json "$RESULTS/quick-ours-tensorrt.json" "$@"
    else
        echo "quick: TensorRT does not import here; its count is still to be taken" | tee -a "$RESULTS/quick.log"
    fi
    run 60 quick-baseline "${bench_py[@]}" --only baseline --streams 1,2 --warmup 5 --duration 10 \
        --json "$RESULTS/quick-baseline.json" "$@"
    run 150 quick-memory "${bench_py[@]}" --only ours --backend torch --soak-only --soak-streams 16 \
        --max-batch 16 --soak 120 --soak-warmup 15 --json "$RESULTS/quick-memory.json" "$@"
    echo "quick: done in $((SECONDS - started)) s; results in $RESULTS" | tee -a "$RESULTS/quick.log"
}

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit 2
}

step=${1:-}
shift || true
case "$step" in
wheels) wheels ;;
quick)
    install_wheels
    quick "$@"
    ;;
check)
    install_wheels
    check
    ;;
sweep-baseline)
    install_wheels
    bench baseline --only baseline --streams 1,2 --keep-going "$@"
    ;;
sweep-ours)
    install_wheels
    bench ours --only ours --streams 1,4,8,12,16,24,32 "$@"
    ;;
sweep)
    install_wheels
    bench sweep "$@"
    ;;
soak | soak-start)
    [[ ${1:-} =~ ^[0-9]+$ ]] || { echo "usage: bench/gpu.sh $step N [ARGS]" >&2; exit 2; }
    install_wheels
    if [[ $step == soak ]]; then
        n=$1
        shift
        # shellcheck disable=SC2046
        "$PYTHON" bench/bench_pipeline.py $(soak_args "$n") --json "$RESULTS/soak.json" "$@" 2>&1 |
            tee "$RESULTS/soak.log"
    else
        soak_start "$@"
    fi
    ;;
soak-wait) soak_wait ;;
all)
    install_wheels
    failed=()
    check || { failed+=(check); echo "bench/gpu.sh: check FAILED (see $RESULTS/check.log); going on" >&2; }
    if bench sweep "$@" && n=$(best_count); then
        # shellcheck disable=SC2046
        "$PYTHON" bench/bench_pipeline.py $(soak_args "$n") --json "$RESULTS/soak.json" "$@" 2>&1 |
            tee "$RESULTS/soak.log" || failed+=(soak)
    else
        failed+=(sweep)
        echo "bench/gpu.sh: sweep FAILED (see $RESULTS/sweep.log); no soak without its best count" >&2
    fi
    if ((${#failed[@]})); then
        echo "bench/gpu.sh all: failed: ${failed[*]}" >&2
        exit 1
    fi
    ;;
*) usage ;;
esac
