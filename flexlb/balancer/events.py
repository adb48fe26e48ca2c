"""What the router hands back about held calls instead of calling back: the owner delivers these itself."""

from __future__ import annotations

from dataclasses import dataclass

from flexlb.balancer.workers import Lease


@dataclass(frozen=True)
class Released:
    """A held call may go to its worker now (`lease.decision.target`: it may have been taken over)."""

    lease: Lease
    payload: object = None


@dataclass(frozen=True)
class Evicted:
    """A held call's worker went away: the owner releases the lease and routes the call again."""

    lease: Lease
    payload: object = None


HoldEvent = Released | Evicted
