"""RTP-LLM block-key hash (rtp-llm-wire.md §6) and the simulated engine's prefix cache."""

from __future__ import annotations

import random

import pytest

from flexlb.balancer.prefix import rtp_block_keys
from flexlb.sim.engine import VOCAB_SIZE, EngineParams, PrefixCache, output_token, plan_prefill

# §6 test vectors: block size 4, one chain
VECTOR_BLOCKS = [
    [1, 2, 3, 4],
    [5, 6, 7, 8],
    [0, 0, 0, 0],
    [151643, 100, 2000, 30000],
    [-1, 7, 123456, 2147483647],
]
VECTOR_KEYS = [
    455111481605203084,
    6902853672176602142,
    -6574590677616546798,
    -648280674092173341,
    5942405876576080993,
]
VECTOR_TOKENS = [t for block in VECTOR_BLOCKS for t in block]


def reference_keys(token_ids: list[int], block_size: int) -> list[int]:
    """Straight transcription of the §6 algorithm, kept independent of the product code."""
    mask = (1 << 64) - 1
    keys, h = [], 0
    full = len(token_ids) - len(token_ids) % block_size
    for start in range(0, full, block_size):
        for t in token_ids[start : start + block_size]:
            v = (((t + 2**31) % 2**32) - 2**31) & mask
            mix = (v + 0x9E3779B97F4A7C15 + ((h << 12) & mask) + ((h >> 32) & mask)) & mask
            h = (h & mask) ^ mix
            if h >= 1 << 63:
                h -= 1 << 64
        keys.append(h)
    return keys


def test_block_size_4_vectors() -> None:
    assert rtp_block_keys(VECTOR_TOKENS, 4) == VECTOR_KEYS


def test_single_token_chain_vector() -> None:
    tokens = [i * 7919 for i in range(1000)]
    keys = rtp_block_keys(tokens, 1)
    assert len(keys) == 1000
    assert keys[-1] == 3496543365836979123


def test_keys_are_chained_prefixes() -> None:
    # key k depends on blocks 0..k: a prompt sharing the first two blocks shares the first two keys
    assert rtp_block_keys(VECTOR_TOKENS[:8], 4) == VECTOR_KEYS[:2]
    other = [*VECTOR_TOKENS[:8], 9, 9, 9, 9]
    assert rtp_block_keys(other, 4)[:2] == VECTOR_KEYS[:2]
    assert rtp_block_keys(other, 4)[2] != VECTOR_KEYS[2]
    # the same block at another position gets another key (state is not reset between blocks)
    assert rtp_block_keys([5, 6, 7, 8], 4) != [VECTOR_KEYS[1]]


def test_trailing_partial_block_dropped() -> None:
    for extra in range(1, 4):
        assert rtp_block_keys(VECTOR_TOKENS + [42] * extra, 4) == VECTOR_KEYS
    assert rtp_block_keys([1, 2, 3], 4) == []


def test_degenerate_inputs() -> None:
    assert rtp_block_keys([], 4) == []
    assert rtp_block_keys(VECTOR_TOKENS, 0) == []
    assert rtp_block_keys(VECTOR_TOKENS, -4) == []


def test_tokens_are_int32() -> None:
    # a token is read as a signed 32-bit value: 2**32 - 1 is -1, 2**31 is -2**31
    wrapped = [*VECTOR_TOKENS[:16], 2**32 - 1, 7, 123456, -(2**31) - 1]
    assert rtp_block_keys(wrapped, 4) == VECTOR_KEYS


def test_matches_reference_on_random_prompts() -> None:
    rng = random.Random(2024)
    for _ in range(200):
        n = rng.randrange(0, 80)
        block = rng.randrange(1, 9)
        tokens = [rng.randrange(-(2**31), 2**31) for _ in range(n)]
        keys = rtp_block_keys(tokens, block)
        assert keys == reference_keys(tokens, block)
        assert len(keys) == n // block
        assert all(-(2**63) <= k < 2**63 for k in keys)


# ---------------------------------------------------------------------------------------------- PrefixCache


def test_lru_eviction_order() -> None:
    cache = PrefixCache(capacity_blocks=3)
    cache.insert([1, 2, 3])
    assert cache.keys() == [1, 2, 3]
    cache.insert([1])  # touching 1 makes 2 the least recently used
    cache.insert([4])
    assert cache.keys() == [3, 1, 4]
    assert len(cache) == 3
    cache.insert([5, 6])
    assert cache.keys() == [4, 5, 6]
    assert cache.match_blocks([1]) == 0
    # a single insert larger than the capacity keeps its most recent blocks
    cache.insert([10, 11, 12, 13, 14])
    assert cache.keys() == [12, 13, 14]


