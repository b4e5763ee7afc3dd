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


def test_ffmpeg_enforces_the_whitelist(tmp_path):
    # given a real, readable local video and a reader limited to the RTSP protocols
    import av
    import numpy as np

    from rtdetr_service.source import StreamReader

    clip = tmp_path / "clip.mp4"
    with av.open(str(clip), "w") as out:
        stream = out.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(5):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="bgr24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())

    def reader(whitelist):
        return StreamReader(
            str(clip), on_frame=lambda f: None, on_state=lambda s, e: None, open_timeout=5, read_timeout=5,
            reconnect_min=0.1, reconnect_max=0.1, whitelist=whitelist,
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
    from rtdetr_service.source import StreamReader

    reader = StreamReader(
        "rtsp://admin:hunter2@127.0.0.1:1/camera", on_frame=lambda f: None, on_state=lambda s, e: None,
        open_timeout=3, read_timeout=3, reconnect_min=0.1, reconnect_max=0.1,
    )  # fmt: skip
    with pytest.raises(StreamError) as info:
        reader.open()
    assert info.value.kind is StreamErrorKind.UNAVAILABLE
    assert "hunter2" not in str(info.value)
    assert "refused" in str(info.value).lower()
