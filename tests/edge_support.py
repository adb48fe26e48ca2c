"""Helpers shared by the edge attack tests (tests/test_edge_*.py)."""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest

from flexlb.app import Gateway
from tests.conftest import generate_input, stream_stub, wait_for

# frame-level outcomes are the frame relay's; grpc C-core has its own (the grpcio engine is checked for survival)
H2_ONLY = pytest.mark.parametrize("gateways", ["h2"], indirect=True)


async def served(channel: grpc.aio.Channel, request_id: int = 900, timeout_s: float = 5.0) -> None:
    """A well-behaved gRPC client's call is answered in full."""
    messages = [m async for m in stream_stub(channel)(generate_input(request_id), timeout=timeout_s)]
    assert len(messages) == 8, f"a well-behaved call got {len(messages)} of 8 messages"


async def released(gw: Gateway, what: str = "the attacker's calls released") -> None:
    """Nothing left in flight: the dispatcher and every worker are back to 0."""
    await wait_for(lambda: gw.cluster.ledger.calls == 0, 5.0, what)


def protocol_errors(gw: Gateway, scope: str, code: str) -> float:
    """flexlb_client_protocol_errors_total summed over reasons, for one scope and error code name."""
    total = 0.0
    for metric in gw.metrics.registry.collect():
        if metric.name == "flexlb_client_protocol_errors":
            for s in metric.samples:
                if s.name.endswith("_total") and s.labels.get("scope") == scope and s.labels.get("code") == code:
                    total += s.value
    return total


def upstream_pool(gw: Gateway) -> dict[str, list[Any]]:
    """The h2 engine's pooled worker connections by worker key ({} for the grpcio engine)."""
    if gw.edge is None:
        return {}
    return {k: list(v) for k, v in gw.edge._upstreams.items() if k != "control"}


def assert_same_pool(gw: Gateway, before: dict[str, list[Any]]) -> None:
    """Every pooled worker connection from `before` is still pooled, the same object, and open."""
    now = upstream_pool(gw)
    for key, conns in before.items():
        for conn in conns:
            assert any(c is conn for c in now.get(key, [])), f"worker connection {key} was replaced or dropped"
            assert not conn.closed, f"worker connection {key} was closed"


def unhandled(loop_errors: list[dict[str, Any]], caplog: pytest.LogCaptureFixture) -> list[str]:
    """Errors nobody handled: loop exception-handler calls and ERROR logs of the gateway or of asyncio."""
    out = [f"{c.get('message')}: {c.get('exception')!r}" for c in loop_errors]
    out += [f"{r.name}: {r.getMessage()}" for r in caplog.records
            if r.levelno >= logging.ERROR and r.name.split(".")[0] in ("flexlb", "asyncio")]
    return out


def routing_decisions(gw: Gateway) -> float:
    """Calls the dispatcher routed (flexlb_routing_decisions_total over every strategy and reason)."""
    return sum(s.value for metric in gw.metrics.registry.collect() if metric.name == "flexlb_routing_decisions"
               for s in metric.samples if s.name.endswith("_total"))
