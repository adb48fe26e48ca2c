"""The life of one routed call, shared by both engines: admission, attempts, timers, the one finish.

An engine moves bytes and reports what it saw (the request, the first response message, a failed
attempt, the end, the client leaving); this decides what happens next (send to a worker, fail over,
give up with a status) and tells the engine through its `CallPort`. Every rule of a call lives here
once: when an attempt may fail over, the attempt cap and the deadline budget, the first-message
timeout, the draining answer, and the finish that releases the call's load exactly once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import grpc

from flexlb import wire
from flexlb.balancer.failures import FailureKind, classify
from flexlb.balancer.workers import WorkerAddr
from flexlb.call.dispatch import BATCH_GENERATE, DRAINING, GENERATE_STREAM, Dispatcher, Planned, Rejection
from flexlb.call.metadata import api_key
from flexlb.call.record import CallRecord
from flexlb.ratelog import RateLimitedLog

__all__ = ["DRAINING", "FIRST_MESSAGE_LATE", "PREEMPTED", "CallLife", "CallPolicy", "CallPort", "Metadata"]

log = logging.getLogger("flexlb.call")
_log = RateLimitedLog(log)  # a dead worker fails every call sent to it: one line per worker and reason per 10 s

Metadata = list[tuple[str, "str | bytes"]]
FIRST_MESSAGE_LATE = "no first token within prefillGenerateTimeoutMs"
PREEMPTED = "request preempted by Cancel"


class TimerHandle(Protocol):
    """What a scheduled callback gives back."""

    def cancel(self) -> None:
        """Do not run it."""


class Timers(Protocol):
    """The clock the lifecycle schedules its timeouts on (the event loop live, a fake in tests)."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run `callback` after `delay` seconds."""


class CallPort(Protocol):
    """What the lifecycle asks of the engine carrying the call."""

    messages: int  # response messages of the attempt in progress relayed so far

    def start_attempt(self, planned: Planned, metadata: Metadata, timeout_s: float | None) -> None:
        """Send the call to `planned`'s worker (`timeout_s`: what is left of the client's deadline)."""

    def stop_attempt(self) -> None:
        """Cancel the attempt in progress (its worker stream), if any."""

    def answer(self, code: grpc.StatusCode, message: str, trailer: tuple[tuple[str, bytes], ...]) -> None:
        """End the client's call with a status the gateway makes (after what was relayed, if anything was);
        `trailer` is its ErrorDetailsPB (grpc-status-details-bin)."""


@dataclass(frozen=True)
class CallPolicy:
    """The rules of attempts (one instance per gateway)."""

    max_attempts: int = 3  # the first try and its failovers
    min_retry_budget_s: float = 0.05  # a failover needs this much of the client's deadline left
    first_message_timeout_s: float | None = None  # prefillGenerateTimeoutMs (None: no bound)


