"""MODEL_SERVICE_CONFIG: the service route of the original FlexLB, i.e. which workers exist.

- v1 style: top-level `prefill_endpoint`, `decode_endpoint`, `pd_fusion_endpoint` (also `pdfusion_endpoint`,
  `fusion_endpoint`);
- newer style: `role_endpoints: [{"group": …, "prefill_endpoint": …, …}]`; both may be combined;
- an endpoint: `{"type": "SpecifiedIpPortList", "address": "[\\"ip:port\\", …]", "protocol": "http"|"grpc"}`,
  `address` also as a real JSON array; without `type` (or `DomainAddress`, `VipServer`) the hosts come from the
  environment variable `DOMAIN_ADDRESS:<address>` as `ip:port,ip:port` (the original's static discovery);
- `protocol: http` (the default) gives the worker's HTTP port, whose gRPC port is port + GRPC_PORT_OFFSET.

Errors are flexlb.config.ConfigError naming the field, like every other configuration error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from flexlb.balancer.workers import Role, WorkerAddr
from flexlb.config_values import ConfigError, _host_port, _obj, _str

MODEL_SERVICE_ENV = "MODEL_SERVICE_CONFIG"

# the engine's gRPC port is its HTTP port + 1 (RTP-LLM CommonConstants.GRPC_PORT_OFFSET)
GRPC_PORT_OFFSET = 1

ENDPOINT_KEYS: dict[str, Role] = {
    "prefill_endpoint": Role.PREFILL,
    "decode_endpoint": Role.DECODE,
    "pd_fusion_endpoint": Role.PDFUSION,
    "pdfusion_endpoint": Role.PDFUSION,
    "fusion_endpoint": Role.PDFUSION,
}


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


def endpoint_workers(path: str, raw: Any, role: Role, group: str, env: Mapping[str, str]) -> list[WorkerAddr]:
    """The workers of one endpoint object; `protocol` says whether its ports are HTTP (default) or gRPC ports."""
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
    for key, role in ENDPOINT_KEYS.items():
        if raw.get(key) is not None:
            workers += endpoint_workers(f"{name}.{key}", raw[key], role, "", env)
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
            for key, role in ENDPOINT_KEYS.items():
                if e.get(key) is not None:
                    workers += endpoint_workers(f"{p}.{key}", e[key], role, group, env)
    return service_id, workers


def cli_workers(flag: str, addrs: tuple[str, ...], role: Role) -> list[WorkerAddr]:
    """Workers given as `--worker`/`--prefill`/`--decode IP:GRPC_PORT` (gRPC ports; HTTP = port - offset)."""
    out = []
    for a in addrs:
        ip, port = _host_port(flag, a)
        out.append(WorkerAddr(ip, port, port - GRPC_PORT_OFFSET, role))
    return out
