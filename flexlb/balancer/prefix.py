"""KV block keys by RTP-LLM's chained hash (rtp-llm-wire.md §6)."""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Iterable, Sequence
from typing import SupportsIndex

log = logging.getLogger("flexlb.balancer")

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def rtp_block_keys(token_ids: Sequence[int], block_size: int) -> list[int]:
    """Signed 64-bit keys of every full block, chained: key k hashes blocks 0..k (reference version)."""
    if block_size <= 0:
        return []
    keys: list[int] = []
    h = 0  # unsigned 64-bit state
    full = len(token_ids) - len(token_ids) % block_size
    for start in range(0, full, block_size):
        for t in token_ids[start : start + block_size]:
            v = t & 0xFFFFFFFF
            if v & 0x80000000:
                v |= 0xFFFFFFFF00000000  # int32 sign-extended to 64 bits
            shifted = h >> 32
            if h & 0x8000000000000000:
                shifted |= 0xFFFFFFFF00000000  # arithmetic shift of the signed state
            h ^= (v + _GOLDEN + ((h << 12) & _MASK) + shifted) & _MASK
        keys.append(h - (1 << 64) if h & 0x8000000000000000 else h)
    return keys


def _reference_any(token_ids: Iterable[SupportsIndex], block_size: int) -> list[int]:
    # same inputs as the C version: any iterable (buffers, numpy) and TypeError on non-integers
    return rtp_block_keys(list(map(operator.index, token_ids)), block_size)


_fast: Callable[[Iterable[SupportsIndex], int], list[int]]
_fast_prompt: Callable[[bytes, int], tuple[int, list[int]]] | None
try:
    from flexlb.balancer._blockhash import block_keys as _fast
    from flexlb.balancer._blockhash import prompt_block_keys as _fast_prompt

    FAST_BLOCK_KEYS = True
except ImportError as exc:  # installed without a C compiler, or a source tree never built; routing still works
    log.warning("C block-key hash unavailable (%s): using the pure-Python one (same keys, ~100x slower on long "
                "prompts); install a C compiler and reinstall flexlb (`pip install .`) to build it", exc)
    _fast = _reference_any
    _fast_prompt = None
    FAST_BLOCK_KEYS = False


def block_keys(token_ids: Iterable[SupportsIndex], block_size: int) -> list[int]:
    """Same keys as rtp_block_keys, computed in C; token_ids may be a list, protobuf field or int32 buffer."""
    return _fast(token_ids, block_size)


def prompt_block_keys(request: bytes, block_size: int) -> tuple[int, list[int]]:
    """(token count, keys) of a serialized GenerateInputPB, read from its wire bytes (no per-token objects)."""
    if _fast_prompt is not None:
        return _fast_prompt(request, block_size)
    from flexlb.pb import model_rpc_service_pb2 as pb

    tokens = list(pb.GenerateInputPB.FromString(request).token_ids)
    return len(tokens), rtp_block_keys(tokens, block_size)
