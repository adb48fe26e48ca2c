"""Hostile-client benchmark: every attack of bench/attacks.py against the gateway and against nginx, with a
well-behaved gRPC client beside it.

    python bench/hostile.py [--quick] [--attacks a,b,c] [--engines h2,grpcio] [--no-nginx] [--json] \\
        [--out docs/security.md]

For each target x attack, fresh processes: a mock worker (`--time-scale 0.05`, short real streams), the target
in front of it (the gateway, or nginx `grpc_pass` as the anchor), and a probe process that sends a short
GenerateStreamCall every 20 ms on one grpc.aio channel without waiting for the previous one (open loop, so
a stalled target shows up as latency, not as fewer calls). The attack runs in this process; the probe has its
own process and event loop so the attacker's CPU use does not land in the probe's latencies. Measured: how the
attacking connection ended, the probe's p50/p99 and errors from the attack's start to 0.5 s after its end,
the target's RSS (VmRSS of its process tree every 50 ms), and for the gateway afterwards `flexlb_in_flight`,
the worker-side error counters, and one call on a fresh channel. Nothing is written unless --out is given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import attacks
from attacks import MIB, AttackOutcome, error_name
from docs_section import update_section
from relay import spawn, stop

ROOT = Path(__file__).resolve().parent.parent
SECTION, TITLE, FILE_TITLE = "hostile", "Hostile clients", "# Security"
BEGIN, END = f"<!-- {SECTION}:begin -->", f"<!-- {SECTION}:end -->"
HOST = "127.0.0.1"
GRACE_S = 0.5  # probe calls started this long after the attack ended still count: the target may lag behind
WARMUP_S = 0.5  # probe running before the attack: the RSS baseline is taken over it
RSS_LIMIT = 64 * MIB
ENV = {**os.environ, "GRPC_VERBOSITY": "ERROR"}

Check = Callable[[AttackOutcome, dict[str, Any]], bool]


# ------------------------------------------------------------------ what each attack should get


def _goaway(code: int, or_closed: bool = False) -> Check:
    # a GOAWAY queued behind bytes the attacker never reads is lost when the connection is aborted
    return lambda o, kw: (o.ended_by == "goaway" and o.goaway_code == code) or (or_closed and o.ended_by == "closed")


def _all_rst(code: int) -> Check:
    return lambda o, kw: o.ended_by == "open" and o.rst_codes.get(code, 0) == kw.get("streams", 1)


def _all_status(code: int) -> Check:
    return lambda o, kw: o.ended_by == "open" and o.grpc_statuses.get(code, 0) == kw.get("streams", 1)


def _open(o: AttackOutcome, kw: dict[str, Any]) -> bool:
    return o.ended_by == "open"


@dataclass(frozen=True)
class Plan:
    """One attack: its sizes (full and --quick), the h2 engine's expected outcome (docs/edge spec), and whether
    it is a header or decompression attack (probe p99 target 500 ms instead of 1 s)."""

    full: dict[str, Any]
    quick: dict[str, Any]
    expect: str
    check: Check | None  # None: not judged
    strict: bool = False


EYC, PROTO = attacks.ENHANCE_YOUR_CALM, attacks.PROTOCOL_ERROR
PLANS: dict[str, Plan] = {
    "settings_max_frame_size_zero": Plan(
        {"after_response": True, "max_new_tokens": 2000}, {"after_response": True, "max_new_tokens": 200},
        "GOAWAY PROTOCOL_ERROR", _goaway(PROTO)),
    "empty_header_name": Plan({"streams": 5000}, {"streams": 50}, "RST PROTOCOL_ERROR on every stream",
                              _all_rst(PROTO), strict=True),
    "uppercase_header": Plan({"streams": 5000}, {"streams": 50}, "RST PROTOCOL_ERROR on every stream",
                             _all_rst(PROTO), strict=True),
    "malformed_header": Plan({"case": "connection", "streams": 5000}, {"case": "connection", "streams": 50},
                             "RST PROTOCOL_ERROR on every stream", _all_rst(PROTO), strict=True),
    # 96,000 x 16 KiB = 1.5 GiB if nobody stops it
    "continuation_flood": Plan({"frames": 96_000, "payload_bytes": 16_384, "timeout_s": 10.0},
                               {"frames": 500, "payload_bytes": 1024}, "GOAWAY ENHANCE_YOUR_CALM", _goaway(EYC),
                               strict=True),
    "big_ping": Plan({"payload_bytes": attacks.MAX_FRAME_LENGTH}, {"send_payload": False},
                     "GOAWAY FRAME_SIZE_ERROR", _goaway(attacks.FRAME_SIZE_ERROR)),
    # not reading is what makes a control flood dangerous: every ACK is queued at the target
    "ping_flood": Plan({"count": 1_000_000, "read": False}, {"count": 5000, "read": False},
                       "GOAWAY ENHANCE_YOUR_CALM (or aborted)", _goaway(EYC, or_closed=True)),
    # 2M x 9-byte ACKs: more than the kernel's socket buffers absorb
    "settings_flood": Plan({"count": 2_000_000, "read": False}, {"count": 5000, "read": False},
                           "GOAWAY ENHANCE_YOUR_CALM (or aborted)", _goaway(EYC, or_closed=True)),
    "priority_flood": Plan({"count": 500_000}, {"count": 2000}, "GOAWAY ENHANCE_YOUR_CALM", _goaway(EYC)),
    "settings_initial_window_toggle": Plan({"streams": 250, "toggles": 100_000}, {"streams": 50, "toggles": 1000},
                                           "stays open, answered promptly", _open),
    "request_body_flood": Plan(
        {"streams": 20, "message_bytes": 50 * MIB, "stall_s": 0.5, "timeout_s": 10.0},
        {"streams": 4, "message_bytes": 256 * 1024, "stall_s": 0.2},
        "stays open; flow control stalls the client", _open),
    "header_block_of_empty_literals": Plan({"block_bytes": 16 * MIB}, {"block_bytes": 48 * 1024},
                                           "GOAWAY ENHANCE_YOUR_CALM", _goaway(EYC), strict=True),
    "gzip_bomb": Plan({"inflated_bytes": 200_000_000}, {"inflated_bytes": 16 * MIB},
                      "grpc-status 8 RESOURCE_EXHAUSTED", _all_status(8), strict=True),
    "rapid_reset": Plan({"streams": 94_800}, {"streams": 1000}, "GOAWAY ENHANCE_YOUR_CALM", _goaway(EYC)),
    "too_many_streams": Plan({"streams": 50_000, "max_new_tokens": 1000}, {"streams": 300, "max_new_tokens": 50},
                             "RST REFUSED_STREAM past the limit, then GOAWAY ENHANCE_YOUR_CALM once the client "
                             "has ignored it as many times as the limit",
                             lambda o, kw: o.figures.get("refused", 0) > 0 and o.ended_by == "goaway"
                             and o.goaway_code == EYC),
    # hold past the 10 s handshake timeout so the target's closing them is seen
    "idle_connections": Plan({"connections": 5000, "hold_s": 12.0}, {"connections": 20, "hold_s": 0.5},
                             "every connection closed (handshake timeout)",
                             lambda o, kw: o.figures.get("closed", 0) == kw["connections"]),
    "half_preface": Plan({"connections": 5000, "hold_s": 12.0}, {"connections": 20, "hold_s": 0.5},
                         "every connection closed (handshake timeout)",
                         lambda o, kw: o.figures.get("closed", 0) == kw["connections"]),
    "slow_reader": Plan({"streams": 100, "max_new_tokens": 100_000, "never_read": True, "hold_s": 8.0},
                        {"streams": 5, "max_new_tokens": 100_000, "never_read": True, "hold_s": 0.5},
                        "stays open; writes held back", _open),
    "empty_data_flood": Plan({"frames": 1_000_000}, {"frames": 200}, "GOAWAY ENHANCE_YOUR_CALM", _goaway(EYC)),
    "window_update_flood": Plan({"frames": 1_000_000}, {"frames": 2000}, "GOAWAY ENHANCE_YOUR_CALM", _goaway(EYC)),
    "grpc_timeout_malformed": Plan({"streams": 1000}, {"streams": 3}, "grpc-status 13 on every stream",
                                   _all_status(13), strict=True),
}
# at --quick sizes these stay under the limit that decides the outcome (or the hold ends before the handshake
# timeout), so their outcome is shown but not judged
_QUICK_UNJUDGED = {"idle_connections", "half_preface", "ping_flood", "settings_flood", "too_many_streams", "gzip_bomb"}


# ------------------------------------------------------------------ the probe (its own process)


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


async def probe_main(target: str, interval_s: float, timeout_s: float, max_outstanding: int) -> int:
    """Probe process: one channel, a short GenerateStreamCall every `interval_s` until a line on stdin, then one
    JSON line on stdout: [[start (monotonic, comparable across processes), ms, status name], ...]."""
    import grpc

    channel = grpc.aio.insecure_channel(target)
    call = channel.unary_stream(attacks.GENERATE_PATH)
    body = attacks.generate_message(1, n_tokens=16, max_new_tokens=4)
    records: list[tuple[float, float, str]] = []

    async def one() -> None:
        t0 = time.monotonic()
        code = "OK"
        try:
            async for _ in call(body, timeout=timeout_s):
                pass
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
        records.append((t0, (time.monotonic() - t0) * 1000, code))

    # the gateway may not have seen its worker healthy yet
    deadline = time.monotonic() + 15
    while True:
        await one()
        if records[-1][2] == "OK":
            break
        if time.monotonic() > deadline:
            print(json.dumps({"ready": False, "error": records[-1][2]}), flush=True)
            return 1
        await asyncio.sleep(0.1)
    records.clear()
    print(json.dumps({"ready": True}), flush=True)

    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    reader = loop.run_in_executor(None, sys.stdin.readline)
    reader.add_done_callback(lambda _: stopped.set())
    tasks: set[asyncio.Task[None]] = set()
    skipped = 0
    next_at = time.monotonic()
    while not stopped.is_set():
        if len(tasks) < max_outstanding:
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        else:
            skipped += 1  # the target holds every probe call: counted, not piled up
        # after a loop stall, resume the cadence instead of firing the missed ticks at once
        next_at = max(next_at + interval_s, time.monotonic())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopped.wait(), max(0.0, next_at - time.monotonic()))
    if tasks:
        await asyncio.wait(set(tasks), timeout=timeout_s + 1)
    print(json.dumps({"calls": records, "skipped": skipped, "unfinished": len(tasks)}), flush=True)
    await channel.close()
    return 0


class ProbeProcess:
    """The probe's process, seen from here."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, port: int, timeout_s: float) -> ProbeProcess:
        """Start it and wait until its first call succeeded."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__).resolve()), "--probe-target", f"{HOST}:{port}",
            "--probe-timeout-s", str(timeout_s),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            env=ENV, cwd=ROOT)
        self = cls(proc)
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
        except TimeoutError:
            line = b""
        if not line or not json.loads(line).get("ready"):
            await self.kill()
            raise RuntimeError(f"probe did not get a first answer: {line!r}")
        return self

    async def finish(self) -> dict[str, Any]:
        """Stop sending; the calls it made."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"stop\n")
        with contextlib.suppress(ConnectionError):
            await self.proc.stdin.drain()
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
            result: dict[str, Any] = json.loads(line)
        except (TimeoutError, ValueError):
            result = {"calls": [], "skipped": 0, "unfinished": -1}
        await self.kill()
        return result

    async def kill(self) -> None:
        """Make sure it is gone (bounded)."""
        if self.proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 5)
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


