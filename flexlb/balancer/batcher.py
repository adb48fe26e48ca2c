"""The prefill batching window: requests arriving within `prefillBatchWaitTimeMs` are routed together.

Routing a window's requests jointly lets the gateway dispatch them shortest-prefill first (a
worker serves its queue in arrival order, so the order of dispatch is the only lever on the order
of service), with requests that share a prompt prefix kept next to each other so the first one's
blocks are recorded before the rest are matched. A request is never held longer than the window;
`batchSize` requests close the window early; `batchSize` 1 disables batching.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from flexlb.balancer.request import RouteRequest

T = TypeVar("T")


@dataclass(frozen=True)
class BatchConfig:
    """prefillBatchWaitTimeMs and batchSize."""

    wait_ms: float = 0.0
    size: int = 1

    @property
    def enabled(self) -> bool:
        """Batching happens only with a window and room for more than one request."""
        return self.wait_ms > 0 and self.size > 1


@dataclass
class _Open(Generic[T]):
    opened_s: float
    items: list[tuple[RouteRequest, T]] = field(default_factory=list)


class Batcher(Generic[T]):
    """Collects (request, payload) pairs; pure: the caller supplies the time and runs the timer."""

    def __init__(self, config: BatchConfig) -> None:
        self.config = config
        self._open: _Open[T] | None = None

    def add(self, req: RouteRequest, payload: T, now_s: float) -> list[tuple[RouteRequest, T]] | None:
        """Queue a request; returns the whole batch when it just became full, else None."""
        if self._open is None:
            self._open = _Open(now_s)
        self._open.items.append((req, payload))
        if len(self._open.items) >= self.config.size:
            return self.take()
        return None

    def deadline_s(self) -> float | None:
        """When the open window must be flushed (None when nothing waits)."""
        return None if self._open is None else self._open.opened_s + self.config.wait_ms / 1000.0

    def take(self) -> list[tuple[RouteRequest, T]]:
        """Close the window and hand out everything in it."""
        items = self._open.items if self._open is not None else []
        self._open = None
        return items

    def __len__(self) -> int:
        return 0 if self._open is None else len(self._open.items)


def dispatch_order(batch: Sequence[tuple[RouteRequest, T]],
                   uncached_tokens: Callable[[RouteRequest], int]) -> list[tuple[RouteRequest, T]]:
    """Shortest expected prefill first; requests sharing a first block stay together, led by their shortest."""
    groups: dict[object, list[tuple[RouteRequest, T]]] = {}
    for item in batch:
        req = item[0]
        key: object = req.block_keys[0] if req.block_keys else ("alone", id(item))
        groups.setdefault(key, []).append(item)
    ordered_groups = []
    for members in groups.values():
        members.sort(key=lambda it: uncached_tokens(it[0]))
        ordered_groups.append(members)
    ordered_groups.sort(key=lambda g: uncached_tokens(g[0][0]))
    return [item for g in ordered_groups for item in g]
