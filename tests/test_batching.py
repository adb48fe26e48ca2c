"""The prefill batching window: pure batcher, dispatch order, and the live gateway holding a burst."""

from __future__ import annotations

import asyncio

from flexlb.balancer.batcher import BatchConfig, Batcher, dispatch_order
from flexlb.balancer.request import RouteRequest
from flexlb.config import KvCacheMode
from tests.conftest import generate_input, stream_stub, wait_for, worker_addr


def _req(i: int, tokens: int, first_key: int | None = None) -> RouteRequest:
    keys = (first_key, i) if first_key is not None else ()
    return RouteRequest(i, tokens, block_keys=keys, block_size_tokens=1)


def test_batch_config_enabled_only_with_window_and_room() -> None:
    assert not BatchConfig(0, 8).enabled
    assert not BatchConfig(50, 1).enabled
    assert BatchConfig(50, 2).enabled


def test_batcher_closes_on_size_and_reports_its_deadline() -> None:
    b: Batcher[str] = Batcher(BatchConfig(wait_ms=100, size=3))
    assert b.deadline_s() is None
    assert b.add(_req(1, 10), "a", now_s=5.0) is None
    assert b.deadline_s() == 5.1
    assert b.add(_req(2, 10), "b", now_s=5.05) is None
    full = b.add(_req(3, 10), "c", now_s=5.06)
    assert full is not None and [p for _, p in full] == ["a", "b", "c"]
    assert len(b) == 0 and b.deadline_s() is None
    b.add(_req(4, 10), "d", now_s=6.0)
    assert [p for _, p in b.take()] == ["d"]


def test_dispatch_order_is_shortest_first_with_prefix_groups_together() -> None:
    batch = [(_req(1, 900, first_key=7), "long-shared"), (_req(2, 50), "short"),
             (_req(3, 300, first_key=7), "mid-shared"), (_req(4, 5000), "longest")]
    order = [p for _, p in dispatch_order(batch, lambda r: r.prompt_tokens)]
    # the shared-prefix group is led by its shortest member and kept together
    assert order == ["short", "mid-shared", "long-shared", "longest"]


async def test_gateway_dispatches_a_burst_shortest_first(mock_workers, gateways, channels) -> None:
    w = await mock_workers(time_scale=1.0)
    gw = await gateways([worker_addr(w)], strategy="COST_BASED_PREFILL",
                        master={"prefill_batch_wait_time_ms": 300, "batch_size": 4,
                                "kv_cache": KvCacheMode.LOCAL_STATIC})
    stub = stream_stub(channels(gw.grpc_port))
    sizes = {301: 3000, 302: 100, 303: 1500, 304: 40}
    routed: list[int] = []
    route = gw.router.route

    def recording_route(req, **kw):  # type: ignore[no-untyped-def]
        routed.append(req.request_id)
        return route(req, **kw)

    gw.router.route = recording_route  # type: ignore[method-assign]

    async def call(rid: int) -> int:
        return len([m async for m in stub(generate_input(rid, n_tokens=sizes[rid], first_token=rid), timeout=10)])

    results = await asyncio.gather(*(call(rid) for rid in sizes))
    assert results == [8] * 4
    # the four arrived within the window and were routed together, shortest prompt first
    assert routed == [304, 302, 303, 301]
    samples = {s.name: s.value for s in gw.metrics.batch_size.collect()[0].samples}
    assert (samples["flexlb_prefill_batch_size_count"], samples["flexlb_prefill_batch_size_sum"]) == (1, 4)
    if gw.settings.server.relay_engine == "h2":
        # the frame relay opens the upstream streams in that order on one connection, so the worker's
        # FIFO serves them in that order (grpcio's separate calls may reach the worker in any order)
        assert w.request_ids_seen == [304, 302, 303, 301]
    await wait_for(lambda: gw.cluster.ledger.calls == 0, what="in-flight back to 0")


async def test_window_never_holds_a_lone_request_past_its_wait(mock_workers, gateways, channels) -> None:
    w = await mock_workers()
    gw = await gateways([worker_addr(w)], master={"prefill_batch_wait_time_ms": 50, "batch_size": 64})
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert len([m async for m in stream_stub(channels(gw.grpc_port))(generate_input(400), timeout=10)]) == 8
    # released by the window timer, not by a full batch (64 never arrive)
    assert loop.time() - t0 < 2.0
    assert w.request_ids_seen == [400]


async def test_call_cancelled_in_the_window_reserves_nothing(mock_workers, gateways, channels) -> None:
    w = await mock_workers()
    gw = await gateways([worker_addr(w)], master={"prefill_batch_wait_time_ms": 400, "batch_size": 64})
    call = stream_stub(channels(gw.grpc_port))(generate_input(500), timeout=10)
    batcher = gw.dispatcher._batcher
    assert batcher is not None
    await wait_for(lambda: len(batcher) == 1, what="the request to wait in the window")
    call.cancel()
    # the window closes 400 ms after it opened; the cancelled call must never reach the worker
    follower = stream_stub(channels(gw.grpc_port))(generate_input(501), timeout=10)
    assert len([m async for m in follower]) == 8
    assert w.request_ids_seen == [501]
    await wait_for(lambda: gw.cluster.ledger.calls == 0, what="in-flight back to 0")
