"""The mock worker on both engine models, over real gRPC on loopback: batching, return sequences, status, PD, cancel.

Engines are paused by holding the worker's `_prefill_lock` (either engine runs a prefill / an iteration
only while holding it), so what is queued when they run is decided by the test, not by timing.
"""

from __future__ import annotations

import asyncio
import struct

import grpc
import pytest

from flexlb import wire
from flexlb.pb import model_rpc_service_pb2 as pb
from flexlb.sim.batching import BatchingParams
from flexlb.sim.engine import EngineParams, output_token
from flexlb.sim.mock_worker import MockWorker
from tests.conftest import FAST, generate_input, stream_stub, wait_for

ENGINES = ("batching", "fifo")


def status_stub(channel: grpc.aio.Channel) -> grpc.aio.UnaryUnaryMultiCallable:
    return channel.unary_unary("/RpcService/GetWorkerStatus", request_serializer=pb.StatusVersionPB.SerializeToString,
                               response_deserializer=pb.WorkerStatusPB.FromString)


def rows_of(m: pb.GenerateOutputsPB) -> list[list[int]]:
    """output_ids as [rows][tokens] (shape [rows, 1, tokens])."""
    t = m.flatten_output.output_ids
    n_rows, _, n = t.shape
    values = list(struct.unpack(f"<{n_rows * n}i", t.int32_data))
    return [values[r * n:(r + 1) * n] for r in range(n_rows)]


def row_tokens(outs: list[pb.GenerateOutputsPB], row: int) -> list[int]:
    """Every token of return sequence `row`, across the messages."""
    return [t for m in outs for t in rows_of(m)[row]]


async def collect(stub: grpc.aio.UnaryStreamMultiCallable, req: pb.GenerateInputPB) -> list[pb.GenerateOutputsPB]:
    return [m async for m in stub(req, timeout=15)]


def waiting(w: MockWorker) -> int:
    """Calls queued in the worker's engine, not yet prefilling."""
    if w.engine is not None:
        return w.engine.waiting_count
    return sum(t.waiting for t in w._running.values())


@pytest.mark.parametrize("engine", ENGINES)
async def test_eight_concurrent_calls_are_prefilled_together_only_when_batching(mock_workers, channels,
                                                                                engine: str) -> None:
    w = await mock_workers(time_scale=0.0, engine=engine)
    stub = stream_stub(channels(w.port))
    await w._prefill_lock.acquire()  # pause the engine: the eight calls queue up
    try:
        calls = [asyncio.ensure_future(collect(stub, generate_input(100 + i, max_new_tokens=1, first_token=i)))
                 for i in range(8)]
        await wait_for(lambda: waiting(w) == 8, what="eight calls waiting in the engine")
    finally:
        w._prefill_lock.release()
    outs = await asyncio.gather(*calls)
    assert all(len(o) == 1 and o[0].flatten_output.finished == [True] for o in outs)
    status = await status_stub(channels(w.port))(pb.StatusVersionPB(latest_finished_version=-1), timeout=5)
    # batching: one iteration computed the eight prompts; FIFO: one prefill after the other
    assert status.iterate_count == (1 if engine == "batching" else 8)
    if engine == "batching":
        assert {o[0].flatten_output.aux_info[0].iter_count for o in outs} == {1}
        assert w.engine is not None and w.engine.iterations == 1


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("streaming", [True, False])
async def test_num_return_sequences_gives_one_row_per_sequence(mock_workers, channels, engine: str,
                                                               streaming: bool) -> None:
    w = await mock_workers(time_scale=0.0, engine=engine)
    stub = stream_stub(channels(w.port))
    req = generate_input(7, max_new_tokens=4, streaming=streaming)
    req.generate_config.num_return_sequences = 3
    outs = await collect(stub, req)
    assert len(outs) == (4 if streaming else 1)
    for m in outs:
        assert len(m.flatten_output.finished) == 3 and len(m.flatten_output.aux_info) == 3
        assert m.flatten_output.output_ids.shape[0] == 3
    assert outs[-1].flatten_output.finished == [True] * 3
    assert all(not f for m in outs[:-1] for f in m.flatten_output.finished)
    rows = [row_tokens(outs, r) for r in range(3)]
    assert rows == [[output_token(req.token_ids, i, r) for i in range(4)] for r in range(3)]
    assert len({tuple(r) for r in rows}) == 3  # the sequences differ
    # row 0 is what a single-sequence call returns
    single = await collect(stub, generate_input(8, max_new_tokens=4, streaming=streaming))
    assert row_tokens(single, 0) == rows[0]


