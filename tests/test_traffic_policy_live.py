"""The traffic policy acted on: a relayed call's api key header, and Schedule's api_key, pin the worker group."""

from __future__ import annotations

import pytest

from flexlb.balancer.traffic_policy import TrafficPolicy
from flexlb.call.metadata import api_key
from flexlb.config_values import ConfigError
from flexlb.flexlb_env import parse_traffic_policy
from flexlb.pb import flexlb_schedule_service_pb2 as fpb
from tests.conftest import generate_input, stream_stub, worker_addr

POLICY = {"enabled": True, "default_group": "g1",
          "rules": [{"name": "vip", "api_keys": ["k-vip"], "target_group": "g2"}]}


def test_api_key_is_read_as_the_frontend_reads_it() -> None:
    assert api_key([("x-api-key", "a")]) == "a"
    assert api_key([("api-key", "b"), ("authorization", "Bearer c")]) == "b"
    assert api_key([("authorization", "Bearer  c ")]) == "c"
    assert api_key([("authorization", "Basic xyz")]) == ""
    assert api_key([]) == ""


async def test_relayed_calls_and_schedule_follow_the_policy(mock_workers, gateways, channels) -> None:
    w1, w2 = await mock_workers(time_scale=0.0), await mock_workers(time_scale=0.0)
    policy = parse_traffic_policy("trafficPolicy", POLICY)
    assert isinstance(policy, TrafficPolicy)
    gw = await gateways([worker_addr(w1, "g1"), worker_addr(w2, "g2")], strategy="ROUND_ROBIN",
                        master={"traffic_policy": policy})
    stub = stream_stub(channels(gw.grpc_port))
    for i in range(4):
        assert len([m async for m in stub(generate_input(700 + i), metadata=(("x-api-key", "k-vip"),),
                                          timeout=10)]) == 8
        assert len([m async for m in stub(generate_input(800 + i), metadata=(("authorization", "Bearer other"),),
                                          timeout=10)]) == 8
    # round-robin would have split both kinds over both workers: the policy pins each key to its group
    assert (w1.calls_received, w2.calls_received) == (4, 4)
    schedule = channels(gw.grpc_port).unary_unary(
        "/FlexlbService/Schedule", request_serializer=fpb.FlexlbScheduleRequestPB.SerializeToString,
        response_deserializer=fpb.FlexlbScheduleResponsePB.FromString)
    for i in range(3):
        vip = await schedule(fpb.FlexlbScheduleRequestPB(request_id=900 + i, seq_len=64, api_key="k-vip"), timeout=5)
        assert vip.success and [s.grpc_port for s in vip.server_status] == [w2.port]
        rest = await schedule(fpb.FlexlbScheduleRequestPB(request_id=950 + i, seq_len=64), timeout=5)
        assert rest.success and [s.grpc_port for s in rest.server_status] == [w1.port]


def test_a_bad_policy_names_the_field() -> None:
    with pytest.raises(ConfigError) as info:
        parse_traffic_policy("TRAFFIC_POLICY_CONFIG", {"rules": [{"api_keys": ["k"], "target_group": "g"}]})
    assert "TRAFFIC_POLICY_CONFIG.rules[0].name" in str(info.value)
