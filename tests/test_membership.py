"""Dynamic membership: the pure core (Cluster.apply / reap, Membership's union of sources), the workers file,
the admin calls, and what a removed worker's calls and state go through, on real gateways and mock workers."""

from __future__ import annotations

import asyncio
import os
import random
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from flexlb.balancer.events import Evicted
from flexlb.balancer.prefill_queue import PrefillQueueConfig
from flexlb.balancer.prefix_index import PrefixIndex, PrefixIndexConfig
from flexlb.balancer.request import RouteRequest
from flexlb.balancer.ttft import TtftModel, TtftPriors
from flexlb.balancer.workers import MEMBERSHIP_NOTE, Cluster, Role, WorkerAddr
from flexlb.call.record import CallRecord
from flexlb.config import CliOverrides, ConfigError, ConsistencyConfig, KvCacheMode, load_settings
from flexlb.membership import ADMIN, STATIC, DiscoveryConfig, Membership, MembershipRefused, parse_workers_file
from flexlb.model_service import DOMAIN_ADDRESSES_ENV, parse_model_service
from tests.balancer_support import addrs, make_router
from tests.conftest import generate_input, stream_stub, wait_for, worker_addr


def _req(i: int) -> RouteRequest:
    return RouteRequest(request_id=i, prompt_tokens=100, max_new_tokens=4)


# ---------------------------------------------------------------- the pure core


def test_apply_keeps_staying_workers_adds_and_removes() -> None:
    a, b, c = addrs(Role.PDFUSION, 3)
    cluster = Cluster([a, b])
    kept = cluster.get(b.key)
    assert kept is not None
    kept.dispatched_total = 7
    change = cluster.apply([b, c], admit=False)
    assert [w.key for w in change.added] == [c.key] and [w.key for w in change.removed] == [a.key]
    assert change.generation == cluster.generation == 1
    assert cluster.get(b.key) is kept and kept.dispatched_total == 7  # a worker that stays keeps its state
    new = cluster.get(c.key)
    assert new is not None and not new.healthy and MEMBERSHIP_NOTE in new.notes  # waits for its first probe
    assert cluster.get(a.key) is None and [w.key for w in cluster.of_role(Role.PDFUSION)] == [b.key, c.key]
    assert not cluster.apply([b, c])  # the same set again changes nothing
    assert cluster.generation == 1


def test_a_removed_worker_finishes_its_calls_then_is_reaped() -> None:
    r = make_router(addrs(Role.PDFUSION, 2))
    a, b = r.cluster.all()
    lease = r.route(_req(1))
    busy = lease.decision.target
    other = a if busy is b else b
    r.cluster.apply([other.addr])
    assert r.cluster.leaving() == [busy] and r.cluster.reap() == []  # a call still runs there
    for i in range(5):
        assert r.route(_req(10 + i)).decision.target is other  # no new call goes there
    r.release(lease)
    assert busy.in_flight == 0 and r.cluster.reap() == [busy] and r.cluster.leaving() == []


def test_a_worker_back_before_its_calls_finished_is_the_same_state() -> None:
    r = make_router(addrs(Role.PDFUSION, 2))
    lease = r.route(_req(1))
    w = lease.decision.target
    others = [x.addr for x in r.cluster.all() if x is not w]
    r.cluster.apply(others)
    change = r.cluster.apply([*others, w.addr])
    assert change.added == (w,) and r.cluster.get(w.key) is w and w.in_flight == 1 and not r.cluster.leaving()
    r.release(lease)
    assert w.in_flight == 0


def test_a_changed_role_moves_the_worker() -> None:
    p = WorkerAddr("10.0.0.1", 8001, 8000, Role.PREFILL, "g1")
    cluster = Cluster([p])
    state = cluster.get(p.key)
    change = cluster.apply([WorkerAddr("10.0.0.1", 8001, 8000, Role.PREFILL, "g2")])
    assert change.changed == (state,) and not change.added and not change.removed
    assert state is not None and state.addr.group == "g2" and cluster.of_role(Role.PREFILL) == [state]


