"""`flexlb serve --config FILE` and `flexlb config check FILE`: the file, its precedence and its errors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from flexlb.balancer.request import Deploy
from flexlb.config import CliOverrides, ConfigError, load_settings
from flexlb.config_file import load_config_file, settings_of

ROOT = Path(__file__).resolve().parent.parent

SERVICE = {
    "service_id": "svc",
    "prefill_endpoint": {"type": "SpecifiedIpPortList", "address": ["10.0.0.1:8088", "10.0.0.2:8088"]},
    "decode_endpoint": {"type": "SpecifiedIpPortList", "address": ["10.0.0.3:8088"], "protocol": "http"},
}
MASTER = {"deploy": "DISAGGREGATED", "loadBalanceStrategy": "SHORTEST_TTFT", "batchSize": 4,
          "prefillBatchWaitTimeMs": 20, "kvCache": "LOCAL_STATIC"}
CONSISTENCY = {"needConsistency": True, "masterElectType": "ZOOKEEPER",
               "zookeeperConfig": {"zkHost": "zk1:2181,zk2:2181", "zkTimeoutMs": 4000}}

TOML = """
[server]
host = "127.0.0.1"
http_port = 9001
grpc_port = 9003
admin_port = 9002
drain_timeout_s = 12.5
relay_engine = "grpcio"
admin_token = "file-secret"
role_id = "from-file"

[server.limits]
max_concurrent_streams = 64
idle_timeout_s = 30.0

[logging]
level = "debug"
format = "json"
access_log_sample = 0.25

[master]
deploy = "DISAGGREGATED"
loadBalanceStrategy = "SHORTEST_TTFT"
batchSize = 4
prefillBatchWaitTimeMs = 20
kvCache = "LOCAL_STATIC"

[model_service]
service_id = "svc"

[model_service.prefill_endpoint]
type = "SpecifiedIpPortList"
address = ["10.0.0.1:8088", "10.0.0.2:8088"]

[model_service.decode_endpoint]
type = "SpecifiedIpPortList"
address = ["10.0.0.3:8088"]
protocol = "http"

[consistency]
needConsistency = true
masterElectType = "ZOOKEEPER"

[consistency.zookeeperConfig]
zkHost = "zk1:2181,zk2:2181"
zkTimeoutMs = 4000
"""

YAML = """
server:
  host: 127.0.0.1
  http_port: 9001
  grpc_port: 9003
  admin_port: 9002
  drain_timeout_s: 12.5
  relay_engine: grpcio
  admin_token: file-secret
  role_id: from-file
  limits: {max_concurrent_streams: 64, idle_timeout_s: 30.0}
logging: {level: debug, format: json, access_log_sample: 0.25}
master:
  deploy: DISAGGREGATED
  loadBalanceStrategy: SHORTEST_TTFT
  batchSize: 4
  prefillBatchWaitTimeMs: 20
  kvCache: LOCAL_STATIC
model_service:
  service_id: svc
  prefill_endpoint: {type: SpecifiedIpPortList, address: ["10.0.0.1:8088", "10.0.0.2:8088"]}
  decode_endpoint: {type: SpecifiedIpPortList, address: ["10.0.0.3:8088"], protocol: http}
consistency:
  needConsistency: true
  masterElectType: ZOOKEEPER
  zookeeperConfig: {zkHost: "zk1:2181,zk2:2181", zkTimeoutMs: 4000}
