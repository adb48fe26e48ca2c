"""Which in-flight call carries a request id, and where it is: what RpcService.Cancel needs to find its holder.

Relayed calls register themselves here (CallLife, as soon as the request is parsed) and leave when they end.
Requests the gateway did not relay itself — BATCH mode, where the master pushed them to a prefill with
EnqueueBatch and the frontend fetches them there — are found through locators: a component that knows
where such requests are (the scheduler) registers `locate(request_id) -> WorkerAddr | None` with
`add_locator`, and Cancel asks the locators when no relayed call has the id.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from flexlb.balancer.workers import WorkerAddr

RequestLocator = Callable[[int], "WorkerAddr | None"]


class Holder(Protocol):
    """One relayed call, as Cancel sees it (flexlb/call/lifecycle.py CallLife)."""

    def worker(self) -> WorkerAddr | None:
        """The worker its attempt in progress went to; None while the call is still at the gateway (held)."""

    def keep_final(self) -> None:
        """The worker was asked to cancel it: however the attempt ends now is relayed, never failed over."""

    def preempt(self, message: str = ...) -> bool:
        """End the call at the gateway as the engine ends a preempted request; False if it had ended already."""


class RequestTable:
    """request id -> the relayed calls carrying it (clients may reuse ids), plus the locators of the rest."""

    def __init__(self) -> None:
        self._calls: dict[int, list[Holder]] = {}
        self._locators: list[RequestLocator] = []

    def add(self, request_id: int, holder: Holder) -> None:
        """A call with this request id is in flight."""
        self._calls.setdefault(request_id, []).append(holder)

    def discard(self, request_id: int, holder: Holder) -> None:
        """The call ended."""
        holders = self._calls.get(request_id)
        if holders is None:
            return
        for i, h in enumerate(holders):
            if h is holder:
                del holders[i]
                break
        if not holders:
            del self._calls[request_id]

    def holders(self, request_id: int) -> list[Holder]:
        """The calls in flight with this request id (a copy)."""
        return list(self._calls.get(request_id, ()))

    def add_locator(self, locate: RequestLocator) -> None:
        """Register where requests not relayed by this gateway are (e.g. the BATCH scheduler's enqueued ones)."""
        self._locators.append(locate)

    def locate(self, request_id: int) -> WorkerAddr | None:
        """The worker a locator says holds the request; None when no locator knows it."""
        for locate in self._locators:
            addr = locate(request_id)
            if addr is not None:
                return addr
        return None

    def __len__(self) -> int:
        return sum(len(v) for v in self._calls.values())
