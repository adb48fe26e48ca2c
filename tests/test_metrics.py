"""/actuator/prometheus an operator can trust: promtool-clean, base units, worker state within a second."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from collections.abc import Callable

import aiohttp
import grpc
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from flexlb.app import Gateway
from flexlb.config import ConsistencyConfig
from flexlb.pb import model_rpc_service_pb2 as pb
from flexlb.sim.mock_worker import Faults
from tests.conftest import generate_input, stream_stub, wait_for, worker_addr

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def _scrape(gw: Gateway, accept: str | None = None) -> tuple[str, str]:
    headers = {"Accept": accept} if accept else {}
    async with aiohttp.ClientSession() as http, http.get(
            f"http://127.0.0.1:{gw.admin_port}/actuator/prometheus", headers=headers) as r:
        assert r.status == 200
        return r.headers["Content-Type"], await r.text()


def _samples(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def _value(samples: Samples, name: str, **labels: str) -> float | None:
    """The one sample of `name` whose labels include `labels` (None: none)."""
    hits = [v for (n, lab), v in samples.items() if n == name and set(labels.items()) <= lab]
    assert len(hits) <= 1, (name, labels, hits)
    return hits[0] if hits else None


def _lint(text: str) -> None:
    """promtool's rules that matter here, checked whether or not promtool is installed."""
    for fam in text_string_to_metric_families(text):
        assert fam.documentation, f"{fam.name} has no HELP"
        assert not re.search(r"_(ms|us|millis|kb|mb)(_|$)", fam.name), f"{fam.name}: not a base unit"
        if fam.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in fam.samples), fam.name


