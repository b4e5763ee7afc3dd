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


# -- the image–text encoder ----------------------------------------------------------------------------

# SigLIP 2's fixed-resolution checkpoints are transformers "siglip" models; the default EMBED_MODEL
# (google/siglip2-base-patch16-224) is SiglipConfig's defaults at 224 px with a 256k-token vocabulary.
SIGLIP_TEXT_LENGTH = 64
_SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")


def byte_tokenizer(max_length: int = SIGLIP_TEXT_LENGTH):
    """A tokenizer built offline: one token per UTF-8 byte, `</s>` at the end, `<pad>` after it.

    Random weights have no vocabulary to match, so any tokenizer that maps every text into the
    model's ids serves; this one needs no download and never meets an unknown character.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(_SPECIAL_TOKENS)}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):  # a set: sorted, so every process maps alike
        vocab[symbol] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=max_length
    )


def siglip_config(vision: dict | None = None, text: dict | None = None):
    """A SigLIP config whose text tower reads `byte_tokenizer`'s ids: by default the architecture of
    google/siglip2-base-patch16-224 (ViT-B/16 at 224 px, 12-layer text tower, 64 tokens), with the
    vocabulary cut to the byte tokenizer's 259 tokens (the 256k Gemma table would be 0.8 GB of random
    floats; a lookup costs the same either way)."""
    from transformers import SiglipConfig

    text_config = dict(
        vocab_size=len(_SPECIAL_TOKENS) + 256,
        max_position_embeddings=SIGLIP_TEXT_LENGTH,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=1,
    )
    vision_config = dict(image_size=224, patch_size=16)
    return SiglipConfig(text_config={**text_config, **(text or {})}, vision_config={**vision_config, **(vision or {})})


def random_embedder(config, seed: int = 0):
    """A random-weight image–text model of the config's architecture and its processor (the byte
    tokenizer, the SigLIP 2 image preprocessing), conditioned and marked untrained."""
    from transformers import AutoModel, SiglipImageProcessor, SiglipProcessor

    setattr(config, UNTRAINED_MARKER, True)
    torch.manual_seed(seed)
    model = AutoModel.from_config(config).eval()
    size = config.vision_config.image_size
    image_processor = SiglipImageProcessor(
        size={"height": size, "width": size}, resample=2, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    processor = SiglipProcessor(
        image_processor=image_processor, tokenizer=byte_tokenizer(config.text_config.max_position_embeddings)
    )
    return condition_embedder_weights(model, seed=seed), processor


@torch.no_grad()
def condition_embedder_weights(model: torch.nn.Module, samples: int = 16, seed: int = 0) -> torch.nn.Module:
    """Centre a random-weight encoder's vectors, as training leaves them spread over the sphere.

    At transformers' random initialisation every image's vector shares a large common part (the
    position table, the biases and the pooling probe pass through whatever the picture): unrelated
    solid colours score 0.5-0.9 against each other, and which of two near colours ranks first hangs
    on the small remainder. The mean vector of a batch of random pictures (each a random colour with
    noise) is subtracted from the bias of the last layer of each tower, so vectors point apart: a
    colour's crops rank above other colours', and the same crop above everything else.
    """
    generator = torch.Generator().manual_seed(seed)
    size = model.config.vision_config.image_size
    pictures = torch.rand((samples, 3, 1, 1), generator=generator) * 1.6 - 0.8
    pictures = pictures + torch.rand((samples, 3, size, size), generator=generator) * 0.4 - 0.2
    _last_bias(model, "vision").sub_(model.get_image_features(pixel_values=pictures).pooler_output.mean(0))
    length = model.config.text_config.max_position_embeddings
    vocab = model.config.text_config.vocab_size
    tokens = torch.randint(len(_SPECIAL_TOKENS), vocab, (samples, length), generator=generator)
    _last_bias(model, "text").sub_(model.get_text_features(input_ids=tokens).pooler_output.mean(0))
    return model


def _last_bias(model: torch.nn.Module, tower: str) -> torch.Tensor:
    """The bias added last in a tower's pooled output (SigLIP: the pooling head's MLP / the text head)."""
    if tower == "vision":
        return model.vision_model.head.mlp.fc2.bias
    return model.text_model.head.bias
