"""The strategy contract, llm-d's shape: filters narrow the workers, a scorer rates the rest, a picker chooses.

A strategy is a named Chain of the three (strategies/__init__.py declares them all). Filters and
pickers are stateless; a scorer may keep its own records (the peer baselines keep their own prefix
records, as the originals do) and hears which worker was chosen. Nothing here mutates worker state.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from flexlb.balancer.prefill_queue import PrefillQueue
from flexlb.balancer.request import Pick, RouteRequest, cached_tokens
from flexlb.balancer.ttft import TtftModel
from flexlb.balancer.workers import WorkerState


@dataclass
class PickContext:
    """What filters, scorers and pickers may use besides the workers: randomness, time, cache matches,
    the TTFT model, the gateway's prefill queue (None when it is off) and the per-worker in-flight cap."""

    rng: random.Random
    now_s: float
    ttft: TtftModel
    matched_blocks: dict[str, int] = field(default_factory=dict)  # worker key → leading blocks held
    queue: PrefillQueue | None = None
    max_in_flight_per_worker: int = 0  # 0: no cap

    def cached_tokens(self, req: RouteRequest, worker: WorkerState) -> int:
        """Prompt tokens the worker is expected to reuse, by the router's prefix index."""
        blocks = self.matched_blocks.get(worker.key, 0)
        return cached_tokens(req, blocks) if blocks else 0


@dataclass(frozen=True)
class Estimate:
    """One worker's TTFT facts for a request: cached prefix, wait before its prefill, the prefill itself."""

    worker: WorkerState
    cached_tokens: int
    wait_ms: float
    prefill_ms: float
    overtakes: int = 0  # held calls this one would leave before (each then waits its prefill longer)

    @property
    def ttft_ms(self) -> float:
        """Estimated time to first token: wait plus prefill."""
        return self.wait_ms + self.prefill_ms


@dataclass(slots=True)
class Scored:
    """A scorer's output: the workers it rated (a shortlist of the candidates, possibly), and per worker, in
    the same order, a cost (lower is better), TTFT estimates, or named features for rule-based pickers."""

    workers: Sequence[WorkerState]
    cost: Sequence[float] | None = None
    estimates: Sequence[Estimate] | None = None
    features: Mapping[str, Sequence[float]] | None = None


class Filter:
    """Narrows the workers a call may go to."""

    name = "filter"

    def apply(self, workers: Sequence[WorkerState], req: RouteRequest, ctx: PickContext) -> Sequence[WorkerState]:
        """The workers that pass (possibly none)."""
        raise NotImplementedError


class Scorer:
    """Rates candidates for one request."""

    name = "scorer"

    def score(self, candidates: Sequence[WorkerState], req: RouteRequest, ctx: PickContext) -> Scored:
        """Scores for `candidates` (never empty)."""
        raise NotImplementedError

    def chosen(self, worker: WorkerState, req: RouteRequest, ctx: PickContext) -> None:
        """The chain chose `worker` for `req` (scorers with records of their own update them here)."""


class Picker:
    """Chooses one of the scored workers."""

    name = "picker"

    def pick(self, scored: Scored, req: RouteRequest, ctx: PickContext) -> Pick:
        """One of `scored.workers`, with the reason."""
        raise NotImplementedError


def apply_filters(filters: Sequence[Filter], workers: Sequence[WorkerState], req: RouteRequest,
                  ctx: PickContext) -> Sequence[WorkerState]:
    """Run the filters in order; stops early once nothing is left."""
    pool = workers
    for f in filters:
        if not pool:
            break
        pool = f.apply(pool, req, ctx)
    return pool


@dataclass
class Chain:
    """A strategy: filters, then an optional scorer, then a picker."""

    name: str
    filters: tuple[Filter, ...]
    scorer: Scorer | None
    picker: Picker

    def candidates(self, workers: Sequence[WorkerState], req: RouteRequest, ctx: PickContext,
                   extra: Sequence[Filter] = ()) -> Sequence[WorkerState]:
        """The workers this chain's filters (then `extra`) let through."""
        return apply_filters((*self.filters, *extra) if extra else self.filters, workers, req, ctx)

    def pick(self, candidates: Sequence[WorkerState], req: RouteRequest, ctx: PickContext) -> Pick:
        """Score the (already filtered, never empty) candidates and pick one."""
        scored = self.scorer.score(candidates, req, ctx) if self.scorer is not None else Scored(candidates)
        chosen = self.picker.pick(scored, req, ctx)
        if self.scorer is not None:
            self.scorer.chosen(chosen.worker, req, ctx)
        return chosen


def least_recently_chosen(candidates: Sequence[WorkerState]) -> WorkerState:
    """The candidate chosen longest ago; over repeated picks this is round-robin order."""
    return min(candidates, key=lambda w: w.last_chosen_seq)
