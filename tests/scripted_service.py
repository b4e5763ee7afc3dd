"""`python tests/scripted_service.py`: the service exactly as `python -m rtdetr_service` runs it,
except that the model's detections are replaced by the walking people of scripted_detector.py.

The real model still runs its forward pass on every batch (its cost is the load a soak must
carry), but a random-weight model sees nothing, and a process-level test needs events, snapshots
and webhook deliveries: those come from the script, and everything after the model is the real one.
"""

from __future__ import annotations

import sys

from rtdetr_service.__main__ import main
from rtdetr_service.core.types import Detection
from rtdetr_service.inference.detector import Detector
from rtdetr_service.inference.loading import detector_from_settings
from rtdetr_service.web.settings import Settings

from scripted_detector import WalkingPeople


class WalkingOverModel:
    """The model's cost, the script's detections."""

    def __init__(self, model: Detector, script: WalkingPeople) -> None:
        self._model = model
        self._script = script
        self.info = model.info

    def detect(self, images, thresholds) -> list[list[Detection]]:
        self._model.detect(images, thresholds)
        return self._script.detect(images, thresholds)


def walking_over_model(settings: Settings) -> WalkingOverModel:
    return WalkingOverModel(detector_from_settings(settings), WalkingPeople())


if __name__ == "__main__":
    sys.exit(main(walking_over_model))
