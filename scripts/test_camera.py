#!/usr/bin/python3
"""A local RTSP test camera: GStreamer's gst-rtsp-server serving a live H.264 (or, with `--codec h265`,
H.265) test pattern.

Runs under Debian's /usr/bin/python3 (it needs python3-gi and gir1.2-gst-rtsp-server-1.0, which
`scripts/setup-system.sh` installs). Prints `READY rtsp://...` once it accepts clients.

With `--relay` it serves no pattern: it accepts an RTSP RECORD (ANNOUNCE/SETUP/RECORD, what
`ffmpeg -f rtsp` and OBS send) on MOUNT and serves the pushed H.264 to readers on the same MOUNT,
without re-encoding, the way MediaMTX does:

    ffmpeg -re -stream_loop -1 -i clip.mp4 -c copy -f rtsp -rtsp_transport tcp rtsp://127.0.0.1:8554/camera
"""

import argparse
import itertools
import signal
import sys
import threading
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

PLAY = GstRtspServer.RTSPTransportMode.PLAY
RECORD = GstRtspServer.RTSPTransportMode.RECORD
# The pushed stream as the relay carries it between its two pipelines: whole access units in
# Annex B, so a reader can join at any keyframe (h264parse repeats SPS/PPS before each).
RELAY_CAPS = "video/x-h264,stream-format=byte-stream,alignment=au"
STALE_PUBLISHER_S = 1.0


# The encoder and payloader of each codec the camera can send: x264enc is in gstreamer1.0-plugins-ugly,
# x265enc in -bad (Debian builds it), the RTP payloaders in -good. Both keep the same settings.
ENCODERS = {
    "h264": ("x264enc", "rtph264pay"),
    "h265": ("x265enc", "rtph265pay"),
}


def pipeline(width: int, height: int, fps: int, pattern: str, bitrate: int = 2000, codec: str = "h264") -> str:
    # A moving ball and a running clock make every frame different; zerolatency keeps the encoder
    # from holding frames back, and a keyframe every second lets a reconnecting client start quickly.
    encoder, payloader = ENCODERS[codec]
    return (
        f"( videotestsrc is-live=true pattern={pattern} ! "
        f"video/x-raw,width={width},height={height},framerate={fps}/1 ! "
        'timeoverlay font-desc="Sans 24" ! videoconvert ! '
        f"{encoder} tune=zerolatency speed-preset=ultrafast key-int-max={fps} bitrate={bitrate} ! "
        f"{payloader} name=pay0 pt=96 config-interval=1 )"
    )


class Relay:
    """What one publisher pushes, handed to every reader: publisher appsink -> readers' appsrc.

    gst-rtsp-server gives a mount one transport mode per media, not per request, so the relay
    tells publishers from readers itself: a client that sent ANNOUNCE or RECORD is a publisher
    (seen in the auth check every request passes, on the client's own thread), and the factory
    builds a RECORD media for it and one shared PLAY media for all readers.
    """

    def __init__(self, backlog: int) -> None:
        self._lock = threading.Lock()
        self._readers: list[Gst.Element] = []  # appsrc of the live PLAY media (one: it is shared)
        self._publishers: set = set()  # connected clients that announced
        self._records = 0  # RECORD pipelines built, each publisher numbered by it
        self._active = 0  # the publisher whose samples reach the readers
        self._active_at = 0.0
        self._newest = 0  # the newest publisher that has delivered a sample
        self._role: dict[int, bool] = {}  # thread id -> the current request is a publisher's
        self._backlog = backlog

    # -- who is asking (set from the auth check, read by the factory and the mount points)
    def note_request(self, ctx) -> None:
        with self._lock:
            publishing = ctx.method & (GstRtsp.RTSPMethod.ANNOUNCE | GstRtsp.RTSPMethod.RECORD)
            if publishing and ctx.client not in self._publishers:
                self._publishers.add(ctx.client)
                ctx.client.connect("closed", self._client_closed)
            self._role[threading.get_ident()] = ctx.client in self._publishers

    def _client_closed(self, client) -> None:
        with self._lock:
            self._publishers.discard(client)

    def publishing_request(self) -> bool:
        with self._lock:
            return self._role.get(threading.get_ident(), False)

    def has_publisher(self) -> bool:
        with self._lock:
            return bool(self._publishers)

    # -- the two pipelines
    def record_bin(self) -> Gst.Bin:
        description = (
            f"rtph264depay name=depay0 ! h264parse config-interval=-1 ! {RELAY_CAPS} ! "
            "appsink name=out emit-signals=true sync=false max-buffers=1 drop=true"
        )
        bin_ = Gst.parse_bin_from_description(description, False)
        with self._lock:
            self._records += 1
            publisher = self._records
        bin_.get_by_name("out").connect("new-sample", self._on_sample, publisher)
        return bin_

    def play_bin(self) -> Gst.Bin:
        # Leaky and bounded: a reader pipeline that stalls drops old data instead of growing.
        description = (
            f'appsrc name=src is-live=true do-timestamp=true format=time caps="{RELAY_CAPS}" '
            f"max-buffers={self._backlog} leaky-type=downstream block=false ! "
            "h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 config-interval=1"
        )
        return Gst.parse_bin_from_description(description, False)

    def play_constructed(self, media, bin_: Gst.Bin) -> None:
        src = bin_.get_by_name("src")
        with self._lock:
            self._readers.append(src)
        media.connect("unprepared", lambda _media: self._drop_reader(src))

    def _drop_reader(self, src) -> None:
        with self._lock:
            if src in self._readers:
                self._readers.remove(src)

    def _on_sample(self, sink, publisher: int) -> Gst.FlowReturn:
        sample = sink.emit("pull-sample")
        now = time.monotonic()
        with self._lock:
            # One publisher at a time reaches the readers: the newest (a restarted ffmpeg takes
            # over at once, as with MediaMTX), or any other once that one is silent for a second.
            if publisher != self._active and (publisher > self._newest or now - self._active_at > STALE_PUBLISHER_S):
                self._active = publisher
            self._newest = max(self._newest, publisher)
            if publisher != self._active:
                return Gst.FlowReturn.OK
            self._active_at = now
            readers = list(self._readers)
        for src in readers:
            src.emit("push-sample", sample)
        return Gst.FlowReturn.OK


