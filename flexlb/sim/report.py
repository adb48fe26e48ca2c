"""`flexlb sim`: run strategies over a trace and print JSON, a table, or TTFT CDFs."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from typing import Any

from flexlb.balancer.prefill_queue import PrefillQueueConfig
from flexlb.balancer.strategies import strategy_names
from flexlb.sim.simulator import SimConfig, TokenSource, load_trace, simulate, summary_rows


def plot_cdfs(results: list[dict[str, Any]], path: str) -> None:
    """TTFT CDF of each strategy, log-scale x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in results:
        values = np.sort(np.asarray(r["ttft_ms"]))
        ax.plot(values, np.arange(1, len(values) + 1) / len(values), label=r["strategy"])
    ax.set_xscale("log")
    ax.set_xlabel("TTFT (ms)")
    ax.set_ylabel("fraction of requests")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run_sim_cli(args: argparse.Namespace) -> int:
    """Entry point of `flexlb sim`."""
    names = [s.strip().upper() for s in (args.compare or args.strategy).split(",") if s.strip()]
    unknown = [n for n in names if n not in strategy_names()]
    if unknown:
        print(f"flexlb sim: unknown strategy {', '.join(unknown)}; accepted: {', '.join(strategy_names())}",
              file=sys.stderr)
        return 2
    try:
        trace = load_trace(args.trace, args.limit, args.skip)
    except (OSError, ValueError) as exc:
        print(f"flexlb sim: {exc}", file=sys.stderr)
        return 2
    if min(args.queue_depth, args.queue_aging, args.skip) < 0:
        print("flexlb sim: --queue-depth, --queue-aging and --skip must be >= 0", file=sys.stderr)
        return 2
    if args.max_batch_tokens <= 0:
        print("flexlb sim: --max-batch-tokens must be > 0", file=sys.stderr)
        return 2
    queue = PrefillQueueConfig(args.queue_depth, args.queue_aging)
    base = SimConfig(decode_strategy=args.decode_strategy, workers=args.workers, prefill=args.prefill,
                     decode=args.decode, speed=args.speed, seed=args.seed, noise_sigma=args.noise, queue=queue,
                     engine_model=args.engine)
    if args.engine == "batching":
        base = replace(base, batching=replace(base.batching_params(), max_batch_tokens=args.max_batch_tokens,
                                              chunked_prefill=args.chunked_prefill, preempt=args.preempt))
    tokens = TokenSource(args.seed)
    results = [simulate(trace, replace(base, strategy=n), tokens) for n in names]
    if args.json:
        for r in results:
            print(json.dumps({k: v for k, v in r.items() if k not in ("ttft_ms", "per_request")}))
    else:
        for line in summary_rows(results):
            print(line)
    if args.plot:
        plot_cdfs(results, args.plot)
    return 0
