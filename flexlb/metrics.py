"""Every Prometheus metric FlexLB exports, defined in one place on a registry owned by the app."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from flexlb import __version__
from flexlb.balancer.health import IN_ROTATION, WORKER_STATES, Ejection, worker_state
from flexlb.balancer.ttft import TtftModel
from flexlb.balancer.workers import Cluster

if TYPE_CHECKING:  # the call lifecycle imports the dispatcher, which imports this module
    from flexlb.call.record import CallRecord

ACTIVE_HEALTH_CHECK = "health_check"  # flexlb_worker_ejections_total reason of active checks

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TTFT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60)


class _ClusterCollector(Collector):
    """In-flight and health gauges read from the balancer's state at scrape time (no hot-path cost)."""

    def __init__(self, cluster: Cluster, draining: Callable[[], bool], ttft: TtftModel | None,
                 ha: Callable[[], tuple[bool, bool] | None]) -> None:
        self._cluster = cluster
        self._draining = draining
        self._ttft = ttft
        self._ha = ha

    def collect(self) -> Iterator[GaugeMetricFamily]:
        in_flight = GaugeMetricFamily(
            "flexlb_worker_in_flight",
            "Calls dispatched to a worker and not finished",
            labels=["worker", "role"],
        )
        healthy = GaugeMetricFamily(
            "flexlb_worker_healthy", "1 if the worker is in rotation (healthy, not ejected, not out by an operator)",
            labels=["worker", "role"],
        )
        state = GaugeMetricFamily(
            "flexlb_worker_state", "1 for the state the worker is in (in_rotation, ejected, out_by_operator, "
            "unhealthy), 0 for the others", labels=["worker", "role", "state"],
        )
        counts = GaugeMetricFamily(
            "flexlb_workers", "Configured workers per role and state (a removed worker leaves the count)",
            labels=["role", "state"],
        )
        now = time.monotonic()  # the router's clock (passive ejection deadlines)
        per_role: dict[str, dict[str, int]] = {}
        for w in self._cluster.all():
            in_flight.add_metric([w.key, w.role.name], w.in_flight)
            current = worker_state(w, now)
            healthy.add_metric([w.key, w.role.name], 1 if current == IN_ROTATION else 0)
            for name in WORKER_STATES:
                state.add_metric([w.key, w.role.name, name], 1 if name == current else 0)
            role_counts = per_role.setdefault(w.role.name, dict.fromkeys(WORKER_STATES, 0))
            role_counts[current] += 1
        for role, by_state in per_role.items():
            for name, n in by_state.items():
                counts.add_metric([role, name], n)
        yield in_flight
        yield healthy
        yield state
        yield counts
        if self._ttft is not None:
            coef = GaugeMetricFamily(
                "flexlb_worker_prefill_coefficient", "Learned prefill model: ms = base + per_uncached_token * "
                "uncached + per_cached_token * cached", labels=["worker", "term"])
            wait = GaugeMetricFamily("flexlb_worker_queue_wait_estimate_seconds",
                                     "Estimated wait for prefill work already dispatched", labels=["worker"])
            err = GaugeMetricFamily("flexlb_worker_ttft_abs_error_seconds",
                                    "Recent mean absolute error of the TTFT estimate", labels=["worker"])
            seen = GaugeMetricFamily("flexlb_worker_ttft_observed_seconds", "Recent mean observed TTFT",
                                     labels=["worker"])
            transit = GaugeMetricFamily("flexlb_worker_transit_seconds", "Recent mean time a call spends outside "
                                        "the engine before its first message (hops, PD handshake)", labels=["worker"])
            now = time.monotonic()
            for key, m in self._ttft.workers().items():
                for term, value in zip(("base_ms", "per_uncached_token_ms", "per_cached_token_ms"), m.theta,
                                       strict=True):
                    coef.add_metric([key, term], value)
                wait.add_metric([key], m.queue_wait_ms(now) / 1000.0)
                err.add_metric([key], m.abs_error_ms / 1000.0)
                seen.add_metric([key], m.observed_ttft_ms / 1000.0)
                transit.add_metric([key], m.transit_ms / 1000.0)
            yield coef
            yield wait
            yield err
            yield seen
            yield transit
        yield GaugeMetricFamily(
            "flexlb_workers_leaving", "Workers removed from the cluster whose calls in flight have not finished",
            len(self._cluster.leaving()),
        )
        yield GaugeMetricFamily(
            "flexlb_in_flight", "Client calls in flight through this gateway (a PD call counts once)",
            self._cluster.ledger.calls,
        )
        yield GaugeMetricFamily(
            "flexlb_reservations", "Schedule reservations holding load for a replica or frontend",
            self._cluster.ledger.reservations,
        )
        yield GaugeMetricFamily(
            "flexlb_draining", "1 while the gateway drains before exit", 1 if self._draining() else 0
        )
        ha = self._ha()
        if ha is not None:  # only with an election configured (WHALE_SYNC_LB_CONSISTENCY_CONFIG)
            is_master, connected = ha
            yield GaugeMetricFamily("flexlb_is_master", "1 while this replica is the elected master",
                                    1 if is_master else 0)
            yield GaugeMetricFamily("flexlb_zookeeper_connected", "1 while this replica's ZooKeeper session is "
                                    "connected", 1 if connected else 0)


