"""Time-to-first-token estimates per worker, learned online from the streams the gateway relays.

estimated TTFT = queue wait (prefill work dispatched there and not yet past its first token)
               + prefill time (a + b·uncached + c·cached tokens) [+ KV transfer in PD].
The prefill coefficients are fitted per worker by least squares on exponentially forgotten normal
equations, solved afresh on each observation under the physical constraints (no negative cost, a
cached token never dearer than an uncached one), with a weak pull toward the configured priors;
observations far off the fit are down-weighted (Huber), so one stalled request does not wreck it.
(A recursive least-squares update with coefficients clamped afterwards diverged on live PD traffic:
the clamp is invisible to its covariance, and 60 clean observations drove one worker to 0.3 ms per
cached token, which made it look ten times slower than its twin.)
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
    forgetting: float = 0.995  # per observation: ~200 observations of memory
    huber_ms: float = 50.0  # residuals beyond this count linearly, not quadratically
    prior_weight: float = 1.0  # pull toward the priors (1: as much as one observation of 100 tokens)


@dataclass
class _Pending:
    request_id: int
    estimate_ms: float
    dispatched_s: float
    tokens: int = 0  # uncached prompt tokens: what it asks of the engine's prefill budget


@dataclass
class WorkerTtft:
    """One worker's fitted prefill model, its backlog of not-yet-started prefills and its error."""

    theta: list[float]  # [a, b, c]: ms, ms per uncached token, ms per cached token
    # the fit's forgotten, Huber-weighted normal equations, over x = (1, kilo-tokens uncached, cached):
    # sum w·x·xᵀ and sum w·x·y
    sxx: list[list[float]] = field(default_factory=lambda: [[0.0] * 3 for _ in range(3)])
    sxy: list[float] = field(default_factory=lambda: [0.0] * 3)
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
    # the engine's prefill token budget per iteration (0: it prefills one request at a time); set by the
    # router from what the worker reports
    batch_tokens: int = 0

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
        backlog = self.backlog_ms
        if self.batch_tokens > 0 and len(self.pending) > 1:
            # a batching engine prefills the pending calls together, up to its budget per iteration: they
            # share one base cost per iteration instead of paying it each
            iterations = -(-self.pending_tokens // self.batch_tokens) or 1
            backlog -= max(0, len(self.pending) - iterations) * self.theta[0]
        return max(0.0, backlog - done_ms, failed_ms)


class TtftModel:
    """TTFT estimates for every worker; pure (the caller passes the time)."""

    def __init__(self, priors: TtftPriors) -> None:
        self.priors = priors
        self._workers: dict[str, WorkerTtft] = {}
        self.total_pending = 0  # prefills dispatched and not yet past their first token, all workers
        self._prior = _scaled([priors.base_ms, priors.ms_per_uncached_token, priors.ms_per_cached_token])

    def worker(self, key: str) -> WorkerTtft:
        """The model of one worker (created from the priors on first use)."""
        w = self._workers.get(key)
        if w is None:
            pr = self.priors
            w = WorkerTtft(theta=[pr.base_ms, pr.ms_per_uncached_token, pr.ms_per_cached_token])
            self._workers[key] = w
        return w

    def workers(self) -> dict[str, WorkerTtft]:
        """Every worker model by worker key."""
        return self._workers

    def drop(self, key: str) -> None:
        """The worker left the cluster for good: forget what was learnt about it (a new worker there starts from
        the priors)."""
        w = self._workers.pop(key, None)
        if w is not None:
            self.total_pending -= len(w.pending)

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
        x = (1.0, uncached_tokens / _KILO, cached_tokens / _KILO)
        th = _scaled(w.theta)
        residual = prefill_ms - sum(th[i] * x[i] for i in range(3))
        # robust (Huber): a surprise larger than 3x the typical residual counts only that far. The bound
        # never drops below half the observation itself, so a model that first saw only tiny prompts can
        # still learn from the first long one instead of discounting it.
        limit = math.inf
        if w.residual_scale_ms:
            limit = max(self.priors.huber_ms, 3.0 * w.residual_scale_ms, 0.5 * prefill_ms)
        weight = 1.0 if abs(residual) <= limit else limit / abs(residual)
        w.residual_scale_ms += (0.05 if w.residual_scale_ms else 1.0) * (min(abs(residual), limit)
                                                                          - w.residual_scale_ms)
        lam = self.priors.forgetting
        for i in range(3):
            w.sxy[i] = lam * w.sxy[i] + weight * x[i] * prefill_ms
            row = w.sxx[i]
            for j in range(3):
                row[j] = lam * row[j] + weight * x[i] * x[j]
        r = self.priors.prior_weight * _PRIOR_RIDGE
        a = [[w.sxx[i][j] + (r if i == j else 0.0) for j in range(3)] for i in range(3)]
        b = [w.sxy[i] + r * self._prior[i] for i in range(3)]
        fitted = _constrained_fit(a, b)
        if fitted is not None:
            w.theta = [fitted[0], fitted[1] / _KILO, fitted[2] / _KILO]


_KILO = 1000.0  # tokens are counted in thousands inside the fit: the normal equations stay well scaled
# the priors' weight per unit prior_weight, in the fit's units: a slope's pull equals one 100-token
# observation; it decides the coefficients only where the data does not (no cache hits yet, one prompt size)
_PRIOR_RIDGE = 0.01


def _scaled(theta: list[float]) -> list[float]:
    """Coefficients per token -> per thousand tokens (the fit's units)."""
    return [theta[0], theta[1] * _KILO, theta[2] * _KILO]


# the subspaces the constrained optimum may lie on, tried in order: each maps free coefficients z to
# (a, b, c); a face is kept only if its optimum is feasible (a, b >= 0 and 0 <= c <= b)
_FACES: tuple[tuple[tuple[float, float, float], ...], ...] = (
    ((1, 0, 0), (0, 1, 0), (0, 0, 1)),  # free
    ((1, 0, 0), (0, 1, 0)),  # c = 0
    ((1, 0, 0), (0, 1, 1)),  # c = b
    ((0, 1, 0), (0, 0, 1)),  # a = 0
    ((0, 1, 0),),  # a = 0, c = 0
    ((0, 1, 1),),  # a = 0, c = b
    ((1, 0, 0),),  # b = c = 0
)


# each face as, per free coefficient, the indices of (a, b, c) it sets: the reduced normal equations are sums
# of entries of A (the faces' vectors are 0/1), which is what makes a fit per relayed call cheap
_FACE_INDICES: tuple[tuple[tuple[int, ...], ...], ...] = tuple(
    tuple(tuple(r for r in range(3) if v[r]) for v in face) for face in _FACES)


def _constrained_fit(a: list[list[float]], b: list[float]) -> list[float] | None:
    """argmin θᵀAθ - 2bᵀθ subject to a, b >= 0 and 0 <= c <= b (A positive definite, 3 x 3)."""
    best: tuple[float, list[float]] | None = None
    for face in _FACE_INDICES:
        ar = [[sum(a[r][c] for r in fi for c in fj) for fj in face] for fi in face]
        br = [sum(b[r] for r in fi) for fi in face]
        z = _solve(ar, br)
        if z is None:
            continue
        th = [0.0, 0.0, 0.0]
        for zi, fi in zip(z, face, strict=True):
            for r in fi:
                th[r] += zi
        if th[0] < 0.0 or th[1] < 0.0 or th[2] < 0.0 or th[2] > th[1] * (1.0 + 1e-12) or not all(
                math.isfinite(v) for v in th):
            continue
        if len(face) == 3:
            return th  # the unconstrained optimum is feasible: it is the optimum
        obj = sum(th[i] * a[i][j] * th[j] for i in range(3) for j in range(3)) - 2.0 * sum(b[i] * th[i]
                                                                                         for i in range(3))
        if best is None or obj < best[0]:
            best = (obj, th)
    return best[1] if best is not None else [0.0, 0.0, 0.0]


def _solve(a: list[list[float]], b: list[float]) -> list[float] | None:
    """Gaussian elimination with partial pivoting (n <= 3); None if singular."""
    n = len(b)
    m = [[*row, b[i]] for i, row in enumerate(a)]
    for col in range(n):
        piv = max(range(col, n), key=lambda r: abs(m[r][col]))
        if abs(m[piv][col]) < 1e-12:
            return None
        m[col], m[piv] = m[piv], m[col]
        for r in range(col + 1, n):
            f = m[r][col] / m[col][col]
            for c in range(col, n + 1):
                m[r][c] -= f * m[col][c]
    z = [0.0] * n
    for r in range(n - 1, -1, -1):
        z[r] = (m[r][n] - sum(m[r][c] * z[c] for c in range(r + 1, n))) / m[r][r]
    return z
