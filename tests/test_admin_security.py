"""The admin port: Bearer token on every mutating endpoint, loopback-only without one, its own bind address,
and bounded requests (size, depth, head and body read time, connections), all on a real aiohttp server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request

from flexlb.admin_http.api_routes import ApiRoutes
from flexlb.admin_http.consistency_routes import ConsistencyRoutes
from flexlb.admin_http.server import AdminServer
from flexlb.config import CliOverrides, ConfigError, ConsistencyConfig, load_settings
from flexlb.metrics import Metrics
from tests.conftest import wait_for, worker_addr

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "s3cret-admin-token"
GOOD = {"Authorization": f"Bearer {TOKEN}"}
# the reasons are part of the contract (tests/test_ha.py checks them on the consistency endpoints too)
MISSING_TOKEN = "missing bearer token (Authorization: Bearer <token>)"
WRONG_TOKEN = "wrong bearer token"
LOOPBACK_ONLY = "no admin token is configured: only loopback callers are accepted"
ROTATION = "/admin/workers/rotation"
SYNC = "/load-balance/prefill/consistency/syncStatus"
# short enough for a quick suite, long enough that an instant close would not pass as "timed out"
SHORT = 0.5
# upper bound on any close the tests wait for: the timeout plus generous scheduling slack
BOUND_S = SHORT + 2.5


def _non_loopback_address() -> str | None:
    """A local IPv4 address that is not loopback, if this host has one (found without sending a packet)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("198.51.100.1", 9))  # TEST-NET-2: routing picks the source address, nothing is sent
        ip = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    if ip.startswith("127.") or ip == "0.0.0.0":
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((ip, 0))
        except OSError:
            return None
    return ip


