"""Download official real-time DETR COCO weights into models/ (needs internet access to the model hub).

python scripts/download_models.py r18vd       # -> models/rtdetr_v2_r18vd (the default MODEL)
python scripts/download_models.py d-fine-s    # -> models/dfine-small-coco; run with MODEL=models/dfine-small-coco
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# MODEL_VARIANT -> hub id. Only ids whose model pages were checked are listed; any other
# transformers real-time DETR (DEIMv2, RF-DETR, LW-DETR, RT-DETR v1) works as MODEL=<hub id or folder>.
HUB_IDS = {
    "r18vd": "PekingU/rtdetr_v2_r18vd",
    "r34vd": "PekingU/rtdetr_v2_r34vd",
    "r50vd": "PekingU/rtdetr_v2_r50vd",
    "r101vd": "PekingU/rtdetr_v2_r101vd",
    "d-fine-n": "ustc-community/dfine-nano-coco",
    "d-fine-s": "ustc-community/dfine-small-coco",
    "d-fine-l": "ustc-community/dfine-large-coco",
    "d-fine-x": "ustc-community/dfine-xlarge-coco",
}
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
    return f"rtdetr_v2_{variant}" if hub_id.startswith("PekingU/") else hub_id.split("/", 1)[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=VARIANTS, nargs="?", default="r18vd")
    parser.add_argument("--dest", type=Path, default=ROOT / "models")
    args = parser.parse_args()

    from transformers import AutoModelForObjectDetection

    hub_id = HUB_IDS[args.variant]
    target = args.dest / folder_name(args.variant)
    shown = target.relative_to(ROOT) if target.is_relative_to(ROOT) else target
    print(f"downloading {hub_id} ...", flush=True)
    try:
        model = AutoModelForObjectDetection.from_pretrained(hub_id)
    except OSError as exc:
        print(f"cannot download {hub_id}: {exc}", file=sys.stderr)
        print(OFFLINE_HELP.format(hub_id=hub_id, folder=target.name, target=shown), file=sys.stderr)
        return 1
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    print(f"saved to {target}; run with MODEL={shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
