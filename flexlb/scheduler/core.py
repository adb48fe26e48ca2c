"""What the Schedule modes share: the router, lifecycle records, placed requests and their settling."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from flexlb.balancer.events import HoldEvent
from flexlb.balancer.request import RouteRequest
from flexlb.balancer.router import Router
from flexlb.balancer.workers import Lease
from flexlb.metrics import Metrics
from flexlb.pb import flexlb_schedule_service_pb2 as fpb
from flexlb.pb import model_rpc_service_pb2 as pb
from flexlb.schedule_modes import ScheduleSettings
from flexlb.scheduler import states as st
from flexlb.scheduler.inflight import Ended, Expired, InflightTracker, Placed, Started, TrackerEvent
from flexlb.scheduler.settle import StatusPoller, WorkerChannels

_CANCELLED_CODES = frozenset({8100, 8429})  # the engine's CANCELLED, and PRIORITY_PREEMPTED (our Cancel)


@dataclass(eq=False)
class Job:
    """One client Schedule request held by BATCH or QUEUE mode until it is answered."""

    request_id: int
    route: RouteRequest
    inp: pb.GenerateInputPB | None
    priority: int
    slo_ms: float
    timeout_s: float
    record: st.Record
    future: asyncio.Future[fpb.FlexlbScheduleResponsePB]
    arrived_s: float
    lease: Lease | None = None
    abandoned: bool = False  # its caller left (cancelled, deadline) before the answer
    retries: int = 0
    seq: int = 0
    extra: dict[str, object] = field(default_factory=dict)

    def answer(self, reply: fpb.FlexlbScheduleResponsePB) -> None:
        """Complete the caller's wait (once)."""
        if not self.future.done():
            self.future.set_result(reply)


class Core:
    """Shared state and plumbing of the modes (one per Scheduler)."""

    def __init__(self, router: Router, metrics: Metrics, settings: ScheduleSettings,
                 release: Callable[[Lease], None], deliver: Callable[[Sequence[HoldEvent]], None],
                 master_host: Callable[[], str], clock: Callable[[], float] = time.monotonic) -> None:
        self.router = router
        self.metrics = metrics
        self.settings = settings
        self.release = release
        self.deliver = deliver
        self.master_host = master_host
        self.clock = clock
        self.states = st.RequestStates(settings.request_state_ttl_ms / 1000.0)
        b = settings.batch
        # a placed request never seen started frees its prefill slot after this: the caller may never dial
        self.tracker = InflightTracker(b.inflight_ttl_ms / 1000.0, start_ttl_s=10.0)
        self.channels = WorkerChannels()
        self.poller = StatusPoller(self.tracker, self.channels, settings.status_poll_interval_ms / 1000.0,
                                   self.handle)
        self.queue_length: Callable[[], int] = lambda: 0
        self.on_room: Callable[[], None] = lambda: None  # a prefill slot or a lease was given back
        self._sweeper: asyncio.Task[None] | None = None

    def fail(self, code: int, message: str, reason: int = 0,
             record: st.Record | None = None) -> fpb.FlexlbScheduleResponsePB:
        """An error answer (with the record's lifecycle when there is one)."""
        reply = fpb.FlexlbScheduleResponsePB(success=False, code=code, error_message=message,
                                             real_master_host=self.master_host(), queue_length=self.queue_length(),
                                             admission_reject_reason=reason)  # type: ignore[arg-type]
        if record is not None:
            reply.lifecycle.CopyFrom(record.lifecycle())
        return reply

    def end(self, job: Job, state: int) -> None:
        """Move a job's record to a terminal state (ignored when the lifecycle is already past that)."""
        if job.record.state == st.CANCEL_REQUESTED and state != st.TIMED_OUT:
            state = st.CANCELLED
        self.states.move(job.record, state, self.clock())

    # ------------------------------------------------------------ placed requests

    def place(self, lease: Lease, request_id: int, mode: str, job: Job | None = None) -> None:
        """Keep `lease` until the worker reports the request done (or the TTL): id 0 or an id already placed on
        that worker cannot be told apart there, so its load is given back now."""
        worker = lease.decision.target.key
        if not request_id or self.tracker.get(worker, request_id) is not None:
            self.release(lease)
            return
        events = self.tracker.add(Placed(request_id, worker, lease, self.clock(), mode, payload=job))
        if events:
            self.handle(events)
        else:
            self.poller.ensure(worker)
            self._ensure_sweeper()

    def handle(self, events: list[TrackerEvent]) -> None:
        """What the workers reported about placed requests (or their TTLs)."""
        now = self.clock()
        for ev in events:
            p = ev.placed
            if isinstance(ev, Started):
                observed_ms = (now - p.placed_s) * 1000.0
                self.deliver(self.router.first_token(p.lease, observed_ms))
                continue
            self.release(p.lease)
            job = p.payload
            if isinstance(job, Job):
                if isinstance(ev, Ended):
                    state = st.COMPLETED if ev.error_code == 0 else (
                        st.CANCELLED if ev.error_code in _CANCELLED_CODES else st.FAILED)
                    if state == st.CANCELLED and job.record.state != st.CANCEL_REQUESTED:
                        self.states.move(job.record, st.CANCEL_REQUESTED, now)
                else:
                    assert isinstance(ev, Expired)
                    state = st.TIMED_OUT
                self.end(job, state)
        self.on_room()

    def _ensure_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="settle ttl sweep")

    async def _sweep(self) -> None:
        """Once a second while requests are placed: their TTLs."""
        while len(self.tracker):
            await asyncio.sleep(1.0)
            events = self.tracker.expire(self.clock())
            if events:
                self.handle(events)

    async def close(self) -> None:
        """Stop polling and sweeping; close the channels."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.poller.close()
        await self.channels.close()
