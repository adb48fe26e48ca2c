"""The C block-key hash (flexlb/balancer/_blockhash.c) against the pure-Python reference."""

from __future__ import annotations

import array
import importlib
import logging
import pickle
import random
import sys
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flexlb.balancer import prefix
from flexlb.balancer._blockhash import block_keys as c_block_keys
from flexlb.balancer.prefix import block_keys, rtp_block_keys
from flexlb.pb import model_rpc_service_pb2 as pb
from tests.test_prefix import VECTOR_KEYS, VECTOR_TOKENS, reference_keys

INT32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
WIDE = st.integers(min_value=-(2**70), max_value=2**70)  # beyond int64 too: only the low 32 bits count


def test_fast_path_in_use() -> None:
    # CI builds the extension (`pip install -e .`); the reference fallback must never be what runs there
    assert prefix.FAST_BLOCK_KEYS
    assert prefix._fast is c_block_keys


def test_section6_vectors() -> None:
    assert block_keys(VECTOR_TOKENS, 4) == VECTOR_KEYS
    for extra in range(1, 4):
        assert block_keys(VECTOR_TOKENS + [42] * extra, 4) == VECTOR_KEYS


def test_single_token_chain_vector() -> None:
    keys = block_keys([i * 7919 for i in range(1000)], 1)
    assert len(keys) == 1000
    assert keys[-1] == 3496543365836979123


def test_tokens_wrap_to_int32() -> None:
    wrapped = [*VECTOR_TOKENS[:16], 2**32 - 1, 7, 123456, -(2**31) - 1]
    assert block_keys(wrapped, 4) == VECTOR_KEYS
    assert block_keys([2**100 + 5, -(2**64) + 6, 7, 8], 2) == block_keys([5, 6, 7, 8], 2)


@settings(max_examples=300, deadline=None)
@given(st.lists(INT32, max_size=600), st.integers(min_value=1, max_value=70))
def test_matches_reference_int32(tokens: list[int], block_size: int) -> None:
    expected = rtp_block_keys(tokens, block_size)
    assert expected == reference_keys(tokens, block_size)
    assert block_keys(tokens, block_size) == expected
    assert block_keys(tuple(tokens), block_size) == expected
    assert block_keys(array.array("i", tokens), block_size) == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(WIDE, max_size=600), st.integers(min_value=1, max_value=70))
def test_matches_reference_wide_ints(tokens: list[int], block_size: int) -> None:
    assert block_keys(tokens, block_size) == rtp_block_keys(tokens, block_size)


def test_extreme_values() -> None:
    tokens = [0, -1, 2**31 - 1, -(2**31), 2**32, 2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**64) - 1] * 7
    for block_size in (1, 3, 10, 70):
        assert block_keys(tokens, block_size) == rtp_block_keys(tokens, block_size)


def random_tokens(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(0, 152_000) for _ in range(n)]


@pytest.mark.parametrize("block_size", [1, 4, 16, 64])
def test_protobuf_repeated_field(block_size: int) -> None:
    tokens = [*random_tokens(1000, block_size), -1, -(2**31), 2**31 - 1]
    inp = pb.GenerateInputPB(request_id=1, token_ids=tokens)
    assert type(inp.token_ids).__name__.startswith("Repeated")
    assert block_keys(inp.token_ids, block_size) == rtp_block_keys(tokens, block_size)
    # and after a wire round trip, which is how the gateway gets it
    parsed = pb.GenerateInputPB.FromString(inp.SerializeToString())
    assert block_keys(parsed.token_ids, block_size) == rtp_block_keys(tokens, block_size)


def test_int32_buffers() -> None:
    tokens = [*random_tokens(777, 7), -5, 2**31 - 1, -(2**31)]
    arr = array.array("i", tokens)
    for block_size in (1, 5, 64):
        expected = rtp_block_keys(tokens, block_size)
        assert block_keys(arr, block_size) == expected
        assert block_keys(memoryview(arr), block_size) == expected
    # PickleBuffer exports a buffer but is not iterable, so this proves the buffer path is taken
    assert block_keys(pickle.PickleBuffer(arr), 5) == rtp_block_keys(tokens, 5)  # type: ignore[arg-type]
    # a strided view takes the buffer path with a stride of 8 bytes
    assert block_keys(memoryview(arr)[::2], 3) == rtp_block_keys(tokens[::2], 3)
    assert block_keys(memoryview(arr)[::-1], 3) == rtp_block_keys(tokens[::-1], 3)


def test_other_buffers_hash_their_values() -> None:
    # buffers that are not native int32 fall back to item-by-item ints, so the keys still follow the values
    tokens = random_tokens(200, 3)
    assert block_keys(array.array("q", tokens), 8) == rtp_block_keys(tokens, 8)
    assert block_keys(array.array("I", [t % 2**32 for t in [-1, *tokens]]), 8) == rtp_block_keys([-1, *tokens], 8)
    assert block_keys(bytes(range(64)), 16) == rtp_block_keys(list(range(64)), 16)
    # a 2-D int32 buffer is not a token list: its items are rows
    with pytest.raises((TypeError, NotImplementedError)):
        block_keys(memoryview(array.array("i", tokens)).cast("B").cast("i", (10, 20)), 4)


