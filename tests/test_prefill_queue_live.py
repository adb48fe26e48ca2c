"""The prefill queue in the live gateway (both relay engines) in front of real mock workers on loopback.

Each test pauses the mock workers' engines by holding their prefill lock (the engine prefills one
request at a time under it), so which calls the gateway has sent and which it holds is decided by
the test, not by timing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from flexlb import wire
from flexlb.app import Gateway
from flexlb.balancer.prefill_queue import PrefillQueueConfig
from flexlb.pb import model_rpc_service_pb2 as pb
from flexlb.sim.mock_worker import Faults, MockWorker
from tests.conftest import WorkerFactory, generate_input, stream_stub, wait_for, worker_addr

Spawn = Callable[..., "asyncio.Task[list[pb.GenerateOutputsPB]]"]


@pytest.fixture
def mock_workers(mock_workers: WorkerFactory) -> WorkerFactory:
    """This module's workers run the FIFO engine: one prefill at a time and no max_batch_tokens_size reported,
    so the gateway's depth rule (prefillQueueDepth calls at a worker) decides what is held."""
    return functools.partial(mock_workers, engine="fifo")

# one call at a worker at a time (the default is 2): the tests decide exactly which calls are held
# depth only: hold beyond one outstanding call whatever the backlog (these tests are about the queue itself)
ONE = {"prefill_queue_depth": 1, "prefill_queue_hold_after_ms": 0}


@pytest.fixture
async def spawn() -> AsyncIterator[Spawn]:
    """Start streaming calls as tasks that collect every response message; leftovers are cancelled."""
    tasks: list[asyncio.Task[list[pb.GenerateOutputsPB]]] = []

    def start(stub: grpc.aio.UnaryStreamMultiCallable, rid: int, n_tokens: int = 64,
              timeout: float = 15.0) -> asyncio.Task[list[pb.GenerateOutputsPB]]:
        async def run() -> list[pb.GenerateOutputsPB]:
            return [m async for m in stub(generate_input(rid, n_tokens=n_tokens, first_token=rid), timeout=timeout)]

        task = asyncio.get_running_loop().create_task(run())
        tasks.append(task)
        return task

    yield start
    for task in tasks:
        if not task.done():
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class Pauser:
    """Pauses mock workers' engines: a paused engine starts no prefill until resumed."""

    def __init__(self) -> None:
        self._locks: dict[int, asyncio.Lock] = {}

    async def __call__(self, w: MockWorker) -> None:
        lock = w._prefill_lock  # the engine's FIFO: a prefill runs only while holding it
        await lock.acquire()
        self._locks[id(w)] = lock

    def resume(self, w: MockWorker) -> None:
        self._locks.pop(id(w)).release()

    def resume_all(self) -> None:
        for lock in self._locks.values():
            lock.release()
        self._locks.clear()


@pytest.fixture
async def paused() -> AsyncIterator[Pauser]:
    """`await paused(w)` stops w's engine before its next prefill; `paused.resume(w)` lets it go."""
    pauser = Pauser()
    yield pauser
    pauser.resume_all()  # a test that failed half-way: let the workers finish before they are stopped


def held_gauge(gw: Gateway) -> float:
    value = gw.metrics.registry.get_sample_value("flexlb_prefill_queue_held")
    assert value is not None
    return value


def hold_waits_observed(gw: Gateway) -> float:
    return gw.metrics.registry.get_sample_value("flexlb_prefill_queue_wait_seconds_count") or 0.0


def ended_by_code(gw: Gateway, method: str = "GenerateStreamCall") -> dict[str, float]:
    out: dict[str, float] = {}
    for s in gw.metrics.requests.collect()[0].samples:
        if s.name.endswith("_total") and s.labels["method"] == method:
            out[s.labels["code"]] = out.get(s.labels["code"], 0.0) + s.value
    return out


async def settled(gw: Gateway) -> None:
    """Nothing held, nothing in flight, everywhere the gateway keeps count."""
    await wait_for(lambda: gw.cluster.ledger.calls == 0,
                   what="gateway in-flight back to 0")
    assert gw.dispatcher.held_calls() == 0
    assert gw.router.held_calls() == 0
    assert held_gauge(gw) == 0
    assert gw.router.ttft.total_pending == 0


