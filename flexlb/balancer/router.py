"""The router: roles, PD pairing with group affinity, load reservation, the prefill queue, feedback, release.

It never calls its owner back: whatever a call to it does to held calls (one may go now, one must be
routed again) comes back as a list of events for the owner to deliver once the call has returned.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections.abc import Callable, Sequence

from flexlb.balancer.events import Evicted, HoldEvent, Released
from flexlb.balancer.failures import FailureKind
from flexlb.balancer.health import Ejection, OutlierConfig, OutlierDetector, usable
from flexlb.balancer.prefill_queue import HeldCall, PrefillQueue, PrefillQueueConfig
from flexlb.balancer.prefix_index import PrefixIndex
from flexlb.balancer.request import Decision, Deploy, NoWorkerAvailable, Pick, PromptTooLong, RouteRequest
from flexlb.balancer.request import cached_tokens as reused_tokens
from flexlb.balancer.strategies.base import Chain, Filter, PickContext, apply_filters
from flexlb.balancer.strategies.cost import waiting_k
from flexlb.balancer.strategies.filters import VIT_FILTERS, GroupFilter, InFlightCapFilter, SeqLenFilter
from flexlb.balancer.strategies.pickers import RandomPicker
from flexlb.balancer.ttft import TtftModel, TtftPriors
from flexlb.balancer.workers import Cluster, Lease, Role, WorkerState

__all__ = ["Lease", "Router"]

_PREFILLING = (Role.PREFILL, Role.PDFUSION)  # the roles whose calls the prefill queue holds


def _uncached(call: HeldCall) -> int:
    """Uncached prompt tokens of a held call: what it asks of its worker's prefill budget."""
    lease, req = _held_parts(call)
    return req.prompt_tokens - lease.decision.cached_tokens


@dataclasses.dataclass(slots=True)
class _Lead:
    """Blocks a call computes on a batching worker that were not there before it, and whether the engine
    has taken the call into an iteration yet (followers arriving before that would be prefilled with it)."""

    worker: str
    blocks: tuple[int, ...]
    uncached_tokens: int  # what its prefill computes there
    sent_s: float | None = None  # None while held here
    behind: bool = True  # sent while other prefills were outstanding there: it waits for their iteration


def _held_parts(call: HeldCall) -> tuple[Lease, RouteRequest]:
    assert call.lease is not None and call.request is not None, "the router holds calls with their lease"
    return call.lease, call.request


