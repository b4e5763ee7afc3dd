#!/usr/bin/env bash
# Soak test: push a clip, start N sessions, watch fps / latency / memory, then a verdict.
#
# Usage: scripts/soak.sh            (exit 0 = PASS, 1 = FAIL, 2 = could not run)
# Environment (all optional):
#   BASE_URL      service or gateway URL (default http://localhost:8000, Kong in compose)
#   API_KEY       control API key (default demo-key-change-me, the demo consumer)
#   STREAM_URL    stream the SERVICE opens (default rtsp://viewer:demo-read@mediamtx:8554/camera;
#                 natively use rtsp://viewer:demo-read@localhost:8554/camera)
#   SESSIONS      number of sessions on that stream (default 4)
#   DURATION      seconds to watch after the warm-up (default 600)
#   WARMUP        seconds ignored before judging (default 30)
#   INTERVAL      seconds between samples (default 5)
#   FPS_RATIO     pass if mean inference fps >= FPS_RATIO x mean source fps (default 0.9)
#   MAX_MEM_GROWTH_MB  pass if service RSS grows less than this after warm-up (default 512)
#   METRICS_URL   Prometheus URL of the service; default: read /metrics inside the compose
#                 container (metrics are not routed through Kong); "none" skips the memory check
#   PUSH          local = run scripts/push.sh in the background (default), none = a camera
#                 already publishes
#   PUSH_URL      where PUSH=local publishes (default rtsp://publisher:demo-publish@localhost:8554/camera);
#                 with nothing listening there, push.sh starts the native relay camera on it
#   STACK         service (default): soak the service at BASE_URL, as above. native: soak a whole
#                 native stack it starts itself (scripts/soak_native.py: relay camera, ffmpeg push,
#                 `python -m rtdetr_service`, churning and stalled viewers; CSV + PNG in OUT),
#                 using SESSIONS, DURATION, WARMUP, INTERVAL and these:
#   VIEWERS       native: churning WebSocket viewers (default 4)
#   OUT           native: output folder (default test-artifacts/soak)
#   PLOT          native: PNG path (default OUT/soak.png)
#   SOAK_ARGS     native: more scripts/soak_native.py options (e.g. "--cut-every 600")
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ "${STACK:-service}" == native ]]; then
  args=(--sessions "${SESSIONS:-2}" --viewers "${VIEWERS:-4}" --duration "${DURATION:-600}"
    --warmup "${WARMUP:-30}" --interval "${INTERVAL:-5}" --out "${OUT:-$repo_root/test-artifacts/soak}")
  [[ -n "${PLOT:-}" ]] && args+=(--plot "$PLOT")
  # shellcheck disable=SC2206  # SOAK_ARGS is a list of options, split on purpose
  extra=(${SOAK_ARGS:-})
  PYTHONPATH="$repo_root/rt-detr-service" exec "${SOAK_PYTHON:-$repo_root/.venv/bin/python}" \
    "$repo_root/scripts/soak_native.py" "${args[@]}" "${extra[@]}"
elif [[ "${STACK:-service}" != service ]]; then
  echo "soak: STACK must be 'service' or 'native'" >&2
  exit 2
fi

# The compose stack reads its passwords from .env; so does this script when they are not set.
for name in MEDIAMTX_PUBLISH_PASS MEDIAMTX_READ_PASS; do
  if [ -z "${!name:-}" ] && [ -f "$repo_root/.env" ]; then
    printf -v "$name" '%s' "$(sed -n "s/^${name}=//p" "$repo_root/.env" | tail -n 1)"
  fi
done
BASE_URL="${BASE_URL:-http://localhost:8000}"
BASE_URL="${BASE_URL%/}"
API_KEY="${API_KEY:-demo-key-change-me}"
STREAM_URL="${STREAM_URL:-rtsp://viewer:${MEDIAMTX_READ_PASS:-demo-read}@mediamtx:8554/camera}"
SESSIONS="${SESSIONS:-4}"
DURATION="${DURATION:-600}"
WARMUP="${WARMUP:-30}"
INTERVAL="${INTERVAL:-5}"
FPS_RATIO="${FPS_RATIO:-0.9}"
MAX_MEM_GROWTH_MB="${MAX_MEM_GROWTH_MB:-512}"
METRICS_URL="${METRICS_URL:-}"
PUSH="${PUSH:-local}"
PUSH_URL="${PUSH_URL:-rtsp://publisher:${MEDIAMTX_PUBLISH_PASS:-demo-publish}@localhost:8554/camera}"
PYTHON="${PYTHON:-python3}"

