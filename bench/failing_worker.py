"""One worker fails every generate call at once with an engine error: what clients and the gateway see.

    python bench/failing_worker.py [--duration-s 12] [--concurrency 16] [--strategies A,B] [--out docs/failures.md]

Per strategy, real processes: three PDFUSION mock workers (one with `--error-rate 1 --error-code 8200`)
and a gateway (`flexlb serve --strategy S`), all on 127.0.0.1 with ports the OS picks. A grpc.aio
client runs closed-loop GenerateStreamCalls at the given concurrency for `--duration-s`; every call is
recorded (ok or its gRPC status, time since the start). The gateway's Prometheus metrics are scraped
at 5 s and at the end of the load phase (attempts per worker from `flexlb_requests_total`, ejections,
failovers, worker state), its log is kept and its "ejected"/"failover" lines counted. Then the
recovery phase, with the load still running: the failing worker is SIGKILLed and started again on the
same port without faults, and the metrics are polled until it serves calls again (OK attempts on it
grow and its state is in_rotation), bounded by `--recovery-timeout-s`.

Targets (from the issue), each pass/fail per strategy: after 5 s the failing worker gets < 5 % of the
attempts; clients see < 2 % failed calls over the load phase; it is ejected in the metrics and in the
log; it comes back (through a probe) once it recovers. Prints a table; writes Markdown only with --out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from docs_section import update_section  # bench/ is the script's directory, so its helpers import directly
from prometheus_client.parser import text_string_to_metric_families

from flexlb.balancer.strategies import strategy_names
from flexlb.pb import model_rpc_service_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
FLEXLB = str(ROOT / ".venv" / "bin" / "flexlb")
HOST = "127.0.0.1"
GENERATE = "/RpcService/GenerateStreamCall"
SECTION = "failing-worker"
CHECKPOINT_S = 5.0  # the "after 5 s"
READY = re.compile(r"(?:listening on [\d.]+:|grpc [\d.]+:)(\d+)(?:.*admin [\d.]+:(\d+))?")

# targets of the issue
MAX_SHARE_AFTER_5S = 0.05
MAX_CLIENT_FAILED = 0.02


# ------------------------------------------------------------------ processes


@dataclass
class Child:
    """A flexlb child process with its log files and the ports from its readiness line."""

    name: str
    popen: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    port: int = 0
    admin_port: int = 0

    def log(self) -> str:
        """Everything it wrote to stderr so far."""
        return self.stderr.read_text(errors="replace") if self.stderr.exists() else ""


def start(name: str, args: list[str], workdir: Path, env: dict[str, str] | None = None,
          timeout_s: float = 20.0) -> Child:
    """Start `flexlb ARGS` with stdout/stderr to files and wait (bounded) for its readiness line."""
    out, err = workdir / f"{name}.out", workdir / f"{name}.err"
    with out.open("wb") as fo, err.open("ab") as fe:
        popen = subprocess.Popen([FLEXLB, *args], stdout=fo, stderr=fe, stdin=subprocess.DEVNULL,
                                 env={**os.environ, "GRPC_VERBOSITY": "ERROR", **(env or {})})
    child = Child(name, popen, out, err)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        m = READY.search(out.read_text(errors="replace"))
        if m:
            child.port = int(m.group(1))
            child.admin_port = int(m.group(2)) if m.group(2) else 0
            return child
        if popen.poll() is not None:
            break
        time.sleep(0.05)
    stop(child)
    raise RuntimeError(f"{name} did not become ready (exit code {popen.returncode}); stderr tail:\n"
                       + "\n".join(child.log().splitlines()[-15:]))


def stop(child: Child, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> None:
    """Signal the process by PID, wait (bounded), SIGKILL if it outlives that."""
    if child.popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            child.popen.send_signal(sig)
        try:
            child.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            child.popen.kill()
            child.popen.wait(5)


def start_worker(name: str, port: int, time_scale: float, workdir: Path, failing: bool) -> Child:
    """A PDFUSION mock worker (port 0: the OS picks one)."""
    args = ["mock-worker", "--role", "PDFUSION", "--host", HOST, "--port", str(port), "--time-scale", str(time_scale)]
    if failing:
        args += ["--error-rate", "1", "--error-code", "8200"]
    return start(name, args, workdir)


# ------------------------------------------------------------------ metrics


@dataclass
class Scrape:
    """What one scrape of /actuator/prometheus says about the workers."""

    t_s: float
    attempts: dict[str, int] = field(default_factory=dict)  # worker -> GenerateStreamCall attempts (all codes)
    ok: dict[str, int] = field(default_factory=dict)  # worker -> attempts that ended OK
    ejections: dict[str, int] = field(default_factory=dict)
    state: dict[str, str] = field(default_factory=dict)
    healthy: dict[str, int] = field(default_factory=dict)
    failovers: int = 0


def scrape(admin_port: int, t_s: float) -> Scrape:
    """Read the gateway's metrics (blocking; call it in a thread)."""
    url = f"http://{HOST}:{admin_port}/actuator/prometheus"
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    s = Scrape(t_s)
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            lab, v = sample.labels, sample.value
            if sample.name == "flexlb_requests_total" and lab.get("method", "").endswith("GenerateStreamCall"):
                w = lab["worker"]
                s.attempts[w] = s.attempts.get(w, 0) + int(v)
                if lab.get("code") == "OK":
                    s.ok[w] = s.ok.get(w, 0) + int(v)
            elif sample.name == "flexlb_worker_ejections_total":
                s.ejections[lab["worker"]] = s.ejections.get(lab["worker"], 0) + int(v)
            elif sample.name == "flexlb_worker_state" and v == 1:
                s.state[lab["worker"]] = lab["state"]
            elif sample.name == "flexlb_worker_healthy":
                s.healthy[lab["worker"]] = int(v)
            elif sample.name == "flexlb_failovers_total":
                s.failovers += int(v)
    return s


