"""Reference baselines implemented from their published rules (../shared/reference/peers.md §2).

They keep their own prefix records, as the originals do, so comparing them with FlexLB's
strategies compares routing rules, not index quality.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from flexlb.balancer.prefix_index import PrefixIndex, PrefixIndexConfig
from flexlb.balancer.request import Pick, RouteRequest
from flexlb.balancer.strategies.base import PickContext
from flexlb.balancer.workers import WorkerState


class SGLangCacheAware:
    """SGLang router's cache-aware policy with its current defaults (0.3 / 64 / 1.5).

    Imbalanced (max - min in-flight > 64 and max > 1.5 x min): least loaded. Otherwise the longest
    prefix match if it covers more than 30% of the prompt, else the worker with the smallest tree.
    The tree is pruned only at 2^26 tokens, which traces of this size never reach.
    """

    name = "SGLANG_CACHE_AWARE"
    holds = False

    def __init__(self, cache_threshold: float = 0.3, balance_abs_threshold: int = 64,
                 balance_rel_threshold: float = 1.5, max_tree_size_tokens: int = 2**26) -> None:
        self.cache_threshold = cache_threshold
        self.balance_abs_threshold = balance_abs_threshold
        self.balance_rel_threshold = balance_rel_threshold
        self.max_tree_size_tokens = max_tree_size_tokens
        self._tree: PrefixIndex | None = None

    def pick(self, candidates: Sequence[WorkerState], req: RouteRequest, ctx: PickContext) -> Pick:
        """SGLang's two-regime rule."""
        block = max(req.block_size_tokens, 1)
        if self._tree is None:
            self._tree = PrefixIndex(PrefixIndexConfig(self.max_tree_size_tokens // block, math.inf))
        loads = [w.in_flight for w in candidates]
        lo, hi = min(loads), max(loads)
        if hi - lo > self.balance_abs_threshold and hi > self.balance_rel_threshold * lo:
            chosen = min(candidates, key=lambda w: (w.in_flight, ctx.rng.random()))
            reason = "imbalanced_least_loaded"
        else:
            matched = self._tree.match(req.block_keys) if req.block_keys else {}
            best = max(candidates, key=lambda w: (matched.get(w.key, 0), -w.in_flight, ctx.rng.random()))
            ratio = matched.get(best.key, 0) * block / max(req.prompt_tokens, 1)
            if ratio > self.cache_threshold:
                chosen, reason = best, "prefix_match"
            else:
                tree = self._tree
                chosen = min(candidates, key=lambda w: (tree.blocks_held(w.key), ctx.rng.random()))
                reason = "smallest_tree"
        if req.block_keys:
            self._tree.record(chosen.key, req.block_keys, ctx.now_s)
        return Pick(chosen, reason)


class DynamoKv:
    """NVIDIA Dynamo's KV router cost: w x uncached prefill blocks + active blocks (w = 1), argmin.

    Approximate mode (no engine KV events): the router's own record, forgotten after 120 s.
    """

    name = "DYNAMO_KV"
    holds = False

    def __init__(self, overlap_score_weight: float = 1.0, ttl_s: float = 120.0) -> None:
        self.overlap_score_weight = overlap_score_weight
        self._index = PrefixIndex(PrefixIndexConfig(2**40, ttl_s))

    def pick(self, candidates: Sequence[WorkerState], req: RouteRequest, ctx: PickContext) -> Pick:
        """Lowest block cost; ties at random."""
        block = max(req.block_size_tokens, 1)
        matched = self._index.match(req.block_keys) if req.block_keys else {}
        prompt_blocks = math.ceil(req.prompt_tokens / block)

        def cost(w: WorkerState) -> float:
            prefill_blocks = prompt_blocks - matched.get(w.key, 0)
            return self.overlap_score_weight * prefill_blocks + w.active_tokens / block

        chosen = min(candidates, key=lambda w: (cost(w), ctx.rng.random()))
        if req.block_keys:
            self._index.record(chosen.key, req.block_keys, ctx.now_s)
        return Pick(chosen, "kv_cost")