"""

# what the files above say, as the environment and flags say it
ENV_EQUIVALENT = {
    "MODEL_SERVICE_CONFIG": json.dumps(SERVICE),
    "WHALE_MASTER_CONFIG": json.dumps(MASTER),
    "WHALE_SYNC_LB_CONSISTENCY_CONFIG": json.dumps(CONSISTENCY),
    "FLEXLB_ADMIN_TOKEN": "file-secret",
    "HIPPO_ROLE": "from-file",
}
CLI_EQUIVALENT = CliOverrides(host="127.0.0.1", http_port=9001, grpc_port=9003, admin_port=9002,
                              drain_timeout_s=12.5, relay_engine="grpcio",
                              limits=(("max_concurrent_streams", 64), ("idle_timeout_s", 30.0)))


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path, env: dict[str, str] | None = None, cli: CliOverrides | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        settings_of(load_config_file(path), env or {}, cli or CliOverrides())
    return str(info.value)


@pytest.mark.parametrize(("name", "text"), [
    ("flexlb.toml", TOML),
    ("flexlb.yaml", YAML),
    ("flexlb.yml", YAML),
    ("flexlb.json", json.dumps({"server": {"host": "127.0.0.1", "http_port": 9001, "grpc_port": 9003,
                                           "admin_port": 9002, "drain_timeout_s": 12.5, "relay_engine": "grpcio",
                                           "admin_token": "file-secret", "role_id": "from-file",
                                           "limits": {"max_concurrent_streams": 64, "idle_timeout_s": 30.0}},
                                "logging": {"level": "debug", "format": "json", "access_log_sample": 0.25},
                                "master": MASTER, "model_service": SERVICE, "consistency": CONSISTENCY})),
])
def test_a_file_is_what_the_environment_and_flags_say(tmp_path: Path, name: str, text: str) -> None:
    file = load_config_file(write(tmp_path, name, text))
    assert settings_of(file, {}, CliOverrides()) == load_settings(ENV_EQUIVALENT, CLI_EQUIVALENT)
    assert (file.logging.level, file.logging.format, file.logging.access_log_sample) == ("debug", "json", "0.25")


def test_precedence_flags_over_environment_over_file(tmp_path: Path) -> None:
    file = load_config_file(write(tmp_path, "f.toml", TOML))
    env = {
        # key by key: the variable's loadBalanceStrategy wins, the file's other master keys stay
        "WHALE_MASTER_CONFIG": json.dumps({"loadBalanceStrategy": "RANDOM"}),
        "FLEXLB_ADMIN_TOKEN": "env-secret",
    }
    s = settings_of(file, env, CliOverrides())
    assert s.master.load_balance_strategy == "RANDOM"
    assert (s.master.batch_size, s.master.prefill_batch_wait_time_ms) == (4, 20)
    assert s.consistency.admin_token == "env-secret"
    assert s.consistency.role_id == "from-file"
    assert s.server.grpc_port == 9003
    # a flag beats both
    s = settings_of(file, env, CliOverrides(strategy="ROUND_ROBIN", grpc_port=0, admin_token="flag-secret",
                                            limits=(("max_concurrent_streams", 8),)))
    assert s.master.load_balance_strategy == "ROUND_ROBIN"
    assert s.server.grpc_port == 0
    assert s.consistency.admin_token == "flag-secret"
    assert s.server.limits.max_concurrent_streams == 8
    assert s.server.limits.idle_timeout_s == 30.0  # the file's other limit stays
    # a per-field variable beats the file too
    assert settings_of(file, {"LOAD_BALANCE_STRATEGY": "LOWEST_CONCURRENCY"}, CliOverrides()) \
        .master.load_balance_strategy == "LOWEST_CONCURRENCY"


def test_environment_replaces_the_file_key_under_an_alias_and_workers_from_flags(tmp_path: Path) -> None:
    file = load_config_file(write(tmp_path, "f.toml", TOML))
    # FLEXLB_CONFIG is read like WHALE_MASTER_CONFIG; its deploy replaces the file's
    s = settings_of(file, {"FLEXLB_CONFIG": json.dumps({"deploy": "PD_FUSION"}),
                           "MODEL_SERVICE_CONFIG": json.dumps({"pd_fusion_endpoint": SERVICE["decode_endpoint"]})},
                    CliOverrides())
    assert s.deploy is Deploy.PD_FUSION
    assert [w.ip for w in s.workers] == ["10.0.0.3"]
    # worker flags replace the file's workers, as they replace MODEL_SERVICE_CONFIG
    s = settings_of(file, {}, CliOverrides(prefill=("127.0.0.1:5",), decode=("127.0.0.1:6",)))
    assert [(w.ip, w.grpc_port) for w in s.workers] == [("127.0.0.1", 5), ("127.0.0.1", 6)]


@pytest.mark.parametrize(("text", "says"), [
    ('[master]\nbatchSize = "abc"\n', "f.toml: master.batchSize: expected an integer, got 'abc'"),
    ("[master]\nloadBalancingStrategy = 'RANDOM'\n",
     "f.toml: master.loadBalancingStrategy: unknown key; did you mean loadBalanceStrategy?"),
    ("[sever]\n", "f.toml: sever: unknown section; did you mean server?"),
    ("[server]\ngrpc_prot = 1\n", "f.toml: server.grpc_prot: unknown key; did you mean grpc_port?"),
    ("[server]\ngrpc_port = 70000\n", "f.toml: server.grpc_port: must be <= 65535 (0 picks a free port), got 70000"),
    ("[server]\nadmin_port = -1\n", "f.toml: server.admin_port: must be >= 0, got -1"),
    ("[server]\nrelay_engine = 'h3'\n", "f.toml: server.relay_engine: unknown value 'H3'; accepted: H2, GRPCIO"),
    ("[server.limits]\nmax_concurrent_streams = 0\n", "f.toml: server.limits.max_concurrent_streams: must be >= 1"),
    ("[logging]\nlevel = 'LOUD'\n", "f.toml: logging.level: unknown value 'LOUD'"),
    ("[consistency]\nneedConsistency = true\n",
     "f.toml: consistency.zookeeperConfig.zkHost: required when needConsistency is true"),
    ("[consistency.zookeeperConfig]\nzkHots = 'a:1'\n",
     "f.toml: consistency.zookeeperConfig.zkHots: unknown key; did you mean zkHost?"),
    ("[model_service.prefill_endpoint]\naddress = ['nope']\ntype = 'SpecifiedIpPortList'\n",
     "f.toml: model_service.prefill_endpoint.address[0]: expected 'ip:port'"),
    ("[model_service]\nprefil_endpoint = {}\n",
     "f.toml: model_service.prefil_endpoint: unknown key; did you mean prefill_endpoint?"),
    ("[server\n", "f.toml: not valid TOML (Expected ']' at the end of a table declaration (at line 1, column 8))"),
    ("server = 3\n", "f.toml: server: expected a table of keys, got an int"),
])
def test_errors_name_the_file_and_the_key(tmp_path: Path, text: str, says: str) -> None:
    assert error_of(write(tmp_path, "f.toml", text)).startswith(str(tmp_path / says))


def test_errors_of_the_assembled_settings_name_the_file_section(tmp_path: Path) -> None:
    path = write(tmp_path, "f.yaml", "master: {deploy: DISAGGREGATED}\nmodel_service:\n"
                 "  prefill_endpoint: {type: SpecifiedIpPortList, address: ['10.0.0.1:8088']}\n")
    assert error_of(path) == (f"{path}: model_service.decode_endpoint: deploy DISAGGREGATED needs at least one "
                              "DECODE worker; the worker list is empty")
    # given nowhere: either place would do, and the message says so
    empty = write(tmp_path, "empty.yaml", "")
    assert error_of(empty).startswith(f"MODEL_SERVICE_CONFIG (or {empty}: model_service): not set")
    # a value from the environment is still named by its variable
    assert error_of(path, {"MODEL_SERVICE_CONFIG": "{"}).startswith("MODEL_SERVICE_CONFIG: not valid JSON")


@pytest.mark.parametrize(("name", "text", "says"), [
    ("f.yaml", "master:\n  batchSize: [1\n",
     "not valid YAML (expected ',' or ']', but got '<stream end>' at line 3 column 1)"),
    ("f.yaml", "- 1\n- 2\n", "expected a table of keys, got a list"),
    ("f.json", "{", "not valid JSON (Expecting property name enclosed in double quotes at line 1 column 2)"),
    ("f.ini", "", "unknown file type '.ini'; accepted: .toml, .yaml, .yml, .json"),
])
def test_bad_files(tmp_path: Path, name: str, text: str, says: str) -> None:
    assert error_of(write(tmp_path, name, text)) == f"{tmp_path / name}: {says}"


def test_a_missing_file(tmp_path: Path) -> None:
    assert error_of(tmp_path / "none.toml") == f"{tmp_path / 'none.toml'}: cannot read: No such file or directory"


def test_domain_address_table_stands_for_the_variables(tmp_path: Path) -> None:
    path = write(tmp_path, "f.toml", '[model_service.pd_fusion_endpoint]\naddress = "engine.svc"\n'
                 '[domain_address]\n"engine.svc" = ["10.1.0.1:8088", "10.1.0.2:8088"]\n')
    s = settings_of(load_config_file(path), {}, CliOverrides())
    assert [(w.ip, w.grpc_port) for w in s.workers] == [("10.1.0.1", 8089), ("10.1.0.2", 8089)]
    # the environment's variable wins
    s = settings_of(load_config_file(path), {"DOMAIN_ADDRESS:engine.svc": "10.9.0.1:8088"}, CliOverrides())
    assert [w.ip for w in s.workers] == ["10.9.0.1"]


# ---------------------------------------------------------------------------------------------- the commands


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("WHALE_", "FLEXLB_", "MODEL_SERVICE", "DOMAIN_ADDRESS", "HIPPO_"))}
    env["GRPC_VERBOSITY"] = "ERROR"
    env.update(extra)
    return env


def _flexlb(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flexlb", *args], cwd=ROOT, env=env or _env(), capture_output=True,
                          text=True, timeout=60, check=False)


def test_config_check_prints_the_effective_config_with_secrets_masked(tmp_path: Path) -> None:
    text = TOML.replace('zkHost = "zk1:2181,zk2:2181"', 'zkHost = "user:pw@zk1:2181,zk2:2181"')
    path = write(tmp_path, "f.toml", text)
    out = _flexlb("config", "check", str(path))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    settings = report["settings"]
    assert settings["consistency"]["admin_token"] == "***"
    assert settings["consistency"]["zk_host"] == "***@zk1:2181,zk2:2181"
    assert "file-secret" not in out.stdout and "pw@" not in out.stdout
    assert settings["server"]["grpc_port"] == 9003
    assert settings["master"]["load_balance_strategy"] == "SHORTEST_TTFT"
    assert report["logging"] == {"level": "debug", "format": "json", "access_log_sample": 0.25}
    # the environment counts, unless --ignore-env
    env = _env(WHALE_MASTER_CONFIG=json.dumps({"loadBalanceStrategy": "RANDOM"}))
    merged = json.loads(_flexlb("config", "check", str(path), env=env).stdout)
    assert merged["settings"]["master"]["load_balance_strategy"] == "RANDOM"
    alone = json.loads(_flexlb("config", "check", str(path), "--ignore-env", env=env).stdout)
    assert alone["settings"]["master"]["load_balance_strategy"] == "SHORTEST_TTFT"


def test_config_check_of_a_bad_file_exits_2_with_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "f.yaml", "master:\n  loadBalanceStrategy: FASTEST\n")
    out = _flexlb("config", "check", str(path))
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.splitlines() == [f"flexlb: config error: {path}: master.loadBalanceStrategy: unknown value "
                                       f"'FASTEST'; accepted: {_strategies()}"]


def _strategies() -> str:
    from flexlb.balancer.strategies import strategy_names

    return ", ".join(strategy_names())


def test_serve_with_a_bad_config_file_exits_2_with_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "f.toml", "[server]\nport = 7003\n")
    out = _flexlb("serve", "--config", str(path))
    assert out.returncode == 2
    assert out.stderr.splitlines() == [f"flexlb: config error: {path}: server.port: unknown key; "
                                       "did you mean host?"]


async def test_serve_runs_from_the_file_with_flags_on_top(tmp_path: Path) -> None:
    path = write(tmp_path, "f.toml", """