# ------------------------------------------------------------------ load


@dataclass
class Call:
    """One client call: when it started and ended (s since the load start) and its gRPC status."""

    start_s: float
    end_s: float
    code: str

    @property
    def ok(self) -> bool:
        """It ended OK."""
        return self.code == "OK"


class Load:
    """Closed-loop GenerateStreamCall callers on a few channels until stop() (or a hard bound)."""

    def __init__(self, target: str, concurrency: int, max_s: float, seed: int) -> None:
        self.channels = [grpc.aio.insecure_channel(target, options=[("grpc.channel_id", i)]) for i in range(4)]
        self.stubs = [
            c.unary_stream(GENERATE, request_serializer=pb.GenerateInputPB.SerializeToString,
                           response_deserializer=pb.GenerateOutputsPB.FromString)
            for c in self.channels
        ]
        self.concurrency = concurrency
        self.calls: list[Call] = []
        self.t0 = 0.0
        self._stop_at = 0.0
        self._max_s = max_s
        self._rng = random.Random(seed)
        # a mix of prompts so cache-aware strategies do not pin everything on one worker
        self._prompts = [[(p * 7919 + i * 31) % 30000 + 1 for i in range(self._rng.choice((64, 128, 256)))]
                         for p in range(48)]
        self._tasks: list[asyncio.Task[None]] = []

    def now(self) -> float:
        """Seconds since the load started."""
        return time.monotonic() - self.t0

    async def start(self) -> None:
        """Wait (bounded) for the channels, then start the callers."""
        for c in self.channels:
            await asyncio.wait_for(c.channel_ready(), 10)
        self.t0 = time.monotonic()
        self._stop_at = self.t0 + self._max_s
        self._tasks = [asyncio.create_task(self._caller(i)) for i in range(self.concurrency)]

    async def _caller(self, i: int) -> None:
        n = 0
        while time.monotonic() < self._stop_at:
            n += 1
            req = pb.GenerateInputPB(
                request_id=i * 1_000_000 + n,
                token_ids=self._rng.choice(self._prompts),
                generate_config=pb.GenerateConfigPB(max_new_tokens=8, is_streaming=True, can_use_pd_separation=True),
            )
            started = self.now()
            code = "OK"
            try:
                async for _ in self.stubs[i % len(self.stubs)](req, timeout=10):
                    pass
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
            self.calls.append(Call(started, self.now(), code))

    async def stop(self) -> None:
        """Let the callers finish their current call (bounded), then close the channels."""
        self._stop_at = 0.0
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=15)
            for t in pending:
                t.cancel()
        for c in self.channels:
            await c.close()


