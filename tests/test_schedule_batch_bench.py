"""bench/batch_mode.py's arithmetic and report (the live runs themselves are the benchmark, not a test)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import batch_mode


def _calls(ttfts_ms: list[float], priority: int = 50) -> list[batch_mode.Call]:
    return [batch_mode.Call(priority=priority, sent_s=0.0, first_s=t / 1000.0, end_s=1.0) for t in ttfts_ms]


def test_summary_and_report_verdicts(tmp_path: Path) -> None:
    a = batch_mode.parse_args(["--pairs", "1", "--window-ms", "10"])
    s = batch_mode.summarize([*_calls([10.0, 20.0, 30.0]), batch_mode.Call(error="code_8502")], wall_s=2.0)
    assert s["ok"] == 3 and s["calls_per_s"] == 1.5 and s["ttft_p50_ms"] == 20.0 and s["errors"] == {"code_8502": 1}

    def run(mode: str, work: str, cps: float, p50: float) -> dict[str, object]:
        return {"mode": mode, "work": work, "calls_per_s": cps, "ttft_mean_ms": p50, "ttft_p50_ms": p50,
                "ttft_p99_ms": p50, "errors": {}}

    ab = [run("DIRECT", "light", 5, 50), run("BATCH", "light", 5, 58), run("DIRECT", "saturated", 40, 400),
          run("BATCH", "saturated", 44, 420)]
    prio = [{"offered_per_s": 60.0, "calls_per_s": 40.0, "errors": {},
             "high": batch_mode.summarize(_calls([100.0, 200.0], 90), 1.0),
             "low": batch_mode.summarize(_calls([300.0, 900.0], 10), 1.0)}]
    text = batch_mode.report(a, ab, prio)  # type: ignore[arg-type]
    assert text.startswith("<!-- batch-mode:begin -->") and text.endswith("<!-- batch-mode:end -->")
    assert "+8.0 ms, window 10 ms: within the window" in text
    assert "BATCH 1.100x DIRECT (raised)" in text
    assert "median over runs: 0.222 (target <= 0.5: met)" in text
    out = tmp_path / "b.md"
    batch_mode.update_section(out, batch_mode.SECTION, "BATCH", text)
    assert "## BATCH" in out.read_text()
