"""The `transformers` VLM provider: a local image–text-to-text model (SmolVLM by default) on the
service's device, behind `core.vlm.VisionLanguageModel`.

One generate call at a time holds the model (a second would only split the same cores or GPU and
double the memory); callers wait their turn in purpose order, a rule's question before a person's
/ask before a description, and never longer than VLM_TIMEOUT_S. Each turn runs up to VLM_BATCH
requests as one greedy generate call. What a request carries is checked before it costs the model
anything: the prompt's length, the number of images, and each JPEG's pixel count read from its
header before a byte is decoded. A failing batch (out of memory, a broken checkpoint) fails its own
requests in words and the next turn goes on.
"""

from __future__ import annotations

import heapq
import io
import itertools
import logging
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from rtdetr_service.core.logs import redact
from rtdetr_service.core.vlm import PURPOSES, ErrorReason, VlmAnswer, VlmError, VlmRequest
from rtdetr_service.inference import backends
from rtdetr_service.inference.detector import ModelLoadError, resolve_device
from rtdetr_service.inference.loading import HUB_ID
from rtdetr_service.inference.random_weights import UNTRAINED_MARKER

log = logging.getLogger(__name__)

# What `make models VLM_VARIANT=…` fetches into the default VLM_MODEL's folder (scripts/download_models.py).
DEFAULT_VLM_VARIANT = "smolvlm-256m"
DEFAULT_VLM_NAME = "HuggingFaceTB/SmolVLM-256M-Instruct"

# A JPEG is refused from its header above these: 40 MP holds an 8K frame (33 MP) and a 20 MB file
# any sane JPEG of it; a crafted header can claim 4 billion pixels in a few hundred bytes.
MAX_SOURCE_PIXELS = 40_000_000
MAX_JPEG_BYTES = 20 * 1024 * 1024
# Callers waiting for the model at once, beyond which a request is refused (queue_full) rather than
# queued: the callers keep their own bounded queues, this only stops a runaway one.
MAX_WAITING = 64
_WARM_UP_PX = 64

# Control characters (but tab and newline) and the bidirectional overrides: a model's words are
# shown to people and written to logs and outputs, where these hide or reorder text.
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u202a-\u202e\u2066-\u2069]")
_RANK = {purpose: rank for rank, purpose in enumerate(PURPOSES)}


@dataclass(frozen=True, slots=True)
class LocalOptions:
    """How to load and run VLM_MODEL: VLM_* and, where they are unset, the detector's device settings."""

    model: str  # VLM_MODEL resolved to a local path when it names one
    setting: str  # VLM_MODEL as given, for the words of an error
    is_default: bool = False
    device: str = "auto"
    half: bool = True
    max_tokens: int = 200
    answer_max_chars: int = 2000
    prompt_max_chars: int = 4000
    image_max_px: int = 768
    images_max: int = 4
    batch: int = 4
    threads: int = 0
    timeout_s: float = 60.0


class ImageRefused(ValueError):
    """An image of a request that cannot be used, in words."""


