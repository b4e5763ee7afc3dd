"""API-key check for control routes: constant-time, header only, never logged."""

from __future__ import annotations

import hmac

from fastapi import Request, Security
from fastapi.security import APIKeyHeader

from .errors import ApiError

KEY_HEADERS = ("apikey", "x-api-key")


def key_matches(candidate: str, keys) -> bool:
    """True if candidate equals one of keys; every key is compared, so timing reveals nothing."""
    given = candidate.encode()
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, key.get_secret_value().encode())
    return found


# Declared as security schemes so that /docs offers "Authorize"; read from headers only.
_APIKEY = APIKeyHeader(name="apikey", scheme_name="apikey", auto_error=False, description="An API key.")
_X_API_KEY = APIKeyHeader(name="X-API-Key", scheme_name="X-API-Key", auto_error=False, description="An API key.")


def key_rejection(settings, candidate: str | None) -> ApiError | None:
    """The 401 to answer, or None when the key is good (or keys are off)."""
    if settings.auth_disabled:
        return None
    if candidate and key_matches(candidate, settings.api_keys):
        return None
    return ApiError(
        401,
        "unauthorized",
        "Missing or invalid API key: send it in the 'apikey' (or 'X-API-Key') header",
        headers={"WWW-Authenticate": "ApiKey"},
    )


def request_key(request: Request) -> str | None:
    """The key a request carries: the first non-empty of the key headers."""
    return next((value for h in KEY_HEADERS if (value := request.headers.get(h))), None)


async def require_api_key(
    request: Request,
    apikey: str | None = Security(_APIKEY),
    x_api_key: str | None = Security(_X_API_KEY),
) -> None:
    """FastAPI dependency guarding /api/v1/video/*. The header parameters declare the schemes
    for /docs; the key is read the one way the 401 handler in errors.py reads it too."""
    rejection = key_rejection(request.app.state.settings, request_key(request))
    if rejection is not None:
        raise rejection
