"""Logs: JSON lines on request, one access line per call, one line per ejection and failover, validated flags."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import signal
import sys

import grpc
import pytest

from flexlb.call.record import CallRecord
from flexlb.cli import main
from flexlb.logs import ACCESS_LOGGER, AccessLog, setup_logging
from flexlb.pb import model_rpc_service_pb2 as pb
from flexlb.sim.mock_worker import Faults
from tests.conftest import generate_input, stream_stub, wait_for, worker_addr


def _access(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == ACCESS_LOGGER]


async def test_one_access_line_per_call_with_the_pair_status_and_timings(
        mock_workers, gateways, channels, caplog) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    p, d = await mock_workers("PREFILL"), await mock_workers("DECODE")
    gw = await gateways([worker_addr(p), worker_addr(d)], master={"health_check_interval_ms": 0})
    stub = stream_stub(channels(gw.grpc_port))
    assert len([m async for m in stub(generate_input(41), timeout=10)]) == 8
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub(pb.GenerateInputPB(request_id=42), timeout=10):
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await wait_for(lambda: len(_access(caplog)) == 2, what="two access lines")
    ok, bad = _access(caplog)
    f = ok.__dict__
    assert (f["method"], f["code"], f["worker"], f["decode_worker"]) == (
        "GenerateStreamCall", "OK", worker_addr(p).key, worker_addr(d).key)
    assert 0 < f["ttft_ms"] <= f["duration_ms"]
    assert f["reason"] and f["attempts"] == 1 and f["request_id"] == 41 and f["messages"] == 8
    assert f"{worker_addr(p).key}+{worker_addr(d).key}" in ok.getMessage()
    b = bad.__dict__
    assert (b["code"], b["worker"], b["reason"], b["ttft_ms"], b["attempts"]) == (
        "INVALID_ARGUMENT", None, "no_tokens", None, 0)


def _record(code: str) -> CallRecord:
    return CallRecord("GenerateStreamCall", code, 0.05, 0.01, 1, 7, "10.0.0.1:1", "PDFUSION", None, "RANDOM",
                      "random", 64, 0, 8, "c1")


def test_sampling_keeps_every_failed_call(caplog) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    draws = iter([0.1, 0.9, 0.3, 0.7])
    log = AccessLog(0.5, rng=lambda: next(draws))
    for _ in range(4):
        log(_record("OK"))
    assert len(_access(caplog)) == 2  # the draws below 0.5
    AccessLog(0.0)(_record("UNAVAILABLE"))
    AccessLog(0.0)(_record("OK"))
    assert [r.__dict__["code"] for r in _access(caplog)] == ["OK", "OK", "UNAVAILABLE"]


def test_json_format_puts_fields_at_the_top_level() -> None:
    out = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        setup_logging(logging.INFO, "json", stream=out)
        AccessLog()(_record("OK"))
        logging.getLogger("flexlb.call").warning("worker %s ejected", "10.0.0.1:1")
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
    access, ejected = (json.loads(line) for line in out.getvalue().splitlines())
    assert access["logger"] == ACCESS_LOGGER and access["level"] == "INFO" and access["time"]
    assert (access["method"], access["code"], access["ttft_ms"], access["duration_ms"]) == (
        "GenerateStreamCall", "OK", 10.0, 50.0)
    assert ejected["message"] == "worker 10.0.0.1:1 ejected" and ejected["level"] == "WARNING"


async def test_ejections_and_failovers_are_logged_once_each(mock_workers, gateways, channels, caplog) -> None:
    caplog.set_level(logging.INFO)
    broken = await mock_workers(faults=Faults(error_rate=1.0, error_code=514))
    good = await mock_workers()
    gw = await gateways([worker_addr(broken), worker_addr(good)], strategy="ROUND_ROBIN",
                        master={"health_check_interval_ms": 0, "outlier_base_ejection_ms": 60_000})
    stub = stream_stub(channels(gw.grpc_port))
    for i in range(6):
        assert len([m async for m in stub(generate_input(500 + i), timeout=10)]) == 8
    key = worker_addr(broken).key
    lines = [r.getMessage() for r in caplog.records if r.name == "flexlb.call"]
    assert len([m for m in lines if m.startswith(f"worker {key}") and "ejected" in m]) == 1
    assert len([m for m in lines if m.startswith("failover of GenerateStreamCall") and key in m]) == 3
    # the access log shows the failed-over calls as OK on the good worker, after 2 attempts
    tried = [r for r in _access(caplog) if r.__dict__["attempts"] == 2]
    assert len(tried) == 3 and all(r.__dict__["worker"] == worker_addr(good).key for r in tried)


async def test_an_active_check_logs_the_worker_leaving_and_coming_back(mock_workers, gateways, caplog) -> None:
    caplog.set_level(logging.INFO, logger="flexlb.health")
    w = await mock_workers()
    addr = worker_addr(w)
    gw = await gateways([addr, worker_addr(await mock_workers())],
                        master={"health_check_interval_ms": 100, "health_check_timeout_ms": 100})
    state = gw.cluster.get(addr.key)
    assert state is not None
    await wait_for(lambda: state.last_probe_ok_s > 0, what="a first good probe")
    await w.stop(grace_s=0)
    await wait_for(lambda: not state.healthy, what="the dead worker out")
    await mock_workers(port=addr.grpc_port)
    await wait_for(lambda: state.healthy, what="the worker back")
    lines = [r.getMessage() for r in caplog.records if r.name == "flexlb.health" and addr.key in r.getMessage()]
    assert len([m for m in lines if "unhealthy, out of rotation" in m]) == 1
    assert len([m for m in lines if "healthy again" in m]) == 1


@pytest.mark.parametrize(("flags", "error"), [
    (["--log-level", "LOUD"], "--log-level: unknown value 'LOUD'; accepted: DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    (["--log-format", "xml"], "--log-format: unknown value 'xml'; accepted: text, json"),
    (["--access-log-sample", "1.5"], "--access-log-sample: '1.5' is out of range; accepted: 0 to 1"),
    (["--access-log-sample", "half"], "--access-log-sample: 'half' is not a number; accepted: 0 to 1"),
])
def test_bad_log_flags_are_one_line_and_exit_2(flags: list[str], error: str, capsys) -> None:
    assert main(["serve", *flags]) == 2
    err = capsys.readouterr().err
    assert err == f"flexlb: config error: {error}\n"


def test_log_flags_have_help(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--log-level LEVEL least severe level logged: DEBUG, INFO" in text
    assert "--log-format FORMAT text (default) or json" in text
    assert "--access-log-sample RATE" in text


async def test_flexlb_serve_log_format_json_writes_json_lines(mock_workers, channels) -> None:
    w = await mock_workers()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "flexlb", "serve", "--host", "127.0.0.1", "--port", "0", "--admin-port", "0",
        "--http-port", "0", "--worker", f"127.0.0.1:{w.port}", "--log-format", "json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "GRPC_VERBOSITY": "ERROR"})
    try:
        assert proc.stdout is not None and proc.stderr is not None
        ready = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        m = re.search(r"grpc [\d.]+:(\d+)", ready)
        assert m, ready
        stub = stream_stub(channels(int(m.group(1))))
        assert len([x async for x in stub(generate_input(77), timeout=10)]) == 8
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        lines = (await proc.stderr.read()).decode().splitlines()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    objects = [json.loads(line) for line in lines]  # every line is one JSON object
    access = [o for o in objects if o["logger"] == ACCESS_LOGGER]
    assert len(access) == 1 and access[0]["request_id"] == 77 and access[0]["code"] == "OK"
    assert any(o["logger"] == "flexlb" and "draining" in o["message"] for o in objects)
