"""bench/replay.py end to end: a tiny trace through real mock workers and a real gateway, then nothing left running."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIELDS = ("strategy", "requests", "errors", "ttft_mean_ms", "ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms",
          "e2e_mean_ms", "cache_hit_ratio", "worker_share", "estimate", "diagnostics", "child_pids", "sim_reference")


def _write_trace(path: Path, rows: int) -> None:
    """Mooncake-format rows: a few shared leading blocks (so caches hit), short prompts and outputs."""
    rng = random.Random(5)
    with path.open("w") as fh:
        for i in range(rows):
            n = rng.randint(1, 3)
            hash_ids = [rng.randint(0, 2)] + [100 + 10 * i + j for j in range(n - 1)]
            fh.write(json.dumps({"timestamp": 50 * i, "input_length": 512 * n - rng.randint(0, 300),
                                 "output_length": rng.randint(1, 12), "hash_ids": hash_ids}) + "\n")


def _alive(pid: int) -> bool:
    """True while `pid` is still one of our flexlb children (a reused pid running something else is not)."""
    try:
        return b"flexlb" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def test_replay_tiny_trace_reports_and_cleans_up(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    _write_trace(trace, 40)
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "replay.py"), "--trace", str(trace), "--workers", "2",
         "--strategy", "COST_BASED_PREFILL", "--time-scale", "0.02", "--warmup", "10", "--json"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env={**os.environ, "GRPC_VERBOSITY": "ERROR"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    r = lines[0]
    for f in FIELDS:
        assert f in r, f
    assert r["strategy"] == "COST_BASED_PREFILL"
    assert r["requests"] == 40 and r["errors"] == 0
    assert 0.0 <= r["cache_hit_ratio"] <= 1.0 and r["cache_hit_ratio"] > 0  # the trace shares prefixes
    assert 0 < r["ttft_p50_ms"] <= r["ttft_p99_ms"] and r["e2e_mean_ms"] >= r["ttft_mean_ms"]
    assert len(r["worker_share"]) == 2 and abs(sum(r["worker_share"].values()) - 1.0) < 1e-9
    est = r["estimate"]
    assert est["warmup_calls"] >= 10 and est["calls"] + est["warmup_calls"] == 40
    assert est["abs_error_mean_ms"] is not None and est["ratio"] is not None
    assert len(r["child_pids"]) == 3  # two workers and the gateway
    assert not [pid for pid in r["child_pids"] if _alive(pid)]
