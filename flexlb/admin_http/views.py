"""The JSON views of the gateway's state (/actuator/info, the master's snapshot, /rtp_llm/master/info).

Each per-worker dict is built here once, so every view shows a worker the same way; the views read
state and never change it.
"""

from __future__ import annotations

from typing import Any

from flexlb.balancer.health import worker_state
from flexlb.balancer.prefix_index import PrefixIndex
from flexlb.balancer.ttft import TtftModel
from flexlb.balancer.workers import Cluster, Role, WorkerState


def worker_view(w: WorkerState, now_s: float, ttft: TtftModel, index: PrefixIndex | None) -> dict[str, Any]:
    """One worker: address, state and its flags, load, the engine's own report, the TTFT model, the prefix index."""
    m = ttft.workers().get(w.key)
    return {
        "worker": w.key,
        "role": w.role.name,
        "group": w.addr.group,
        "http_port": w.addr.http_port,
        "state": worker_state(w, now_s),
        "healthy": w.healthy,
        "ejected": w.probing,
        "operator_out": w.operator_out,
        "ejections": w.ejections,
        "notes": dict(w.notes),
        "in_flight": w.in_flight,
        "active_tokens": w.active_tokens,
        "dispatched_total": w.dispatched_total,
        "reported_running": w.reported_running,
        # the engine's own GetWorkerStatus figures (0 until it reports them)
        "waiting_query_len": w.reported_waiting,
        "running_query_len": w.reported_running_queries,
        "untracked_waiting": w.untracked_waiting,
        "step_latency_ms": w.step_latency_ms,
        "max_seq_len": w.max_seq_len,
        "max_batch_tokens_size": w.max_batch_tokens,
        "reported_alive": w.reported_alive,
        "reported_role": w.reported_role.name if w.reported_role is not None else None,
        "kv_available_tokens": w.kv_available_tokens,
        "kv_total_tokens": w.kv_total_tokens,
        "ttft": None if m is None else {
            "prefill_coefficients": list(m.theta),
            "queue_wait_ms": m.queue_wait_ms(now_s),
            "abs_error_ms": m.abs_error_ms,
            "observations": m.observations,
        },
        "prefix_index_blocks": index.blocks_held(w.key) if index is not None else 0,
    }


def workers_view(cluster: Cluster, now_s: float, ttft: TtftModel, index: PrefixIndex | None) -> list[dict[str, Any]]:
    """Every worker, in configuration order."""
    return [worker_view(w, now_s, ttft, index) for w in cluster.all()]


def master_info(cluster: Cluster, real_master_host: str, queue_length: int = 0) -> dict[str, Any]:
    """/rtp_llm/master/info in the original FlexLB's shape ('' master host: null, as without HA); queue_length
    is what the scheduler holds (frontends report it as the master's queue)."""
    summary: dict[str, dict[str, int]] = {}
    for w in cluster.all():
        role = summary.setdefault(w.role.name, {"discovered": 0, "alive": 0, "maxQueueTokens": 0})
        role["discovered"] += 1
        role["alive"] += 1 if w.healthy else 0
    return {
        "success": True,
        "code": 200,
        "real_master_host": real_master_host or None,
        "queue_length": queue_length,
        "worker_summary": summary,
        "ready": True,
    }


def inflight_status(cluster: Cluster, scheduler_inflight: int) -> dict[str, Any]:
    """/rtp_llm/inflight_status in FlexLB's shape: what is held per prefill (or fused) and per decode worker."""
    prefill = [{"ip_port": w.key, "inflight_batches": w.in_flight, "inflight_requests": w.in_flight}
               for w in cluster.all() if w.role in (Role.PREFILL, Role.PDFUSION)]
    decode = [{"ip_port": w.key, "inflight_requests": w.in_flight} for w in cluster.all() if w.role is Role.DECODE]
    return {"scheduler_inflight": scheduler_inflight, "prefill_endpoints": prefill, "decode_endpoints": decode}
