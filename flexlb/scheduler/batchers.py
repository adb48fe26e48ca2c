"""BATCH mode's per-prefill-worker batchers: when to send a batch and which requests go in it.

Pure: no asyncio, no clock; the driver passes the time (ms), the worker's capacity and a batch cost
model, and acts on what `poll` answers (one step at a time: Dispatch, Reject or Wait).

Capacity (both algorithms): a batch's padded compute, max(seq_len) x members, must fit `compute_tokens`
(min of flexlbBatchMaxCapacity, the engine's max_batch_tokens_size and max_seq_len); a head that does
not fit alone is rejected with 8514. Members are taken greedily; after the first, the sum of their
seq_len must also fit the worker's KV (min of total and available, when it reports them).

`fixed_window` (flexlb-original §4.2): FIFO by arrival (by priority, then arrival, when priorities
are enabled). The head waited longer than enqueue_deadline_ms: dropped (8511). Backpressure
(fixed_max_inflight_batches): wait. Otherwise dispatch when size_max requests wait ("batch_full"),
when the head has waited fixed_wait_ms less the dispatch lead (Capacity.lead_ms, the measured cost of
delivering a batch, at most half the window: "fixed_window_timeout"), or when the candidate batch's
predicted time reaches predict_threshold_ms ("predict_threshold"); else wait for the window's end.

`slo_budget` (§4.3): ordered by the latest start that still meets each request's SLO,
sort = enqueued + max(0, SLO - predicted prefill - worker wait); the head's budget = sort - now.
Greedy fill over scan_ahead requests while the batch's predicted time stays within the head's
prediction plus its budget minus the guard (min(dispatch_guard, emergency_budget)); latest =
min(emergency_budget, guard + the fill's extra cost). Dispatch at size_max ("batch_size_max"), when
the budget is down to `latest` ("deadline_guard"), or, inside the window (budget <= window_ms), once
the batch reaches its target (min_size + the arrivals the arrival-interval EMA expects in the slack:
"target_batch_size") or when no arrival is expected before the slack (less arrival_wait_guard_ms)
runs out ("arrival_guard"). Backpressure: wait while the worker has slo_max_inflight_batches in
flight. A head whose whole SLO passed while it waited is dropped (8511).

`dispatch_when_idle` (flexlbBatchDispatchWhenIdle, not in HEAD; both algorithms): while the worker has no
batch of this batcher in flight, send what waits at once ("worker_idle") instead of waiting for company:
there is nothing for the batch to queue behind, so waiting only adds latency. In flight = its EnqueueBatch
not answered yet, or (from the cost model) its prefill predicted to be still running: each dispatch marks
the worker busy until max(now, busy until) + the batch's predicted time. While busy, the algorithm's own
rules apply (the window, the size, the SLO budget), and the predicted end of the busy time is a wake time.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from flexlb.schedule_modes import BatchAlgorithm, BatchSettings

BATCH_SLO_EXPIRED = 8511
BATCH_TOKEN_CAPACITY_EXCEEDED = 8514

_order = itertools.count(1)


@dataclass(eq=False)
class BatchItem:
    """One request waiting in a worker's batcher."""

    request_id: int
    seq_len: int
    enqueued_ms: float
    prefill_ms: float = 0.0  # predicted prefill of this request alone on its worker
    slo_ms: float = 0.0
    priority: int = 50
    worker_wait_ms: float = 0.0  # the worker's estimated queue wait when it arrived
    payload: object = None
    order: int = field(default_factory=lambda: next(_order))
    sort_ms: float = 0.0  # set by the algorithm when offered


@dataclass(frozen=True)
class Capacity:
    """What the worker can take now."""

    compute_tokens: int  # padded tokens per batch (max seq_len x members)
    kv_tokens: int = 0  # 0: not reported, no KV bound
    inflight_batches: int = 0  # batches sent to it and not yet answered
    # fixed_window closes the window this much early: the measured cost of getting a batch to the worker (the
    # driver's wake-up lateness and the EnqueueBatch round trip), so a request waits no more than the window in all
    lead_ms: float = 0.0


@dataclass(frozen=True)
class Dispatch:
    """Send these requests as one batch now (they have left the batcher)."""

    items: tuple[BatchItem, ...]
    reason: str


@dataclass(frozen=True)
class Reject:
    """This request cannot be batched (it has left the batcher): answer it with `code`."""

    item: BatchItem
    code: int
    message: str


@dataclass(frozen=True)
class Wait:
    """Nothing to do before `until_ms` (None: until something changes: an arrival, a batch answered)."""

    until_ms: float | None


Step = Dispatch | Reject | Wait
BatchCost = Callable[[Sequence[BatchItem]], float]


def padded_tokens(items: Sequence[BatchItem]) -> int:
    """A batch's padded compute: its longest prompt times its size."""
    return max((i.seq_len for i in items), default=0) * len(items)


