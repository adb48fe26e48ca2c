"""A Mooncake-format trace of another shape, to check routing on a trace it was not tuned on.

    python bench/synth_trace.py --out /tmp/docqa.jsonl [--rows 3000] [--seed 8]

Document QA: 75% of requests ask about one of 60 shared documents (10-70 blocks of 512 tokens,
popularity Zipf 1/rank) plus a 1-3 block question; 25% are unique 2-40 block prompts. Poisson
arrivals at 3 per second; outputs of 20-300 tokens.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def docqa_rows(rows: int, seed: int, rate_per_s: float = 3.0) -> list[dict[str, object]]:
    """The trace rows, in arrival order."""
    rng = random.Random(seed)
    next_id = iter(range(500_001, 1 << 40))
    docs = [[next(next_id) for _ in range(rng.randint(10, 70))] for _ in range(60)]
    weights = [1 / (rank + 1) for rank in range(len(docs))]
    t_ms = 0.0
    out: list[dict[str, object]] = []
    for _ in range(rows):
        t_ms += rng.expovariate(rate_per_s) * 1000
        if rng.random() < 0.25:
            ids = [next(next_id) for _ in range(rng.randint(2, 40))]
        else:
            ids = list(rng.choices(docs, weights=weights)[0]) + [next(next_id) for _ in range(rng.randint(1, 3))]
        out.append({"timestamp": int(t_ms), "input_length": len(ids) * 512 - rng.randint(0, 500),
                    "output_length": rng.randint(20, 300), "hash_ids": ids})
    return out


def main() -> None:
    """Write the trace as JSONL."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=8)
    a = ap.parse_args()
    Path(a.out).write_text("".join(json.dumps(r) + "\n" for r in docqa_rows(a.rows, a.seed)))


if __name__ == "__main__":
    main()
