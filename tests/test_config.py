"""Configuration: the original FlexLB environment JSON, CLI overrides, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flexlb.balancer.request import Deploy
from flexlb.balancer.strategies import strategy_names
from flexlb.balancer.workers import Role, WorkerAddr
from flexlb.cli import _spring_to_flags
from flexlb.config import (
    CliOverrides,
    ConfigError,
    ConsistencyConfig,
    EdgeLimits,
    KvCacheMode,
    Settings,
    load_settings,
)

ROOT = Path(__file__).resolve().parent.parent

README_MASTER = {
    "deploy": "DISAGGREGATED",
    "loadBalanceStrategy": "ROUND_ROBIN_LOWEST_CONCURRENCY",
    "prefillBatchWaitTimeMs": 100,
    "kvCache": "LOCAL_STATIC",
    "staticCacheBlockSize": 500,
    "batchSize": 1,
    "prefillLbTimeoutMs": 300,
    "prefillGenerateTimeoutMs": 5000,
    "enableGrpcPrefillMaster": False,
}


def endpoint(*addrs: str, protocol: str | None = "http", as_string: bool = True) -> dict[str, Any]:
    """A SpecifiedIpPortList endpoint; the original puts the list in `address` as a JSON-array string."""
    ep: dict[str, Any] = {
        "type": "SpecifiedIpPortList",
        "address": json.dumps(list(addrs)) if as_string else list(addrs),
    }
    if protocol is not None:
        ep["protocol"] = protocol
    return ep


README_SERVICE = {
    "service_id": "aigc.text-generation.generation.engine_service",
    "prefill_endpoint": endpoint("127.0.0.1:8000", "127.0.0.2:8000", protocol="http"),
    "decode_endpoint": endpoint("127.0.0.3:9001", protocol="grpc"),
}


def env_of(master: Any = None, service: Any = None, consistency: Any = None, **extra: str) -> dict[str, str]:
    env: dict[str, str] = {}
    if master is not None:
        env["WHALE_MASTER_CONFIG"] = master if isinstance(master, str) else json.dumps(master)
    if service is not None:
        env["MODEL_SERVICE_CONFIG"] = service if isinstance(service, str) else json.dumps(service)
    if consistency is not None:
        env["WHALE_SYNC_LB_CONSISTENCY_CONFIG"] = (
            consistency if isinstance(consistency, str) else json.dumps(consistency)
        )
    env.update(extra)
    return env


def config_error(env: dict[str, str], cli: CliOverrides | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings(env, cli or CliOverrides())
    return info.value


# ---------------------------------------------------------------------------------------------- happy paths


def test_readme_example() -> None:
    s = load_settings(env_of(README_MASTER, README_SERVICE), CliOverrides())
    assert isinstance(s, Settings)
    assert s.deploy is Deploy.DISAGGREGATED
    assert s.service_id == "aigc.text-generation.generation.engine_service"
    m = s.master
    assert m.deploy is Deploy.DISAGGREGATED
    assert m.load_balance_strategy == "ROUND_ROBIN_LOWEST_CONCURRENCY"
    assert m.prefill_batch_wait_time_ms == 100
    assert m.kv_cache is KvCacheMode.LOCAL_STATIC
    assert m.static_cache_block_size == 500
    assert m.batch_size == 1
    assert m.prefill_lb_timeout_ms == 300
    assert m.prefill_generate_timeout_ms == 5000
    assert m.enable_grpc_prefill_master is False
    # http endpoints give the HTTP port (gRPC = +1); grpc endpoints give the gRPC port (HTTP = -1)
    assert s.workers == (
        WorkerAddr("127.0.0.1", 8001, 8000, Role.PREFILL, ""),
        WorkerAddr("127.0.0.2", 8001, 8000, Role.PREFILL, ""),
        WorkerAddr("127.0.0.3", 9001, 9000, Role.DECODE, ""),
    )
    assert s.consistency == ConsistencyConfig()


def test_protocol_defaults_to_http_and_address_may_be_a_list() -> None:
    service = {"pd_fusion_endpoint": endpoint("10.0.0.1:8080", protocol=None, as_string=False)}
    s = load_settings(env_of(service=service), CliOverrides())
    assert s.workers == (WorkerAddr("10.0.0.1", 8081, 8080, Role.PDFUSION, ""),)
    assert s.deploy is Deploy.PD_FUSION


def test_pd_fusion_endpoint() -> None:
    service = {"pd_fusion_endpoint": endpoint("127.0.0.1:7000", "127.0.0.1:7010", protocol="grpc")}
    s = load_settings(env_of({"loadBalanceStrategy": "RANDOM"}, service), CliOverrides())
    assert s.deploy is Deploy.PD_FUSION
    assert s.master.load_balance_strategy == "RANDOM"
    assert [(w.ip, w.grpc_port, w.http_port, w.role) for w in s.workers] == [
        ("127.0.0.1", 7000, 6999, Role.PDFUSION),
        ("127.0.0.1", 7010, 7009, Role.PDFUSION),
    ]


def test_role_endpoints_with_groups() -> None:
    service = {
        "role_endpoints": [
            {
                "group": "g1",
                "prefill_endpoint": endpoint("10.0.1.1:8000"),
                "decode_endpoint": endpoint("10.0.1.2:8000"),
            },
            {
                "group": "g2",
                "prefill_endpoint": endpoint("10.0.2.1:8000", "10.0.2.3:8000"),
                "decode_endpoint": endpoint("10.0.2.2:9001", protocol="grpc"),
            },
        ]
    }
    s = load_settings(env_of(service=service), CliOverrides())
    assert s.deploy is Deploy.DISAGGREGATED
    assert {(w.ip, w.role, w.group) for w in s.workers} == {
        ("10.0.1.1", Role.PREFILL, "g1"),
        ("10.0.1.2", Role.DECODE, "g1"),
        ("10.0.2.1", Role.PREFILL, "g2"),
        ("10.0.2.3", Role.PREFILL, "g2"),
        ("10.0.2.2", Role.DECODE, "g2"),
    }
    decode_g2 = next(w for w in s.workers if w.ip == "10.0.2.2")
    assert (decode_g2.grpc_port, decode_g2.http_port) == (9001, 9000)


def test_flexlb_config_alias() -> None:
    env = {
        "FLEXLB_CONFIG": json.dumps({"loadBalanceStrategy": "LOWEST_CONCURRENCY", "batchSize": 4}),
        "MODEL_SERVICE_CONFIG": json.dumps(README_SERVICE),
    }
    s = load_settings(env, CliOverrides())
    assert s.master.load_balance_strategy == "LOWEST_CONCURRENCY"
    assert s.master.batch_size == 4
    # errors name the variable that was actually used
    env["FLEXLB_CONFIG"] = json.dumps({"batchSize": "abc"})
    assert config_error(env).field_path == "FLEXLB_CONFIG.batchSize"


def test_whale_master_config_takes_precedence_over_alias() -> None:
    env = env_of(
        {"loadBalanceStrategy": "ROUND_ROBIN"},
        README_SERVICE,
        FLEXLB_CONFIG=json.dumps({"loadBalanceStrategy": "RANDOM"}),
    )
    assert load_settings(env, CliOverrides()).master.load_balance_strategy == "ROUND_ROBIN"


def test_domain_address_static_discovery() -> None:
    service = {
        "pd_fusion_endpoint": {"type": "DomainAddress", "address": "engine.example", "protocol": "http"}
    }
    env = env_of(service=service, **{"DOMAIN_ADDRESS:engine.example": "10.1.0.1:8080, 10.1.0.2:8080"})
    s = load_settings(env, CliOverrides())
    assert s.workers == (
        WorkerAddr("10.1.0.1", 8081, 8080, Role.PDFUSION, ""),
        WorkerAddr("10.1.0.2", 8081, 8080, Role.PDFUSION, ""),
    )
    err = config_error(env_of(service=service))
    assert err.field_path == "MODEL_SERVICE_CONFIG.pd_fusion_endpoint.address"
    assert "DOMAIN_ADDRESS:engine.example" in str(err)


def test_consistency_config() -> None:
    cons = {
        "needConsistency": True,
        "masterElectType": "ZOOKEEPER",
        "zookeeperConfig": {"zkHost": "zk1:2181,zk2:2181/flexlb", "zkTimeoutMs": 5000},
    }
    s = load_settings(env_of(service=README_SERVICE, consistency=cons), CliOverrides())
    assert s.consistency == ConsistencyConfig(True, "ZOOKEEPER", "zk1:2181,zk2:2181/flexlb", 5000)
    # the alias name is read too
    env = env_of(service=README_SERVICE, FLEXLB_SYNC_CONSISTENCY_CONFIG=json.dumps(cons))
    assert load_settings(env, CliOverrides()).consistency.need_consistency is True


def test_consistency_needs_zk_host() -> None:
    cons = {"needConsistency": "true", "zookeeperConfig": {"zkTimeoutMs": 5000}}
    err = config_error(env_of(service=README_SERVICE, consistency=cons))
    assert err.field_path == "WHALE_SYNC_LB_CONSISTENCY_CONFIG.zookeeperConfig.zkHost"
    assert "required" in str(err)
    # without consistency no host is needed
    cons["needConsistency"] = False
    assert (
        load_settings(env_of(service=README_SERVICE, consistency=cons), CliOverrides()).consistency.zk_host
        == ""
    )


def test_cli_overrides_win() -> None:
    env = env_of(README_MASTER, README_SERVICE)
    cli = CliOverrides(
        host="127.0.0.1",
        grpc_port=0,
        admin_port=0,
        strategy="random",
        decode_strategy="ROUND_ROBIN",
        max_message_bytes=2048,
        upstream_channels=3,
        drain_timeout_s=1.5,
    )
    s = load_settings(env, cli)
    assert s.master.load_balance_strategy == "RANDOM"
    assert s.master.decode_load_balance_strategy == "ROUND_ROBIN"
    assert (s.server.host, s.server.grpc_port, s.server.admin_port) == ("127.0.0.1", 0, 0)
    assert s.server.max_receive_message_bytes == s.server.max_send_message_bytes == 2048
    assert s.server.upstream_channels_per_worker == 3
    assert s.server.drain_timeout_s == 1.5
    # env values not overridden survive
    assert s.master.prefill_batch_wait_time_ms == 100


def test_cli_workers_replace_env_workers() -> None:
    # CLI addresses are gRPC ports; MODEL_SERVICE_CONFIG is then not needed at all
    s = load_settings({}, CliOverrides(fused=("127.0.0.1:5001",)))
    assert s.workers == (WorkerAddr("127.0.0.1", 5001, 5000, Role.PDFUSION, ""),)
    assert s.deploy is Deploy.PD_FUSION
    s = load_settings(
        env_of(service=README_SERVICE), CliOverrides(prefill=("127.0.0.1:6001",), decode=("127.0.0.1:6011",))
    )
    assert s.workers == (
        WorkerAddr("127.0.0.1", 6001, 6000, Role.PREFILL, ""),
        WorkerAddr("127.0.0.1", 6011, 6010, Role.DECODE, ""),
    )
    assert s.deploy is Deploy.DISAGGREGATED


def test_cli_deploy_overrides_env_deploy() -> None:
    service = {**README_SERVICE, "pd_fusion_endpoint": endpoint("127.0.0.9:7000")}
    env = env_of({"deploy": "DISAGGREGATED"}, service)
    assert load_settings(env, CliOverrides()).deploy is Deploy.DISAGGREGATED
    assert load_settings(env, CliOverrides(deploy="PD_FUSION")).deploy is Deploy.PD_FUSION
    assert load_settings(env, CliOverrides(deploy="pdfusion")).deploy is Deploy.PD_FUSION


def test_deploy_inferred() -> None:
    assert load_settings(env_of(service=README_SERVICE), CliOverrides()).deploy is Deploy.DISAGGREGATED
    fused = {"pd_fusion_endpoint": endpoint("127.0.0.1:8000")}
    assert load_settings(env_of(service=fused), CliOverrides()).deploy is Deploy.PD_FUSION
    assert load_settings(env_of({}, fused), CliOverrides()).master.deploy is None


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "var",
    [
        "WHALE_MASTER_CONFIG",
        "FLEXLB_CONFIG",
        "MODEL_SERVICE_CONFIG",
        "WHALE_SYNC_LB_CONSISTENCY_CONFIG",
        "FLEXLB_SYNC_CONSISTENCY_CONFIG",
    ],
)
def test_bad_json(var: str) -> None:
    env = env_of(service=README_SERVICE)
    env[var] = '{"deploy": "DISAGGREGATED",'
    err = config_error(env)
    assert err.field_path == var
    assert str(err).startswith(f"{var}: ")
    assert "JSON" in str(err)


@pytest.mark.parametrize(
    "var", ["WHALE_MASTER_CONFIG", "MODEL_SERVICE_CONFIG", "WHALE_SYNC_LB_CONSISTENCY_CONFIG"]
)
def test_json_that_is_not_an_object(var: str) -> None:
    env = env_of(service=README_SERVICE)
    env[var] = '["a"]'
    err = config_error(env)
    assert err.field_path == var
    assert "object" in str(err)


@pytest.mark.parametrize(
    ("master", "path", "accepted"),
    [
        ({"batchSize": "abc"}, "WHALE_MASTER_CONFIG.batchSize", ["integer"]),
        ({"batchSize": 1.5}, "WHALE_MASTER_CONFIG.batchSize", ["integer"]),
        ({"batchSize": 0}, "WHALE_MASTER_CONFIG.batchSize", [">= 1"]),
        ({"prefillLbTimeoutMs": -1}, "WHALE_MASTER_CONFIG.prefillLbTimeoutMs", [">= 0"]),
        ({"staticCacheBlockSize": True}, "WHALE_MASTER_CONFIG.staticCacheBlockSize", ["integer"]),
        (
            {"enableGrpcPrefillMaster": "maybe"},
            "WHALE_MASTER_CONFIG.enableGrpcPrefillMaster",
            ["true", "false"],
        ),
        ({"enableGrpcPrefillMaster": 1}, "WHALE_MASTER_CONFIG.enableGrpcPrefillMaster", ["true", "false"]),
        ({"loadBalanceStrategy": "FASTEST"}, "WHALE_MASTER_CONFIG.loadBalanceStrategy", strategy_names()),
        (
            {"decodeLoadBalanceStrategy": "X"},
            "WHALE_MASTER_CONFIG.decodeLoadBalanceStrategy",
            strategy_names(),
        ),
        ({"loadBalanceStrategy": 3}, "WHALE_MASTER_CONFIG.loadBalanceStrategy", ["string"]),
        ({"kvCache": "REDIS"}, "WHALE_MASTER_CONFIG.kvCache", ["NONE", "LOCAL_STATIC", "LOCAL_SYNC"]),
        ({"deploy": "HYBRID"}, "WHALE_MASTER_CONFIG.deploy", ["DISAGGREGATED", "PD_FUSION"]),
    ],
)
def test_master_field_errors(master: dict[str, Any], path: str, accepted: list[str]) -> None:
    err = config_error(env_of(master, README_SERVICE))
    assert err.field_path == path
    text = str(err)
    assert text.startswith(path + ": ")
    for word in accepted:
        assert word in text, f"{word!r} not in {text!r}"


def test_unknown_strategy_lists_every_accepted_name() -> None:
    err = config_error(env_of({"loadBalanceStrategy": "FASTEST"}, README_SERVICE))
    assert "FASTEST" in str(err)
    assert len(strategy_names()) >= 4
    for name in strategy_names():
        assert name in str(err)


def test_bool_and_int_spellings_accepted() -> None:
    s = load_settings(
        env_of({"enableGrpcPrefillMaster": "TRUE", "batchSize": "8"}, README_SERVICE), CliOverrides()
    )
    assert s.master.enable_grpc_prefill_master is True
    assert s.master.batch_size == 8


@pytest.mark.parametrize(
    ("master", "path"),
    [
        # a typo that passes the digit check but int() rejects must still be a ConfigError
        ({"batchSize": "--5"}, "WHALE_MASTER_CONFIG.batchSize"),
    ],
)
def test_malformed_integer_strings_are_config_errors(master: dict[str, Any], path: str) -> None:
    err = config_error(env_of(master, README_SERVICE))
    assert err.field_path == path
    assert "integer" in str(err)


@pytest.mark.parametrize(
    ("service", "path", "words"),
    [
        (
            {"pd_fusion_endpoint": endpoint()},
            "MODEL_SERVICE_CONFIG.pd_fusion_endpoint",
            ["PDFUSION", "empty"],
        ),
        (
            {"prefill_endpoint": endpoint(), "decode_endpoint": endpoint("127.0.0.1:9000")},
            "MODEL_SERVICE_CONFIG.prefill_endpoint",
            ["PREFILL", "empty"],
        ),
        (
            {"prefill_endpoint": endpoint("127.0.0.1:8000")},
            "MODEL_SERVICE_CONFIG.decode_endpoint",
            ["DECODE", "DISAGGREGATED"],
        ),
        (
            {"prefill_endpoint": endpoint("127.0.0.1")},
            "MODEL_SERVICE_CONFIG.prefill_endpoint.address[0]",
            ["ip:port"],
        ),
        (
            {"prefill_endpoint": endpoint("127.0.0.1:8000", "127.0.0.1:99999")},
            "MODEL_SERVICE_CONFIG.prefill_endpoint.address[1]",
            ["ip:port"],
        ),
        (
            {"decode_endpoint": endpoint("127.0.0.1:http")},
            "MODEL_SERVICE_CONFIG.decode_endpoint.address[0]",
            ["ip:port"],
        ),
        (
            {"pd_fusion_endpoint": endpoint(":8000")},
            "MODEL_SERVICE_CONFIG.pd_fusion_endpoint.address[0]",
            ["ip:port"],
        ),
        (
            {"pd_fusion_endpoint": endpoint("127.0.0.1:8000", protocol="ftp")},
            "MODEL_SERVICE_CONFIG.pd_fusion_endpoint.protocol",
            ["ftp", "http", "grpc"],
        ),
        (
            {"pd_fusion_endpoint": {"type": "SpecifiedIpPortList", "address": "127.0.0.1:8000"}},
            "MODEL_SERVICE_CONFIG.pd_fusion_endpoint.address",
            ["JSON"],
        ),
        (
            {"pd_fusion_endpoint": {"type": "SpecifiedIpPortList"}},
            "MODEL_SERVICE_CONFIG.pd_fusion_endpoint.address",
            ["missing"],
        ),
        (
            {"pd_fusion_endpoint": {"type": "Consul", "address": "x"}},
            "MODEL_SERVICE_CONFIG.pd_fusion_endpoint.type",
            ["SpecifiedIpPortList", "DomainAddress"],
        ),
        ({"pd_fusion_endpoint": "127.0.0.1:8000"}, "MODEL_SERVICE_CONFIG.pd_fusion_endpoint", ["object"]),
        ({"role_endpoints": {"group": "g"}}, "MODEL_SERVICE_CONFIG.role_endpoints", ["array"]),
        (
            {"role_endpoints": [{"group": 7, "pd_fusion_endpoint": endpoint("127.0.0.1:8000")}]},
            "MODEL_SERVICE_CONFIG.role_endpoints[0].group",
            ["string"],
        ),
        (
            {
                "role_endpoints": [
                    {"group": "a", "prefill_endpoint": endpoint("10.0.0.1:8000")},
                    {"group": "b", "decode_endpoint": endpoint("10.0.0.2:8000")},
                ]
            },
            "MODEL_SERVICE_CONFIG.role_endpoints",
            ["group", "PREFILL", "DECODE"],
        ),
        (
            {
                "role_endpoints": [
                    {
                        "group": "a",
                        "prefill_endpoint": endpoint("10.0.0.1:8000"),
                        "decode_endpoint": endpoint("bad"),
                    },
                ]
            },
            "MODEL_SERVICE_CONFIG.role_endpoints[0].decode_endpoint.address[0]",
            ["ip:port"],
        ),
        (
            {"service_id": 5, "pd_fusion_endpoint": endpoint("127.0.0.1:8000")},
            "MODEL_SERVICE_CONFIG.service_id",
            ["string"],
        ),
    ],
)
def test_model_service_errors(service: dict[str, Any], path: str, words: list[str]) -> None:
    err = config_error(env_of(service=service))
    assert err.field_path == path
    assert str(err).startswith(path + ": ")
    for word in words:
        assert word in str(err), f"{word!r} not in {str(err)!r}"


def test_malformed_port_digits_are_config_errors() -> None:
    # str.isdigit() accepts superscript digits, which int() rejects
    err = config_error(env_of(service={"pd_fusion_endpoint": endpoint("127.0.0.1:\u00b9\u00b2")}))
    assert err.field_path == "MODEL_SERVICE_CONFIG.pd_fusion_endpoint.address[0]"


def test_model_service_config_unset() -> None:
    err = config_error(env_of(README_MASTER))
    assert err.field_path == "MODEL_SERVICE_CONFIG"
    assert "--worker" in str(err)
    # a blank value counts as unset
    assert config_error(env_of(README_MASTER, "   ")).field_path == "MODEL_SERVICE_CONFIG"


@pytest.mark.parametrize(
    ("cli", "path"),
    [
        (CliOverrides(strategy="NOPE"), "--strategy"),
        (CliOverrides(decode_strategy="NOPE"), "--decode-strategy"),
        (CliOverrides(deploy="NOPE"), "--deploy"),
        (CliOverrides(fused=("localhost",)), "--worker"),
        (CliOverrides(prefill=("127.0.0.1:1",), decode=("127.0.0.1",)), "--decode"),
        (CliOverrides(grpc_port=-1), "--port"),
        (CliOverrides(max_message_bytes=10), "--max-message-bytes"),
        (CliOverrides(upstream_channels=0), "--upstream-channels"),
        (CliOverrides(drain_timeout_s=-1.0), "--drain-timeout-s"),
        (CliOverrides(limits=(("max_concurrent_streams", 0),)), "--max-concurrent-streams"),
        (CliOverrides(limits=(("max_header_list_bytes", 100),)), "--max-header-list-bytes"),
        (CliOverrides(limits=(("handshake_timeout_s", -1.0),)), "--handshake-timeout-s"),
        (CliOverrides(limits=(("idle_timeout_s", 0.0),)), "--idle-timeout-s"),
        (CliOverrides(limits=(("max_new_tokens", -5),)), "--max-new-tokens"),
    ],
)
def test_cli_errors(cli: CliOverrides, path: str) -> None:
    assert config_error(env_of(service=README_SERVICE), cli).field_path == path


def test_consistency_errors() -> None:
    cons = {"masterElectType": "ETCD"}
    err = config_error(env_of(service=README_SERVICE, consistency=cons))
    assert err.field_path == "WHALE_SYNC_LB_CONSISTENCY_CONFIG.masterElectType"
    assert "ZOOKEEPER" in str(err)
    cons2 = {"needConsistency": True, "zookeeperConfig": {"zkHost": "zk1"}}
    err = config_error(env_of(service=README_SERVICE, consistency=cons2))
    assert err.field_path == "WHALE_SYNC_LB_CONSISTENCY_CONFIG.zookeeperConfig.zkHost[0]"
    cons3 = {"needConsistency": "perhaps"}
    err = config_error(env_of(service=README_SERVICE, consistency=cons3))
    assert err.field_path == "WHALE_SYNC_LB_CONSISTENCY_CONFIG.needConsistency"


# ---------------------------------------------------------------------------------------------- CLI


def _cli_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("WHALE_", "FLEXLB_", "MODEL_SERVICE", "DOMAIN_ADDRESS"))
    }
    env["GRPC_VERBOSITY"] = "ERROR"
    env.update(extra)
    return env


@pytest.mark.parametrize(("field", "value", "says"), [("batchSize", "abc", "integer"),
                                                      ("prefillQueueDepth", -1, ">= 0")])
def test_serve_with_bad_config_exits_2_with_one_line(field: str, value: object, says: str) -> None:
    env = _cli_env(
        WHALE_MASTER_CONFIG=json.dumps({**README_MASTER, field: value}),
        MODEL_SERVICE_CONFIG=json.dumps(README_SERVICE),
    )
    result = subprocess.run(
        [sys.executable, "-m", "flexlb", "serve", "--port", "0", "--admin-port", "0",
         "--http-port", "0", "--host", "127.0.0.1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert f"WHALE_MASTER_CONFIG.{field}" in lines[0]
    assert says in lines[0]


def test_serve_with_no_workers_exits_2_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flexlb", "serve", "--port", "0", "--admin-port", "0",
         "--http-port", "0", "--host", "127.0.0.1"],
        cwd=ROOT,
        env=_cli_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert "MODEL_SERVICE_CONFIG" in lines[0]


def test_serve_help_lists_not_acted_on_fields() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flexlb", "serve", "--help"],
        cwd=ROOT,
        env=_cli_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    from flexlb.config import NOT_ACTED_ON

    # every configuration field is acted on now; should one be added ahead of its feature, the help says so
    assert ("NOT ACTED ON YET" in text) == bool(NOT_ACTED_ON)
    for name in NOT_ACTED_ON:
        assert name in text
    assert "--admin-port" in text


def test_mock_worker_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flexlb", "mock-worker", "--help"],
        cwd=ROOT,
        env=_cli_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "--role" in result.stdout
    assert "--port" in result.stdout


def test_spring_style_flags() -> None:
    # the original run line: HTTP API on server.port, gRPC (where frontends send Schedule) on server.port + 2
    assert _spring_to_flags(["--server.port=7001", "--management.server.port=7002"]) == [
        "--http-port", "7001", "--admin-port", "7002", "--port", "7003",
    ]
    with pytest.raises(SystemExit) as exited:
        _spring_to_flags(["--server.port=65534"])
    assert exited.value.code == 2
    # an explicit gRPC port wins over the +2 rule
    assert _spring_to_flags(["serve", "--server.port", "7001", "--port=5"]) == [
        "serve", "--http-port", "7001", "--port=5",
    ]


# ---------------------------------------------------------------------------------------------- prefill queue


def test_prefill_queue_defaults() -> None:
    m = load_settings(env_of(README_MASTER, README_SERVICE), CliOverrides()).master
    assert (m.prefill_queue_depth, m.prefill_queue_aging, m.prefill_queue_max_hold_ms) == (2, 1.0, 30_000)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"prefillQueueDepth": 4, "prefillQueueAging": 0.25, "prefillQueueMaxHoldMs": 2500}, (4, 0.25, 2500)),
        ({"prefillQueueDepth": 0, "prefillQueueAging": 0, "prefillQueueMaxHoldMs": 0}, (0, 0.0, 0)),
        ({"prefillQueueAging": 2}, (2, 2.0, 30_000)),
        # the same string spellings every other numeric field accepts
        ({"prefillQueueDepth": "3", "prefillQueueAging": "1.5", "prefillQueueMaxHoldMs": "100"}, (3, 1.5, 100)),
    ],
)
def test_prefill_queue_fields_parsed(raw: dict[str, Any], expected: tuple[int, float, int]) -> None:
    m = load_settings(env_of({**README_MASTER, **raw}, README_SERVICE), CliOverrides()).master
    got = (m.prefill_queue_depth, m.prefill_queue_aging, m.prefill_queue_max_hold_ms)
    assert got == expected
    assert isinstance(m.prefill_queue_aging, float)
    assert isinstance(m.prefill_queue_depth, int) and isinstance(m.prefill_queue_max_hold_ms, int)


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("prefillQueueDepth", -1, [">= 0"]),
        ("prefillQueueDepth", "deep", ["integer"]),
        ("prefillQueueDepth", True, ["integer"]),
        ("prefillQueueDepth", 1.5, ["integer"]),
        ("prefillQueueDepth", None, ["integer"]),
        ("prefillQueueAging", -0.5, [">= 0"]),
        ("prefillQueueAging", "fast", ["number"]),
        ("prefillQueueAging", False, ["number"]),
        ("prefillQueueAging", [1], ["number"]),
        ("prefillQueueAging", float("inf"), ["number"]),
        ("prefillQueueMaxHoldMs", -1, [">= 0"]),
        ("prefillQueueMaxHoldMs", "soon", ["integer"]),
        ("prefillQueueMaxHoldMs", True, ["integer"]),
    ],
)
def test_prefill_queue_bad_values_name_the_field(key: str, value: Any, words: list[str]) -> None:
    err = config_error(env_of({**README_MASTER, key: value}, README_SERVICE))
    assert err.field_path == f"WHALE_MASTER_CONFIG.{key}"
    assert str(err).startswith(f"WHALE_MASTER_CONFIG.{key}: ")
    for word in words:
        assert word in str(err), str(err)


def test_prefill_queue_error_names_the_alias_variable() -> None:
    env = {"FLEXLB_CONFIG": json.dumps({"prefillQueueDepth": -2}), "MODEL_SERVICE_CONFIG": json.dumps(README_SERVICE)}
    assert config_error(env).field_path == "FLEXLB_CONFIG.prefillQueueDepth"


def test_edge_limit_flags_reach_the_settings() -> None:
    cli = CliOverrides(limits=(("max_concurrent_streams", 8), ("stream_idle_timeout_s", 2.5), ("max_new_tokens", 64)))
    limits = load_settings(env_of(service=README_SERVICE), cli).server.limits
    assert (limits.max_concurrent_streams, limits.stream_idle_timeout_s, limits.max_new_tokens) == (8, 2.5, 64)
    assert limits.max_header_list_bytes == EdgeLimits().max_header_list_bytes  # the rest keep their defaults


def test_serve_rejects_a_bad_limit_flag_naming_it() -> None:
    out = subprocess.run([sys.executable, "-m", "flexlb", "serve", "--worker", "127.0.0.1:1",
                          "--max-concurrent-streams", "0"], capture_output=True, text=True, env=_cli_env(), timeout=30)
    assert out.returncode == 2
    assert out.stderr.strip() == "flexlb: config error: --max-concurrent-streams: must be >= 1, got 0"
