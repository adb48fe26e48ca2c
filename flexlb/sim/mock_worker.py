"""A simulated RTP-LLM worker speaking the real protocol (PDFUSION, PREFILL or DECODE role).

Two engine models. `batching` (default): one scheduler task drives flexlb.sim.batching (continuous
batching of prefills and decodes in iterations) with asyncio sleeps of each iteration's time x
time_scale; each call waits for its sequence's events. `fifo`: prefills run one at a time under
`_prefill_lock`, priced by flexlb.sim.engine, decode steps slow down as the running batch grows.
PREFILL drives the DECODE named in role_addrs over RemoteGenerate (rtp-llm-wire.md §5.5) and relays
its stream. Fault switches make it fail, stall, hang or crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from flexlb import wire
from flexlb.balancer.prefix import block_keys
from flexlb.pb import model_rpc_service_pb2 as pb
from flexlb.sim.batching import (
    BatchingEngine,
    BatchingParams,
    Event,
    Finished,
    FirstToken,
    Kind,
    Sequence,
    Token,
)
from flexlb.sim.engine import (
    EngineParams,
    PrefixCache,
    int32_tensor_bytes,
    output_token,
    plan_prefill,
)
from flexlb.tls import ServerTls, grpc_server_credentials

ROLE_NAMES = {
    "PDFUSION": pb.RoleAddrPB.PDFUSION,
    "PREFILL": pb.RoleAddrPB.PREFILL,
    "DECODE": pb.RoleAddrPB.DECODE,
    "VIT": pb.RoleAddrPB.VIT,  # serves MultimodalRpcService status only (no generation)
}
ENGINES = ("batching", "fifo")
TOMBSTONE_S = 60.0  # a Cancel of an unknown request id rejects an EnqueueBatch of it this long (8429)
FETCH_ATTACH_DEFAULT_MS = 600_000  # EnqueueBatch's fetch_attach_timeout_ms 0: the prefill's default, 10 minutes
# RTP-LLM's gRPC server and client take messages up to 1 GiB
_MESSAGE_LIMITS = (("grpc.max_receive_message_length", wire.RTP_LLM_MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", wire.RTP_LLM_MAX_MESSAGE_BYTES))


@dataclass(frozen=True)
class Faults:
    """Injected misbehaviour."""

    error_rate: float = 0.0  # share of generate calls that fail before the first message
    error_code: int = wire.UNKNOWN_ERROR  # engine ErrorCode used for injected failures
    delay_ms: float = 0.0  # added before the first message (not scaled)
    hang: bool = False  # accept generate calls and never answer them
    crash_after: int = 0  # exit the process abruptly after this many generate calls (0 = never)


@dataclass(frozen=True)
class MockWorkerConfig:
    """Everything a mock worker needs."""

    role: str = "PDFUSION"
    host: str = "127.0.0.1"
    port: int = 0
    time_scale: float = 1.0
    params: EngineParams = field(default_factory=EngineParams)
    faults: Faults = field(default_factory=Faults)
    seed: int = 0
    engine: str = "batching"  # "batching" or "fifo"
    # the batching engine's costs and limits; None: `params`' costs as iterations (BatchingParams.from_engine),
    # so a prompt alone and a decode step take what they take on the FIFO engine
    batching: BatchingParams | None = None
    # longest prompt served (longer: LONG_PROMPT_ERROR, as the engine), reported as max_seq_len; 0: the
    # batching engine's max_seq_len, or 1 << 20 on the FIFO engine
    max_seq_len: int = 0
    tls: ServerTls | None = None  # serve TLS (mTLS with a client CA) instead of plaintext


@dataclass
class _Task:
    request_id: int
    input_length: int
    prefix_length: int = 0
    start_s: float = 0.0
    waiting: bool = True
    iterations: int = 0
    seq_id: int | None = None  # its sequence in the batching engine
    handler: asyncio.Task[object] | None = None  # the task serving its GenerateStreamCall (Cancel preempts it)
    preempted: bool = False


@dataclass(eq=False)
class _Parked:
    """A request taken by EnqueueBatch: generating already, its messages kept until FetchResponse attaches."""

    request_id: int
    outputs: asyncio.Queue[pb.GenerateOutputsPB | None] = field(default_factory=asyncio.Queue)  # None: the end
    error: _EngineError | None = None
    attached: bool = False
    expired: bool = False
    timer: asyncio.TimerHandle | None = None


class _EngineError(Exception):
    def __init__(self, error_code: int, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message


async def _abort_engine(context: grpc.aio.ServicerContext, err: _EngineError) -> None:
    await context.abort(
        wire.grpc_code_for_engine_error(err.error_code),
        err.message,
        trailing_metadata=wire.error_trailer(err.error_code, err.message),
    )


class MockWorker:
    """One simulated worker; `start()` binds and serves, `stop()` ends it."""

    def __init__(self, config: MockWorkerConfig) -> None:
        if config.role not in ROLE_NAMES:
            raise ValueError(f"role must be one of {', '.join(ROLE_NAMES)}, got {config.role!r}")
        if config.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {config.engine!r}")
        self.config = config
        self.role_value = ROLE_NAMES[config.role]
        self.params = config.params
        self.cache = PrefixCache(config.params.cache_capacity_blocks)
        # FIFO: a prefill runs only while holding it; batching: an iteration runs only while holding it
        # (so holding it pauses either engine)
        self._prefill_lock = asyncio.Lock()
        self.engine: BatchingEngine | None = None
        if config.engine == "batching" and config.role != "VIT":
            bp = config.batching or BatchingParams.from_engine(config.params)
            if bp.block_size_tokens != config.params.block_size_tokens:
                raise ValueError("the batching engine's block size must be params.block_size_tokens (cache keys)")
            self.engine = BatchingEngine(bp, self.cache)
        self._waiters: dict[int, asyncio.Queue[Event]] = {}
        self._wake = asyncio.Event()
        self._seq_ids = itertools.count(1)
        self._engine_task: asyncio.Task[None] | None = None
        self._status_version = 0
        self._rng = random.Random(config.seed)
        self._running: dict[int, _Task] = {}
        self._finished: list[tuple[int, pb.TaskInfoPB]] = []
        self._finished_version = 0
        self._decoding = 0
        self._iterations = 0
        self._generate_calls = 0
        self._admitting = asyncio.Event()  # cleared: generate calls are accepted and held before the engine
        self._admitting.set()
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self.port = config.port
        # observable by tests: request ids the worker saw cancelled, and every request's metadata
        self.cancelled_ids: list[int] = []
        self.calls_received = 0
        self.last_metadata: tuple[tuple[str, str | bytes], ...] = ()
        self.last_request_bytes = b""
        self.messages_sent = 0  # GenerateStreamCall messages handed to grpc (flow control shows here)
        self.request_ids_seen: list[int] = []  # GenerateStreamCall request ids in arrival order
        # what GetWorkerStatus says as `alive` (a test flips it: the gateway must take the worker out, then back)
        self.alive = True
        self.max_seq_len = config.max_seq_len or (self.engine.max_seq_len if self.engine is not None else 1 << 20)
        self.cancel_requests: list[int] = []  # request ids of the Cancel calls received
        # EnqueueBatch: contexts waiting for their FetchResponse, tombstones left by Cancel (id -> expiry)
        self._parked: dict[int, _Parked] = {}
        self._tombstones: dict[int, float] = {}
        self.enqueued_ids: list[int] = []  # request ids taken by EnqueueBatch, in order
        self.enqueue_batches = 0  # EnqueueBatch calls answered
        self._enqueued_tasks: set[asyncio.Task[object]] = set()

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> int:
        """Bind and start serving; returns the bound port."""
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0), *_MESSAGE_LIMITS])
        handlers = {
            "GenerateStreamCall": grpc.unary_stream_rpc_method_handler(
                self.generate_stream_call,
                request_deserializer=pb.GenerateInputPB.FromString,
                response_serializer=pb.GenerateOutputsPB.SerializeToString,
            ),
            "BatchGenerateCall": grpc.unary_unary_rpc_method_handler(
                self.batch_generate_call,
                request_deserializer=pb.BatchGenerateInputPB.FromString,
                response_serializer=pb.BatchGenerateOutputsPB.SerializeToString,
            ),
            "RemoteGenerate": grpc.stream_stream_rpc_method_handler(
                self.remote_generate,
                request_deserializer=pb.GenerateRequestPB.FromString,
                response_serializer=pb.GenerateOutputsPB.SerializeToString,
            ),
            "GetWorkerStatus": grpc.unary_unary_rpc_method_handler(
                self.get_worker_status,
                request_deserializer=pb.StatusVersionPB.FromString,
                response_serializer=pb.WorkerStatusPB.SerializeToString,
            ),
            "GetCacheStatus": grpc.unary_unary_rpc_method_handler(
                self.get_cache_status,
                request_deserializer=pb.CacheVersionPB.FromString,
                response_serializer=pb.CacheStatusPB.SerializeToString,
            ),
            "CheckHealth": grpc.unary_unary_rpc_method_handler(
                self.check_health,
                request_deserializer=pb.EmptyPB.FromString,
                response_serializer=pb.CheckHealthResponsePB.SerializeToString,
            ),
        }
        # the engine serves the master-enqueued path (EnqueueBatch, FetchResponse) and Cancel on PREFILL only;
        # this mock serves them on PDFUSION too, so BATCH mode can be run on a fused fleet (batchFusedWorkers)
        if self.config.role in ("PREFILL", "PDFUSION"):
            handlers["Cancel"] = grpc.unary_unary_rpc_method_handler(
                self.cancel,
                request_deserializer=pb.CancelRequestPB.FromString,
                response_serializer=pb.CancelResponsePB.SerializeToString,
            )
            handlers["EnqueueBatch"] = grpc.unary_unary_rpc_method_handler(
                self.enqueue_batch,
                request_deserializer=pb.EnqueueBatchRequestPB.FromString,
                response_serializer=pb.EnqueueBatchResponsePB.SerializeToString,
            )
            handlers["FetchResponse"] = grpc.unary_stream_rpc_method_handler(
                self.fetch_response,
                request_deserializer=pb.FetchRequestPB.FromString,
                response_serializer=pb.GenerateOutputsPB.SerializeToString,
            )
        if self.config.role == "VIT":  # a VIT process serves MultimodalRpcService, not RpcService
            handlers = {name: handlers[name] for name in ("GetWorkerStatus", "GetCacheStatus")}
        service = wire.VIT_SERVICE if self.config.role == "VIT" else wire.RPC_SERVICE
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        bind = f"{self.config.host}:{self.config.port}"
        tls = self.config.tls
        self.port = server.add_secure_port(bind, grpc_server_credentials(tls)) if tls is not None and tls.enabled \
            else server.add_insecure_port(bind)
        if self.port == 0:
            raise OSError(f"cannot bind {self.config.host}:{self.config.port}")
        await server.start()
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self._health.set(wire.RPC_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        self._server = server
        if self.engine is not None:
            self._engine_task = asyncio.get_running_loop().create_task(self._run_engine(self.engine))
        return self.port

    async def stop(self, grace_s: float | None = 0.5) -> None:
        """Stop serving and close channels to peers."""
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None
        for t in list(self._enqueued_tasks):  # enqueued requests end with the worker
            t.cancel()
        for t in list(self._enqueued_tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._engine_task is not None:
            self._engine_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._engine_task
            self._engine_task = None
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()

    async def wait(self) -> None:
        """Block until the server terminates."""
        if self._server is not None:
            await self._server.wait_for_termination()

    # ------------------------------------------------------------ helpers

    async def _sleep_ms(self, ms: float) -> None:
        scaled = ms * self.config.time_scale
        if scaled > 0:
            await asyncio.sleep(scaled / 1000.0)

    def _now_us(self, start_s: float) -> int:
        return int((time.monotonic() - start_s) * 1e6)

    def _own_addr(self) -> str:
        return f"{self.config.host}:{self.port}"

    async def _echo_metadata(self, context: grpc.aio.ServicerContext) -> None:
        """Send `x-echo-*` request headers back as initial and (suffixed `-trailer`) trailing metadata.

        Lets anyone check that a proxy in between forwards metadata both ways.
        """
        echo = tuple((k, v) for k, v in context.invocation_metadata() or () if k.startswith("x-echo-"))
        self.last_metadata = tuple(context.invocation_metadata() or ())
        if echo:
            await context.send_initial_metadata(echo)
            context.set_trailing_metadata(
                tuple((k + "-trailer" if not k.endswith("-bin") else k[:-4] + "-trailer-bin", v) for k, v in echo)
            )

    async def _admit(self, context: grpc.aio.ServicerContext) -> None:
        """Apply fault switches to a generate call (may crash, hang, delay or raise)."""
        self._generate_calls += 1
        self.calls_received += 1
        f = self.config.faults
        if f.crash_after and self._generate_calls > f.crash_after:
            os._exit(17)  # a crash, not a shutdown: no goodbye to anyone
        if f.hang:
            await asyncio.Event().wait()
        await self._admitting.wait()
        if f.delay_ms > 0:
            await asyncio.sleep(f.delay_ms / 1000.0)
        if f.error_rate > 0 and self._rng.random() < f.error_rate:
            raise _EngineError(f.error_code, f"injected failure (error_code {f.error_code})")

    def _check_length(self, req: pb.GenerateInputPB) -> None:
        """Refuse a prompt longer than max_seq_len like the engine's scheduler (LONG_PROMPT_ERROR)."""
        if len(req.token_ids) > self.max_seq_len:
            raise _EngineError(wire.LONG_PROMPT_ERROR,
                               f"input len {len(req.token_ids)} is greater than max seq len {self.max_seq_len}")

    def hold_calls(self) -> None:
        """Accept generate calls but hold them before the engine until release_calls() (in-process use)."""
        self._admitting.clear()

    def release_calls(self) -> None:
        """Let held and new generate calls through."""
        self._admitting.set()

    def _now_ms(self) -> float:
        return time.monotonic() * 1000.0

    @staticmethod
    def _rows(req: pb.GenerateInputPB) -> int:
        """Return sequences the request asks for (generate_config.num_return_sequences, at least 1)."""
        return max(1, req.generate_config.num_return_sequences)

    # ------------------------------------------------------------ FIFO engine

    async def _prefill_fifo(self, req: pb.GenerateInputPB, start_s: float, task: _Task) -> tuple[int, int, int]:
        """Queue for the engine, prefill; returns (wait_us, first_token_us, reuse_tokens)."""
        tokens = list(req.token_ids)
        async with self._prefill_lock:
            wait_us = self._now_us(start_s)
            task.waiting = False
            plan = plan_prefill(self.params, self.cache, tokens)
            task.prefix_length = plan.cached_tokens
            await self._sleep_ms(plan.duration_ms)
            self.cache.insert(plan.block_keys)
            self._iterations += 1
        return wait_us, self._now_us(start_s), plan.cached_tokens

    async def _decode_fifo(self, req: pb.GenerateInputPB, first_index: int, total: int,
                           task: _Task) -> AsyncIterator[int]:
        """Yield each decode step's token index, pacing steps by the running batch size."""
        rows = self._rows(req)
        self._decoding += rows
        try:
            for i in range(first_index, total):
                await self._sleep_ms(self.params.decode_step_ms(self._decoding))
                self._iterations += 1
                task.iterations += 1
                yield i
        finally:
            self._decoding -= rows

    # ------------------------------------------------------------ batching engine

    async def _run_engine(self, engine: BatchingEngine) -> None:
        """The scheduler loop: plan an iteration, sleep its time x time_scale, hand its events to the calls."""
        while True:
            self._wake.clear()  # before planning: a call added after this wakes the wait below
            events: list[Event] = []
            async with self._prefill_lock:  # held by a test: the engine is paused
                it = engine.plan(self._now_ms())
                if it is not None:
                    await self._sleep_ms(it.duration_ms)
                    events = engine.complete(it, self._now_ms())
            if it is None:
                await self._wake.wait()
                continue
            for ev in events:
                q = self._waiters.get(ev.seq_id)
                if q is not None:
                    q.put_nowait(ev)
            await asyncio.sleep(0)  # at time scale 0 the loop never sleeps: let the calls send

    def _engine_add(self, task: _Task, req: pb.GenerateInputPB, kind: Kind, arrival_s: float) -> asyncio.Queue[Event]:
        """Give the call's sequence to the batching engine; its events arrive on the returned queue."""
        assert self.engine is not None
        if task.seq_id is not None and task.seq_id in self._waiters:
            return self._waiters[task.seq_id]  # admitted when EnqueueBatch took it
        sid = next(self._seq_ids)
        q: asyncio.Queue[Event] = asyncio.Queue()
        self._waiters[sid] = q
        task.seq_id = sid
        keys = () if kind is Kind.DECODE_ONLY else tuple(block_keys(req.token_ids, self.params.block_size_tokens))
        self.engine.add(Sequence(sid, max(1, len(req.token_ids)), keys, self._max_new_tokens(req), kind,
                                 arrival_s * 1000.0, self._rows(req)))
        self._wake.set()
        return q

    def _engine_drop(self, task: _Task) -> None:
        """The call is over (finished, failed or cancelled): its sequence leaves the engine and frees its KV."""
        if task.seq_id is not None and self.engine is not None:
            self._waiters.pop(task.seq_id, None)
            self.engine.cancel(task.seq_id)

    async def _prefill_batching(self, req: pb.GenerateInputPB, start_s: float,
                                task: _Task) -> tuple[int, int, int]:
        """PD prefill in the batching engine (a PREFILL_ONLY sequence); (wait_us, first_token_us, reuse)."""
        q = self._engine_add(task, req, Kind.PREFILL_ONLY, start_s)
        try:
            while True:
                ev = await q.get()
                if isinstance(ev, FirstToken):
                    task.waiting = False
                    task.prefix_length = ev.cached_tokens
                    task.iterations = ev.iterations
                    return int(ev.waited_ms * 1000), self._now_us(start_s), ev.cached_tokens
        finally:
            self._engine_drop(task)

    async def _decode_batching(self, req: pb.GenerateInputPB, task: _Task) -> AsyncIterator[int]:
        """PD decode in the batching engine (a DECODE_ONLY sequence): yield token indices 1..n-1."""
        q = self._engine_add(task, req, Kind.DECODE_ONLY, time.monotonic())
        try:
            while True:
                ev = await q.get()
                if isinstance(ev, Token):
                    task.iterations += 1
                    yield ev.index
                elif isinstance(ev, Finished):
                    return
        finally:
            self._engine_drop(task)

    async def _generate_batching(
        self, req: pb.GenerateInputPB, start_s: float, task: _Task
    ) -> AsyncIterator[pb.GenerateOutputsPB]:
        """Local generation in the batching engine (a FUSED sequence): the messages as the FIFO path sends them."""
        total = self._max_new_tokens(req)
        streaming = req.generate_config.is_streaming
        q = self._engine_add(task, req, Kind.FUSED, start_s)
        wait_us = first_us = reuse = 0
        try:
            while True:
                ev = await q.get()
                if isinstance(ev, FirstToken):
                    wait_us, first_us, reuse = int(ev.waited_ms * 1000), self._now_us(start_s), ev.cached_tokens
                    task.waiting = False
                    task.prefix_length = reuse
                    task.iterations = ev.iterations
                    if streaming or total == 1:
                        yield self._outputs(req, range(0, 1), 1, total == 1, start_s, wait_us, first_us, reuse,
                                            task.iterations)
                elif isinstance(ev, Token):
                    task.iterations += 1
                    if streaming:
                        done = ev.index + 1 == total
                        yield self._outputs(req, range(ev.index, ev.index + 1), ev.index + 1, done, start_s,
                                            wait_us, first_us, reuse, task.iterations)
                elif isinstance(ev, Finished):
                    break
            if not streaming and total > 1:
                yield self._outputs(req, range(0, total), total, True, start_s, wait_us, first_us, reuse,
                                    task.iterations)
        finally:
            self._engine_drop(task)

    # ------------------------------------------------------------ shared

    async def _prefill(self, req: pb.GenerateInputPB, start_s: float, task: _Task) -> tuple[int, int, int]:
        """Prefill on whichever engine; returns (wait_us, first_token_us, reuse_tokens)."""
        if self.engine is None:
            return await self._prefill_fifo(req, start_s, task)
        return await self._prefill_batching(req, start_s, task)

    def _outputs(
        self,
        req: pb.GenerateInputPB,
        indices: range,
        output_len: int,
        finished: bool,
        start_s: float,
        wait_us: int,
        first_token_us: int,
        reuse: int,
        iterations: int,
        pd_sep: bool = False,
    ) -> pb.GenerateOutputsPB:
        """One message carrying tokens `indices` of every return sequence (rows of output_ids, as the engine)."""
        rows = self._rows(req)
        aux = pb.AuxInfoPB(
            cost_time_us=self._now_us(start_s),
            iter_count=iterations,
            input_len=len(req.token_ids),
            total_reuse_len=reuse,
            local_reuse_len=reuse,
            prefix_len=0,
            output_len=output_len,
            step_output_len=len(indices),
            first_token_cost_time_us=first_token_us,
            wait_time_us=wait_us,
            pd_sep=pd_sep,
        )
        ids = [output_token(req.token_ids, i, r) for r in range(rows) for i in indices]
        tensor = pb.TensorPB(
            data_type=pb.TensorPB.INT32,
            shape=[rows, 1, len(indices)],
            int32_data=int32_tensor_bytes(ids),
        )
        return pb.GenerateOutputsPB(
            request_id=req.request_id,
            flatten_output=pb.FlattenOutputPB(finished=[finished] * rows, aux_info=[aux] * rows, output_ids=tensor),
        )

    def _finish_task(self, task: _Task, error: int = 0) -> None:
        self._engine_drop(task)
        self._running.pop(task.request_id, None)
        self._finished_version += 1
        info = pb.TaskInfoPB(
            request_id=task.request_id,
            input_length=task.input_length,
            prefix_length=task.prefix_length,
            iterate_count=task.iterations,
            end_time_ms=int(time.time() * 1000),
            execution_time_ms=int((time.monotonic() - task.start_s) * 1000),
        )
        if error:
            info.error_info.CopyFrom(pb.ErrorDetailsPB(error_code=error))
        if task.preempted:
            info.priority_preemption_progress = pb.PRIORITY_PREEMPTION_CANCELED
        self._finished.append((self._finished_version, info))
        del self._finished[:-1000]

    @staticmethod
    def _max_new_tokens(req: pb.GenerateInputPB) -> int:
        return max(1, req.generate_config.max_new_tokens or 1)

    def _is_waiting(self, task: _Task) -> bool:
        if self.engine is not None and task.seq_id is not None:
            return self.engine.is_waiting(task.seq_id)
        return task.waiting

    # ------------------------------------------------------------ RpcService

    async def generate_stream_call(
        self, req: pb.GenerateInputPB, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateOutputsPB]:
        """Serve a generate call: local generation, or PD hand-off when this is a PREFILL."""
        if self.config.role == "DECODE":
            await context.abort(grpc.StatusCode.INTERNAL, "server not implement GenerateStreamCall")
        start_s = time.monotonic()
        task = _Task(req.request_id, len(req.token_ids), start_s=start_s, handler=asyncio.current_task())
        self._running[req.request_id] = task
        self.last_request_bytes = req.SerializeToString()
        self.request_ids_seen.append(req.request_id)
        error = 0
        try:
            await self._echo_metadata(context)
            await self._admit(context)
            self._check_length(req)
            if self.config.role == "PREFILL" and _can_use_pd(req):
                async for out in self._generate_pd(req, start_s, task):
                    self.messages_sent += 1
                    yield out
            else:
                async for out in self._generate_local(req, start_s, task):
                    self.messages_sent += 1
                    yield out
        except _EngineError as err:
            error = err.error_code
            await _abort_engine(context, err)
        except asyncio.CancelledError:
            if not task.preempted:
                self.cancelled_ids.append(req.request_id)
                error = wire.CANCELLED_ERROR
                raise
            # Cancel preempted it: the engine ends the request with PRIORITY_PREEMPTED
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            error = wire.PRIORITY_PREEMPTED
            await _abort_engine(context, _EngineError(error, "request preempted by Cancel"))
        except GeneratorExit:
            # cancelled while suspended at a yield
            self.cancelled_ids.append(req.request_id)
            error = wire.CANCELLED_ERROR
            raise
        finally:
            # also takes the sequence out of the batching engine: an inner generator suspended at a yield is
            # only closed when garbage-collected
            self._finish_task(task, error)

    async def _generate_local(
        self, req: pb.GenerateInputPB, start_s: float, task: _Task
    ) -> AsyncIterator[pb.GenerateOutputsPB]:
        if self.engine is not None:
            async for out in self._generate_batching(req, start_s, task):
                yield out
            return
        total = self._max_new_tokens(req)
        streaming = req.generate_config.is_streaming
        wait_us, first_us, reuse = await self._prefill_fifo(req, start_s, task)
        task.iterations = 1
        produced = 1
        if streaming or total == 1:
            yield self._outputs(req, range(0, 1), 1, total == 1, start_s, wait_us, first_us, reuse, 1)
        async for i in self._decode_fifo(req, 1, total, task):
            produced += 1
            if streaming:
                done = produced == total
                yield self._outputs(req, range(i, i + 1), produced, done, start_s, wait_us, first_us, reuse,
                                    task.iterations)
        if not streaming and total > 1:
            yield self._outputs(req, range(0, total), total, True, start_s, wait_us, first_us, reuse,
                                task.iterations)

    def _channel(self, target: str) -> grpc.aio.Channel:
        ch = self._channels.get(target)
        if ch is None:
            ch = grpc.aio.insecure_channel(target, options=list(_MESSAGE_LIMITS))
            self._channels[target] = ch
        return ch

    async def _generate_pd(
        self, req: pb.GenerateInputPB, start_s: float, task: _Task
    ) -> AsyncIterator[pb.GenerateOutputsPB]:
        decode = next((a for a in req.generate_config.role_addrs if a.role == pb.RoleAddrPB.DECODE and a.ip), None)
        if decode is None:
            raise _EngineError(wire.GET_HOST_FAILED, "no DECODE entry in role_addrs")
        target = f"{decode.ip}:{decode.grpc_port}"
        stub = self._channel(target).stream_stream(
            wire.REMOTE_GENERATE,
            request_serializer=pb.GenerateRequestPB.SerializeToString,
            response_deserializer=pb.GenerateOutputsPB.FromString,
        )
        forwarded = pb.GenerateInputPB()
        forwarded.CopyFrom(req)
        forwarded.ClearField("group_id")
        forwarded.ClearField("group_size")
        call = stub()
        try:
            await call.write(
                pb.GenerateRequestPB(
                    stage=pb.ALLOCATE,
                    request_id=req.request_id,
                    client_id=req.client_id,
                    start_time=req.start_time,
                    input=forwarded,
                    peer_addrs=[self._own_addr()],
                )
            )
            await call.read()  # allocation acknowledged
            wait_us, first_us, reuse = await self._prefill(req, start_s, task)
            # ask the decode to pull the KV cache (stage left at its default, as the engine does)
            await call.write(pb.GenerateRequestPB(request_id=req.request_id))
            first_token = output_token(req.token_ids, 0)
            total = self._max_new_tokens(req)
            yield self._outputs(req, range(0, 1), 1, total == 1, start_s, wait_us, first_us, reuse, 1, True)
            load = await call.read()
            if load is grpc.aio.EOF or load.error_info.error_code != pb.NONE_ERROR:
                raise _EngineError(wire.REMOTE_GENERATE_FAILED, "decode failed to load the KV cache")
            await call.write(
                pb.GenerateRequestPB(stage=pb.GENERATE, request_id=req.request_id, first_generate_token_id=first_token)
            )
            await call.done_writing()
            while True:
                out = await call.read()
                if out is grpc.aio.EOF:
                    break
                for aux in out.flatten_output.aux_info:
                    aux.first_token_cost_time_us = first_us
                    aux.wait_time_us = wait_us
                    aux.total_reuse_len = reuse
                    aux.local_reuse_len = reuse
                    aux.prefill_total_reuse_len = reuse
                    aux.cost_time_us = self._now_us(start_s)
                    aux.pd_sep = True
                yield out
            code = await call.code()
            if code != grpc.StatusCode.OK:
                raise _EngineError(
                    wire.REMOTE_GENERATE_FAILED, f"decode ended with {code.name}: {await call.details()}"
                )
        except grpc.aio.AioRpcError as exc:
            raise _EngineError(wire.REMOTE_GENERATE_FAILED, f"decode {target}: {exc.code().name}") from None
        finally:
            call.cancel()

    async def remote_generate(
        self, requests: AsyncIterator[pb.GenerateRequestPB], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateOutputsPB]:
        """DECODE side of PD: allocate, load the KV cache, then generate tokens 2..n."""
        if self.config.role != "DECODE":
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "RemoteGenerate is served by DECODE workers")
        it = requests.__aiter__()
        alloc = await it.__anext__()
        req = alloc.input
        start_s = time.monotonic()
        task = _Task(req.request_id, len(req.token_ids), start_s=start_s, waiting=False)
        self._running[req.request_id] = task
        error = 0
        try:
            yield pb.GenerateOutputsPB(request_id=req.request_id)
            await it.__anext__()  # load request
            await self._sleep_ms(self.params.kv_transfer_ms_per_token * len(req.token_ids))
            yield pb.GenerateOutputsPB(request_id=req.request_id, error_info=pb.RpcErrorPB(error_code=pb.NONE_ERROR))
            await it.__anext__()  # generate (first_generate_token_id: token 0, the same function of the prompt)
            total = self._max_new_tokens(req)
            streaming = req.generate_config.is_streaming
            produced = 1
            first = 1  # first token index not yet sent
            steps = self._decode_fifo(req, 1, total, task) if self.engine is None else self._decode_batching(req, task)
            async for i in steps:
                produced = i + 1
                done = produced == total
                if streaming or done:
                    yield self._outputs(req, range(first, produced), produced, done, start_s, 0, 0, 0,
                                        task.iterations, True)
                    first = produced
        except StopAsyncIteration:
            error = wire.REMOTE_GENERATE_FAILED
            await context.abort(grpc.StatusCode.INTERNAL, "prefill closed RemoteGenerate early")
        except (asyncio.CancelledError, GeneratorExit):
            # cancelled while awaiting (CancelledError) or while suspended at a yield (GeneratorExit)
            self.cancelled_ids.append(req.request_id)
            error = wire.CANCELLED_ERROR
            raise
        finally:
            self._finish_task(task, error)

    async def batch_generate_call(
        self, req: pb.BatchGenerateInputPB, context: grpc.aio.ServicerContext
    ) -> pb.BatchGenerateOutputsPB:
        """Generate every input locally (no PD hand-off) and return the final outputs 1:1."""
        try:
            await self._echo_metadata(context)
            await self._admit(context)
            for inp in req.inputs:
                self._check_length(inp)
        except _EngineError as err:
            await _abort_engine(context, err)

        async def one(inp: pb.GenerateInputPB) -> pb.BatchGenerateResultPB:
            start_s = time.monotonic()
            task = _Task(inp.request_id, len(inp.token_ids), start_s=start_s)
            self._running[inp.request_id] = task
            try:
                final = pb.GenerateOutputsPB()
                non_streaming = pb.GenerateInputPB()
                non_streaming.CopyFrom(inp)
                non_streaming.generate_config.is_streaming = False
                async for out in self._generate_local(non_streaming, start_s, task):
                    final = out
                return pb.BatchGenerateResultPB(final_output=final)
            finally:
                self._finish_task(task)

        results = await asyncio.gather(*(one(i) for i in req.inputs))
        return pb.BatchGenerateOutputsPB(results=results)

    def _kv_tokens(self) -> tuple[int, int]:
        """(available, total) KV-cache tokens: the batching engine's KV pool, or the FIFO engine's prefix cache."""
        if self.engine is not None:
            return self.engine.kv_available_tokens, self.engine.kv_total_tokens
        total = self.params.cache_capacity_blocks
        return (total - len(self.cache)) * self.params.block_size_tokens, total * self.params.block_size_tokens

    async def get_worker_status(self, req: pb.StatusVersionPB, context: grpc.aio.ServicerContext) -> pb.WorkerStatusPB:
        """Running tasks, tasks finished since the caller's version, load and KV-cache figures (as the engine)."""
        now_s = time.monotonic()
        running = []
        waiting_n = 0
        for t in self._running.values():
            waiting = self._is_waiting(t)
            waiting_n += waiting
            running.append(pb.TaskInfoPB(
                request_id=t.request_id,
                input_length=t.input_length,
                prefix_length=t.prefix_length,
                waiting_time_ms=int((now_s - t.start_s) * 1000) if waiting else 0,
                iterate_count=t.iterations,
                is_waiting=waiting,
                phase=pb.TASK_PHASE_PENDING if waiting else pb.TASK_PHASE_RUNNING,
            ))
        finished = [info for v, info in self._finished if v > req.latest_finished_version]
        available, total = self._kv_tokens()
        max_seq_len = self.max_seq_len
        if self.engine is not None:
            step_ms = self.engine.last_step_ms
            iterations = self.engine.iterations
            max_batch_tokens = self.engine.max_batch_tokens
        elif self.config.role == "VIT":
            step_ms, iterations, max_batch_tokens, max_seq_len = 0.0, 0, 0, 0  # no language model here
        else:
            # 0: no prefill token budget (one prompt at a time), as the gateway reads it
            step_ms, iterations, max_batch_tokens = self.params.decode_step_ms(self._decoding), self._iterations, 0
        # the worker's clock in microseconds, strictly increasing (a poller drops answers that go back)
        self._status_version = max(self._status_version + 1, int(time.time() * 1e6))
        return pb.WorkerStatusPB(
            role=f"RoleType.{self.config.role}",
            role_type=self.role_value,  # type: ignore[arg-type]  # same numbers as RoleTypePB
            running_task_info=running,
            finished_task_list=finished,
            waiting_query_len=waiting_n,
            running_query_len=len(running) - waiting_n,
            step_latency_ms=step_ms * self.config.time_scale,
            iterate_count=iterations,
            dp_size=1,
            tp_size=1,
            status_version=self._status_version,
            alive=self.alive,
            latest_finished_version=self._finished_version,
            available_kv_cache=available,
            total_kv_cache=total,
            max_seq_len=max_seq_len,
            max_batch_tokens_size=max_batch_tokens,
        )

    async def get_cache_status(self, req: pb.CacheVersionPB, context: grpc.aio.ServicerContext) -> pb.CacheStatusPB:
        """KV figures and, when asked, every cached block key (RTP-LLM hash)."""
        available, total = self._kv_tokens()
        out = pb.CacheStatusPB(
            available_kv_cache=available,
            total_kv_cache=total,
            block_size=self.params.block_size_tokens,
            version=self.cache.version,
        )
        if req.need_cache_keys and req.latest_cache_version != self.cache.version:
            for k in self.cache.keys():  # noqa: SIM118 (PrefixCache.keys is a method, not a dict)
                out.cache_keys[k] = True
        return out

    # ------------------------------------------------------------ master-enqueued path (BATCH mode)

    async def enqueue_batch(self, req: pb.EnqueueBatchRequestPB,
                            context: grpc.aio.ServicerContext) -> pb.EnqueueBatchResponsePB:
        """Take a batch: every accepted request enters the engine's waiting queue at once (so what came
        together is prefilled together) and its messages are kept until FetchResponse attaches."""
        out = pb.EnqueueBatchResponsePB(batch_id=req.batch_id)

        def refuse(rid: int, code: int, message: str) -> None:
            out.errors.append(pb.EnqueueBatchErrorPB(
                request_id=rid, error_info=pb.ErrorDetailsPB(error_code=code, error_message=message)))

        try:
            await self._admit(context)  # the fault switches (hang, delay, crash) apply to the whole call
        except _EngineError as err:
            for slot in req.dp_slots:
                for item in slot.requests:
                    refuse(item.input.request_id, err.error_code, err.message)
            return out
        attach_ms = req.fetch_attach_timeout_ms or FETCH_ATTACH_DEFAULT_MS
        now = time.monotonic()
        for slot in req.dp_slots:
            for item in slot.requests:
                inp = item.input
                rid = inp.request_id
                # error codes as the engine's: gRPC status numbers, or 8429 for a tombstoned id
                if slot.dp_rank != 0:
                    refuse(rid, grpc.StatusCode.INVALID_ARGUMENT.value[0], f"dp_rank {slot.dp_rank}: this worker is 0")
                elif not item.HasField("input") or not inp.token_ids:
                    refuse(rid, grpc.StatusCode.INVALID_ARGUMENT.value[0], "missing input")
                elif self._tombstones.get(rid, 0.0) > now:
                    refuse(rid, wire.PRIORITY_PREEMPTED, f"request {rid} was cancelled (tombstoned)")
                elif rid in self._parked or rid in self._running:
                    refuse(rid, grpc.StatusCode.ALREADY_EXISTS.value[0], f"request {rid} already exists")
                else:
                    self._park(inp, attach_ms)
                    out.successes.append(pb.EnqueueBatchSuccessPB(request_id=rid))
        self.enqueue_batches += 1
        return out

    def _park(self, inp: pb.GenerateInputPB, attach_ms: int) -> None:
        start_s = time.monotonic()
        rid = inp.request_id
        task = _Task(rid, len(inp.token_ids), start_s=start_s)
        self._running[rid] = task
        self.enqueued_ids.append(rid)
        self.request_ids_seen.append(rid)
        self.last_request_bytes = inp.SerializeToString()
        parked = _Parked(rid)
        self._parked[rid] = parked
        pd = self.config.role == "PREFILL" and _can_use_pd(inp)
        if self.engine is not None and len(inp.token_ids) <= self.max_seq_len:
            self._engine_add(task, inp, Kind.PREFILL_ONLY if pd else Kind.FUSED, start_s)
        loop = asyncio.get_running_loop()
        task.handler = loop.create_task(self._run_parked(parked, inp, task, pd), name=f"enqueued {rid}")
        self._enqueued_tasks.add(task.handler)
        task.handler.add_done_callback(self._enqueued_tasks.discard)
        parked.timer = loop.call_later(attach_ms / 1000.0, self._attach_expired, parked)

    async def _run_parked(self, parked: _Parked, inp: pb.GenerateInputPB, task: _Task, pd: bool) -> None:
        """Generate an enqueued request as GenerateStreamCall would, into its parked context."""
        error = 0
        try:
            self._check_length(inp)
            gen = self._generate_pd(inp, task.start_s, task) if pd else self._generate_local(inp, task.start_s, task)
            async for message in gen:
                parked.outputs.put_nowait(message)
        except _EngineError as err:
            error = err.error_code
            parked.error = err
        except asyncio.CancelledError:
            if task.preempted:
                error = wire.PRIORITY_PREEMPTED
                parked.error = _EngineError(error, "request preempted by Cancel")
            elif parked.expired:
                error = wire.GENERATE_TIMEOUT
                parked.error = _EngineError(error, "FetchResponse context TTL expired")
            else:
                error = wire.CANCELLED_ERROR
                parked.error = _EngineError(error, "request cancelled")
                self.cancelled_ids.append(inp.request_id)
        finally:
            parked.outputs.put_nowait(None)
            self._finish_task(task, error)

    def _attach_expired(self, parked: _Parked) -> None:
        """Nobody attached within fetch_attach_timeout_ms: the request is cancelled, a later attach is NOT_FOUND."""
        if parked.attached:
            return
        parked.expired = True
        self._parked.pop(parked.request_id, None)
        task = self._running.get(parked.request_id)
        if task is not None and task.handler is not None and not task.handler.done():
            task.handler.cancel()

    async def fetch_response(self, req: pb.FetchRequestPB,
                             context: grpc.aio.ServicerContext) -> AsyncIterator[pb.GenerateOutputsPB]:
        """Attach to an enqueued request: its messages (those produced so far first), then its end."""
        parked = self._parked.pop(req.request_id, None)
        if parked is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"request {req.request_id} not found")
            return
        parked.attached = True
        if parked.timer is not None:
            parked.timer.cancel()
        finished = False
        try:
            while (message := await parked.outputs.get()) is not None:
                self.messages_sent += 1
                yield message
            finished = True
        finally:
            if not finished:  # the caller left: the request is cancelled, as GenerateStreamCall's would be
                task = self._running.get(req.request_id)
                if task is not None and task.handler is not None and not task.handler.done():
                    task.handler.cancel()
        if parked.error is not None:
            await _abort_engine(context, parked.error)

    async def cancel(self, req: pb.CancelRequestPB, context: grpc.aio.ServicerContext) -> pb.CancelResponsePB:
        """PREFILL: preempt a live request (it ends with PRIORITY_PREEMPTED); TOMBSTONED when none is live."""
        self.cancel_requests.append(req.request_id)
        task = self._running.get(req.request_id)
        if task is None or task.handler is None or task.handler.done():
            if any(info.request_id == req.request_id for _, info in self._finished):
                return pb.CancelResponsePB(status=pb.CANCEL_STATUS_NOT_FOUND)  # it already ended here
            # never seen (an EnqueueBatch still on its way?): fence its id for a while
            now = time.monotonic()
            self._tombstones = {k: t for k, t in self._tombstones.items() if t > now}
            self._tombstones[req.request_id] = now + TOMBSTONE_S
            return pb.CancelResponsePB(status=pb.CANCEL_STATUS_TOMBSTONED)
        task.preempted = True
        task.handler.cancel()
        return pb.CancelResponsePB(status=pb.CANCEL_STATUS_ACCEPTED)

    async def check_health(self, req: pb.EmptyPB, context: grpc.aio.ServicerContext) -> pb.CheckHealthResponsePB:
        """Always OK while the server is up, like the engine."""
        return pb.CheckHealthResponsePB(health="OK")


def _can_use_pd(req: pb.GenerateInputPB) -> bool:
    """Requests the engine generates entirely on the prefill (rtp-llm-wire.md §5.5)."""
    cfg = req.generate_config
    if cfg.max_new_tokens <= 1 or cfg.num_beams > 1 or cfg.num_return_sequences > 1 or cfg.variable_num_beams:
        return False
    # the RTP-LLM frontend sets can_use_pd_separation; without it the prefill generates alone
    return cfg.can_use_pd_separation


async def serve_forever(config: MockWorkerConfig, ready_line: bool = True) -> int:
    """Run a mock worker until cancelled or signalled (used by `flexlb mock-worker`); the exit code (0)."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # before the ready line: whoever waits for it may signal at once
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    worker = MockWorker(config)
    port = await worker.start()
    if ready_line:
        print(f"mock-worker role={config.role} listening on {config.host}:{port}", flush=True)
    await stop.wait()
    await worker.stop()
    return 0
