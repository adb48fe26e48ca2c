"""`flexlb demo`: a PD set of mock workers behind a gateway, real traffic through the default strategy and
then the same traffic through round-robin on a fresh fleet, a side-by-side report, then a clean stop."""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time
from dataclasses import dataclass

import grpc

from flexlb.config import MasterConfig
from flexlb.launch import Proc, spawn, stop_all
from flexlb.pb import model_rpc_service_pb2 as pb

BASELINE = "ROUND_ROBIN_LOWEST_CONCURRENCY"
DEFAULT_STRATEGY = MasterConfig().load_balance_strategy
DEMO_SEED = 7


def _bar(done: int, total: int, errors: int, width: int = 40) -> str:
    filled = int(width * done / total)
    return f"\r  [{'#' * filled}{'.' * (width - filled)}] {done}/{total} calls, {errors} errors"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


@dataclass(frozen=True)
class Prompt:
    """One call of the prompt mix."""

    token_ids: list[int]
    max_new_tokens: int


def prompt_mix(requests: int, seed: int = DEMO_SEED) -> list[Prompt]:
    """The demo's traffic, also used by bench/live.py: six shared system prompts (256, 512 or 1024 tokens, as
    real chat traffic has), each call one of them plus its own tail of 16-255 tokens, 8-32 new tokens."""
    rng = random.Random(seed)
    prefixes = [[rng.randrange(1, 30000) for _ in range(rng.choice((256, 512, 1024)))] for _ in range(6)]
    out = []
    for _ in range(requests):
        prefix = rng.choice(prefixes)
        tail = [rng.randrange(1, 30000) for _ in range(rng.randrange(16, 256))]
        out.append(Prompt(prefix + tail, rng.randrange(8, 33)))
    return out


@dataclass
class Traffic:
    """What the client measured."""

    ttft_ms: list[float]
    e2e_ms: list[float]
    errors: int
    prompt_tokens: int = 0
    reused_tokens: int = 0
    wall_s: float = 0.0

    @property
    def hit_ratio(self) -> float:
        """Prompt tokens the workers' KV cache served / all prompt tokens (aux_info of the first message)."""
        return self.reused_tokens / max(self.prompt_tokens, 1)


async def _traffic(port: int, prompts: list[Prompt], concurrency: int) -> Traffic:
    out = Traffic([], [], 0)
    done = 0
    sem = asyncio.Semaphore(concurrency)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = channel.unary_stream(
            "/RpcService/GenerateStreamCall",
            request_serializer=pb.GenerateInputPB.SerializeToString,
            response_deserializer=pb.GenerateOutputsPB.FromString,
        )

        async def one(i: int, prompt: Prompt) -> None:
            nonlocal done
            req = pb.GenerateInputPB(
                request_id=i + 1,
                token_ids=prompt.token_ids,
                generate_config=pb.GenerateConfigPB(
                    max_new_tokens=prompt.max_new_tokens, is_streaming=True, can_use_pd_separation=True
                ),
            )
            async with sem:
                t0 = time.monotonic()
                first = None
                try:
                    async for message in stub(req, timeout=30):
                        if first is None:
                            first = time.monotonic()
                            # the worker says how much of the prompt came from its KV cache
                            aux = message.flatten_output.aux_info[0]
                            out.prompt_tokens += aux.input_len
                            out.reused_tokens += aux.total_reuse_len
                    if first is None:
                        out.errors += 1  # a stream that ended without a message
                    else:
                        out.ttft_ms.append((first - t0) * 1000)
                        out.e2e_ms.append((time.monotonic() - t0) * 1000)
                except grpc.aio.AioRpcError:
                    out.errors += 1
                done += 1
                print(_bar(done, len(prompts), out.errors), end="", file=sys.stderr, flush=True)

        t_start = time.monotonic()
        await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
        out.wall_s = time.monotonic() - t_start
    print(file=sys.stderr)
    return out


