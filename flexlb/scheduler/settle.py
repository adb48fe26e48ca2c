"""The scheduler's own link to workers: channels, and GetWorkerStatus polls of the workers holding placed requests.

A worker is polled (one poll in flight, every `interval_s`) only while requests placed on it are tracked;
its answers are handed to the tracker and what changed to the owner. The poll also learns the worker's
max_seq_len (a batch-capacity bound). One watermark per worker (latest_finished_version) survives pauses,
so a request that ended while nobody polled is still reported when polling resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import grpc

from flexlb import wire
from flexlb.pb import model_rpc_service_pb2 as pb
from flexlb.scheduler.inflight import InflightTracker, TrackerEvent
from flexlb.tls import PLAINTEXT, Dialer
from flexlb.upstream.health_check import channel_options


class WorkerChannels:
    """One grpc.aio channel per worker (ip:grpc_port), opened on first use."""

    def __init__(self, dialer: Dialer = PLAINTEXT) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.dialer = dialer  # plaintext or TLS towards workers (the composition root sets it)

    def get(self, target: str) -> grpc.aio.Channel:
        """The channel to `target`."""
        ch = self._channels.get(target)
        if ch is None:
            ch = self.dialer.channel(target, [*channel_options(1.0),
                                              ("grpc.max_receive_message_length", 64 * 1024 * 1024)])
            self._channels[target] = ch
        return ch

    async def close(self) -> None:
        """Close every channel."""
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()


MAX_POLLS_PER_S = 500.0  # all workers together: with many workers polled, each is polled less often


class StatusPoller:
    """Polls the workers that hold tracked requests; hands the tracker's events to `on_events`."""

    def __init__(self, tracker: InflightTracker, channels: WorkerChannels, interval_s: float,
                 on_events: Callable[[list[TrackerEvent]], None], timeout_s: float = 2.0) -> None:
        self.tracker = tracker
        self.channels = channels
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._on_events = on_events
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._watermark: dict[str, int] = {}
        self.max_seq_len: dict[str, int] = {}  # as each polled worker reports it (0: not reported)
        self.polls = 0

    def ensure(self, worker: str) -> None:
        """Poll `worker` while it holds tracked requests (start now if it is not polled already)."""
        if worker not in self._tasks and self.tracker.on(worker) > 0:
            self._tasks[worker] = asyncio.get_running_loop().create_task(self._run(worker), name=f"settle {worker}")

    async def _run(self, worker: str) -> None:
        status = self.channels.get(worker).unary_unary(
            wire.GET_WORKER_STATUS, request_serializer=pb.StatusVersionPB.SerializeToString,
            response_deserializer=pb.WorkerStatusPB.FromString)
        try:
            while self.tracker.on(worker) > 0:
                self.polls += 1
                try:
                    reply: pb.WorkerStatusPB = await status(
                        pb.StatusVersionPB(latest_finished_version=self._watermark.get(worker, 0)),
                        timeout=self.timeout_s)
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(self.pause_s())  # the TTL settles what a dead worker never reports
                    continue
                self._watermark[worker] = max(self._watermark.get(worker, 0), reply.latest_finished_version)
                self.max_seq_len[worker] = reply.max_seq_len
                events = self.tracker.report(
                    worker, [(t.request_id, t.is_waiting) for t in reply.running_task_info],
                    [(t.request_id, t.error_info.error_code) for t in reply.finished_task_list])
                if events:
                    self._on_events(events)
                await asyncio.sleep(self.pause_s())
        finally:
            self._tasks.pop(worker, None)

    def pause_s(self) -> float:
        """The interval between two polls of one worker: `interval_s`, longer when many workers are polled (a
        master over hundreds of workers must not spend itself on status polls)."""
        return max(self.interval_s, len(self._tasks) / MAX_POLLS_PER_S)

    async def close(self) -> None:
        """Stop polling."""
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
