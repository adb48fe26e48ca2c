"""The strategy contract: pick one worker among already-filtered candidates."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from flexlb.balancer.request import Pick, RouteRequest
from flexlb.balancer.workers import WorkerState


@dataclass
class PickContext:
    """What a strategy may use besides the candidates: injected randomness and time."""

    rng: random.Random
    now_s: float


class Strategy(Protocol):
    """A strategy scores candidates and picks one; it must not mutate worker state."""

    name: str

    def pick(self, candidates: Sequence[WorkerState], req: RouteRequest, ctx: PickContext) -> Pick:
        """Choose one of `candidates` (never empty)."""
        ...


def least_recently_chosen(candidates: Sequence[WorkerState]) -> WorkerState:
    """The candidate chosen longest ago; over repeated picks this is round-robin order."""
    return min(candidates, key=lambda w: w.last_chosen_seq)
