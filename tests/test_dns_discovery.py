"""DNS membership against a real authoritative DNS server on loopback (tests/dns_support.py, dnslib, UDP and
TCP): A/AAAA and SRV lookups, failures that keep the last good set, and gateways whose workers come and go
with the records."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from flexlb.balancer.workers import Role, WorkerAddr
from flexlb.membership import DiscoveryConfig, DnsTarget
from flexlb.sim.mock_worker import MockWorker, MockWorkerConfig
from flexlb.upstream.discovery import DnsSource, LookFailed, make_resolver
from tests.conftest import FAST, generate_input, stream_stub, wait_for, worker_addr
from tests.dns_support import LoopbackDns

INTERVAL_S = 0.5
# a worker added to DNS must be in rotation within one re-resolve interval; the rest is the first probe's round
# trip and the event loop's scheduling on a loaded machine
WITHIN_S = INTERVAL_S + 3.0


@pytest.fixture
def dns() -> Iterator[LoopbackDns]:
    server = LoopbackDns()
    yield server
    server.stop()


def _source(dns: LoopbackDns, target: DnsTarget, allow_empty: bool = False) -> DnsSource:
    return DnsSource(target, make_resolver(DiscoveryConfig(dns_server=dns.address)), allow_empty, search=False)


async def test_a_and_aaaa_records(dns: LoopbackDns) -> None:
    dns.zone.set_a("workers.test", ["10.0.0.2", "10.0.0.1"])
    dns.zone.set_aaaa("workers.test", ["fd00::1"])
    found = await _source(dns, DnsTarget("workers.test", Role.PREFILL, "g1", 8001)).look()
    assert [(w.key, w.http_port, w.role, w.group) for w in found] == [
        ("10.0.0.1:8001", 8000, Role.PREFILL, "g1"), ("10.0.0.2:8001", 8000, Role.PREFILL, "g1"),
        ("[fd00::1]:8001", 8000, Role.PREFILL, "g1")]
    # HTTP ports (MODEL_SERVICE_CONFIG's default protocol): gRPC is one above
    found = await _source(dns, DnsTarget("workers.test", Role.DECODE, port=8000, grpc_ports=False)).look()
    assert {w.key for w in found} == {"10.0.0.1:8001", "10.0.0.2:8001", "[fd00::1]:8001"}


@pytest.mark.parametrize("glue", [True, False])
async def test_srv_records(dns: LoopbackDns, glue: bool) -> None:
    dns.zone.glue = glue  # without the additional section, every target is looked up
    dns.zone.set_srv("_grpc._tcp.workers.test", [(7001, "w1.workers.test"), (7002, "w2.workers.test")])
    dns.zone.set_a("w1.workers.test", ["10.0.1.1"])
    dns.zone.set_a("w2.workers.test", ["10.0.1.2"])
    found = await _source(dns, DnsTarget("_grpc._tcp.workers.test", Role.DECODE)).look()
    assert [w.key for w in found] == ["10.0.1.1:7001", "10.0.1.2:7002"]


async def test_an_answer_too_big_for_udp_comes_over_tcp(dns: LoopbackDns) -> None:
    ips = [f"10.1.{i // 250}.{i % 250 + 1}" for i in range(300)]
    dns.zone.set_a("big.test", ips)
    found = await _source(dns, DnsTarget("big.test", Role.PDFUSION, port=9001)).look()
    assert len(found) == 300 and dns.zone.tcp_queries > 0


async def test_nxdomain_servfail_and_empty_answers(dns: LoopbackDns) -> None:
    target = DnsTarget("gone.test", Role.PDFUSION, port=9001)
    with pytest.raises(LookFailed, match="NXDOMAIN"):
        await _source(dns, target).look()
    assert await _source(dns, target, allow_empty=True).look() == []  # the operator opted in
    dns.zone.set_a("gone.test", [])  # the name exists, with no address
    with pytest.raises(LookFailed, match="no records"):
        await _source(dns, target).look()
    dns.zone.set_a("gone.test", ["10.0.0.1"])
    dns.zone.fail = True
    with pytest.raises(LookFailed, match="SERVFAIL"):
        await _source(dns, target).look()


# ---------------------------------------------------------------- gateways following DNS


@pytest.fixture
async def same_port_workers() -> AsyncIterator[Any]:
    """Mock workers on 127.0.0.2, 127.0.0.3, … all on one gRPC port (what A records of a headless service
    describe); stopped at the end."""
    started: list[MockWorker] = []

    async def start(n: int) -> tuple[int, list[MockWorker]]:
        for _ in range(20):
            probe = socket.socket()
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
            probe.close()
            batch: list[MockWorker] = []
            try:
                for i in range(n):
                    w = MockWorker(MockWorkerConfig(role="PDFUSION", host=f"127.0.0.{i + 2}", port=port, params=FAST))
                    await w.start()
                    batch.append(w)
            except (OSError, RuntimeError):
                for w in batch:
                    await w.stop(grace_s=0)
                continue
            started.extend(batch)
            return port, batch
        raise OSError("no port free on every loopback address")

    yield start
    for w in started:
        await w.stop(grace_s=0)


def _key(w: MockWorker) -> str:
    return f"{w.config.host}:{w.port}"


async def _calls(stub: Any, n: int, base: int) -> None:
    for i in range(n):
        assert len([m async for m in stub(generate_input(base + i), timeout=10)]) == 8


async def test_workers_follow_a_records(dns: LoopbackDns, same_port_workers: Any, gateways: Any,
                                        channels: Any) -> None:
    port, (a, b) = await same_port_workers(2)
    dns.zone.set_a("pool.test", ["127.0.0.2"])
    gw = await gateways([], discovery=DiscoveryConfig(dns=(DnsTarget("pool.test", Role.PDFUSION, port=port),),
                                                      dns_interval_s=INTERVAL_S, dns_server=dns.address))
    assert [w.key for w in gw.cluster.all()] == [_key(a)]  # resolved before serving
    stub = stream_stub(channels(gw.grpc_port))
    await _calls(stub, 2, 100)

    dns.zone.set_a("pool.test", ["127.0.0.2", "127.0.0.3"])
    await wait_for(lambda: (w := gw.cluster.get(_key(b))) is not None and gw.router.in_rotation(w), WITHIN_S,
                   "the worker added to DNS in rotation within one re-resolve interval")
    await _calls(stub, 4, 200)
    assert b.calls_received > 0

    b.hold_calls()
    before_a = a.calls_received
    held = [asyncio.create_task(_collect(stub, 300 + i)) for i in range(2)]  # round robin: one lands on b
    await wait_for(lambda: b.calls_received == 3 and a.calls_received == before_a + 1, what="one call held on b")
    dns.zone.set_a("pool.test", ["127.0.0.2"])
    await wait_for(lambda: gw.cluster.get(_key(b)) is None, WITHIN_S, "the worker removed from DNS out")
    await _calls(stub, 4, 400)
    assert b.calls_received == 3  # none after the removal
    b.release_calls()
    assert [len(await t) for t in held] == [8, 8]  # its in-flight call completed
    await wait_for(lambda: not gw.cluster.leaving(), what="the removed worker's state dropped")
    assert _key(b) not in gw.router.ttft.workers()
    assert _key(b) not in gw.router.outliers._stats  # nor are its outlier-detection counts kept


async def _collect(stub: Any, request_id: int) -> list[Any]:
    return [m async for m in stub(generate_input(request_id), timeout=20)]


async def test_srv_membership_keeps_the_last_good_set_on_failure(dns: LoopbackDns, mock_workers: Any,
                                                                 gateways: Any, channels: Any) -> None:
    a, b = await mock_workers(), await mock_workers()
    name = "_grpc._tcp.pool.test"
    dns.zone.set_srv(name, [(a.port, "a.pool.test"), (b.port, "b.pool.test")])
    dns.zone.set_a("a.pool.test", ["127.0.0.1"])
    dns.zone.set_a("b.pool.test", ["127.0.0.1"])
    gw = await gateways([], discovery=DiscoveryConfig(dns=(DnsTarget(name, Role.PDFUSION),),
                                                      dns_interval_s=0.05, dns_server=dns.address))
    both = {worker_addr(a).key, worker_addr(b).key}
    assert {w.key for w in gw.cluster.all()} == both

    dns.zone.fail = True  # SERVFAIL: the last good set stays
    await wait_for(lambda: gw.discovery.status()[f"dns:{name}"]["failures"] >= 3, what="three failed looks")
    assert {w.key for w in gw.cluster.all()} == both
    dns.zone.fail = False
    dns.zone.delete(name)  # NXDOMAIN without --workers-dns-allow-empty: kept too
    await wait_for(lambda: "NXDOMAIN" in str(gw.discovery.status()[f"dns:{name}"]["error"]), what="an NXDOMAIN")
    assert {w.key for w in gw.cluster.all()} == both
    stub = stream_stub(channels(gw.grpc_port))
    await _calls(stub, 4, 500)
    async with aiohttp.ClientSession() as http:  # a DNS worker cannot be removed by hand: DNS would add it back
        async with http.delete(f"http://127.0.0.1:{gw.admin_port}/admin/workers/{worker_addr(a).key}") as r:
            assert r.status == 409 and name in (await r.json())["error"]
        async with http.get(f"http://127.0.0.1:{gw.admin_port}/admin/workers") as r:
            view = await r.json()
    assert view["sources"][f"dns:{name}"]["workers"] == 2 and "NXDOMAIN" in view["sources"][f"dns:{name}"]["error"]
    dns.zone.set_srv(name, [(b.port, "b.pool.test")])
    dns.zone.set_a("b.pool.test", ["127.0.0.1"])
    await wait_for(lambda: {w.key for w in gw.cluster.all()} == {worker_addr(b).key}, what="the new answer applied")
    assert gw.discovery.status()[f"dns:{name}"]["error"] == ""


async def test_a_gateway_started_with_dns_down_gets_workers_once_it_answers(dns: LoopbackDns, mock_workers: Any,
                                                                           gateways: Any, channels: Any) -> None:
    a = await mock_workers()
    name = "_grpc._tcp.late.test"
    dns.zone.fail = True
    gw = await gateways([], discovery=DiscoveryConfig(dns=(DnsTarget(name, Role.PDFUSION),), dns_interval_s=0.1,
                                                      dns_server=dns.address, dns_timeout_s=0.5))
    assert gw.cluster.all() == [] and not gw.readiness().ok
    dns.zone.set_srv(name, [(a.port, "a.late.test")])
    dns.zone.set_a("a.late.test", ["127.0.0.1"])
    dns.zone.fail = False
    await wait_for(lambda: gw.readiness().ok, WITHIN_S, "ready once DNS answers")
    await _calls(stream_stub(channels(gw.grpc_port)), 2, 600)
    assert a.calls_received == 2


def test_worker_addr_of_ipv6_is_a_grpc_target() -> None:
    assert WorkerAddr("fd00::1", 8001, 8000, Role.PREFILL).key == "[fd00::1]:8001"
