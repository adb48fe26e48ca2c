"""Cost strategies for the prefill (or fused) choice: estimated TTFT, cache affinity, and both.

All of them read the same facts per worker: the prefix the index expects it to reuse, the TTFT
model's prefill estimate, and the wait: the prefills already sent there and not yet done, plus,
with the gateway's prefill queue on, the held calls that would leave before this one (the queue
lets short prefills overtake long ones, so a short call waits less than the whole backlog).
Near-ties are broken by least recently chosen, with the band measured on the prefill part in
absolute ms (a band relative to long queues would make overload worse).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from flexlb.balancer.prefill_queue import PrefillQueue
from flexlb.balancer.request import Pick, RouteRequest
from flexlb.balancer.strategies.base import PickContext, least_recently_chosen
from flexlb.balancer.ttft import TtftModel, TtftPriors
from flexlb.balancer.workers import WorkerState

_FALLBACK_MODEL = TtftModel(TtftPriors())


@dataclass(frozen=True)
class _Option:
    worker: WorkerState
    cached_tokens: int
    wait_ms: float
    prefill_ms: float
    overtakes: int = 0  # held calls this one would leave before (each then waits its prefill longer)

    @property
    def ttft_ms(self) -> float:
        return self.wait_ms + self.prefill_ms


_SHORTLIST_ABOVE = 32  # pools larger than this are scored on a shortlist
_SHORTLIST_LEAST_WAIT = 16


def _shortlist(candidates: Sequence[WorkerState], ctx: PickContext, model: TtftModel) -> Sequence[WorkerState]:
    """Every worker holding part of the prompt plus the least-waiting others; the rest cannot win.

    Workers without a cached prefix differ only in their wait (their prefill estimates are alike),
    so beyond the K least-waiting ones none can have the lowest cost. Keeps decisions O(N) in a
    cheap pass instead of a full cost evaluation per worker, for pools of hundreds of workers.
    """
    if len(candidates) <= _SHORTLIST_ABOVE:
        return candidates
    matched = ctx.matched_blocks
    workers = model.workers()
    now = ctx.now_s
    queue = ctx.queue
    waits = []
    holders = []
    for i, w in enumerate(candidates):
        if w.key in matched:
            holders.append(w)
            continue
        m = workers.get(w.key)
        wait = m.queue_wait_ms(now) if m is not None and m.pending else 0.0
        if queue is not None and queue.held(w.key):
            wait += queue.held_ms(w.key)
        waits.append((wait, w.last_chosen_seq, i))
    least = heapq.nsmallest(_SHORTLIST_LEAST_WAIT, waits)
    return holders + [candidates[i] for _, _, i in least]


def _options(candidates: Sequence[WorkerState], req: RouteRequest, ctx: PickContext) -> list[_Option]:
    model = ctx.ttft or _FALLBACK_MODEL
    candidates = _shortlist(candidates, ctx, model)
    queue = ctx.queue
    out = []
    for w in candidates:
        cached = ctx.cached_tokens(req, w)
        m = model.worker(w.key)
        wait = m.queue_wait_ms(ctx.now_s)
        uncached = req.prompt_tokens - cached
        if queue is not None:
            prefill = m.slot_ms(uncached, cached)  # one call at a time: the slot is taken for the hops too
        else:
            prefill = m.prefill_ms(uncached, cached)
            wait += m.transit_ms
        overtakes = 0
        if queue is not None and queue.holds(w.key, len(m.pending)):
            ahead_ms, overtakes = queue.ahead(w.key, prefill, ctx.now_s)
            wait += ahead_ms
        out.append(_Option(w, cached, wait, prefill, overtakes))
    return out


def _pick_min(options: list[_Option], cost: list[float], band_ms: float, reason: str) -> Pick:
    best = min(cost)
    near = [o for o, c in zip(options, cost, strict=True) if c <= best + band_ms]
    chosen = near[0] if len(near) == 1 else _least_recent(near)
    why = reason if len(near) == 1 else f"{reason}_tie"
    return Pick(chosen.worker, why, chosen.ttft_ms)


def _least_recent(options: list[_Option]) -> _Option:
    w = least_recently_chosen([o.worker for o in options])
    return next(o for o in options if o.worker is w)


def waiting_k(model: TtftModel, queue: PrefillQueue | None, workers: int, weight: float = 0.5,
              max_k: float = 16.0) -> float:
    """COST_BASED_PREFILL's k: the calls waiting per worker (sent and not past their first token,
    or held), weighted, capped."""
    waiting = model.total_pending + (len(queue) if queue is not None else 0)
    return min(max_k, weight * waiting / max(workers, 1))


class ShortestTtft:
    """Lowest estimated TTFT (queue wait + prefill of the uncached part)."""

    name = "SHORTEST_TTFT"
    holds = True

    def __init__(self, tie_band_ms: float = 5.0) -> None:
        self.tie_band_ms = tie_band_ms

    def pick(self, candidates: Sequence[WorkerState], req: RouteRequest, ctx: PickContext) -> Pick:
        """The worker where this request's first token comes soonest."""
        options = _options(candidates, req, ctx)
        return _pick_min(options, [o.ttft_ms for o in options], self.tie_band_ms, "shortest_ttft")


