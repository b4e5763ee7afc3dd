"""Given the one geometry of the rules (core/geometry.py), then a box stands at its bottom-centre, a
point on a polygon's boundary is decided by one fixed rule (inside on left and top edges, outside on
right and bottom ones), alert zones and tracked zones decide it alike, and the vectorised test agrees
with plain per-point ray casting everywhere, boundaries included."""

from __future__ import annotations

import numpy as np
import pytest

from rtdetr_service.analytics.alerts import AlertRule
from rtdetr_service.analytics.zones import Rule, Zone, ZoneConfig, ZoneEngine
from rtdetr_service.core.geometry import Polygons, anchor, crossings
from rtdetr_service.core.types import Detection

SQUARE = ((0.25, 0.25), (0.75, 0.25), (0.75, 0.75), (0.25, 0.75))  # y down: 0.25 is its top edge
# (point, inside?) on the square's boundary, and either side of it
BOUNDARY = [
    ((0.25, 0.5), True),  # left edge
    ((0.5, 0.25), True),  # top edge
    ((0.75, 0.5), False),  # right edge
    ((0.5, 0.75), False),  # bottom edge
    ((0.25, 0.25), True),  # top-left corner
    ((0.75, 0.25), False),  # top-right corner
    ((0.25, 0.75), False),  # bottom-left corner
    ((0.75, 0.75), False),  # bottom-right corner
    ((0.5, 0.5), True),
    ((0.125, 0.5), False),
    ((0.5, 0.875), False),
]


def reference_inside(polygon, point) -> bool:
    """Plain even-odd ray casting, one point and one polygon: what both rule systems used to run."""
    x, y = point
    inside = False
    for i in range(len(polygon)):
        (x1, y1), (x2, y2) = polygon[i], polygon[(i + 1) % len(polygon)]
        if (y1 > y) != (y2 > y) and x < (x2 - x1) * (y - y1) / (y2 - y1) + x1:
            inside = not inside
    return inside


def test_a_box_stands_at_its_bottom_centre():
    assert anchor((10, 20, 30, 90)) == (20.0, 90)
    assert Detection(0, "person", (10.0, 20.0, 31.0, 90.0), 0.9).anchor == (20.5, 90.0)


@pytest.mark.parametrize(("point", "inside"), BOUNDARY)
def test_points_on_the_boundary_follow_one_rule(point, inside):
    assert Polygons([SQUARE]).contains([point]).tolist() == [[inside]]
    assert reference_inside(SQUARE, point) is inside


def test_a_ray_through_a_vertex_counts_it_once():
    diamond = ((0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5))
    # the rays of these points run through the side vertices (0, 0.5) and (1, 0.5)
    assert Polygons([diamond]).contains([(0.25, 0.5), (-0.25, 0.5), (1.25, 0.5)]).tolist() == [[True], [False], [False]]


def test_every_point_against_every_polygon_at_once():
    triangle = ((0.0, 0.0), (0.5, 0.0), (0.0, 0.5))
    polygons = Polygons([SQUARE, triangle])
    assert polygons.contains([(0.1, 0.1), (0.5, 0.5), (0.9, 0.9)]).tolist() == [
        [False, True],
        [True, False],
        [False, False],
    ]
    assert polygons.contains(np.empty((0, 2))).shape == (0, 2)
    assert Polygons([]).contains([(0.5, 0.5)]).shape == (1, 0)


def test_alert_zones_and_tracked_zones_decide_boundary_points_alike():
    # given the square as an alert zone and as a tracked zone, on an 8x8 frame (exact in binary)
    rule = AlertRule(frozenset(), 0.0, 0.0, zones=(np.array(SQUARE),))
    zones = ZoneEngine(ZoneConfig((Zone("sq", SQUARE),), (), (Rule("in", "enter", zone="sq"),)))
    detections = [Detection(0, "person", (x * 8, 0.0, x * 8, y * 8), 0.9, i) for i, ((x, y), _) in enumerate(BOUNDARY)]
    # when both decide where each object stands
    alerted = [rule.matches(d, 8, 8) for d in detections]
    zoned = zones.update(detections, width=8, height=8, timestamp=0.0).zones_of
    # then both agree with the rule, point by point
    assert alerted == [inside for _, inside in BOUNDARY]
    assert [zoned[i] == ("sq",) for i in range(len(BOUNDARY))] == alerted


def test_agrees_with_per_point_ray_casting_on_10k_points():
    rng = np.random.default_rng(15)
    checked = 0
    while checked < 10_000:
        # polygons of 3 to 8 vertices, some on a coarse grid so that points land on edges and vertices
        grid = bool(rng.integers(2))
        shapes = [_random_polygon(rng, grid) for _ in range(rng.integers(1, 5))]
        points = rng.integers(-1, 10, (100, 2)) / 8.0 if grid else rng.random((100, 2)) * 1.2 - 0.1
        expected = [[reference_inside(s, p) for s in shapes] for p in points.tolist()]
        assert Polygons(shapes).contains(points).tolist() == expected
        checked += len(points)


def _random_polygon(rng, grid: bool) -> np.ndarray:
    n = rng.integers(3, 9)
    return rng.integers(0, 9, (n, 2)) / 8.0 if grid else rng.random((n, 2))


def test_a_move_across_a_segment_is_in_or_out_and_only_through_it():
    a, b = np.array([[0.0, 0.5]]), np.array([[1.0, 0.5]])  # left to right: moving down is "in"
    p0 = np.array([[0.5, 0.25], [0.5, 0.75], [1.5, 0.25], [0.5, 0.25], [0.5, 0.5]])
    p1 = np.array([[0.5, 0.75], [0.5, 0.25], [1.5, 0.75], [0.5, 0.5], [0.5, 0.25]])
    # in, out, past its end, onto the line (counts as in), back off it (out)
    assert crossings(p0, p1, a, b).tolist() == [[1], [-1], [0], [1], [-1]]
