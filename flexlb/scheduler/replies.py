"""FlexLB's Schedule error codes (flexlb-original §7.1) and the shapes of Schedule answers."""

from __future__ import annotations

import json
from collections.abc import Iterable

from flexlb.balancer.request import Decision
from flexlb.balancer.workers import WorkerState
from flexlb.pb import flexlb_schedule_service_pb2 as fpb

OK = 200
NO_AVAILABLE_WORKER = 8400
NO_WORKER_CODE = {"PREFILL": 8402, "DECODE": 8403, "PDFUSION": 8404, "VIT": 8405, "FRONTEND": 8407}
INVALID_REQUEST = 8406
QUEUE_FULL = 8502
QUEUE_TIMEOUT = 8503
BATCH_DISPATCH_FAILED = 8510
BATCH_SLO_EXPIRED = 8511
BATCH_TOKEN_CAPACITY_EXCEEDED = 8514
INTERNAL = 500
# what QUEUE mode puts back in the queue (StrategyErrorType.canRetry)
RETRYABLE = frozenset({8400, 8402, 8403, 8404, 8405, 8407})

HIGHER_PRIORITY_AHEAD = fpb.HIGHER_PRIORITY_AHEAD
SAME_PRIORITY_AHEAD = fpb.SAME_PRIORITY_AHEAD
RESOURCE_EXHAUSTED = fpb.RESOURCE_EXHAUSTED


def status_json(status_name: str, detail: str) -> str:
    """error_message of 8502/8503: {"status_name": ..., "detail": ...}."""
    return json.dumps({"status_name": status_name, "detail": detail})


def queue_full_message(detail: str) -> str:
    """8502's error_message."""
    return status_json("TooManyRequests", detail)


def queue_timeout_message(detail: str) -> str:
    """8503's error_message."""
    return status_json("GatewayTimeout", detail)


def reject_reason(priority: int, ahead: Iterable[int]) -> int:
    """Why a request was turned away, from the priorities of those ahead of it (ScheduleFailureReasonPB)."""
    same = False
    for p in ahead:
        if p > priority:
            return HIGHER_PRIORITY_AHEAD
        same = same or p == priority
    return SAME_PRIORITY_AHEAD if same else RESOURCE_EXHAUSTED


def server_status(w: WorkerState) -> fpb.FlexlbServerStatusPB:
    """One chosen worker as the frontend reads it (it turns each entry into a RoleAddrPB)."""
    a = w.addr
    return fpb.FlexlbServerStatusPB(role=a.role.name, server_ip=a.ip, http_port=a.http_port, grpc_port=a.grpc_port)


def decision_workers(d: Decision, decode_first: bool = False) -> list[WorkerState]:
    """Every worker of a decision: the target, its decode peer and any other role the router chose (VIT)."""
    main = [d.target] if d.decode is None else ([d.decode, d.target] if decode_first else [d.target, d.decode])
    vit = getattr(d, "vit", None)  # a VIT worker, when VIT workers are configured: after the pair
    return [*main, vit] if isinstance(vit, WorkerState) else main
