"""Named zones and lines, and rules that fire once per tracked object, not once per frame.

Coordinates are normalised (0..1, x right, y down) so a configuration survives a change of stream
resolution. Where an object is means its anchor, the bottom-centre of its box: where it stands.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from rtdetr_service.core.geometry import Polygons, crossings
from rtdetr_service.core.names import checked_name
from rtdetr_service.core.types import Detection
from rtdetr_service.core.vlm import ASK_MAX_CHARS

MAX_POINTS = 256
MAX_ZONES = 16
MAX_LINES = 16
MAX_RULES = 32
FORGET_AFTER_S = 60.0  # a track unseen this long is dropped even if nobody called forget()

Point = tuple[float, float]
_KINDS = ("enter", "dwell", "cross", "occupancy")


def _fail(where: str, problem: str) -> ValueError:
    return ValueError(f"{where}: {problem}")


def _point(p: object, where: str, size: tuple[float, float] = (1.0, 1.0)) -> Point:
    """[x, y] checked to lie in a frame of `size` and divided by it (so normalised)."""
    try:
        x, y = (float(v) for v in p)
    except (TypeError, ValueError):
        raise _fail(where, f"a point must be [x, y], got {p!r}") from None
    except OverflowError:  # an integer of hundreds of digits is no float; its repr would be as long
        raise _fail(where, "a coordinate is too large to be a number") from None
    if not (0.0 <= x <= size[0] and 0.0 <= y <= size[1]):
        frame = "0..1" if size == (1.0, 1.0) else f"{size[0]:g}x{size[1]:g} pixels"
        raise _fail(where, f"point ({x:g}, {y:g}) is outside the frame ({frame})")
    return (x / size[0], y / size[1])


def _name(name: object, what: str) -> str:
    """The name in NFC (core/names.py), so names that look the same are the same name."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{what} needs a name, got {name!r}")
    try:
        return checked_name(name)
    except ValueError as exc:
        raise ValueError(f"{what} name: {exc}") from None


