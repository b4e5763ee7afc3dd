"""Stream reading with PyAV: one reader thread per session, reconnect with backoff."""

from __future__ import annotations

import enum
import logging
import threading
import time
from typing import Callable, Iterator, Sequence

import av
import av.container.core
import av.logging

from rtdetr_service.core.logs import LogContext, current_log_context, log_context, redact
from rtdetr_service.core.types import Frame, StreamInfo, VideoPacket, VideoTemplate
from rtdetr_service.ingest.pyav_clock import Watch, watched
from rtdetr_service.ingest.urls import (
    DENIED_WORDS,
    DestinationPolicy,
    StreamError,
    StreamErrorKind,
    protocol_whitelist,
    redact_url,
)

log = logging.getLogger(__name__)


END_OF_STREAM = "End of stream"
# A connection that delivered this long counts as healthy: its loss starts the backoff afresh.
HEALTHY_RUN_S = 10.0
# Packets arriving but no picture decoded for this long (a decoder that never recovers): reconnect.
# Generous, because a decoder waits for the next keyframe and some cameras send one every 10 s+.
NO_PICTURE_S = 30.0


class ReaderState(enum.StrEnum):
    """What a reader reports through `on_state`: a str, so it reads as its value in messages."""

    RUNNING = "running"
    RECONNECTING = "reconnecting"
    FAILED = "failed"


def _describe(exc: BaseException) -> str:
    """FFmpeg's reason in one line; it often quotes the URL, whose secrets are masked."""
    text = str(exc).strip() or type(exc).__name__
    return redact(text.replace("\n", " "))