class WorkerBatcher:
    """The requests waiting for one prefill worker, and the algorithm that batches them."""

    def __init__(self, settings: BatchSettings, by_priority: bool = False) -> None:
        self.settings = settings
        self.slo = settings.algorithm is BatchAlgorithm.SLO_BUDGET
        self.by_priority = by_priority
        self._queue: list[tuple[tuple[float, ...], BatchItem]] = []
        self._ids: dict[int, BatchItem] = {}
        self._last_arrival_ms: float | None = None
        self.arrival_interval_ms: float | None = None  # EMA (slo_budget)
        self.busy_until_ms = -math.inf  # the predicted end of the prefill of the batches dispatched so far

    def __len__(self) -> int:
        return len(self._queue)

    def items(self) -> list[BatchItem]:
        """The waiting requests in batching order."""
        return [it for _, it in self._queue]

    def _key(self, item: BatchItem) -> tuple[float, ...]:
        if self.slo:
            return (item.sort_ms, item.order)
        if self.by_priority:
            return (-item.priority, item.order)
        return (item.enqueued_ms, item.order)

    def offer(self, item: BatchItem, now_ms: float) -> bool:
        """Queue a request; False (not queued) when the queue holds queue_max_size already."""
        s = self.settings
        if len(self._queue) >= s.queue_max_size:
            return False
        if self.slo:
            item.sort_ms = item.enqueued_ms + max(0.0, item.slo_ms - item.prefill_ms - item.worker_wait_ms)
            if self._last_arrival_ms is not None:
                gap = min(max(0.0, now_ms - self._last_arrival_ms), float(s.window_ms))
                a = s.arrival_ema_alpha
                self.arrival_interval_ms = gap if self.arrival_interval_ms is None else (
                    a * gap + (1 - a) * self.arrival_interval_ms)
            self._last_arrival_ms = now_ms
        entry = (self._key(item), item)
        bisect.insort(self._queue, entry, key=lambda e: e[0])
        self._ids[item.request_id] = item
        return True

    def remove(self, request_id: int) -> BatchItem | None:
        """Take a waiting request out (its caller left); None when it is not waiting here."""
        item = self._ids.pop(request_id, None)
        if item is not None:
            self._queue = [e for e in self._queue if e[1] is not item]
        return item

    def worker_idle(self, now_ms: float, cap: Capacity) -> bool:
        """No batch of this batcher in flight on the worker: every EnqueueBatch answered, no prefill predicted."""
        return cap.inflight_batches == 0 and now_ms >= self.busy_until_ms

    def _send(self, members: Sequence[BatchItem], reason: str, now_ms: float, batch_ms: BatchCost) -> Dispatch:
        # the batch queues behind the ones predicted to be still prefilling
        self.busy_until_ms = max(now_ms, self.busy_until_ms) + max(0.0, batch_ms(members))
        return Dispatch(self._take(members), reason)

    def _idle_wake(self, now_ms: float, cap: Capacity, wake_ms: float) -> float:
        """dispatch_when_idle: wake when the worker is predicted idle, if sooner (an EnqueueBatch answer wakes
        the driver by itself)."""
        if self.settings.dispatch_when_idle and cap.inflight_batches == 0 and self.busy_until_ms > now_ms:
            return min(wake_ms, self.busy_until_ms)
        return wake_ms

    def _take(self, items: Sequence[BatchItem]) -> tuple[BatchItem, ...]:
        chosen = {id(i) for i in items}
        self._queue = [e for e in self._queue if id(e[1]) not in chosen]
        for i in items:
            self._ids.pop(i.request_id, None)
        return tuple(items)

    def _fits(self, members: list[BatchItem], item: BatchItem, cap: Capacity) -> bool:
        longest = max(item.seq_len, max((m.seq_len for m in members), default=0))
        if longest * (len(members) + 1) > cap.compute_tokens:
            return False
        return not (members and cap.kv_tokens > 0 and sum(m.seq_len for m in members) + item.seq_len > cap.kv_tokens)

    def poll(self, now_ms: float, cap: Capacity, batch_ms: BatchCost) -> Step:
        """The next step for this worker's queue."""
        if not self._queue:
            return Wait(None)
        head = self._queue[0][1]
        if padded_tokens([head]) > cap.compute_tokens:
            return Reject(self._take([head])[0], BATCH_TOKEN_CAPACITY_EXCEEDED,
                          f"BATCH_TOKEN_CAPACITY_EXCEEDED: seq_len {head.seq_len} exceeds the worker's batch "
                          f"capacity of {cap.compute_tokens} tokens")
        if self.slo:
            return self._poll_slo(head, now_ms, cap, batch_ms)
        return self._poll_fixed(head, now_ms, cap, batch_ms)

    # ------------------------------------------------------------ fixed_window

    def _greedy(self, cap: Capacity) -> list[BatchItem]:
        members: list[BatchItem] = []
        for _, item in self._queue:
            if len(members) >= self.settings.size_max or not self._fits(members, item, cap):
                break
            members.append(item)
        return members

    def _poll_fixed(self, head: BatchItem, now_ms: float, cap: Capacity, batch_ms: BatchCost) -> Step:
        s = self.settings
        waited = now_ms - head.enqueued_ms
        if waited > s.enqueue_deadline_ms:
            return Reject(self._take([head])[0], BATCH_SLO_EXPIRED,
                          f"BATCH_SLO_EXPIRED: waited {waited:.0f} ms in the batcher "
                          f"(flexlbBatchEnqueueDeadlineMs {s.enqueue_deadline_ms})")
        expiry = head.enqueued_ms + s.enqueue_deadline_ms
        if s.fixed_max_inflight_batches > 0 and cap.inflight_batches >= s.fixed_max_inflight_batches:
            return Wait(expiry)  # an answered batch wakes the driver sooner
        members = self._greedy(cap)
        if len(self._queue) >= s.size_max:
            return self._send(members, "batch_full", now_ms, batch_ms)
        lead = min(max(0.0, cap.lead_ms), s.fixed_wait_ms / 2.0)
        if waited + lead >= s.fixed_wait_ms:
            return self._send(members, "fixed_window_timeout", now_ms, batch_ms)
        if s.predict_threshold_ms > 0 and batch_ms(members) >= s.predict_threshold_ms:
            return self._send(members, "predict_threshold", now_ms, batch_ms)
        if s.dispatch_when_idle and self.worker_idle(now_ms, cap):
            return self._send(members, "worker_idle", now_ms, batch_ms)
        return Wait(self._idle_wake(now_ms, cap, head.enqueued_ms + s.fixed_wait_ms - lead))

    def window_wait_ms(self, now_ms: float) -> float:
        """fixed_window: how long a request arriving now would wait for its batch (the §2.3 estimate)."""
        s = self.settings
        n = len(self._queue)
        if s.size_max <= 1 or n % s.size_max == s.size_max - 1:
            return 0.0
        if n < s.size_max:
            return max(0.0, self._queue[0][1].enqueued_ms + s.fixed_wait_ms - now_ms) if n else float(s.fixed_wait_ms)
        return float(s.fixed_wait_ms)

    # ------------------------------------------------------------ slo_budget

    def _poll_slo(self, head: BatchItem, now_ms: float, cap: Capacity, batch_ms: BatchCost) -> Step:
        s = self.settings
        if now_ms >= head.enqueued_ms + head.slo_ms and head.slo_ms > 0:
            return Reject(self._take([head])[0], BATCH_SLO_EXPIRED,
                          f"BATCH_SLO_EXPIRED: its {head.slo_ms:.0f} ms SLO passed in the batcher")
        if cap.inflight_batches >= s.slo_max_inflight_batches > 0:
            return Wait(head.enqueued_ms + head.slo_ms if head.slo_ms > 0 else None)
        budget = head.sort_ms - now_ms
        guard = float(min(s.dispatch_guard_ms, s.emergency_budget_ms))
        head_ms = batch_ms([head])
        members = [head]
        for _, item in self._queue[1:s.scan_ahead]:
            if len(members) >= s.size_max:
                break
            if not self._fits(members, item, cap):
                continue
            if batch_ms([*members, item]) <= head_ms + (budget - guard):
                members.append(item)
        extra = batch_ms(members) - head_ms
        latest = min(float(s.emergency_budget_ms), guard + extra)
        if len(members) >= s.size_max:
            return self._send(members, "batch_size_max", now_ms, batch_ms)
        if budget <= latest:
            return self._send(members, "deadline_guard", now_ms, batch_ms)
        if s.dispatch_when_idle and self.worker_idle(now_ms, cap):
            return self._send(members, "worker_idle", now_ms, batch_ms)
        if budget <= s.window_ms:
            slack = budget - latest
            usable = slack - s.arrival_wait_guard_ms
            ema = self.arrival_interval_ms
            expected = math.floor(usable / ema) if ema and ema > 0 and usable > 0 else 0
            target = min(s.size_max, s.min_size + expected)
            if len(members) >= target:
                return self._send(members, "target_batch_size", now_ms, batch_ms)
            last = self._last_arrival_ms if self._last_arrival_ms is not None else now_ms
            next_arrival = last + ema if ema else math.inf
            if next_arrival > now_ms + usable:
                return self._send(members, "arrival_guard", now_ms, batch_ms)
            return Wait(self._idle_wake(now_ms, cap, min(head.sort_ms - latest, next_arrival)))
        return Wait(self._idle_wake(now_ms, cap, head.sort_ms - s.window_ms))