async def test_worker_status_reports_the_batching_engine(mock_workers, channels) -> None:
    bp = BatchingParams.from_engine(FAST, max_batch_tokens=4096, max_seq_len=32768, kv_blocks=500)
    w = await mock_workers(time_scale=0.0, batching=bp)
    status = status_stub(channels(w.port))
    stub = stream_stub(channels(w.port))
    first = await status(pb.StatusVersionPB(latest_finished_version=-1), timeout=5)
    assert first.max_batch_tokens_size == 4096 and first.max_seq_len == 32768
    assert first.total_kv_cache == 500 * FAST.block_size_tokens == first.available_kv_cache
    assert (first.waiting_query_len, first.running_query_len, first.iterate_count) == (0, 0, 0)

    await w._prefill_lock.acquire()
    try:
        calls = [asyncio.ensure_future(collect(stub, generate_input(40 + i, max_new_tokens=3, first_token=i)))
                 for i in range(3)]
        await wait_for(lambda: waiting(w) == 3, what="three calls waiting")
        queued = await status(pb.StatusVersionPB(latest_finished_version=-1), timeout=5)
    finally:
        w._prefill_lock.release()
    assert (queued.waiting_query_len, queued.running_query_len) == (3, 0)
    assert sorted(t.request_id for t in queued.running_task_info) == [40, 41, 42]
    assert all(t.is_waiting and t.phase == pb.TASK_PHASE_PENDING for t in queued.running_task_info)
    assert queued.status_version > first.status_version
    await asyncio.gather(*calls)

    done = await status(pb.StatusVersionPB(latest_finished_version=0), timeout=5)
    assert sorted(t.request_id for t in done.finished_task_list) == [40, 41, 42]
    assert done.latest_finished_version == 3 and not done.running_task_info
    assert done.iterate_count == 3  # one prefill iteration for the three, then two decode steps
    assert all(t.iterate_count == 3 for t in done.finished_task_list)
    assert done.available_kv_cache == done.total_kv_cache  # every sequence gave its KV back
    assert done.status_version > queued.status_version
    assert done.role == "RoleType.PDFUSION"


async def test_worker_status_while_decoding_holds_kv(mock_workers, channels) -> None:
    slow = EngineParams(prefill_base_ms=1.0, prefill_ms_per_uncached_token=0.0, decode_step_base_ms=20.0,
                        decode_step_ms_per_running=0.0)
    w = await mock_workers(params=slow)
    call = stream_stub(channels(w.port))(generate_input(5, n_tokens=640, max_new_tokens=200), timeout=30)
    first = await call.read()
    assert first.flatten_output.aux_info[0].input_len == 640
    status = await status_stub(channels(w.port))(pb.StatusVersionPB(latest_finished_version=-1), timeout=5)
    assert (status.waiting_query_len, status.running_query_len) == (0, 1)
    assert status.total_kv_cache - status.available_kv_cache >= 640  # the prompt's blocks at least
    assert status.step_latency_ms > 0
    call.cancel()
    await wait_for(lambda: w.cancelled_ids == [5], what="the worker saw the cancel")
    assert w.engine is not None
    await wait_for(lambda: w.engine is not None and w.engine.idle, what="the sequence left the engine")
    assert w.engine.kv_available_tokens == w.engine.kv_total_tokens


async def test_fifo_reports_no_batch_budget(mock_workers, channels) -> None:
    w = await mock_workers(time_scale=0.0, engine="fifo")
    status = await status_stub(channels(w.port))(pb.StatusVersionPB(latest_finished_version=-1), timeout=5)
    assert status.max_batch_tokens_size == 0  # one prompt at a time: the gateway keeps its depth rule


async def test_cancel_while_waiting_removes_the_sequence(mock_workers, channels) -> None:
    w = await mock_workers(time_scale=0.0)
    assert w.engine is not None
    await w._prefill_lock.acquire()
    try:
        call = stream_stub(channels(w.port))(generate_input(9), timeout=10)
        await wait_for(lambda: waiting(w) == 1, what="the call waiting")
        call.cancel()
        await wait_for(lambda: w.cancelled_ids == [9], what="the worker saw the cancel")
        assert w.engine.idle
    finally:
        w._prefill_lock.release()


@pytest.mark.parametrize("engine", ENGINES)
async def test_pd_prefill_hands_over_to_decode(mock_workers, channels, engine: str) -> None:
    p = await mock_workers("PREFILL", time_scale=0.0, engine=engine)
    d = await mock_workers("DECODE", time_scale=0.0, engine=engine)
    req = generate_input(11, n_tokens=200, max_new_tokens=6)
    req.generate_config.role_addrs.extend([
        wire.role_addr(pb.RoleAddrPB.PREFILL, "127.0.0.1", p.port, p.port - 1),
        wire.role_addr(pb.RoleAddrPB.DECODE, "127.0.0.1", d.port, d.port - 1),
    ])
    outs = await collect(stream_stub(channels(p.port)), req)
    assert [rows_of(m)[0] for m in outs] == [[output_token(req.token_ids, i)] for i in range(6)]
    assert all(m.flatten_output.aux_info[0].pd_sep for m in outs)
    assert outs[-1].flatten_output.finished == [True]
    assert d.calls_received == 0 and d.cancelled_ids == [] and p.cancelled_ids == []
    for w in (p, d):
        if w.engine is not None:
            assert w.engine.idle and w.engine.iterations > 0
