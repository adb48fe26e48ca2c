"""Every Prometheus metric FlexLB exports, defined in one place on a registry owned by the app."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from flexlb.balancer.health import IN_ROTATION, WORKER_STATES, Ejection, worker_state
from flexlb.balancer.ttft import TtftModel
from flexlb.balancer.workers import Cluster

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
        now = time.monotonic()  # the router's clock (passive ejection deadlines)
        for w in self._cluster.all():
            in_flight.add_metric([w.key, w.role.name], w.in_flight)
            current = worker_state(w, now)
            healthy.add_metric([w.key, w.role.name], 1 if current == IN_ROTATION else 0)
            for name in WORKER_STATES:
                state.add_metric([w.key, w.role.name, name], 1 if name == current else 0)
        yield in_flight
        yield healthy
        yield state
        if self._ttft is not None:
            coef = GaugeMetricFamily(
                "flexlb_worker_prefill_coefficient", "Learned prefill model: ms = base + per_uncached_token * "
                "uncached + per_cached_token * cached", labels=["worker", "term"])
            wait = GaugeMetricFamily("flexlb_worker_queue_wait_estimate_ms",
                                     "Estimated wait for prefill work already dispatched", labels=["worker"])
            err = GaugeMetricFamily("flexlb_worker_ttft_abs_error_ms",
                                    "Recent mean absolute error of the TTFT estimate", labels=["worker"])
            seen = GaugeMetricFamily("flexlb_worker_ttft_observed_ms", "Recent mean observed TTFT", labels=["worker"])
            transit = GaugeMetricFamily("flexlb_worker_transit_ms", "Recent mean time a call spends outside the "
                                        "engine before its first message (hops, PD handshake)", labels=["worker"])
            now = time.monotonic()
            for key, m in self._ttft.workers().items():
                for term, value in zip(("base_ms", "per_uncached_token_ms", "per_cached_token_ms"), m.theta,
                                       strict=True):
                    coef.add_metric([key, term], value)
                wait.add_metric([key], m.queue_wait_ms(now))
                err.add_metric([key], m.abs_error_ms)
                seen.add_metric([key], m.observed_ttft_ms)
                transit.add_metric([key], m.transit_ms)
            yield coef
            yield wait
            yield err
            yield seen
            yield transit
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


class Metrics:
    """The gateway's metrics; one instance per process, created by the composition root."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "flexlb_requests",
            "Relayed calls by method, worker, role, strategy and final gRPC code",
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
            "Call duration seen by the gateway",
            ["method"],
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
            "flexlb_worker_ejections", "Workers taken out of rotation by outlier detection, by reason "
            "(consecutive_5xx, success_rate, failure_percentage)", ["worker", "role", "reason"], registry=r,
        )
        self.ttft = Histogram(
            "flexlb_ttft_seconds",
            "Time from call start to the first response message",
            ["worker"],
            buckets=_TTFT_BUCKETS_S,
            registry=r,
        )

    def worker_ejected(self, ejection: Ejection) -> None:
        """Count an ejection event returned by the outlier detector (flexlb_worker_ejections_total)."""
        self.worker_ejections.labels(ejection.worker, ejection.role, ejection.reason).inc()

    def watch_edge(self, connections: Callable[[], int], buffered_bytes: Callable[[], int]) -> None:
        """Export the frame relay's client-side gauges (read at scrape time)."""
        self.client_connections.set_function(connections)
        self.client_request_buffer.set_function(buffered_bytes)

    def watch_cluster(self, cluster: Cluster, draining: Callable[[], bool], ttft: TtftModel | None = None,
                      ha: Callable[[], tuple[bool, bool] | None] = lambda: None) -> None:
        """Export the cluster's live gauges (and the TTFT model's and the election's, when given)."""
        self.registry.register(_ClusterCollector(cluster, draining, ttft, ha))
