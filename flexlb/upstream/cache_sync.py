"""kvCache LOCAL_SYNC: each worker's own list of cached blocks, polled through GetCacheStatus.

One poll in flight per worker. The interval adapts: back to the minimum whenever the worker's
cache version moved, doubling up to the maximum while it does not (the original FlexLB's
CACHE_STATUS_MIN/MAX_INTERVAL_MS defaults: 50 ms and 3 s). Only a changed version carries keys.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from flexlb import wire
from flexlb.balancer.prefix_index import PrefixIndex
from flexlb.balancer.workers import WorkerAddr
from flexlb.pb import model_rpc_service_pb2 as pb
from flexlb.tls import PLAINTEXT, Dialer
from flexlb.upstream.pollers import WorkerPollers

log = logging.getLogger("flexlb.cache_sync")


@dataclass(frozen=True)
class CacheSyncConfig:
    """Polling bounds."""

    min_interval_s: float = 0.05
    max_interval_s: float = 3.0
    timeout_s: float = 2.0
    keep_recent_s: float = 5.0  # speculative records younger than this survive a report without them


@dataclass
class WorkerCacheView:
    """What the last poll of one worker said."""

    version: int = -1
    block_size_tokens: int = 0
    polls: int = 0
    updates: int = 0
    failures: int = 0


class CacheSync:
    """Polls every worker's GetCacheStatus and replaces its record in the prefix index."""

    def __init__(self, index: PrefixIndex, workers: list[WorkerAddr], config: CacheSyncConfig,
                 on_block_size: Callable[[int], None], dialer: Dialer = PLAINTEXT) -> None:
        self.index = index
        self.workers = workers
        self.config = config
        self.views = {w.key: WorkerCacheView() for w in workers}
        self._on_block_size = on_block_size
        self._pollers = WorkerPollers("cache-sync", dialer)
        self._started = False

    def start(self) -> None:
        """One named polling task per worker."""
        self._started = True
        for w in self.workers:
            self._add(w)

    def _add(self, worker: WorkerAddr) -> None:
        self.views.setdefault(worker.key, WorkerCacheView())
        self._pollers.add(worker.key, lambda _key, ch: self._poll(worker, ch.unary_unary(
            wire.GET_CACHE_STATUS, request_serializer=pb.CacheVersionPB.SerializeToString,
            response_deserializer=pb.CacheStatusPB.FromString)))

    def follow(self, workers: list[WorkerAddr]) -> None:
        """The engines to poll are now `workers` (membership changed): poll new ones, stop polling gone ones."""
        wanted = {w.key: w for w in workers}
        self.workers = list(wanted.values())
        if not self._started:
            return
        for key in self._pollers.targets():
            if key not in wanted:
                self._pollers.remove(key)
                self.views.pop(key, None)
        for w in self.workers:
            self._add(w)

    async def stop(self) -> None:
        """Cancel the pollers and close their channels."""
        await self._pollers.stop()

    async def _poll(self, worker: WorkerAddr, call: grpc.aio.UnaryUnaryMultiCallable) -> None:
        view = self.views[worker.key]
        interval = self.config.min_interval_s
        while True:
            view.polls += 1
            try:
                reply: pb.CacheStatusPB = await call(
                    pb.CacheVersionPB(latest_cache_version=view.version, need_cache_keys=True),
                    timeout=self.config.timeout_s,
                )
            except grpc.aio.AioRpcError as exc:
                view.failures += 1
                log.debug("GetCacheStatus %s: %s", worker.key, exc.code().name)
                interval = self.config.max_interval_s
            else:
                if reply.block_size and reply.block_size != view.block_size_tokens:
                    view.block_size_tokens = reply.block_size
                    self._on_block_size(reply.block_size)
                if reply.version != view.version:
                    view.version = reply.version
                    view.updates += 1
                    self.index.replace(worker.key, list(reply.cache_keys), time.monotonic(),
                                       keep_recent_s=self.config.keep_recent_s)
                    interval = self.config.min_interval_s
                else:
                    interval = min(interval * 2, self.config.max_interval_s)
            await asyncio.sleep(interval)
