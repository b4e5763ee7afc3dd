"""Log lines: JSON on request, each saying which replica, session and camera it is about, and no
secret in any of them, exception text included. The context is per thread and per asyncio task;
a session's threads (reader, publisher) log under their session's."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from rtdetr_service.analytics.events import EventLifecycle
from rtdetr_service.analytics.publisher import Publisher
from rtdetr_service.analytics.tracking import Tracker, TrackerOptions
from rtdetr_service.analytics.zones import ZoneConfig, ZoneEngine
from rtdetr_service.core.logs import (
    TEXT_FORMAT,
    JsonLines,
    LogContext,
    RedactSecrets,
    current_log_context,
    log_context,
)
from rtdetr_service.core.results import SessionView
from rtdetr_service.core.types import StreamInfo
from rtdetr_service.ingest.reader import StreamReader

SERVICE_CODE = Path(__file__).resolve().parents[2] / "rt-detr-service"
CAMERA_URL = "rtsp://admin:cam-pass-9137@10.0.0.5:554/stream1?token=tok-5521"
SECRETS = ("cam-pass-9137", "tok-5521")


class _Lines:
    """What a handler configured as the service's wrote, one parsed object a line."""

    def __init__(self, stream: io.StringIO) -> None:
        self._stream = stream

    @property
    def text(self) -> str:
        return self._stream.getvalue()

    def parsed(self) -> list[dict]:
        return [json.loads(line) for line in self.text.splitlines()]


def _capture(logger_name: str, formatter: logging.Formatter):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(RedactSecrets())
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return _Lines(stream), lambda: (logger.removeHandler(handler), logger.setLevel(level))


@pytest.fixture
def json_lines():
    lines, undo = _capture("rtdetr_service", JsonLines("replica-a"))
    yield lines
    undo()


@pytest.fixture
def text_lines():
    lines, undo = _capture("rtdetr_service", logging.Formatter(TEXT_FORMAT))
    yield lines
    undo()


log = logging.getLogger("rtdetr_service.tests")


# -- the formatter ------------------------------------------------------------------------------------


def test_a_json_line_holds_time_level_logger_replica_session_camera_and_message():
    # given a record made at a known instant, formatted inside a session's context
    record = logging.LogRecord("rtdetr_service.x", logging.WARNING, __file__, 1, "lost %s", ("cam",), None)
    record.created, record.msecs = 1767225600.25, 250.0  # 2026-01-01 00:00:00.250 UTC
    with log_context(LogContext("s-1", "gate")):
        line = JsonLines("replica-a").format(record)

    # then it is one line of JSON with every field, the time in UTC with milliseconds
    assert "\n" not in line
    assert json.loads(line) == {
        "time": "2026-01-01T00:00:00.250Z",
        "level": "WARNING",
        "logger": "rtdetr_service.x",
        "replica": "replica-a",
        "session": "s-1",
        "camera": "gate",
        "message": "lost cam",
    }


def test_a_line_outside_any_session_says_so_and_a_multiline_message_stays_one_line(json_lines):
    log.info("first line\nsecond line")
    (line,) = json_lines.parsed()
    assert (line["session"], line["camera"]) == (None, None)
    assert line["message"] == "first line\nsecond line" and "exc_info" not in line


def test_an_exception_is_one_string_in_the_line(json_lines):
    try:
        raise ValueError("bad frame")
    except ValueError:
        log.exception("analysing failed")
    (line,) = json_lines.parsed()
    assert line["level"] == "ERROR" and line["message"] == "analysing failed"
    assert line["exc_info"].startswith("Traceback") and "ValueError: bad frame" in line["exc_info"]


# -- secrets ----------------------------------------------------------------------------------------


