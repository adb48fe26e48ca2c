"""Composition root: builds the balancer, upstream pool, servicers and admin sidecar; starts and stops them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import resource
import signal
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from flexlb import __version__, wire
from flexlb.admin_http import views
from flexlb.admin_http.api_routes import ApiRoutes
from flexlb.admin_http.consistency_routes import ConsistencyRoutes
from flexlb.admin_http.membership_routes import MembershipRoutes
from flexlb.admin_http.server import AdminServer
from flexlb.admin_http.views import workers_view
from flexlb.balancer.batcher import BatchConfig
from flexlb.balancer.factory import build_router
from flexlb.balancer.health import OutlierConfig
from flexlb.balancer.prefill_queue import PrefillQueueConfig
from flexlb.balancer.prefix_index import PrefixIndexConfig
from flexlb.balancer.ttft import TtftPriors
from flexlb.balancer.workers import Cluster, MembershipChange, Role, WorkerAddr
from flexlb.call.dispatch import Dispatcher
from flexlb.call.lifecycle import CallPolicy
from flexlb.call.surface import reflection_pool
from flexlb.config import NOT_ACTED_ON, KvCacheMode, Settings, masked
from flexlb.consistency.election import ElectionConfig, Identity
from flexlb.consistency.forwarding import MasterForwarder
from flexlb.consistency.service import Consistency
from flexlb.logs import AccessLog
from flexlb.membership import ADMIN, Membership
from flexlb.metrics import Metrics
from flexlb.pb import flexlb_schedule_service_pb2, model_rpc_service_pb2
from flexlb.readiness import HealthService, Verdict, readiness
from flexlb.relay.grpcio.engine import RpcRelay
from flexlb.relay.grpcio.pool import UpstreamPool
from flexlb.relay.h2.edge import Edge
from flexlb.scheduler.service import Scheduler
from flexlb.tls import H2_ALPN, HTTP1_ALPN, Dialer, grpc_server_credentials, server_context
from flexlb.upstream.cache_sync import CacheSync, CacheSyncConfig
from flexlb.upstream.discovery import Discovery
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

    def __init__(self, settings: Settings, seed: int | None = None, access_log_sample: float = 1.0) -> None:
        self.settings = settings
        self._draining = False
        self.consistency: Consistency | None = None
        self.cluster = Cluster(list(settings.workers))
        # dynamic membership (README): DNS names, the workers file and admin calls change the cluster; a worker
        # added later waits for its first good probe when active checks run (nothing else would admit it)
        self.membership = Membership(self.cluster, settings.workers,
                                     admit_new=settings.master.health_check_interval_ms <= 0)
        self.discovery = Discovery(settings.server.discovery)
        self._membership_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
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
            vit_strategy=m.vit_load_balance_strategy,
        )
        index = self.router.index
        self.metrics = Metrics()
        self.metrics.watch_cluster(self.cluster, self.is_draining, self.router.ttft, self._ha_gauges)
        tls = settings.server.tls
        # one dialer for everything that calls workers: relay engines, probes, cache polls, the scheduler's calls
        self.dialer = Dialer(tls.upstream)
        self.pool = UpstreamPool(
            settings.server.max_receive_message_bytes, settings.server.upstream_channels_per_worker, self.dialer
        )
        # prefillLbTimeoutMs bounds the time spent choosing: a batching window never waits longer
        window_ms = m.prefill_batch_wait_time_ms
        if m.prefill_lb_timeout_ms > 0:
            window_ms = min(window_ms, m.prefill_lb_timeout_ms)
        self.dispatcher = Dispatcher(
            self.router, self.metrics, self.is_draining, m.static_cache_block_size, BatchConfig(window_ms, m.batch_size)
        )
        self.dispatcher.max_in_flight = m.max_in_flight
        self.dispatcher.access_log = AccessLog(access_log_sample)
        self.dispatcher.max_new_tokens = settings.server.limits.max_new_tokens
        self.call_policy = CallPolicy(
            first_message_timeout_s=m.prefill_generate_timeout_ms / 1000.0 if m.prefill_generate_timeout_ms else None)
        self.relay = RpcRelay(self.dispatcher, self.call_policy, self.router, self.pool)
        self.scheduler = Scheduler(self.router, self.metrics, self.dispatcher.release, self._master_host,
                                   lambda: self.dispatcher.block_size_tokens, settings=m.schedule,
                                   deliver=self.dispatcher.holds.after)
        self.scheduler.core.channels.dialer = self.dialer
        # RpcService.Cancel for a request the master enqueued (BATCH) goes to the prefill holding it
        self.dispatcher.requests.add_locator(self.scheduler.locate)
        self.dispatcher.traffic_policy = m.traffic_policy
        self.scheduler.pinned_group = self.dispatcher.pinned_group
        # grpc.health.v1 follows readiness; worker state changes signal it (plus a bounded periodic re-check)
        self._state_changed = asyncio.Event()
        self._health_task: asyncio.Task[None] | None = None
        self.health = HealthService(("", wire.RPC_SERVICE, wire.FLEXLB_SERVICE), lambda: self.readiness().ok)
        # the token guards rotation too, so it is passed whether or not HA is on
        admin_tls = server_context(tls.admin, HTTP1_ALPN) if tls.admin.enabled else None  # both HTTP ports
        self.admin = AdminServer(
            self.metrics, self._health_view, self.info, self.set_rotation, token=settings.consistency.admin_token,
            readiness=self.readiness, tls=admin_tls,
        )
        api = ApiRoutes(self.master_info, self.is_draining, self.inflight_status)
        self.admin.add_routes(api.register_shared)
        self.admin.add_routes(MembershipRoutes(self.membership_view, self.add_worker, self.remove_worker,
                                               lambda: self.admin.token).register)
        # the HTTP API port (--server.port) is its own listener unless it is the management port itself
        self.api: AdminServer | None = None
        s = settings.server
        if s.http_port == 0 or s.http_port != s.admin_port:
            self.api = AdminServer(self.metrics, self._health_view, self.info, actuator=False, tls=admin_tls)
            self.api.add_routes(api.register)
        self.health_checker: HealthChecker | None = None
        if m.health_check_interval_ms > 0:
            self.health_checker = HealthChecker(
                self.cluster,
                self.router.outliers,
                HealthCheckConfig(
                    interval_s=m.health_check_interval_ms / 1000.0, timeout_s=m.health_check_timeout_ms / 1000.0
                ),
                metrics=self.metrics,
                changed=self._state_changed,
                dialer=self.dialer,
            )
        self.cache_sync: CacheSync | None = None
        if index is not None and m.kv_cache is KvCacheMode.LOCAL_SYNC:
            engines = [w.addr for w in self.cluster.all() if w.role in (Role.PREFILL, Role.PDFUSION)]
            self.cache_sync = CacheSync(index, engines, CacheSyncConfig(), self._use_block_size, self.dialer)
        self._server: grpc.aio.Server | None = None
        self.edge: Edge | None = None
        self._started_s = time.time()
        self.grpc_port = 0
        self.admin_port = 0
        self.http_port = 0

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
        await self._start_membership()
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
        # reflection lists exactly what is served: RpcService with the methods relayed or answered, not RTP-LLM's all
        reflection.enable_server_reflection(SERVED_SERVICES, server, pool=reflection_pool(
            (health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR)))
        # with the frame relay, grpc.aio serves the control plane on loopback behind the public port
        bind = "127.0.0.1:0" if h2 else f"{s.host}:{s.grpc_port}"
        with _listening("grpc", s.host, s.grpc_port):
            if not h2:
                _probe_port(s.host, s.grpc_port)
            # with the frame relay the edge terminates TLS and the loopback hop behind it stays plaintext
            grpc_port = server.add_secure_port(bind, grpc_server_credentials(s.tls.grpc)) \
                if s.tls.grpc.enabled and not h2 else server.add_insecure_port(bind)
            if grpc_port == 0:
                raise OSError(f"cannot bind gRPC port {bind}")
        await server.start()
        self._server = server
        if h2:
            self.edge = Edge(self.dispatcher, self.call_policy, self.metrics, s.limits, s.max_receive_message_bytes,
                             lambda: grpc_port, server_context(s.tls.grpc, H2_ALPN) if s.tls.grpc.enabled else None,
                             self.dialer)
            with _listening("grpc", s.host, s.grpc_port):
                self.grpc_port = await self.edge.start(
                    s.host, s.grpc_port, [w.addr for w in self.cluster.all() if w.role is not Role.VIT])
        else:
            self.grpc_port = grpc_port
        # every port is taken before any probe or poll starts: a port in use ends startup with its one line
        # and nothing else (a health probe of a dead worker raced it into the log)
        admin_host = s.admin_host or s.host
        with _listening("admin", admin_host, s.admin_port):
            self.admin_port = self.admin.bind(admin_host, s.admin_port)
        with _listening("http", s.host, s.http_port):
            self.http_port = self.api.bind(s.host, s.http_port) if self.api is not None else self.admin_port
        await self.health.refresh()
        self._health_task = asyncio.get_running_loop().create_task(
            self.health.follow(self._state_changed), name="grpc.health.v1 follows readiness")
        if self.cache_sync is not None:
            self.cache_sync.start()
        if self.health_checker is not None:
            self.health_checker.start()
        self.dispatcher.start_outlier_sweeps()
        self._start_consistency()
        await self.admin.start(admin_host, s.admin_port)
        if self.api is not None:
            await self.api.start(s.host, s.http_port)
        log.info(
            "flexlb %s serving HTTP API on %s:%d, gRPC on %s:%d (%s relay), management on %s:%d, deploy %s, "
            "%d workers",
            __version__,
            s.host,
            self.http_port,
            s.host,
            self.grpc_port,
            s.relay_engine,
            admin_host,
            self.admin_port,
            self.settings.deploy.name,
            len(self.cluster.all()),
        )
        if s.http_port and self.grpc_port != self.http_port + 2:  # ports 0 (picked free) are nobody's layout
            log.warning("RTP-LLM frontends send Schedule to the HTTP API port + 2 (%d), but gRPC is on %d: "
                        "give --server.port alone, or --port %d", self.http_port + 2, self.grpc_port,
                        self.http_port + 2)

    def readiness(self) -> Verdict:
        """Can this gateway serve a call now (readiness probe, grpc.health.v1, /actuator/health)."""
        return readiness(self.cluster, self.settings.deploy, time.monotonic(), self._draining)

    def refuse_new_calls(self) -> None:
        """From now on new calls are answered UNAVAILABLE (draining); in-flight ones go on."""
        self._draining = True
        self._state_changed.set()

    async def drain_and_stop(self, timeout_s: float | None = None) -> None:
        """Refuse new calls, report NOT_SERVING, let in-flight calls finish (bounded), then stop."""
        timeout_s = self.settings.server.drain_timeout_s if timeout_s is None else timeout_s
        self._draining = True
        await self.health.refresh()
        await self.health.enter_graceful_shutdown()
        deadline = time.monotonic() + timeout_s
        # client calls only: Schedule reservations are the frontend's (it relays those calls itself)
        while self.cluster.ledger.calls > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # relayed calls are done (or out of time); what is left are long-lived health watches
        await self.stop(grace_s=min(0.5, max(0.0, deadline - time.monotonic())))

    async def stop(self, grace_s: float | None = 0.5) -> None:
        """Stop everything now (in-flight calls get `grace_s` to finish, then are cancelled)."""
        self._draining = True
        if self._health_task is not None:
            self._health_task.cancel()
            await asyncio.wait({self._health_task})  # (a cancel of stop() itself still propagates)
            self._health_task = None
        await self._stop_membership()
        self.dispatcher.close()
        await self.scheduler.close()
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
        if self.api is not None:
            await self.api.stop()
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
        self._state_changed.set()
        return {"worker": worker, "in_rotation": in_rotation, "in_flight": state.in_flight}

    # ------------------------------------------------------------ dynamic membership

    _REAP_INTERVAL_S = 0.2  # how soon a removed worker whose calls finished has its state dropped

    async def _start_membership(self) -> None:
        """One look at every source before serving (that set is in rotation at once, like configured workers),
        then follow them."""
        for source, addrs in await self.discovery.look_all():
            self.update_membership(source, addrs, admit=True)
        self.discovery.start()
        self._membership_task = asyncio.get_running_loop().create_task(self._follow_membership(), name="membership")

    async def _stop_membership(self) -> None:
        await self.discovery.stop()
        for task in (self._membership_task, *self._background):
            if task is not None:
                task.cancel()
                await asyncio.wait({task})
        self._membership_task = None

    async def _follow_membership(self) -> None:
        """Apply the sources' new sets as they come; drop removed workers' state once their calls are done."""
        get: asyncio.Task[tuple[str, list[WorkerAddr]]] | None = None
        try:
            while True:
                if get is None:
                    get = asyncio.get_running_loop().create_task(self.discovery.updates.get())
                done, _ = await asyncio.wait({get}, timeout=self._REAP_INTERVAL_S)
                if done:
                    source, addrs = get.result()
                    get = None
                    self.update_membership(source, addrs)
                self._reap()
        finally:
            if get is not None:
                get.cancel()

    def update_membership(self, source: str, addrs: list[WorkerAddr], admit: bool | None = None) -> MembershipChange:
        """`source` now wants exactly `addrs`: apply the union of every source's set (one swap) and follow it."""
        change = self.membership.update(source, addrs, admit)
        self._membership_changed(change, source)
        return change

    def _membership_changed(self, change: MembershipChange, source: str) -> None:
        """Log every worker added or removed (one line each), count them, and make the probes, the cache polls,
        the frame relay's connections and the prefill queue follow."""
        if not change:
            return
        for w in change.added:
            log.info("worker %s (%s%s) added by %s, %s", w.key, w.role.name,
                     f", group {w.addr.group}" if w.addr.group else "", source,
                     "in rotation" if w.healthy else "in rotation after its first good probe")
        for w in change.changed:
            log.info("worker %s changed by %s: now %s%s", w.key, source, w.role.name,
                     f", group {w.addr.group}" if w.addr.group else "")
        for w in change.removed:
            log.info("worker %s (%s) removed by %s: no new calls, %d in flight finish", w.key, w.role.name, source,
                     w.in_flight)
        self.metrics.membership_changed(len(change.added), len(change.removed))
        if self.health_checker is not None:
            self.health_checker.follow(change)
        if self.cache_sync is not None:
            self.cache_sync.follow([w.addr for w in self.cluster.all() if w.role in (Role.PREFILL, Role.PDFUSION)])
        if self.edge is not None:
            for w in change.added:
                if w.role is not Role.VIT:
                    self.edge.warm_upstream(w.addr)
        for w in change.removed:
            # calls held in the prefill queue for it were never sent: they are routed again
            self.dispatcher.holds.after(self.router.evict_held(w.key))
        self._state_changed.set()
        self._reap()

    def _reap(self) -> None:
        """Removed workers whose last call finished: drop their prefix-index, TTFT, metric series, connections."""
        for w in self.cluster.reap():
            self.router.ttft.drop(w.key)
            self.router.outliers.forget(w.key)
            if self.router.index is not None:
                self.router.index.drop_worker(w.key)
            self.metrics.forget_worker(w.key)
            if self.edge is not None:
                self.edge.drop_upstream(w.key)
            task = asyncio.get_running_loop().create_task(self.pool.drop(w.key))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            log.info("worker %s (%s) gone: its calls finished, its prefix-index and TTFT state are dropped", w.key,
                     w.role.name)

    def add_worker(self, addr: WorkerAddr) -> tuple[bool, dict[str, Any]]:
        """An operator adds a worker (POST /admin/workers); (whether anything changed, the worker's view).
        Raises MembershipRefused."""
        change = self.membership.add(addr)
        self._membership_changed(change, ADMIN)
        w = self.cluster.get(addr.key)
        assert w is not None
        return bool(change), self._member_view(w, self.membership.sources_of(w.key))

    def remove_worker(self, key: str) -> dict[str, Any]:
        """An operator removes a worker (DELETE /admin/workers/…); raises MembershipRefused."""
        change = self.membership.remove(key)
        self._membership_changed(change, ADMIN)
        w = next(iter(change.removed), None)
        return {"worker": key, "removed": w is not None, "in_flight": w.in_flight if w is not None else 0}

    def _member_view(self, w: Any, sources: list[str]) -> dict[str, Any]:
        return {"worker": w.key, "role": w.role.name, "group": w.addr.group, "http_port": w.addr.http_port,
                "sources": sources, "in_rotation": self.router.in_rotation(w), "in_flight": w.in_flight,
                "notes": dict(w.notes)}

    def membership_view(self) -> dict[str, Any]:
        """GET /admin/workers: the workers in routing, the removed ones finishing calls, the sources."""
        by_key = self.membership.sources_by_key()
        sources: dict[str, dict[str, Any]] = {name: {"wanted": n} for name, n in self.membership.sources().items()}
        for name, status in self.discovery.status().items():
            sources.setdefault(name, {"wanted": 0}).update(status)
        return {
            "generation": self.cluster.generation,
            "workers": [self._member_view(w, by_key.get(w.key, [])) for w in self.cluster.all()],
            "leaving": [{"worker": w.key, "role": w.role.name, "in_flight": w.in_flight}
                        for w in self.cluster.leaving()],
            "sources": sources,
        }

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
        host = self._advertised_host(s.host)
        # real_master_host is what frontends compare with the address they heartbeat and add 2 to for Schedule:
        # the HTTP API port's, which also serves the consistency endpoints replicas call
        identity = Identity(uuid.uuid4().hex[:12], f"{host}:{self.http_port}", f"{host}:{self.grpc_port}")
        self.consistency = Consistency(
            ElectionConfig(c.zk_host, c.role_id, session_timeout_s=c.zk_timeout_ms / 1000.0),
            identity,
            c.admin_token or None,
            self.snapshot,
        )
        routes = ConsistencyRoutes(self.consistency)
        for server in (self.admin, self.api):
            if server is not None:
                server.add_routes(routes.register)
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
        return views.master_info(self.cluster, self._master_host(), self.scheduler.queue_length())

    def inflight_status(self) -> dict[str, Any]:
        """/rtp_llm/inflight_status: what the scheduler and each worker hold."""
        return views.inflight_status(self.cluster, self.scheduler.queue_length())

    def _health_view(self) -> tuple[bool, dict[str, Any]]:
        """/actuator/health: UP exactly when ready, with the readiness components and ZooKeeper's state."""
        ready = self.readiness()
        can = ready.components["workers"]["status"] == "UP"
        # ZooKeeper trouble never takes the gateway down: it is reported, and routing stays local
        zk = self.consistency.state.zk_state if self.consistency is not None else "not configured"
        components = {**ready.components, "zookeeper": {"status": "UP" if zk in ("CONNECTED", "not configured")
                                                        else "UNKNOWN", "details": {"state": zk}}}
        return ready.ok, {"draining": self._draining, "can_route": can, "zookeeper": zk, "components": components}

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
            "http_port": self.http_port,
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


