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

    def run(mode: str, work: str, cps: float, p50: float, mean_batch: float | None = None) -> dict[str, object]:
        return {"mode": mode, "work": work, "calls_per_s": cps, "ttft_mean_ms": p50, "ttft_p50_ms": p50,
                "ttft_p99_ms": p50, "e2e_mean_ms": 2 * p50, "errors": {}, "mean_batch": mean_batch,
                "offered_per_s": 36.0, "reasons": {} if mean_batch is None else {"fixed_window_timeout": 3.0}}

    ab = [run("DIRECT", "light", 5, 50), run("BATCH", "light", 5, 62, 1.0), run("BATCH_IDLE", "light", 5, 53, 1.0),
          # closed-loop TTFT rises with throughput (Little's law): not what the verdict reads
          run("DIRECT", "saturated", 40, 400), run("BATCH", "saturated", 44, 520, 3.5),
          run("BATCH_IDLE", "saturated", 44, 505, 3.25),
          run("DIRECT", "equal", 36, 300), run("BATCH", "equal", 36, 320, 2.0),
          run("BATCH_IDLE", "equal", 36, 305, 2.5)]
    prio = [{"offered_per_s": 60.0, "calls_per_s": 40.0, "errors": {},
             "high": batch_mode.summarize(_calls([100.0, 200.0], 90), 1.0),
             "low": batch_mode.summarize(_calls([300.0, 900.0], 10), 1.0)}]
    text = batch_mode.report(a, ab, prio)  # type: ignore[arg-type]
    assert text.startswith("<!-- batch-mode:begin -->") and text.endswith("<!-- batch-mode:end -->")
    assert ("| c=48 (closed loop, saturation) | BATCH_IDLE | 44.0 | 505.0 | 505.0 | 505.0 | 1010.0 | 3.25 "
            "| fixed_window_timeout 3 | 0 |") in text
    assert "| open loop 36.0/s (0.9x DIRECT's saturation calls/s) | BATCH | 36.0 | 320.0 |" in text
    assert ("- BATCH: mean batch 1.00 at c=1, 3.50 at c=48 and 2.00 at the equal load; throughput at saturation "
            "(c=48) 1.100x DIRECT; TTFT added over DIRECT: p50 +12.0 ms at c=1 (MORE than the 10 ms window), p50 "
            "+20.0 ms and mean +20.0 ms at the equal load near saturation (MORE than the window). Must-show: NOT met "
            "(added TTFT p50 at c=1 <= 10 ms; added TTFT p50 and mean at saturation <= 10 ms).") in text
    assert ("p50 +3.0 ms at c=1 (within the 10 ms window), p50 +5.0 ms and mean +5.0 ms at the equal load near "
            "saturation (within the window). Must-show: met.") in text
    assert "median over runs: 0.222 (target <= 0.5: met)" in text
    out = tmp_path / "b.md"
    batch_mode.update_section(out, batch_mode.SECTION, "BATCH", text)
    assert "## BATCH" in out.read_text()


def test_mean_batch_size_from_two_scrapes() -> None:
    page = """# HELP flexlb_schedule_batch_size Requests per EnqueueBatch sent by BATCH mode
flexlb_schedule_batch_size_bucket{le="1.0"} 2.0
flexlb_schedule_batch_size_count 7.0
flexlb_schedule_batch_size_sum 19.0
flexlb_schedule_dispatch_reasons_total{reason="worker_idle"} 5.0
flexlb_schedule_dispatch_reasons_total{reason="batch_full"} 1.0
"""
    before = batch_mode.batch_counters(page)
    assert before == {"count": 7.0, "sum": 19.0, "reason:worker_idle": 5.0, "reason:batch_full": 1.0}
    after = {**before, "count": 10.0, "sum": 31.0, "reason:worker_idle": 8.0}
    d = batch_mode.batch_delta(before, after)
    assert d == {"batches": 3.0, "batched_requests": 12.0, "mean_batch": 4.0, "reasons": {"worker_idle": 3.0}}
    assert batch_mode.batch_delta({}, {})["mean_batch"] is None  # DIRECT: no batch sent
    cfg = batch_mode.gateway_config("BATCH_IDLE", batch_mode.parse_args([]))
    assert cfg["defaultScheduleMode"] == "BATCH" and cfg["flexlbBatchDispatchWhenIdle"] is True
    assert batch_mode.gateway_config("BATCH", batch_mode.parse_args([]))["flexlbBatchDispatchWhenIdle"] is False