async def _run_fleet(label: str, strategy: str | None, prompts: list[Prompt], concurrency: int) -> Traffic:
    """A fresh PD fleet (cold caches), the prompts through it, per-worker counts; every process stopped."""
    procs: list[Proc] = []
    try:
        print(f"[{label}] starting 2 PREFILL + 2 DECODE mock workers ...")
        ports: dict[str, list[int]] = {"PREFILL": [], "DECODE": []}
        for role in ("PREFILL", "PREFILL", "DECODE", "DECODE"):
            p = await spawn(
                "mock-worker",
                "--role",
                role,
                "--port",
                "0",
                "--time-scale",
                "0.2",
                name=f"{role.lower()}-{len(ports[role])}",
            )
            procs.append(p)
            ports[role].append(p.port)
            print(f"  {p.name:10s} 127.0.0.1:{p.port}")
        args = [
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--admin-port",
            "0",
            "--http-port",
            "0",
            *(["--strategy", strategy] if strategy else []),
            "--log-level",
            "WARNING",
        ]
        for port in ports["PREFILL"]:
            args += ["--prefill", f"127.0.0.1:{port}"]
        for port in ports["DECODE"]:
            args += ["--decode", f"127.0.0.1:{port}"]
        gw = await spawn(*args, name="gateway")
        procs.append(gw)
        print(f"  gateway: gRPC 127.0.0.1:{gw.port}  admin http://127.0.0.1:{gw.admin_port}/actuator/info")
        print(f"[{label}] sending {len(prompts)} streamed GenerateStreamCall requests, {concurrency} at a time ...")
        traffic = await _traffic(gw.port, prompts, concurrency)
        info = await asyncio.to_thread(gw.info)
        print(f"  done in {traffic.wall_s:.1f} s: {len(traffic.ttft_ms)} ok, {traffic.errors} errors")
        print(f"  {'worker':22s} {'role':8s} {'calls':>6s} {'in flight':>9s}")
        for w in info["workers"]:
            print(f"  {w['worker']:22s} {w['role']:8s} {w['dispatched_total']:6d} {w['in_flight']:9d}")
        return traffic
    finally:
        print(f"[{label}] stopping everything ...")
        await stop_all(procs)


def _figures(t: Traffic) -> list[tuple[str, str]]:
    def ms(values: list[float], stat: str) -> str:
        if not values:
            return "-"
        v = statistics.fmean(values) if stat == "mean" else percentile(values, float(stat[1:]))
        return f"{v:.1f} ms"

    return [
        ("TTFT mean", ms(t.ttft_ms, "mean")),
        ("TTFT p50", ms(t.ttft_ms, "p50")),
        ("TTFT p99", ms(t.ttft_ms, "p99")),
        ("E2E mean", ms(t.e2e_ms, "mean")),
        ("E2E p99", ms(t.e2e_ms, "p99")),
        ("KV cache hit", f"{t.hit_ratio:.0%}"),
        ("errors", str(t.errors)),
        ("wall", f"{t.wall_s:.1f} s"),
    ]


def _ratio(a: list[float], b: list[float], stat: str) -> str:
    if not a or not b:
        return "-"
    if stat == "mean":
        x, y = statistics.fmean(a), statistics.fmean(b)
    else:
        q = float(stat[1:])
        x, y = percentile(a, q), percentile(b, q)
    return f"{x / y:.2f}x" if y > 0 else "-"


def report(names: list[str], runs: list[Traffic]) -> list[str]:
    """The side-by-side table (one column per strategy, the A/B ratio last when there are two)."""
    cols = [_figures(t) for t in runs]
    width = max(14, *(len(n) for n in names))
    head = f"{'':14s}" + "".join(f" {n:>{width}s}" for n in names)
    ratios: dict[str, str] = {}
    if len(runs) == 2:
        a, b = runs
        head += f" {'ratio':>7s}"
        ratios = {"TTFT mean": _ratio(a.ttft_ms, b.ttft_ms, "mean"), "TTFT p50": _ratio(a.ttft_ms, b.ttft_ms, "p50"),
                  "TTFT p99": _ratio(a.ttft_ms, b.ttft_ms, "p99"), "E2E mean": _ratio(a.e2e_ms, b.e2e_ms, "mean"),
                  "E2E p99": _ratio(a.e2e_ms, b.e2e_ms, "p99")}
    lines = [head]
    for row, (label, _) in enumerate(cols[0]):
        line = f"{label:14s}" + "".join(f" {c[row][1]:>{width}s}" for c in cols)
        if label in ratios:
            line += f" {ratios[label]:>7s}"
        lines.append(line)
    return lines


async def demo(requests: int, concurrency: int, strategy: str | None = None) -> int:
    """Run the strategy (the gateway's default unless named), then round-robin on the same prompts and a fresh
    fleet; 0 when every call succeeded."""
    prompts = prompt_mix(requests, DEMO_SEED)
    name = (strategy or DEFAULT_STRATEGY).strip().upper()
    plan: list[tuple[str, str | None]] = [(name, strategy)]
    if name != BASELINE:
        plan.append((BASELINE, BASELINE))
    runs = []
    for label, flag in plan:
        runs.append(await _run_fleet(label, flag, prompts, concurrency))
    print(f"\n{requests} calls, {concurrency} at a time, the same prompts (seed {DEMO_SEED}) on a fresh, cold fleet "
          "each; client-measured" + (f"; ratio = {plan[0][0]} / {BASELINE}" if len(runs) == 2 else ""))
    for line in report([label for label, _ in plan], runs):
        print(line)
    return 0 if all(t.errors == 0 for t in runs) else 1


def run_demo(requests: int, concurrency: int, strategy: str | None = None) -> int:
    """Entry point of `flexlb demo` (the gateway's default strategy unless one is named, then round-robin)."""
    return asyncio.run(demo(requests, concurrency, strategy))
