"""FlexlbService: routing decisions for callers that talk to the worker themselves, and for replicas.

A client's Schedule (forward_hop 0) is decision only: the worker is called directly, so the load
is not held here. A replica's Schedule (forward_hop >= 1, see consistency/forwarding.py) keeps
the load reserved on the master until the replica's Cancel says the relayed call ended (or a TTL
passes), so the master's load view counts calls routed for other replicas. Those reservations are
what Cancel and GetRequestState report on.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from flexlb.balancer.prefix import prompt_block_keys
from flexlb.balancer.request import NoWorkerAvailable, RouteRequest
from flexlb.balancer.router import Lease, Router
from flexlb.balancer.workers import WorkerState
from flexlb.metrics import Metrics
from flexlb.pb import flexlb_schedule_service_pb2 as fpb
from flexlb.pb import model_rpc_service_pb2 as pb

_NO_WORKER_CODE = {"PREFILL": 8402, "DECODE": 8403, "PDFUSION": 8404}
INVALID_REQUEST = 8406


def _server_status(w: WorkerState) -> fpb.FlexlbServerStatusPB:
    a = w.addr
    return fpb.FlexlbServerStatusPB(role=a.role.name, server_ip=a.ip, http_port=a.http_port, grpc_port=a.grpc_port)


@dataclass
class _Reservation:
    lease: Lease
    request_id: int
    expires_s: float


class Scheduler:
    """Serves /FlexlbService/Schedule, Cancel and GetRequestState."""

    def __init__(self, router: Router, metrics: Metrics, release: Callable[[Lease], None],
                 master_host: Callable[[], str] = lambda: "",
                 block_size_tokens: Callable[[], int] = lambda: 64, reservation_ttl_s: float = 600.0) -> None:
        """`release` gives a reservation's load back and delivers what that frees (Dispatcher.release)."""
        self.router = router
        self._release = release
        self.metrics = metrics
        self._master_host = master_host
        self._block_size_tokens = block_size_tokens
        self.reservation_ttl_s = reservation_ttl_s
        self._reservations: OrderedDict[int, _Reservation] = OrderedDict()  # batch_id (lease seq) → load held

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

    def _fail(self, code: int, message: str) -> fpb.FlexlbScheduleResponsePB:
        return fpb.FlexlbScheduleResponsePB(success=False, code=code, error_message=message,
                                            real_master_host=self.master_host)

    def route_request(self, req: fpb.FlexlbScheduleRequestPB) -> RouteRequest | fpb.FlexlbScheduleResponsePB:
        """What to route, from client block keys or the serialized GenerateInputPB; or the error reply."""
        seq_len = req.seq_len
        max_new = req.max_new_tokens
        block = self._block_size_tokens()
        keys: tuple[int, ...] = ()
        if req.generate_input:
            try:
                inp = pb.GenerateInputPB.FromString(req.generate_input)
                n_tokens, key_list = prompt_block_keys(req.generate_input, block)
            except Exception:
                return self._fail(INVALID_REQUEST, "generate_input is not a serialized GenerateInputPB")
            seq_len = seq_len or n_tokens
            max_new = max_new or inp.generate_config.max_new_tokens
            keys = tuple(key_list)
        if req.block_cache_keys and req.cache_key_block_size == block:
            # the frontend's keys (RTP-LLM hash) are only comparable when cut with our block size
            keys = tuple(req.block_cache_keys)
        if seq_len <= 0:
            return self._fail(INVALID_REQUEST, "seq_len (or generate_input.token_ids) is required")
        return RouteRequest(req.request_id, seq_len, max_new, block_keys=keys, block_size_tokens=block)

    async def schedule(
        self, req: fpb.FlexlbScheduleRequestPB, context: grpc.aio.ServicerContext
    ) -> fpb.FlexlbScheduleResponsePB:
        """Choose worker(s); keep the load reserved when a replica asks (it relays the call itself)."""
        route = self.route_request(req)
        if isinstance(route, fpb.FlexlbScheduleResponsePB):
            return route
        try:
            lease = self.router.route(route, kind="reservation")
        except NoWorkerAvailable as exc:
            return self._fail(_NO_WORKER_CODE.get(exc.role, 8402), str(exc))
        d = lease.decision
        dead = [w for w in (d.target, d.decode) if w is not None and not self.router.in_rotation(w)]
        if dead:
            # routing fails open for relayed calls (a doubtful worker beats refusing the call); a decision
            # handed to a caller must not: it would dial a worker the gateway knows is out, so it is told
            # to retry elsewhere (FlexLB's retryable 8402/8403/8404), as the Java master answers
            self._release(lease)
            role = dead[0].role.name
            return self._fail(_NO_WORKER_CODE.get(role, 8402), f"no {role} worker in rotation")
        self.metrics.decisions.labels(d.strategy, d.reason).inc()
        lifecycle = fpb.RequestLifecyclePB(request_id=req.request_id, batch_id=lease.seq)
        if req.forward_hop >= 1:
            self._expire()
            expires = time.monotonic() + self.reservation_ttl_s
            self._reservations[lease.seq] = _Reservation(lease, req.request_id, expires)
            lifecycle.state = fpb.REQUEST_STATE_DISPATCHING
        else:
            self._release(lease)  # decision only: the caller talks to the worker itself
            lifecycle.state = fpb.REQUEST_STATE_COMPLETED
        chosen = [d.target] if d.decode is None else [d.target, d.decode]
        return fpb.FlexlbScheduleResponsePB(
            success=True, code=200, server_status=[_server_status(w) for w in chosen],
            real_master_host=self.master_host, lifecycle=lifecycle,
        )

    def _expire(self) -> None:
        now = time.monotonic()
        while self._reservations:
            seq, r = next(iter(self._reservations.items()))
            if r.expires_s > now:
                break
            del self._reservations[seq]
            self._release(r.lease)

    def _find(self, request_id: int, batch_id: int) -> tuple[int, _Reservation] | None:
        if batch_id and batch_id in self._reservations:
            r = self._reservations[batch_id]
            return (batch_id, r) if r.request_id == request_id or not request_id else None
        for seq, r in self._reservations.items():
            if r.request_id == request_id:
                return seq, r
        return None

    async def cancel(
        self, req: fpb.FlexlbCancelRequestPB, context: grpc.aio.ServicerContext
    ) -> fpb.FlexlbCancelResponsePB:
        """The call a reservation was for has ended (or was abandoned): give its load back."""
        self._expire()
        found = self._find(req.request_id, req.batch_id)
        if found is None:
            return fpb.FlexlbCancelResponsePB(found=False)
        seq, r = found
        del self._reservations[seq]
        self._release(r.lease)
        return fpb.FlexlbCancelResponsePB(found=True, lifecycle=fpb.RequestLifecyclePB(
            request_id=r.request_id, batch_id=seq, state=fpb.REQUEST_STATE_CANCELLED))

    async def get_request_state(
        self, req: fpb.GetRequestStateRequestPB, context: grpc.aio.ServicerContext
    ) -> fpb.GetRequestStateResponsePB:
        """Whether a reserved decision is still held here."""
        self._expire()
        found = self._find(req.request_id, req.batch_id)
        if found is None:
            return fpb.GetRequestStateResponsePB(found=False)
        seq, r = found
        return fpb.GetRequestStateResponsePB(found=True, lifecycle=fpb.RequestLifecyclePB(
            request_id=r.request_id, batch_id=seq, state=fpb.REQUEST_STATE_DISPATCHING))

    def reserved(self) -> int:
        """Decisions held for replicas right now."""
        return len(self._reservations)
