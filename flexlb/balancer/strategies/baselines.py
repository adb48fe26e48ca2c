"""Reference baselines implemented from their published rules (SGLang's cache-aware router, Dynamo's KV router).

They keep their own prefix records, as the originals do, so comparing them with FlexLB's
strategies compares routing rules, not index quality.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from flexlb.balancer.prefix_index import PrefixIndex, PrefixIndexConfig
from flexlb.balancer.request import Pick, RouteRequest
from flexlb.balancer.strategies.base import PickContext, Picker, Scored, Scorer
from flexlb.balancer.workers import WorkerState


class SGLangTreeScorer(Scorer):
    """SGLang router's own prefix tree: the leading blocks of the prompt each candidate holds, and the
    size of each candidate's tree. Pruned only at `max_tree_size_tokens`, which traces of this size never reach."""

    name = "sglang_tree"

    def __init__(self, max_tree_size_tokens: int = 2**26) -> None:
        self.max_tree_size_tokens = max_tree_size_tokens
        self._tree: PrefixIndex | None = None

    def _tree_for(self, req: RouteRequest) -> PrefixIndex:
        if self._tree is None:
            # sized in blocks of the first request's block size (the gateway uses one size)
            block = max(req.block_size_tokens, 1)
            self._tree = PrefixIndex(PrefixIndexConfig(self.max_tree_size_tokens // block, math.inf))
        return self._tree

    def score(self, candidates: Sequence[WorkerState], req: RouteRequest, ctx: PickContext) -> Scored:
        """Features `matched_blocks` and `tree_blocks` per candidate."""
        tree = self._tree_for(req)
        matched = tree.match(req.block_keys) if req.block_keys else {}
        return Scored(candidates, features={"matched_blocks": [matched.get(w.key, 0) for w in candidates],
                                            "tree_blocks": [tree.blocks_held(w.key) for w in candidates]})

    def chosen(self, worker: WorkerState, req: RouteRequest, ctx: PickContext) -> None:
        """The prompt now lives in the chosen worker's tree."""
        if req.block_keys:
            self._tree_for(req).record(worker.key, req.block_keys, ctx.now_s)


class SGLangPicker(Picker):
    """SGLang router's cache-aware policy with its current defaults (0.3 / 64 / 1.5).

    Imbalanced (max - min in-flight > 64 and max > 1.5 x min): least loaded. Otherwise the longest
    prefix match if it covers more than 30% of the prompt, else the worker with the smallest tree.
    """

    name = "sglang"

    def __init__(self, cache_threshold: float = 0.3, balance_abs_threshold: int = 64,
                 balance_rel_threshold: float = 1.5) -> None:
        self.cache_threshold = cache_threshold
        self.balance_abs_threshold = balance_abs_threshold
        self.balance_rel_threshold = balance_rel_threshold

    def pick(self, scored: Scored, req: RouteRequest, ctx: PickContext) -> Pick:
        """SGLang's two-regime rule; ties at random."""
        ws, features = scored.workers, scored.features
        assert features is not None, "SGLangPicker needs SGLangTreeScorer's features"
        rng = ctx.rng
        loads = [w.in_flight for w in ws]
        lo, hi = min(loads), max(loads)
        if hi - lo > self.balance_abs_threshold and hi > self.balance_rel_threshold * lo:
            return Pick(min(ws, key=lambda w: (w.in_flight, rng.random())), "imbalanced_least_loaded")
        matched = features["matched_blocks"]
        best = max(range(len(ws)), key=lambda i: (matched[i], -ws[i].in_flight, rng.random()))
        if matched[best] * max(req.block_size_tokens, 1) / max(req.prompt_tokens, 1) > self.cache_threshold:
            return Pick(ws[best], "prefix_match")
        tree = features["tree_blocks"]
        return Pick(ws[min(range(len(ws)), key=lambda i: (tree[i], rng.random()))], "smallest_tree")


class DynamoKvScorer(Scorer):
    """NVIDIA Dynamo's KV router cost: w x uncached prefill blocks + active blocks (w = 1).

    Approximate mode (no engine KV events): the router's own record, forgotten after 120 s.
    """

    name = "dynamo_kv"

    def __init__(self, overlap_score_weight: float = 1.0, ttl_s: float = 120.0) -> None:
        self.overlap_score_weight = overlap_score_weight
        self._index = PrefixIndex(PrefixIndexConfig(2**40, ttl_s))

    def score(self, candidates: Sequence[WorkerState], req: RouteRequest, ctx: PickContext) -> Scored:
        """Block cost per candidate."""
        block = max(req.block_size_tokens, 1)
        matched = self._index.match(req.block_keys) if req.block_keys else {}
        prompt_blocks = math.ceil(req.prompt_tokens / block)
        weight = self.overlap_score_weight
        return Scored(candidates, [weight * (prompt_blocks - matched.get(w.key, 0)) + w.active_tokens / block
                                   for w in candidates])

    def chosen(self, worker: WorkerState, req: RouteRequest, ctx: PickContext) -> None:
        """The prompt is now on record for the chosen worker."""
        if req.block_keys:
            self._index.record(worker.key, req.block_keys, ctx.now_s)
