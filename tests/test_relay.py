"""The relay through a real gateway to real mock workers: byte fidelity, errors, cancel, deadlines, load."""

from __future__ import annotations

import asyncio
import random
import sys

import grpc
import pytest

from flexlb import wire
from flexlb.balancer.workers import Role, WorkerAddr
from flexlb.pb import model_rpc_service_pb2 as pb
from flexlb.sim.mock_worker import Faults
from tests.conftest import generate_input, stream_stub, wait_for, worker_addr

# aux_info fields that measure time; everything else must be identical through the gateway
TIMING_FIELDS = ("cost_time_us", "first_token_cost_time_us", "wait_time_us")


def comparable(messages: list[pb.GenerateOutputsPB]) -> list[bytes]:
    """Messages with timing fields zeroed, serialized deterministically."""
    out = []
    for m in messages:
        c = pb.GenerateOutputsPB()
        c.CopyFrom(m)
        for aux in c.flatten_output.aux_info:
            for f in TIMING_FIELDS:
                setattr(aux, f, 0)
        out.append(c.SerializeToString(deterministic=True))
    return out


async def collect(
    stub: grpc.aio.UnaryStreamMultiCallable, req: pb.GenerateInputPB, **kw: object
) -> list[pb.GenerateOutputsPB]:
    return [m async for m in stub(req, timeout=10, **kw)]


@pytest.mark.parametrize("streaming", [True, False])
async def test_fused_stream_same_as_direct(mock_workers, gateways, channels, streaming: bool) -> None:
    # two identical fresh workers so the prefix cache state is the same for both calls
    direct_w = await mock_workers()
    relayed_w = await mock_workers()
    gw = await gateways([worker_addr(relayed_w)])
    req = generate_input(11, n_tokens=300, max_new_tokens=12, streaming=streaming)
    direct = await collect(stream_stub(channels(direct_w.port)), req)
    relayed = await collect(stream_stub(channels(gw.grpc_port)), req)
    assert len(direct) == (12 if streaming else 1)
    assert comparable(relayed) == comparable(direct)
    assert wire.is_final(relayed[-1]) and not any(wire.is_final(m) for m in relayed[:-1])


async def test_pd_stream_same_as_direct_and_role_addrs_written(mock_workers, gateways, channels) -> None:
    p1, d1 = await mock_workers("PREFILL"), await mock_workers("DECODE")
    p2, d2 = await mock_workers("PREFILL"), await mock_workers("DECODE")
    gw = await gateways([worker_addr(p2), worker_addr(d2)])
    req = generate_input(12, n_tokens=200, max_new_tokens=6)
    # direct: the client itself names the pair, as the RTP-LLM frontend does after asking FlexLB
    direct_req = pb.GenerateInputPB()
    direct_req.CopyFrom(req)
    direct_req.generate_config.role_addrs.extend(
        [
            wire.role_addr(pb.RoleAddrPB.PREFILL, "127.0.0.1", p1.port, p1.port - 1),
            wire.role_addr(pb.RoleAddrPB.DECODE, "127.0.0.1", d1.port, d1.port - 1),
        ]
    )
    direct = await collect(stream_stub(channels(p1.port)), direct_req)
    relayed = await collect(stream_stub(channels(gw.grpc_port)), req)
    assert len(relayed) == 6
    assert comparable(relayed) == comparable(direct)
    assert all(m.flatten_output.aux_info[0].pd_sep for m in relayed)
    # the decode worker really was driven by the prefill the gateway chose
    assert d2.calls_received == 0 and d2.cancelled_ids == []
    assert gw.cluster.get(f"127.0.0.1:{d2.port}").dispatched_total == 1


async def test_one_pd_call_in_flight_reads_one(mock_workers, gateways, channels) -> None:
    p, d = await mock_workers("PREFILL"), await mock_workers("DECODE", time_scale=5.0)
    gw = await gateways([worker_addr(p), worker_addr(d)])
    call = stream_stub(channels(gw.grpc_port))(generate_input(13, max_new_tokens=40), timeout=30)
    await call.read()  # mid-stream: the prefill handed over, the decode is generating
    sample = gw.metrics.registry.get_sample_value
    assert sample("flexlb_in_flight") == 1  # one client call, though it holds load on two workers
    legs = {role: sample("flexlb_worker_in_flight", {"worker": worker_addr(w).key, "role": role})
            for role, w in (("PREFILL", p), ("DECODE", d))}
    assert legs == {"PREFILL": 1, "DECODE": 1}
    call.cancel()
    await wait_for(lambda: sample("flexlb_in_flight") == 0, what="in-flight back to 0")