for cmd in curl "$PYTHON"; do
  command -v "$cmd" >/dev/null 2>&1 || { echo "soak: '$cmd' is required" >&2; exit 2; }
done
for n in SESSIONS DURATION WARMUP INTERVAL MAX_MEM_GROWTH_MB; do
  [[ "${!n}" =~ ^[0-9]+$ ]] || { echo "soak: $n must be a whole number, got '${!n}'" >&2; exit 2; }
done
(( SESSIONS >= 1 && INTERVAL >= 1 )) || { echo "soak: SESSIONS and INTERVAL must be >= 1" >&2; exit 2; }

workdir="$(mktemp -d)"
samples="$workdir/samples.tsv"
session_ids=()
push_pid=""

# JSON field extraction without jq: json_get FILE dotted.path
json_get() {
  "$PYTHON" - "$1" "$2" <<'PY'
import json, sys
try:
    value = json.load(open(sys.argv[1]))
    for part in sys.argv[2].split("."):
        value = value[part]
except Exception:
    value = ""
print("" if value is None else value)
PY
}

api() {  # api METHOD PATH [JSON_BODY] -> body in $workdir/resp.json, prints the HTTP status
  local method="$1" path="$2" body="${3:-}"
  local args=(-sS -o "$workdir/resp.json" -w '%{http_code}' -X "$method"
    -H "apikey: ${API_KEY}" --max-time 30 "${BASE_URL}${path}")
  if [[ -n "$body" ]]; then
    args+=(-H 'Content-Type: application/json' --data "$body")
  fi
  curl "${args[@]}" || echo 000
}

rss_bytes() {  # service resident memory from prometheus-client's process collector
  local text=""
  if [[ "$METRICS_URL" == "none" ]]; then
    return 0
  elif [[ -n "$METRICS_URL" ]]; then
    text="$(curl -sS --max-time 10 -H "apikey: ${API_KEY}" "$METRICS_URL" 2>/dev/null || true)"
  elif command -v docker >/dev/null 2>&1; then
    text="$(docker compose -f "$repo_root/docker-compose.yml" exec -T rt-detr-service python -c \
      "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8080/metrics', timeout=5).read().decode())" \
      2>/dev/null || true)"
  fi
  printf '%s\n' "$text" | awk '/^process_resident_memory_bytes /{printf "%.0f\n", $2; exit}'
}

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  local id code attempt
  trap - EXIT INT TERM
  for id in "${session_ids[@]}"; do
    # A gateway's rate limit may still be spent: a stop must not be lost to a 429.
    for attempt in 1 2 3 4 5 6; do
      code="$(api POST /api/v1/video/stop "{\"session_id\": \"$id\"}")"
      [[ "$code" == "429" && $attempt -lt 6 ]] || break
      sleep 10
    done
    echo "soak: stopped session $id (HTTP $code)"
  done
  if [[ -n "$push_pid" ]]; then
    kill "$push_pid" 2>/dev/null || true
    wait "$push_pid" 2>/dev/null || true
  fi
  rm -rf "$workdir"
}
trap cleanup EXIT
trap 'echo "soak: interrupted"; exit 130' INT TERM

if [[ "$PUSH" == "local" ]]; then
  URL="$PUSH_URL" "$repo_root/scripts/push.sh" >"$workdir/push.log" 2>&1 &
  push_pid=$!
  sleep 3
  if ! kill -0 "$push_pid" 2>/dev/null; then
    echo "soak: the pusher exited:" >&2
    cat "$workdir/push.log" >&2
    exit 2
  fi
elif [[ "$PUSH" != "none" ]]; then
  echo "soak: PUSH must be 'local' or 'none'" >&2
  exit 2
fi

body="{\"stream_url\": \"${STREAM_URL}\", \"enable_drawing\": false}"
for ((i = 1; i <= SESSIONS; i++)); do
  code="$(api POST /api/v1/video/start "$body")"
  if [[ "$code" != "200" ]]; then
    echo "soak: start $i failed with HTTP $code: $(cat "$workdir/resp.json" 2>/dev/null)" >&2
    exit 2
  fi
  session_ids+=("$(json_get "$workdir/resp.json" session_id)")
  echo "soak: started session ${session_ids[-1]}"
