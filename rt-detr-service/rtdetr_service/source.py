"""Stream reading with PyAV: URL checks, one reader thread per session, reconnect with backoff."""

from __future__ import annotations

import enum
import logging
import threading
import time
from typing import Callable, Sequence
from urllib.parse import urlsplit

import av

from .logs import redact
from .types import Frame, StreamInfo

log = logging.getLogger(__name__)

# FFmpeg protocols a network stream may use underneath its scheme. Anything else (file, concat,
# subfile, pipe, data, http redirects into them, ...) is refused by FFmpeg itself.
_TRANSPORT_PROTOCOLS = {
    "rtsp": ("rtsp", "tcp", "udp", "rtp"),
    "rtsps": ("rtsps", "rtsp", "tcp", "tls", "udp", "rtp", "srtp"),
    "rtmp": ("rtmp", "tcp"),
    "rtmps": ("rtmps", "rtmp", "tcp", "tls"),
    "http": ("http", "tcp", "hls"),
    "https": ("https", "http", "tcp", "tls", "hls"),
    "srt": ("srt", "udp"),
}


END_OF_STREAM = "End of stream"
# A connection that delivered this long counts as healthy: its loss starts the backoff afresh.
HEALTHY_RUN_S = 10.0
# Packets arriving but no picture decoded for this long (a decoder that never recovers): reconnect.
# Generous, because a decoder waits for the next keyframe and some cameras send one every 10 s+.
NO_PICTURE_S = 30.0


class StreamErrorKind(enum.Enum):
    UNSUPPORTED_URL = "unsupported_url"
    UNAVAILABLE = "stream_unavailable"
    TIMEOUT = "stream_timeout"
    NO_VIDEO = "no_video_stream"


