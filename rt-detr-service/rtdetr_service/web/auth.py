"""API-key check for control routes and /metrics: constant-time, header only, never logged."""

from __future__ import annotations

import hmac

from fastapi import FastAPI, Request, Security
from fastapi.security import APIKeyHeader

from rtdetr_service.web.deps import get_settings
from rtdetr_service.web.errors import ApiError, error_response

KEY_HEADERS = ("apikey", "x-api-key")


def key_matches(candidate: str, keys) -> bool:
    """True if candidate equals one of keys; every key is compared, so timing reveals nothing."""
    given = candidate.encode()
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, key.get_secret_value().encode())
    return found


PROTECTED_PREFIX = "/api/v1"  # sessions, zones, counts, events, outputs: all of it needs a key

# Declared on the control router as security schemes, so that /docs offers "Authorize". The key
# itself is checked once, by the middleware below.
_APIKEY = APIKeyHeader(name="apikey", scheme_name="apikey", auto_error=False, description="An API key.")
_X_API_KEY = APIKeyHeader(name="X-API-Key", scheme_name="X-API-Key", auto_error=False, description="An API key.")
API_KEY_SCHEMES = [Security(_APIKEY), Security(_X_API_KEY)]


def key_rejection(settings, candidate: str | None) -> ApiError | None:
    """The 401 to answer, or None when the key is good (or keys are off)."""
    if settings.auth_disabled:
        return None
    if candidate and key_matches(candidate, settings.api_keys):
        return None
    return ApiError("unauthorized", "Missing or invalid API key: send it in the 'apikey' (or 'X-API-Key') header")


def request_key(request: Request) -> str | None:
    """The key a request carries: the first non-empty of the key headers."""
    return next((value for h in KEY_HEADERS if (value := request.headers.get(h))), None)


METRICS_PATH = "/metrics"


def metrics_key(request: Request) -> str | None:
    """/metrics also takes `Authorization: Bearer <key>`: what Prometheus sends for a scrape
    job's `authorization: {credentials: <key>}`."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    bearer = credentials.strip() if scheme.lower() == "bearer" else None
    return request_key(request) or bearer or None


def install_api_key_check(app: FastAPI) -> None:
    """Every request under /api/v1 needs a key, checked before anything reads its body (a
    route dependency would run after FastAPI has parsed the JSON, so a caller without a key
    would learn what is wrong with its body) and before routing (unknown paths say 401 too)."""

    @app.middleware("http")
    async def require_api_key(request: Request, call_next):
        path = request.url.path
        settings = await get_settings(request)
        rejection = None
        if path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/"):
            rejection = key_rejection(settings, request_key(request))
        elif path == METRICS_PATH and settings.metrics_require_key:
            # Metrics name every session id: with an id, a key holder's calls (and a viewer
            # token, from the start answer) are one step away. Readers need a key too.
            rejection = key_rejection(settings, metrics_key(request))
        if rejection is not None:
            return error_response(rejection.code, rejection.detail)
        return await call_next(request)
