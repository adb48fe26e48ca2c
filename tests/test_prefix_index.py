"""PrefixIndex: leading-run matches over chained block keys, per-worker LRU capacity, TTL, replace, forget."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from flexlb.balancer.prefix_index import PrefixIndex, PrefixIndexConfig


def make_index(capacity: int = 1_000, ttl_s: float = math.inf) -> PrefixIndex:
    return PrefixIndex(PrefixIndexConfig(capacity_blocks=capacity, ttl_s=ttl_s))


# --- match: leading runs ---------------------------------------------------------------------------------------


def test_match_counts_only_the_leading_run() -> None:
    idx = make_index()
    idx.record("w", [10, 11, 13], now_s=0.0)  # holds keys 0, 1 and 3 of the prompt below, not key 2
    assert idx.match([10, 11, 12, 13]) == {"w": 2}


def test_match_full_prompt_and_longer_prompt() -> None:
    idx = make_index()
    idx.record("w", [1, 2, 3], now_s=0.0)
    assert idx.match([1, 2, 3]) == {"w": 3}
    assert idx.match([1, 2, 3, 4, 5]) == {"w": 3}
    assert idx.match([1]) == {"w": 1}


def test_several_workers_with_different_depths_in_one_walk() -> None:
    idx = make_index()
    keys = [100, 101, 102, 103, 104, 105]
    idx.record("a", keys[:1], now_s=0.0)
    idx.record("b", keys[:3], now_s=0.0)
    idx.record("c", keys, now_s=0.0)
    idx.record("d", keys[:3] + keys[4:], now_s=0.0)  # gap at index 3
    idx.record("e", keys[1:], now_s=0.0)  # misses the first key: matches nothing
    assert idx.match(keys) == {"a": 1, "b": 3, "c": 6, "d": 3}


def test_unknown_first_key_matches_nothing() -> None:
    idx = make_index()
    idx.record("w", [1, 2, 3], now_s=0.0)
    assert idx.match([99, 2, 3]) == {}
    assert idx.match([]) == {}
    assert make_index().match([1, 2]) == {}


def test_empty_record_is_a_no_op() -> None:
    idx = make_index()
    idx.record("w", [], now_s=0.0)
    assert idx.blocks_held("w") == 0
    assert idx.match([1]) == {}


# --- LRU capacity ------------------------------------------------------------------------------------------------


def test_capacity_evicts_least_recently_used() -> None:
    idx = make_index(capacity=3)
    idx.record("w", [1, 2, 3], now_s=0.0)
    idx.record("w", [4], now_s=1.0)  # over capacity: key 1 (oldest) goes
    assert idx.blocks_held("w") == 3
    assert idx.match([1, 2, 3]) == {}
    assert idx.match([2, 3, 4]) == {"w": 3}


def test_re_recorded_key_is_refreshed_and_survives_eviction() -> None:
    idx = make_index(capacity=3)
    idx.record("w", [1, 2, 3], now_s=0.0)
    idx.record("w", [1], now_s=1.0)  # 1 is now the most recently used; 2 is the oldest
    idx.record("w", [4], now_s=2.0)
    assert idx.match([1]) == {"w": 1}
    assert idx.match([2]) == {}
    assert idx.match([3, 4]) == {"w": 2}
    assert idx.blocks_held("w") == 3


def test_capacity_is_per_worker() -> None:
    idx = make_index(capacity=2)
    idx.record("a", [1, 2], now_s=0.0)
    idx.record("b", [3, 4], now_s=0.0)
    idx.record("b", [5], now_s=1.0)  # evicts b's key 3 only
    assert idx.match([1, 2]) == {"a": 2}
    assert idx.match([3]) == {}
    assert idx.match([4, 5]) == {"b": 2}


def test_eviction_of_one_holder_keeps_other_holders() -> None:
    idx = make_index(capacity=2)
    idx.record("a", [1, 2], now_s=0.0)
    idx.record("b", [1, 2], now_s=0.0)
    idx.record("a", [7], now_s=1.0)  # a loses key 1, b still has it
    assert idx.match([1, 2]) == {"b": 2}


# --- TTL ---------------------------------------------------------------------------------------------------------


def test_ttl_expires_unused_keys_on_the_next_record() -> None:
    idx = make_index(ttl_s=10.0)
    idx.record("w", [1, 2], now_s=0.0)
    idx.record("w", [3], now_s=5.0)
    assert idx.match([1, 2]) == {"w": 2}  # nothing expires without a record
    idx.record("w", [9], now_s=12.0)  # horizon 2.0: keys 1 and 2 (used at 0) expire, 3 (used at 5) stays
    assert idx.match([1, 2]) == {}
    assert idx.match([3]) == {"w": 1}
    assert idx.blocks_held("w") == 2


def test_ttl_boundary_and_refresh() -> None:
    idx = make_index(ttl_s=10.0)
    idx.record("w", [1, 2], now_s=0.0)
    idx.record("w", [1], now_s=8.0)  # refresh key 1
    idx.record("w", [5], now_s=10.0)  # horizon 0.0: used == horizon is still trusted
    assert idx.match([1, 2]) == {"w": 2}
    idx.record("w", [5], now_s=10.5)  # horizon 0.5: key 2 expires, key 1 (used at 8) stays
    assert idx.match([1, 2]) == {"w": 1}
    assert idx.blocks_held("w") == 2


# --- replace / forget / blocks_held --------------------------------------------------------------------------------


def test_replace_forgets_keys_not_reported() -> None:
    idx = make_index()
    idx.record("w", [1, 2, 3, 4], now_s=0.0)
    idx.record("x", [1, 2], now_s=0.0)
    idx.replace("w", [1, 2, 7], now_s=1.0)
    assert idx.blocks_held("w") == 3
    assert idx.match([1, 2, 3, 4]) == {"w": 2, "x": 2}
    assert idx.match([7]) == {"w": 1}
    idx.replace("w", [], now_s=2.0)  # reports an empty cache
    assert idx.blocks_held("w") == 0
    assert idx.match([1, 2]) == {"x": 2}
    assert idx.match([7]) == {}


def test_replace_for_a_new_worker_records() -> None:
    idx = make_index()
    idx.replace("w", [1, 2], now_s=0.0)
    assert idx.match([1, 2]) == {"w": 2}


def test_forget_worker() -> None:
    idx = make_index()
    idx.record("a", [1, 2, 3], now_s=0.0)
    idx.record("b", [1, 2], now_s=0.0)
    idx.forget_worker("a")
    idx.forget_worker("never-seen")  # no error
    assert idx.blocks_held("a") == 0
    assert idx.match([1, 2, 3]) == {"b": 2}
    idx.record("a", [1], now_s=1.0)  # comes back and is recorded again
    assert idx.match([1, 2, 3]) == {"a": 1, "b": 2}


def test_blocks_held() -> None:
    idx = make_index(capacity=5)
    assert idx.blocks_held("nobody") == 0
    idx.record("w", [1, 2, 3], now_s=0.0)
    idx.record("w", [2, 3, 4], now_s=0.0)  # 2, 3 already held
    assert idx.blocks_held("w") == 4
    idx.record("w", [5, 6, 7], now_s=0.0)
    assert idx.blocks_held("w") == 5


def test_more_than_64_workers() -> None:
    idx = make_index()
    keys = list(range(1000, 1100))
    for i in range(70):
        # worker i holds the first (i % 50) + 1 keys; workers 64..69 sit at bit positions beyond one machine word
        idx.record(f"w{i}", keys[: (i % 50) + 1], now_s=float(i))
    got = idx.match(keys)
    assert got == {f"w{i}": (i % 50) + 1 for i in range(70)}
    idx.forget_worker("w69")
    idx.record("w68", [5000], now_s=100.0)
    got = idx.match(keys)
    assert "w69" not in got
    assert got["w68"] == (68 % 50) + 1
    assert got["w65"] == (65 % 50) + 1
    # a key only a high-bit worker holds
    idx.record("w67", [4242, 4243], now_s=101.0)
    assert idx.match([4242, 4243, 4244]) == {"w67": 2}


# --- property: same answer as a brute-force reference ---------------------------------------------------------------


class ReferenceIndex:
    """Per-worker set of held keys (unbounded capacity, no TTL)."""

    def __init__(self) -> None:
        self.held: dict[str, set[int]] = {}

    def record(self, worker: str, keys: list[int]) -> None:
        self.held.setdefault(worker, set()).update(keys)

    def replace(self, worker: str, keys: list[int]) -> None:
        self.held[worker] = set(keys)

    def forget(self, worker: str) -> None:
        self.held.pop(worker, None)

    def match(self, keys: list[int]) -> dict[str, int]:
        out = {}
        for worker, held in self.held.items():
            n = 0
            for k in keys:
                if k not in held:
                    break
                n += 1
            if n:
                out[worker] = n
        return out


WORKERS = [f"w{i}" for i in range(5)]
keys_st = st.lists(st.integers(min_value=0, max_value=11), max_size=8)
op_st = st.tuples(st.sampled_from(["record", "record", "record", "replace", "forget"]), st.sampled_from(WORKERS),
                  keys_st)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(ops=st.lists(op_st, max_size=25), queries=st.lists(keys_st, min_size=1, max_size=6))
def test_match_equals_brute_force(ops: list[tuple[str, str, list[int]]], queries: list[list[int]]) -> None:
    idx = make_index(capacity=10_000, ttl_s=math.inf)
    ref = ReferenceIndex()
    for t, (op, worker, keys) in enumerate(ops):
        if op == "record":
            idx.record(worker, keys, now_s=float(t))
            ref.record(worker, keys)
        elif op == "replace":
            idx.replace(worker, keys, now_s=float(t))
            ref.replace(worker, keys)
        else:
            idx.forget_worker(worker)
            ref.forget(worker)
        for q in queries:
            assert idx.match(q) == ref.match(q)
    for w in WORKERS:
        assert idx.blocks_held(w) == len(ref.held.get(w, ()))


def test_replace_keeps_fresh_speculative_records() -> None:
    index = PrefixIndex(PrefixIndexConfig(capacity_blocks=100, ttl_s=1e9))
    index.record("w", [1, 2], now_s=0.0)  # old: the worker had time to report these
    index.record("w", [7, 8], now_s=9.5)  # just sent: its prefill may not have run yet
    index.replace("w", [1], now_s=10.0, keep_recent_s=1.0)
    assert index.match([1, 2]) == {"w": 1}  # 2 was not reported and is old: gone
    assert index.match([7, 8]) == {"w": 2}  # 7, 8 are younger than the grace: kept
    index.replace("w", [1], now_s=20.0, keep_recent_s=1.0)
    assert index.match([7]) == {}


def test_forget_drops_only_the_named_blocks_of_one_worker() -> None:
    idx = PrefixIndex(PrefixIndexConfig(100, 600.0))
    idx.record("a", [1, 2, 3, 4], 0.0)
    idx.record("b", [1, 2, 3], 0.0)
    idx.forget("a", [3, 4, 99])
    assert idx.match([1, 2, 3, 4]) == {"a": 2, "b": 3}
    assert idx.blocks_held("a") == 2 and idx.blocks_held("b") == 3
    idx.forget("unknown", [1])
    assert idx.match([1]) == {"a": 1, "b": 1}
