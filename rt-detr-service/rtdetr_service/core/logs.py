"""Logging setup: text or JSON lines, the session and camera a line is about, and no secret in any
line (viewer tokens travel in query strings, camera passwords in stream URLs, VLM keys in
Authorization headers)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Literal

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_SECRET_QUERY = re.compile(
    r"(?<![A-Za-z0-9_])((?:token|apikey|api_key|key|password|passwd|pass|pwd|secret|auth)=)[^&\s\"']+",
    re.IGNORECASE,
)
# An API key in a header as it may be printed (a request dump, a dict's repr, an error that echoes
# it): the header's value is masked, whatever scheme word comes first.
_SECRET_HEADER = re.compile(
    r"(?<![A-Za-z0-9_-])((?:proxy-)?authorization|(?:x-)?api-key)([\"']?[ \t]*[:=][ \t]*[\"']?)"
    r"((?:bearer|basic|token)[ \t]+)?[^\s\"',;&}]+",
    re.IGNORECASE,
)
# A bearer token or an OpenAI-style key anywhere else in a line (VLM providers echo refused keys).
_BEARER = re.compile(r"(?<![A-Za-z0-9_-])(bearer[ \t]+)(?!\*\*\*)[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE)
_KEY_LIKE = re.compile(r"(?<![A-Za-z0-9_-])sk-[A-Za-z0-9_-]{12,}")
# Where a URL starts: a scheme at the start of a word, bounded in length, so that a long run of
# scheme-like characters costs linear time, not quadratic (log lines can come from clients).
_SCHEME = re.compile(r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]{0,31}://")
_WHITESPACE = re.compile(r"\s")


def redact_userinfo(text: str) -> str:
    """Mask the userinfo of every URL in `text`, whatever its shape: user:password, a token alone,
    an empty user, a password holding '@', '/' or quotes. A URL runs to the next whitespace, and
    everything from its '://' to its last '@' is masked, which errs on the safe side (a path
    holding an '@' is masked too). Linear in the length of the text."""
    out, pos = [], 0
    while (start := _SCHEME.search(text, pos)) is not None:
        authority = start.end()
        end_match = _WHITESPACE.search(text, authority)
        end = end_match.start() if end_match else len(text)
        at = text.rfind("@", authority, end)
        out.append(text[pos:authority])
        out.append(f"***{text[at:end]}" if at >= 0 else text[authority:end])
        pos = end
    out.append(text[pos:])
    return "".join(out)


def redact(text: str) -> str:
    """Mask query-string secrets, the userinfo of URLs, and API keys: in an Authorization or
    api-key header, after "Bearer", or shaped like "sk-…"."""
    text = _SECRET_HEADER.sub(r"\1\2\3***", _SECRET_QUERY.sub(r"\1***", text))
    return redact_userinfo(_KEY_LIKE.sub("sk-***", _BEARER.sub(r"\1***", text)))


# -- what a line is about ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class LogContext:
    """The session and camera a log line is about; None outside any session."""

    session: str | None = None
    camera: str | None = None


# Per thread and per asyncio task: a new thread starts with none, a task copies its creator's.
_CONTEXT: ContextVar[LogContext] = ContextVar("rtdetr_log_context", default=LogContext())  # noqa: B039 - frozen


def current_log_context() -> LogContext:
    """What lines logged here and now are about."""
    return _CONTEXT.get()


@contextlib.contextmanager
def log_context(context: LogContext | None = None, /, **fields: str | None) -> Iterator[LogContext]:
    """Lines logged inside (on this thread or asyncio task) carry `context`, or the current one
    with `fields` replaced; the one before comes back on the way out."""
    new = context if context is not None else dataclasses.replace(_CONTEXT.get(), **fields)
    token = _CONTEXT.set(new)
    try:
        yield new
    finally:
        _CONTEXT.reset(token)


# -- filter and formatter ---------------------------------------------------------------------------


class RedactSecrets(logging.Filter):
    """Rewrites each record's final message, exception and stack text with secrets masked."""

    _exceptions = logging.Formatter()  # formats exc_info once, as every formatter would

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logged as is
            message = None
        if message is not None and (clean := redact(message)) != message:
            record.msg, record.args = clean, None
        # A formatter uses exc_text when it is set: an exception's text (a URL in an FFmpeg or
        # HTTP error, a token in a request line) is masked before any handler prints it.
        if record.exc_info and not record.exc_text:
            record.exc_text = self._exceptions.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class JsonLines(logging.Formatter):
    """One JSON object a line, as log collectors expect: time (ISO 8601, UTC, ms), level, logger,
    replica, session, camera, message, and exc_info when there is one.

    Session and camera are read from the log context when the line is formatted, which is on the
    thread that logs it (the handlers here write synchronously)."""

    def __init__(self, replica: str) -> None:
        super().__init__()
        self._replica = replica

    def format(self, record: logging.LogRecord) -> str:
        context = _CONTEXT.get()
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "replica": self._replica,
            "session": context.session,
            "camera": context.camera,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc_info"] = record.exc_text
        if record.stack_info:
            line["stack_info"] = record.stack_info
        return json.dumps(line, ensure_ascii=False, default=str)


def configure(level: str, log_format: Literal["text", "json"] = "text", replica: str = "") -> None:
    """Log to stderr at `level`, as text or JSON lines, with secrets masked in every line (uvicorn's
    included: it is run with log_config=None, so its loggers reach these handlers)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines(replica) if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    if log_format == "json":
        _only_json_on_stderr()
    secret_filter = RedactSecrets()
    for root_handler in logging.getLogger().handlers:
        root_handler.addFilter(secret_filter)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addFilter(secret_filter)


def _only_json_on_stderr() -> None:
    """What else writes to stderr goes through logging, or is turned off: a collector reading JSON
    lines would take a progress bar or a bare traceback for garbage."""
    # transformers draws a bar while loading weights; it reads this when it is first imported.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.captureWarnings(True)
    threading.excepthook = _log_thread_crash


def _log_thread_crash(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
    logging.getLogger("rtdetr_service").error("thread %s died", name, exc_info=exc_info)
