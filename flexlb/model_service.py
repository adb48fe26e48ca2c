"""MODEL_SERVICE_CONFIG: the service route of the original FlexLB, i.e. which workers exist.

- v1 style: top-level `prefill_endpoint`, `decode_endpoint`, `pd_fusion_endpoint` (also `pdfusion_endpoint`,
  `fusion_endpoint`), `vit_endpoint`;
- newer style: `role_endpoints: [{"group": …, "prefill_endpoint": …, …}]`; both may be combined;
- an endpoint: `{"type": "SpecifiedIpPortList", "address": "[\\"ip:port\\", …]", "protocol": "http"|"grpc"}`,
  `address` also as a real JSON array; without `type` (or `DomainAddress`, `VipServer`) the hosts come from the
  environment variable `DOMAIN_ADDRESS:<address>` as `ip:port,ip:port` (the original's static discovery), or
  from `FLEXLB_DOMAIN_ADDRESS_<ADDRESS>` / `FLEXLB_DOMAIN_ADDRESSES` (names a shell and Kubernetes can set);
- `{"type": "Dns", "address": "NAME:PORT"}` (or an SRV name `_grpc._tcp.NAME`): workers re-resolved on an interval
  (flexlb/upstream/discovery.py);
- `protocol: http` (the default) gives the worker's HTTP port, whose gRPC port is port + GRPC_PORT_OFFSET.

Errors are flexlb.config.ConfigError naming the field, like every other configuration error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from flexlb.balancer.workers import Role, WorkerAddr
from flexlb.config_values import ConfigError, _host_port, _obj, _str
from flexlb.membership import DnsTarget, dns_target

MODEL_SERVICE_ENV = "MODEL_SERVICE_CONFIG"

# the engine's gRPC port is its HTTP port + 1 (RTP-LLM CommonConstants.GRPC_PORT_OFFSET)
GRPC_PORT_OFFSET = 1

ENDPOINT_KEYS: dict[str, Role] = {
    "prefill_endpoint": Role.PREFILL,
    "decode_endpoint": Role.DECODE,
    "pd_fusion_endpoint": Role.PDFUSION,
    "pdfusion_endpoint": Role.PDFUSION,
    "fusion_endpoint": Role.PDFUSION,
    # VIT (multimodal) workers: chosen with every call (vitLoadBalanceStrategy) and named in its role_addrs
    "vit_endpoint": Role.VIT,
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
        # static discovery like the original's NoOpServiceDiscovery: env DOMAIN_ADDRESS:<address>, or a name a
        # shell and a Kubernetes manifest can set
        name = _str(path + ".address", address)
        key, hosts = domain_hosts(name, env)
        if hosts is None:
            names = ", ".join(domain_env_names(name))
            raise ConfigError(path + ".address", f"none of the environment variables {names} or "
                              f"{DOMAIN_ADDRESSES_ENV}[{name!r}] is set (type {kind!r})")
        return [_host_port(key, h) for h in hosts.split(",") if h.strip()]
    if kind in DNS_TYPES:
        return []  # the DNS source resolves it (dns_targets)
    raise ConfigError(path + ".type", f"unknown value {kind!r}; accepted: SpecifiedIpPortList, DomainAddress, Dns")


# the Kubernetes-settable forms of DOMAIN_ADDRESS:<address> (README: Dynamic membership): one variable per
# address, FLEXLB_DOMAIN_ADDRESS_ + the address upper-cased with every other character than A-Z 0-9 made `_`;
# or one JSON object of address -> "ip:port,ip:port" (or a JSON array of them)
DOMAIN_ADDRESS_ENV_PREFIX = "FLEXLB_DOMAIN_ADDRESS_"
DOMAIN_ADDRESSES_ENV = "FLEXLB_DOMAIN_ADDRESSES"
DNS_TYPES = ("Dns", "DNS", "dns")


def domain_env_names(address: str) -> tuple[str, str]:
    """The variables that may hold the hosts of a DomainAddress endpoint, in the order they are read."""
    return f"DOMAIN_ADDRESS:{address}", DOMAIN_ADDRESS_ENV_PREFIX + re.sub(r"[^A-Z0-9]", "_", address.upper())


def domain_hosts(address: str, env: Mapping[str, str]) -> tuple[str, str | None]:
    """(where it was found, `ip:port,ip:port`) of a DomainAddress endpoint; None when no variable names it."""
    for key in domain_env_names(address):
        if key in env:
            return key, env[key]
    raw = env.get(DOMAIN_ADDRESSES_ENV)
    if raw is None or not raw.strip():
        return DOMAIN_ADDRESSES_ENV, None
    try:
        table = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(DOMAIN_ADDRESSES_ENV, f"not valid JSON: {exc}") from None
    if not isinstance(table, dict):
        raise ConfigError(DOMAIN_ADDRESSES_ENV, 'expected a JSON object {"address": "ip:port,ip:port"}')
    hosts = table.get(address)
    where = f"{DOMAIN_ADDRESSES_ENV}[{address!r}]"
    if isinstance(hosts, list) and all(isinstance(h, str) for h in hosts):
        return where, ",".join(hosts)
    if hosts is not None and not isinstance(hosts, str):
        raise ConfigError(where, f"expected 'ip:port,ip:port' or a JSON array of them, got {hosts!r}")
    return where, hosts


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
    for path, ep, role, group in _endpoints(raw, name):
        workers += endpoint_workers(path, ep, role, group, env)
    return service_id, workers


def _endpoints(raw: Mapping[str, Any], name: str) -> Iterator[tuple[str, Any, Role, str]]:
    """Every endpoint object of the service route as (path, endpoint, role, group)."""
    for key, role in ENDPOINT_KEYS.items():
        if raw.get(key) is not None:
            yield f"{name}.{key}", raw[key], role, ""
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
                    yield f"{p}.{key}", e[key], role, group


def dns_targets(raw: Mapping[str, Any], name: str = MODEL_SERVICE_ENV) -> list[DnsTarget]:
    """The endpoints of type Dns: `address` is `NAME:PORT` (A/AAAA) or an SRV name; ports as `protocol` says."""
    out = []
    for path, ep, role, group in _endpoints(raw, name):
        e = _obj(path, ep)
        if e.get("type", "") in DNS_TYPES:
            protocol = str(e.get("protocol", "http")).lower()
            out.append(dns_target(path + ".address", _str(path + ".address", e.get("address", "")), role, group,
                                  grpc_ports=protocol == "grpc"))
    return out


def cli_workers(flag: str, addrs: tuple[str, ...], role: Role) -> list[WorkerAddr]:
    """Workers given as `--worker`/`--prefill`/`--decode IP:GRPC_PORT` (gRPC ports; HTTP = port - offset)."""
    out = []
    for a in addrs:
        ip, port = _host_port(flag, a)
        out.append(WorkerAddr(ip, port, port - GRPC_PORT_OFFSET, role))
    return out