def _promtool(text: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        # CI installs it (make promtool); on a developer's machine the rules above still ran
        assert not os.environ.get("CI"), "promtool is not installed: run `make promtool`"
        return
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr


async def test_promtool_clean_after_pd_traffic_with_both_legs_labelled(mock_workers, gateways, channels) -> None:
    p, d = await mock_workers("PREFILL"), await mock_workers("DECODE")
    gw = await gateways([worker_addr(p), worker_addr(d)], master={"health_check_interval_ms": 0})
    ch = channels(gw.grpc_port)
    stub = stream_stub(ch)
    for i in range(3):
        # the same prompt: the second and third calls reuse the first one's KV blocks on the prefill
        assert len([m async for m in stub(generate_input(100 + i, n_tokens=256), timeout=10)]) == 8
    try:
        async for _ in stub(pb.GenerateInputPB(request_id=9), timeout=10):
            pass
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
    content_type, text = await _scrape(gw)
    assert content_type.startswith("text/plain")
    _lint(text)
    _promtool(text)
    s = _samples(text)
    pk, dk = worker_addr(p).key, worker_addr(d).key
    # the prefill and decode legs of the same calls, each under its own worker and role
    assert _value(s, "flexlb_requests_total", worker=pk, role="PREFILL", code="OK") == 3
    assert _value(s, "flexlb_requests_total", worker=dk, role="DECODE", code="OK") == 3
    assert _value(s, "flexlb_worker_state", worker=dk, role="DECODE", state="in_rotation") == 1
    # duration by method and code; the rejected call is there too
    assert _value(s, "flexlb_request_duration_seconds_count", method="GenerateStreamCall", code="OK") == 3
    assert _value(s, "flexlb_request_duration_seconds_count", method="GenerateStreamCall",
                  code="INVALID_ARGUMENT") == 1
    assert _value(s, "flexlb_prompt_tokens_total", worker=pk) == 3 * 256
    cached = _value(s, "flexlb_cached_prompt_tokens_total", worker=pk)
    assert cached is not None and cached >= 2 * 192  # the worker reported its prefix hits
    assert _value(s, "flexlb_relayed_messages_total", method="GenerateStreamCall") == 24
    # standard collectors and the build
    assert _value(s, "process_resident_memory_bytes") is not None
    assert _value(s, "python_info") == 1
    build = [lab for (n, lab) in s if n == "flexlb_build_info"]
    assert len(build) == 1 and {k for k, _ in build[0]} == {"version", "python"}
    # base units: the TTFT model's gauges are in seconds
    assert any(n == "flexlb_worker_ttft_observed_seconds" for n, _ in s)
    assert not any(n.endswith("_ms") for n, _ in s)


async def test_openmetrics_when_the_scraper_asks(mock_workers, gateways) -> None:
    gw = await gateways([worker_addr(await mock_workers())], master={"health_check_interval_ms": 0})
    content_type, text = await _scrape(gw, "application/openmetrics-text; version=1.0.0,text/plain;q=0.5")
    assert content_type.startswith("application/openmetrics-text")
    assert text.endswith("# EOF\n")
    names = {fam.name for fam in openmetrics_families(text)}
    assert {"flexlb_requests", "flexlb_worker_state", "flexlb_build_info", "process_cpu_seconds"} <= names


async def _wait_scraped(gw: Gateway, ok: Callable[[Samples], bool], what: str) -> None:
    """Scrape until `ok` holds, for at most one second (the must-show bound)."""
    found: list[bool] = []

    async def poll() -> None:
        found.append(ok(_samples((await _scrape(gw))[1])))

    deadline = asyncio.get_running_loop().time() + 1.0
    while True:
        await poll()
        if found[-1]:
            return
        assert asyncio.get_running_loop().time() < deadline, f"not visible within 1 s: {what}"


async def test_worker_state_changes_are_visible_within_a_second(mock_workers, gateways, channels) -> None:
    broken = await mock_workers(faults=Faults(error_rate=1.0, error_code=514))
    good = await mock_workers()
    gw = await gateways([worker_addr(broken), worker_addr(good)], strategy="ROUND_ROBIN",
                        master={"health_check_interval_ms": 0, "outlier_base_ejection_ms": 60_000})
    bk, gk = worker_addr(broken).key, worker_addr(good).key
    stub = stream_stub(channels(gw.grpc_port))
    for i in range(6):  # every call fails over from the broken worker to the good one
        assert len([m async for m in stub(generate_input(300 + i), timeout=10)]) == 8
    await _wait_scraped(gw, lambda s: _value(s, "flexlb_worker_state", worker=bk, state="ejected") == 1,
                        "the passive ejection")
    s = _samples((await _scrape(gw))[1])
    assert _value(s, "flexlb_worker_healthy", worker=bk) == 0
    assert _value(s, "flexlb_workers", role="PDFUSION", state="ejected") == 1
    assert _value(s, "flexlb_worker_ejections_total", worker=bk, reason="consecutive_5xx") == 1
    failovers = sum(v for (n, _), v in s.items() if n == "flexlb_failovers_total")
    assert failovers == 3  # the three attempts that ejected it each went on to the good worker
    # an operator takes the good one out: visible at the next scrape
    assert gw.set_rotation(gk, False, "maintenance") is not None
    await _wait_scraped(gw, lambda s: _value(s, "flexlb_worker_state", worker=gk, state="out_by_operator") == 1
                        and _value(s, "flexlb_workers", role="PDFUSION", state="in_rotation") == 0,
                        "the operator's rotation change")


async def test_active_check_failures_are_counted(mock_workers, gateways) -> None:
    dead = await mock_workers()
    live = await mock_workers()
    gw = await gateways([worker_addr(dead), worker_addr(live)],
                        master={"health_check_interval_ms": 100, "health_check_timeout_ms": 100})
    key = worker_addr(dead).key
    await wait_for(lambda: all(w.last_probe_ok_s > 0 for w in gw.cluster.all()), what="first good probes")
    await dead.stop(grace_s=0)
    state = gw.cluster.get(key)
    assert state is not None
    await wait_for(lambda: not state.healthy, what="the dead worker out")
    s = _samples((await _scrape(gw))[1])
    assert _value(s, "flexlb_worker_state", worker=key, state="unhealthy") == 1
    assert _value(s, "flexlb_worker_ejections_total", worker=key, reason="health_check") == 1
    failed = sum(v for (n, lab), v in s.items() if n == "flexlb_worker_probe_failures_total"
                 and ("worker", key) in lab)
    assert failed >= 1


@pytest.mark.parametrize("gateways", ["h2"], indirect=True)  # HA does not depend on the relay engine
async def test_master_and_zookeeper_gauges_follow_the_election(zookeeper, mock_workers, gateways) -> None:
    ha = ConsistencyConfig(need_consistency=True, zk_host=zookeeper.hosts, zk_timeout_ms=2000, role_id="gauges",
                           admin_token="t0ken")
    gw = await gateways([worker_addr(await mock_workers())], consistency=ha, master={"health_check_interval_ms": 0})
    assert gw.consistency is not None
    await wait_for(lambda: gw.consistency is not None and gw.consistency.is_master, timeout_s=10,
                   what="the only replica elected")
    s = _samples((await _scrape(gw))[1])
    assert _value(s, "flexlb_is_master") == 1
    assert _value(s, "flexlb_zookeeper_connected") == 1
    # without an election there is no such series (nothing to say)
    plain = await gateways([worker_addr(await mock_workers())], master={"health_check_interval_ms": 0})
    s = _samples((await _scrape(plain))[1])
    assert _value(s, "flexlb_is_master") is None and _value(s, "flexlb_zookeeper_connected") is None
