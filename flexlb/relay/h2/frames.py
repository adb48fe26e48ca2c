"""HTTP/2 (RFC 9113) frame constants and helpers, plus gRPC's 5-byte message framing."""

from __future__ import annotations

import base64
import re
import struct
import urllib.parse

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

FLAG_END_STREAM = 0x1
FLAG_ACK = 0x1
FLAG_END_HEADERS = 0x4
FLAG_PADDED = 0x8
FLAG_PRIORITY = 0x20

SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6

# RST_STREAM / GOAWAY error codes
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
SETTINGS_TIMEOUT = 0x4
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB

ERROR_NAMES = {0x0: "NO_ERROR", 0x1: "PROTOCOL_ERROR", 0x2: "INTERNAL_ERROR", 0x3: "FLOW_CONTROL_ERROR",
               0x4: "SETTINGS_TIMEOUT", 0x5: "STREAM_CLOSED", 0x6: "FRAME_SIZE_ERROR", 0x7: "REFUSED_STREAM",
               0x8: "CANCEL", 0x9: "COMPRESSION_ERROR", 0xA: "CONNECT_ERROR", 0xB: "ENHANCE_YOUR_CALM",
               0xC: "INADEQUATE_SECURITY", 0xD: "HTTP_1_1_REQUIRED"}

DEFAULT_WINDOW = 65_535
DEFAULT_MAX_FRAME = 16_384
MAX_WINDOW = 2**31 - 1

_HEADER = struct.Struct(">I B B I")  # 24-bit length packed with type into the first 4 bytes


def frame(ftype: int, flags: int, stream_id: int, payload: bytes | bytearray | memoryview = b"") -> bytes:
    """One serialized frame."""
    n = len(payload)
    return bytes((n >> 16 & 0xFF, n >> 8 & 0xFF, n & 0xFF, ftype, flags)) + stream_id.to_bytes(4, "big") + payload


def settings_frame(settings: dict[int, int]) -> bytes:
    """A SETTINGS frame carrying `settings`."""
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in settings.items()))


def window_update(stream_id: int, increment: int) -> bytes:
    """A WINDOW_UPDATE frame."""
    return frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", increment))


def rst_stream(stream_id: int, error_code: int) -> bytes:
    """A RST_STREAM frame."""
    return frame(RST_STREAM, 0, stream_id, struct.pack(">I", error_code))


def goaway(last_stream_id: int, error_code: int, debug: bytes = b"") -> bytes:
    """A GOAWAY frame."""
    return frame(GOAWAY, 0, 0, struct.pack(">II", last_stream_id, error_code) + debug)


def parse_settings(payload: bytes) -> dict[int, int]:
    """Settings identifier → value."""
    return {k: v for k, v in struct.iter_unpack(">HI", payload)}


def grpc_message_frame(message: bytes) -> bytes:
    """gRPC length-prefixed message (uncompressed)."""
    return grpc_prefix(len(message)) + message


def grpc_prefix(length: int) -> bytes:
    """The 5-byte prefix of an uncompressed gRPC message of `length` bytes."""
    return b"\x00" + length.to_bytes(4, "big")


_TIMEOUT_UNITS_S = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_TIMEOUT = re.compile(r"[0-9]{1,8}[HMSmun]")


def parse_grpc_timeout(value: str) -> float | None:
    """Seconds from a grpc-timeout header ('100m', '5S', ...); None if malformed."""
    if _TIMEOUT.fullmatch(value) is None:  # ASCII digits only: str.isdigit() accepts '²', which int() refuses
        return None
    return int(value[:-1]) * _TIMEOUT_UNITS_S[value[-1]]


def format_grpc_timeout(seconds: float) -> str:
    """A grpc-timeout header value (at most 8 digits, as the spec requires)."""
    us = max(1, int(seconds * 1e6))
    if us < 100_000_000:
        return f"{us}u"
    ms = us // 1000
    if ms < 100_000_000:
        return f"{ms}m"
    return f"{min(ms // 1000, 99_999_999)}S"


def encode_grpc_message(message: str) -> str:
    """Percent-encode a status message for the grpc-message header."""
    return urllib.parse.quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")


def binary_header_value(value: bytes) -> str:
    """The wire form of a `-bin` header value (base64, unpadded)."""
    return base64.b64encode(value).decode().rstrip("=")
