"""Configuration: environment JSON (original FlexLB names) + CLI flags → frozen, validated settings.

Every error a user can cause raises ConfigError naming the field and what is accepted;
`flexlb serve` prints it as one line and exits 2.

WHALE_MASTER_CONFIG is the table MASTER_FIELDS, the edge limits EDGE_LIMITS (their flags EDGE_LIMIT_FLAGS),
the other server flags SERVER_FLAGS: one row per setting, which parsing loops over and which
scripts/config_table.py renders into the README. MODEL_SERVICE_CONFIG is parsed in flexlb/model_service.py.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from flexlb.balancer.request import Deploy
from flexlb.balancer.strategies import strategy_names
from flexlb.balancer.traffic_policy import TrafficPolicy
from flexlb.balancer.workers import Role, WorkerAddr
from flexlb.config_values import (
    ConfigError,
    _bind_host,
    _bool,
    _enum,
    _float,
    _host_port,
    _int,
    _obj,
    _str,
)
from flexlb.flexlb_env import (
    HeadFields,
    parse_multipliers,
    parse_slo_buckets,
    parse_traffic_policy,
    show_buckets,
    show_multipliers,
    show_traffic_policy,
    traffic_policy_warnings,
    unknown_field_warnings,
    unmatched_env_warnings,
    upper_snake,
)
from flexlb.membership import DiscoveryConfig, parse_dns_flag, parse_workers_file
from flexlb.model_service import MODEL_SERVICE_ENV, cli_workers, dns_targets, parse_model_service
from flexlb.schedule_modes import BatchAlgorithm, ScheduleMode, ScheduleSettings
from flexlb.tls import TLS_FLAGS, TlsConfig, check_with_election, tls_config

MASTER_ENV = ("WHALE_MASTER_CONFIG", "FLEXLB_CONFIG")
CONSISTENCY_ENV = ("WHALE_SYNC_LB_CONSISTENCY_CONFIG", "FLEXLB_SYNC_CONSISTENCY_CONFIG")


class KvCacheMode(enum.Enum):
    """Where the gateway learns which KV blocks each worker holds."""

    NONE = "NONE"
    LOCAL_STATIC = "LOCAL_STATIC"
    LOCAL_SYNC = "LOCAL_SYNC"


@dataclass(frozen=True)
class MasterConfig:
    """WHALE_MASTER_CONFIG / FLEXLB_CONFIG: how to balance."""

    deploy: Deploy | None = None  # None: inferred from the endpoints that are configured
    load_balance_strategy: str = "COST_BASED_PREFILL"
    decode_load_balance_strategy: str = "WEIGHTED_CACHE"
    prefill_batch_wait_time_ms: int = 0
    kv_cache: KvCacheMode = KvCacheMode.LOCAL_STATIC
    static_cache_block_size: int = 64
    batch_size: int = 1
    prefill_lb_timeout_ms: int = 5000
    prefix_index_capacity_blocks: int = 100_000  # per worker, LOCAL_STATIC record
    prefix_index_ttl_s: float = 600.0
    ttft_prior_base_ms: float = 20.0  # TTFT model's starting prefill cost per request
    ttft_prior_us_per_token: float = 100.0  # and per uncached prompt token (microseconds)
    health_check_interval_ms: int = 1000  # 0 disables active checks
    health_check_timeout_ms: int = 500
    outlier_consecutive_failures: int = 3
    outlier_base_ejection_ms: int = 5000
    outlier_max_ejected_percent: int = 50
    max_in_flight: int = 0  # gateway-wide admission cap (0: none)
    max_in_flight_per_worker: int = 0  # per-worker admission cap (0: none)
    prefill_generate_timeout_ms: int = 0
    enable_grpc_prefill_master: bool = False
    prefill_queue_depth: int = 2  # prefills sent to one worker at a time; the rest wait at the gateway (0: off)
    prefill_queue_aging: float = 1.0  # priority gained per ms held, in ms of estimated prefill
    prefill_queue_max_hold_ms: int = 30_000  # held this long: sent regardless of depth (0: no bound)
    prefill_queue_hold_after_ms: int = 100  # no batch budget reported: hold beyond depth only past this backlog
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)  # Schedule's mode, batchers, queue
    vit_load_balance_strategy: str = "RANDOM"  # picks the VIT (multimodal) worker
    traffic_policy: TrafficPolicy | None = None  # None: no group pinning
    head: HeadFields = field(default_factory=HeadFields)  # Java FlexLB HEAD's fields that are parsed only


@dataclass(frozen=True)
class ConsistencyConfig:
    """WHALE_SYNC_LB_CONSISTENCY_CONFIG: master election (parsed and validated; used by HA)."""

    need_consistency: bool = False
    master_elect_type: str = "ZOOKEEPER"
    zk_host: str = ""
    zk_timeout_ms: int = 3000
    role_id: str = "default"  # HIPPO_ROLE or --role-id: the election path's last element
    admin_token: str = ""  # FLEXLB_ADMIN_TOKEN or --admin-token; never shown


MIB = 1024 * 1024


@dataclass(frozen=True)
class EdgeLimits:
    """What one client may cost the gateway's gRPC port; each default is set beside an anchor's (README)."""

    max_concurrent_streams: int = 256  # advertised and enforced; nginx 128, Envoy 2^31-1
    max_header_list_bytes: int = 64 * 1024  # decoded size (RFC 9113 §6.5.2), and the encoded block; Envoy 60 KiB
    max_header_fields: int = 100  # Envoy max_headers_count
    max_connections: int = 0  # client connections; 0: the open-file limit minus fd_headroom
    fd_headroom: int = 256  # descriptors kept for workers, the admin port, ZooKeeper and logs
    handshake_timeout_s: float = 10.0  # preface + SETTINGS; nginx client_header_timeout 60 s
    idle_timeout_s: float = 300.0  # a connection without streams; nginx keepalive_timeout 75 s, Envoy 1 h
    stream_idle_timeout_s: float = 300.0  # no frame either way on a stream; Envoy stream_idle_timeout 5 min
    max_outbound_control_frames: int = 1000  # queued for a client that does not read; Envoy's default
    premature_reset_min_streams: int = 500  # Envoy: >= 500 streams on a connection and ...
    premature_reset_ratio: float = 0.5  # ... more than half reset by the client early: GOAWAY
    max_inbound_priority_frames_per_stream: int = 100  # Envoy's default
    max_consecutive_empty_frames: int = 1  # Envoy max_consecutive_inbound_frames_with_empty_payload
    max_inbound_window_updates_per_data_frame: int = 10  # Envoy's default
    request_buffer_bytes_per_connection: int = 16 * MIB  # unforwarded request bytes; the connection window
    request_buffer_bytes: int = 256 * MIB  # unforwarded request bytes, whole gateway
    max_new_tokens: int = 0  # generate_config.max_new_tokens above this is refused (0: no cap)


@dataclass(frozen=True)
class ServerConfig:
    """Ports and limits of the gateway process itself."""

    host: str = "0.0.0.0"
    # the original FlexLB's layout: HTTP API on server.port P (7001), gRPC on P+2, management port apart
    http_port: int = 7001
    grpc_port: int = 7003
    admin_port: int = 7002
    admin_host: str = ""  # bind address of the admin port ("": same as host); e.g. 127.0.0.1 keeps it local
    max_receive_message_bytes: int = 1024 * 1024 * 1024  # RTP-LLM's client and server default
    max_send_message_bytes: int = 1024 * 1024 * 1024
    upstream_channels_per_worker: int = 1
    drain_timeout_s: float = 30.0
    # h2: HTTP/2 frame relay (fast, default); grpcio: grpc.aio terminates and re-originates each call
    relay_engine: str = "h2"
    advertise_host: str = ""  # what other replicas and clients should dial ("": derived from host)
    limits: EdgeLimits = field(default_factory=EdgeLimits)
    tls: TlsConfig = field(default_factory=TlsConfig)  # the gRPC port, the HTTP ports, towards workers (README TLS)
    # workers from DNS names and a watched file, besides the configured ones (README Dynamic membership)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)


@dataclass(frozen=True)
class Settings:
    """Everything `flexlb serve` needs, validated."""

    server: ServerConfig
    master: MasterConfig
    workers: tuple[WorkerAddr, ...]
    deploy: Deploy
    service_id: str = ""
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    # configuration names nothing reads, bad values of parsed-only fields: `flexlb serve` logs each at startup
    warnings: tuple[str, ...] = ()


# ---------------------------------------------------------------- JSON helpers


def _load_json(name: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(name, f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None


def _strategy(path: str, value: Any) -> str:
    # Java FlexLB HEAD accepts each name's CamelCase spelling too: CostBasedPrefill, ShortestTtft, Random
    text = _str(path, value).strip()
    if text and "_" not in text and text != text.upper():
        text = upper_snake(text)
    return _enum(path, text if text.upper() in strategy_names() else value, strategy_names())


def _deploy(path: str, value: Any) -> Deploy:
    text = _str(path, value).strip().upper()
    aliases = {"PDFUSION": "PD_FUSION", "FUSION": "PD_FUSION", "PD_SEPARATION": "DISAGGREGATED"}
    text = aliases.get(text, text)
    if text not in Deploy.__members__:
        raise ConfigError(path, f"unknown value {value!r}; accepted: DISAGGREGATED, PD_FUSION (alias PDFUSION)")
    return Deploy[text]


# ---------------------------------------------------------------- field tables
#
# Each configuration section is one table of rows: the parser loops over the rows, and
# scripts/config_table.py renders the same rows as the README's reference tables, so the two cannot drift.
# A default is never written in a row: it is the dataclass's, shown through the row's Kind (or unit).


@dataclass(frozen=True)
class Kind:
    """How one raw value becomes a setting: its parser and how the reference tables name and show it."""

    name: str  # the tables' type column: "int", "number", "bool", "strategy name", ...
    parse: Callable[[str, Any, float | None], Any]  # (field path, raw value, minimum) -> value, or ConfigError
    show: Callable[[Any], str] = str  # a (default) value as the tables print it
    choices: tuple[str, ...] = ()  # the accepted values, when there are few: the type column lists them


def _at_least(minimum: float | None) -> int | None:
    return None if minimum is None else int(minimum)


def _code(value: Any) -> str:
    return f"`{value.value if isinstance(value, enum.Enum) else value}`"


def _enum_kind(cls: type[enum.Enum]) -> Kind:
    values = [str(m.value) for m in cls]
    return Kind("enum", lambda path, v, _lo: cls(_enum(path, v, values)), _code, tuple(values))


INT = Kind("int", lambda path, v, lo: _int(path, v, _at_least(lo)), lambda v: f"{v:g}")
INT_AS_FLOAT = Kind("int", lambda path, v, lo: float(_int(path, v, _at_least(lo))), lambda v: f"{v:g}")
FLOAT = Kind("number", lambda path, v, lo: _float(path, v, lo), repr)
BOOL = Kind("bool", lambda path, v, _lo: _bool(path, v), lambda v: str(v).lower())
STRATEGY = Kind("strategy name", lambda path, v, _lo: _strategy(path, v), _code)
DEPLOY = Kind("enum", lambda path, v, _lo: _deploy(path, v), _code, ("DISAGGREGATED", "PD_FUSION"))
KV_CACHE = _enum_kind(KvCacheMode)


def _schedule_mode(path: str, value: Any) -> ScheduleMode:
    text = _str(path, value).strip().upper()
    if text == "AUTO":  # HEAD's legacy name of BATCH
        return ScheduleMode.BATCH
    if text not in ScheduleMode.__members__:
        raise ConfigError(path, f"unknown value {value!r}; accepted: BATCH, DIRECT, QUEUE (legacy AUTO = BATCH)")
    return ScheduleMode[text]


def _words_kind(*values: str) -> Kind:
    """A string out of a few, compared case-insensitively and kept in the case given here (HEAD's spelling)."""
    by_fold = {v.casefold(): v for v in values}

    def parse(path: str, v: Any, _lo: float | None) -> str:
        text = _str(path, v).strip().casefold()
        if text not in by_fold:
            raise ConfigError(path, f"unknown value {v!r}; accepted: {', '.join(values)}")
        return by_fold[text]

    return Kind("enum", parse, _code, values)


def _non_blank(path: str, value: Any) -> str:
    text = _str(path, value).strip()
    if not text:
        raise ConfigError(path, "must not be empty")
    return text


SCHEDULE_MODE = Kind("enum", lambda path, v, _lo: _schedule_mode(path, v), _code, ("BATCH", "DIRECT", "QUEUE"))
_BATCH_ALGORITHM = _words_kind(*(a.value for a in BatchAlgorithm))
BATCH_ALGORITHM = Kind("enum", lambda path, v, lo: BatchAlgorithm(_BATCH_ALGORITHM.parse(path, v, lo)), _code,
                       _BATCH_ALGORITHM.choices)
TEXT = Kind("string", lambda path, v, _lo: _non_blank(path, v), _code)
SLO_BUCKETS = Kind("spec `maxSeqLen:sloMs,…,*:sloMs`", lambda path, v, _lo: parse_slo_buckets(path, v),
                   lambda v: _code(show_buckets(v)))
COST_SLO_BUCKETS = Kind("spec `maxSeqLen:sloMs,…` or empty",
                        lambda path, v, _lo: parse_slo_buckets(path, v, allow_empty=True),
                        lambda v: _code(show_buckets(v)) if v else "empty")
MULTIPLIERS = Kind("spec `priority:multiplier,…`", lambda path, v, _lo: parse_multipliers(path, v),
                   lambda v: _code(show_multipliers(v)))
TRAFFIC_POLICY = Kind("object (see Traffic policy)", lambda path, v, _lo: parse_traffic_policy(path, v),
                      show_traffic_policy)

ACTED_ON = "acted on"

# the README table each row is in (scripts/config_table.py): the gateway's own vocabulary, HEAD's Schedule
# fields (MasterConfig.schedule), HEAD's other fields
GATEWAY, SCHEDULE, HEAD = "master", "schedule", "head"
# rows of the gateway table that Java FlexLB HEAD also has: their override is HEAD's plain UPPER_SNAKE name
_HEAD_NAMED = frozenset({"loadBalanceStrategy", "decodeLoadBalanceStrategy", "vitLoadBalanceStrategy",
                         "prefillLbTimeoutMs", "trafficPolicy"})

# HEAD's "critical" fields: a bad environment value aborts startup even where the field is parsed only
HEAD_CRITICAL = frozenset({
    "defaultScheduleMode", "flexlbBatchAlgorithm", "flexlbBatchMaxCapacity", "flexlbBatchMaxInflight",
    "flexlbBatchSloMaxInflightBatches", "flexlbBatchFixedMaxInflightBatches", "costFormula", "prefillPredictorType",
    "autoTpmEnabled", "flexlbBatchQueueMaxSize", "autoTpmSloLengthBuckets", "autoTpmPrioritySloMultipliers",
    "trafficPolicy",
})


@dataclass(frozen=True)
class MasterField:
    """One field of WHALE_MASTER_CONFIG / FLEXLB_CONFIG: parsed by parse_master, a row of the README's table."""

    key: str  # the JSON key: the original FlexLB name
    attr: str  # the MasterConfig attribute it sets (dotted into schedule / head); its default is the dataclass's
    kind: Kind
    doc: str  # what it does (README)
    minimum: float | None = None  # smallest accepted value (numbers); errors say "must be >= N"
    maximum: float | None = None  # largest accepted value; errors say "must be <= N"
    unit: str = ""
    default_doc: str = ""  # shown instead of the default when that needs words (deploy: None = inferred)
    status: str = ACTED_ON  # otherwise: why the field is parsed but not acted on yet (NOT_ACTED_ON)
    # further JSON keys read into the same attribute (a later vocabulary, e.g. Java FlexLB HEAD's names);
    # the first key present wins and errors name the key that was given
    aliases: tuple[str, ...] = ()
    section: str = GATEWAY  # the README table of the row
    # the environment variables overriding it, the first one set winning (None: each key in UPPER_SNAKE);
    # a name ending in _FILE names a file holding the value
    env: tuple[str, ...] | None = None

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.key, *self.aliases)

    @property
    def env_names(self) -> tuple[str, ...]:
        """The per-field environment variables: `flexlbBatchSizeMax` -> FLEXLB_BATCH_SIZE_MAX."""
        if self.env is not None:
            return self.env
        if self.section == GATEWAY and self.key not in _HEAD_NAMED:
            # the gateway's own fields have generic names (deploy, batchSize, kvCache): a bare DEPLOY or
            # BATCH_SIZE left in a pod's environment by something else must not reconfigure it
            return tuple("FLEXLB_" + upper_snake(k) for k in self.keys)
        return tuple(upper_snake(k) for k in self.keys)

    @property
    def critical(self) -> bool:
        """A bad environment value aborts startup (otherwise: a warning, and the value is ignored)."""
        return self.status == ACTED_ON or self.key in HEAD_CRITICAL


