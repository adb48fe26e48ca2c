"""Statuses the gateway makes itself carry an ErrorDetailsPB (grpc-status-details-bin, as an engine sends it)
with the engine's or FlexLB's ErrorCode, and never a worker's address: RTP-LLM's frontend shows status messages
to end users. The address goes to the gateway's log instead. Both engines."""

from __future__ import annotations

import logging
import re

import grpc
import pytest

from flexlb import wire
from flexlb.config import EdgeLimits
from flexlb.pb import model_rpc_service_pb2 as pb
from flexlb.sim.mock_worker import Faults
from tests.conftest import generate_input, stream_stub, wait_for, worker_addr
from tests.edge_support import H2_ONLY

_ADDRESS = re.compile(r"\d{1,3}(\.\d{1,3}){3}|localhost|ipv[46]:")


async def failed(stub: grpc.aio.UnaryStreamMultiCallable, req: object, timeout_s: float = 5.0) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        async for _ in stub(req, timeout=timeout_s):
            pass
    return ei.value


def details(exc: grpc.aio.AioRpcError, *ports: int) -> pb.ErrorDetailsPB:
    """The ErrorDetailsPB of a gateway-made status, after checking that neither text names an address."""
    raw = dict(exc.trailing_metadata() or ()).get(wire.ERROR_DETAILS_TRAILER)
    assert raw is not None, f"no {wire.ERROR_DETAILS_TRAILER}: {exc.code()} {exc.details()!r}"
    out = pb.ErrorDetailsPB.FromString(raw)
    for text in (exc.details() or "", out.error_message):
        assert not _ADDRESS.search(text), text
        for port in ports:
            assert str(port) not in text, text
    return out


def logged(caplog: pytest.LogCaptureFixture, text: str, level: int = logging.INFO) -> bool:
    return any(text in r.getMessage() and r.levelno >= level for r in caplog.records)


async def test_connect_failure(mock_workers, gateways, channels, caplog) -> None:
    w = await mock_workers()
    addr = worker_addr(w)
    await w.stop(grace_s=0)  # refused from now on; active checks off, so the gateway still sends calls there
    gw = await gateways([addr], master={"health_check_interval_ms": 0})
    caplog.set_level(logging.INFO)
    exc = await failed(stream_stub(channels(gw.grpc_port)), generate_input(1))
    assert exc.code() == grpc.StatusCode.UNAVAILABLE
    d = details(exc, addr.grpc_port)
    assert d.error_code == wire.CONNECT_FAILED and "cannot connect to the worker" in d.error_message
    assert logged(caplog, addr.key, logging.WARNING), "the worker's address is not in the log"
    await wait_for(lambda: gw.cluster.ledger.calls == 0, what="the call's load released")


async def test_first_token_timeout(mock_workers, gateways, channels, caplog) -> None:
    w = await mock_workers(faults=Faults(hang=True))
    gw = await gateways([worker_addr(w)], master={"prefill_generate_timeout_ms": 200, "health_check_interval_ms": 0})
    caplog.set_level(logging.INFO)
    exc = await failed(stream_stub(channels(gw.grpc_port)), generate_input(2))
    assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert details(exc, w.port).error_code == wire.GENERATE_TIMEOUT
    assert logged(caplog, worker_addr(w).key, logging.WARNING)


@H2_ONLY
async def test_client_deadline(mock_workers, gateways, raw) -> None:
    # grpc C-core (grpcio engine, and any grpc client) ends the call at the deadline itself; a raw HTTP/2 client
    # sees what the frame relay sends then
    from bench.attacks import encode_headers, grpc_frame, request_headers
    from flexlb.call.failures_wire import engine_code_from_trailers

    w = await mock_workers(faults=Faults(hang=True))
    gw = await gateways([worker_addr(w)], master={"health_check_interval_ms": 0})
    c = await raw(gw.grpc_port)
    sid = c.new_stream_id()
    headers = request_headers(c.authority, extra=[("grpc-timeout", "200m")])
    c.send(c.headers_frames(sid, encode_headers(headers)),
           c.data_frames(sid, grpc_frame(generate_input(3).SerializeToString()), end_stream=True))
    code, message = await c.status(sid, 5.0)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0], (code, message)
    rec = c.streams[sid]
    assert engine_code_from_trailers([*(rec.headers or []), *(rec.trailers or [])]) == wire.GENERATE_TIMEOUT


