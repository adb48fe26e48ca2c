"""The grpcio relay engine: RpcService served by grpc.aio, each call relayed through a pooled channel.

Requests are parsed once (for routing) and forwarded as the client's bytes unless PD needs
role_addrs written; responses are relayed as bytes, never re-encoded; metadata, status,
details and trailers (grpc-status-details-bin included) come back verbatim. What happens to a
call (which worker, failover, timeouts, its finish) is its `CallLife`'s; this moves bytes.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import grpc

from flexlb import wire
from flexlb.balancer.router import Router
from flexlb.call.dispatch import BATCH_GENERATE, GENERATE_STREAM, Dispatcher, Planned
from flexlb.call.failures_wire import engine_code_from_trailers
from flexlb.call.lifecycle import CallLife, CallPolicy, Metadata
from flexlb.call.metadata import forwarded_metadata
from flexlb.call.surface import RpcSurface
from flexlb.relay.grpcio.pool import UpstreamPool


@dataclass(frozen=True)
class _Attempt:
    planned: Planned
    metadata: Metadata
    timeout_s: float | None
    generation: int


@dataclass(frozen=True)
class _Answer:
    code: grpc.StatusCode
    message: str
    trailer: tuple[tuple[str, bytes], ...]


class _Port:
    """The lifecycle's port for one grpc.aio call: what it asks is queued for the handler coroutine to run."""

    def __init__(self) -> None:
        self.steps: asyncio.Queue[_Attempt | _Answer] = asyncio.Queue()
        self.generation = 0  # bumped by stop_attempt: a read that fails after it belongs to an abandoned attempt
        self.current: grpc.aio.Call | None = None
        self.messages = 0

    def start_attempt(self, planned: Planned, metadata: Metadata, timeout_s: float | None) -> None:
        self.steps.put_nowait(_Attempt(planned, metadata, timeout_s, self.generation))

    def stop_attempt(self) -> None:
        self.generation += 1
        if self.current is not None and not self.current.done():
            self.current.cancel()

    def answer(self, code: grpc.StatusCode, message: str, trailer: tuple[tuple[str, bytes], ...]) -> None:
        self.steps.put_nowait(_Answer(code, message, trailer))


async def _abort_relayed(context: grpc.aio.ServicerContext, exc: grpc.aio.AioRpcError) -> None:
    """The worker's status, details and trailers, verbatim (a tuple: grpc.aio.Metadata turns into UNKNOWN)."""
    await context.abort(exc.code(), exc.details() or "", trailing_metadata=tuple(exc.trailing_metadata() or ()))


async def _raise_unless_ok(call: grpc.aio.UnaryStreamCall) -> None:
    """Raise the worker's final status as an AioRpcError unless it is OK."""
    code = await call.code()
    if code != grpc.StatusCode.OK:
        raise grpc.aio.AioRpcError(code, await call.initial_metadata(), await call.trailing_metadata(),
                                   await call.details())


