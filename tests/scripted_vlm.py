"""A scripted vision-language model for tests of what calls a VLM (the description stage, rule
questions, /ask): it implements core.vlm.VisionLanguageModel, answers each request with `script`
(default: words that name the purpose and how many images came), can be made to stall or fail, and
keeps every request it was handed. The providers themselves (openai, transformers) are tested
against a real HTTP server and a tiny random-weight model, not with this."""

from __future__ import annotations

import threading
import time
from typing import Callable, Sequence

from rtdetr_service.core.vlm import VlmAnswer, VlmError, VlmRequest


def default_script(request: VlmRequest) -> str:
    if request.purpose == "describe":
        return f"A scripted description of {len(request.images)} image(s)."
    return '{"answer": "yes", "score": 0.9, "reason": "scripted"}'


class ScriptedVlm:
    model_id = "scripted-vlm"
    trained = True

    def __init__(self, script: Callable[[VlmRequest], str | VlmError] = default_script) -> None:
        self.script = script
        self.requests: list[VlmRequest] = []
        self.batches: list[int] = []  # the size of each generate call
        self.open = threading.Event()  # cleared: every call waits (a stalled provider)
        self.open.set()
        self.closed = False
        self._lock = threading.Lock()

    def stall(self) -> None:
        self.open.clear()

    def resume(self) -> None:
        self.open.set()

    def generate(self, requests: Sequence[VlmRequest]) -> list[VlmAnswer | VlmError]:
        started = time.monotonic()
        while not self.open.wait(0.05):
            if self.closed:
                return [VlmError("the scripted model is closed", "closed") for _ in requests]
        with self._lock:
            self.requests.extend(requests)
            self.batches.append(len(requests))
        answers: list[VlmAnswer | VlmError] = []
        for request in requests:
            said = self.script(request)
            if isinstance(said, VlmError):
                answers.append(said)
            else:
                answers.append(VlmAnswer(said, self.model_id, time.monotonic() - started))
        return answers

    def status(self) -> dict:
        with self._lock:
            return {"provider": "scripted", "model_id": self.model_id, "trained": True, "requests": len(self.requests)}

    def close(self) -> None:
        self.closed = True
        self.open.set()