# why HEAD's parsed-only fields are not acted on (their rows' status)
# the Schedule service reads MasterConfig.schedule (flexlb/scheduler); a field it does not read yet says so
_NO_WORKER_BOUND = "QUEUE mode does not bound the decisions made at once yet"
_DECAY = "the WEIGHTED_CACHE / COST_BASED_DECODE chain's decay is fixed at HEAD's default 0.001"
_CACHE_HIT = "HEAD's cache-hit metrics window; the gateway's cache metrics come from its prefix index"
_AVAIL = "HEAD's availability thresholds; here maxInFlightPerWorker and the prefill queue bound a worker's load"
_WATER = "QUEUE mode's water-level gating (DynamicWorkerManager) is not built"
_THREADS = "a Java thread pool; the gateway is one asyncio event loop"
_COST = "HEAD's cost model; COST_BASED_PREFILL and SHORTEST_TTFT here score with the learned TTFT model (Strategies)"
_DECODE = "HEAD's decode filters; the decode chain here weighs KV use only"
_TPM = "priority admission's eviction and leases (PriorityAdmissionScheduler) are not built"


def _sched(key: str, attr: str, kind: Kind, doc: str, **kw: Any) -> MasterField:
    return MasterField(key, f"schedule.{attr}", kind, doc, section=SCHEDULE, **kw)


