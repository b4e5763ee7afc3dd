"""Build a small random-weight RT-DETRv2 (COCO 80 classes) and save it with save_pretrained.

Tests load it through the service's real loader; it is marked untrained like every model whose
weights we generate ourselves.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rtdetr_service.detector import coco_rtdetr_v2_config, random_weights_model


def tiny_config():
    """RT-DETRv2 at a fraction of RT-DETRv2-S's width and depth: every layer type, CPU-fast."""
    return coco_rtdetr_v2_config(
        dict(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1]),
        encoder_in_channels=[32, 64, 128],
        encoder_hidden_dim=32,
        encoder_ffn_dim=64,
        encoder_attention_heads=2,
        d_model=32,
        decoder_in_channels=[32, 32, 32],
        decoder_ffn_dim=64,
        decoder_attention_heads=2,
        decoder_layers=2,
        num_queries=50,
        num_denoising=0,
        hidden_expansion=0.5,
    )


def build(path: Path) -> Path:
    model = random_weights_model(tiny_config(), seed=1)
    model.save_pretrained(path)
    return path


if __name__ == "__main__":
    print(build(Path(sys.argv[1])))
