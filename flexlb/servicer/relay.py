"""The RpcService face of the gateway: route each call, then relay it byte for byte.

Requests are parsed once (for routing) and forwarded as the client's bytes unless PD needs
role_addrs written; responses are relayed as bytes, never re-encoded; metadata, status,
details and trailers (grpc-status-details-bin included) come back verbatim.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import grpc
from google.protobuf.message import DecodeError

from flexlb import wire
from flexlb.balancer.request import Deploy, NoWorkerAvailable, RouteRequest
from flexlb.balancer.router import Lease, Router
from flexlb.balancer.workers import Role, WorkerState
from flexlb.metrics import Metrics
from flexlb.pb import model_rpc_service_pb2 as pb
from flexlb.upstream.pool import UpstreamPool

# request headers that belong to this hop, not to the call (PITFALLS: grpc.aio metadata)
_HOP_HEADERS = frozenset({"user-agent", "te", "content-type"})

# FlexLB's per-role "no available worker" codes (flexlb-original.md §1.2)
_NO_WORKER_CODE = {"PREFILL": 8402, "DECODE": 8403, "PDFUSION": 8404}

_ROLE_ENUM = {Role.PREFILL: pb.RoleAddrPB.PREFILL, Role.DECODE: pb.RoleAddrPB.DECODE}


def forwardable_metadata(
    metadata: Sequence[tuple[str, str | bytes]] | None,
) -> tuple[tuple[str, str | bytes], ...]:
    """Client metadata minus pseudo-headers, hop headers and grpc-* (the deadline travels as a timeout)."""
    if not metadata:
        return ()
    return tuple(
        (k, v) for k, v in metadata if not k.startswith(":") and not k.startswith("grpc-") and k not in _HOP_HEADERS
    )


def _role_addr(w: WorkerState) -> pb.RoleAddrPB:
    a = w.addr
    return wire.role_addr(_ROLE_ENUM[a.role], a.ip, a.grpc_port, a.http_port)


class Draining(Exception):
    """The gateway is shutting down and takes no new calls."""


class RpcRelay:
    """Serves GenerateStreamCall, BatchGenerateCall and CheckHealth of RpcService."""

    def __init__(
        self,
        router: Router,
        pool: UpstreamPool,
        metrics: Metrics,
        is_draining: Callable[[], bool],
    ) -> None:
        self.router = router
        self.pool = pool
        self.metrics = metrics
        self._is_draining = is_draining
        self._pd = router.deploy is Deploy.DISAGGREGATED

    def handler(self, max_message_bytes: int) -> grpc.GenericRpcHandler:
        """Generic handler for service RpcService; methods not listed answer UNIMPLEMENTED."""
        del max_message_bytes  # limits are enforced by the server options
        return grpc.method_handlers_generic_handler(
            wire.RPC_SERVICE,
            {
                # bytes in, bytes out: no deserializer / serializer on the relayed methods
                "GenerateStreamCall": grpc.unary_stream_rpc_method_handler(self.generate_stream_call),
                "BatchGenerateCall": grpc.unary_unary_rpc_method_handler(self.batch_generate_call),
                "CheckHealth": grpc.unary_unary_rpc_method_handler(
                    self.check_health,
                    request_deserializer=pb.EmptyPB.FromString,
                    response_serializer=pb.CheckHealthResponsePB.SerializeToString,
                ),
            },
        )

    # ------------------------------------------------------------ shared steps

    async def _reject(
        self,
        context: grpc.aio.ServicerContext,
        method: str,
        code: grpc.StatusCode,
        reason: str,
        message: str,
        error_code: int | None = None,
    ) -> None:
        self.metrics.rejected.labels(method, code.name, reason).inc()
        trailer = wire.error_trailer(error_code, message) if error_code is not None else ()
        await context.abort(code, message, trailing_metadata=trailer)

    async def _parse(self, request: bytes, context: grpc.aio.ServicerContext, method: str) -> pb.GenerateInputPB:
        try:
            inp = pb.GenerateInputPB.FromString(request)
        except DecodeError as exc:
            await self._reject(
                context,
                method,
                grpc.StatusCode.INVALID_ARGUMENT,
                "bad_request",
                f"request is not a valid GenerateInputPB: {exc}",
            )
            raise  # unreachable: abort raises
        if not inp.token_ids:
            await self._reject(
                context,
                method,
                grpc.StatusCode.INVALID_ARGUMENT,
                "no_tokens",
                "GenerateInputPB.token_ids is empty; nothing to generate from",
            )
        return inp

    async def _route(self, context: grpc.aio.ServicerContext, method: str, req: RouteRequest, pair: bool) -> Lease:
        if self._is_draining():
            await self._reject(
                context,
                method,
                grpc.StatusCode.UNAVAILABLE,
                "draining",
                "gateway is shutting down; retry on another replica",
            )
        try:
            lease = self.router.route(req, pair=pair)
        except NoWorkerAvailable as exc:
            await self._reject(
                context,
                method,
                grpc.StatusCode.UNAVAILABLE,
                "no_worker",
                str(exc),
                _NO_WORKER_CODE.get(exc.role, 8402),
            )
            raise  # unreachable
        d = lease.decision
        self.metrics.decisions.labels(d.strategy, d.reason).inc()
        return lease

    def _finish(self, method: str, lease: Lease, code: grpc.StatusCode, started_s: float) -> None:
        if not lease.release():
            return
        t = lease.decision.target
        self.metrics.requests.labels(method, t.key, t.role.name, lease.decision.strategy, code.name).inc()
        self.metrics.latency.labels(method).observe(time.monotonic() - started_s)

    # ------------------------------------------------------------ GenerateStreamCall

    async def generate_stream_call(self, request: bytes, context: grpc.aio.ServicerContext) -> None:
        """Route, forward the request bytes and relay the worker's stream message by message."""
        method = "GenerateStreamCall"
        started_s = time.monotonic()
        inp = await self._parse(request, context, method)
        lease = await self._route(
            context,
            method,
            RouteRequest(inp.request_id, len(inp.token_ids), inp.generate_config.max_new_tokens),
            pair=True,
        )
        decision = lease.decision
        if decision.decode is not None:
            # PD: the prefill finds its decode peer in role_addrs (rtp-llm-wire.md §5.5)
            del inp.generate_config.role_addrs[:]
            inp.generate_config.role_addrs.extend([_role_addr(decision.target), _role_addr(decision.decode)])
            request = inp.SerializeToString()
        code = grpc.StatusCode.UNKNOWN
        call = self.pool.generate_stream(decision.target.addr)(
            request,
            timeout=context.time_remaining(),
            metadata=forwardable_metadata(context.invocation_metadata()),
        )
        messages = 0
        try:
            await context.send_initial_metadata(tuple(await call.initial_metadata()))
            async for message in call:
                if messages == 0:
                    self.metrics.ttft.labels(decision.target.key).observe(time.monotonic() - started_s)
                messages += 1
                await context.write(message)
            code = grpc.StatusCode.OK
            context.set_trailing_metadata(tuple(await call.trailing_metadata()))
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            # worker's status, details and trailers verbatim (a tuple: grpc.aio.Metadata would turn into UNKNOWN)
            await context.abort(code, exc.details() or "", trailing_metadata=tuple(exc.trailing_metadata() or ()))
        except BaseException:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            if not call.done():
                call.cancel()
            if messages:
                self.metrics.relayed_messages.labels(method).inc(messages)
            self._finish(method, lease, code, started_s)

    # ------------------------------------------------------------ BatchGenerateCall

    async def batch_generate_call(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """Route the whole batch to one worker (local generation, no PD hand-off) and relay the reply."""
        method = "BatchGenerateCall"
        started_s = time.monotonic()
        try:
            batch = pb.BatchGenerateInputPB.FromString(request)
        except DecodeError as exc:
            await self._reject(
                context,
                method,
                grpc.StatusCode.INVALID_ARGUMENT,
                "bad_request",
                f"request is not a valid BatchGenerateInputPB: {exc}",
            )
            raise
        if not batch.inputs or any(not i.token_ids for i in batch.inputs):
            await self._reject(
                context,
                method,
                grpc.StatusCode.INVALID_ARGUMENT,
                "no_tokens",
                "BatchGenerateInputPB needs at least one input, each with token_ids",
            )
        first = batch.inputs[0]
        lease = await self._route(
            context,
            method,
            RouteRequest(
                first.request_id,
                sum(len(i.token_ids) for i in batch.inputs),
                max(i.generate_config.max_new_tokens for i in batch.inputs),
            ),
            pair=False,
        )
        code = grpc.StatusCode.UNKNOWN
        call = self.pool.batch_generate(lease.decision.target.addr)(
            request,
            timeout=context.time_remaining(),
            metadata=forwardable_metadata(context.invocation_metadata()),
        )
        try:
            reply: bytes = await call
            code = grpc.StatusCode.OK
            await context.send_initial_metadata(tuple(await call.initial_metadata()))
            context.set_trailing_metadata(tuple(await call.trailing_metadata()))
            return reply
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            await context.abort(code, exc.details() or "", trailing_metadata=tuple(exc.trailing_metadata() or ()))
            raise
        except BaseException:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            if not call.done():
                call.cancel()
            self._finish(method, lease, code, started_s)

    # ------------------------------------------------------------ CheckHealth

    async def check_health(self, request: pb.EmptyPB, context: grpc.aio.ServicerContext) -> pb.CheckHealthResponsePB:
        """OK while the gateway can route (not draining, every needed role has a worker in rotation)."""
        if self._is_draining():
            await context.abort(grpc.StatusCode.UNAVAILABLE, "gateway is draining")
        if not self.router.can_route():
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no worker in rotation for a needed role")
        return pb.CheckHealthResponsePB(health="OK")