# ------------------------------------------------------------------ one strategy


@dataclass
class Result:
    """Figures of one strategy's run."""

    strategy: str
    error: str = ""
    calls: int = 0
    failed: int = 0
    fail_codes: dict[str, int] = field(default_factory=dict)
    share_after_5s: float = 0.0
    share_total: float = 0.0
    attempts_after_5s: int = 0
    failing_attempts_after_5s: int = 0
    attempts_total: int = 0
    failing_attempts_total: int = 0
    ejections: int = 0
    ejected_log_lines: int = 0
    failover_log_lines: int = 0
    failovers_metric: int = 0
    state_at_5s: str = ""
    state_at_end: str = ""
    recovered: bool = False
    recovery_s: float | None = None  # from the restarted worker's readiness to its first OK call
    restart_s: float = 0.0  # from the SIGKILL to the restarted worker's readiness
    recovery_states: list[str] = field(default_factory=list)
    recovery_calls: int = 0
    recovery_failed: int = 0
    log_excerpt: list[str] = field(default_factory=list)

    def targets(self) -> dict[str, bool]:
        """Each target of the issue, pass (True) or fail."""
        return {
            "share<5% after 5s": self.share_after_5s < MAX_SHARE_AFTER_5S,
            "client failed<2%": self.calls > 0 and self.failed / self.calls < MAX_CLIENT_FAILED,
            "ejected (metric+log)": self.ejections > 0 and self.ejected_log_lines > 0,
            "back after recovery": self.recovered,
        }


