"""Interrupting FFmpeg from Python: PyAV's clock patched once, per-thread watches, FFmpeg's log.

While FFmpeg blocks (connecting, reading) it asks an interrupt callback, many times a second,
whether to give up. PyAV's callback answers from its timeouts alone, reading the clock through
`av.container.core.time.monotonic`. The clock below answers "later than any timeout" on a thread
whose watch says so: the reader was stopped, or FFmpeg announced a redirect to a destination the
policy denies. FFmpeg then gives up at its next check, before it sends anything on the redirected
connection. tests/unit/test_hostile_source.py holds PyAV to it. Importing this module installs
the clock (idempotent); `ingest.reader` imports it.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from typing import Iterator, Sequence

import av
import av.container.core
import av.logging

from rtdetr_service.ingest.urls import DestinationPolicy, StreamError, validate_stream_url

log = logging.getLogger(__name__)

_REDIRECT = re.compile(r"Redirecting to (\S+)")


class Watch:
    """What FFmpeg is asked to give up for on one thread: a stop, or a redirect the policy denies."""

    def __init__(self, stop: threading.Event, policy: DestinationPolicy | None, schemes: Sequence[str]) -> None:
        self.stop = stop
        self.policy = policy
        self.schemes = schemes
        self.logs: list | None = None  # FFmpeg's log lines on this thread while it opens a stream
        self._seen = 0
        self.denied = False
        self._jumps = 0

    def interrupted(self) -> bool:
        """Whether FFmpeg should give up now (reads FFmpeg's new log lines for redirects)."""
        if self.stop.is_set() or self.denied:
            return True
        logs = self.logs
        if self.policy is not None and logs is not None and len(logs) > self._seen:
            for _level, _name, message in logs[self._seen :]:
                if (match := _REDIRECT.search(message)) and not self._redirect_allowed(match.group(1)):
                    log.warning("stream redirected to a denied destination; not followed")
                    self.denied = True
            self._seen = len(logs)
        return self.denied

    def _redirect_allowed(self, url: str) -> bool:
        try:
            url = validate_stream_url(url, self.schemes)
        except StreamError:
            return False
        return self.policy.permits_url(url)

    def late(self, now: float) -> float:
        """A time past any of PyAV's timeouts."""
        # Later at every call, so PyAV's "clock went backwards" check never fires.
        self._jumps += 1
        return now + 1e6 * self._jumps


_watches: dict[int, Watch] = {}


class _InterruptingClock:
    """Stands in for the `time` module inside av.container.core."""

    def __init__(self, module) -> None:
        self._time = module

    def __getattr__(self, name: str):
        return getattr(self._time, name)

    def monotonic(self) -> float:
        now = self._time.monotonic()
        watch = _watches.get(threading.get_ident())
        if watch is not None and watch.interrupted():
            return watch.late(now)
        return now


@contextlib.contextmanager
def watched(watch: Watch) -> Iterator[Watch]:
    """Install `watch` for the calling thread while the block runs."""
    ident = threading.get_ident()
    previous = _watches.get(ident)
    _watches[ident] = watch
    try:
        yield watch
    finally:
        if previous is None:
            _watches.pop(ident, None)
        else:
            _watches[ident] = previous


if not isinstance(av.container.core.time, _InterruptingClock):
    av.container.core.time = _InterruptingClock(av.container.core.time)
# FFmpeg's lines reach Python (at INFO, for the redirect notice) but stay out of the service
# log, as before: the reader says what went wrong in its own words. Repeats are kept, or a
# second stream redirected to the same place would go unseen.
av.logging.set_level(av.logging.INFO)
av.logging.set_skip_repeated(False)
logging.getLogger("libav").setLevel(logging.CRITICAL)
