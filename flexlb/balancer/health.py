"""Passive outlier ejection (Envoy-style) and the availability rule the router applies.

Consecutive failures of real traffic eject a worker for a base time that doubles with each
repeated ejection (capped). When the time is up the worker is not flooded back: it stays out
until an active probe succeeds. Passive signals never eject more than a set share of a role.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flexlb.balancer.workers import WorkerState


@dataclass(frozen=True)
class OutlierConfig:
    """Ejection policy."""

    consecutive_failures: int = 3
    base_ejection_s: float = 5.0
    max_ejection_s: float = 300.0
    max_ejected_share: float = 0.5


def usable(w: WorkerState, now_s: float) -> bool:
    """In rotation: healthy by active checks, not ejected, not waiting for its re-admission probe,
    not taken out by an operator."""
    return w.healthy and not w.probing and not w.operator_out and w.ejected_until_s <= now_s


class OutlierDetector:
    """Counts consecutive failures per worker and ejects; pure (the caller passes the time)."""

    def __init__(self, config: OutlierConfig) -> None:
        self.config = config
        self.ejections_total = 0

    def success(self, w: WorkerState) -> None:
        """A call on the worker got a response: the failure streak ends."""
        w.consecutive_failures = 0

    def failure(self, w: WorkerState, role_workers: Sequence[WorkerState], now_s: float) -> bool:
        """A call failed in a way that blames the worker; returns True if this ejected it."""
        w.consecutive_failures += 1
        if w.consecutive_failures < self.config.consecutive_failures or w.probing:
            return False
        out = sum(1 for x in role_workers if x.probing)
        if out + 1 > self.config.max_ejected_share * len(role_workers):
            return False  # never empty a role on passive signals alone
        duration = min(self.config.base_ejection_s * 2 ** w.ejections, self.config.max_ejection_s)
        w.ejected_until_s = now_s + duration
        w.ejections += 1
        w.probing = True
        w.consecutive_failures = 0
        self.ejections_total += 1
        return True

    def probe_ok(self, w: WorkerState, now_s: float) -> None:
        """An active probe succeeded: an ejected worker whose time is up is back in rotation."""
        if w.probing and w.ejected_until_s <= now_s:
            w.probing = False
            w.ejected_until_s = 0.0
