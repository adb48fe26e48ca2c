"""The RTP-LLM frontend's call pattern against `flexlb serve` started with the original run line.

The frontend is configured with `master_endpoint = host:P`, P being FlexLB's `--server.port`: it heartbeats
with POST http://host:P/rtp_llm/master/info (0.5 s timeout, any JSON), sends /FlexlbService/Schedule to
gRPC P+2, then streams from the worker the answer names. Given the gateway as a *worker* address host:X,
it dials gRPC X+1, so host:P+1 reaches the relay on P+2.
"""

from __future__ import annotations

import contextlib
import json
import socket

import aiohttp
import grpc
import pytest

from flexlb.launch import Proc, spawn, stop_all
from flexlb.pb import flexlb_schedule_service_pb2 as fpb
from flexlb.pb import model_rpc_service_pb2 as pb
from tests.conftest import generate_input, stream_stub, worker_addr

HOST = "127.0.0.1"


def _free_pair() -> int:
    """A port P with P+2 also free (the layout of --server.port), checked by binding both."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind((HOST, 0))
            p = a.getsockname()[1]
            if p + 2 > 65535:
                continue
            with socket.socket() as b, contextlib.suppress(OSError):
                b.bind((HOST, p + 2))
                return p
    raise AssertionError("no free port P with P+2 free in 50 tries")


async def _serve_original_run_line(workers: list[tuple[str, Proc]], env: dict[str, str]) -> tuple[Proc, int]:
    """`flexlb serve --server.port=P --management.server.port=Q` (ports bound by the child; retried if taken)."""
    last: Exception | None = None
    for _ in range(3):
        p = _free_pair()
        args = ["serve", "--host", HOST, f"--server.port={p}", "--management.server.port=0", "--log-level", "WARNING"]
        for flag, w in workers:
            args += [flag, f"{HOST}:{w.port}"]
        try:
            return await spawn(*args, env=env), p
        except RuntimeError as exc:  # another process took P or P+2 between the check and the bind
            last = exc
    raise AssertionError(f"gateway did not start on the original run line: {last}")


def _schedule_stub(channel: grpc.aio.Channel) -> grpc.aio.UnaryUnaryMultiCallable:
    return channel.unary_unary(
        "/FlexlbService/Schedule",
        request_serializer=fpb.FlexlbScheduleRequestPB.SerializeToString,
        response_deserializer=fpb.FlexlbScheduleResponsePB.FromString,
    )


def _schedule_request(inp: pb.GenerateInputPB) -> fpb.FlexlbScheduleRequestPB:
    """What the frontend's master client sends (flexlb-original §1.4 step 1)."""
    return fpb.FlexlbScheduleRequestPB(
        request_id=inp.request_id, generate_input=inp.SerializeToString(), seq_len=len(inp.token_ids),
        generate_timeout=5000, max_new_tokens=inp.generate_config.max_new_tokens, num_beams=1,
        model="engine_service", priority=50,
    )


def _role_addrs(resp: fpb.FlexlbScheduleResponsePB) -> list[pb.RoleAddrPB]:
    return [pb.RoleAddrPB(role=pb.RoleAddrPB.RoleType.Value(s.role), ip=s.server_ip, http_port=s.http_port,
                          grpc_port=s.grpc_port) for s in resp.server_status]


@pytest.mark.parametrize("deploy", ["fused", "pd"])
async def test_frontend_heartbeats_schedules_and_streams_direct(deploy: str) -> None:
    procs: list[Proc] = []
    try:
        if deploy == "fused":
            workers = [("--worker", await spawn("mock-worker", "--port", "0", "--time-scale", "0"))]
        else:
            workers = [(f"--{role.lower()}", await spawn("mock-worker", "--port", "0", "--role", role,
                                                          "--time-scale", "0")) for role in ("PREFILL", "DECODE")]
        procs += [w for _, w in workers]
        direct = {"FLEXLB_CONFIG": json.dumps({"defaultScheduleMode": "DIRECT"})}
        gw, p = await _serve_original_run_line(workers, direct)
        procs.append(gw)
        assert gw.port == p + 2 and gw.http_port == p

        # heartbeat, as host_service.py does it: standalone (no HA) still answers, with a null master
        async with aiohttp.ClientSession() as http, http.post(f"http://{HOST}:{p}/rtp_llm/master/info", json={},
                             timeout=aiohttp.ClientTimeout(total=0.5)) as r:
            assert r.status == 200
            info = await r.json()
        assert info["success"] is True and info["code"] == 200 and info["real_master_host"] is None
        assert isinstance(info["queue_length"], int)
        expected_roles = {"PDFUSION"} if deploy == "fused" else {"PREFILL", "DECODE"}
        assert set(info["worker_summary"]) == expected_roles

        inp = generate_input(31_000, max_new_tokens=6)
        async with grpc.aio.insecure_channel(f"{HOST}:{p + 2}") as master:
            resp = await _schedule_stub(master)(_schedule_request(inp), timeout=5)
        assert resp.success and resp.code == 200, resp.error_message
        assert not resp.enqueued_by_master
        assert {s.role for s in resp.server_status} == expected_roles
        entry = next(s for s in resp.server_status if s.role in ("PDFUSION", "PREFILL"))
        # the frontend streams from the worker itself, telling a PD prefill its decode through role_addrs
        inp.generate_config.role_addrs.extend(_role_addrs(resp))
        async with grpc.aio.insecure_channel(f"{entry.server_ip}:{entry.grpc_port}") as worker:
            outs = [o async for o in stream_stub(worker)(inp, timeout=10)]
        assert len(outs) == 6 and outs[-1].flatten_output.finished[0]

        # the gateway given as a worker address host:P+1: the frontend dials gRPC P+2, the relay
        async with grpc.aio.insecure_channel(f"{HOST}:{p + 1 + 1}") as relay:
            outs = [o async for o in stream_stub(relay)(generate_input(31_001, max_new_tokens=4), timeout=10)]
        assert len(outs) == 4
    finally:
        await stop_all(procs)


