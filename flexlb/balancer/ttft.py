"""Time-to-first-token estimates per worker, learned online from the streams the gateway relays.

estimated TTFT = queue wait (prefill work dispatched there and not yet past its first token)
               + prefill time (a + b·uncached + c·cached tokens) [+ KV transfer in PD].
The prefill coefficients are fitted per worker by recursive least squares with forgetting,
starting from configured priors; residuals are clipped (Huber) so one stalled request does
not wreck the fit.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TtftPriors:
    """Starting coefficients (ms, ms per token) and how fast to learn."""

    base_ms: float = 20.0
    ms_per_uncached_token: float = 0.1
    ms_per_cached_token: float = 0.0
    kv_transfer_ms_per_token: float = 0.0
    forgetting: float = 0.995  # RLS forgetting factor: ~200 observations of memory
    huber_ms: float = 50.0  # residuals beyond this count linearly, not quadratically
    prior_weight: float = 1.0  # confidence in the priors, in "observations"


@dataclass
class _Pending:
    request_id: int
    estimate_ms: float
    dispatched_s: float
    tokens: int = 0  # uncached prompt tokens: what it asks of the engine's prefill budget


@dataclass
class WorkerTtft:
    """One worker's fitted prefill model, its backlog of not-yet-started prefills and its error."""

    theta: list[float]  # [a, b, c]
    p: list[list[float]]  # RLS covariance (3 by 3)
    pending: OrderedDict[int, _Pending] = field(default_factory=OrderedDict)
    pending_tokens: int = 0  # uncached prompt tokens of the pending prefills
    backlog_ms: float = 0.0
    busy_since_s: float = 0.0
    observations: int = 0
    abs_error_ms: float = 0.0  # EWMA of |estimated TTFT - observed TTFT|
    observed_ttft_ms: float = 0.0  # EWMA of observed TTFT
    residual_scale_ms: float = 0.0  # EWMA of |prefill residual|, sets the Huber threshold
    # EWMA of what a call spends outside the engine before its first token reaches the gateway (the
    # request's hop there, the first message's hop back, the PD ALLOCATE round trip): part of every
    # TTFT, and of the time a prefill slot stays taken when the gateway sends one call at a time
    transit_ms: float = 0.0
    # until then the worker counts as busy with calls that failed on it before their first token: a
    # worker failing fast must not look idle (the work is charged as if it had run; see TtftModel.failed)
    failed_busy_until_s: float = 0.0

    def prefill_ms(self, uncached_tokens: int, cached_tokens: int) -> float:
        """Predicted prefill duration of one request on this worker."""
        a, b, c = self.theta
        return max(0.0, a + b * uncached_tokens + c * cached_tokens)

    def slot_ms(self, uncached_tokens: int, cached_tokens: int) -> float:
        """How long a call keeps one of the worker's slots when the gateway sends a call at a time:
        its prefill plus the hops to the engine and back."""
        return self.prefill_ms(uncached_tokens, cached_tokens) + self.transit_ms

    def queue_wait_ms(self, now_s: float) -> float:
        """Work dispatched here and not yet past its first token, minus what is already done of it (at least
        what is left of the charge for calls that failed here)."""
        failed_ms = (self.failed_busy_until_s - now_s) * 1000.0 if self.failed_busy_until_s > now_s else 0.0
        if not self.pending:
            return failed_ms
        done_ms = (now_s - self.busy_since_s) * 1000.0
        return max(0.0, self.backlog_ms - done_ms, failed_ms)


