"""The one way admin POST handlers read a JSON object body: bounded in size, depth and time; bad input is a 4xx."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from aiohttp import web

# json.loads recurses once per nesting level: 100k levels raise RecursionError (a 500), so depth is checked first
MAX_JSON_DEPTH = 64

ErrorResponse = Callable[[int, str], web.Response]

# a JSON string (escapes included; an unterminated one runs to the end) or one bracket
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"?|[\[\]{}]', re.DOTALL)


class BodyTimeout(TimeoutError):
    """The body did not arrive in time; set on the payload by the connection guard so a pending read raises it."""


def error_response(status: int, reason: str) -> web.Response:
    """The admin endpoints' error shape: {"error": reason}."""
    return web.json_response({"error": reason}, status=status)


def json_depth_exceeds(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when brackets outside strings nest deeper than `limit` (a linear scan, no recursion)."""
    depth = 0
    for m in _TOKEN.finditer(raw):
        c = m.group()
        if c in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif c in (b"]", b"}"):
            depth -= 1
    return False


def _closing(resp: web.Response) -> web.Response:
    # the rest of the body is not wanted: the connection is not reused after this answer
    resp.force_close()
    return resp


async def read_json_object(
    request: web.Request, error: ErrorResponse = error_response, max_depth: int = MAX_JSON_DEPTH
) -> dict[str, Any] | web.Response:
    """The body as a JSON object, or the 400/408/413 response that says why not."""
    limit = request.client_max_size
    if request.content_length is not None and limit and request.content_length > limit:
        return _closing(error(413, f"body is {request.content_length} bytes; the limit is {limit}"))
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _closing(error(413, f"body is over the {limit}-byte limit"))
    except BodyTimeout as exc:
        return _closing(error(408, str(exc)))
    if json_depth_exceeds(raw, max_depth):
        return error(400, f"body is not valid JSON: nested deeper than {max_depth} levels")
    try:
        body = json.loads(raw.decode(request.charset or "utf-8"))
    except LookupError:
        return error(400, f"body is not valid JSON: unknown charset {request.charset!r}")
    except (ValueError, RecursionError) as exc:
        # ValueError covers bad JSON, bad UTF-8 and integers over Python's 4300-digit limit
        return error(400, f"body is not valid JSON: {exc}")
    if not isinstance(body, dict):
        return error(400, "body must be a JSON object")
    return body