class RelayAuth(GstRtspServer.RTSPAuth):
    """Lets every client in (credentials in the URL are accepted and ignored) and tells the relay
    which kind of client each request comes from."""

    def __init__(self, relay: Relay) -> None:
        super().__init__()
        self._relay = relay

    def do_authenticate(self, ctx) -> bool:
        return True

    def do_check(self, ctx, check) -> bool:
        if check == GstRtspServer.RTSP_AUTH_CHECK_URL:
            self._relay.note_request(ctx)
        return True


class RelayMounts(GstRtspServer.RTSPMountPoints):
    """No publisher yet: readers get 404 at once (as from MediaMTX), not a DESCRIBE that hangs."""

    def __init__(self, relay: Relay) -> None:
        super().__init__()
        self._relay = relay

    def do_make_path(self, url) -> str:
        if self._relay.publishing_request() or self._relay.has_publisher():
            return url.abspath
        return "/.no-publisher" + url.abspath


class RelayFactory(GstRtspServer.RTSPMediaFactory):
    """One mount, two kinds of media: RECORD for the publisher, a shared PLAY media for readers."""

    def __init__(self, relay: Relay) -> None:
        super().__init__()
        self._relay = relay
        self._records = itertools.count(1)
        self.set_transport_mode(PLAY | RECORD)  # both requests are accepted on this mount
        self.set_shared(True)

    def do_gen_key(self, url) -> str:
        # Shared media are cached by key: readers share one PLAY media; every publisher gets its
        # own RECORD media (a second ffmpeg must not push into the first one's pipeline).
        if self._relay.publishing_request():
            return f"record:{next(self._records)}:{url.abspath}"
        return "play:" + url.abspath

    def do_construct(self, url):
        publishing = self._relay.publishing_request()
        bin_ = self._relay.record_bin() if publishing else self._relay.play_bin()
        media = GstRtspServer.RTSPMedia(element=bin_, transport_mode=RECORD if publishing else PLAY)
        media.collect_streams()
        media.take_pipeline(Gst.Pipeline.new(None))  # takes the element into the pipeline
        if not publishing:
            self._relay.play_constructed(media, bin_)
        return media

    def do_configure(self, media) -> None:
        GstRtspServer.RTSPMediaFactory.do_configure(self, media)
        # The default configure copies the factory's PLAY|RECORD onto the media; a media is one.
        media.set_transport_mode(RECORD if self._relay.publishing_request() else PLAY)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8554)
    parser.add_argument("--mount", default="/camera")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--pattern", default="ball")
    parser.add_argument(
        "--bitrate", type=int, default=2000, help="the encoder's target in kbit/s (a plain scene may use less)"
    )
    parser.add_argument(
        "--codec", choices=sorted(ENCODERS), default="h264", help="what the pattern is encoded as (not with --relay)"
    )
    parser.add_argument("--audio-only", action="store_true", help="serve a stream with no video track")
    parser.add_argument(
        "--relay",
        action="store_true",
        help="accept an RTSP RECORD (ffmpeg -f rtsp) on MOUNT and serve it to readers there (H.264, no re-encode)",
    )
    parser.add_argument(
        "--relay-backlog", type=int, default=60, help="most access units a stalled reader pipeline holds"
    )
    args = parser.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    if args.relay:
        relay = Relay(args.relay_backlog)
        # A reader's DESCRIBE waits for the first pushed keyframe; with the default single client
        # thread it would wait on the very thread that reads the publisher's packets.
        server.get_thread_pool().set_max_threads(64)
        server.set_auth(RelayAuth(relay))
        server.set_mount_points(RelayMounts(relay))
        try:
            relay.record_bin()
            relay.play_bin()
        except GLib.Error as exc:
            # h264parse is in gstreamer1.0-plugins-bad, the rtph264 elements in -good.
            print(
                f"cannot build the relay pipelines ({exc.message}); "
                "install gstreamer1.0-plugins-good and gstreamer1.0-plugins-bad",
                file=sys.stderr,
            )
            return 1
        factory = RelayFactory(relay)
    else:
        factory = GstRtspServer.RTSPMediaFactory()
        if args.audio_only:
            launch = "( audiotestsrc is-live=true ! alawenc ! rtppcmapay name=pay0 pt=8 )"
        else:
            launch = pipeline(args.width, args.height, args.fps, args.pattern, args.bitrate, args.codec)
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
    mode = " (relay: publish and read here)" if args.relay else ""
    print(f"READY rtsp://{args.host}:{args.port}{args.mount}{mode}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
