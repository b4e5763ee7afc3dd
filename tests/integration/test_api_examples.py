"""docs/api.md cannot drift silently: the examples in it are checked against a real tour of the API.

The tour is `scripts/api_examples.py` (the script that produced the examples): the real service
and the GStreamer camera, with the scripted detector (people walking left to right) so that
tracks, zones, rules, alerts, events and counts are real. Each response example in the document
(`<!-- example: NAME -->` before a ```json block) must have exactly the keys of the real answer,
recursively (values may differ); each request example (`<!-- request: NAME -->`) must be
accepted by the API's models; every route, error code, close code and metric must be named.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from rtdetr_service.analytics.zones import ZoneConfig
from rtdetr_service.core.coco import COCO_CLASSES
from rtdetr_service.ingest.urls import StreamErrorKind
from rtdetr_service.web.app import create_app
from rtdetr_service.web.errors import ERRORS
from rtdetr_service.web.routes.video import RecordIn, StartRequest, StopRequest, ZonesIn

from scripted_detector import WalkingPeople
from support import make_settings, run_service

ROOT = Path(__file__).resolve().parents[2]
# The HTTP API and the WebSocket protocol: one document each, checked as one.
DOCS = (ROOT / "docs" / "api.md", ROOT / "docs" / "websocket.md")
SERVICE_SRC = ROOT / "rt-detr-service" / "rtdetr_service"
BLOCK = re.compile(r"<!--\s*(example|request):\s*([\w.-]+)\s*-->\s*```json\n(.*?)\n```", re.DOTALL)

pytestmark = pytest.mark.timeout(120)


def _load_script():
    spec = importlib.util.spec_from_file_location("api_examples", ROOT / "scripts" / "api_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _strip_comments(text: str) -> str:
    """JSON with `//` comments (outside strings) to JSON."""
    out, in_string, escaped, i = [], False, False, 0
    while i < len(text):
        ch = text[i]
        if in_string:
            out.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
            out.append(ch)
        elif text.startswith("//", i):
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def _doc_text() -> str:
    return "\n".join(path.read_text() for path in DOCS)


def doc_blocks(kind: str) -> dict[str, object]:
    """The document's examples of one kind by name, parsed; a block that is not JSON fails here."""
    text = _doc_text()
    blocks: dict[str, object] = {}
    for found_kind, name, body in BLOCK.findall(text):
        if found_kind != kind:
            continue
        assert name not in blocks, f"docs/api.md: two {kind} examples named {name!r}"
        try:
            blocks[name] = json.loads(_strip_comments(body))
        except json.JSONDecodeError as exc:
            pytest.fail(f"docs/api.md: the {kind} example {name!r} is not JSON: {exc}")
    return blocks


def _is_class_map(path: tuple[str, ...]) -> bool:
    """counts.zones.<zone>.current|entered and counts.lines.<line>.in|out are keyed by class name."""
    if "counts" not in path:
        return False
    rest = path[path.index("counts") + 1 :]
    return len(rest) == 3 and (
        (rest[0] == "zones" and rest[2] in ("current", "entered")) or (rest[0] == "lines" and rest[2] in ("in", "out"))
    )


def key_problems(doc: object, real: object, path: tuple[str, ...] = ()) -> list[str]:
    """Where the documented object's keys differ from the real one's, recursively."""
    where = ".".join(path) or "(top)"
    if isinstance(doc, dict) and isinstance(real, dict):
        if _is_class_map(path):
            unknown = sorted(set(doc) - set(COCO_CLASSES))
            return [f"{where}: keys must be class names, not {unknown}"] if unknown else []
        problems = []
        missing, extra = sorted(set(real) - set(doc)), sorted(set(doc) - set(real))
        if missing:
            problems.append(f"{where}: the real answer has {missing}, the example does not")
        if extra:
            problems.append(f"{where}: the example has {extra}, the real answer does not")
        for key in sorted(set(doc) & set(real)):
            problems += key_problems(doc[key], real[key], (*path, key))
        return problems
    if isinstance(doc, list) and isinstance(real, list):
        problems = []
        items = [d for d in doc if isinstance(d, dict)]
        if items and not any(isinstance(r, dict) for r in real):
            return [f"{where}: the example lists objects, the real list has none to compare with"]
        for i, item in enumerate(doc):
            if isinstance(item, dict):
                problems += key_problems(item, _counterpart(item, i, real), (*path, f"[{i}]"))
        return problems
    shape = lambda v: dict if isinstance(v, dict) else list if isinstance(v, list) else "value"  # noqa: E731
    if doc is not None and real is not None and shape(doc) != shape(real):
        return [f"{where}: the example has a {type(doc).__name__}, the real answer a {type(real).__name__}"]
    return []


def _counterpart(item: dict, index: int, real: list) -> object:
    """The real list item a documented one stands for: the same name or id, else the same place."""
    for key in ("name", "id"):
        if key in item:
            same = [r for r in real if isinstance(r, dict) and r.get(key) == item[key]]
            if same:
                return same[0]
    dicts = [r for r in real if isinstance(r, dict)]
    return dicts[min(index, len(dicts) - 1)]