def _head(key: str, attr: str, kind: Kind, doc: str, status: str, **kw: Any) -> MasterField:
    return MasterField(key, f"head.{attr}", kind, doc, status=status, section=HEAD, **kw)


MASTER_FIELDS: tuple[MasterField, ...] = (
    MasterField("deploy", "deploy", DEPLOY, "a call goes to a PREFILL + DECODE pair, or to one fused worker "
                "(see Deployments; `PDFUSION` is read as `PD_FUSION`)", default_doc="inferred from the workers"),
    MasterField("loadBalanceStrategy", "load_balance_strategy", STRATEGY,
                "picks the PREFILL (or fused) worker (see Strategies; HEAD's CamelCase spellings such as "
                "`CostBasedPrefill` are read too)"),
    MasterField("decodeLoadBalanceStrategy", "decode_load_balance_strategy", STRATEGY, "picks the DECODE worker"),
    MasterField("prefillBatchWaitTimeMs", "prefill_batch_wait_time_ms", INT, "the batching window (0 = off)",
                minimum=0, unit="ms"),
    MasterField("batchSize", "batch_size", INT, "a window closes early at this many requests (1 = off)",
                minimum=1, unit="requests"),
    MasterField("kvCache", "kv_cache", KV_CACHE, "where the prefix index learns which KV blocks each worker holds: "
                "`LOCAL_STATIC` what the gateway sent, `LOCAL_SYNC` that reconciled with what the workers report "
                "(`GetCacheStatus`), `NONE` no index"),
    MasterField("staticCacheBlockSize", "static_cache_block_size", INT, "the prefix index's block size",
                minimum=1, unit="tokens"),
    MasterField("prefixIndexCapacityBlocks", "prefix_index_capacity_blocks", INT,
                "per-worker LRU bound of the prefix index", minimum=1, unit="blocks"),
    MasterField("prefixIndexTtlS", "prefix_index_ttl_s", INT_AS_FLOAT, "index entries unused this long are dropped",
                minimum=1, unit="s"),
    MasterField("prefillLbTimeoutMs", "prefill_lb_timeout_ms", INT,
                "bounds the batching window and the wait for the master's decision", minimum=0, unit="ms"),
    MasterField("prefillGenerateTimeoutMs", "prefill_generate_timeout_ms", INT,
                "time-to-first-token bound per attempt (0 = none)", minimum=0, unit="ms"),
    MasterField("healthCheckIntervalMs", "health_check_interval_ms", INT, "active checks: probe interval (0 = off)",
                minimum=0, unit="ms"),
    MasterField("healthCheckTimeoutMs", "health_check_timeout_ms", INT, "active checks: timeout of one probe",
                minimum=1, unit="ms"),
    MasterField("outlierConsecutiveFailures", "outlier_consecutive_failures", INT,
                "passive ejection: failures in a row that eject a worker", minimum=1, unit="failures"),
    MasterField("outlierBaseEjectionMs", "outlier_base_ejection_ms", INT,
                "passive ejection: first ejection time, doubling with each repeated ejection", minimum=1, unit="ms"),
    MasterField("outlierMaxEjectedPercent", "outlier_max_ejected_percent", INT,
                "passive ejection never takes out more of a role", minimum=0, maximum=100, unit="%"),
    MasterField("maxInFlight", "max_in_flight", INT, "admission cap, whole gateway (0 = none)",
                minimum=0, unit="calls"),
    MasterField("maxInFlightPerWorker", "max_in_flight_per_worker", INT, "admission cap per worker (0 = none)",
                minimum=0, unit="calls"),
    MasterField("ttftPriorBaseMs", "ttft_prior_base_ms", INT,
                "the TTFT model's starting prefill cost per request; learned online from there", minimum=0, unit="ms"),
    MasterField("ttftPriorUsPerToken", "ttft_prior_us_per_token", INT,
                "the TTFT model's starting prefill cost per uncached prompt token; learned online from there",
                minimum=0, unit="µs"),
    MasterField("enableGrpcPrefillMaster", "enable_grpc_prefill_master", BOOL,
                "non-masters ask the elected master for each decision"),
    MasterField("prefillQueueDepth", "prefill_queue_depth", INT,
                "GenerateStreamCalls sent to one worker and not yet past their first message; the rest wait at "
                "the gateway (0 = no queue)", minimum=0, unit="calls"),
    MasterField("prefillQueueAging", "prefill_queue_aging", FLOAT,
                "ms of priority a held call gains per ms it waits (0 = strict shortest-first)",
                minimum=0.0, unit="ms per ms"),
    MasterField("prefillQueueMaxHoldMs", "prefill_queue_max_hold_ms", INT,
                "a call held this long is sent regardless (0 = no bound)", minimum=0, unit="ms"),
    MasterField("prefillQueueHoldAfterMs", "prefill_queue_hold_after_ms", INT,
                "for workers that report no batch token budget: calls beyond the depth are held only once the "
                "worker has this much prefill work outstanding (below it a held call's release latency costs "
                "more than reordering gains)", minimum=0, unit="ms"),
    MasterField("vitLoadBalanceStrategy", "vit_load_balance_strategy", STRATEGY,
                "picks the VIT (multimodal encoder) worker (HEAD's default RANDOM; see Roles and role_addrs)"),
    MasterField("trafficPolicy", "traffic_policy", TRAFFIC_POLICY,
                "pins a request's every role to one worker group (see Traffic policy); TRAFFIC_POLICY_CONFIG, "
                "then TRAFFIC_POLICY_CONFIG_FILE, win over this field; the api key is Schedule's `api_key`, or a "
                "relayed call's `x-api-key` / `api-key` / `Authorization: Bearer` header",
                default_doc="none (no pinning)",
                section=HEAD, env=("TRAFFIC_POLICY_CONFIG", "TRAFFIC_POLICY_CONFIG_FILE")),
    # ------------------------------------------------ HEAD's Schedule modes (MasterConfig.schedule)
    _sched("defaultScheduleMode", "mode", SCHEDULE_MODE, "how Schedule is answered: BATCH batches per prefill "
           "worker, DIRECT decides at once, QUEUE queues before deciding; legacy `AUTO` is read as `BATCH`"),
    _sched("flexlbBatchAlgorithm", "batch.algorithm", BATCH_ALGORITHM, "the batcher of BATCH mode"),
    _sched("flexlbBatchSizeMax", "batch.size_max", INT, "a batch is dispatched at this many requests",
           minimum=1, unit="requests"),
    _sched("flexlbBatchFixedWaitMs", "batch.fixed_wait_ms", INT, "fixed_window: the head request's longest wait",
           minimum=0, unit="ms"),
    _sched("flexlbBatchPredictThresholdMs", "batch.predict_threshold_ms", INT,
           "fixed_window: dispatch once the batch's predicted prefill reaches this (0 = off)", minimum=0, unit="ms"),
    _sched("flexlbBatchWindowMs", "batch.window_ms", INT, "slo_budget: the window; arrival samples are capped at it",
           minimum=1, unit="ms"),
    _sched("flexlbBatchMinSize", "batch.min_size", INT, "slo_budget: the target batch size inside the window",
           minimum=1, unit="requests"),
    _sched("flexlbBatchEmergencyBudgetMs", "batch.emergency_budget_ms", INT,
           "slo_budget: the latest dispatch before a head's budget runs out", minimum=0, unit="ms"),
    _sched("flexlbBatchDispatchGuardMs", "batch.dispatch_guard_ms", INT,
           "slo_budget: budget kept for dispatching", minimum=0, unit="ms"),
    _sched("flexlbBatchArrivalEmaAlpha", "batch.arrival_ema_alpha", FLOAT,
           "slo_budget: smoothing of the arrival-interval average", minimum=0.0, maximum=1.0),
    _sched("flexlbBatchArrivalWaitGuardMs", "batch.arrival_wait_guard_ms", INT,
           "slo_budget: an arrival expected later than the slack minus this is not waited for", minimum=0, unit="ms"),
    _sched("flexlbBatchScanAhead", "batch.scan_ahead", INT, "slo_budget: queued requests a fill looks at",
           minimum=1, unit="requests"),
    _sched("flexlbBatchSloMaxInflightBatches", "batch.slo_max_inflight_batches", INT,
           "slo_budget: batches in flight per prefill worker before the batcher waits", minimum=0, unit="batches"),
    _sched("flexlbBatchFixedMaxInflightBatches", "batch.fixed_max_inflight_batches", INT,
           "fixed_window: the same (0 = off)", minimum=0, unit="batches"),
    _sched("flexlbBatchEnqueueDeadlineMs", "batch.enqueue_deadline_ms", INT,
           "a queued request waiting longer is dropped (Auto-TPM off)", minimum=0, unit="ms"),
    _sched("flexlbInflightTtlMs", "batch.inflight_ttl_ms", INT, "an in-flight batch record is dropped after this",
           minimum=1, unit="ms"),
    _sched("flexlbBatchMaxCapacity", "batch.max_capacity_tokens", INT,
           "a batch's padded tokens stay below this (and the engine's max_batch_tokens_size)", minimum=1,
           unit="tokens"),
    _sched("flexlbBatchQueueMaxSize", "batch.queue_max_size", INT, "queued requests per prefill worker",
           minimum=1, unit="requests"),
    _sched("flexlbBatchMaxInflight", "batch.max_inflight", INT, "requests in flight, whole master",
           minimum=1, unit="requests"),
    _sched("maxQueueSize", "queue.max_queue_size", INT, "QUEUE mode: queued requests", minimum=1,
           unit="requests"),
    _sched("maxRetryCount", "queue.max_retry_count", INT,
           "QUEUE mode: retries of a retryable failure (0 = until the request's timeout)", minimum=0),
    _sched("scheduleWorkerSize", "queue.schedule_worker_size", INT,
           "QUEUE mode: requests decided at once (0 = the number of CPUs)", minimum=0, unit="requests",
           status=_NO_WORKER_BOUND),
    _sched("autoTpmEnabled", "priority.enabled", BOOL, "requests carry a priority and an SLO (Auto-TPM)"),
    _sched("autoTpmDefaultPriority", "priority.default_priority", INT, "the priority of a request giving none",
           minimum=1, maximum=100),
    _sched("autoTpmSloLengthBuckets", "priority.slo_length_buckets", SLO_BUCKETS,
           "a request's base SLO by prompt length: inclusive upper bounds, increasing, `*` (last) for the rest",
           unit="tokens:ms"),
    _sched("autoTpmPrioritySloMultipliers", "priority.priority_slo_multipliers", MULTIPLIERS,
           "the base SLO's multiplier by priority: linear between the points, clamped at both ends"),
    # this port's own Schedule fields (not HEAD's)
    _sched("batchFusedWorkers", "batch_fused_workers", BOOL, "BATCH mode batches for PDFUSION workers too, instead "
           "of answering DIRECT there (RTP-LLM's fused workers do not serve EnqueueBatch; the mock worker does)"),
    _sched("flexlbBatchDispatchWhenIdle", "batch.dispatch_when_idle", BOOL, "BATCH mode sends a request at once "
           "while its prefill worker has no batch of this master in flight, instead of waiting out the window "
           "(false: HEAD's behaviour)"),
    _sched("requestStateTtlMs", "request_state_ttl_ms", INT, "a finished request's state stays visible to "
           "GetRequestState this long", minimum=0, unit="ms"),
    _sched("statusPollIntervalMs", "status_poll_interval_ms", INT, "GetWorkerStatus interval of workers holding "
           "placed requests", minimum=1, unit="ms"),
    # ------------------------------------------------ HEAD's other fields: parsed and validated only
    _head("weightedCacheDecayFactor", "weighted_cache_decay_factor", FLOAT,
          "decode choice weight exp(-factor x KV tokens above the least used)", _DECAY, minimum=0.0),
    _head("cacheHitTimeWindowMs", "cache_hit_time_window_ms", INT, "recent cache-key hit window", _CACHE_HIT,
          minimum=0, unit="ms"),
    _head("cacheHitMaxCacheKeys", "cache_hit_max_cache_keys", INT, "keys the hit window keeps", _CACHE_HIT,
          minimum=0, unit="keys"),
    _head("cacheHitWindowWriteEnabled", "cache_hit_window_write_enabled", BOOL, "the hit window records", _CACHE_HIT),
    _head("cacheHitMetricReportEnabled", "cache_hit_metric_report_enabled", BOOL, "hit-window metrics", _CACHE_HIT),
    _head("cacheHitTraceLogEnabled", "cache_hit_trace_log_enabled", BOOL, "hit-window trace log", _CACHE_HIT),
    _head("cacheHitTheoryLogEnabled", "cache_hit_theory_log_enabled", BOOL, "hit-window theory log", _CACHE_HIT),
    _head("prefillQueueSizeThreshold", "prefill_queue_size_threshold", INT,
          "a prefill worker with this many pending requests is unavailable", _AVAIL, minimum=1, unit="requests"),
    _head("decodeAvailableMemoryThreshold", "decode_available_memory_threshold", INT,
          "a decode worker at this KV use is unavailable", _AVAIL, minimum=0, maximum=100, unit="%"),
    _head("decodeConcurrencyLimit", "decode_concurrency_limit", INT,
          "a decode worker with this many requests is unavailable (<= 0 = off)", _AVAIL, unit="requests"),
    _head("hysteresisBiasPercent", "hysteresis_bias_percent", INT, "availability comes back this far below the "
          "threshold", _AVAIL, minimum=0, maximum=100, unit="%"),
    _head("resourceCheckIntervalMs", "resource_check_interval_ms", INT, "QUEUE mode: water-level recomputation",
          _WATER, minimum=1, unit="ms"),
    _head("maxPrefillQueueSize", "max_prefill_queue_size", INT, "QUEUE mode: prefill water level 100% at this",
          _WATER, minimum=1, unit="requests"),
    _head("decodeFullSpeedThreshold", "decode_full_speed_threshold", INT, "QUEUE mode: decode water level 0 up to "
          "this KV use", _WATER, minimum=0, maximum=100, unit="%"),
    _head("decodeStopThreshold", "decode_stop_threshold", INT, "QUEUE mode: decode water level 100 from this KV use",
          _WATER, minimum=0, maximum=100, unit="%"),
    *(_head(key, upper_snake(key).lower(), INT, "a Java thread-pool size", _THREADS, minimum=minimum)
      for key, minimum in (
          ("nettySelectThreadMultiplier", 1), ("nettyWorkerThreadMultiplier", 1),
          ("grpcClientExecutorCoreSize", 1), ("grpcClientExecutorMaxSize", 1), ("grpcClientExecutorQueueSize", 0),
          ("grpcClientEventLoopThreads", 1), ("grpcServerWorkerEventLoopThreads", 1),
          ("httpNettyEventLoopThreads", 1), ("httpNettyEventExecutorThreads", 1),
          ("httpNettyEventExecutorQueueSize", 0), ("httpRequestExecutorCoreSize", 1),
          ("httpRequestExecutorMaxSize", 1), ("httpRequestExecutorQueueSize", 0),
          ("engineSyncExecutorCoreSize", 1), ("engineSyncExecutorMaxSize", 1),
          ("statusCheckExecutorCoreSize", 1), ("statusCheckExecutorMaxSize", 1), ("serviceDiscoveryMaxSize", 1))),
    _head("flexlbBatchDispatchPoolSize", "batch_dispatch_pool_size", INT, "BATCH mode's dispatch threads", _THREADS,
          minimum=1),
    _head("flexlbBatchDispatchQueueSize", "batch_dispatch_queue_size", INT, "BATCH mode's dispatch queue", _THREADS,
          minimum=0),
    _head("costSloFilterEnabled", "cost_slo_filter_enabled", BOOL, "COST_BASED_PREFILL drops workers that would "
          "miss the SLO", _COST),
    _head("costSloMs", "cost_slo_ms", INT, "that SLO", _COST, minimum=0, unit="ms"),
    _head("costSloRiskMarginMs", "cost_slo_risk_margin_ms", INT, "margin kept below the SLO", _COST, minimum=0,
          unit="ms"),
    _head("costSloBuckets", "cost_slo_buckets", COST_SLO_BUCKETS, "the SLO by prompt length instead", _COST,
          unit="tokens:ms"),
    _head("costHotspotMultiplier", "cost_hotspot_multiplier", FLOAT, "drop workers pending more than this x the "
          "average", _COST, minimum=0.0),
    _head("costImbalanceMultiplier", "cost_imbalance_multiplier", FLOAT, "drop workers waiting more than this x "
          "the average", _COST, minimum=0.0),
    _head("scoreTieRandomEnabled", "score_tie_random_enabled", BOOL, "pick at random among near-best scores", _COST),
    _head("scoreTieThresholdPct", "score_tie_threshold_pct", FLOAT, "near-best: within this share of the best",
          _COST, minimum=0.0),
    _head("scoreTieThresholdMs", "score_tie_threshold_ms", INT, "near-best: at least this close", _COST, minimum=0,
          unit="ms"),
    _head("shortestTtftCandidatePoolMode", "shortest_ttft_candidate_pool_mode", _words_kind("RATIO", "FIXED"),
          "SHORTEST_TTFT's candidate pool: a share or a fixed size", _COST),
    _head("shortestTtftCandidatePoolRatio", "shortest_ttft_candidate_pool_ratio", FLOAT, "RATIO: the share",
          _COST, minimum=0.0, maximum=1.0),
    _head("shortestTtftCandidatePoolMinSize", "shortest_ttft_candidate_pool_min_size", INT, "RATIO: at least",
          _COST, minimum=1, unit="workers"),
    _head("shortestTtftCandidatePoolSize", "shortest_ttft_candidate_pool_size", INT, "FIXED: the size", _COST,
          minimum=1, unit="workers"),
    _head("costFormula", "cost_formula", TEXT, "HEAD's prefill-time formula; PREFILL_TIME_FORMULA wins over "
          "COST_FORMULA", _COST, env=("PREFILL_TIME_FORMULA", "COST_FORMULA")),
    _head("prefillPredictorType", "prefill_predictor_type", _words_kind("formula", "learning"),
          "HEAD's prefill-time predictor", _COST),
    _head("decodeHotspotMultiplier", "decode_hotspot_multiplier", FLOAT, "COST_BASED_DECODE drops workers loaded "
          "more than this x the average", _DECODE, minimum=0.0),
    _head("decodeImbalanceMultiplier", "decode_imbalance_multiplier", FLOAT, "COST_BASED_DECODE drops workers "
          "using more KV than this x the average", _DECODE, minimum=0.0),
    _head("maxNewTokensCap", "max_new_tokens_cap", INT, "COST_BASED_DECODE's expected-KV cap on max_new_tokens "
          "(0 = none)", _DECODE, minimum=0, unit="tokens"),
    _head("workerTimeoutMs", "worker_timeout_ms", INT, "a worker whose status is older is dropped",
          "worker health is what the active checks and passive ejection say (healthCheckIntervalMs, outlier*)",
          minimum=1, unit="ms"),
    _head("autoTpmPrefillQueueEvictEnabled", "auto_tpm_prefill_queue_evict_enabled", BOOL,
          "a full queue evicts lower-priority requests", _TPM),
    _head("autoTpmDecodeReservedEvictEnabled", "auto_tpm_decode_reserved_evict_enabled", BOOL,
          "evict reserved-only decode victims", _TPM),
    _head("autoTpmDecodeAcceptedEvictEnabled", "auto_tpm_decode_accepted_evict_enabled", BOOL,
          "evict engine-accepted decode victims (Cancel)", _TPM),
    _head("autoTpmPlanCacheHitBenefitCap", "auto_tpm_plan_cache_hit_benefit_cap", FLOAT,
          "cap of a plan's cache-hit benefit (0 = none)", _TPM, minimum=0.0),
    _head("autoTpmPostSuccessSoftTimeoutMs", "auto_tpm_post_success_soft_timeout_ms", INT,
          "a prefilled request decode has not accepted by then is cancelled", _TPM, minimum=0, unit="ms"),
    _head("autoTpmPostSuccessBackpressureLimit", "auto_tpm_post_success_backpressure_limit", INT,
          "handed over but not accepted beyond this: new work refused", _TPM, minimum=0, unit="requests"),
    _head("autoTpmCancelAckTimeoutMs", "auto_tpm_cancel_ack_timeout_ms", INT, "wait for a Cancel's ack", _TPM,
          minimum=0, unit="ms"),
    _head("autoTpmCancelCompletionTimeoutMs", "auto_tpm_cancel_completion_timeout_ms", INT,
          "wait for a cancelled request to end", _TPM, minimum=0, unit="ms"),
    _head("autoTpmCommitStrategy", "auto_tpm_commit_strategy", _words_kind("lockfree", "versioned"),
          "how an admission plan is committed", _TPM),
    _head("autoTpmVictimGuardMode", "auto_tpm_victim_guard_mode", _words_kind("victim_presence", "queue_version"),
          "how an eviction checks its victims are still there", _TPM),
)