async def test_held_calls_reach_the_worker_shortest_first(mock_workers, gateways, channels, spawn, paused) -> None:
    w = await mock_workers(time_scale=0.0)
    # 1 ms of estimated prefill per token: the held calls' sizes, not their arrival order, set the order
    gw = await gateways([worker_addr(w)], strategy="COST_BASED_PREFILL",
                        master={"ttft_prior_us_per_token": 1000.0, **ONE})
    assert gw.router.queue.config == PrefillQueueConfig(depth=1, aging=1.0, max_hold_ms=30_000, hold_after_ms=0)
    stub = stream_stub(channels(gw.grpc_port))
    await paused(w)
    first = spawn(stub, 1, 3000)
    await wait_for(lambda: w.request_ids_seen == [1], what="the first call at the worker")
    sizes = {2: 2000, 3: 100, 4: 1000, 5: 500}
    rest = [spawn(stub, rid, n) for rid, n in sizes.items()]
    await wait_for(lambda: gw.dispatcher.held_calls() == 4, what="four calls held at the gateway")
    assert held_gauge(gw) == 4
    assert gw.router.held_calls() == 4
    assert gw.cluster.ledger.calls == 5  # held calls are in flight through the gateway
    assert w.request_ids_seen == [1]  # the worker has only the one it is prefilling
    paused.resume(w)
    results = await asyncio.gather(first, *rest)
    assert [len(r) for r in results] == [8] * 5
    assert [r[0].request_id for r in results] == [1, 2, 3, 4, 5]
    assert w.request_ids_seen == [1, 3, 5, 4, 2]  # shortest estimated prefill first
    await settled(gw)
    assert hold_waits_observed(gw) == 4
    assert ended_by_code(gw) == {"OK": 5}


async def test_one_connection_with_many_held_calls_cannot_hold_back_another(mock_workers, gateways, channels, spawn,
                                                                            paused) -> None:
    w = await mock_workers(time_scale=0.0)
    gw = await gateways([worker_addr(w)], strategy="COST_BASED_PREFILL", master=ONE)
    flood = stream_stub(channels(gw.grpc_port))
    other = stream_stub(channels(gw.grpc_port, **{"grpc.channel_id": 2}))  # its own TCP connection
    await paused(w)
    first = spawn(flood, 31)
    await wait_for(lambda: w.request_ids_seen == [31], what="the first call at the worker")
    backlog = [spawn(flood, rid) for rid in range(32, 40)]
    await wait_for(lambda: gw.dispatcher.held_calls() == 8, what="the flooding connection's calls held")
    late = spawn(other, 99)
    await wait_for(lambda: gw.dispatcher.held_calls() == 9, what="the other connection's call held")
    paused.resume(w)
    await asyncio.gather(first, late, *backlog)
    # one of the flood's calls may go first (it was served nothing yet), not all eight
    assert w.request_ids_seen.index(99) <= 2, w.request_ids_seen
    await settled(gw)


async def test_cancelled_and_expired_callers_leave_the_queue(mock_workers, gateways, channels, spawn,
                                                            paused) -> None:
    w = await mock_workers(time_scale=0.0)
    gw = await gateways([worker_addr(w)], strategy="COST_BASED_PREFILL", master=ONE)
    stub = stream_stub(channels(gw.grpc_port))
    await paused(w)
    first = spawn(stub, 21)
    await wait_for(lambda: w.request_ids_seen == [21], what="the first call at the worker")
    cancelled = spawn(stub, 22)
    await wait_for(lambda: gw.dispatcher.held_calls() == 1, what="22 held")
    expiring = spawn(stub, 23, timeout=0.5)
    await wait_for(lambda: gw.dispatcher.held_calls() == 2, what="23 held")
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await expiring
    assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # the gateway's sweep (every 0.1 s) lets both go without any slot having freed
    await wait_for(lambda: gw.dispatcher.held_calls() == 0, timeout_s=3, what="the dead callers dropped")
    assert gw.router.held_calls() == 0
    assert held_gauge(gw) == 0
    assert gw.cluster.ledger.calls == 1  # only the call at the worker
    assert ended_by_code(gw) == {"CANCELLED": 2}
    paused.resume(w)
    assert len(await first) == 8
    assert w.request_ids_seen == [21]  # neither held call ever reached the worker
    assert w.cancelled_ids == []
    await settled(gw)
    assert ended_by_code(gw) == {"CANCELLED": 2, "OK": 1}


