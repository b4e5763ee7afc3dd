"""Download official real-time DETR COCO weights into models/ (needs internet access to the model hub).

python scripts/download_models.py r18vd       # -> models/rtdetr_v2_r18vd (the default MODEL)
python scripts/download_models.py d-fine-s    # -> models/dfine-small-coco; run with MODEL=models/dfine-small-coco
python scripts/download_models.py siglip2-base  # -> models/siglip2-base-patch16-224 (the default EMBED_MODEL)
python scripts/download_models.py smolvlm-256m  # -> models/SmolVLM-256M-Instruct (the default VLM_MODEL)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# MODEL_VARIANT -> hub id. The RT-DETRv2 and D-FINE ids are the authors' own; the other three are
# the checkpoints the pinned transformers names in its own docs for those classes (RF-DETR's is
# Roboflow's; LW-DETR's and DEIMv2's are conversions to the transformers format by the people who
# ported them). None of these could be downloaded where this was written (no model hub access);
# a download is checked against the architectures the service loads before it is saved. Check
# each model's license before use: they differ between models and between releases of one.
# Any other transformers real-time DETR works as MODEL=<hub id or folder>.
HUB_IDS = {
    "r18vd": "PekingU/rtdetr_v2_r18vd",
    "r34vd": "PekingU/rtdetr_v2_r34vd",
    "r50vd": "PekingU/rtdetr_v2_r50vd",
    "r101vd": "PekingU/rtdetr_v2_r101vd",
    "d-fine-n": "ustc-community/dfine-nano-coco",
    "d-fine-s": "ustc-community/dfine-small-coco",
    "d-fine-l": "ustc-community/dfine-large-coco",
    "d-fine-x": "ustc-community/dfine-xlarge-coco",
    "rf-detr-base": "Roboflow/rf-detr-base",
    "lw-detr-s": "AnnaZhang/lwdetr_small_60e_coco",
    "deimv2-n": "harshaljanjani/DEIMv2_HGNetv2_N_COCO_Transformers",
}
# The image–text encoders events are embedded with (EMBED_MODEL): SigLIP 2 ViT-B/16 at 224 px,
# Apache-2.0, 375 M parameters (86 M in the image tower; the rest is mostly the text tower's
# 256k-token vocabulary). Saved with its processor (image preprocessing and Gemma tokenizer).
EMBED_HUB_IDS = {"siglip2-base": "google/siglip2-base-patch16-224"}
HUB_IDS.update(EMBED_HUB_IDS)
# The vision-language models VLM_PROVIDER=transformers runs (VLM_MODEL): SmolVLM (Idefics3: a SigLIP
# image tower, a SmolLM2 text model), Apache-2.0. 256M: 256 M parameters, about 0.5 GB in bf16, the
# default, for a CPU; 500M: about 1 GB, better words where a GPU or time allows. Saved with their
# processors (image tiling, tokenizer, chat template).
VLM_HUB_IDS = {
    "smolvlm-256m": "HuggingFaceTB/SmolVLM-256M-Instruct",
    "smolvlm-500m": "HuggingFaceTB/SmolVLM-500M-Instruct",
}
HUB_IDS.update(VLM_HUB_IDS)
VARIANTS = tuple(HUB_IDS)

OFFLINE_HELP = """Without internet, supply the weights yourself:
  - on a machine with internet: python -c "from transformers import AutoModelForObjectDetection as M; \\
M.from_pretrained('{hub_id}').save_pretrained('{folder}')"
    then copy that folder to {target} here (config.json + model.safetensors), or
  - set MODEL to any folder saved with save_pretrained (or a hub id once there is internet).
The service still runs without weights, on random weights, and says so."""


def folder_name(variant: str) -> str:
    """The folder under models/ a variant is saved in (the default MODEL for r18vd)."""
    hub_id = HUB_IDS[variant]
    if variant in EMBED_HUB_IDS or variant in VLM_HUB_IDS:
        return hub_id.split("/", 1)[1]
    return f"rtdetr_v2_{variant}" if hub_id.startswith("PekingU/") else hub_id.split("/", 1)[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=VARIANTS, nargs="?", default="r18vd")
    parser.add_argument("--dest", type=Path, default=ROOT / "models")
    args = parser.parse_args()

    hub_id = HUB_IDS[args.variant]
    target = args.dest / folder_name(args.variant)
    shown = target.relative_to(ROOT) if target.is_relative_to(ROOT) else target
    print(f"downloading {hub_id} ...", flush=True)
    if args.variant in EMBED_HUB_IDS:
        done = "the default EMBED_MODEL={shown} finds it"
        return download_with_processor(hub_id, target, shown, "AutoModel", "EMBED_MODEL", None, done)
    if args.variant in VLM_HUB_IDS:
        without = "The service runs on without them: VLM_PROVIDER=off (the default), or openai for a served model."
        done = "VLM_PROVIDER=transformers VLM_MODEL={shown} runs it"
        return download_with_processor(hub_id, target, shown, "AutoModelForImageTextToText", "VLM_MODEL", without, done)
    from transformers import AutoConfig, AutoModelForObjectDetection

    from rtdetr_service.inference.loading import REALTIME_DETRS

    try:
        # The config first (a few kB): a checkpoint the service cannot load is refused before the weights come.
        config = AutoConfig.from_pretrained(hub_id)
        if config.model_type not in REALTIME_DETRS:
            print(
                f"{hub_id} is a {config.model_type!r} model, not one the service loads "
                f"({', '.join(REALTIME_DETRS.values())}); nothing saved",
                file=sys.stderr,
            )
            return 1
        model = AutoModelForObjectDetection.from_pretrained(hub_id)
    except (OSError, ValueError) as exc:
        print(f"cannot download {hub_id}: {exc}", file=sys.stderr)
        print(OFFLINE_HELP.format(hub_id=hub_id, folder=target.name, target=shown), file=sys.stderr)
        return 1
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    print(f"saved to {target}; run with MODEL={shown}")
    return 0


RANDOM_FALLBACK = "The service still runs without weights, on random weights, and says so."  # in OFFLINE_HELP


def download_with_processor(
    hub_id: str, target: Path, shown: Path, auto_class: str, setting: str, without: str | None, done: str
) -> int:
    """A model of transformers' `auto_class` and its processor into `target` (`setting`'s folder): the
    image–text encoder (AutoModel, EMBED_MODEL) or the vision-language model (AutoModelForImageTextToText,
    VLM_MODEL). `without`: what the service does without these weights, when not what OFFLINE_HELP says."""
    import transformers

    try:
        model = getattr(transformers, auto_class).from_pretrained(hub_id)
        processor = transformers.AutoProcessor.from_pretrained(hub_id)
    except (OSError, ValueError) as exc:
        print(f"cannot download {hub_id}: {exc}", file=sys.stderr)
        help_text = OFFLINE_HELP.replace("AutoModelForObjectDetection", auto_class).replace(
            "set MODEL", f"set {setting}"
        )
        if without is not None:
            help_text = help_text.replace(RANDOM_FALLBACK, without)
        print(
            help_text.format(hub_id=hub_id, folder=target.name, target=shown)
            + "\n  (save AutoProcessor.from_pretrained(hub_id) into the same folder)",
            file=sys.stderr,
        )
        return 1
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    processor.save_pretrained(target)
    print(f"saved to {target}; {done.format(shown=shown)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
