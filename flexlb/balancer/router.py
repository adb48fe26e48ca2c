"""The router: roles, PD pairing with group affinity, load reservation, feedback and release."""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections import deque
from collections.abc import Callable, Sequence

from flexlb.balancer.health import OutlierConfig, OutlierDetector, usable
from flexlb.balancer.prefill_queue import PrefillQueue, PrefillQueueConfig
from flexlb.balancer.prefix_index import PrefixIndex
from flexlb.balancer.request import Decision, Deploy, NoWorkerAvailable, Pick, RouteRequest
from flexlb.balancer.strategies.base import PickContext, Strategy
from flexlb.balancer.strategies.cost import waiting_k
from flexlb.balancer.ttft import TtftModel, TtftPriors
from flexlb.balancer.workers import Cluster, Role, WorkerState


class Lease:
    """Load reserved for one call; `release()` gives it back exactly once, however often it is called."""

    __slots__ = ("_first_token_seen", "_released", "_router", "_workers", "active_tokens", "decision", "evicted",
                 "held", "moved", "seq")

    def __init__(self, decision: Decision, router: Router, seq: int, active_tokens: int) -> None:
        self.decision = decision
        self.seq = seq
        self.active_tokens = active_tokens
        self._router = router
        self._workers: tuple[WorkerState, ...] = (
            (decision.target,) if decision.decode is None else (decision.target, decision.decode)
        )
        for w in self._workers:
            w.in_flight += 1
            w.active_tokens += active_tokens
            w.dispatched_total += 1
        self._released = False
        self._first_token_seen = False
        # in the gateway's prefill queue: routed, not yet sent (the router calls on_release when it may go)
        self.held = False
        # taken out of the queue because its worker went away: release it and route the call again
        self.evicted = False
        # taken over while held by an idle worker from a busier one's queue: decision.target changed
        self.moved = False

    @property
    def released(self) -> bool:
        """Whether the load has been given back."""
        return self._released

    def first_token(self, observed_ttft_ms: float, prefill_ms: float | None = None,
                    uncached_tokens: int | None = None, cached_tokens: int | None = None,
                    engine_ms: float | None = None) -> None:
        """The first response message arrived: the prefill is done; learn from what was observed
        (`engine_ms`: the engine's own time to first token, its queueing included)."""
        if self._first_token_seen or self._released:
            return
        self._first_token_seen = True
        self._router.on_first_token(self, observed_ttft_ms, prefill_ms, uncached_tokens, cached_tokens, engine_ms)

    def release(self) -> bool:
        """Give the reserved load back; returns False if it was already released."""
        if self._released:
            return False
        self._released = True
        for w in self._workers:
            w.in_flight -= 1
            w.active_tokens -= self.active_tokens
        if not self._first_token_seen:
            self._router.on_gone(self)
        return True


def _available(workers: Sequence[WorkerState], exclude: frozenset[str], now_s: float,
               cap: int = 0) -> Sequence[WorkerState]:
    """Drop excluded workers, then those out of rotation unless that would drop all (fail open),
    then those at the per-worker in-flight cap (never fail open: that is admission control)."""
    allowed = [w for w in workers if w.key not in exclude] if exclude else workers
    healthy = [w for w in allowed if usable(w, now_s)]
    pool = allowed if len(healthy) == len(allowed) else (healthy or allowed)
    if cap > 0:
        pool = [w for w in pool if w.in_flight < cap]
    return pool