# the flags that set each listening port: a bind error names them
PORT_FLAGS = {
    "grpc": ("gRPC port", "--port"),
    "http": ("HTTP API port", "--server.port / --http-port"),
    "admin": ("management port", "--management.server.port / --admin-port"),
}


class BindError(OSError):
    """A listening port could not be taken; the message names the address and the flag that sets the port."""


@contextlib.contextmanager
def _listening(what: str, host: str, port: int) -> Iterator[None]:
    """Turn a failed bind (port in use, address not here, no permission) into one BindError line."""
    try:
        yield
    except BindError:
        raise
    except (OSError, RuntimeError, OverflowError) as exc:
        code = getattr(exc, "errno", None)
        reason = os.strerror(code).lower() if code else str(exc).split(";")[0]
        name, flag = PORT_FLAGS[what]
        err = BindError(f"cannot listen on {host}:{port}, the {name} ({flag}): {reason}")
        err.errno = code
        raise err from exc


def _probe_port(host: str, port: int) -> None:
    """grpc C-core reports a taken port as a bare RuntimeError (after logging): bind it here first for the errno."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))


def _raise_open_file_limit() -> None:
    """Take the hard open-file limit: the connection cap is derived from it (as nginx's worker_rlimit_nofile)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def run_gateway(settings: Settings, access_log_sample: float = 1.0) -> int:
    """Serve until SIGTERM/SIGINT, then drain gracefully; returns the process exit code."""
    _raise_open_file_limit()
    gateway = Gateway(settings, access_log_sample=access_log_sample)
    try:
        await gateway.start()
    except BindError as exc:
        await gateway.stop(grace_s=0)
        print(f"flexlb: {exc}", file=sys.stderr, flush=True)
        return 2
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
        f"admin {settings.server.admin_host or settings.server.host}:{gateway.admin_port} "
        f"http {settings.server.host}:{gateway.http_port}",
        flush=True,
    )
    await stop.wait()
    log.info("signal received: draining (up to %.1f s)", settings.server.drain_timeout_s)
    await gateway.drain_and_stop()
    return 0
