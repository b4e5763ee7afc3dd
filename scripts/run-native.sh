#!/usr/bin/env bash
# `make run`: a local camera plus the service with API keys on, in the foreground.
# CAMERA=auto (default): a local `mediamtx` fed by an ffmpeg loop-push when both are on PATH,
# else the GStreamer RTSP test server (scripts/test_camera.py). CAMERA=gstreamer|mediamtx
# forces one; CAMERA=none starts no camera (bring your own stream). Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
PORT=${PORT:-8080}
CAMERA=${CAMERA:-auto}
CAMERA_PORT=${CAMERA_PORT:-8554}
export PORT PYTHONPATH=rt-detr-service${PYTHONPATH:+:$PYTHONPATH}
RUN_DIR=${RUN_DIR:-.run}  # the generated key and the logs
mkdir -p "$RUN_DIR"

if [ -z "${API_KEYS:-}" ] && ! grep -qs '^API_KEYS=' .env; then
  # A key of this machine's own, kept out of git and out of logs; printed once below.
  if [ ! -s "$RUN_DIR"/api_key ]; then
    (umask 077; "$PY" -c 'import secrets; print(secrets.token_urlsafe(24))' > "$RUN_DIR"/api_key)
  fi
  API_KEYS=$(cat "$RUN_DIR"/api_key)
  export API_KEYS
fi
key=${API_KEYS:-$(grep -s '^API_KEYS=' .env | head -n1 | cut -d= -f2-)}
key=${key%%,*}

pids=()
cleanup() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if [ "$CAMERA" = auto ]; then
  if command -v mediamtx >/dev/null && command -v ffmpeg >/dev/null; then CAMERA=mediamtx; else CAMERA=gstreamer; fi
fi
if port_taken "$PORT"; then
  echo "Port ${PORT} is taken: stop what listens there, or run with PORT=<free port>" >&2
  exit 1
fi
if [ "$CAMERA" != none ] && port_taken "$CAMERA_PORT"; then
  echo "Port ${CAMERA_PORT} is taken: stop what listens there, or run with CAMERA_PORT=<free port>" >&2
  exit 1
fi

stream_url="rtsp://127.0.0.1:${CAMERA_PORT}/camera"
if [ "$CAMERA" = mediamtx ]; then
  # The compose configuration, with its demo users; RTSP on CAMERA_PORT.
  # Loopback only: natively nothing stands in front of its RTSP port, API and metrics.
  MTX_RTSPADDRESS="127.0.0.1:${CAMERA_PORT}" MTX_APIADDRESS=127.0.0.1:9997 MTX_METRICSADDRESS=127.0.0.1:9998 \
    mediamtx mediamtx/mediamtx.yml >"$RUN_DIR"/mediamtx.log 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do port_taken "$CAMERA_PORT" && break; sleep 0.1; done
  URL="rtsp://publisher:${MEDIAMTX_PUBLISH_PASS:-demo-publish}@127.0.0.1:${CAMERA_PORT}/camera" \
    bash scripts/push.sh >"$RUN_DIR"/push.log 2>&1 &
  pids+=($!)
  stream_url="rtsp://viewer:${MEDIAMTX_READ_PASS:-demo-read}@127.0.0.1:${CAMERA_PORT}/camera"
elif [ "$CAMERA" = gstreamer ]; then
  : > "$RUN_DIR"/camera.log
  /usr/bin/python3 scripts/test_camera.py --port "$CAMERA_PORT" >"$RUN_DIR"/camera.log 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    grep -q '^READY' "$RUN_DIR"/camera.log && break
    kill -0 "${pids[0]}" 2>/dev/null || { cat "$RUN_DIR"/camera.log >&2; exit 1; }
    sleep 0.1
  done
  grep -q '^READY' "$RUN_DIR"/camera.log || { echo "The test camera did not start in 10 s (${RUN_DIR}/camera.log)" >&2; exit 1; }
fi

# The log exists before tail looks for it: tail -f on a missing file gives up at once.
: > "$RUN_DIR"/service.log
"$PY" -m rtdetr_service >>"$RUN_DIR"/service.log 2>&1 &
pids+=($!)
service=${pids[-1]}
tail -n +1 -f "$RUN_DIR"/service.log &
pids+=($!)
# The curl lines below work once the model is loaded: wait for the service to say so.
for _ in $(seq 1200); do
  kill -0 "$service" 2>/dev/null || { echo "The service exited; its log is above (${RUN_DIR}/service.log)." >&2; exit 1; }
  grep -qE ' ready: |Model failed to load' "$RUN_DIR"/service.log && break
  sleep 0.25
done
cat <<EOT

  rt-detr-service on http://127.0.0.1:${PORT}   (viewer page: http://127.0.0.1:${PORT}/)
  API key:      ${key}
  Test camera:  ${stream_url}   (paste it into the viewer page's stream field)

  Start a session; its answer is shown, and SID keeps its id for the lines below (one shell):
    SID=\$(curl -s -X POST http://127.0.0.1:${PORT}/api/v1/video/start -H "apikey: ${key}" -H 'Content-Type: application/json' -d '{"stream_url": "${stream_url}", "enable_drawing": true}' | tee /dev/stderr | python3 -c 'import json, sys; print(json.load(sys.stdin).get("session_id", ""))')
  Watch it:  the viewer page, or ws://127.0.0.1:${PORT} + the websocket_path of that answer
  Status:    curl -s http://127.0.0.1:${PORT}/api/v1/video/status/\$SID -H "apikey: ${key}"
  Stop:      curl -s -X POST http://127.0.0.1:${PORT}/api/v1/video/stop -H "apikey: ${key}" -H 'Content-Type: application/json' -d "{\\"session_id\\": \\"\$SID\\"}"

EOT

wait "$service"
