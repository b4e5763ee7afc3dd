"""What the vision-language parts share across floors: one request to a VLM (a prompt and a few JPEG
images), its answer, a failure in words, the provider protocol the inference floor implements (a
hosted OpenAI-compatible endpoint behind a key pool, or a local transformers model), and the verdict
read out of an answer when the prompt asked for one.

A model's words are untrusted text: they are cut to a bound, shown with `textContent`, never run or
used as markup, and a score is believed only after the schema check in `parse_verdict`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal, Protocol, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# Who asks: a rule's question is a live alert's, `ask` is a person waiting, a description can wait.
# Providers bound each purpose's share, so one caller cannot starve the others.
Purpose = Literal["describe", "rule", "ask"]
PURPOSES: tuple[Purpose, ...] = ("rule", "ask", "describe")

# Why a request got no answer; the words say the rest.
ErrorReason = Literal[
    "not_loaded",  # the model is still loading, or failed to
    "queue_full",  # too many requests waiting: dropped, counted
    "rate_limited",  # every key is at its limit or cooling down after a 429
    "unauthorized",  # every usable key was refused (401/403) and is disabled
    "bad_request",  # the provider refused the request (4xx): not retried
    "timeout",  # no answer within the bound, retries included
    "upstream",  # 5xx or a broken connection, after the retries
    "closed",  # the service is stopping
]

VERDICT_INSTRUCTIONS = (
    'Answer with one JSON object and nothing else: {"answer": "yes" or "no", '
    '"score": a number from 0 to 1 for how sure you are that the answer is yes, '
    '"reason": one short sentence}.'
)


@dataclass(frozen=True, slots=True)
class VlmRequest:
    """One question to the model: its prompt and the JPEG images it is about (each already shrunk to
    VLM_IMAGE_MAX_PX on its long side by whoever asks)."""

    prompt: str
    images: tuple[bytes, ...] = ()
    purpose: Purpose = "describe"
    max_tokens: int | None = None  # None: VLM_MAX_TOKENS


@dataclass(frozen=True, slots=True)
class VlmAnswer:
    """What the model said: untrusted words, cut to VLM_ANSWER_MAX_CHARS."""

    text: str
    model_id: str
    seconds: float  # from the request's start to its answer, retries and waits for a key included
    key: str | None = None  # the label of the pool key that answered ("key-2"), never the key itself


class VlmError(Exception):
    """Why a request got no answer, in words an operator can act on; it never holds a key."""

    def __init__(self, words: str, reason: ErrorReason = "upstream") -> None:
        super().__init__(words)
        self.words = words
        self.reason: ErrorReason = reason


class VisionLanguageModel(Protocol):
    """A vision-language model behind one face: `openai` (any OpenAI-compatible chat-completions
    endpoint, through a key pool) or `transformers` (a local model on the service's device)."""

    model_id: str  # what answered: the checkpoint's or the endpoint's model name
    trained: bool  # False for random weights: the words mean nothing, and the service says so

    def generate(self, requests: Sequence[VlmRequest]) -> list[VlmAnswer | VlmError]:
        """Answer each request, in order. Blocking and thread-safe; a local model batches them, a
        hosted one sends them at once within its keys' limits. One request's failure is its own
        `VlmError`, never an exception for the batch; every wait is bounded (VLM_TIMEOUT_S)."""
        ...

    def status(self) -> dict:
        """JSON-able state for the status route and /metrics: provider, model, trained, and for a
        pool each key's label, state (ok, cooling down until, disabled and why) and counts. Never a
        key, never a URL's credentials."""
        ...

    def close(self) -> None:
        """Stop: waiting requests fail with reason "closed"; bounded."""
        ...


ASK_MAX_CHARS = 500  # a rule's question (`ask`)
DESCRIBE_PROMPT_MAX_CHARS = 1000  # a session's own prompt for its descriptions
DESCRIBE_AFTER_S_MAX = 86400.0


@dataclass(frozen=True, slots=True)
class DescribeOptions:
    """A session's wish for descriptions of its events (the start option `describe`): which labels
    (None: every label), its own prompt (None: VLM_DESCRIBE_DEFAULT_PROMPT), and whether an event is
    described once after `after_s` live instead of at its end."""

    labels: frozenset[str] | None = None
    prompt: str | None = None
    after_s: float | None = None

    def wants(self, label: str) -> bool:
        return self.labels is None or label in self.labels


class _VerdictDoc(BaseModel):
    model_config = ConfigDict(extra="ignore")

    answer: Literal["yes", "no"]
    score: float | None = Field(None, ge=0.0, le=1.0)
    reason: str = Field("", max_length=2000)


@dataclass(frozen=True, slots=True)
class Verdict:
    """A yes/no answer with a score, when the model gave one that passes the schema check; else
    `answer` and `score` are None and `reason` is the model's own words."""

    answer: Literal["yes", "no"] | None
    score: float | None
    reason: str


_OBJECT = re.compile(r"\{.*?\}", re.DOTALL)


def parse_verdict(text: str, max_chars: int = 2000) -> Verdict:
    """The verdict VERDICT_INSTRUCTIONS asked for: the first JSON object in the text that passes the
    schema (answer yes/no, score in [0, 1], a reason); models wrap JSON in prose or code fences, so
    each `{...}` is tried in turn. Nothing valid: no answer, no score, the words kept (bounded)."""
    for match in _OBJECT.finditer(text[: max_chars * 4]):
        try:
            doc = _VerdictDoc.model_validate(json.loads(match.group(0)))
        except (ValueError, ValidationError):
            continue
        score = doc.score if doc.score is not None else (1.0 if doc.answer == "yes" else 0.0)
        return Verdict(doc.answer, score, doc.reason.strip()[:max_chars])
    return Verdict(None, None, text.strip()[:max_chars])
