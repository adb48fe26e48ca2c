"""Java FlexLB HEAD's FLEXLB_CONFIG vocabulary through load_settings: fields, per-field environment overrides,
precedence, startup warnings, traffic policy sources; and the warnings of a real `flexlb serve`."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from flexlb.balancer.traffic_policy import TargetGroup, TrafficPolicy
from flexlb.config import (
    BOOL,
    FLOAT,
    GATEWAY,
    INT,
    INT_AS_FLOAT,
    MASTER_FIELDS,
    CliOverrides,
    ConfigError,
    MasterField,
    Settings,
    attr_value,
    load_settings,
    masked,
)
from flexlb.launch import spawn, stop
from flexlb.schedule_modes import BatchAlgorithm, ScheduleMode

ROOT = Path(__file__).resolve().parent.parent
SERVICE = json.dumps({"pd_fusion_endpoint": {"type": "SpecifiedIpPortList", "address": '["127.0.0.1:8000"]'}})


def settings(master: dict[str, Any] | None = None, cli: CliOverrides | None = None, var: str = "FLEXLB_CONFIG",
             **env: str) -> Settings:
    full = {"MODEL_SERVICE_CONFIG": SERVICE, **env}
    if master is not None:
        full[var] = json.dumps(master)
    return load_settings(full, cli or CliOverrides())


def error(master: dict[str, Any] | None = None, **env: str) -> ConfigError:
    full = {"MODEL_SERVICE_CONFIG": SERVICE, **env}
    if master is not None:
        full["FLEXLB_CONFIG"] = json.dumps(master)
    with pytest.raises(ConfigError) as info:
        load_settings(full)
    return info.value


# ---------------------------------------------------------------------------------------------- HEAD's fields

HEAD_EXAMPLE = {
    "loadBalanceStrategy": "COST_BASED_PREFILL",
    "decodeLoadBalanceStrategy": "COST_BASED_DECODE",
    "vitLoadBalanceStrategy": "RANDOM",
    "defaultScheduleMode": "QUEUE",
    "flexlbBatchAlgorithm": "SLO_BUDGET",
    "flexlbBatchSizeMax": 16,
    "flexlbBatchArrivalEmaAlpha": 0.5,
    "flexlbInflightTtlMs": 1000,
    "maxQueueSize": 10,
    "maxRetryCount": 2,
    "scheduleWorkerSize": 4,
    "autoTpmEnabled": "enabled",
    "autoTpmDefaultPriority": 60,
    "autoTpmSloLengthBuckets": "512:100,*:1000",
    "autoTpmPrioritySloMultipliers": "10:3,90:0.25",
    "costSloBuckets": "1000:200",
    "prefillPredictorType": "LEARNING",
    "shortestTtftCandidatePoolMode": "fixed",
    "grpcClientEventLoopThreads": 2,
    "workerTimeoutMs": 5000,
    "autoTpmCommitStrategy": "versioned",
    "prefillLbTimeoutMs": 300,
}


def test_head_example_is_read_into_schedule_and_head() -> None:
    s = settings(HEAD_EXAMPLE)
    assert s.warnings == ()
    m = s.master
    assert (m.load_balance_strategy, m.decode_load_balance_strategy, m.vit_load_balance_strategy) == (
        "COST_BASED_PREFILL", "COST_BASED_DECODE", "RANDOM")
    assert m.prefill_lb_timeout_ms == 300
    sch = m.schedule
    assert sch.mode is ScheduleMode.QUEUE
    assert sch.batch.algorithm is BatchAlgorithm.SLO_BUDGET
    assert (sch.batch.size_max, sch.batch.arrival_ema_alpha, sch.batch.inflight_ttl_ms) == (16, 0.5, 1000)
    assert sch.batch.fixed_wait_ms == 300  # untouched: HEAD's default
    assert (sch.queue.max_queue_size, sch.queue.max_retry_count, sch.queue.schedule_worker_size) == (10, 2, 4)
    assert sch.priority.enabled is True and sch.priority.default_priority == 60
    assert sch.priority.slo_length_buckets == ((512, 100), (None, 1000))
    assert sch.priority.priority_slo_multipliers == ((10, 3.0), (90, 0.25))
    h = m.head
    assert h.cost_slo_buckets == ((1000, 200),)
    assert (h.prefill_predictor_type, h.shortest_ttft_candidate_pool_mode) == ("learning", "FIXED")
    assert (h.grpc_client_event_loop_threads, h.worker_timeout_ms, h.auto_tpm_commit_strategy) == (2, 5000,
                                                                                                    "versioned")


def test_legacy_auto_mode_is_batch_and_other_modes_abort() -> None:
    assert settings({"defaultScheduleMode": "auto"}).master.schedule.mode is ScheduleMode.BATCH
    assert settings({"defaultScheduleMode": "direct"}).master.schedule.mode is ScheduleMode.DIRECT
    e = error({"defaultScheduleMode": "FAST"})
    assert str(e) == ("FLEXLB_CONFIG.defaultScheduleMode: unknown value 'FAST'; accepted: BATCH, DIRECT, QUEUE "
                      "(legacy AUTO = BATCH)")
    e = error(DEFAULT_SCHEDULE_MODE="SOMETIMES")
    assert e.field_path == "DEFAULT_SCHEDULE_MODE"


@pytest.mark.parametrize(("field", "value", "says"), [
    ("flexlbBatchAlgorithm", "greedy", "accepted: fixed_window, slo_budget"),
    ("autoTpmSloLengthBuckets", "256:150,*:2400,512:9", "'*' must be the last entry"),
    ("autoTpmPrioritySloMultipliers", "30:0", "multiplier must be a number > 0"),
    ("autoTpmDefaultPriority", 101, "must be <= 100"),
    ("flexlbBatchArrivalEmaAlpha", 1.5, "must be <= 1.0"),
    ("flexlbBatchSizeMax", 0, "must be >= 1"),
    ("prefillPredictorType", "oracle", "accepted: formula, learning"),
    ("costFormula", "  ", "must not be empty"),
    ("vitLoadBalanceStrategy", "FASTEST", "accepted:"),
    ("cacheHitTraceLogEnabled", "maybe", "expected true or false"),
])
def test_bad_head_values_in_the_json_abort_naming_the_field(field: str, value: Any, says: str) -> None:
    e = error({field: value})
    assert e.field_path.startswith(f"FLEXLB_CONFIG.{field}")
    assert says in str(e)


# ---------------------------------------------------------------------------------------------- strategy names


@pytest.mark.parametrize(("given", "name"), [
    ("COST_BASED_PREFILL", "COST_BASED_PREFILL"), ("CostBasedPrefill", "COST_BASED_PREFILL"),
    ("COST_BASED_DECODE", "COST_BASED_DECODE"), ("CostBasedDecode", "COST_BASED_DECODE"),
    ("SHORTEST_TTFT", "SHORTEST_TTFT"), ("ShortestTtft", "SHORTEST_TTFT"),
    ("RANDOM", "RANDOM"), ("Random", "RANDOM"), ("random", "RANDOM"),
])
def test_heads_strategy_names_and_spellings(given: str, name: str) -> None:
    assert settings({"loadBalanceStrategy": given}).master.load_balance_strategy == name
    assert settings(DECODE_LOAD_BALANCE_STRATEGY=given).master.decode_load_balance_strategy == name
    assert settings(cli=CliOverrides(strategy=given)).master.load_balance_strategy == name


def test_unknown_strategy_is_a_config_error_listing_the_names() -> None:
    e = error({"loadBalanceStrategy": "CostBasedFastest"})
    assert e.field_path == "FLEXLB_CONFIG.loadBalanceStrategy"
    assert "unknown value 'CostBasedFastest'" in str(e) and "COST_BASED_PREFILL" in str(e)
    # a strategy the gateway acts on: a bad environment value aborts too, naming the variable
    e = error(LOAD_BALANCE_STRATEGY="FASTEST")
    assert e.field_path == "LOAD_BALANCE_STRATEGY" and "SHORTEST_TTFT" in str(e)


# ---------------------------------------------------------------------------------------------- environment


def _env_text(row: MasterField) -> tuple[str, Any]:
    """A valid environment value other than the default, and what it parses to."""
    default = attr_value(settings().master, row.attr)
    if row.kind is BOOL:
        return ("disabled", False) if default else ("enabled", True)
    low = row.minimum or 0
    if row.kind in (INT, INT_AS_FLOAT):
        value = int(low) + 1 if default != int(low) + 1 else int(low) + 2
        return str(value), value
    assert row.kind is FLOAT
    number = (low + row.maximum) / 2 if row.maximum is not None else low + 2.5
    return str(number), number


@pytest.mark.parametrize("row", [f for f in MASTER_FIELDS if f.kind in (INT, INT_AS_FLOAT, FLOAT, BOOL)],
                         ids=lambda f: f.key)
def test_every_number_and_bool_field_has_its_variable(row: MasterField) -> None:
    text, value = _env_text(row)
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", row.key).upper()
    # HEAD's fields keep HEAD's bare name; the gateway's own generic names get the FLEXLB_ prefix
    head_named = row.section != GATEWAY or row.key in ("prefillLbTimeoutMs",)
    assert row.env_names[0] == (snake if head_named or snake.startswith("FLEXLB_") else "FLEXLB_" + snake)
    s = load_settings({"MODEL_SERVICE_CONFIG": SERVICE, row.env_names[0]: text})
    assert attr_value(s.master, row.attr) == value
    assert s.warnings == ()


def test_precedence_defaults_json_variable_flag() -> None:
    m = settings({"flexlbBatchSizeMax": 4, "loadBalanceStrategy": "RANDOM"}).master
    assert (m.schedule.batch.size_max, m.load_balance_strategy) == (4, "RANDOM")
    m = settings({"flexlbBatchSizeMax": 4, "loadBalanceStrategy": "RANDOM"}, FLEXLB_BATCH_SIZE_MAX="12",
                 LOAD_BALANCE_STRATEGY="SHORTEST_TTFT").master
    assert (m.schedule.batch.size_max, m.load_balance_strategy) == (12, "SHORTEST_TTFT")
    m = settings({"loadBalanceStrategy": "RANDOM"}, cli=CliOverrides(strategy="ROUND_ROBIN"),
                 LOAD_BALANCE_STRATEGY="SHORTEST_TTFT").master
    assert m.load_balance_strategy == "ROUND_ROBIN"
    # a blank variable is unset
    assert settings({"flexlbBatchSizeMax": 4}, FLEXLB_BATCH_SIZE_MAX=" ").master.schedule.batch.size_max == 4


@pytest.mark.parametrize("spelling", ["true", "1", "yes", "on", "enabled", "TRUE", "Yes", "false", "0", "no", "off",
                                      "disabled", "OFF"])
def test_boolean_spellings(spelling: str) -> None:
    expected = spelling.lower() in {"true", "1", "yes", "on", "enabled"}
    assert settings(AUTO_TPM_ENABLED=spelling).master.schedule.priority.enabled is expected


@pytest.mark.parametrize(("var", "value"), [
    ("AUTO_TPM_ENABLED", "sometimes"),
    ("FLEXLB_BATCH_MAX_CAPACITY", "lots"),
    ("FLEXLB_BATCH_QUEUE_MAX_SIZE", "0"),
    ("AUTO_TPM_SLO_LENGTH_BUCKETS", "*:1,2:3"),
    ("AUTO_TPM_PRIORITY_SLO_MULTIPLIERS", "50"),
    ("FLEXLB_BATCH_ALGORITHM", "greedy"),
    ("PREFILL_PREDICTOR_TYPE", "oracle"),
    ("FLEXLB_HEALTH_CHECK_INTERVAL_MS", "-5"),  # acted on: critical
    ("FLEXLB_KV_CACHE", "REMOTE"),
])
def test_bad_value_of_a_critical_variable_aborts_naming_it(var: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"MODEL_SERVICE_CONFIG": SERVICE, var: value})
    assert info.value.field_path == var, str(info.value)


def test_bad_value_of_a_parsed_only_variable_is_a_warning_and_ignored() -> None:
    s = settings({"cacheHitTimeWindowMs": 5}, CACHE_HIT_TIME_WINDOW_MS="soon", HYSTERESIS_BIAS_PERCENT="150")
    assert s.master.head.cache_hit_time_window_ms == 5
    assert s.master.head.hysteresis_bias_percent == 15
    assert s.warnings == (
        "CACHE_HIT_TIME_WINDOW_MS: expected an integer, got 'soon'; ignored, cacheHitTimeWindowMs keeps its "
        "configured value",
        "HYSTERESIS_BIAS_PERCENT: must be <= 100, got 150; ignored, hysteresisBiasPercent keeps its configured value",
    )


def test_prefill_time_formula_wins_over_cost_formula() -> None:
    assert settings({"costFormula": "a"}).master.head.cost_formula == "a"
    assert settings({"costFormula": "a"}, COST_FORMULA="b").master.head.cost_formula == "b"
    assert settings({"costFormula": "a"}, COST_FORMULA="b", PREFILL_TIME_FORMULA="c").master.head.cost_formula == "c"


# ---------------------------------------------------------------------------------------------- warnings


def test_unknown_json_fields_and_variables_are_warnings_with_did_you_mean() -> None:
    s = settings({"loadBalancingStrategy": "RANDOM", "flexlbBatchSizMax": 3, "batchSize": 2},
                 FLEXLB_BATCH_SIZ_MAX="3", AUTO_TPM_ENABLE="1", COST_SLO="1", WORKER_COUNT="3", OTHER_THING="1")
    assert s.master.load_balance_strategy == "COST_BASED_PREFILL"  # the misspelt field runs the default ...
    assert s.master.batch_size == 2
    assert s.warnings == (  # ... but not without a word
        "FLEXLB_CONFIG.loadBalancingStrategy: unknown field, ignored; did you mean loadBalanceStrategy?",
        "FLEXLB_CONFIG.flexlbBatchSizMax: unknown field, ignored; did you mean flexlbBatchSizeMax?",
        "AUTO_TPM_ENABLE: unknown environment variable, ignored; did you mean AUTO_TPM_ENABLED?",
        "COST_SLO: unknown environment variable, ignored; did you mean COST_SLO_MS?",
        "FLEXLB_BATCH_SIZ_MAX: unknown environment variable, ignored; did you mean FLEXLB_BATCH_SIZE_MAX?",
        "WORKER_COUNT: unknown environment variable, ignored",
    )


def test_variables_the_gateway_reads_are_not_warned_about() -> None:
    s = settings(FLEXLB_ADMIN_TOKEN="t", FLEXLB_SYNC_CONSISTENCY_CONFIG="{}", FLEXLB_BATCH_SIZE_MAX="3",
                 WORKER_TIMEOUT_MS="100", COST_SLO_MS="9", AUTO_TPM_DEFAULT_PRIORITY="40")
    assert s.warnings == ()
    assert s.master.head.worker_timeout_ms == 100


def test_whale_master_config_wins_over_flexlb_config_with_a_warning() -> None:
    s = settings({"loadBalanceStrategy": "ROUND_ROBIN"}, var="WHALE_MASTER_CONFIG",
                 FLEXLB_CONFIG=json.dumps({"loadBalanceStrategy": "RANDOM", "loadBalancingStrategy": "x"}))
    assert s.master.load_balance_strategy == "ROUND_ROBIN"
    assert s.warnings == ("FLEXLB_CONFIG: ignored, WHALE_MASTER_CONFIG is set too and is the one read (no merging)",)


# ---------------------------------------------------------------------------------------------- traffic policy

POLICY = {"default_group": "g0", "rules": [{"name": "vip", "api_keys": ["secret-key"], "target_group": "g1"}]}


def test_traffic_policy_sources_in_order(tmp_path: Path) -> None:
    file = tmp_path / "policy.json"
    file.write_text(json.dumps({"default_group": "from-file"}), encoding="utf-8")
    json_only = settings({"trafficPolicy": POLICY}).master.traffic_policy
    assert json_only is not None and json_only.default_group == "g0" and json_only.rules[0].name == "vip"
    # the field may also be the policy's JSON text
    assert settings({"trafficPolicy": json.dumps(POLICY)}).master.traffic_policy == json_only
    from_file = settings({"trafficPolicy": POLICY}, TRAFFIC_POLICY_CONFIG_FILE=str(file)).master.traffic_policy
    assert from_file == TrafficPolicy(default_group="from-file")
    from_env = settings({"trafficPolicy": POLICY}, TRAFFIC_POLICY_CONFIG_FILE=str(file),
                        TRAFFIC_POLICY_CONFIG='{"default_target_groups": [{"group": "e"}]}').master.traffic_policy
    assert from_env == TrafficPolicy(default_targets=(TargetGroup("e"),))
    assert settings().master.traffic_policy is None


def test_bad_traffic_policy_aborts_naming_its_source(tmp_path: Path) -> None:
    assert error({"trafficPolicy": {"rules": [{"target_group": "g", "api_keys": ["k"]}]}}).field_path == (
        "FLEXLB_CONFIG.trafficPolicy.rules[0].name")
    assert error(TRAFFIC_POLICY_CONFIG='{"rules": [{"name": "r", "target_group": "g"}]}').field_path == (
        "TRAFFIC_POLICY_CONFIG.rules[0]")
    e = error(TRAFFIC_POLICY_CONFIG_FILE=str(tmp_path / "missing.json"))
    assert e.field_path == "TRAFFIC_POLICY_CONFIG_FILE" and "cannot read" in str(e)
    bad = tmp_path / "bad.json"
    bad.write_text("{", encoding="utf-8")
    assert "not valid JSON" in str(error(TRAFFIC_POLICY_CONFIG_FILE=str(bad)))


def test_traffic_policy_unknown_keys_warn_and_api_keys_are_masked() -> None:
    s = settings({"trafficPolicy": {**POLICY, "default_grup": "x"}})
    assert s.warnings == ("FLEXLB_CONFIG.trafficPolicy.default_grup: unknown field, ignored; did you mean "
                          "default_group?",)
    shown = json.dumps(masked(s))  # JSON-ready, sets included
    assert "secret-key" not in shown
    assert masked(s)["master"]["traffic_policy"]["rules"][0]["api_keys"] == ["***"]
    assert masked(s)["warnings"] == list(s.warnings)


# ---------------------------------------------------------------------------------------------- `flexlb serve`


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("WHALE_", "FLEXLB_", "MODEL_SERVICE", "AUTO_TPM_", "COST_", "WORKER_", "TRAFFIC_"))}
    return {**env, "GRPC_VERBOSITY": "ERROR", **extra}


async def test_serve_warns_about_a_misspelt_field_and_variable() -> None:
    worker = await spawn("mock-worker", "--port", "0")
    gw: asyncio.subprocess.Process | None = None
    try:
        env = _clean_env(FLEXLB_CONFIG=json.dumps({"loadBalancingStrategy": "RANDOM"}),
                         FLEXLB_BATCH_SIZE_MAX="5", FLEXLB_BATCH_SIZ_MAX="6")
        gw = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "flexlb", "serve", "--host", "127.0.0.1", "--port", "0", "--admin-port", "0",
            "--http-port", "0", "--worker", f"127.0.0.1:{worker.port}", cwd=ROOT, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert gw.stdout is not None and gw.stderr is not None
        ready = (await asyncio.wait_for(gw.stdout.readline(), 30)).decode()
        admin = re.search(r"admin [\d.]+:(\d+)", ready)
        assert admin, ready
        with urllib.request.urlopen(f"http://127.0.0.1:{admin.group(1)}/actuator/info", timeout=5) as r:
            info = json.load(r)
        assert info["config"]["master"]["schedule"]["batch"]["size_max"] == 5  # the variable took effect
        assert info["config"]["master"]["load_balance_strategy"] == "COST_BASED_PREFILL"
        # logged before the gateway starts, so on stderr before the readiness line on stdout
        lines: list[str] = []

        async def warned() -> None:
            assert gw is not None and gw.stderr is not None
            while not (any("loadBalancingStrategy" in ln for ln in lines) and any("SIZ_MAX" in ln for ln in lines)):
                line = await gw.stderr.readline()
                assert line, f"stderr ended; it said {lines}"
                lines.append(line.decode())

        await asyncio.wait_for(warned(), 10)
        warnings = [ln for ln in lines if "WARNING flexlb.config" in ln]
        assert any("FLEXLB_CONFIG.loadBalancingStrategy: unknown field, ignored; did you mean loadBalanceStrategy?"
                   in ln for ln in warnings), lines
        assert any("FLEXLB_BATCH_SIZ_MAX: unknown environment variable, ignored; did you mean FLEXLB_BATCH_SIZE_MAX?"
                   in ln for ln in warnings), lines
        assert len(warnings) == 2 == len(info["config"]["warnings"])
    finally:
        if gw is not None and gw.returncode is None:
            gw.kill()  # by its PID; draining is not what this test is about
            await gw.wait()
        await stop(worker, signal.SIGKILL)


def test_generic_names_of_gateway_fields_are_not_read_bare() -> None:
    # a DEPLOY or BATCH_SIZE some other program left in the environment must not reconfigure the gateway
    s = settings(BATCH_SIZE="abc", KV_CACHE="REMOTE")
    assert (s.master.batch_size, s.master.kv_cache.name) == (1, "LOCAL_STATIC")
    assert settings(FLEXLB_BATCH_SIZE="4").master.batch_size == 4
