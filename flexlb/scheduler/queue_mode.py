"""QUEUE mode: a priority queue in front of the DIRECT decision (flexlb-original §1.5).

Requests wait in priority order (higher first, then arrival); at most maxQueueSize wait (8502). One
dispatcher task takes the head only when a worker of the routed role has room by the load the router
tracks (PrefillQueue.slot_free over the worker's prefills dispatched and not yet started: the batch
budget a batching engine reports, else a depth of 2 or 100 ms of estimated work) and routes it among
the workers with room. A retryable failure (8400, 8402-8405, 8407) leaves the request at its place
(its sequence kept), up to maxRetryCount attempts (0: until its timeout). A request waits at most its
generate_timeout (8503). A decision keeps its lease until the worker reports the request started
(its prefill slot is free) and finished, or a TTL: that is what "room" is made of.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from dataclasses import replace

from flexlb.balancer.prefill_queue import PrefillQueue, PrefillQueueConfig
from flexlb.balancer.request import Deploy, NoWorkerAvailable, PromptTooLong
from flexlb.balancer.workers import Role
from flexlb.pb import flexlb_schedule_service_pb2 as fpb
from flexlb.schedule_modes import QueueSettings
from flexlb.scheduler import replies as r
from flexlb.scheduler import states as st
from flexlb.scheduler.core import Core, Job

_RETRY_BACKOFF_S = 0.02  # after a retryable failure the queue waits this long (or for room) before trying again
_ROOM_POLL_S = 0.05  # while requests wait and no worker has room: the estimates move with time


class QueueMode:
    """The priority queue and its dispatcher."""

    def __init__(self, core: Core, settings: QueueSettings) -> None:
        self.core = core
        self.settings = settings
        self._heap: list[tuple[int, int, Job]] = []
        self._waiting = 0
        self._seq = itertools.count(1)
        self._wake = asyncio.Event()
        self._driver: asyncio.Task[None] | None = None
        # the room rule of the gateway's prefill queue, used on its own (whether or not that queue is on)
        cfg = core.router.queue.config
        self._room = PrefillQueue(cfg if cfg.enabled else PrefillQueueConfig())
        self.dispatched = 0
        self.retries = 0

    def held(self) -> int:
        """Requests waiting in the queue."""
        return self._waiting

    def wake(self) -> None:
        """Something freed room (or arrived): try dispatching."""
        self._wake.set()

    def priorities(self) -> list[int]:
        """Priorities of the waiting requests."""
        return [j.priority for _, _, j in self._heap if not j.abandoned]

    async def submit(self, job: Job) -> fpb.FlexlbScheduleResponsePB:
        """Queue the job and wait for its decision (or its timeout)."""
        core = self.core
        if self._waiting >= self.settings.max_queue_size:
            core.end(job, st.FAILED)
            return core.fail(r.QUEUE_FULL, r.queue_full_message(
                f"{self._waiting} requests queued (maxQueueSize {self.settings.max_queue_size})"),
                r.reject_reason(job.priority, self.priorities()), job.record)
        job.seq = next(self._seq)
        heapq.heappush(self._heap, (-job.priority, job.seq, job))
        self._waiting += 1
        self._kick()
        try:
            async with asyncio.timeout(job.timeout_s):
                return await asyncio.shield(job.future)
        except TimeoutError:
            if job.future.done():
                return job.future.result()
            mine = (-job.priority, job.seq)
            ahead = [j.priority for _, _, j in self._heap if not j.abandoned and (-j.priority, j.seq) < mine]
            self._leave(job, st.TIMED_OUT)
            return core.fail(r.QUEUE_TIMEOUT, r.queue_timeout_message(
                f"waited {job.timeout_s * 1000:.0f} ms in the queue (generate_timeout)"),
                r.reject_reason(job.priority, ahead), job.record)
        except asyncio.CancelledError:
            if not job.future.done():
                self._leave(job, st.CANCELLED)
            raise

    def cancel(self, request_id: int) -> st.Record | None:
        """FlexlbService/Cancel of a queued request; its record (None when not queued here)."""
        for _, _, job in self._heap:
            if job.request_id == request_id and not job.abandoned:
                self._leave(job, st.CANCELLED)
                job.answer(self.core.fail(r.QUEUE_TIMEOUT, r.queue_timeout_message("cancelled while queued"),
                                          record=job.record))
                return job.record
        return None

    def _leave(self, job: Job, state: int) -> None:
        if not job.abandoned:
            job.abandoned = True  # lazily dropped from the heap
            self._waiting -= 1
        self.core.end(job, state)

    def _kick(self) -> None:
        self._wake.set()
        if self._driver is None or self._driver.done():
            self._driver = asyncio.get_running_loop().create_task(self._drive(), name="queue dispatcher")

    async def _drive(self) -> None:
        while self._waiting:
            self._wake.clear()
            pause = self.step()
            if not self._waiting:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self._wake.wait()

    def _full(self) -> tuple[frozenset[str], bool, Role | None]:
        """Workers of the routed role without room now, whether any has room, and the role when none of its
        workers is in rotation (a retryable failure, not a wait for room)."""
        core = self.core
        router = core.router
        role = Role.PDFUSION if router.deploy is Deploy.PD_FUSION else Role.PREFILL
        now = core.clock()
        full = set()
        room = False
        usable = False
        for w in router.cluster.of_role(role):
            m = router.ttft.worker(w.key)
            up = router.in_rotation(w)
            usable = usable or up
            if up and self._room.slot_free(len(m.pending), m.pending_tokens, 0, w.max_batch_tokens,
                                           m.queue_wait_ms(now)):
                room = True
            else:
                full.add(w.key)
        return frozenset(full), room, None if usable else role

    def step(self) -> float:
        """Dispatch from the head while workers have room; how long to wait before trying again (s)."""
        core = self.core
        while self._heap:
            _, _, job = self._heap[0]
            if job.abandoned:
                heapq.heappop(self._heap)
                continue
            full, room, down = self._full()
            if down is not None:
                if not self._retry(job, r.NO_WORKER_CODE.get(down.name, r.NO_AVAILABLE_WORKER),
                                   f"no {down.name} worker in rotation"):
                    continue
                return _RETRY_BACKOFF_S
            if not room:
                return _ROOM_POLL_S
            route = replace(job.route, exclude=job.route.exclude | full)
            try:
                lease = core.router.route(route, kind="reservation")
            except NoWorkerAvailable as exc:
                # a prompt no worker takes is not retryable (INVALID_REQUEST), a worker role out of rotation is
                code = r.INVALID_REQUEST if isinstance(exc, PromptTooLong) else r.NO_WORKER_CODE.get(
                    exc.role, r.NO_AVAILABLE_WORKER)
                if not self._retry(job, code, str(exc)):
                    continue
                return _RETRY_BACKOFF_S
            d = lease.decision
            dead = [w for w in r.decision_workers(d) if not core.router.in_rotation(w)]
            if dead:
                # routing fails open; a decision handed out must not (see service.py)
                core.release(lease)
                role = dead[0].role.name
                if not self._retry(job, r.NO_WORKER_CODE.get(role, r.NO_AVAILABLE_WORKER),
                                   f"no {role} worker in rotation"):
                    continue
                return _RETRY_BACKOFF_S
            heapq.heappop(self._heap)
            self._waiting -= 1
            self.dispatched += 1
            now = core.clock()
            core.states.move(job.record, st.DISPATCHING, now, lease.seq)
            core.metrics.decisions.labels(d.strategy, d.reason).inc()
            core.place(lease, job.request_id, "QUEUE")
            core.states.move(job.record, st.COMPLETED, now)  # decided: the caller dials the worker itself
            reply = fpb.FlexlbScheduleResponsePB(
                success=True, code=r.OK, real_master_host=core.master_host(), queue_length=core.queue_length(),
                server_status=[r.server_status(w) for w in r.decision_workers(d)])
            reply.lifecycle.CopyFrom(job.record.lifecycle())
            job.answer(reply)
        return _ROOM_POLL_S

    def _retry(self, job: Job, code: int, message: str) -> bool:
        """A retryable failure: True if the job stays queued, False if it was answered with the failure."""
        job.retries += 1
        self.retries += 1
        limit = self.settings.max_retry_count
        if code in r.RETRYABLE and (limit <= 0 or job.retries <= limit):
            return True
        heapq.heappop(self._heap)
        self._leave(job, st.FAILED)
        job.answer(self.core.fail(code, message, record=job.record))
        return False

    async def close(self) -> None:
        """Stop the dispatcher; answer whoever waits."""
        if self._driver is not None:
            self._driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._driver
        for _, _, job in self._heap:
            job.answer(self.core.fail(r.INTERNAL, "the gateway is stopping", record=job.record))
