"""What both relay engines do around the bytes: parse once, route, write role_addrs, account, reject.

The call lifecycle (flexlb/call/lifecycle.py) drives it for both engines (flexlb/relay/grpcio and
flexlb/relay/h2), so a call is routed, held, rejected, blamed and counted the same way whichever engine
carries it. It owns nothing the balancer owns: load is the Cluster's ledger, held calls are the prefill
queue's; what routing does to held calls comes back as events, which its HoldDriver delivers from the
event loop (never inside another call's I/O callback).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from google.protobuf.message import DecodeError

from flexlb import wire
from flexlb.balancer.batcher import BatchConfig, Batcher, dispatch_order
from flexlb.balancer.events import Evicted, HoldEvent, Released
from flexlb.balancer.failures import FailureKind
from flexlb.balancer.health import Ejection
from flexlb.balancer.hold_driver import Cancellable, HoldDriver
from flexlb.balancer.prefix import prompt_block_keys
from flexlb.balancer.request import NoWorkerAvailable, PromptTooLong, RouteRequest
from flexlb.balancer.router import Lease, Router
from flexlb.balancer.traffic_policy import TrafficPolicy
from flexlb.balancer.workers import Role, WorkerState
from flexlb.call.requests import RequestTable
from flexlb.metrics import Metrics
from flexlb.pb import model_rpc_service_pb2 as pb

if TYPE_CHECKING:  # the forwarder is plugged in by the composition root
    from flexlb.call.record import CallRecord
    from flexlb.consistency.forwarding import MasterChoice, MasterForwarder

log = logging.getLogger("flexlb.call")

GENERATE_STREAM = "GenerateStreamCall"
BATCH_GENERATE = "BatchGenerateCall"
# FlexLB's per-role "no available worker" codes (flexlb-original.md §1.2)
NO_WORKER_CODE = {"PREFILL": wire.NO_PREFILL_WORKER, "DECODE": wire.NO_DECODE_WORKER,
                  "PDFUSION": wire.NO_PDFUSION_WORKER, "VIT": wire.NO_VIT_WORKER}
# the roles whose role_addrs entries the gateway writes (a fused target is called, not named)
_ROLE_ENUM = {Role.PREFILL: pb.RoleAddrPB.PREFILL, Role.DECODE: pb.RoleAddrPB.DECODE, Role.VIT: pb.RoleAddrPB.VIT}
_ROLE_NAMES = frozenset(pb.RoleAddrPB.RoleType.keys())


class Rejection(Exception):
    """The gateway answers the call itself with this status (nothing reached a worker), and with the
    ErrorDetailsPB trailer an engine sends (`error_code`: the engine's or FlexLB's ErrorCode number)."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str, error_code: int) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.error_code = error_code

    def trailer(self) -> tuple[tuple[str, bytes], ...]:
        """The ErrorDetailsPB trailer RTP-LLM clients read."""
        return wire.error_trailer(self.error_code, self.message)


def bad_request(code: grpc.StatusCode, message: str, reason: str = "bad_request") -> Rejection:
    """A request no worker would take (the engine's INVALID_PARAMS)."""
    return Rejection(code, message, reason, wire.INVALID_PARAMS)


DRAINING = Rejection(grpc.StatusCode.UNAVAILABLE, "gateway is shutting down; retry on another replica", "draining",
                     wire.NO_AVAILABLE_WORKER)


@dataclass(eq=False)
class _HeldWaiter:
    """What the prefill queue holds a call with (its payload): how to hand the call on once released,
    whether its caller is still there, and the plan (set once routed)."""

    done: Callable[[Planned | Rejection], None]
    alive: Callable[[], bool]
    since_s: float
    planned: Planned | None = None


@dataclass
class _Prepared:
    """A parsed, keyed GenerateStreamCall waiting to be routed."""

    inp: pb.GenerateInputPB
    body: bytes
    req: RouteRequest
    started_s: float


_Waiting = tuple[_Prepared, Callable[["Planned | Rejection"], None], Callable[[], bool]]


def _loop_call_later(delay_s: float, fn: Callable[[], None]) -> Cancellable:
    return asyncio.get_running_loop().call_later(delay_s, fn)