@dataclass(frozen=True, slots=True)
class Zone:
    """A named polygon, normalised coordinates."""

    name: str
    points: tuple[Point, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", _name(self.name, "zone"))
        where = f"zone {self.name!r}"
        if not 3 <= len(self.points) <= MAX_POINTS:
            raise _fail(where, f"needs at least 3 and at most {MAX_POINTS} points, got {len(self.points)}")
        object.__setattr__(self, "points", tuple(_point(p, where) for p in self.points))


@dataclass(frozen=True, slots=True)
class Line:
    """A named line segment a–b, normalised; crossing to the right-hand side of a→b on screen is "in"."""

    name: str
    a: Point
    b: Point

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", _name(self.name, "line"))
        where = f"line {self.name!r}"
        object.__setattr__(self, "a", _point(self.a, where))
        object.__setattr__(self, "b", _point(self.b, where))
        if self.a == self.b:
            raise _fail(where, "a and b must be different points")


@dataclass(frozen=True, slots=True)
class Rule:
    """What to report: entering, dwelling in or occupying a zone, or crossing a line."""

    name: str
    kind: Literal["enter", "dwell", "cross", "occupancy"]
    zone: str | None = None
    line: str | None = None
    classes: frozenset[str] = frozenset()  # empty: every class
    min_confidence: float = 0.0
    dwell_s: float = 10.0
    direction: Literal["in", "out", "any"] = "any"
    min_count: int = 1
    ask: str | None = None  # a question for the vision-language model about the frame that fired it

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", _name(self.name, "rule"))
        where = f"rule {self.name!r}"
        if self.kind not in _KINDS:
            raise _fail(where, f"kind must be one of {', '.join(_KINDS)}, got {self.kind!r}")
        wants_line = self.kind == "cross"
        if wants_line and (self.line is None or self.zone is not None):
            raise _fail(where, "cross rules need a line and no zone")
        if not wants_line and (self.zone is None or self.line is not None):
            raise _fail(where, f"{self.kind} rules need a zone and no line")
        for ref in ("zone", "line"):  # references compare in NFC like the names they point at
            if getattr(self, ref) is not None:
                object.__setattr__(self, ref, _name(getattr(self, ref), f"{where}: {ref}"))
        # A list from JSON is welcome; a bare string is not (it would become a set of its letters).
        if not isinstance(self.classes, (list, tuple, set, frozenset)) or not all(
            isinstance(c, str) for c in self.classes
        ):
            raise _fail(where, f"classes must be a list of class names, got {self.classes!r}")
        object.__setattr__(self, "classes", frozenset(self.classes))
        if not _number_in(self.min_confidence, 0.0, 1.0):
            raise _fail(where, f"min_confidence must be from 0 to 1, got {self.min_confidence!r}")
        if not _number_in(self.dwell_s, 0.0, 86400.0) or self.dwell_s == 0:
            raise _fail(where, f"dwell_s must be more than 0 and at most 86400 seconds, got {self.dwell_s!r}")
        if self.direction not in ("in", "out", "any"):
            raise _fail(where, f"direction must be in, out or any, got {self.direction!r}")
        if isinstance(self.min_count, bool) or not isinstance(self.min_count, int) or not 1 <= self.min_count <= 1000:
            raise _fail(where, f"min_count must be a whole number from 1 to 1000, got {self.min_count!r}")
        object.__setattr__(self, "ask", _question(self.ask, where))


def _question(ask: object, where: str) -> str | None:
    """A rule's question, trimmed; None for none. Bounded, and printable but for line breaks: it goes
    into a prompt and back out in every answer."""
    if ask is None:
        return None
    if not isinstance(ask, str):
        raise _fail(where, f"ask must be a question in words, got {ask!r}")
    ask = ask.strip()
    if not ask:
        return None
    if len(ask) > ASK_MAX_CHARS:
        raise _fail(where, f"ask must be at most {ASK_MAX_CHARS} characters, got {len(ask)}")
    if not all(c.isprintable() or c in "\n\t" for c in ask):
        raise _fail(where, "ask holds a control character")
    return ask


def _number_in(value: object, low: float, high: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high


def _fields(obj: object) -> dict:
    return {name: getattr(obj, name) for name in obj.__dataclass_fields__}


def _unique(names: list[str], what: str, limit: int) -> None:
    if len(names) > limit:
        raise ValueError(f"at most {limit} {what}s, got {len(names)}")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{what} {name!r}: the name is used twice")
        seen.add(name)


def _keys(item: object, where: str, allowed: set[str]) -> dict:
    if not isinstance(item, dict):
        raise _fail(where, f"must be an object, got {item!r}")
    unknown = sorted(set(item) - allowed)
    if unknown:
        raise _fail(where, f"unknown key {unknown[0]!r}")
    return item


@dataclass(frozen=True, slots=True)
class ZoneConfig:
    """A session's zones, lines and rules, checked as a whole."""

    zones: tuple[Zone, ...] = ()
    lines: tuple[Line, ...] = ()
    rules: tuple[Rule, ...] = ()

    def __post_init__(self) -> None:
        for attr in ("zones", "lines", "rules"):
            object.__setattr__(self, attr, tuple(getattr(self, attr)))
        _unique([z.name for z in self.zones], "zone", MAX_ZONES)
        _unique([ln.name for ln in self.lines], "line", MAX_LINES)
        _unique([r.name for r in self.rules], "rule", MAX_RULES)
        zones, lines = {z.name for z in self.zones}, {ln.name for ln in self.lines}
        for rule in self.rules:
            if rule.zone is not None and rule.zone not in zones:
                raise ValueError(f"rule {rule.name!r}: there is no zone {rule.zone!r}")
            if rule.line is not None and rule.line not in lines:
                raise ValueError(f"rule {rule.name!r}: there is no line {rule.line!r}")

    def rule_classes(self) -> set[str]:
        """Every class name the rules use."""
        return {c for rule in self.rules for c in rule.classes}

    def as_dict(self) -> dict:
        return {
            "units": "normalized",
            "zones": [{"name": z.name, "points": [list(p) for p in z.points]} for z in self.zones],
            "lines": [{"name": ln.name, "a": list(ln.a), "b": list(ln.b)} for ln in self.lines],
            "rules": [{**_fields(r), "classes": sorted(r.classes)} for r in self.rules],
        }

    @classmethod
    def from_dict(cls, d: dict, *, width: int | None = None, height: int | None = None) -> ZoneConfig:
        """Parse the JSON form; "units": "pixels" needs the frame size and is divided by it."""
        d = _keys(d, "zone config", {"units", "zones", "lines", "rules"})
        units = d.get("units", "normalized")
        if units == "pixels":
            if not width or not height:
                raise ValueError("pixel coordinates need the frame width and height")
            size = (float(width), float(height))
        elif units == "normalized":
            size = (1.0, 1.0)
        else:
            raise ValueError(f"units must be normalized or pixels, got {units!r}")

        zones, lines, rules = [], [], []
        for i, item in enumerate(d.get("zones", ())):
            item = _keys(item, f"zone #{i + 1}", {"name", "points"})
            where = f"zone {item['name']!r}" if "name" in item else f"zone #{i + 1}"
            points = item.get("points", ())
            if not isinstance(points, (list, tuple)):
                raise _fail(where, "points must be a list of [x, y]")
            # One point past the limit is enough for Zone to refuse; a huge list is not parsed in full.
            zones.append(Zone(item.get("name"), tuple(_point(p, where, size) for p in points[: MAX_POINTS + 1])))
        for i, item in enumerate(d.get("lines", ())):
            item = _keys(item, f"line #{i + 1}", {"name", "a", "b"})
            where = f"line {item['name']!r}" if "name" in item else f"line #{i + 1}"
            lines.append(Line(item.get("name"), _point(item.get("a"), where, size), _point(item.get("b"), where, size)))
        for i, item in enumerate(d.get("rules", ())):
            item = _keys(item, f"rule #{i + 1}", set(Rule.__dataclass_fields__))
            if "name" not in item or "kind" not in item:
                raise ValueError(f"rule #{i + 1}: needs a name and a kind")
            rules.append(Rule(**item))
        return cls(tuple(zones), tuple(lines), tuple(rules))


@dataclass(frozen=True, slots=True)
class RuleHit:
    """One rule firing for one object (or, for occupancy, for a zone)."""

    rule: str
    kind: str
    zone: str | None
    line: str | None
    track_id: int | None  # None for occupancy
    class_name: str
    confidence: float
    bbox: tuple[float, float, float, float]
    timestamp: float
    direction: str | None = None  # cross: "in" or "out"
    count: int | None = None  # occupancy: objects in the zone when it fired
    ask: str | None = None  # the rule's question, for the alert to carry

    def as_data(self) -> dict:
        return {**_fields(self), "confidence": round(self.confidence, 4), "bbox": [round(v, 1) for v in self.bbox]}


@dataclass(frozen=True, slots=True)
class ZoneUpdate:
    """What one frame brought: the rules that fired and the zones each track is in now."""

    hits: tuple[RuleHit, ...]
    zones_of: dict[int, tuple[str, ...]]


@dataclass(slots=True)
class _Track:
    last: Detection  # as last seen
    last_seen: float
    anchor: np.ndarray  # normalised, where it stood when last seen
    since: dict[str, float] = field(default_factory=dict)  # zones it is in -> when it came in
    entered: set[str] = field(default_factory=set)  # zones counted as entered (once per object)
    fired: set[str] = field(default_factory=set)  # rules that fired for it


def _matches(rule: Rule, det: Detection) -> bool:
    return det.confidence >= rule.min_confidence and (not rule.classes or det.class_name in rule.classes)


class ZoneEngine:
    """Evaluates a session's zones, lines and rules over its tracked detections, frame by frame.

    A track missing from a frame (a missed detection) is not taken to have left: for `hold_s` it
    still counts where it was last seen, so occupancy does not fall and fire again on every flicker.
    Set it to the tracker's keep_s."""

    def __init__(self, config: ZoneConfig, *, hold_s: float = 1.0) -> None:
        if not 0.0 <= hold_s <= FORGET_AFTER_S:
            raise ValueError(f"hold_s must be from 0 to {FORGET_AFTER_S:g} seconds, got {hold_s!r}")
        self._hold_s = hold_s
        self._tracks: dict[int, _Track] = {}
        self._zone_counts: dict[str, dict[str, dict[str, int]]] = {}
        self._line_counts: dict[str, dict[str, dict[str, int]]] = {}
        self._fired: dict[str, int] = {}
        self._armed: dict[str, bool] = {}  # occupancy rules: True until the count reaches min_count
        self._config = ZoneConfig()
        self.reconfigure(config)

    @property
    def config(self) -> ZoneConfig:
        return self._config

    def reconfigure(self, config: ZoneConfig) -> None:
        """Replace zones, lines and rules; counters of names that still exist are kept."""
        old = self._config
        new_zones, new_lines = {z.name: z for z in config.zones}, {ln.name: ln for ln in config.lines}
        moved = {z.name for z in old.zones if new_zones.get(z.name) != z}
        moved_lines = {ln.name for ln in old.lines if new_lines.get(ln.name) != ln}
        # A rule whose zone or line was redrawn is a new rule: it may fire again for every track.
        changed = {r.name for r in old.rules if r not in config.rules or r.zone in moved or r.line in moved_lines}
        for track in self._tracks.values():
            track.since = {z: t for z, t in track.since.items() if z not in moved}
            track.fired -= changed
        self._zone_counts = {n: self._zone_counts.get(n, {"current": {}, "entered": {}}) for n in new_zones}
        self._line_counts = {n: self._line_counts.get(n, {"in": {}, "out": {}}) for n in new_lines}
        self._fired = {r.name: self._fired.get(r.name, 0) for r in config.rules}
        self._armed = {r.name: r.name in changed or self._armed.get(r.name, True) for r in config.rules}
        self._config = config
        self._zone_index = {z.name: i for i, z in enumerate(config.zones)}
        self._line_index = {ln.name: i for i, ln in enumerate(config.lines)}
        self._areas = Polygons([z.points for z in config.zones])
        self._a = np.array([ln.a for ln in config.lines], dtype=np.float64).reshape(-1, 2)
        self._b = np.array([ln.b for ln in config.lines], dtype=np.float64).reshape(-1, 2)

    def forget(self, track_ids: Iterable[int]) -> None:
        """Drop the state of tracks that ended."""
        for track_id in track_ids:
            self._tracks.pop(track_id, None)

    def update(self, detections: Sequence[Detection], *, width: int, height: int, timestamp: float) -> ZoneUpdate:
        """Advance by one frame; only detections with a track id count."""
        self._tracks = {i: t for i, t in self._tracks.items() if timestamp - t.last_seen <= FORGET_AFTER_S}
        by_id = {d.track_id: d for d in detections if d.track_id is not None}
        ids, dets = list(by_id), list(by_id.values())
        anchors = np.array([d.anchor for d in dets], dtype=np.float64).reshape(-1, 2) / (width, height)
        tracks = [self._tracks.get(i) or _Track(d, timestamp, anchors[row]) for row, (i, d) in enumerate(by_id.items())]
        previous = np.array([t.anchor for t in tracks], dtype=np.float64).reshape(-1, 2)
        inside = self._areas.contains(anchors)
        crossed = crossings(previous, anchors, self._a, self._b)

        zones_of: dict[int, tuple[str, ...]] = {}
        for row, (track_id, det, track) in enumerate(zip(ids, dets, tracks, strict=True)):
            now_in = tuple(z.name for z, is_in in zip(self._config.zones, inside[row], strict=True) if is_in)
            # Leaving a zone resets its dwell clock; staying keeps the time it came in.
            track.since = {name: track.since.get(name, timestamp) for name in now_in}
            for name in now_in:
                if name not in track.entered:
                    track.entered.add(name)
                    _bump(self._zone_counts[name]["entered"], det.class_name)
            for line, direction in zip(self._config.lines, crossed[row], strict=True):
                if direction:
                    _bump(self._line_counts[line.name]["in" if direction > 0 else "out"], det.class_name)
            track.last, track.last_seen, track.anchor = det, timestamp, anchors[row]
            self._tracks[track_id] = track
            zones_of[track_id] = now_in

        present = [t for t in self._tracks.values() if timestamp - t.last_seen <= self._hold_s]
        for name, counts in self._zone_counts.items():
            counts["current"] = {}
            for track in present:
                if name in track.since:
                    _bump(counts["current"], track.last.class_name)
        hits = self._per_track_hits(ids, dets, tracks, inside, crossed, timestamp)
        occupancy = [rule for rule in self._config.rules if rule.kind == "occupancy"]
        hits += [hit for rule in occupancy if (hit := self._occupancy(rule, present, timestamp))]
        return ZoneUpdate(tuple(hits), zones_of)

    def _per_track_hits(
        self,
        ids: list[int],
        dets: list[Detection],
        tracks: list[_Track],
        inside: np.ndarray,
        crossed: np.ndarray,
        timestamp: float,
    ) -> list[RuleHit]:
        """Enter, dwell and cross rules, for the tracks seen in this frame."""
        hits: list[RuleHit] = []
        confidences = np.array([d.confidence for d in dets], dtype=np.float64)
        classes = np.array([d.class_name for d in dets], dtype=object)
        for rule in self._config.rules:
            if rule.kind == "occupancy":
                continue
            wanted = confidences >= rule.min_confidence
            if rule.classes:
                wanted &= np.isin(classes, list(rule.classes))
            if rule.kind == "cross":
                column = crossed[:, self._line_index[rule.line]]
                wanted &= column != 0 if rule.direction == "any" else column == (1 if rule.direction == "in" else -1)
            else:
                wanted &= inside[:, self._zone_index[rule.zone]]
            for row in np.flatnonzero(wanted):
                track = tracks[row]
                if rule.name in track.fired:
                    continue
                if rule.kind == "dwell" and timestamp - track.since[rule.zone] < rule.dwell_s:
                    continue
                track.fired.add(rule.name)
                self._fired[rule.name] += 1
                direction = ("in" if crossed[row, self._line_index[rule.line]] > 0 else "out") if rule.line else None
                hits.append(_hit(rule, dets[row], timestamp, track_id=ids[row], direction=direction))
        return hits

    def _occupancy(self, rule: Rule, present: list[_Track], timestamp: float) -> RuleHit | None:
        inside = [t.last for t in present if rule.zone in t.since and _matches(rule, t.last)]
        if len(inside) < rule.min_count:
            self._armed[rule.name] = True  # re-arms once the count falls below the threshold
            return None
        if not self._armed[rule.name]:
            return None
        self._armed[rule.name] = False
        self._fired[rule.name] += 1
        return _hit(rule, max(inside, key=lambda d: d.confidence), timestamp, track_id=None, count=len(inside))

    def counts(self) -> dict:
        """Zone, line and rule counters, JSON-ready."""
        return {
            "zones": {n: {k: dict(v) for k, v in c.items()} for n, c in self._zone_counts.items()},
            "lines": {n: {k: dict(v) for k, v in c.items()} for n, c in self._line_counts.items()},
            "rules": dict(self._fired),
        }


def _bump(counter: dict[str, int], key: str) -> None:
    counter[key] = counter.get(key, 0) + 1


def _hit(rule: Rule, det: Detection, timestamp: float, **extra) -> RuleHit:
    where = {"rule": rule.name, "kind": rule.kind, "zone": rule.zone, "line": rule.line, "ask": rule.ask}
    return RuleHit(
        **where, class_name=det.class_name, confidence=det.confidence, bbox=det.bbox, timestamp=timestamp, **extra
    )
