"""Request lifecycle records for GetRequestState and the duplicate check. Pure: the caller passes the time.

States and their allowed moves are the master's (RequestStatePB): QUEUED -> DISPATCHING | CANCELLED |
TIMED_OUT | FAILED; DISPATCHING -> ACKNOWLEDGED | CANCEL_REQUESTED | TIMED_OUT | FAILED | COMPLETED;
ACKNOWLEDGED -> CANCEL_REQUESTED | TIMED_OUT | FAILED | COMPLETED; CANCEL_REQUESTED -> CANCELLED |
TIMED_OUT. CANCELLED, TIMED_OUT, FAILED and COMPLETED are terminal: a terminal record is kept
`terminal_ttl_s` (bounded in number), so a caller can still ask how its request ended.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from flexlb.pb import flexlb_schedule_service_pb2 as fpb

QUEUED = fpb.REQUEST_STATE_QUEUED
DISPATCHING = fpb.REQUEST_STATE_DISPATCHING
ACKNOWLEDGED = fpb.REQUEST_STATE_ACKNOWLEDGED
CANCEL_REQUESTED = fpb.REQUEST_STATE_CANCEL_REQUESTED
CANCELLED = fpb.REQUEST_STATE_CANCELLED
TIMED_OUT = fpb.REQUEST_STATE_TIMED_OUT
FAILED = fpb.REQUEST_STATE_FAILED
COMPLETED = fpb.REQUEST_STATE_COMPLETED

TERMINAL = frozenset({CANCELLED, TIMED_OUT, FAILED, COMPLETED})
_MOVES: dict[int, frozenset[int]] = {
    QUEUED: frozenset({DISPATCHING, CANCELLED, TIMED_OUT, FAILED}),
    DISPATCHING: frozenset({ACKNOWLEDGED, CANCEL_REQUESTED, TIMED_OUT, FAILED, COMPLETED}),
    ACKNOWLEDGED: frozenset({CANCEL_REQUESTED, TIMED_OUT, FAILED, COMPLETED}),
    CANCEL_REQUESTED: frozenset({CANCELLED, TIMED_OUT}),
}


def allowed(old: int, new: int) -> bool:
    """Whether the lifecycle may move from `old` to `new`."""
    return new in _MOVES.get(old, frozenset())


@dataclass
class Record:
    """One request's lifecycle as GetRequestState reports it."""

    request_id: int
    state: int
    batch_id: int = 0
    changed_s: float = 0.0

    def lifecycle(self) -> fpb.RequestLifecyclePB:
        """The wire form."""
        return fpb.RequestLifecyclePB(request_id=self.request_id, state=self.state,  # type: ignore[arg-type]
                                      batch_id=self.batch_id)


class RequestStates:
    """Live and recently ended requests by request id (id 0 is never recorded: it names no request)."""

    def __init__(self, terminal_ttl_s: float = 60.0, max_terminal: int = 100_000) -> None:
        self.terminal_ttl_s = terminal_ttl_s
        self.max_terminal = max_terminal
        self._live: dict[int, Record] = {}
        self._ended: OrderedDict[int, Record] = OrderedDict()  # in order of ending (oldest first)

    def live(self, request_id: int) -> bool:
        """Whether a request with this id is queued, batching or in flight here."""
        return request_id in self._live

    def live_count(self) -> int:
        """Requests not yet in a terminal state."""
        return len(self._live)

    def open(self, request_id: int, state: int, now_s: float, batch_id: int = 0) -> Record:
        """Start a request's record (a live one with this id must not exist: that is the caller's 8406)."""
        if request_id in self._live:
            raise ValueError(f"request {request_id} is already in flight")
        self._ended.pop(request_id, None)
        rec = Record(request_id, state, batch_id, now_s)
        if request_id:
            if state in TERMINAL:
                self._end(rec)
            else:
                self._live[request_id] = rec
        return rec

    def move(self, rec: Record, state: int, now_s: float, batch_id: int | None = None) -> bool:
        """Move a record on (False, unchanged, when the lifecycle does not allow it)."""
        if not allowed(rec.state, state):
            return False
        rec.state = state
        rec.changed_s = now_s
        if batch_id is not None:
            rec.batch_id = batch_id
        if state in TERMINAL and self._live.get(rec.request_id) is rec:
            del self._live[rec.request_id]
            self._end(rec)
        return True

    def get(self, request_id: int, now_s: float) -> Record | None:
        """The live record, or the terminal one if it ended within the TTL."""
        self.sweep(now_s)
        return self._live.get(request_id) or self._ended.get(request_id)

    def sweep(self, now_s: float) -> None:
        """Forget terminal records older than the TTL."""
        limit = now_s - self.terminal_ttl_s
        while self._ended:
            rec = next(iter(self._ended.values()))
            if rec.changed_s > limit:
                break
            self._ended.popitem(last=False)

    def _end(self, rec: Record) -> None:
        if not rec.request_id:
            return
        self._ended.pop(rec.request_id, None)
        self._ended[rec.request_id] = rec
        while len(self._ended) > self.max_terminal:
            self._ended.popitem(last=False)