class Metrics:
    """The gateway's metrics; one instance per process, created by the composition root."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # the standard process_* (CPU, memory, open fds), python_info and python_gc_* series
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.build_info = Gauge("flexlb_build_info", "1, labelled with this gateway's version and Python",
                                ["version", "python"], registry=r)
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self.requests = Counter(
            "flexlb_requests",
            "Attempts ended on a worker by method, worker, role, strategy and gRPC code (a PD attempt: once per leg)",
            ["method", "worker", "role", "strategy", "code"],
            registry=r,
        )
        self.rejected = Counter(
            "flexlb_rejected_requests",
            "Calls answered by the gateway without reaching a worker",
            ["method", "code", "reason"],
            registry=r,
        )
        self.decisions = Counter(
            "flexlb_routing_decisions",
            "Routing decisions by strategy and reason",
            ["strategy", "reason"],
            registry=r,
        )
        self.relayed_messages = Counter(
            "flexlb_relayed_messages", "Response messages relayed to clients", ["method"], registry=r
        )
        self.latency = Histogram(
            "flexlb_request_duration_seconds",
            "Client call duration seen by the gateway, by method and final gRPC code (rejected calls included)",
            ["method", "code"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.failovers = Counter(
            "flexlb_failovers", "Calls routed again after a failure before the first response message",
            ["method", "code"], registry=r,
        )
        self.forwards = Counter(
            "flexlb_master_forwards", "Decisions asked of the elected master, by outcome", ["result"], registry=r,
        )
        self.batch_size = Histogram(
            "flexlb_prefill_batch_size", "Requests routed together per batching window",
            buckets=(1, 2, 4, 8, 16, 32, 64), registry=r,
        )
        self.prefill_queue_held = Gauge(
            "flexlb_prefill_queue_held", "Calls waiting in the gateway's prefill queue for a worker slot", registry=r,
        )
        self.prefill_queue_moved = Counter(
            "flexlb_prefill_queue_moved", "Held calls an idle worker took over from a busier worker's queue",
            registry=r,
        )
        self.prefill_queue_wait = Histogram(
            "flexlb_prefill_queue_wait_seconds", "Time a call waited in the prefill queue before it was sent",
            buckets=_TTFT_BUCKETS_S, registry=r,
        )
        self.ttft_estimate_error = Histogram(
            "flexlb_ttft_estimate_abs_error_seconds", "|estimated TTFT - TTFT seen by the gateway| per call",
            buckets=_TTFT_BUCKETS_S, registry=r,
        )
        self.client_protocol_errors = Counter(
            "flexlb_client_protocol_errors", "Client HTTP/2 errors: the stream (RST_STREAM) or connection (GOAWAY) "
            "ended, by scope, error code and rule", ["scope", "code", "reason"], registry=r,
        )
        self.worker_protocol_errors = Counter(
            "flexlb_worker_protocol_errors", "HTTP/2 errors of worker connections, by scope, error code and rule",
            ["scope", "code", "reason"], registry=r,
        )
        self.client_connection_closes = Counter(
            "flexlb_client_connection_closes", "Client connections (or streams) the gateway ended for a limit: "
            "timeouts, the connection cap", ["reason"], registry=r,
        )
        self.edge_internal_errors = Counter(
            "flexlb_edge_internal_errors", "Unexpected errors while relaying; each ended one call or one client "
            "connection only", ["where"], registry=r,
        )
        self.client_connections = Gauge(
            "flexlb_client_connections", "Open client connections on the gRPC port (frame relay)", registry=r,
        )
        self.client_request_buffer = Gauge(
            "flexlb_client_request_buffer_bytes", "Request bytes received from clients and not yet moved on",
            registry=r,
        )
        self.worker_ejections = Counter(
            "flexlb_worker_ejections", "Workers taken out of rotation, by reason: passive outlier detection "
            "(consecutive_5xx, success_rate, failure_percentage) or active checks (health_check)",
            ["worker", "role", "reason"], registry=r,
        )
        self.probe_failures = Counter(
            "flexlb_worker_probe_failures", "Failed active health probes, by reason (NOT_SERVING, NOT_OK or the "
            "gRPC code)", ["worker", "role", "reason"], registry=r,
        )
        self.prompt_tokens = Counter(
            "flexlb_prompt_tokens", "Prompt tokens of calls sent to a worker (PREFILL or PDFUSION)",
            ["method", "worker"], registry=r,
        )
        self.cached_tokens = Counter(
            "flexlb_cached_prompt_tokens", "Prompt tokens the worker reported served from its KV cache "
            "(aux_info.total_reuse_len of the first message)", ["method", "worker"], registry=r,
        )
        self.ttft = Histogram(
            "flexlb_ttft_seconds",
            "Time from call start to the first response message",
            ["worker"],
            buckets=_TTFT_BUCKETS_S,
            registry=r,
        )
        self.membership_changes = Counter(
            "flexlb_membership_changes", "Workers added to or removed from the cluster after startup (DNS, the "
            "workers file, admin calls), by change", ["change"], registry=r,
        )
        # Schedule modes (flexlb/scheduler)
        self.schedule_requests = Counter(
            "flexlb_schedule_requests", "Client Schedule calls by the mode that served them (DIRECT, BATCH, QUEUE)",
            ["mode"], registry=r,
        )
        self.schedule_batch_size = Histogram(
            "flexlb_schedule_batch_size", "Requests per EnqueueBatch sent by BATCH mode",
            buckets=(1, 2, 4, 8, 16, 32, 64), registry=r,
        )
        self.schedule_dispatch_reasons = Counter(
            "flexlb_schedule_dispatch_reasons", "Why BATCH mode sent a batch (batch_full, fixed_window_timeout, "
            "predict_threshold, batch_size_max, deadline_guard, target_batch_size, arrival_guard, worker_idle; "
            "uncertain: an EnqueueBatch outcome not known)", ["reason"], registry=r,
        )
        self.schedule_queue_length = Gauge(
            "flexlb_schedule_queue_length", "Requests the scheduler holds (queued, batching, placed on a worker "
            "and not reported finished, replica reservations): Schedule's queue_length", registry=r,
        )

    # per-worker labelled series: a worker that left the cluster has its series removed (the gauges above
    # follow the cluster by themselves)
    def _per_worker(self) -> tuple[Counter | Histogram, ...]:
        return (self.requests, self.worker_ejections, self.probe_failures, self.prompt_tokens, self.cached_tokens,
                self.ttft)

    def membership_changed(self, added: int, removed: int) -> None:
        """Count workers added to and removed from the cluster (flexlb_membership_changes_total)."""
        if added:
            self.membership_changes.labels("added").inc(added)
        if removed:
            self.membership_changes.labels("removed").inc(removed)

    def forget_worker(self, worker: str) -> None:
        """The worker left the cluster and its calls finished: its per-worker series go."""
        for metric in self._per_worker():
            metric.remove_by_labels({"worker": worker})

    def worker_ejected(self, ejection: Ejection) -> None:
        """Count an ejection event returned by the outlier detector (flexlb_worker_ejections_total)."""
        self.worker_ejections.labels(ejection.worker, ejection.role, ejection.reason).inc()

    def worker_unhealthy(self, worker: str, role: str) -> None:
        """Active checks took a worker out of rotation (an ejection with reason health_check)."""
        self.worker_ejections.labels(worker, role, ACTIVE_HEALTH_CHECK).inc()

    def probe_failed(self, worker: str, role: str, reason: str) -> None:
        """One failed active probe."""
        self.probe_failures.labels(worker, role, reason).inc()

    def call_ended(self, record: CallRecord) -> None:
        """Per-call series from a finished call's record: duration by method and code, prompt and cached tokens."""
        self.latency.labels(record.method, record.code).observe(record.duration_s)
        if record.worker is not None and record.prompt_tokens:
            self.prompt_tokens.labels(record.method, record.worker).inc(record.prompt_tokens)
            if record.cached_tokens:
                self.cached_tokens.labels(record.method, record.worker).inc(record.cached_tokens)

    def watch_edge(self, connections: Callable[[], int], buffered_bytes: Callable[[], int]) -> None:
        """Export the frame relay's client-side gauges (read at scrape time)."""
        self.client_connections.set_function(connections)
        self.client_request_buffer.set_function(buffered_bytes)

    def watch_cluster(self, cluster: Cluster, draining: Callable[[], bool], ttft: TtftModel | None = None,
                      ha: Callable[[], tuple[bool, bool] | None] = lambda: None) -> None:
        """Export the cluster's live gauges (and the TTFT model's and the election's, when given)."""
        self.registry.register(_ClusterCollector(cluster, draining, ttft, ha))
