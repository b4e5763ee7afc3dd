"""API-key check for control routes: constant-time, header only, never logged."""

from __future__ import annotations

import hmac

from fastapi import Request

from .errors import ApiError

KEY_HEADERS = ("apikey", "x-api-key")


def key_matches(candidate: str, keys) -> bool:
    """True if candidate equals one of keys; every key is compared, so timing reveals nothing."""
    given = candidate.encode()
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, key.get_secret_value().encode())
    return found


async def require_api_key(request: Request) -> None:
    """FastAPI dependency guarding /api/v1/video/*."""
    settings = request.app.state.settings
    if settings.auth_disabled:
        return
    candidate = next((request.headers[h] for h in KEY_HEADERS if h in request.headers), None)
    if not candidate or not key_matches(candidate, settings.api_keys):
        raise ApiError(
            401,
            "unauthorized",
            "Missing or invalid API key: send it in the 'apikey' (or 'X-API-Key') header",
            headers={"WWW-Authenticate": "ApiKey"},
        )
