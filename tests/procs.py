"""Real flexlb processes for tests that kill, restart or signal them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import urllib.request
from typing import Any

_PORTS = re.compile(r"(?:listening on [\d.]+:|grpc [\d.]+:)(\d+)(?:.*admin [\d.]+:(\d+))?")


class Proc:
    """A child `python -m flexlb ...` with the ports from its readiness line."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, admin_port: int | None) -> None:
        self.proc = proc
        self.port = port
        self.admin_port = admin_port

    @property
    def running(self) -> bool:
        """The process has not exited."""
        return self.proc.returncode is None

    def info(self) -> dict[str, Any]:
        """The gateway's /actuator/info."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/actuator/info", timeout=5) as r:
            data: dict[str, Any] = json.load(r)
        return data


async def spawn(*args: str, env: dict[str, str] | None = None) -> Proc:
    """Start a flexlb process and wait (bounded) for its readiness line."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "flexlb", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "GRPC_VERBOSITY": "ERROR", **(env or {})},
    )
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
    m = _PORTS.search(line)
    if not m:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"no readiness line from flexlb {args[0]}: {line!r}")
    return Proc(proc, int(m.group(1)), int(m.group(2)) if m.group(2) else None)


async def stop(p: Proc, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int:
    """Signal the process and wait for it; SIGKILL if it outlives the timeout. Returns the exit code."""
    if p.running:
        with contextlib.suppress(ProcessLookupError):
            p.proc.send_signal(sig)
    try:
        return await asyncio.wait_for(p.proc.wait(), timeout_s)
    except TimeoutError:
        p.proc.kill()
        return await p.proc.wait()
