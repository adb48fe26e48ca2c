"""The configuration field tables: they drive parsing and the CLI flags, and generate the README's tables."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from flexlb.balancer.traffic_policy import TrafficPolicy
from flexlb.cli import build_parser
from flexlb.config import (
    ACTED_ON,
    EDGE_LIMIT_FLAGS,
    EDGE_LIMITS,
    FLOAT,
    GATEWAY,
    HEAD,
    MASTER_FIELDS,
    NOT_ACTED_ON,
    SCHEDULE,
    SERVER_FLAGS,
    CliOverrides,
    ConfigError,
    EdgeLimits,
    MasterConfig,
    MasterField,
    ServerConfig,
    _with_unit,
    attr_value,
    parse_fields,
    parse_master,
)

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "config_table.py"


@pytest.fixture(scope="module")
def config_table() -> ModuleType:
    spec = importlib.util.spec_from_file_location("config_table", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_script(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the tree under test, whatever is installed
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=60, check=False)


# ---------------------------------------------------------------------------------------------- the README


def test_readme_tables_are_up_to_date(config_table: ModuleType) -> None:
    """Fails when README.md's generated tables differ: run `python scripts/config_table.py`."""
    assert config_table.main(["--check", "--readme", str(ROOT / "README.md")]) == 0


def test_check_exits_1_on_drift_and_a_rewrite_fixes_it(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    row = "| `prefillQueueDepth` | `FLEXLB_PREFILL_QUEUE_DEPTH` | int ≥ 0 | calls | 2 |"
    assert row in text
    readme.write_text(text.replace(row, "| `prefillQueueDepth` | | int | | 3 |"), encoding="utf-8")
    out = _run_script("--check", "--readme", str(readme))
    assert out.returncode == 1, out.stderr
    assert "configuration tables differ" in out.stderr
    assert readme.read_text(encoding="utf-8") != text  # --check writes nothing
    assert _run_script("--readme", str(readme)).returncode == 0
    assert readme.read_text(encoding="utf-8") == text
    assert _run_script("--check", "--readme", str(readme)).returncode == 0


def test_missing_markers_exit_2(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# no tables here\n", encoding="utf-8")
    out = _run_script("--check", "--readme", str(readme))
    assert out.returncode == 2
    assert "config-table:master:begin" in out.stderr


def test_master_table_has_a_row_per_field_with_bounds_unit_default_and_doc(config_table: ModuleType) -> None:
    tables = {s: config_table.master_table(s) for s in (GATEWAY, SCHEDULE, HEAD)}
    assert sum(t.count("\n") - 1 for t in tables.values()) == len(MASTER_FIELDS)
    table = tables[GATEWAY]
    assert "| `outlierMaxEjectedPercent` | `FLEXLB_OUTLIER_MAX_EJECTED_PERCENT` | int ≥ 0, ≤ 100 | % | 50 |" in table
    assert "| `prefillQueueAging` | `FLEXLB_PREFILL_QUEUE_AGING` | number ≥ 0 | ms per ms | 1.0 |" in table
    kv = "| `kvCache` | `FLEXLB_KV_CACHE` | `NONE` \\| `LOCAL_STATIC` \\| `LOCAL_SYNC` | — | `LOCAL_STATIC` |"
    assert kv in table
    assert "| `deploy` | `FLEXLB_DEPLOY` | `DISAGGREGATED` \\| `PD_FUSION` | — | inferred from the workers |" in table
    schedule = tables[SCHEDULE]
    assert "| `flexlbBatchSizeMax` | `FLEXLB_BATCH_SIZE_MAX` | int ≥ 1 | requests | 8 |" in schedule
    mode = "| `defaultScheduleMode` | `DEFAULT_SCHEDULE_MODE` | `BATCH` \\| `DIRECT` \\| `QUEUE` | — | `BATCH` |"
    assert mode in schedule
    assert "| tokens:ms | `256:150,1024:300,4096:600,16384:1200,*:2400` |" in schedule
    assert "| `30:2,40:1.5,50:1,60:0.75,70:0.5` |" in schedule
    head = tables[HEAD]
    assert "| `costFormula` | `PREFILL_TIME_FORMULA`, `COST_FORMULA` | string |" in head
    assert "| `trafficPolicy` | `TRAFFIC_POLICY_CONFIG`, `TRAFFIC_POLICY_CONFIG_FILE` |" in head
    assert "| `costSloBuckets` | `COST_SLO_BUCKETS` | spec `maxSeqLen:sloMs,…` or empty | tokens:ms | empty |" in head


def test_master_table_shows_aliases_and_not_acted_on(config_table: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    row = dataclasses.replace(MASTER_FIELDS[0], aliases=("deployMode",), status="needs the X feature")
    monkeypatch.setattr(config_table, "MASTER_FIELDS", (row,))
    table = config_table.master_table()
    assert "| `deploy` (also `deployMode`) | `FLEXLB_DEPLOY`, `FLEXLB_DEPLOY_MODE` |" in table
    assert table.endswith("| not acted on yet: needs the X feature |")


def test_limits_table_keeps_flag_default_hit_and_anchor(config_table: ModuleType) -> None:
    table = config_table.limits_table()
    assert table.count("\n") == len(EDGE_LIMITS) + 1
    assert "| `--max-concurrent-streams` | 256 |" in table
    assert "| same | 64 KiB | GOAWAY ENHANCE_YOUR_CALM" in table  # the encoded header block shares the flag
    assert "| `--max-message-bytes` | 1 GiB |" in table
    assert "| — | ≥ 500 streams and > 50% reset |" in table
    assert "| `--max-connections` | open-file limit − 256 (" in table  # noqa: RUF001
    assert "nginx `worker_connections` 512 |" in table


# ---------------------------------------------------------------------------------------------- WHALE_MASTER_CONFIG


def _leaves(cls: type, prefix: str = "") -> list[str]:
    """Every setting of a config dataclass, nested settings (schedule, head) by their dotted path."""
    out = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default) and not isinstance(default, TrafficPolicy):
            out += _leaves(type(default), f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def test_every_master_config_attribute_has_exactly_one_row() -> None:
    attrs = [f.attr for f in MASTER_FIELDS]
    assert sorted(attrs) == sorted(_leaves(MasterConfig))
    assert {a.split(".")[0] for a in attrs if "." in a} == {"schedule", "head"}
    keys = [k for f in MASTER_FIELDS for k in f.keys]
    assert len(keys) == len(set(keys))
    variables = [v for f in MASTER_FIELDS for v in f.env_names]
    assert len(variables) == len(set(variables))


def test_not_acted_on_is_the_rows_status() -> None:
    assert {f.key: f.status for f in MASTER_FIELDS if f.status != ACTED_ON} == NOT_ACTED_ON


@pytest.mark.parametrize("row", [f for f in MASTER_FIELDS if f.minimum is not None], ids=lambda f: f.key)
def test_documented_bounds_are_enforced(row: MasterField) -> None:
    assert row.minimum is not None
    below = row.minimum - (0.5 if row.kind is FLOAT else 1)
    with pytest.raises(ConfigError) as info:
        parse_master({row.key: below})
    assert str(info.value) == f"WHALE_MASTER_CONFIG.{row.key}: must be >= {row.minimum}, got {below}"
    assert attr_value(parse_master({row.key: row.minimum}), row.attr) == row.minimum
    if row.maximum is not None:
        with pytest.raises(ConfigError) as info:
            parse_master({row.key: row.maximum + 1})
        assert str(info.value) == f"WHALE_MASTER_CONFIG.{row.key}: must be <= {row.maximum}, got {row.maximum + 1}"


def test_aliases_are_read_and_errors_name_the_key_given() -> None:
    depth = next(f for f in MASTER_FIELDS if f.key == "prefillQueueDepth")
    row = dataclasses.replace(depth, aliases=("queueDepth",))
    assert parse_fields({"queueDepth": "3"}, "FLEXLB_CONFIG", (row,)) == {"prefill_queue_depth": 3}
    assert parse_fields({"queueDepth": 3, "prefillQueueDepth": 4}, "FLEXLB_CONFIG", (row,)) == {
        "prefill_queue_depth": 4
    }
    with pytest.raises(ConfigError) as info:
        parse_fields({"queueDepth": -1}, "FLEXLB_CONFIG", (row,))
    assert str(info.value) == "FLEXLB_CONFIG.queueDepth: must be >= 0, got -1"


def test_absent_fields_keep_the_dataclass_defaults() -> None:
    assert parse_master({}) == MasterConfig()
    assert parse_master({"somethingElse": 1}) == MasterConfig()


# ---------------------------------------------------------------------------------------------- flags


def _serve_options() -> dict[str, str]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {s: a.dest for a in sub.choices["serve"]._actions for s in a.option_strings}


def test_every_edge_limit_is_in_the_limits_table() -> None:
    mentioned = {r.attr for r in EDGE_LIMITS} | {
        f.name for f in dataclasses.fields(EdgeLimits) for r in EDGE_LIMITS if "{" + f.name in r.default + r.help
    }
    assert {f.name for f in dataclasses.fields(EdgeLimits)} <= mentioned
    for r in EDGE_LIMITS:
        assert not r.attr or r.attr in {f.name for f in dataclasses.fields(r.of)}, r


def test_limit_flags_are_serve_flags_with_their_help() -> None:
    options = _serve_options()
    assert EDGE_LIMIT_FLAGS
    for attr, row in EDGE_LIMIT_FLAGS.items():
        assert options[row.flag] == attr
        assert row.help and row.minimum is not None
    assert "minus 256" in EDGE_LIMIT_FLAGS["max_connections"].help_text()
    assert "(default 64 KiB;" in EDGE_LIMIT_FLAGS["max_header_list_bytes"].help_text()
    parsed = build_parser().parse_args(["serve", "--handshake-timeout-s", "2.5", "--max-new-tokens", "9"])
    assert (parsed.handshake_timeout_s, parsed.max_new_tokens) == (2.5, 9)


def test_server_flags_are_serve_flags_setting_server_config() -> None:
    options = _serve_options()
    cli_fields = {f.name for f in dataclasses.fields(CliOverrides)}
    server_fields = {f.name for f in dataclasses.fields(ServerConfig)}
    for sf in SERVER_FLAGS:
        assert sf.flag in options, sf.flag
        assert sf.cli in cli_fields
        assert set(sf.attrs) <= server_fields
    # a limits-table row on a server setting is parsed by its server flag
    by_flag = {sf.flag: sf for sf in SERVER_FLAGS}
    for r in EDGE_LIMITS:
        if r.flag and r.of is ServerConfig:
            assert r.attr in by_flag[r.flag].attrs


def test_with_unit() -> None:
    assert _with_unit(64 * 1024, "bytes") == "64 KiB"
    assert _with_unit(16 * 1024 * 1024, "bytes") == "16 MiB"
    assert _with_unit(65_535, "bytes") == "65535 bytes"
    assert _with_unit(10.0, "s") == "10 s"
    assert _with_unit(0.5, "") == "0.5"
