"""BATCH mode on the event loop: per-worker batchers (batchers.py), EnqueueBatch, the answers, reconciliation.

A request routed at arrival waits in its prefill worker's batcher; one driver task polls the batchers
when something changes or a batcher's wake time comes. A dispatched batch goes to the worker's gRPC
port as one EnqueueBatch (deadline flexlbBatchEnqueueDeadlineMs), each input the client's
GenerateInputPB with role_addrs = [prefill, decode] + the other roles the client listed, and its
priority. Listed in `successes`: ACKNOWLEDGED, Schedule answers enqueued_by_master. Listed in `errors`
(or UNIMPLEMENTED: the worker cannot take batches): 8510, its load given back. Anything else (not
listed, another batch_id, a transport error once the call started) is uncertain (flexlb-original §10.2):
the caller gets 8510, the load stays reserved and the request is never sent again; Cancel(request_id)
goes to the worker with backoff min(5 s, 100 ms x 2^attempt) until it answers (TOMBSTONED: TIMED_OUT;
ACCEPTED or NOT_FOUND: CANCELLED), then the load is given back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

import grpc

from flexlb import wire
from flexlb.balancer.workers import Role, WorkerState
from flexlb.pb import flexlb_schedule_service_pb2 as fpb
from flexlb.pb import model_rpc_service_pb2 as pb
from flexlb.schedule_modes import BatchSettings
from flexlb.scheduler import replies as r
from flexlb.scheduler import states as st
from flexlb.scheduler.batchers import BatchItem, Capacity, Dispatch, Reject, WorkerBatcher
from flexlb.scheduler.core import Core, Job

log = logging.getLogger("flexlb.scheduler")

ENQUEUE_BATCH = "/RpcService/EnqueueBatch"
_EWMA = 0.2  # weight of a new sample in the dispatch-lead averages
_LEAD_CAP_MS = 50.0  # one outlier sample (a stalled loop, a slow answer) counts at most this much
_ROLE_ENUM = {Role.PDFUSION: pb.RoleAddrPB.PDFUSION, Role.PREFILL: pb.RoleAddrPB.PREFILL,
              Role.DECODE: pb.RoleAddrPB.DECODE, Role.VIT: pb.RoleAddrPB.VIT, Role.FRONTEND: pb.RoleAddrPB.FRONTEND}
_ROUTED_ROLES = frozenset({int(pb.RoleAddrPB.PDFUSION), int(pb.RoleAddrPB.PREFILL), int(pb.RoleAddrPB.DECODE)})
_EPOCH_2020_S = 1_577_836_800


class BatchIds:
    """Snowflake-like batch ids: 31 bits of seconds since 2020, 12 bits of master id, 21 bits of sequence."""

    def __init__(self, master_id: int) -> None:
        self.master_id = master_id & 0xFFF
        self._seq = 0

    def next(self) -> int:
        """A fresh id."""
        self._seq = (self._seq + 1) & 0x1FFFFF
        secs = (int(time.time()) - _EPOCH_2020_S) & 0x7FFFFFFF
        return (secs << 33) | (self.master_id << 21) | self._seq


def _role_addr(w: WorkerState) -> pb.RoleAddrPB:
    a = w.addr
    return wire.role_addr(_ROLE_ENUM[a.role], a.ip, a.grpc_port, a.http_port)


def _entry_role(a: pb.RoleAddrPB) -> int:
    """A role_addrs entry's role: the string when set (the engine merges both), else the enum."""
    name = a.role_str.strip().upper().removeprefix("ROLETYPE.").removeprefix("ROLE_TYPE_")
    return int(pb.RoleAddrPB.RoleType.Value(name)) if name in pb.RoleAddrPB.RoleType.keys() else int(a.role)  # noqa: SIM118


def addressed_input(job: Job) -> pb.GenerateInputPB:
    """The client's GenerateInputPB as the worker gets it: role_addrs [prefill, decode] first (PD; nothing for a
    fused worker), then the router's VIT if it chose one, then the client's entries of other roles (a VIT it
    chose itself); request_id and priority set."""
    assert job.inp is not None and job.lease is not None
    d = job.lease.decision
    out = pb.GenerateInputPB()
    out.CopyFrom(job.inp)
    out.request_id = job.request_id
    out.priority = job.priority
    ours = [w for w in r.decision_workers(d) if w.role is not Role.PDFUSION]
    replaced = {int(_ROLE_ENUM[w.role]) for w in ours} | set(_ROUTED_ROLES)
    kept = [a for a in out.generate_config.role_addrs if _entry_role(a) not in replaced]
    del out.generate_config.role_addrs[:]
    out.generate_config.role_addrs.extend([*(_role_addr(w) for w in ours), *kept])
    return out


