"""The router: roles, PD pairing with group affinity, load reservation and its release."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from flexlb.balancer.request import Decision, Deploy, NoWorkerAvailable, Pick, RouteRequest
from flexlb.balancer.strategies.base import PickContext, Strategy
from flexlb.balancer.workers import Cluster, Role, WorkerState


class Lease:
    """Load reserved for one call; `release()` gives it back exactly once, however often it is called."""

    __slots__ = ("_released", "_workers", "decision")

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        self._workers: tuple[WorkerState, ...] = (
            (decision.target,) if decision.decode is None else (decision.target, decision.decode)
        )
        for w in self._workers:
            w.in_flight += 1
            w.dispatched_total += 1
        self._released = False

    @property
    def released(self) -> bool:
        """Whether the load has been given back."""
        return self._released

    def release(self) -> bool:
        """Give the reserved load back; returns False if it was already released."""
        if self._released:
            return False
        self._released = True
        for w in self._workers:
            w.in_flight -= 1
        return True


def _available(workers: Sequence[WorkerState], exclude: frozenset[str]) -> list[WorkerState]:
    """Drop excluded workers, then unhealthy ones unless that would drop all (fail open)."""
    allowed = [w for w in workers if w.key not in exclude]
    healthy = [w for w in allowed if w.healthy]
    return healthy or allowed


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
    ) -> None:
        self.cluster = cluster
        self.deploy = deploy
        self.prefill_strategy = prefill_strategy
        self.decode_strategy = decode_strategy
        self._rng = rng
        self._clock = clock
        self._seq = 0

    def route(self, req: RouteRequest, pair: bool = True) -> Lease:
        """Decide and reserve load; raises NoWorkerAvailable when a needed role has no candidate.

        In a disaggregated deployment `pair=False` picks a lone PREFILL worker (calls the
        engine serves without PD hand-off, e.g. BatchGenerateCall).
        """
        ctx = PickContext(rng=self._rng, now_s=self._clock())
        if self.deploy is Deploy.DISAGGREGATED and pair:
            return self._route_pd(req, ctx)
        role = Role.PDFUSION if self.deploy is Deploy.PD_FUSION else Role.PREFILL
        candidates = _available(self.cluster.of_role(role), req.exclude)
        if not candidates:
            raise NoWorkerAvailable(role.name, self._why_empty(role, req))
        return self._commit(self.prefill_strategy.pick(candidates, req, ctx), None)

    def can_route(self) -> bool:
        """Whether every role this deployment needs has a healthy worker."""
        roles = (Role.PDFUSION,) if self.deploy is Deploy.PD_FUSION else (Role.PREFILL, Role.DECODE)
        return all(any(w.healthy for w in self.cluster.of_role(r)) for r in roles)

    def _route_pd(self, req: RouteRequest, ctx: PickContext) -> Lease:
        decodes = _available(self.cluster.of_role(Role.DECODE), req.exclude)
        if not decodes:
            raise NoWorkerAvailable("DECODE", self._why_empty(Role.DECODE, req))
        # group affinity: a prefill can only hand its KV cache to a decode of its own group
        decode_groups = {w.addr.group for w in decodes}
        prefills = [
            w for w in _available(self.cluster.of_role(Role.PREFILL), req.exclude) if w.addr.group in decode_groups
        ]
        if not prefills:
            raise NoWorkerAvailable("PREFILL", self._why_empty(Role.PREFILL, req))
        prefill_pick = self.prefill_strategy.pick(prefills, req, ctx)
        group = prefill_pick.worker.addr.group
        decode_pick = self.decode_strategy.pick([w for w in decodes if w.addr.group == group], req, ctx)
        return self._commit(prefill_pick, decode_pick)

    def _commit(self, pick: Pick, decode_pick: Pick | None) -> Lease:
        self._seq += 1
        pick.worker.last_chosen_seq = self._seq
        reason = pick.reason
        strategy = self.prefill_strategy.name
        if decode_pick is not None:
            decode_pick.worker.last_chosen_seq = self._seq
            reason = f"{pick.reason}+{decode_pick.reason}"
            strategy = f"{strategy}+{self.decode_strategy.name}"
        decision = Decision(
            target=pick.worker,
            decode=decode_pick.worker if decode_pick else None,
            strategy=strategy,
            reason=reason,
            estimate_ms=pick.estimate_ms,
        )
        return Lease(decision)

    def _why_empty(self, role: Role, req: RouteRequest) -> str:
        total = len(self.cluster.of_role(role))
        if total == 0:
            return "none configured"
        return f"all {total} excluded for this call" if req.exclude else "none usable"