def _real(records: dict, name: str):
    """The real answer an example names: a record, or a part of one (`record.key`)."""
    head, *keys = name.split(".")
    if head not in records:
        return None
    value = records[head]["body"]
    for key in keys:
        value = value[key]
    return value


# -- the tour ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def records(tiny_model_dir, tmp_path_factory, rtsp_url):
    script = _load_script()
    settings = make_settings(tiny_model_dir, data_dir=tmp_path_factory.mktemp("api-examples"), **script.SETTINGS)
    detector = WalkingPeople(rows=2)
    service = run_service(settings, detector_factory=lambda _settings: detector)
    try:
        yield script.tour(service, rtsp_url)
    finally:
        service.stop()


def test_every_response_example_has_exactly_the_keys_of_the_real_answer(records):
    examples = doc_blocks("example")
    assert len(examples) >= 30, f"docs/api.md: only {len(examples)} marked examples were found"
    problems = []
    for name, example in examples.items():
        real = _real(records, name)
        if real is None:
            problems.append(f"{name}: the tour did not capture this answer (captured: {sorted(records)})")
            continue
        problems += [f"{name}: {p}" for p in key_problems(example, real)]
    assert not problems, "docs/api.md drifted from the real answers:\n" + "\n".join(problems)


def test_the_tour_captured_every_kind_of_answer_and_the_doc_shows_them(records):
    # Everything the tour captures is documented, as an example or (errors, close codes) in a table.
    text = _doc_text()
    examples = doc_blocks("example")
    shown = {name.split(".")[0] for name in examples}
    for name, record in records.items():
        kind = record["kind"]
        if kind == "error":
            status, code = record["status"], record["body"]["error"]
            assert re.search(rf"\|\s*{status}\s*\|\s*`{code}`", text), (
                f"{name}: `{status} {code}` not in the error table"
            )
        elif kind == "ws_close":
            code, reason = record["body"]["code"], record["body"]["reason"]
            assert f"`{code}`" in text, f"{name}: close code {code} not documented"
            if code != 1000:
                assert f"`{reason}`" in text, f"{name}: close reason {reason!r} not documented"
        elif kind == "headers":
            for header in ("content-type", "cache-control"):
                assert f"{header}: {record['body'][header]}" in text, f"{name}: {header} not as documented"
        elif kind == "metrics":
            for family in record["body"]:
                if family.endswith("_created"):
                    continue
                base = family.removesuffix("_total")
                assert f"`{base}`" in text, f"metric {base} is not documented"
        elif name != "sessions":  # documented as the status object plus websocket_path (checked below)
            assert name in shown, f"{name}: the real answer has no example in docs/api.md"
    # The sessions list is documented as "the status object plus websocket_path".
    item = records["sessions"]["body"]["sessions"][0]
    assert set(item) == set(records["status"]["body"]) | {"websocket_path"}
    # The line direction the document explains: walking left to right over a line drawn bottom to top is "in".
    assert records["ws_alert_cross"]["body"]["data"]["direction"] == "in"


# -- without the service -------------------------------------------------------------------------------


def test_every_request_example_is_accepted():
    requests = doc_blocks("request")
    assert {"start", "stop", "zones_put", "record_put"} <= set(requests)
    models = {"start": StartRequest, "stop": StopRequest, "zones_put": ZonesIn, "record_put": RecordIn}
    for name, body in requests.items():
        parsed = models[name].model_validate(body)
        zones = parsed if isinstance(parsed, ZonesIn) else getattr(parsed, "zones", None)
        if zones is not None:
            ZoneConfig.from_dict(zones.model_dump(), width=320, height=240)  # the example camera's size


def test_every_route_is_documented(tmp_path):
    text = _doc_text()
    app = create_app(make_settings(tmp_path / "no-model"))  # routes only: the lifespan (model loading) does not run
    skip = {app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url}
    missing = []
    for route in app.routes:
        path = getattr(route, "path", None)
        if path is None or path in skip or not hasattr(route, "endpoint"):
            continue  # mounts (/ui) and FastAPI's own documentation routes
        methods = sorted(getattr(route, "methods", None) or ())
        if not methods:  # a WebSocket route
            if f"`{path}" not in text:
                missing.append(f"WebSocket {path}")
        for method in methods:
            if method != "HEAD" and not re.search(rf"`{method} {re.escape(path)}[`?]", text):
                missing.append(f"{method} {path}")
    assert not missing, f"routes not documented in docs/api.md: {missing}"


def test_every_error_code_of_the_code_is_documented():
    text = _doc_text()
    source = "\n".join(p.read_text() for p in SERVICE_SRC.rglob("*.py"))
    codes = set(re.findall(r'(?:ApiError|error_response)\(\s*"(\w+)"', source))
    codes |= set(ERRORS)
    codes |= set(re.findall(r'SessionError\(\s*"(\w+)"', source))
    codes |= {kind.value for kind in StreamErrorKind}
    assert {"invalid_zones", "event_not_found", "body_too_large", "session_not_ready"} <= codes
    missing = sorted(code for code in codes if not re.search(rf"\|\s*\d{{3}}\s*\|\s*`{code}`", text))
    assert not missing, f"error codes not in the error table of docs/api.md: {missing}"