async def test_draining(mock_workers, gateways, channels) -> None:
    w = await mock_workers()
    gw = await gateways([worker_addr(w)])
    gw.refuse_new_calls()
    exc = await failed(stream_stub(channels(gw.grpc_port)), generate_input(4))
    assert exc.code() == grpc.StatusCode.UNAVAILABLE
    assert details(exc, w.port).error_code == wire.NO_AVAILABLE_WORKER
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await channels(gw.grpc_port).unary_unary("/RpcService/CheckHealth")(b"", timeout=5)
    assert details(ei.value, w.port).error_code == wire.NO_AVAILABLE_WORKER


@pytest.mark.parametrize(("cap", "error_code"), [("max_in_flight", wire.QUEUE_FULL),
                                                 ("max_in_flight_per_worker", wire.NO_PDFUSION_WORKER)],
                         ids=["gateway_cap", "every_worker_at_its_cap"])
async def test_admission_caps(cap: str, error_code: int, mock_workers, gateways, channels) -> None:
    w = await mock_workers(faults=Faults(hang=True))
    gw = await gateways([worker_addr(w)], master={cap: 1, "health_check_interval_ms": 0})
    ch = channels(gw.grpc_port)
    held = stream_stub(ch)(generate_input(5), timeout=10)
    await wait_for(lambda: w.calls_received == 1, what="the first call at the worker")
    exc = await failed(stream_stub(ch), generate_input(6))
    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details(exc, w.port).error_code == error_code
    held.cancel()


async def test_bad_requests(mock_workers, gateways, channels) -> None:
    w = await mock_workers()
    gw = await gateways([worker_addr(w)])
    raw = channels(gw.grpc_port).unary_stream("/RpcService/GenerateStreamCall")
    exc = await failed(raw, b"\xff\xff\xff\xff")
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT and details(exc).error_code == wire.INVALID_PARAMS
    exc = await failed(stream_stub(channels(gw.grpc_port)), pb.GenerateInputPB(request_id=8))
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT and details(exc).error_code == wire.INVALID_PARAMS
    assert w.calls_received == 0


@H2_ONLY
async def test_frame_relay_limits(mock_workers, gateways, channels) -> None:
    # grpc C-core answers these itself on the grpcio engine (without details)
    w = await mock_workers(faults=Faults(hang=True))
    gw = await gateways([worker_addr(w)], max_receive_message_bytes=64 * 1024,
                        limits=EdgeLimits(stream_idle_timeout_s=0.3), master={"health_check_interval_ms": 0})
    ch = channels(gw.grpc_port)
    exc = await failed(stream_stub(ch), generate_input(9, n_tokens=40_000))
    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and details(exc).error_code == wire.INVALID_PARAMS
    exc = await failed(stream_stub(ch), generate_input(10), timeout_s=10)
    assert exc.code() == grpc.StatusCode.UNAVAILABLE and "idle" in (exc.details() or "")
    assert details(exc, w.port).error_code == wire.KEEP_ALIVE_TIMEOUT


async def test_relayed_worker_errors_stay_verbatim(mock_workers, gateways, channels) -> None:
    # the worker's own status and ErrorDetailsPB are the worker's: relayed byte for byte, not reworded
    w = await mock_workers(faults=Faults(error_rate=1.0, error_code=wire.INVALID_PARAMS))
    gw = await gateways([worker_addr(w)])
    direct = await failed(stream_stub(channels(w.port)), generate_input(11))
    relayed = await failed(stream_stub(channels(gw.grpc_port)), generate_input(11))
    assert (relayed.code(), relayed.details()) == (direct.code(), direct.details())
    assert dict(relayed.trailing_metadata())[wire.ERROR_DETAILS_TRAILER] == \
        dict(direct.trailing_metadata())[wire.ERROR_DETAILS_TRAILER]