async def test_caller_gone_when_its_slot_frees_is_not_sent(mock_workers, gateways, channels, spawn,
                                                          paused) -> None:
    w = await mock_workers(time_scale=0.0)
    gw = await gateways([worker_addr(w)], strategy="COST_BASED_PREFILL",
                        master={"ttft_prior_us_per_token": 1000.0, **ONE})
    gw.dispatcher.holds.interval_s = 3600.0  # no sweep in this test: the release itself must notice
    stub = stream_stub(channels(gw.grpc_port))
    await paused(w)
    first = spawn(stub, 31)
    await wait_for(lambda: w.request_ids_seen == [31], what="the first call at the worker")
    gone = spawn(stub, 32, 64)  # the shortest: the first to be released
    await wait_for(lambda: gw.dispatcher.held_calls() == 1, what="32 held")
    later = spawn(stub, 33, 1000)
    await wait_for(lambda: gw.dispatcher.held_calls() == 2, what="33 held")
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    # the gateway has seen the caller leave (its liveness check turns false), and still holds the call
    await wait_for(lambda: sum(not c.payload.alive() for c in gw.router.queue.calls()) == 1,
                   what="the gateway noticing the cancellation")
    assert gw.dispatcher.held_calls() == 2
    paused.resume(w)
    assert len(await first) == 8
    assert len(await later) == 8
    assert w.request_ids_seen == [31, 33]
    await settled(gw)
    assert ended_by_code(gw) == {"CANCELLED": 1, "OK": 2}


async def test_a_call_held_past_max_hold_is_sent_anyway(mock_workers, gateways, channels, spawn, paused) -> None:
    w = await mock_workers(time_scale=0.0)
    gw = await gateways([worker_addr(w)], strategy="COST_BASED_PREFILL",
                        master={"prefill_queue_max_hold_ms": 200, **ONE})
    stub = stream_stub(channels(gw.grpc_port))
    await paused(w)
    calls = [spawn(stub, 36)]
    await wait_for(lambda: w.request_ids_seen == [36], what="the first call at the worker")
    calls.append(spawn(stub, 37))
    await wait_for(lambda: gw.dispatcher.held_calls() == 1, what="37 held")
    # the engine is still busy with 36 (paused), yet the sweep sends 37 once it has been held 200 ms
    await wait_for(lambda: w.request_ids_seen == [36, 37], timeout_s=3, what="37 sent after max hold")
    assert gw.dispatcher.held_calls() == 0 and held_gauge(gw) == 0
    assert hold_waits_observed(gw) == 1
    paused.resume(w)
    assert [len(r) for r in await asyncio.gather(*calls)] == [8, 8]
    await settled(gw)


async def test_depth_zero_holds_nothing(mock_workers, gateways, channels, spawn, paused) -> None:
    w = await mock_workers(time_scale=0.0)
    gw = await gateways([worker_addr(w)], strategy="COST_BASED_PREFILL", master={"prefill_queue_depth": 0})
    assert not gw.router.queue.config.enabled
    stub = stream_stub(channels(gw.grpc_port))
    await paused(w)
    calls = [spawn(stub, 40 + i) for i in range(4)]
    # every call reaches the worker while its engine is busy: they queue in the engine, not the gateway
    await wait_for(lambda: sorted(w.request_ids_seen) == [40, 41, 42, 43], what="all four at the worker")
    assert gw.dispatcher.held_calls() == 0 and gw.router.held_calls() == 0
    assert held_gauge(gw) == 0
    paused.resume(w)
    assert [len(r) for r in await asyncio.gather(*calls)] == [8] * 4
    await settled(gw)
    assert hold_waits_observed(gw) == 0  # no call ever waited in the queue
    assert ended_by_code(gw) == {"OK": 4}


async def test_depth_two_sends_two_at_a_time(mock_workers, gateways, channels, spawn, paused) -> None:
    w = await mock_workers(time_scale=0.0)
    gw = await gateways([worker_addr(w)], strategy="COST_BASED_PREFILL",
                        master={"prefill_queue_depth": 2, "prefill_queue_hold_after_ms": 0})
    stub = stream_stub(channels(gw.grpc_port))
    await paused(w)
    calls = [spawn(stub, 50), spawn(stub, 51)]
    await wait_for(lambda: sorted(w.request_ids_seen) == [50, 51], what="two calls at the worker")
    calls += [spawn(stub, 52), spawn(stub, 53)]
    await wait_for(lambda: gw.dispatcher.held_calls() == 2, what="the third and fourth held")
    assert len(w.request_ids_seen) == 2
    paused.resume(w)
    assert [len(r) for r in await asyncio.gather(*calls)] == [8] * 4
    assert sorted(w.request_ids_seen) == [50, 51, 52, 53]
    await settled(gw)


