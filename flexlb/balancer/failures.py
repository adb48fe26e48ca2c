"""Whose fault a failed call is: the worker's, a busy worker's, the request's or the client's.

Pure: a gRPC status name and the engine ErrorCode a worker put in its ErrorDetailsPB trailer go in,
a FailureKind comes out. It decides two things for the gateway: whether the failure counts toward the
worker's ejection (balancer/health.py) and whether a failure before the first response message may be
tried on another worker. Reading the engine code off the trailers is protobuf work and lives in
flexlb/call/failures_wire.py, so the balancer imports neither grpc nor protobuf.

The engine codes and their gRPC statuses are RTP-LLM's (rtp_llm/cpp/utils/ErrorCode.h and
rtp_llm/cpp/utils/RpcErrorCode.h), copied here as data; FlexLB's own codes (8402-8406) are noted.
"""

from __future__ import annotations

import enum


class FailureKind(enum.Enum):
    """What a finished (or failed) attempt says about the worker that served it."""

    OK = "ok"  # the call succeeded
    WORKER = "worker"  # the worker failed: blame it (toward ejection) and fail over before the first message
    BUSY = "busy"  # admission, preemption, queueing: fail over, but a busy worker is not a sick one
    REQUEST = "request"  # this request fails on any worker of the deployment: no blame, no failover
    CLIENT = "client"  # the client cancelled or its deadline ran out: nobody's fault, nothing to retry

    @property
    def blames_worker(self) -> bool:
        """Counts toward the worker's outlier ejection."""
        return self is FailureKind.WORKER

    @property
    def fails_over(self) -> bool:
        """May be tried on another worker when no response message reached the client yet."""
        return self is FailureKind.WORKER or self is FailureKind.BUSY


W, B, R, C = FailureKind.WORKER, FailureKind.BUSY, FailureKind.REQUEST, FailureKind.CLIENT

# --- engine ErrorCode (RTP-LLM ErrorCode.h) -> kind -------------------------------------------------
ENGINE_CODE_KIND: dict[int, FailureKind] = {
    # The request itself is wrong or beyond this deployment's limits: every worker would answer the same.
    511: R,  # LONG_PROMPT_ERROR (OUT_OF_RANGE)
    604: R,  # ERROR_GENERATE_CONFIG_FORMAT
    605: R,  # INVALID_PARAMS
    607: R,  # EXCEEDS_KV_CACHE_MAX_LEN
    608: R, 609: R, 610: R, 611: R, 612: R, 613: R,  # GRAMMAR_*: the request's structured-output grammar
    901: R,  # MM_LONG_PROMPT_ERROR
    902: R,  # MM_WRONG_FORMAT_ERROR
    905: R,  # MM_NOT_SUPPORTED_ERROR (the model, the same on every worker)
    8101: R,  # OUT_OF_VOCAB_RANGE (OUT_OF_RANGE): token ids outside the vocabulary
    8406: R,  # FlexLB: bad request
    # The request's own deadline (generate_config.timeout_ms or the gRPC deadline seen by the worker)
    # is spent: RTP-LLM reports "query has been running too long". Another worker would start a budget
    # the client no longer has, and RTP-LLM's frontend does not re-route it (below 8000). A worker that
    # hangs is caught by the gateway's own first-message timeout (a bare DEADLINE_EXCEEDED) instead.
    603: R,  # GENERATE_TIMEOUT (DEADLINE_EXCEEDED)
    # Cancelled: by the client, or by the gateway on the client's behalf.
    8100: C,  # CANCELLED
    # Busy, not sick: another worker may take the request now, and the worker did nothing wrong.
    8106: B,  # GRAMMAR_COMPILE_OVERLOADED (RTP-LLM: "retryable grammar resource failure")
    8213: B,  # WAIT_TO_RUN_TIMEOUT: waited longer than the worker's max queue time; overload
    8330: B,  # P2P_CONNECTOR_TRANSFER_QUEUE_REJECTED: the KV transfer queue is full; overload
    # PRIORITY_PREEMPTED (RESOURCE_EXHAUSTED): the worker's own scheduler gave the slot to a higher priority
    # request. That is about that worker's capacity, not its health; before the first message nothing was
    # produced, so another worker may have room (bounded by the attempt cap and the deadline budget). RTP-LLM's
    # frontend treats it as terminal; the gateway, which sees the other workers, tries one more.
    8429: B,
    8402: B, 8403: B, 8404: B,  # FlexLB: no prefill / decode / fused worker available (from a downstream hop)
    # The worker failed (not the request). Each group:
    # - the engine raised or does not know what happened
    514: W,  # UNKNOWN_ERROR
    606: W,  # EXECUTION_EXCEPTION
    # - device memory: the engine admitted the request and could not allocate its KV cache (RESOURCE_EXHAUSTED
    #   on the wire, but unlike admission it is the worker that got into that state; fail over and count it)
    602: W,  # MALLOC_FAILED
    8211: W,  # DECODE_MALLOC_FAILED
    # - the engine's output path: the stream's output queue overflowed or ended in an internal state
    #   (before the first message its own consumer stalled; mid-stream it may also be a slow reader, which
    #   one call cannot show: the detectors need several in a row or a failure share to act)
    8102: W,  # OUTPUT_QUEUE_FULL
    8103: W, 8104: W, 8105: W,  # OUTPUT_QUEUE_IS_EMPTY, FINISHED, OUTPUT_QUEUE_NO_UPDATE
    # - multimodal processing on the worker (its VIT engine, its downloader, its remote VIT call)
    903: W,  # MM_PROCESS_ERROR
    904: W,  # MM_EMPTY_ENGINE_ERROR: the worker has no multimodal engine
    906: W,  # MM_DOWNLOAD_FAILED (a bad URL also lands here: one call is not enough to eject)
    907: W,  # MM_REMOTE_RPC_FAILED
    # - load-balance status of the worker's own nodes (TP/DP peers) unavailable
    8400: W,  # GET_PART_NODE_STATUS_FAILED
    8401: W,  # GET_ALL_NODE_STATUS_FAILED
}
# - RPC between workers (PD hand-off, remote generate, connections, the PD peer's deadlines and keep-alive)
ENGINE_CODE_KIND.update(dict.fromkeys(range(8200, 8213), W))  # 8200 GET_HOST_FAILED .. 8212 LOAD_KV_CACHE_FAILED
ENGINE_CODE_KIND[8214] = W  # KEEP_ALIVE_TIMEOUT
# - KV cache store and P2P connector transfers between workers (8300-8332), except the queue rejection above
ENGINE_CODE_KIND.update({c: W for c in range(8300, 8333) if c != 8330})