class RpcRelay:
    """Serves GenerateStreamCall and BatchGenerateCall (relayed) and the methods of `surface` (answered here)."""

    def __init__(self, dispatcher: Dispatcher, policy: CallPolicy, router: Router, pool: UpstreamPool) -> None:
        self.dispatcher = dispatcher
        self.policy = policy
        self.router = router
        self.pool = pool
        self.surface = RpcSurface(dispatcher, router, pool.unary)

    def handler(self, relay_generate: bool = True) -> grpc.GenericRpcHandler:
        """Generic handler for service RpcService; methods not listed answer UNIMPLEMENTED. Without
        `relay_generate` (the h2 engine relays those itself) only the answered methods."""
        methods: dict[str, grpc.RpcMethodHandler] = self.surface.handlers()
        if relay_generate:
            # bytes in, bytes out: no deserializer / serializer on the relayed methods
            methods[GENERATE_STREAM] = grpc.unary_stream_rpc_method_handler(self.generate_stream_call)
            methods[BATCH_GENERATE] = grpc.unary_unary_rpc_method_handler(self.batch_generate_call)
        return grpc.method_handlers_generic_handler(wire.RPC_SERVICE, methods)

    async def generate_stream_call(self, request: bytes, context: grpc.aio.ServicerContext) -> None:
        """Relay the worker's stream message by message; attempts are the lifecycle's to start and stop."""
        await self._run(GENERATE_STREAM, request, context)

    async def batch_generate_call(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """Relay the one reply of the worker the whole batch was routed to."""
        reply = await self._run(BATCH_GENERATE, request, context)
        assert reply is not None
        return reply

    async def _run(self, method: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes | None:
        port = _Port()
        remaining = context.time_remaining()
        deadline_s = None if remaining is None else time.monotonic() + remaining
        # grpc C-core ends the handler at the client's deadline itself
        life = CallLife(self.dispatcher, self.policy, port, asyncio.get_running_loop(), method,
                        forwarded_metadata(context.invocation_metadata() or ()), deadline_s, context.peer(),
                        enforce_deadline=False)
        try:
            life.request(request)
            while True:
                step = await port.steps.get()
                if isinstance(step, _Answer):
                    await context.abort(step.code, step.message, trailing_metadata=step.trailer)
                if not isinstance(step, _Attempt) or step.generation != port.generation:
                    continue  # an attempt the lifecycle stopped before it began
                run = self._stream_attempt if method == GENERATE_STREAM else self._unary_attempt
                done, reply = await run(step, port, life, context)
                if done:
                    return reply
        finally:
            if not life.finished:
                # the handler was cancelled, or writing to the client failed (it left): the call is over
                life.cancelled(port.messages)
            port.stop_attempt()

    async def _failed(self, exc: grpc.aio.AioRpcError, step: _Attempt, port: _Port, life: CallLife,
                      context: grpc.aio.ServicerContext) -> None:
        """An attempt failed: fail over (return), answer a transport failure (return: the answer is queued),
        or relay the worker's status verbatim (raises)."""
        engine_code = engine_code_from_trailers(exc.trailing_metadata() or ())
        if step.generation != port.generation:
            return  # the lifecycle stopped it (first-message timeout): its next step is queued
        if exc.code() == grpc.StatusCode.UNAVAILABLE and engine_code is None:
            # grpc C-core reports its own transport failures (refused, reset, lost) as UNAVAILABLE without an
            # ErrorDetailsPB, the worker's address in the text: the gateway words those itself
            connect = (exc.details() or "").startswith("failed to connect")
            error_code = wire.CONNECT_FAILED if connect else wire.CONNECTION_RESET_BY_PEER
            if port.messages == 0 and life.attempt_failed(exc.code().name, error_code):
                return
            life.give_up(exc.code(), "cannot connect to the worker" if connect else "connection to the worker lost",
                         port.messages, error_code=error_code, detail=exc.details() or "")
            return
        if port.messages == 0 and life.attempt_failed(exc.code().name, engine_code):
            return
        life.ended(exc.code().name, port.messages, engine_code)
        await _abort_relayed(context, exc)

    async def _stream_attempt(self, step: _Attempt, port: _Port, life: CallLife,
                              context: grpc.aio.ServicerContext) -> tuple[bool, bytes | None]:
        call = self.pool.generate_stream(step.planned.lease.decision.target.addr)(
            step.planned.body, timeout=step.timeout_s, metadata=tuple(step.metadata))
        port.current = call
        try:
            message = await call.read()
            if message is grpc.aio.EOF:
                await _raise_unless_ok(call)  # read() reports some failures as EOF: the status is final
            else:
                life.first_message(message)
                # headers only now: a failed-over attempt must not have shown the client its metadata
                await context.send_initial_metadata(tuple(await call.initial_metadata()))
                while message is not grpc.aio.EOF:
                    port.messages += 1
                    await context.write(message)
                    message = await call.read()
                await _raise_unless_ok(call)
            context.set_trailing_metadata(tuple(await call.trailing_metadata()))
            life.ended(grpc.StatusCode.OK.name, port.messages)
            return True, None
        except grpc.aio.AioRpcError as exc:
            await self._failed(exc, step, port, life, context)
            return False, None
        except asyncio.CancelledError:
            if step.generation != port.generation and not _cancelling():
                return False, None  # our own cancel of an abandoned attempt, not the handler's
            raise

    async def _unary_attempt(self, step: _Attempt, port: _Port, life: CallLife,
                             context: grpc.aio.ServicerContext) -> tuple[bool, bytes | None]:
        call = self.pool.batch_generate(step.planned.lease.decision.target.addr)(
            step.planned.body, timeout=step.timeout_s, metadata=tuple(step.metadata))
        port.current = call
        try:
            reply: bytes = await call
        except grpc.aio.AioRpcError as exc:
            await self._failed(exc, step, port, life, context)
            return False, None
        except asyncio.CancelledError:
            if step.generation != port.generation and not _cancelling():
                return False, None
            raise
        life.first_message(None)
        port.messages = 1
        await context.send_initial_metadata(tuple(await call.initial_metadata()))
        context.set_trailing_metadata(tuple(await call.trailing_metadata()))
        life.ended(grpc.StatusCode.OK.name, 1)
        return True, reply


def _cancelling() -> bool:
    """Whether the running task itself is being cancelled (the client left), not only a call it awaited."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
