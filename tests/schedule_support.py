"""What the Schedule-mode tests share: a gateway in a given mode, and the frontend's calls (Schedule,
FetchResponse, GetRequestState, Cancel) as typed callables."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from flexlb.app import Gateway
from flexlb.balancer.request import Deploy
from flexlb.balancer.workers import Role, WorkerAddr
from flexlb.config import MasterConfig, ServerConfig, Settings
from flexlb.pb import flexlb_schedule_service_pb2 as fpb
from flexlb.pb import model_rpc_service_pb2 as pb
from flexlb.schedule_modes import ScheduleSettings


def gateway_settings(workers: list[WorkerAddr], schedule: ScheduleSettings, **master: Any) -> Settings:
    """A loopback gateway over `workers` serving Schedule as `schedule` says."""
    deploy = Deploy.DISAGGREGATED if any(w.role is Role.PREFILL for w in workers) else Deploy.PD_FUSION
    master.setdefault("load_balance_strategy", "ROUND_ROBIN")
    master.setdefault("decode_load_balance_strategy", "ROUND_ROBIN")
    return Settings(server=ServerConfig(host="127.0.0.1", http_port=0, grpc_port=0, admin_port=0),
                    master=MasterConfig(schedule=schedule, **master), workers=tuple(workers), deploy=deploy)


@contextlib.asynccontextmanager
async def started_gateways() -> AsyncIterator[Callable[..., Awaitable[Gateway]]]:
    """Start gateways (h2 engine: FlexlbService is the same grpc.aio servicer on both); all stopped at the end.
    Test modules wrap it in their own `schedule_gateways` fixture."""
    started: list[Gateway] = []

    async def start(workers: list[WorkerAddr], schedule: ScheduleSettings, **master: Any) -> Gateway:
        gw = Gateway(gateway_settings(workers, schedule, **master), seed=1)
        await gw.start()
        started.append(gw)
        return gw

    try:
        yield start
    finally:
        for gw in started:
            await gw.stop(grace_s=0)


@dataclass
class Frontend:
    """The calls an RTP-LLM frontend makes: Schedule etc. on the master, FetchResponse on the worker."""

    master: grpc.aio.Channel
    open_channel: Callable[[int], grpc.aio.Channel]

    def _unary(self, method: str, req: type, resp: type) -> grpc.aio.UnaryUnaryMultiCallable:
        return self.master.unary_unary(f"/FlexlbService/{method}", request_serializer=req.SerializeToString,
                                       response_deserializer=resp.FromString)

    async def schedule(self, req: fpb.FlexlbScheduleRequestPB, timeout: float = 10.0,
                       metadata: tuple[tuple[str, str], ...] = ()) -> fpb.FlexlbScheduleResponsePB:
        call = self._unary("Schedule", fpb.FlexlbScheduleRequestPB, fpb.FlexlbScheduleResponsePB)
        reply: fpb.FlexlbScheduleResponsePB = await call(req, timeout=timeout, metadata=metadata or None)
        return reply

    async def state(self, request_id: int) -> fpb.GetRequestStateResponsePB:
        call = self._unary("GetRequestState", fpb.GetRequestStateRequestPB, fpb.GetRequestStateResponsePB)
        reply: fpb.GetRequestStateResponsePB = await call(fpb.GetRequestStateRequestPB(request_id=request_id),
                                                          timeout=5)
        return reply

    async def cancel(self, request_id: int) -> fpb.FlexlbCancelResponsePB:
        call = self._unary("Cancel", fpb.FlexlbCancelRequestPB, fpb.FlexlbCancelResponsePB)
        reply: fpb.FlexlbCancelResponsePB = await call(fpb.FlexlbCancelRequestPB(request_id=request_id), timeout=5)
        return reply

    async def fetch(self, port: int, request_id: int, timeout: float = 10.0) -> list[pb.GenerateOutputsPB]:
        """FetchResponse on the worker's gRPC port: every message of the request."""
        call = self.open_channel(port).unary_stream(
            "/RpcService/FetchResponse", request_serializer=pb.FetchRequestPB.SerializeToString,
            response_deserializer=pb.GenerateOutputsPB.FromString)
        return [m async for m in call(pb.FetchRequestPB(request_id=request_id), timeout=timeout)]


def entry_port(reply: fpb.FlexlbScheduleResponsePB) -> int:
    """The gRPC port of the worker the frontend talks to (PREFILL, else PDFUSION)."""
    by_role = {s.role: s.grpc_port for s in reply.server_status}
    return by_role.get("PREFILL") or by_role["PDFUSION"]


def schedule_request(inp: pb.GenerateInputPB, **kw: Any) -> fpb.FlexlbScheduleRequestPB:
    """The frontend's Schedule request for a GenerateInputPB."""
    return fpb.FlexlbScheduleRequestPB(request_id=inp.request_id, generate_input=inp.SerializeToString(),
                                       seq_len=len(inp.token_ids), **kw)