# Fields of WHALE_MASTER_CONFIG that are parsed and validated but not acted on yet, with the reason.
NOT_ACTED_ON: dict[str, str] = {f.key: f.status for f in MASTER_FIELDS if f.status != ACTED_ON}


def _field_value(f: MasterField, path: str, raw: Any) -> Any:
    value = f.kind.parse(path, raw, f.minimum)
    if f.maximum is not None and value > f.maximum:
        raise ConfigError(path, f"must be <= {f.maximum}, got {value}")
    return value


def parse_fields(raw: Mapping[str, Any], name: str, fields: tuple[MasterField, ...]) -> dict[str, Any]:
    """{attribute: value} of the rows whose key (or an alias) is in raw; ConfigError names `name.key`."""
    out: dict[str, Any] = {}
    for f in fields:
        key = next((k for k in f.keys if k in raw), None)
        if key is not None:
            out[f.attr] = _field_value(f, f"{name}.{key}", raw[key])
    return out


def attr_value(obj: Any, attr: str) -> Any:
    """A row's attribute of a MasterConfig, dotted ones included (schedule.batch.size_max)."""
    return functools.reduce(getattr, attr.split("."), obj)


def _with_attr(obj: Any, attr: str, value: Any) -> Any:
    head, _, rest = attr.partition(".")
    return replace(obj, **{head: _with_attr(getattr(obj, head), rest, value) if rest else value})


