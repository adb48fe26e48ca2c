"""The strategy contract: pick one worker among already-filtered candidates."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from flexlb.balancer.prefill_queue import PrefillQueue
from flexlb.balancer.request import Pick, RouteRequest
from flexlb.balancer.ttft import TtftModel
from flexlb.balancer.workers import WorkerState


@dataclass
class PickContext:
    """What a strategy may use besides the candidates: randomness, time, cache matches, TTFT model,
    and the gateway's prefill queue (None when it is off)."""

    rng: random.Random
    now_s: float
    matched_blocks: dict[str, int] = field(default_factory=dict)  # worker key → leading blocks held
    ttft: TtftModel | None = None
    queue: PrefillQueue | None = None

    def cached_tokens(self, req: RouteRequest, worker: WorkerState) -> int:
        """Prompt tokens the worker is expected to reuse (the last token is always computed)."""
        blocks = self.matched_blocks.get(worker.key, 0)
        if not blocks:
            return 0
        return min(blocks * req.block_size_tokens, max(req.prompt_tokens - 1, 0))


class Strategy(Protocol):
    """A strategy scores candidates and picks one; it must not mutate worker state."""

    name: str
    # whether its calls go through the gateway's prefill queue: the TTFT-aware strategies, whose
    # estimates order the queue; the simple ones and the peer baselines route straight through
    holds: bool

    def pick(self, candidates: Sequence[WorkerState], req: RouteRequest, ctx: PickContext) -> Pick:
        """Choose one of `candidates` (never empty)."""
        ...


def least_recently_chosen(candidates: Sequence[WorkerState]) -> WorkerState:
    """The candidate chosen longest ago; over repeated picks this is round-robin order."""
    return min(candidates, key=lambda w: w.last_chosen_seq)
