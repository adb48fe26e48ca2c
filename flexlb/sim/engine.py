"""The simulated inference engine: FIFO timing model and per-worker LRU prefix cache.

Pure (no grpc, no asyncio), so the mock worker and the offline simulator share it.
Prefill time = a + b·uncached_tokens + c·cached_tokens, one prompt at a time; one decode step of the
running batch takes d + e·batch_size. Output tokens are a deterministic function of the prompt.
The continuous-batching model (flexlb/sim/batching.py) uses the same prefix cache and output tokens.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from flexlb.balancer.prefix import block_keys

VOCAB_SIZE = 32000


@dataclass(frozen=True)
class EngineParams:
    """Timing and capacity of one simulated worker (milliseconds at time scale 1)."""

    prefill_base_ms: float = 20.0
    prefill_ms_per_uncached_token: float = 0.1
    prefill_ms_per_cached_token: float = 0.0
    decode_step_base_ms: float = 10.0
    decode_step_ms_per_running: float = 0.2
    kv_transfer_ms_per_token: float = 0.005
    block_size_tokens: int = 64
    cache_capacity_blocks: int = 4096

    def prefill_ms(self, uncached_tokens: int, cached_tokens: int) -> float:
        """Time to prefill a prompt given how much of it is already cached."""
        return (
            self.prefill_base_ms
            + self.prefill_ms_per_uncached_token * uncached_tokens
            + self.prefill_ms_per_cached_token * cached_tokens
        )

    def decode_step_ms(self, running: int) -> float:
        """Time of one decode step when `running` sequences share the batch."""
        return self.decode_step_base_ms + self.decode_step_ms_per_running * max(running, 1)


class PrefixCache:
    """LRU set of block keys; a prompt hits the longest chain of its leading blocks present."""

    def __init__(self, capacity_blocks: int) -> None:
        self.capacity_blocks = capacity_blocks
        self._blocks: OrderedDict[int, None] = OrderedDict()
        self.version = 0

    def __len__(self) -> int:
        return len(self._blocks)

    def match_blocks(self, keys: Sequence[int]) -> int:
        """How many leading blocks of `keys` are cached (keys are chained, so a prefix match)."""
        n = 0
        for k in keys:
            if k not in self._blocks:
                break
            n += 1
        return n

    def insert(self, keys: Sequence[int]) -> None:
        """Record blocks as cached (most recently used), evicting the least recently used."""
        if not keys or self.capacity_blocks <= 0:
            return
        for k in keys:
            if k in self._blocks:
                self._blocks.move_to_end(k)
            else:
                self._blocks[k] = None
        while len(self._blocks) > self.capacity_blocks:
            self._blocks.popitem(last=False)
        self.version += 1

    def keys(self) -> list[int]:
        """Every cached block key."""
        return list(self._blocks)


@dataclass(frozen=True)
class PrefillPlan:
    """What prefilling one prompt costs on a worker, decided when the prefill starts."""

    block_keys: tuple[int, ...]
    cached_tokens: int
    uncached_tokens: int
    duration_ms: float


def plan_prefill(params: EngineParams, cache: PrefixCache, token_ids: Sequence[int]) -> PrefillPlan:
    """Match the prompt against the cache and price the prefill."""
    return plan_prefill_keys(params, cache, tuple(block_keys(token_ids, params.block_size_tokens)), len(token_ids))


def plan_prefill_keys(params: EngineParams, cache: PrefixCache, keys: tuple[int, ...], n_tokens: int) -> PrefillPlan:
    """Same as plan_prefill for a prompt already cut into block keys (the simulator keys once)."""
    cached_tokens = cache.match_blocks(keys) * params.block_size_tokens
    # the last token is always computed, even on a full hit (it produces the first output token)
    cached_tokens = min(cached_tokens, max(n_tokens - 1, 0))
    uncached = n_tokens - cached_tokens
    return PrefillPlan(keys, cached_tokens, uncached, params.prefill_ms(uncached, cached_tokens))


def output_token(token_ids: Sequence[int], index: int, row: int = 0) -> int:
    """The index-th generated token of return sequence `row`: deterministic in the prompt, the same on every worker."""
    seed = len(token_ids) * 1_000_003 + sum(token_ids[:16]) + sum(token_ids[-16:])
    return (seed + (index + 1) * 7919 + row * 104_729) % VOCAB_SIZE


def int32_tensor_bytes(values: Sequence[int]) -> bytes:
    """Little-endian int32 buffer for TensorPB.int32_data."""
    return struct.pack(f"<{len(values)}i", *values)
