"""The record of one finished client call: what per-call metrics and the access log read."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CallRecord:
    """What one finished client call was: handed to `Dispatcher.call_ended` at its one finish (per-call
    metrics, the access log). Worker fields are None when no worker was chosen (a rejection)."""

    method: str
    code: str  # the final gRPC status name the client got
    duration_s: float  # from the call's start at the gateway to its finish
    ttft_s: float | None  # to the first response message relayed (None: none was)
    attempts: int  # 0 when no worker was tried
    request_id: int | None
    worker: str | None  # the PREFILL (or fused) worker of the last attempt
    role: str | None
    decode_worker: str | None  # PD: the DECODE paired with it
    strategy: str
    reason: str  # the decision's reason, or the rejection's
    prompt_tokens: int
    cached_tokens: int | None  # reported by the worker's first message (None: not reported)
    messages: int  # response messages relayed
    client: str
