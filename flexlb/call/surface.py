"""The gateway's RpcService: what it relays, what it answers itself, and the reflection data of exactly that.

Relayed (by either engine): GenerateStreamCall, BatchGenerateCall. Answered here, on the gateway's grpc.aio
server (the h2 engine passes these paths through to it): CheckHealth; Cancel, relayed to the worker holding
the request; GetWorkerStatus and GetCacheStatus, the gateway's workers aggregated as one engine, so that a
frontend (or a FlexLB master) given the gateway as a worker address sees a live engine and its load. Every
other RpcService method is neither served nor advertised (UNIMPLEMENTED, absent from reflection).

Aggregates (workers "in rotation": healthy, not ejected, not taken out by an operator; "entry" workers: the
PREFILL or PDFUSION workers calls enter, so a PD call counts once):

GetWorkerStatus — role "RoleType.PDFUSION" / role_type PDFUSION (the gateway serves whole calls); alive =
not draining and every needed role has a worker in rotation (what CheckHealth says); waiting_query_len =
the entry workers' waiting requests plus the calls held at the gateway (prefill queue); running_query_len,
available_concurrency, iterate_count, available_kv_cache, total_kv_cache, max_batch_tokens_size = summed over
entry workers; running_task_info = the entry workers' tasks, concatenated; step_latency_ms = their mean;
max_seq_len = the smallest over all workers in rotation (the longest prompt any of them takes); precision =
the workers' when they agree, else ""; dp_size = tp_size = 1, dp_rank = 0 (one endpoint); status_version =
the gateway's clock in µs, strictly increasing; finished_task_list empty and latest_finished_version 0
(finished-task versions are per worker and do not add up).

GetCacheStatus — available/total_kv_cache summed over entry workers; block_size = theirs (workers reporting
another block size are left out of the keys); version = the gateway's own, bumped whenever any entry worker's
version (or the set of workers answering) changes; cache_keys = the union of the entry workers' keys, sent
when need_cache_keys and the caller's latest_cache_version differs, as an engine does.

Each answer asks the workers at that moment (concurrent callers share one round), each with
`worker_timeout_s` (or what is left of the caller's deadline); a worker that does not answer is left out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message import DecodeError, Message

from flexlb import wire
from flexlb.balancer.health import usable
from flexlb.balancer.router import Router
from flexlb.balancer.workers import Role, WorkerAddr, WorkerState
from flexlb.call.dispatch import BATCH_GENERATE, GENERATE_STREAM, Dispatcher
from flexlb.call.failures_wire import engine_code_from_trailers
from flexlb.call.requests import Holder
from flexlb.pb import model_rpc_service_pb2 as pb

log = logging.getLogger("flexlb.surface")

# a unary call to a worker, bytes in and out: (worker, method path, request, timeout) -> reply; raises AioRpcError
WorkerCall = Callable[[WorkerAddr, str, bytes, "float | None"], Awaitable[bytes]]

CHECK_HEALTH, CANCEL, GET_WORKER_STATUS, GET_CACHE_STATUS = "CheckHealth", "Cancel", "GetWorkerStatus", "GetCacheStatus"
ROUTED_METHODS = (GENERATE_STREAM, BATCH_GENERATE)
ANSWERED_METHODS = (CHECK_HEALTH, CANCEL, GET_WORKER_STATUS, GET_CACHE_STATUS)
SERVED_METHODS = ROUTED_METHODS + ANSWERED_METHODS  # exactly what reflection advertises of RpcService

_ENTRY_ROLES = (Role.PREFILL, Role.PDFUSION)
_ENGINE_ROLES = (Role.PREFILL, Role.DECODE, Role.PDFUSION)
_CANCEL_RANK: dict[int, int] = {pb.CANCEL_STATUS_ACCEPTED: 3, pb.CANCEL_STATUS_TOMBSTONED: 2,
                                pb.CANCEL_STATUS_NOT_FOUND: 1}
T = TypeVar("T", bound=Message)


def _abort_trailer(error_code: int, message: str) -> tuple[tuple[str, bytes], ...]:
    return wire.error_trailer(error_code, message)


class RpcSurface:
    """The RpcService methods the gateway answers itself (both engines)."""

    def __init__(self, dispatcher: Dispatcher, router: Router, call_worker: WorkerCall,
                 worker_timeout_s: float = 1.0) -> None:
        self.dispatcher = dispatcher
        self.router = router
        self.cluster = router.cluster
        self._call_worker = call_worker
        self.worker_timeout_s = worker_timeout_s
        self._rounds: dict[tuple[str, bool], asyncio.Future[Any]] = {}  # worker rounds in progress, shared
        self._status_version = 0
        self._worker_keys: dict[str, tuple[int, frozenset[int]]] = {}  # worker -> (cache version, its keys)
        self._cache_versions: tuple[tuple[str, int], ...] | None = None
        self._cache_version = 0

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """grpc.aio method handlers of the answered methods (service RpcService)."""
        return {
            CHECK_HEALTH: grpc.unary_unary_rpc_method_handler(
                self.check_health, request_deserializer=pb.EmptyPB.FromString,
                response_serializer=pb.CheckHealthResponsePB.SerializeToString),
            CANCEL: grpc.unary_unary_rpc_method_handler(self.cancel),  # bytes: a worker's reply goes back verbatim
            GET_WORKER_STATUS: grpc.unary_unary_rpc_method_handler(
                self.get_worker_status, request_deserializer=pb.StatusVersionPB.FromString,
                response_serializer=pb.WorkerStatusPB.SerializeToString),
            GET_CACHE_STATUS: grpc.unary_unary_rpc_method_handler(
                self.get_cache_status, request_deserializer=pb.CacheVersionPB.FromString,
                response_serializer=pb.CacheStatusPB.SerializeToString),
        }

    # ------------------------------------------------------------ CheckHealth

    def alive(self) -> bool:
        """Not draining, and every role this deployment needs has a worker in rotation."""
        return not self.dispatcher.is_draining() and self.router.can_route()

    async def check_health(self, request: pb.EmptyPB, context: grpc.aio.ServicerContext) -> pb.CheckHealthResponsePB:
        """OK while the gateway can route (not draining, every needed role has a worker in rotation)."""
        if self.dispatcher.is_draining():
            message = "gateway is draining"
            await context.abort(grpc.StatusCode.UNAVAILABLE, message,
                                trailing_metadata=_abort_trailer(wire.NO_AVAILABLE_WORKER, message))
        if not self.router.can_route():
            message = "no worker in rotation for a needed role"
            await context.abort(grpc.StatusCode.UNAVAILABLE, message,
                                trailing_metadata=_abort_trailer(wire.NO_AVAILABLE_WORKER, message))
        return pb.CheckHealthResponsePB(health="OK")

    # ------------------------------------------------------------ Cancel

    def _timeout_s(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        return self.worker_timeout_s if remaining is None else max(min(remaining, self.worker_timeout_s), 0.001)

    async def cancel(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """Cancel{request_id}: a call still held at the gateway is ended here (as the engine ends a preempted
        request); one at a worker gets the Cancel relayed and the worker's reply back verbatim (a worker that
        does not serve Cancel — DECODE, PDFUSION — has its stream cancelled by the gateway, which then answers
        ACCEPTED); a request this gateway did not relay is looked up with the locators (BATCH mode) and the
        Cancel relayed there; CANCEL_STATUS_NOT_FOUND when nobody holds it."""
        try:
            request_id = pb.CancelRequestPB.FromString(request).request_id
        except DecodeError as exc:
            message = f"request is not a valid CancelRequestPB: {exc}"
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message,
                                trailing_metadata=_abort_trailer(wire.INVALID_PARAMS, message))
        timeout_s = self._timeout_s(context)
        holders = self.dispatcher.requests.holders(request_id)
        if holders:
            replies = await asyncio.gather(*(self._cancel_held(h, request_id, request, timeout_s) for h in holders))
            if len(replies) == 1:
                return replies[0]
            return _reply(max((_status_of(r) for r in replies), key=lambda s: _CANCEL_RANK.get(s, 0)))
        where = self.dispatcher.requests.locate(request_id)
        if where is None:
            return pb.CancelResponsePB(status=pb.CANCEL_STATUS_NOT_FOUND).SerializeToString()
        try:
            return await self._call_worker(where, wire.CANCEL, request, timeout_s)
        except grpc.aio.AioRpcError as exc:
            await self._relay_worker_error(context, exc, where, f"Cancel of request {request_id}")
            raise  # not reached: abort raised

    async def _cancel_held(self, holder: Holder, request_id: int, request: bytes, timeout_s: float) -> bytes:
        """Cancel one in-flight call: the worker's CancelResponsePB bytes, or the gateway's own."""
        worker = holder.worker()
        if worker is None:
            return _reply(pb.CANCEL_STATUS_ACCEPTED if holder.preempt() else pb.CANCEL_STATUS_NOT_FOUND)
        holder.keep_final()  # from now on the worker's end of the call reaches the client as it is
        try:
            return await self._call_worker(worker, wire.CANCEL, request, timeout_s)
        except grpc.aio.AioRpcError as exc:
            # DECODE and PDFUSION engines do not serve Cancel; the gateway carries the stream and ends it
            log.info("Cancel of request %d: worker %s answered %s (%s); the gateway cancels the call itself",
                     request_id, worker.key, exc.code().name, exc.details())
            return _reply(pb.CANCEL_STATUS_ACCEPTED if holder.preempt() else pb.CANCEL_STATUS_NOT_FOUND)

    async def _relay_worker_error(self, context: grpc.aio.ServicerContext, exc: grpc.aio.AioRpcError,
                                  worker: WorkerAddr, what: str) -> None:
        """A worker's error status goes back as it came, unless it is grpc's own transport failure (an
        UNAVAILABLE without ErrorDetailsPB, whose text names the address): that one the gateway words itself."""
        trailers = tuple(exc.trailing_metadata() or ())
        if exc.code() == grpc.StatusCode.UNAVAILABLE and engine_code_from_trailers(trailers) is None:
            log.warning("%s: worker %s unreachable: %s", what, worker.key, exc.details())
            message = "cannot reach the worker holding the request"
            await context.abort(grpc.StatusCode.UNAVAILABLE, message,
                                trailing_metadata=_abort_trailer(wire.CONNECT_FAILED, message))
        await context.abort(exc.code(), exc.details() or "", trailing_metadata=trailers)

    # ------------------------------------------------------------ GetWorkerStatus / GetCacheStatus

    def _in_rotation(self) -> list[WorkerState]:
        """Engines in rotation (VIT workers serve another service and take no prompts)."""
        now = time.monotonic()
        return [w for w in self.cluster.all() if w.role in _ENGINE_ROLES and usable(w, now)]

    async def _ask_all(self, workers: Iterable[WorkerState], path: str, request: Message, parse: type[T],
                       timeout_s: float) -> list[T | None]:
        body = request.SerializeToString()

        async def one(w: WorkerState) -> T | None:
            try:
                return parse.FromString(await self._call_worker(w.addr, path, body, timeout_s))
            except (grpc.aio.AioRpcError, DecodeError) as exc:
                detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
                log.info("%s of worker %s failed: %s", path, w.key, detail)
                return None

        return list(await asyncio.gather(*(one(w) for w in workers)))

    async def _shared(self, key: tuple[str, bool], make: Callable[[], Awaitable[Any]]) -> Any:
        """Run `make` once for all concurrent callers with the same key (one round of worker calls)."""
        fut = self._rounds.get(key)
        if fut is None:
            fut = asyncio.ensure_future(make())
            self._rounds[key] = fut
            fut.add_done_callback(lambda _f: self._rounds.pop(key, None))
        return await asyncio.shield(fut)  # a caller that leaves does not cancel the others' round

    async def get_worker_status(self, request: pb.StatusVersionPB,
                                context: grpc.aio.ServicerContext) -> pb.WorkerStatusPB:
        """The workers in rotation as one engine (aggregates in this module's docstring)."""
        workers = self._in_rotation()
        timeout_s = self._timeout_s(context)
        # finished tasks are not aggregated: ask for none (versions past any the workers reached)
        ask = pb.StatusVersionPB(latest_finished_version=1 << 62)
        replies: list[pb.WorkerStatusPB | None] = await self._shared(
            ("status", False), lambda: self._ask_all(workers, wire.GET_WORKER_STATUS, ask, pb.WorkerStatusPB,
                                                     timeout_s))
        out = pb.WorkerStatusPB(role="RoleType.PDFUSION", dp_size=1, tp_size=1, alive=self.alive())
        out.role_type = pb.ROLE_TYPE_PDFUSION
        entry = [r for w, r in zip(workers, replies, strict=True) if r is not None and w.role in _ENTRY_ROLES]
        answered = [r for r in replies if r is not None]
        for r in entry:
            out.waiting_query_len += r.waiting_query_len
            out.running_query_len += r.running_query_len
            out.available_concurrency += r.available_concurrency
            out.iterate_count += r.iterate_count
            out.available_kv_cache += r.available_kv_cache
            out.total_kv_cache += r.total_kv_cache
            out.max_batch_tokens_size += r.max_batch_tokens_size
            out.running_task_info.extend(r.running_task_info)
        out.waiting_query_len += self.dispatcher.held_calls()
        if entry:
            out.step_latency_ms = sum(r.step_latency_ms for r in entry) / len(entry)
        seq_lens = [r.max_seq_len for r in answered if r.max_seq_len > 0]
        out.max_seq_len = min(seq_lens) if seq_lens else 0
        precisions = {r.precision for r in answered}
        out.precision = precisions.pop() if len(precisions) == 1 else ""
        self._status_version = max(self._status_version + 1, int(time.time() * 1e6))
        out.status_version = self._status_version
        return out

    async def get_cache_status(self, request: pb.CacheVersionPB,
                               context: grpc.aio.ServicerContext) -> pb.CacheStatusPB:
        """The entry workers' KV caches as one (aggregates in this module's docstring)."""
        workers = [w for w in self._in_rotation() if w.role in _ENTRY_ROLES]
        timeout_s = self._timeout_s(context)
        replies: list[tuple[WorkerState, pb.CacheStatusPB | None]] = await self._shared(
            ("cache", request.need_cache_keys), lambda: self._cache_round(workers, request.need_cache_keys, timeout_s))
        out = pb.CacheStatusPB()
        block_sizes = [r.block_size for _, r in replies if r is not None and r.block_size > 0]
        block_size = max(set(block_sizes), key=block_sizes.count) if block_sizes else 0
        out.block_size = block_size
        versions = []
        keys: set[int] = set()
        for w, r in replies:
            if r is None:
                continue
            out.available_kv_cache += r.available_kv_cache
            out.total_kv_cache += r.total_kv_cache
            versions.append((w.key, r.version))
            if request.need_cache_keys and r.block_size == block_size:
                keys.update(self._worker_keys.get(w.key, (0, frozenset()))[1])
        signature = tuple(sorted(versions))
        if signature != self._cache_versions:
            self._cache_versions = signature
            self._cache_version = max(self._cache_version + 1, int(time.time() * 1e6))
        out.version = self._cache_version
        if request.need_cache_keys and request.latest_cache_version != out.version:
            for k in keys:
                out.cache_keys[k] = True
        return out

    async def _cache_round(self, workers: list[WorkerState], need_keys: bool,
                           timeout_s: float) -> list[tuple[WorkerState, pb.CacheStatusPB | None]]:
        """Ask each worker for its cache status; with keys, only those whose version moved send them again."""

        async def one(w: WorkerState) -> pb.CacheStatusPB | None:
            known = self._worker_keys.get(w.key)
            req = pb.CacheVersionPB(need_cache_keys=need_keys,
                                    latest_cache_version=known[0] if known is not None and need_keys else -1)
            try:
                reply = pb.CacheStatusPB.FromString(
                    await self._call_worker(w.addr, wire.GET_CACHE_STATUS, req.SerializeToString(), timeout_s))
            except (grpc.aio.AioRpcError, DecodeError) as exc:
                detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
                log.info("GetCacheStatus of worker %s failed: %s", w.key, detail)
                return None
            if need_keys and (known is None or reply.version != known[0] or reply.cache_keys):
                self._worker_keys[w.key] = (reply.version, frozenset(reply.cache_keys))
            return reply

        return list(zip(workers, await asyncio.gather(*(one(w) for w in workers)), strict=True))


def _reply(status: int) -> bytes:
    return pb.CancelResponsePB(status=status).SerializeToString()  # type: ignore[arg-type]


def _status_of(reply: bytes) -> int:
    try:
        return int(pb.CancelResponsePB.FromString(reply).status)
    except DecodeError:
        return int(pb.CANCEL_STATUS_UNSPECIFIED)


# ---------------------------------------------------------------- reflection


def reflection_pool(extra_files: Iterable[Any] = ()) -> descriptor_pool.DescriptorPool:
    """A descriptor pool for server reflection holding exactly what the gateway serves: RpcService with
    SERVED_METHODS only (RTP-LLM's other services and methods left out), FlexlbService, and `extra_files`
    (file descriptors of the other served services: health, reflection) with their dependencies."""
    from flexlb.pb import flexlb_schedule_service_pb2

    out = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(fd: Any, proto: descriptor_pb2.FileDescriptorProto | None = None) -> None:
        if fd.name in added:
            return
        for dep in fd.dependencies:
            add(dep)
        if proto is None:
            proto = descriptor_pb2.FileDescriptorProto()
            fd.CopyToProto(proto)
        out.Add(proto)
        added.add(fd.name)

    rpc = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(rpc)
    services = [s for s in rpc.service if s.name == wire.RPC_SERVICE]
    del rpc.service[:]
    for service in services:
        kept = [m for m in service.method if m.name in SERVED_METHODS]
        del service.method[:]
        service.method.extend(kept)
    rpc.service.extend(services)
    add(pb.DESCRIPTOR, rpc)
    add(flexlb_schedule_service_pb2.DESCRIPTOR)
    for fd in extra_files:
        add(fd)
    return out
