"""Stream reading with PyAV: URL checks, one reader thread per session, reconnect with backoff."""

from __future__ import annotations

import enum
import logging
import threading
import time
from typing import Callable, Sequence
from urllib.parse import urlsplit, urlunsplit

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
    """Return the URL if its scheme is allowed and it names a host; raise StreamError otherwise."""
    if not isinstance(url, str) or not url.strip():
        raise StreamError(StreamErrorKind.UNSUPPORTED_URL, "stream_url is empty")
    url = url.strip()
    if any(ord(c) < 0x20 or c in " \x7f" for c in url):
        raise StreamError(StreamErrorKind.UNSUPPORTED_URL, "stream_url contains whitespace or control characters")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in allowed_schemes:
        shown = f"'{scheme}:'" if scheme else "no scheme"
        raise StreamError(
            StreamErrorKind.UNSUPPORTED_URL,
            f"stream_url has {shown}; only {', '.join(s + '://' for s in allowed_schemes)} URLs are accepted",
        )
    try:
        parts.port  # noqa: B018 - urllib validates the port only when it is read
    except ValueError as exc:
        raise StreamError(StreamErrorKind.UNSUPPORTED_URL, f"stream_url has an invalid port: {exc}") from exc
    if not parts.hostname:
        raise StreamError(StreamErrorKind.UNSUPPORTED_URL, "stream_url names no host")
    return url


def redact_url(url: str) -> str:
    """The URL with any user:password replaced, safe for logs and status."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


def protocol_whitelist(url: str) -> str:
    scheme = urlsplit(url).scheme.lower()
    return ",".join(_TRANSPORT_PROTOCOLS.get(scheme, (scheme,)))


def _describe(exc: BaseException) -> str:
    """FFmpeg's reason in one line; it often quotes the URL, so credentials are masked."""
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
        self._frame_index = 0
        self.info: StreamInfo | None = None
        self.reconnects = 0

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> StreamInfo:
        """Open the stream and find its video; raise StreamError with FFmpeg's reason."""
        self._container, self.info = self._open_container()
        return self.info

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
        if not container.streams.video:
            container.close()
            raise StreamError(StreamErrorKind.NO_VIDEO, "The stream has no video track")
        stream = container.streams.video[0]
        # Slice threading: frame threading would hold back one frame per decoder thread (on a
        # 16-core host, half a second at 30 fps) before the reader ever sees it, and with many
        # cameras it oversubscribes the cores (ARCHITECTURE.md: 1407 vs 862 fps for 16 streams).
        stream.thread_type = "SLICE"
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        info = StreamInfo(
            width=int(stream.codec_context.width or 0),
            height=int(stream.codec_context.height or 0),
            fps=round(fps, 3) if fps < 1000 else 0.0,
            codec=stream.codec_context.name,
        )
        return container, info

    def _close(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            try:
                container.close()
            except Exception:  # noqa: BLE001 - closing must never raise out of stop()
                log.debug("error closing container", exc_info=True)

    def _run(self) -> None:
        failures = 0
        try:
            while not self._stop.is_set():
                if self._container is None:
                    try:
                        self._container, self.info = self._open_container()
                    except StreamError as exc:
                        failures += 1
                        delay = self._backoff(failures)
                        self._on_state("reconnecting", f"{exc}; retrying in {delay:.1f} s")
                        if self._stop.wait(delay):
                            break
                        continue
                    if failures or not self._loop:
                        self.reconnects += 1
                        log.info("reconnected to %s", redact_url(self.url))
                    failures = 0
                    self._on_state("running", None)
                error = self._decode_until_error()
                self._close()
                if self._stop.is_set():
                    break
                if self._loop and error == END_OF_STREAM:
                    continue
                failures += 1
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
        try:
            for packet in container.demux(stream):
                if self._stop.is_set():
                    return "stopped"
                for frame in packet.decode():
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
                    self._on_frame(Frame(None, self._frame_index, time.time(), time.monotonic(), decoded=frame))
                    if self._stop.is_set():
                        return "stopped"
            return END_OF_STREAM
        except av.error.ExitError:
            return f"No data for {self._read_timeout:.1f} s"
        except (av.error.FFmpegError, OSError) as exc:
            return f"Stream error: {_describe(exc)}"

    def _backoff(self, failures: int) -> float:
        return min(self._reconnect_max, self._reconnect_min * (2 ** max(0, failures - 1)))