class TtftModel:
    """TTFT estimates for every worker; pure (the caller passes the time)."""

    def __init__(self, priors: TtftPriors) -> None:
        self.priors = priors
        self._workers: dict[str, WorkerTtft] = {}
        self.total_pending = 0  # prefills dispatched and not yet past their first token, all workers
        var = 1.0 / max(priors.prior_weight, 1e-6)
        # prior spread per coefficient: ±10 ms base, ±0.01 ms/token uncached, ±0.003 ms/token cached
        self._p0 = [[var * 100.0, 0.0, 0.0], [0.0, var * 1e-4, 0.0], [0.0, 0.0, var * 1e-5]]
        self._p_cap = [self._p0[i][i] * 100.0 for i in range(3)]

    def worker(self, key: str) -> WorkerTtft:
        """The model of one worker (created from the priors on first use)."""
        w = self._workers.get(key)
        if w is None:
            pr = self.priors
            w = WorkerTtft(
                theta=[pr.base_ms, pr.ms_per_uncached_token, pr.ms_per_cached_token],
                p=[row[:] for row in self._p0],
            )
            self._workers[key] = w
        return w

    def workers(self) -> dict[str, WorkerTtft]:
        """Every worker model by worker key."""
        return self._workers

    def estimate_ms(self, key: str, uncached_tokens: int, cached_tokens: int, now_s: float,
                    prompt_tokens: int = 0) -> tuple[float, float, float]:
        """(TTFT, queue wait, prefill) in ms for a request that would go to `key` now."""
        w = self.worker(key)
        wait = w.queue_wait_ms(now_s)
        prefill = w.prefill_ms(uncached_tokens, cached_tokens) + self.priors.kv_transfer_ms_per_token * prompt_tokens
        return wait + prefill, wait, prefill

    def dispatched(self, key: str, request_id: int, prefill_ms: float, now_s: float, tokens: int = 0) -> None:
        """A request was sent to `key`; its prefill (of `tokens` uncached tokens) joins the worker's backlog."""
        w = self.worker(key)
        if not w.pending:
            w.busy_since_s = now_s
            w.backlog_ms = 0.0
            w.pending_tokens = 0
        w.pending[request_id] = _Pending(request_id, prefill_ms, now_s, tokens)
        w.backlog_ms += prefill_ms
        w.pending_tokens += tokens
        self.total_pending += 1

    def started_or_gone(self, key: str, request_id: int, now_s: float) -> float | None:
        """The request produced its first token (or ended without one): it leaves the backlog.
        Returns when it was sent (None if it was not in the backlog)."""
        w = self.worker(key)
        item = w.pending.pop(request_id, None)
        if item is None:
            return None
        self.total_pending -= 1
        w.backlog_ms = max(0.0, w.backlog_ms - item.estimate_ms)
        w.pending_tokens -= item.tokens
        if w.pending:
            # the engine works the backlog from now on; what it did before is done
            w.busy_since_s = max(now_s, next(iter(w.pending.values())).dispatched_s)
        else:
            w.backlog_ms = 0.0
        return item.dispatched_s

    def failed(self, key: str, request_id: int, now_s: float) -> None:
        """The request failed on the worker before its first token (the worker's fault): it leaves the backlog
        but its estimated prefill stays charged to the worker, from now, as if it had run. Nothing is learnt."""
        w = self.worker(key)
        item = w.pending.get(request_id)
        if item is None:
            return
        self.started_or_gone(key, request_id, now_s)
        w.failed_busy_until_s = max(w.failed_busy_until_s, now_s) + item.estimate_ms / 1000.0

    def observe_transit(self, key: str, transit_ms: float) -> None:
        """One call's time outside the engine: sent to first message minus the engine's own time."""
        if not math.isfinite(transit_ms) or transit_ms < 0:
            return
        w = self.worker(key)
        w.transit_ms += (0.1 if w.transit_ms else 1.0) * (transit_ms - w.transit_ms)

    def observe(self, key: str, uncached_tokens: int, cached_tokens: int, prefill_ms: float,
                estimated_ttft_ms: float | None, observed_ttft_ms: float) -> None:
        """Learn from one relayed stream: engine-side prefill time and the TTFT the client saw."""
        w = self.worker(key)
        w.observations += 1
        if estimated_ttft_ms is not None:
            err = abs(estimated_ttft_ms - observed_ttft_ms)
            alpha = 0.05 if w.observations > 20 else 1.0 / w.observations
            w.abs_error_ms += alpha * (err - w.abs_error_ms)
            w.observed_ttft_ms += alpha * (observed_ttft_ms - w.observed_ttft_ms)
        if not math.isfinite(prefill_ms) or prefill_ms < 0:
            return
        x = (1.0, float(uncached_tokens), float(cached_tokens))
        lam = self.priors.forgetting
        p, th = w.p, w.theta
        px = [sum(p[i][j] * x[j] for j in range(3)) for i in range(3)]
        xpx = sum(x[i] * px[i] for i in range(3))
        if not math.isfinite(xpx) or xpx <= 0.0:
            # rounding made the covariance lose positive definiteness (plain RLS does, with forgetting
            # and inputs that hardly vary): the gain would explode, so start the covariance over
            w.p = p = [row[:] for row in self._p0]
            px = [sum(p[i][j] * x[j] for j in range(3)) for i in range(3)]
            xpx = sum(x[i] * px[i] for i in range(3))
        denom = lam + xpx
        residual = prefill_ms - sum(th[i] * x[i] for i in range(3))
        # robust (Huber): a surprise larger than 3x the typical residual moves the fit only that far.
        # The bound never drops below half the observation itself, so a model that first saw only tiny
        # prompts can still learn from the first long one instead of clipping it to a few ms.
        limit = math.inf
        if w.residual_scale_ms:
            limit = max(self.priors.huber_ms, 3.0 * w.residual_scale_ms, 0.5 * prefill_ms)
        clipped = max(-limit, min(limit, residual))
        w.residual_scale_ms += (0.05 if w.residual_scale_ms else 1.0) * (abs(clipped) - w.residual_scale_ms)
        gain = [v / denom for v in px]
        w.theta = [th[i] + gain[i] * clipped for i in range(3)]
        if clipped == residual:
            # only an observation taken at face value makes the fit surer of itself; a clipped one
            # leaves the covariance alone, or the model would lock onto a wrong slope
            q = [[(p[i][j] - gain[i] * px[j]) / lam for j in range(3)] for i in range(3)]
            w.p = [[(q[i][j] + q[j][i]) / 2.0 for j in range(3)] for i in range(3)]  # keep it symmetric
        if any(w.p[i][i] > self._p_cap[i] for i in range(3)):
            # forgetting inflates directions the data never excites (e.g. no cache hits): start over there
            w.p = [row[:] for row in self._p0]
        # keep the physically meaningful signs (no negative base or per-token cost)
        w.theta = [max(0.0, v) for v in w.theta]
        if not all(math.isfinite(v) for v in w.theta):
            pr = self.priors
            w.theta = [pr.base_ms, pr.ms_per_uncached_token, pr.ms_per_cached_token]
            w.p = [row[:] for row in self._p0]
