"""One long-lived task per worker, each with its own channel: started together, stopped together."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

import grpc


class WorkerPollers:
    """Owns the per-worker polling tasks and their channels (health checks, cache sync)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: list[asyncio.Task[None]] = []
        self._channels: list[grpc.aio.Channel] = []

    def start(self, targets: list[str], run: Callable[[str, grpc.aio.Channel], Coroutine[Any, Any, None]],
              options: list[tuple[str, int]] | None = None) -> None:
        """For every `ip:port`, open a channel and run `run(target, channel)` as a named task."""
        for target in targets:
            ch = grpc.aio.insecure_channel(target, options=options or [])
            self._channels.append(ch)
            self._tasks.append(asyncio.create_task(run(target, ch), name=f"{self.name} {target}"))

    async def stop(self) -> None:
        """Cancel the tasks, wait for them, close the channels."""
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for ch in self._channels:
            await ch.close()
        self._tasks.clear()
        self._channels.clear()
