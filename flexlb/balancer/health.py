"""Passive outlier ejection (Envoy-style) and the availability rule the router applies.

Three detectors act on worker faults of real traffic (FailureKind.WORKER, balancer/failures.py):

- consecutive failures (`consecutive_5xx`): inline, on the failure that completes the streak;
- success rate (`success_rate`): every interval, among the workers of a role that served at least
  `success_rate_request_volume` calls in it (and only if there are `success_rate_minimum_hosts` of
  them), those whose success rate is below mean - `success_rate_stdev_factor` x stdev;
- failure percentage (`failure_percentage`): every interval, a worker with at least
  `failure_percentage_request_volume` calls of which `failure_percentage_threshold` % or more failed,
  in a role with at least `failure_percentage_minimum_hosts` workers in rotation. This one does not
  compare workers, so it works with 2-4 workers where the stdev rule says nothing.

An ejection lasts base x the worker's ejection multiplier (Envoy's rule): the multiplier goes up by one
with each ejection (up to what reaches `max_ejection_s`) and down by one for each interval the worker
spends in rotation. When the time is up the worker is not flooded back: it stays out until an active
probe succeeds. Passive signals never eject more than `max_ejected_share` of a role.

Pure: the owner passes the time, calls success()/fault() (or observe()) per attempt and evaluate()
per role periodically, and acts on the Ejection events they return (log, metrics, evict held calls).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from flexlb.balancer.failures import FailureKind
from flexlb.balancer.workers import WorkerState

CONSECUTIVE_5XX = "consecutive_5xx"
SUCCESS_RATE = "success_rate"
FAILURE_PERCENTAGE = "failure_percentage"
EJECTION_REASONS = (CONSECUTIVE_5XX, SUCCESS_RATE, FAILURE_PERCENTAGE)

# a worker's state as exported (flexlb_worker_state) and shown; exactly one holds at a time
IN_ROTATION = "in_rotation"
EJECTED = "ejected"
OUT_BY_OPERATOR = "out_by_operator"
UNHEALTHY = "unhealthy"
WORKER_STATES = (IN_ROTATION, EJECTED, OUT_BY_OPERATOR, UNHEALTHY)

_NOTE = "outlier"  # WorkerState.notes key (shown by /actuator/info)


@dataclass(frozen=True)
class OutlierConfig:
    """Ejection policy. Envoy's names and defaults, except where LLM traffic and small roles differ.

    consecutive_failures: 3 (Envoy consecutive_5xx: 5). A worker that fails every call fails fast and so
      looks least loaded: it draws most of the traffic, and each failure before it is ejected costs a
      failover hop. Three in a row is far from chance for a healthy worker.
    base_ejection_s: 5 (Envoy 30 s). The worker returns only after an active probe succeeds anyway, and
      the multiplier makes repeat offenders stay out longer.
    max_ejection_s: 300 (Envoy's). max_ejected_share: 0.5 (Envoy max_ejection_percent 10 %, "at least one
      host"): with the 2-8 workers of a typical role 10 % would be one host or none; half keeps at least
      half the role serving on passive signals alone (a role of one worker is never ejected).
    interval_s: 5 (Envoy 10 s). LLM calls are long but a broken worker fails fast; half the interval halves
      the time it keeps drawing calls. The owner may call evaluate() more often: it waits for the interval.
    success_rate_minimum_hosts: 5, success_rate_stdev_factor: 1.9 (Envoy's). The statistics need peers.
    success_rate_request_volume: 50 per interval (Envoy: 100 per 10 s; the same rate, 10 calls/s).
    failure_percentage_threshold: 85 % (Envoy's).
    failure_percentage_request_volume: 25 per interval (Envoy: 50 per 10 s; the same rate, 5 calls/s).
    failure_percentage_minimum_hosts: 2 (Envoy 5), counted as workers of the role in rotation, not as
      workers with the request volume: with 2 workers one that fails every call must go, and the healthy
      one may not see the volume (the failing one draws the traffic). max_ejected_share still bounds it.
    Set a minimum_hosts above the role size to turn a detector off.
    """

    consecutive_failures: int = 3
    base_ejection_s: float = 5.0
    max_ejection_s: float = 300.0
    max_ejected_share: float = 0.5
    interval_s: float = 5.0
    success_rate_minimum_hosts: int = 5
    success_rate_request_volume: int = 50
    success_rate_stdev_factor: float = 1.9
    failure_percentage_threshold: float = 85.0
    failure_percentage_minimum_hosts: int = 2
    failure_percentage_request_volume: int = 25


@dataclass(frozen=True)
class Ejection:
    """A worker taken out of rotation by outlier detection (only enforced ejections are reported)."""

    worker: str  # ip:grpc_port
    role: str  # Role name
    reason: str  # one of EJECTION_REASONS
    duration_s: float
    until_s: float  # the time (the caller's clock) after which a good probe may bring it back
    ejections: int  # how many times this worker was ejected, this one included
    detail: str  # for the log: what the detector saw


def usable(w: WorkerState, now_s: float) -> bool:
    """In rotation: healthy by active checks, not ejected, not waiting for its re-admission probe,
    not taken out by an operator."""
    return w.healthy and not w.probing and not w.operator_out and w.ejected_until_s <= now_s


def usable_workers(workers: Sequence[WorkerState], now_s: float) -> list[WorkerState]:
    """The usable ones of `workers`, in order (usable() inlined: routing runs this over every worker of a role on
    every decision, and the call per worker was a third of a decision's time over 1,250 workers)."""
    return [w for w in workers if w.healthy and not w.probing and not w.operator_out and w.ejected_until_s <= now_s]


def worker_state(w: WorkerState, now_s: float) -> str:
    """The one state a worker is in: operator > active checks > passive ejection > in rotation."""
    if w.operator_out:
        return OUT_BY_OPERATOR
    if not w.healthy:
        return UNHEALTHY
    if w.probing or w.ejected_until_s > now_s:
        return EJECTED
    return IN_ROTATION


class _Stats:
    """Per worker: this interval's outcomes and the ejection multiplier."""

    __slots__ = ("failed", "multiplier", "ok")

    def __init__(self) -> None:
        self.ok = 0
        self.failed = 0
        self.multiplier = 0


class OutlierDetector:
    """Counts worker faults per worker and ejects; pure (the caller passes the time)."""

    def __init__(self, config: OutlierConfig) -> None:
        self.config = config
        self.ejections_total = 0
        self.refused_total = 0  # detections not enforced because of max_ejected_share
        self._stats: dict[str, _Stats] = {}
        self._window_start_s: dict[str, float] = {}  # per role name: when the current interval began
        self._max_multiplier = max(1, math.ceil(config.max_ejection_s / config.base_ejection_s)) \
            if config.base_ejection_s > 0 else 1

    def forget(self, key: str) -> None:
        """A removed worker is gone: drop its counts (a worker re-added later starts clean)."""
        self._stats.pop(key, None)

    def _of(self, w: WorkerState) -> _Stats:
        st = self._stats.get(w.key)
        if st is None:
            st = self._stats[w.key] = _Stats()
        return st

    # ------------------------------------------------------------ per attempt

    def success(self, w: WorkerState) -> None:
        """The worker served the attempt (its first response message, or a good or request-caused end
        with no message): the failure streak ends and the interval counts a success."""
        w.consecutive_failures = 0
        self._of(w).ok += 1

    def fault(self, w: WorkerState, role_workers: Sequence[WorkerState], now_s: float, *,
              mid_stream: bool = False) -> Ejection | None:
        """The attempt failed because of the worker (FailureKind.WORKER). Returns the ejection if this
        failure completed a streak of `consecutive_failures` and the share cap allowed it.

        `mid_stream`: the attempt had already been counted as a success at its first message; that
        success becomes this failure (each attempt counts once in the success rate).
        """
        st = self._of(w)
        if mid_stream and st.ok > 0:
            st.ok -= 1
        st.failed += 1
        w.consecutive_failures += 1
        if w.consecutive_failures < self.config.consecutive_failures or w.probing:
            return None
        detail = f"{w.consecutive_failures} worker faults in a row"
        return self._eject(w, role_workers, now_s, CONSECUTIVE_5XX, detail)

    def observe(self, w: WorkerState, kind: FailureKind, role_workers: Sequence[WorkerState], now_s: float,
                *, mid_stream: bool = False) -> Ejection | None:
        """One call for any outcome: WORKER is a fault(); OK and REQUEST (the worker answered, correctly)
        are a success() unless `mid_stream` (already counted at the first message); BUSY and CLIENT say
        nothing about the worker's health and are not counted."""
        if kind is FailureKind.WORKER:
            return self.fault(w, role_workers, now_s, mid_stream=mid_stream)
        if (kind is FailureKind.OK or kind is FailureKind.REQUEST) and not mid_stream:
            self.success(w)
        return None

    def failure(self, w: WorkerState, role_workers: Sequence[WorkerState], now_s: float) -> bool:
        """Compatibility with the bool API: fault(), True if it ejected the worker."""
        return self.fault(w, role_workers, now_s) is not None

    # ------------------------------------------------------------ periodic

    def evaluate(self, role_workers: Sequence[WorkerState], now_s: float) -> list[Ejection]:
        """The interval sweep of one role (every worker in `role_workers` has the same role).

        Does nothing until `interval_s` has passed since the role's previous sweep (the first call only
        starts the interval), so the owner may call it from any periodic tick. Then: decays the ejection
        multiplier of workers in rotation, applies the success-rate and failure-percentage rules to the
        workers in rotation, ejects the worst first within the share cap, and starts a new interval.
        """
        if not role_workers:
            return []
        role = role_workers[0].role.name
        start = self._window_start_s.get(role)
        if start is None or now_s < start:
            self._window_start_s[role] = now_s
            return []
        if now_s - start < self.config.interval_s:
            return []
        self._window_start_s[role] = now_s
        cfg = self.config
        live = [w for w in role_workers if usable(w, now_s)]
        for w in live:
            st = self._of(w)
            if st.multiplier > 0:
                st.multiplier -= 1  # Envoy: a healthy interval takes one off the ejection multiplier
            if w.notes.get(_NOTE, "").startswith("not ejected"):
                w.notes.pop(_NOTE, None)
        found: dict[str, tuple[float, WorkerState, str, str]] = {}  # key -> (failure share, worker, reason, why)
        volume = [(w, self._of(w)) for w in live if self._total(w) >= cfg.success_rate_request_volume]
        if len(volume) >= cfg.success_rate_minimum_hosts and volume:
            rates = [st.ok / (st.ok + st.failed) for _, st in volume]
            mean = sum(rates) / len(rates)
            stdev = math.sqrt(sum((r - mean) ** 2 for r in rates) / len(rates))
            threshold = mean - cfg.success_rate_stdev_factor * stdev
            for (w, st), rate in zip(volume, rates, strict=True):
                if rate < threshold:
                    why = (f"success rate {rate:.1%} of {st.ok + st.failed} calls below {threshold:.1%} "
                           f"(mean {mean:.1%} - {cfg.success_rate_stdev_factor} x stdev {stdev:.1%}, "
                           f"{len(volume)} workers)")
                    found[w.key] = (1.0 - rate, w, SUCCESS_RATE, why)
        if len(live) >= cfg.failure_percentage_minimum_hosts:
            for w in live:
                st = self._of(w)
                total = st.ok + st.failed
                if total < cfg.failure_percentage_request_volume or w.key in found:
                    continue
                share = st.failed / total
                if share * 100.0 >= cfg.failure_percentage_threshold:
                    why = (f"{st.failed} of {total} calls failed ({share:.0%} >= "
                           f"{cfg.failure_percentage_threshold:g}%)")
                    found[w.key] = (share, w, FAILURE_PERCENTAGE, why)
        events = []
        for _, w, reason, why in sorted(found.values(), key=lambda f: (-f[0], f[1].key)):
            ev = self._eject(w, role_workers, now_s, reason, why)
            if ev is not None:
                events.append(ev)
        for w in role_workers:
            st = self._of(w)
            st.ok = st.failed = 0
        return events

    # ------------------------------------------------------------ re-admission

    def probe_ok(self, w: WorkerState, now_s: float) -> None:
        """An active probe succeeded: an ejected worker whose time is up is back in rotation."""
        if w.probing and w.ejected_until_s <= now_s:
            w.probing = False
            w.ejected_until_s = 0.0
            w.notes.pop(_NOTE, None)
            # judged afresh: faults of calls that were still in flight while it was out are not held against it
            w.consecutive_failures = 0
            st = self._of(w)
            st.ok = st.failed = 0

    # ------------------------------------------------------------ internals

    def _total(self, w: WorkerState) -> int:
        st = self._of(w)
        return st.ok + st.failed

    def _eject(self, w: WorkerState, role_workers: Sequence[WorkerState], now_s: float, reason: str,
               detail: str) -> Ejection | None:
        out = sum(1 for x in role_workers if x.probing)
        if out + 1 > self.config.max_ejected_share * len(role_workers):
            # never empty a role on passive signals alone; say so where /actuator/info shows it
            self.refused_total += 1
            w.notes[_NOTE] = (f"not ejected ({reason}: {detail}): {out} of {len(role_workers)} already out, "
                              f"cap {self.config.max_ejected_share:.0%}")
            return None
        st = self._of(w)
        st.multiplier = min(st.multiplier + 1, self._max_multiplier)
        duration = min(self.config.base_ejection_s * st.multiplier, self.config.max_ejection_s)
        w.ejected_until_s = now_s + duration
        w.ejections += 1
        w.probing = True
        w.consecutive_failures = 0
        st.ok = st.failed = 0
        self.ejections_total += 1
        w.notes[_NOTE] = f"ejected ({reason}): {detail}"
        return Ejection(w.key, w.role.name, reason, duration, w.ejected_until_s, w.ejections, detail)