class BatchMode:
    """The batchers of every prefill (or fused) worker and the EnqueueBatch traffic."""

    def __init__(self, core: Core, settings: BatchSettings, master_id: int = 0) -> None:
        self.core = core
        self.settings = settings
        self.by_priority = core.settings.priority.enabled
        self.batchers: dict[str, WorkerBatcher] = {}
        self.jobs: dict[int, Job] = {}  # from arrival to the answer (and through reconciliation)
        self.inflight_batches: dict[str, int] = {}
        self.ids = BatchIds(master_id)
        self._active: set[str] = set()
        self._wake = asyncio.Event()
        self._driver: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.dispatched_batches = 0
        self.dispatched_requests = 0
        # smoothed cost of delivering a batch (ms): the driver's lateness past a wake time, and per worker the
        # EnqueueBatch round trip; fixed_window closes its window early by their sum (Capacity.lead_ms)
        self.wake_late_ms = 0.0
        self.enqueue_rtt_ms: dict[str, float] = {}

    def held(self) -> int:
        """Requests waiting in batchers or for their EnqueueBatch answer (and uncertain ones)."""
        return len(self.jobs)

    # ------------------------------------------------------------ arrival

    async def submit(self, job: Job) -> fpb.FlexlbScheduleResponsePB:
        """Queue a routed job in its worker's batcher and wait for its answer."""
        assert job.lease is not None
        key = job.lease.decision.target.key
        core = self.core
        now_ms = core.clock() * 1000.0
        b = self.batchers.get(key)
        if b is None:
            b = self.batchers[key] = WorkerBatcher(self.settings, self.by_priority)
        d = job.lease.decision
        # the worker's backlog already counts this request's own prefill (routing put it there)
        wait_ms = max(0.0, core.router.ttft.worker(key).queue_wait_ms(core.clock()) - d.prefill_ms)
        item = BatchItem(job.request_id, job.route.prompt_tokens, now_ms, prefill_ms=d.prefill_ms,
                         slo_ms=job.slo_ms, priority=job.priority, worker_wait_ms=wait_ms, payload=job)
        if not b.offer(item, now_ms):
            core.release(job.lease)
            core.end(job, st.FAILED)
            reason = r.reject_reason(job.priority, (i.priority for i in b.items()))
            return core.fail(r.QUEUE_FULL, r.queue_full_message(
                f"the batcher of {key} holds {len(b)} requests (flexlbBatchQueueMaxSize)"), reason, job.record)
        self.jobs[job.request_id] = job
        self._active.add(key)
        self._kick()
        try:
            return await job.future
        except asyncio.CancelledError:
            self._abandon(job, b)
            raise

    def _abandon(self, job: Job, b: WorkerBatcher) -> None:
        """The caller left before its answer: out of the batcher if still there, else cancelled on the worker."""
        job.abandoned = True
        if b.remove(job.request_id) is not None:
            self.jobs.pop(job.request_id, None)
            if job.lease is not None:
                self.core.release(job.lease)
            self.core.end(job, st.CANCELLED)
        # dispatching: the EnqueueBatch answer handles it (an ACK is cancelled on the worker)

    def cancel(self, request_id: int) -> st.Record | None:
        """FlexlbService/Cancel of a request this mode holds; its record (None when not held here)."""
        job = self.jobs.get(request_id)
        if job is None or job.lease is None:
            return None
        b = self.batchers.get(job.lease.decision.target.key)
        if b is not None and b.remove(request_id) is not None:
            self.jobs.pop(request_id, None)
            self.core.release(job.lease)
            self.core.end(job, st.CANCELLED)
            job.answer(self.core.fail(r.BATCH_DISPATCH_FAILED, "cancelled before dispatch", record=job.record))
            return job.record
        job.abandoned = True  # in an EnqueueBatch right now: its answer cancels it on the worker
        return job.record

    # ------------------------------------------------------------ the driver

    def _kick(self) -> None:
        self._wake.set()
        if self._driver is None or self._driver.done():
            self._driver = asyncio.get_running_loop().create_task(self._drive(), name="batch driver")

    def capacity(self, key: str) -> Capacity:
        """The worker's batch capacity now."""
        w = self.core.router.cluster.get(key)
        bounds = [self.settings.max_capacity_tokens]
        kv = 0
        if w is not None:
            if w.max_batch_tokens > 0:
                bounds.append(w.max_batch_tokens)
            if w.kv_total_tokens > 0:
                kv = max(1, min(w.kv_total_tokens, w.kv_available_tokens))
        # the health checker's report, else what the settle poll saw
        seq = int(getattr(w, "max_seq_len", 0) or 0) or self.core.poller.max_seq_len.get(key, 0)
        if seq > 0:
            bounds.append(seq)
        lead = self.wake_late_ms + self.enqueue_rtt_ms.get(key, 0.0)
        return Capacity(min(bounds), kv, self.inflight_batches.get(key, 0), lead)

    def _cost(self, key: str):  # type: ignore[no-untyped-def]
        base = self.core.router.ttft.worker(key).theta[0]

        def batch_ms(items: Sequence[BatchItem]) -> float:
            # one iteration's base cost is shared by the batch
            return sum(i.prefill_ms for i in items) - base * max(0, len(items) - 1)
        return batch_ms

    def step(self) -> float | None:
        """Poll every batcher with requests until each waits; the earliest wake time (ms) asked for."""
        now_ms = self.core.clock() * 1000.0
        wake: float | None = None
        for key in list(self._active):
            b = self.batchers[key]
            cost = self._cost(key)
            while True:
                out = b.poll(now_ms, self.capacity(key), cost)
                if isinstance(out, Dispatch):
                    self._dispatch(key, out)
                elif isinstance(out, Reject):
                    self._reject(out)
                else:
                    if out.until_ms is not None:
                        wake = out.until_ms if wake is None else min(wake, out.until_ms)
                    break
            if not len(b):
                self._active.discard(key)
        return wake

    async def _drive(self) -> None:
        while self._active:
            self._wake.clear()
            wake = self.step()
            if not self._active:
                break
            timeout = None if wake is None else max(0.0005, wake / 1000.0 - self.core.clock())
            timed_out = False
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                timed_out = True
            if timed_out and wake is not None:
                late_ms = max(0.0, self.core.clock() * 1000.0 - wake)
                self.wake_late_ms += _EWMA * (min(late_ms, _LEAD_CAP_MS) - self.wake_late_ms)

    def _reject(self, out: Reject) -> None:
        job = out.item.payload
        assert isinstance(job, Job) and job.lease is not None
        self.jobs.pop(job.request_id, None)
        self.core.release(job.lease)
        self.core.end(job, st.FAILED)
        job.answer(self.core.fail(out.code, out.message, record=job.record))

    def _dispatch(self, key: str, out: Dispatch) -> None:
        batch_id = self.ids.next()
        jobs = [i.payload for i in out.items]
        now = self.core.clock()
        for job in jobs:
            assert isinstance(job, Job)
            self.core.states.move(job.record, st.DISPATCHING, now, batch_id)
        self.inflight_batches[key] = self.inflight_batches.get(key, 0) + 1
        self.dispatched_batches += 1
        self.dispatched_requests += len(jobs)
        self.core.metrics.schedule_batch_size.observe(len(jobs))
        self.core.metrics.schedule_dispatch_reasons.labels(out.reason).inc()
        self._spawn(self._send(key, batch_id, jobs), f"EnqueueBatch {key}")  # type: ignore[arg-type]

    def _spawn(self, coro, name: str) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------ EnqueueBatch and its answer

    async def _send(self, key: str, batch_id: int, jobs: list[Job]) -> None:
        try:
            try:
                inputs = [pb.EnqueueBatchExternalInputPB(input=addressed_input(j)) for j in jobs]
            except Exception as exc:  # nothing was sent: a definite failure
                for j in jobs:
                    self._failed(j, f"BATCH_BUILD_FAILED: {exc}")
                return
            call = self.core.channels.get(key).unary_unary(
                ENQUEUE_BATCH, request_serializer=pb.EnqueueBatchRequestPB.SerializeToString,
                response_deserializer=pb.EnqueueBatchResponsePB.FromString)
            request = pb.EnqueueBatchRequestPB(batch_id=batch_id, dp_slots=[pb.EnqueueBatchDpSlotPB(
                dp_rank=0, requests=inputs)])
            sent_s = self.core.clock()
            try:
                reply: pb.EnqueueBatchResponsePB = await call(
                    request, timeout=max(0.001, self.settings.enqueue_deadline_ms / 1000.0))
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    for j in jobs:
                        self._failed(j, f"{key} does not serve EnqueueBatch ({exc.details()})")
                else:
                    for j in jobs:
                        self._uncertain(key, j, f"EnqueueBatch to {key}: {exc.code().name}")
                return
            rtt_ms = min((self.core.clock() - sent_s) * 1000.0, _LEAD_CAP_MS)
            prev = self.enqueue_rtt_ms.get(key, rtt_ms)
            self.enqueue_rtt_ms[key] = prev + _EWMA * (rtt_ms - prev)
            if reply.batch_id != batch_id:
                for j in jobs:
                    self._uncertain(key, j, f"EnqueueBatch answered batch {reply.batch_id}, not {batch_id}")
                return
            ok = {s.request_id for s in reply.successes}
            errors = {e.request_id: e.error_info for e in reply.errors}
            for j in jobs:
                if j.request_id in ok:
                    self._acked(key, j)
                elif j.request_id in errors:
                    e = errors[j.request_id]
                    self._failed(j, f"BATCH_DISPATCH_FAILED: {key} refused it: {e.error_code} {e.error_message}")
                else:
                    self._uncertain(key, j, "EnqueueBatch answer does not list it")
        finally:
            self.inflight_batches[key] = self.inflight_batches.get(key, 1) - 1
            self._wake.set()  # backpressure may have held batches back

    def _failed(self, job: Job, message: str) -> None:
        self.jobs.pop(job.request_id, None)
        if job.lease is not None:
            self.core.release(job.lease)
        self.core.end(job, st.FAILED)
        job.answer(self.core.fail(r.BATCH_DISPATCH_FAILED, message, record=job.record))

    def _acked(self, key: str, job: Job) -> None:
        core = self.core
        self.jobs.pop(job.request_id, None)
        assert job.lease is not None
        core.states.move(job.record, st.ACKNOWLEDGED, core.clock())
        if job.abandoned:
            # nobody will fetch it: take it back from the worker, then give the load back
            core.states.move(job.record, st.CANCEL_REQUESTED, core.clock())
            self.jobs[job.request_id] = job
            self._spawn(self._reconcile(key, job), f"cancel {job.request_id}")
            return
        core.place(job.lease, job.request_id, "BATCH", job)
        d = job.lease.decision
        reply = fpb.FlexlbScheduleResponsePB(
            success=True, code=r.OK, enqueued_by_master=True, real_master_host=core.master_host(),
            queue_length=core.queue_length(),
            server_status=[r.server_status(w) for w in r.decision_workers(d, decode_first=True)])
        reply.lifecycle.CopyFrom(job.record.lifecycle())
        job.answer(reply)

    def _uncertain(self, key: str, job: Job, why: str) -> None:
        log.warning("request %d: %s; outcome uncertain, cancelling it on %s", job.request_id, why, key)
        self.core.metrics.schedule_dispatch_reasons.labels("uncertain").inc()
        job.answer(self.core.fail(r.BATCH_DISPATCH_FAILED, f"BATCH_DISPATCH_FAILED: {why}; the outcome is "
                                  "uncertain and the request is being cancelled on the worker (do not resend it)",
                                  record=job.record))
        self._spawn(self._reconcile(key, job), f"reconcile {job.request_id}")

    async def _reconcile(self, key: str, job: Job) -> None:
        """Cancel the request on the worker until it answers; the load stays reserved until then."""
        core = self.core
        call = core.channels.get(key).unary_unary(
            wire.CANCEL, request_serializer=pb.CancelRequestPB.SerializeToString,
            response_deserializer=pb.CancelResponsePB.FromString)
        give_up = core.clock() + self.settings.inflight_ttl_ms / 1000.0
        attempt = 0
        state = st.FAILED
        try:
            while core.clock() < give_up:
                try:
                    reply: pb.CancelResponsePB = await call(pb.CancelRequestPB(request_id=job.request_id), timeout=1.0)
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(min(5.0, 0.1 * 2 ** min(attempt, 5)))
                    attempt += 1
                    continue
                if reply.status == pb.CANCEL_STATUS_TOMBSTONED:
                    state = st.TIMED_OUT
                else:
                    if job.record.state != st.CANCEL_REQUESTED:
                        core.states.move(job.record, st.CANCEL_REQUESTED, core.clock())
                    state = st.CANCELLED
                break
        finally:
            self.jobs.pop(job.request_id, None)
            if job.lease is not None:
                core.release(job.lease)
            core.end(job, state)

    async def close(self) -> None:
        """Stop the driver and the calls in flight; answer whoever still waits."""
        tasks = [t for t in (self._driver, *self._tasks) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for job in list(self.jobs.values()):
            job.answer(self.core.fail(r.INTERNAL, "the gateway is stopping", record=job.record))