def test_numpy_arrays() -> None:
    np = pytest.importorskip("numpy")
    tokens = [*random_tokens(999, 11), -1, -(2**31), 2**31 - 1]
    for block_size in (1, 16, 64):
        expected = rtp_block_keys(tokens, block_size)
        assert block_keys(np.array(tokens, dtype=np.int32), block_size) == expected
        assert block_keys(np.array(tokens, dtype=np.int32).astype(">i4"), block_size) == expected  # byte-swapped
        assert block_keys(np.array(tokens, dtype=np.int64), block_size) == expected
        assert block_keys(np.array(tokens, dtype=np.int32)[::3], block_size) == rtp_block_keys(tokens[::3], block_size)
    rows = np.array(tokens[:64], dtype=np.int32).reshape(4, 16)
    assert block_keys(rows[0], 4) == rtp_block_keys(tokens[:16], 4)
    with pytest.raises(TypeError):
        block_keys(rows, 4)  # 2-D: the caller picks the row (§6 step 1)


@pytest.mark.parametrize("bad", [1.0, "1", None, b"\x01", Fraction(1, 1), [1]])
def test_rejects_non_int_items(bad: object) -> None:
    with pytest.raises(TypeError):
        block_keys([1, 2, 3, bad, 5, 6, 7, 8], 4)  # type: ignore[list-item]


def test_rejects_non_sequences() -> None:
    with pytest.raises(TypeError):
        block_keys(5, 4)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        block_keys([1, 2], "4")  # type: ignore[arg-type]


def test_degenerate_inputs() -> None:
    assert block_keys([], 4) == []
    assert block_keys([1, 2, 3], 4) == []
    assert block_keys(VECTOR_TOKENS, 0) == []
    assert block_keys(VECTOR_TOKENS, -4) == []
    assert block_keys(array.array("i", VECTOR_TOKENS), 0) == []
    assert block_keys(VECTOR_TOKENS, 2**62) == []
    assert block_keys(iter(VECTOR_TOKENS), 4) == VECTOR_KEYS


def test_bool_and_index_types_are_ints() -> None:
    class Tok:
        def __init__(self, v: int) -> None:
            self.v = v

        def __index__(self) -> int:
            return self.v

    assert block_keys([True, False, True, False], 2) == rtp_block_keys([1, 0, 1, 0], 2)
    assert block_keys([Tok(t) for t in VECTOR_TOKENS], 4) == VECTOR_KEYS


def test_reference_fallback_accepts_the_same_inputs() -> None:
    # what runs if the extension is missing must behave like the extension
    assert prefix._reference_any(array.array("i", VECTOR_TOKENS), 4) == VECTOR_KEYS
    assert prefix._reference_any(pb.GenerateInputPB(token_ids=VECTOR_TOKENS).token_ids, 4) == VECTOR_KEYS
    with pytest.raises(TypeError):
        prefix._reference_any([1, 2, 3, 1.0], 4)  # type: ignore[list-item]


def test_missing_extension_falls_back_with_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # a None entry in sys.modules makes the import raise ImportError, as in an unbuilt tree
    monkeypatch.setitem(sys.modules, "flexlb.balancer._blockhash", None)
    try:
        with caplog.at_level(logging.WARNING, logger="flexlb.balancer"):
            importlib.reload(prefix)
        assert not prefix.FAST_BLOCK_KEYS
        assert "C block-key hash unavailable" in caplog.text
        assert prefix.block_keys(VECTOR_TOKENS, 4) == VECTOR_KEYS
    finally:
        monkeypatch.undo()
        importlib.reload(prefix)
    assert prefix.FAST_BLOCK_KEYS
    assert prefix._fast is c_block_keys


# ---------------------------------------------------------------------------------------------- from wire bytes


def _wire_request(tokens: list[int]) -> bytes:
    from flexlb.pb import model_rpc_service_pb2 as pb

    return pb.GenerateInputPB(
        request_id=7, token_ids=tokens, client_id="c", generate_config=pb.GenerateConfigPB(max_new_tokens=3)
    ).SerializeToString()


@given(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=400), st.integers(1, 40))
def test_prompt_block_keys_from_wire_bytes_match_reference(tokens: list[int], block: int) -> None:
    from flexlb.balancer.prefix import prompt_block_keys

    n, keys = prompt_block_keys(_wire_request(tokens), block)
    assert n == len(tokens)
    assert keys == rtp_block_keys(tokens, block)


def test_prompt_block_keys_reads_unpacked_tokens_and_skips_other_fields() -> None:
    from flexlb.balancer.prefix import prompt_block_keys

    # field 2 written unpacked (tag 0x10 per token) between other fields: a reader must accept it
    unpacked = b"\x08\x07" + b"".join(b"\x10" + bytes([t]) for t in (1, 2, 3, 4)) + b"\x2a\x01c"
    assert prompt_block_keys(unpacked, 4) == (4, rtp_block_keys([1, 2, 3, 4], 4))
    assert prompt_block_keys(b"", 4) == (0, [])


@pytest.mark.parametrize("bad", [b"\x12\xff", b"\x10", b"\x0b", b"\x09\x00\x00"])
def test_prompt_block_keys_rejects_malformed_bytes(bad: bytes) -> None:
    from flexlb.balancer.prefix import prompt_block_keys

    with pytest.raises(ValueError, match="not a valid GenerateInputPB"):
        prompt_block_keys(bad, 4)
