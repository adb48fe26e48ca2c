"""The grpcio relay engine: RpcService served by grpc.aio, each call relayed through a pooled channel.

Requests are parsed once (for routing) and forwarded as the client's bytes unless PD needs
role_addrs written; responses are relayed as bytes, never re-encoded; metadata, status,
details and trailers (grpc-status-details-bin included) come back verbatim.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import grpc

from flexlb import wire
from flexlb.balancer.router import Router
from flexlb.call.dispatch import (
    BATCH_GENERATE,
    FAILOVER_CODES,
    GENERATE_STREAM,
    HOP_HEADERS,
    Dispatcher,
    Planned,
    Rejection,
)
from flexlb.pb import model_rpc_service_pb2 as pb
from flexlb.relay.grpcio.pool import UpstreamPool

Metadata = tuple[tuple[str, str | bytes], ...]


def forwardable_metadata(metadata: Sequence[tuple[str, str | bytes]] | None) -> Metadata:
    """Client metadata minus pseudo-headers, hop headers and grpc-* (the deadline travels as a timeout)."""
    if not metadata:
        return ()
    return tuple(
        (k, v) for k, v in metadata if not k.startswith(":") and not k.startswith("grpc-") and k not in HOP_HEADERS
    )


async def abort_with(context: grpc.aio.ServicerContext, rejection: Rejection) -> None:
    """End the call with the rejection's status (and ErrorDetailsPB trailer)."""
    await context.abort(rejection.code, rejection.message, trailing_metadata=rejection.trailer())


