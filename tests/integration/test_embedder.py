"""The image–text encoder: a tiny random-weight SigLIP saved with save_pretrained, loaded through
the service's real loader, on torch, OpenVINO and ONNX Runtime.

Random weights give no meaning, so the tests hold what is known: the same crop embeds the same
on every backend; rows are unit vectors however they are batched; bad crops are refused in words.
And one ranking that conditioning makes true (`condition_embedder_weights`): with the vectors
centred, a solid colour passes through the patch projection into its own direction, so a red
square's crops lie nearer each other than any blue or green one (measured margins: a dark-red
square scores 0.95 against the red query, the nearest other colour 0.52).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from rtdetr_service.inference.backends import cpu_has_native_bf16
from rtdetr_service.inference.detector import ModelLoadError
from rtdetr_service.inference.embedder import EmbedOptions, build_embedder, load_embedder
from rtdetr_service.inference.settings import EmbedSettings, InferenceSettings

from tiny_model import save_tiny_siglip

pytestmark = pytest.mark.timeout(300)

BACKENDS = ("torch", "openvino", "onnxruntime")
BF16_COS = 0.99  # the least cosine between a bf16 vector and the fp32 one of the same input
COLOURS = {"red": (230, 20, 20), "dark red": (190, 40, 30), "blue": (20, 20, 230), "navy": (40, 30, 190)}
TEXTS = ["red", "a person in a blue jacket", "white van " * 20, ""]


def square(colour, size=(96, 72), background=60) -> np.ndarray:
    image = np.full((*size, 3), background, np.uint8)
    cv2.rectangle(image, (size[1] // 6, size[0] // 8), (size[1] * 5 // 6, size[0] * 7 // 8), colour, -1)
    return image


def crops() -> list[np.ndarray]:
    """Solid squares, a circle, noise, and odd sizes (1x1, a wide strip, a large crop)."""
    rng = np.random.default_rng(3)
    circle = np.full((80, 80, 3), 60, np.uint8)
    cv2.circle(circle, (40, 40), 30, (20, 200, 20), -1)
    odd = [np.full((1, 1, 3), 200, np.uint8), square((200, 200, 0), (12, 300)), square((0, 90, 200), (400, 260))]
    return [square(c) for c in COLOURS.values()] + [circle, (rng.random((50, 70, 3)) * 255).astype(np.uint8), *odd]


@pytest.fixture(scope="module")
def tiny_siglip(tmp_path_factory) -> Path:
    return save_tiny_siglip(tmp_path_factory.mktemp("embed") / "tiny-siglip")


@pytest.fixture(scope="module")
def embedders(tiny_siglip, tmp_path_factory):
    cache = tmp_path_factory.mktemp("embed-cache")
    made = {
        backend: build_embedder(
            str(tiny_siglip), EmbedOptions(backend=backend, device="cpu", cpu_precision="fp32", cache_dir=cache)
        )
        for backend in BACKENDS
    }
    # What CPU_PRECISION=auto gives the encoder on a CPU with bf16 instructions (AVX512-BF16, AMX).
    made["openvino-bf16"] = build_embedder(
        str(tiny_siglip), EmbedOptions(backend="openvino", device="cpu", cpu_precision="bf16", cache_dir=cache)
    )
    return made


def test_same_crops_and_texts_embed_the_same_on_every_backend(embedders):
    reference = embedders["torch"]
    images, texts = reference.embed_images(crops()), reference.embed_texts(TEXTS)
    for backend in ("openvino", "onnxruntime"):
        embedder = embedders[backend]
        assert embedder.info.backend == backend
        image_cos = (embedder.embed_images(crops()) * images).sum(1)
        text_cos = (embedder.embed_texts(TEXTS) * texts).sum(1)
        assert image_cos.min() >= 0.9999, (backend, image_cos)
        assert text_cos.min() >= 0.9999, (backend, text_cos)


def test_loader_reads_the_checkpoint_and_says_it_is_untrained(embedders):
    embedder = embedders["torch"]
    assert embedder.dim == 32 and embedder.trained is False
    assert "random" in embedder.model_id and "tiny-siglip" in embedder.model_id
    assert embedder.info.image_size == (64, 64) and embedder.info.text_length == 16


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_are_unit_float32_vectors_and_batching_changes_nothing(embedders, backend):
    embedder = embedders[backend]
    together = embedder.embed_images(crops())
    assert together.dtype == np.float32 and together.shape == (len(crops()), 32)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    one_by_one = np.concatenate([embedder.embed_images([crop]) for crop in crops()])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    texts = embedder.embed_texts(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(texts, np.concatenate([embedder.embed_texts([t]) for t in TEXTS]), atol=1e-5)


def test_batches_larger_than_embed_batch_are_split(tiny_siglip, embedders):
    small = build_embedder(str(tiny_siglip), EmbedOptions(backend="torch", device="cpu", max_batch=3))
    np.testing.assert_allclose(small.embed_images(crops()), embedders["torch"].embed_images(crops()), atol=1e-5)


def test_empty_lists_give_empty_matrices(embedders):
    embedder = embedders["torch"]
    assert embedder.embed_images([]).shape == (0, 32) and embedder.embed_images([]).dtype == np.float32
    assert embedder.embed_texts([]).shape == (0, 32)


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (np.zeros((20, 20, 3), np.float32), "not uint8"),
        (np.zeros((20, 20), np.uint8), "not height x width x 3"),
        (np.zeros((20, 20, 4), np.uint8), "not height x width x 3"),
        (np.zeros((0, 20, 3), np.uint8), "empty"),
        ([[1, 2, 3]], "not a numpy array"),
    ],
)
def test_bad_crops_are_refused_in_words(embedders, bad, words):
    with pytest.raises((ValueError, TypeError), match=words) as caught:
        embedders["torch"].embed_images([square((1, 2, 3)), bad])
    assert "crop 1" in str(caught.value)


def test_a_text_that_is_not_a_string_is_refused(embedders):
    with pytest.raises(TypeError, match="text 0 is a bytes"):
        embedders["torch"].embed_texts([b"red"])


def test_texts_longer_than_the_tower_are_cut_at_its_length(embedders):
    embedder = embedders["torch"]
    tokens = embedder.tokens(["x" * 500, "short"])
    assert tokens["input_ids"].shape == (2, 16)
    # Cut at 16 tokens: whatever follows the 15th byte no longer changes the vector.
    long_a, long_b = embedder.embed_texts(["abcdefghijklmnopqrstuvwxyz", "abcdefghijklmnoXXXXXXXXXXXXX"])
    assert float(long_a @ long_b) == pytest.approx(1.0, abs=1e-6)
    assert float(embedder.embed_texts(["abcdefghijklmn"])[0] @ embedder.embed_texts(["abcdefghijklmX"])[0]) < 0.9999


def test_bf16_moves_each_vector_by_a_bounded_angle(embedders):
    # bf16 keeps 8 bits of mantissa: not parity, a drift, bounded well inside REID_THRESHOLD's margin
    # (0.8) and the ranking margins below. Measured on this tiny model: at least BF16_COS.
    reference, bf16 = embedders["torch"], embedders["openvino-bf16"]
    assert bf16.info.precision == "bf16"
    image_cos = (bf16.embed_images(crops()) * reference.embed_images(crops())).sum(1)
    text_cos = (bf16.embed_texts(TEXTS) * reference.embed_texts(TEXTS)).sum(1)
    assert image_cos.min() >= BF16_COS, image_cos
    assert text_cos.min() >= BF16_COS, text_cos
    if cpu_has_native_bf16():  # where the CPU computes bf16, it really is bf16 (0.99997 measured here)
        assert image_cos.min() < 0.999999, image_cos


@pytest.mark.parametrize("backend", [*BACKENDS, "openvino-bf16"])
def test_a_red_square_finds_red_crops_before_blue_ones(embedders, backend):
    embedder = embedders[backend]
    gallery = {name: square(colour, (120, 50)) for name, colour in COLOURS.items()}  # other size than the query
    gallery["red again"] = square(COLOURS["red"], (96, 72))
    query = embedder.embed_images([square(COLOURS["red"])])[0]
    scores = dict(zip(gallery, embedder.embed_images(list(gallery.values())) @ query, strict=True))
    ranked = sorted(scores, key=scores.get, reverse=True)
    assert ranked[0] == "red again" and scores["red again"] == pytest.approx(1.0, abs=1e-5)
    assert set(ranked[1:3]) == {"red", "dark red"}, scores
    assert min(scores["red"], scores["dark red"]) - max(scores["blue"], scores["navy"]) > 0.2, scores


def test_load_embedder_reads_the_settings(tiny_siglip, tmp_path):
    settings = EmbedSettings(embed_model=str(tiny_siglip), embed_backend="onnxruntime", embed_batch=4)
    embedder = load_embedder(settings, InferenceSettings(device="cpu", model_cache_dir=tmp_path))
    assert embedder.info.backend == "onnxruntime" and embedder.max_batch == 4
    assert any(tmp_path.iterdir()), "the exports are cached under MODEL_CACHE_DIR"
    assert settings.embeds() is True  # auto: the weights are there


def test_a_missing_model_other_than_the_default_is_an_error(tmp_path):
    settings = EmbedSettings(embed_model=str(tmp_path / "nothing-here"))
    assert settings.embeds() is False
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_embedder(settings, InferenceSettings(device="cpu"))
    with pytest.raises(ModelLoadError, match="local cache"):
        load_embedder(EmbedSettings(embed_model="nobody/no-such-model-here"), InferenceSettings(device="cpu"))


def test_a_folder_that_is_not_an_image_text_model_is_refused(tmp_path):
    from tiny_model import build

    detector = build(tmp_path / "detector")
    with pytest.raises(ModelLoadError):
        load_embedder(EmbedSettings(embed_model=str(detector)), InferenceSettings(device="cpu"))
