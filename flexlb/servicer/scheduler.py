"""FlexlbService: the routing decision alone, for callers that call the worker themselves."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from flexlb.balancer.request import NoWorkerAvailable, RouteRequest
from flexlb.balancer.router import Router
from flexlb.balancer.workers import WorkerState
from flexlb.metrics import Metrics
from flexlb.pb import flexlb_schedule_service_pb2 as fpb
from flexlb.pb import model_rpc_service_pb2 as pb

_NO_WORKER_CODE = {"PREFILL": 8402, "DECODE": 8403, "PDFUSION": 8404}
INVALID_REQUEST = 8406


def _server_status(w: WorkerState) -> fpb.FlexlbServerStatusPB:
    a = w.addr
    return fpb.FlexlbServerStatusPB(role=a.role.name, server_ip=a.ip, http_port=a.http_port, grpc_port=a.grpc_port)


class Scheduler:
    """Serves /FlexlbService/Schedule, Cancel and GetRequestState."""

    def __init__(self, router: Router, metrics: Metrics, master_host: Callable[[], str] = lambda: "") -> None:
        self.router = router
        self.metrics = metrics
        self._master_host = master_host

    @property
    def master_host(self) -> str:
        """`ip:port` of the master's admin HTTP port ('' without high availability or while unknown)."""
        return self._master_host()

    def handler(self) -> grpc.GenericRpcHandler:
        """Generic handler for service FlexlbService."""
        return grpc.method_handlers_generic_handler(
            "FlexlbService",
            {
                "Schedule": grpc.unary_unary_rpc_method_handler(
                    self.schedule,
                    request_deserializer=fpb.FlexlbScheduleRequestPB.FromString,
                    response_serializer=fpb.FlexlbScheduleResponsePB.SerializeToString,
                ),
                "Cancel": grpc.unary_unary_rpc_method_handler(
                    self.cancel,
                    request_deserializer=fpb.FlexlbCancelRequestPB.FromString,
                    response_serializer=fpb.FlexlbCancelResponsePB.SerializeToString,
                ),
                "GetRequestState": grpc.unary_unary_rpc_method_handler(
                    self.get_request_state,
                    request_deserializer=fpb.GetRequestStateRequestPB.FromString,
                    response_serializer=fpb.GetRequestStateResponsePB.SerializeToString,
                ),
            },
        )

    async def schedule(
        self, req: fpb.FlexlbScheduleRequestPB, context: grpc.aio.ServicerContext
    ) -> fpb.FlexlbScheduleResponsePB:
        """Choose worker(s) for a request described by seq_len / block keys / generate_input."""
        seq_len = req.seq_len
        max_new = req.max_new_tokens
        if req.generate_input:
            try:
                inp = pb.GenerateInputPB.FromString(req.generate_input)
            except Exception:
                return fpb.FlexlbScheduleResponsePB(
                    success=False,
                    code=INVALID_REQUEST,
                    error_message="generate_input is not a GenerateInputPB",
                    real_master_host=self.master_host,
                )
            seq_len = seq_len or len(inp.token_ids)
            max_new = max_new or inp.generate_config.max_new_tokens
        if seq_len <= 0:
            return fpb.FlexlbScheduleResponsePB(
                success=False,
                code=INVALID_REQUEST,
                real_master_host=self.master_host,
                error_message="seq_len (or generate_input.token_ids) is required",
            )
        try:
            lease = self.router.route(RouteRequest(req.request_id, seq_len, max_new))
        except NoWorkerAvailable as exc:
            return fpb.FlexlbScheduleResponsePB(
                success=False,
                code=_NO_WORKER_CODE.get(exc.role, 8402),
                error_message=str(exc),
                real_master_host=self.master_host,
            )
        # decision only: the caller talks to the worker itself, so no load stays reserved here
        lease.release()
        d = lease.decision
        self.metrics.decisions.labels(d.strategy, d.reason).inc()
        chosen = [d.target] if d.decode is None else [d.target, d.decode]
        return fpb.FlexlbScheduleResponsePB(
            success=True,
            code=200,
            server_status=[_server_status(w) for w in chosen],
            real_master_host=self.master_host,
        )

    async def cancel(
        self, req: fpb.FlexlbCancelRequestPB, context: grpc.aio.ServicerContext
    ) -> fpb.FlexlbCancelResponsePB:
        """Nothing is queued by a decision-only Schedule, so there is never anything to cancel."""
        return fpb.FlexlbCancelResponsePB(found=False)

    async def get_request_state(
        self, req: fpb.GetRequestStateRequestPB, context: grpc.aio.ServicerContext
    ) -> fpb.GetRequestStateResponsePB:
        """Decision-only scheduling keeps no per-request state."""
        return fpb.GetRequestStateResponsePB(found=False)