class RpcRelay:
    """Serves GenerateStreamCall and BatchGenerateCall (relayed) and CheckHealth (answered here)."""

    def __init__(self, dispatcher: Dispatcher, router: Router, pool: UpstreamPool) -> None:
        self.dispatcher = dispatcher
        self.router = router
        self.pool = pool

    def handler(self, relay_generate: bool = True) -> grpc.GenericRpcHandler:
        """Generic handler for service RpcService; methods not listed answer UNIMPLEMENTED."""
        methods: dict[str, grpc.RpcMethodHandler] = {
            "CheckHealth": grpc.unary_unary_rpc_method_handler(
                self.check_health,
                request_deserializer=pb.EmptyPB.FromString,
                response_serializer=pb.CheckHealthResponsePB.SerializeToString,
            ),
        }
        if relay_generate:
            # bytes in, bytes out: no deserializer / serializer on the relayed methods
            methods[GENERATE_STREAM] = grpc.unary_stream_rpc_method_handler(self.generate_stream_call)
            methods[BATCH_GENERATE] = grpc.unary_unary_rpc_method_handler(self.batch_generate_call)
        return grpc.method_handlers_generic_handler(wire.RPC_SERVICE, methods)

    async def _plan(self, context: grpc.aio.ServicerContext, method: str, request: bytes) -> Planned:
        result: Planned | Rejection
        if method == GENERATE_STREAM:
            future: asyncio.Future[Planned | Rejection] = asyncio.get_running_loop().create_future()

            def done(outcome: Planned | Rejection) -> None:
                if not future.done():
                    future.set_result(outcome)

            # a cancelled handler cancels the future: the batching window then skips the call
            self.dispatcher.submit_generate(request, done, alive=lambda: not future.cancelled(),
                                            client=context.peer())
            result = await future
        else:
            try:
                result = self.dispatcher.plan_batch(request)
            except Rejection as rejection:
                result = rejection
        if isinstance(result, Rejection):
            self.dispatcher.reject(method, result)
            await abort_with(context, result)
            raise result  # unreachable: abort raises
        return result

    async def generate_stream_call(self, request: bytes, context: grpc.aio.ServicerContext) -> None:
        """Route, forward the request bytes and relay the worker's stream message by message.

        A failure before the first response message fails over to another worker (bounded by the
        dispatcher); after it, the worker's status goes to the client unchanged.
        """
        planned = await self._plan(context, GENERATE_STREAM, request)
        remaining = context.time_remaining()
        deadline_s = None if remaining is None else time.monotonic() + remaining
        while True:
            outcome = await self._attempt(planned, context, deadline_s)
            if isinstance(outcome, Planned):
                planned = outcome  # failed over: try the next worker
                continue
            return

    async def _attempt(self, planned: Planned, context: grpc.aio.ServicerContext,
                       deadline_s: float | None) -> Planned | None:
        """One upstream call; returns the next attempt when it failed over, else None."""
        code = grpc.StatusCode.UNKNOWN
        timeout = None if deadline_s is None else max(deadline_s - time.monotonic(), 0.001)
        call = self.pool.generate_stream(planned.lease.decision.target.addr)(
            planned.body, timeout=timeout, metadata=forwardable_metadata(context.invocation_metadata())
        )
        messages = 0
        retry_with: Planned | None = None
        try:
            first_timeout = self.dispatcher.first_message_timeout_s
            try:
                message = await asyncio.wait_for(call.read(), first_timeout) if first_timeout else await call.read()
            except TimeoutError:
                call.cancel()
                code = grpc.StatusCode.DEADLINE_EXCEEDED
                retry_with = self.dispatcher.retry(planned, code, deadline_s)
                if retry_with is not None:
                    return retry_with
                await context.abort(code, "no first token within prefillGenerateTimeoutMs")
            # headers only now: a failed-over attempt must not have shown the client its metadata
            await context.send_initial_metadata(tuple(await call.initial_metadata()))
            while message is not grpc.aio.EOF:
                if messages == 0:
                    self.dispatcher.first_message(planned, message)
                messages += 1
                await context.write(message)
                message = await call.read()
            code = await call.code()
            if code != grpc.StatusCode.OK:  # read() reports some failures as EOF: the status is final
                await context.abort(code, await call.details() or "",
                                    trailing_metadata=tuple(await call.trailing_metadata() or ()))
            context.set_trailing_metadata(tuple(await call.trailing_metadata()))
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if messages == 0 and code in FAILOVER_CODES and not context.cancelled():
                retry_with = self.dispatcher.retry(planned, code, deadline_s)
                if retry_with is not None:
                    return retry_with
            await self._abort_relayed(context, exc)
        except BaseException:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            if not call.done():
                call.cancel()
            if retry_with is None:
                self.dispatcher.finish(planned, code.name, messages)
        return None

    @staticmethod
    async def _abort_relayed(context: grpc.aio.ServicerContext, exc: grpc.aio.AioRpcError) -> None:
        """The worker's status, details and trailers, verbatim (a tuple: grpc.aio.Metadata turns into UNKNOWN)."""
        await context.abort(exc.code(), exc.details() or "", trailing_metadata=tuple(exc.trailing_metadata() or ()))

    async def batch_generate_call(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """Route the whole batch to one worker (local generation, no PD hand-off) and relay the reply."""
        planned = await self._plan(context, BATCH_GENERATE, request)
        remaining = context.time_remaining()
        deadline_s = None if remaining is None else time.monotonic() + remaining
        while True:
            code = grpc.StatusCode.UNKNOWN
            timeout = None if deadline_s is None else max(deadline_s - time.monotonic(), 0.001)
            call = self.pool.batch_generate(planned.lease.decision.target.addr)(
                planned.body, timeout=timeout, metadata=forwardable_metadata(context.invocation_metadata())
            )
            retry_with: Planned | None = None
            try:
                reply: bytes = await call
                code = grpc.StatusCode.OK
                self.dispatcher.router.worker_succeeded(planned.lease.decision.target)
                await context.send_initial_metadata(tuple(await call.initial_metadata()))
                context.set_trailing_metadata(tuple(await call.trailing_metadata()))
                return reply
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code in FAILOVER_CODES and not context.cancelled():
                    retry_with = self.dispatcher.retry(planned, code, deadline_s)
                if retry_with is None:
                    await self._abort_relayed(context, exc)
                    raise
            except BaseException:
                code = grpc.StatusCode.CANCELLED
                raise
            finally:
                if not call.done():
                    call.cancel()
                if retry_with is None:
                    self.dispatcher.finish(planned, code.name, 1 if code == grpc.StatusCode.OK else 0)
            planned = retry_with

    async def check_health(self, request: pb.EmptyPB, context: grpc.aio.ServicerContext) -> pb.CheckHealthResponsePB:
        """OK while the gateway can route (not draining, every needed role has a worker in rotation)."""
        if self.dispatcher.is_draining():
            await context.abort(grpc.StatusCode.UNAVAILABLE, "gateway is draining")
        if not self.router.can_route():
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no worker in rotation for a needed role")
        return pb.CheckHealthResponsePB(health="OK")
