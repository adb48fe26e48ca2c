"""Offline simulator: replay a Mooncake-format trace against simulated workers on a virtual clock.

The workers use one of the mock worker's engine models: `fifo` (flexlb/sim/engine.py: one prefill at a
time of a + b·uncached tokens, cached prefix taken when the prefill starts, decode beside it) or
`batching` (flexlb/sim/batching.py: continuous batching of prefills and decodes in iterations);
both keep an LRU prefix cache per worker. Routing runs the SAME balancer core as the live gateway
(build_router: Router, strategies, prefix index, TTFT model; HoldDriver for the prefill queue), fed the
same feedback (first token with the observed prefill and cached/uncached tokens, end of call).
"""

from __future__ import annotations

import dataclasses
import gzip
import heapq
import json
import math
import random
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flexlb.balancer.batcher import BatchConfig, Batcher, dispatch_order
from flexlb.balancer.events import HoldEvent, Released
from flexlb.balancer.factory import build_router
from flexlb.balancer.hold_driver import HoldDriver
from flexlb.balancer.prefill_queue import PrefillQueueConfig
from flexlb.balancer.prefix import block_keys
from flexlb.balancer.prefix_index import PrefixIndexConfig
from flexlb.balancer.request import Deploy, RouteRequest
from flexlb.balancer.ttft import TtftPriors
from flexlb.balancer.workers import Cluster, Lease, Role, WorkerAddr
from flexlb.sim.batching import BatchingEngine, BatchingParams, Finished, FirstToken, Iteration, Kind
from flexlb.sim.batching import Sequence as BatchSequence
from flexlb.sim.engine import EngineParams, PrefillPlan, PrefixCache, plan_prefill_keys

TRACE_BLOCK_TOKENS = 512  # a Mooncake hash id stands for 512 prompt tokens


@dataclass(frozen=True)
class TraceRequest:
    """One row of a Mooncake-format trace."""

    arrival_ms: float
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...]


def load_trace(path: str | Path, limit: int | None = None, skip: int = 0) -> list[TraceRequest]:
    """Read JSONL rows (timestamp, input_length, output_length, hash_ids), plain or gzipped (`.gz`); bad rows
    name their line.

    `skip` drops the first rows and starts the clock at the first row kept (another slice of a trace).
    """
    rows: list[TraceRequest] = []
    skipped = 0
    with (gzip.open(path, "rt") if str(path).endswith(".gz") else open(path)) as fh:
        for n, line in enumerate(fh, 1):
            if limit is not None and len(rows) >= limit:
                break
            if not line.strip():
                continue
            if skipped < skip:
                skipped += 1
                continue
            try:
                d = json.loads(line)
                rows.append(TraceRequest(float(d["timestamp"]), int(d["input_length"]), int(d["output_length"]),
                                         tuple(int(h) for h in d["hash_ids"])))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{n}: not a Mooncake trace row ({exc})") from None
    rows.sort(key=lambda r: r.arrival_ms)
    if skip and rows:
        t0 = rows[0].arrival_ms
        rows = [dataclasses.replace(r, arrival_ms=r.arrival_ms - t0) for r in rows]
    return rows


class TokenSource:
    """Deterministic prompt tokens: each hash id expands to 512 tokens from a PRNG keyed by the id."""

    def __init__(self, seed: int = 0) -> None:
        self._seed = seed % 2**32  # numpy seeds are non-negative
        self._blocks: dict[int, np.ndarray] = {}

    def prompt(self, req: TraceRequest) -> np.ndarray:
        """Token ids of the request, cut to its input length."""
        parts = []
        for h in req.hash_ids:
            block = self._blocks.get(h)
            if block is None:
                block = np.random.default_rng((self._seed, 0, h % 2**63)).integers(
                    1, 150_000, TRACE_BLOCK_TOKENS, dtype=np.int32)
                self._blocks[h] = block
            parts.append(block)
        tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
        if len(tokens) < req.input_length:
            # a row may claim more tokens than its ids cover: pad deterministically
            extra = np.random.default_rng((self._seed, 1, len(req.hash_ids))).integers(
                1, 150_000, req.input_length - len(tokens), dtype=np.int32)
            tokens = np.concatenate([tokens, extra])
        return tokens[: req.input_length]