def with_values(master: MasterConfig, values: Mapping[str, Any]) -> MasterConfig:
    """`master` with the {attribute: value} of parse_fields set, into the nested settings too."""
    for attr, value in values.items():
        master = _with_attr(master, attr, value)
    return master


# ---------------------------------------------------------------- WHALE_MASTER_CONFIG / FLEXLB_CONFIG


def parse_master(raw: Mapping[str, Any], name: str = "WHALE_MASTER_CONFIG") -> MasterConfig:
    """Parse the master config object; unknown keys are ignored here (load_master warns about them)."""
    return with_values(MasterConfig(), parse_fields(raw, name, MASTER_FIELDS))


def _env_value(env: Mapping[str, str], var: str) -> str | None:
    text = env.get(var)
    if text is None or not text.strip():
        return None  # blank is unset, as HEAD
    if var.endswith("_FILE"):
        try:
            return Path(text.strip()).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(var, f"cannot read {text.strip()!r}: {exc.strerror or exc}") from None
    return text


def parse_env_fields(env: Mapping[str, str], fields: tuple[MasterField, ...] = MASTER_FIELDS
                     ) -> tuple[dict[str, Any], dict[str, tuple[str, str]], list[str]]:
    """The per-field environment overrides: ({attribute: value}, {attribute: (variable, text)}, warnings).
    A bad value raises ConfigError naming the variable for a critical field; otherwise it is a warning."""
    values: dict[str, Any] = {}
    given: dict[str, tuple[str, str]] = {}
    warnings: list[str] = []
    for f in fields:
        for var in f.env_names:
            try:
                text = _env_value(env, var)
                if text is None:
                    continue
                values[f.attr] = _field_value(f, var, text)
                given[f.attr] = (var, text)
            except ConfigError as exc:
                if f.critical:
                    raise
                warnings.append(f"{exc}; ignored, {f.key} keeps its configured value")
            break
    return values, given, warnings


