"""CallLife on its own: a real Dispatcher and router, a fake port (the engine) and fake timers.

What the engines share is decided here once: which failures fail over and whose fault they are, the
attempt cap, the first-message timeout, the draining answer, the client's deadline, and that a call
ends exactly once with its load given back.
"""

from __future__ import annotations

import time
from typing import Any

import grpc

from flexlb.balancer.workers import Role
from flexlb.call.dispatch import Dispatcher, Planned
from flexlb.call.lifecycle import FIRST_MESSAGE_LATE, CallLife, CallPolicy
from flexlb.metrics import Metrics
from flexlb.pb import model_rpc_service_pb2 as pb
from tests.balancer_support import FakeClock, FakeTimers, addrs, make_router

GENERATE = "GenerateStreamCall"


class FakePort:
    """The engine side: records what the lifecycle asked for."""

    def __init__(self) -> None:
        self.attempts: list[Planned] = []
        self.metadata: list[Any] = []
        self.stopped = 0
        self.answers: list[tuple[grpc.StatusCode, str, tuple[tuple[str, bytes], ...]]] = []

    def start_attempt(self, planned: Planned, metadata: Any, timeout_s: float | None) -> None:
        self.attempts.append(planned)
        self.metadata.append(metadata)

    def stop_attempt(self) -> None:
        self.stopped += 1

    def answer(self, code: grpc.StatusCode, message: str, trailer: tuple[tuple[str, bytes], ...]) -> None:
        self.answers.append((code, message, trailer))

    def workers(self) -> list[str]:
        return [p.lease.decision.target.key for p in self.attempts]


class Setup:
    def __init__(self, workers: int = 3, policy: CallPolicy | None = None, draining: bool = False) -> None:
        self.router = make_router(addrs(Role.PDFUSION, workers), "ROUND_ROBIN", clock=FakeClock())
        self.timers = FakeTimers()
        self.draining = draining
        self.dispatcher = Dispatcher(self.router, Metrics(), lambda: self.draining, 64,
                                     call_later=self.timers.call_later, defer=lambda fn: fn())
        self.policy = policy or CallPolicy()
        self.port = FakePort()

    def call(self, deadline_s: float | None = None, method: str = GENERATE) -> CallLife:
        return CallLife(self.dispatcher, self.policy, self.port, self.timers, method, [("x-trace", "1")],
                        deadline_s)

    def worker(self, key: str) -> Any:
        w = self.router.cluster.get(key)
        assert w is not None
        return w


def body(rid: int = 1) -> bytes:
    return pb.GenerateInputPB(request_id=rid, token_ids=[5] * 64,
                              generate_config=pb.GenerateConfigPB(max_new_tokens=4)).SerializeToString()


def test_a_worker_fault_before_the_first_message_fails_over_and_blames_it() -> None:
    s = Setup()
    life = s.call()
    life.request(body())
    first = s.port.workers()[0]
    assert life.attempt_failed("INTERNAL", 8200)  # GET_HOST_FAILED: the worker's fault
    assert len(s.port.attempts) == 2 and s.port.workers()[1] != first
    assert s.port.attempts[1].attempt == 2
    assert s.port.metadata[1] == [("x-trace", "1")]  # the client's metadata on every attempt
    assert s.worker(first).consecutive_failures == 1
    assert s.router.cluster.ledger.calls == 1  # the failed attempt's load is back; the call is one call
    life.first_message(None)
    assert not life.attempt_failed("UNAVAILABLE")  # after the first message nothing fails over
    life.ended("OK", 4)
    life.ended("OK", 4)  # a second end is nothing
    life.cancelled()
    assert life.finished and s.router.cluster.ledger.calls == 0
    assert all(w.in_flight == 0 for w in s.router.cluster.all())
    assert s.port.answers == []