@dataclass(frozen=True)
class SimConfig:
    """A simulation run."""

    strategy: str = "COST_BASED_PREFILL"
    decode_strategy: str = "WEIGHTED_CACHE"
    workers: int = 8  # fused workers (ignored when prefill > 0)
    prefill: int = 0
    decode: int = 0
    speed: float = 1.0
    seed: int = 0
    engine: EngineParams = field(default_factory=lambda: EngineParams(
        prefill_base_ms=20.0, prefill_ms_per_uncached_token=0.1, block_size_tokens=512,
        cache_capacity_blocks=4000, decode_step_base_ms=10.0, decode_step_ms_per_running=0.2,
        kv_transfer_ms_per_token=0.002))
    router_block_tokens: int = 512  # staticCacheBlockSize
    index_capacity_blocks: int = 4000
    index_ttl_s: float = 3600.0
    noise_sigma: float = 0.0  # lognormal noise on prefill durations (the router does not know it)
    batch: BatchConfig = field(default_factory=BatchConfig)  # prefillBatchWaitTimeMs / batchSize
    queue: PrefillQueueConfig = field(default_factory=PrefillQueueConfig)  # prefillQueueDepth / Aging
    engine_model: str = "fifo"  # "fifo" (one prefill at a time) or "batching" (continuous batching)
    # the batching engine's costs and limits; None: the FIFO engine's costs (BatchingParams.from_engine)
    batching: BatchingParams | None = None

    def batching_params(self) -> BatchingParams:
        """The batching engine's parameters of this run."""
        return self.batching or BatchingParams.from_engine(self.engine)


@dataclass
class _Worker:
    key: str
    cache: PrefixCache
    queue: deque[_Job] = field(default_factory=deque)
    busy: bool = False
    prefill_ms_total: float = 0.0
    decoding: int = 0
    engine: BatchingEngine | None = None  # the batching engine (None: FIFO)
    inflight: Iteration | None = None


@dataclass
class _Job:
    index: int
    arrival_s: float
    tokens: int
    keys: tuple[int, ...]
    output_tokens: int
    # set once routed (the job is the held call's payload, so it exists before its lease)
    routed: Lease | None = None
    worker: str = ""
    decode: str | None = None
    plan: PrefillPlan | None = None
    first_token_s: float = 0.0

    @property
    def lease(self) -> Lease:
        """The load routing reserved for it."""
        assert self.routed is not None, "the job was not routed"
        return self.routed


@dataclass
class _Timer:
    """A HoldDriver timer on the virtual clock: an entry of the event heap that can be cancelled."""

    fn: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        """Skip it when its time comes."""
        self.cancelled = True


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    return float(np.percentile(np.asarray(values), q))