class CostBasedPrefill:
    """TTFT plus the delay this request's prefill imposes on the calls queued behind it.

    cost = wait + prefill · (1 + k + overtaken), k = half the calls waiting per worker right now,
    overtaken = held calls this one would leave before. Idle cluster: k = 0, the fastest first
    token wins. Under load, prefill time is paid again by the calls that queue behind it, so work
    saved by a cache hit counts more and affinity is kept instead of spreading prompts away from
    the workers that hold their prefix. Half, because with the prefill queue later shorter calls
    overtake this one instead of waiting behind it (the ones it overtakes are counted exactly).
    """

    name = "COST_BASED_PREFILL"
    holds = True

    def __init__(self, tie_band_ms: float = 5.0, max_k: float = 16.0, waiting_weight: float = 0.5) -> None:
        self.tie_band_ms = tie_band_ms
        self.max_k = max_k
        self.waiting_weight = waiting_weight

    def pick(self, candidates: Sequence[WorkerState], req: RouteRequest, ctx: PickContext) -> Pick:
        """The worker with the lowest load-weighted TTFT cost."""
        options = _options(candidates, req, ctx)
        model = ctx.ttft or _FALLBACK_MODEL
        k = waiting_k(model, ctx.queue, len(candidates), self.waiting_weight, self.max_k)
        cost = [o.wait_ms + o.prefill_ms * (1.0 + k + o.overtakes) for o in options]
        return _pick_min(options, cost, self.tie_band_ms, "cost")


class CacheAware:
    """Longest cached prefix among the workers that are not overloaded; never abandons affinity.

    A worker is overloaded when its backlog exceeds the least-loaded one's by more than
    `guard_ms`; affinity is then kept among the rest instead of falling back to pure load.
    """

    name = "CACHE_AWARE"
    holds = True

    def __init__(self, guard_ms: float = 2_000.0) -> None:
        self.guard_ms = guard_ms

    def pick(self, candidates: Sequence[WorkerState], req: RouteRequest, ctx: PickContext) -> Pick:
        """Most reuse within the load guard; least backlog among equals."""
        options = _options(candidates, req, ctx)
        floor = min(o.wait_ms for o in options)
        fit = [o for o in options if o.wait_ms <= floor + self.guard_ms]
        most = max(o.cached_tokens for o in fit)
        if most == 0:
            best = min(o.wait_ms for o in fit)
            least = [o for o in fit if o.wait_ms <= best + 1.0]
            chosen = _least_recent(least)
            return Pick(chosen.worker, "cache_miss_least_loaded", chosen.ttft_ms)
        holders = [o for o in fit if o.cached_tokens == most]
        chosen = min(holders, key=lambda o: (o.wait_ms, o.worker.last_chosen_seq))
        reason = "cache_hit" if len(fit) == len(options) else "cache_hit_load_guarded"
        return Pick(chosen.worker, reason, chosen.ttft_ms)
