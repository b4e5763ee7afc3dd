"""Logging setup: one format, and no secret in any line (viewer tokens travel in query strings)."""

from __future__ import annotations

import logging
import re

_SECRET_QUERY = re.compile(
    r"(?<![A-Za-z0-9_])((?:token|apikey|api_key|key|password|passwd|pass|pwd|secret|auth)=)[^&\s\"']+",
    re.IGNORECASE,
)
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
    """Mask query-string secrets and the userinfo of URLs."""
    return redact_userinfo(_SECRET_QUERY.sub(r"\1***", text))


class RedactSecrets(logging.Filter):
    """Rewrites each record's final message with secrets masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logged as is
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def configure(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    secret_filter = RedactSecrets()
    for handler in logging.getLogger().handlers:
        handler.addFilter(secret_filter)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addFilter(secret_filter)