# ------------------------------------------------------------------ targets


def _free_port() -> int:
    # nginx cannot listen on port 0 and report it, and relay.spawn keeps only the gRPC port of the readiness line
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped is not)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (nginx: master and workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{p}/task").iterdir():
                with contextlib.suppress(OSError):
                    todo.extend(int(c) for c in (task / "children").read_text().split())
    return out


def _rss(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class RssSampler(threading.Thread):
    """VmRSS of a process tree every 50 ms, on a thread: the attack's event loop may be too busy to sample."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []
        self.pids: set[int] = set()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while True:
            pids = _tree(self.pid)
            self.pids.update(pids)
            self.samples.append((time.monotonic(), sum(_rss(p) for p in pids)))
            if self._stop_event.wait(self.interval_s):
                return

    def stop(self) -> None:
        """Stop sampling."""
        self._stop_event.set()
        self.join(5)

    def between(self, t0: float, t1: float) -> list[int]:
        """Samples taken in [t0, t1]."""
        return [v for t, v in self.samples if t0 <= t <= t1]


@dataclass(frozen=True)
class Target:
    """Who the attacks are aimed at."""

    name: str
    kind: str  # gateway | nginx
    engine: str = ""


@dataclass
class Running:
    """A target and its worker, up."""

    target: Target
    port: int
    worker_port: int
    pid: int
    procs: list[subprocess.Popen[str]]  # stopped in this order
    admin_port: int | None = None
    tmpdir: Path | None = None
    pids: set[int] = field(default_factory=set)

    def error_log(self) -> list[str]:
        """nginx's error log lines."""
        if self.tmpdir is None or not (self.tmpdir / "error.log").exists():
            return []
        return (self.tmpdir / "error.log").read_text(errors="replace").splitlines()


NGINX_CONF = """\
worker_processes {workers};
worker_rlimit_nofile {nofile};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 10000000;
    client_max_body_size 64m;
    upstream worker {{ server {host}:{wport}; keepalive 32; }}
    server {{
        listen {host}:{port} http2;
        location / {{ grpc_pass grpc://worker; }}
    }}
}}
"""


def _nginx_binary() -> str:
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if path is None:
        raise SystemExit("nginx not found: apt-get update && apt-get install -y nginx-light (or pass --no-nginx)")
    return path


def start_target(target: Target, time_scale: float, nginx_workers: int) -> Running:
    """A fresh mock worker and a fresh target in front of it."""
    worker, wport = spawn("mock-worker", "--port", "0", "--time-scale", f"{time_scale:g}")
    try:
        if target.kind == "gateway":
            admin = _free_port()
            gw, port = spawn("serve", "--host", HOST, "--port", "0", "--admin-port", str(admin), "--http-port", "0",
                             "--worker", f"{HOST}:{wport}", "--relay-engine", target.engine,
                             "--drain-timeout-s", "1", "--log-level", "WARNING")
            return Running(target, port, wport, gw.pid, [gw, worker], admin_port=admin, pids={gw.pid, worker.pid})
        tmp = Path(tempfile.mkdtemp(prefix="hostile-nginx-"))
        tmp.chmod(0o755)  # nginx workers drop root and still need the temp paths
        port = _free_port()
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        nofile = 65536 if hard == resource.RLIM_INFINITY else hard
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(workers=nginx_workers, nofile=nofile, connections=max(1024, nofile - 1024),
                                          prefix=tmp, host=HOST, wport=wport, port=port))
        ngx = subprocess.Popen([_nginx_binary(), "-c", str(conf), "-p", str(tmp), "-e", str(tmp / "error.log"),
                                "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               text=True)
        run = Running(target, port, wport, ngx.pid, [ngx, worker], tmpdir=tmp, pids={ngx.pid, worker.pid})
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.5):
                break
            if ngx.poll() is not None or time.monotonic() > deadline:
                stop_target(run)
                raise RuntimeError(f"nginx did not start: {run.error_log()[-3:]}")
            time.sleep(0.05)
        run.pids.update(_tree(ngx.pid))
        return run
    except BaseException:
        stop(worker)
        raise


def stop_target(run: Running) -> list[int]:
    """Stop everything of `run`; returns the pids still alive afterwards (none, unless something is wrong)."""
    for proc in run.procs:
        if proc.poll() is None:
            stop(proc)
        else:
            proc.wait()
    # nginx workers outlive a SIGKILLed master; they are ours, by pid
    for pid in run.pids:
        if _alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in run.pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    if run.tmpdir is not None:
        shutil.rmtree(run.tmpdir, ignore_errors=True)
    return sorted(p for p in run.pids if _alive(p))


def scrape(admin_port: int) -> dict[str, float]:
    """The gateway's Prometheus samples, summed over labels."""
    with urllib.request.urlopen(f"http://{HOST}:{admin_port}/actuator/prometheus", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        with contextlib.suppress(ValueError):
            out[name] = out.get(name, 0.0) + float(value)
    return out


async def final_call(port: int) -> str:
    """One call on a fresh channel: "OK" or the status name."""
    import grpc

    async with grpc.aio.insecure_channel(f"{HOST}:{port}") as channel:
        call = channel.unary_stream(attacks.GENERATE_PATH)
        try:
            async for _ in call(attacks.generate_message(7, max_new_tokens=4), timeout=5):
                pass
        except grpc.aio.AioRpcError as exc:
            return str(exc.code().name)
    return "OK"


# ------------------------------------------------------------------ one target x attack


@dataclass
class Row:
    """One attack against one target, measured."""

    attack: str
    target: str
    kind: str
    expect: str
    outcome: dict[str, Any] | None
    error: str  # the attack did not return an outcome: why
    probe: dict[str, Any]
    rss_before: int
    rss_peak: int
    rss_after: int
    connections: int
    target_alive: bool
    final_call: str
    in_flight_after: float | None = None
    in_flight_zero_s: float | None = None  # from the probe's stop (its own calls count) to in-flight 0
    worker_protocol_errors: float | None = None  # increase during the attack
    edge_internal_errors: float | None = None
    client_protocol_errors: float | None = None
    nginx_log: list[str] = field(default_factory=list)
    worker_probe: dict[str, Any] = field(default_factory=dict)  # the same probe, straight to the worker
    close_kinds: dict[str, int] = field(default_factory=dict)
    checks: dict[str, bool | None] = field(default_factory=dict)

    @property
    def rss_growth_per_conn(self) -> float:
        return max(0, self.rss_peak - self.rss_before) / max(1, self.connections)


def window_figures(result: dict[str, Any], t0: float, t1: float) -> dict[str, Any]:
    """The probe calls started from the attack's start to GRACE_S after its end."""
    window = [c for c in result["calls"] if t0 <= c[0] <= t1 + GRACE_S]
    lat = [c[1] for c in window]
    errors: dict[str, int] = {}
    for c in window:
        if c[2] != "OK":
            errors[c[2]] = errors.get(c[2], 0) + 1
    return {"calls": len(window), "errors": sum(errors.values()), "error_codes": errors,
            "p50_ms": _percentile(lat, 0.5), "p99_ms": _percentile(lat, 0.99), "max_ms": max(lat, default=math.nan),
            "skipped_ticks": result["skipped"]}


def close_kinds(clients: Sequence[attacks.RawClient]) -> dict[str, int]:
    """How the target ended each attacking connection at the TCP level: FIN, RST, or not at all (we closed it)."""
    kinds: dict[str, int] = {}
    for c in clients:
        reason = c.close_reason
        kind = "FIN" if reason == "EOF" else "RST" if "Reset" in reason else "-" if not reason else reason[:30]
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


async def run_attack(target: Target, name: str, plan: Plan, kw: dict[str, Any], a: argparse.Namespace,
                     child_pids: list[int]) -> Row:
    """Fresh worker + target + probes, the attack beside them, the figures; everything stopped after."""
    if name == "gzip_bomb":
        attacks.gzip_bomb_message(kw["inflated_bytes"])  # cached: compressing 200 MB is not part of the attack
    run = start_target(target, a.time_scale, a.nginx_workers)
    probes: list[ProbeProcess] = []
    sampler = RssSampler(run.pid)
    try:
        before = scrape(run.admin_port) if run.admin_port else {}
        # the second probe goes straight to the worker: it tells a slow target from a worker the attack overloaded
        for port in (run.port, run.worker_port):
            probes.append(await ProbeProcess.start(port, a.probe_timeout_s))
            child_pids.append(probes[-1].proc.pid)
        sampler.start()
        await asyncio.sleep(WARMUP_S)
        seen: list[list[attacks.RawClient]] = []

        async def keep_clients(clients: list[attacks.RawClient]) -> None:
            seen.append(clients)  # the session's own list: still filled in once the attack returned

        t0 = time.monotonic()
        outcome: AttackOutcome | None = None
        error = ""
        try:
            outcome = await asyncio.wait_for(attacks.ATTACKS[name](HOST, run.port, probe=keep_clients, **kw),
                                             a.attack_timeout_s)
        except TimeoutError:
            error = f"attack not over after {a.attack_timeout_s:g} s"
        except OSError as exc:
            error = f"attack failed: {exc!r}"
        t1 = time.monotonic()
        await asyncio.sleep(GRACE_S)
        results = await asyncio.gather(*(p.finish() for p in probes))
        row = Row(name, target.name, target.kind, plan.expect, asdict(outcome) if outcome else None, error,
                  window_figures(results[0], t0, t1), 0, 0, 0, kw.get("connections", 1), True, "",
                  worker_probe=window_figures(results[1], t0, t1),
                  close_kinds=close_kinds(seen[0]) if seen else {})
        if run.admin_port:
            after: dict[str, float] = {}
            waited = time.monotonic()
            while time.monotonic() - waited < 5:
                with contextlib.suppress(OSError):
                    after = scrape(run.admin_port)
                if after.get("flexlb_in_flight") == 0:
                    row.in_flight_zero_s = time.monotonic() - waited
                    break
                await asyncio.sleep(0.1)
            row.in_flight_after = after.get("flexlb_in_flight")

            def delta(metric: str) -> float | None:
                # a labelled counter has no sample until its first increment
                return after.get(metric, 0.0) - before.get(metric, 0.0) if after else None

            row.worker_protocol_errors = delta("flexlb_worker_protocol_errors_total")
            row.edge_internal_errors = delta("flexlb_edge_internal_errors_total")
            row.client_protocol_errors = delta("flexlb_client_protocol_errors_total")
        else:
            await asyncio.sleep(1.0)  # nginx: let it settle as long as the gateway is given
        row.target_alive = run.procs[0].poll() is None
        row.final_call = await final_call(run.port) if row.target_alive else "target exited"
        await asyncio.sleep(0.1)
        sampler.stop()
        base = sampler.between(t0 - WARMUP_S, t0) or [sampler.samples[0][1]]
        row.rss_before = sum(base) // len(base)
        row.rss_peak = max(sampler.between(t0, time.monotonic()), default=row.rss_before)
        row.rss_after = sampler.samples[-1][1]
        run.pids.update(sampler.pids)
        row.nginx_log = [line for line in run.error_log() if "[alert]" in line or "[emerg]" in line
                         or "exited on signal" in line][:5]
        row.checks = judge(row, plan, kw)
        return row
    finally:
        if sampler.is_alive():
            sampler.stop()
        for p in probes:
            await p.kill()
        child_pids.extend(sorted(run.pids - set(child_pids)))
        left = stop_target(run)
        if left:
            print(f"  warning: processes still alive after stopping {target.name}: {left}", file=sys.stderr)


def judge(row: Row, plan: Plan, kw: dict[str, Any]) -> dict[str, bool | None]:
    """The issue's targets; None where a target does not apply (outcome codes are the h2 engine's)."""
    p99_limit = 500.0 if plan.strict else 1000.0
    p99 = row.probe["p99_ms"]
    out: dict[str, bool | None] = {
        "p99": bool(p99 == p99 and p99 < p99_limit),  # NaN (no probe call) fails
        "probe_errors": row.probe["errors"] == 0 and row.probe["calls"] > 0,
        "rss": row.rss_growth_per_conn < RSS_LIMIT,
        "alive": row.target_alive and row.final_call == "OK",
        "outcome": None,
        "in_flight": None,
        "worker_conns": None,
    }
    if row.kind == "gateway":
        out["in_flight"] = row.in_flight_after == 0
        out["worker_conns"] = not row.worker_protocol_errors and not row.edge_internal_errors
        if row.target.endswith("(h2)") and plan.check is not None:
            out["outcome"] = row.outcome is not None and plan.check(AttackOutcome(**row.outcome), kw)
    return out


# ------------------------------------------------------------------ report


def _mib(n: float) -> str:
    if abs(n) >= MIB:
        return f"{n / MIB:.1f} MiB"
    return f"{n / 1024:.0f} KiB" if abs(n) >= 1024 else f"{n:.0f} B"


def _figure(key: str, v: float) -> str:
    if any(w in key for w in ("bytes", "accepted", "payload")):
        return _mib(v)
    return f"{int(v):,}" if v == int(v) else f"{v:.3g}"


def _ms(v: float) -> str:
    return "-" if v != v else (f"{v:.0f}" if v >= 10 else f"{v:.1f}")


def outcome_text(row: Row) -> str:
    """What ended the attacking connection, and what the streams got."""
    if row.outcome is None:
        return row.error
    o = row.outcome
    parts = {"goaway": f"GOAWAY {error_name(o['goaway_code'])}", "closed": "closed (no GOAWAY)",
             "open": "open"}[o["ended_by"]]
    if o["rst_codes"]:
        parts += "; RST " + ", ".join(f"{error_name(int(k))} x{v}" for k, v in sorted(o["rst_codes"].items()))
    if o["grpc_statuses"]:
        parts += "; grpc-status " + ", ".join(f"{k} x{v}" for k, v in sorted(o["grpc_statuses"].items()))
    return parts


def notes_text(row: Row) -> str:
    """Figures worth a glance."""
    notes = []
    if row.outcome is not None:
        o = row.outcome
        notes.append(f"{o['duration_s']:.1f} s, wrote {_mib(o['bytes_sent'])}")
        for k, v in o["figures"].items():
            if not math.isfinite(v):
                notes.append(f"{k} {v}")
                continue
            notes.append(f"{k} {_figure(k, v)}")
        if o["goaway_debug"]:
            notes.append(f"debug {o['goaway_debug'][:40]!r}")
    if row.close_kinds:
        notes.append("TCP " + ", ".join(f"{k} x{v}" for k, v in row.close_kinds.items()))
    notes.append(f"{row.probe['calls']} probe calls")
    if row.worker_probe:
        notes.append(f"worker-direct probe p50 / p99 {_ms(row.worker_probe['p50_ms'])} / "
                     f"{_ms(row.worker_probe['p99_ms'])} ms")
    if row.probe["error_codes"]:
        notes.append("probe " + ", ".join(f"{k} x{v}" for k, v in row.probe["error_codes"].items()))
    if row.probe["skipped_ticks"]:
        notes.append(f"{row.probe['skipped_ticks']} probe ticks skipped (all in flight)")
    notes.append(f"RSS {_mib(row.rss_before)} -> peak {_mib(row.rss_peak)} -> {_mib(row.rss_after)}")
    if row.final_call != "OK":
        notes.append(f"final call {row.final_call}")
    if row.worker_protocol_errors:
        notes.append(f"worker protocol errors +{row.worker_protocol_errors:g}")
    if row.edge_internal_errors:
        notes.append(f"edge internal errors +{row.edge_internal_errors:g}")
    notes.extend(f"nginx: {line.split(': ', 1)[-1][:80]}" for line in row.nginx_log[:2])
    return "; ".join(notes).replace("|", "/")


def verdict(row: Row) -> str:
    """pass, or FAIL naming the targets missed; anchors are judged for reference only."""
    failed = [k for k, v in row.checks.items() if v is False]
    text = "pass" if not failed else "FAIL: " + ", ".join(failed)
    return text if row.kind == "gateway" else f"ref: {text}"


def machine_line() -> str:
    """Date, machine and versions."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    nginx = ""
    if shutil.which("nginx"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            nginx = ", " + subprocess.run(["nginx", "-v"], capture_output=True, text=True, timeout=5
                                          ).stderr.strip().removeprefix("nginx version: ")
    return (f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {platform.machine()} ({cpu}), {os.cpu_count()} cores, "
            f"Python {platform.python_version()}{nginx}")


def render(rows: Sequence[Row], a: argparse.Namespace, command: str) -> str:
    """The docs block, markers included."""
    lines = [
        BEGIN,
        f"{machine_line()}; command: `{command}`.",
        "",
        f"Each row: fresh processes (mock worker at `--time-scale {a.time_scale:g}`, the target, two probes). A probe "
        "is a separate grpc.aio process sending a 4-token GenerateStreamCall every 20 ms on one channel without "
        "waiting for the previous one; one probe goes through the target, the other straight to the worker "
        "(`worker-direct` in the notes: high there too means the attack loaded the worker, not the target). "
        f"p50 / p99 cover the calls started from the attack's start to {GRACE_S:g} s after its end (failed calls "
        f"count at their elapsed time; a call times out after {a.probe_timeout_s:g} s). RSS is VmRSS of the target's "
        "process tree (nginx: master + workers) sampled every 50 ms; growth = peak during the attack minus the mean "
        "of the 0.5 s before, divided by the attacking connections. In-flight is `flexlb_in_flight` once the probes "
        "stopped (polled up to 5 s for 0). `TCP` in the notes: how the target ended the attacking connections "
        "(FIN, RST, or `-` = still open when the attacker left). Targets (the issue's): probe p99 < 1 s (< 500 ms "
        "for header and decompression attacks), no probe error, RSS growth < 64 MiB per attacking connection, the "
        "expected close/error (h2 engine; column `expect`), in-flight back to 0, worker connections untouched "
        "(`flexlb_worker_protocol_errors_total` and `flexlb_edge_internal_errors_total` unchanged) and a call on a "
        f"fresh channel answered afterwards. Attacks are cut at {a.attack_timeout_s:g} s. nginx (`grpc_pass`, "
        "defaults except `keepalive_requests`, `client_max_body_size 64m` and worker_connections sized to the "
        f"open-file limit; {a.nginx_workers} worker process) is the anchor, judged for reference only.",
        "",
        "| attack | target | outcome (what closed the connection, code) | expect (h2) | probe p50 / p99 ms "
        "| probe errors | RSS growth per attacking connection | in-flight after | pass / fail | notes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        inflight = "-" if r.in_flight_after is None else f"{r.in_flight_after:g}"
        if r.in_flight_zero_s is not None and r.in_flight_zero_s >= 0.2:
            inflight += f" (after {r.in_flight_zero_s:.1f} s)"
        lines.append(
            f"| {r.attack} | {r.target} | {outcome_text(r)} | {r.expect} | {_ms(r.probe['p50_ms'])} / "
            f"{_ms(r.probe['p99_ms'])} | {r.probe['errors']} / {r.probe['calls']} | "
            f"{_mib(r.rss_growth_per_conn)}{f' (x{r.connections})' if r.connections > 1 else ''} | {inflight} | "
            f"{verdict(r)} | {notes_text(r)} |")
    lines += ["", *summary(rows), END]
    return "\n".join(lines)


def summary(rows: Sequence[Row]) -> list[str]:
    """One line per target: how many attacks met every target, and which did not."""
    out = []
    for target in dict.fromkeys(r.target for r in rows):
        mine = [r for r in rows if r.target == target]
        bad = [f"{r.attack} ({', '.join(k for k, v in r.checks.items() if v is False)})"
               for r in mine if any(v is False for v in r.checks.values())]
        out.append(f"- **{target}**: {len(mine) - len(bad)} of {len(mine)} attacks meet every target"
                   + (f"; missed: {'; '.join(bad)}." if bad else "."))
    return out


# ------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(description="Attack the gateway (and nginx grpc_pass) with hostile HTTP/2 clients "
                                 "while a well-behaved gRPC client measures it.")
    ap.add_argument("--attacks", default=",".join(PLANS), help="comma-separated attack names (default: all)")
    ap.add_argument("--quick", action="store_true", help="small sizes (seconds per attack)")
    ap.add_argument("--engines", default="h2", help="gateway relay engines, comma-separated (h2, grpcio)")
    ap.add_argument("--no-nginx", action="store_true", help="skip the nginx grpc_pass anchor")
    ap.add_argument("--nginx-workers", type=int, default=1, help="nginx worker_processes (default 1, as the "
                    "gateway's one event loop)")
    ap.add_argument("--time-scale", type=float, default=0.05, help="mock worker time scale")
    ap.add_argument("--attack-timeout-s", type=float, default=20.0, help="every attack is cut after this")
    ap.add_argument("--probe-timeout-s", type=float, default=5.0, help="deadline of each probe call")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout (progress goes to stderr)")
    ap.add_argument("--out", default=None, help="markdown file to update between the hostile markers")
    ap.add_argument("--probe-target", default=None, help=argparse.SUPPRESS)  # the probe process
    a = ap.parse_args(argv)
    names = [n.strip() for n in a.attacks.split(",") if n.strip()]
    unknown = [n for n in names if n not in PLANS]
    if unknown:
        ap.error(f"unknown attacks {unknown}; known: {', '.join(PLANS)}")
    a.attack_names = names
    a.engine_names = [e.strip() for e in a.engines.split(",") if e.strip()]
    if bad := [e for e in a.engine_names if e not in ("h2", "grpcio")]:
        ap.error(f"unknown engines {bad}")
    return a


def _raise_open_file_limit() -> None:
    # thousands of idle connections are held by this process
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the children


async def run_all(a: argparse.Namespace, child_pids: list[int]) -> list[Row]:
    """Every target x attack, one after the other (they share 2 cores)."""
    targets = [Target(f"gateway ({e})", "gateway", e) for e in a.engine_names]
    if not a.no_nginx:
        _nginx_binary()
        targets.append(Target("nginx grpc_pass", "nginx"))
    rows = []
    for name in a.attack_names:
        plan = PLANS[name]
        kw = dict(plan.quick if a.quick else plan.full)
        if a.quick and name in _QUICK_UNJUDGED:
            plan = replace(plan, expect="(not judged at --quick sizes)", check=None)
        for target in targets:
            t = time.monotonic()
            row = await run_attack(target, name, plan, kw, a, child_pids)
            rows.append(row)
            print(f"{name:32s} {target.name:16s} {outcome_text(row)[:60]:60s} p99 {_ms(row.probe['p99_ms']):>6s} ms "
                  f"err {row.probe['errors']} rss +{_mib(row.rss_growth_per_conn)}/conn {verdict(row)} "
                  f"({time.monotonic() - t:.0f} s)", file=sys.stderr, flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or, with the hidden --probe-target, be the probe)."""
    a = parse_args(argv)
    if a.probe_target:
        return asyncio.run(probe_main(a.probe_target, 0.02, a.probe_timeout_s, 50))
    signal.signal(signal.SIGTERM, _on_sigterm)
    _raise_open_file_limit()
    command = "python bench/hostile.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    child_pids: list[int] = []
    started = time.monotonic()
    rows = asyncio.run(run_all(a, child_pids))
    block = render(rows, a, command.strip())
    if a.out:
        update_section(Path(a.out), SECTION, TITLE, block, file_title=FILE_TITLE)
    if a.json:
        print(json.dumps({"command": command.strip(), "machine": machine_line(),
                          "duration_s": time.monotonic() - started, "rows": [
                              {**asdict(r), "outcome_text": outcome_text(r), "verdict": verdict(r),
                               "rss_growth_per_conn": r.rss_growth_per_conn} for r in rows],
                          "child_pids": child_pids}, default=str))
    else:
        print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