def env_names(fields: tuple[MasterField, ...] = MASTER_FIELDS) -> frozenset[str]:
    """Every per-field environment variable."""
    return frozenset(v for f in fields for v in f.env_names)


def load_master(env: Mapping[str, str]) -> tuple[MasterConfig, tuple[str, ...]]:
    """defaults < WHALE_MASTER_CONFIG (else FLEXLB_CONFIG) < per-field variables; and the startup warnings."""
    warnings: list[str] = []
    present = [n for n in MASTER_ENV if (env.get(n) or "").strip()]
    if len(present) > 1:
        warnings.append(f"{present[1]}: ignored, {present[0]} is set too and is the one read (no merging)")
    name, raw = _env_json(env, MASTER_ENV)
    raw = raw or {}
    values = parse_fields(raw, name, MASTER_FIELDS)
    warnings += unknown_field_warnings(raw, name, [k for f in MASTER_FIELDS for k in f.keys])
    env_values, given, env_warnings = parse_env_fields(env)
    values.update(env_values)
    warnings += env_warnings
    if "traffic_policy" in given:
        warnings += traffic_policy_warnings(*given["traffic_policy"])
    elif "trafficPolicy" in raw:
        warnings += traffic_policy_warnings(f"{name}.trafficPolicy", raw["trafficPolicy"])
    warnings += unmatched_env_warnings(env, env_names())
    return with_values(MasterConfig(), values), tuple(warnings)


# ---------------------------------------------------------------- consistency


def parse_consistency(raw: Mapping[str, Any], name: str = CONSISTENCY_ENV[0]) -> ConsistencyConfig:
    """Parse the election config; a ZooKeeper host is required when consistency is on."""
    need = _bool(f"{name}.needConsistency", raw.get("needConsistency", False))
    elect = _enum(f"{name}.masterElectType", raw.get("masterElectType", "ZOOKEEPER"), ["ZOOKEEPER"])
    zk = _obj(f"{name}.zookeeperConfig", raw.get("zookeeperConfig", {}))
    zk_host = _str(f"{name}.zookeeperConfig.zkHost", zk.get("zkHost", ""))
    timeout = _int(f"{name}.zookeeperConfig.zkTimeoutMs", zk.get("zkTimeoutMs", 3000), 100)
    if need and not zk_host.strip():
        raise ConfigError(f"{name}.zookeeperConfig.zkHost", "required when needConsistency is true")
    for i, hp in enumerate(h for h in zk_host.split(",") if h.strip()):
        _host_port(f"{name}.zookeeperConfig.zkHost[{i}]", hp.split("/")[0])
    return ConsistencyConfig(need, elect, zk_host, timeout)


# ---------------------------------------------------------------- flags of `flexlb serve`


def _with_unit(value: float, unit: str) -> str:
    """65536, "bytes" -> "64 KiB"; 10.0, "s" -> "10 s"."""
    if unit == "bytes":
        for size, name in ((1024 * MIB, "GiB"), (MIB, "MiB"), (1024, "KiB")):
            if value >= size and value % size == 0:
                return f"{int(value // size)} {name}"
    text = f"{value:g}"
    return f"{text} {unit}" if unit else text


@dataclass(frozen=True)
class LimitRow:
    """One limit of the client-facing edge: a row of the README's limits table, and a flag when it has one."""

    what: str  # the limit
    hit: str  # what a client gets when it is hit
    anchor: str  # the anchor default: what nginx, Envoy or grpc C-core do (doc text)
    attr: str = ""  # the attribute of `of` holding the value ("": nothing to set, e.g. the transport's buffer)
    # the `flexlb serve` flag ("": fixed); a row without one, on the attr of a row above that has one, shows "same"
    flag: str = ""
    kind: Kind = INT  # INT or FLOAT: how the flag's value is parsed
    minimum: float | None = None  # smallest value the flag accepts
    unit: str = ""  # "bytes" (shown in KiB/MiB), "s", ...
    # the default when it needs words: a template of `value` (the default with its unit) and the defaults of `of`
    default: str = ""
    help: str = ""  # the flag's --help text, a template like `default`
    of: type[Any] = EdgeLimits

    @property
    def integer(self) -> bool:
        return self.kind is INT

    def _fill(self, template: str) -> str:
        value = _with_unit(getattr(self.of(), self.attr), self.unit) if self.attr else ""
        return template.format(value=value, **vars(self.of()))

    def default_text(self) -> str:
        """The default as the README's table says it."""
        return self._fill(self.default or "{value}")

    def help_text(self) -> str:
        """The flag's --help (argparse %-escaped)."""
        return self._fill(self.help).replace("%", "%%")


