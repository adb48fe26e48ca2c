"""How the master answers Schedule: DIRECT, BATCH or QUEUE, with Java FlexLB HEAD's knobs and defaults.

Plain frozen dataclasses (no imports of the rest of flexlb), so the configuration parser fills them and
the scheduler reads them without either importing the other. Defaults are FlexLB HEAD's (its
`FlexlbConfig`); the FLEXLB_CONFIG key of each attribute is its camelCase name.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class ScheduleMode(enum.Enum):
    """`defaultScheduleMode`: how a Schedule call is answered."""

    DIRECT = "DIRECT"  # decide now, the caller dials the worker(s) itself
    BATCH = "BATCH"  # batch per prefill worker, EnqueueBatch there; the caller fetches with FetchResponse
    QUEUE = "QUEUE"  # a priority queue in front of DIRECT, bounded in size and in wait


class BatchAlgorithm(enum.Enum):
    """`flexlbBatchAlgorithm`."""

    FIXED_WINDOW = "fixed_window"
    SLO_BUDGET = "slo_budget"


@dataclass(frozen=True)
class BatchSettings:
    """`flexlbBatch*`: the master's per-prefill-worker batchers (BATCH mode)."""

    algorithm: BatchAlgorithm = BatchAlgorithm.FIXED_WINDOW
    size_max: int = 8  # flexlbBatchSizeMax
    fixed_wait_ms: int = 300  # flexlbBatchFixedWaitMs
    predict_threshold_ms: int = 0  # flexlbBatchPredictThresholdMs (0: off)
    window_ms: int = 300  # flexlbBatchWindowMs (slo_budget)
    min_size: int = 3  # flexlbBatchMinSize (slo_budget)
    emergency_budget_ms: int = 150  # flexlbBatchEmergencyBudgetMs
    dispatch_guard_ms: int = 40  # flexlbBatchDispatchGuardMs
    arrival_ema_alpha: float = 0.2  # flexlbBatchArrivalEmaAlpha
    arrival_wait_guard_ms: int = 20  # flexlbBatchArrivalWaitGuardMs
    scan_ahead: int = 64  # flexlbBatchScanAhead
    slo_max_inflight_batches: int = 2  # flexlbBatchSloMaxInflightBatches
    fixed_max_inflight_batches: int = 0  # flexlbBatchFixedMaxInflightBatches (0: off)
    enqueue_deadline_ms: int = 5000  # flexlbBatchEnqueueDeadlineMs
    inflight_ttl_ms: int = 300_000  # flexlbInflightTtlMs
    max_capacity_tokens: int = 1_048_576  # flexlbBatchMaxCapacity
    queue_max_size: int = 1024  # flexlbBatchQueueMaxSize (per prefill worker)
    max_inflight: int = 100_000  # flexlbBatchMaxInflight (whole master)
    # not a HEAD field (this port's own): dispatch at once while the worker has no batch of this master in
    # flight, instead of waiting out the window for company; False is HEAD's exact behaviour
    dispatch_when_idle: bool = False  # flexlbBatchDispatchWhenIdle


@dataclass(frozen=True)
class QueueSettings:
    """QUEUE mode (`maxQueueSize`, `maxRetryCount`, `scheduleWorkerSize`)."""

    max_queue_size: int = 1_000_000
    max_retry_count: int = 0  # 0: retry a retryable failure until the request's timeout
    schedule_worker_size: int = 0  # 0: number of CPUs


@dataclass(frozen=True)
class PrioritySettings:
    """Request priority and its SLO (`autoTpm*`): SLO = base(seq_len bucket) x multiplier(priority)."""

    enabled: bool = False  # autoTpmEnabled
    default_priority: int = 50  # autoTpmDefaultPriority
    # autoTpmSloLengthBuckets "256:150,1024:300,...,*:2400": (upper seq_len inclusive or None for *, slo ms)
    slo_length_buckets: tuple[tuple[int | None, int], ...] = (
        (256, 150), (1024, 300), (4096, 600), (16384, 1200), (None, 2400))
    # autoTpmPrioritySloMultipliers "30:2.0,...,70:0.5": piecewise linear, clamped at both ends
    priority_slo_multipliers: tuple[tuple[int, float], ...] = (
        (30, 2.0), (40, 1.5), (50, 1.0), (60, 0.75), (70, 0.5))


@dataclass(frozen=True)
class ScheduleSettings:
    """Everything that shapes a Schedule answer beyond the routing strategy."""

    mode: ScheduleMode = ScheduleMode.BATCH  # defaultScheduleMode
    batch: BatchSettings = field(default_factory=BatchSettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    priority: PrioritySettings = field(default_factory=PrioritySettings)
    # not Java fields (this port's own): BATCH to PDFUSION workers instead of answering DIRECT there (RTP-LLM's
    # fused workers do not serve EnqueueBatch; the mock worker does)
    batch_fused_workers: bool = False  # batchFusedWorkers
    request_state_ttl_ms: int = 60_000  # requestStateTtlMs: a terminal lifecycle stays visible this long
    status_poll_interval_ms: int = 50  # statusPollIntervalMs: GetWorkerStatus of workers holding placed requests
