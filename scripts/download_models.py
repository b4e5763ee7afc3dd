"""Download official RT-DETRv2 COCO weights into models/ (needs internet access to the model hub).

python scripts/download_models.py r18vd     # -> models/rtdetr_v2_r18vd
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

VARIANTS = ("r18vd", "r34vd", "r50vd", "r101vd")
ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=VARIANTS, nargs="?", default="r18vd")
    parser.add_argument("--dest", type=Path, default=ROOT / "models")
    args = parser.parse_args()

    from transformers import RTDetrV2ForObjectDetection

    hub_id = f"PekingU/rtdetr_v2_{args.variant}"
    target = args.dest / f"rtdetr_v2_{args.variant}"
    print(f"downloading {hub_id} ...", flush=True)
    try:
        model = RTDetrV2ForObjectDetection.from_pretrained(hub_id)
    except OSError as exc:
        print(
            f"cannot download {hub_id}: {exc}\nThe service still runs without it, on random weights, and says so.",
            file=sys.stderr,
        )
        return 1
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    print(f"saved to {target}; run with MODEL={target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
