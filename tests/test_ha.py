"""High availability against a real ZooKeeper: election, consistency endpoints, ZooKeeper outages."""

from __future__ import annotations

import aiohttp
import pytest

from flexlb.config import ConsistencyConfig
from flexlb.consistency.local_zookeeper import ZooKeeper
from tests.conftest import generate_input, stream_stub, wait_for, worker_addr

# HA does not depend on the relay engine: one engine is enough here
pytestmark = pytest.mark.parametrize("gateways", ["h2"], indirect=True)

TOKEN = "s3cret-token"


def _ha(zk: ZooKeeper, role: str, token: str = TOKEN) -> ConsistencyConfig:
    return ConsistencyConfig(need_consistency=True, zk_host=zk.hosts, zk_timeout_ms=2000, role_id=role,
                             admin_token=token)


async def _replicas(gateways, mock_workers, zk: ZooKeeper, role: str, n: int = 3):  # type: ignore[no-untyped-def]
    workers = [worker_addr(await mock_workers()) for _ in range(2)]
    return [await gateways(workers, consistency=_ha(zk, role)) for _ in range(n)]


def _masters(replicas) -> list:  # type: ignore[no-untyped-def]
    return [gw for gw in replicas if gw.consistency.is_master]


def _agreed(replicas) -> bool:  # type: ignore[no-untyped-def]
    """Exactly one master, and every replica names it."""
    masters = _masters(replicas)
    if len(masters) != 1:
        return False
    expected = masters[0].consistency.identity.http_host_port
    return all(gw.consistency.master_http() == expected for gw in replicas)


async def test_three_replicas_elect_one_master_and_agree(zookeeper, gateways, mock_workers) -> None:
    replicas = await _replicas(gateways, mock_workers, zookeeper, "agree")
    await wait_for(lambda: _agreed(replicas), timeout_s=10, what="one master that every replica names")
    master = _masters(replicas)[0]
    # real_master_host is the master's HTTP API ip:port (frontends add 2 for Schedule), unique per replica
    assert master.consistency.master_http() == f"127.0.0.1:{master.http_port}"
    async with aiohttp.ClientSession() as http:
        for gw in replicas:
            async with http.post(f"http://127.0.0.1:{gw.admin_port}/rtp_llm/master/info", json={}) as r:
                body = await r.json()
            assert r.status == 200 and body["real_master_host"] == master.consistency.master_http()
            assert body["worker_summary"]["PDFUSION"]["discovered"] == 2


async def test_master_leaving_hands_over_quickly(zookeeper, gateways, mock_workers) -> None:
    replicas = await _replicas(gateways, mock_workers, zookeeper, "handover")
    await wait_for(lambda: _agreed(replicas), timeout_s=10, what="a first master")
    old = _masters(replicas)[0]
    rest = [gw for gw in replicas if gw is not old]
    most_at_once = 0

    def agreed_and_never_two() -> bool:
        nonlocal most_at_once
        most_at_once = max(most_at_once, len(_masters(rest)))
        return _agreed(rest)

    await old.stop(grace_s=0)  # its session closes with it: the node goes at once
    await wait_for(agreed_and_never_two, timeout_s=2 + 2, what="a new master named by both survivors")
    assert most_at_once == 1  # at no observed moment were there two masters
    new = _masters(rest)[0]
    assert new is not old
    # the new master told the other survivor at once (notifyMaster), not only through the watch
    await wait_for(lambda: new.consistency.notifications_sent >= 1, what="the take-over notification")
    other = next(gw for gw in rest if gw is not new)
    assert other.consistency.notifications_received >= 1


async def test_consistency_endpoints_guard_and_answer(zookeeper, gateways, mock_workers, channels) -> None:
    replicas = await _replicas(gateways, mock_workers, zookeeper, "endpoints")
    await wait_for(lambda: _agreed(replicas), timeout_s=10, what="a master")
    master = _masters(replicas)[0]
    follower = next(gw for gw in replicas if gw is not master)
    # some load on the master so its snapshot has something to say
    stub = stream_stub(channels(master.grpc_port))
    held = stub(generate_input(4000, max_new_tokens=100_000), timeout=30)
    await held.read()
    good = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{follower.admin_port}/load-balance/prefill/consistency/syncStatus"
        for headers, status in (({}, 401), ({"Authorization": "Bearer wrong"}, 401), ({"Authorization": "x"}, 401)):
            async with http.post(url, json={"roleId": "endpoints"}, headers=headers) as r:
                assert r.status == status
                assert "token" in (await r.json())["error"]
        async with http.post(url, data="{nope", headers={**good, "Content-Type": "application/json"}) as r:
            assert r.status == 400 and "not valid JSON" in (await r.json())["error"]
        async with http.post(url, json={"roleId": "other"}, headers=good) as r:
            assert r.status == 400 and "roleId not match this:endpoints" in (await r.json())["error"]
        # a follower answers with the master's snapshot, fetched from the master
        async with http.post(url, json={"roleId": "endpoints"}, headers=good) as r:
            assert r.status == 200
            snap = await r.json()
        assert snap["success"] and snap["master"] == master.consistency.master_http()
        status = snap["lbStatus"]
        assert status["master"] == master.consistency.identity.http_host_port
        assert status["in_flight"] == master.cluster.ledger.calls == 1
        assert sum(w["in_flight"] for w in status["workers"]) == 1 and len(status["workers"]) == 2
        # notifyMaster: the receiver refreshes its view
        for path in ("/load-balance/prefill/consistency/notifyMaster", "/rtp_llm/notify_master"):
            async with http.post(f"http://127.0.0.1:{follower.admin_port}{path}", headers=good,
                                 json={"reqIp": master.consistency.master_http(), "roleId": "endpoints"}) as r:
                assert r.status == 200 and (await r.json())["success"]
        async with http.get(f"http://127.0.0.1:{follower.admin_port}/actuator/info") as r:
            info = await r.json()
        assert TOKEN not in str(info)  # the token never shows
        assert info["consistency"]["master"] == master.consistency.master_http()
    held.cancel()