EDGE_LIMITS: tuple[LimitRow, ...] = (
    LimitRow("concurrent streams per connection (advertised in SETTINGS and enforced)",
             "RST_STREAM REFUSED_STREAM; a client refused more times than the limit (it ignores SETTINGS, it is "
             "not racing them) gets GOAWAY ENHANCE_YOUR_CALM",
             "nginx `http2_max_concurrent_streams` 128 (nginx closes such a client too); Envoy 2^31-1",
             "max_concurrent_streams", "--max-concurrent-streams", minimum=1,
             help="streams per client connection, advertised and enforced (default {value}; nginx 128)"),
    LimitRow("request header list, decoded (RFC size: name + value + 32 per field)",
             "grpc-status RESOURCE_EXHAUSTED naming the limit; connection kept",
             "Envoy `max_request_headers_kb` 60; nginx 4 × 8k",  # noqa: RUF001
             "max_header_list_bytes", "--max-header-list-bytes", minimum=1024, unit="bytes",
             help="request header list, decoded or encoded (default {value}; Envoy 60 KiB)"),
    LimitRow("encoded header block (HEADERS + CONTINUATION), counted as it arrives",
             "GOAWAY ENHANCE_YOUR_CALM (never buffered past the limit or decoded)", "CVE-2024-27316 family",
             "max_header_list_bytes", unit="bytes"),
    LimitRow("request header fields", "RESOURCE_EXHAUSTED; more than twice as many: GOAWAY ENHANCE_YOUR_CALM",
             "Envoy `max_headers_count` 100", "max_header_fields", "--max-header-fields", minimum=8,
             help="request header fields (default {value}, as Envoy)"),
    # parsed with the server flags (SERVER_FLAGS); cli.py declares it
    LimitRow("request message (prefix, and after decompression)",
             'RESOURCE_EXHAUSTED "larger than max (N vs. M)"; inflation stops at the cap (h2: at 64 MiB if lower) '
             "and runs off the event loop above 64 KiB compressed; h2 also bounds one message by half of "
             "`--request-buffer-bytes`", "RTP-LLM client and server 1 GiB, grpc C-core 4 MiB",
             "max_receive_message_bytes", "--max-message-bytes", unit="bytes", of=ServerConfig),
    LimitRow("request bytes not yet forwarded, per connection (the connection flow-control window: credit is "
             "returned as bytes move on, not on receipt)",
             "the client waits for window; a message larger than the window still completes, its excess "
             "taken in turn from the other half of `--request-buffer-bytes`",
             "Envoy `per_connection_buffer_limit_bytes` 1 MiB",
             "request_buffer_bytes_per_connection", "--request-buffer-bytes-per-connection", minimum=65_535,
             unit="bytes", help="unforwarded request bytes per client connection (default {value})"),
    LimitRow("request bytes not yet forwarded, whole gateway",
             "every connection window beyond RFC 9113's initial 65,535 bytes is reserved from this pool; when it "
             "is spent, new connections start with 65,535 and are topped up as others close",
             "Envoy overload manager", "request_buffer_bytes", "--request-buffer-bytes", minimum=65_535,
             unit="bytes", help="unforwarded request bytes, whole gateway (default {value})"),
    LimitRow("control frames queued for a client that does not read (PING/SETTINGS ACKs, RST_STREAMs)",
             "GOAWAY ENHANCE_YOUR_CALM, connection aborted", "Envoy `max_outbound_control_frames` 1000",
             "max_outbound_control_frames"),
    LimitRow("response DATA for a client that does not read",
             "writing pauses (`pause_writing`); the worker is pushed back through its 256 KiB stream window", "—",
             default="the transport's high-water mark"),
    LimitRow("premature resets (client RST_STREAM before any response)",
             "GOAWAY ENHANCE_YOUR_CALM; a stream reset in the same read as its request is never routed",
             "Envoy's premature-reset rule (CVE-2023-44487)", "premature_reset_min_streams",
             default="≥ {premature_reset_min_streams} streams and > {premature_reset_ratio:.0%} reset"),
    LimitRow("PRIORITY frames", "GOAWAY ENHANCE_YOUR_CALM", "Envoy `max_inbound_priority_frames_per_stream` 100",
             "max_inbound_priority_frames_per_stream", default="{value} per opened stream"),
    LimitRow("consecutive empty DATA/CONTINUATION frames", "GOAWAY ENHANCE_YOUR_CALM",
             "Envoy `max_consecutive_inbound_frames_with_empty_payload` 1", "max_consecutive_empty_frames"),
    LimitRow("WINDOW_UPDATE frames", "GOAWAY ENHANCE_YOUR_CALM",
             "Envoy `max_inbound_window_update_frames_per_data_frame_sent` 10",
             "max_inbound_window_updates_per_data_frame", default="{value} per DATA frame sent (+ 2 per stream + 5)"),
    LimitRow("handshake (preface + SETTINGS)", "connection closed", "nginx `client_header_timeout` 60 s",
             "handshake_timeout_s", "--handshake-timeout-s", FLOAT, 0.01, "s",
             help="HTTP/2 preface + SETTINGS (default {value})"),
    LimitRow("connection without streams", "GOAWAY NO_ERROR",
             "nginx `keepalive_timeout` 75 s; Envoy `idle_timeout` 1 h",
             "idle_timeout_s", "--idle-timeout-s", FLOAT, 0.01, "s",
             help="a client connection without streams is closed (default {value})"),
    LimitRow("call with no frame either way", 'upstream cancelled; UNAVAILABLE "stream idle timeout"',
             "Envoy `stream_idle_timeout` 5 min", "stream_idle_timeout_s", "--stream-idle-timeout-s", FLOAT, 0.01, "s",
             help="a call with no frame either way is ended (default {value}, as Envoy)"),
    LimitRow("client connections",
             "the oldest connection without streams is closed (GOAWAY NO_ERROR); if none, the new one gets GOAWAY "
             "ENHANCE_YOUR_CALM", "nginx `worker_connections` 512", "max_connections", "--max-connections", minimum=0,
             default="open-file limit − {fd_headroom} (the soft limit is raised to the hard one at start)",  # noqa: RUF001
             help="client connections (default {value}: the open-file limit minus {fd_headroom})"),
    LimitRow("`generate_config.max_new_tokens`", "INVALID_ARGUMENT naming the cap (both engines)", "—",
             "max_new_tokens", "--max-new-tokens", minimum=0, default="{value} (no cap)",
             help="refuse calls asking for more new tokens (default {value}: no cap)"),
)

# `flexlb serve` flags of EdgeLimits: field -> its row (flag, parser, minimum, --help)
EDGE_LIMIT_FLAGS: dict[str, LimitRow] = {r.attr: r for r in EDGE_LIMITS if r.flag and r.of is EdgeLimits}


def _edge_limits(pairs: tuple[tuple[str, float], ...]) -> EdgeLimits:
    updates: dict[str, Any] = {}
    for name, value in pairs:
        row = EDGE_LIMIT_FLAGS[name]
        updates[name] = row.kind.parse(row.flag, value, row.minimum)
    return EdgeLimits(**updates)


def _not_below(path: str, value: Any, minimum: float | None) -> Any:
    if minimum is not None and value < minimum:
        raise ConfigError(path, f"must be >= {minimum:g}")
    return value


AS_GIVEN = Kind("string", lambda _path, v, _lo: v, _code)
BIND_HOST = Kind("IP address or host name", lambda path, v, _lo: _bind_host(path, v), _code)
RELAY_ENGINE = Kind("enum", lambda path, v, _lo: _enum(path, v.upper(), ["H2", "GRPCIO"]).lower(), _code,
                    ("h2", "grpcio"))
CLI_NUMBER = Kind("number", _not_below)  # argparse already made it a number


@dataclass(frozen=True)
class ServerFlag:
    """A `flexlb serve` flag that sets ServerConfig (cli.py declares it and its --help)."""

    flag: str
    cli: str  # the CliOverrides attribute it arrives in (None: not given)
    kind: Kind
    attrs: tuple[str, ...]  # the ServerConfig attributes it sets
    minimum: float | None = None
    maximum: float | None = None


# a TCP port; 0 asks the kernel for a free one (tests do)
MAX_PORT = 65535

SERVER_FLAGS: tuple[ServerFlag, ...] = (
    ServerFlag("--host", "host", AS_GIVEN, ("host",)),
    ServerFlag("--http-port", "http_port", INT, ("http_port",), 0, MAX_PORT),
    ServerFlag("--port", "grpc_port", INT, ("grpc_port",), 0, MAX_PORT),
    ServerFlag("--admin-port", "admin_port", INT, ("admin_port",), 0, MAX_PORT),
    ServerFlag("--max-message-bytes", "max_message_bytes", INT,
               ("max_receive_message_bytes", "max_send_message_bytes"), 1024),
    ServerFlag("--upstream-channels", "upstream_channels", INT, ("upstream_channels_per_worker",), 1),
    ServerFlag("--relay-engine", "relay_engine", RELAY_ENGINE, ("relay_engine",)),
    ServerFlag("--advertise-host", "advertise_host", AS_GIVEN, ("advertise_host",)),
    ServerFlag("--admin-host", "admin_host", BIND_HOST, ("admin_host",)),
    ServerFlag("--drain-timeout-s", "drain_timeout_s", CLI_NUMBER, ("drain_timeout_s",), 0),
)


# ---------------------------------------------------------------- assembling


def _env_json(env: Mapping[str, str], names: tuple[str, ...] | str) -> tuple[str, Mapping[str, Any] | None]:
    for n in (names,) if isinstance(names, str) else names:
        text = env.get(n)
        if text is not None and text.strip():
            return n, _obj(n, _load_json(n, text))
    return (names if isinstance(names, str) else names[0]), None



@dataclass(frozen=True)
class CliOverrides:
    """What `flexlb serve` flags may override; None means 'not given'."""

    host: str | None = None
    http_port: int | None = None
    grpc_port: int | None = None
    admin_port: int | None = None
    deploy: str | None = None
    strategy: str | None = None
    decode_strategy: str | None = None
    prefill: tuple[str, ...] = ()
    decode: tuple[str, ...] = ()
    fused: tuple[str, ...] = ()
    max_message_bytes: int | None = None
    upstream_channels: int | None = None
    drain_timeout_s: float | None = None
    relay_engine: str | None = None
    role_id: str | None = None
    admin_token: str | None = None
    advertise_host: str | None = None
    admin_host: str | None = None
    limits: tuple[tuple[str, float], ...] = ()  # (EdgeLimits field, value) pairs from the limit flags
    # TLS (flexlb/tls.py TLS_FLAGS): certificate, key and CA files; upstream_tls turns on TLS towards workers
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    admin_tls_cert: str | None = None
    admin_tls_key: str | None = None
    admin_tls_client_ca: str | None = None
    upstream_tls: bool | None = None
    upstream_tls_ca: str | None = None
    upstream_tls_cert: str | None = None
    upstream_tls_key: str | None = None
    upstream_tls_server_name: str | None = None
    # dynamic membership (README Dynamic membership): DNS names, their interval and nameserver, a workers file
    workers_dns: tuple[str, ...] | None = None  # (`| None`: the config file's [server] reads it as a list)
    workers_dns_interval_s: float | None = None
    dns_server: str | None = None
    workers_dns_allow_empty: bool | None = None
    workers_file: str | None = None
    workers_file_interval_s: float | None = None


