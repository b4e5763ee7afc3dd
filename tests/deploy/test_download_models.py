"""scripts/download_models.py (`make models`): without the model hub it says how to supply weights offline."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def run_download(repo, variant: str, dest) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(repo / "rt-detr-service"), HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, str(repo / "scripts" / "download_models.py"), variant, "--dest", str(dest)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.mark.parametrize("variant", ["r18vd", "rf-detr-base", "siglip2-base", "smolvlm-256m"])
def test_offline_download_fails_with_the_way_to_supply_weights(repo, tmp_path, variant):
    result = run_download(repo, variant, tmp_path / "models")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "cannot download" in result.stderr
    setting = {"siglip2-base": "EMBED_MODEL", "smolvlm-256m": "VLM_MODEL"}.get(variant, "MODEL")
    assert "save_pretrained" in result.stderr and f"set {setting}" in result.stderr
    assert not (tmp_path / "models").exists(), "nothing may be saved when nothing was downloaded"


def test_every_variant_has_its_own_folder_and_a_hub_id(repo):
    sys.path.insert(0, str(repo / "scripts"))
    try:
        import download_models
    finally:
        sys.path.remove(str(repo / "scripts"))
    folders = [download_models.folder_name(v) for v in download_models.VARIANTS]
    assert len(set(folders)) == len(folders)
    assert download_models.folder_name("r18vd") == "rtdetr_v2_r18vd"  # the default MODEL's folder
    assert all(hub_id.count("/") == 1 for hub_id in download_models.HUB_IDS.values())
    assert {"rf-detr-base", "lw-detr-s", "deimv2-n", "d-fine-s", "siglip2-base"} <= set(download_models.VARIANTS)
    # The default EMBED_MODEL's folder.
    assert f"models/{download_models.folder_name('siglip2-base')}" == "models/siglip2-base-patch16-224"
    # The default VLM_MODEL's folder, and the variant the local VLM's missing-weights words name.
    from rtdetr_service.inference.settings import DEFAULT_VLM_MODEL
    from rtdetr_service.inference.vlm.local import DEFAULT_VLM_NAME, DEFAULT_VLM_VARIANT

    assert f"models/{download_models.folder_name(DEFAULT_VLM_VARIANT)}" == DEFAULT_VLM_MODEL
    assert download_models.HUB_IDS[DEFAULT_VLM_VARIANT] == DEFAULT_VLM_NAME
