"""Requests the scheduler placed on workers and still holds load for, until the workers report them done.

BATCH mode (acknowledged by EnqueueBatch) and QUEUE mode (decided, the caller dials the worker) keep the
routing lease of each request. The worker's GetWorkerStatus closes the loop: a request reported running
(no longer waiting) has finished its prefill, one in finished_task_list has ended. A request never
reported by its worker is given up after a TTL. Pure: the poller passes what the worker said and the time;
what changed comes back as events.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from flexlb.balancer.workers import Lease


@dataclass(eq=False)
class Placed:
    """One request on a worker, with the lease holding its load."""

    request_id: int
    worker: str  # ip:grpc_port of the worker that reports it (the prefill, or the fused worker)
    lease: Lease
    placed_s: float
    mode: str  # "BATCH" or "QUEUE"
    started: bool = False  # its prefill is done (or assumed done): the worker's prefill slot is free again
    payload: object = None


@dataclass(frozen=True)
class Started:
    """The worker reports the request past its prefill: free its prefill slot."""

    placed: Placed


@dataclass(frozen=True)
class Ended:
    """The worker reports the request finished (`error_code` 0: it succeeded); release its lease."""

    placed: Placed
    error_code: int


@dataclass(frozen=True)
class Expired:
    """No report within the TTL: release its lease."""

    placed: Placed


TrackerEvent = Started | Ended | Expired


class InflightTracker:
    """Placed requests by worker and request id."""

    _UNCLAIMED = 4096  # finished ids remembered per worker that were not (yet) tracked

    def __init__(self, ttl_s: float, start_ttl_s: float) -> None:
        self.ttl_s = ttl_s  # placed and never reported finished
        self.start_ttl_s = start_ttl_s  # placed and never reported started: its prefill slot is freed anyway
        self._by_worker: dict[str, dict[int, Placed]] = {}
        self._count = 0
        # a request can finish on its worker before its placement is recorded here (an EnqueueBatch answer
        # still on its way while a status poll for other requests reports it): remember such ids
        self._unclaimed: dict[str, OrderedDict[int, int]] = {}

    def __len__(self) -> int:
        return self._count

    def add(self, placed: Placed) -> list[TrackerEvent]:
        """Track a request placed on its worker; [Ended] at once if the worker already reported it finished.
        The caller must not add a request id already tracked on that worker (see `get`)."""
        seen = self._unclaimed.get(placed.worker)
        if seen is not None and placed.request_id in seen:
            return [Ended(placed, seen.pop(placed.request_id))]
        self._by_worker.setdefault(placed.worker, {})[placed.request_id] = placed
        self._count += 1
        return []

    def remove(self, worker: str, request_id: int) -> Placed | None:
        """Stop tracking (it was cancelled); None when it is not tracked."""
        on = self._by_worker.get(worker)
        placed = on.pop(request_id, None) if on else None
        if placed is not None:
            self._count -= 1
            if not on:
                del self._by_worker[worker]
        return placed

    def get(self, worker: str, request_id: int) -> Placed | None:
        """A tracked request."""
        on = self._by_worker.get(worker)
        return on.get(request_id) if on else None

    def find(self, request_id: int) -> Placed | None:
        """The tracked request with this id on any worker (Cancel relayed by the gateway needs its holder)."""
        for on in self._by_worker.values():
            p = on.get(request_id)
            if p is not None:
                return p
        return None

    def workers(self) -> list[str]:
        """Workers with tracked requests."""
        return list(self._by_worker)

    def on(self, worker: str) -> int:
        """Requests tracked on a worker."""
        return len(self._by_worker.get(worker, ()))

    def report(self, worker: str, running: Iterable[tuple[int, bool]],
               finished: Iterable[tuple[int, int]]) -> list[TrackerEvent]:
        """What the worker said: running (request id, still waiting) and finished (request id, error code)."""
        on = self._by_worker.get(worker, {})
        out: list[TrackerEvent] = []
        for rid, waiting in running:
            p = on.get(rid)
            if p is not None and not waiting and not p.started:
                p.started = True
                out.append(Started(p))
        for rid, code in finished:
            p = self.remove(worker, rid)
            if p is not None:
                out.append(Ended(p, code))
            else:
                seen = self._unclaimed.setdefault(worker, OrderedDict())
                seen[rid] = code
                while len(seen) > self._UNCLAIMED:
                    seen.popitem(last=False)
        return out

    def expire(self, now_s: float) -> list[TrackerEvent]:
        """Requests past their TTLs (a free prefill slot first, the whole lease later)."""
        out: list[TrackerEvent] = []
        for worker in list(self._by_worker):
            for p in list(self._by_worker[worker].values()):
                if now_s - p.placed_s >= self.ttl_s:
                    self.remove(worker, p.request_id)
                    out.append(Expired(p))
                elif not p.started and now_s - p.placed_s >= self.start_ttl_s:
                    p.started = True
                    out.append(Started(p))
        return out
