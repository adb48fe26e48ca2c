"""Configuration: environment JSON (original FlexLB names) + CLI flags → frozen, validated settings.

Every error a user can cause raises ConfigError naming the field and what is accepted;
`flexlb serve` prints it as one line and exits 2.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flexlb.balancer.request import Deploy
from flexlb.balancer.strategies import strategy_names
from flexlb.balancer.workers import Role, WorkerAddr

MASTER_ENV = ("WHALE_MASTER_CONFIG", "FLEXLB_CONFIG")
MODEL_SERVICE_ENV = "MODEL_SERVICE_CONFIG"
CONSISTENCY_ENV = ("WHALE_SYNC_LB_CONSISTENCY_CONFIG", "FLEXLB_SYNC_CONSISTENCY_CONFIG")

# the engine's gRPC port is its HTTP port + 1 (RTP-LLM CommonConstants.GRPC_PORT_OFFSET)
GRPC_PORT_OFFSET = 1


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the field and what is accepted."""

    def __init__(self, field_path: str, problem: str) -> None:
        super().__init__(f"{field_path}: {problem}")
        self.field_path = field_path


class KvCacheMode(enum.Enum):
    """Where the gateway learns which KV blocks each worker holds."""

    NONE = "NONE"
    LOCAL_STATIC = "LOCAL_STATIC"
    LOCAL_SYNC = "LOCAL_SYNC"


# Fields of WHALE_MASTER_CONFIG that are parsed and validated but not acted on yet, with the reason.
NOT_ACTED_ON: dict[str, str] = {}


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


