"""Offline simulator: Mooncake trace loading, prompt synthesis, strategy runs, determinism, `flexlb sim` CLI."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flexlb.balancer.strategies import strategy_names
from flexlb.sim.simulator import TRACE_BLOCK_TOKENS, SimConfig, TokenSource, TraceRequest, load_trace, simulate

ROWS = 300
WALL_CLOCK_KEYS = {"decision_us_p50", "decision_us_p99"}  # measured with perf_counter: not deterministic
JSON_KEYS = {"requests", "ttft_mean_ms", "ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms", "e2e_mean_ms",
             "cache_hit_ratio", "worker_share", "decision_us_p50", "decision_us_p99", "utilization"}


def trace_rows(n: int = ROWS, seed: int = 7) -> list[dict[str, Any]]:
    """Requests in 12 groups sharing 4 leading hash ids (2048 tokens), each with 1-2 blocks of its own."""
    rng = random.Random(seed)
    rows = []
    t = 0.0
    for i in range(n):
        group = rng.randrange(12)
        ids = [group * 100 + j for j in range(4)] + [10_000 + i * 10 + j for j in range(rng.randint(1, 2))]
        rows.append({"timestamp": round(t), "input_length": len(ids) * TRACE_BLOCK_TOKENS - rng.randint(1, 300),
                     "output_length": rng.randint(4, 20), "hash_ids": ids})
        t += rng.expovariate(1 / 100.0)  # ~10 requests/s on 4 workers: moderate load
    return rows


def write_trace(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_trace(tmp_path_factory.mktemp("trace") / "trace.jsonl", trace_rows())


@pytest.fixture(scope="module")
def trace(trace_file: Path) -> list[TraceRequest]:
    return load_trace(trace_file)


@pytest.fixture(scope="module")
def runs(trace: list[TraceRequest]) -> dict[str, dict[str, Any]]:
    return {name: simulate(trace, SimConfig(strategy=name, workers=4, seed=1))
            for name in ("ROUND_ROBIN", "COST_BASED_PREFILL")}


def deterministic(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in WALL_CLOCK_KEYS}


# --- load_trace / TokenSource -----------------------------------------------------------------------------------------


def test_load_trace_parses_and_sorts(tmp_path: Path) -> None:
    rows = [{"timestamp": 30, "input_length": 600, "output_length": 5, "hash_ids": [1, 2]},
            {"timestamp": 10.5, "input_length": 100, "output_length": 1, "hash_ids": [3]}]
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")
    got = load_trace(path)
    assert got == [TraceRequest(10.5, 100, 1, (3,)), TraceRequest(30.0, 600, 5, (1, 2))]
    assert load_trace(path, limit=1) == [TraceRequest(30.0, 600, 5, (1, 2))]


def test_load_trace_limit_zero_reads_no_rows(trace_file: Path) -> None:
    assert load_trace(trace_file, limit=0) == []
    assert len(load_trace(trace_file, limit=2)) == 2


@pytest.mark.parametrize("bad", ['{"timestamp": 1, "input_length": 5, "output_length": 1}',  # no hash_ids
                                 "not json",
                                 '{"timestamp": 1, "input_length": "many", "output_length": 1, "hash_ids": []}',
                                 '{"timestamp": 1, "input_length": 5, "output_length": 1, "hash_ids": 7}'])
def test_load_trace_names_the_line_of_a_malformed_row(tmp_path: Path, bad: str) -> None:
    good = json.dumps({"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [1]})
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{good}\n{good}\n\n{good}\n{bad}\n{good}\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:5: not a Mooncake trace row"):
        load_trace(path)


def test_token_source_shares_prefixes_and_is_deterministic() -> None:
    src = TokenSource(seed=3)
    a = src.prompt(TraceRequest(0.0, 3 * TRACE_BLOCK_TOKENS, 1, (1, 2, 3)))
    b = src.prompt(TraceRequest(0.0, 2 * TRACE_BLOCK_TOKENS + 10, 1, (1, 2, 9)))
    assert len(a) == 3 * TRACE_BLOCK_TOKENS
    assert len(b) == 2 * TRACE_BLOCK_TOKENS + 10
    assert np.array_equal(a[: 2 * TRACE_BLOCK_TOKENS], b[: 2 * TRACE_BLOCK_TOKENS])
    assert not np.array_equal(a[2 * TRACE_BLOCK_TOKENS :][:10], b[2 * TRACE_BLOCK_TOKENS :])
    again = TokenSource(seed=3).prompt(TraceRequest(0.0, 3 * TRACE_BLOCK_TOKENS, 1, (1, 2, 3)))
    assert np.array_equal(a, again)
    other_seed = TokenSource(seed=4).prompt(TraceRequest(0.0, 3 * TRACE_BLOCK_TOKENS, 1, (1, 2, 3)))
    assert not np.array_equal(a, other_seed)


def test_token_source_pads_a_row_longer_than_its_hash_ids() -> None:
    # load_trace accepts such rows and TokenSource.prompt says it pads them deterministically
    src = TokenSource(seed=0)
    req = TraceRequest(0.0, 2 * TRACE_BLOCK_TOKENS + 100, 1, (1, 2))
    tokens = src.prompt(req)
    assert len(tokens) == 2 * TRACE_BLOCK_TOKENS + 100
    assert np.array_equal(tokens, TokenSource(seed=0).prompt(req))


# --- simulate ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ROUND_ROBIN", "COST_BASED_PREFILL"])
def test_simulate_figures_are_consistent(runs: dict[str, dict[str, Any]], name: str) -> None:
    r = runs[name]
    assert r["strategy"] == name
    assert r["requests"] == ROWS
    assert len(r["ttft_ms"]) == ROWS
    assert r["workers"] == 4
    share = r["worker_share"]
    assert len(share) == 4
    assert sum(share.values()) == pytest.approx(1.0)
    assert all(v > 0 for v in share.values())
    assert 0.0 < r["ttft_p50_ms"] <= r["ttft_p90_ms"] <= r["ttft_p99_ms"] <= max(r["ttft_ms"])
    assert min(r["ttft_ms"]) >= 20.0  # never faster than the engine's base prefill
    assert r["e2e_mean_ms"] > r["ttft_mean_ms"]
    assert 0.0 < r["utilization"] < 2.0
    assert 0.0 < r["cache_hit_ratio"] < 1.0
    assert r["decision_us_p50"] <= r["decision_us_p99"]


def test_cost_based_prefill_reuses_more_cache_than_round_robin(runs: dict[str, dict[str, Any]]) -> None:
    rr, cost = runs["ROUND_ROBIN"], runs["COST_BASED_PREFILL"]
    assert cost["cache_hit_ratio"] > rr["cache_hit_ratio"] + 0.03
    # less prefill work for the same requests
    assert cost["utilization"] < rr["utilization"]
    assert cost["ttft_mean_ms"] < rr["ttft_mean_ms"]


def test_same_seed_same_results(trace: list[TraceRequest], runs: dict[str, dict[str, Any]]) -> None:
    again = simulate(trace, SimConfig(strategy="COST_BASED_PREFILL", workers=4, seed=1))
    assert deterministic(again) == deterministic(runs["COST_BASED_PREFILL"])


def test_runs_do_not_share_state(trace: list[TraceRequest]) -> None:
    tokens = TokenSource(1)  # shared as the CLI shares it
    names = ["SGLANG_CACHE_AWARE", "DYNAMO_KV", "CACHE_AWARE"]
    first = [deterministic(simulate(trace, SimConfig(strategy=n, workers=4, seed=1), tokens)) for n in names]
    # the same strategies again after the others ran, in reverse order, with a fresh token source
    second = [deterministic(simulate(trace, SimConfig(strategy=n, workers=4, seed=1), TokenSource(1)))
              for n in reversed(names)]
    assert first == list(reversed(second))


def test_different_seed_changes_the_prompts(trace: list[TraceRequest]) -> None:
    a = simulate(trace, SimConfig(strategy="RANDOM", workers=4, seed=1))
    b = simulate(trace, SimConfig(strategy="RANDOM", workers=4, seed=2))
    assert a["worker_share"] != b["worker_share"]


def test_pd_mode_counts_every_request(trace: list[TraceRequest]) -> None:
    r = simulate(trace, SimConfig(strategy="COST_BASED_PREFILL", prefill=2, decode=2, seed=1))
    assert r["requests"] == ROWS
    assert r["workers"] == 2  # the prefill workers
    assert sum(r["worker_share"].values()) == pytest.approx(1.0)
    assert len(r["worker_share"]) == 2
    assert 0.0 < r["utilization"] < 2.0
    assert r["ttft_p50_ms"] <= r["ttft_p90_ms"] <= r["ttft_p99_ms"]
    assert r["e2e_mean_ms"] > r["ttft_mean_ms"]


def test_limit_and_speed(trace_file: Path) -> None:
    short = load_trace(trace_file, limit=50)
    assert len(short) == 50
    slow = simulate(short, SimConfig(strategy="ROUND_ROBIN", workers=4, seed=1, speed=1.0))
    fast = simulate(short, SimConfig(strategy="ROUND_ROBIN", workers=4, seed=1, speed=20.0))
    assert slow["requests"] == fast["requests"] == 50
    assert fast["utilization"] > slow["utilization"]
    assert fast["ttft_mean_ms"] > slow["ttft_mean_ms"]


# --- CLI --------------------------------------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GRPC_VERBOSITY": "ERROR"}
    return subprocess.run([sys.executable, "-m", "flexlb", "sim", *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=Path(__file__).resolve().parents[1])


def test_cli_compare_table(trace_file: Path) -> None:
    p = run_cli("--trace", str(trace_file), "--compare", "ROUND_ROBIN,CACHE_AWARE", "--limit", "100")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].split()[0] == "strategy"
    assert "p99" in lines[0]
    assert [line.split()[0] for line in lines[1:]] == ["ROUND_ROBIN", "CACHE_AWARE"]


def test_cli_json_and_plot(trace_file: Path, tmp_path: Path) -> None:
    png = tmp_path / "out.png"
    p = run_cli("--trace", str(trace_file), "--compare", "round_robin, cost_based_prefill", "--limit", "100",
                "--workers", "4", "--json", "--plot", str(png))
    assert p.returncode == 0, p.stderr
    objs = [json.loads(line) for line in p.stdout.strip().splitlines()]
    assert [o["strategy"] for o in objs] == ["ROUND_ROBIN", "COST_BASED_PREFILL"]
    for o in objs:
        assert set(o) >= JSON_KEYS
        assert "ttft_ms" not in o  # the per-request list stays out of the JSON
        assert o["requests"] == 100
        assert sum(o["worker_share"].values()) == pytest.approx(1.0)
        assert len(o["worker_share"]) == 4
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 1000


def test_cli_unknown_strategy_exits_2_listing_the_accepted(trace_file: Path) -> None:
    p = run_cli("--trace", str(trace_file), "--compare", "ROUND_ROBIN,FASTEST_EVER")
    assert p.returncode == 2
    assert p.stdout == ""
    assert "FASTEST_EVER" in p.stderr
    for name in strategy_names():
        assert name in p.stderr


def test_cli_malformed_trace_exits_2_with_the_line(tmp_path: Path) -> None:
    path = write_trace(tmp_path / "t.jsonl", trace_rows(3))
    with path.open("a") as fh:
        fh.write("{oops\n")
    p = run_cli("--trace", str(path), "--strategy", "ROUND_ROBIN")
    assert p.returncode == 2
    assert "t.jsonl:4:" in p.stderr
    assert "Traceback" not in p.stderr


def test_the_shipped_trace_loads_gzipped_and_equals_its_plain_form(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import gzip

    from flexlb.sim.simulator import load_trace

    shipped = Path(__file__).resolve().parent.parent / "data" / "traces" / "mooncake_synthetic_trace.jsonl.gz"
    plain = tmp_path / "trace.jsonl"
    plain.write_bytes(gzip.decompress(shipped.read_bytes()))
    rows = load_trace(shipped)
    assert len(rows) == 3993 and rows == load_trace(plain)
    assert rows[0].input_length == 40160 and len(rows[0].hash_ids) == 79
