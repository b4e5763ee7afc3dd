"""Build a small random-weight RT-DETRv2 (COCO 80 classes) and save it with save_pretrained.

Tests load it through the service's real loader; it is marked untrained like every model whose
weights we generate ourselves.
"""

from __future__ import annotations

import sys
from pathlib import Path

from transformers import RTDetrResNetConfig, RTDetrV2Config

from rtdetr_service.coco import COCO_CLASSES
from rtdetr_service.detector import random_weights_model


def tiny_config() -> RTDetrV2Config:
    backbone = RTDetrResNetConfig(
        embedding_size=16,
        hidden_sizes=[16, 32, 64, 128],
        depths=[1, 1, 1, 1],
        layer_type="basic",
        out_features=["stage2", "stage3", "stage4"],
    )
    return RTDetrV2Config(
        backbone_config=backbone,
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
        id2label=dict(enumerate(COCO_CLASSES)),
        label2id={name: i for i, name in enumerate(COCO_CLASSES)},
    )


def build(path: Path) -> Path:
    model = random_weights_model(tiny_config(), seed=1)
    model.save_pretrained(path)
    return path


if __name__ == "__main__":
    print(build(Path(sys.argv[1])))
