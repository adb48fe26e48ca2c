"""Dynamic worker membership: which workers each source wants, and their union applied to the Cluster.

Sources: the static configuration (MODEL_SERVICE_CONFIG or the worker flags), DNS names re-resolved on an
interval, a watched workers file, and the admin calls of the management port. Each source gives its complete
set; the cluster's workers are the union, in source order (static first), the first of a duplicated `ip:port`
winning. Pure: no I/O here (flexlb/upstream/discovery.py resolves and reads; the composition root applies).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flexlb.balancer.workers import Cluster, MembershipChange, Role, WorkerAddr
from flexlb.config_values import ConfigError, _host_port

STATIC = "static"
ADMIN = "admin"
DNS_PREFIX = "dns:"
FILE_PREFIX = "file:"

# the engine's gRPC port is its HTTP port + 1 (as flexlb/model_service.py)
_GRPC_PORT_OFFSET = 1


@dataclass(frozen=True)
class DnsTarget:
    """A DNS name whose records are workers of one role and group.

    A name starting with `_` (`_grpc._tcp.workers.ns.svc.cluster.local`) is looked up as SRV: every target is a
    worker at the record's port. Any other name is looked up as A and AAAA, at `port`. `grpc_ports`: the ports
    are gRPC ports (the worker flags' convention), else HTTP ports (MODEL_SERVICE_CONFIG's; gRPC = HTTP + 1).
    """

    name: str
    role: Role
    group: str = ""
    port: int = 0
    grpc_ports: bool = True

    @property
    def srv(self) -> bool:
        """Looked up as SRV records."""
        return self.name.startswith("_")

    @property
    def source(self) -> str:
        """The source name of this target (logs, GET /admin/workers)."""
        return f"{DNS_PREFIX}{self.name}"

    def worker(self, ip: str, port: int) -> WorkerAddr:
        """The worker at an address this name resolved to (`port`: from an SRV record, else the target's)."""
        if self.grpc_ports:
            return WorkerAddr(ip, port, port - _GRPC_PORT_OFFSET, self.role, self.group)
        return WorkerAddr(ip, port + _GRPC_PORT_OFFSET, port, self.role, self.group)


@dataclass(frozen=True)
class DiscoveryConfig:
    """Where dynamic workers come from (README: Dynamic membership); all empty: the configured workers only."""

    dns: tuple[DnsTarget, ...] = ()
    dns_interval_s: float = 5.0
    # host:port of the nameserver to ask ("": the system's, /etc/resolv.conf)
    dns_server: str = ""
    dns_timeout_s: float = 2.0
    # NXDOMAIN or no records: no workers from that name (else the last good answer stays)
    dns_allow_empty: bool = False
    workers_file: str = ""
    file_interval_s: float = 1.0

    @property
    def enabled(self) -> bool:
        """Whether any dynamic source is configured."""
        return bool(self.dns or self.workers_file)


def parse_dns_flag(flag: str, text: str) -> DnsTarget:
    """`--workers-dns [ROLE[@GROUP]=]NAME[:GRPC_PORT]` (default role PDFUSION; SRV names carry their ports)."""
    spec = text.strip()
    role, group = Role.PDFUSION, ""
    if "=" in spec:
        head, _, spec = spec.partition("=")
        role_text, _, group = head.partition("@")
        try:
            role = Role.parse(role_text)
        except KeyError:
            raise ConfigError(flag, f"unknown role {role_text.strip()!r} in {text!r}; accepted: "
                              f"{', '.join(r.name for r in Role)}") from None
        group = group.strip()
    return dns_target(flag, spec.strip(), role, group, grpc_ports=True)


def dns_target(path: str, address: str, role: Role, group: str, grpc_ports: bool, port: int = 0) -> DnsTarget:
    """A DnsTarget from `NAME[:PORT]` (an SRV name takes no port); errors name `path`."""
    name = address.strip()
    if ":" in name:
        name, port = _host_port(path, name)
    if not name or any(c.isspace() for c in name) or ".." in name:
        raise ConfigError(path, f"expected a DNS name, got {address!r}")
    target = DnsTarget(name, role, group, port, grpc_ports)
    if target.srv and port:
        raise ConfigError(path, f"{name!r} is an SRV name: its records carry the ports, give none")
    if not target.srv and not port:
        raise ConfigError(path, f"{name!r} needs a port ('{name}:PORT'; A/AAAA records carry none) "
                          "or an SRV name ('_grpc._tcp.NAME')")
    if port and not 0 < target.worker("0.0.0.0", port).grpc_port < 65536:
        raise ConfigError(path, f"HTTP port {port}: the gRPC port above it (+1) is out of range")
    return target


def parse_workers_file(path: str, text: str) -> list[WorkerAddr]:
    """The workers file: one `ROLE IP:GRPC_PORT [GROUP]` per line, `#` comments, blank lines ignored."""
    out: list[WorkerAddr] = []
    for n, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        where = f"{path}:{n}"
        if len(words) not in (2, 3):
            raise ConfigError(where, f"expected 'ROLE IP:GRPC_PORT [GROUP]', got {line.strip()!r}")
        try:
            role = Role.parse(words[0])
        except KeyError:
            raise ConfigError(where, f"unknown role {words[0]!r}; accepted: {', '.join(r.name for r in Role)}") \
                from None
        ip, port = _host_port(where, words[1])
        if port < 2:
            raise ConfigError(where, f"gRPC port {port}: the HTTP port below it must exist")
        out.append(WorkerAddr(ip, port, port - _GRPC_PORT_OFFSET, role, words[2] if len(words) == 3 else ""))
    return out


class MembershipRefused(ValueError):
    """An admin change that cannot be made (the message says why); `status` is the HTTP status to answer."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class Membership:
    """The desired workers of every source; their union is what the Cluster routes to."""

    def __init__(self, cluster: Cluster, static: Sequence[WorkerAddr], admit_new: bool) -> None:
        self.cluster = cluster
        # new workers are in rotation at once only without active checks (nothing else would admit them)
        self.admit_new = admit_new
        self._sets: dict[str, tuple[WorkerAddr, ...]] = {STATIC: tuple(static)}

    def update(self, source: str, addrs: Sequence[WorkerAddr], admit: bool | None = None) -> MembershipChange:
        """`source` now wants exactly `addrs`; the cluster follows (the change it made, maybe empty)."""
        self._sets[source] = tuple(addrs)
        return self.cluster.apply(self.desired(), self.admit_new if admit is None else admit)

    def desired(self) -> list[WorkerAddr]:
        """The union of every source's set, first one of an `ip:port` winning."""
        seen: dict[str, WorkerAddr] = {}
        for addrs in self._sets.values():
            for a in addrs:
                seen.setdefault(a.key, a)
        return list(seen.values())

    def sources_of(self, key: str) -> list[str]:
        """The sources that want the worker `ip:port`."""
        return [name for name, addrs in self._sets.items() if any(a.key == key for a in addrs)]

    def sources_by_key(self) -> dict[str, list[str]]:
        """Every wanted worker's sources, by `ip:port`."""
        out: dict[str, list[str]] = {}
        for name, addrs in self._sets.items():
            for a in addrs:
                out.setdefault(a.key, []).append(name)
        return out

    def sources(self) -> dict[str, int]:
        """Every source and how many workers it wants."""
        return {name: len(addrs) for name, addrs in self._sets.items()}

    def add(self, addr: WorkerAddr) -> MembershipChange:
        """An operator adds a worker; it stays until removed by an operator (or a restart)."""
        for name in self.sources_of(addr.key):
            have = next(a for a in self._sets[name] if a.key == addr.key)
            if have != addr and name != ADMIN:
                raise MembershipRefused(f"worker {addr.key} is already a {have.role.name} worker"
                                        f"{' of group ' + repr(have.group) if have.group else ''} from {name}", 409)
        kept = tuple(a for a in self._sets.get(ADMIN, ()) if a.key != addr.key)
        return self.update(ADMIN, (*kept, addr))

    def remove(self, key: str) -> MembershipChange:
        """An operator removes a worker of the static configuration or one an operator added.

        A worker a DNS name or the workers file wants is refused (409): the next look there would bring it back;
        change the source, or take the worker out of rotation."""
        names = self.sources_of(key)
        if not names:
            raise MembershipRefused(f"unknown worker {key!r}", 404)
        dynamic = [n for n in names if n not in (STATIC, ADMIN)]
        if dynamic:
            raise MembershipRefused(f"worker {key} comes from {', '.join(dynamic)}: remove it there (the next look "
                                    "would add it back), or take it out of rotation", 409)
        for name in names:
            self._sets[name] = tuple(a for a in self._sets[name] if a.key != key)
        return self.cluster.apply(self.desired(), self.admit_new)
