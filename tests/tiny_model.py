"""Small random-weight real-time DETRs (COCO 80 classes), saved with save_pretrained.

Tests load them through the service's real loader; they are marked untrained like every model
whose weights we generate ourselves. `build()` keeps the default RT-DETRv2 exactly as the
service's other tests know it; `conditioned=True` gives it (and every other architecture here)
trained-like activation scales, which the backend parity tests need (see
`detector.condition_random_weights`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from rtdetr_service.core.coco import COCO_CLASSES
from rtdetr_service.inference.random_weights import (
    coco_rtdetr_v2_config,
    condition_random_weights,
    random_weights_model,
)

ARCHITECTURES = ("rt_detr_v2", "d_fine", "deimv2", "rf_detr", "lw_detr")


# The hybrid encoder and decoder of the RT-DETR family at a fraction of RT-DETRv2-S's width and
# depth; encoder_in_channels follow each backbone.
_HYBRID_HEAD = dict(
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


def tiny_config():
    """RT-DETRv2 at a fraction of RT-DETRv2-S's width and depth: every layer type, CPU-fast."""
    return coco_rtdetr_v2_config(
        dict(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1]),
        encoder_in_channels=[32, 64, 128],
        **_HYBRID_HEAD,
    )


def _labels() -> dict:
    return dict(id2label=dict(enumerate(COCO_CLASSES)), label2id={name: i for i, name in enumerate(COCO_CLASSES)})


def _hgnet():
    """A small HGNetV2 (the D-FINE / DEIMv2 CNN backbone)."""
    from transformers import HGNetV2Config

    return HGNetV2Config(
        embedding_size=16,
        stem_channels=[3, 16, 16],
        stage_in_channels=[16, 32, 64, 128],
        stage_mid_channels=[16, 16, 32, 32],
        stage_out_channels=[32, 64, 128, 128],
        stage_num_blocks=[1, 1, 1, 1],
        stage_numb_of_layers=[2, 2, 2, 2],
        depths=[1, 1, 1, 1],
        hidden_sizes=[32, 64, 128, 128],
        out_features=["stage2", "stage3", "stage4"],
    )


# D-FINE / DEIMv2: the hybrid head on the HGNetV2's stages, with their localization-quality estimator.
_DETR_HEAD = dict(_HYBRID_HEAD, encoder_in_channels=[64, 128, 128], lqe_hidden_dim=16)
# Windowed ViT backbones: 16-pixel patches, 2 windows per side, so any multiple of 32 fits.
_VIT = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, patch_size=16, image_size=320)
_VIT_HEAD = dict(
    d_model=32,
    decoder_ffn_dim=64,
    decoder_layers=2,
    decoder_self_attention_heads=2,
    decoder_cross_attention_heads=2,
    num_queries=50,
    group_detr=2,
)


def tiny_config_of(architecture: str):
    """A CPU-fast config of each real-time DETR in transformers (model_type names)."""
    import transformers as tf

    if architecture == "rt_detr_v2":
        return tiny_config()
    if architecture == "d_fine":
        return tf.DFineConfig(backbone_config=_hgnet(), **_DETR_HEAD, **_labels())
    if architecture == "deimv2":
        return tf.Deimv2Config(backbone_config=_hgnet(), **_DETR_HEAD, **_labels())
    if architecture == "rf_detr":
        backbone = tf.RfDetrDinov2Config(
            **_VIT, num_windows=2, window_block_indexes=[0, 2], out_features=["stage1", "stage2", "stage3", "stage4"]
        )
        return tf.RfDetrConfig(backbone_config=backbone, **_VIT_HEAD, **_labels())
    if architecture == "lw_detr":
        backbone = tf.LwDetrViTConfig(
            **_VIT, num_windows=4, window_block_indices=[0, 2], out_features=["stage1", "stage2", "stage3", "stage4"]
        )
        return tf.LwDetrConfig(backbone_config=backbone, projector_scale_factors=[1.0], **_VIT_HEAD, **_labels())
    raise ValueError(f"no tiny config for {architecture}")


def build(path: Path, architecture: str = "rt_detr_v2", *, conditioned: bool = False, seed: int = 1) -> Path:
    model = random_weights_model(tiny_config_of(architecture), seed=seed).eval()
    if conditioned:
        condition_random_weights(model)
    model.save_pretrained(path)
    return path


# -- the image–text encoder ------------------------------------------------------------------------------

_TINY_TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)


