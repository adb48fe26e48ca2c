"""HTTP/2 conformance of the gateway against its baseline: h2spec on a mock worker (grpc C-core) and on the gateway.

    python bench/h2spec.py --h2spec PATH/h2spec-grpc [--out docs/security.md]

h2spec (github.com/summerwind/h2spec; a gRPC-profile build sends POST + application/grpc +
te: trailers) does not come from a registry: point --h2spec at a binary, or set H2SPEC. The
same run goes against a mock worker (the baseline), the gateway with the frame relay and the
gateway with the grpcio engine; after each run a well-behaved client must still be answered.
Nothing is written unless --out is given.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import grpc
from docs_section import update_section
from relay import spawn, stop

from flexlb.pb import model_rpc_service_pb2 as pb

PATH = "/RpcService/CheckHealth"


@dataclass
class Result:
    """One h2spec run against one target."""

    target: str
    cases: dict[tuple[str, str], tuple[str, str]]  # (section, case) -> (pass|FAIL|skip, why)
    seconds: float
    alive_after: bool
    rss_after_mib: float

    def count(self, state: str) -> int:
        return sum(1 for s, _ in self.cases.values() if s == state)


def parse_junit(path: Path) -> dict[tuple[str, str], tuple[str, str]]:
    """h2spec's JUnit report: a case is failed when it carries an <error> or <failure>."""
    cases: dict[tuple[str, str], tuple[str, str]] = {}
    for tc in ET.parse(path).iter("testcase"):
        err = tc.find("error")
        if err is None:
            err = tc.find("failure")
        state = "skip" if tc.find("skipped") is not None else ("FAIL" if err is not None else "pass")
        why = " / ".join((err.text or "").split("\n")) if err is not None else ""
        cases[(tc.get("package") or "", tc.get("classname") or "")] = (state, why)
    return cases


def rss_mib(pid: int) -> float:
    """Resident set size of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _probe(port: int) -> bool:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            reply = await ch.unary_unary(PATH, request_serializer=pb.EmptyPB.SerializeToString,
                                         response_deserializer=pb.CheckHealthResponsePB.FromString)(
                pb.EmptyPB(), timeout=5)
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.health)


def run_h2spec(h2spec: str, name: str, port: int, pid: int, timeout_s: float) -> Result:
    """One full h2spec run, then a probe call."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.xml"
        t0 = time.monotonic()
        subprocess.run([h2spec, "-h", "127.0.0.1", "-p", str(port), "-P", PATH, "-o", "1", "-j", str(report)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout_s, check=False)
        seconds = time.monotonic() - t0
        cases = parse_junit(report) if report.exists() else {}
    alive = asyncio.run(_probe(port))
    return Result(name, cases, seconds, alive, rss_mib(pid))


def tables(results: list[Result], command: str) -> str:
    """Markdown: a summary per target, then every case where a gateway differs from the baseline."""
    base = results[0]
    lines = [
        "<!-- h2spec:begin -->",
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, Python {platform.python_version()}; "
        f"command: `{command}` (h2spec-grpc: requests are POST + `content-type: application/grpc` + "
        f"`te: trailers` to `{PATH}`, 1 s timeout per case).",
        "",
        "| target | passed | failed | skipped | run time | answers a client afterwards | RSS after |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r.target} | {r.count('pass')} | {r.count('FAIL')} | {r.count('skip')} | "
                     f"{r.seconds:.0f} s | {'yes' if r.alive_after else '**no**'} | {r.rss_after_mib:.0f} MiB |")
    for r in results[1:]:
        worse = [k for k, (s, _) in base.cases.items() if s == "pass" and r.cases.get(k, ("?", ""))[0] != "pass"]
        lines += ["", f"Cases the baseline passes and {r.target} does not: **{len(worse)}**"
                  + ("." if not worse else ":")]
        lines += [f"- {k[0]} {k[1]}: {r.cases.get(k, ('missing', ''))[1][:160]}" for k in worse]
        failed = [k for k, (s, _) in r.cases.items() if s == "FAIL"]
        lines += ["", f"Every case {r.target} fails, with the baseline's result:", "",
                  "| section | case | baseline | what h2spec saw |", "|---|---|---|---|"]
        lines += [f"| {k[0]} | {k[1]} | {base.cases.get(k, ('?', ''))[0]} | "
                  f"{r.cases[k][1][:140].replace('|', '/')} |" for k in failed]
    lines.append("<!-- h2spec:end -->")
    return "\n".join(lines)


def main() -> None:
    """Start a mock worker and a gateway per engine, run h2spec against each, print (and maybe write) tables."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--h2spec", default=os.environ.get("H2SPEC") or shutil.which("h2spec-grpc"),
                    help="path of an h2spec (gRPC profile) binary; default $H2SPEC or h2spec-grpc on PATH")
    ap.add_argument("--engines", default="h2,grpcio")
    ap.add_argument("--timeout-s", type=float, default=900.0, help="bound of one h2spec run")
    ap.add_argument("--out", default=None, help="markdown file to update (between h2spec markers)")
    a = ap.parse_args()
    if not a.h2spec:
        ap.error("no h2spec binary: pass --h2spec PATH or set H2SPEC")
    worker, worker_port = spawn("mock-worker", "--port", "0", "--time-scale", "0")
    results: list[Result] = []
    try:
        results.append(run_h2spec(a.h2spec, "mock worker (grpc C-core, baseline)", worker_port, worker.pid,
                                  a.timeout_s))
        for engine in a.engines.split(","):
            gw, gw_port = spawn("serve", "--host", "127.0.0.1", "--port", "0", "--admin-port", "0", "--http-port", "0",
                                "--worker", f"127.0.0.1:{worker_port}", "--relay-engine", engine)
            try:
                results.append(run_h2spec(a.h2spec, f"gateway, {engine} engine", gw_port, gw.pid, a.timeout_s))
            finally:
                stop(gw)
    finally:
        stop(worker)
    command = "python bench/h2spec.py --h2spec PATH/h2spec-grpc --out docs/security.md"
    block = tables(results, command)
    print(block)
    if a.out:
        update_section(Path(a.out), "h2spec", "HTTP/2 conformance (h2spec)", block, file_title="# Security")


if __name__ == "__main__":
    main()
