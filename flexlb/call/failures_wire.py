"""The engine ErrorCode of a failed call, read from the worker's trailers (the protobuf half of failures).

RTP-LLM workers end a failed call with a non-OK status and the binary trailer `grpc-status-details-bin`
holding a serialized ErrorDetailsPB (1: error_code, 2: error_message), not a google.rpc.Status. The
grpcio engine hands trailers over with the value as raw bytes; the HTTP/2 frame engine as the header's
text, which for a `-bin` header is base64 (unpadded by the spec, padded by some senders). Nothing here
raises on what a worker sends: garbage is None. Kept out of flexlb/balancer so the pure core imports
no protobuf; the classification itself is flexlb/balancer/failures.py.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable

from google.protobuf.message import DecodeError

from flexlb.balancer.failures import FailureKind, classify
from flexlb.pb import model_rpc_service_pb2 as pb
from flexlb.wire import ERROR_DETAILS_TRAILER

_MAX_DETAILS_BYTES = 64 * 1024  # an ErrorDetailsPB is a number and a message; more is not one


def _details_bytes(value: str | bytes) -> bytes | None:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    text = value.strip()
    if "," in text:
        text = text.split(",", 1)[0].strip()  # several values of one -bin header, comma-joined: the first
    if len(text) > _MAX_DETAILS_BYTES * 2:
        return None
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def engine_code_from_details(raw: bytes) -> int | None:
    """error_code of a serialized ErrorDetailsPB; None when absent, 0 (NONE_ERROR) or not parseable."""
    if not raw or len(raw) > _MAX_DETAILS_BYTES:
        return None
    try:
        code = pb.ErrorDetailsPB.FromString(raw).error_code
    except (DecodeError, ValueError, TypeError, RuntimeError):
        return None
    return int(code) or None


def engine_code_from_trailers(trailers: Iterable[tuple[str, str | bytes]] | None) -> int | None:
    """The engine ErrorCode a worker reported in `grpc-status-details-bin`, if any (first such trailer)."""
    if not trailers:
        return None
    for key, value in trailers:
        if isinstance(key, bytes):
            key = key.decode("latin-1")
        if key.lower() != ERROR_DETAILS_TRAILER:
            continue
        raw = _details_bytes(value)
        return engine_code_from_details(raw) if raw is not None else None
    return None


def classify_trailers(grpc_code_name: str, trailers: Iterable[tuple[str, str | bytes]] | None, *,
                      client_ended: bool = False) -> FailureKind:
    """classify() of a status and the trailers it came with."""
    return classify(grpc_code_name, engine_code_from_trailers(trailers), client_ended=client_ended)
