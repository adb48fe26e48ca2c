"""enableGrpcPrefillMaster: a replica asks the elected master for each decision, then relays the call itself.

One hop at most (forward_hop = 1; the master never forwards a forwarded request), bounded by
prefillLbTimeoutMs; on any failure the replica decides locally. The master keeps the load reserved
until the replica's Cancel says the call ended, so its view counts calls routed for other replicas.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc

from flexlb.consistency.service import Consistency
from flexlb.metrics import Metrics
from flexlb.pb import flexlb_schedule_service_pb2 as fpb

log = logging.getLogger("flexlb.forwarding")


@dataclass(frozen=True)
class MasterChoice:
    """The master's decision: worker keys (ip:grpc_port) and the reservation to release later."""

    target: str
    decode: str | None
    batch_id: int
    request_id: int
    master_grpc: str


class MasterForwarder:
    """Asks the master's /FlexlbService/Schedule; owns the channels to masters."""

    def __init__(self, consistency: Consistency, timeout_s: float, metrics: Metrics) -> None:
        self.consistency = consistency
        self.timeout_s = timeout_s
        self.metrics = metrics
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def should_forward(self) -> bool:
        """Only a connected non-master that knows its master forwards."""
        st = self.consistency.state
        return st.zk_state == "CONNECTED" and not st.is_master and st.master is not None

    def _channel(self, target: str) -> grpc.aio.Channel:
        ch = self._channels.get(target)
        if ch is None:
            ch = grpc.aio.insecure_channel(target, options=[("grpc.enable_retries", 0)])
            self._channels[target] = ch
        return ch

    async def schedule(self, request_id: int, generate_input: bytes) -> MasterChoice | None:
        """The master's choice, or None (no master, timeout, error): the caller then decides locally."""
        master = self.consistency.state.master
        if master is None:
            self.metrics.forwards.labels("no_master").inc()
            return None
        call = self._channel(master.grpc_host_port).unary_unary(
            "/FlexlbService/Schedule", request_serializer=fpb.FlexlbScheduleRequestPB.SerializeToString,
            response_deserializer=fpb.FlexlbScheduleResponsePB.FromString)
        try:
            reply: fpb.FlexlbScheduleResponsePB = await call(
                fpb.FlexlbScheduleRequestPB(request_id=request_id, generate_input=generate_input, forward_hop=1),
                timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            self.metrics.forwards.labels(exc.code().name.lower()).inc()
            return None
        if not reply.success or not reply.server_status:
            self.metrics.forwards.labels(f"code_{reply.code}").inc()
            return None
        self.metrics.forwards.labels("ok").inc()
        keys = {s.role: f"{s.server_ip}:{s.grpc_port}" for s in reply.server_status}
        target = keys.get("PREFILL") or keys.get("PDFUSION") or ""
        return MasterChoice(target, keys.get("DECODE"), reply.lifecycle.batch_id, request_id, master.grpc_host_port)

    def release(self, choice: MasterChoice) -> None:
        """Fire-and-forget Cancel: the relayed call ended, the master may give the load back."""
        task = asyncio.get_running_loop().create_task(self._cancel(choice), name="release master reservation")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _cancel(self, choice: MasterChoice) -> None:
        call = self._channel(choice.master_grpc).unary_unary(
            "/FlexlbService/Cancel", request_serializer=fpb.FlexlbCancelRequestPB.SerializeToString,
            response_deserializer=fpb.FlexlbCancelResponsePB.FromString)
        try:
            await call(fpb.FlexlbCancelRequestPB(request_id=choice.request_id, batch_id=choice.batch_id),
                       timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            log.debug("releasing the master's reservation failed (its TTL will): %s", exc.code().name)

    async def close(self) -> None:
        """Close channels to masters."""
        for t in list(self._tasks):
            t.cancel()
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()
