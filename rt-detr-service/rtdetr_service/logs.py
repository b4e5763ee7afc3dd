"""Logging setup: one format, and no secret in any line (viewer tokens travel in query strings)."""

from __future__ import annotations

import logging
import re

_SECRET_QUERY = re.compile(
    r"((?:token|apikey|api_key|key|password|passwd|pass|pwd|secret|auth)=)[^&\s\"']+", re.IGNORECASE
)
# The userinfo of a URL, whatever its shape: user:password, a token alone, an empty user, a
# password holding '@' or '/'. Everything from '://' to the last '@' of the URL is masked; a
# path that holds an '@' is masked too, which errs on the safe side.
_URL_CREDENTIALS = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^\s'\"<>]*@", re.IGNORECASE)


def redact(text: str) -> str:
    """Mask query-string secrets and the userinfo of URLs."""
    return _URL_CREDENTIALS.sub(r"\1***@", _SECRET_QUERY.sub(r"\1***", text))


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
