"""Live A/B, as a benchmark: strategies interleaved on fresh fleets of real processes, medians over pairs.

    python bench/live.py [--strategies COST_BASED_PREFILL,ROUND_ROBIN_LOWEST_CONCURRENCY,SGLANG_CACHE_AWARE]
        [--pairs 3] [--concurrency 1,8,32,128] [--calls N] [--loads 0.5,1.0,1.5] [--trace FILE] [--limit 300]
        [--workers 4] [--deploy PD_FUSION|DISAGGREGATED] [--time-scale 1] [--trace-time-scale 0.1]
        [--engine batching|fifo] [--quick] [--json] [--out docs/benchmarks.md]

Every run starts its own mock workers (`flexlb mock-worker`, so caches start cold) and gateway (`flexlb serve`),
all on 127.0.0.1, drives them from this process's asyncio client and stops every child by PID (also on errors
and SIGTERM). A pair is one run of every strategy on the same workload (same prompts), in a rotating order;
the figures are medians over the pairs, the ratios medians of the per-pair ratios.

Workloads:
- closed loop at each `--concurrency`: that many callers issue calls back to back until a fixed number of
  calls is done, with the prompt mix of `make demo` (flexlb.demo.prompt_mix: six shared system prompts plus a
  per-call tail; seed 7 + pair index), the mock worker's default engine and the gateway's default config;
- open loop at each `--loads` multiplier of the trace's arrival rate: bench/replay.py's replay of a
  Mooncake-format trace (default: data/traces/mooncake_synthetic_trace.jsonl.gz, shipped in the repo;
  `python bench/synth_trace.py` writes another), with replay's engine and gateway setup.

Times are simulated ms (client-measured real time / time scale), throughput per simulated second, as in
bench/replay.py. Only `--out FILE` writes anything (the section between the live-benchmark markers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import replay
from docs_section import update_section
from replay import CallResult, Child, Fleet

from flexlb.balancer.prefix import block_keys
from flexlb.balancer.strategies import strategy_names
from flexlb.demo import DEFAULT_STRATEGY, DEMO_SEED, prompt_mix
from flexlb.pb import model_rpc_service_pb2 as pb
from flexlb.sim.simulator import TraceRequest, load_trace

ROOT = Path(__file__).resolve().parent.parent
SECTION, TITLE = "live-benchmark", "Live A/B through the gateway"
BEGIN, END = f"<!-- {SECTION}:begin -->", f"<!-- {SECTION}:end -->"
DEFAULT_TRACE = ROOT / "data" / "traces" / "mooncake_synthetic_trace.jsonl.gz"  # shipped with the repo
RR, SGLANG = "ROUND_ROBIN_LOWEST_CONCURRENCY", "SGLANG_CACHE_AWARE"
DEFAULT_STRATEGIES = (DEFAULT_STRATEGY, RR, SGLANG)
# targets for the first strategy's mean and p99 TTFT against each baseline; SGLang's only where prompts share prefixes
TARGETS = {RR: 1.0, SGLANG: 0.9}
# a trace "shares prefixes" when at least this share of its blocks (hash ids) already appeared in an earlier row
SHARED_MIN = 0.10
ENGINE_BLOCK_TOKENS = 64  # the mock worker's default KV block (BatchingParams.block_size_tokens)
CALL_TIMEOUT_S = 120.0
_WORKER_READY = re.compile(r"listening on [\d.]+:(\d+)")
_GATEWAY_READY = re.compile(r"grpc [\d.]+:(\d+) admin [\d.]+:(\d+)")


# ------------------------------------------------------------------ workloads


@dataclass(frozen=True)
class Workload:
    """A closed loop at some concurrency, or an open-loop trace replay at some load."""

    kind: str  # "closed" | "open"
    level: float  # concurrency, or arrival-rate multiplier

    @property
    def label(self) -> str:
        return f"closed c={self.level:g}" if self.kind == "closed" else f"open {self.level:g}x"


def closed_calls(concurrency: int, a: argparse.Namespace) -> int:
    """Calls per closed-loop run: `--calls`, else enough for every caller to make several."""
    if a.calls:
        return int(a.calls)
    return max(24, 3 * concurrency) if a.quick else max(48, 8 * concurrency)


# closed loop, --time-scale not given: time scale max(1, c / this). At time scale 1 the mock workers, the gateway
# and the client stream ~4,000 messages per real second at c=128, more than 2 cores run: the workers' iterations
# then last ~3x what the engine model says, and the run measures CPU contention, not routing
_AUTO_SCALE_CALLERS = 32


def closed_time_scale(concurrency: int, a: argparse.Namespace) -> float:
    """The mock workers' time scale of a closed-loop run: `--time-scale`, else max(1, concurrency / 32)."""
    if a.time_scale is not None:
        return float(a.time_scale)
    return max(1.0, concurrency / _AUTO_SCALE_CALLERS)


