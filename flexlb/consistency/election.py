"""Master election on ZooKeeper (kazoo), bridged to asyncio.

The recipe is the classic one (ephemeral sequential nodes; the lowest is master), written out
rather than taken from kazoo's Election because that recipe keeps running its leader function
after the session is SUSPENDED or LOST (two masters at once). Here
a replica stops being master the moment its connection is suspended, and only becomes master
again once its own node is back and lowest. Each node carries the replica's identity (admin HTTP
and gRPC host:port), so every replica knows where the master is. The node's czxid fences it.

ZooKeeper being unreachable never stops the gateway: it routes locally and reports the state.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import KazooException, NoNodeError
from kazoo.recipe.watchers import ChildrenWatch

log = logging.getLogger("flexlb.election")


@dataclass(frozen=True)
class Identity:
    """What a replica advertises: unique per replica even when several share a host."""

    replica_id: str
    http_host_port: str
    grpc_host_port: str

    def to_json(self) -> bytes:
        """Node data."""
        return json.dumps({"id": self.replica_id, "http": self.http_host_port, "grpc": self.grpc_host_port}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Identity | None:
        """Parse node data (None if it is not ours)."""
        try:
            d = json.loads(data)
            return cls(str(d["id"]), str(d["http"]), str(d["grpc"]))
        except (ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True)
class ElectionConfig:
    """Where and how to elect."""

    zk_hosts: str
    role_id: str
    session_timeout_s: float = 3.0
    path_prefix: str = "/whale-master/master_lb_leader"

    @property
    def path(self) -> str:
        """The election directory of this role."""
        return f"{self.path_prefix.rstrip('/')}/{self.role_id}"


@dataclass
class ElectionState:
    """The replica's view, read by the asyncio side (updated on the loop thread only)."""

    zk_state: str = "CONNECTING"
    is_master: bool = False
    master: Identity | None = None
    participants: list[Identity] = field(default_factory=list)
    fencing_czxid: int = 0
    changes: int = 0
    since_s: float = field(default_factory=time.monotonic)


class MasterElection:
    """Takes part in the election; `state` tells who is master. `on_change` runs on the event loop."""

    def __init__(
        self, config: ElectionConfig, identity: Identity, on_change: Callable[[ElectionState], None] | None = None
    ) -> None:
        self.config = config
        self.identity = identity
        self.state = ElectionState()
        self._on_change = on_change
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: KazooClient | None = None
        self._node: str | None = None
        self._lock = threading.Lock()  # kazoo callbacks run on its own threads
        self._stopped = False
        self._watching = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Connect in the background (never blocks, never raises because ZooKeeper is down)."""
        self._loop = asyncio.get_running_loop()
        timeout = self.config.session_timeout_s
        self._client = KazooClient(
            hosts=self.config.zk_hosts,
            timeout=timeout,
            connection_retry={"max_tries": -1, "delay": 0.2, "max_delay": 2.0},
            command_retry={"max_tries": 3, "delay": 0.1},
        )
        self._client.add_listener(self._on_zk_state)
        self._client.start_async()

    async def stop(self) -> None:
        """Leave the election (the node goes with the session) and close the client."""
        self._stopped = True
        client = self._client
        if client is None:
            return
        self._set(zk_state="STOPPED", is_master=False)
        await asyncio.get_running_loop().run_in_executor(None, self._close_client, client)

    @staticmethod
    def _close_client(client: KazooClient) -> None:
        try:
            client.stop()
            client.close()
        except KazooException:
            pass

    async def refresh(self) -> None:
        """Re-read the election now (e.g. another replica said the master changed)."""
        if self._client is not None and self._client.connected:
            await asyncio.get_running_loop().run_in_executor(None, self._evaluate)

    # ------------------------------------------------------------------ kazoo threads

    def _on_zk_state(self, zk_state: str) -> None:
        if zk_state == KazooState.CONNECTED:
            # (re)join: our node may be gone with an expired session; kazoo forbids blocking here
            assert self._client is not None
            self._client.handler.spawn(self._join)
            self._post(zk_state="CONNECTED")
        else:
            # SUSPENDED: we cannot know what happens in ZooKeeper; LOST: our node is gone. Step down now.
            if zk_state == KazooState.LOST:
                with self._lock:
                    self._node = None
            self._post(zk_state=str(zk_state), is_master=False)

    def _join(self) -> None:
        client = self._client
        if client is None or self._stopped:
            return
        try:
            with self._lock:
                if self._node is None or client.exists(self._node) is None:
                    client.ensure_path(self.config.path)
                    self._node = client.create(
                        f"{self.config.path}/n_", self.identity.to_json(), ephemeral=True, sequence=True
                    )
            if not self._watching:
                self._watching = True  # kazoo keeps the watch across reconnects
                ChildrenWatch(client, self.config.path, self._on_children, send_event=False)
            self._evaluate()
        except KazooException as exc:
            log.warning("cannot join the election at %s: %s", self.config.path, exc)

    def _on_children(self, children: list[str]) -> bool | None:
        if self._stopped:
            return False  # stop watching
        self._evaluate(children)
        return None

    def _evaluate(self, children: list[str] | None = None) -> None:
        client = self._client
        if client is None or not client.connected:
            return
        try:
            if children is None:
                children = client.get_children(self.config.path)
            ordered = sorted(children, key=lambda n: n.rsplit("_", 1)[-1])
            master: Identity | None = None
            master_node = None
            participants: list[Identity] = []
            for name in ordered:
                try:
                    data, stat = client.get(f"{self.config.path}/{name}")
                except NoNodeError:
                    continue
                ident = Identity.from_json(data)
                if ident is None:
                    continue
                participants.append(ident)
                if master is None:
                    master, master_node = ident, (name, stat.czxid)
            with self._lock:
                mine = self._node.rsplit("/", 1)[-1] if self._node else None
            is_master = master_node is not None and master_node[0] == mine and client.connected
            self._post(
                is_master=is_master,
                master=master,
                participants=participants,
                fencing_czxid=master_node[1] if is_master and master_node else 0,
            )
        except KazooException as exc:
            log.warning("election read failed: %s", exc)

    def _post(self, **changes: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is shutting down
            loop.call_soon_threadsafe(functools.partial(self._set, **changes))

    # ------------------------------------------------------------------ loop thread

    def _set(self, **changes: Any) -> None:
        before = (self.state.is_master, self.state.master)
        for k, v in changes.items():
            setattr(self.state, k, v)
        if (self.state.is_master, self.state.master) != before:
            self.state.changes += 1
            self.state.since_s = time.monotonic()
            log.info(
                "election %s: master=%s, this replica %s",
                self.config.path,
                self.state.master.http_host_port if self.state.master else None,
                "IS master" if self.state.is_master else "is not master",
            )
            if self._on_change is not None:
                self._on_change(self.state)
