"""Given one catalogue of error codes (web/errors.py), no code can be raised that it does not know.

The floors below the web raise a code without a status; the web floor answers it with the status
the catalogue gives. A code missing from it would be a silent 500, so: every code raised anywhere in
the package is catalogued, the catalogue agrees with docs/api.md, and the handler answers an unknown
code 500 `internal_error` and logs it.
"""

from __future__ import annotations

import ast
import logging
import re
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from rtdetr_service.ingest.urls import StreamErrorKind
from rtdetr_service.sessions.session import SessionError
from rtdetr_service.web.errors import ERRORS, ApiError, install_error_handlers
from rtdetr_service.web.schemas import errors

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "rt-detr-service" / "rtdetr_service"
RAISERS = {"SessionError", "ApiError", "error_response"}


def _callee(call: ast.Call) -> str | None:
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def _passed_on(arg: ast.expr) -> bool:
    """`exc.code` (an error's code, itself checked where it was raised) or `exc.kind.value` (a
    StreamErrorKind, all of which are checked below)."""
    if not isinstance(arg, ast.Attribute):
        return False
    if arg.attr == "code":
        return True
    return arg.attr == "value" and isinstance(arg.value, ast.Attribute) and arg.value.attr == "kind"


def raised_codes(root: Path) -> tuple[dict[str, str], list[str]]:
    """Every code given as a literal to SessionError/ApiError/error_response, with where; and the
    calls whose code is neither a literal nor passed on from another error."""
    literal, unknown = {}, []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call) or _callee(node) not in RAISERS or not node.args:
                continue
            where = f"{path.relative_to(root)}:{node.lineno}"
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                literal[first.value] = where
            elif not _passed_on(first):
                unknown.append(f"{where}: {ast.unparse(first)}")
    return literal, unknown


def test_every_code_raised_in_the_package_is_in_the_catalogue():
    literal, unknown = raised_codes(PACKAGE)
    # The walk finds the raisers of every floor: the domain's and the web's own.
    assert {"session_not_found", "too_many_sessions", "event_not_found", "body_too_large", "unauthorized"} <= set(
        literal
    )
    missing = {code: where for code, where in literal.items() if code not in ERRORS}
    assert not missing, f"error codes raised but not in web/errors.py's ERRORS: {missing}"
    assert not unknown, f"error codes the catalogue check cannot see (pass a literal): {unknown}"


def test_a_code_that_is_not_a_literal_is_caught_by_the_walk(tmp_path):
    (tmp_path / "m.py").write_text('code = "x"\nraise SessionError(code, "words")\nApiError("nope", "w")\n')
    literal, unknown = raised_codes(tmp_path)
    assert literal == {"nope": "m.py:3"}
    assert unknown == ["m.py:2: code"]


def test_every_stream_error_kind_is_in_the_catalogue():
    # The manager raises a failed open's kind as its code.
    assert {kind.value for kind in StreamErrorKind} <= set(ERRORS)


def test_the_catalogue_agrees_with_the_error_table_of_docs_api_md():
    text = (ROOT / "docs" / "api.md").read_text()
    table = dict(
        (code, status) for status, code in re.findall(r"^\|\s*(\w{3})\s*\|\s*`(\w+)`\s*\|", text, flags=re.MULTILINE)
    )
    table.pop("http_error")  # Starlette's other refusals, with Starlette's status ("4xx")
    assert table == {code: str(known.status) for code, known in ERRORS.items()}


def test_openapi_answers_refuse_an_unknown_code():
    with pytest.raises(ValueError, match="no_such_code"):
        errors("session_not_found", "no_such_code")


def _client(exc: Exception) -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/fails")
    async def fails() -> None:
        raise exc

    return TestClient(app)


@pytest.mark.parametrize(
    "exc, status, headers",
    [
        (SessionError("stream_timeout", "The stream did not answer"), 504, {}),
        (SessionError("session_not_found", "No session with id 'abc'"), 404, {}),
        (ApiError("unauthorized", "Missing or invalid API key"), 401, {"www-authenticate": "ApiKey"}),
    ],
)
def test_a_code_is_answered_with_its_catalogued_status_and_headers(exc, status, headers):
    answer = _client(exc).get("/fails")
    assert answer.status_code == status
    assert answer.json() == {"error": exc.code, "detail": str(exc)}
    assert {name: answer.headers.get(name) for name in headers} == headers


@pytest.mark.parametrize("exc", [SessionError("no_such_code", "words"), ApiError("no_such_code", "words")])
def test_an_unknown_code_is_answered_500_and_logged(exc, caplog):
    with caplog.at_level(logging.ERROR, logger="rtdetr_service.web.errors"):
        answer = _client(exc).get("/fails")
    assert answer.status_code == 500
    assert answer.json() == {"error": "internal_error", "detail": "Internal error; the service log has the details"}
    assert any("no_such_code" in record.getMessage() for record in caplog.records)
