"""What replicas do with the election: know the master, tell others on take-over, serve its snapshot."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import aiohttp

from flexlb.consistency.election import ElectionConfig, ElectionState, Identity, MasterElection

log = logging.getLogger("flexlb.consistency")

SYNC_STATUS_PATH = "/load-balance/prefill/consistency/syncStatus"
NOTIFY_MASTER_PATH = "/load-balance/prefill/consistency/notifyMaster"


class Consistency:
    """The replica's part in high availability (election + notifications + snapshot fetching)."""

    def __init__(self, election_config: ElectionConfig, identity: Identity, token: str | None,
                 snapshot: Callable[[], dict[str, Any]], http_timeout_s: float = 1.0) -> None:
        self.role_id = election_config.role_id
        self.identity = identity
        self.token = token
        self.snapshot = snapshot
        self.http_timeout_s = http_timeout_s
        self.election = MasterElection(election_config, identity, self._on_change)
        self._tasks: set[asyncio.Task[None]] = set()
        self.notifications_sent = 0
        self.notifications_received = 0

    @property
    def state(self) -> ElectionState:
        """The current view of the election."""
        return self.election.state

    @property
    def is_master(self) -> bool:
        """This replica is the master right now."""
        return self.election.state.is_master

    def master_http(self) -> str:
        """`ip:port` of the master's admin HTTP port ('' while none is known)."""
        m = self.election.state.master
        return m.http_host_port if m else ""

    def start(self) -> None:
        """Join the election in the background."""
        self.election.start()

    async def stop(self) -> None:
        """Leave the election; cancel notifications in flight."""
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self.election.stop()

    def _on_change(self, state: ElectionState) -> None:
        if state.is_master:
            task = asyncio.get_running_loop().create_task(self._notify_others(list(state.participants)),
                                                          name="notify replicas of the new master")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def _notify_others(self, participants: list[Identity]) -> None:
        """Fire-and-forget notifyMaster to every other replica (they refresh their view at once)."""
        timeout = aiohttp.ClientTimeout(total=self.http_timeout_s)
        body = {"reqIp": self.identity.http_host_port, "roleId": self.role_id}
        async with aiohttp.ClientSession(timeout=timeout, headers=self._headers()) as http:
            for p in participants:
                if p.replica_id == self.identity.replica_id:
                    continue
                try:
                    async with http.post(f"http://{p.http_host_port}{NOTIFY_MASTER_PATH}", json=body) as r:
                        if r.status == 200:
                            self.notifications_sent += 1
                except (aiohttp.ClientError, TimeoutError) as exc:
                    log.info("could not notify %s of the new master: %s", p.http_host_port, exc)

    async def notified(self) -> None:
        """Another replica said it became master: refresh the view now instead of waiting for the watch."""
        self.notifications_received += 1
        await self.election.refresh()

    async def master_snapshot(self) -> dict[str, Any]:
        """The master's balancer snapshot: our own when we are master, else fetched from the master."""
        if self.is_master:
            return {"success": True, "master": self.master_http(), "lbStatus": self.snapshot()}
        master = self.master_http()
        if not master:
            return {"success": False, "master": "", "msg": "no master is known (ZooKeeper state: "
                    f"{self.state.zk_state}); this replica routes on its own"}
        timeout = aiohttp.ClientTimeout(total=self.http_timeout_s)
        try:
            headers = {**self._headers(), "x-flexlb-forwarded": "1"}
            async with aiohttp.ClientSession(timeout=timeout, headers=headers) as http, http.post(
                f"http://{master}{SYNC_STATUS_PATH}", json={"roleId": self.role_id}
            ) as r:
                if r.status == 200:
                    data: dict[str, Any] = await r.json()
                    return data
                return {"success": False, "master": master, "msg": f"master answered HTTP {r.status}"}
        except (aiohttp.ClientError, TimeoutError) as exc:
            return {"success": False, "master": master, "msg": f"master unreachable: {exc}"}