class CallLife:
    """One routed client call, from its request to its one finish."""

    def __init__(self, dispatcher: Dispatcher, policy: CallPolicy, port: CallPort, timers: Timers, method: str,
                 metadata: Metadata, deadline_s: float | None, client: str = "", enforce_deadline: bool = True) -> None:
        self.dispatcher = dispatcher
        self.policy = policy
        self.port = port
        self.timers = timers
        self.method = method
        self.metadata = metadata
        self.deadline_s = deadline_s  # monotonic; None: no deadline
        self.client = client
        self.planned: Planned | None = None  # the attempt in progress (or the last one)
        self.responded = False  # the attempt's first response message went to the client: no failover now
        self.finished = False
        self.request_id: int | None = None  # known once the request is parsed (GenerateStreamCall)
        self.final = False  # Cancel was relayed to the worker: how the attempt ends is the call's end
        self._first_timer: TimerHandle | None = None
        self._late = False  # the attempt being ended ran past the first-message timeout
        self._deadline_timer: TimerHandle | None = None
        self._started_s = time.monotonic()
        self._first_s: float | None = None  # when the first response message went to the client
        self._cached_tokens: int | None = None
        self._rejection = ""  # the reason of a gateway-made answer
        if deadline_s is not None and enforce_deadline:
            self._deadline_timer = timers.call_later(max(deadline_s - time.monotonic(), 0.0), self._deadline_passed)

    # ------------------------------------------------------------ events from the engine

    def admitted(self) -> bool:
        """Whether a new call may start at all (False: it was answered, e.g. while draining)."""
        if self.dispatcher.is_draining():
            self.reject(DRAINING)
            return False
        return True

    def request(self, message: bytes) -> None:
        """The whole request message is in: route it (possibly after the batching window or the prefill queue)."""
        if self.finished:
            return
        if self.dispatcher.is_draining():
            self.reject(DRAINING)
            return
        if self.method == GENERATE_STREAM:
            self.dispatcher.submit_generate(message, self._routed, alive=lambda: not self.finished,
                                            client=self.client, parsed=self._parsed,
                                            api_key=api_key(self.metadata))
            return
        try:
            planned = self.dispatcher.plan_batch(message)
        except Rejection as rejection:
            self.reject(rejection)
            return
        self._routed(planned)

    def first_message(self, message: bytes | None) -> None:
        """The first response message of the attempt: no failover from here on; feed the balancer."""
        self._cancel_first_timer()
        self.responded = True
        if self._first_s is None:
            self._first_s = time.monotonic()
        if self.planned is not None and not self.finished:
            self._cached_tokens = self.dispatcher.first_message(self.planned, message)

    def attempt_failed(self, code_name: str, engine_code: int | None = None) -> bool:
        """The attempt ended before any response message reached the client. True: another attempt started
        (the engine shows nothing of this one); False: the engine ends the call (relaying, or `give_up`)."""
        planned = self.planned
        if self.finished or planned is None or self.responded or self.final:
            return False
        kind = self._kind(code_name, engine_code)
        if not kind.fails_over or planned.req is None:
            return False
        if planned.attempt >= self.policy.max_attempts:
            return False
        if self.deadline_s is not None and self.deadline_s - time.monotonic() < self.policy.min_retry_budget_s:
            return False
        self._cancel_first_timer()
        self._late = False
        nxt = self.dispatcher.reroute(planned, code_name, kind)
        if nxt is None:
            return False  # the attempt was finished there; nothing else can take it: the engine ends the call
        self._start(nxt)
        return True

    def give_up(self, code: grpc.StatusCode, message: str, messages: int = 0, *, error_code: int,
                detail: str = "") -> None:
        """The engine cannot relay a worker's status (connect failure, reset, lost connection, timeout): answer
        the client with `message` and `error_code` in an ErrorDetailsPB. Worker addresses stay out of the
        answer (RTP-LLM's frontend shows it to end users): the worker and `detail` go to the log."""
        if self.finished:
            return
        worker = self.planned.lease.decision.target.key if self.planned is not None else "-"
        _log.log(logging.WARNING, f"{worker}:{message}", "%s call %s to worker %s failed: %s%s", self.method,
                 self.request_id if self.request_id is not None else "-", worker, message,
                 f" ({detail})" if detail else "")
        self.port.answer(code, message, wire.error_trailer(error_code, message))
        self._finish(code.name, messages, self._kind(code.name, None))

    def ended(self, code_name: str, messages: int, engine_code: int | None = None) -> None:
        """The call is over with the worker's own status, relayed to the client as it came."""
        self._finish(code_name, messages, self._kind(code_name, engine_code))

    def cancelled(self, messages: int = 0) -> None:
        """The client left: stop the attempt, release everything."""
        if self.finished:
            return
        self.port.stop_attempt()
        self._finish("CANCELLED", messages, FailureKind.CLIENT)

    # ------------------------------------------------------------ RpcService.Cancel (flexlb/call/requests.py)

    def worker(self) -> WorkerAddr | None:
        """The worker the attempt in progress went to; None while the call is at the gateway or over."""
        if self.finished or self.planned is None or self.planned.lease.held:
            return None
        return self.planned.lease.decision.target.addr

    def keep_final(self) -> None:
        """The worker was asked to cancel the request: its end of the attempt is relayed, never failed over."""
        self.final = True

    def preempt(self, message: str = PREEMPTED) -> bool:
        """End the call here as the engine ends a preempted request (RESOURCE_EXHAUSTED, PRIORITY_PREEMPTED);
        the worker stream, if any, is cancelled. False when the call had ended already."""
        if self.finished:
            return False
        messages = self.port.messages if self.planned is not None else 0
        self.port.stop_attempt()
        self.port.answer(grpc.StatusCode.RESOURCE_EXHAUSTED, message,
                         wire.error_trailer(wire.PRIORITY_PREEMPTED, message))
        self._finish(grpc.StatusCode.RESOURCE_EXHAUSTED.name, messages, None)
        return True

    # ------------------------------------------------------------ decisions

    def _parsed(self, request_id: int) -> None:
        if not self.finished and self.request_id is None:
            self.request_id = request_id
            self.dispatcher.requests.add(request_id, self)

    def _routed(self, outcome: Planned | Rejection) -> None:
        if isinstance(outcome, Rejection):
            self.reject(outcome)
            return
        if self.finished:
            # the client left while the call was being placed: give the reservation back
            self.dispatcher.finish(outcome, "CANCELLED", 0, FailureKind.CLIENT)
            return
        self._start(outcome)

    def _start(self, planned: Planned) -> None:
        self.planned = planned
        self.responded = False
        timeout_s = None if self.deadline_s is None else max(self.deadline_s - time.monotonic(), 1e-6)
        late_s = self.policy.first_message_timeout_s
        if late_s is not None and self.method == GENERATE_STREAM:
            self._first_timer = self.timers.call_later(late_s, lambda: self._first_message_late(planned))
        self.port.start_attempt(planned, self.metadata, timeout_s)

    def _first_message_late(self, planned: Planned) -> None:
        self._first_timer = None
        if self.finished or self.planned is not planned or self.responded:
            return
        self.port.stop_attempt()
        self._late = True  # the worker's fault, whatever the client's deadline says
        if self.attempt_failed(grpc.StatusCode.DEADLINE_EXCEEDED.name):
            return
        self.give_up(grpc.StatusCode.DEADLINE_EXCEEDED, FIRST_MESSAGE_LATE, error_code=wire.GENERATE_TIMEOUT)

    def _deadline_passed(self) -> None:
        self._deadline_timer = None
        if self.finished:
            return
        self.port.stop_attempt()
        self.port.answer(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded",
                         wire.error_trailer(wire.GENERATE_TIMEOUT, "Deadline Exceeded"))
        self._finish(grpc.StatusCode.DEADLINE_EXCEEDED.name, 0, FailureKind.CLIENT)  # the client's deadline

    def reject(self, rejection: Rejection) -> None:
        """Answer the call with a gateway-made status (counted as a rejection)."""
        if self.finished:
            return
        self.dispatcher.reject(self.method, rejection)
        self._rejection = rejection.reason
        self.port.answer(rejection.code, rejection.message, rejection.trailer())
        self._finish(rejection.code.name, 0, None)

    def _kind(self, code_name: str, engine_code: int | None) -> FailureKind:
        """Whose fault the attempt's end is (flexlb/balancer/failures.py), with what only the call knows:
        its first-message timeout fired (the worker's fault), or the client's own deadline ran out."""
        if self._late:
            return FailureKind.WORKER
        client_ended = code_name == "DEADLINE_EXCEEDED" and self.deadline_s is not None \
            and self.deadline_s - time.monotonic() < self.policy.min_retry_budget_s
        return classify(code_name, engine_code, client_ended=client_ended)

    def _cancel_first_timer(self) -> None:
        if self._first_timer is not None:
            self._first_timer.cancel()
            self._first_timer = None

    def _finish(self, code_name: str, messages: int, kind: FailureKind | None) -> None:
        if self.finished:
            return
        self.finished = True
        self._late = False
        self._cancel_first_timer()
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        if self.request_id is not None:
            self.dispatcher.requests.discard(self.request_id, self)
        if self.planned is not None:
            self.dispatcher.finish(self.planned, code_name, messages, kind, mid_stream=self.responded)
        self.dispatcher.call_ended(self._record(code_name, messages))

    def _record(self, code_name: str, messages: int) -> CallRecord:
        now = time.monotonic()
        p = self.planned
        d = p.lease.decision if p is not None else None
        req = p.req if p is not None else None
        return CallRecord(
            self.method, code_name, now - self._started_s,
            None if self._first_s is None else self._first_s - self._started_s,
            p.attempt if p is not None else 0, req.request_id if req is not None else None,
            d.target.key if d is not None else None, d.target.role.name if d is not None else None,
            d.decode.key if d is not None and d.decode is not None else None,
            d.strategy if d is not None else "", self._rejection or (d.reason if d is not None else ""),
            req.prompt_tokens if req is not None else 0, self._cached_tokens, messages, self.client)


ROUTED_METHODS = (GENERATE_STREAM, BATCH_GENERATE)
