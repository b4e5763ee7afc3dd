"""Random-weight real-time DETRs: what runs, loudly marked untrained, when no trained weights are
at hand, and what tests and benchmarks build and save with `save_pretrained`."""

from __future__ import annotations

import torch

from rtdetr_service.core.coco import COCO_CLASSES

# Written into config.json of weights we generate ourselves, so a random-weight model saved with
# save_pretrained is never mistaken for a trained one.
UNTRAINED_MARKER = "rtdetr_service_untrained"


def coco_rtdetr_v2_config(backbone: dict, **model):
    """An RT-DETRv2 config for the 80 COCO classes: a basic-block ResNet backbone (`backbone`
    keyword arguments) feeding stages 2-4 to the hybrid encoder and decoder (`model`)."""
    from transformers import RTDetrResNetConfig, RTDetrV2Config

    return RTDetrV2Config(
        backbone_config=RTDetrResNetConfig(layer_type="basic", out_features=["stage2", "stage3", "stage4"], **backbone),
        id2label=dict(enumerate(COCO_CLASSES)),
        label2id={name: i for i, name in enumerate(COCO_CLASSES)},
        **model,
    )


def r18vd_config():
    """RT-DETRv2-S (r18vd) architecture, COCO 80 classes: used when no trained weights exist."""
    return coco_rtdetr_v2_config(
        dict(hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2]),
        encoder_in_channels=[128, 256, 512],
        hidden_expansion=0.5,
        decoder_layers=3,
    )


def random_weights_model(config, seed: int = 0):
    """A random-weight model of the config's architecture (any real-time DETR), marked untrained."""
    from transformers import AutoModelForObjectDetection

    setattr(config, UNTRAINED_MARKER, True)
    torch.manual_seed(seed)
    return AutoModelForObjectDetection.from_config(config)


@torch.no_grad()
def condition_random_weights(model: torch.nn.Module, input_size: int = 320, seed: int = 0) -> torch.nn.Module:
    """Give a random-weight model the activation scale of a trained one.

    transformers initialises every batch-norm scale from N(0, 0.01) and leaves the running
    statistics at mean 0, variance 1: each of the ~40 normalised convolutions then shrinks the
    signal ~100x, the encoder's features vanish (1e-9 and smaller in r18vd) and all 8400 encoder
    scores come out exactly equal, so the top-300 query selection is a tie that torch, ONNX
    Runtime and OpenVINO break differently. Scale 1, shift 0 and running statistics measured on
    one batch of noise (each layer after the ones before it) make the scores distinct, so
    detections depend on the picture and exported backends can be held to parity.
    """
    hooks = []

    def measure(module, args):
        x = args[0]
        module.running_mean.copy_(x.mean((0, 2, 3)))
        module.running_var.copy_(x.var((0, 2, 3)))

    for module in model.modules():
        if isinstance(getattr(module, "running_var", None), torch.Tensor) and module.running_var.dim() == 1:
            module.weight.fill_(1.0)
            module.bias.zero_()
            hooks.append(module.register_forward_pre_hook(measure))
    noise = torch.rand((2, 3, input_size, input_size), generator=torch.Generator().manual_seed(seed))
    try:
        model(pixel_values=noise.to(next(model.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
    return model
