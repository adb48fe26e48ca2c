"""Benchmarks write only where told: with --out elsewhere, nothing under docs/ changes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT / "data" / "traces" / "mooncake_synthetic_trace.jsonl.gz"


def _docs_digest() -> dict[str, str]:
    return {str(p.relative_to(ROOT)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((ROOT / "docs").rglob("*")) if p.is_file()}


def test_routing_bench_writes_only_beside_its_out(tmp_path: Path) -> None:
    before = _docs_digest()
    out = tmp_path / "bench.md"
    env = {**os.environ, "MPLBACKEND": "Agg"}
    result = subprocess.run(
        [sys.executable, "bench/routing.py", "--trace", str(TRACE), "--limit", "60", "--second-slice-skip", "60",
         "--other-speeds", "2", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Load scan" in out.read_text()
    assert (tmp_path / "ttft_cdf_speed1.9.png").stat().st_size > 0
    assert _docs_digest() == before
