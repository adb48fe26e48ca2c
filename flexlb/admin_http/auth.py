"""Who may call a mutating admin endpoint: the Bearer token holder, or loopback callers when no token is set."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.Response]]

MISSING_TOKEN = "missing bearer token (Authorization: Bearer <token>)"
WRONG_TOKEN = "wrong bearer token"
LOOPBACK_ONLY = "no admin token is configured: only loopback callers are accepted"


def is_loopback(remote: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback (a dual-stack socket shows 127.0.0.1 as ::ffff:127.0.0.1)."""
    if not remote:
        return False
    try:
        ip = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def refusal(request: web.Request, token: str | None) -> str | None:
    """None when the caller may proceed, else why not (the body of the 401)."""
    if token:
        scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return MISSING_TOKEN
        # aiohttp decodes header bytes with surrogateescape: encoding the same way never raises on odd bytes
        if not hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), token.encode()):
            return WRONG_TOKEN
        return None
    # request.remote is the socket's peer; X-Forwarded-For is never consulted, so it cannot be spoofed
    return None if is_loopback(request.remote) else LOOPBACK_ONLY


def guard(handler: Handler, token: Callable[[], str | None], shape: Mapping[str, object] | None = None) -> Handler:
    """`handler` behind the check, made before the body is read; a refusal is 401 {**shape, "error": reason}."""

    async def checked(request: web.Request) -> web.Response:
        why = refusal(request, token())
        if why is None:
            return await handler(request)
        # RFC 6750: a 401 names the scheme it wants
        return web.json_response({**(shape or {}), "error": why}, status=401,
                                 headers={"WWW-Authenticate": 'Bearer realm="flexlb-admin"'})

    return checked