class Router:
    """Chooses the worker(s) for a call. Pure: the clock and the RNG are injected."""

    def __init__(
        self,
        cluster: Cluster,
        deploy: Deploy,
        prefill_strategy: Strategy,
        decode_strategy: Strategy,
        rng: random.Random,
        clock: Callable[[], float],
        ttft: TtftModel | None = None,
        index: PrefixIndex | None = None,
        outliers: OutlierDetector | None = None,
        queue: PrefillQueueConfig | None = None,
    ) -> None:
        self.cluster = cluster
        self.deploy = deploy
        self.prefill_strategy = prefill_strategy
        self.decode_strategy = decode_strategy
        self.ttft = ttft or TtftModel(TtftPriors())
        # LOCAL_STATIC / LOCAL_SYNC prefix index; None when kvCache is NONE
        self.index = index
        self.outliers = outliers or OutlierDetector(OutlierConfig())
        self.max_in_flight_per_worker = 0  # admission cap per worker (0: none)
        self._rng = rng
        self._clock = clock
        self._seq = 0
        # prefillQueueDepth: calls wait here for a free prefill slot on their worker (depth 0: off)
        self.queue = PrefillQueue(queue or PrefillQueueConfig(depth=0))
        # held calls, and what each asked for (should another worker take it over)
        self._held: dict[int, tuple[Lease, RouteRequest]] = {}
        # set by the owner (gateway or simulator): a held call may now go to its worker / must be re-routed
        self.on_release: Callable[[Lease], None] | None = None
        self.on_evict: Callable[[Lease], None] | None = None
        self._notices: deque[Lease] = deque()
        self._notifying = False

    def _context(self, req: RouteRequest, now: float) -> PickContext:
        matched = self.index.match(req.block_keys) if self.index is not None and req.block_keys else {}
        return PickContext(rng=self._rng, now_s=now, matched_blocks=matched, ttft=self.ttft,
                           queue=self.queue if self.queue.config.enabled else None)

    def route(self, req: RouteRequest, pair: bool = True, hold: bool = False) -> Lease:
        """Decide and reserve load; raises NoWorkerAvailable when a needed role has no candidate.

        In a disaggregated deployment `pair=False` picks a lone PREFILL worker (calls the
        engine serves without PD hand-off, e.g. BatchGenerateCall). With `hold` and the prefill
        queue on, the lease may come back `held`: send the call only once on_release has it.
        """
        now = self._clock()
        ctx = self._context(req, now)
        if self.deploy is Deploy.DISAGGREGATED and pair:
            return self._route_pd(req, ctx, hold)
        role = Role.PDFUSION if self.deploy is Deploy.PD_FUSION else Role.PREFILL
        candidates = _available(self.cluster.of_role(role), req.exclude, now, self.max_in_flight_per_worker)
        if not candidates:
            raise self._none_left(role, req, now)
        return self._commit(req, ctx, self.prefill_strategy.pick(candidates, req, ctx), None, hold)

    def route_to(self, req: RouteRequest, target_key: str, decode_key: str | None) -> Lease:
        """Reserve load for a choice made elsewhere (the elected master); raises NoWorkerAvailable if
        the chosen workers are unknown here or out of rotation (the caller then decides itself)."""
        now = self._clock()
        target = self.cluster.get(target_key)
        decode = self.cluster.get(decode_key) if decode_key else None
        if target is None or not usable(target, now) or (decode_key and (decode is None or not usable(decode, now))):
            raise NoWorkerAvailable(target.role.name if target else "PREFILL", "the master's choice is not usable here")
        ctx = self._context(req, now)
        return self._commit(req, ctx, Pick(target, "master"), Pick(decode, "master") if decode else None)

    def expected_uncached_tokens(self, req: RouteRequest) -> int:
        """Prompt tokens no worker is known to hold: the prefill this request costs at best."""
        if self.index is None or not req.block_keys:
            return req.prompt_tokens
        best = max(self.index.match(req.block_keys).values(), default=0)
        return req.prompt_tokens - min(best * req.block_size_tokens, max(req.prompt_tokens - 1, 0))

    def can_route(self) -> bool:
        """Whether every role this deployment needs has a healthy worker."""
        roles = (Role.PDFUSION,) if self.deploy is Deploy.PD_FUSION else (Role.PREFILL, Role.DECODE)
        now = self._clock()
        return all(any(usable(w, now) for w in self.cluster.of_role(r)) for r in roles)

    def _route_pd(self, req: RouteRequest, ctx: PickContext, hold: bool) -> Lease:
        decodes = _available(self.cluster.of_role(Role.DECODE), req.exclude, ctx.now_s, self.max_in_flight_per_worker)
        if not decodes:
            raise self._none_left(Role.DECODE, req, ctx.now_s)
        # group affinity: a prefill can only hand its KV cache to a decode of its own group
        decode_groups = {w.addr.group for w in decodes}
        prefills = _available(self.cluster.of_role(Role.PREFILL), req.exclude, ctx.now_s,
                              self.max_in_flight_per_worker)
        if decode_groups != {""}:
            prefills = [w for w in prefills if w.addr.group in decode_groups]
        if not prefills:
            raise self._none_left(Role.PREFILL, req, ctx.now_s)
        prefill_pick = self.prefill_strategy.pick(prefills, req, ctx)
        group = prefill_pick.worker.addr.group
        same_group = decodes if decode_groups == {group} else [w for w in decodes if w.addr.group == group]
        decode_pick = self.decode_strategy.pick(same_group, req, ctx)
        return self._commit(req, ctx, prefill_pick, decode_pick, hold)

    def _commit(self, req: RouteRequest, ctx: PickContext, pick: Pick, decode_pick: Pick | None,
                hold: bool = False) -> Lease:
        self._seq += 1
        target = pick.worker
        target.last_chosen_seq = self._seq
        reason = pick.reason
        strategy = self.prefill_strategy.name
        if decode_pick is not None:
            decode_pick.worker.last_chosen_seq = self._seq
            reason = f"{pick.reason}+{decode_pick.reason}"
            strategy = f"{strategy}+{self.decode_strategy.name}"
        cached = ctx.cached_tokens(req, target)
        # the prefill worker's backlog holds its own compute only; a PD KV transfer runs beside it
        ttft_ms, _, prefill_ms = self.ttft.estimate_ms(target.key, req.prompt_tokens - cached, cached, ctx.now_s)
        transit_ms = self.ttft.worker(target.key).transit_ms
        ttft_ms += transit_ms
        # with the queue on the worker gets one call at a time: its slot stays taken for the hops too
        work_ms = prefill_ms + transit_ms if self.queue.config.enabled else prefill_ms
        held = hold and self.prefill_strategy.holds and self._must_hold(target.key)
        if held:
            ttft_ms += self.queue.ahead(target.key, work_ms, ctx.now_s)[0]
        if decode_pick is not None:
            ttft_ms += self.ttft.priors.kv_transfer_ms_per_token * req.prompt_tokens
        decision = Decision(
            target=target,
            decode=decode_pick.worker if decode_pick else None,
            strategy=strategy,
            reason=reason,
            estimate_ms=ttft_ms,
            cached_tokens=cached,
            prefill_ms=prefill_ms,
        )
        if self.index is not None and req.block_keys:
            # speculative insert: the worker will hold these blocks once it has prefilled them
            self.index.record(target.key, req.block_keys, ctx.now_s)
        lease = Lease(decision, self, self._seq, req.prompt_tokens)
        if held:
            lease.held = True
            self._held[lease.seq] = (lease, req)
            self.queue.push(target.key, lease.seq, work_ms, ctx.now_s, req.client)
        else:
            self.ttft.dispatched(target.key, self._seq, work_ms, ctx.now_s)
        return lease

    # ------------------------------------------------------------ prefill queue

    def _must_hold(self, key: str) -> bool:
        """Hold when the worker's prefill slots are taken, or others already wait for them (keep order)."""
        return self.queue.holds(key, len(self.ttft.worker(key).pending))

    def _slot_free(self, key: str, now_s: float) -> bool:
        """Whether the worker can take one more call now (fewer than `depth` sent and not yet past
        their first token)."""
        return len(self.ttft.worker(key).pending) < self.queue.config.depth

    def held_calls(self) -> int:
        """Calls waiting in the prefill queue."""
        return len(self.queue)

    def _release_next(self, key: str, now_s: float) -> None:
        """Fill the worker's free prefill slots from its queue (or hand them back if it is unusable)."""
        w = self.cluster.get(key)
        if w is None or (not usable(w, now_s) and self._others_usable(w, now_s)):
            self._evict(key)
            return
        while self.queue.held(key) and self._slot_free(key, now_s):
            call = self.queue.pop(key)
            assert call is not None
            self._release(call.seq, call.prefill_ms, now_s)
        if usable(w, now_s):
            self._steal_into(w, now_s, {})

    def _steal_into(self, w: WorkerState, now_s: float, matches: dict[int, dict[str, int]]) -> None:
        """A worker with free slots and nothing of its own held takes calls held for busier workers,
        while moving one gains (a queue must not leave a worker idle that could serve a waiting call)."""
        while len(self.queue) and self._slot_free(w.key, now_s) and self._steal(w, now_s, matches):
            pass

    _STEAL_LOOK = 4  # held calls per busy worker considered for stealing
    _STEAL_FROM = 8  # busy workers considered (those holding the most calls)
    _STEAL_IDLE = 16  # idle workers that look for calls per upkeep pass
    _STEAL_BAND_MS = 5.0

    def _steal(self, w: WorkerState, now_s: float, matches: dict[int, dict[str, int]]) -> bool:
        """Move the held call that gains most by going to `w` now; False if none gains.

        Only calls that `w` can serve with at least the cached prefix they expect where they are
        held; gain as COST_BASED_PREFILL counts it: (wait + prefill x (1 + k)) where it is held,
        minus the same on `w`.
        """
        cap = self.max_in_flight_per_worker
        if cap and w.in_flight >= cap:
            return False
        model = self.ttft
        mine = model.worker(w.key)
        wait_w = mine.queue_wait_ms(now_s)
        k = waiting_k(model, self.queue, len(self.cluster.of_role(w.role)))
        best: tuple[float, int, float, int] | None = None
        busiest = heapq.nlargest(self._STEAL_FROM, self.queue.workers(), key=self.queue.held)
        for v in busiest:
            if v == w.key:
                continue
            waited = model.worker(v).queue_wait_ms(now_s)
            for call in self.queue.first(v, self._STEAL_LOOK):
                lease, req = self._held[call.seq]
                d = lease.decision
                if w.key in req.exclude or w.role is not d.target.role:
                    continue
                if d.decode is not None and d.decode.addr.group != w.addr.group:
                    continue
                if call.seq not in matches:
                    matches[call.seq] = self.index.match(req.block_keys) if self.index and req.block_keys else {}
                matched = matches[call.seq].get(w.key, 0)
                cached = min(matched * req.block_size_tokens, max(req.prompt_tokens - 1, 0))
                if cached < d.cached_tokens:
                    continue  # never trade a cached prefix for an earlier start: the work it saves is everyone's
                work_w = mine.slot_ms(req.prompt_tokens - cached, cached)
                gain = (waited + self.queue.before(call.seq) + call.prefill_ms * (1.0 + k)) - (
                    wait_w + work_w * (1.0 + k))
                if gain > self._STEAL_BAND_MS and (best is None or gain > best[0]):
                    best = (gain, call.seq, work_w, cached)
        if best is None:
            return False
        _, seq, work_w, cached = best
        self.queue.remove(seq)
        lease, req = self._held[seq]
        old = lease.decision.target
        old.in_flight -= 1
        old.active_tokens -= lease.active_tokens
        w.in_flight += 1
        w.active_tokens += lease.active_tokens
        w.dispatched_total += 1
        w.last_chosen_seq = seq
        d = lease.decision
        lease.decision = dataclasses.replace(d, target=w, reason=f"{d.reason}+moved", cached_tokens=cached,
                                             prefill_ms=work_w - mine.transit_ms, estimate_ms=wait_w + work_w)
        lease._workers = (w,) if d.decode is None else (w, d.decode)
        lease.moved = True
        if self.index is not None and req.block_keys:
            # the blocks recorded for it where it was held, beyond what was already there, will not be
            held_blocks = -(-d.cached_tokens // max(req.block_size_tokens, 1))  # a full hit is clamped by a token
            self.index.forget(old.key, req.block_keys[held_blocks:])
            self.index.record(w.key, req.block_keys, now_s)
        self._release(seq, work_w, now_s)
        return True

    def _others_usable(self, w: WorkerState, now_s: float) -> bool:
        """Whether a call held for `w` could go elsewhere (routing fails open when none can)."""
        return any(x is not w and usable(x, now_s) for x in self.cluster.of_role(w.role))

    def _release(self, seq: int, prefill_ms: float, now_s: float) -> None:
        lease, _ = self._held.pop(seq)
        lease.held = False
        self.ttft.dispatched(lease.decision.target.key, seq, prefill_ms, now_s)
        self._notify(lease)

    def _evict(self, key: str) -> None:
        for call in self.queue.take_all(key):
            lease, _ = self._held.pop(call.seq)
            lease.held = False
            lease.evicted = True
            self._notify(lease)

    def _notify(self, lease: Lease) -> None:
        # callbacks may end calls, which frees slots and releases more: queue them, never recurse
        self._notices.append(lease)
        if self._notifying:
            return
        self._notifying = True
        try:
            while self._notices:
                item = self._notices.popleft()
                callback = self.on_evict if item.evicted else self.on_release
                if callback is not None:
                    callback(item)
        finally:
            self._notifying = False

    def maintain(self) -> None:
        """Periodic upkeep: release calls held past max_hold_ms, hand back those of unusable workers,
        and fill any free slot (a safety net; releases normally happen on first tokens)."""
        now = self._clock()
        for key in self.queue.workers():
            self._release_next(key, now)
        for call in self.queue.overdue(now):
            self.queue.remove(call.seq)
            self._release(call.seq, call.prefill_ms, now)
        # a worker that went idle hears of no first token: let the idle ones look for waiting calls now
        if len(self.queue):
            idle = [w for w in self.cluster.all() if w.role is not Role.DECODE and not self.queue.held(w.key)
                    and self._slot_free(w.key, now) and usable(w, now)]
            matches: dict[int, dict[str, int]] = {}
            for w in heapq.nsmallest(self._STEAL_IDLE, idle, key=lambda x: x.in_flight):
                self._steal_into(w, now, matches)

    def evict_held(self, key: str) -> None:
        """The worker was ejected or removed: every call held for it goes back for re-routing
        (unless no other worker could take them: routing fails open then, and so does the queue)."""
        w = self.cluster.get(key)
        if w is None or self._others_usable(w, self._clock()):
            self._evict(key)

    def on_first_token(self, lease: Lease, observed_ttft_ms: float, prefill_ms: float | None,
                       uncached_tokens: int | None, cached_tokens: int | None, engine_ms: float | None = None) -> None:
        """Feedback from the first response message of a call."""
        d = lease.decision
        now = self._clock()
        sent_s = self.ttft.started_or_gone(d.target.key, lease.seq, now)
        if sent_s is not None and engine_ms is not None:
            self.ttft.observe_transit(d.target.key, (now - sent_s) * 1000.0 - engine_ms)
        if prefill_ms is not None and uncached_tokens is not None and cached_tokens is not None:
            self.ttft.observe(d.target.key, uncached_tokens, cached_tokens, prefill_ms, d.estimate_ms,
                              observed_ttft_ms)
        else:
            self.ttft.observe(d.target.key, 0, 0, float("nan"), d.estimate_ms, observed_ttft_ms)
        if len(self.queue):
            self._release_next(d.target.key, now)

    def on_gone(self, lease: Lease) -> None:
        """A call ended before its first token: its prefill leaves the backlog (or the queue)."""
        key = lease.decision.target.key
        if lease.held:
            lease.held = False
            self._held.pop(lease.seq, None)
            self.queue.remove(lease.seq)
            return
        now = self._clock()
        self.ttft.started_or_gone(key, lease.seq, now)
        if len(self.queue):
            self._release_next(key, now)

    def worker_succeeded(self, worker: WorkerState) -> None:
        """A call reached the worker and got a response (passive health)."""
        self.outliers.success(worker)

    def worker_failed(self, worker: WorkerState) -> bool:
        """A call failed because of the worker (passive health); True if it was ejected."""
        return self.outliers.failure(worker, self.cluster.of_role(worker.role), self._clock())

    def _none_left(self, role: Role, req: RouteRequest, now_s: float) -> NoWorkerAvailable:
        cap = self.max_in_flight_per_worker
        if cap > 0 and _available(self.cluster.of_role(role), req.exclude, now_s):
            return NoWorkerAvailable(role.name, f"every worker is at its in-flight cap ({cap})", saturated=True)
        return NoWorkerAvailable(role.name, self._why_empty(role, req))

    def _why_empty(self, role: Role, req: RouteRequest) -> str:
        total = len(self.cluster.of_role(role))
        if total == 0:
            return "none configured"
        return f"all {total} excluded for this call" if req.exclude else "none usable"
