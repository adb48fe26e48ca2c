"""Pure helpers of the HTTP/2 frame relay: frame bytes, grpc-timeout, status message encoding."""

from __future__ import annotations

import struct

import pytest

from flexlb.relay.h2 import frames as f


def test_frame_header_layout() -> None:
    payload = b"x" * 70_000
    raw = f.frame(f.DATA, f.FLAG_END_STREAM, 5, payload)
    length = int.from_bytes(raw[:3], "big")
    assert (length, raw[3], raw[4], int.from_bytes(raw[5:9], "big")) == (70_000, f.DATA, 1, 5)
    assert raw[9:] == payload


def test_settings_round_trip() -> None:
    raw = f.settings_frame({f.SETTINGS_INITIAL_WINDOW_SIZE: 1 << 20, f.SETTINGS_ENABLE_PUSH: 0})
    assert f.parse_settings(raw[9:]) == {f.SETTINGS_INITIAL_WINDOW_SIZE: 1 << 20, f.SETTINGS_ENABLE_PUSH: 0}


def test_window_update_and_rst() -> None:
    assert struct.unpack(">I", f.window_update(3, 1000)[9:]) == (1000,)
    assert f.rst_stream(7, f.CANCEL)[3] == f.RST_STREAM and f.rst_stream(7, f.CANCEL)[9:] == b"\x00\x00\x00\x08"


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("100m", 0.1), ("5S", 5.0), ("2M", 120.0), ("1H", 3600.0), ("250u", 250e-6), ("7n", 7e-9)],
)
def test_parse_grpc_timeout(header: str, seconds: float) -> None:
    assert f.parse_grpc_timeout(header) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "m", "10", "10x", "-5m", "123456789m", "1.5S", "\u00b2S", "\uff11S"])
def test_parse_grpc_timeout_rejects_malformed(bad: str) -> None:
    assert f.parse_grpc_timeout(bad) is None


@pytest.mark.parametrize("seconds", [1e-6, 0.0123, 1.5, 30.0, 99.0, 1e5, 1e9])
def test_format_grpc_timeout_round_trips_within_a_unit(seconds: float) -> None:
    text = f.format_grpc_timeout(seconds)
    assert len(text) <= 9  # at most 8 digits plus the unit
    parsed = f.parse_grpc_timeout(text)
    assert parsed is not None
    assert parsed <= seconds + 1e-9 and parsed >= min(seconds, 99_999_999) * 0.999 - 1e-6


def test_grpc_message_is_percent_encoded() -> None:
    assert f.encode_grpc_message("ok: 100% done\n") == "ok: 100%25 done%0A"
    assert f.encode_grpc_message("ünï") == "%C3%BCn%C3%AF"


def test_binary_header_value_is_unpadded_base64() -> None:
    assert f.binary_header_value(b"\x00\x01") == "AAE"


def test_grpc_message_frame() -> None:
    assert f.grpc_message_frame(b"abc") == b"\x00\x00\x00\x00\x03abc"
