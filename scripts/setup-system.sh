#!/usr/bin/env bash
# Installs the Debian packages the stack relies on, only those missing.
#   setup-system.sh venv  - what `python3 -m venv` needs (make deps)
#   setup-system.sh run   - plus the GStreamer test camera (make run)
#   setup-system.sh test  - plus Chromium for browser tests, deck for kong.yml, shellcheck, ffmpeg,
#                           PostgreSQL (the event store runs on it too), mosquitto (the MQTT output),
#                           curl (the test runs make run's curl lines as printed),
#                           nats-server (the bus between replicas), haproxy (the balancer of the
#                           several-replica tests)
#   setup-system.sh lint  - shellcheck (make lint);  push - ffmpeg (make push, make soak)
#   setup-system.sh cluster - the camera's packages plus PostgreSQL and nats-server (make bench-cluster)
set -euo pipefail

profile=${1:-run}
# python3-venv: Debian's python3 cannot make the venv without it.
packages=(python3-venv)
case "$profile" in
  venv) ;;
  run | test | cluster)
    # gstreamer1.0-x: timeoverlay (the camera's clock), only a recommendation of plugins-good.
    # gstreamer1.0-plugins-bad: h264parse, with which the relay camera (make push natively) hands
    # late readers a decodable stream.
    # fonts-dejavu-core: the clock overlay and Chromium both need a font to render.
    packages+=(python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good
               gstreamer1.0-plugins-ugly gstreamer1.0-plugins-bad gstreamer1.0-x fonts-dejavu-core)
    if [ "$profile" = test ]; then
      packages+=(chromium deck shellcheck ffmpeg curl postgresql mosquitto nats-server haproxy)
    elif [ "$profile" = cluster ]; then
      packages+=(postgresql nats-server)
    fi
    ;;
  lint) packages+=(shellcheck) ;;
  push) packages+=(ffmpeg) ;;
  *)
    echo "usage: $0 venv|run|test|cluster|lint|push" >&2
    exit 2
    ;;
esac

missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "Installing system packages: ${missing[*]}"
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then
    sudo_cmd=(sudo)
  else
    echo "Not root and no sudo: install these Debian packages first: ${missing[*]}" >&2
    exit 1
  fi
fi
"${sudo_cmd[@]}" apt-get update -q
"${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
