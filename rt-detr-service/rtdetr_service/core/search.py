"""What the search parts share across floors: the image–text encoder events are embedded with
(inference implements it, outputs and web call it), the filters a vector search applies inside its
query, and one hit.

Vectors are float32, L2-normalised, so a dot product is the cosine similarity; every vector is
stored with the `model_id` that made it, and vectors of different models are never compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np


class Embedder(Protocol):
    """An image–text encoder (CLIP/SigLIP family): images and texts into one vector space."""

    model_id: str  # what made a vector: the checkpoint's name (and "random" weights say so)
    dim: int  # the vectors' length
    trained: bool  # False for random weights: similarities mean nothing, and the service says so

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """RGB uint8 HxWx3 crops of any size → (len(images), dim) float32, each row L2-normalised."""
        ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts → (len(texts), dim) float32, each row L2-normalised."""
        ...


@dataclass(frozen=True, slots=True)
class SearchFilters:
    """Which events a search may return; every filter given must match (inside the query, so a
    page is never short because of them). `after <= start_time < before`, as the events API."""

    cameras: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    zones: tuple[str, ...] = ()  # the event entered any of them
    session_id: str | None = None
    after: float | None = None
    before: float | None = None
    min_confidence: float | None = None  # the event's best confidence
    exclude: tuple[str, ...] = ()  # event ids left out (the example of a "similar to" search)


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One event a search found, and how close: the cosine similarity, in [-1, 1]."""

    event_id: str
    score: float