async def test_unknown_fields_survive_the_relay(mock_workers, gateways, channels) -> None:
    w = await mock_workers()
    gw = await gateways([worker_addr(w)])
    req = generate_input(13)
    # field 999 is unknown to everyone: the gateway must forward it untouched
    raw = req.SerializeToString() + b"\xb8\x3e\x2a"  # tag (999 << 3 | 0) varint, value 42
    stub = channels(gw.grpc_port).unary_stream("/RpcService/GenerateStreamCall")
    got = [m async for m in stub(raw, timeout=10)]
    assert got
    seen = w.last_request_bytes
    assert seen.endswith(b"\xb8\x3e\x2a")


async def test_error_status_details_and_trailer_verbatim(mock_workers, gateways, channels) -> None:
    faults = Faults(error_rate=1.0, error_code=8429)
    direct_w = await mock_workers(faults=faults)
    relayed_w = await mock_workers(faults=faults)
    gw = await gateways([worker_addr(relayed_w)])
    req = generate_input(14)
    errors = []
    for port in (direct_w.port, gw.grpc_port):
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await collect(stream_stub(channels(port)), req)
        errors.append(ei.value)
    direct, relayed = errors
    assert relayed.code() == direct.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert relayed.details() == direct.details()
    trailer = dict(relayed.trailing_metadata())[wire.ERROR_DETAILS_TRAILER]
    assert trailer == dict(direct.trailing_metadata())[wire.ERROR_DETAILS_TRAILER]
    assert pb.ErrorDetailsPB.FromString(trailer).error_code == 8429
    await wait_for(lambda: gw.cluster.ledger.calls == 0, what="in-flight back to 0")


async def test_metadata_forwarded_both_ways(mock_workers, gateways, channels) -> None:
    w = await mock_workers()
    gw = await gateways([worker_addr(w)])
    ch = channels(gw.grpc_port, **{"grpc.primary_user_agent": "flexlb-test-client/1"})
    call = stream_stub(ch)(
        generate_input(15),
        timeout=10,
        metadata=(("x-echo-tenant", "acme"), ("x-echo-blob-bin", b"\x00\x01"), ("x-plain", "1")),
    )
    async for _ in call:
        pass
    initial = dict(await call.initial_metadata())
    trailing = dict(await call.trailing_metadata())
    assert initial["x-echo-tenant"] == "acme" and initial["x-echo-blob-bin"] == b"\x00\x01"
    assert trailing["x-echo-tenant-trailer"] == "acme"
    assert trailing["x-echo-blob-trailer-bin"] == b"\x00\x01"
    seen = dict(w.last_metadata)
    assert seen["x-plain"] == "1"
    # the one filter (flexlb.call.metadata): the client's hop headers stay with its hop, on either engine
    assert "flexlb-test-client" not in str(seen.get("user-agent", "")), seen


async def test_client_cancel_reaches_worker_within_1s(mock_workers, gateways, channels) -> None:
    w = await mock_workers(time_scale=5.0)  # slow decode: 5 ms per step
    gw = await gateways([worker_addr(w)])
    call = stream_stub(channels(gw.grpc_port))(generate_input(16, max_new_tokens=10_000), timeout=30)
    first = await call.read()
    assert first.flatten_output.aux_info[0].output_len == 1
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    call.cancel()
    await wait_for(lambda: 16 in w.cancelled_ids, timeout_s=1.0, what="worker to see the cancel")
    assert loop.time() - t0 < 1.0
    await wait_for(lambda: gw.cluster.ledger.calls == 0, what="in-flight back to 0")


async def test_client_deadline_carried_upstream(mock_workers, gateways, channels) -> None:
    w = await mock_workers(faults=Faults(delay_ms=5_000))
    gw = await gateways([worker_addr(w)])
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        async for _ in stream_stub(channels(gw.grpc_port))(generate_input(17), timeout=0.3):
            pass
    assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # the worker's own call hit the same deadline (it was not left running for 5 s)
    await wait_for(lambda: 17 in w.cancelled_ids, timeout_s=2.0, what="worker call cancelled by deadline")
    await wait_for(lambda: gw.cluster.ledger.calls == 0, what="in-flight back to 0")


