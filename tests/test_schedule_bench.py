"""The master benchmark's parts: the one-process mock fleet, the gateway's probes at fleet scale, and
bench/schedule.py --quick end to end (output shape, 0 errors, nothing left running)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from flexlb.balancer.workers import Role, WorkerAddr
from flexlb.pb import model_rpc_service_pb2 as pb
from flexlb.sim.fleet import FleetConfig, MockFleet
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent


async def _fleet(**kw: object) -> MockFleet:
    """A fleet on a free range of ports above the ephemeral range (retried at another base if one is taken)."""
    rng = random.Random()
    for _ in range(20):
        fleet = MockFleet(FleetConfig(base_port=rng.randrange(61000, 64000), **kw))  # type: ignore[arg-type]
        try:
            await fleet.start()
        except OSError:
            continue
        return fleet
    raise AssertionError("no free range of ports for the fleet")


@pytest.fixture
async def fleets():  # type: ignore[no-untyped-def]
    started: list[MockFleet] = []

    async def start(**kw: object) -> MockFleet:
        f = await _fleet(**kw)
        started.append(f)
        return f

    yield start
    for f in started:
        await f.stop()


def _status(ch: grpc.aio.Channel) -> grpc.aio.UnaryUnaryMultiCallable:
    return ch.unary_unary("/RpcService/GetWorkerStatus", request_serializer=pb.StatusVersionPB.SerializeToString,
                          response_deserializer=pb.WorkerStatusPB.FromString)


def _addrs(fleet: MockFleet) -> list[WorkerAddr]:
    return [WorkerAddr("127.0.0.1", w.port, w.port - 1, Role[w.role]) for w in fleet.workers]


async def test_each_fleet_port_answers_as_its_own_worker_and_acks_enqueued_batches(fleets) -> None:
    fleet = await fleets(prefill=2, decode=1, task_ms=0.0)
    status_of = {}
    for w in fleet.workers:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{w.port}") as ch:
            status_of[w.port] = await _status(ch)(pb.StatusVersionPB(), timeout=5)
    base = fleet.config.base_port
    assert [status_of[base + i].role for i in range(3)] == ["RoleType.PREFILL", "RoleType.PREFILL", "RoleType.DECODE"]
    assert all(s.alive and s.total_kv_cache == fleet.config.kv_total_tokens for s in status_of.values())
    assert status_of[base].max_batch_tokens_size == fleet.config.max_batch_tokens

    async with grpc.aio.insecure_channel(f"127.0.0.1:{base + 1}") as ch:
        enqueue = ch.unary_unary("/RpcService/EnqueueBatch",
                                 request_serializer=pb.EnqueueBatchRequestPB.SerializeToString,
                                 response_deserializer=pb.EnqueueBatchResponsePB.FromString)
        status = _status(ch)
        items = [pb.EnqueueBatchExternalInputPB(input=pb.GenerateInputPB(request_id=rid, token_ids=[1] * 10))
                 for rid in (11, 12, 13)]
        slots = [pb.EnqueueBatchDpSlotPB(dp_rank=0, requests=items[:2]),
                 pb.EnqueueBatchDpSlotPB(dp_rank=1, requests=items[2:])]
        reply = await enqueue(pb.EnqueueBatchRequestPB(batch_id=99, dp_slots=slots), timeout=5)
        assert reply.batch_id == 99 and [s.request_id for s in reply.successes] == [11, 12, 13] and not reply.errors
        # task_ms 0: finished at the next report, with its batch id; a caller that has seen them gets none again
        first = await status(pb.StatusVersionPB(latest_finished_version=0), timeout=5)
        assert sorted((t.request_id, t.batch_id) for t in first.finished_task_list) == [(11, 99), (12, 99), (13, 99)]
        again = await status(pb.StatusVersionPB(latest_finished_version=first.latest_finished_version), timeout=5)
        assert not again.finished_task_list and again.status_version > first.status_version
    stats = fleet.stats()
    assert stats["PREFILL"]["enqueued_requests"] == 3 and stats["PREFILL"]["enqueued_batches"] == 1
    assert stats["DECODE"] == {"workers": 1, "calls": {"GetWorkerStatus": 1}, "enqueued_batches": 0,
                               "enqueued_requests": 0, "running": 0}


async def test_a_taken_port_fails_the_whole_fleet_start(fleets) -> None:
    fleet = await fleets(prefill=1)
    clash = MockFleet(FleetConfig(prefill=2, base_port=fleet.config.base_port - 1))
    with pytest.raises(OSError, match=str(fleet.config.base_port)):
        await clash.start()
    assert all(w._server is None for w in clash.workers)


async def test_worker_without_grpc_health_is_probed_with_get_worker_status_alone(fleets, gateways) -> None:
    # RTP-LLM serves no grpc.health.v1 and its CheckHealth answers OK whenever the server is up: a GetWorkerStatus
    # answer says as much, so it is the whole probe (before: CheckHealth + GetWorkerStatus, two RPCs each time)
    fleet = await fleets(prefill=1, decode=1)
    gw = await gateways(_addrs(fleet), master={"health_check_interval_ms": 20})
    await wait_for(lambda: gw.health_checker is not None and gw.health_checker.probes >= 20
                   and all(w.kv_total_tokens for w in gw.cluster.all()), what="ten probes of each worker")
    assert [(w.healthy, w.kv_total_tokens) for w in gw.cluster.all()] == [(True, fleet.config.kv_total_tokens)] * 2
    assert fleet.counters["PREFILL"].calls["GetWorkerStatus"] >= 5 and fleet.counters["DECODE"].calls[
        "GetWorkerStatus"] >= 5
    assert all("CheckHealth" not in c.calls for c in fleet.counters.values())


async def test_first_probes_of_a_large_pool_are_spread_over_the_interval(fleets, gateways) -> None:
    # 100 workers, a 20 s interval: the first probes go out 0.2 s apart, not all at once
    fleet = await fleets(prefill=50, decode=50)
    gw = await gateways(_addrs(fleet), master={"health_check_interval_ms": 20_000})
    workers = gw.cluster.all()
    await wait_for(lambda: workers[2].kv_total_tokens > 0, what="the third worker's first probe")
    # unspread, all 100 first probes would have started before any answer came back
    assert gw.health_checker is not None and gw.health_checker.probes < 50
    assert workers[-1].kv_total_tokens == 0  # its first probe is due 19.8 s after the start


def _alive(pid: int) -> bool:
    try:
        return b"flexlb" in Path(f"/proc/{pid}/cmdline").read_bytes() or b"schedule" in Path(
            f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def test_quick_bench_reports_every_step_valid_and_stops_its_children() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "schedule.py"), "--quick", "--modes", "DIRECT", "--json"],
        capture_output=True, text=True, timeout=180, cwd=ROOT, env={**os.environ, "GRPC_VERBOSITY": "ERROR"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [r["mode"] for r in rows] == ["DIRECT"]
    r = rows[0]
    assert r["measured"] is True
    scale = r["scale"]
    assert scale["workers"] == 40 and scale["workers_polled"] == 40 and scale["unhealthy_after_idle"] == 0
    assert scale["gateway"]["open_files"] > 0 and scale["gateway_ready_s"] > 0
    assert [s["offered_qps"] for s in r["steps"]] == [50.0, 100.0]
    for s in r["steps"]:
        assert s["errors"] == 0, s["error_codes"]
        assert s["arrivals"] == s["completions"] > 0
        assert s["answers"]["direct"] == s["completions"] and s["answers"]["enqueued_by_master"] == 0
        lat = s["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert set(s["cpu_cores"]) == {"gateway", "fleet", "loadgen"}
    assert r["fleet_stats"]["PREFILL"]["workers"] == 20 and r["fleet_stats"]["DECODE"]["workers"] == 20
    assert len(r["child_pids"]) == 3  # the fleet, the gateway, the load generator
    assert not [pid for pid in r["child_pids"] if _alive(pid)]
