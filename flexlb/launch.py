"""Starting and stopping `python -m flexlb ...` child processes (demos, tests, benchmarks)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import urllib.request
from dataclasses import dataclass
from typing import Any

# the readiness lines: "mock-worker role=R listening on H:P",
# "flexlb gateway listening: grpc H:P admin H:Q http H:R"
_READY = re.compile(r"(?:listening on [\d.]+:|grpc [\d.]+:)(\d+)(?:.*admin [\d.]+:(\d+))?(?:.*http [\d.]+:(\d+))?")


@dataclass
class Proc:
    """A running flexlb child with the ports from its readiness line."""

    name: str
    proc: asyncio.subprocess.Process
    port: int
    admin_port: int | None
    http_port: int | None = None  # a gateway's HTTP API port (--server.port)

    @property
    def running(self) -> bool:
        """The process has not exited."""
        return self.proc.returncode is None

    def info(self) -> dict[str, Any]:
        """A gateway's /actuator/info."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/actuator/info", timeout=5) as r:
            data: dict[str, Any] = json.load(r)
        return data


async def spawn(*args: str, name: str = "", env: dict[str, str] | None = None, timeout_s: float = 30.0) -> Proc:
    """Start `python -m flexlb ARGS` and wait (bounded) for its readiness line."""
    name = name or args[0]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "flexlb",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "GRPC_VERBOSITY": "ERROR", **(env or {})},
    )
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout_s)).decode()
    except TimeoutError:
        line = ""
    m = _READY.search(line)
    if not m:
        if proc.returncode is None:
            proc.kill()
        code = await proc.wait()
        raise RuntimeError(f"{name} did not become ready (exit code {code}, said {line.strip()!r})")
    return Proc(name, proc, int(m.group(1)), int(m.group(2)) if m.group(2) else None,
                int(m.group(3)) if m.group(3) else None)


async def stop(p: Proc, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> int:
    """Signal the process and wait for it; SIGKILL if it outlives the timeout. Returns the exit code."""
    if p.running:
        with contextlib.suppress(ProcessLookupError):
            p.proc.send_signal(sig)
    try:
        return await asyncio.wait_for(p.proc.wait(), timeout_s)
    except TimeoutError:
        p.proc.kill()
        return await p.proc.wait()


async def stop_all(procs: list[Proc], sig: int = signal.SIGTERM) -> None:
    """Stop every child (concurrently)."""
    await asyncio.gather(*(stop(p, sig) for p in procs))
