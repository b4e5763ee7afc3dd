"""`make export` (`python -m rtdetr_service.inference.export_cli`): load MODEL as the service
would, so that its backend's export (ONNX, OpenVINO IR, TensorRT engine) is built and cached now
rather than at the first start."""

from __future__ import annotations

import argparse
import logging
import time

from pydantic_settings import BaseSettings

from rtdetr_service.core.config import READ_ENV
from rtdetr_service.inference.loading import detector_from_settings
from rtdetr_service.inference.settings import InferenceSettings


class ExportSettings(BaseSettings, InferenceSettings):
    """MODEL and how it runs, read from the environment and `.env` as the service reads them."""

    model_config = READ_ENV


def main() -> int:
    """`make export`: load MODEL as the service would and build its backend's cache entry."""
    parser = argparse.ArgumentParser(description="Export MODEL for BACKEND (settings from the environment / .env).")
    parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = ExportSettings()  # only what loading reads: exporting serves no requests, needs no keys
    started = time.monotonic()
    detector = detector_from_settings(settings)
    info = detector.info.as_dict()
    print(f"{info['name']}: backend {info['backend']} ({info['dtype']}), {info['backend_reason']}")
    print(f"ready in {time.monotonic() - started:.1f} s; exports are cached under {settings.model_cache_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