def test_no_password_or_token_reaches_a_json_line_not_even_through_an_exception(json_lines):
    # given a camera URL with a password and a token, in a message, its arguments and an exception
    log.warning("opening %s", CAMERA_URL)
    log.info(f"viewer GET /ws/stream/s-1?token=tok-5521&format=json from {CAMERA_URL}")
    try:
        raise ConnectionError(f"could not connect to {CAMERA_URL}")
    except ConnectionError:
        log.exception("start on %s failed", CAMERA_URL)

    # then no line holds either secret, and each still says what happened, masked
    for secret in SECRETS:
        assert secret not in json_lines.text
    opening, viewer, failed = json_lines.parsed()
    assert opening["message"] == "opening rtsp://***@10.0.0.5:554/stream1?token=***"
    assert "token=***&format=json" in viewer["message"]
    assert "ConnectionError: could not connect to rtsp://***@10.0.0.5" in failed["exc_info"]


def test_text_lines_mask_exception_text_too(text_lines):
    try:
        raise ConnectionError(f"could not connect to {CAMERA_URL}")
    except ConnectionError:
        log.exception("start failed")
    assert "ConnectionError: could not connect to rtsp://***@10.0.0.5" in text_lines.text
    for secret in SECRETS:
        assert secret not in text_lines.text


VLM_KEY = "sk-proj-Zq81vLmKeyForTests0042"


@pytest.mark.parametrize(
    "said",
    [
        f"POST /v1/chat/completions headers={{'Authorization': 'Bearer {VLM_KEY}'}}",
        f'{{"authorization": "Bearer {VLM_KEY}"}}',
        f"Authorization: Bearer {VLM_KEY}",
        f"x-api-key: {VLM_KEY}",
        f"Incorrect API key provided: {VLM_KEY}. You can find your API key at …",
        f"token rejected: bearer {VLM_KEY}",
    ],
)
def test_no_api_key_reaches_a_line_in_a_header_after_bearer_or_shaped_like_sk(text_lines, said):
    # given a VLM key as an HTTP library or a provider's error may print it: in the message and in
    # an exception's text
    log.warning("VLM said: %s", said)
    try:
        raise RuntimeError(said)
    except RuntimeError:
        log.exception("VLM request failed")

    # then neither line holds the key, or any long piece of it, and the line still says what it was
    assert VLM_KEY not in text_lines.text and VLM_KEY[3:15] not in text_lines.text
    assert text_lines.text.count("***") >= 2
    assert "VLM said:" in text_lines.text and "RuntimeError" in text_lines.text


def test_words_that_merely_look_like_a_header_are_left_alone(text_lines):
    log.info("the Bearer of bad news; sk-learn; api-keys are set; authorization pending")
    assert "***" not in text_lines.text


# -- the context ------------------------------------------------------------------------------------


def test_a_context_nests_and_the_one_before_comes_back():
    assert current_log_context() == LogContext()
    with log_context(camera="gate") as outer:
        assert outer == LogContext(None, "gate")
        with log_context(session="s-1"):
            assert current_log_context() == LogContext("s-1", "gate")
        with log_context(LogContext("s-2", None)):
            assert current_log_context() == LogContext("s-2", None)
        assert current_log_context() == outer
    assert current_log_context() == LogContext()


def test_a_new_thread_starts_without_context_and_an_asyncio_task_copies_its_creators():
    seen: dict[str, LogContext] = {}

    async def scenario():
        with log_context(LogContext("s-1", "gate")):
            seen["task"] = await asyncio.create_task(_context_now())
            seen["to_thread"] = await asyncio.to_thread(current_log_context)
            thread = threading.Thread(target=lambda: seen.setdefault("thread", current_log_context()))
            thread.start()
            thread.join(5)

    asyncio.run(scenario())
    assert seen["task"] == seen["to_thread"] == LogContext("s-1", "gate")
    assert seen["thread"] == LogContext()


async def _context_now() -> LogContext:
    return current_log_context()


# -- a session's threads ------------------------------------------------------------------------------


class _Connection:
    def close(self) -> None:
        pass


