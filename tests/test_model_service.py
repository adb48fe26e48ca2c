"""MODEL_SERVICE_CONFIG parsing (flexlb/model_service.py), called directly."""

from __future__ import annotations

import json

import pytest

from flexlb.balancer.workers import Role, WorkerAddr
from flexlb.config import ConfigError
from flexlb.model_service import GRPC_PORT_OFFSET, cli_workers, parse_model_service


def test_http_ports_are_http_and_grpc_ports_are_grpc() -> None:
    assert GRPC_PORT_OFFSET == 1
    raw = {
        "service_id": "svc",
        "prefill_endpoint": {"type": "SpecifiedIpPortList", "address": json.dumps(["10.0.0.1:8000"])},
        "decode_endpoint": {"type": "SpecifiedIpPortList", "address": ["10.0.0.2:9001"], "protocol": "GRPC"},
    }
    assert parse_model_service(raw, {}) == (
        "svc",
        [WorkerAddr("10.0.0.1", 8001, 8000, Role.PREFILL, ""), WorkerAddr("10.0.0.2", 9001, 9000, Role.DECODE, "")],
    )


def test_role_endpoints_and_endpoint_aliases() -> None:
    raw = {
        "fusion_endpoint": {"type": "SpecifiedIpPortList", "address": ["[::1]:7000"], "protocol": "grpc"},
        "role_endpoints": [{"group": "g", "pdfusion_endpoint": {"address": "eng"}}],
    }
    env = {"DOMAIN_ADDRESS:eng": "10.1.0.1:8080, ,10.1.0.2:8080"}
    _, workers = parse_model_service(raw, env)
    assert workers == [
        WorkerAddr("::1", 7000, 6999, Role.PDFUSION, ""),
        WorkerAddr("10.1.0.1", 8081, 8080, Role.PDFUSION, "g"),
        WorkerAddr("10.1.0.2", 8081, 8080, Role.PDFUSION, "g"),
    ]


def test_errors_name_the_variable_given() -> None:
    with pytest.raises(ConfigError) as info:
        parse_model_service({"decode_endpoint": {"type": "SpecifiedIpPortList", "address": ["x"]}}, {}, "SVC")
    assert str(info.value) == "SVC.decode_endpoint.address[0]: expected 'ip:port', got 'x'"
    with pytest.raises(ConfigError) as info:
        parse_model_service({"decode_endpoint": {"address": "nowhere"}}, {})
    assert info.value.field_path == "MODEL_SERVICE_CONFIG.decode_endpoint.address"
    assert "DOMAIN_ADDRESS:nowhere" in str(info.value)


def test_cli_workers_are_grpc_ports() -> None:
    assert cli_workers("--worker", ("127.0.0.1:5001",), Role.PDFUSION) == [
        WorkerAddr("127.0.0.1", 5001, 5000, Role.PDFUSION)
    ]
    with pytest.raises(ConfigError) as info:
        cli_workers("--decode", ("127.0.0.1",), Role.DECODE)
    assert info.value.field_path == "--decode"
