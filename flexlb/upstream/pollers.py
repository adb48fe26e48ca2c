"""One long-lived task per worker, each with its own channel: started together, stopped together, and added or
removed one by one as the cluster's membership changes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

import grpc

from flexlb.tls import PLAINTEXT, Dialer

Run = Callable[[str, grpc.aio.Channel], Coroutine[Any, Any, None]]


class WorkerPollers:
    """Owns the per-worker polling tasks and their channels (health checks, cache sync)."""

    def __init__(self, name: str, dialer: Dialer = PLAINTEXT) -> None:
        self.name = name
        self.dialer = dialer  # plaintext or TLS towards workers
        self._running: dict[str, tuple[asyncio.Task[None], grpc.aio.Channel]] = {}
        self._closing: set[asyncio.Task[None]] = set()  # removed pollers still winding down

    def start(self, targets: list[str], run: Run, options: list[tuple[str, int]] | None = None) -> None:
        """For every `ip:port`, open a channel and run `run(target, channel)` as a named task."""
        for target in targets:
            self.add(target, run, options)

    def add(self, target: str, run: Run, options: list[tuple[str, int]] | None = None) -> None:
        """Poll one more worker (a no-op if it is polled already)."""
        if target in self._running:
            return
        ch = self.dialer.channel(target, options or [])
        self._running[target] = (asyncio.create_task(run(target, ch), name=f"{self.name} {target}"), ch)

    def remove(self, target: str) -> None:
        """Stop polling a worker now; its channel is closed in the background (stop() waits for that)."""
        entry = self._running.pop(target, None)
        if entry is None:
            return
        task, ch = entry
        task.cancel()
        closing = asyncio.create_task(self._close(task, ch), name=f"{self.name} {target} closing")
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    def targets(self) -> list[str]:
        """The workers polled now."""
        return list(self._running)

    @staticmethod
    async def _close(task: asyncio.Task[None], ch: grpc.aio.Channel) -> None:
        with contextlib.suppress(asyncio.CancelledError, Exception):  # its failure is of no use once removed
            await task
        await ch.close()

    async def stop(self) -> None:
        """Cancel the tasks, wait for them, close the channels."""
        running, self._running = list(self._running.values()), {}
        for t, _ in running:
            t.cancel()
        for t, _ in running:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for _, ch in running:
            await ch.close()
        while self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
