"""Workers as the balancer sees them: address, role, group, and the ledger of the load reserved on them."""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # request.py imports this module for WorkerState
    from flexlb.balancer.request import Decision


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
        """Stable identity of the worker: `ip:grpc_port`, `[v6]:grpc_port` (computed once; routing reads it per
        candidate; also the gRPC target, which needs the brackets)."""
        return f"[{self.ip}]:{self.grpc_port}" if ":" in self.ip else f"{self.ip}:{self.grpc_port}"


@dataclass
class WorkerState:
    """Mutable state of one worker; its load (in_flight, active_tokens, dispatched_total) is written only by
    the Cluster's Ledger."""

    addr: WorkerAddr
    healthy: bool = True
    # leases on this worker not yet released: each leg counts, a PD call is one here and one on its decode
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
    # the engine's prefill token budget per iteration (GetWorkerStatus max_batch_tokens_size; 0: not known,
    # e.g. an engine that prefills one request at a time)
    max_batch_tokens: int = 0
    # the longest sequence the engine takes (GetWorkerStatus max_seq_len; 0: not known): longer prompts are
    # not sent there
    max_seq_len: int = 0
    # the rest of the engine's own report (upstream/worker_status.py): its queue (requests waiting to be
    # scheduled, requests running), the last iteration's time, the role and liveness it says it has
    reported_waiting: int = 0
    reported_running_queries: int = 0
    step_latency_ms: float = 0.0
    reported_role: Role | None = None
    reported_alive: bool = True
    # requests waiting at the engine beyond the calls this gateway has in flight there when it reported
    # (other replicas, Schedule callers that call the worker themselves); 0 when the gateway is the only sender
    untracked_waiting: int = 0
    # free-form labels surfaced by /actuator/info (e.g. why a worker is out)
    notes: dict[str, str] = field(default_factory=dict)
    key: str = field(init=False)  # same as addr.key, a plain attribute because routing reads it constantly

    def __post_init__(self) -> None:
        self.key = self.addr.key

    @property
    def role(self) -> Role:
        """The worker's role."""
        return self.addr.role


LEASE_KINDS = ("call", "reservation")


@dataclass(eq=False, slots=True)
class Lease:
    """Load reserved for one relayed call ("call") or one Schedule reservation ("reservation").

    A plain record: the Ledger writes the load fields, the Router the hold flags; nothing here calls back.
    """

    decision: Decision
    seq: int
    active_tokens: int
    kind: str = "call"
    # the legs carrying the load: the target, the decode peer in PD, the VIT worker when configured
    workers: tuple[WorkerState, ...] = ()
    released: bool = False
    first_token_seen: bool = False
    # in the gateway's prefill queue: routed, not yet sent (a Released event says when it may go)
    held: bool = False
    # taken out of the queue because its worker went away: release it and route the call again
    evicted: bool = False
    # taken over while held by an idle worker from a busier one's queue: decision.target changed
    moved: bool = False


class Ledger:
    """The only writer of the workers' load: reserves, releases (exactly once) and moves leases."""

    def __init__(self) -> None:
        self._open = dict.fromkeys(LEASE_KINDS, 0)

    @property
    def calls(self) -> int:
        """Relayed calls in flight (held ones included); a PD call counts once."""
        return self._open["call"]

    @property
    def reservations(self) -> int:
        """Schedule reservations not yet released."""
        return self._open["reservation"]

    def reserve(self, decision: Decision, seq: int, active_tokens: int, kind: str = "call") -> Lease:
        """Put one call's load on the decision's workers (each leg counts on its own worker; a VIT worker
        counts the calls routed with it)."""
        if kind not in self._open:
            raise ValueError(f"lease kind {kind!r}; expected one of {', '.join(LEASE_KINDS)}")
        legs = decision.workers
        for w in legs:
            w.in_flight += 1
            w.active_tokens += active_tokens
            w.dispatched_total += 1
            w.last_chosen_seq = seq
        self._open[kind] += 1
        return Lease(decision, seq, active_tokens, kind, legs)

    def release(self, lease: Lease) -> bool:
        """Give the lease's load back; False if it was already given back."""
        if lease.released:
            return False
        lease.released = True
        for w in lease.workers:
            w.in_flight -= 1
            w.active_tokens -= lease.active_tokens
        self._open[lease.kind] -= 1
        return True

    def move(self, lease: Lease, new_target: WorkerState) -> None:
        """Move the target leg of a lease to another worker (a held call taken over); the decode leg stays."""
        if lease.released:
            raise ValueError(f"lease {lease.seq} is released: it has no load to move")
        old = lease.workers[0]
        old.in_flight -= 1
        old.active_tokens -= lease.active_tokens
        new_target.in_flight += 1
        new_target.active_tokens += lease.active_tokens
        new_target.dispatched_total += 1
        new_target.last_chosen_seq = lease.seq
        lease.workers = (new_target, *lease.workers[1:])
        lease.decision = dataclasses.replace(lease.decision, target=new_target)
        lease.moved = True