async def test_management_port_is_apart() -> None:
    procs: list[Proc] = []
    try:
        w = await spawn("mock-worker", "--port", "0", "--time-scale", "0")
        procs.append(w)
        gw, p = await _serve_original_run_line([("--worker", w)], {})
        procs.append(gw)
        assert gw.admin_port not in (None, p, p + 2)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://{HOST}:{p}/health") as r:
                assert r.status == 200 and await r.text() == "success"
            # actuator lives on the management port only, as Spring's management.server.port
            async with http.get(f"http://{HOST}:{p}/actuator/info") as r:
                assert r.status == 404
            async with http.get(f"http://{HOST}:{gw.admin_port}/health") as r:
                assert (await r.json())["status"] == "UP"  # actuator's JSON there, HEAD's text on P
            async with http.get(f"http://{HOST}:{gw.admin_port}/actuator/info") as r:
                body = await r.json()
                assert (body["http_port"], body["grpc_port"]) == (p, p + 2)
            async with http.get(f"http://{HOST}:{p}/rtp_llm/inflight_status") as r:
                view = await r.json()
                assert [e["ip_port"] for e in view["prefill_endpoints"]] == [f"{HOST}:{w.port}"]
            async with http.post(f"http://{HOST}:{p}/rtp_llm/master/info", data=b"{not json",
                                 headers={"Content-Type": "application/json"}) as r:
                assert r.status == 400
    finally:
        await stop_all(procs)


async def test_health_answers_404_once_draining(mock_workers, gateways) -> None:
    gw = await gateways([worker_addr(await mock_workers())])
    assert gw.http_port not in (gw.admin_port, gw.grpc_port)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://{HOST}:{gw.http_port}/health") as r:
            assert r.status == 200
        gw.refuse_new_calls()
        async with http.get(f"http://{HOST}:{gw.http_port}/health") as r:
            assert r.status == 404 and await r.text() == "shutdown received"


async def test_frontend_in_batch_mode_fetches_from_the_prefill_the_master_enqueued_to() -> None:
    # BATCH is the default mode, as Java HEAD's: no FLEXLB_CONFIG at all
    procs: list[Proc] = []
    try:
        workers = [(f"--{role.lower()}", await spawn("mock-worker", "--port", "0", "--role", role,
                                                      "--time-scale", "0")) for role in ("PREFILL", "DECODE")]
        procs += [w for _, w in workers]
        gw, p = await _serve_original_run_line(workers, {})
        procs.append(gw)
        inp = generate_input(32_000, max_new_tokens=5)
        async with grpc.aio.insecure_channel(f"{HOST}:{p + 2}") as master:
            resp = await _schedule_stub(master)(_schedule_request(inp), timeout=5)
        assert resp.success and resp.code == 200 and resp.enqueued_by_master, resp.error_message
        assert [s.role for s in resp.server_status] == ["DECODE", "PREFILL"]
        prefill = resp.server_status[1]
        async with grpc.aio.insecure_channel(f"{prefill.server_ip}:{prefill.grpc_port}") as worker:
            fetch = worker.unary_stream("/RpcService/FetchResponse",
                                        request_serializer=pb.FetchRequestPB.SerializeToString,
                                        response_deserializer=pb.GenerateOutputsPB.FromString)
            outs = [o async for o in fetch(pb.FetchRequestPB(request_id=32_000), timeout=10)]
        assert len(outs) == 5 and outs[-1].flatten_output.finished[0]
    finally:
        await stop_all(procs)


async def test_master_info_reports_what_the_scheduler_holds(mock_workers, gateways, channels) -> None:
    gw = await gateways([worker_addr(await mock_workers())])
    # a replica's Schedule (forward_hop 1) keeps its decision reserved on the master until its Cancel
    resp = await _schedule_stub(channels(gw.grpc_port))(
        fpb.FlexlbScheduleRequestPB(request_id=77, seq_len=64, forward_hop=1), timeout=5)
    assert resp.success
    async with aiohttp.ClientSession() as http:
        for port in (gw.http_port, gw.admin_port):
            async with http.post(f"http://{HOST}:{port}/rtp_llm/master/info", json={}) as r:
                assert (await r.json())["queue_length"] == gw.scheduler.queue_length() == 1
            async with http.get(f"http://{HOST}:{port}/rtp_llm/inflight_status") as r:
                assert (await r.json())["scheduler_inflight"] == 1
