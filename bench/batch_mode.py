"""BATCH against DIRECT Schedule, and QUEUE-mode priority under overload, on real processes.

    python bench/batch_mode.py [--pairs 3] [--workers 2] [--window-ms 10] [--out docs/benchmarks.md]

Each run starts a fresh fleet: `flexlb mock-worker` PDFUSION processes on the batching engine model and a
`flexlb serve` gateway whose FLEXLB_CONFIG sets defaultScheduleMode (batchFusedWorkers so BATCH reaches the
fused mock workers). The load generator (this process, asyncio) follows the RTP-LLM frontend: Schedule on the
gateway; then, with enqueued_by_master, FetchResponse on the worker it names, else GenerateStreamCall there.
TTFT = Schedule sent to the first streamed message.

- A/B: DIRECT, BATCH (HEAD's fixed window) and BATCH_IDLE (the same with flexlbBatchDispatchWhenIdle: sent at
  once while the worker has no batch in flight) interleaved in rounds (fresh fleets each, the order rotated), at
  concurrency 1 (the TTFT BATCH adds when nothing else is waiting) and at saturation (closed loop,
  `--concurrency`); medians over the rounds of calls/s, TTFT and the mean batch size (the gateway's
  flexlb_schedule_batch_size histogram, scraped from /actuator/prometheus before and after the workload).
  Then every mode again at one equal offered load near saturation (open loop, Poisson, `--equal-load` x
  DIRECT's median saturation throughput). The must-show is checked on each BATCH variant: batches (mean
  size > 1) at saturation, throughput raised there, and the TTFT added over DIRECT no more than the window,
  at c=1 and at saturation. The added TTFT at saturation is read at the equal load, not in the closed loop:
  a closed loop holds the number of calls in the system fixed, so a mode that decodes faster (higher
  throughput) moves calls from decoding to waiting for their prefill and its TTFT rises by Little's law,
  whatever batching itself adds; at the same arrival rate both modes face the same work.
- priority: QUEUE mode, open loop at `--overload` x the largest saturation throughput measured above, half
  the requests priority 90 and half 10: TTFT p99 of each class (target: high <= 0.5x low).

Writes only to --out (a section of that markdown file); without it the section goes to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from docs_section import update_section

from flexlb.launch import Proc, spawn, stop_all
from flexlb.pb import flexlb_schedule_service_pb2 as fpb
from flexlb.pb import model_rpc_service_pb2 as pb

SECTION = "batch-mode"
CALL_TIMEOUT_S = 120.0
MODES = ("DIRECT", "BATCH", "BATCH_IDLE")  # BATCH_IDLE: BATCH with flexlbBatchDispatchWhenIdle


@dataclass
class Call:
    """One request as the frontend saw it."""

    priority: int = 50
    sent_s: float = 0.0
    first_s: float | None = None
    end_s: float = 0.0
    enqueued: bool = False
    error: str | None = None


class Frontend:
    """Channels to the gateway and to workers; one request at a time per call of `request`."""

    def __init__(self, gateway_port: int, max_new_tokens: int, prompt_tokens: tuple[int, int], seed: int) -> None:
        self.gateway = grpc.aio.insecure_channel(f"127.0.0.1:{gateway_port}")
        self.schedule = self.gateway.unary_unary(
            "/FlexlbService/Schedule", request_serializer=fpb.FlexlbScheduleRequestPB.SerializeToString,
            response_deserializer=fpb.FlexlbScheduleResponsePB.FromString)
        self._workers: dict[str, grpc.aio.Channel] = {}
        self.max_new_tokens = max_new_tokens
        self.prompt_tokens = prompt_tokens
        self.rng = random.Random(seed)
        self._ids = iter(range(1, 1 << 40))

    def _worker(self, target: str) -> grpc.aio.Channel:
        ch = self._workers.get(target)
        if ch is None:
            ch = self._workers[target] = grpc.aio.insecure_channel(target)
        return ch

    def _input(self) -> pb.GenerateInputPB:
        rid = next(self._ids)
        n = self.rng.randint(*self.prompt_tokens)
        start = self.rng.randrange(30000)
        return pb.GenerateInputPB(request_id=rid, token_ids=[(start + i * 7919) % 30000 + 1 for i in range(n)],
                                  generate_config=pb.GenerateConfigPB(max_new_tokens=self.max_new_tokens,
                                                                      is_streaming=True, can_use_pd_separation=True))

    async def request(self, call: Call) -> None:
        """Schedule, then FetchResponse (enqueued by the master) or GenerateStreamCall on the chosen worker."""
        inp = self._input()
        call.sent_s = time.perf_counter()
        try:
            reply = await self.schedule(fpb.FlexlbScheduleRequestPB(
                request_id=inp.request_id, generate_input=inp.SerializeToString(), seq_len=len(inp.token_ids),
                generate_timeout=int(CALL_TIMEOUT_S * 1000), max_new_tokens=self.max_new_tokens,
                priority=call.priority, model="engine_service"), timeout=CALL_TIMEOUT_S)
            if not reply.success:
                call.error = f"code_{reply.code}"
                return
            by_role = {s.role: f"{s.server_ip}:{s.grpc_port}" for s in reply.server_status}
            target = by_role.get("PREFILL") or by_role["PDFUSION"]
            ch = self._worker(target)
            call.enqueued = reply.enqueued_by_master
            if reply.enqueued_by_master:
                stream = ch.unary_stream("/RpcService/FetchResponse",
                                         request_serializer=pb.FetchRequestPB.SerializeToString)(
                    pb.FetchRequestPB(request_id=inp.request_id), timeout=CALL_TIMEOUT_S)
            else:
                for s in reply.server_status:
                    inp.generate_config.role_addrs.append(pb.RoleAddrPB(
                        role=pb.RoleAddrPB.RoleType.Value(s.role), ip=s.server_ip, http_port=s.http_port,
                        grpc_port=s.grpc_port, role_str=s.role))
                stream = ch.unary_stream("/RpcService/GenerateStreamCall",
                                         request_serializer=pb.GenerateInputPB.SerializeToString)(
                    inp, timeout=CALL_TIMEOUT_S)
            async for _ in stream:
                if call.first_s is None:
                    call.first_s = time.perf_counter()
        except grpc.aio.AioRpcError as exc:
            call.error = exc.code().name
        finally:
            call.end_s = time.perf_counter()

    async def close(self) -> None:
        """Close every channel."""
        await self.gateway.close()
        for ch in self._workers.values():
            await ch.close()


async def fleet(a: argparse.Namespace, config: dict[str, Any]) -> list[Proc]:
    """Fresh mock workers, then the gateway (its FLEXLB_CONFIG = `config`); the gateway is the last one."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MODEL_SERVICE_CONFIG", "WHALE_MASTER_CONFIG", "FLEXLB_CONFIG")}
    flags = ["--engine", "batching", "--time-scale", f"{a.time_scale:g}", *a.worker_flags.split()]
    workers = await asyncio.gather(*(spawn("mock-worker", "--role", "PDFUSION", "--host", "127.0.0.1", "--port", "0",
                                           *flags, name=f"worker-{i}", env=env) for i in range(a.workers)))
    args = ["serve", "--host", "127.0.0.1", "--port", "0", "--admin-port", "0", "--http-port", "0",
            "--log-level", "WARNING"]
    for w in workers:
        args += ["--worker", f"127.0.0.1:{w.port}"]
    try:
        gateway = await spawn(*args, name="gateway", env={**env, "FLEXLB_CONFIG": json.dumps(config)})
    except Exception:
        await stop_all(list(workers))
        raise
    return [*workers, gateway]


