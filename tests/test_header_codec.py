"""The frame relay's HPACK codec: interoperates with the `hpack` library both ways, enforces its limits while
decoding (never after), and reports every RFC 7541 violation as a COMPRESSION_ERROR."""

from __future__ import annotations

import random

import hpack
import pytest

from flexlb.ratelog import RateLimitedLog
from flexlb.relay.h2.header_codec import CompressionError, Decoder, Encoder, FieldLimitExceeded

GRPC_REQUEST = [
    (":method", "POST"), (":scheme", "http"), (":path", "/RpcService/GenerateStreamCall"),
    (":authority", "127.0.0.1:7003"), ("te", "trailers"), ("content-type", "application/grpc"),
    ("user-agent", "grpc-python/1.85"), ("grpc-timeout", "10S"), ("x-trace-bin", "AAE"),
    ("grpc-message", "a%20b"),
]


def _random_headers(rng: random.Random) -> list[tuple[str, str]]:
    extra = [(f"x-h{rng.randint(0, 40)}", "v" * rng.randint(0, 500)) for _ in range(rng.randint(0, 4))]
    return GRPC_REQUEST + extra


def test_our_encoder_is_read_by_the_hpack_library_and_by_us() -> None:
    rng = random.Random(3)
    enc, theirs, ours = Encoder(), hpack.Decoder(), Decoder()
    for i in range(1500):
        if i % 300 == 299:
            enc.set_table_size(rng.choice([0, 256, 4096]))  # the peer shrinks or grows our table
        headers = _random_headers(rng)
        block = enc.encode(headers)
        assert [(str(k), str(v)) for k, v in theirs.decode(block)] == headers
        assert ours.decode(block, 65536, 100) == (headers, None)


def test_we_read_the_hpack_library_with_huffman_and_indexing() -> None:
    rng = random.Random(4)
    enc, ours = hpack.Encoder(), Decoder()
    for _ in range(1500):
        headers = _random_headers(rng)
        assert ours.decode(enc.encode(headers, huffman=rng.random() < 0.5), 65536, 100) == (headers, None)


def test_every_octet_survives_a_round_trip() -> None:
    value = bytes(range(32, 256)).decode("latin-1")
    block = Encoder().encode([("x-raw", value)])
    assert Decoder().decode(block, 65536, 100) == ([("x-raw", value)], None)


def test_too_many_fields_is_reported_and_the_table_stays_in_step() -> None:
    enc, dec = Encoder(), Decoder()
    big = [(f"x-{i}", "1") for i in range(150)]  # indexed: the decoder must still add every entry
    headers, over = dec.decode(enc.encode(big), 65536, 100)
    assert (headers, over) == ([], "more than 100 header fields")
    # the next block refers to entries added by the refused one
    assert dec.decode(enc.encode(big[-3:]), 65536, 100) == (big[-3:], None)


def test_decoded_size_limit_counts_32_bytes_per_field() -> None:
    fields = [("x-a", "b" * 60)] * 10  # 10 x (3 + 60 + 32) = 950 bytes decoded
    block = Encoder().encode(fields)
    assert Decoder().decode(block, 950, 100) == (fields, None)
    assert Decoder().decode(block, 949, 100)[1] == "header list larger than 949 bytes"


def test_a_block_of_empty_literals_is_cut_short_not_decoded_to_the_end() -> None:
    block = b"\x00\x00\x00" * 21_845  # 64 KiB of empty-name, empty-value literals
    # decoding stops at twice the field limit, not at the end of the block
    with pytest.raises(FieldLimitExceeded, match="more than 200 header fields"):
        Decoder().decode(block, 65536, 100)


@pytest.mark.parametrize(("block", "why"), [
    (b"\x80", "index 0"),
    (b"\xbf\x7f", "beyond the table"),
    (b"\x82\x3f\xe1\x1f", "table size update after a field"),
    (b"\x3f\xe2\x1f", "above SETTINGS_HEADER_TABLE_SIZE"),
    (b"\x00\x81\xff\x00", "Huffman"),  # a name of one Huffman byte that is all padding
    (b"\x00\x05abc", "longer than the block"),
    (b"\xff\xff\xff\xff\xff\xff\x0f", "too large"),
    (b"\x40", "truncated"),
])
def test_invalid_hpack_is_a_compression_error(block: bytes, why: str) -> None:
    with pytest.raises(CompressionError, match=why):
        Decoder().decode(block, 65536, 100)


def test_rate_limited_log_holds_back_repeats_and_says_how_many() -> None:
    now = [0.0]
    lines: list[str] = []

    class Sink:
        def log(self, level: int, message: str, *args: object) -> None:
            lines.append(message % args)

    log = RateLimitedLog(Sink(), interval_s=10.0, clock=lambda: now[0])  # type: ignore[arg-type]
    assert log.log(20, "k", "bad frame %s", 1)
    assert not log.log(20, "k", "bad frame %s", 2)
    assert not log.log(20, "k", "bad frame %s", 3)
    assert log.log(20, "other", "other %s", 1)  # keys are independent
    now[0] = 10.5
    assert log.log(20, "k", "bad frame %s", 4)
    assert lines == ["bad frame 1", "other 1", "bad frame 4 (2 more like this in the last 10 s)"]
