"""Closed-loop gRPC load generator (its own process, so its CPU is not the gateway's).

python bench/loadgen.py --target 127.0.0.1:P --mode stream|unary --concurrency C --seconds S
Prints one JSON object: calls, messages, errors, elapsed_s, latency p50/p99 (ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable

import grpc

from flexlb.pb import model_rpc_service_pb2 as pb


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


async def run(
    target: str,
    mode: str,
    concurrency: int,
    seconds: float,
    messages_per_call: int,
    prompt_tokens: int,
    channels: int,
) -> dict[str, float]:
    """Drive `concurrency` callers for `seconds`, each issuing calls back to back."""
    chans = [grpc.aio.insecure_channel(target, options=[("grpc.channel_id", i)]) for i in range(channels)]
    req = pb.GenerateInputPB(
        request_id=1,
        token_ids=list(range(1, prompt_tokens + 1)),
        generate_config=pb.GenerateConfigPB(max_new_tokens=messages_per_call, is_streaming=True),
    )
    stream_body = req.SerializeToString()
    unary_req = pb.GenerateInputPB()
    unary_req.CopyFrom(req)
    unary_req.generate_config.max_new_tokens = 1
    unary_body = pb.BatchGenerateInputPB(inputs=[unary_req]).SerializeToString()
    streams = [c.unary_stream("/RpcService/GenerateStreamCall") for c in chans]
    unaries = [c.unary_unary("/RpcService/BatchGenerateCall") for c in chans]
    for c in chans:
        await asyncio.wait_for(c.channel_ready(), 10)
    latencies_ms: list[float] = []
    counts = {"calls": 0, "messages": 0, "errors": 0}
    stop_at = time.monotonic() + seconds

    async def caller(i: int) -> None:
        stream, unary = streams[i % channels], unaries[i % channels]
        while time.monotonic() < stop_at:
            t0 = time.monotonic()
            try:
                if mode == "stream":
                    n = 0
                    async for _ in stream(stream_body, timeout=30):
                        n += 1
                    counts["messages"] += n
                else:
                    await unary(unary_body, timeout=30)
                    counts["messages"] += 1
                counts["calls"] += 1
                latencies_ms.append((time.monotonic() - t0) * 1000)
            except grpc.aio.AioRpcError:
                counts["errors"] += 1

    t_start = time.monotonic()
    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    elapsed = time.monotonic() - t_start
    for c in chans:
        await c.close()
    return {
        **counts,
        "elapsed_s": elapsed,
        "p50_ms": _percentile(latencies_ms, 50),
        "p99_ms": _percentile(latencies_ms, 99),
    }


def main() -> None:
    """Parse flags, run, print JSON."""
    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True)
    p.add_argument("--mode", choices=["stream", "unary"], default="stream")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--messages-per-call", type=int, default=100)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--channels", type=int, default=4)
    a = p.parse_args()
    factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(
            run(a.target, a.mode, a.concurrency, a.seconds, a.messages_per_call, a.prompt_tokens, a.channels)
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