def gateway_config(mode: str, a: argparse.Namespace) -> dict[str, Any]:
    """FLEXLB_CONFIG of a run."""
    return {"defaultScheduleMode": "BATCH" if mode == "BATCH_IDLE" else mode, "loadBalanceStrategy": a.strategy,
            "batchFusedWorkers": True, "flexlbBatchAlgorithm": "fixed_window", "flexlbBatchFixedWaitMs": a.window_ms,
            "flexlbBatchSizeMax": a.size_max, "flexlbBatchDispatchWhenIdle": mode == "BATCH_IDLE",
            "maxQueueSize": 100_000}


def batch_counters(text: str) -> dict[str, float]:
    """From a /actuator/prometheus page: the batch size histogram's sum and count, and dispatches by reason."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("flexlb_schedule_batch_size_sum "):
            out["sum"] = float(line.split()[-1])
        elif line.startswith("flexlb_schedule_batch_size_count "):
            out["count"] = float(line.split()[-1])
        elif line.startswith("flexlb_schedule_dispatch_reasons_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            out[f"reason:{reason}"] = float(line.split()[-1])
    return out


def scrape(admin_port: int | None) -> dict[str, float]:
    """The gateway's batch counters now."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/actuator/prometheus", timeout=10) as r:
        return batch_counters(r.read().decode())