def test_a_request_fault_neither_fails_over_nor_blames() -> None:
    s = Setup()
    life = s.call()
    life.request(body())
    assert not life.attempt_failed("INTERNAL", 605)  # INVALID_PARAMS: any worker would say the same
    life.ended("INTERNAL", 0, 605)
    assert len(s.port.attempts) == 1
    assert all(w.consecutive_failures == 0 for w in s.router.cluster.all())
    assert s.router.cluster.ledger.calls == 0


def test_busy_fails_over_without_blame() -> None:
    s = Setup()
    life = s.call()
    life.request(body())
    assert life.attempt_failed("RESOURCE_EXHAUSTED")  # the worker's admission: try another, it is not sick
    assert all(w.consecutive_failures == 0 for w in s.router.cluster.all())


def test_the_attempt_cap_ends_the_call() -> None:
    s = Setup(workers=4, policy=CallPolicy(max_attempts=3))
    life = s.call()
    life.request(body())
    assert life.attempt_failed("UNAVAILABLE")
    assert life.attempt_failed("UNAVAILABLE")
    assert not life.attempt_failed("UNAVAILABLE")  # a third failure: the engine relays it
    life.give_up(grpc.StatusCode.UNAVAILABLE, "worker unreachable", error_code=8202)
    assert len(set(s.port.workers())) == 3
    assert s.port.answers[0][0] == grpc.StatusCode.UNAVAILABLE
    assert s.router.cluster.ledger.calls == 0


def test_no_failover_without_deadline_budget() -> None:
    s = Setup()
    life = s.call(deadline_s=time.monotonic() + 0.01)  # below min_retry_budget_s
    life.request(body())
    assert not life.attempt_failed("UNAVAILABLE")


def test_the_first_message_timeout_stops_the_attempt_and_blames_the_worker() -> None:
    s = Setup(policy=CallPolicy(first_message_timeout_s=0.3))
    life = s.call()
    life.request(body())
    first = s.port.workers()[0]
    s.timers.fire()  # the first message did not come in time
    assert s.port.stopped == 1 and len(s.port.attempts) == 2
    assert s.worker(first).consecutive_failures == 1
    s.timers.fire()  # and again on the second worker
    s.timers.fire()  # and the third: no attempt left
    assert s.port.answers and s.port.answers[-1][:2] == (grpc.StatusCode.DEADLINE_EXCEEDED, FIRST_MESSAGE_LATE)
    assert life.finished and s.router.cluster.ledger.calls == 0


def test_the_client_deadline_answers_and_blames_nobody() -> None:
    s = Setup()
    life = s.call(deadline_s=time.monotonic() + 5.0)
    life.request(body())
    s.timers.fire()  # the deadline timer
    assert s.port.stopped == 1 and s.port.answers[0][0] == grpc.StatusCode.DEADLINE_EXCEEDED
    assert all(w.consecutive_failures == 0 for w in s.router.cluster.all())
    assert life.finished and s.router.cluster.ledger.calls == 0


def test_draining_is_answered_before_routing() -> None:
    s = Setup(draining=True)
    life = s.call()
    assert not life.admitted()
    assert s.port.answers[0][0] == grpc.StatusCode.UNAVAILABLE and "shutting down" in s.port.answers[0][1]
    assert s.port.attempts == [] and s.router.cluster.ledger.calls == 0


def test_a_client_leaving_stops_the_attempt_and_releases_once() -> None:
    s = Setup()
    life = s.call()
    life.request(body())
    life.cancelled(2)
    assert s.port.stopped == 1 and life.finished
    assert s.router.cluster.ledger.calls == 0
    assert not life.attempt_failed("UNAVAILABLE")  # the engine reporting the stopped attempt changes nothing
    assert len(s.port.attempts) == 1


def test_a_bad_request_is_rejected_without_an_attempt() -> None:
    s = Setup()
    life = s.call()
    life.request(b"\xff\xff")
    assert s.port.answers[0][0] == grpc.StatusCode.INVALID_ARGUMENT
    assert s.port.attempts == [] and life.finished
