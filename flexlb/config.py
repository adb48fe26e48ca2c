"""Configuration: environment JSON (original FlexLB names) + CLI flags → frozen, validated settings.

Every error a user can cause raises ConfigError naming the field and what is accepted;
`flexlb serve` prints it as one line and exits 2.

WHALE_MASTER_CONFIG is the table MASTER_FIELDS, the edge limits EDGE_LIMITS (their flags EDGE_LIMIT_FLAGS),
the other server flags SERVER_FLAGS: one row per setting, which parsing loops over and which
scripts/config_table.py renders into the README. MODEL_SERVICE_CONFIG is parsed in flexlb/model_service.py.
"""

from __future__ import annotations

import enum
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from flexlb.balancer.request import Deploy
from flexlb.balancer.strategies import strategy_names
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
from flexlb.model_service import MODEL_SERVICE_ENV, cli_workers, parse_model_service
from flexlb.schedule_modes import ScheduleSettings

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
    grpc_port: int = 7003
    admin_port: int = 7002
    admin_host: str = ""  # bind address of the admin port ("": same as host); e.g. 127.0.0.1 keeps it local
    max_receive_message_bytes: int = 64 * 1024 * 1024
    max_send_message_bytes: int = 64 * 1024 * 1024
    upstream_channels_per_worker: int = 1
    drain_timeout_s: float = 30.0
    # h2: HTTP/2 frame relay (fast, default); grpcio: grpc.aio terminates and re-originates each call
    relay_engine: str = "h2"
    advertise_host: str = ""  # what other replicas and clients should dial ("": derived from host)
    limits: EdgeLimits = field(default_factory=EdgeLimits)


@dataclass(frozen=True)
class Settings:
    """Everything `flexlb serve` needs, validated."""

    server: ServerConfig
    master: MasterConfig
    workers: tuple[WorkerAddr, ...]
    deploy: Deploy
    service_id: str = ""
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)


# ---------------------------------------------------------------- JSON helpers


def _load_json(name: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(name, f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None


def _strategy(path: str, value: Any) -> str:
    return _enum(path, value, strategy_names())


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

ACTED_ON = "acted on"


@dataclass(frozen=True)
class MasterField:
    """One field of WHALE_MASTER_CONFIG / FLEXLB_CONFIG: parsed by parse_master, a row of the README's table."""

    key: str  # the JSON key: the original FlexLB name
    attr: str  # the MasterConfig attribute it sets; its default is the dataclass's
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

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.key, *self.aliases)


MASTER_FIELDS: tuple[MasterField, ...] = (
    MasterField("deploy", "deploy", DEPLOY, "a call goes to a PREFILL + DECODE pair, or to one fused worker "
                "(see Deployments; `PDFUSION` is read as `PD_FUSION`)", default_doc="inferred from the workers"),
    MasterField("loadBalanceStrategy", "load_balance_strategy", STRATEGY,
                "picks the PREFILL (or fused) worker (see Strategies)"),
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
)

# Fields of WHALE_MASTER_CONFIG that are parsed and validated but not acted on yet, with the reason.
NOT_ACTED_ON: dict[str, str] = {f.key: f.status for f in MASTER_FIELDS if f.status != ACTED_ON}


def parse_fields(raw: Mapping[str, Any], name: str, fields: tuple[MasterField, ...]) -> dict[str, Any]:
    """{attribute: value} of the rows whose key (or an alias) is in raw; ConfigError names `name.key`."""
    out: dict[str, Any] = {}
    for f in fields:
        key = next((k for k in f.keys if k in raw), None)
        if key is None:
            continue
        path = f"{name}.{key}"
        value = f.kind.parse(path, raw[key], f.minimum)
        if f.maximum is not None and value > f.maximum:
            raise ConfigError(path, f"must be <= {f.maximum}, got {value}")
        out[f.attr] = value
    return out


# ---------------------------------------------------------------- WHALE_MASTER_CONFIG


def parse_master(raw: Mapping[str, Any], name: str = "WHALE_MASTER_CONFIG") -> MasterConfig:
    """Parse the master config object; unknown keys are ignored like the original (Jackson)."""
    return replace(MasterConfig(), **parse_fields(raw, name, MASTER_FIELDS))


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
        for size, name in ((MIB, "MiB"), (1024, "KiB")):
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
             'RESOURCE_EXHAUSTED "larger than max (N vs. M)"; inflation stops at the cap and runs off the event '
             "loop above 64 KiB compressed", "grpc C-core 4 MiB",
             "max_receive_message_bytes", "--max-message-bytes", unit="bytes", of=ServerConfig),
    LimitRow("request bytes not yet forwarded, per connection (the connection flow-control window: credit is "
             "returned as bytes move on, not on receipt)",
             "the client waits for window; one message up to `--max-message-bytes` may still complete when it is "
             "the connection's only large one", "Envoy `per_connection_buffer_limit_bytes` 1 MiB",
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


SERVER_FLAGS: tuple[ServerFlag, ...] = (
    ServerFlag("--host", "host", AS_GIVEN, ("host",)),
    ServerFlag("--port", "grpc_port", INT, ("grpc_port",), 0),
    ServerFlag("--admin-port", "admin_port", INT, ("admin_port",), 0),
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


def load_settings(env: Mapping[str, str] | None = None, cli: CliOverrides | None = None) -> Settings:
    """Build Settings from the environment and CLI overrides (CLI wins), or raise ConfigError."""
    env = os.environ if env is None else env
    cli = cli or CliOverrides()
    master_name, master_raw = _env_json(env, MASTER_ENV)
    master = parse_master(master_raw or {}, master_name)
    if cli.strategy:
        master = replace(master, load_balance_strategy=_strategy("--strategy", cli.strategy))
    if cli.decode_strategy:
        master = replace(master, decode_load_balance_strategy=_strategy("--decode-strategy", cli.decode_strategy))

    service_id, workers = "", []
    if cli.prefill or cli.decode or cli.fused:
        for flag, role, addrs in (
            ("--prefill", Role.PREFILL, cli.prefill),
            ("--decode", Role.DECODE, cli.decode),
            ("--worker", Role.PDFUSION, cli.fused),
        ):
            workers += cli_workers(flag, addrs, role)
    else:
        ms_name, ms_raw = _env_json(env, MODEL_SERVICE_ENV)
        if ms_raw is None:
            raise ConfigError(
                MODEL_SERVICE_ENV, "not set; give the workers there or with --worker / --prefill and --decode"
            )
        service_id, workers = parse_model_service(ms_raw, env, ms_name)

    deploy = master.deploy
    if cli.deploy:
        deploy = _deploy("--deploy", cli.deploy)
    roles = {w.role for w in workers}
    if deploy is None:
        deploy = Deploy.DISAGGREGATED if Role.PREFILL in roles or Role.DECODE in roles else Deploy.PD_FUSION
    if deploy is Deploy.DISAGGREGATED:
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
    elif Role.PDFUSION not in roles:
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
            updates.update(dict.fromkeys(sf.attrs, sf.kind.parse(sf.flag, given, sf.minimum)))
    if cli.limits:
        updates["limits"] = _edge_limits(cli.limits)
    server = replace(ServerConfig(), **updates)
    return Settings(
        server=server,
        master=master,
        workers=tuple(workers),
        deploy=deploy,
        service_id=service_id,
        consistency=consistency,
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
    return data
