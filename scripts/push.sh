#!/usr/bin/env bash
# Loop-push a video clip to an RTSP server forever (the soak-test camera).
#
# Usage: scripts/push.sh [CLIP]
# Environment (all optional):
#   CLIP         video file to push; default: a generated testsrc2 clip (cached)
#   URL          RTSP publish URL; default: the compose MediaMTX on this host,
#                rtsp://publisher:$MEDIAMTX_PUBLISH_PASS@localhost:8554/camera
#   MEDIAMTX_PUBLISH_PASS  publisher password used in the default URL (default demo-publish)
#   RELAY        auto (default): when URL is on this machine and nothing listens on its port,
#                start the native relay (scripts/test_camera.py --relay, no Docker) there; it
#                serves the pushed stream to readers on the same URL. yes: always; no: never
#   CACHE_DIR    where the generated clip is kept (default .run/clips in the repository)
#   GEN_SIZE     generated clip size (default 1280x720)
#   GEN_FPS      generated clip frame rate (default 30)
#   GEN_SECONDS  generated clip length before it loops (default 60)
#   FFMPEG       ffmpeg binary (default ffmpeg)
#   CAMERA_PYTHON  Python with the GStreamer bindings for the relay (default /usr/bin/python3)
set -euo pipefail

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  usage
  exit 0
fi

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The compose stack reads its passwords from .env; so does this script when they are not in the
# environment, or it would publish with the demo password and be refused.
if [ -z "${MEDIAMTX_PUBLISH_PASS:-}" ] && [ -f "$repo_root/.env" ]; then
  MEDIAMTX_PUBLISH_PASS=$(sed -n 's/^MEDIAMTX_PUBLISH_PASS=//p' "$repo_root/.env" | tail -n 1)
fi
CLIP="${1:-${CLIP:-}}"
URL="${URL:-rtsp://publisher:${MEDIAMTX_PUBLISH_PASS:-demo-publish}@localhost:8554/camera}"
CACHE_DIR="${CACHE_DIR:-${repo_root}/.run/clips}"
GEN_SIZE="${GEN_SIZE:-1280x720}"
GEN_FPS="${GEN_FPS:-30}"
GEN_SECONDS="${GEN_SECONDS:-60}"
FFMPEG="${FFMPEG:-ffmpeg}"
RELAY="${RELAY:-auto}"
CAMERA_PYTHON="${CAMERA_PYTHON:-/usr/bin/python3}"
if [[ ! "$RELAY" =~ ^(auto|yes|no)$ ]]; then
  echo "push: RELAY must be auto, yes or no, got '$RELAY'" >&2
  exit 2
fi

if ! command -v "$FFMPEG" >/dev/null 2>&1; then
  echo "push: '$FFMPEG' not found; install FFmpeg (apt-get install ffmpeg) or set FFMPEG" >&2
  exit 2
fi

# Never print the password of the publish URL.
redacted_url="$(printf '%s' "$URL" | sed -E 's#(rtsps?://)[^/@]*@#\1***@#')"

if [[ -z "$CLIP" ]]; then
  mkdir -p "$CACHE_DIR"
  CLIP="${CACHE_DIR}/testsrc2-${GEN_SIZE}-${GEN_FPS}.mp4"
  if [[ ! -s "$CLIP" ]]; then
    echo "push: generating ${GEN_SECONDS} s ${GEN_SIZE} ${GEN_FPS} fps test clip at $CLIP"
    tmp="${CLIP}.tmp.mp4"
    # One keyframe a second so a reader joining mid-loop decodes within a second.
    "$FFMPEG" -hide_banner -loglevel error -y \
      -f lavfi -i "testsrc2=size=${GEN_SIZE}:rate=${GEN_FPS}" -t "$GEN_SECONDS" \
      -c:v libx264 -preset veryfast -tune zerolatency -g "$GEN_FPS" -pix_fmt yuv420p \
      "$tmp"
    mv "$tmp" "$CLIP"
  fi
elif [[ ! -f "$CLIP" ]]; then
  echo "push: clip '$CLIP' does not exist" >&2
  exit 2
fi

# host, port and path of the publish URL (credentials dropped; the relay accepts any)
hostport="${URL#*://}"
hostport="${hostport#*@}"
path="/${hostport#*/}"
[[ "$hostport" == */* ]] || path="/"
hostport="${hostport%%/*}"
host="${hostport%:*}"
port="${hostport##*:}"
[[ "$hostport" == *:* ]] || port=554

listening() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

case "$RELAY" in
  auto)
    start_relay=no
    if [[ "$host" == localhost || "$host" == 127.0.0.1 ]] && ! listening "$host" "$port"; then
      start_relay=yes
    fi
    ;;
  *) start_relay="$RELAY" ;;
esac

if [[ "$start_relay" == no ]]; then
  echo "push: looping $CLIP -> $redacted_url (Ctrl-C to stop)"
  exec "$FFMPEG" -hide_banner -loglevel warning -re -stream_loop -1 -i "$CLIP" \
    -c copy -f rtsp -rtsp_transport tcp "$URL"
fi

# Natively there is no MediaMTX: run the relay camera on the URL's port, push to it, and stop
# both together.
relay_log="$(mktemp)"
"$CAMERA_PYTHON" "$repo_root/scripts/test_camera.py" --relay --host 127.0.0.1 --port "$port" \
  --mount "$path" >"$relay_log" 2>&1 &
relay_pid=$!
ffmpeg_pid=""
# shellcheck disable=SC2317  # invoked by the traps
stop_all() {
  trap - EXIT INT TERM
  [[ -n "$ffmpeg_pid" ]] && kill "$ffmpeg_pid" 2>/dev/null
  kill "$relay_pid" 2>/dev/null
  wait 2>/dev/null
  rm -f "$relay_log"
}
trap stop_all EXIT
trap 'exit 130' INT TERM
for _ in $(seq 1 100); do
  grep -q '^READY' "$relay_log" && break
  if ! kill -0 "$relay_pid" 2>/dev/null; then
    echo "push: the relay camera did not start:" >&2
    cat "$relay_log" >&2
    exit 2
  fi
  sleep 0.1
done
if ! grep -q '^READY' "$relay_log"; then
  echo "push: the relay camera did not start within 10 s" >&2
  exit 2
fi
echo "push: native relay on rtsp://127.0.0.1:${port}${path} (readers use the same URL)"
echo "push: looping $CLIP -> $redacted_url (Ctrl-C to stop)"
"$FFMPEG" -hide_banner -loglevel warning -re -stream_loop -1 -i "$CLIP" \
  -c copy -f rtsp -rtsp_transport tcp "$URL" &
ffmpeg_pid=$!
wait "$ffmpeg_pid"
