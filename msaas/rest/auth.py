"""Who is asking: API keys (each key a tenant), and how often they may upload (RATE_LIMIT, counted in Redis)."""

from __future__ import annotations

import hashlib
import hmac

from flask import Flask, g, request

from .errors import ApiError

UNAUTHENTICATED = ("api.openapi",)  # the API's description is public; everything else under /apiv1 wants a key


def tenant_id(key: str) -> str:
    """A key's stable id: what records, messages and songhashes carry (never the key itself)."""
    return hashlib.sha256(b"msaas-tenant\0" + key.encode()).hexdigest()[:16]


def authenticate(keys: tuple[str, ...]) -> str | None:
    """The caller's tenant id; with API_KEYS set, `Authorization: Bearer <one of them>` is required (401 otherwise)."""
    if not keys:
        return None
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    given = given.strip()
    if scheme.lower() == "bearer":
        for key in keys:
            if hmac.compare_digest(given.encode(), key.encode()):
                return tenant_id(key)
    raise ApiError(
        401, "an API key is required: send the header Authorization: Bearer <key>", {"WWW-Authenticate": 'Bearer realm="msaas"'}
    )


def caller() -> str:
    """What uploads are counted by: the key's tenant, or the client's address without keys."""
    return getattr(g, "tenant", None) or f"addr:{request.remote_addr}"


def limit_uploads(app: Flask, endpoint: str, rate_limit: str | None, redis_client) -> None:
    """RATE_LIMIT on the upload route, per caller, counted in Redis so that every rest process and replica shares it;
    429 with Retry-After past it. Status polls and downloads are not counted: a client waiting on a job polls often."""
    if not rate_limit:
        return
    from flask_limiter import Limiter

    limiter = Limiter(
        caller,
        app=app,
        storage_uri="redis://",
        storage_options={"connection_pool": redis_client.connection_pool},
        headers_enabled=True,
        key_prefix="ratelimit",
    )
    app.view_functions[endpoint] = limiter.limit(rate_limit, error_message=_too_many)(app.view_functions[endpoint])


def _too_many() -> str:
    return "too many uploads: this key (or address) is over the server's RATE_LIMIT; try again after Retry-After seconds"