def _discovery(cli: CliOverrides) -> tuple[DiscoveryConfig, list[WorkerAddr]]:
    """The dynamic membership flags, validated, and the workers file's workers now (it must exist and parse)."""
    d = DiscoveryConfig()
    if cli.dns_server is not None:
        host, _ = _host_port("--dns-server", cli.dns_server)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError("--dns-server", f"expected a nameserver's 'ip:port', got {cli.dns_server!r}") from None
    for flag, given in (("--workers-dns-interval-s", cli.workers_dns_interval_s),
                        ("--workers-file-interval-s", cli.workers_file_interval_s)):
        if given is not None and not (math.isfinite(given) and given >= 0.01):
            raise ConfigError(flag, f"must be a number of seconds >= 0.01, got {given!r}")
    in_file: list[WorkerAddr] = []
    if cli.workers_file:
        try:
            with open(cli.workers_file, encoding="utf-8") as fh:
                in_file = parse_workers_file(cli.workers_file, fh.read())
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError("--workers-file", f"cannot read {cli.workers_file!r}: {exc}") from None
    return replace(
        d,
        dns=tuple(parse_dns_flag("--workers-dns", t) for t in cli.workers_dns or ()),
        dns_interval_s=cli.workers_dns_interval_s if cli.workers_dns_interval_s is not None else d.dns_interval_s,
        dns_server=cli.dns_server or "",
        dns_allow_empty=bool(cli.workers_dns_allow_empty),
        workers_file=cli.workers_file or "",
        file_interval_s=cli.workers_file_interval_s if cli.workers_file_interval_s is not None else d.file_interval_s,
    ), in_file


def load_settings(env: Mapping[str, str] | None = None, cli: CliOverrides | None = None) -> Settings:
    """Build Settings from the environment and CLI overrides (CLI wins), or raise ConfigError."""
    env = os.environ if env is None else env
    cli = cli or CliOverrides()
    master, warnings = load_master(env)
    if cli.strategy:
        master = replace(master, load_balance_strategy=_strategy("--strategy", cli.strategy))
    if cli.decode_strategy:
        master = replace(master, decode_load_balance_strategy=_strategy("--decode-strategy", cli.decode_strategy))

    service_id, workers = "", []
    discovery, in_file = _discovery(cli)
    if cli.prefill or cli.decode or cli.fused:
        for flag, role, addrs in (
            ("--prefill", Role.PREFILL, cli.prefill),
            ("--decode", Role.DECODE, cli.decode),
            ("--worker", Role.PDFUSION, cli.fused),
        ):
            workers += cli_workers(flag, addrs, role)
    else:
        ms_name, ms_raw = _env_json(env, MODEL_SERVICE_ENV)
        if ms_raw is None and not discovery.enabled:
            raise ConfigError(
                MODEL_SERVICE_ENV, "not set; give the workers there, with --worker / --prefill and --decode, "
                "or with --workers-dns / --workers-file"
            )
        if ms_raw is not None:
            service_id, workers = parse_model_service(ms_raw, env, ms_name)
            discovery = replace(discovery, dns=(*dns_targets(ms_raw, ms_name), *discovery.dns))

    deploy = master.deploy
    if cli.deploy:
        deploy = _deploy("--deploy", cli.deploy)
    roles = {w.role for w in (*workers, *in_file)} | {t.role for t in discovery.dns}
    if deploy is None:
        deploy = Deploy.DISAGGREGATED if Role.PREFILL in roles or Role.DECODE in roles else Deploy.PD_FUSION
    # with dynamic sources workers come and go: the gateway may start without a role (readiness says so)
    if deploy is Deploy.DISAGGREGATED and not discovery.enabled:
        for role, what in ((Role.PREFILL, "prefill_endpoint"), (Role.DECODE, "decode_endpoint")):
            if role not in roles:
                raise ConfigError(
                    f"{MODEL_SERVICE_ENV}.{what}",
                    f"deploy DISAGGREGATED needs at least one {role.name} worker; the worker list is empty",
                )
        prefill_groups = {w.group for w in workers if w.role is Role.PREFILL}
        decode_groups = {w.group for w in workers if w.role is Role.DECODE}
        if not prefill_groups & decode_groups:
            raise ConfigError(
                f"{MODEL_SERVICE_ENV}.role_endpoints",
                "no group has both a PREFILL and a DECODE worker, so no pair can be formed",
            )
    elif deploy is Deploy.PD_FUSION and not discovery.enabled and Role.PDFUSION not in roles:
        raise ConfigError(
            f"{MODEL_SERVICE_ENV}.pd_fusion_endpoint",
            "deploy PD_FUSION needs at least one PDFUSION worker; the worker list is empty",
        )

    cons_name, cons_raw = _env_json(env, CONSISTENCY_ENV)
    consistency = parse_consistency(cons_raw or {}, cons_name)
    role_id = cli.role_id or env.get("HIPPO_ROLE", "") or consistency.role_id
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", role_id):
        raise ConfigError("--role-id / HIPPO_ROLE", f"letters, digits, '_', '.', '-' only; got {role_id!r}")
    token = cli.admin_token if cli.admin_token is not None else env.get("FLEXLB_ADMIN_TOKEN", "")
    consistency = replace(consistency, role_id=role_id, admin_token=token)

    updates: dict[str, Any] = {}
    for sf in SERVER_FLAGS:
        given = getattr(cli, sf.cli)
        if given is not None:
            value = sf.kind.parse(sf.flag, given, sf.minimum)
            if sf.maximum is not None and value > sf.maximum:
                raise ConfigError(sf.flag, f"must be <= {sf.maximum:g} (0 picks a free port), got {value}")
            updates.update(dict.fromkeys(sf.attrs, value))
    if cli.limits:
        updates["limits"] = _edge_limits(cli.limits)
    tls = tls_config(upstream_tls=cli.upstream_tls, **{t.cli: getattr(cli, t.cli) for t in TLS_FLAGS})
    check_with_election(tls, consistency.need_consistency, master.enable_grpc_prefill_master)
    server = replace(ServerConfig(), **updates, tls=tls, discovery=discovery)
    return Settings(
        server=server,
        master=master,
        workers=tuple(workers),
        deploy=deploy,
        service_id=service_id,
        consistency=consistency,
        warnings=warnings,
    )


def masked(settings: Settings) -> dict[str, Any]:
    """The effective settings as JSON-ready data, with secrets masked (for /actuator/info)."""

    def plain(v: Any) -> Any:
        if isinstance(v, enum.Enum):
            return v.name
        if isinstance(v, WorkerAddr):
            return {
                "ip": v.ip,
                "grpc_port": v.grpc_port,
                "http_port": v.http_port,
                "role": v.role.name,
                "group": v.group,
            }
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, frozenset | set):
            return sorted(plain(x) for x in v)
        if hasattr(v, "__dataclass_fields__"):
            return {k: plain(getattr(v, k)) for k in v.__dataclass_fields__}
        return v

    data = plain(settings)
    zk = data["consistency"]
    if zk.get("admin_token"):
        zk["admin_token"] = "***"
    if "@" in zk.get("zk_host", ""):
        # credentials embedded as user:password@host are never shown
        zk["zk_host"] = ",".join("***@" + h.split("@", 1)[1] if "@" in h else h for h in zk["zk_host"].split(","))
    policy = data["master"].get("traffic_policy")
    for rule in policy["rules"] if policy else ():
        # a traffic rule's api keys are the callers' credentials
        rule["api_keys"] = ["***"] * len(rule["api_keys"])
    return data