def closed_bodies(calls: int, seed: int) -> list[bytes]:
    """The demo's prompt mix as serialized streamed GenerateInputPB."""
    return [pb.GenerateInputPB(
        request_id=i + 1,
        token_ids=p.token_ids,
        generate_config=pb.GenerateConfigPB(max_new_tokens=p.max_new_tokens, is_streaming=True,
                                            can_use_pd_separation=True),
    ).SerializeToString() for i, p in enumerate(prompt_mix(calls, seed))]


def best_kv_hit(bodies: Sequence[bytes], block_tokens: int = ENGINE_BLOCK_TOKENS) -> float:
    """The KV hit no router can exceed on these calls in this order: each reuses the longest prefix (in whole
    engine blocks) of any earlier call, short of its last token (which an engine always computes)."""
    seen: set[int] = set()
    reused = total = 0
    for body in bodies:
        tokens = list(pb.GenerateInputPB.FromString(body).token_ids)
        keys = block_keys(tokens, block_tokens)
        hit = 0
        while hit < len(keys) and keys[hit] in seen:
            hit += 1
        reused += min(hit * block_tokens, max(0, len(tokens) - 1))
        total += len(tokens)
        seen.update(keys)
    return reused / total if total else 0.0


def shared_block_share(rows: Sequence[TraceRequest]) -> float:
    """Share of the rows' blocks whose hash id appeared in an earlier row (the best any cache could reuse)."""
    seen: set[int] = set()
    total = repeated = 0
    for r in rows:
        for h in r.hash_ids:
            total += 1
            repeated += h in seen
            seen.add(h)
    return repeated / total if total else 0.0


# ------------------------------------------------------------------ processes


