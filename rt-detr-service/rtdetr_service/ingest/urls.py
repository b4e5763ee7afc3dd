"""Which stream URLs and destinations the service may open, and how URLs are shown in logs."""

from __future__ import annotations

import enum
import ipaddress
import socket
from dataclasses import dataclass
from typing import Sequence
from urllib.parse import urlsplit, urlunsplit

from rtdetr_service.core.logs import redact
from rtdetr_service.ingest.settings import DEFAULT_DENIED_NETWORKS

# FFmpeg protocols a network stream may use underneath its scheme. Anything else (file, concat,
# subfile, pipe, data, http redirects into them, ...) is refused by FFmpeg itself.
_TRANSPORT_PROTOCOLS = {
    "rtsp": ("rtsp", "tcp", "udp", "rtp"),
    "rtsps": ("rtsps", "rtsp", "tcp", "tls", "udp", "rtp", "srtp"),
    "rtmp": ("rtmp", "tcp"),
    "rtmps": ("rtmps", "rtmp", "tcp", "tls"),
    "http": ("http", "tcp", "hls"),
    "https": ("https", "http", "tcp", "tls", "hls"),
    "srt": ("srt", "udp"),
}


class StreamErrorKind(enum.Enum):
    UNSUPPORTED_URL = "unsupported_url"
    UNAVAILABLE = "stream_unavailable"
    TIMEOUT = "stream_timeout"
    NO_VIDEO = "no_video_stream"
    DENIED = "destination_denied"


# One sentence for every refused destination, whatever the port, the address or the reason: a
# caller must not learn which internal ports are open from the service's answers.
DENIED_WORDS = (
    "stream_url names a destination this service may not connect to (STREAM_ALLOWED_NETWORKS / STREAM_DENIED_NETWORKS)"
)


class StreamError(Exception):
    """A stream that cannot be used, with words a user can act on."""

    def __init__(self, kind: StreamErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def validate_stream_url(url: str, allowed_schemes: Sequence[str]) -> str:
    """The URL to open, its scheme in lower case (FFmpeg matches protocol names exactly), if the
    scheme is allowed and it names a host; StreamError otherwise. Messages never quote the URL's
    parts: a malformed one may hold a password in any of them."""
    if not isinstance(url, str) or not url:
        raise StreamError(StreamErrorKind.UNSUPPORTED_URL, "stream_url is empty")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        # Not stripped: what is checked must be exactly what FFmpeg opens, and a newline would
        # end up inside the RTSP request line.
        raise StreamError(StreamErrorKind.UNSUPPORTED_URL, "stream_url contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - urllib validates the port only when it is read
        host = parts.hostname
    except ValueError as exc:
        raise StreamError(StreamErrorKind.UNSUPPORTED_URL, "stream_url is not a valid URL (host or port)") from exc
    scheme = parts.scheme.lower()
    if scheme not in allowed_schemes:
        shown = f"'{scheme}:'" if scheme else "no scheme"
        raise StreamError(
            StreamErrorKind.UNSUPPORTED_URL,
            f"stream_url has {shown}; only {', '.join(s + '://' for s in allowed_schemes)} URLs are accepted",
        )
    if not host:
        raise StreamError(StreamErrorKind.UNSUPPORTED_URL, "stream_url names no host")
    return scheme + url[len(parts.scheme) :]


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class DestinationPolicy:
    """Which addresses a stream may be opened from: in `allowed` (empty = any) and not in `denied`."""

    allowed: tuple[Network, ...] = ()
    denied: tuple[Network, ...] = tuple(ipaddress.ip_network(n) for n in DEFAULT_DENIED_NETWORKS)

    def permits(self, address: str) -> bool:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:169.254.169.254 is 169.254.169.254
        if any(ip in net for net in self.denied if net.version == ip.version):
            return False
        return not self.allowed or any(ip in net for net in self.allowed if net.version == ip.version)

    def pin(self, url: str) -> str:
        """`url` with its host replaced by the address to connect to, once every address the host
        resolves to is permitted: FFmpeg then connects to the address checked, not to whatever a
        second lookup returns (DNS rebinding). StreamError(DENIED) otherwise."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        try:
            port = parts.port or 554
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, ValueError, UnicodeError) as exc:
            raise StreamError(
                StreamErrorKind.UNAVAILABLE, "Cannot open stream: its host name does not resolve"
            ) from exc
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
        if not addresses or not all(self.permits(a) for a in addresses):
            raise StreamError(StreamErrorKind.DENIED, DENIED_WORDS)
        address = addresses[0]
        shown = f"[{address}]" if ":" in address else address
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = (userinfo + "@" if "@" in parts.netloc else "") + shown + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))

    def permits_url(self, url: str) -> bool:
        try:
            self.pin(url)
        except StreamError:
            return False
        return True


def redact_url(url: str) -> str:
    """The URL with its userinfo (user:password@, a token@, whatever characters the password
    holds) and query secrets masked, for logs and status: the one redaction of logs.py."""
    return redact(url)


def protocol_whitelist(url: str) -> str:
    scheme = urlsplit(url).scheme.lower()
    return ",".join(_TRANSPORT_PROTOCOLS.get(scheme, (scheme,)))
