"""Given hostile HTTP requests (nested bodies, loose types, an offline browser, anonymous
scrapers), when they reach the service, then each gets a clear answer."""

from __future__ import annotations

import re

import httpx
import pytest

from support import make_settings, run_service

START = "/api/v1/video/start"


def test_a_deeply_nested_body_is_invalid_json(live_service):
    body = b'{"stream_url": "rtsp://h/x", "zones": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    with live_service.client() as client:
        response = client.post(START, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_json"


@pytest.mark.parametrize(
    "field, value",
    [("enable_drawing", "yes"), ("enable_drawing", 1), ("confidence_threshold", "0.5"), ("confidence_threshold", True)],
)
def test_loose_types_are_refused(live_service, field, value):
    with live_service.client() as client:
        before = client.get("/api/v1/video/sessions").json()["sessions"]
        response = client.post(START, json={"stream_url": "rtsp://127.0.0.1:1/x", field: value})
        assert response.status_code == 422, response.text
        assert response.json()["error"] == "invalid_request" and field in response.json()["detail"]
        assert client.get("/api/v1/video/sessions").json()["sessions"] == before
    with live_service.client() as client:
        response = client.post("/api/v1/video/stop", json={"session_id": 12345})
        assert response.status_code == 422


def test_docs_work_offline(live_service):
    page = httpx.get(f"{live_service.base_url}/docs")
    assert page.status_code == 200
    # every asset comes from the service itself
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(s.startswith("/") and not s.startswith("//") for s in sources), sources
    for source in sources:
        asset = httpx.get(live_service.base_url + source)
        assert asset.status_code == 200 and asset.content, source
    assert "SwaggerUIBundle" in httpx.get(live_service.base_url + "/ui/swagger/swagger-ui-bundle.js").text
    # and the page's CSP lets exactly those load: scripts from files of ours, no inline script
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    assert "<script>" not in page.text
    assert httpx.get(f"{live_service.base_url}/redoc").status_code == 404  # it would need a CDN


def test_metrics_need_a_key_natively(live_service):
    base = live_service.base_url
    assert httpx.get(f"{base}/metrics").status_code == 401
    assert httpx.get(f"{base}/metrics", headers={"apikey": "wrong"}).status_code == 401
    assert httpx.get(f"{base}/metrics", headers={"apikey": live_service.api_key}).status_code == 200
    # Prometheus' `authorization: {credentials: ...}` sends a bearer token
    bearer = {"Authorization": f"Bearer {live_service.api_key}"}
    assert "process_resident_memory_bytes" in httpx.get(f"{base}/metrics", headers=bearer).text


def test_metrics_can_be_opened_deliberately(tiny_model_dir):
    service = run_service(make_settings(tiny_model_dir, metrics_require_key=False))
    try:
        assert httpx.get(f"{service.base_url}/metrics").status_code == 200
    finally:
        service.stop()


TRAVERSALS = [
    "/ui/../../README.md",
    "/ui/..%2f..%2fREADME.md",
    "/ui/%2e%2e/%2e%2e/README.md",
    "/ui/%2e%2e%2f%2e%2e%2fREADME.md",
    "/ui/....//....//README.md",
    "/ui/..%5c..%5cREADME.md",
    "/ui/%252e%252e/%252e%252e/README.md",
    "/ui/swagger/../../../rt-detr-service/rtdetr_service/config.py",
    "/ui//etc/passwd",
    "/ui/%2fetc%2fpasswd",
    "/ui/../../../../etc/passwd",
    "/ui/app.js%00../../README.md",
    "/.env",
    "/ui/.env",
    "//etc/passwd",
]


def raw_get(base_url: str, path: str) -> tuple[int, bytes]:
    """GET `path` exactly as written (an HTTP client would normalise the dots away first)."""
    import socket
    from urllib.parse import urlsplit

    where = urlsplit(base_url)
    with socket.create_connection((where.hostname, where.port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {where.netloc}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_static_files_never_leave_their_folder(live_service, path):
    # Given the viewer's files served under /ui (the folder next to README.md and the service's code)
    status, body = raw_get(live_service.base_url, path)
    # Then a path that climbs out, however it is spelled, gets nothing from outside
    assert status in (400, 404), (status, body[:200])
    assert b"rtdetr-stack" not in body and b"class Settings" not in body and b"root:" not in body


def test_the_viewer_files_are_still_served(live_service):
    status, body = raw_get(live_service.base_url, "/ui/app.js")
    assert status == 200 and b"function" in body
