"""The gateway's prefill queue: per worker, calls held until the worker has a free prefill slot.

A worker gets at most `depth` prefills at a time from the gateway (released and not yet past
their first token). The rest wait here, not in the engine's FIFO, and leave shortest estimated
prefill first, with aging: a call's priority improves by `aging` ms for every ms it has waited,
so a long prompt is overtaken only by calls that arrive within about its own prefill time of it
and cannot starve. Because aging is linear and the same for everyone, the order is fixed when
a call is held: key = prefill_ms + aging x arrival_ms (lowest leaves first).

Clients share a worker's slots fairly: with calls from several clients held for a worker, the
next slot goes to the client that has been served least prefill time since it started waiting
(start-time fair queuing across clients), and within a client the order above holds. So one
connection with a thousand calls queued delays another's call by about one of its prefills, and
a single client (the RTP-LLM frontend multiplexing everything, or the simulator) sees the plain
order. Estimates (`ahead`, `before`) use the plain order.

A held call may also be parked behind a leader: a call sent to the same worker earlier whose prefill
computes the blocks this one expects to find cached there (on a batching engine two prompts prefilled in
the same iteration both compute their shared prefix; the cache has it only once the first one's prefill
is done). A parked call is not released (pop skips it) until the router unparks its leader's followers.

This is the one record of a held call (its lease, request and the owner's payload). Pure: no clock,
no asyncio; the router passes the time.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass

from flexlb.balancer.request import RouteRequest
from flexlb.balancer.workers import Lease

UPKEEP_INTERVAL_S = 0.1  # while calls are held, HoldDriver runs Router.maintain() this often

# the TTFT-aware strategies, whose estimates order the queue; the simple ones and the peer baselines
# route straight through
HOLDING_STRATEGIES = frozenset({"SHORTEST_TTFT", "COST_BASED_PREFILL", "CACHE_AWARE"})


@dataclass(frozen=True)
class PrefillQueueConfig:
    """prefillQueueDepth / prefillQueueAging / prefillQueueMaxHoldMs."""

    depth: int = 2  # calls sent to one worker and not yet past their first token; 0 turns the queue off
    aging: float = 1.0  # priority gained per ms held, in ms of prefill
    max_hold_ms: float = 30_000.0  # a call held this long is released regardless of depth (0: never)
    strategies: frozenset[str] = HOLDING_STRATEGIES  # prefill strategies whose calls may be held
    # an engine that reports no batch budget gets calls beyond `depth` while its outstanding prefill work is
    # below this: holding a call costs its release latency (the first-token signal, the event loop, the hop)
    # each time, which only reordering a long queue pays back
    hold_after_ms: float = 100.0

    @property
    def enabled(self) -> bool:
        """Whether calls can be held at all."""
        return self.depth > 0

    def applies_to(self, strategy: str) -> bool:
        """Whether calls routed by this prefill strategy may be held."""
        return self.enabled and strategy in self.strategies


@dataclass(frozen=True)
class HeldCall:
    """One held call: its lease sequence number, estimated prefill (with the worker's transit), when it was
    held, its order key; and what the router holds it with: the lease, the request, the owner's payload."""

    seq: int
    worker: str
    prefill_ms: float
    held_s: float
    key: float
    client: str = ""
    lease: Lease | None = None
    request: RouteRequest | None = None
    payload: object = None


class PrefillQueue:
    """Held calls per worker, ordered by aged estimated prefill."""

    def __init__(self, config: PrefillQueueConfig) -> None:
        self.config = config
        # per worker: keys sorted ascending, and the calls and prefill times in the same order
        self._keys: dict[str, list[tuple[float, int]]] = {}
        self._prefill: dict[str, list[float]] = {}
        self._calls: dict[int, HeldCall] = {}
        # per worker, per client with calls held: its keys in order, and the prefill time served to it
        self._client_keys: dict[str, dict[str, list[tuple[float, int]]]] = {}
        self._served_ms: dict[str, dict[str, float]] = {}
        # parked calls: follower seq -> its leader's seq, and each leader's followers
        self._leader_of: dict[int, int] = {}
        self._followers: dict[int, set[int]] = {}
        self._parked_at: dict[str, int] = {}  # parked calls per worker

    def __len__(self) -> int:
        return len(self._calls)

    def held(self, worker: str) -> int:
        """Calls held for one worker."""
        return len(self._keys.get(worker, ()))

    def slot_free(self, sent: int, sent_tokens: int = 0, tokens: int = 0, batch_tokens: int = 0,
                  outstanding_ms: float = 0.0) -> bool:
        """Whether a worker with `sent` prefills outstanding (not yet past their first token; `sent_tokens`
        uncached tokens) can take one more of `tokens` now.

        An engine that reports its prefill token budget per iteration (`batch_tokens`) runs waiting
        prefills together up to it: it may have one batch's worth outstanding, so what it can prefill
        together reaches it together; what would only wait behind that batch there waits here, where it
        can still be reordered or taken by an idle worker (in the simulator 1x the budget beats 0.5x, 2x
        and 4x: 1142 ms mean TTFT at the load of record against 1146, 1210 and 1197).
        Otherwise (an engine prefilling one request at a time) fewer than `depth` calls, or less than
        `hold_after_ms` of prefill work outstanding there (`outstanding_ms`).
        """
        if sent == 0:
            return True
        if batch_tokens > 0:
            return sent_tokens + tokens <= batch_tokens
        return sent < self.config.depth or outstanding_ms < self.config.hold_after_ms

    def holds(self, worker: str, sent: int, sent_tokens: int = 0, tokens: int = 0, batch_tokens: int = 0,
              outstanding_ms: float = 0.0) -> bool:
        """Whether a call for `worker` now waits here: no slot is free (slot_free), or others already wait
        for one (arrival keeps its place in the order)."""
        # parked calls wait for their leader, not for a slot: they keep nobody else waiting
        return self.config.enabled and (self.held(worker) > self.parked_for(worker) or not self.slot_free(
            sent, sent_tokens, tokens, batch_tokens, outstanding_ms))

    def order_key(self, prefill_ms: float, now_s: float) -> float:
        """Where a call of this estimated prefill, held now, sorts (lower leaves first)."""
        return prefill_ms + self.config.aging * now_s * 1000.0

    def push(self, worker: str, seq: int, prefill_ms: float, now_s: float, client: str = "",
             lease: Lease | None = None, request: RouteRequest | None = None, payload: object = None,
             leader: int | None = None) -> HeldCall:
        """Hold a call for `worker` (from `client`: calls of several clients share the worker fairly); with
        `leader`, parked until unpark(leader)."""
        call = HeldCall(seq, worker, prefill_ms, now_s, self.order_key(prefill_ms, now_s), client, lease, request,
                        payload)
        keys = self._keys.setdefault(worker, [])
        i = bisect.bisect_right(keys, (call.key, seq))
        keys.insert(i, (call.key, seq))
        by_client = self._client_keys.setdefault(worker, {})
        served = self._served_ms.setdefault(worker, {})
        if client not in by_client:
            by_client[client] = []
            # a client that starts waiting is not owed the service others got before it came
            served[client] = min(served.values(), default=0.0)
        bisect.insort(by_client[client], (call.key, seq))
        self._prefill.setdefault(worker, []).insert(i, prefill_ms)
        self._calls[seq] = call
        if leader is not None:
            self._leader_of[seq] = leader
            self._followers.setdefault(leader, set()).add(seq)
            self._parked_at[worker] = self._parked_at.get(worker, 0) + 1
        return call

    def parked_for(self, worker: str) -> int:
        """Parked calls held for one worker."""
        return self._parked_at.get(worker, 0)

    def parked(self, seq: int) -> bool:
        """Whether the held call waits for its leader's prefill."""
        return seq in self._leader_of

    def unpark(self, leader: int) -> list[str]:
        """The leader's prefill is over (or it left): its followers may go; the workers they are held for."""
        out = []
        for seq in self._followers.pop(leader, ()):
            del self._leader_of[seq]
            worker = self._calls[seq].worker
            self._parked_at[worker] -= 1
            out.append(worker)
        return sorted(set(out))

    def get(self, seq: int) -> HeldCall | None:
        """The held call of a lease sequence number, if it is held."""
        return self._calls.get(seq)

    def calls(self) -> Iterator[HeldCall]:
        """Every held call, in the order they were held."""
        return iter(list(self._calls.values()))

    def remove(self, seq: int) -> HeldCall | None:
        """Take one call out (cancelled, or released out of order); None if it is not held."""
        call = self._calls.pop(seq, None)
        if call is None:
            return None
        keys = self._keys[call.worker]
        i = bisect.bisect_left(keys, (call.key, seq))
        del keys[i]
        del self._prefill[call.worker][i]
        mine = self._client_keys[call.worker][call.client]
        del mine[bisect.bisect_left(mine, (call.key, seq))]
        if not mine:
            del self._client_keys[call.worker][call.client], self._served_ms[call.worker][call.client]
        leader = self._leader_of.pop(seq, None)
        if leader is not None:
            self._parked_at[call.worker] -= 1
            followers = self._followers[leader]
            followers.discard(seq)
            if not followers:
                del self._followers[leader]
        return call

    def _first_free(self, keys: list[tuple[float, int]]) -> int | None:
        """The first of these (key, seq) entries that is not parked."""
        if not self._leader_of:
            return keys[0][1] if keys else None
        return next((seq for _, seq in keys if seq not in self._leader_of), None)

    def peek(self, worker: str) -> HeldCall | None:
        """The call pop() would release to `worker` next (None if none can go: none held, or all parked),
        left in place."""
        keys = self._keys.get(worker)
        if not keys:
            return None
        by_client = self._client_keys[worker]
        if len(by_client) == 1:
            seq = self._first_free(keys)
            return None if seq is None else self._calls[seq]
        served = self._served_ms[worker]
        firsts = {c: self._first_free(k) for c, k in by_client.items()}
        ready = [c for c, seq in firsts.items() if seq is not None]
        if not ready:
            return None
        client = min(ready, key=lambda c: (served[c], self._calls[firsts[c] or 0].key, firsts[c] or 0))
        seq = firsts[client]
        assert seq is not None
        return self._calls[seq]

    def pop(self, worker: str) -> HeldCall | None:
        """The next call to release to `worker`, or None: the first of the client served least."""
        call = self.peek(worker)
        if call is None:
            return None
        if len(self._client_keys[worker]) > 1:
            self._served_ms[worker][call.client] += call.prefill_ms
        return self.remove(call.seq)

    def take_all(self, worker: str) -> list[HeldCall]:
        """Every call held for `worker`, in release order, parked ones last (the worker went away)."""
        out = []
        while (call := self.pop(worker)) is not None:
            out.append(call)
        for _, seq in list(self._keys.get(worker, ())):
            parked = self.remove(seq)
            assert parked is not None
            out.append(parked)
        return out

    def overdue(self, now_s: float) -> list[HeldCall]:
        """Calls held longer than max_hold_ms."""
        limit = self.config.max_hold_ms
        if limit <= 0:
            return []
        return [c for c in self._calls.values() if (now_s - c.held_s) * 1000.0 >= limit]

    def workers(self) -> list[str]:
        """Workers with at least one held call."""
        return [w for w, keys in self._keys.items() if keys]

    def ahead(self, worker: str, prefill_ms: float, now_s: float) -> tuple[float, int]:
        """For a call that would be held for `worker` now: the held prefill work that leaves before
        it (ms), and how many held calls it would overtake (each waits its prefill longer)."""
        keys = self._keys.get(worker)
        if not keys:
            return 0.0, 0
        i = bisect.bisect_right(keys, (self.order_key(prefill_ms, now_s), float("inf")))
        return sum(self._prefill[worker][:i]), len(keys) - i

    def before(self, seq: int) -> float:
        """Held work that leaves before this held call (its worker's calls ahead of it)."""
        call = self._calls[seq]
        i = bisect.bisect_left(self._keys[call.worker], (call.key, seq))
        return sum(self._prefill[call.worker][:i])

    def first(self, worker: str, n: int) -> list[HeldCall]:
        """The next n calls `worker` would release."""
        return [self._calls[seq] for _, seq in self._keys.get(worker, [])[:n]]

    def held_ms(self, worker: str) -> float:
        """All the prefill work held for one worker."""
        return sum(self._prefill.get(worker, ()))