def decode_jpeg(data: bytes, max_px: int) -> object:
    """JPEG bytes → an RGB PIL image at most `max_px` on its long side.

    The pixel count is read from the header and checked before anything is decoded (a few hundred
    bytes can claim a 60000×60000 picture), only the JPEG decoder is tried (no other format's
    parser sees untrusted bytes), and the decoder scales down by 2, 4 or 8 while it decodes
    (`draft`), so a large frame costs a fraction of a full decode before the resize.
    """
    from PIL import Image
    from PIL.JpegImagePlugin import JpegImageFile

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageRefused(f"is a {type(data).__name__}, not JPEG bytes")
    if len(data) > MAX_JPEG_BYTES:
        raise ImageRefused(f"is {len(data)} bytes, over the {MAX_JPEG_BYTES} a JPEG may have")
    try:
        # The JPEG plugin itself, not Image.open: a library may replace Image.open process-wide
        # (ultralytics does, to fetch and register a HEIF plugin when a file is not recognised).
        image = JpegImageFile(io.BytesIO(data))
        Image._decompression_bomb_check(image.size)  # what Image.open would check
    except Image.DecompressionBombError as exc:
        raise ImageRefused(f"claims too many pixels in its header ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRefused(f"is not a readable JPEG ({exc})") from exc
    width, height = image.size
    if width < 1 or height < 1 or width * height > MAX_SOURCE_PIXELS:
        raise ImageRefused(
            f"claims {width}×{height} pixels in its header, over the {MAX_SOURCE_PIXELS:,} an image may have"
        )
    try:
        image.draft("RGB", (max_px, max_px))
        image = image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or damaged data
        raise ImageRefused(f"is a damaged JPEG ({exc})") from exc
    image.thumbnail((max_px, max_px))
    return image


def clean_answer(text: str, max_chars: int) -> str:
    """A model's words as the service keeps them: no control or direction-override characters,
    trimmed, at most `max_chars` characters. Still untrusted: escaped wherever shown."""
    return _UNPRINTABLE.sub("", text).strip()[:max_chars]


class _Gate:
    """The model's turn: one holder at a time; waiting callers in purpose order, then arrival order."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._waiting: list[tuple[int, int]] = []
        self._tickets = itertools.count()
        self.busy = False
        self.closed = False

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def acquire(self, rank: int, deadline: float) -> ErrorReason | None:
        """None once it is this caller's turn; else why not (timeout, closed, queue_full)."""
        with self._cond:
            if self.closed:
                return "closed"
            if len(self._waiting) >= MAX_WAITING:
                return "queue_full"
            ticket = (rank, next(self._tickets))
            heapq.heappush(self._waiting, ticket)
            try:
                while True:
                    if self.closed:
                        return "closed"
                    if not self.busy and self._waiting[0] == ticket:
                        self.busy = True
                        return None
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return "timeout"
                    self._cond.wait(remaining)
            finally:
                self._waiting.remove(ticket)
                heapq.heapify(self._waiting)
                self._cond.notify_all()

    def release(self) -> None:
        with self._cond:
            self.busy = False
            self._cond.notify_all()

    def close(self) -> bool:
        """Refuse every waiting and later caller; True when nobody holds the model now."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()
            return not self.busy


@dataclass(slots=True)
class _Item:
    """One checked request, ready for the model."""

    index: int
    rank: int
    text: str
    images: list
    max_tokens: int


class LocalVlm:
    """A transformers image–text-to-text model and its processor behind `VisionLanguageModel`."""

    def __init__(
        self, model, processor, *, model_id: str, trained: bool, device: torch.device, dtype: torch.dtype,
        options: LocalOptions,
    ) -> None:  # fmt: skip
        self.model_id = model_id
        self.trained = trained
        self._model = model
        self._processor = processor
        processor.tokenizer.padding_side = "left"  # decoder-only: new tokens follow every prompt's end
        self._device, self._dtype = device, dtype
        self._options = options
        self._threads = options.threads or backends.default_cpu_threads("torch")
        self._pad_id = processor.tokenizer.pad_token_id
        if self._pad_id is None:
            self._pad_id = processor.tokenizer.eos_token_id
        self._specials = _special_token_pattern(processor.tokenizer)
        self._tile_limit = _tiling_limit(processor)
        # Pictures are shrunk while decoded to VLM_IMAGE_MAX_PX, and for a tiling processor to the
        # long side it was trained to tile at most (2048 px, 4×4 tiles, for SmolVLM).
        self._image_px = min(options.image_max_px, self._tile_limit or options.image_max_px)
        self._gate = _Gate()
        self._counts_lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._last_error = ""

    # -- the protocol ------------------------------------------------------------------------------------

    def generate(self, requests: Sequence[VlmRequest]) -> list[VlmAnswer | VlmError]:
        """Answer each request in order; up to VLM_BATCH of them per generate call, rule questions first."""
        started = time.monotonic()
        deadline = started + self._options.timeout_s
        results: list[VlmAnswer | VlmError | None] = [None] * len(requests)
        items: list[_Item] = []
        for index, request in enumerate(requests):
            try:
                items.append(self._checked(index, request))
            except VlmError as exc:
                results[index] = exc
            except Exception as exc:  # noqa: BLE001 - a malformed request is its own failure, never the batch's
                words = f"request {index} cannot be prepared: {type(exc).__name__}: {redact(str(exc))[:300]}"
                results[index] = VlmError(words, "bad_request")
        items.sort(key=lambda item: (item.rank, item.index))
        batch = self._options.batch
        for start in range(0, len(items), batch):
            chunk = items[start : start + batch]
            for item, result in zip(chunk, self._turn(chunk, deadline), strict=True):
                if isinstance(result, str):
                    results[item.index] = VlmAnswer(result, self.model_id, time.monotonic() - started)
                else:
                    results[item.index] = result
        with self._counts_lock:
            self._counts["requests"] += len(requests)
            for result in results:
                if isinstance(result, VlmError):
                    self._errors[result.reason] += 1
                    self._last_error = result.words
                else:
                    self._counts["answers"] += 1
        return results  # type: ignore[return-value] - every slot is filled above

    def status(self) -> dict:
        """The provider's state for the status route and /metrics (no key: a local model has none)."""
        with self._counts_lock:
            counts, errors, last_error = dict(self._counts), dict(self._errors), self._last_error
        return {
            "provider": "transformers",
            "model": self.model_id,
            "trained": self.trained,
            "device": str(self._device),
            "dtype": str(self._dtype).removeprefix("torch."),
            "batch": self._options.batch,
            "threads": self._threads if self._device.type == "cpu" else None,
            "closed": self._gate.closed,
            "busy": self._gate.busy,
            "waiting": self._gate.waiting,
            "generate_calls": counts.get("generate_calls", 0),  # forward batches: model.generate calls
            "requests": counts.get("requests", 0),
            "answers": counts.get("answers", 0),
            "input_tokens": counts.get("input_tokens", 0),
            "output_tokens": counts.get("output_tokens", 0),
            "errors": errors,
            "last_error": last_error,
        }

    def close(self) -> None:
        """Waiting and later requests fail with "closed"; the model is freed now, or when the turn
        in progress (bounded by VLM_TIMEOUT_S) ends."""
        if self._gate.close():
            self._free()

    # -- one request ----------------------------------------------------------------------------------

    def _checked(self, index: int, request: VlmRequest) -> _Item:
        """The request as the model will see it, or why it is refused (before it costs the model anything)."""
        options = self._options
        if not isinstance(request, VlmRequest):
            raise VlmError(f"request {index} is a {type(request).__name__}, not a VlmRequest", "bad_request")
        prompt = request.prompt
        if not isinstance(prompt, str) or not prompt.strip():
            raise VlmError("the prompt is empty", "bad_request")
        if len(prompt) > options.prompt_max_chars:
            raise VlmError(
                f"the prompt has {len(prompt)} characters, over VLM_PROMPT_MAX_CHARS={options.prompt_max_chars}",
                "bad_request",
            )
        if not isinstance(request.images, (tuple, list)):
            raise VlmError(f"images is a {type(request.images).__name__}, not a tuple of JPEG bytes", "bad_request")
        if len(request.images) > options.images_max:
            raise VlmError(
                f"the request has {len(request.images)} images, over VLM_IMAGES_MAX={options.images_max}",
                "bad_request",
            )
        max_tokens = options.max_tokens if request.max_tokens is None else request.max_tokens
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise VlmError(f"max_tokens must be a positive whole number, not {max_tokens!r}", "bad_request")
        images = []
        for number, data in enumerate(request.images, 1):
            try:
                images.append(decode_jpeg(data, self._image_px))
            except ImageRefused as exc:
                raise VlmError(f"image {number} {exc}", "bad_request") from exc
        content = [{"type": "image"} for _ in images]
        content.append({"type": "text", "text": self._neutralised(prompt)})
        text = self._processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        return _Item(
            index, _RANK.get(request.purpose, len(PURPOSES)), text, images, min(max_tokens, options.max_tokens)
        )

    def _neutralised(self, prompt: str) -> str:
        """The prompt with every special token's text broken by a zero-width space: typed words never
        become image placeholders or turn markers (one `<image>` in a question would otherwise fail
        the whole batch, and an `<end_of_utterance>` would end the user's turn)."""
        if self._specials is None:
            return prompt
        return self._specials.sub(lambda match: match.group(0)[0] + "\u200b" + match.group(0)[1:], prompt)

    # -- one turn of the model ------------------------------------------------------------------------

    def _turn(self, chunk: list[_Item], deadline: float) -> list[str | VlmError]:
        """One generate call for a chunk, once it is the chunk's turn; its failure is the chunk's, in words."""
        why = self._gate.acquire(min(item.rank for item in chunk), deadline)
        if why is not None:
            return [VlmError(_WAIT_WORDS[why].format(timeout=self._options.timeout_s), why) for _ in chunk]
        try:
            if self._gate.closed or self._model is None:
                return [VlmError("the local VLM is closing", "closed") for _ in chunk]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                words = _WAIT_WORDS["timeout"].format(timeout=self._options.timeout_s)
                return [VlmError(words, "timeout") for _ in chunk]
            with self._counts_lock:
                self._counts["generate_calls"] += 1
            try:
                return list(self._forward(chunk, max_time=remaining))
            except torch.OutOfMemoryError:
                if self._device.type == "cuda":
                    torch.cuda.empty_cache()
                words = (
                    f"the local VLM ran out of memory on {self._device} with a batch of {len(chunk)} "
                    f"({sum(len(item.images) for item in chunk)} images): lower VLM_BATCH or VLM_IMAGE_MAX_PX"
                )
            except Exception as exc:  # noqa: BLE001 - any failure of the model or processor is this batch's, in words
                words = (
                    f"the local VLM failed on a batch of {len(chunk)}: {type(exc).__name__}: {redact(str(exc))[:300]}"
                )
            log.warning("%s", words)
            return [VlmError(words, "upstream") for _ in chunk]
        finally:
            self._gate.release()
            if self._gate.closed:
                self._free()

    @torch.inference_mode()
    def _forward(self, chunk: list[_Item], *, max_time: float | None = None) -> list[str]:
        """Greedy answers of a chunk, decoded without the prompt, each cut to its own max_tokens."""
        processor = self._processor
        images = [item.images for item in chunk] if any(item.images for item in chunk) else None
        # A tiling processor cuts each picture into whole tiles of its own size (see `_tiling_limit`).
        own_size = {"do_resize": False} if images and self._tile_limit else {}
        inputs = processor(
            text=[item.text for item in chunk], images=images, return_tensors="pt", padding=True, **own_size
        )
        inputs = inputs.to(self._device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self._dtype)
        previous = torch.get_num_threads()
        if self._device.type == "cpu":
            torch.set_num_threads(self._threads)  # this thread's pool only; restored below
        try:
            output = self._model.generate(
                **inputs,
                max_new_tokens=max(item.max_tokens for item in chunk),
                do_sample=False,
                max_time=max_time,
                pad_token_id=self._pad_id,
            )
        finally:
            if self._device.type == "cpu":
                torch.set_num_threads(previous)
        new_tokens = output[:, inputs["input_ids"].shape[1] :].cpu()
        with self._counts_lock:  # what the model read (images' tokens included) and wrote: its cost
            self._counts["input_tokens"] += int(inputs["attention_mask"].sum())
            self._counts["output_tokens"] += int((new_tokens != self._pad_id).sum())
        texts = processor.batch_decode(
            [row[: item.max_tokens] for row, item in zip(new_tokens, chunk, strict=True)], skip_special_tokens=True
        )
        return [clean_answer(text, self._options.answer_max_chars) for text in texts]

    def _free(self) -> None:
        self._model = None
        if self._device.type == "cuda":
            torch.cuda.empty_cache()


_WAIT_WORDS: dict[str, str] = {
    "timeout": "the local VLM was busy with other requests for VLM_TIMEOUT_S={timeout}s",
    "closed": "the local VLM is closed (the service is stopping)",
    "queue_full": f"{MAX_WAITING} callers already wait for the local VLM",
}


def _longest_edge(size) -> int | None:
    """`longest_edge` of an image processor's size (a dict, or transformers' SizeDict)."""
    if isinstance(size, dict):
        return size.get("longest_edge")
    return getattr(size, "longest_edge", None)


def _tiling_limit(processor) -> int | None:
    """For a processor that cuts pictures into tiles (Idefics3, SmolVLM): the long side it scales every
    picture to first; None for others, which resize their own way.

    SmolVLM's scales every picture up or down to 4 tiles a side (2048 px): a 768-px snapshot would
    become 13 tiles, 8 of them only repeating its pixels, and a 100-px crop 13 tiles of blur. Told
    not to (`do_resize=False`), it still rounds each picture up to whole tiles and cuts it there,
    so a snapshot is 5 tiles (320 image tokens, not 832) with the same detail, a crop one, and each
    picture is prepared the same whatever else is in its batch."""
    image_processor = getattr(processor, "image_processor", None)
    tile = _longest_edge(getattr(image_processor, "max_image_size", None))
    limit = _longest_edge(getattr(image_processor, "size", None))
    if not tile or not limit or not getattr(image_processor, "do_image_splitting", False):
        return None
    return int(limit)


def _special_token_pattern(tokenizer) -> re.Pattern | None:
    """Every added or special token's text (image placeholders, turn markers), longest first."""
    tokens = set(tokenizer.get_added_vocab()) | set(tokenizer.all_special_tokens)
    tokens = sorted((token for token in tokens if len(token) > 1), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, tokens))) if tokens else None


