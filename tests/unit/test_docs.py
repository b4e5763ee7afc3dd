"""The documents stay true: every link lands, the floor map names every module, the example sink runs."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from rtdetr_service.analytics.events import EventLifecycle
from rtdetr_service.analytics.publisher import Publisher
from rtdetr_service.analytics.tracking import Tracker, TrackerOptions
from rtdetr_service.analytics.zones import ZoneConfig, ZoneEngine
from rtdetr_service.core.results import SessionView
from rtdetr_service.core.types import Detection, Frame, FrameResult
from rtdetr_service.outputs import registry

from example_sink import JsonLinesSink
from support import wait_until

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "rt-detr-service" / "rtdetr_service"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def documents() -> list[Path]:
    return [
        ROOT / "README.md",
        ROOT / "CONTRIBUTING.md",
        ROOT / "models" / "README.md",
        *sorted(ROOT.glob("docs/*.md")),
    ]


def prose_lines(path: Path) -> list[tuple[int, str]]:
    """The lines outside fenced code blocks, numbered from 1."""
    lines, fenced = [], False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation gone, spaces → '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").replace("*", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor, with GitHub's -1, -2 … for repeated ones."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(path):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """Relative link targets, with their line; code spans are not links."""
    out = []
    for number, line in prose_lines(path):
        for target in LINK.findall(re.sub(r"`[^`]*`", "code", line)):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: lead elsewhere
                out.append((number, target))
    return out


def test_the_link_checker_knows_github_anchors():
    assert slug("Backends through the real pipeline (make bench-cpu)") == (
        "backends-through-the-real-pipeline-make-bench-cpu"
    )
    assert slug("`GET /api/v1/video/status/{session_id}`") == "get-apiv1videostatussession_id"
    assert slug("Zones, lines and rules") == "zones-lines-and-rules"


@pytest.mark.parametrize("path", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_lands_on_a_file_and_heading(path):
    broken = []
    for number, target in links(path):
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / file_part).resolve() if file_part else path
        if not destination.exists():
            broken.append(f"line {number}: {target}: no such file")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"line {number}: {target}: no heading #{anchor} in {destination.relative_to(ROOT)}")
    assert not broken, f"{path.relative_to(ROOT)} has broken links:\n" + "\n".join(broken)


# -- the floor map --------------------------------------------------------------------------------------


def package_modules() -> set[str]:
    """Every module of the package, relative to it; an `__init__.py` counts when it defines something."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        if path.name == "__init__.py":
            tree = ast.parse(path.read_text())
            if not any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) for n in tree.body):
                continue
        found.add(path.relative_to(PACKAGE).as_posix())
    return found


def mapped_modules() -> list[str]:
    """The modules docs/architecture.md's floor map lists, one per list item."""
    text = ARCHITECTURE.read_text().split("## Floor map", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^- `([\w/]+\.py)` — ", text, re.MULTILINE)


def test_the_floor_map_names_every_module_of_the_package_once():
    mapped, real = mapped_modules(), package_modules()
    assert len(mapped) == len(set(mapped)), "docs/architecture.md lists a module twice"
    missing, gone = sorted(real - set(mapped)), sorted(set(mapped) - real)
    assert not missing, f"docs/architecture.md's floor map lacks {missing}: add one line each, saying its job"
    assert not gone, f"docs/architecture.md's floor map names modules that do not exist: {gone}"


# -- the example sink -------------------------------------------------------------------------------------


def test_the_example_sink_in_the_document_is_the_tested_module():
    match = re.search(r"<!-- file: tests/example_sink.py -->\n```python\n(.*?)```", ARCHITECTURE.read_text(), re.S)
    assert match, "docs/architecture.md no longer shows tests/example_sink.py"
    assert match.group(1) == (ROOT / "tests" / "example_sink.py").read_text(), (
        "docs/architecture.md's example sink differs from tests/example_sink.py: copy the module into the page"
    )


def test_the_example_sink_registered_in_sinks_receives_a_sessions_events(tmp_path, monkeypatch):
    # given the example sink registered as the document says: a builder in SINKS
    path = tmp_path / "events.jsonl"

    def _jsonl(ctx: registry.SinkContext) -> JsonLinesSink:
        sink = JsonLinesSink(path)
        sink.start()
        return sink

    monkeypatch.setattr(registry, "SINKS", [_jsonl])
    context = registry.SinkContext(**dict.fromkeys(f.name for f in dataclasses.fields(registry.SinkContext)))
    sinks = registry.build_sinks(context)
    publisher = Publisher(
        SessionView("s1", "door", False, 75),
        tracker=Tracker(TrackerOptions(), activation_threshold=0.5, frame_rate=10.0),
        zones=ZoneEngine(ZoneConfig()),
        events=EventLifecycle("s1", "door"),
        sinks=sinks,
    )
    # when a person stands in view for five frames, then the session ends
    publisher.start()
    image, start = np.zeros((240, 320, 3), np.uint8), time.time()
    for index in range(5):
        person = Detection(0, "person", (100.0, 40.0, 140.0, 200.0), 0.9)
        frame = Frame(image, index, start + index / 10, time.monotonic())
        publisher.results.put(FrameResult("s1", frame, (person,), 0.0))
        assert wait_until(lambda n=index + 1: publisher.frames_published == n, timeout=5)
    publisher.stop()
    assert publisher.join(5)
    for sink in sinks:
        sink.close(5)
    # then the file holds the person's event from new to end, one rtdetr.event.v1 message a line
    messages = [json.loads(line) for line in path.read_text().splitlines()]
    changes = [m["type"] for m in messages if m["schema"] == "rtdetr.event.v1"]
    assert changes[0] == "new" and changes[-1] == "end", changes
    assert {m["camera"] for m in messages} == {"door"}
    assert sinks[0].stats().dropped == 0 and sinks[0].stats().sent >= 2