done

total=$((WARMUP + DURATION))
echo "soak: ${SESSIONS} session(s), warm-up ${WARMUP} s, watching ${DURATION} s, sample every ${INTERVAL} s"
printf 'elapsed\tsession\tstate\tsource_fps\tinference_fps\tdropped\tp99_ms\trss_mb\n'
start_s=$SECONDS
while :; do
  elapsed=$((SECONDS - start_s))
  rss="$(rss_bytes)"
  rss_mb=""
  [[ -n "$rss" ]] && rss_mb=$((rss / 1048576))
  # One call per sample for all sessions (GET /sessions has every status): through Kong, a
  # status call per session and sample would spend its rate limit (120/min) within a minute.
  code="$(api GET /api/v1/video/sessions)"
  "$PYTHON" - "$workdir/resp.json" "$code" "$elapsed" "$rss_mb" "${session_ids[@]}" <<'PY' | tee -a "$samples"
import json, sys
path, code, elapsed, rss_mb, ids = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
try:
    found = {s["session_id"]: s for s in json.load(open(path))["sessions"]} if code == "200" else {}
except Exception:
    found = {}
for sid in ids:
    s = found.get(sid)
    if s is None:
        state = f"http_{code}" if code != "200" else "missing"
        print("\t".join([elapsed, sid, state, "", "", "", "", rss_mb]))
        continue
    stats = s.get("stats") or {}
    p99 = (stats.get("latency_ms") or {}).get("p99")
    values = [stats.get("source_fps"), stats.get("inference_fps"), stats.get("dropped_frames"), p99]
    print("\t".join([elapsed, sid, s["state"], *("" if v is None else str(v) for v in values), rss_mb]))
PY
  (( elapsed >= total )) && break
  sleep "$INTERVAL"
done

# Verdict over the samples taken after the warm-up.
set +e
"$PYTHON" - "$samples" "$WARMUP" "$FPS_RATIO" "$MAX_MEM_GROWTH_MB" <<'PY'
import sys
from collections import defaultdict

path, warmup, ratio, max_growth = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
rows = [line.rstrip("\n").split("\t") for line in open(path) if line.strip()]
judged = [r for r in rows if float(r[0]) >= warmup] or rows
per_session = defaultdict(list)
rss = []
for elapsed, sid, state, src, inf, dropped, p99, rss_mb in judged:
    per_session[sid].append((state, src, inf, p99))
    if rss_mb:
        rss.append(float(rss_mb))
failures = []
for sid, samples in per_session.items():
    bad_states = sorted({s for s, *_ in samples if s != "running"})
    if bad_states:
        failures.append(f"session {sid}: state {', '.join(bad_states)} seen after warm-up")
    src = [float(s) for _, s, _, _ in samples if s]
    inf = [float(i) for _, _, i, _ in samples if i]
    p99 = [float(p) for *_, p in samples if p]
    if not src or not inf:
        failures.append(f"session {sid}: no fps figures")
        continue
    mean_src, mean_inf = sum(src) / len(src), sum(inf) / len(inf)
    worst_p99 = max(p99) if p99 else float("nan")
    print(f"session {sid}: source {mean_src:.1f} fps, inference {mean_inf:.1f} fps, worst p99 {worst_p99:.0f} ms")
    if mean_inf < ratio * mean_src:
        failures.append(f"session {sid}: inference {mean_inf:.1f} fps < {ratio} x source {mean_src:.1f} fps")
if rss:
    growth = max(rss) - rss[0]
    print(f"service memory: {rss[0]:.0f} MB after warm-up, peak {max(rss):.0f} MB (+{growth:.0f} MB)")
    if growth > max_growth:
        failures.append(f"memory grew {growth:.0f} MB > {max_growth:.0f} MB")
else:
    print("service memory: not sampled (set METRICS_URL, or run the compose stack)")
for failure in failures:
    print("  - " + failure)
print("VERDICT: " + ("FAIL" if failures else "PASS"))
sys.exit(1 if failures else 0)
PY
verdict=$?
set -e
exit "$verdict"