def mock_worker_help() -> str:
    """`flexlb mock-worker --help` (to see whether it has `--engine`)."""
    out = subprocess.run([sys.executable, "-m", "flexlb", "mock-worker", "--help"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT, env={**os.environ, "GRPC_VERBOSITY": "ERROR"})
    return out.stdout


def engine_default(help_text: str) -> str | None:
    """The mock worker's default engine as its --help states it ("NAME: ... (default)" or "default: NAME"), if it
    has `--engine`; "?" when it does not say."""
    at = help_text.rfind("--engine")
    if at < 0:
        return None
    chunk = help_text[at: at + 400].split("\n  --", 1)[0]  # the option's own help paragraph
    m = re.search(r"(\w+):[^;:]*\(default\)", chunk) or re.search(r"default[:=\s]+(\w+)", chunk)
    return m.group(1) if m else "?"


def start_fleet(strategy: str, a: argparse.Namespace, time_scale: float, worker_flags: Sequence[str],
                gateway_config: dict[str, Any] | None, started: list[Child], timeout_s: float = 90.0) -> Fleet:
    """Fresh mock workers (in parallel), then the gateway; every child is appended to `started` at once."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MODEL_SERVICE_CONFIG", "WHALE_MASTER_CONFIG", "FLEXLB_CONFIG")}
    env["GRPC_VERBOSITY"] = "ERROR"
    deadline = time.monotonic() + timeout_s
    roles = (["PDFUSION"] * a.workers if a.deploy == "PD_FUSION"
             else ["PREFILL"] * a.workers + ["DECODE"] * a.decode_workers)
    engine = ["--engine", a.engine] if a.engine else []
    workers = []
    for i, role in enumerate(roles):
        c = replay._start(f"{role.lower()}-{i}", ["mock-worker", "--role", role, "--host", "127.0.0.1", "--port", "0",
                                                  "--time-scale", f"{time_scale:g}", *engine, *worker_flags], env)
        started.append(c)
        workers.append(c)
    for c in workers:
        replay._await_ready(c, _WORKER_READY, deadline)
    args = ["serve", "--host", "127.0.0.1", "--port", "0", "--admin-port", "0",
            "--http-port", "0", "--strategy", strategy,
            "--log-level", "WARNING"]
    flag = {"PDFUSION": "--worker", "PREFILL": "--prefill", "DECODE": "--decode"}
    for c, role in zip(workers, roles, strict=True):
        args += [flag[role], f"127.0.0.1:{c.ports[0]}"]
    if gateway_config:
        env = {**env, "WHALE_MASTER_CONFIG": json.dumps(gateway_config)}
    gateway = replay._start("gateway", args, env)
    started.append(gateway)
    replay._await_ready(gateway, _GATEWAY_READY, deadline)
    return Fleet(workers, gateway)


# ------------------------------------------------------------------ clients


async def closed_loop(port: int, bodies: Sequence[bytes], concurrency: int, channels: int) -> tuple[
        list[CallResult], float]:
    """`concurrency` callers take the next body and call until every body was sent once; (calls, wall s)."""
    chans = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.channel_id", i)])
             for i in range(channels)]
    try:
        for c in chans:
            await asyncio.wait_for(c.channel_ready(), 10)
        stubs = [c.unary_stream(replay.METHOD) for c in chans]
        calls = [CallResult() for _ in bodies]
        todo = iter(range(len(bodies)))  # shared by the callers: each index is taken once

        async def caller(k: int) -> None:
            stub = stubs[k % channels]
            for i in todo:
                res = calls[i]
                res.sent_s = time.perf_counter()
                try:
                    async for msg in stub(bodies[i], timeout=CALL_TIMEOUT_S):
                        if res.first_s is None:
                            res.first_s = time.perf_counter()
                            aux = pb.GenerateOutputsPB.FromString(msg).flatten_output.aux_info
                            if aux:
                                res.reuse_tokens, res.input_tokens = aux[0].total_reuse_len, aux[0].input_len
                        res.messages += 1
                except grpc.aio.AioRpcError as exc:
                    res.error = exc.code().name
                res.end_s = time.perf_counter()

        t0 = time.perf_counter()
        await asyncio.gather(*(caller(k) for k in range(min(concurrency, len(bodies)))))
        return calls, time.perf_counter() - t0
    finally:
        for c in chans:
            await c.close()


def figures(calls: Sequence[CallResult], wall_s: float, time_scale: float) -> dict[str, Any]:
    """Client-side figures in simulated ms and per simulated second."""
    to_sim = 1000.0 / time_scale
    ok = [c for c in calls if c.error is None and c.first_s is not None]
    ttft = [((c.first_s or 0.0) - c.sent_s) * to_sim for c in ok]
    e2e = [(c.end_s - c.sent_s) * to_sim for c in ok]
    sim_s = max(wall_s / time_scale, 1e-9)
    codes: dict[str, int] = {}
    for c in calls:
        if c.error is not None or c.first_s is None:
            codes[c.error or "NO_MESSAGE"] = codes.get(c.error or "NO_MESSAGE", 0) + 1
    return {
        "calls": len(calls),
        "errors": sum(codes.values()),
        "error_codes": codes,
        "ttft_mean_ms": replay._mean(ttft),
        "ttft_p50_ms": replay._pct(ttft, 50),
        "ttft_p99_ms": replay._pct(ttft, 99),
        "e2e_mean_ms": replay._mean(e2e),
        "calls_per_s": len(ok) / sim_s,
        # the mock worker streams one token per message
        "output_tokens_per_s": sum(c.messages for c in ok) / sim_s,
        "kv_hit": sum(c.reuse_tokens for c in ok) / max(sum(c.input_tokens for c in ok), 1),
        "wall_s": wall_s,
    }


# ------------------------------------------------------------------ runs

Work = Callable[[Fleet], Awaitable[tuple[list[CallResult], float]]]


def _run(strategy: str, a: argparse.Namespace, time_scale: float, worker_flags: Sequence[str],
         gateway_config: dict[str, Any] | None, work: Work) -> dict[str, Any]:
    """Fresh fleet, `work(fleet)` (a coroutine giving calls and wall s) bounded by --run-timeout, figures;
    every child is stopped before returning or raising."""
    started: list[Child] = []
    try:
        fleet = start_fleet(strategy, a, time_scale, worker_flags, gateway_config, started)
        cpu0 = fleet.cpu()
        with asyncio.Runner(loop_factory=replay._loop_factory()) as runner:
            calls, wall_s = runner.run(asyncio.wait_for(work(fleet), a.run_timeout))
        cpu1 = fleet.cpu()
    finally:
        replay.stop_children(started)
    out = figures(calls, wall_s, time_scale)
    out["cpu_s"] = {"gateway": cpu1[0] - cpu0[0], "workers": cpu1[1] - cpu0[1]}
    out["child_pids"] = [c.proc.pid for c in started]
    return out


def run_closed(strategy: str, concurrency: int, bodies: Sequence[bytes], a: argparse.Namespace) -> dict[str, Any]:
    """One closed-loop run: the mock worker's default engine, the gateway's default config."""
    return _run(strategy, a, closed_time_scale(concurrency, a), [], None,
                lambda fleet: closed_loop(fleet.grpc_port, bodies, concurrency, a.channels))


def run_open(strategy: str, load: float, rows: Sequence[TraceRequest], bodies: Sequence[bytes],
             a: argparse.Namespace) -> dict[str, Any]:
    """One open-loop run: bench/replay.py's replay, engine flags and gateway config."""
    async def work(fleet: Fleet) -> tuple[list[CallResult], float]:
        run = await replay.replay(fleet, rows, bodies, a.trace_time_scale, load, 0, a.channels)
        return run.calls, run.span_s

    return _run(strategy, a, a.trace_time_scale, replay.ENGINE_FLAGS, replay.GATEWAY_CONFIG, work)


# ------------------------------------------------------------------ aggregation


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


METRICS = ("ttft_mean_ms", "ttft_p50_ms", "ttft_p99_ms", "e2e_mean_ms", "calls_per_s", "output_tokens_per_s",
           "kv_hit")


def aggregate(results: Sequence[dict[str, Any]], workloads: Sequence[Workload], strategies: Sequence[str],
              shared: dict[str, bool]) -> list[dict[str, Any]]:
    """Per (workload, strategy): medians over pairs, errors summed; on the first strategy's rows the median
    per-pair ratios to every other strategy and the verdict against TARGETS."""
    first = strategies[0]
    rows = []
    for w in workloads:
        runs = {s: {r["pair"]: r for r in results if r["workload"] == w.label and r["strategy"] == s}
                for s in strategies}
        for s in strategies:
            mine = list(runs[s].values())
            if not mine:
                continue
            row: dict[str, Any] = {"workload": w.label, "kind": w.kind, "strategy": s, "pairs": len(mine),
                                   "errors": sum(r["errors"] for r in mine), "shared_prefixes": shared[w.label]}
            for m in METRICS:
                row[m] = _median([r[m] for r in mine])
            row["ratios"], row["checks"] = {}, []
            if s == first:
                for other in strategies[1:]:
                    ratio: dict[str, float | None] = {}
                    spread: dict[str, tuple[float, float]] = {}
                    for stat in ("ttft_mean_ms", "ttft_p99_ms"):
                        per_pair = [runs[s][p][stat] / runs[other][p][stat] for p in runs[s]
                                    if p in runs[other] and runs[other][p][stat] > 0]
                        ratio[stat] = _median(per_pair)
                        if per_pair:
                            spread[stat] = (min(per_pair), max(per_pair))
                    row["ratios"][other] = ratio
                    row.setdefault("spread", {})[other] = spread
                    target = TARGETS.get(other)
                    if target is None or (other == SGLANG and not shared[w.label]):
                        continue
                    for stat, name in (("ttft_mean_ms", "mean"), ("ttft_p99_ms", "p99")):
                        v = ratio[stat]
                        row["checks"].append({"vs": other, "stat": name, "ratio": v, "target": target,
                                              "ok": v is not None and v <= target})
            rows.append(row)
    return rows


# ------------------------------------------------------------------ output

SHORT = {RR: "RR", SGLANG: "SGLang"}


def _short(s: str) -> str:
    return SHORT.get(s, s)


def _ratio_cell(row: dict[str, Any], other: str, stat: str) -> str:
    v = row["ratios"].get(other, {}).get(stat)
    return "-" if v is None else f"{v:.2f}x"


def _ratio_md(row: dict[str, Any], other: str, stat: str) -> str:
    """The median ratio with the per-pair range when there are several pairs."""
    cell = _ratio_cell(row, other, stat)
    lo_hi = row.get("spread", {}).get(other, {}).get(stat)
    if lo_hi is None or row["pairs"] < 2:
        return cell
    return f"{cell} ({lo_hi[0]:.2f}-{lo_hi[1]:.2f})"


def _verdict(row: dict[str, Any]) -> str:
    if not row["checks"]:
        return "-" if row["ratios"] else ""
    failed = [f"{c['stat']} vs {_short(c['vs'])}" for c in row["checks"] if not c["ok"]]
    return "PASS" if not failed else "FAIL (" + ", ".join(failed) + ")"


def _num(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(rows: Sequence[dict[str, Any]], strategies: Sequence[str]) -> list[str]:
    """The fixed-width table."""
    others = list(strategies[1:])
    width = max(len(s) for s in strategies)
    head = (f"{'workload':13s} {'strategy':{width}s} {'TTFT mean':>9s} {'p50':>8s} {'p99':>8s} {'e2e mean':>8s} "
            f"{'calls/s':>8s} {'tok/s':>8s} {'KV hit':>6s} {'err':>4s}")
    for o in others:
        head += f" {'/' + _short(o) + ' mean':>12s} {'p99':>6s}"
    lines = [head + "  targets"]
    for r in rows:
        line = (f"{r['workload']:13s} {r['strategy']:{width}s} {_num(r['ttft_mean_ms'], '9.1f')} "
                f"{_num(r['ttft_p50_ms'], '8.1f')} {_num(r['ttft_p99_ms'], '8.1f')} {_num(r['e2e_mean_ms'], '8.1f')} "
                f"{_num(r['calls_per_s'], '8.1f')} {_num(r['output_tokens_per_s'], '8.0f')} "
                f"{_num(r['kv_hit'], '6.3f')} {r['errors']:4d}")
        for o in others:
            line += f" {_ratio_cell(r, o, 'ttft_mean_ms') if r['ratios'] else '':>12s} "
            line += f"{_ratio_cell(r, o, 'ttft_p99_ms') if r['ratios'] else '':>6s}"
        lines.append(line + "  " + _verdict(r))
    return lines


def markdown_table(rows: Sequence[dict[str, Any]], strategies: Sequence[str]) -> list[str]:
    """The same table in Markdown."""
    others = list(strategies[1:])
    cols = ["workload", "strategy", "TTFT mean", "p50", "p99", "e2e mean", "calls/s", "output tok/s", "KV hit",
            "errors"]
    for o in others:
        cols += [f"mean / {_short(o)}", f"p99 / {_short(o)}"]
    cols.append("targets")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r["workload"], f"**{r['strategy']}**" if r["ratios"] else r["strategy"],
                 f"{_num(r['ttft_mean_ms'], ',.0f')} ms", f"{_num(r['ttft_p50_ms'], ',.0f')} ms",
                 f"{_num(r['ttft_p99_ms'], ',.0f')} ms", f"{_num(r['e2e_mean_ms'], ',.0f')} ms",
                 _num(r["calls_per_s"], ",.1f"), _num(r["output_tokens_per_s"], ",.0f"), _num(r["kv_hit"], ".3f"),
                 str(r["errors"])]
        for o in others:
            cells += [_ratio_md(r, o, "ttft_mean_ms"), _ratio_md(r, o, "ttft_p99_ms")] if r["ratios"] else ["", ""]
        cells.append(_verdict(r))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def summary(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Targets met / missed, in words."""
    checks = [(r, c) for r in rows for c in r["checks"]]
    if not checks:
        return ["No target applies (the comparison needs ROUND_ROBIN_LOWEST_CONCURRENCY or SGLANG_CACHE_AWARE)."]
    missed = [(r, c) for r, c in checks if not c["ok"]]
    first = rows[0]["strategy"] if rows else "?"
    out = [f"Targets: {len(checks) - len(missed)} of {len(checks)} checks met ({first} mean and p99 TTFT "
           f"<= 1.0x {RR} at every workload, <= 0.9x {SGLANG} where prompts share prefixes)."]
    if missed:
        out.append("Missed: " + "; ".join(
            f"{r['workload']} {c['stat']} vs {_short(c['vs'])} {_num(c['ratio'], '.2f')}x (target {c['target']:g}x)"
            for r, c in missed) + ".")
    return out


def other_losses(rows: Sequence[dict[str, Any]], margin: float = 0.05) -> list[str]:
    """Where the first strategy is worse than a baseline by more than `margin` on what no target checks: TTFT
    against a baseline whose target does not apply there, e2e mean, throughput (medians over pairs)."""
    by_key = {(r["workload"], r["strategy"]): r for r in rows}
    parts = []
    for r in rows:
        if not r["ratios"]:
            continue
        checked = {(c["vs"], c["stat"]) for c in r["checks"]}
        found = []
        for other, ratio in r["ratios"].items():
            o = by_key.get((r["workload"], other))
            if o is None:
                continue
            for stat, name in (("ttft_mean_ms", "mean"), ("ttft_p99_ms", "p99")):
                v = ratio.get(stat)
                if (other, name) not in checked and v is not None and v > 1 + margin:
                    found.append(f"TTFT {name} {v:.2f}x {_short(other)}'s")
            if o["e2e_mean_ms"] and r["e2e_mean_ms"] / o["e2e_mean_ms"] > 1 + margin:
                found.append(f"e2e mean {r['e2e_mean_ms'] / o['e2e_mean_ms']:.2f}x {_short(other)}'s")
            if o["calls_per_s"] and r["calls_per_s"] / o["calls_per_s"] < 1 - margin:
                found.append(f"calls/s {r['calls_per_s'] / o['calls_per_s']:.2f}x {_short(other)}'s")
        if found:
            parts.append(f"{r['workload']}: {', '.join(found)}")
    if not parts:
        return []
    first = next(r["strategy"] for r in rows if r["ratios"])
    return [f"Where {first} is worse by more than {margin:.0%} on what the targets do not check (ratios of the "
            "medians): " + "; ".join(parts) + "."]


def _errors_line(results: Sequence[dict[str, Any]]) -> list[str]:
    bad = [r for r in results if r["errors"]]
    return [f"errors: {r['workload']} {r['strategy']} pair {r['pair']}: {r['error_codes']}" for r in bad]


def markdown(rows: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]], a: argparse.Namespace,
             ctx: dict[str, Any]) -> str:
    """The docs section, between the live-benchmark markers."""
    strategies = ctx["strategies"]
    code = ctx["versions"][0] if ctx["versions"][0] == ctx["versions"][1] else \
        f"{ctx['versions'][0]} at the start, {ctx['versions'][1]} at the end"
    deploy = (f"{a.workers} PDFUSION mock workers" if a.deploy == "PD_FUSION"
              else f"{a.workers} PREFILL + {a.decode_workers} DECODE mock workers")
    closed_calls_text = ", ".join(f"c={c}: {closed_calls(c, a)}" for c in ctx["concurrency"])
    scales_text = ", ".join(f"{closed_time_scale(c, a):g} at c={c}" for c in ctx["concurrency"])
    lines = [
        BEGIN,
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, 1-minute load average {ctx['load'][0]:.1f} -> {ctx['load'][1]:.1f} (shared "
        f"machine); {ctx['wall_s']:.0f} s in all; code {code}; mock worker engine: {ctx['engine']}. Command:",
        "",
        "```sh",
        ctx["command"],
        "```",
        "",
        f"Real processes on 127.0.0.1: {deploy} and one gateway, **fresh for every run** (caches cold), the "
        "client in the benchmark's own process (uvloop, "
        f"{a.channels} channels). {len(strategies)} strategies, {a.pairs} pair(s): each pair runs every strategy on "
        "the same workload, the order rotating from pair to pair; every figure is the median over the pairs, every "
        "ratio the median of the per-pair ratios of the first strategy to the other (their range in brackets). "
        "Times in simulated ms (client-measured real time / time scale), throughput per simulated second; KV "
        "hit = prompt tokens the workers served from cache / prompt tokens (`aux_info` `total_reuse_len` / "
        "`input_len` of the first message); output tokens = streamed messages (one token each).",
        "",
    ]
    if ctx["concurrency"]:
        lines.append(f"- **closed c=N**: N callers back to back until a fixed number of calls ({closed_calls_text}) "
                     "is done; the prompt mix of `make demo` (`flexlb.demo.prompt_mix`: six shared system prompts "
                     "of 256-1024 tokens plus a 16-255-token tail per call, 8-32 new tokens; seed 7 + pair index), "
                     f"the mock worker's default engine at time scale {scales_text} (so that the 2 cores are not "
                     "what limits the run: at time scale 1 and c=128 the workers' iterations last ~3x the engine "
                     "model's), the gateway's default config. Every prompt shares a prefix, so the SGLang target "
                     "applies.")
    if ctx["loads"]:
        lines.append(
            f"- **open Lx**: bench/replay.py's open-loop replay of the first {ctx['rows']} rows of "
            f"`{Path(ctx['trace']).name}` with arrivals at L x the trace's rate, time scale {a.trace_time_scale:g}, "
            "replay's engine flags (FIFO costs: prefill 20 ms + 0.1 ms per uncached token, decode step 10 ms + "
            "0.2 ms x running; 512-token blocks, 4000-block cache; a batching engine maps these costs onto its "
            "iterations) and gateway config (LOCAL_STATIC, 512-token keys), outputs capped at 64 tokens. "
            f"{ctx['shared_share']:.1%} of the rows' blocks repeat an earlier row's, so the SGLang target "
            f"{'applies' if ctx['shared_share'] >= SHARED_MIN else 'does not apply'} (it needs >= {SHARED_MIN:.0%}).")
    elif ctx["open_skipped"]:
        lines.append(f"- open loop skipped: {ctx['open_skipped']}")
    lines += ["", *markdown_table(rows, strategies), ""]
    if ctx.get("best_hit"):
        lines += [best_hit_line(ctx["best_hit"]), ""]
    lines += summary(rows)
    losses = other_losses(rows)
    if losses:
        lines += ["", *losses]
    errs = _errors_line(results)
    if errs:
        lines += ["", "Errors: " + "; ".join(e.removeprefix("errors: ") for e in errs) + "."]
    lines.append(END)
    return "\n".join(lines)


def best_hit_line(best: dict[str, float]) -> str:
    """The closed loops' KV-hit bound (best_kv_hit, median over the pairs' prompt sequences)."""
    if not best:
        return ""
    parts = ", ".join(f"{label} {v:.3f}" for label, v in best.items())
    return (f"Best KV hit any router could reach on the closed loops' prompts ({ENGINE_BLOCK_TOKENS}-token engine "
            f"blocks, every prefix seen before reused): {parts}. A strategy at the bound with no queueing (c=1) "
            "has the least TTFT the engine allows: no router can beat it.")


# ------------------------------------------------------------------ main


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()] if text and text.lower() != "none" else []


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(description="Live A/B of routing strategies through the real gateway to real mock "
                                 "workers: closed loops with the demo's prompt mix and open-loop trace replays, "
                                 "strategies interleaved on fresh fleets, medians over pairs.")
    ap.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES),
                    help="comma-separated; the first is compared with the others (default: %(default)s)")
    ap.add_argument("--pairs", type=int, default=None, help="runs of every strategy per workload (default 3, "
                    "--quick 1)")
    ap.add_argument("--concurrency", default="1,8,32,128", help="closed-loop concurrencies ('' or none: no closed "
                    "loop)")
    ap.add_argument("--calls", type=int, default=None, help="calls per closed-loop run (default max(48, 8 x "
                    "concurrency); --quick max(24, 3 x concurrency))")
    ap.add_argument("--loads", default="0.5,1.0,1.5", help="open-loop arrival-rate multipliers ('' or none: no "
                    "open loop)")
    ap.add_argument("--trace", default=None, help=f"Mooncake-format JSONL for the open loop (default {DEFAULT_TRACE} "
                    "when it exists, else no open loop)")
    ap.add_argument("--limit", type=int, default=None, help="first N trace rows (default 300, --quick 100)")
    ap.add_argument("--workers", type=int, default=4, help="PDFUSION (or, DISAGGREGATED, PREFILL) mock workers")
    ap.add_argument("--deploy", choices=["PD_FUSION", "DISAGGREGATED"], default="PD_FUSION")
    ap.add_argument("--decode-workers", type=int, default=None, help="DECODE workers when DISAGGREGATED "
                    "(default half of --workers, at least 1)")
    ap.add_argument("--time-scale", type=float, default=None, help="closed loop: the mock workers' --time-scale "
                    "(default max(1, concurrency / 32), so the machine's cores do not limit the run)")
    ap.add_argument("--trace-time-scale", type=float, default=0.1, help="open loop: time scale of workers and "
                    "arrivals (as bench/replay.py)")
    ap.add_argument("--engine", default=None, help="pass `--engine X` to every mock worker (default: pass nothing, "
                    "the mock worker's default)")
    ap.add_argument("--channels", type=int, default=4, help="client gRPC channels")
    ap.add_argument("--run-timeout", type=float, default=600.0, help="bound on one run's traffic, real s")
    ap.add_argument("--quick", action="store_true", help="~2 minutes: 1 pair, fewer calls, 100 trace rows")
    ap.add_argument("--json", action="store_true", help="print every run as one JSON line")
    ap.add_argument("--out", default=None, help="markdown file whose live-benchmark section is written/replaced")
    a = ap.parse_args(argv)
    a.pairs = a.pairs if a.pairs is not None else (1 if a.quick else 3)
    a.limit = a.limit if a.limit is not None else (100 if a.quick else 300)
    a.decode_workers = a.decode_workers if a.decode_workers is not None else max(1, a.workers // 2)
    try:
        a.concurrency_list = [int(c) for c in _floats(a.concurrency)]
        a.load_list = _floats(a.loads)
    except ValueError as exc:
        ap.error(f"--concurrency / --loads: {exc}")
    if min(a.pairs, a.workers, a.decode_workers, a.channels, a.limit, *a.concurrency_list, a.calls or 1) < 1:
        ap.error("--pairs, --workers, --decode-workers, --channels, --limit, --calls and concurrencies must be >= 1")
    if min(a.time_scale or 1.0, a.trace_time_scale, *a.load_list, a.run_timeout) <= 0:
        ap.error("time scales, loads and --run-timeout must be positive")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, run the pairs, print the table (and write the docs section with --out)."""
    a = parse_args(argv)
    strategies = list(dict.fromkeys(s.strip().upper() for s in a.strategies.split(",") if s.strip()))
    unknown = [s for s in strategies if s not in strategy_names()]
    if unknown or len(strategies) < 2:
        print(f"live: need two or more known strategies (unknown: {', '.join(unknown) or '-'}); accepted: "
              f"{', '.join(strategy_names())}", file=sys.stderr)
        return 2
    help_text = mock_worker_help()
    has_engine = "--engine" in help_text
    if a.engine and not has_engine:
        print(f"live: --engine {a.engine} given, but this mock worker has no --engine flag", file=sys.stderr)
        return 2
    engine = (f"`--engine {a.engine}`" if a.engine else
              f"its default ({engine_default(help_text) or '?'}, `--engine` not passed)" if has_engine else
              "its only engine (FIFO prefills, one at a time; no `--engine` flag yet)")
    signal.signal(signal.SIGTERM, replay._on_sigterm)
    t_start, load0 = time.monotonic(), os.getloadavg()[0]
    version0 = replay.code_version() if a.out else ""

    workloads = [Workload("closed", c) for c in a.concurrency_list]
    open_skipped = ""
    rows: list[TraceRequest] = []
    trace_bodies: list[bytes] = []
    trace = a.trace or (str(DEFAULT_TRACE) if DEFAULT_TRACE.exists() else None)
    shared: dict[str, bool] = {w.label: True for w in workloads}  # the demo's mix: every prompt shares a prefix
    share = 0.0
    if a.load_list and trace is None:
        open_skipped = f"no --trace given and {DEFAULT_TRACE} does not exist"
        print(f"live: open loop skipped ({open_skipped})", file=sys.stderr)
    elif a.load_list and trace is not None:
        rows = load_trace(trace, a.limit)
        if not rows:
            print(f"live: no rows in {trace}", file=sys.stderr)
            return 2
        trace_bodies = replay.build_requests(rows, 0, 64)
        share = shared_block_share(rows)
        for load in a.load_list:
            w = Workload("open", load)
            workloads.append(w)
            shared[w.label] = share >= SHARED_MIN
    if not workloads:
        print("live: nothing to run (no concurrency and no open loop)", file=sys.stderr)
        return 2

    total = a.pairs * len(workloads) * len(strategies)
    print(f"live A/B: {', '.join(strategies)}; {a.pairs} pair(s) x {len(workloads)} workload(s) = {total} runs, "
          f"each on a fresh fleet; mock worker engine: {engine}", file=sys.stderr)
    results: list[dict[str, Any]] = []
    best_hit: dict[str, list[float]] = {}
    n = 0
    for pair in range(a.pairs):
        order = strategies[pair % len(strategies):] + strategies[: pair % len(strategies)]
        for w in workloads:
            bodies = closed_bodies(closed_calls(int(w.level), a), DEMO_SEED + pair) if w.kind == "closed" else []
            if bodies:
                best_hit.setdefault(w.label, []).append(best_kv_hit(bodies))
            for s in order:
                n += 1
                if w.kind == "closed":
                    r = run_closed(s, int(w.level), bodies, a)
                else:
                    r = run_open(s, w.level, rows, trace_bodies, a)
                r.update({"workload": w.label, "kind": w.kind, "level": w.level, "strategy": s, "pair": pair + 1})
                results.append(r)
                print(f"  [{n}/{total}] {w.label:13s} {s:30s} pair {pair + 1}: TTFT mean {r['ttft_mean_ms']:9.1f} "
                      f"p99 {r['ttft_p99_ms']:9.1f} ms, KV hit {r['kv_hit']:.3f}, {r['errors']} errors, "
                      f"{r['wall_s']:.1f} s", file=sys.stderr, flush=True)
                if a.json:
                    print(json.dumps(r), flush=True)
    wall_s = time.monotonic() - t_start
    agg = aggregate(results, workloads, strategies, shared)
    report = sys.stderr if a.json else sys.stdout  # with --json, stdout carries only the JSON lines
    print(f"live A/B: {a.workers} workers ({a.deploy}), {a.pairs} pair(s), medians; simulated ms; "
          f"mock worker engine: {engine}", file=report)
    if rows:
        print(f"open loop: first {len(rows)} rows of {trace}; {share:.1%} of blocks repeat an earlier row's "
              f"(SGLang target {'applies' if share >= SHARED_MIN else 'does not apply'})", file=report)
    best = {label: statistics.median(v) for label, v in best_hit.items()}
    for line in [*table(agg, strategies), best_hit_line(best), *summary(agg), *other_losses(agg),
                 *_errors_line(results), f"total wall time {wall_s:.1f} s"]:
        print(line, file=report)
    if a.out:
        ctx = {"strategies": strategies, "versions": (version0, replay.code_version()),
               "load": (load0, os.getloadavg()[0]), "wall_s": wall_s, "engine": engine,
               "command": "python bench/live.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
               "concurrency": a.concurrency_list, "loads": [w for w in workloads if w.kind == "open"],
               "rows": len(rows), "trace": trace or "", "shared_share": share, "open_skipped": open_skipped,
               "best_hit": best}
        update_section(Path(a.out), SECTION, TITLE, markdown(agg, results, a, ctx))
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
