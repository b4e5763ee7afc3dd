"""`python -m rtdetr_service`: run the service with settings from the environment."""

from __future__ import annotations

import logging
import sys

import uvicorn
from pydantic import ValidationError

from .app import create_app
from .config import Settings


def main() -> int:
    try:
        settings = Settings()
    except ValidationError as exc:
        for error in exc.errors():
            key = ".".join(str(p) for p in error["loc"]).upper() or "settings"
            print(f"configuration error: {key}: {error['msg']}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=5,
        # Logs never carry secrets: query strings hold viewer tokens, so access lines are off.
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