@dataclass(frozen=True)
class MembershipChange:
    """What one Cluster.apply did. `removed` workers get no new calls; their in-flight calls finish and
    Cluster.reap hands them back once none is left. `changed`: same `ip:port`, new role, group or HTTP port."""

    added: tuple[WorkerState, ...] = ()
    removed: tuple[WorkerState, ...] = ()
    changed: tuple[WorkerState, ...] = ()
    generation: int = 0

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


@dataclass(frozen=True, slots=True)
class _View:
    """The workers routing sees; replaced whole by Cluster.apply, never mutated (one swap per change)."""

    by_key: dict[str, WorkerState]
    by_role: dict[Role, list[WorkerState]]
    generation: int = 0


class Cluster:
    """All workers by role, in a stable order (the order of the configuration).

    Membership changes (Cluster.apply) replace the routing view in one assignment: a decision sees the old set
    or the new one, never a mix. Workers that stay keep their state; removed ones leave routing at once and are
    kept (Cluster.leaving) until the Ledger has released their last lease.
    """

    def __init__(self, addrs: list[WorkerAddr]) -> None:
        # every reservation of load on these workers goes through it
        self.ledger = Ledger()
        by_key: dict[str, WorkerState] = {}
        for addr in addrs:
            if addr.key not in by_key:  # the same worker listed twice is one worker
                by_key[addr.key] = WorkerState(addr)
        self._view = _view_of(by_key, 0)
        # removed workers whose calls are still in flight, by key
        self._leaving: dict[str, WorkerState] = {}

    @property
    def generation(self) -> int:
        """How many membership changes were applied."""
        return self._view.generation

    def roles(self) -> list[Role]:
        """Roles that have at least one worker."""
        return [r for r, ws in self._view.by_role.items() if ws]

    def of_role(self, role: Role) -> list[WorkerState]:
        """Workers of a role in configuration order (empty list if none); the list is never changed afterwards."""
        return self._view.by_role.get(role, [])

    def get(self, key: str) -> WorkerState | None:
        """A worker in routing by `ip:grpc_port` (a removed one, still finishing calls, is not)."""
        return self._view.by_key.get(key)

    def all(self) -> list[WorkerState]:
        """Every worker in routing."""
        return list(self._view.by_key.values())

    def leaving(self) -> list[WorkerState]:
        """Removed workers whose calls are still in flight."""
        return list(self._leaving.values())

    def apply(self, addrs: Sequence[WorkerAddr], admit: bool = True) -> MembershipChange:
        """Make `addrs` the workers in routing (one swap); the first of a duplicated `ip:port` wins.

        New workers start in rotation when `admit`, else out until an active probe admits them (healthy=False).
        A removed worker that comes back before its calls finished is the same WorkerState again (its load
        stays counted)."""
        old = self._view.by_key
        by_key: dict[str, WorkerState] = {}
        added: list[WorkerState] = []
        changed: list[WorkerState] = []
        for addr in addrs:
            if addr.key in by_key:
                continue
            state = old.get(addr.key)
            if state is not None:
                if state.addr != addr:
                    changed.append(state)
            else:
                state = self._leaving.pop(addr.key, None) or WorkerState(addr, healthy=admit)
                state.notes.pop(MEMBERSHIP_NOTE, None)
                if not state.healthy:
                    state.notes[MEMBERSHIP_NOTE] = "added: in rotation after its first good probe"
                added.append(state)
            state.addr = addr  # the key is the same: at most role, group or HTTP port moved
            by_key[addr.key] = state
        removed = [w for key, w in old.items() if key not in by_key]
        if not (added or removed or changed):
            return MembershipChange(generation=self._view.generation)
        for w in removed:
            w.notes[MEMBERSHIP_NOTE] = "removed: no new calls, the calls in flight finish"
            self._leaving[w.key] = w
        self._view = _view_of(by_key, self._view.generation + 1)
        return MembershipChange(tuple(added), tuple(removed), tuple(changed), self._view.generation)

    def reap(self) -> list[WorkerState]:
        """Removed workers whose last lease was released: forgotten here; the caller drops their other state."""
        gone = [w for w in self._leaving.values() if w.in_flight <= 0]
        for w in gone:
            del self._leaving[w.key]
        return gone


# WorkerState.notes key of what membership says about a worker (added and not probed yet, removed)
MEMBERSHIP_NOTE = "membership"


def _view_of(by_key: dict[str, WorkerState], generation: int) -> _View:
    by_role: dict[Role, list[WorkerState]] = {}
    for w in by_key.values():
        by_role.setdefault(w.role, []).append(w)
    return _View(by_key, by_role, generation)
