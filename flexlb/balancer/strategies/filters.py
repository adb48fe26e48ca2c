"""Filters every chain starts with: the call's exclude set, the prompt length the worker takes, rotation (failing
open), the per-worker cap; PD group affinity, which the router adds for the pairing; and the VIT chain's own."""

from __future__ import annotations

from collections.abc import Sequence

from flexlb.balancer.health import usable, usable_workers
from flexlb.balancer.request import RouteRequest
from flexlb.balancer.strategies.base import Filter, PickContext
from flexlb.balancer.workers import WorkerState


class ExcludeFilter(Filter):
    """Drops the workers the call must not go to (e.g. the one that just failed it)."""

    name = "exclude"

    def apply(self, workers: Sequence[WorkerState], req: RouteRequest, ctx: PickContext) -> Sequence[WorkerState]:
        """Workers not in `req.exclude`."""
        return [w for w in workers if w.key not in req.exclude] if req.exclude else workers


class UsableFilter(Filter):
    """Drops workers out of rotation, unless that would drop all of them (fail open: better a doubtful
    worker than refusing the call)."""

    name = "usable"

    def apply(self, workers: Sequence[WorkerState], req: RouteRequest, ctx: PickContext) -> Sequence[WorkerState]:
        """The usable workers, or all of them when none is."""
        healthy = usable_workers(workers, ctx.now_s)
        return workers if len(healthy) == len(workers) else (healthy or workers)


class InFlightCapFilter(Filter):
    """Drops workers at the per-worker in-flight cap; never fails open (that is admission control)."""

    name = "in_flight_cap"

    def apply(self, workers: Sequence[WorkerState], req: RouteRequest, ctx: PickContext) -> Sequence[WorkerState]:
        """Workers below the cap (all of them without one)."""
        cap = ctx.max_in_flight_per_worker
        return [w for w in workers if w.in_flight < cap] if cap > 0 else workers


class GroupFilter(Filter):
    """Keeps the workers of some groups: a prefill can hand its KV cache only to a decode of its own group."""

    name = "group"

    def __init__(self, groups: frozenset[str]) -> None:
        self.groups = groups

    def apply(self, workers: Sequence[WorkerState], req: RouteRequest, ctx: PickContext) -> Sequence[WorkerState]:
        """Workers whose group is one of `groups`."""
        return [w for w in workers if w.addr.group in self.groups]


class SeqLenFilter(Filter):
    """Drops workers that reported a max_seq_len below the call's longest sequence (the engine would refuse it
    with LONG_PROMPT_ERROR); never fails open. A worker that has not reported one (0) is kept."""

    name = "max_seq_len"

    def apply(self, workers: Sequence[WorkerState], req: RouteRequest, ctx: PickContext) -> Sequence[WorkerState]:
        """Workers whose max_seq_len admits the call (all of them when none is too short)."""
        n = req.longest_sequence
        kept = [w for w in workers if not w.max_seq_len or n <= w.max_seq_len]
        return workers if len(kept) == len(workers) else kept


class InRotationFilter(Filter):
    """Drops workers out of rotation and does not fail open: for VIT workers, which the engine calls itself, a
    worker known to be out is not handed over (no VIT in rotation: NO_VIT_WORKER, 8405)."""

    name = "in_rotation"

    def apply(self, workers: Sequence[WorkerState], req: RouteRequest, ctx: PickContext) -> Sequence[WorkerState]:
        """The usable workers."""
        return [w for w in workers if usable(w, ctx.now_s)]


class PinnedGroupFilter(Filter):
    """Keeps the workers of the group the traffic policy pinned the call to (every role; no failing open)."""

    name = "pinned_group"

    def apply(self, workers: Sequence[WorkerState], req: RouteRequest, ctx: PickContext) -> Sequence[WorkerState]:
        """Workers of `req.pinned_group` (all of them when the call is not pinned)."""
        return [w for w in workers if w.addr.group == req.pinned_group] if req.pinned_group else workers


# the seq-len and pinned-group filters run before the usable one, so failing open stays within what the call may use
STANDARD_FILTERS: tuple[Filter, ...] = (ExcludeFilter(), PinnedGroupFilter(), SeqLenFilter(), UsableFilter(),
                                        InFlightCapFilter())
# VIT workers: no prompt-length rule (they embed images, not the prompt), no failing open
VIT_FILTERS: tuple[Filter, ...] = (ExcludeFilter(), InRotationFilter(), InFlightCapFilter())
