"""Which client metadata a worker sees: the one filter both engines use."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

V = TypeVar("V")  # str (HTTP/2 headers) or str | bytes (grpc.aio metadata, binary values as bytes)

# headers of this hop, not of the call: each hop writes its own (PITFALLS: grpc.aio refuses some of them, and
# grpc-timeout is recomputed from what is left of the deadline, grpc-encoding describes bytes we re-frame)
HOP_HEADERS = frozenset({"user-agent", "te", "content-type", "content-length"})


def forwarded_metadata(headers: Iterable[tuple[str, V]]) -> list[tuple[str, V]]:
    """The client's metadata to send on to the worker: no pseudo-headers, no hop headers, no grpc-* headers."""
    return [(k, v) for k, v in headers
            if k and k[0] != ":" and not k.startswith("grpc-") and k not in HOP_HEADERS]


def api_key(metadata: Iterable[tuple[str, str | bytes]]) -> str:
    """The caller's API key as the RTP-LLM frontend reads it: `x-api-key`, `api-key`, else a Bearer token."""
    found: dict[str, str] = {}
    for k, v in metadata:
        key = k.lower()
        if key in ("x-api-key", "api-key", "authorization") and key not in found:
            found[key] = v.decode("latin-1") if isinstance(v, bytes) else v
    for name in ("x-api-key", "api-key"):
        if found.get(name):
            return found[name].strip()
    auth = found.get("authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else ""
