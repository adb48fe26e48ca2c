"""Soak: steady load through the gateway for minutes while workers are SIGKILLed and restarted.

    python bench/soak.py [--seconds 600] [--concurrency 32] [--kill-every 30] [--down-for 5] [--out docs/reliability.md]

Counts every call by how it ended. A call that failed before its first message could have been
failed over, so the target for those is zero; a call cut mid-stream by a kill is reported apart.
Gateway RSS is read from /proc at the start (after warm-up) and at the end; in-flight must end at 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc

# bench/ is the script's own directory, so its helpers import directly
from docs_section import update_section

from flexlb.launch import Proc, spawn, stop, stop_all
from flexlb.pb import model_rpc_service_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent

BEGIN, END = "<!-- soak:begin -->", "<!-- soak:end -->"


def rss_mib(pid: int) -> float:
    """Resident set size of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def info(admin_port: int) -> dict[str, Any]:
    """The gateway's /actuator/info."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/actuator/info", timeout=5) as r:
        data: dict[str, Any] = json.load(r)
    return data


async def soak(a: argparse.Namespace) -> dict[str, Any]:
    """Run the soak and return its figures."""
    rng = random.Random(a.seed)
    workers: list[Proc] = []
    gateway: Proc | None = None
    counts = {"ok": 0, "failed_before_first_message": 0, "cut_mid_stream": 0}
    codes: dict[str, int] = {}
    kills = 0
    try:
        for _ in range(a.workers):
            workers.append(await spawn("mock-worker", "--port", "0", "--time-scale", str(a.time_scale)))
        args = ["serve", "--host", "127.0.0.1", "--port", "0", "--admin-port", "0",
                "--http-port", "0", "--log-level", "WARNING"]
        for w in workers:
            args += ["--worker", f"127.0.0.1:{w.port}"]
        cfg = {"healthCheckIntervalMs": 500, "healthCheckTimeoutMs": 200, "prefillGenerateTimeoutMs": 5000}
        gateway = await spawn(*args, env={"WHALE_MASTER_CONFIG": json.dumps(cfg)})
        gw_port, admin_port = gateway.port, gateway.admin_port
        assert admin_port is not None
        stop_at = time.monotonic() + a.seconds
        channels = [
            grpc.aio.insecure_channel(f"127.0.0.1:{gw_port}", options=[("grpc.channel_id", i)]) for i in range(4)
        ]
        stubs = [
            c.unary_stream(
                "/RpcService/GenerateStreamCall",
                request_serializer=pb.GenerateInputPB.SerializeToString,
                response_deserializer=pb.GenerateOutputsPB.FromString,
            )
            for c in channels
        ]
        prompts = [[rng.randrange(1, 30000) for _ in range(rng.choice((200, 800, 2000)))] for _ in range(20)]

        async def caller(i: int) -> None:
            n_call = 0
            while time.monotonic() < stop_at:
                n_call += 1
                req = pb.GenerateInputPB(
                    request_id=i * 1_000_000 + n_call,
                    token_ids=rng.choice(prompts),
                    generate_config=pb.GenerateConfigPB(max_new_tokens=rng.randrange(4, 40), is_streaming=True),
                )
                n = 0
                try:
                    async for _ in stubs[i % 4](req, timeout=30):
                        n += 1
                    counts["ok"] += 1
                except grpc.aio.AioRpcError as exc:
                    key = "cut_mid_stream" if n else "failed_before_first_message"
                    counts[key] += 1
                    codes[f"{key}:{exc.code().name}"] = codes.get(f"{key}:{exc.code().name}", 0) + 1

        async def chaos() -> None:
            nonlocal kills
            await asyncio.sleep(min(a.kill_every, a.seconds / 3))
            while time.monotonic() < stop_at - a.down_for - 5:
                idx = rng.randrange(len(workers))
                port = workers[idx].port
                await stop(workers[idx], signal.SIGKILL)
                kills += 1
                await asyncio.sleep(a.down_for)
                workers[idx] = await spawn("mock-worker", "--port", str(port), "--time-scale", str(a.time_scale))
                await asyncio.sleep(a.kill_every)

        callers = [asyncio.create_task(caller(i)) for i in range(a.concurrency)]
        await asyncio.sleep(min(10.0, a.seconds / 6))  # warm-up before the first RSS reading
        rss_start = rss_mib(gateway.proc.pid)
        await asyncio.gather(chaos(), *callers)
        for c in channels:
            await c.close()
        deadline = time.monotonic() + 10
        in_flight = sum(w["in_flight"] for w in info(admin_port)["workers"])
        while in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            in_flight = sum(w["in_flight"] for w in info(admin_port)["workers"])
        rss_end = rss_mib(gateway.proc.pid)
        return {
            "seconds": a.seconds,
            "concurrency": a.concurrency,
            "workers": a.workers,
            "kills": kills,
            **counts,
            "codes": codes,
            "rss_start_mib": round(rss_start, 1),
            "rss_end_mib": round(rss_end, 1),
            "in_flight_end": in_flight,
        }
    finally:
        await stop_all(workers, signal.SIGKILL)
        if gateway is not None:
            await stop(gateway, timeout_s=30)


def main() -> None:
    """Parse flags, soak, print JSON, optionally write docs."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--kill-every", type=float, default=30, help="seconds between worker kills")
    ap.add_argument("--down-for", type=float, default=5, help="seconds a killed worker stays down")
    ap.add_argument("--time-scale", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    r = asyncio.run(soak(a))
    print(json.dumps(r))
    if a.out:
        total = r["ok"] + r["failed_before_first_message"] + r["cut_mid_stream"]
        block = "\n".join(
            [
                BEGIN,
                f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores; command: "
                f"`python bench/soak.py --seconds {a.seconds:g} --concurrency {a.concurrency} "
                f"--kill-every {a.kill_every:g} --down-for {a.down_for:g} --out docs/reliability.md`.",
                f"{a.workers} mock workers (`--time-scale {a.time_scale:g}`) behind one gateway (h2 engine, "
                f"health checks every 500 ms, prefillGenerateTimeoutMs 5000); {a.concurrency} closed-loop "
                f"streaming callers; a random worker SIGKILLed every {a.kill_every:g} s and restarted on its port "
                f"{a.down_for:g} s later ({r['kills']} kills).",
                "",
                "| figure | value |",
                "|---|---|",
                f"| calls | {total:,} |",
                f"| completed | {r['ok']:,} |",
                f"| failed before their first message (could have been failed over; target 0) | "
                f"{r['failed_before_first_message']} |",
                f"| cut mid-stream by a kill (ended with a clean status, not replayed) | {r['cut_mid_stream']} |",
                f"| status codes of failures | {r['codes'] or '-'} |",
                f"| gateway RSS after warm-up / at the end | {r['rss_start_mib']} MiB / {r['rss_end_mib']} MiB |",
                f"| in-flight at the end | {r['in_flight_end']} |",
                END,
            ]
        )
        update_section(ROOT / a.out, "soak", "Soak with worker kills", block, "# Reliability")


if __name__ == "__main__":
    main()
