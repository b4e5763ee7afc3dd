"""What a page did that it must not: script errors, requests leaving the service's origin."""

from __future__ import annotations

from urllib.parse import urlsplit


class PageProblems:
    """What a page did that it must not: script errors, requests leaving the service's origin."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.errors: list[str] = []
        self.outside: list[str] = []

    def request(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob"):
            return
        if parts.netloc != self.origin:
            self.outside.append(url)