class _Rotations:
    """Stands in for Gateway.set_rotation and records what was changed."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool, str]] = []

    def __call__(self, worker: str, in_rotation: bool, reason: str) -> dict[str, Any] | None:
        self.calls.append((worker, in_rotation, reason))
        return {"worker": worker, "in_rotation": in_rotation, "in_flight": 0}


class _FakeConsistency:
    """What ConsistencyRoutes reads of Consistency, without ZooKeeper."""

    def __init__(self, token: str | None) -> None:
        self.token = token
        self.role_id = "r"
        self.is_master = True
        self.notifications = 0

    def master_http(self) -> str:
        return "127.0.0.1:1"

    async def master_snapshot(self) -> dict[str, Any]:
        return {"success": True, "lbStatus": {}}

    async def notified(self) -> None:
        self.notifications += 1


AdminFactory = Callable[..., Awaitable[AdminServer]]


@pytest.fixture
async def admin_servers() -> AsyncIterator[AdminFactory]:
    """Start AdminServers on loopback with the given token and limits; stopped after the test."""
    started: list[AdminServer] = []

    from flexlb.admin_http.limits import AdminLimits

    async def start(token: str | None = TOKEN, host: str = "127.0.0.1", **limits: Any) -> AdminServer:
        server = AdminServer(Metrics(), lambda: (True, {}), lambda: {"version": "test"}, _Rotations(),
                             token=token, limits=AdminLimits(**limits))
        routes = ConsistencyRoutes(_FakeConsistency(token))  # type: ignore[arg-type]
        server.add_routes(routes.register)
        server.add_routes(ApiRoutes(lambda: {"success": True}, lambda: False, dict).register)
        await server.start(host, 0)
        started.append(server)
        return server

    yield start
    for s in started:
        await s.stop()


async def _read_until_closed(reader: asyncio.StreamReader, got: asyncio.Event | None = None) -> bytes:
    """Everything the server sends until it closes (a reset counts as closed), bounded by BOUND_S."""
    out = b""

    async def drain() -> None:
        nonlocal out
        with contextlib.suppress(ConnectionResetError):
            while chunk := await reader.read(65536):
                out += chunk
                if got is not None:
                    got.set()

    await asyncio.wait_for(drain(), BOUND_S)
    return out


async def _slow_client(port: int, first: bytes, trickle: bytes = b"", every_s: float = 0.05,
                       host: str = "127.0.0.1") -> tuple[float, bytes]:
    """Send `first`, then `trickle` a byte every `every_s` until the server answers; (seconds to close, reply)."""
    reader, writer = await asyncio.open_connection(host, port)
    started = time.monotonic()
    writer.write(first)
    answered = asyncio.Event()

    async def drip() -> None:
        # the attacker's pacing, not synchronisation: one byte at a time, stopping once answered
        for b in trickle:
            await asyncio.sleep(every_s)
            if answered.is_set():
                return
            with contextlib.suppress(ConnectionError):
                writer.write(bytes([b]))

    dripping = asyncio.create_task(drip())
    try:
        reply = await _read_until_closed(reader, answered)
    finally:
        dripping.cancel()
        writer.close()
    return time.monotonic() - started, reply


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one Content-Length-framed response off a kept-alive connection; its status."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND_S)
    fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:-2])
    length = next(int(v) for k, v in fields.items() if k.lower() == b"content-length")
    await asyncio.wait_for(reader.readexactly(length), BOUND_S)
    return _status(head)


def _status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.") else 0


def _json_of(reply: bytes) -> dict[str, Any]:
    return json.loads(reply.split(b"\r\n\r\n", 1)[1])  # type: ignore[no-any-return]


def _request(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: admin"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# ------------------------------------------------------------------------------------------------ token


async def test_rotation_needs_the_token_when_one_is_set(mock_workers, gateways) -> None:
    # HA is off: the token still reaches the admin port
    gw = await gateways([worker_addr(await mock_workers())], consistency=ConsistencyConfig(admin_token=TOKEN))
    key = gw.cluster.all()[0].key
    base = f"http://127.0.0.1:{gw.admin_port}"
    out = {"worker": key, "in_rotation": False}
    async with aiohttp.ClientSession() as http:
        for headers, reason in (
            ({}, MISSING_TOKEN),
            ({"Authorization": f"Basic {TOKEN}"}, MISSING_TOKEN),
            ({"Authorization": "Bearer"}, MISSING_TOKEN),
            ({"Authorization": "Bearer wrong"}, WRONG_TOKEN),
            ({"Authorization": f"Bearer {TOKEN}x"}, WRONG_TOKEN),
        ):
            async with http.post(base + ROTATION, json=out, headers=headers) as r:
                assert r.status == 401, headers
                assert (await r.json()) == {"error": reason}
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert all(not w.operator_out for w in gw.cluster.all())  # a refused request changes nothing
        for path in ("/actuator/health", "/actuator/prometheus", "/actuator/info"):
            async with http.get(base + path) as r:
                assert r.status == 200, path  # read-only endpoints stay open
        async with http.post(base + ROTATION, json=out, headers=GOOD) as r:
            assert r.status == 200
            assert await r.json() == {"worker": key, "in_rotation": False, "in_flight": 0}
        async with http.post(base + ROTATION, json={**out, "in_rotation": True},
                             headers={"Authorization": f"bearer {TOKEN}"}) as r:
            assert r.status == 200  # the scheme is case-insensitive (RFC 7235)
    assert all(not w.operator_out for w in gw.cluster.all())


async def test_a_token_header_with_odd_bytes_is_401_not_500(admin_servers) -> None:
    admin = await admin_servers()
    for path in (ROTATION, SYNC):
        raw = _request("POST", path, b"{}", {"Connection": "close"})
        raw = raw.replace(b"Host: admin", b"Host: admin\r\nAuthorization: Bearer \xff\xfe")
        _, reply = await _slow_client(admin.port, raw)
        assert _status(reply) == 401, reply
        assert _json_of(reply)["error"] == WRONG_TOKEN


async def test_without_a_token_only_loopback_callers_may_mutate(mock_workers, gateways) -> None:
    ip = _non_loopback_address()
    if ip is None:
        pytest.skip("this host has no non-loopback address to call the admin port from")
    gw = await gateways([worker_addr(await mock_workers())], admin_host="0.0.0.0")
    key = gw.cluster.all()[0].key
    body = {"worker": key, "in_rotation": False}
    async with aiohttp.ClientSession() as http:
        # connecting to a non-loopback local address makes the kernel use it as the source: a real remote caller
        async with http.post(f"http://{ip}:{gw.admin_port}{ROTATION}", json=body, headers=GOOD) as r:
            assert r.status == 401
            assert (await r.json()) == {"error": LOOPBACK_ONLY}  # a token is no help when none is configured
        async with http.get(f"http://{ip}:{gw.admin_port}/actuator/health") as r:
            assert r.status == 200
        assert all(not w.operator_out for w in gw.cluster.all())
        async with http.post(f"http://127.0.0.1:{gw.admin_port}{ROTATION}", json=body) as r:
            assert r.status == 200
    assert gw.cluster.get(key).operator_out  # type: ignore[union-attr]


async def test_with_a_token_remote_callers_holding_it_may_mutate(mock_workers, gateways) -> None:
    ip = _non_loopback_address()
    if ip is None:
        pytest.skip("this host has no non-loopback address to call the admin port from")
    gw = await gateways([worker_addr(await mock_workers())], admin_host=ip,
                        consistency=ConsistencyConfig(admin_token=TOKEN))
    key = gw.cluster.all()[0].key
    async with aiohttp.ClientSession() as http:
        url = f"http://{ip}:{gw.admin_port}{ROTATION}"
        async with http.post(url, json={"worker": key, "in_rotation": False}) as r:
            assert r.status == 401
        async with http.post(url, json={"worker": key, "in_rotation": False}, headers=GOOD) as r:
            assert r.status == 200
    assert gw.cluster.get(key).operator_out  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("remote", "token", "headers", "refused"),
    [
        ("10.1.2.3", None, {}, LOOPBACK_ONLY),
        ("192.0.2.7", "", {}, LOOPBACK_ONLY),
        ("fd00::5", None, {}, LOOPBACK_ONLY),
        ("127.0.0.1", None, {}, None),
        ("127.3.4.5", None, {}, None),
        ("::1", None, {}, None),
        ("::ffff:127.0.0.1", None, {}, None),  # a dual-stack socket's view of an IPv4 loopback caller
        ("::ffff:10.0.0.1", None, {}, LOOPBACK_ONLY),
        ("10.1.2.3", TOKEN, GOOD, None),
        ("127.0.0.1", TOKEN, {}, MISSING_TOKEN),  # with a token, loopback callers need it too
        ("127.0.0.1", TOKEN, {"X-Forwarded-For": "127.0.0.1", "Authorization": "Bearer no"}, WRONG_TOKEN),
    ],
)
def test_refusal_rules(remote: str, token: str | None, headers: dict[str, str], refused: str | None) -> None:
    from flexlb.admin_http.auth import refusal

    request = make_mocked_request("POST", ROTATION, headers=headers)
    request = request.clone(remote=remote)
    assert refusal(request, token) == refused


async def test_consistency_endpoints_share_the_check_and_the_body_rules(admin_servers) -> None:
    admin = await admin_servers()
    base = f"http://127.0.0.1:{admin.port}"
    async with aiohttp.ClientSession() as http:
        async with http.post(base + SYNC, json={"roleId": "r"}) as r:
            assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
            assert await r.json() == {"success": False, "error": MISSING_TOKEN}
        async with http.post(base + SYNC, data=b"[" * 50_000, headers=GOOD) as r:
            assert r.status == 400
            body = await r.json()
            assert body["success"] is False and "nested deeper than 64" in body["error"]
        async with http.post(base + SYNC, json={"roleId": "r"}, headers=GOOD) as r:
            assert r.status == 200 and (await r.json())["success"]
        async with http.post(base + "/rtp_llm/master/info", json={}) as r:
            assert r.status == 200  # open and read-only


# ------------------------------------------------------------------------------------------------ --admin-host


async def test_admin_port_binds_on_its_own_host(mock_workers, gateways, channels) -> None:
    gw = await gateways([worker_addr(await mock_workers())], admin_host="127.0.0.2")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.2:{gw.admin_port}/actuator/info") as r:
            assert r.status == 200
            assert (await r.json())["config"]["server"]["admin_host"] == "127.0.0.2"
        with pytest.raises(aiohttp.ClientConnectionError):
            async with http.get(f"http://127.0.0.1:{gw.admin_port}/actuator/health"):
                pass
    # the gRPC port stays on --host
    with socket.create_connection(("127.0.0.1", gw.grpc_port), timeout=2):
        pass


@pytest.mark.parametrize("value", ["1.2.3.4:80", "not a host", "999.1.1.1", "-bad"])
def test_bad_admin_host_is_a_config_error_naming_the_flag(value: str) -> None:
    with pytest.raises(ConfigError) as ei:
        load_settings({}, CliOverrides(fused=("127.0.0.1:7001",), admin_host=value))
    assert ei.value.field_path == "--admin-host"


def test_serve_with_a_bad_admin_host_exits_2_naming_the_flag() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WHALE_", "FLEXLB_", "MODEL_SERVICE"))}
    result = subprocess.run(
        [sys.executable, "-m", "flexlb", "serve", "--worker", "127.0.0.1:7001", "--admin-host", "10.0.0.1:7002"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "flexlb: config error: --admin-host:" in result.stderr, result.stderr
    assert load_settings({}, CliOverrides(fused=("127.0.0.1:7001",), admin_host="[::1]")).server.admin_host == "::1"


# ------------------------------------------------------------------------------------------------ bodies


async def test_body_over_the_limit_is_413(admin_servers) -> None:
    admin = await admin_servers()
    big = json.dumps({"worker": "10.0.0.1:1", "in_rotation": False, "pad": "x" * 100_000}).encode()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{admin.port}{ROTATION}", data=big, headers=GOOD) as r:
            assert r.status == 413
            assert "limit is 65536" in (await r.json())["error"]

        async def chunks() -> AsyncIterator[bytes]:
            # no Content-Length: the limit is found while reading
            for i in range(0, len(big), 8192):
                yield big[i:i + 8192]

        async with http.post(f"http://127.0.0.1:{admin.port}{ROTATION}", data=chunks(), headers=GOOD) as r:
            assert r.status == 413
            assert "65536-byte limit" in (await r.json())["error"]
    assert admin._set_rotation.calls == []  # type: ignore[union-attr]


async def test_bad_bodies_are_400_with_a_reason_never_500(admin_servers) -> None:
    admin = await admin_servers()
    ok = {"worker": "10.0.0.1:1", "in_rotation": False}

    def nested(levels: int) -> bytes:
        return json.dumps({**ok, "x": json.loads("[" * (levels - 1) + "]" * (levels - 1))}).encode()

    cases: list[tuple[bytes, dict[str, str], int, str]] = [
        (b"[" * 50_000, {}, 400, "nested deeper than 64 levels"),  # json.loads would raise RecursionError
        (b'{"a":' * 10_000 + b"1" + b"}" * 10_000, {}, 400, "nested deeper than 64 levels"),
        (nested(65), {}, 400, "nested deeper than 64 levels"),
        (nested(64), {}, 200, ""),
        (json.dumps({**ok, "s": "[" * 500}).encode(), {}, 200, ""),  # brackets in strings are not nesting
        (json.dumps(ok).encode(), {"Content-Type": "application/json; charset=no-such"}, 400, "unknown charset"),
        (b"{not json", {}, 400, "not valid JSON"),
        (b'{"a": "\xff"}', {}, 400, "not valid JSON"),
        (b"1" * 5000, {}, 400, "not valid JSON"),
        (b"[1, 2]", {}, 400, "must be a JSON object"),
        (b'"text"', {}, 400, "must be a JSON object"),
        (b"", {}, 400, "not valid JSON"),
    ]
    async with aiohttp.ClientSession() as http:
        for data, headers, status, reason in cases:
            async with http.post(f"http://127.0.0.1:{admin.port}{ROTATION}", data=data,
                                 headers={"Content-Type": "application/json", **GOOD, **headers}) as r:
                assert r.status == status, (data[:40], await r.text())
                if reason:
                    assert reason in (await r.json())["error"], data[:40]


@pytest.mark.parametrize(
    ("raw", "exceeds"),
    [
        (b"[" * 64 + b"]" * 64, False),
        (b"[" * 65 + b"]" * 65, True),
        (b'{"a": "[[[[[[[[", "b": "\\"[[[[["}', False),
        (b'["\\\\", ' + b"[" * 64 + b"]" * 64 + b"]", True),  # an escaped backslash does not hide a quote
        (b'"unterminated [[[[', False),
    ],
)
def test_json_depth_scan(raw: bytes, exceeds: bool) -> None:
    from flexlb.admin_http.body import json_depth_exceeds

    assert json_depth_exceeds(raw, 64) is exceeds


# ------------------------------------------------------------------------------------------------ head limits


async def test_header_count_and_size_limits(admin_servers) -> None:
    admin = await admin_servers()
    many = {f"X-{i}": "a" for i in range(40)}
    _, reply = await _slow_client(admin.port, _request("GET", "/actuator/health", headers=many))
    assert _status(reply) == 400 and b"Too many headers" in reply
    big = {f"X-{i}": "a" * 8000 for i in range(5)}  # each field fits, the head does not
    _, reply = await _slow_client(admin.port, _request("GET", "/actuator/health", headers=big))
    assert _status(reply) == 431 and "the limit is 32768" in _json_of(reply)["error"]
    _, reply = await _slow_client(admin.port, _request("GET", "/actuator/health?q=" + "a" * 9000))
    assert _status(reply) == 400
    fine = {f"X-{i}": "a" * 1000 for i in range(20)}
    fine["Connection"] = "close"
    _, reply = await _slow_client(admin.port, _request("GET", "/actuator/health", headers=fine))
    assert _status(reply) == 200


# ------------------------------------------------------------------------------------------------ slow clients


@pytest.mark.parametrize(
    ("first", "trickle", "what"),
    [
        (b"GET /actuator/hea", b"", "half a request line"),
        (b"GET /actuator/health HTTP/1.1\r\nHost: admin\r\nX-Slow: ", b"", "half the headers"),
        (b"", b"", "nothing at all"),
        (b"G", b"ET /actuator/health HTTP/1.1\r\nHost: admin\r\nX-Pad: " + b"a" * 200, "a head a byte at a time"),
    ],
)
async def test_slow_request_head_is_cut_off(admin_servers, first: bytes, trickle: bytes, what: str) -> None:
    admin = await admin_servers(header_timeout_s=SHORT)
    took, reply = await _slow_client(admin.port, first, trickle)
    assert SHORT * 0.9 <= took < BOUND_S, (what, took)
    assert _status(reply) == 408, (what, reply)
    assert "request head not received within 0.5 s" in _json_of(reply)["error"]
    await wait_for(lambda: admin.open_connections == 0, what="the connection released")


async def test_dribbled_body_is_cut_off(admin_servers) -> None:
    admin = await admin_servers(body_timeout_s=SHORT)
    head = _request("POST", ROTATION, headers=GOOD).replace(b"Content-Length: 0", b"Content-Length: 1000")
    took, reply = await _slow_client(admin.port, head + b'{"worker": "', b"a" * 900)
    assert SHORT * 0.9 <= took < BOUND_S, took
    assert _status(reply) == 408, reply
    assert b"Connection: close" in reply
    assert "request body not received within 0.5 s" in _json_of(reply)["error"]
    assert admin._set_rotation.calls == []  # type: ignore[union-attr]


async def test_dribbled_body_to_a_refused_request_is_cut_off_too(admin_servers) -> None:
    # the 401 goes out at once; the unread body is not drained for longer than the body timeout
    admin = await admin_servers(body_timeout_s=SHORT)
    head = _request("POST", ROTATION).replace(b"Content-Length: 0", b"Content-Length: 1000")
    reader, writer = await asyncio.open_connection("127.0.0.1", admin.port)
    started = time.monotonic()
    writer.write(head + b"{")
    dripping = asyncio.create_task(_drip(writer, b" " * 900))
    try:
        reply = await _read_until_closed(reader)
    finally:
        dripping.cancel()
        writer.close()
    assert SHORT * 0.9 <= time.monotonic() - started < BOUND_S
    assert _status(reply) == 401


async def _drip(writer: asyncio.StreamWriter, data: bytes, every_s: float = 0.05) -> None:
    for b in data:
        await asyncio.sleep(every_s)
        with contextlib.suppress(ConnectionError):
            writer.write(bytes([b]))


async def test_second_request_head_on_a_kept_alive_connection_is_timed_from_its_first_byte(admin_servers) -> None:
    admin = await admin_servers(header_timeout_s=SHORT)
    reader, writer = await asyncio.open_connection("127.0.0.1", admin.port)
    try:
        writer.write(_request("GET", "/actuator/health"))
        assert await _read_response(reader) == 200
        # idle longer than the head timeout: keep-alive, not a slow head, so the connection stays
        await asyncio.sleep(SHORT * 2)
        writer.write(_request("GET", "/actuator/info"))
        assert await _read_response(reader) == 200
        # now a third request, half sent: cut off a head timeout after its first byte
        started = time.monotonic()
        writer.write(b"GET /actuator/he")
        reply = await _read_until_closed(reader)
        assert SHORT * 0.9 <= time.monotonic() - started < BOUND_S
        assert _status(reply) == 408
    finally:
        writer.close()


async def test_connections_are_capped(admin_servers) -> None:
    admin = await admin_servers(max_connections=2, header_timeout_s=30.0)
    held = [await asyncio.open_connection("127.0.0.1", admin.port) for _ in range(2)]
    await wait_for(lambda: admin.open_connections == 2, what="two connections held")
    took, reply = await _slow_client(admin.port, b"")
    assert took < BOUND_S and _status(reply) == 503
    assert "too many admin connections (limit 2)" in _json_of(reply)["error"]
    _, writer = held.pop()
    writer.close()
    await wait_for(lambda: admin.open_connections == 1, what="a slot freed")
    _, reply = await _slow_client(admin.port, _request("GET", "/actuator/health", headers={"Connection": "close"}))
    assert _status(reply) == 200
    for _, w in held:
        w.close()
