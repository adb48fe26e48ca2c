"""bench/live.py in its smallest mode: real workers and gateways, a table on stdout, nothing written without --out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- live-benchmark:begin -->", "<!-- live-benchmark:end -->"


def _section() -> str | None:
    """The live-benchmark section of docs/benchmarks.md (others may edit the rest of the file meanwhile)."""
    text = DOC.read_text() if DOC.exists() else ""
    return text[text.index(BEGIN): text.index(END)] if BEGIN in text and END in text else None


def test_live_bench_smallest_mode_prints_the_table_and_writes_nothing(tmp_path: Path) -> None:
    before = _section()
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "live.py"), "--quick", "--pairs", "1", "--concurrency", "8",
         "--strategies", "COST_BASED_PREFILL,ROUND_ROBIN_LOWEST_CONCURRENCY", "--loads", "none"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**os.environ, "GRPC_VERBOSITY": "ERROR"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    header = next(line for line in lines if line.startswith("workload"))
    for column in ("TTFT mean", "p99", "e2e mean", "calls/s", "KV hit", "/RR mean", "targets"):
        assert column in header, column
    rows = [line for line in lines if line.startswith("closed c=8")]
    assert len(rows) == 2
    assert "COST_BASED_PREFILL" in rows[0] and ("PASS" in rows[0] or "FAIL" in rows[0])
    assert "ROUND_ROBIN_LOWEST_CONCURRENCY" in rows[1]
    assert any(line.startswith("Targets: ") for line in lines)
    assert list(tmp_path.iterdir()) == []  # nothing written where it ran
    assert _section() == before  # nor into the docs


def test_closed_loop_time_scale_grows_with_concurrency_unless_given() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    import live

    auto = live.parse_args([])
    assert [live.closed_time_scale(c, auto) for c in (1, 8, 32, 64, 128)] == [1.0, 1.0, 1.0, 2.0, 4.0]
    fixed = live.parse_args(["--time-scale", "0.5"])
    assert live.closed_time_scale(128, fixed) == 0.5


def test_best_kv_hit_reuses_every_prefix_seen_before_in_whole_blocks() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    import live

    from flexlb.pb import model_rpc_service_pb2 as pb

    def body(tokens: list[int]) -> bytes:
        return pb.GenerateInputPB(token_ids=tokens).SerializeToString()

    shared = list(range(1, 131))  # two full 64-token blocks and 2 tokens
    assert live.best_kv_hit([body(shared), body(shared)]) == 128 / 260
    # a prompt that is exactly two blocks long still computes its last token: 127 of 128 reused
    assert live.best_kv_hit([body(shared[:128]), body(shared[:128])]) == 127 / 256
    assert live.best_kv_hit([body(shared), body([7, *shared])]) == 0.0  # no common first block
