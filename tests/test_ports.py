"""Port flags: 0-65535 (0 picks a free port), and a port already in use is one line naming it and its flag."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from flexlb.app import BindError, Gateway
from flexlb.balancer.workers import Role, WorkerAddr
from flexlb.config import Deploy, MasterConfig, ServerConfig, Settings

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = ["--host", "127.0.0.1"]
FREE_PORTS = ["--http-port", "0", "--port", "0", "--admin-port", "0"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("WHALE_", "FLEXLB_", "MODEL_SERVICE", "DOMAIN_ADDRESS", "HIPPO_"))}
    # grpc C-core's own log lines are not what is checked here: at its default verbosity it logs a failed bind
    env["GRPC_VERBOSITY"] = "ERROR"
    return env


def serve(*flags: str) -> subprocess.CompletedProcess[str]:
    # the flags after FREE_PORTS win (argparse keeps the last value)
    return subprocess.run([sys.executable, "-m", "flexlb", "serve", "--worker", "127.0.0.1:1", *LOOPBACK, *FREE_PORTS,
                           *flags], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(("flags", "says"), [
    (["--port", "70000"], "--port: must be <= 65535 (0 picks a free port), got 70000"),
    (["--http-port", "65536"], "--http-port: must be <= 65535 (0 picks a free port), got 65536"),
    (["--admin-port", "99999"], "--admin-port: must be <= 65535 (0 picks a free port), got 99999"),
    (["--server.port=70000"], "--http-port: must be <= 65535 (0 picks a free port), got 70000"),
    (["--management.server.port", "70000"], "--admin-port: must be <= 65535 (0 picks a free port), got 70000"),
    (["--port", "-1"], "--port: must be >= 0, got -1"),
])
def test_a_port_out_of_range_is_one_line_and_exit_2(flags: list[str], says: str) -> None:
    out = serve(*flags)
    assert out.returncode == 2
    assert out.stderr.splitlines() == [f"flexlb: config error: {says}"]
    assert out.stdout == ""


def test_mock_worker_port_out_of_range() -> None:
    out = subprocess.run([sys.executable, "-m", "flexlb", "mock-worker", "--port", "70000"], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2
    assert out.stderr.splitlines() == ["flexlb mock-worker: --port: must be 0 to 65535 (0 picks a free port), "
                                       "got 70000"]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another process-like listener holds for the test."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield sock.getsockname()[1]


@pytest.mark.parametrize(("flags", "which"), [
    (["--port", "{p}"], "the gRPC port (--port)"),
    (["--port", "{p}", "--relay-engine", "grpcio"], "the gRPC port (--port)"),
    (["--http-port", "{p}"], "the HTTP API port (--server.port / --http-port)"),
    (["--server.port={p}"], "the HTTP API port (--server.port / --http-port)"),
    (["--admin-port", "{p}"], "the management port (--management.server.port / --admin-port)"),
])
def test_a_port_in_use_is_one_line_naming_port_and_flag(taken_port: int, flags: list[str], which: str) -> None:
    out = serve(*(f.format(p=taken_port) for f in flags))
    assert out.returncode == 2, out.stderr
    assert out.stderr.splitlines() == [f"flexlb: cannot listen on 127.0.0.1:{taken_port}, {which}: "
                                       "address already in use"]
    assert "listening" not in out.stdout


async def test_a_port_in_use_stops_startup_before_any_worker_is_probed(taken_port: int) -> None:
    # a probe of a dead worker started before the last bind raced the port's one error line into the log
    settings = Settings(server=ServerConfig(host="127.0.0.1", http_port=taken_port, grpc_port=0, admin_port=0),
                        master=MasterConfig(), workers=(WorkerAddr("127.0.0.1", 1, 0, Role.PDFUSION),),
                        deploy=Deploy.PD_FUSION)
    gw = Gateway(settings, seed=1)
    try:
        with pytest.raises(BindError, match=f"cannot listen on 127.0.0.1:{taken_port}, the HTTP API port"):
            await gw.start()
        assert gw.health_checker is not None
        assert gw.health_checker.probed() == [] and gw.health_checker.probes == 0
    finally:
        await gw.stop(grace_s=0)
