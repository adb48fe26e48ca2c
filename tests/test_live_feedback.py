"""The live gateway feeds the balancer core: block keys at routing, first-message feedback, metrics."""

from __future__ import annotations

import aiohttp

from flexlb.config import KvCacheMode
from tests.conftest import generate_input, stream_stub, wait_for, worker_addr


async def test_prefix_affinity_and_ttft_learning_through_the_gateway(mock_workers, gateways, channels) -> None:
    ws = [await mock_workers(time_scale=1.0) for _ in range(3)]
    gw = await gateways(
        [worker_addr(w) for w in ws], strategy="COST_BASED_PREFILL",
        master={"kv_cache": KvCacheMode.LOCAL_STATIC, "static_cache_block_size": 64},
    )
    stub = stream_stub(channels(gw.grpc_port))
    # one long shared prompt, sent again and again: it should stay where its KV blocks are
    prompt_calls = [generate_input(100 + i, n_tokens=4000, max_new_tokens=2, first_token=7) for i in range(6)]
    for req in prompt_calls:
        async for _ in stub(req, timeout=10):
            pass
    counts = sorted(w.calls_received for w in ws)
    assert counts == [0, 0, 6], counts
    holder = next(w for w in ws if w.calls_received == 6)
    # the mock worker really reused the prefix (the gateway's record matched the worker's cache)
    assert holder.cache.version >= 1
    model = gw.router.ttft.worker(f"127.0.0.1:{holder.port}")
    await wait_for(lambda: model.observations == 6, what="six first-message observations")
    assert not model.pending  # every prefill left the backlog
    assert model.abs_error_ms < 1_000
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{gw.admin_port}/actuator/prometheus") as r:
        text = await r.text()
    key = f'worker="127.0.0.1:{holder.port}"'
    assert any(line.startswith("flexlb_worker_ttft_abs_error_seconds{") and key in line for line in text.splitlines())
    assert "flexlb_worker_prefill_coefficient" in text
    # the transit (sent to first message, minus the engine's own time) is learned from real streams:
    # loopback hops and the gateway, more than nothing and far less than the prefill of 4,000 tokens
    assert 0.0 < model.transit_ms < 100.0
    transit = [line for line in text.splitlines() if line.startswith("flexlb_worker_transit_seconds{") and key in line]
    assert transit and 0.0 < float(transit[0].rsplit(" ", 1)[1]) < 0.1


async def test_index_off_routes_without_keys(mock_workers, gateways, channels) -> None:
    ws = [await mock_workers() for _ in range(2)]
    gw = await gateways([worker_addr(w) for w in ws], strategy="COST_BASED_PREFILL",
                        master={"kv_cache": KvCacheMode.NONE})
    assert gw.router.index is None
    stub = stream_stub(channels(gw.grpc_port))
    for i in range(4):
        assert len([m async for m in stub(generate_input(200 + i), timeout=10)]) == 8


async def test_local_sync_learns_what_workers_hold_from_get_cache_status(mock_workers, gateways, channels) -> None:
    ws = [await mock_workers() for _ in range(3)]
    gw = await gateways([worker_addr(w) for w in ws], strategy="COST_BASED_PREFILL",
                        master={"kv_cache": KvCacheMode.LOCAL_SYNC, "static_cache_block_size": 16})
    sync = gw.cache_sync
    assert sync is not None and gw.router.index is not None
    index = gw.router.index
    # the workers report 64-token blocks: the gateway switches to that size to key prompts
    await wait_for(lambda: gw.dispatcher.block_size_tokens == 64, what="block size from GetCacheStatus")
    # warm the third worker's cache behind the gateway's back, as another client or gateway would
    warm = ws[2]
    prompt = generate_input(700, n_tokens=3000, max_new_tokens=2, first_token=11)
    async for _ in stream_stub(channels(warm.port))(prompt, timeout=10):
        pass
    key = f"127.0.0.1:{warm.port}"
    await wait_for(lambda: index.blocks_held(key) >= 3000 // 64, what="the warm worker's blocks in the index")
    # the same prompt through the gateway now goes where the blocks are
    again = generate_input(701, n_tokens=3000, max_new_tokens=2, first_token=11)
    async for _ in stream_stub(channels(gw.grpc_port))(again, timeout=10):
        pass
    assert warm.request_ids_seen == [700, 701]
    assert ws[0].request_ids_seen == [] and ws[1].request_ids_seen == []
    assert sync.views[key].updates >= 1 and sync.views[key].failures == 0
