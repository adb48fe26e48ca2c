"""Which KV blocks each worker holds, and how much of a prompt each worker can reuse.

Keys are chained (key k hashes blocks 0..k), so a worker's reusable prefix is the run of
leading keys it holds. Every key maps to a bitmask of the workers holding it; matching a
prompt walks its keys once, AND-ing masks, so N workers cost O(blocks + N) — not blocks times N.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PrefixIndexConfig:
    """Bounds of the index: per-worker capacity (blocks) and how long an unused block is trusted."""

    capacity_blocks: int = 100_000
    ttl_s: float = 600.0


class PrefixIndex:
    """Per-worker LRU records of block keys plus a global key → worker-bitmask map."""

    def __init__(self, config: PrefixIndexConfig) -> None:
        self.config = config
        self._slot: dict[str, int] = {}  # worker key → bit position
        self._lru: list[OrderedDict[int, float]] = []  # per slot: block key → last use time
        self._holders: dict[int, int] = {}  # block key → bitmask of slots
        self._names: list[str] = []  # slot → worker key
        self._free: list[int] = []  # slots of dropped workers, reused first (bitmasks stay as narrow as the pool)

    def _slot_of(self, worker: str) -> int:
        slot = self._slot.get(worker)
        if slot is None:
            if self._free:
                slot = self._free.pop()
                self._names[slot] = worker
            else:
                slot = len(self._lru)
                self._lru.append(OrderedDict())
                self._names.append(worker)
            self._slot[worker] = slot
        return slot

    def record(self, worker: str, keys: Sequence[int], now_s: float) -> None:
        """The worker now holds these blocks (sent there, or reported by it)."""
        if not keys:
            return
        slot = self._slot_of(worker)
        bit = 1 << slot
        lru = self._lru[slot]
        holders = self._holders
        for k in keys:
            if k in lru:
                lru.move_to_end(k)
            else:
                holders[k] = holders.get(k, 0) | bit
            lru[k] = now_s
        self._evict(slot, now_s)

    def _drop(self, slot: int, key: int) -> None:
        mask = self._holders.get(key, 0) & ~(1 << slot)
        if mask:
            self._holders[key] = mask
        else:
            self._holders.pop(key, None)

    def _evict(self, slot: int, now_s: float) -> None:
        lru = self._lru[slot]
        while len(lru) > self.config.capacity_blocks:
            key, _ = lru.popitem(last=False)
            self._drop(slot, key)
        horizon = now_s - self.config.ttl_s
        while lru:
            key, used = next(iter(lru.items()))
            if used >= horizon:
                break
            lru.popitem(last=False)
            self._drop(slot, key)

    def replace(self, worker: str, keys: Sequence[int], now_s: float, keep_recent_s: float = 0.0) -> None:
        """The worker reported its complete cache (LOCAL_SYNC): forget what it no longer holds.

        Blocks recorded within `keep_recent_s` stay: they were just sent there and may still be
        waiting for their prefill, so the worker cannot report them yet.
        """
        slot = self._slot_of(worker)
        fresh = set(keys)
        lru = self._lru[slot]
        horizon = now_s - keep_recent_s
        for k in [k for k, used in lru.items() if k not in fresh and used < horizon]:
            del lru[k]
            self._drop(slot, k)
        self.record(worker, keys, now_s)

    def forget(self, worker: str, keys: Sequence[int]) -> None:
        """The worker will not hold these blocks after all (a call recorded there went elsewhere)."""
        slot = self._slot.get(worker)
        if slot is None:
            return
        lru = self._lru[slot]
        for k in keys:
            if lru.pop(k, None) is not None:
                self._drop(slot, k)

    def forget_worker(self, worker: str) -> None:
        """The worker restarted or left: it holds nothing."""
        slot = self._slot.get(worker)
        if slot is None:
            return
        for k in list(self._lru[slot]):
            self._drop(slot, k)
        self._lru[slot].clear()

    def drop_worker(self, worker: str) -> None:
        """The worker left the cluster for good: forget its blocks and free its slot for another worker."""
        self.forget_worker(worker)
        slot = self._slot.pop(worker, None)
        if slot is not None:
            self._names[slot] = ""
            self._free.append(slot)

    def workers(self) -> list[str]:
        """Workers the index has a record for."""
        return list(self._slot)

    def blocks_held(self, worker: str) -> int:
        """How many blocks the index believes the worker holds."""
        slot = self._slot.get(worker)
        return 0 if slot is None else len(self._lru[slot])

    def match(self, keys: Sequence[int]) -> dict[str, int]:
        """Leading blocks of `keys` each worker holds (workers matching nothing are absent)."""
        holders = self._holders
        alive = holders.get(keys[0], 0) if keys else 0
        if not alive:
            return {}
        result: dict[int, int] = {}
        depth = 1
        for k in keys[1:]:
            nxt = alive & holders.get(k, 0)
            if nxt != alive:
                gone = alive & ~nxt
                while gone:
                    low = gone & -gone
                    result[low.bit_length() - 1] = depth
                    gone ^= low
                alive = nxt
                if not alive:
                    break
            depth += 1
        while alive:
            low = alive & -alive
            result[low.bit_length() - 1] = depth
            alive ^= low
        names = self._names
        return {names[slot]: n for slot, n in result.items()}