def test_decisions_never_see_a_mixed_set_while_membership_flips() -> None:
    # two PD sets in different groups: a decision mixing them (prefill of one, decode of the other) or using a
    # worker not in the set current when it was made would show a half-applied change
    set_a = [*addrs(Role.PREFILL, 2, "a", 8000), *addrs(Role.DECODE, 2, "a", 8100)]
    set_b = [*addrs(Role.PREFILL, 2, "b", 8200), *addrs(Role.DECODE, 1, "b", 8300)]
    r = make_router(set_a)
    rng = random.Random(3)
    current = {w.key for w in set_a}
    leases = []
    for i in range(400):
        if rng.random() < 0.3:
            target = rng.choice((set_a, set_b, set_a + set_b))
            r.cluster.apply(target)
            current = {w.key for w in target}
            assert {w.key for w in r.cluster.all()} == current
        lease = r.route(_req(i))
        d = lease.decision
        assert d.decode is not None
        assert d.target.key in current and d.decode.key in current
        assert d.target.addr.group == d.decode.addr.group
        leases.append(lease)
        if len(leases) > 8:
            r.release(leases.pop(0))
    for lease in leases:
        r.release(lease)
    r.cluster.reap()
    assert all(w.in_flight == 0 for w in r.cluster.all()) and not r.cluster.leaving()


def test_calls_held_for_a_removed_worker_are_routed_again() -> None:
    r = make_router(addrs(Role.PDFUSION, 1), "COST_BASED_PREFILL",
                    queue=PrefillQueueConfig(depth=1, hold_after_ms=0.0))
    (w,) = r.cluster.all()
    sent, held = r.route(_req(1), hold=True), r.route(_req(2), hold=True)
    assert not sent.held and held.held
    spare = WorkerAddr("127.0.0.9", 9001, 9000, Role.PDFUSION)
    r.cluster.apply([spare])
    events = r.evict_held(w.key)
    assert [e.lease for e in events if isinstance(e, Evicted)] == [held] and held.evicted
    r.release(held)  # the owner routes it again: to the worker that is left
    assert r.route(_req(3), hold=True).decision.target.key == spare.key
    r.release(sent)
    assert r.cluster.reap() == [w]


def test_prefix_index_drops_a_worker_and_reuses_its_slot() -> None:
    index = PrefixIndex(PrefixIndexConfig())
    index.record("a", [1, 2, 3], 0.0)
    index.record("b", [1, 2], 0.0)
    index.drop_worker("a")
    assert index.match([1, 2, 3]) == {"b": 2} and "a" not in index.workers() and index.blocks_held("a") == 0
    index.record("c", [1, 2, 3], 0.0)  # takes a's slot: it must hold nothing of a's
    assert index.match([1, 2, 3]) == {"b": 2, "c": 3} and len(index._lru) == 2


def test_ttft_model_drops_a_worker() -> None:
    m = TtftModel(TtftPriors())
    m.dispatched("a", 1, 50.0, 0.0)
    m.observe("a", 100, 0, 40.0, 50.0, 45.0)
    assert "a" in m.workers() and m.total_pending == 1
    m.drop("a")
    assert "a" not in m.workers() and m.total_pending == 0


def test_membership_is_the_union_of_its_sources() -> None:
    a, b, c = addrs(Role.PDFUSION, 3)
    cluster = Cluster([a])
    ms = Membership(cluster, [a], admit_new=True)
    ms.update("dns:x", [b, a])
    ms.update("file:f", [c])
    assert [w.key for w in cluster.all()] == [a.key, b.key, c.key]
    assert ms.sources_of(a.key) == [STATIC, "dns:x"]
    ms.update("dns:x", [])
    assert [w.key for w in cluster.all()] == [a.key, c.key]  # still wanted by the static configuration


def test_admin_changes_are_refused_where_another_source_decides() -> None:
    a, b = addrs(Role.PDFUSION, 2)
    cluster = Cluster([a])
    ms = Membership(cluster, [a], admit_new=True)
    ms.update("dns:x", [b])
    with pytest.raises(MembershipRefused) as info:
        ms.remove(b.key)
    assert info.value.status == 409 and "dns:x" in str(info.value)
    with pytest.raises(MembershipRefused) as info:
        ms.add(WorkerAddr(b.ip, b.grpc_port, b.http_port, Role.PREFILL))
    assert info.value.status == 409
    with pytest.raises(MembershipRefused) as info:
        ms.remove("10.9.9.9:1")
    assert info.value.status == 404
    assert ms.remove(a.key).removed[0].key == a.key  # a configured worker can be removed by hand
    assert ms.add(a).added[0].key == a.key and ms.sources_of(a.key) == [ADMIN]