async def test_without_a_token_only_loopback_callers(zookeeper, gateways, mock_workers) -> None:
    gw = await gateways([worker_addr(await mock_workers())], consistency=_ha(zookeeper, "open", token=""))
    await wait_for(lambda: gw.consistency.is_master, timeout_s=10, what="the lone replica as master")
    async with aiohttp.ClientSession() as http, http.post(
        f"http://127.0.0.1:{gw.admin_port}/load-balance/prefill/consistency/syncStatus", json={"roleId": "open"}
    ) as r:
        assert r.status == 200 and (await r.json())["success"]


async def test_zookeeper_outage_never_stops_traffic(gateways, mock_workers, channels) -> None:
    zk = ZooKeeper()
    zk.start()
    try:
        gw = await gateways([worker_addr(await mock_workers())], consistency=_ha(zk, "outage"))
        await wait_for(lambda: gw.consistency.is_master, timeout_s=10, what="a master")
        zk.stop()
        await wait_for(lambda: not gw.consistency.is_master, timeout_s=5, what="stepping down when ZooKeeper goes")
        stub = stream_stub(channels(gw.grpc_port))
        for i in range(5):  # traffic keeps flowing, routed locally
            assert len([m async for m in stub(generate_input(4100 + i), timeout=10)]) == 8
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{gw.admin_port}/actuator/health") as r:
            health = await r.json()
        assert r.status == 200 and health["zookeeper"] != "CONNECTED"
        zk.start()  # same port and data: the session may have expired; the replica rejoins
        await wait_for(lambda: gw.consistency.is_master, timeout_s=15, what="the election resuming")
    finally:
        zk.destroy()


async def test_replicas_route_through_the_master(zookeeper, gateways, mock_workers, channels) -> None:
    workers = [await mock_workers() for _ in range(4)]
    addrs = [worker_addr(w) for w in workers]
    forwarding = {"enable_grpc_prefill_master": True, "prefill_lb_timeout_ms": 2000, "health_check_interval_ms": 0}
    replicas = [await gateways(addrs, strategy="ROUND_ROBIN", master=forwarding, consistency=_ha(zookeeper, "fwd"))
                for _ in range(3)]
    await wait_for(lambda: _agreed(replicas), timeout_s=10, what="a master")
    master = _masters(replicas)[0]
    stubs = [stream_stub(channels(gw.grpc_port)) for gw in replicas]
    for i in range(60):  # spread over the three replicas: the master's one round-robin decides for all
        assert len([m async for m in stubs[i % 3](generate_input(4200 + i), timeout=10)]) == 8
    counts = [w.calls_received for w in workers]
    assert max(counts) <= 1.2 * min(counts), counts  # as even as one gateway alone (15 each)
    forwarded = sum(s.value for gw in replicas if gw is not master
                    for s in gw.metrics.forwards.collect()[0].samples
                    if s.name.endswith("_total") and s.labels["result"] == "ok")
    assert forwarded == 40  # every call on the two non-masters was decided by the master
    await wait_for(lambda: master.scheduler.reserved() == 0, what="the master's reservations released by Cancel")
    assert all(w.in_flight == 0 for gw in replicas for w in gw.cluster.all())


async def test_forwarding_falls_back_locally_in_time(zookeeper, gateways, mock_workers, channels) -> None:
    import asyncio

    from kazoo.client import KazooClient

    from flexlb.consistency.election import Identity

    # a hung master: it holds the lowest election node and accepts connections but never answers
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    silent_port = silent.sockets[0].getsockname()[1]
    zk = KazooClient(hosts=zookeeper.hosts)
    zk.start(timeout=10)
    try:
        hung = Identity("hung-master", "127.0.0.1:1", f"127.0.0.1:{silent_port}")
        zk.create("/whale-master/master_lb_leader/fallback/n_", hung.to_json(), ephemeral=True, sequence=True,
                  makepath=True)
        workers = [worker_addr(await mock_workers())]
        forwarding = {"enable_grpc_prefill_master": True, "prefill_lb_timeout_ms": 300}
        replica = await gateways(workers, master=forwarding, consistency=_ha(zookeeper, "fallback"))
        st = replica.consistency.state
        await wait_for(lambda: st.master == hung and len(st.participants) == 2, timeout_s=10,
                       what="the hung master seen as master")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert len([m async for m in stream_stub(channels(replica.grpc_port))(generate_input(4300), timeout=10)]) == 8
        assert 0.3 <= loop.time() - t0 < 2.0  # waited for the master up to its bound, then routed locally
        results = {s.labels["result"]: s.value for s in replica.metrics.forwards.collect()[0].samples
                   if s.name.endswith("_total")}
        assert results.get("deadline_exceeded") == 1
    finally:
        zk.stop()
        zk.close()
        silent.close()