def _obj(path: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(path, f"expected a JSON object, got {type(value).__name__}")
    return value


def _int(path: str, value: Any, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value.strip()):
            value = int(value)
        else:
            raise ConfigError(path, f"expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(path, f"must be >= {minimum}, got {value}")
    return int(value)


_TRUE = {"true", "1", "yes", "on", "enabled"}
_FALSE = {"false", "0", "no", "off", "disabled"}


def _float(path: str, value: Any, minimum: float | None = None) -> float:
    if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]+(\.[0-9]*)?\s*", value):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(path, f"expected a number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(path, f"must be >= {minimum}, got {value}")
    return float(value)


def _bool(path: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigError(path, f"expected true or false, got {value!r}")


def _str(path: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(path, f"expected a string, got {value!r}")
    return value


def _enum(path: str, value: Any, accepted: list[str]) -> str:
    text = _str(path, value).strip().upper()
    if text not in accepted:
        raise ConfigError(path, f"unknown value {value!r}; accepted: {', '.join(accepted)}")
    return text


_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?")


def _bind_host(path: str, value: Any) -> str:
    """An IP literal or a host name to bind; "" is kept (it means 'the default')."""
    text = _str(path, value).strip()
    if not text:
        return ""
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    # an all-digit last label is a mistyped IPv4 address (999.1.1.1), never a name
    if not _HOST_NAME.fullmatch(bare) or bare.rstrip(".").rsplit(".", 1)[-1].isdigit():
        raise ConfigError(path, f"expected an IP address or a host name (no port), got {value!r}")
    return bare


def _strategy(path: str, value: Any) -> str:
    return _enum(path, value, strategy_names())


def _deploy(path: str, value: Any) -> Deploy:
    text = _str(path, value).strip().upper()
    aliases = {"PDFUSION": "PD_FUSION", "FUSION": "PD_FUSION", "PD_SEPARATION": "DISAGGREGATED"}
    text = aliases.get(text, text)
    if text not in Deploy.__members__:
        raise ConfigError(path, f"unknown value {value!r}; accepted: DISAGGREGATED, PD_FUSION (alias PDFUSION)")
    return Deploy[text]


# ---------------------------------------------------------------- WHALE_MASTER_CONFIG


def parse_master(raw: Mapping[str, Any], name: str = "WHALE_MASTER_CONFIG") -> MasterConfig:
    """Parse the master config object; unknown keys are ignored like the original (Jackson)."""
    d = MasterConfig()
    kw: dict[str, Any] = {}
    p = f"{name}."
    if "deploy" in raw:
        kw["deploy"] = _deploy(p + "deploy", raw["deploy"])
    if "loadBalanceStrategy" in raw:
        kw["load_balance_strategy"] = _strategy(p + "loadBalanceStrategy", raw["loadBalanceStrategy"])
    if "decodeLoadBalanceStrategy" in raw:
        kw["decode_load_balance_strategy"] = _strategy(
            p + "decodeLoadBalanceStrategy", raw["decodeLoadBalanceStrategy"]
        )
    if "prefillBatchWaitTimeMs" in raw:
        kw["prefill_batch_wait_time_ms"] = _int(p + "prefillBatchWaitTimeMs", raw["prefillBatchWaitTimeMs"], 0)
    if "kvCache" in raw:
        kw["kv_cache"] = KvCacheMode(_enum(p + "kvCache", raw["kvCache"], [m.value for m in KvCacheMode]))
    if "staticCacheBlockSize" in raw:
        kw["static_cache_block_size"] = _int(p + "staticCacheBlockSize", raw["staticCacheBlockSize"], 1)
    if "prefixIndexCapacityBlocks" in raw:
        kw["prefix_index_capacity_blocks"] = _int(p + "prefixIndexCapacityBlocks", raw["prefixIndexCapacityBlocks"], 1)
    if "prefixIndexTtlS" in raw:
        kw["prefix_index_ttl_s"] = float(_int(p + "prefixIndexTtlS", raw["prefixIndexTtlS"], 1))
    for key, attr, minimum in (
        ("healthCheckIntervalMs", "health_check_interval_ms", 0),
        ("healthCheckTimeoutMs", "health_check_timeout_ms", 1),
        ("outlierConsecutiveFailures", "outlier_consecutive_failures", 1),
        ("outlierBaseEjectionMs", "outlier_base_ejection_ms", 1),
        ("outlierMaxEjectedPercent", "outlier_max_ejected_percent", 0),
        ("maxInFlight", "max_in_flight", 0),
        ("maxInFlightPerWorker", "max_in_flight_per_worker", 0),
        ("ttftPriorBaseMs", "ttft_prior_base_ms", 0),
        ("ttftPriorUsPerToken", "ttft_prior_us_per_token", 0),
        ("prefillQueueDepth", "prefill_queue_depth", 0),
        ("prefillQueueMaxHoldMs", "prefill_queue_max_hold_ms", 0),
    ):
        if key in raw:
            kw[attr] = _int(p + key, raw[key], minimum)
    if kw.get("outlier_max_ejected_percent", 0) > 100:
        raise ConfigError(p + "outlierMaxEjectedPercent", f"must be <= 100, got {kw['outlier_max_ejected_percent']}")
    if "prefillQueueAging" in raw:
        kw["prefill_queue_aging"] = _float(p + "prefillQueueAging", raw["prefillQueueAging"], 0.0)
    if "batchSize" in raw:
        kw["batch_size"] = _int(p + "batchSize", raw["batchSize"], 1)
    if "prefillLbTimeoutMs" in raw:
        kw["prefill_lb_timeout_ms"] = _int(p + "prefillLbTimeoutMs", raw["prefillLbTimeoutMs"], 0)
    if "prefillGenerateTimeoutMs" in raw:
        kw["prefill_generate_timeout_ms"] = _int(p + "prefillGenerateTimeoutMs", raw["prefillGenerateTimeoutMs"], 0)
    if "enableGrpcPrefillMaster" in raw:
        kw["enable_grpc_prefill_master"] = _bool(p + "enableGrpcPrefillMaster", raw["enableGrpcPrefillMaster"])
    return MasterConfig(**{**d.__dict__, **kw})


# ---------------------------------------------------------------- MODEL_SERVICE_CONFIG

_ENDPOINT_KEYS = {
    "prefill_endpoint": Role.PREFILL,
    "decode_endpoint": Role.DECODE,
    "pd_fusion_endpoint": Role.PDFUSION,
    "pdfusion_endpoint": Role.PDFUSION,
    "fusion_endpoint": Role.PDFUSION,
}


def _host_port(path: str, text: Any) -> tuple[str, int]:
    s = _str(path, text).strip()
    host, sep, port = s.rpartition(":")
    if not sep or not host or not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
        raise ConfigError(path, f"expected 'ip:port', got {s!r}")
    return host.strip("[]"), int(port)


def _endpoint_hosts(path: str, ep: Mapping[str, Any], env: Mapping[str, str]) -> list[tuple[str, int]]:
    kind = ep.get("type", "")
    if "address" not in ep:
        raise ConfigError(path + ".address", "missing")
    address = ep["address"]
    if kind == "SpecifiedIpPortList" or isinstance(address, list):
        items = address
        if isinstance(address, str):
            try:
                items = json.loads(address)
            except json.JSONDecodeError:
                raise ConfigError(
                    path + ".address", 'expected a JSON-array string such as "[\\"127.0.0.1:8080\\"]"'
                ) from None
        if not isinstance(items, list):
            raise ConfigError(path + ".address", "expected a JSON array of 'ip:port' strings")
        return [_host_port(f"{path}.address[{i}]", it) for i, it in enumerate(items)]
    if kind in ("", "DomainAddress", "VipServer"):
        # static discovery like the original's NoOpServiceDiscovery: env DOMAIN_ADDRESS:<address>
        key = f"DOMAIN_ADDRESS:{_str(path + '.address', address)}"
        hosts = env.get(key)
        if hosts is None:
            raise ConfigError(path + ".address", f"environment variable {key!r} is not set (type {kind!r})")
        return [_host_port(key, h) for h in hosts.split(",") if h.strip()]
    raise ConfigError(path + ".type", f"unknown value {kind!r}; accepted: SpecifiedIpPortList, DomainAddress")


def _endpoint_workers(path: str, raw: Any, role: Role, group: str, env: Mapping[str, str]) -> list[WorkerAddr]:
    ep = _obj(path, raw)
    protocol = str(ep.get("protocol", "http")).lower()
    if protocol not in ("http", "grpc"):
        raise ConfigError(path + ".protocol", f"unknown value {protocol!r}; accepted: http, grpc")
    out = []
    for ip, port in _endpoint_hosts(path, ep, env):
        if protocol == "http":
            out.append(WorkerAddr(ip, port + GRPC_PORT_OFFSET, port, role, group))
        else:
            out.append(WorkerAddr(ip, port, port - GRPC_PORT_OFFSET, role, group))
    return out


def parse_model_service(
    raw: Mapping[str, Any], env: Mapping[str, str], name: str = MODEL_SERVICE_ENV
) -> tuple[str, list[WorkerAddr]]:
    """Parse the service route: top-level *_endpoint fields (v1) and/or role_endpoints[] with groups."""
    service_id = raw.get("service_id", "")
    if not isinstance(service_id, str):
        raise ConfigError(f"{name}.service_id", f"expected a string, got {service_id!r}")
    workers: list[WorkerAddr] = []
    for key, role in _ENDPOINT_KEYS.items():
        if raw.get(key) is not None:
            workers += _endpoint_workers(f"{name}.{key}", raw[key], role, "", env)
    role_eps = raw.get("role_endpoints")
    if role_eps is not None:
        if not isinstance(role_eps, list):
            raise ConfigError(f"{name}.role_endpoints", "expected a JSON array")
        for i, entry in enumerate(role_eps):
            p = f"{name}.role_endpoints[{i}]"
            e = _obj(p, entry)
            group = e.get("group", "") or ""
            if not isinstance(group, str):
                raise ConfigError(p + ".group", f"expected a string, got {group!r}")
            for key, role in _ENDPOINT_KEYS.items():
                if e.get(key) is not None:
                    workers += _endpoint_workers(f"{p}.{key}", e[key], role, group, env)
    return service_id, workers


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


# ---------------------------------------------------------------- assembling


def _env_json(env: Mapping[str, str], names: tuple[str, ...] | str) -> tuple[str, Mapping[str, Any] | None]:
    for n in (names,) if isinstance(names, str) else names:
        text = env.get(n)
        if text is not None and text.strip():
            return n, _obj(n, _load_json(n, text))
    return (names if isinstance(names, str) else names[0]), None


# `flexlb serve` flags of EdgeLimits: field -> (flag, smallest accepted value, integer?)
EDGE_LIMIT_FLAGS: dict[str, tuple[str, float, bool]] = {
    "max_concurrent_streams": ("--max-concurrent-streams", 1, True),
    "max_header_list_bytes": ("--max-header-list-bytes", 1024, True),
    "max_header_fields": ("--max-header-fields", 8, True),
    "max_connections": ("--max-connections", 0, True),
    "handshake_timeout_s": ("--handshake-timeout-s", 0.01, False),
    "idle_timeout_s": ("--idle-timeout-s", 0.01, False),
    "stream_idle_timeout_s": ("--stream-idle-timeout-s", 0.01, False),
    "request_buffer_bytes_per_connection": ("--request-buffer-bytes-per-connection", 65_535, True),
    "request_buffer_bytes": ("--request-buffer-bytes", 65_535, True),
    "max_new_tokens": ("--max-new-tokens", 0, True),
}


def _edge_limits(pairs: tuple[tuple[str, float], ...]) -> EdgeLimits:
    updates: dict[str, float] = {}
    for name, value in pairs:
        flag, minimum, integer = EDGE_LIMIT_FLAGS[name]
        updates[name] = _int(flag, value, int(minimum)) if integer else _float(flag, value, minimum)
    return EdgeLimits(**updates)  # type: ignore[arg-type]


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
        master = MasterConfig(**{**master.__dict__, "load_balance_strategy": _strategy("--strategy", cli.strategy)})
    if cli.decode_strategy:
        master = MasterConfig(
            **{
                **master.__dict__,
                "decode_load_balance_strategy": _strategy("--decode-strategy", cli.decode_strategy),
            }
        )

    service_id, workers = "", []
    if cli.prefill or cli.decode or cli.fused:
        for flag, role, addrs in (
            ("--prefill", Role.PREFILL, cli.prefill),
            ("--decode", Role.DECODE, cli.decode),
            ("--worker", Role.PDFUSION, cli.fused),
        ):
            for a in addrs:
                ip, port = _host_port(flag, a)
                workers.append(WorkerAddr(ip, port, port - GRPC_PORT_OFFSET, role))
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
    consistency = ConsistencyConfig(**{**consistency.__dict__, "role_id": role_id, "admin_token": token})

    server = ServerConfig()
    updates: dict[str, Any] = {}
    if cli.host is not None:
        updates["host"] = cli.host
    if cli.grpc_port is not None:
        updates["grpc_port"] = _int("--port", cli.grpc_port, 0)
    if cli.admin_port is not None:
        updates["admin_port"] = _int("--admin-port", cli.admin_port, 0)
    if cli.max_message_bytes is not None:
        size = _int("--max-message-bytes", cli.max_message_bytes, 1024)
        updates["max_receive_message_bytes"] = size
        updates["max_send_message_bytes"] = size
    if cli.upstream_channels is not None:
        updates["upstream_channels_per_worker"] = _int("--upstream-channels", cli.upstream_channels, 1)
    if cli.relay_engine is not None:
        updates["relay_engine"] = _enum("--relay-engine", cli.relay_engine.upper(), ["H2", "GRPCIO"]).lower()
    if cli.advertise_host is not None:
        updates["advertise_host"] = cli.advertise_host
    if cli.admin_host is not None:
        updates["admin_host"] = _bind_host("--admin-host", cli.admin_host)
    if cli.limits:
        updates["limits"] = _edge_limits(cli.limits)
    if cli.drain_timeout_s is not None:
        if cli.drain_timeout_s < 0:
            raise ConfigError("--drain-timeout-s", "must be >= 0")
        updates["drain_timeout_s"] = cli.drain_timeout_s
    server = ServerConfig(**{**server.__dict__, **updates})
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
