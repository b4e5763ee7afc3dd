"""Weights → ONNX, cached: the first step of every exported backend.

An entry of the cache is a folder `<cache_dir>/<model_type>-<size>-<backend>-<precision>-<key>/`
whose key hashes the weights (every tensor, so a hub id and a folder of the same weights agree),
the model's config, the input size, the backend and precision, and the versions of everything
that shapes the result. It is built in a temporary folder and renamed into place, so a crash or
a second process exporting at the same time never leaves half an entry behind; `meta.json`,
written last, says what is inside.

Exporter: torch.onnx's TorchScript-based exporter (`dynamo=False`). The dynamo exporter of torch
2.14 fails on RT-DETRv2 (`aten._is_all_true` has no ONNX translation) and, with a translation
supplied, took 10.7 s instead of 2.8 s for r18vd with the same outputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Callable

import torch

log = logging.getLogger(__name__)

EXPORT_FORMAT = 1  # bump when what export() writes changes, so old entries are not reused
OPSET = 17  # GridSample (opset 16) and LayerNormalization (opset 17), both in the deformable DETRs
INPUT, OUTPUTS = "pixel_values", ("logits", "pred_boxes")


def versions(*packages: str) -> dict[str, str]:
    """Installed versions of the packages that shape an export."""
    found = {}
    for name in ("torch", "transformers", "onnx", *packages):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer (names, dtypes, shapes, bytes) and of the config."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    config = getattr(model, "config", None)
    if config is not None:
        digest.update(config.to_json_string(use_diff=True).encode())
    return digest.hexdigest()


def cache_entry(cache_dir: Path, model: torch.nn.Module, **key: object) -> Path:
    """Where the export for this model and `key` (backend, precision, input size, versions...) lives."""
    fields = dict(sorted(key.items()), format=EXPORT_FORMAT, weights=weights_digest(model))
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]
    model_type = getattr(getattr(model, "config", None), "model_type", "model")
    name = "-".join(
        str(part) for part in (model_type, key.get("input_size", ""), key.get("backend", ""), key.get("precision", ""))
    )
    return Path(cache_dir) / f"{name}-{digest}"


def cached(entry: Path, build: Callable[[Path], dict], what: str) -> Path:
    """`entry` if it is complete, else built by `build(folder)` and moved into place atomically."""
    if (entry / "meta.json").is_file():
        log.info("%s: cached in %s", what, entry)
        return entry
    entry.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    started = time.monotonic()
    try:
        meta = build(scratch)
        meta["seconds"] = round(time.monotonic() - started, 1)
        (scratch / "meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
        try:
            os.rename(scratch, entry)
        except OSError:
            # Another process finished the same entry first (rename onto a non-empty folder fails): use it.
            if not (entry / "meta.json").is_file():
                raise
            shutil.rmtree(scratch, ignore_errors=True)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    log.info("%s: built in %.1f s, cached in %s", what, time.monotonic() - started, entry)
    return entry


class _Outputs(torch.nn.Module):
    """The model as a graph with one input and the two outputs the post-processing reads."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self.model(pixel_values=pixel_values)
        return outputs.logits, outputs.pred_boxes


@contextlib.contextmanager
def frozen_position_encodings(model: torch.nn.Module, example: torch.Tensor):
    """Learned position tables resized to the export's input size, as constants.

    The ViT backbones (RF-DETR, LW-DETR) resize their position table on every call while traced
    (an antialiased bicubic resize that the ONNX exporter cannot translate). At a fixed input size
    the result is a constant: it is computed once here, in eager mode, and the traced graph reads
    it. Batch size stays dynamic; the input size is fixed by the export anyway.
    """
    patched = []
    for module in model.modules():
        original = getattr(module, "interpolate_pos_encoding", None)
        if callable(original) and hasattr(module, "position_embeddings"):
            memo: dict = {}

            def frozen(embeddings, height, width, _original=original, _memo=memo):
                key = (int(height), int(width))
                if key not in _memo:
                    _memo[key] = _original(embeddings, height, width).detach().clone()
                return _memo[key]

            module.interpolate_pos_encoding = frozen
            patched.append(module)
    try:
        if patched:
            with torch.no_grad():
                model(pixel_values=example)  # fills the memos outside the tracer
        yield
    finally:
        for module in patched:
            del module.interpolate_pos_encoding


def export_onnx(model: torch.nn.Module, path: Path, input_size: int, dtype: torch.dtype = torch.float32) -> Path:
    """Trace `model` (on its own device, in `dtype`) into an ONNX file with a dynamic batch dimension."""
    device = next(model.parameters()).device
    example = torch.rand((1, 3, input_size, input_size), generator=torch.Generator().manual_seed(0))
    example = example.to(device=device, dtype=dtype)
    model = model.eval()
    dynamic = {name: {0: "batch"} for name in (INPUT, *OUTPUTS)}
    with frozen_position_encodings(model, example), torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about every Python-level shape computation of the model; they are
        # constants at a fixed input size, which the parity tests check.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Outputs(model),
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT],
            output_names=list(OUTPUTS),
            dynamic_axes=dynamic,
        )
    return path