class StreamError(Exception):
    """A stream that cannot be used, with words a user can act on."""

    def __init__(self, kind: StreamErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def validate_stream_url(url: str, allowed_schemes: Sequence[str]) -> str:
    """The URL to open, its scheme in lower case (FFmpeg matches protocol names exactly), if the
    scheme is allowed and it names a host; StreamError otherwise. Messages never quote the URL's
    parts: a malformed one may hold a password in any of them."""
    if not isinstance(url, str) or not url:
        raise StreamError(StreamErrorKind.UNSUPPORTED_URL, "stream_url is empty")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        # Not stripped: what is checked must be exactly what FFmpeg opens, and a newline would
        # end up inside the RTSP request line.
        raise StreamError(StreamErrorKind.UNSUPPORTED_URL, "stream_url contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - urllib validates the port only when it is read
        host = parts.hostname
    except ValueError as exc:
        raise StreamError(StreamErrorKind.UNSUPPORTED_URL, "stream_url is not a valid URL (host or port)") from exc
    scheme = parts.scheme.lower()
    if scheme not in allowed_schemes:
        shown = f"'{scheme}:'" if scheme else "no scheme"
        raise StreamError(
            StreamErrorKind.UNSUPPORTED_URL,
            f"stream_url has {shown}; only {', '.join(s + '://' for s in allowed_schemes)} URLs are accepted",
        )
    if not host:
        raise StreamError(StreamErrorKind.UNSUPPORTED_URL, "stream_url names no host")
    return scheme + url[len(parts.scheme) :]


def redact_url(url: str) -> str:
    """The URL with its userinfo (user:password@, a token@, whatever characters the password
    holds) and query secrets masked, for logs and status: the one redaction of logs.py."""
    return redact(url)


def protocol_whitelist(url: str) -> str:
    scheme = urlsplit(url).scheme.lower()
    return ",".join(_TRANSPORT_PROTOCOLS.get(scheme, (scheme,)))


def _describe(exc: BaseException) -> str:
    """FFmpeg's reason in one line; it often quotes the URL, whose secrets are masked."""
    text = str(exc).strip() or type(exc).__name__
    return redact(text.replace("\n", " "))


class StreamReader:
    """Decodes every frame of one stream on its own thread and hands each to `on_frame`.

    `open()` runs in the caller (the start call waits for it); `start()` then reads until
    `stop()`. On loss it reconnects with capped exponential backoff and reports state changes
    through `on_state(state, error)` with state in {"running", "reconnecting", "failed"}.
    """

    def __init__(
        self,
        url: str,
        *,
        on_frame: Callable[[Frame], None],
        on_state: Callable[[str, str | None], None],
        open_timeout: float,
        read_timeout: float,
        reconnect_min: float,
        reconnect_max: float,
        name: str = "reader",
        realtime: bool = False,
        loop: bool = False,
        whitelist: str | None = None,
    ) -> None:
        self.url = url
        self._on_frame = on_frame
        self._on_state = on_state
        self._open_timeout = open_timeout
        self._read_timeout = read_timeout
        self._reconnect_min = reconnect_min
        self._reconnect_max = reconnect_max
        # realtime/loop/whitelist serve local files (benchmarks, soak clips): paced at their frame
        # rate like `ffmpeg -re`, looped like `-stream_loop -1`. Network streams need none of them.
        self._realtime = realtime
        self._loop = loop
        self._whitelist = whitelist or protocol_whitelist(url)
        self._paced_until: float | None = None  # when the last paced frame was due
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._container: av.container.InputContainer | None = None
        self._container_lock = threading.Lock()
        self._frame_index = 0
        self.info: StreamInfo | None = None
        self.reconnects = 0
        self.decode_errors = 0  # packets the decoder rejected (bit errors, lost packets)

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> StreamInfo:
        """Open the stream and find its video; raise StreamError with FFmpeg's reason."""
        container, info = self._open_container()
        with self._container_lock:
            if self._stop.is_set():
                # stop() came while FFmpeg was connecting: nobody will start this reader now.
                container.close()
                raise StreamError(StreamErrorKind.UNAVAILABLE, "Stopped while opening the stream")
            self._container, self.info = container, info
        return info

    def start(self) -> None:
        if self._container is None:
            raise RuntimeError("open() must succeed before start()")
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> bool:
        """Ask the thread to end; True if it ended within timeout. Safe to call in any state."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if not self._thread.is_alive() and not self._thread.ident:
            # Never started (open failed or start not called): release the container here.
            self._close()
        return not self._thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        if self._thread.ident:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- internals -------------------------------------------------------------------------

    def _open_container(self) -> tuple[av.container.InputContainer, StreamInfo]:
        options = {
            "rtsp_transport": "tcp",
            "rtsp_flags": "prefer_tcp",
            "protocol_whitelist": self._whitelist,
            # FFmpeg's own socket I/O timeout (microseconds) backs up PyAV's interrupt timeout.
            "timeout": str(int(self._read_timeout * 1_000_000)),
            "fflags": "nobuffer",
            "analyzeduration": "1000000",
            "probesize": "1000000",
        }
        if not self.url.lower().startswith("rtsp"):
            for key in ("rtsp_transport", "rtsp_flags"):
                options.pop(key)
        started = time.monotonic()
        try:
            container = av.open(self.url, options=options, timeout=(self._open_timeout, self._read_timeout))
        except av.error.ExitError as exc:
            elapsed = time.monotonic() - started
            if elapsed >= self._open_timeout * 0.9:
                raise StreamError(
                    StreamErrorKind.TIMEOUT, f"Timed out after {elapsed:.1f} s opening the stream"
                ) from exc
            raise StreamError(StreamErrorKind.UNAVAILABLE, f"Cannot open stream: {_describe(exc)}") from exc
        except (av.error.FFmpegError, OSError) as exc:
            raise StreamError(StreamErrorKind.UNAVAILABLE, f"Cannot open stream: {_describe(exc)}") from exc
        try:
            return container, self._video_info(container)
        except BaseException:
            container.close()
            raise

    @staticmethod
    def _video_info(container: av.container.InputContainer) -> StreamInfo:
        if not container.streams.video:
            raise StreamError(StreamErrorKind.NO_VIDEO, "The stream has no video track")
        stream = container.streams.video[0]
        # Slice threading: frame threading would hold back one frame per decoder thread (on a
        # 16-core host, half a second at 30 fps) before the reader ever sees it, and with many
        # cameras it oversubscribes the cores (ARCHITECTURE.md: 1407 vs 862 fps for 16 streams).
        stream.thread_type = "SLICE"
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        return StreamInfo(
            width=int(stream.codec_context.width or 0),
            height=int(stream.codec_context.height or 0),
            fps=round(fps, 3) if fps < 1000 else 0.0,
            codec=stream.codec_context.name,
        )

    def _close(self) -> None:
        with self._container_lock:
            container, self._container = self._container, None
        if container is not None:
            try:
                container.close()
            except Exception:  # noqa: BLE001 - closing must never raise out of stop()
                log.debug("error closing container", exc_info=True)

    def _run(self) -> None:
        failures = 0  # connection losses since the stream last ran healthily
        lost = False
        try:
            while not self._stop.is_set():
                if self._container is None:
                    try:
                        container, info = self._open_container()
                    except StreamError as exc:
                        failures += 1
                        delay = self._backoff(failures)
                        self._on_state("reconnecting", f"{exc}; retrying in {delay:.1f} s")
                        if self._stop.wait(delay):
                            break
                        continue
                    with self._container_lock:
                        self._container, self.info = container, info
                    if lost:
                        self.reconnects += 1
                        log.info("reconnected to %s", redact_url(self.url))
                    lost = False
                    self._on_state("running", None)
                connected = time.monotonic()
                error = self._decode_until_error()
                self._close()
                if self._stop.is_set():
                    break
                if self._loop and error == END_OF_STREAM:
                    continue
                if time.monotonic() - connected >= max(HEALTHY_RUN_S, self._read_timeout):
                    # It ran for a while, so this is a new loss: back off from the start again. A
                    # server that accepts and drops at once keeps backing off instead of being
                    # hammered every RECONNECT_MIN_S.
                    failures = 0
                failures += 1
                lost = True
                delay = self._backoff(failures)
                self._on_state("reconnecting", f"{error}; reconnecting in {delay:.1f} s")
                log.warning("stream %s lost: %s", redact_url(self.url), error)
                if self._stop.wait(delay):
                    break
        except Exception as exc:  # noqa: BLE001 - any bug must surface as a failed session, not a dead thread
            log.exception("reader for %s crashed", redact_url(self.url))
            self._on_state("failed", f"Reader crashed: {_describe(exc)}")
        finally:
            self._close()

    def _decode_until_error(self) -> str:
        container = self._container
        stream = container.streams.video[0]
        time_base = float(stream.time_base) if stream.time_base else 0.0
        rate = stream.average_rate or stream.guessed_rate
        interval = 1.0 / float(rate) if rate else 0.0
        clock_start: float | None = None
        pts_start = 0.0
        last_picture = time.monotonic()  # when the decoder last gave a picture
        failing = False  # whether a packet failed to decode since then
        try:
            for packet in container.demux(stream):
                if self._stop.is_set():
                    return "stopped"
                blind = time.monotonic() - last_picture
                if blind >= max(NO_PICTURE_S, self._read_timeout):
                    return f"Stream error: data but no decodable picture for {blind:.0f} s"
                try:
                    frames = packet.decode()
                except av.error.FFmpegError as exc:
                    # A damaged packet (a bit error, a lost RTP packet) costs the frames that
                    # depend on it, not the connection: the decoder resumes at the next good one.
                    self.decode_errors += 1
                    if not failing:
                        failing = True
                        log.warning("stream %s: undecodable packet skipped: %s", redact_url(self.url), _describe(exc))
                    elif blind >= self._read_timeout:
                        return f"Stream error: nothing decodable for {blind:.1f} s: {_describe(exc)}"
                    continue
                if frames:
                    failing = False
                    last_picture = time.monotonic()
                for frame in frames:
                    due: float | None = None
                    if self._realtime and frame.pts is not None and time_base:
                        pts = frame.pts * time_base
                        if clock_start is None:
                            # A looped file continues the previous pass's timeline, so a reader
                            # that fell behind does not catch up at the loop point.
                            previous = self._paced_until
                            clock_start = previous + interval if previous is not None else time.monotonic()
                            pts_start = pts
                        due = clock_start + (pts - pts_start)
                        self._paced_until = due
                        delay = due - time.monotonic()
                        if delay > 0 and self._stop.wait(delay):
                            return "stopped"
                    self._frame_index += 1
                    wall, now = time.time(), time.monotonic()
                    if due is not None:
                        # A paced file stands in for a camera: the frame "arrived" when it was
                        # due, so a reader running behind its clock shows in every latency.
                        wall, now = wall - max(0.0, now - due), min(now, due)
                    self._on_frame(Frame(None, self._frame_index, wall, now, decoded=frame))
                    if self._stop.is_set():
                        return "stopped"
            return END_OF_STREAM
        except av.error.ExitError:
            return f"No data for {self._read_timeout:.1f} s"
        except (av.error.FFmpegError, OSError) as exc:
            return f"Stream error: {_describe(exc)}"

    def _backoff(self, failures: int) -> float:
        return min(self._reconnect_max, self._reconnect_min * (2 ** max(0, failures - 1)))