# -- loading ----------------------------------------------------------------------------------------------


def _in_hub_cache(spec: str) -> bool:
    if not HUB_ID.match(spec):
        return False
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(spec, "config.json"), str)


def missing_weights_words(options: LocalOptions) -> str:
    """What to do when VLM_MODEL names weights that are not here."""
    if options.is_default:
        return (
            f"VLM_MODEL={options.setting} has no weights here: run `make models VLM_VARIANT={DEFAULT_VLM_VARIANT}` "
            f"where there is internet ({DEFAULT_VLM_NAME}, Apache-2.0, about 0.5 GB), or point VLM_MODEL at a folder "
            "saved with save_pretrained, or set VLM_PROVIDER=openai (a served model) or off"
        )
    return (
        f"VLM_MODEL={options.setting} has no weights here: give a folder saved with save_pretrained, or a hub id "
        "already in the local cache (a start never downloads)"
    )


def _dtype(device: torch.device, half: bool) -> torch.dtype:
    """bf16 on a GPU that has it (SmolVLM and most VLMs are trained in bf16), else fp16; fp32 on the CPU."""
    if device.type != "cuda" or not half:
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load_local_vlm(options: LocalOptions) -> LocalVlm:
    """VLM_MODEL and its processor on VLM_DEVICE, answering one warm-up request; never a download.

    Missing weights are an error in words, default or not: a random-weight VLM would spend real CPU
    writing plausible-looking nonsense into every event's description and every rule's answer,
    where the random detector's boxes at least look wrong. A folder of random weights saved on
    purpose (the tests' tiny model) loads, `trained` False and said loudly.
    """
    spec = options.model
    path = Path(spec)
    if not path.exists() and not _in_hub_cache(spec):
        raise ModelLoadError(missing_weights_words(options))
    device = resolve_device(options.device)
    dtype = _dtype(device, options.half)
    from transformers import AutoModelForImageTextToText, AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(spec, local_files_only=True)
        model = AutoModelForImageTextToText.from_pretrained(spec, local_files_only=True, dtype=dtype)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(
            f"Cannot load an image–text-to-text model from VLM_MODEL={options.setting}: {redact(str(exc))[:500]}"
        ) from exc
    if not getattr(processor, "chat_template", None) or not hasattr(processor, "tokenizer"):
        raise ModelLoadError(f"VLM_MODEL={options.setting} has no chat template: it is not an instruction-tuned VLM")
    model = model.to(device).eval()
    trained = not getattr(model.config, UNTRAINED_MARKER, False)
    name = path.name if path.exists() else spec
    vlm = LocalVlm(model, processor, model_id=name, trained=trained, device=device, dtype=dtype, options=options)
    _warm_up(vlm, options)
    log.log(
        logging.INFO if trained else logging.WARNING,
        "VLM loaded: %s on %s (%s), batch %d%s",
        name,
        device,
        str(dtype).removeprefix("torch."),
        options.batch,
        "" if trained else " — !!! RANDOM WEIGHTS: its descriptions and answers are nonsense !!!",
    )
    return vlm


def _warm_up(vlm: LocalVlm, options: LocalOptions) -> None:
    """One token about one small picture: a processor that does not fit the model fails at start, in
    words, not at the first event."""
    from PIL import Image

    image = Image.new("RGB", (_WARM_UP_PX, _WARM_UP_PX), (128, 128, 128))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG")
    try:
        item = vlm._checked(0, VlmRequest("Describe the picture.", (buffer.getvalue(),), max_tokens=1))
        vlm._forward([item])
        with vlm._counts_lock:  # the counts are the service's requests, not the start's
            vlm._counts.clear()
    except Exception as exc:  # noqa: BLE001 - whatever the model raises, the start says it in words
        raise ModelLoadError(
            f"VLM_MODEL={options.setting} loaded but cannot answer: {type(exc).__name__}: {redact(str(exc))[:500]}"
        ) from exc