def save_tiny_siglip(path: Path, *, seed: int = 0, text_length: int = 16) -> Path:
    """A SigLIP at a sliver of the default's size (64-px crops, 16-token texts, 32-d vectors),
    random weights conditioned as the service's own fallback (`condition_embedder_weights`), with
    the offline byte tokenizer and SigLIP 2's image processor, saved with save_pretrained."""
    from rtdetr_service.inference.random_weights import random_embedder, siglip_config

    config = siglip_config(
        vision=dict(_TINY_TOWER, image_size=64, patch_size=16),
        text=dict(_TINY_TOWER, max_position_embeddings=text_length),
    )
    model, processor = random_embedder(config, seed=seed)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


if __name__ == "__main__":
    print(build(Path(sys.argv[1]), *sys.argv[2:3]))


def bench_encoders(scratch: Path, *, base: bool = True) -> dict[str, Path]:
    """What the encoder benches measure, saved under `scratch`: the tiny SigLIP and, with `base`, a
    random-weight model of the default EMBED_MODEL's architecture (it computes what the trained one
    does, so its cost is the real one)."""
    from rtdetr_service.inference.random_weights import random_embedder, siglip_config

    models = {"tiny SigLIP (64 px, 32-d)": save_tiny_siglip(scratch / "tiny")}
    if base:
        model, processor = random_embedder(siglip_config())
        model.save_pretrained(scratch / "base")
        processor.save_pretrained(scratch / "base")
        models["SigLIP 2 base arch. (224 px, 768-d)"] = scratch / "base"
    return models


# -- the vision-language model ------------------------------------------------------------------------

# SmolVLM's turn markers and image tokens (Idefics3's processor looks them up by name), then bytes.
_VLM_SPECIAL = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<end_of_utterance>",
    "<fake_token_around_image>",
    "<image>",
    "<global-img>",
    *(f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7)),
)
# SmolVLM's turn format: "<|im_start|>User:<image>question<end_of_utterance>\nAssistant:".
_VLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{{ ':' if message['content'][0]['type'] == 'image' else ': ' }}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}<image>{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def vlm_byte_tokenizer():
    """An offline tokenizer for a random-weight SmolVLM: SmolVLM's special tokens, then one token per
    byte (random weights have no vocabulary to match; this one never meets an unknown character)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(_VLM_SPECIAL)}
    # Sorted: the alphabet comes as a set, in another order in every process, and with it every
    # byte's id, so the same weights would answer differently from run to run.
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        extra_special_tokens=list(_VLM_SPECIAL[3:]),
    )


# The architecture of HuggingFaceTB/SmolVLM-256M-Instruct (Idefics3: a SigLIP-B/16 at 512 px, pixel
# shuffle by 4 into 64 tokens per 512-px tile, a 30-layer SmolLM2 of width 576 and its 49280-token
# vocabulary): the text part as the checkpoint's config.json has it, the vision tower as its model
# card describes it. Random weights of it cost what the trained model costs, for the benches.
SMOLVLM_256M = dict(
    vision=dict(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=512,
        patch_size=16,
    ),
    text=dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49280,
        max_position_embeddings=8192,
        rope_theta=100000.0,
    ),
    scale_factor=4,
    tile_px=512,
)
# A sliver of it: 32-px tiles of 8-px patches shuffled into 4 tokens, a 2-layer text model of width 32.
TINY_VLM = dict(
    vision=dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
    ),
    text=dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
    ),
    scale_factor=2,
    tile_px=32,
)


def save_tiny_vlm(path: Path, *, seed: int = 0, arch: dict | None = None) -> Path:
    """A random-weight SmolVLM (Idefics3) with its processor (the offline byte tokenizer, SmolVLM's chat
    format, Idefics3's tiling image processor), saved with save_pretrained and marked untrained: it
    loads through `load_vlm` as a downloaded checkpoint does. `arch`: TINY_VLM (default) or SMOLVLM_256M."""
    import torch
    from transformers import AutoModelForImageTextToText, Idefics3Config, Idefics3ImageProcessor, Idefics3Processor

    from rtdetr_service.inference.random_weights import UNTRAINED_MARKER

    arch = arch or TINY_VLM
    tokenizer = vlm_byte_tokenizer()
    tile, scale = arch["tile_px"], arch["scale_factor"]
    image_processor = Idefics3ImageProcessor(size={"longest_edge": 4 * tile}, max_image_size={"longest_edge": tile})
    image_seq_len = (tile // arch["vision"]["patch_size"]) ** 2 // scale**2
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=image_seq_len,
        chat_template=_VLM_CHAT_TEMPLATE,
    )
    ids = dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    text = dict(model_type="llama", vocab_size=len(tokenizer), **ids) | arch["text"]
    config = Idefics3Config(
        vision_config=arch["vision"],
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=scale,
        pad_token_id=tokenizer.pad_token_id,
    )
    setattr(config, UNTRAINED_MARKER, True)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config).eval()
    for name, value in ids.items():
        setattr(model.generation_config, name, value)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
