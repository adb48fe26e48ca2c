"""Scorers and pickers of the cost strategies for the prefill (or fused) choice: estimated TTFT, cache
affinity, and both.

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

from flexlb.balancer.prefill_queue import PrefillQueue
from flexlb.balancer.request import Pick, RouteRequest
from flexlb.balancer.strategies.base import Estimate, PickContext, Picker, Scored, Scorer, least_recently_chosen
from flexlb.balancer.ttft import TtftModel
from flexlb.balancer.workers import Role, WorkerState

_SHORTLIST_ABOVE = 32  # pools larger than this are scored on a shortlist
_SHORTLIST_LEAST_WAIT = 16


_TYPICAL_PROMPT_TOKENS = 1024  # the shortlist ranks waits before the request's own prefill is estimated


def _shortlist(candidates: Sequence[WorkerState], ctx: PickContext) -> Sequence[WorkerState]:
    """Every worker holding part of the prompt plus the least-waiting others; the rest cannot win.

    Workers without a cached prefix differ only in their wait (their prefill estimates are alike),
    so beyond the K least-waiting ones none can have the lowest cost. Keeps decisions O(N) in a
    cheap pass instead of a full cost evaluation per worker, for pools of hundreds of workers.
    """
    if len(candidates) <= _SHORTLIST_ABOVE:
        return candidates
    matched = ctx.matched_blocks
    queue = ctx.queue
    untracked = any(w.untracked_waiting for w in candidates)
    if not ctx.ttft.total_pending and (queue is None or not len(queue)) and not untracked:
        # nothing sent is waiting anywhere (e.g. Schedule decisions, whose load is not held here): every wait is
        # 0, so the order is last chosen, then position, without a wait lookup per worker
        # (a stable C sort by key: ties stay in position order; a third of heapq.nsmallest's time over 750)
        seqs = [w.last_chosen_seq for w in candidates]
        others = [i for i, w in enumerate(candidates) if w.key not in matched] if matched else range(len(seqs))
        idle = sorted(others, key=seqs.__getitem__)[:_SHORTLIST_LEAST_WAIT]
        return [w for w in candidates if w.key in matched] + [candidates[i] for i in idle]
    workers = ctx.ttft.workers()
    now = ctx.now_s
    waits = []
    holders = []
    for i, w in enumerate(candidates):
        if w.key in matched:
            holders.append(w)
            continue
        m = workers.get(w.key)
        wait = m.queue_wait_ms(now) if m is not None and m.pending else 0.0
        if w.untracked_waiting:
            # other senders' requests the worker reports waiting: as estimates() prices them, for a typical prompt
            wait += w.untracked_waiting * ctx.ttft.worker(w.key).prefill_ms(_TYPICAL_PROMPT_TOKENS, 0)
        if queue is not None and queue.held(w.key):
            wait += queue.held_ms(w.key)
        waits.append((wait, w.last_chosen_seq, i))
    least = heapq.nsmallest(_SHORTLIST_LEAST_WAIT, waits)
    return holders + [candidates[i] for _, _, i in least]


def estimates(candidates: Sequence[WorkerState], req: RouteRequest, ctx: PickContext) -> list[Estimate]:
    """Cached prefix, wait and prefill of the request on each candidate that can win (a shortlist of large pools).

    The wait is the prefills sent there and not yet done, plus, with the gateway's prefill queue on, the
    held calls that would leave before this one, plus the requests of other senders the worker reports waiting.
    """
    queue = ctx.queue
    out = []
    for w in _shortlist(candidates, ctx):
        cached = ctx.cached_tokens(req, w)
        m = ctx.ttft.worker(w.key)
        wait = m.queue_wait_ms(ctx.now_s)
        uncached = req.prompt_tokens - cached
        if queue is not None:
            prefill = m.slot_ms(uncached, cached)  # one call at a time: the slot is taken for the hops too
        else:
            prefill = m.prefill_ms(uncached, cached)
            wait += m.transit_ms
        if w.untracked_waiting:
            # requests of other senders the engine reported waiting (GetWorkerStatus): each costs about a prompt
            # of this size without cache (0, and no change, while this gateway is the worker's only sender)
            wait += w.untracked_waiting * m.prefill_ms(req.prompt_tokens, 0)
        overtakes = 0
        if queue is not None and queue.holds(w.key, len(m.pending), m.pending_tokens, uncached, w.max_batch_tokens,
                                             wait):
            ahead_ms, overtakes = queue.ahead(w.key, prefill, ctx.now_s)
            wait += ahead_ms
        out.append(Estimate(w, cached, wait, prefill, overtakes))
    return out


def waiting_k(model: TtftModel, queue: PrefillQueue | None, workers: int, weight: float = 0.5,
              max_k: float = 16.0) -> float:
    """COST_BASED_PREFILL's k: the calls waiting per worker (sent and not past their first token,
    or held), weighted, capped."""
    waiting = model.total_pending + (len(queue) if queue is not None else 0)
    return min(max_k, weight * waiting / max(workers, 1))


class EstimateScorer(Scorer):
    """The TTFT facts per candidate, for pickers with rules of their own (no single cost)."""

    name = "estimate"

    def score(self, candidates: Sequence[WorkerState], req: RouteRequest, ctx: PickContext) -> Scored:
        """Estimates of the candidates that can win."""
        est = estimates(candidates, req, ctx)
        return Scored([e.worker for e in est], estimates=est)


class TtftScorer(Scorer):
    """Cost: estimated TTFT (queue wait + prefill of the uncached part)."""

    name = "ttft"

    def score(self, candidates: Sequence[WorkerState], req: RouteRequest, ctx: PickContext) -> Scored:
        """Estimated TTFT per candidate."""
        est = estimates(candidates, req, ctx)
        return Scored([e.worker for e in est], [e.ttft_ms for e in est], est)


def decoding_sequences(w: WorkerState, ctx: PickContext) -> int:
    """Calls past their first token on a fused batching worker: they decode in the same iterations as any
    prefill sent there (0 for a prefill-only or a one-at-a-time worker, whose prefill delays no decode)."""
    if w.max_batch_tokens <= 0 or w.role is not Role.PDFUSION:
        return 0
    return max(0, w.in_flight - len(ctx.ttft.worker(w.key).pending))


class LoadWeightedCostScorer(Scorer):
    """Cost: TTFT plus the delay this request's prefill imposes on the calls queued behind it.

    cost = wait + prefill · (1 + k + overtaken + d · decoding), k = half the calls waiting per worker right
    now, overtaken = held calls this one would leave before, decoding = the sequences a fused batching
    worker is decoding (each waits out this prefill in the same iterations), weighted d = 0.2: TTFT is
    what the cost minimizes, a token's delay counts less. Idle cluster: k = 0, the fastest first
    token wins. Under load, prefill time is paid again by the calls that queue behind it, so work
    saved by a cache hit counts more and affinity is kept instead of spreading prompts away from
    the workers that hold their prefix. Half, because with the prefill queue later shorter calls
    overtake this one instead of waiting behind it (the ones it overtakes are counted exactly).
    """

    name = "load_weighted_cost"

    def __init__(self, max_k: float = 16.0, waiting_weight: float = 0.5, decoding_weight: float = 0.2) -> None:
        self.max_k = max_k
        self.waiting_weight = waiting_weight
        # live, without it the default served 0.7-0.9x round-robin's calls/s at 32-128 concurrent calls on
        # fused batching workers: prefill piled onto cached workers slowed their decodes
        self.decoding_weight = decoding_weight

    def score(self, candidates: Sequence[WorkerState], req: RouteRequest, ctx: PickContext) -> Scored:
        """Load-weighted TTFT cost per candidate (k counts all candidates, not just the shortlist)."""
        est = estimates(candidates, req, ctx)
        k = waiting_k(ctx.ttft, ctx.queue, len(candidates), self.waiting_weight, self.max_k)
        return Scored([e.worker for e in est],
                      [e.wait_ms + e.prefill_ms * (1.0 + k + e.overtakes
                                                   + self.decoding_weight * decoding_sequences(e.worker, ctx))
                       for e in est], est)


class CacheAffinityPicker(Picker):
    """Longest cached prefix among the workers that are not overloaded; never abandons affinity.

    A worker is overloaded when its wait exceeds the least-loaded one's by more than `guard_ms`;
    affinity is then kept among the rest instead of falling back to pure load.
    """

    name = "cache_affinity"

    def __init__(self, guard_ms: float = 2_000.0) -> None:
        self.guard_ms = guard_ms

    def pick(self, scored: Scored, req: RouteRequest, ctx: PickContext) -> Pick:
        """Most reuse within the load guard; least wait among equals."""
        options = scored.estimates
        assert options is not None, "CacheAffinityPicker needs TTFT estimates"
        floor = min(o.wait_ms for o in options)
        fit = [o for o in options if o.wait_ms <= floor + self.guard_ms]
        most = max(o.cached_tokens for o in fit)
        if most == 0:
            best = min(o.wait_ms for o in fit)
            least = [o for o in fit if o.wait_ms <= best + 1.0]
            w = least_recently_chosen([o.worker for o in least])
            chosen = next(o for o in least if o.worker is w)
            return Pick(chosen.worker, "cache_miss_least_loaded", chosen.ttft_ms)
        holders = [o for o in fit if o.cached_tokens == most]
        chosen = min(holders, key=lambda o: (o.wait_ms, o.worker.last_chosen_seq))
        reason = "cache_hit" if len(fit) == len(options) else "cache_hit_load_guarded"
        return Pick(chosen.worker, reason, chosen.ttft_ms)