def test_workers_file_format_and_errors() -> None:
    text = "# the pool\nPREFILL 10.0.0.1:8001 g1\n\ndecode  10.0.0.2:8001  g1  # a comment\nPDFUSION [::1]:9001\n"
    ws = parse_workers_file("w.txt", text)
    assert [(w.role, w.key, w.http_port, w.group) for w in ws] == [
        (Role.PREFILL, "10.0.0.1:8001", 8000, "g1"), (Role.DECODE, "10.0.0.2:8001", 8000, "g1"),
        (Role.PDFUSION, "[::1]:9001", 9000, "")]
    for bad, reason in (("PREFILL 10.0.0.1", "w.txt:1: expected 'ip:port'"), ("COOK 1.2.3.4:5", "unknown role"),
                        ("PREFILL 1.2.3.4:5 g extra", "expected 'ROLE IP:GRPC_PORT [GROUP]'")):
        with pytest.raises(ConfigError, match=re.escape(reason)):
            parse_workers_file("w.txt", bad)


def test_kubernetes_settable_domain_address() -> None:
    raw = {"prefill_endpoint": {"address": "prefill.svc"}, "decode_endpoint": {"address": "decode.svc"}}
    env = {"FLEXLB_DOMAIN_ADDRESS_PREFILL_SVC": "10.0.0.1:8000",
           DOMAIN_ADDRESSES_ENV: '{"decode.svc": ["10.0.0.2:8000", "10.0.0.3:8000"]}'}
    _, ws = parse_model_service(raw, env)
    assert [(w.role, w.key) for w in ws] == [(Role.PREFILL, "10.0.0.1:8001"), (Role.DECODE, "10.0.0.2:8001"),
                                             (Role.DECODE, "10.0.0.3:8001")]
    # the original's name still wins
    _, ws = parse_model_service(raw, {**env, "DOMAIN_ADDRESS:prefill.svc": "10.0.0.9:8000"})
    assert ws[0].key == "10.0.0.9:8001"
    with pytest.raises(ConfigError, match="FLEXLB_DOMAIN_ADDRESS_DECODE_SVC"):
        parse_model_service(raw, {"FLEXLB_DOMAIN_ADDRESS_PREFILL_SVC": "10.0.0.1:8000"})
    with pytest.raises(ConfigError, match=DOMAIN_ADDRESSES_ENV):
        parse_model_service(raw, {DOMAIN_ADDRESSES_ENV: "[1]"})


def test_dynamic_flags_are_validated(tmp_path: Path) -> None:
    f = tmp_path / "workers"
    f.write_text("PREFILL 10.0.0.1:8001\nDECODE 10.0.0.2:8001\n")
    s = load_settings({}, CliOverrides(workers_file=str(f), workers_file_interval_s=0.5,
                                       workers_dns=("PREFILL@g=_grpc._tcp.p.svc", "DECODE=d.svc:8001"),
                                       dns_server="127.0.0.1:5353", workers_dns_interval_s=2))
    d = s.server.discovery
    assert d.workers_file == str(f) and d.file_interval_s == 0.5 and d.dns_interval_s == 2
    assert [(t.name, t.role, t.group, t.port) for t in d.dns] == [("_grpc._tcp.p.svc", Role.PREFILL, "g", 0),
                                                                  ("d.svc", Role.DECODE, "", 8001)]
    assert s.workers == () and s.deploy.name == "DISAGGREGATED"  # inferred from the file's roles
    for cli, field in (
        (CliOverrides(workers_file=str(tmp_path / "missing")), "--workers-file"),
        (CliOverrides(workers_dns=("d.svc",)), "--workers-dns"),  # A/AAAA need a port
        (CliOverrides(workers_dns=("_grpc._tcp.d.svc:80",)), "--workers-dns"),  # SRV names carry theirs
        (CliOverrides(workers_dns=("CHEF=d.svc:80",)), "--workers-dns"),
        (CliOverrides(workers_dns=("d.svc:80",), dns_server="ns.example:53"), "--dns-server"),
        (CliOverrides(workers_dns=("d.svc:80",), workers_dns_interval_s=0), "--workers-dns-interval-s"),
    ):
        with pytest.raises(ConfigError) as info:
            load_settings({}, cli)
        assert info.value.field_path == field
    f.write_text("PREFILL nowhere\n")
    with pytest.raises(ConfigError, match=f"{f}:1"):
        load_settings({}, CliOverrides(workers_file=str(f)))