def _fraction(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


async def run_strategy(strategy: str, a: argparse.Namespace, workdir: Path) -> Result:
    """Start the processes, run the load and the recovery, stop everything."""
    res = Result(strategy)
    workers: list[Child] = []
    gateway: Child | None = None
    load: Load | None = None
    tag = strategy.lower()
    try:
        for i in range(3):
            workers.append(start_worker(f"{tag}-worker{i}", 0, a.time_scale, workdir, failing=i == 0))
        failing_key = f"{HOST}:{workers[0].port}"
        args = ["serve", "--host", HOST, "--port", "0", "--admin-port", "0",
                "--http-port", "0", "--deploy", "PD_FUSION",
                "--strategy", strategy, "--log-level", "INFO"]
        for w in workers:
            args += ["--worker", f"{HOST}:{w.port}"]
        cfg = {"healthCheckIntervalMs": a.health_check_ms}
        gateway = start(f"{tag}-gateway", args, workdir, env={"WHALE_MASTER_CONFIG": json.dumps(cfg)})
        admin = gateway.admin_port

        load = Load(f"{HOST}:{gateway.port}", a.concurrency, a.duration_s + a.recovery_timeout_s + 5, a.seed)
        base = await asyncio.to_thread(scrape, admin, 0.0)  # before any call: every count starts here
        await load.start()
        await asyncio.sleep(max(0.0, CHECKPOINT_S - load.now()))
        at5 = await asyncio.to_thread(scrape, admin, load.now())
        await asyncio.sleep(max(0.0, a.duration_s - load.now()))
        end = await asyncio.to_thread(scrape, admin, load.now())
        load_end_s = load.now()

        # load-phase figures
        phase = [c for c in load.calls if c.end_s <= load_end_s]
        res.calls = len(phase)
        for c in phase:
            if not c.ok:
                res.failed += 1
                res.fail_codes[c.code] = res.fail_codes.get(c.code, 0) + 1

        def attempts(s: Scrape, only: str | None = None) -> int:
            return s.attempts.get(only, 0) if only else sum(s.attempts.values())

        res.attempts_total = attempts(end) - attempts(base)
        res.failing_attempts_total = attempts(end, failing_key) - attempts(base, failing_key)
        res.attempts_after_5s = attempts(end) - attempts(at5)
        res.failing_attempts_after_5s = attempts(end, failing_key) - attempts(at5, failing_key)
        res.share_total = _fraction(res.failing_attempts_total, res.attempts_total)
        res.share_after_5s = _fraction(res.failing_attempts_after_5s, res.attempts_after_5s)
        res.ejections = end.ejections.get(failing_key, 0)
        res.failovers_metric = end.failovers
        res.state_at_5s = at5.state.get(failing_key, "?")
        res.state_at_end = end.state.get(failing_key, "?")
        lines = gateway.log().splitlines()
        res.ejected_log_lines = sum("ejected" in ln for ln in lines)
        res.failover_log_lines = sum("failover" in ln for ln in lines)

        # recovery: kill the failing worker, start it again on its port without faults
        port = workers[0].port
        stop(workers[0], signal.SIGKILL)
        recovery_started = load.now()
        workers[0] = await asyncio.to_thread(start_worker, f"{tag}-worker0-restarted", port, a.time_scale,
                                             workdir, False)
        ready_s = load.now()
        res.restart_s = ready_s - recovery_started
        ok_before = (await asyncio.to_thread(scrape, admin, ready_s)).ok.get(failing_key, 0)
        deadline = ready_s + a.recovery_timeout_s
        while load.now() < deadline:
            s = await asyncio.to_thread(scrape, admin, load.now())
            st = s.state.get(failing_key, "?")
            if not res.recovery_states or res.recovery_states[-1] != st:
                res.recovery_states.append(st)
            if s.ok.get(failing_key, 0) > ok_before and st == "in_rotation":
                res.recovered = True
                res.recovery_s = s.t_s - ready_s
                break
            await asyncio.sleep(0.1)
        await load.stop()
        rec = [c for c in load.calls if c.end_s > load_end_s]
        res.recovery_calls = len(rec)
        res.recovery_failed = sum(not c.ok for c in rec)
        load = None
        if not all(res.targets().values()):
            interesting = [ln for ln in gateway.log().splitlines()
                           if any(k in ln for k in ("ejected", "rotation", "Traceback", "ERROR", "Error"))]
            res.log_excerpt = interesting[:12]
    except Exception as exc:  # a gateway that fails to start or a scrape that fails: reported, not hidden
        res.error = f"{type(exc).__name__}: {exc}"
        if gateway is not None:
            res.log_excerpt = gateway.log().splitlines()[-15:]
    finally:
        if load is not None:
            with contextlib.suppress(Exception):
                await load.stop()
        if gateway is not None:
            stop(gateway)
        for w in workers:
            stop(w)
    return res


# ------------------------------------------------------------------ report


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _mark(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def table(results: list[Result]) -> list[str]:
    """The results as a Markdown table."""
    head = ["strategy", "client calls", "failed", "failing worker share after 5 s", "share whole run",
            "ejections (metric)", "log: ejected / failover", "state at 5 s / end", "back after restart",
            "targets: share / failed / ejected / back"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        if r.error:
            rows.append(f"| {r.strategy} | " + " | ".join(["-"] * (len(head) - 2)) + f" | error: {r.error} |")
            continue
        t = r.targets()
        back = (f"{r.recovery_s:.1f} s" if r.recovery_s is not None else "not within the bound") \
            + f" (restart {r.restart_s:.1f} s; {' → '.join(r.recovery_states)}; " \
            f"{r.recovery_failed}/{r.recovery_calls:,} calls failed meanwhile)"
        codes = ", ".join(f"{k} {v}" for k, v in sorted(r.fail_codes.items()))
        rows.append(
            f"| {r.strategy} | {r.calls:,} | {r.failed} ({_pct(_fraction(r.failed, r.calls))}"
            + (f"; {codes}" if codes else "") + ") "
            f"| {_pct(r.share_after_5s)} ({r.failing_attempts_after_5s}/{r.attempts_after_5s:,}) "
            f"| {_pct(r.share_total)} ({r.failing_attempts_total}/{r.attempts_total:,}) "
            f"| {r.ejections} | {r.ejected_log_lines} / {r.failover_log_lines} "
            f"| {r.state_at_5s} / {r.state_at_end} | {back} "
            f"| {' / '.join(_mark(v) for v in t.values())} |"
        )
    return rows


def details(results: list[Result]) -> list[str]:
    """Failed targets with the gateway log lines that bear on them."""
    out: list[str] = []
    for r in results:
        failed = [k for k, v in r.targets().items() if not v] if not r.error else ["run"]
        if not failed:
            continue
        out.append(f"- **{r.strategy}**: failed {', '.join(failed)}"
                   + (f" ({r.error})" if r.error else "")
                   + f"; recovery phase: {r.recovery_calls:,} calls, {r.recovery_failed} failed.")
        if r.log_excerpt:
            out.append("")
            out.append("  ```")
            out.extend(f"  {ln[:220]}" for ln in r.log_excerpt)
            out.append("  ```")
    return out


def markdown(results: list[Result], a: argparse.Namespace, command: str) -> str:
    """The docs block, between its markers."""
    lines = [
        f"<!-- {SECTION}:begin -->",
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores; command: "
        f"`{command}`.",
        f"3 PDFUSION mock workers (`--time-scale {a.time_scale:g}`), one of them with `--error-rate 1 "
        f"--error-code 8200`; gateway defaults but `healthCheckIntervalMs` {a.health_check_ms}; "
        f"{a.concurrency} closed-loop streaming callers for {a.duration_s:g} s, then the failing worker is "
        f"SIGKILLed and restarted healthy on its port (bound {a.recovery_timeout_s:g} s). \"Share\" is the "
        "failing worker's part of the gateway's GenerateStreamCall attempts (`flexlb_requests_total`, a "
        "failover counts one attempt per worker tried); \"failed\" is what clients saw in the load phase; "
        "\"back after restart\" is from the restarted worker's readiness to its first OK call with state "
        "in_rotation (in parentheses: kill to readiness, the states it went through, client calls that failed in "
        "the recovery phase).",
        "",
        *table(results),
    ]
    extra = details(results)
    if extra:
        lines += ["", "Failed targets:", "", *extra]
    lines.append(f"<!-- {SECTION}:end -->")
    return "\n".join(lines)


def main() -> None:
    """Parse flags, run every strategy, print the table, write Markdown with --out."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration-s", type=float, default=12.0, help="load phase per strategy (default 12)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--strategies", default="all", help="comma-separated strategy names (default: all accepted)")
    ap.add_argument("--out", default=None, help="Markdown file to write the results into (nothing is written without)")
    ap.add_argument("--time-scale", type=float, default=0.2, help="mock workers' --time-scale (default 0.2)")
    ap.add_argument("--health-check-ms", type=int, default=1000, help="healthCheckIntervalMs (default 1000)")
    ap.add_argument("--recovery-timeout-s", type=float, default=12.0,
                    help="bound on the wait for the restarted worker (default 12)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--log-dir", default=None, help="keep the processes' logs here (default: a temporary directory)")
    a = ap.parse_args()
    if a.duration_s <= CHECKPOINT_S:
        ap.error(f"--duration-s must exceed {CHECKPOINT_S:g} (the 5 s checkpoint)")
    names = strategy_names() if a.strategies == "all" else [s.strip().upper() for s in a.strategies.split(",") if s]
    results: list[Result] = []
    loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    with tempfile.TemporaryDirectory(prefix="flexlb-failing-") as tmp, \
            asyncio.Runner(loop_factory=loop_factory) as runner:
        workdir = Path(a.log_dir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for name in names:
            t0 = time.monotonic()
            r = runner.run(run_strategy(name, a, workdir))
            results.append(r)
            print(f"{name}: done in {time.monotonic() - t0:.1f} s" + (f" ({r.error})" if r.error else ""),
                  file=sys.stderr, flush=True)
    print("\n".join(table(results)))
    extra = details(results)
    if extra:
        print("\nFailed targets:\n" + "\n".join(extra))
    if a.out:
        command = "python bench/failing_worker.py " + " ".join(sys.argv[1:])
        update_section(Path(a.out), SECTION, "Results", markdown(results, a, command),
                       "# One worker failing every call")


if __name__ == "__main__":
    main()
