"""What large request messages cost the gateway: its peak RSS relaying one 70 MiB request, and holding 20 partial
50 MiB requests (clients that announce 50 MiB and send what the gateway's flow control lets them, then stall).

Real processes on 127.0.0.1: a mock worker, the gateway (`flexlb serve`, default limits: RTP-LLM's 1 GiB message
size), and this script as client. RSS is the gateway process's VmRSS, sampled every 50 ms on a thread.

    python bench/big_messages.py                         # print the table
    python bench/big_messages.py --out docs/security.md  # and write it into its section there
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from attacks import MIB, RawClient, request_body_flood
from docs_section import update_section
from hostile import HOST, RssSampler, _free_port, _rss
from relay import spawn, stop

from flexlb.pb import model_rpc_service_pb2 as pb

SECTION = "big-messages"


@dataclass
class Row:
    scenario: str
    engine: str
    rss_before: int
    rss_peak: int
    rss_after: int
    note: str


def big_request(payload_bytes: int) -> pb.GenerateInputPB:
    """A GenerateInputPB whose bulk is an inlined image (data URL), as multimodal requests carry them."""
    req = pb.GenerateInputPB(request_id=1, token_ids=list(range(1, 65)),
                             generate_config=pb.GenerateConfigPB(max_new_tokens=4, is_streaming=True))
    req.multimodal_inputs.add(multimodal_url="data:image/png;base64," + "A" * payload_bytes, multimodal_type=1)
    return req


async def one_big_call(port: int, payload_bytes: int) -> str:
    req = big_request(payload_bytes).SerializeToString()
    async with grpc.aio.insecure_channel(f"{HOST}:{port}") as ch:
        started = time.monotonic()
        n = 0
        async for _ in ch.unary_stream("/RpcService/GenerateStreamCall")(req, timeout=120):
            n += 1
        return f"{n} messages back in {time.monotonic() - started:.2f} s"


async def partial_flood(port: int, connections: int, streams: int, message_bytes: int, sampler: RssSampler,
                        seen: dict[str, int]) -> str:
    async def probe(clients: list[RawClient]) -> None:
        await asyncio.sleep(0.3)  # the gateway has handled what it was sent
        seen["held"] = _rss(sampler.pid)

    outcome = await request_body_flood(HOST, port, connections=connections, streams=streams,
                                       message_bytes=message_bytes, stall_s=0.5, max_bytes=1 << 32,
                                       timeout_s=60.0, probe=probe)
    return f"{outcome.figures['accepted_bytes'] / MIB:.0f} MiB accepted before the clients stalled"


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(engine: str, scenario: str, run: str, args: Sequence[str] = ()) -> Row:
    worker, wport = spawn("mock-worker", "--port", "0", "--time-scale", "0")
    gw = None
    try:
        gw, port = spawn("serve", "--host", HOST, "--port", "0", "--admin-port", str(_free_port()),
                         "--http-port", "0", "--worker", f"{HOST}:{wport}", "--relay-engine", engine,
                         "--log-level", "WARNING", *args)
        sampler = RssSampler(gw.pid)
        sampler.start()
        time.sleep(0.5)
        before = _rss(gw.pid)
        cpu_before = _cpu_s(gw.pid)
        seen: dict[str, int] = {}
        if run == "big":
            note = asyncio.run(one_big_call(port, 70 * MIB))
        else:
            conns, streams = (1, 20) if run == "one-conn" else (20, 1)
            note = asyncio.run(partial_flood(port, conns, streams, 50 * MIB, sampler, seen))
        time.sleep(0.5)
        sampler.stop()
        after = _rss(gw.pid)
        peak = max([v for _, v in sampler.samples] + [seen.get("held", 0)])
        note += f"; gateway CPU {_cpu_s(gw.pid) - cpu_before:.2f} s"
        return Row(scenario, engine, before, peak, after, note)
    finally:
        if gw is not None:
            stop(gw)
        stop(worker)


SCENARIOS = (
    ("one 70 MiB request, relayed", "big"),
    ("20 partial 50 MiB requests on one connection", "one-conn"),
    ("20 partial 50 MiB requests on 20 connections", "many-conn"),
)


def render(rows: Sequence[Row], command: str) -> str:
    lines = [
        f"<!-- {SECTION}:begin -->",
        f"`{command}` on {platform.machine()} ({platform.python_implementation()} {platform.python_version()}), "
        "gateway with the default limits (1024 MiB messages, 16 MiB per connection, 256 MiB request buffer); "
        "RSS is the gateway process's VmRSS.",
        "",
        "| scenario | engine | RSS before | peak | after | growth at peak | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r.scenario} | {r.engine} | {r.rss_before / MIB:.0f} MiB | {r.rss_peak / MIB:.0f} MiB | "
                     f"{r.rss_after / MIB:.0f} MiB | {(r.rss_peak - r.rss_before) / MIB:.0f} MiB | {r.note} |")
    lines.append(f"<!-- {SECTION}:end -->")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engines", default="h2,grpcio", help="relay engines to measure (default h2,grpcio)")
    p.add_argument("--out", type=Path, help="write the table into this file's section (e.g. docs/security.md)")
    a = p.parse_args(argv)
    rows = []
    for engine in a.engines.split(","):
        for scenario, run in SCENARIOS:
            row = measure(engine, scenario, run)
            print(f"{engine:7} {scenario:48} {row.rss_before / MIB:6.0f} -> {row.rss_peak / MIB:6.0f} MiB "
                  f"({row.note})", flush=True)
            rows.append(row)
    block = render(rows, "python bench/big_messages.py" + (f" --out {a.out}" if a.out else ""))
    print(block)
    if a.out is not None:
        update_section(a.out, SECTION, "Large request messages", block, file_title="# Security")
    return 0


if __name__ == "__main__":
    sys.exit(main())
