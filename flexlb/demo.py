"""`flexlb demo`: a PD set of mock workers behind a gateway, real traffic, a report, then a clean stop."""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import sys
import time
import urllib.request
from dataclasses import dataclass

import grpc

from flexlb.launch import Proc, spawn, stop_all
from flexlb.pb import model_rpc_service_pb2 as pb


def _bar(done: int, total: int, errors: int, width: int = 40) -> str:
    filled = int(width * done / total)
    return f"\r  [{'#' * filled}{'.' * (width - filled)}] {done}/{total} calls, {errors} errors"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


@dataclass
class Traffic:
    """What the client measured."""

    ttft_ms: list[float]
    e2e_ms: list[float]
    errors: int
    prompt_tokens: int = 0
    reused_tokens: int = 0


async def _traffic(port: int, requests: int, concurrency: int) -> Traffic:
    rng = random.Random(7)
    # a handful of shared system prompts, as real chat traffic has, plus a per-request tail
    prefixes = [[rng.randrange(1, 30000) for _ in range(rng.choice((256, 512, 1024)))] for _ in range(6)]
    out = Traffic([], [], 0)
    done = 0
    sem = asyncio.Semaphore(concurrency)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = channel.unary_stream(
            "/RpcService/GenerateStreamCall",
            request_serializer=pb.GenerateInputPB.SerializeToString,
            response_deserializer=pb.GenerateOutputsPB.FromString,
        )

        async def one(i: int) -> None:
            nonlocal done
            tokens = rng.choice(prefixes) + [rng.randrange(1, 30000) for _ in range(rng.randrange(16, 256))]
            req = pb.GenerateInputPB(
                request_id=i + 1,
                token_ids=tokens,
                generate_config=pb.GenerateConfigPB(
                    max_new_tokens=rng.randrange(8, 33), is_streaming=True, can_use_pd_separation=True
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
                    assert first is not None
                    out.ttft_ms.append((first - t0) * 1000)
                    out.e2e_ms.append((time.monotonic() - t0) * 1000)
                except grpc.aio.AioRpcError:
                    out.errors += 1
                done += 1
                print(_bar(done, requests, out.errors), end="", file=sys.stderr, flush=True)

        await asyncio.gather(*(one(i) for i in range(requests)))
    print(file=sys.stderr)
    return out


async def demo(requests: int, concurrency: int, strategy: str | None = None) -> int:
    """Run the whole demo; returns 0 when every call succeeded."""
    procs: list[Proc] = []
    try:
        print("starting 2 PREFILL + 2 DECODE mock workers ...")
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
        grpc_port, admin_port = gw.port, gw.admin_port
        print(f"gateway: gRPC 127.0.0.1:{grpc_port}  admin http://127.0.0.1:{admin_port}/actuator/info")
        print(f"sending {requests} streamed GenerateStreamCall requests, {concurrency} at a time ...")
        t0 = time.monotonic()
        traffic = await _traffic(grpc_port, requests, concurrency)
        ttft_ms, e2e_ms, errors = traffic.ttft_ms, traffic.e2e_ms, traffic.errors
        wall_s = time.monotonic() - t0
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/actuator/info", timeout=5) as r:
            info = json.load(r)
        print(f"\ndone in {wall_s:.1f} s: {len(ttft_ms)} ok, {errors} errors")
        print(f"{'worker':22s} {'role':8s} {'calls':>6s} {'in flight':>9s}")
        for w in info["workers"]:
            print(f"{w['worker']:22s} {w['role']:8s} {w['dispatched_total']:6d} {w['in_flight']:9d}")
        if ttft_ms:
            print(
                f"TTFT  p50 {percentile(ttft_ms, 50):7.1f} ms   p99 {percentile(ttft_ms, 99):7.1f} ms   "
                f"mean {statistics.fmean(ttft_ms):7.1f} ms"
            )
            print(f"E2E   p50 {percentile(e2e_ms, 50):7.1f} ms   p99 {percentile(e2e_ms, 99):7.1f} ms")
            print(f"prompt tokens served from the workers' KV cache: "
                  f"{traffic.reused_tokens / max(traffic.prompt_tokens, 1):.0%}")
        print("stopping everything ...")
        return 0 if errors == 0 else 1
    finally:
        await stop_all(procs)


def run_demo(requests: int, concurrency: int, strategy: str | None = None) -> int:
    """Entry point of `flexlb demo` (the gateway's default strategy unless one is named)."""
    return asyncio.run(demo(requests, concurrency, strategy))