[server]
host = "127.0.0.1"
http_port = 0
grpc_port = 0
admin_port = 0
drain_timeout_s = 1
[logging]
format = "json"
[master]
loadBalanceStrategy = "SHORTEST_TTFT"
batchSize = 3
[model_service.pd_fusion_endpoint]
type = "SpecifiedIpPortList"
protocol = "grpc"
address = ["127.0.0.1:1"]
""")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "flexlb", "serve", "--config", str(path), "--strategy", "RANDOM", cwd=ROOT, env=_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line.startswith("flexlb gateway listening"), line + (await proc.stderr.read(4000)).decode()
        ports = _ports(line)
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{ports['admin']}/actuator/info") as r:
            info: dict[str, Any] = await r.json()
        master = info["config"]["master"]
        assert master["load_balance_strategy"] == "RANDOM"  # the flag
        assert master["batch_size"] == 3  # the file
        assert info["config"]["workers"][0]["grpc_port"] == 1
        proc.send_signal(signal.SIGTERM)
        stderr = (await asyncio.wait_for(proc.stderr.read(), 30)).decode()  # EOF: the process is gone
        assert await asyncio.wait_for(proc.wait(), 10) == 0, stderr
        # [logging] format = "json": every log line is a JSON object
        log_lines = [ln for ln in stderr.splitlines() if ln.strip()]
        assert log_lines and all(json.loads(ln)["level"] for ln in log_lines)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _ports(line: str) -> dict[str, int]:
    """`flexlb gateway listening: grpc H:P admin H:P http H:P` -> {"grpc": P, ...}."""
    words = line.split(": ", 1)[1].split()
    return {words[i]: int(words[i + 1].rsplit(":", 1)[1]) for i in range(0, len(words), 2)}