class Router:
    """Chooses the worker(s) for a call. Pure: the clock and the RNG are injected (build with build_router)."""

    def __init__(
        self,
        cluster: Cluster,
        deploy: Deploy,
        prefill_strategy: Chain,
        decode_strategy: Chain,
        rng: random.Random,
        clock: Callable[[], float],
        ttft: TtftModel | None = None,
        index: PrefixIndex | None = None,
        outliers: OutlierDetector | None = None,
        queue: PrefillQueueConfig | None = None,
        vit_strategy: Chain | None = None,
    ) -> None:
        self.cluster = cluster
        self.deploy = deploy
        self.prefill_strategy = prefill_strategy
        self.decode_strategy = decode_strategy
        # picks the VIT worker of every decision while the cluster has VIT workers (vitLoadBalanceStrategy)
        self.vit_strategy = vit_strategy or Chain("RANDOM", VIT_FILTERS, None, RandomPicker("random"))
        self.ttft = ttft or TtftModel(TtftPriors())
        # LOCAL_STATIC / LOCAL_SYNC prefix index; None when kvCache is NONE
        self.index = index
        self.outliers = outliers or OutlierDetector(OutlierConfig())
        self.max_in_flight_per_worker = 0  # admission cap per worker (0: none)
        self._rng = rng
        self._clock = clock
        self._seq = 0
        # prefillQueueDepth: calls wait here for a free prefill slot on their worker (depth 0: off); the
        # queue's record is the only one of a held call
        self.queue = PrefillQueue(queue or PrefillQueueConfig(depth=0))
        # prefix leaders on batching workers: per worker, the blocks a call sent (or held) there will compute
        # that were not there before it (block key -> that call's seq), and per leader its worker and blocks
        self._pending_blocks: dict[str, dict[int, int]] = {}
        self._leads: dict[int, _Lead] = {}
        self._leads_at: dict[str, set[int]] = {}
        self._last_first_token_s: dict[str, float] = {}

    def _context(self, req: RouteRequest, now: float) -> PickContext:
        matched = self.index.match(req.block_keys) if self.index is not None and req.block_keys else {}
        return PickContext(rng=self._rng, now_s=now, ttft=self.ttft, matched_blocks=matched,
                           queue=self.queue if self.queue.config.enabled else None,
                           max_in_flight_per_worker=self.max_in_flight_per_worker)

    def route(self, req: RouteRequest, pair: bool = True, hold: bool = False, payload: object = None,
              kind: str = "call") -> Lease:
        """Decide and reserve load; raises NoWorkerAvailable when a needed role has no candidate.

        In a disaggregated deployment `pair=False` picks a lone PREFILL worker (calls the engine
        serves without PD hand-off, e.g. BatchGenerateCall). With `hold` and the prefill queue on, the
        lease may come back `held`: send the call only once a Released event names it (with `payload`).
        `kind` "reservation" is load reserved for a Schedule caller (never held).
        """
        if hold and kind != "call":
            raise ValueError("only relayed calls can be held")
        now = self._clock()
        ctx = self._context(req, now)
        if self.deploy is Deploy.DISAGGREGATED and pair:
            return self._route_pd(req, ctx, hold, payload, kind)
        role = Role.PDFUSION if self.deploy is Deploy.PD_FUSION else Role.PREFILL
        candidates = self._candidates(self.prefill_strategy, role, req, ctx)
        pick = self.prefill_strategy.pick(candidates, req, ctx)
        return self._commit(req, ctx, pick, None, hold, payload, kind)

    def route_to(self, req: RouteRequest, target: str, decode: str | None, kind: str = "call",
                 vit: str | None = None) -> Lease:
        """Reserve load for a choice made elsewhere (the elected master; worker keys); raises NoWorkerAvailable
        if the chosen workers are unknown here or out of rotation (the caller then decides itself). Without a
        usable `vit` from the master, the VIT worker (if any are configured) is chosen here."""
        now = self._clock()
        t = self.cluster.get(target)
        d = self.cluster.get(decode) if decode else None
        if t is None or not usable(t, now) or (decode and (d is None or not usable(d, now))):
            raise NoWorkerAvailable(t.role.name if t else "PREFILL", "the master's choice is not usable here")
        v = self.cluster.get(vit) if vit else None
        vit_pick = Pick(v, "master") if v is not None and v.role is Role.VIT and usable(v, now) else None
        ctx = self._context(req, now)
        return self._commit(req, ctx, Pick(t, "master"), Pick(d, "master") if d else None, kind=kind,
                            vit_pick=vit_pick)

    def expected_uncached_tokens(self, req: RouteRequest) -> int:
        """Prompt tokens no worker is known to hold: the prefill this request costs at best."""
        if self.index is None or not req.block_keys:
            return req.prompt_tokens
        return req.prompt_tokens - reused_tokens(req, max(self.index.match(req.block_keys).values(), default=0))

    def in_rotation(self, w: WorkerState) -> bool:
        """Whether the worker is usable now (healthy, not ejected, not taken out by an operator)."""
        return usable(w, self._clock())

    def can_route(self) -> bool:
        """Whether every role this deployment needs has a healthy worker (VIT too, when VIT workers are configured)."""
        roles: tuple[Role, ...] = (Role.PDFUSION,) if self.deploy is Deploy.PD_FUSION else (Role.PREFILL, Role.DECODE)
        if self.cluster.of_role(Role.VIT):
            roles = (*roles, Role.VIT)
        now = self._clock()
        return all(any(usable(w, now) for w in self.cluster.of_role(r)) for r in roles)

    def _candidates(self, chain: Chain, role: Role, req: RouteRequest, ctx: PickContext,
                    extra: Sequence[Filter] = ()) -> Sequence[WorkerState]:
        workers = self.cluster.of_role(role)
        pool = chain.candidates(workers, req, ctx, extra)
        if not pool:
            raise self._none_left(role, req, ctx, (*chain.filters, *extra))
        return pool

    def _route_pd(self, req: RouteRequest, ctx: PickContext, hold: bool, payload: object, kind: str) -> Lease:
        decodes = self._candidates(self.decode_strategy, Role.DECODE, req, ctx)
        # group affinity: a prefill can only hand its KV cache to a decode of its own group
        decode_groups = {w.addr.group for w in decodes}
        extra = (GroupFilter(frozenset(decode_groups)),) if decode_groups != {""} else ()
        prefills = self._candidates(self.prefill_strategy, Role.PREFILL, req, ctx, extra)
        prefill_pick = self.prefill_strategy.pick(prefills, req, ctx)
        group = prefill_pick.worker.addr.group
        same_group = decodes if decode_groups == {group} else GroupFilter(frozenset({group})).apply(decodes, req, ctx)
        decode_pick = self.decode_strategy.pick(same_group, req, ctx)
        return self._commit(req, ctx, prefill_pick, decode_pick, hold, payload, kind)

    def _pick_vit(self, req: RouteRequest, ctx: PickContext, group: str) -> Pick | None:
        """The VIT worker for a call whose target is in `group`: one of that group's VIT workers in rotation,
        else any in rotation (an image embedding is not tied to a KV hand-off); None without VIT workers;
        NoWorkerAvailable (VIT) when none is in rotation."""
        vits = self.cluster.of_role(Role.VIT)
        if not vits:
            return None
        same = [w for w in vits if w.addr.group == group]
        pool = self.vit_strategy.candidates(same, req, ctx) if same else ()
        if not pool and len(same) < len(vits):
            pool = self.vit_strategy.candidates(vits, req, ctx)
        if not pool:
            raise self._none_left(Role.VIT, req, ctx, self.vit_strategy.filters)
        return self.vit_strategy.pick(pool, req, ctx)

    def _commit(self, req: RouteRequest, ctx: PickContext, pick: Pick, decode_pick: Pick | None,
                hold: bool = False, payload: object = None, kind: str = "call", vit_pick: Pick | None = None) -> Lease:
        if vit_pick is None:
            vit_pick = self._pick_vit(req, ctx, pick.worker.addr.group)
        self._seq += 1
        seq = self._seq
        target = pick.worker
        reason = pick.reason
        strategy = self.prefill_strategy.name
        if decode_pick is not None:
            reason = f"{pick.reason}+{decode_pick.reason}"
            strategy = f"{strategy}+{self.decode_strategy.name}"
        cached = ctx.cached_tokens(req, target)
        # the prefill worker's backlog holds its own compute only; a PD KV transfer runs beside it
        ttft_ms, _, prefill_ms = self.ttft.estimate_ms(target.key, req.prompt_tokens - cached, cached, ctx.now_s)
        transit_ms = self.ttft.worker(target.key).transit_ms
        ttft_ms += transit_ms
        # with the queue on the worker gets one call at a time: its slot stays taken for the hops too
        work_ms = prefill_ms + transit_ms if self.queue.config.enabled else prefill_ms
        uncached = req.prompt_tokens - cached
        holding = hold and self.queue.config.applies_to(self.prefill_strategy.name)
        leader = self._lead(target, req, ctx.matched_blocks.get(target.key, 0), seq, uncached) if holding else None
        held = holding and (leader is not None or self._must_hold(target.key, uncached))
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
            vit=vit_pick.worker if vit_pick is not None else None,
        )
        if self.index is not None and req.block_keys:
            # speculative insert: the worker will hold these blocks once it has prefilled them
            self.index.record(target.key, req.block_keys, ctx.now_s)
        lease = self.cluster.ledger.reserve(decision, seq, req.prompt_tokens, kind)
        self.ttft.worker(target.key).batch_tokens = target.max_batch_tokens
        if held:
            lease.held = True
            self.queue.push(target.key, seq, work_ms, ctx.now_s, req.client, lease=lease, request=req,
                            payload=payload, leader=leader)
        else:
            if seq in self._leads:
                self._lead_sent(seq, ctx.now_s, behind=bool(self.ttft.worker(target.key).pending))
            self.ttft.dispatched(target.key, seq, work_ms, ctx.now_s, uncached)
        return lease

    def _lead(self, target: WorkerState, req: RouteRequest, matched: int, seq: int, uncached: int) -> int | None:
        """On a batching worker: note the blocks this call will compute there (it leads them), and return the
        call it must wait for: the one computing the prefix it expects there, if the engine has not taken that
        one into an iteration yet (sent now, this call would be prefilled beside it and compute the prefix
        again; once the leader runs, this call joins a later iteration and finds the prefix cached)."""
        if target.max_batch_tokens <= 0 or not req.block_keys:
            return None
        pending = self._pending_blocks.setdefault(target.key, {})
        leader = None
        keys = req.block_keys
        first_pending = next((i for i, k in enumerate(keys[:matched]) if k in pending), None)
        if first_pending is not None:
            for k in reversed(keys[:matched]):  # the deepest pending block: its leader's prefill covers the rest
                leader = pending.get(k)
                if leader is not None:
                    break
        mine = tuple(k for k in keys[matched:] if k not in pending)
        if mine:
            for k in mine:
                pending[k] = seq
            self._leads[seq] = _Lead(target.key, mine, uncached)
            self._leads_at.setdefault(target.key, set()).add(seq)
        if leader is None or first_pending is None or self._lead_running(leader, self._clock()):
            return None
        # beside its leader it would compute everything from the first pending block on; if that does not fit
        # in one iteration with the leader (held here) or with what was sent there before, the engine takes the
        # two in different iterations anyway and the later one finds the shared blocks cached: no need to wait
        alone = req.prompt_tokens - reused_tokens(req, first_pending)
        lead = self._leads[leader]
        beside = lead.uncached_tokens if lead.sent_s is None else self.ttft.worker(target.key).pending_tokens
        if beside + alone > target.max_batch_tokens:
            return None
        return leader

    def _lead_sent(self, seq: int, now_s: float, behind: bool) -> None:
        """A leader goes to its worker now; `behind` other prefills there (or released from here on a first
        token, as an iteration ends): the engine takes it only once an iteration has ended."""
        lead = self._leads[seq]
        lead.sent_s = now_s
        lead.behind = behind

    def _lead_running(self, seq: int, now_s: float) -> bool:
        """Whether the engine has (by what the gateway can see) taken the leader into an iteration: it reached
        the worker (one transit after it was sent) and, if it was sent behind other prefills, an iteration has
        ended since (a first token from that worker)."""
        lead = self._leads.get(seq)
        if lead is None or lead.sent_s is None:
            return lead is None
        if (now_s - lead.sent_s) * 1000.0 < self.ttft.worker(lead.worker).transit_ms:
            return False
        return not lead.behind or self._last_first_token_s.get(lead.worker, -1.0) > lead.sent_s

    def _end_lead(self, seq: int) -> list[str]:
        """The call's prefill is over (or it will not run where it led): its blocks are no longer pending
        there and its followers may go; the workers they are held for."""
        lead = self._leads.pop(seq, None)
        if lead is not None:
            pending = self._pending_blocks.get(lead.worker, {})
            for k in lead.blocks:
                if pending.get(k) == seq:
                    del pending[k]
            at = self._leads_at.get(lead.worker)
            if at is not None:
                at.discard(seq)
        return self.queue.unpark(seq)

    def _iteration_ended(self, key: str, now_s: float) -> list[str]:
        """A first token from the worker: its engine ended an iteration, so leaders waiting there run now and
        their followers may go (they will join a later iteration). The workers the followers are held for."""
        self._last_first_token_s[key] = now_s
        out: list[str] = []
        if not self.queue.parked_for(key):  # the usual case: nobody waits for a leader there
            return out
        for seq in list(self._leads_at.get(key, ())):
            if self._lead_running(seq, now_s):
                out.extend(self.queue.unpark(seq))
        return out

    # ------------------------------------------------------------ feedback and release

    def first_token(self, lease: Lease, observed_ttft_ms: float, prefill_ms: float | None = None,
                    uncached_tokens: int | None = None, cached_tokens: int | None = None,
                    engine_ms: float | None = None) -> list[HoldEvent]:
        """The call's first response message arrived (taken once per lease): its prefill slot is free; learn
        from what was observed (`engine_ms`: the engine's own time to first token, its queueing included)."""
        if lease.first_token_seen or lease.released:
            return []
        lease.first_token_seen = True
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
        out: list[HoldEvent] = []
        followers_at: list[str] = []
        if self._leads:
            followers_at = self._end_lead(lease.seq) + self._iteration_ended(d.target.key, now)
        if len(self.queue):
            for key in sorted({d.target.key, *followers_at}):
                self._release_next(key, now, out)
        return out

    def release(self, lease: Lease) -> list[HoldEvent]:
        """Give the lease's load back (once; later calls return []). A call that ends before its first token
        leaves the worker's backlog, or the queue if it was held."""
        if not self.cluster.ledger.release(lease) or lease.first_token_seen:
            return []
        # a call that ends before its first token computed nothing others could reuse: its followers may go
        followers_at = self._end_lead(lease.seq) if self._leads else []
        if lease.held:
            # (released by the next event or upkeep on their worker: drop_held expects no events from here)
            lease.held = False
            self.queue.remove(lease.seq)
            return []
        key = lease.decision.target.key
        now = self._clock()
        self.ttft.started_or_gone(key, lease.seq, now)
        out: list[HoldEvent] = []
        if len(self.queue):
            for k in sorted({key, *followers_at}):
                self._release_next(k, now, out)
        return out

    def attempt_ended(self, lease: Lease, kind: FailureKind, mid_stream: bool = False) -> Ejection | None:
        """Judge the attempt's worker by how it ended (call it before release); the ejection, if this made one.

        A worker fault before the first token also leaves the call's estimated prefill in the worker's
        backlog, as if it had run: a worker that fails fast must not look idle and draw the next call.
        """
        w = lease.decision.target
        now = self._clock()
        if kind is FailureKind.WORKER and not lease.first_token_seen and not lease.held:
            self.ttft.failed(w.key, lease.seq, now)
        return self.outliers.observe(w, kind, self.cluster.of_role(w.role), now, mid_stream=mid_stream)

    def evaluate_outliers(self) -> list[Ejection]:
        """The periodic detectors (success rate, failure percentage) over every role; the ejections made."""
        now = self._clock()
        out: list[Ejection] = []
        for role in self.cluster.roles():
            out.extend(self.outliers.evaluate(self.cluster.of_role(role), now))
        return out

    # ------------------------------------------------------------ prefill queue

    def held_calls(self) -> int:
        """Calls waiting in the prefill queue."""
        return len(self.queue)

    def maintain(self) -> list[HoldEvent]:
        """Periodic upkeep: release calls held past max_hold_ms, hand back those of unusable workers,
        and fill any free slot (a safety net; releases normally happen on first tokens)."""
        now = self._clock()
        out: list[HoldEvent] = []
        for key in self.queue.workers():
            self._release_next(key, now, out)
        for call in self.queue.overdue(now):
            self.queue.remove(call.seq)
            self._release(call, call.prefill_ms, now, out)
        # a worker that went idle hears of no first token: let the idle ones look for waiting calls now
        if len(self.queue):
            idle = [w for w in self.cluster.all() if w.role in _PREFILLING and not self.queue.held(w.key)
                    and self._slot_free(w.key) and usable(w, now)]
            matches: dict[int, dict[str, int]] = {}
            for w in heapq.nsmallest(self._STEAL_IDLE, idle, key=lambda x: x.in_flight):
                self._steal_into(w, now, matches, out)
        return out

    def evict_held(self, worker_key: str) -> list[HoldEvent]:
        """The worker was ejected or removed: every call held for it goes back for re-routing
        (unless no other worker could take them: routing fails open then, and so does the queue)."""
        out: list[HoldEvent] = []
        w = self.cluster.get(worker_key)
        if w is None or self._others_usable(w, self._clock()):
            self._evict(worker_key, out)
        return out

    def drop_held(self, dead: Callable[[object], bool]) -> list[tuple[Lease, object]]:
        """Take out and release the held calls whose payload says their caller left; returns (lease, payload)."""
        dropped = []
        for call in self.queue.calls():
            if dead(call.payload):
                lease, _ = _held_parts(call)
                self.release(lease)  # a held call has no slot: this frees nothing, so there is no event
                dropped.append((lease, call.payload))
        return dropped

    def _must_hold(self, key: str, tokens: int) -> bool:
        """Hold when the worker cannot take this prefill now, or others already wait for it (keep order)."""
        m = self.ttft.worker(key)
        return self.queue.holds(key, len(m.pending), m.pending_tokens, tokens, self._batch_tokens(key),
                                m.queue_wait_ms(self._clock()))

    def _slot_free(self, key: str, tokens: int = 0) -> bool:
        """Whether the worker can take one more prefill (of `tokens` uncached tokens) now (PrefillQueue.slot_free)."""
        m = self.ttft.worker(key)
        return self.queue.slot_free(len(m.pending), m.pending_tokens, tokens, self._batch_tokens(key),
                                    m.queue_wait_ms(self._clock()))

    def _batch_tokens(self, key: str) -> int:
        w = self.cluster.get(key)
        return w.max_batch_tokens if w is not None else 0

    def _release_next(self, key: str, now_s: float, out: list[HoldEvent]) -> None:
        """Fill the worker's free prefill slots from its queue (or hand them back if it is unusable)."""
        w = self.cluster.get(key)
        if w is None or (not usable(w, now_s) and self._others_usable(w, now_s)):
            self._evict(key, out)
            return
        while (nxt := self.queue.peek(key)) is not None and self._slot_free(key, _uncached(nxt)):
            call = self.queue.pop(key)
            assert call is nxt
            self._release(call, call.prefill_ms, now_s, out)
        if usable(w, now_s):
            self._steal_into(w, now_s, {}, out)

    def _steal_into(self, w: WorkerState, now_s: float, matches: dict[int, dict[str, int]],
                    out: list[HoldEvent]) -> None:
        """A worker with free slots and nothing of its own held takes calls held for busier workers,
        while moving one gains (a queue must not leave a worker idle that could serve a waiting call)."""
        while len(self.queue) and self._slot_free(w.key) and self._steal(w, now_s, matches, out):
            pass

    _STEAL_LOOK = 4  # held calls per busy worker considered for stealing
    _STEAL_FROM = 8  # busy workers considered (those holding the most calls)
    _STEAL_IDLE = 16  # idle workers that look for calls per upkeep pass
    _STEAL_BAND_MS = 5.0

    def _steal(self, w: WorkerState, now_s: float, matches: dict[int, dict[str, int]],
               out: list[HoldEvent]) -> bool:
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
        best: tuple[float, HeldCall, float, int] | None = None
        busiest = heapq.nlargest(self._STEAL_FROM, self.queue.workers(), key=self.queue.held)
        for v in busiest:
            if v == w.key:
                continue
            waited = model.worker(v).queue_wait_ms(now_s)
            for call in self.queue.first(v, self._STEAL_LOOK):
                lease, req = _held_parts(call)
                d = lease.decision
                if w.key in req.exclude or w.role is not d.target.role:
                    continue
                if d.decode is not None and d.decode.addr.group != w.addr.group:
                    continue
                if call.seq not in matches:
                    matches[call.seq] = self.index.match(req.block_keys) if self.index and req.block_keys else {}
                cached = reused_tokens(req, matches[call.seq].get(w.key, 0))
                if cached < d.cached_tokens:
                    continue  # never trade a cached prefix for an earlier start: the work it saves is everyone's
                work_w = mine.slot_ms(req.prompt_tokens - cached, cached)
                gain = (waited + self.queue.before(call.seq) + call.prefill_ms * (1.0 + k)) - (
                    wait_w + work_w * (1.0 + k))
                if gain > self._STEAL_BAND_MS and (best is None or gain > best[0]):
                    best = (gain, call, work_w, cached)
        if best is None:
            return False
        _, call, work_w, cached = best
        self.queue.remove(call.seq)
        self._end_lead(call.seq)  # what it leads where it was held will not be computed there
        lease, req = _held_parts(call)
        d = lease.decision
        old = d.target
        self.cluster.ledger.move(lease, w)
        lease.decision = dataclasses.replace(lease.decision, reason=f"{d.reason}+moved", cached_tokens=cached,
                                             prefill_ms=work_w - mine.transit_ms, estimate_ms=wait_w + work_w)
        if self.index is not None and req.block_keys:
            # the blocks recorded for it where it was held, beyond what was already there, will not be
            held_blocks = -(-d.cached_tokens // max(req.block_size_tokens, 1))  # a full hit is clamped by a token
            self.index.forget(old.key, req.block_keys[held_blocks:])
            self.index.record(w.key, req.block_keys, now_s)
        self._release(call, work_w, now_s, out)
        return True

    def _others_usable(self, w: WorkerState, now_s: float) -> bool:
        """Whether a call held for `w` could go elsewhere (routing fails open when none can)."""
        return any(x is not w and usable(x, now_s) for x in self.cluster.of_role(w.role))

    def _release(self, call: HeldCall, prefill_ms: float, now_s: float, out: list[HoldEvent]) -> None:
        """A call taken out of the queue goes to its worker now: its prefill joins the backlog there."""
        lease, _ = _held_parts(call)
        lease.held = False
        if lease.seq in self._leads:
            self._lead_sent(lease.seq, now_s, behind=True)
        self.ttft.dispatched(lease.decision.target.key, lease.seq, prefill_ms, now_s, _uncached(call))
        out.append(Released(lease, call.payload))

    def _evict(self, key: str, out: list[HoldEvent]) -> None:
        for call in self.queue.take_all(key):
            lease, _ = _held_parts(call)
            self._end_lead(lease.seq)  # routed again as a new call: it leads nothing here
            lease.held = False
            lease.evicted = True
            out.append(Evicted(lease, call.payload))

    def _none_left(self, role: Role, req: RouteRequest, ctx: PickContext,
                   filters: Sequence[Filter]) -> NoWorkerAvailable:
        workers = self.cluster.of_role(role)
        if workers and any(isinstance(f, SeqLenFilter) for f in filters):
            # too long for every configured worker, in rotation or not: no retry can serve it
            n = req.longest_sequence
            if all(w.max_seq_len and n > w.max_seq_len for w in workers):
                return PromptTooLong(role.name, n, max(w.max_seq_len for w in workers))
        cap = self.max_in_flight_per_worker
        if cap > 0:
            uncapped = [f for f in filters if not isinstance(f, InFlightCapFilter)]
            if apply_filters(uncapped, self.cluster.of_role(role), req, ctx):
                return NoWorkerAvailable(role.name, f"every worker is at its in-flight cap ({cap})", saturated=True)
        return NoWorkerAvailable(role.name, self._why_empty(role, req))

    def _why_empty(self, role: Role, req: RouteRequest) -> str:
        total = len(self.cluster.of_role(role))
        if total == 0:
            return "none configured"
        return f"all {total} excluded for this call" if req.exclude else "none usable"
