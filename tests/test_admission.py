"""Admission caps: beyond them a clear RESOURCE_EXHAUSTED, never a queue that grows without bound."""

from __future__ import annotations

import grpc
import pytest

from flexlb import wire
from flexlb.pb import model_rpc_service_pb2 as pb
from tests.conftest import generate_input, stream_stub, wait_for, worker_addr


async def _hold(stub, request_id: int):  # type: ignore[no-untyped-def]
    """Start a long stream and wait for its first message, so it is surely in flight."""
    call = stub(generate_input(request_id, max_new_tokens=100_000), timeout=30)
    await call.read()
    return call


async def test_gateway_wide_cap(mock_workers, gateways, channels) -> None:
    ws = [await mock_workers(time_scale=5.0) for _ in range(2)]
    gw = await gateways([worker_addr(w) for w in ws], master={"max_in_flight": 2})
    stub = stream_stub(channels(gw.grpc_port))
    held = [await _hold(stub, 900 + i) for i in range(2)]
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        async for _ in stub(generate_input(910), timeout=5):
            pass
    assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "in-flight cap (2 calls)" in (ei.value.details() or "")
    assert sum(w.calls_received for w in ws) == 2  # the rejected call reached no worker
    for call in held:
        call.cancel()
    await wait_for(lambda: gw.cluster.ledger.calls == 0, what="the held calls released")
    assert len([m async for m in stub(generate_input(911), timeout=10)]) == 8


async def test_per_worker_cap(mock_workers, gateways, channels) -> None:
    ws = [await mock_workers(time_scale=5.0) for _ in range(2)]
    gw = await gateways([worker_addr(w) for w in ws], strategy="LOWEST_CONCURRENCY",
                        master={"max_in_flight_per_worker": 1, "health_check_interval_ms": 0})
    stub = stream_stub(channels(gw.grpc_port))
    held = [await _hold(stub, 920 + i) for i in range(2)]
    assert sorted(w.calls_received for w in ws) == [1, 1]
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        async for _ in stub(generate_input(930), timeout=5):
            pass
    assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "in-flight cap (1)" in (ei.value.details() or "")
    trailer = dict(ei.value.trailing_metadata())[wire.ERROR_DETAILS_TRAILER]
    assert pb.ErrorDetailsPB.FromString(trailer).error_code == 8404  # FlexLB's "no PDFUSION worker"
    for call in held:
        call.cancel()
    await wait_for(lambda: gw.cluster.ledger.calls == 0, what="the held calls released")
