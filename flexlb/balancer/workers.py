"""Workers as the balancer sees them: address, role, group and the in-flight ledger."""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, field


class Role(enum.Enum):
    """Worker roles; values are RTP-LLM's RoleAddrPB.RoleType numbers."""

    PDFUSION = 0
    PREFILL = 1
    DECODE = 2
    VIT = 3
    FRONTEND = 4

    @classmethod
    def parse(cls, text: str) -> Role:
        """Accept `PREFILL`, `ROLE_TYPE_PREFILL` and `RoleType.PREFILL` like the original."""
        name = text.strip().upper()
        for prefix in ("ROLETYPE.", "ROLE_TYPE_"):
            if name.startswith(prefix):
                name = name[len(prefix) :]
        if name in ("PD_FUSION", "FUSION"):
            name = "PDFUSION"
        return cls[name]


@dataclass(frozen=True)
class WorkerAddr:
    """Where a worker is: gRPC is what we call, HTTP is what we report (RoleAddrPB.http_port)."""

    ip: str
    grpc_port: int
    http_port: int
    role: Role
    group: str = ""

    @functools.cached_property
    def key(self) -> str:
        """Stable identity of the worker: `ip:grpc_port` (computed once; routing reads it per candidate)."""
        return f"{self.ip}:{self.grpc_port}"


@dataclass
class WorkerState:
    """Mutable state of one worker, owned by the Cluster and changed only through it."""

    addr: WorkerAddr
    healthy: bool = True
    in_flight: int = 0
    # prompt tokens of the calls in flight (a KV-footprint proxy for decode choice and baselines)
    active_tokens: int = 0
    dispatched_total: int = 0
    # sequence number of the last time this worker was chosen; used to break ties fairly
    last_chosen_seq: int = 0
    # passive ejection (balancer/health.py): failure streak, ejection deadline, how often, re-admission
    consecutive_failures: int = 0
    ejected_until_s: float = 0.0
    ejections: int = 0
    probing: bool = False
    # taken out of rotation by an operator (admin HTTP); in-flight calls finish, no new ones arrive
    operator_out: bool = False
    # active checks (upstream/health_check.py): last good probe and the worker's own load report
    last_probe_ok_s: float = 0.0
    status_version: int = 0
    finished_version: int = 0
    reported_running: int = 0
    kv_available_tokens: int = 0
    kv_total_tokens: int = 0
    # free-form labels surfaced by /actuator/info (e.g. why a worker is out)
    notes: dict[str, str] = field(default_factory=dict)
    key: str = field(init=False)  # same as addr.key, a plain attribute because routing reads it constantly

    def __post_init__(self) -> None:
        self.key = self.addr.key


    @property
    def role(self) -> Role:
        """The worker's role."""
        return self.addr.role


class Cluster:
    """All workers by role, in a stable order (the order of the configuration)."""

    def __init__(self, addrs: list[WorkerAddr]) -> None:
        self._by_key: dict[str, WorkerState] = {}
        self._by_role: dict[Role, list[WorkerState]] = {}
        for addr in addrs:
            if addr.key in self._by_key:
                continue  # the same worker listed twice is one worker
            state = WorkerState(addr)
            self._by_key[addr.key] = state
            self._by_role.setdefault(addr.role, []).append(state)

    def roles(self) -> list[Role]:
        """Roles that have at least one worker."""
        return [r for r, ws in self._by_role.items() if ws]

    def of_role(self, role: Role) -> list[WorkerState]:
        """Workers of a role in configuration order (empty list if none)."""
        return self._by_role.get(role, [])

    def get(self, key: str) -> WorkerState | None:
        """A worker by `ip:grpc_port`."""
        return self._by_key.get(key)

    def all(self) -> list[WorkerState]:
        """Every worker."""
        return list(self._by_key.values())

    def total_in_flight(self) -> int:
        """Sum of in-flight calls over all workers."""
        return sum(w.in_flight for w in self._by_key.values())