def batch_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Batches, requests, mean batch size and dispatch reasons between two scrapes (None: no batch sent)."""
    count = after.get("count", 0.0) - before.get("count", 0.0)
    total = after.get("sum", 0.0) - before.get("sum", 0.0)
    reasons = {k.split(":", 1)[1]: after[k] - before.get(k, 0.0) for k in after
               if k.startswith("reason:") and after[k] - before.get(k, 0.0) > 0}
    return {"batches": count, "batched_requests": total, "mean_batch": total / count if count else None,
            "reasons": reasons}


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100.0 * (len(s) - 1))))]


def summarize(calls: Sequence[Call], wall_s: float) -> dict[str, Any]:
    """Calls/s, TTFT mean/p50/p99 in ms, errors."""
    ok = [c for c in calls if c.error is None and c.first_s is not None]
    ttft = [((c.first_s or 0.0) - c.sent_s) * 1000.0 for c in ok]
    errors: dict[str, int] = {}
    for c in calls:
        if c.error is not None or c.first_s is None:
            errors[c.error or "NO_MESSAGE"] = errors.get(c.error or "NO_MESSAGE", 0) + 1
    return {"calls": len(calls), "ok": len(ok), "errors": errors, "calls_per_s": len(ok) / max(wall_s, 1e-9),
            "ttft_mean_ms": statistics.fmean(ttft) if ttft else None, "ttft_p50_ms": _pct(ttft, 50),
            "ttft_p99_ms": _pct(ttft, 99), "enqueued": sum(c.enqueued for c in ok),
            "e2e_mean_ms": statistics.fmean((c.end_s - c.sent_s) * 1000.0 for c in ok) if ok else None}


async def closed_loop(fe: Frontend, concurrency: int, duration_s: float, max_calls: int) -> tuple[list[Call], float]:
    """`concurrency` callers issue requests back to back until `duration_s` (or `max_calls`) is reached."""
    calls: list[Call] = []
    stop_at = time.perf_counter() + duration_s

    async def caller() -> None:
        while time.perf_counter() < stop_at and len(calls) < max_calls:
            c = Call()
            calls.append(c)
            await fe.request(c)

    t0 = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return calls, time.perf_counter() - t0


async def open_loop(fe: Frontend, rate_per_s: float, duration_s: float, seed: int,
                    mixed_priority: bool = True) -> tuple[list[Call], float]:
    """Poisson arrivals at `rate_per_s` for `duration_s` (priorities 90 and 10 at random, or all the
    default 50); waits for all."""
    rng = random.Random(seed)
    calls: list[Call] = []
    tasks: list[asyncio.Task[None]] = []
    t0 = time.perf_counter()
    at = 0.0
    while at < duration_s:
        delay = t0 + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        high = rng.random() < 0.5  # drawn either way: the same arrivals with or without priorities
        c = Call(priority=(90 if high else 10) if mixed_priority else 50)
        calls.append(c)
        tasks.append(asyncio.create_task(fe.request(c)))
        at += rng.expovariate(rate_per_s)
    await asyncio.gather(*tasks)
    return calls, time.perf_counter() - t0


async def one_run(a: argparse.Namespace, mode: str, work: str, seed: int, rate: float = 0.0) -> dict[str, Any]:
    """A fresh fleet in `mode`, one workload, its figures."""
    procs = await fleet(a, gateway_config(mode, a))
    fe = Frontend(procs[-1].port, a.max_new_tokens, (a.prompt_min, a.prompt_max), seed)
    try:
        warm = [Call() for _ in range(a.workers * 2)]  # channels and the first-call costs out of the way
        await asyncio.gather(*(fe.request(c) for c in warm))
        before = await asyncio.to_thread(scrape, procs[-1].admin_port)
        if work == "light":
            calls, wall = await closed_loop(fe, 1, 3600.0, a.light_calls)
        elif work == "saturated":
            calls, wall = await closed_loop(fe, a.concurrency, a.duration_s, 1 << 30)
        elif work == "equal":
            calls, wall = await open_loop(fe, rate, a.equal_duration_s, seed, mixed_priority=False)
        else:
            calls, wall = await open_loop(fe, rate, a.priority_duration_s, seed)
        after = await asyncio.to_thread(scrape, procs[-1].admin_port)
    finally:
        await fe.close()
        await stop_all(procs)
    out = summarize(calls, wall)
    out.update(mode=mode, work=work, wall_s=wall, **batch_delta(before, after))
    if work == "priority":
        for prio, name in ((90, "high"), (10, "low")):
            out[name] = summarize([c for c in calls if c.priority == prio], wall)
    return out


def _med(runs: Sequence[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def _f(v: float | None, spec: str = ".1f") -> str:
    return "—" if v is None else format(v, spec)


def _reasons(runs: Sequence[dict[str, Any]]) -> str:
    total: dict[str, float] = {}
    for r in runs:
        for k, v in (r.get("reasons") or {}).items():
            total[k] = total.get(k, 0.0) + v
    return ", ".join(f"{k} {v:.0f}" for k, v in sorted(total.items(), key=lambda kv: -kv[1])) or "—"


def verdicts(a: argparse.Namespace, med: dict[tuple[str, str], dict[str, float | None]]) -> list[str]:
    """The must-show, checked on each BATCH variant against DIRECT (medians per workload and mode)."""
    out: list[str] = []
    sat = f"c={a.concurrency}"
    for mode in MODES[1:]:
        dl, bl = med[("light", "DIRECT")], med[("light", mode)]
        ds, bs = med[("saturated", "DIRECT")], med[("saturated", mode)]
        de, be = med[("equal", "DIRECT")], med[("equal", mode)]
        if None in (dl["ttft_p50_ms"], bl["ttft_p50_ms"], de["ttft_p50_ms"], be["ttft_p50_ms"], de["ttft_mean_ms"],
                    be["ttft_mean_ms"], ds["calls_per_s"], bs["calls_per_s"]):
            out.append(f"- {mode}: incomplete figures, not checked.")
            continue
        added_1 = (bl["ttft_p50_ms"] or 0.0) - (dl["ttft_p50_ms"] or 0.0)
        added_p50 = (be["ttft_p50_ms"] or 0.0) - (de["ttft_p50_ms"] or 0.0)
        added_mean = (be["ttft_mean_ms"] or 0.0) - (de["ttft_mean_ms"] or 0.0)
        gain = (bs["calls_per_s"] or 0.0) / (ds["calls_per_s"] or 1.0)
        mean_b = bs["mean_batch"]
        w = float(a.window_ms)
        checks = [("batches at saturation (mean size > 1)", mean_b is not None and mean_b > 1.0),
                  ("throughput raised at saturation", gain > 1.0),
                  (f"added TTFT p50 at c=1 <= {a.window_ms} ms", added_1 <= w),
                  (f"added TTFT p50 and mean at saturation <= {a.window_ms} ms", max(added_p50, added_mean) <= w)]
        failed = [name for name, ok in checks if not ok]

        def within(x: float, w: float = w) -> str:
            return "within" if x <= w else "MORE than"

        out.append(f"- {mode}: mean batch {_f(bl['mean_batch'], '.2f')} at c=1, {_f(mean_b, '.2f')} at {sat} and "
                   f"{_f(be['mean_batch'], '.2f')} at the equal load; throughput at saturation ({sat}) {gain:.3f}x "
                   f"DIRECT; TTFT added over DIRECT: p50 {added_1:+.1f} ms at c=1 ({within(added_1)} the "
                   f"{a.window_ms} ms window), p50 {added_p50:+.1f} ms and mean {added_mean:+.1f} ms at the equal "
                   f"load near saturation ({within(max(added_p50, added_mean))} the window). "
                   f"Must-show: {'met' if not failed else 'NOT met (' + '; '.join(failed) + ')'}.")
    return out


def report(a: argparse.Namespace, ab: list[dict[str, Any]], prio: list[dict[str, Any]]) -> str:
    """The markdown section."""
    lines = [f"<!-- {SECTION}:begin -->",
             f"`python bench/batch_mode.py --pairs {a.pairs} --workers {a.workers} --window-ms {a.window_ms} "
             f"--size-max {a.size_max} --concurrency {a.concurrency}` on {os.cpu_count()} cores, 1-minute load average "
             f"{a.load_before:.1f} -> {os.getloadavg()[0]:.1f} (the benchmark's own processes included); runs are "
             "interleaved so that any noise falls on every mode alike.",
             "",
             f"{a.workers} PDFUSION mock workers (batching engine, worker flags `{a.worker_flags}`, time scale "
             f"{a.time_scale:g}), prompts {a.prompt_min}-{a.prompt_max} tokens, {a.max_new_tokens} streamed output "
             f"tokens; the gateway's strategy {a.strategy}; BATCH = fixed_window, {a.window_ms} ms window, "
             f"size_max {a.size_max} (HEAD's rule); BATCH_IDLE = the same with flexlbBatchDispatchWhenIdle true. "
             "Client pattern of the RTP-LLM frontend (Schedule, then FetchResponse or GenerateStreamCall on the "
             f"named worker). {a.pairs} rounds, the mode order rotated each round; medians over the rounds. Mean "
             "batch = requests per EnqueueBatch (the gateway's flexlb_schedule_batch_size histogram, scraped before "
             "and after each workload).",
             "",
             "| workload | mode | calls/s | TTFT mean ms | TTFT p50 ms | TTFT p99 ms | e2e mean ms | mean batch "
             "| dispatches by reason | errors |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    med: dict[tuple[str, str], dict[str, float | None]] = {}
    rate = next((r["offered_per_s"] for r in ab if r["work"] == "equal"), None)
    labels = {"light": "c=1", "saturated": f"c={a.concurrency} (closed loop, saturation)",
              "equal": f"open loop {_f(rate)}/s ({a.equal_load:g}x DIRECT's saturation calls/s)"}
    for work in ("light", "saturated", "equal"):
        for mode in MODES:
            runs = [r for r in ab if r["work"] == work and r["mode"] == mode]
            m = med[(work, mode)] = {k: _med(runs, k) for k in (
                "calls_per_s", "ttft_mean_ms", "ttft_p50_ms", "ttft_p99_ms", "e2e_mean_ms", "mean_batch")}
            errs = sum(sum(r["errors"].values()) for r in runs)
            reasons = _reasons(runs) if mode != "DIRECT" else "—"
            lines.append(f"| {labels[work]} | {mode} | {_f(m['calls_per_s'])} | {_f(m['ttft_mean_ms'])} | "
                         f"{_f(m['ttft_p50_ms'])} | {_f(m['ttft_p99_ms'])} | {_f(m['e2e_mean_ms'])} | "
                         f"{_f(m['mean_batch'], '.2f')} | {reasons} | {errs} |")
    lines += ["", "Closed loop at saturation: the number of calls in the system is fixed, so the mode with the "
              "higher throughput has shorter e2e and, its decodes being faster (fewer iterations that prefill "
              "stall the running rows), more of its calls waiting for their prefill: its TTFT there is not what "
              "batching adds. The added TTFT is read at the equal offered load, where both modes face the same "
              "arrivals."]
    verdict = verdicts(a, med)
    lines += ["", *verdict, ""]
    if prio:
        hi = [r["high"]["ttft_p99_ms"] for r in prio if r["high"]["ttft_p99_ms"] is not None]
        lo = [r["low"]["ttft_p99_ms"] for r in prio if r["low"]["ttft_p99_ms"] is not None]
        ratios = [h / lo_ for h, lo_ in zip(hi, lo, strict=False) if lo_]
        lines += [f"Priority (QUEUE mode, open loop at {a.overload:g}x the largest saturation throughput above, "
                  f"{a.priority_duration_s:g} s, half priority 90 / half 10), per run:", "",
                  "| run | offered/s | calls/s | high TTFT p50 / p99 ms | low TTFT p50 / p99 ms | high p99 / low p99 "
                  "| errors |", "|---|---|---|---|---|---|---|"]
        for i, r in enumerate(prio, 1):
            h, lo_r = r["high"], r["low"]
            ratio = h["ttft_p99_ms"] / lo_r["ttft_p99_ms"] if h["ttft_p99_ms"] and lo_r["ttft_p99_ms"] else None
            lines.append(f"| {i} | {_f(r['offered_per_s'])} | {_f(r['calls_per_s'])} | {_f(h['ttft_p50_ms'])} / "
                         f"{_f(h['ttft_p99_ms'])} | {_f(lo_r['ttft_p50_ms'])} / {_f(lo_r['ttft_p99_ms'])} | "
                         f"{_f(ratio, '.3f')} | {sum(r['errors'].values())} |")
        if ratios:
            med_ratio = statistics.median(ratios)
            lines += ["", f"- high-priority TTFT p99 / low-priority p99, median over runs: {med_ratio:.3f} "
                      f"(target <= 0.5: {'met' if med_ratio <= 0.5 else 'NOT met'})."]
    lines.append(f"<!-- {SECTION}:end -->")
    return "\n".join(lines)


async def main_async(a: argparse.Namespace) -> str:
    ab: list[dict[str, Any]] = []
    for pair in range(a.pairs):
        for work in ("light", "saturated"):
            order = MODES[pair % len(MODES):] + MODES[:pair % len(MODES)]
            for mode in order:
                r = await one_run(a, mode, work, seed=pair)
                ab.append(r)
                print(f"round {pair + 1} {work:9s} {mode:10s} calls/s {r['calls_per_s']:.1f} TTFT p50 "
                      f"{_f(r['ttft_p50_ms'])} p99 {_f(r['ttft_p99_ms'])} mean batch {_f(r['mean_batch'], '.2f')} "
                      f"errors {r['errors']}", file=sys.stderr)
    direct_capacity = _med([r for r in ab if r["work"] == "saturated" and r["mode"] == "DIRECT"],
                           "calls_per_s") or 1.0
    equal_rate = a.equal_load * direct_capacity
    for pair in range(a.pairs):
        order = MODES[pair % len(MODES):] + MODES[:pair % len(MODES)]
        for mode in order:
            r = await one_run(a, mode, "equal", seed=200 + pair, rate=equal_rate)
            r["offered_per_s"] = equal_rate
            ab.append(r)
            print(f"round {pair + 1} equal {equal_rate:.1f}/s {mode:10s} TTFT p50 {_f(r['ttft_p50_ms'])} mean "
                  f"{_f(r['ttft_mean_ms'])} mean batch {_f(r['mean_batch'], '.2f')} errors {r['errors']}",
                  file=sys.stderr)
    # the largest of the modes' saturation throughputs: offered load beyond it is an overload for all
    capacity = max(_med([r for r in ab if r["work"] == "saturated" and r["mode"] == m], "calls_per_s") or 1.0
                   for m in MODES)
    prio: list[dict[str, Any]] = []
    for i in range(a.priority_runs):
        rate = a.overload * capacity
        r = await one_run(a, "QUEUE", "priority", seed=100 + i, rate=rate)
        r["offered_per_s"] = rate
        prio.append(r)
        print(f"priority run {i + 1}: high p99 {_f(r['high']['ttft_p99_ms'])} low p99 {_f(r['low']['ttft_p99_ms'])} "
              f"errors {r['errors']}", file=sys.stderr)
    return report(a, ab, prio)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=3, help="interleaved rounds (one run of each mode) per workload")
    ap.add_argument("--workers", type=int, default=2, help="PDFUSION mock workers")
    ap.add_argument("--window-ms", type=int, default=10, help="flexlbBatchFixedWaitMs")
    ap.add_argument("--size-max", type=int, default=16, help="flexlbBatchSizeMax")
    ap.add_argument("--concurrency", type=int, default=48, help="closed-loop callers at saturation")
    ap.add_argument("--duration-s", type=float, default=8.0, help="length of a saturation run")
    ap.add_argument("--light-calls", type=int, default=40, help="calls of a c=1 run")
    ap.add_argument("--prompt-min", type=int, default=300)
    ap.add_argument("--prompt-max", type=int, default=1500)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--time-scale", type=float, default=1.0)
    ap.add_argument("--strategy", default="ROUND_ROBIN", help="loadBalanceStrategy")
    ap.add_argument("--worker-flags", default="--batch-prefill-base-ms 10",
                    help="extra mock-worker flags (default: a 10 ms fixed cost per iteration that prefills)")
    ap.add_argument("--equal-load", type=float, default=0.9,
                    help="the equal-load runs' offered rate / DIRECT's median saturation throughput")
    ap.add_argument("--equal-duration-s", type=float, default=10.0, help="length of an equal-load run")
    ap.add_argument("--overload", type=float, default=1.5, help="priority runs: offered load / measured capacity")
    ap.add_argument("--priority-duration-s", type=float, default=10.0)
    ap.add_argument("--priority-runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1 pair, short runs, 1 priority run (a smoke test)")
    ap.add_argument("--out", type=Path, default=None, help="markdown file whose section to write (else stdout)")
    a = ap.parse_args(argv)
    a.load_before = os.getloadavg()[0]
    if a.quick:
        a.pairs, a.duration_s, a.light_calls, a.priority_runs, a.priority_duration_s = 1, 2.0, 6, 1, 3.0
        a.equal_duration_s = 3.0
    return a


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    section = asyncio.run(main_async(a))
    if a.out is None:
        print(section)
    else:
        update_section(a.out, SECTION, "BATCH and QUEUE Schedule modes (live)", section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