def _loop_defer(fn: Callable[[], None]) -> object:
    return asyncio.get_running_loop().call_soon(fn)


@dataclass
class Planned:
    """A routed call: the load it holds and the request bytes to send to `lease.decision.target`."""

    lease: Lease
    body: bytes
    method: str
    started_s: float
    # what a failover needs: the routing request (its exclude set grows) and the attempt number
    req: RouteRequest | None = None
    prepared: _Prepared | None = None
    attempt: int = 1
    master_choice: MasterChoice | None = None  # the decision came from the master: release it there too


def _role_addr(w: WorkerState) -> pb.RoleAddrPB:
    a = w.addr
    return wire.role_addr(_ROLE_ENUM[a.role], a.ip, a.grpc_port, a.http_port)


def _entry_role(a: pb.RoleAddrPB) -> int:
    """The role of a role_addrs entry as the engine reads it: the enum, else `role_str` (with or without its
    `RoleType.` prefix); neither set is PDFUSION (enum value 0 is not on the wire)."""
    if a.role:
        return int(a.role)
    name = a.role_str.strip().upper()
    name = name[len("ROLETYPE."):] if name.startswith("ROLETYPE.") else name
    return pb.RoleAddrPB.RoleType.Value(name) if name in _ROLE_NAMES else pb.RoleAddrPB.PDFUSION


def _addressed(prepared: _Prepared, lease: Lease) -> bytes:
    """The request bytes for the lease's workers (rtp-llm-wire.md §5.5): role_addrs gets the gateway's choices,
    PREFILL first, then DECODE (PD), then the VIT worker (when VIT workers are configured); they replace the
    client's entries of those roles, and the client's entries of other roles are kept after them (a VIT the
    client chose, with no VIT workers configured here). A fused call without a VIT goes unchanged. Repeatable:
    a failover's new choice replaces the last one's entries."""
    d = lease.decision
    if d.decode is None and d.vit is None:
        return prepared.body
    ours = [w for w in d.workers if w.role in _ROLE_ENUM]
    roles = {_ROLE_ENUM[w.role] for w in ours}
    addrs = prepared.inp.generate_config.role_addrs
    kept = []
    for a in addrs:
        if _entry_role(a) not in roles:
            copy = pb.RoleAddrPB()
            copy.CopyFrom(a)
            kept.append(copy)
    del addrs[:]
    addrs.extend([_role_addr(w) for w in ours])
    addrs.extend(kept)
    return prepared.inp.SerializeToString()


