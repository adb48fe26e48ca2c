"""FlexlbService: Schedule, Cancel and GetRequestState, in the master's three modes.

A replica's Schedule (forward_hop >= 1, see consistency/forwarding.py) is always a reservation: the
replica relays the call itself, so the master only keeps the load reserved until the replica's Cancel
says the relayed call ended (or a TTL passes). A client's Schedule (forward_hop 0) is answered by
`defaultScheduleMode`:

- DIRECT: the decision now; the caller dials the worker(s) itself, the load is not held here.
- BATCH (needs generate_input, else DIRECT; in a fused deployment only with batchFusedWorkers):
  the request waits in its prefill worker's batcher, goes there in one EnqueueBatch with its batch,
  and Schedule answers enqueued_by_master once the worker acknowledged it (batch_dispatch.py).
- QUEUE: a priority queue in front of the DIRECT decision (queue_mode.py).

BATCH and QUEUE keep each request's load until its worker reports it finished (settle.py). Every client
request gets a lifecycle record (states.py) that GetRequestState reports for a while after it ended; a
request id already queued, batching or in flight is refused (8406).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc

from flexlb.balancer.events import HoldEvent
from flexlb.balancer.prefix import prompt_block_keys
from flexlb.balancer.request import Deploy, NoWorkerAvailable, PromptTooLong, RouteRequest
from flexlb.balancer.router import Lease, Router
from flexlb.balancer.workers import WorkerAddr
from flexlb.metrics import Metrics
from flexlb.pb import flexlb_schedule_service_pb2 as fpb
from flexlb.pb import model_rpc_service_pb2 as pb
from flexlb.schedule_modes import ScheduleMode, ScheduleSettings
from flexlb.scheduler import replies as r
from flexlb.scheduler import states as st
from flexlb.scheduler.batch_dispatch import BatchMode
from flexlb.scheduler.core import Core, Job
from flexlb.scheduler.priority import header_priority, request_slo_ms, resolve_priority
from flexlb.scheduler.queue_mode import QueueMode

_NO_WORKER_CODE = r.NO_WORKER_CODE
INVALID_REQUEST = r.INVALID_REQUEST
_DEFAULT_TIMEOUT_MS = 3_600_000  # FlexLB's Request.generate_timeout default


@dataclass
class _Reservation:
    lease: Lease
    request_id: int
    expires_s: float


class Scheduler:
    """Serves /FlexlbService/Schedule, Cancel and GetRequestState."""

    def __init__(self, router: Router, metrics: Metrics, release: Callable[[Lease], None],
                 master_host: Callable[[], str] = lambda: "",
                 block_size_tokens: Callable[[], int] = lambda: 64, reservation_ttl_s: float = 600.0,
                 settings: ScheduleSettings | None = None,
                 deliver: Callable[[Sequence[HoldEvent]], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`release` gives a reservation's load back and delivers what that frees (Dispatcher.release);
        `deliver` hands on what a freed prefill slot releases (HoldDriver.after)."""
        self.router = router
        self._release = release
        self.metrics = metrics
        self._master_host = master_host
        self._block_size_tokens = block_size_tokens
        self.reservation_ttl_s = reservation_ttl_s
        self._reservations: OrderedDict[int, _Reservation] = OrderedDict()  # batch_id (lease seq) → load held
        self.settings = settings or ScheduleSettings(mode=ScheduleMode.DIRECT)
        self.mode = self.settings.mode
        # the traffic policy's group for (request id, api key, seq_len); the composition root sets it
        self.pinned_group: Callable[[int, str, int], str] = lambda _rid, _key, _len: ""
        self.core = Core(router, metrics, self.settings, release, deliver or (lambda _events: None),
                         master_host, clock)
        self.core.queue_length = self.queue_length
        self.batch = BatchMode(self.core, self.settings.batch, master_id=id(self) & 0xFFF)
        self.queue = QueueMode(self.core, self.settings.queue)
        self.core.on_room = self.queue.wake
        self._clock = clock
        metrics.schedule_queue_length.set_function(self.queue_length)

    @property
    def master_host(self) -> str:
        """`ip:port` of the master's admin HTTP port ('' without high availability or while unknown)."""
        return self._master_host()

    @property
    def states(self) -> st.RequestStates:
        """Lifecycle records of client requests."""
        return self.core.states

    def locate(self, request_id: int) -> WorkerAddr | None:
        """The worker a request this master placed is on (BATCH: the prefill it was enqueued to), for Cancel."""
        placed = self.core.tracker.find(request_id)
        if placed is None:
            return None
        w = self.router.cluster.get(placed.worker)
        return w.addr if w is not None else None

    def queue_length(self) -> int:
        """Requests this scheduler holds: queued, batching, awaiting or placed on a worker, and reservations."""
        return self.queue.held() + self.batch.held() + len(self.core.tracker) + len(self._reservations)

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
        return self.core.fail(code, message)

    def route_request(self, req: fpb.FlexlbScheduleRequestPB) -> RouteRequest | fpb.FlexlbScheduleResponsePB:
        """What to route, from client block keys or the serialized GenerateInputPB; or the error reply."""
        return self._parse(req)[0]

    def _parse(self, req: fpb.FlexlbScheduleRequestPB
               ) -> tuple[RouteRequest | fpb.FlexlbScheduleResponsePB, pb.GenerateInputPB | None]:
        seq_len = req.seq_len
        max_new = req.max_new_tokens
        block = self._block_size_tokens()
        keys: tuple[int, ...] = ()
        inp: pb.GenerateInputPB | None = None
        if req.generate_input:
            try:
                inp = pb.GenerateInputPB.FromString(req.generate_input)
                n_tokens, key_list = prompt_block_keys(req.generate_input, block)
            except Exception:
                return self._fail(INVALID_REQUEST, "generate_input is not a serialized GenerateInputPB"), None
            seq_len = seq_len or n_tokens
            max_new = max_new or inp.generate_config.max_new_tokens
            keys = tuple(key_list)
        if req.block_cache_keys and req.cache_key_block_size == block:
            # the frontend's keys (RTP-LLM hash) are only comparable when cut with our block size
            keys = tuple(req.block_cache_keys)
        if seq_len <= 0:
            return self._fail(INVALID_REQUEST, "seq_len (or generate_input.token_ids) is required"), None
        pinned = self.pinned_group(req.request_id, req.api_key, seq_len)
        return RouteRequest(req.request_id, seq_len, max_new, block_keys=keys, block_size_tokens=block,
                            pinned_group=pinned), inp

    def effective_mode(self, inp: pb.GenerateInputPB | None) -> ScheduleMode:
        """The mode a client request is served in: BATCH needs generate_input (and, fused, batchFusedWorkers)."""
        if self.mode is ScheduleMode.BATCH and (
                inp is None or (self.router.deploy is Deploy.PD_FUSION and not self.settings.batch_fused_workers)):
            return ScheduleMode.DIRECT
        return self.mode

    def _decide(self, route: RouteRequest) -> Lease | fpb.FlexlbScheduleResponsePB:
        """Route now and refuse a worker known out of rotation; the lease or the error reply."""
        try:
            lease = self.router.route(route, kind="reservation")
        except PromptTooLong as exc:
            return self._fail(INVALID_REQUEST, str(exc))  # no worker takes it: a retry cannot help
        except NoWorkerAvailable as exc:
            return self._fail(_NO_WORKER_CODE.get(exc.role, 8402), str(exc))
        d = lease.decision
        dead = [w for w in r.decision_workers(d) if not self.router.in_rotation(w)]
        if dead:
            # routing fails open for relayed calls (a doubtful worker beats refusing the call); a decision
            # handed to a caller must not: it would dial a worker the gateway knows is out, so it is told
            # to retry elsewhere (FlexLB's retryable 8402/8403/8404), as the Java master answers
            self._release(lease)
            role = dead[0].role.name
            return self._fail(_NO_WORKER_CODE.get(role, 8402), f"no {role} worker in rotation")
        self.metrics.decisions.labels(d.strategy, d.reason).inc()
        return lease

    async def schedule(
        self, req: fpb.FlexlbScheduleRequestPB, context: grpc.aio.ServicerContext
    ) -> fpb.FlexlbScheduleResponsePB:
        """Answer a Schedule call in the configured mode (a replica's is a reservation in every mode)."""
        route, inp = self._parse(req)
        if isinstance(route, fpb.FlexlbScheduleResponsePB):
            return route
        if req.forward_hop >= 1:
            return self._reserve(req, route)
        mode = self.effective_mode(inp)
        now = self._clock()
        rid = req.request_id
        if rid and self.core.states.live(rid):
            return self._fail(INVALID_REQUEST, f"INVALID_REQUEST: request_id {rid} is already in flight")
        priority = resolve_priority(req.priority, header_priority(context.invocation_metadata()),
                                    self.settings.priority.default_priority)
        self.metrics.schedule_requests.labels(mode.value).inc()
        if mode is ScheduleMode.DIRECT:
            return self._direct(req, route, now)
        timeout_ms = req.generate_timeout if req.generate_timeout > 0 else _DEFAULT_TIMEOUT_MS
        job = Job(rid, route, inp, priority, request_slo_ms(route.prompt_tokens, priority, self.settings.priority),
                  timeout_ms / 1000.0, self.core.states.open(rid, st.QUEUED, now),
                  asyncio.get_running_loop().create_future(), now)
        if mode is ScheduleMode.QUEUE:
            return await self.queue.submit(job)
        if not rid:
            self.core.end(job, st.FAILED)
            return self._fail(INVALID_REQUEST, "INVALID_REQUEST: BATCH mode needs a request_id (FetchResponse "
                              "attaches by it)")
        assert inp is not None
        if inp.request_id and inp.request_id != rid:
            self.core.end(job, st.FAILED)
            return self._fail(INVALID_REQUEST, f"INVALID_REQUEST: generate_input.request_id {inp.request_id} "
                              f"differs from request_id {rid}")
        if self.batch.held() >= self.settings.batch.max_inflight:
            self.core.end(job, st.FAILED)
            return self.core.fail(r.QUEUE_FULL, r.queue_full_message(
                f"{self.batch.held()} requests in flight (flexlbBatchMaxInflight)"), r.RESOURCE_EXHAUSTED,
                job.record)
        decided = self._decide(route)
        if isinstance(decided, fpb.FlexlbScheduleResponsePB):
            self.core.end(job, st.FAILED)
            decided.lifecycle.CopyFrom(job.record.lifecycle())
            return decided
        job.lease = decided
        return await self.batch.submit(job)

    def _direct(self, req: fpb.FlexlbScheduleRequestPB, route: RouteRequest, now: float
                ) -> fpb.FlexlbScheduleResponsePB:
        decided = self._decide(route)
        if isinstance(decided, fpb.FlexlbScheduleResponsePB):
            return decided
        lease = decided
        self._release(lease)  # decision only: the caller talks to the worker itself
        rec = self.core.states.open(req.request_id, st.COMPLETED, now, lease.seq)
        return fpb.FlexlbScheduleResponsePB(
            success=True, code=200, real_master_host=self.master_host, lifecycle=rec.lifecycle(),
            server_status=[r.server_status(w) for w in r.decision_workers(lease.decision)],
            queue_length=self.queue_length())

    def _reserve(self, req: fpb.FlexlbScheduleRequestPB, route: RouteRequest) -> fpb.FlexlbScheduleResponsePB:
        """A replica's request: keep the load reserved until its Cancel (or the TTL)."""
        decided = self._decide(route)
        if isinstance(decided, fpb.FlexlbScheduleResponsePB):
            return decided
        lease = decided
        self._expire()
        expires = time.monotonic() + self.reservation_ttl_s
        self._reservations[lease.seq] = _Reservation(lease, req.request_id, expires)
        lifecycle = fpb.RequestLifecyclePB(request_id=req.request_id, batch_id=lease.seq,
                                           state=fpb.REQUEST_STATE_DISPATCHING)
        return fpb.FlexlbScheduleResponsePB(
            success=True, code=200, real_master_host=self.master_host, lifecycle=lifecycle,
            server_status=[r.server_status(w) for w in r.decision_workers(lease.decision)],
            queue_length=self.queue_length())

    def _expire(self) -> None:
        now = time.monotonic()
        while self._reservations:
            seq, res = next(iter(self._reservations.items()))
            if res.expires_s > now:
                break
            del self._reservations[seq]
            self._release(res.lease)

    def _find(self, request_id: int, batch_id: int) -> tuple[int, _Reservation] | None:
        if batch_id and batch_id in self._reservations:
            res = self._reservations[batch_id]
            return (batch_id, res) if res.request_id == request_id or not request_id else None
        for seq, res in self._reservations.items():
            if res.request_id == request_id:
                return seq, res
        return None

    async def cancel(
        self, req: fpb.FlexlbCancelRequestPB, context: grpc.aio.ServicerContext
    ) -> fpb.FlexlbCancelResponsePB:
        """A replica's relayed call ended (its reservation is given back), or a client gives up a request."""
        self._expire()
        found = self._find(req.request_id, req.batch_id)
        if found is not None:
            seq, res = found
            del self._reservations[seq]
            self._release(res.lease)
            return fpb.FlexlbCancelResponsePB(found=True, lifecycle=fpb.RequestLifecyclePB(
                request_id=res.request_id, batch_id=seq, state=fpb.REQUEST_STATE_CANCELLED))
        rec = self.queue.cancel(req.request_id) or self.batch.cancel(req.request_id) or self._cancel_placed(
            req.request_id)
        if rec is None:
            rec = self.core.states.get(req.request_id, self._clock()) if req.request_id else None
            if rec is None:
                return fpb.FlexlbCancelResponsePB(found=False)
        return fpb.FlexlbCancelResponsePB(found=True, lifecycle=rec.lifecycle())

    def _cancel_placed(self, request_id: int) -> st.Record | None:
        """An acknowledged BATCH request: cancel it on its worker (the load goes back when that answers)."""
        if not request_id:
            return None
        for worker in self.core.tracker.workers():
            p = self.core.tracker.get(worker, request_id)
            if p is None or not isinstance(p.payload, Job):
                continue
            job = p.payload
            if job.record.state in st.TERMINAL:
                return job.record
            self.core.states.move(job.record, st.CANCEL_REQUESTED, self._clock())
            self.core.tracker.remove(worker, request_id)
            self.batch.jobs[request_id] = job
            self.batch._spawn(self.batch._reconcile(worker, job), f"cancel {request_id}")
            return job.record
        return None

    async def get_request_state(
        self, req: fpb.GetRequestStateRequestPB, context: grpc.aio.ServicerContext
    ) -> fpb.GetRequestStateResponsePB:
        """A replica's reservation still held here, or a client request's lifecycle (kept a while after it ends)."""
        self._expire()
        found = self._find(req.request_id, req.batch_id)
        if found is not None:
            seq, res = found
            return fpb.GetRequestStateResponsePB(found=True, lifecycle=fpb.RequestLifecyclePB(
                request_id=res.request_id, batch_id=seq, state=fpb.REQUEST_STATE_DISPATCHING))
        rec = self.core.states.get(req.request_id, self._clock()) if req.request_id else None
        if rec is None or (req.batch_id and rec.batch_id and rec.batch_id != req.batch_id):
            return fpb.GetRequestStateResponsePB(found=False)
        return fpb.GetRequestStateResponsePB(found=True, lifecycle=rec.lifecycle())

    def reserved(self) -> int:
        """Decisions held for replicas right now."""
        return len(self._reservations)

    async def close(self) -> None:
        """Stop the modes' tasks, polls and channels (waiting callers are answered 500)."""
        await self.queue.close()
        await self.batch.close()
        await self.core.close()
