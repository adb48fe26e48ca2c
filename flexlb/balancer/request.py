"""What the balancer is asked (RouteRequest) and what it answers (Pick, Decision)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from flexlb.balancer.workers import WorkerState


class Deploy(enum.Enum):
    """How the cluster is deployed: one fused worker per call, or a prefill + decode pair."""

    PD_FUSION = "PD_FUSION"
    DISAGGREGATED = "DISAGGREGATED"


@dataclass(frozen=True)
class RouteRequest:
    """The routing-relevant facts of one call, parsed once from the request."""

    request_id: int
    prompt_tokens: int
    max_new_tokens: int = 0
    # workers (ip:grpc_port) that must not be chosen, e.g. after a failure before the first byte
    exclude: frozenset[str] = frozenset()
    # chained KV block keys of the prompt (RTP-LLM hash) and the block size they were cut with
    block_keys: tuple[int, ...] = ()
    block_size_tokens: int = 0
    # who sent it (a client connection): the prefill queue shares a worker's slots fairly among clients
    client: str = ""
    # the longest single sequence, when it is not the whole prompt (a BatchGenerateCall of several inputs);
    # 0: prompt_tokens. Workers whose max_seq_len is below it are not chosen
    seq_len_tokens: int = 0
    # the worker group every role must come from (traffic policy, flexlb/balancer/traffic_policy.py); "": any
    pinned_group: str = ""

    @property
    def longest_sequence(self) -> int:
        """Tokens of the longest sequence the worker must hold (checked against its max_seq_len)."""
        return self.seq_len_tokens or self.prompt_tokens


def cached_tokens(req: RouteRequest, matched_blocks: int) -> int:
    """Prompt tokens a worker holding `matched_blocks` leading blocks reuses (the last token is always computed)."""
    return min(matched_blocks * req.block_size_tokens, max(req.prompt_tokens - 1, 0))


@dataclass(frozen=True)
class Pick:
    """One strategy's choice among candidates, with the reason it chose it."""

    worker: WorkerState
    reason: str
    estimate_ms: float | None = None


@dataclass(frozen=True)
class Decision:
    """The routing decision: the worker to call and, in PD mode, the decode worker paired with it."""

    target: WorkerState
    decode: WorkerState | None
    strategy: str
    reason: str
    estimate_ms: float | None = None  # estimated TTFT on the target
    cached_tokens: int = 0  # prompt tokens the index expects the target to reuse
    prefill_ms: float = 0.0  # estimated prefill part of the TTFT
    # the VIT (multimodal) worker the engine is to use, when VIT workers are configured
    vit: WorkerState | None = None

    @property
    def workers(self) -> tuple[WorkerState, ...]:
        """Every worker of the decision: the target, then the decode peer and the VIT worker if any."""
        if self.vit is None:
            return (self.target,) if self.decode is None else (self.target, self.decode)
        return (self.target, self.vit) if self.decode is None else (self.target, self.decode, self.vit)


class NoWorkerAvailable(Exception):
    """No worker of a needed role can take the call."""

    def __init__(self, role: str, detail: str, saturated: bool = False) -> None:
        super().__init__(f"no available {role} worker: {detail}")
        self.role = role
        # every candidate is at its in-flight cap: busy, not broken (RESOURCE_EXHAUSTED, not UNAVAILABLE)
        self.saturated = saturated


class PromptTooLong(NoWorkerAvailable):
    """No configured worker of a needed role takes a prompt this long (each reports a smaller max_seq_len):
    no retry can serve it, unlike a worker that is only out of rotation."""

    def __init__(self, role: str, prompt_tokens: int, max_seq_len: int) -> None:
        Exception.__init__(self, f"prompt of {prompt_tokens} tokens is longer than the max_seq_len of every {role} "
                                 f"worker (largest {max_seq_len})")
        self.role = role
        self.saturated = False
        self.prompt_tokens = prompt_tokens
        self.max_seq_len = max_seq_len