class Dispatcher:
    """Parses, routes and accounts calls; raises Rejection for anything the gateway answers itself."""

    def __init__(self, router: Router, metrics: Metrics, is_draining: Callable[[], bool],
                 block_size_tokens: int = 64, batch: BatchConfig | None = None, *,
                 call_later: Callable[[float, Callable[[], None]], Cancellable] = _loop_call_later,
                 defer: Callable[[Callable[[], None]], object] = _loop_defer) -> None:
        """`call_later` and `defer` are the event loop's (a test passes its own fake timers)."""
        self.router = router
        self.metrics = metrics
        self._is_draining = is_draining
        # tokens per KV block for the prefix index (staticCacheBlockSize)
        self.block_size_tokens = block_size_tokens
        self._batcher: Batcher[_Waiting] | None = Batcher(batch) if batch is not None and batch.enabled else None
        self.max_in_flight = 0  # admission cap for the whole gateway (0: none)
        self.max_new_tokens = 0  # generate_config.max_new_tokens cap (0: none)
        self.traffic_policy: TrafficPolicy | None = None  # pins a call's workers to one group
        self.forwarder: MasterForwarder | None = None  # enableGrpcPrefillMaster on a replica
        self.requests = RequestTable()  # in-flight calls by request id, for RpcService.Cancel
        self.access_log: Callable[[CallRecord], None] | None = None  # one line per call (flexlb/logs.py)
        self._tasks: set[asyncio.Task[None]] = set()
        self._window_timer: asyncio.TimerHandle | None = None
        self._call_later = call_later
        # the prefill queue's upkeep and the delivery of its events; a sweep also drops callers that left
        self.holds = HoldDriver(router, call_later, defer, self._on_hold_event, self._drop_dead_held)
        self._outlier_timer: Cancellable | None = None

    def is_draining(self) -> bool:
        """True once the gateway stopped taking new calls."""
        return self._is_draining()

    def reject(self, method: str, rejection: Rejection) -> None:
        """Count a rejection (the engine sends it)."""
        self.metrics.rejected.labels(method, rejection.code.name, rejection.reason).inc()

    def _route(self, method: str, req: RouteRequest, pair: bool, master_choice: MasterChoice | None = None,
               hold: bool = False, payload: object = None) -> Lease:
        """Admission checks, then the router's choice (or the master's, reserved here too)."""
        if self._is_draining():
            raise DRAINING
        if self.max_in_flight and self.router.cluster.ledger.calls >= self.max_in_flight:
            raise Rejection(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"gateway at its in-flight cap ({self.max_in_flight} calls); retry later", "overloaded",
                            wire.QUEUE_FULL)
        try:
            if master_choice is not None:
                lease = self.router.route_to(req, master_choice.target, master_choice.decode)
            else:
                lease = self.router.route(req, pair=pair, hold=hold, payload=payload)
        except NoWorkerAvailable as exc:
            if isinstance(exc, PromptTooLong):
                # what the engine itself answers for it (LONG_PROMPT_ERROR, OUT_OF_RANGE): no retry serves it
                raise Rejection(grpc.StatusCode.OUT_OF_RANGE, str(exc), "prompt_too_long",
                                wire.LONG_PROMPT_ERROR) from None
            if exc.saturated:
                raise Rejection(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), "worker_cap",
                                NO_WORKER_CODE.get(exc.role, wire.NO_PREFILL_WORKER)) from None
            raise Rejection(
                grpc.StatusCode.UNAVAILABLE, str(exc), "no_worker", NO_WORKER_CODE.get(exc.role, wire.NO_PREFILL_WORKER)
            ) from None
        d = lease.decision
        self.metrics.decisions.labels(d.strategy, d.reason).inc()
        return lease

    def pinned_group(self, request_id: int, api_key: str, seq_len_tokens: int) -> str:
        """The group the traffic policy pins this request to ('' for none)."""
        if self.traffic_policy is None:
            return ""
        return self.traffic_policy.choose(request_id, api_key, seq_len_tokens) or ""

    def _prepare_generate(self, body: bytes, client: str = "", api_key: str = "") -> _Prepared:
        """Parse and key a GenerateStreamCall (rejections happen here, before any batching wait)."""
        started_s = time.monotonic()
        try:
            inp = pb.GenerateInputPB.FromString(body)
        except DecodeError as exc:
            raise bad_request(grpc.StatusCode.INVALID_ARGUMENT, f"request is not a valid GenerateInputPB: {exc}") \
                from None
        if not inp.token_ids:
            raise bad_request(grpc.StatusCode.INVALID_ARGUMENT,
                              "GenerateInputPB.token_ids is empty; nothing to generate from", "no_tokens")
        self._check_max_new_tokens(inp.generate_config.max_new_tokens)
        keys: tuple[int, ...] = ()
        if self.router.index is not None:
            # from the wire bytes: reading inp.token_ids would make a Python int per token (~1 ms at 32k)
            try:
                keys = tuple(prompt_block_keys(body, self.block_size_tokens)[1])
            except ValueError:
                keys = ()  # wire forms protobuf tolerates but the fast reader does not: route without affinity
        req = RouteRequest(inp.request_id, len(inp.token_ids), inp.generate_config.max_new_tokens,
                           block_keys=keys, block_size_tokens=self.block_size_tokens, client=client,
                           pinned_group=self.pinned_group(inp.request_id, api_key, len(inp.token_ids)))
        return _Prepared(inp, body, req, started_s)

    def _check_max_new_tokens(self, max_new_tokens: int) -> None:
        if self.max_new_tokens and max_new_tokens > self.max_new_tokens:
            raise bad_request(grpc.StatusCode.INVALID_ARGUMENT,
                              f"generate_config.max_new_tokens {max_new_tokens} is above this gateway's cap "
                              f"({self.max_new_tokens})", "max_new_tokens")

    def _route_prepared(self, prepared: _Prepared, attempt: int = 1,
                        master_choice: MasterChoice | None = None, hold: _HeldWaiter | None = None) -> Planned:
        lease = self._route(GENERATE_STREAM, prepared.req, pair=True, master_choice=master_choice,
                            hold=hold is not None, payload=hold)
        planned = Planned(lease, b"" if lease.held else _addressed(prepared, lease), GENERATE_STREAM,
                          prepared.started_s, prepared.req, prepared, attempt, master_choice)
        if hold is not None:
            hold.planned = planned
        return planned

    def plan_generate(self, body: bytes) -> Planned:
        """Route a GenerateStreamCall now; in PD mode the request gets role_addrs = [PREFILL, DECODE]."""
        return self._route_prepared(self._prepare_generate(body))

    def submit_generate(self, body: bytes, done: Callable[[Planned | Rejection], None],
                        alive: Callable[[], bool], client: str = "",
                        parsed: Callable[[int], None] | None = None, api_key: str = "") -> None:
        """Route a GenerateStreamCall, through the batching window when one is configured.

        `done` gets the plan (or the rejection) exactly once, unless the call died while it waited
        in the window (`alive()` false): then nothing is routed and nothing is reserved. `parsed` gets the
        request id as soon as the request is parsed (before any wait).
        """
        try:
            prepared = self._prepare_generate(body, client, api_key)
        except Rejection as rejection:
            done(rejection)
            return
        if parsed is not None:
            parsed(prepared.req.request_id)
        if self.forwarder is not None and self.forwarder.should_forward():
            task = asyncio.get_running_loop().create_task(self._forwarded(prepared, done, alive))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        if self._batcher is None:
            self._deliver(prepared, done, alive)
            return
        opening = len(self._batcher) == 0
        full = self._batcher.add(prepared.req, (prepared, done, alive), time.monotonic())
        if full is not None:
            self._flush(full)
        elif opening:
            loop = asyncio.get_running_loop()
            self._window_timer = loop.call_later(self._batcher.config.wait_ms / 1000.0, self._flush_window)

    async def _forwarded(self, prepared: _Prepared, done: Callable[[Planned | Rejection], None],
                         alive: Callable[[], bool]) -> None:
        """Ask the master; on its answer reserve the same workers here, otherwise decide locally."""
        assert self.forwarder is not None
        choice = await self.forwarder.schedule(prepared.req.request_id, prepared.body)
        if not alive():
            if choice is not None:
                self.forwarder.release(choice)
            return
        if choice is not None:
            try:
                planned = self._route_prepared(prepared, master_choice=choice)
            except Rejection:
                self.forwarder.release(choice)
            else:
                done(planned)
                return
        self._deliver(prepared, done, alive)

    def _flush_window(self) -> None:
        self._window_timer = None
        if self._batcher is not None and len(self._batcher):
            self._flush(self._batcher.take())

    def _flush(self, batch: list[tuple[RouteRequest, _Waiting]]) -> None:
        if self._window_timer is not None:
            self._window_timer.cancel()
            self._window_timer = None
        self.metrics.batch_size.observe(len(batch))
        for _, (prepared, done, alive) in dispatch_order(batch, self.router.expected_uncached_tokens):
            if alive():
                self._deliver(prepared, done, alive)

    # ------------------------------------------------------------ prefill queue

    def _deliver(self, prepared: _Prepared, done: Callable[[Planned | Rejection], None],
                 alive: Callable[[], bool]) -> None:
        """Route a call; hand it to `done` now, or once a Released event names it."""
        waiter = _HeldWaiter(done, alive, time.monotonic())
        try:
            planned = self._route_prepared(prepared, hold=waiter)
        except Rejection as rejection:
            done(rejection)
            return
        if not planned.lease.held:
            done(planned)
            return
        self.metrics.prefill_queue_held.inc()
        self.holds.arm()

    def _on_hold_event(self, event: HoldEvent) -> None:
        """Deliver one event of the prefill queue (from the event loop, after the router call returned)."""
        waiter = event.payload
        assert isinstance(waiter, _HeldWaiter) and waiter.planned is not None
        self.metrics.prefill_queue_held.dec()
        planned = waiter.planned
        if isinstance(event, Evicted):
            # its worker went away while it waited: give the reservation back and route it elsewhere
            self.release(planned.lease)
            prepared = planned.prepared
            if waiter.alive() and prepared is not None:
                gone = event.lease.decision.target.key
                req = dataclasses.replace(prepared.req, exclude=prepared.req.exclude | {gone})
                self._deliver(dataclasses.replace(prepared, req=req), waiter.done, waiter.alive)
            return
        assert isinstance(event, Released)
        if not waiter.alive():
            self.finish(planned, "CANCELLED", 0)
            return
        self.metrics.prefill_queue_wait.observe(time.monotonic() - waiter.since_s)
        if event.lease.moved:
            # an idle worker took it over from a busier one's queue
            self.metrics.prefill_queue_moved.inc()
        assert planned.prepared is not None
        waiter.done(dataclasses.replace(planned, body=_addressed(planned.prepared, event.lease)))

    def _drop_dead_held(self) -> None:
        """Upkeep: held calls whose caller left are taken out (they held no slot: nothing else moves)."""
        for _, waiter in self.router.drop_held(lambda w: isinstance(w, _HeldWaiter) and not w.alive()):
            self.metrics.prefill_queue_held.dec()
            if isinstance(waiter, _HeldWaiter) and waiter.planned is not None:
                self._account(waiter.planned, "CANCELLED", 0)

    def release(self, lease: Lease) -> None:
        """Give a lease's load back (once) and deliver what that does to held calls (Schedule uses it too)."""
        self.holds.after(self.router.release(lease))

    def start_outlier_sweeps(self) -> None:
        """Run the success-rate and failure-percentage detectors once per second (they wait for their
        interval): the composition root calls this once the event loop runs."""
        if self._outlier_timer is None:
            self._outlier_timer = self._call_later(1.0, self._outlier_sweep)

    def _outlier_sweep(self) -> None:
        self._outlier_timer = self._call_later(1.0, self._outlier_sweep)
        for ejection in self.router.evaluate_outliers():
            self._ejected(ejection)

    def _ejected(self, ejection: Ejection) -> None:
        self.metrics.worker_ejected(ejection)
        log.warning("worker %s (%s) ejected for %.1f s (%s, ejection %d): %s", ejection.worker, ejection.role,
                    ejection.duration_s, ejection.reason, ejection.ejections, ejection.detail)
        self.holds.after(self.router.evict_held(ejection.worker))

    def close(self) -> None:
        """Stop the timers (the gateway is stopping)."""
        self.holds.close()
        for timer in (self._window_timer, self._outlier_timer):
            if timer is not None:
                timer.cancel()
        self._window_timer = self._outlier_timer = None

    def held_calls(self) -> int:
        """Calls waiting in the prefill queue."""
        return self.router.held_calls()

    def plan_batch(self, body: bytes) -> Planned:
        """Route a BatchGenerateCall to one worker (the engine generates each input locally)."""
        started_s = time.monotonic()
        try:
            batch = pb.BatchGenerateInputPB.FromString(body)
        except DecodeError as exc:
            raise bad_request(grpc.StatusCode.INVALID_ARGUMENT,
                              f"request is not a valid BatchGenerateInputPB: {exc}") from None
        if not batch.inputs or any(not i.token_ids for i in batch.inputs):
            raise bad_request(grpc.StatusCode.INVALID_ARGUMENT,
                              "BatchGenerateInputPB needs at least one input, each with token_ids", "no_tokens")
        for i in batch.inputs:
            self._check_max_new_tokens(i.generate_config.max_new_tokens)
        req = RouteRequest(
            batch.inputs[0].request_id,
            sum(len(i.token_ids) for i in batch.inputs),
            max(i.generate_config.max_new_tokens for i in batch.inputs),
            seq_len_tokens=max(len(i.token_ids) for i in batch.inputs),  # each input is its own sequence
        )
        lease = self._route(BATCH_GENERATE, req, pair=False)
        return Planned(lease, body, BATCH_GENERATE, started_s, req)

    def reroute(self, planned: Planned, code_name: str, kind: FailureKind) -> Planned | None:
        """The attempt failed before any response message: end it (its worker judged by `kind`) and route
        the call again without that worker; None when no other worker can take it."""
        target = planned.lease.decision.target
        self.finish(planned, code_name, 0, kind)
        if planned.req is None:
            return None
        req = dataclasses.replace(planned.req, exclude=planned.req.exclude | {target.key})
        try:
            if planned.prepared is not None:
                prepared = dataclasses.replace(planned.prepared, req=req)
                nxt = self._route_prepared(prepared, planned.attempt + 1)
            else:
                lease = self._route(planned.method, req, pair=False)
                nxt = Planned(lease, planned.body, planned.method, planned.started_s, req, None, planned.attempt + 1)
        except Rejection:
            return None
        self.metrics.failovers.labels(planned.method, code_name).inc()
        log.info("failover of %s call %d: %s from %s (%s), attempt %d on %s", planned.method,
                 req.request_id, code_name, target.key, kind.value, nxt.attempt, nxt.lease.decision.target.key)
        return nxt

    def first_message(self, planned: Planned, message: bytes | None) -> int | None:
        """The first response message arrived: record TTFT and feed the balancer what the worker said.
        Returns the prompt tokens the worker reported served from its cache (None: not reported)."""
        ttft_s = time.monotonic() - planned.started_s
        decision = planned.lease.decision
        self.router.outliers.success(decision.target)
        self.metrics.ttft.labels(decision.target.key).observe(ttft_s)
        if decision.estimate_ms is not None:
            self.metrics.ttft_estimate_error.observe(abs(decision.estimate_ms / 1000.0 - ttft_s))
        prefill_ms = uncached = cached = engine_ms = None
        if message is not None and planned.method == GENERATE_STREAM:
            try:
                aux_list = pb.GenerateOutputsPB.FromString(message).flatten_output.aux_info
            except DecodeError:
                aux_list = []
            if aux_list:
                aux = aux_list[0]
                # engine-side prefill: receipt to first token, minus the time it waited to be scheduled
                prefill_ms = max(0.0, (aux.first_token_cost_time_us - aux.wait_time_us) / 1000.0)
                engine_ms = aux.first_token_cost_time_us / 1000.0
                cached = aux.total_reuse_len
                uncached = max(aux.input_len - cached, 0)
        self.holds.after(self.router.first_token(planned.lease, ttft_s * 1000.0, prefill_ms, uncached, cached,
                                                 engine_ms))
        return cached

    def finish(self, planned: Planned, code_name: str, messages: int, kind: FailureKind | None = None,
               mid_stream: bool = False) -> None:
        """End the attempt exactly once: judge its worker by `kind` (None: not judged), then give its load back
        and count how it ended. `mid_stream`: its first message was already counted as the worker's success."""
        lease = planned.lease
        if lease.released:
            return
        # judged before the release: if that ejects the worker, the slot this frees is not refilled there
        if kind is not None:
            ejection = self.router.attempt_ended(lease, kind, mid_stream)
            if ejection is not None:
                self._ejected(ejection)
        self.release(lease)
        if planned.master_choice is not None and self.forwarder is not None:
            self.forwarder.release(planned.master_choice)
        self._account(planned, code_name, messages)

    def _account(self, planned: Planned, code_name: str, messages: int) -> None:
        d = planned.lease.decision
        self.metrics.requests.labels(planned.method, d.target.key, d.target.role.name, d.strategy, code_name).inc()
        if d.decode is not None:  # the PD call's decode leg, under its own worker and role
            self.metrics.requests.labels(planned.method, d.decode.key, d.decode.role.name, d.strategy, code_name).inc()
        if messages:
            self.metrics.relayed_messages.labels(planned.method).inc(messages)

    def call_ended(self, record: CallRecord) -> None:
        """A client call's one finish (CallLife): its per-call metrics and its access log line."""
        self.metrics.call_ended(record)
        if self.access_log is not None:
            self.access_log(record)