class StreamReader:
    """Decodes every frame of one stream on its own thread and hands each to `on_frame`.

    `open()` runs in the caller (the start call waits for it); `start()` then reads until
    `stop()`. On loss it reconnects with capped exponential backoff and reports state changes
    through `on_state(state, error)` with a ReaderState.

    For a recorder: `on_connect(VideoTemplate)` once per connection before its first packet (and
    again at a keyframe where the codec's size or extradata changed), and `on_packet(VideoPacket)`
    for every demuxed video packet, one the decoder then rejects included, on the reader's thread:
    both must return at once.

    Network streams only: a subclass that reads local files (bench/file_camera.py) overrides the
    hooks `_protocol_whitelist`, `_restarts_at_end`, `_start_decoding` and `_emit`.
    """

    def __init__(
        self,
        url: str,
        *,
        on_frame: Callable[[Frame], None],
        on_state: Callable[[ReaderState, str | None], None],
        open_timeout: float,
        read_timeout: float,
        reconnect_min: float,
        reconnect_max: float,
        name: str = "reader",
        policy: DestinationPolicy | None = None,
        schemes: Sequence[str] = ("rtsp", "rtsps"),
        on_packet: Callable[[VideoPacket], None] | None = None,
        on_connect: Callable[[VideoTemplate], None] | None = None,
    ) -> None:
        self.url = url
        self._on_frame = on_frame
        self._on_state = on_state
        self._on_packet = on_packet
        self._on_connect = on_connect
        self._open_timeout = open_timeout
        self._read_timeout = read_timeout
        self._reconnect_min = reconnect_min
        self._reconnect_max = reconnect_max
        # Checked at every open, reconnects included (DNS may change), and at every redirect.
        self._policy = policy
        self._schemes = tuple(schemes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._log_context = LogContext()  # whose lines the thread logs: its starter's (a session's)
        self._container: av.container.InputContainer | None = None
        self._container_lock = threading.Lock()
        self._frame_index = 0
        self.info: StreamInfo | None = None
        self.reconnects = 0
        self.decode_errors = 0  # packets the decoder rejected (bit errors, lost packets)

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> StreamInfo:
        """Open the stream and find its video; raise StreamError with FFmpeg's reason. `stop()`
        from another thread interrupts it."""
        container, info = self._open_container()
        with self._container_lock:
            if self._stop.is_set():
                # stop() came while FFmpeg was connecting: nobody will start this reader now.
                container.close()
                raise StreamError(StreamErrorKind.UNAVAILABLE, "Stopped while opening the stream")
            self._container, self.info = container, info
        return info

    def start(self) -> None:
        """Start reading on the reader's own thread; `open()` must have succeeded."""
        if self._container is None:
            raise RuntimeError("open() must succeed before start()")
        self._log_context = current_log_context()
        self._thread.start()

    def hand_packets(self, on_packet: Callable[[VideoPacket], None] | None) -> None:
        """Start (or, with None, stop) handing packets to `on_packet`, from the next one on: a recorder
        attached or detached while the stream runs. Its template is the latest `on_connect` gave."""
        self._on_packet = on_packet

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
        """Wait for the thread to end; True if it has (or never started)."""
        if self._thread.ident:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        """Whether the reading thread runs."""
        return self._thread.is_alive()

    # -- internals -------------------------------------------------------------------------

    def _open_container(self) -> tuple[av.container.InputContainer, StreamInfo]:
        if self._stop.is_set():
            raise StreamError(StreamErrorKind.UNAVAILABLE, "Stopped while opening the stream")
        url = self._policy.pin(self.url) if self._policy is not None else self.url
        options = {
            "rtsp_transport": "tcp",
            "rtsp_flags": "prefer_tcp",
            "protocol_whitelist": self._protocol_whitelist(),
            # FFmpeg's own socket I/O timeout (microseconds) backs up PyAV's interrupt timeouts.
            # Not READ_TIMEOUT_S: during the open it would cut a silent server short and call it
            # invalid data; reads are bounded by PyAV's read timeout, which is shorter.
            "timeout": str(int(max(self._open_timeout, self._read_timeout) * 1_000_000)),
            "fflags": "nobuffer",
            "analyzeduration": "1000000",
            "probesize": "1000000",
        }
        if not self.url.lower().startswith("rtsp"):
            for key in ("rtsp_transport", "rtsp_flags"):
                options.pop(key)
        started = time.monotonic()
        watch = Watch(self._stop, self._policy, self._schemes)
        try:
            with watched(watch), av.logging.Capture(local=True) as watch.logs:
                container = av.open(url, options=options, timeout=(self._open_timeout, self._read_timeout))
        except (av.error.FFmpegError, OSError) as exc:
            raise self._open_error(exc, time.monotonic() - started, watch) from exc
        finally:
            watch.logs = None
        try:
            return container, self._video_info(container)
        except BaseException:
            container.close()
            raise

    def _open_error(self, exc: BaseException, elapsed: float, watch: Watch) -> StreamError:
        """What went wrong, in words: a denied redirect, a stop, a timeout (whatever FFmpeg calls
        it: an interrupted read surfaces as "Invalid data"), or the server's refusal or bad data."""
        if watch.denied:
            return StreamError(StreamErrorKind.DENIED, DENIED_WORDS)
        if self._stop.is_set():
            return StreamError(StreamErrorKind.UNAVAILABLE, "Stopped while opening the stream")
        if isinstance(exc, (av.error.ExitError, TimeoutError)) or elapsed >= 0.9 * self._open_timeout:
            return StreamError(
                StreamErrorKind.TIMEOUT,
                f"Timed out after {elapsed:.1f} s opening the stream: the server did not complete its "
                f"answer within OPEN_TIMEOUT_S={self._open_timeout:g}",
            )
        return StreamError(StreamErrorKind.UNAVAILABLE, f"Cannot open stream: {_describe(exc)}")

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
        with log_context(self._log_context), watched(Watch(self._stop, None, ())):
            self._read_with_reconnects()

    def _read_with_reconnects(self) -> None:
        failures = 0  # connection losses since the stream last ran healthily
        lost = False
        try:
            while not self._stop.is_set():
                if self._container is None:
                    try:
                        self._reconnect(lost)
                    except StreamError as exc:
                        failures += 1
                        delay = self._backoff(failures)
                        self._on_state(ReaderState.RECONNECTING, f"{exc}; retrying in {delay:.1f} s")
                        if self._stop.wait(delay):
                            break
                        continue
                    lost = False
                error, healthy = self._read_connection()
                if self._stop.is_set():
                    break
                if error == END_OF_STREAM and self._restarts_at_end():
                    continue
                # A healthy run's loss is a new loss: back off from the start again. A server that
                # accepts and drops at once keeps backing off instead of being hammered every
                # RECONNECT_MIN_S.
                failures = 1 if healthy else failures + 1
                lost = True
                if self._wait_after_loss(error, failures):
                    break
        except Exception as exc:  # noqa: BLE001 - any bug must surface as a failed session, not a dead thread
            log.exception("reader for %s crashed", redact_url(self.url))
            self._on_state(ReaderState.FAILED, f"Reader crashed: {_describe(exc)}")
        finally:
            self._close()

    def _reconnect(self, lost: bool) -> None:
        """Open the stream again (StreamError if it cannot be) and report it running."""
        container, info = self._open_container()
        with self._container_lock:
            self._container, self.info = container, info
        if lost:
            self.reconnects += 1
            log.info("reconnected to %s", redact_url(self.url))
        self._on_state(ReaderState.RUNNING, None)

    def _read_connection(self) -> tuple[str, bool]:
        """Decode the open connection, then close it: why it ended, and whether it ran long enough
        (HEALTHY_RUN_S) to count as healthy."""
        connected = time.monotonic()
        error = self._decode_until_error()
        self._close()
        return error, time.monotonic() - connected >= max(HEALTHY_RUN_S, self._read_timeout)

    def _wait_after_loss(self, error: str, failures: int) -> bool:
        """Report the loss and wait out its backoff: True if stopped meanwhile."""
        delay = self._backoff(failures)
        self._on_state(ReaderState.RECONNECTING, f"{error}; reconnecting in {delay:.1f} s")
        log.warning("stream %s lost: %s", redact_url(self.url), error)
        return self._stop.wait(delay)

    def _decode_until_error(self) -> str:
        """Decode packets into frames until the connection fails or ends: why, in words."""
        container = self._container
        stream = container.streams.video[0]
        self._start_decoding(stream)
        health = _Health(self._read_timeout)
        template = None
        if self._on_connect is not None:
            template = video_template(stream)
            self._on_connect(template)
        try:
            for packet, waited in _timed(container.demux(stream)):
                if self._stop.is_set():
                    return "stopped"
                if error := health.check(waited):
                    return error
                if self._on_packet is not None and packet.size:
                    template = self._hand_packet(packet, stream, template)
                try:
                    pictures = packet.decode()
                except av.error.FFmpegError as exc:
                    if error := self._skip_damaged(health, exc):
                        return error
                    continue
                health.decoded(pictures)
                for picture in pictures:
                    if not self._emit(picture):
                        return "stopped"
            return END_OF_STREAM
        except av.error.ExitError:
            return f"No data for {self._read_timeout:.1f} s"
        except (av.error.FFmpegError, OSError) as exc:
            return f"Stream error: {_describe(exc)}"

    def _hand_packet(
        self, packet: av.Packet, stream: av.video.stream.VideoStream, template: VideoTemplate | None
    ) -> VideoTemplate | None:
        """`on_packet` with a copy of the packet; at a keyframe, first `on_connect` if the stream's
        size or extradata changed since the template was taken. Returns the template in force."""
        keyframe = bool(packet.is_keyframe)
        if keyframe and template is not None and self._on_connect is not None:
            now = video_template(stream)
            if not now.same_stream(template):
                template = now
                self._on_connect(template)
        self._on_packet(VideoPacket(bytes(packet), packet.pts, packet.dts, packet.time_base, keyframe, time.time()))
        return template

    def _skip_damaged(self, health: _Health, exc: av.error.FFmpegError) -> str | None:
        """Count a packet the decoder rejected: None to go on, or why to drop the connection."""
        # A damaged packet (a bit error, a lost RTP packet) costs the frames that depend on it,
        # not the connection: the decoder resumes at the next good one.
        self.decode_errors += 1
        if not health.failing:
            health.failing = True
            log.warning("stream %s: undecodable packet skipped: %s", redact_url(self.url), _describe(exc))
        elif health.blind >= self._read_timeout:
            return f"Stream error: nothing decodable for {health.blind:.1f} s: {_describe(exc)}"
        return None

    def _backoff(self, failures: int) -> float:
        return min(self._reconnect_max, self._reconnect_min * (2 ** max(0, failures - 1)))

    # -- hooks for readers of local files (bench/file_camera.py) ---------------------------

    def _protocol_whitelist(self) -> str:
        """The protocols FFmpeg may use for this URL: its scheme's network protocols, no local ones."""
        return protocol_whitelist(self.url)

    def _restarts_at_end(self) -> bool:
        """Whether the end of the stream starts it again instead of counting as a lost stream."""
        return False

    def _start_decoding(self, stream: av.video.stream.VideoStream) -> None:
        """Called once per connection, before its first packet."""

    def _emit(self, picture: av.VideoFrame) -> bool:
        """Hand one decoded picture on, arrived now; False once the reader is stopped."""
        return self._deliver(picture, time.time(), time.monotonic())

    def _deliver(self, picture: av.VideoFrame, wall: float, now: float) -> bool:
        """`on_frame` with the picture as the next frame, arrived at `wall` (epoch) / `now` (monotonic)."""
        self._frame_index += 1
        self._on_frame(Frame(None, self._frame_index, wall, now, decoded=picture))
        return not self._stop.is_set()


def video_template(stream: av.video.stream.VideoStream) -> VideoTemplate:
    """What a muxer needs of the stream to copy its packets (see VideoTemplate)."""
    context = stream.codec_context
    rate = stream.average_rate or stream.guessed_rate
    return VideoTemplate(
        codec=context.name,
        width=int(context.width or 0),
        height=int(context.height or 0),
        time_base=stream.time_base,
        average_rate=rate if rate and 0 < rate < 1000 else None,
        extradata=bytes(context.extradata or b""),
    )


class _Health:
    """One connection's packet-level health: silence, data without pictures, damaged packets."""

    def __init__(self, read_timeout: float) -> None:
        self._read_timeout = read_timeout
        self._last_picture = time.monotonic()  # when the decoder last gave a picture
        self.blind = 0.0  # seconds since then, as of the latest packet
        self.failing = False  # whether a packet failed to decode since then

    def check(self, waited: float) -> str | None:
        """Why to drop the connection, given a packet that took `waited` s to come; None to go on."""
        if waited >= self._read_timeout:
            # PyAV's read timeout fired, and FFmpeg's RTSP demuxer answered it with the
            # last frame it held instead of an error: the camera has been silent for
            # READ_TIMEOUT_S already. Waiting for the next timeout would double it.
            return f"No data for {waited:.1f} s"
        self.blind = time.monotonic() - self._last_picture
        if self.blind >= max(NO_PICTURE_S, self._read_timeout):
            return f"Stream error: data but no decodable picture for {self.blind:.0f} s"
        return None

    def decoded(self, pictures: Sequence[av.VideoFrame]) -> None:
        """Note what a good packet gave: pictures end a blind spell."""
        if pictures:
            self.failing = False
            self._last_picture = time.monotonic()


def _timed(packets) -> Iterator[tuple[av.Packet, float]]:
    """Each packet with the seconds spent waiting for it (inside FFmpeg, not in the caller)."""
    iterator = iter(packets)
    while True:
        started = time.monotonic()
        try:
            packet = next(iterator)
        except StopIteration:
            return
        yield packet, time.monotonic() - started