async def test_batch_generate_call_is_never_held(mock_workers, gateways, channels, spawn, paused) -> None:
    w = await mock_workers(time_scale=0.0)
    gw = await gateways([worker_addr(w)], strategy="COST_BASED_PREFILL", master=ONE)
    ch = channels(gw.grpc_port)
    stub = stream_stub(ch)
    batch_stub = ch.unary_unary(
        "/RpcService/BatchGenerateCall", request_serializer=pb.BatchGenerateInputPB.SerializeToString,
        response_deserializer=pb.BatchGenerateOutputsPB.FromString,
    )
    await paused(w)
    first = spawn(stub, 61)
    await wait_for(lambda: w.request_ids_seen == [61], what="the first call at the worker")
    held = spawn(stub, 62)
    await wait_for(lambda: gw.dispatcher.held_calls() == 1, what="62 held")
    batch = asyncio.ensure_future(
        batch_stub(pb.BatchGenerateInputPB(inputs=[generate_input(63, max_new_tokens=3)]), timeout=15))
    try:
        # the batch goes straight to the busy worker although a stream call is held for it
        await wait_for(lambda: w.calls_received == 2, what="the batch call at the worker")
        assert w.request_ids_seen == [61]
        assert gw.dispatcher.held_calls() == 1
        paused.resume(w)
        reply = await batch
    finally:
        batch.cancel()
    assert len(reply.results) == 1
    assert [len(r) for r in await asyncio.gather(first, held)] == [8, 8]
    assert w.request_ids_seen == [61, 62]
    await settled(gw)


async def test_a_call_held_for_a_fail_open_worker_is_served(mock_workers, gateways, channels, spawn, paused) -> None:
    w = await mock_workers(time_scale=0.0)
    gw = await gateways([worker_addr(w)], strategy="COST_BASED_PREFILL", master={"health_check_interval_ms": 0, **ONE})
    state = gw.cluster.get(worker_addr(w).key)
    assert state is not None
    state.healthy = False  # e.g. its health checks time out: with no other worker, routing fails open
    stub = stream_stub(channels(gw.grpc_port))
    await paused(w)
    calls = [spawn(stub, 91)]
    await wait_for(lambda: w.request_ids_seen == [91], what="the first call at the worker (fail open)")
    calls.append(spawn(stub, 92))
    await wait_for(lambda: gw.dispatcher.held_calls() == 1 or calls[1].done(), what="92 routed")
    gw.router.maintain()  # what the periodic sweep does
    paused.resume(w)
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert [len(r) if isinstance(r, list) else r for r in results] == [8, 8]  # as with prefillQueueDepth 0
    assert w.request_ids_seen == [91, 92]
    await settled(gw)


async def _two_paused_workers(mock_workers, gateways, paused, **master: Any):  # type: ignore[no-untyped-def]
    ws = [await mock_workers(time_scale=0.0) for _ in range(2)]
    # every call estimated at >= 1 s of prefill: the milliseconds between sends cannot change a choice
    gw = await gateways([worker_addr(w) for w in ws], strategy="COST_BASED_PREFILL",
                        master={"health_check_interval_ms": 0, "ttft_prior_base_ms": 1000.0, **ONE, **master})
    for w in ws:
        await paused(w)
    return ws, gw


async def _route_in_turn(gw: Gateway, ws: list[MockWorker], spawn: Spawn, stub: Any,
                         rids: list[int]) -> tuple[MockWorker, MockWorker, list[asyncio.Task[Any]]]:
    """Send calls one by one: the first two reach a worker each (x, then the idle y), the rest are held
    alternately for x and y (each goes where less held work is ahead of it; ties to the least recently chosen)."""
    calls = [spawn(stub, rids[0])]
    await wait_for(lambda: any(w.request_ids_seen for w in ws), what="the first call at a worker")
    x = next(w for w in ws if w.request_ids_seen == [rids[0]])
    y = next(w for w in ws if w is not x)
    calls.append(spawn(stub, rids[1]))
    await wait_for(lambda: y.request_ids_seen == [rids[1]], what="the second call at the other worker")
    for n, rid in enumerate(rids[2:], 1):
        calls.append(spawn(stub, rid))
        await wait_for(lambda n=n: gw.dispatcher.held_calls() == n, what=f"call {rid} held")  # type: ignore[misc]
    return x, y, calls


