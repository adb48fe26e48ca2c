"""The router: roles, PD pairing with group affinity, load reservation, feedback and release."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from flexlb.balancer.health import OutlierConfig, OutlierDetector, usable
from flexlb.balancer.prefix_index import PrefixIndex
from flexlb.balancer.request import Decision, Deploy, NoWorkerAvailable, Pick, RouteRequest
from flexlb.balancer.strategies.base import PickContext, Strategy
from flexlb.balancer.ttft import TtftModel, TtftPriors
from flexlb.balancer.workers import Cluster, Role, WorkerState


class Lease:
    """Load reserved for one call; `release()` gives it back exactly once, however often it is called."""

    __slots__ = ("_first_token_seen", "_released", "_router", "_workers", "active_tokens", "decision", "seq")

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

    @property
    def released(self) -> bool:
        """Whether the load has been given back."""
        return self._released

    def first_token(self, observed_ttft_ms: float, prefill_ms: float | None = None,
                    uncached_tokens: int | None = None, cached_tokens: int | None = None) -> None:
        """The first response message arrived: the prefill is done; learn from what was observed."""
        if self._first_token_seen or self._released:
            return
        self._first_token_seen = True
        self._router.on_first_token(self, observed_ttft_ms, prefill_ms, uncached_tokens, cached_tokens)

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

    def route(self, req: RouteRequest, pair: bool = True) -> Lease:
        """Decide and reserve load; raises NoWorkerAvailable when a needed role has no candidate.

        In a disaggregated deployment `pair=False` picks a lone PREFILL worker (calls the
        engine serves without PD hand-off, e.g. BatchGenerateCall).
        """
        now = self._clock()
        matched = self.index.match(req.block_keys) if self.index is not None and req.block_keys else {}
        ctx = PickContext(rng=self._rng, now_s=now, matched_blocks=matched, ttft=self.ttft)
        if self.deploy is Deploy.DISAGGREGATED and pair:
            return self._route_pd(req, ctx)
        role = Role.PDFUSION if self.deploy is Deploy.PD_FUSION else Role.PREFILL
        candidates = _available(self.cluster.of_role(role), req.exclude, now, self.max_in_flight_per_worker)
        if not candidates:
            raise self._none_left(role, req, now)
        return self._commit(req, ctx, self.prefill_strategy.pick(candidates, req, ctx), None)

    def route_to(self, req: RouteRequest, target_key: str, decode_key: str | None) -> Lease:
        """Reserve load for a choice made elsewhere (the elected master); raises NoWorkerAvailable if
        the chosen workers are unknown here or out of rotation (the caller then decides itself)."""
        now = self._clock()
        target = self.cluster.get(target_key)
        decode = self.cluster.get(decode_key) if decode_key else None
        if target is None or not usable(target, now) or (decode_key and (decode is None or not usable(decode, now))):
            raise NoWorkerAvailable(target.role.name if target else "PREFILL", "the master's choice is not usable here")
        matched = self.index.match(req.block_keys) if self.index is not None and req.block_keys else {}
        ctx = PickContext(rng=self._rng, now_s=now, matched_blocks=matched, ttft=self.ttft)
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

    def _route_pd(self, req: RouteRequest, ctx: PickContext) -> Lease:
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
        return self._commit(req, ctx, prefill_pick, decode_pick)

    def _commit(self, req: RouteRequest, ctx: PickContext, pick: Pick, decode_pick: Pick | None) -> Lease:
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
        self.ttft.dispatched(target.key, self._seq, prefill_ms, ctx.now_s)
        if self.index is not None and req.block_keys:
            # speculative insert: the worker will hold these blocks once it has prefilled them
            self.index.record(target.key, req.block_keys, ctx.now_s)
        return Lease(decision, self, self._seq, req.prompt_tokens)

    def on_first_token(self, lease: Lease, observed_ttft_ms: float, prefill_ms: float | None,
                       uncached_tokens: int | None, cached_tokens: int | None) -> None:
        """Feedback from the first response message of a call."""
        d = lease.decision
        now = self._clock()
        self.ttft.started_or_gone(d.target.key, lease.seq, now)
        if prefill_ms is not None and uncached_tokens is not None and cached_tokens is not None:
            self.ttft.observe(d.target.key, uncached_tokens, cached_tokens, prefill_ms, d.estimate_ms,
                              observed_ttft_ms)
        else:
            self.ttft.observe(d.target.key, 0, 0, float("nan"), d.estimate_ms, observed_ttft_ms)

    def on_gone(self, lease: Lease) -> None:
        """A call ended before its first token: its prefill leaves the backlog."""
        self.ttft.started_or_gone(lease.decision.target.key, lease.seq, self._clock())

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
