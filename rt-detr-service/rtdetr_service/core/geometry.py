"""Plane geometry of the rules: where a box stands, which polygons hold a point, which segments a
move crosses. Image convention: x right, y down; any unit, as long as points and shapes share it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike


def anchor(box: Sequence[float]) -> tuple[float, float]:
    """Where an object stands: the bottom-centre of its (x1, y1, x2, y2) box."""
    x1, _, x2, y2 = box
    return ((x1 + x2) / 2.0, y2)


class Polygons:
    """Polygons tested together: every point against every edge of every polygon in one broadcast.

    Even-odd ray casting to the right of the point. An edge counts for the rows min(y) <= y < max(y)
    and for points strictly left of it, so a point on the boundary is inside on a left or top edge
    (smaller x, smaller y) and outside on a right or bottom one; a horizontal edge never counts.
    """

    def __init__(self, polygons: Sequence[ArrayLike]) -> None:
        shapes = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in polygons] or [np.empty((0, 2))]
        self.count = len(polygons)
        self._polygon_of_edge = np.concatenate([np.full(len(p), i) for i, p in enumerate(shapes)]).astype(int)
        self._v1 = np.concatenate(shapes)
        self._v2 = np.concatenate([np.roll(p, -1, axis=0) for p in shapes])

    def contains(self, points: ArrayLike) -> np.ndarray:
        """(N, P) bool: whether each of N points (N, 2) lies inside each of the P polygons."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        px, py = points[:, 0], points[:, 1]
        v1, v2 = self._v1, self._v2
        # Only a couple of edges per polygon straddle a point's horizontal ray: find those in one broadcast
        # over all (point, edge) pairs, then do the arithmetic for them alone.
        rows, edges = np.nonzero((v1[:, 1] > py[:, None]) != (v2[:, 1] > py[:, None]))
        x1, y1, x2, y2 = v1[edges, 0], v1[edges, 1], v2[edges, 0], v2[edges, 1]
        left = px[rows] < x1 + (py[rows] - y1) * (x2 - x1) / (y2 - y1)  # a straddling edge is never flat
        index = rows[left] * self.count + self._polygon_of_edge[edges[left]]
        crossings = np.bincount(index, minlength=len(points) * self.count)
        return (crossings.reshape(len(points), self.count) % 2).astype(bool)


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def crossings(p0: np.ndarray, p1: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, L) int: +1 where the move p0→p1 (N, 2) crosses segment a–b (L, 2 each) into its positive
    side (on screen, to the right of a→b), -1 out of it, 0 where it does not cross."""
    # A point on the line counts as positive: it is "in" once, and leaving back is "out" once.
    side0 = _cross(b - a, p0[:, None] - a) >= 0
    side1 = _cross(b - a, p1[:, None] - a) >= 0
    move = (p1 - p0)[:, None]
    # The segment's ends on either side of the move: it went through the segment, not past its end.
    through = _cross(move, a - p0[:, None]) * _cross(move, b - p0[:, None]) <= 0
    return np.where((side0 != side1) & through, np.where(side1, 1, -1), 0)
