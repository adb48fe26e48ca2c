"""bench/hostile.py end to end: two cheap attacks against a real gateway, then nothing left running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ATTACKS = ("big_ping", "grpc_timeout_malformed")
ROW_FIELDS = ("attack", "target", "outcome", "outcome_text", "probe", "worker_probe", "rss_before", "rss_peak",
              "rss_after", "rss_growth_per_conn", "in_flight_after", "checks", "verdict", "final_call")


def _alive(pid: int) -> bool:
    """True while `pid` is still one of our children (a reused pid running something else is not)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and (b"flexlb" in cmdline or b"hostile" in cmdline)


def test_hostile_quick_reports_and_cleans_up(tmp_path: Path) -> None:
    out_md = tmp_path / "security.md"
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "hostile.py"), "--quick", "--attacks", ",".join(ATTACKS), "--no-nginx",
         "--json", "--out", str(out_md)],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env={**os.environ, "GRPC_VERBOSITY": "ERROR"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout)
    assert r["duration_s"] < 30, r["duration_s"]
    rows = r["rows"]
    assert [(row["attack"], row["target"]) for row in rows] == [(a, "gateway (h2)") for a in ATTACKS]
    for row in rows:
        for f in ROW_FIELDS:
            assert f in row, f
        assert row["verdict"] == "pass", (row["attack"], row["checks"], row["outcome_text"])
        assert row["probe"]["calls"] > 0 and row["probe"]["errors"] == 0
        assert row["in_flight_after"] == 0 and row["final_call"] == "OK"
    big_ping, timeout = rows
    assert big_ping["outcome"]["ended_by"] == "goaway" and big_ping["outcome"]["goaway_code"] == 6  # FRAME_SIZE_ERROR
    assert timeout["outcome"]["grpc_statuses"] == {"13": 3}

    text = out_md.read_text()
    assert text.startswith("# Security\n")
    assert "<!-- hostile:begin -->" in text and "<!-- hostile:end -->" in text
    table = [line for line in text.splitlines() if line.startswith(f"| {ATTACKS[0]} |")
             or line.startswith(f"| {ATTACKS[1]} |")]
    assert len(table) == 2 and all("| gateway (h2) |" in line for line in table)

    # per row: mock worker, gateway, two probes
    assert len(r["child_pids"]) == 4 * len(ATTACKS), r["child_pids"]
    assert not [pid for pid in r["child_pids"] if _alive(pid)]