def simulate(trace: list[TraceRequest], cfg: SimConfig, tokens: TokenSource | None = None) -> dict[str, Any]:
    """Run one strategy over the trace and return the figures."""
    tokens = tokens or TokenSource(cfg.seed)
    rng = random.Random(cfg.seed)
    noise = random.Random(cfg.seed + 1)
    params = cfg.engine
    pd = cfg.prefill > 0
    if pd:
        addrs = [WorkerAddr("10.0.0.1", 1000 + i, 999 + i, Role.PREFILL) for i in range(cfg.prefill)]
        addrs += [WorkerAddr("10.0.1.1", 2000 + i, 1999 + i, Role.DECODE) for i in range(max(cfg.decode, 1))]
    else:
        addrs = [WorkerAddr("10.0.0.1", 1000 + i, 999 + i, Role.PDFUSION) for i in range(cfg.workers)]
    now = [0.0]
    cluster = Cluster(addrs)
    router = build_router(
        cluster,
        Deploy.DISAGGREGATED if pd else Deploy.PD_FUSION,
        cfg.strategy,
        cfg.decode_strategy,
        rng=rng,
        clock=lambda: now[0],
        ttft=TtftPriors(base_ms=params.prefill_base_ms, ms_per_uncached_token=params.prefill_ms_per_uncached_token,
                        ms_per_cached_token=params.prefill_ms_per_cached_token),
        index=PrefixIndexConfig(cfg.index_capacity_blocks, cfg.index_ttl_s),
        queue=cfg.queue,
    )
    prefill_role = Role.PREFILL if pd else Role.PDFUSION
    workers = {w.key: _Worker(w.key, PrefixCache(params.cache_capacity_blocks)) for w in cluster.of_role(prefill_role)}
    decoders = {w.key: _Worker(w.key, PrefixCache(0)) for w in cluster.of_role(Role.DECODE)}
    if cfg.engine_model not in ("fifo", "batching"):
        raise ValueError(f"engine_model must be fifo or batching, got {cfg.engine_model!r}")
    batching = cfg.engine_model == "batching"
    if batching:
        bparams = cfg.batching_params()
        if bparams.block_size_tokens != params.block_size_tokens:
            raise ValueError("the batching engine's block size must be the engine's (prefix cache keys)")
        # the simulator needs first tokens and ends only: no per-token events
        for w in [*workers.values(), *decoders.values()]:
            w.engine = BatchingEngine(bparams, w.cache, token_events=False)
        for key in workers:
            state = cluster.get(key)
            assert state is not None
            state.max_batch_tokens = bparams.max_batch_tokens  # what GetWorkerStatus tells the live gateway
    jobs: dict[int, _Job] = {}

    events: list[tuple[float, int, str, Any]] = []
    seq = 0

    def push(t: float, kind: str, payload: Any) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, payload))

    for i, r in enumerate(trace):
        push(r.arrival_ms / 1000.0 / cfg.speed, "arrive", i)

    ttft_ms: list[float] = []
    per_request: dict[int, tuple[float, int, int]] = {}  # trace index → (TTFT ms, cached tokens, prompt tokens)
    e2e_ms: list[float] = []
    decision_us: list[float] = []
    est_err_ms: list[float] = []
    hit_tokens = 0
    prompt_tokens = 0
    share: dict[str, int] = {k: 0 for k in workers}

    def start_next(w: _Worker) -> None:
        if w.engine is not None:
            step(w)
            return
        if w.busy or not w.queue:
            return
        job = w.queue.popleft()
        w.busy = True
        plan = plan_prefill_keys(params, w.cache, job.keys, job.tokens)
        job.plan = plan
        duration = plan.duration_ms
        if cfg.noise_sigma > 0:
            duration *= math.exp(noise.gauss(0.0, cfg.noise_sigma))
        w.prefill_ms_total += duration
        push(now[0] + duration / 1000.0, "prefilled", job)

    def step(w: _Worker) -> None:
        """Batching engine: plan the worker's next iteration unless one runs."""
        assert w.engine is not None
        if w.inflight is not None:
            return
        it = w.engine.plan(now[0] * 1000.0)
        if it is None:
            return
        duration = it.duration_ms
        if cfg.noise_sigma > 0 and it.prefill_tokens > 0:
            duration *= math.exp(noise.gauss(0.0, cfg.noise_sigma))
        if it.prefill_tokens > 0:
            w.prefill_ms_total += duration
        w.inflight = it
        push(now[0] + duration / 1000.0, "step", w)

    def enqueue(w: _Worker, job: _Job) -> None:
        """A job reaches its prefill (or fused) worker."""
        if w.engine is None:
            w.queue.append(job)
        else:
            jobs[job.index] = job
            kind = Kind.PREFILL_ONLY if job.decode else Kind.FUSED
            w.engine.add(BatchSequence(job.index, job.tokens, job.keys, job.output_tokens, kind, now[0] * 1000.0))
        start_next(w)

    def first_token(job: _Job, t: float, prefill_ms: float, uncached: int, cached: int) -> None:
        nonlocal hit_tokens, prompt_tokens
        job.first_token_s = t
        observed = (t - job.arrival_s) * 1000.0
        ttft_ms.append(observed)
        per_request[job.index] = (observed, cached, job.tokens)
        if job.lease.decision.estimate_ms is not None:
            est_err_ms.append(abs(job.lease.decision.estimate_ms - observed))
        hit_tokens += cached
        prompt_tokens += job.tokens
        driver.after(router.first_token(job.lease, observed, prefill_ms, uncached, cached))

    def ended(job: _Job, t: float) -> None:
        e2e_ms.append((t - job.arrival_s) * 1000.0)
        driver.after(router.release(job.lease))

    def stepped(w: _Worker, t: float) -> None:
        """Batching engine: an iteration ended; feed routing its first tokens and ends, start the next."""
        assert w.engine is not None and w.inflight is not None
        it, w.inflight = w.inflight, None
        for ev in w.engine.complete(it, t * 1000.0):
            if isinstance(ev, FirstToken):
                first_token(jobs[ev.seq_id], t, ev.prefill_ms, ev.uncached_tokens, ev.cached_tokens)
            elif isinstance(ev, Finished):
                job = jobs[ev.seq_id]
                if w.key in workers and job.decode:
                    # PD: the decode pulls the KV, then generates tokens 2..n
                    transfer_s = params.kv_transfer_ms_per_token * job.tokens / 1000.0
                    push(t + transfer_s, "decode_in" if job.output_tokens > 1 else "ended", job)
                else:
                    del jobs[ev.seq_id]
                    ended(job, t)
        step(w)

    batcher: Batcher[tuple[np.ndarray, float, float]] | None = Batcher(cfg.batch) if cfg.batch.enabled else None
    window_seq = [0]

    def call_later(delay_s: float, fn: Callable[[], None]) -> _Timer:
        timer = _Timer(fn)
        push(now[0] + delay_s, "timer", timer)
        return timer

    def deliver(event: HoldEvent) -> None:
        # workers never leave the simulation, so nothing is evicted: every event lets a held job go
        assert isinstance(event, Released)
        job = event.payload
        assert isinstance(job, _Job)
        job.worker = event.lease.decision.target.key  # an idle worker may have taken it over
        enqueue(workers[job.worker], job)

    # the jobs held in the gateway's prefill queue are its payloads; the upkeep runs on the virtual clock
    driver = HoldDriver(router, call_later, lambda fn: fn(), deliver)

    def dispatch(req: RouteRequest, prompt: np.ndarray, arrival_s: float, keying_us: float) -> None:
        r = trace[req.request_id]
        worker_keys = req.block_keys if params.block_size_tokens == cfg.router_block_tokens else tuple(
            block_keys(prompt, params.block_size_tokens))
        job = _Job(req.request_id, arrival_s, len(prompt), worker_keys, max(r.output_length, 1))
        t0 = time.perf_counter()
        lease = router.route(req, hold=True, payload=job)
        decision_us.append(keying_us + (time.perf_counter() - t0) * 1e6)
        target = lease.decision.target.key
        job.routed = lease
        job.worker = target
        job.decode = lease.decision.decode.key if lease.decision.decode else None
        share[target] += 1
        if lease.held:
            driver.arm()
            return
        enqueue(workers[target], job)

    def dispatch_batch(batch: list[tuple[RouteRequest, tuple[np.ndarray, float, float]]]) -> None:
        for req, (prompt, arrival_s, keying_us) in dispatch_order(batch, router.expected_uncached_tokens):
            dispatch(req, prompt, arrival_s, keying_us)

    while events:
        t, _, kind, payload = heapq.heappop(events)
        now[0] = t
        if kind == "arrive":
            r = trace[payload]
            prompt = tokens.prompt(r)
            t0 = time.perf_counter()  # keying the prompt is part of the decision; making it up is not
            keys = tuple(block_keys(prompt, cfg.router_block_tokens))
            req = RouteRequest(payload, len(prompt), r.output_length, block_keys=keys,
                               block_size_tokens=cfg.router_block_tokens)
            keying_us = (time.perf_counter() - t0) * 1e6
            if batcher is None:
                dispatch(req, prompt, t, keying_us)
            else:
                opening = len(batcher) == 0
                full = batcher.add(req, (prompt, t, keying_us), t)
                if full is not None:
                    dispatch_batch(full)
                elif opening:
                    window_seq[0] += 1
                    deadline = batcher.deadline_s()
                    assert deadline is not None
                    push(deadline, "flush", window_seq[0])
        elif kind == "timer":
            if not payload.cancelled:
                payload.fn()  # the driver's upkeep: prefillQueueMaxHoldMs and take-overs, as the gateway's
        elif kind == "flush":
            if batcher is not None and payload == window_seq[0] and len(batcher):
                dispatch_batch(batcher.take())
        elif kind == "step":
            stepped(payload, t)
        elif kind == "decode_in":
            job = payload
            assert job.decode is not None
            decoder = decoders[job.decode]
            assert decoder.engine is not None
            decoder.engine.add(BatchSequence(job.index, job.tokens, (), job.output_tokens, Kind.DECODE_ONLY,
                                             t * 1000.0))
            step(decoder)
        elif kind == "ended":
            del jobs[payload.index]
            ended(payload, t)
        elif kind == "prefilled":
            job = payload
            w = workers[job.worker]
            plan = job.plan
            assert plan is not None
            w.cache.insert(plan.block_keys)
            w.busy = False
            job.first_token_s = t
            observed = (t - job.arrival_s) * 1000.0
            ttft_ms.append(observed)
            per_request[job.index] = (observed, plan.cached_tokens, job.tokens)
            if job.lease.decision.estimate_ms is not None:
                est_err_ms.append(abs(job.lease.decision.estimate_ms - observed))
            hit_tokens += plan.cached_tokens
            prompt_tokens += job.tokens
            driver.after(router.first_token(job.lease, observed, plan.duration_ms, plan.uncached_tokens,
                                            plan.cached_tokens))
            # decode: a step per remaining output token, slower as the decoding batch grows
            decoder = decoders[job.decode] if job.decode else w
            decoder.decoding += 1
            transfer_ms = params.kv_transfer_ms_per_token * job.tokens if job.decode else 0.0
            decode_ms = transfer_ms + (job.output_tokens - 1) * params.decode_step_ms(decoder.decoding)
            push(t + decode_ms / 1000.0, "done", job)
            start_next(w)
        else:
            job = payload
            decoder = decoders[job.decode] if job.decode else workers[job.worker]
            decoder.decoding -= 1
            e2e_ms.append((t - job.arrival_s) * 1000.0)
            driver.after(router.release(job.lease))

    driver.close()
    span_s = max(now[0], 1e-9)
    prefill_work_ms = sum(w.prefill_ms_total for w in workers.values())
    total = max(len(ttft_ms), 1)
    return {
        "strategy": cfg.strategy,
        "engine": cfg.engine_model,
        "requests": len(ttft_ms),
        "speed": cfg.speed,
        "workers": len(workers),
        "utilization": prefill_work_ms / 1000.0 / (len(workers) * span_s),
        "ttft_mean_ms": statistics.fmean(ttft_ms) if ttft_ms else 0.0,
        "ttft_p50_ms": _percentile(ttft_ms, 50),
        "ttft_p90_ms": _percentile(ttft_ms, 90),
        "ttft_p99_ms": _percentile(ttft_ms, 99),
        "e2e_mean_ms": statistics.fmean(e2e_ms) if e2e_ms else 0.0,
        "cache_hit_ratio": hit_tokens / max(prompt_tokens, 1),
        "estimate_abs_error_mean_ms": statistics.fmean(est_err_ms) if est_err_ms else 0.0,
        "worker_share": {k: v / total for k, v in share.items()},
        "decision_us_p50": _percentile(decision_us, 50),
        "decision_us_p99": _percentile(decision_us, 99),
        "ttft_ms": ttft_ms,
        "per_request": per_request,
    }


def summary_rows(results: list[dict[str, Any]]) -> Iterator[str]:
    """A fixed-width comparison table."""
    yield (f"{'strategy':31s} {'util':>5s} {'ttft mean':>10s} {'p50':>9s} {'p90':>9s} {'p99':>10s} "
           f"{'e2e mean':>9s} {'hit':>6s} {'est err':>8s} {'dec p99 us':>10s}")
    for r in results:
        yield (f"{r['strategy']:31s} {r['utilization']:5.2f} {r['ttft_mean_ms']:10.1f} {r['ttft_p50_ms']:9.1f} "
               f"{r['ttft_p90_ms']:9.1f} {r['ttft_p99_ms']:10.1f} {r['e2e_mean_ms']:9.1f} "
               f"{r['cache_hit_ratio']:6.3f} {r['estimate_abs_error_mean_ms']:8.1f} {r['decision_us_p99']:10.1f}")
