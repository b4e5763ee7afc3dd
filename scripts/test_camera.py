#!/usr/bin/python3
"""A local RTSP test camera: GStreamer's gst-rtsp-server serving a live H.264 test pattern.

Runs under Debian's /usr/bin/python3 (it needs python3-gi and gir1.2-gst-rtsp-server-1.0, which
`scripts/setup-system.sh` installs). Prints `READY rtsp://...` once it accepts clients.
"""

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def pipeline(width: int, height: int, fps: int, pattern: str) -> str:
    # A moving ball and a running clock make every frame different; zerolatency keeps x264 from
    # holding frames back, and a keyframe every second lets a reconnecting client start quickly.
    return (
        f"( videotestsrc is-live=true pattern={pattern} ! "
        f"video/x-raw,width={width},height={height},framerate={fps}/1 ! "
        'timeoverlay font-desc="Sans 24" ! videoconvert ! '
        f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} bitrate=2000 ! "
        "rtph264pay name=pay0 pt=96 config-interval=1 )"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8554)
    parser.add_argument("--mount", default="/camera")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--pattern", default="ball")
    parser.add_argument("--audio-only", action="store_true", help="serve a stream with no video track")
    args = parser.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    if args.audio_only:
        launch = "( audiotestsrc is-live=true ! alawenc ! rtppcmapay name=pay0 pt=8 )"
    else:
        launch = pipeline(args.width, args.height, args.fps, args.pattern)
    # gst-rtsp-server builds the pipeline only when a client asks (DESCRIBE answers 503 if an
    # element is missing): build it once now so a missing plugin fails here, by name.
    try:
        Gst.parse_launch(launch.strip("() "))
    except GLib.Error as exc:
        print(f"cannot build the camera pipeline ({exc.message}); run scripts/setup-system.sh", file=sys.stderr)
        return 1
    factory.set_launch(launch)
    factory.set_shared(True)
    server.get_mount_points().add_factory(args.mount, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on {args.host}:{args.port}", file=sys.stderr)
        return 1

    loop = GLib.MainLoop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print(f"READY rtsp://{args.host}:{args.port}{args.mount}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
