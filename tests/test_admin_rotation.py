"""Operators take a worker out of rotation over the admin port; bad requests get 400 with a reason."""

from __future__ import annotations

import aiohttp
import pytest

from tests.conftest import generate_input, stream_stub, worker_addr


async def test_worker_out_of_rotation_by_hand_and_back(mock_workers, gateways, channels) -> None:
    a, b = await mock_workers(), await mock_workers()
    gw = await gateways([worker_addr(a), worker_addr(b)], strategy="ROUND_ROBIN")
    url = f"http://127.0.0.1:{gw.admin_port}/admin/workers/rotation"
    key = worker_addr(a).key
    stub = stream_stub(channels(gw.grpc_port))
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json={"worker": key, "in_rotation": False, "reason": "maintenance"}) as r:
            assert r.status == 200
            assert await r.json() == {"worker": key, "in_rotation": False, "in_flight": 0}
        for i in range(4):
            assert len([m async for m in stub(generate_input(940 + i), timeout=10)]) == 8
        assert a.calls_received == 0 and b.calls_received == 4
        async with http.get(f"http://127.0.0.1:{gw.admin_port}/actuator/info") as r:
            info = {w["worker"]: w for w in (await r.json())["workers"]}
        assert info[key]["operator_out"] and info[key]["notes"] == {"operator": "maintenance"}
        async with http.post(url, json={"worker": key, "in_rotation": True}) as r:
            assert r.status == 200
        for i in range(4):
            assert len([m async for m in stub(generate_input(950 + i), timeout=10)]) == 8
        assert a.calls_received > 0


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        ("{not json", 400, "not valid JSON"),
        ("[1, 2]", 400, "JSON object"),
        ('{"in_rotation": false}', 400, "'worker' is required"),
        ('{"worker": 7, "in_rotation": false}', 400, "'worker' is required"),
        ('{"worker": "127.0.0.1:1", "in_rotation": "no"}', 400, "'in_rotation' is required"),
        ('{"worker": "127.0.0.1:1", "in_rotation": false, "reason": 5}', 400, "'reason' must be a string"),
        ('{"worker": "10.9.9.9:1", "in_rotation": false}', 404, "unknown worker"),
    ],
)
async def test_bad_rotation_requests(mock_workers, gateways, body: str, status: int, reason: str) -> None:
    gw = await gateways([worker_addr(await mock_workers())])
    url = f"http://127.0.0.1:{gw.admin_port}/admin/workers/rotation"
    async with aiohttp.ClientSession() as http, http.post(
        url, data=body, headers={"Content-Type": "application/json"}
    ) as r:
        assert r.status == status
        assert reason in (await r.json())["error"]
    assert all(not w.operator_out for w in gw.cluster.all())  # a bad request changes nothing