async def test_calls_held_for_a_worker_taken_out_are_routed_elsewhere(mock_workers, gateways, channels, spawn,
                                                                      paused) -> None:
    ws, gw = await _two_paused_workers(mock_workers, gateways, paused)
    stub = stream_stub(channels(gw.grpc_port))
    x, y, calls = await _route_in_turn(gw, ws, spawn, stub, [71, 72, 73, 74])
    kx, ky = worker_addr(x).key, worker_addr(y).key
    assert (gw.router.queue.held(kx), gw.router.queue.held(ky)) == (1, 1)  # 73 for x, 74 for y
    assert gw.set_rotation(kx, False, "test") is not None
    # the sweep hands 73 back and it is routed to y, where it waits behind 74
    await wait_for(lambda: gw.router.queue.held(kx) == 0 and gw.router.queue.held(ky) == 2,
                   what="73 re-routed to the other worker")
    assert gw.dispatcher.held_calls() == 2 and held_gauge(gw) == 2
    assert gw.cluster.ledger.calls == 4
    paused.resume(x)
    paused.resume(y)
    assert [len(r) for r in await asyncio.gather(*calls)] == [8] * 4
    assert x.request_ids_seen == [71]
    assert y.request_ids_seen == [72, 74, 73]
    await settled(gw)
    assert ended_by_code(gw) == {"OK": 4}


async def _eject_while_held(mock_workers, gateways, channels, spawn, paused):  # type: ignore[no-untyped-def]
    """x and y paused, each with one call at the worker; x with 83 and 85 held, y with 84. x then fails
    every new call with a status that blames it (one failure ejects); both resume and everything ends."""
    ws, gw = await _two_paused_workers(mock_workers, gateways, paused, outlier_consecutive_failures=1)
    stub = stream_stub(channels(gw.grpc_port))
    x, y, calls = await _route_in_turn(gw, ws, spawn, stub, [81, 82, 83, 84, 85])
    kx, ky = worker_addr(x).key, worker_addr(y).key
    assert (gw.router.queue.held(kx), gw.router.queue.held(ky)) == (2, 1)  # 83, 85 for x; 84 for y
    # GET_HOST_FAILED (INTERNAL): the worker's fault, so it fails over and counts toward ejection
    x.config = dataclasses.replace(x.config, faults=Faults(error_rate=1.0, error_code=wire.GET_HOST_FAILED))
    paused.resume(x)
    # 81 finishes; 83 is released to x, fails and x is ejected; 83 fails over to y (a retry is never held)
    state = gw.cluster.get(kx)
    assert state is not None
    await wait_for(lambda: state.probing and 83 in y.request_ids_seen
                   and (gw.router.queue.held(ky) == 2 or 85 in y.request_ids_seen),
                   what="x ejected, 83 and 85 on their way to y")
    assert state.ejections == 1
    assert gw.router.queue.held(kx) == 0
    paused.resume(y)
    results = await asyncio.gather(*calls)
    return gw, x, y, results


async def test_calls_held_for_an_ejected_worker_end_on_another(mock_workers, gateways, channels, spawn,
                                                               paused) -> None:
    gw, x, y, results = await _eject_while_held(mock_workers, gateways, channels, spawn, paused)
    assert [len(r) for r in results] == [8] * 5
    assert x.request_ids_seen[:2] == [81, 83]
    assert sorted(y.request_ids_seen) == [82, 83, 84, 85]
    await settled(gw)
    assert ended_by_code(gw) == {"OK": 5, "INTERNAL": len(x.request_ids_seen) - 1}


async def test_a_call_held_for_a_worker_that_gets_ejected_never_goes_there(mock_workers, gateways, channels, spawn,
                                                                           paused) -> None:
    # the failure that ejects x must not first hand x's freed slot to the next call held for it
    gw, x, y, _ = await _eject_while_held(mock_workers, gateways, channels, spawn, paused)
    assert x.request_ids_seen == [81, 83]  # 85 was held for x when x was ejected: it goes to y instead
    assert y.request_ids_seen == [82, 83, 84, 85]  # 85 waits its turn on y behind 84
    failovers = {s.labels["code"]: s.value for s in gw.metrics.failovers.collect()[0].samples
                 if s.name.endswith("_total")}
    assert failovers == {"INTERNAL": 1}
