"""Composition root: builds the balancer, upstream pool, servicers and admin sidecar; starts and stops them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import resource
import signal
import socket
import time
import uuid
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from flexlb import __version__, wire
from flexlb.admin_http import views
from flexlb.admin_http.consistency_routes import ConsistencyRoutes
from flexlb.admin_http.server import AdminServer
from flexlb.admin_http.views import workers_view
from flexlb.balancer.batcher import BatchConfig
from flexlb.balancer.factory import build_router
from flexlb.balancer.health import OutlierConfig
from flexlb.balancer.prefill_queue import PrefillQueueConfig
from flexlb.balancer.prefix_index import PrefixIndexConfig
from flexlb.balancer.ttft import TtftPriors
from flexlb.balancer.workers import Cluster, Role
from flexlb.call.dispatch import Dispatcher
from flexlb.call.lifecycle import CallPolicy
from flexlb.config import NOT_ACTED_ON, KvCacheMode, Settings, masked
from flexlb.consistency.election import ElectionConfig, Identity
from flexlb.consistency.forwarding import MasterForwarder
from flexlb.consistency.service import Consistency
from flexlb.metrics import Metrics
from flexlb.pb import flexlb_schedule_service_pb2, model_rpc_service_pb2
from flexlb.relay.grpcio.engine import RpcRelay
from flexlb.relay.grpcio.pool import UpstreamPool
from flexlb.relay.h2.edge import Edge
from flexlb.scheduler.service import Scheduler
from flexlb.upstream.cache_sync import CacheSync, CacheSyncConfig
from flexlb.upstream.health_check import HealthCheckConfig, HealthChecker

log = logging.getLogger("flexlb")

SERVED_SERVICES = (
    model_rpc_service_pb2.DESCRIPTOR.services_by_name["RpcService"].full_name,
    flexlb_schedule_service_pb2.DESCRIPTOR.services_by_name["FlexlbService"].full_name,
    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
    reflection.SERVICE_NAME,
)


class Gateway:
    """One gateway process: gRPC server (relay, scheduler, health, reflection) + admin HTTP."""

    def __init__(self, settings: Settings, seed: int | None = None) -> None:
        self.settings = settings
        self._draining = False
        self.consistency: Consistency | None = None
        self.cluster = Cluster(list(settings.workers))
        m = settings.master
        self.router = build_router(
            self.cluster,
            settings.deploy,
            m.load_balance_strategy,
            m.decode_load_balance_strategy,
            rng=random.Random(seed),
            clock=time.monotonic,
            ttft=TtftPriors(base_ms=m.ttft_prior_base_ms, ms_per_uncached_token=m.ttft_prior_us_per_token / 1000.0),
            # LOCAL_STATIC: what the gateway sent; LOCAL_SYNC: that, reconciled with what workers report
            index=PrefixIndexConfig(m.prefix_index_capacity_blocks, m.prefix_index_ttl_s)
            if m.kv_cache is not KvCacheMode.NONE else None,
            outliers=OutlierConfig(
                consecutive_failures=m.outlier_consecutive_failures,
                base_ejection_s=m.outlier_base_ejection_ms / 1000.0,
                max_ejected_share=m.outlier_max_ejected_percent / 100.0,
            ),
            queue=PrefillQueueConfig(m.prefill_queue_depth, m.prefill_queue_aging, m.prefill_queue_max_hold_ms,
                                     hold_after_ms=m.prefill_queue_hold_after_ms),
            max_in_flight_per_worker=m.max_in_flight_per_worker,
        )
        index = self.router.index
        self.metrics = Metrics()
        self.metrics.watch_cluster(self.cluster, self.is_draining, self.router.ttft, self._ha_gauges)
        self.pool = UpstreamPool(
            settings.server.max_receive_message_bytes, settings.server.upstream_channels_per_worker
        )
        # prefillLbTimeoutMs bounds the time spent choosing: a batching window never waits longer
        window_ms = m.prefill_batch_wait_time_ms
        if m.prefill_lb_timeout_ms > 0:
            window_ms = min(window_ms, m.prefill_lb_timeout_ms)
        self.dispatcher = Dispatcher(
            self.router, self.metrics, self.is_draining, m.static_cache_block_size, BatchConfig(window_ms, m.batch_size)
        )
        self.dispatcher.max_in_flight = m.max_in_flight
        self.dispatcher.max_new_tokens = settings.server.limits.max_new_tokens
        self.call_policy = CallPolicy(
            first_message_timeout_s=m.prefill_generate_timeout_ms / 1000.0 if m.prefill_generate_timeout_ms else None)
        self.relay = RpcRelay(self.dispatcher, self.call_policy, self.router, self.pool)
        self.scheduler = Scheduler(self.router, self.metrics, self.dispatcher.release, self._master_host,
                                   lambda: self.dispatcher.block_size_tokens)
        self.health = health.aio.HealthServicer()
        # the token guards rotation too, so it is passed whether or not HA is on
        self.admin = AdminServer(
            self.metrics, self._health_view, self.info, self.set_rotation, token=settings.consistency.admin_token
        )
        self.health_checker: HealthChecker | None = None
        if m.health_check_interval_ms > 0:
            self.health_checker = HealthChecker(
                self.cluster,
                self.router.outliers,
                HealthCheckConfig(
                    interval_s=m.health_check_interval_ms / 1000.0, timeout_s=m.health_check_timeout_ms / 1000.0
                ),
            )
        self.cache_sync: CacheSync | None = None
        if index is not None and m.kv_cache is KvCacheMode.LOCAL_SYNC:
            engines = [w.addr for w in self.cluster.all() if w.role in (Role.PREFILL, Role.PDFUSION)]
            self.cache_sync = CacheSync(index, engines, CacheSyncConfig(), self._use_block_size)
        self._server: grpc.aio.Server | None = None
        self.edge: Edge | None = None
        self._started_s = time.time()
        self.grpc_port = 0
        self.admin_port = 0

    def _use_block_size(self, block_size_tokens: int) -> None:
        """LOCAL_SYNC: key prompts with the block size the workers report, or keys never match theirs."""
        if block_size_tokens != self.dispatcher.block_size_tokens:
            log.info("workers report %d-token KV blocks; keying prompts with that size", block_size_tokens)
            self.dispatcher.block_size_tokens = block_size_tokens

    def is_draining(self) -> bool:
        """True once shutdown began: new calls are refused, in-flight ones finish."""
        return self._draining

    async def start(self) -> None:
        """Bind both ports and start serving."""
        s = self.settings.server
        h2 = s.relay_engine == "h2"
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", s.max_receive_message_bytes),
                ("grpc.max_send_message_length", s.max_send_message_bytes),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                # the same client limits as the frame relay (grpc C-core enforces them itself)
                ("grpc.max_concurrent_streams", s.limits.max_concurrent_streams),
                ("grpc.max_metadata_size", s.limits.max_header_list_bytes),
                ("grpc.absolute_max_metadata_size", s.limits.max_header_list_bytes),
                ("grpc.max_connection_idle_ms", int(s.limits.idle_timeout_s * 1000)),
            ]
        )
        server.add_generic_rpc_handlers((self.relay.handler(relay_generate=not h2), self.scheduler.handler()))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(SERVED_SERVICES, server)
        # with the frame relay, grpc.aio serves the control plane on loopback behind the public port
        bind = "127.0.0.1:0" if h2 else f"{s.host}:{s.grpc_port}"
        grpc_port = server.add_insecure_port(bind)
        if grpc_port == 0:
            raise OSError(f"cannot bind gRPC port {bind}")
        await server.start()
        self._server = server
        if h2:
            self.edge = Edge(self.dispatcher, self.call_policy, self.metrics, s.limits, s.max_receive_message_bytes,
                             lambda: grpc_port)
            self.grpc_port = await self.edge.start(s.host, s.grpc_port, [w.addr for w in self.cluster.all()])
        else:
            self.grpc_port = grpc_port
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        if self.cache_sync is not None:
            self.cache_sync.start()
        if self.health_checker is not None:
            self.health_checker.start()
        self.dispatcher.start_outlier_sweeps()
        admin_host = s.admin_host or s.host
        self.admin_port = self.admin.bind(admin_host, s.admin_port)
        self._start_consistency()
        await self.admin.start(admin_host, s.admin_port)
        log.info(
            "flexlb %s serving gRPC on %s:%d (%s relay), admin on %s:%d, deploy %s, %d workers",
            __version__,
            s.host,
            self.grpc_port,
            s.relay_engine,
            admin_host,
            self.admin_port,
            self.settings.deploy.name,
            len(self.cluster.all()),
        )

    async def _set_health(self, status: int) -> None:
        for name in ("", wire.RPC_SERVICE, wire.FLEXLB_SERVICE):
            await self.health.set(name, status)

    def refuse_new_calls(self) -> None:
        """From now on new calls are answered UNAVAILABLE (draining); in-flight ones go on."""
        self._draining = True

    async def drain_and_stop(self, timeout_s: float | None = None) -> None:
        """Refuse new calls, report NOT_SERVING, let in-flight calls finish (bounded), then stop."""
        timeout_s = self.settings.server.drain_timeout_s if timeout_s is None else timeout_s
        self._draining = True
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        deadline = time.monotonic() + timeout_s
        # client calls only: Schedule reservations are the frontend's (it relays those calls itself)
        while self.cluster.ledger.calls > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # relayed calls are done (or out of time); what is left are long-lived health watches
        await self.stop(grace_s=min(0.5, max(0.0, deadline - time.monotonic())))

    async def stop(self, grace_s: float | None = 0.5) -> None:
        """Stop everything now (in-flight calls get `grace_s` to finish, then are cancelled)."""
        self._draining = True
        self.dispatcher.close()
        if self.dispatcher.forwarder is not None:
            await self.dispatcher.forwarder.close()
        if self.consistency is not None:
            await self.consistency.stop()
        if self.cache_sync is not None:
            await self.cache_sync.stop()
        if self.health_checker is not None:
            await self.health_checker.stop()
        if self.edge is not None:
            await self.edge.stop()
            self.edge = None
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None
        await self.admin.stop()
        await self.pool.close()

    async def wait(self) -> None:
        """Block until the gRPC server terminates."""
        if self._server is not None:
            await self._server.wait_for_termination()

    def set_rotation(self, worker: str, in_rotation: bool, reason: str) -> dict[str, Any] | None:
        """An operator takes a worker out of rotation or puts it back; None for an unknown worker."""
        state = self.cluster.get(worker)
        if state is None:
            return None
        state.operator_out = not in_rotation
        if in_rotation:
            state.notes.pop("operator", None)
        else:
            state.notes["operator"] = reason or "taken out by an operator"
        log.info("worker %s %s by an operator (%s)", worker, "back in rotation" if in_rotation else "out", reason)
        return {"worker": worker, "in_rotation": in_rotation, "in_flight": state.in_flight}

    def _ha_gauges(self) -> tuple[bool, bool] | None:
        if self.consistency is None:
            return None
        st = self.consistency.state
        return st.is_master, st.zk_state == "CONNECTED"

    def _master_host(self) -> str:
        return self.consistency.master_http() if self.consistency is not None else ""

    def _advertised_host(self, bound: str) -> str:
        s = self.settings.server
        if s.advertise_host:
            return s.advertise_host
        if bound not in ("0.0.0.0", "::", ""):
            return bound
        try:
            return socket.gethostbyname(socket.gethostname())
        except OSError:
            return "127.0.0.1"

    def _start_consistency(self) -> None:
        """Join the master election when WHALE_SYNC_LB_CONSISTENCY_CONFIG asks for it (ports are known now)."""
        c = self.settings.consistency
        if not c.need_consistency:
            return
        s = self.settings.server
        host, admin_host = self._advertised_host(s.host), self._advertised_host(s.admin_host or s.host)
        identity = Identity(uuid.uuid4().hex[:12], f"{admin_host}:{self.admin_port}", f"{host}:{self.grpc_port}")
        self.consistency = Consistency(
            ElectionConfig(c.zk_host, c.role_id, session_timeout_s=c.zk_timeout_ms / 1000.0),
            identity,
            c.admin_token or None,
            self.snapshot,
        )
        self.admin.add_routes(ConsistencyRoutes(self.consistency, self.master_info).register)
        if self.settings.master.enable_grpc_prefill_master:
            timeout_s = max(self.settings.master.prefill_lb_timeout_ms, 1) / 1000.0
            self.dispatcher.forwarder = MasterForwarder(self.consistency, timeout_s, self.metrics)
        self.consistency.start()

    def snapshot(self) -> dict[str, Any]:
        """The balancer's state as the master sees it (syncStatus)."""
        state = self.consistency.state if self.consistency is not None else None
        return {
            "version": __version__,
            "master": self.consistency.identity.http_host_port if self.consistency is not None else "",
            "fencing_czxid": state.fencing_czxid if state is not None else 0,
            "election_changes": state.changes if state is not None else 0,
            "in_flight": self.cluster.ledger.calls,
            "reservations": self.cluster.ledger.reservations,
            "workers": workers_view(self.cluster, time.monotonic(), self.router.ttft, self.router.index),
        }

    def master_info(self) -> dict[str, Any]:
        """/rtp_llm/master/info, in the original FlexLB's shape."""
        return views.master_info(self.cluster, self._master_host())

    def _health_view(self) -> tuple[bool, dict[str, Any]]:
        can = self.router.can_route()
        up = can and not self._draining
        # ZooKeeper trouble never takes the gateway down: it is reported, and routing stays local
        zk = self.consistency.state.zk_state if self.consistency is not None else "not configured"
        return up, {"draining": self._draining, "can_route": can, "zookeeper": zk}

    def _consistency_info(self) -> dict[str, Any]:
        if self.consistency is None:
            return {"enabled": False, "routing": "local (no election configured)"}
        st = self.consistency.state
        return {
            "enabled": True,
            "role_id": self.consistency.role_id,
            "zookeeper": st.zk_state,
            "is_master": st.is_master,
            "master": self._master_host(),
            "this_replica": self.consistency.identity.http_host_port,
            "participants": [p.http_host_port for p in st.participants],
            "routing": "local"
            if st.zk_state != "CONNECTED"
            else ("as master" if st.is_master else "local, master known"),
        }

    def info(self) -> dict[str, Any]:
        """What /actuator/info shows: version, effective config (secrets masked), workers and their state."""
        return {
            "version": __version__,
            "started_at_s": self._started_s,
            "grpc_port": self.grpc_port,
            "admin_port": self.admin_port,
            "draining": self._draining,
            "config": masked(self.settings),
            "not_acted_on_yet": NOT_ACTED_ON,
            "consistency": self._consistency_info(),
            "in_flight": self.cluster.ledger.calls,
            "reservations": self.cluster.ledger.reservations,
            "workers": workers_view(self.cluster, time.monotonic(), self.router.ttft, self.router.index),
        }


def _raise_open_file_limit() -> None:
    """Take the hard open-file limit: the connection cap is derived from it (as nginx's worker_rlimit_nofile)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def run_gateway(settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT, then drain gracefully; returns the process exit code."""
    _raise_open_file_limit()
    gateway = Gateway(settings)
    await gateway.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        # refuse new calls from the signal on: a call whose request arrives before the drain task runs
        # would otherwise still be routed
        gateway.refuse_new_calls()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, on_signal)
    print(
        f"flexlb gateway listening: grpc {settings.server.host}:{gateway.grpc_port} "
        f"admin {settings.server.admin_host or settings.server.host}:{gateway.admin_port}",
        flush=True,
    )
    await stop.wait()
    log.info("signal received: draining (up to %.1f s)", settings.server.drain_timeout_s)
    await gateway.drain_and_stop()
    return 0