def test_match_blocks_counts_leading_chain_only() -> None:
    cache = PrefixCache(capacity_blocks=100)
    assert cache.match_blocks([1, 2, 3]) == 0
    cache.insert([1, 3, 4])
    assert cache.match_blocks([1, 2, 3, 4]) == 1
    assert cache.match_blocks([2, 3, 4]) == 0
    assert cache.match_blocks([1, 3, 4, 5]) == 3
    assert cache.match_blocks([]) == 0


def test_match_does_not_touch_lru_order() -> None:
    cache = PrefixCache(capacity_blocks=2)
    cache.insert([1, 2])
    assert cache.match_blocks([1]) == 1
    cache.insert([3])
    assert cache.keys() == [2, 3]


def test_version_increments_on_insert() -> None:
    cache = PrefixCache(capacity_blocks=10)
    assert cache.version == 0
    cache.insert([1, 2])
    assert cache.version == 1
    cache.insert([1, 2])  # a re-insert refreshes recency, which a poller may want to see
    assert cache.version == 2
    cache.insert([])
    assert cache.version == 2
    cache.match_blocks([1, 2])
    assert cache.version == 2


def test_zero_capacity_caches_nothing() -> None:
    cache = PrefixCache(capacity_blocks=0)
    cache.insert([1, 2])
    assert len(cache) == 0
    assert cache.match_blocks([1]) == 0
    assert cache.version == 0


# ---------------------------------------------------------------------------------------------- plan_prefill


PARAMS = EngineParams(
    prefill_base_ms=20.0,
    prefill_ms_per_uncached_token=0.5,
    prefill_ms_per_cached_token=0.01,
    block_size_tokens=4,
    cache_capacity_blocks=64,
)


@pytest.mark.parametrize(("n_tokens", "cached_second_time"), [(18, 16), (16, 15), (4, 3), (3, 0), (1, 0)])
def test_repeated_prompt_is_cached(n_tokens: int, cached_second_time: int) -> None:
    cache = PrefixCache(PARAMS.cache_capacity_blocks)
    prompt = [(7 + 13 * i) % 30000 for i in range(n_tokens)]
    first = plan_prefill(PARAMS, cache, prompt)
    assert first.block_keys == tuple(rtp_block_keys(prompt, 4))
    assert (first.cached_tokens, first.uncached_tokens) == (0, n_tokens)
    assert first.duration_ms == pytest.approx(20.0 + 0.5 * n_tokens)
    cache.insert(first.block_keys)

    second = plan_prefill(PARAMS, cache, prompt)
    assert second.block_keys == first.block_keys
    assert second.cached_tokens == cached_second_time
    # everything full-block is reused except that the last token is always computed
    assert second.cached_tokens == min(len(first.block_keys) * 4, n_tokens - 1)
    assert second.cached_tokens + second.uncached_tokens == n_tokens
    expected_ms = 20.0 + 0.5 * second.uncached_tokens + 0.01 * second.cached_tokens
    assert second.duration_ms == pytest.approx(expected_ms)
    if n_tokens > 4:
        assert second.duration_ms < first.duration_ms


def test_shared_prefix_partially_cached() -> None:
    cache = PrefixCache(PARAMS.cache_capacity_blocks)
    a = list(range(100, 120))  # 5 blocks
    b = a[:8] + list(range(500, 512))  # shares 2 blocks
    cache.insert(plan_prefill(PARAMS, cache, a).block_keys)
    plan = plan_prefill(PARAMS, cache, b)
    assert plan.cached_tokens == 8
    assert plan.uncached_tokens == len(b) - 8


def test_empty_prompt_plan() -> None:
    plan = plan_prefill(PARAMS, PrefixCache(8), [])
    assert (plan.block_keys, plan.cached_tokens, plan.uncached_tokens) == ((), 0, 0)


def test_output_token_deterministic() -> None:
    prompt = [(3 + 17 * i) % 30000 for i in range(50)]
    first = [output_token(prompt, i) for i in range(20)]
    assert first == [output_token(list(prompt), i) for i in range(20)]
    assert first == [output_token(tuple(prompt), i) for i in range(20)]
    assert all(0 <= t < VOCAB_SIZE for t in first)
    assert len(set(first)) > 1  # a sequence, not one repeated token
    other = [output_token(prompt[:-1], i) for i in range(20)]
    assert other != first