def test_dns_endpoint_in_model_service_config() -> None:
    env = {"MODEL_SERVICE_CONFIG": '{"prefill_endpoint": {"type": "Dns", "address": "p.svc:8000"}, '
                                   '"decode_endpoint": {"type": "Dns", "address": "_grpc._tcp.d.svc", '
                                   '"protocol": "grpc"}}'}
    s = load_settings(env, CliOverrides())
    (p, d) = s.server.discovery.dns
    assert (p.name, p.port, p.grpc_ports, p.role) == ("p.svc", 8000, False, Role.PREFILL)
    assert p.worker("10.0.0.1", 8000).key == "10.0.0.1:8001"  # an HTTP port, as every endpoint's default
    assert (d.name, d.srv, d.grpc_ports, d.role) == ("_grpc._tcp.d.svc", True, True, Role.DECODE)
    assert s.workers == ()


# ---------------------------------------------------------------- on real gateways


async def _calls(stub: Any, n: int, base: int) -> None:
    for i in range(n):
        assert len([m async for m in stub(generate_input(base + i), timeout=10)]) == 8


def _replace(path: Path, text: str) -> None:
    """Write the file whole, as a ConfigMap update does (a reader never sees half of it)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def test_workers_file_adds_and_removes_workers(mock_workers, gateways, channels, tmp_path: Path) -> None:
    a, b = await mock_workers(), await mock_workers()
    f = tmp_path / "workers"
    _replace(f, f"PDFUSION {worker_addr(a).key}\n")
    gw = await gateways([], discovery=DiscoveryConfig(workers_file=str(f), file_interval_s=0.05))
    stub = stream_stub(channels(gw.grpc_port))
    assert [w.key for w in gw.cluster.all()] == [worker_addr(a).key]
    await _calls(stub, 2, 100)
    _replace(f, f"PDFUSION {worker_addr(a).key}\nPDFUSION {worker_addr(b).key}\n")
    await wait_for(lambda: (w := gw.cluster.get(worker_addr(b).key)) is not None and gw.router.in_rotation(w),
                   what="the worker added to the file in rotation")
    await _calls(stub, 4, 200)
    assert b.calls_received > 0
    _replace(f, "PDFUSION nowhere\n")  # a bad file keeps the last good set
    await wait_for(lambda: bool(gw.discovery.status()[f"file:{f}"]["error"]), what="the bad file noticed")
    assert len(gw.cluster.all()) == 2
    _replace(f, f"PDFUSION {worker_addr(a).key}\n")
    await wait_for(lambda: gw.cluster.get(worker_addr(b).key) is None, what="the worker removed from the file")
    before = b.calls_received
    await _calls(stub, 4, 300)
    assert b.calls_received == before


async def test_removed_worker_finishes_in_flight_calls_and_its_state_goes(mock_workers, gateways, channels,
                                                                           tmp_path: Path) -> None:
    a, b = await mock_workers(), await mock_workers()
    ka, kb = worker_addr(a).key, worker_addr(b).key
    f = tmp_path / "workers"
    _replace(f, f"PDFUSION {ka}\nPDFUSION {kb}\n")
    gw = await gateways([], discovery=DiscoveryConfig(workers_file=str(f), file_interval_s=0.05))
    stub = stream_stub(channels(gw.grpc_port))
    await _calls(stub, 4, 400)  # both learn something: TTFT model and prefix-index records
    assert kb in gw.router.ttft.workers() and gw.router.index is not None and gw.router.index.blocks_held(kb) > 0
    assert b.calls_received == 2
    b.hold_calls()
    # round robin: of two calls at once, one goes to b and stays there until released
    held = [asyncio.create_task(_collect(stub, 500 + i)) for i in range(2)]
    await wait_for(lambda: b.calls_received == 3 and gw.cluster.ledger.calls == 1, what="one call held on b")
    _replace(f, f"PDFUSION {ka}\n")
    await wait_for(lambda: gw.cluster.get(kb) is None, what="b removed")
    assert [w.key for w in gw.cluster.leaving()] == [kb]
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{gw.admin_port}/actuator/prometheus") as r:
            assert "flexlb_workers_leaving 1.0" in await r.text()
        await _calls(stub, 4, 600)
        assert b.calls_received == 3  # no new call after the removal
        assert kb in gw.router.ttft.workers()  # kept while its call runs
        b.release_calls()
        for t in held:
            assert len(await t) == 8  # the in-flight call completes normally
        await wait_for(lambda: not gw.cluster.leaving(), what="b reaped")
        assert kb not in gw.router.ttft.workers() and kb not in gw.router.index.workers()
        async with http.get(f"http://127.0.0.1:{gw.admin_port}/actuator/prometheus") as r:
            text = await r.text()
        assert kb not in text and ka in text and "flexlb_workers_leaving 0.0" in text
        assert 'flexlb_membership_changes_total{change="removed"} 1.0' in text


async def _collect(stub: Any, request_id: int) -> list[Any]:
    return [m async for m in stub(generate_input(request_id), timeout=20)]


async def test_admin_adds_and_removes_workers_with_the_token(mock_workers, gateways, channels) -> None:
    a, b = await mock_workers(), await mock_workers()
    ka, kb = worker_addr(a).key, worker_addr(b).key
    gw = await gateways([worker_addr(a)], consistency=ConsistencyConfig(admin_token="s3cret"))
    base = f"http://127.0.0.1:{gw.admin_port}/admin/workers"
    auth = {"Authorization": "Bearer s3cret"}
    stub = stream_stub(channels(gw.grpc_port))
    async with aiohttp.ClientSession() as http:
        for method, url, body in (("GET", base, None), ("POST", base, {"worker": kb, "role": "PDFUSION"}),
                                  ("DELETE", f"{base}/{ka}", None), ("POST", f"{base}/remove", {"worker": ka})):
            async with http.request(method, url, json=body) as r:
                assert r.status == 401, (method, url)
            async with http.request(method, url, json=body, headers={"Authorization": "Bearer wrong"}) as r:
                assert r.status == 401
        assert [w.key for w in gw.cluster.all()] == [ka]  # nothing changed without the token
        async with http.post(base, json={"worker": kb, "role": "PDFUSION"}, headers=auth) as r:
            assert r.status == 201
            assert (await r.json())["sources"] == [ADMIN]
        await wait_for(lambda: (w := gw.cluster.get(kb)) is not None and gw.router.in_rotation(w),
                       what="the added worker's first good probe")
        async with http.post(base, json={"worker": kb, "role": "PDFUSION"}, headers=auth) as r:
            assert r.status == 200  # there already
        await _calls(stub, 4, 700)
        assert b.calls_received > 0
        async with http.get(base, headers=auth) as r:
            view = await r.json()
        assert [(w["worker"], w["sources"]) for w in view["workers"]] == [(ka, [STATIC]), (kb, [ADMIN])]
        async with http.delete(f"{base}/{kb}", headers=auth) as r:
            assert r.status == 200 and (await r.json())["removed"] is True
        before = b.calls_received
        await _calls(stub, 3, 800)
        assert b.calls_received == before
        async with http.post(f"{base}/remove", json={"worker": kb}, headers=auth) as r:
            assert r.status == 404
        for body, reason in (({"worker": kb}, "role: required"), ({"worker": "nowhere", "role": "PDFUSION"},
                                                                  "worker: expected 'ip:port'"),
                             ({"worker": kb, "role": "CHEF"}, "unknown role"),
                             ({"worker": kb, "role": "DECODE", "weight": 2}, "weight: unknown field"),
                             ({"worker": kb, "role": "DECODE", "http_port": "x"}, "http_port")):
            async with http.post(base, json=body, headers=auth) as r:
                assert r.status == 400 and reason in (await r.json())["error"], body
        async with http.post(base, data="{nope", headers=auth) as r:
            assert r.status == 400
        async with http.delete(f"{base}/not-an-address", headers=auth) as r:
            assert r.status == 400


async def test_membership_swaps_under_live_traffic_are_atomic(mock_workers, gateways, channels) -> None:
    # two PD pairs in different groups; membership flips between them (and both) while calls run: every call
    # is served by a pair from one set, and every call succeeds
    pa, da = await mock_workers("PREFILL"), await mock_workers("DECODE")
    pb, db = await mock_workers("PREFILL"), await mock_workers("DECODE")
    set_a = [worker_addr(pa, "a"), worker_addr(da, "a")]
    set_b = [worker_addr(pb, "b"), worker_addr(db, "b")]
    gw = await gateways(set_a, master={"health_check_interval_ms": 0})  # new workers in rotation at once
    records: list[CallRecord] = []
    gw.dispatcher.access_log = records.append
    stub = stream_stub(channels(gw.grpc_port))
    pairs = {(a.key, b.key) for a, b in (set_a, set_b)}
    stop = asyncio.Event()

    async def flip() -> None:
        sets = [set_b, set_a + set_b, set_a]
        i = 0
        while not stop.is_set():
            gw.update_membership(STATIC, sets[i % 3])
            i += 1
            await asyncio.sleep(0.003)

    async def client(c: int) -> None:
        for i in range(12):
            assert len(await _collect(stub, 10_000 + c * 100 + i)) == 8

    flipper = asyncio.create_task(flip())
    await asyncio.gather(*(client(c) for c in range(6)))
    stop.set()
    await flipper
    assert len(records) == 72 and all(r.code == "OK" for r in records)
    assert all((r.worker, r.decode_worker) in pairs for r in records), {(r.worker, r.decode_worker) for r in records}
    assert gw.cluster.generation > 3


async def test_probes_and_cache_polls_follow_the_set(mock_workers, gateways, tmp_path: Path) -> None:
    a, b = await mock_workers(), await mock_workers()
    ka, kb = worker_addr(a).key, worker_addr(b).key
    f = tmp_path / "workers"
    _replace(f, f"PDFUSION {ka}\n")
    gw = await gateways([], discovery=DiscoveryConfig(workers_file=str(f), file_interval_s=0.05),
                        master={"kv_cache": KvCacheMode.LOCAL_SYNC, "health_check_interval_ms": 50})
    assert gw.health_checker is not None and gw.cache_sync is not None
    assert gw.health_checker.probed() == [ka] and list(gw.cache_sync.views) == [ka]
    _replace(f, f"PDFUSION {ka}\nPDFUSION {kb}\n")
    await wait_for(lambda: kb in gw.cache_sync.views and gw.cache_sync.views[kb].polls > 0, what="b's cache polled")
    assert sorted(gw.health_checker.probed()) == sorted([ka, kb])
    _replace(f, f"PDFUSION {kb}\n")
    await wait_for(lambda: gw.cluster.get(ka) is None, what="a removed")
    assert gw.health_checker.probed() == [kb] and list(gw.cache_sync.views) == [kb]


def test_serve_flags_reach_the_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from flexlb.cli import main

    assert main(["serve", "--workers-dns", "PREFILL=p.svc:8001", "--workers-dns-interval-s", "0"]) == 2
    assert "config error: --workers-dns-interval-s:" in capsys.readouterr().err
    assert main(["serve", "--workers-file", str(tmp_path / "none")]) == 2
    assert "config error: --workers-file:" in capsys.readouterr().err


def test_dynamic_sources_in_the_config_file(tmp_path: Path) -> None:
    from flexlb.config_file import load_config_file, settings_of

    f = tmp_path / "flexlb.toml"
    f.write_text('[server]\nworkers_dns = ["PREFILL@g=_grpc._tcp.p.svc", "DECODE@g=d.svc:8001"]\n'
                 'workers_dns_interval_s = 2.5\ndns_server = "127.0.0.1:5353"\nworkers_dns_allow_empty = true\n')
    d = settings_of(load_config_file(f), {}, CliOverrides()).server.discovery
    assert [t.name for t in d.dns] == ["_grpc._tcp.p.svc", "d.svc"] and d.dns_interval_s == 2.5
    assert d.dns_server == "127.0.0.1:5353" and d.dns_allow_empty
    # a flag replaces the file's list
    d = settings_of(load_config_file(f), {}, CliOverrides(workers_dns=("PREFILL=x.svc:1",))).server.discovery
    assert [t.name for t in d.dns] == ["x.svc"]