# --- gRPC status (no engine code, or one this table does not know) -> kind --------------------------
GRPC_CODE_KIND: dict[str, FailureKind] = {
    "OK": FailureKind.OK,
    "CANCELLED": C,
    "UNKNOWN": W,  # e.g. a worker that raised before it could say more
    "INVALID_ARGUMENT": R,
    # no details: the worker's own deadline or the gateway's first-message timeout. When the client's
    # deadline ran out the caller says so (`client_ended`) and it is CLIENT instead.
    "DEADLINE_EXCEEDED": W,
    "NOT_FOUND": R,
    "ALREADY_EXISTS": R,
    "PERMISSION_DENIED": R,
    "RESOURCE_EXHAUSTED": B,  # the worker's admission (no details), or a message size limit
    "FAILED_PRECONDITION": R,
    "ABORTED": B,  # a conflict the gRPC spec says to retry at a higher level
    "OUT_OF_RANGE": R,
    "UNIMPLEMENTED": R,  # the method, the same on every worker of the deployment
    "INTERNAL": W,
    "UNAVAILABLE": W,  # connect error, reset stream, lost connection, a worker shutting down
    "DATA_LOSS": W,
    "UNAUTHENTICATED": R,
}
_GRPC_NUMBERS = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
)

del W, B, R, C


def status_name(code: str) -> str:
    """Normalise a status to its name: `UNAVAILABLE`, `StatusCode.UNAVAILABLE` and `14` are the same."""
    name = code.strip().upper()
    if name.startswith("STATUSCODE."):
        name = name[len("STATUSCODE."):]
    if name.isdigit():
        n = int(name)
        return _GRPC_NUMBERS[n] if n < len(_GRPC_NUMBERS) else "UNKNOWN"
    return name


def classify(grpc_code_name: str, engine_code: int | None, *, client_ended: bool = False) -> FailureKind:
    """The kind of an attempt's outcome.

    `grpc_code_name`: the status the worker (or the gateway, for its own first-message timeout and
    for transport failures: UNAVAILABLE) ended the attempt with, as a name, `StatusCode.NAME` or number.
    `engine_code`: ErrorDetailsPB.error_code from the worker's trailers (failures_wire.py), None or 0
    when absent. A known engine code decides; otherwise the gRPC status does (an unknown status counts
    as UNKNOWN). `client_ended`: the client cancelled or its own deadline ran out — then it is CLIENT
    whatever the worker said (a worker answering after the client left is not to blame).
    """
    name = status_name(grpc_code_name)
    if name == "OK":
        return FailureKind.OK
    if client_ended:
        return FailureKind.CLIENT
    if engine_code:
        kind = ENGINE_CODE_KIND.get(engine_code)
        if kind is not None:
            return kind
    return GRPC_CODE_KIND.get(name, FailureKind.WORKER)
