"""What a worker's GetWorkerStatus answer means for the balancer: its load view, its limits, and whether it keeps
its place in rotation.

Read from WorkerStatusPB: status/finished versions, running tasks, KV available/total, `max_batch_tokens_size`,
`max_seq_len`, `waiting_query_len`, `running_query_len`, `step_latency_ms`, `alive` and the role (`role`, the
`RoleType.X` string, else `role_type`). An answer with `status_version` 0 carries nothing (the original FlexLB
ignores it too) and one whose version went backwards is older than what we have: both are dropped.

A worker that says `alive: false`, or reports another role than the one it is configured with, is taken out
of rotation like a failed probe (a DECODE answers GenerateStreamCall with INTERNAL, a PREFILL cannot serve
RemoteGenerate, a fused worker ignores role_addrs: every call sent to a worker of the wrong role fails or
loses its PD hand-off) and comes back with the first answer that is right again.
"""

from __future__ import annotations

from flexlb.balancer.workers import Role, WorkerState
from flexlb.pb import model_rpc_service_pb2 as pb

NOT_ALIVE = "ALIVE_FALSE"
WRONG_ROLE = "WRONG_ROLE"
NOTE = "status"  # WorkerState.notes key: why the worker's own report keeps it out (shown by /actuator/info)


def reported_role(reply: pb.WorkerStatusPB) -> Role | None:
    """The role the worker says it has: the `role` string when set (it is how RTP-LLM writes it), else the
    `role_type` enum when not its default; None when neither says anything (PDFUSION is enum value 0)."""
    if reply.role:
        try:
            return Role.parse(reply.role)
        except KeyError:
            return None
    return Role(int(reply.role_type)) if reply.role_type else None


def apply_status(w: WorkerState, reply: pb.WorkerStatusPB) -> str:
    """Take one GetWorkerStatus answer into `w`; returns why it keeps the worker out ('' when it does not).

    untracked_waiting: the requests waiting at the engine beyond the calls this gateway has in flight there at
    the moment of the answer (our in-flight calls bound our share of its queue from above, so only other
    senders' requests can show here; a worker whose only sender is this gateway has 0).
    """
    if not reply.status_version or reply.status_version < w.status_version:
        return verdict(w)  # empty, or older than the one we have: the last verdict stands
    w.status_version = reply.status_version
    w.finished_version = max(w.finished_version, reply.latest_finished_version)
    w.reported_running = len(reply.running_task_info)
    w.kv_available_tokens = reply.available_kv_cache
    w.kv_total_tokens = reply.total_kv_cache
    w.max_batch_tokens = max(0, reply.max_batch_tokens_size)
    w.max_seq_len = max(0, reply.max_seq_len)
    w.reported_waiting = max(0, reply.waiting_query_len)
    w.reported_running_queries = max(0, reply.running_query_len)
    w.step_latency_ms = max(0.0, reply.step_latency_ms)
    w.untracked_waiting = max(0, w.reported_waiting - w.in_flight)
    w.reported_alive = reply.alive
    w.reported_role = reported_role(reply)
    out = verdict(w)
    if out == NOT_ALIVE:
        w.notes[NOTE] = "the worker reports alive: false"
    elif out == WRONG_ROLE:
        assert w.reported_role is not None
        w.notes[NOTE] = f"the worker reports role {w.reported_role.name}, configured as {w.role.name}"
    else:
        w.notes.pop(NOTE, None)
    return out


def verdict(w: WorkerState) -> str:
    """Why the worker's last report keeps it out of rotation ('' when it does not)."""
    if not w.reported_alive:
        return NOT_ALIVE
    if w.reported_role is not None and w.reported_role is not w.role:
        return WRONG_ROLE
    return ""
