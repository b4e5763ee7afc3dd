"""Stream URLs are untrusted: only network schemes pass, credentials never show."""

import pytest

from rtdetr_service.source import StreamError, StreamErrorKind, protocol_whitelist, redact_url, validate_stream_url

ALLOWED = ["rtsp", "rtsps"]


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "/etc/passwd",
        "concat:a.mp4|b.mp4",
        "subfile:,,start,0,end,0,,:/etc/passwd",
        "pipe:0",
        "data:video/mp4;base64,AAAA",
        "http://example.com/x.m3u8",
        "rtsp://",
        "rtsp:///camera",
        "rtsp://host:99999/x",
        "rtsp://host/ca mera",
        "",
        "  ",
        "gopher://x",
    ],
)
def test_refused(url):
    with pytest.raises(StreamError) as info:
        validate_stream_url(url, ALLOWED)
    assert info.value.kind is StreamErrorKind.UNSUPPORTED_URL


@pytest.mark.parametrize("url", ["rtsp://mediamtx:8554/camera", "RTSP://10.0.0.2/live", "rtsps://u:p@cam.local:322/s"])
def test_accepted(url):
    assert validate_stream_url(url, ALLOWED) == url


def test_redaction():
    assert redact_url("rtsp://admin:s3cret@cam:554/live") == "rtsp://***@cam:554/live"
    assert redact_url("rtsp://cam/live") == "rtsp://cam/live"


def test_whitelist_has_no_local_protocols():
    for scheme in ("rtsp", "rtsps"):
        protocols = set(protocol_whitelist(f"{scheme}://h/x").split(","))
        assert scheme in protocols
        assert not protocols & {"file", "concat", "subfile", "pipe", "data", "crypto", "http", "https", "hls"}