async def test_in_flight_returns_to_zero_after_1000_mixed_calls(mock_workers, gateways, channels) -> None:
    good = [await mock_workers(time_scale=0.2) for _ in range(2)]
    # INVALID_PARAMS: the request's fault, relayed as it is (a worker fault would fail over and never show)
    flaky = await mock_workers(time_scale=0.2, faults=Faults(error_rate=0.5, error_code=605))
    gw = await gateways([worker_addr(w) for w in (*good, flaky)], strategy="LOWEST_CONCURRENCY")
    stub = stream_stub(channels(gw.grpc_port))
    rng = random.Random(3)
    outcomes = {"ok": 0, "error": 0, "cancelled": 0, "deadline": 0}
    sem = asyncio.Semaphore(100)

    async def one(i: int) -> None:
        kind = rng.random()
        async with sem:
            timeout = 0.005 if kind < 0.1 else 10
            call = stub(generate_input(1000 + i, max_new_tokens=rng.randint(1, 20)), timeout=timeout)
            try:
                n = 0
                async for _ in call:
                    n += 1
                    if kind > 0.85 and n == 1:
                        call.cancel()
                        break
                outcomes["cancelled" if kind > 0.85 and n == 1 else "ok"] += 1
            except grpc.aio.AioRpcError as exc:
                key = "deadline" if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED else "error"
                outcomes[key] += 1

    await asyncio.gather(*(one(i) for i in range(1000)))
    assert sum(outcomes.values()) == 1000
    assert min(outcomes.values()) > 0, outcomes  # every kind of ending really happened
    await wait_for(lambda: gw.cluster.ledger.calls == 0, timeout_s=5, what="in-flight back to 0")
    assert all(w.in_flight == 0 for w in gw.cluster.all())
    if gw.edge is not None:
        # the frame relay keeps no per-call state behind: no call, no stream on any connection
        edge = gw.edge
        await wait_for(lambda: not edge.calls, what="no call left in the frame relay")
        assert all(not conn.streams for conn in edge.downstream)
        assert all(not conn.streams for conns in edge._upstreams.values() for conn in conns)


async def test_1000_concurrent_streams_complete(mock_workers, gateways, channels) -> None:
    # the workers hold every call before their engine until all 1000 are open through the gateway at once
    ws = [await mock_workers(time_scale=0.0) for _ in range(2)]
    for w in ws:
        w.hold_calls()
    gw = await gateways([worker_addr(w) for w in ws], strategy="ROUND_ROBIN_LOWEST_CONCURRENCY")
    stubs = [stream_stub(channels(gw.grpc_port, **{"grpc.channel_id": i})) for i in range(4)]

    async def one(i: int) -> int:
        return len([m async for m in stubs[i % 4](generate_input(5000 + i, max_new_tokens=5), timeout=120)])

    calls = [asyncio.create_task(one(i)) for i in range(1000)]
    try:
        await wait_for(lambda: gw.cluster.ledger.calls == 1000, timeout_s=90, what="1000 calls open at once")
    finally:
        for w in ws:
            w.release_calls()
    counts = await asyncio.gather(*calls)
    assert counts == [5] * 1000
    await wait_for(lambda: gw.cluster.ledger.calls == 0, what="in-flight back to 0")


async def test_batch_generate_call_same_as_direct(mock_workers, gateways, channels) -> None:
    direct_w, relayed_w = await mock_workers(), await mock_workers()
    gw = await gateways([worker_addr(relayed_w)])
    batch = pb.BatchGenerateInputPB(inputs=[generate_input(20 + i, max_new_tokens=4) for i in range(3)])
    results = []
    for port in (direct_w.port, gw.grpc_port):
        stub = channels(port).unary_unary(
            "/RpcService/BatchGenerateCall",
            request_serializer=pb.BatchGenerateInputPB.SerializeToString,
            response_deserializer=pb.BatchGenerateOutputsPB.FromString,
        )
        reply = await stub(batch, timeout=10)
        results.append(comparable([r.final_output for r in reply.results]))
    assert len(results[0]) == 3 and results[0] == results[1]


async def test_large_request_and_response_cross_many_frames(mock_workers, gateways, channels) -> None:
    direct_w, relayed_w = await mock_workers(time_scale=0.0), await mock_workers(time_scale=0.0)
    gw = await gateways([worker_addr(relayed_w)])
    # ~200 KB request, one ~80 KB response message: both span many 16 KB HTTP/2 frames
    req = generate_input(30, n_tokens=60_000, max_new_tokens=20_000, streaming=False)
    direct = await collect(stream_stub(channels(direct_w.port)), req)
    relayed = await collect(stream_stub(channels(gw.grpc_port)), req)
    assert len(relayed) == 1 and len(relayed[0].flatten_output.output_ids.int32_data) == 80_000
    assert comparable(relayed) == comparable(direct)


async def test_worker_killed_mid_stream_ends_the_call_promptly(mock_workers, gateways, channels) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "flexlb", "mock-worker", "--port", "0", "--time-scale", "5",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        port = int(line.rsplit(":", 1)[1])
        spare = await mock_workers()
        gw = await gateways([WorkerAddr("127.0.0.1", port, port - 1, Role.PDFUSION), worker_addr(spare)],
                            strategy="ROUND_ROBIN")
        call = stream_stub(channels(gw.grpc_port))(generate_input(31, max_new_tokens=100_000), timeout=30)
        assert (await call.read()).flatten_output.aux_info[0].output_len == 1
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        proc.kill()
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            while await call.read() is not grpc.aio.EOF:
                pass
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
        assert loop.time() - t0 < 5
        assert spare.calls_received == 0  # after the first message a call is never replayed elsewhere
        await wait_for(lambda: gw.cluster.ledger.calls == 0, what="in-flight back to 0")
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
