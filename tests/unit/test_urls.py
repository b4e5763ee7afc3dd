"""Stream URLs are untrusted: only network schemes pass, credentials never show."""

import pytest

from rtdetr_service.core.logs import redact
from rtdetr_service.ingest.reader import _describe
from rtdetr_service.ingest.urls import StreamError, StreamErrorKind, protocol_whitelist, redact_url, validate_stream_url

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
        " rtsp://host/x",
        "rtsp://host/x\n",
        "rtsp://host/x\r\nDESCRIBE",
        "rtsp://[::1/x",
        "rtsp://[zz]/x",
        "rtsp://admin:pa/ss@host/x",
    ],
)
def test_refused(url):
    with pytest.raises(StreamError) as info:
        validate_stream_url(url, ALLOWED)
    assert info.value.kind is StreamErrorKind.UNSUPPORTED_URL
    # the words never quote a part of the URL: in a malformed one, that part may be a password
    assert "'pa'" not in str(info.value) and "ss@" not in str(info.value)


@pytest.mark.parametrize(
    "url, opened",
    [
        ("rtsp://mediamtx:8554/camera", "rtsp://mediamtx:8554/camera"),
        ("RTSP://10.0.0.2/live", "rtsp://10.0.0.2/live"),  # FFmpeg knows protocols in lower case only
        ("rtsps://u:p@cam.local:322/s", "rtsps://u:p@cam.local:322/s"),
        ("rtsp://[fe80::1]:554/x", "rtsp://[fe80::1]:554/x"),
    ],
)
def test_accepted(url, opened):
    assert validate_stream_url(url, ALLOWED) == opened


@pytest.mark.parametrize(
    "url, shown",
    [
        ("rtsp://admin:s3cret@cam:554/live", "rtsp://***@cam:554/live"),
        ("rtsp://cam/live", "rtsp://cam/live"),
        ("rtsp://:s3cret@cam/live", "rtsp://***@cam/live"),  # empty user
        ("rtsp://s3cret@cam/live", "rtsp://***@cam/live"),  # a token as the user
        ("rtsp://u:p@ss@cam/live", "rtsp://***@cam/live"),  # '@' inside the password
        ("rtsp://admin:12/34@cam/x", "rtsp://***@cam/x"),  # '/' inside the password
        ("rtsp://u:s3cret@[fe80::1]:554/x", "rtsp://***@[fe80::1]:554/x"),
        ("rtsp://cam/live?user=a&password=s3cret", "rtsp://cam/live?user=a&password=***"),
        ("rtsp://admin:S3cr'et@cam/x", "rtsp://***@cam/x"),  # quotes are legal in a password
        ('rtsp://admin:S3cr"et@cam/x', "rtsp://***@cam/x"),
    ],
)
def test_redaction(url, shown):
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "line, shown",
    [
        ("refused: 'rtsp://admin:S3cr'et@cam:554/x' now", "refused: 'rtsp://***@cam:554/x' now"),
        ("from rtsp://cam/a to http://u:p@h/b", "from rtsp://cam/a to http://***@h/b"),
        ("GET /x?bypass=1&compass=2&password=s3cret&token=t0k", "GET /x?bypass=1&compass=2&password=***&token=***"),
    ],
)
def test_log_lines_are_redacted(line, shown):
    assert redact(line) == shown


def test_ffmpeg_reasons_quote_the_url_redacted():
    url = "rtsp://:s3cret@127.0.0.1:9/camera"
    reason = _describe(OSError(111, f"Connection refused: '{url}'"))
    assert "s3cret" not in reason and "rtsp://***@127.0.0.1:9/camera" in reason


def test_whitelist_has_no_local_protocols():
    for scheme in ("rtsp", "rtsps"):
        protocols = set(protocol_whitelist(f"{scheme}://h/x").split(","))
        assert scheme in protocols
        assert not protocols & {"file", "concat", "subfile", "pipe", "data", "crypto", "http", "https", "hls"}


def test_ffmpeg_enforces_the_whitelist(tmp_path):
    # given a real, readable local video and a reader limited to the RTSP protocols
    import av
    import numpy as np

    from rtdetr_service.ingest.reader import StreamReader

    clip = tmp_path / "clip.mp4"
    with av.open(str(clip), "w") as out:
        stream = out.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(5):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="bgr24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())

    def reader(whitelist):
        class Whitelisted(StreamReader):
            def _protocol_whitelist(self) -> str:
                return whitelist

        return Whitelisted(
            str(clip), on_frame=lambda f: None, on_state=lambda s, e: None, open_timeout=5, read_timeout=5,
            reconnect_min=0.1, reconnect_max=0.1,
        )  # fmt: skip

    # when FFmpeg is told only rtsp/tcp/udp/rtp, then it refuses the file itself
    with pytest.raises(StreamError) as info:
        reader(protocol_whitelist("rtsp://h/x")).open()
    assert info.value.kind is StreamErrorKind.UNAVAILABLE
    # and the same file opens when "file" is allowed (so the refusal was the whitelist's doing)
    opened = reader("file")
    assert opened.open().width == 64
    opened.stop()


def test_ffmpeg_reasons_never_carry_credentials():
    from rtdetr_service.ingest.reader import StreamReader

    reader = StreamReader(
        "rtsp://admin:hunter2@127.0.0.1:1/camera", on_frame=lambda f: None, on_state=lambda s, e: None,
        open_timeout=3, read_timeout=3, reconnect_min=0.1, reconnect_max=0.1,
    )  # fmt: skip
    with pytest.raises(StreamError) as info:
        reader.open()
    assert info.value.kind is StreamErrorKind.UNAVAILABLE
    assert "hunter2" not in str(info.value)
    assert "refused" in str(info.value).lower()
