"""`python -m rtdetr_service`: run the service with settings from the environment."""

from __future__ import annotations

import logging
import sys
from typing import Callable

import uvicorn
from pydantic import ValidationError

from rtdetr_service.core.logs import configure
from rtdetr_service.inference.detector import Detector
from rtdetr_service.inference.loading import detector_from_settings
from rtdetr_service.web.app import ServiceServer, create_app
from rtdetr_service.web.settings import Settings, unknown_env_file_keys


def server_config(app, settings: Settings, **overrides) -> uvicorn.Config:
    """How the service is served; tests and benchmarks use the same, with overrides."""
    options = dict(
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=5,
        # Frames are JPEG already: deflate would cost ~10 ms per 1080p frame on the event loop
        # and save under 1 %.
        ws_per_message_deflate=False,
        log_config=None,  # keep the root handlers (and their secret filter) from configure()
    )
    options.update(overrides)
    return uvicorn.Config(app, **options)


def main(detector_factory: Callable[[Settings], Detector] = detector_from_settings) -> int:
    """Run until SIGTERM/SIGINT; 2 on a configuration error. Tests may hand in another detector."""
    try:
        settings = Settings()
    except ValidationError as exc:
        for error in exc.errors():
            key = ".".join(str(p) for p in error["loc"]).upper() or "settings"
            print(f"configuration error: {key}: {error['msg']}", file=sys.stderr)
        return 2
    configure(settings.log_level, settings.log_format, settings.replica_id)
    if unknown := unknown_env_file_keys():
        logging.getLogger("rtdetr_service").warning(
            ".env has keys no part of the stack reads (typos of a setting?): %s", ", ".join(unknown)
        )
    app = create_app(settings, detector_factory)
    ServiceServer(server_config(app, settings), app).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