class _ReaderThatLogs(StreamReader):
    """The real reader's lifecycle and thread, with a read loop that logs one line and ends."""

    def _open_container(self):
        return _Connection(), StreamInfo(64, 48, 30.0, "h264")

    def _read_with_reconnects(self) -> None:
        logging.getLogger("rtdetr_service.ingest.reader").warning("stream %s lost: test", self.url)


def _reader() -> _ReaderThatLogs:
    return _ReaderThatLogs(
        CAMERA_URL,
        on_frame=lambda frame: None,
        on_state=lambda state, error: None,
        open_timeout=1,
        read_timeout=1,
        reconnect_min=0.1,
        reconnect_max=0.1,
    )


def test_the_reader_thread_logs_under_the_context_of_whoever_started_it(json_lines):
    # given one reader started inside a session's context and one outside any
    inside, outside = _reader(), _reader()
    with log_context(LogContext("s-1", "gate")):
        inside.open()
        inside.start()
    outside.open()
    outside.start()
    assert inside.join(5) and outside.join(5)

    # then the first thread's line carries the session and camera, the second's none
    lines = sorted(json_lines.parsed(), key=lambda line: line["session"] is None)
    assert [(line["session"], line["camera"]) for line in lines] == [("s-1", "gate"), (None, None)]
    assert all(line["logger"] == "rtdetr_service.ingest.reader" for line in lines)


class _ForgetFails:
    name = "forgetful"

    def handle(self, item) -> None:
        pass

    def session_ended(self, session_id: str) -> None:
        raise RuntimeError("cannot forget")


def test_the_publisher_thread_logs_under_its_session(json_lines):
    # given a publisher of camera "door" whose sink fails when the session ends
    publisher = Publisher(
        SessionView("s-7", "door", False, 75),
        tracker=Tracker(TrackerOptions(), activation_threshold=0.5, frame_rate=10.0),
        zones=ZoneEngine(ZoneConfig()),
        events=EventLifecycle("s-7", "door"),
        sinks=[_ForgetFails()],
    )
    # when it is started and stopped from outside any session
    publisher.start()
    publisher.stop()
    assert publisher.join(5)

    # then its thread's line names its session and camera
    (line,) = json_lines.parsed()
    assert (line["session"], line["camera"], line["level"]) == ("s-7", "door", "ERROR")
    assert "RuntimeError: cannot forget" in line["exc_info"]


# -- the process's stderr -----------------------------------------------------------------------------

_CONFIGURED = f"""
import logging, os, threading, warnings
from rtdetr_service.core.logs import configure
configure("info", "json", "replica-b")
logging.getLogger("uvicorn.access").info('1.2.3.4 - "GET /ws/stream/s?token=tok-5521 HTTP/1.1" 101')
warnings.warn("a library is unhappy")
def crash():
    raise ConnectionError("lost {CAMERA_URL}")
thread = threading.Thread(target=crash, name="reader-x")
thread.start()
thread.join()
print(os.environ["HF_HUB_DISABLE_PROGRESS_BARS"])
"""


def test_with_json_every_line_on_stderr_is_json_warnings_and_thread_crashes_included():
    # given a process configured as `python -m rtdetr_service` does with LOG_FORMAT=json
    env = {**os.environ, "PYTHONPATH": str(SERVICE_CODE)}
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    done = subprocess.run(
        [sys.executable, "-c", _CONFIGURED], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    # then uvicorn's line, a warning and a thread's crash are JSON lines, masked, and progress bars are off
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [line["logger"] for line in lines] == ["uvicorn.access", "py.warnings", "rtdetr_service"], done.stderr
    assert {line["replica"] for line in lines} == {"replica-b"}
    assert "a library is unhappy" in lines[1]["message"]
    assert lines[2]["message"] == "thread reader-x died" and "ConnectionError: lost rtsp://***@" in lines[2]["exc_info"]
    for secret in SECRETS:
        assert secret not in done.stderr
    assert done.stdout.strip() == "1"
