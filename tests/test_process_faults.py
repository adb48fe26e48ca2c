"""Faults with real processes: a worker SIGKILLed under load, and SIGTERM drain of the gateway."""

from __future__ import annotations

import asyncio
import json
import signal

import grpc

from tests.conftest import generate_input, stream_stub, wait_for
from tests.procs import Proc, spawn, stop

HEALTH_INTERVAL_S = 0.5


async def test_worker_sigkill_under_200_streams(channels) -> None:
    procs: list[Proc] = []
    try:
        # decode steps of ~40 ms: a 40-token stream lasts ~1.6 s, so many are mid-stream at the kill
        workers = [await spawn("mock-worker", "--port", "0", "--time-scale", "4") for _ in range(3)]
        procs += workers
        args = ["serve", "--host", "127.0.0.1", "--port", "0", "--admin-port", "0", "--log-level", "WARNING"]
        for w in workers:
            args += ["--worker", f"127.0.0.1:{w.port}"]
        config = {"healthCheckIntervalMs": int(HEALTH_INTERVAL_S * 1000), "healthCheckTimeoutMs": 200}
        gw = await spawn(*args, env={"WHALE_MASTER_CONFIG": json.dumps(config)})
        procs.append(gw)
        victim = workers[0]
        victim_key = f"127.0.0.1:{victim.port}"
        stubs = [stream_stub(channels(gw.port, **{"grpc.channel_id": i})) for i in range(4)]
        results: dict[int, tuple[int, grpc.StatusCode | None]] = {}
        started = asyncio.Event()

        async def one(i: int) -> None:
            n = 0
            call = stubs[i % 4](generate_input(2000 + i, max_new_tokens=40), timeout=30)
            try:
                async for _ in call:
                    n += 1
                    if len(results) == 0 and n == 1:
                        started.set()
                results[i] = (n, None)
            except grpc.aio.AioRpcError as exc:
                results[i] = (n, exc.code())

        loop = asyncio.get_running_loop()
        tasks = [asyncio.create_task(one(i)) for i in range(200)]
        await asyncio.wait_for(started.wait(), 20)
        victim.proc.kill()
        killed_at = loop.time()
        await wait_for(lambda: not next(w for w in gw.info()["workers"] if w["worker"] == victim_key)["healthy"],
                       timeout_s=5, what="the killed worker out of rotation")
        out_after = loop.time() - killed_at
        await asyncio.wait_for(asyncio.gather(*tasks), 40)  # nothing hangs past its deadline
        failed = {i: r for i, r in results.items() if r[1] is not None}
        # only calls that had already received messages from the killed worker may fail, with UNAVAILABLE
        assert all(n > 0 and code == grpc.StatusCode.UNAVAILABLE for n, code in failed.values()), failed
        assert len(results) == 200 and len(failed) < 200
        assert out_after <= 2 * HEALTH_INTERVAL_S + 0.3, out_after
        # restart on the same port: back within two intervals
        restarted = await spawn("mock-worker", "--port", str(victim.port), "--time-scale", "4")
        procs.append(restarted)
        back_from = loop.time()
        await wait_for(lambda: next(w for w in gw.info()["workers"] if w["worker"] == victim_key)["healthy"],
                       timeout_s=5, what="the restarted worker back in rotation")
        assert loop.time() - back_from <= 2 * HEALTH_INTERVAL_S + 0.3
        await wait_for(lambda: all(w["in_flight"] == 0 for w in gw.info()["workers"]),
                       what="in-flight back to 0 in the gateway")
    finally:
        for p in procs:
            await stop(p, signal.SIGKILL)


async def test_sigterm_drains_in_flight_streams_and_exits_zero(channels) -> None:
    procs: list[Proc] = []
    try:
        worker = await spawn("mock-worker", "--port", "0", "--time-scale", "4")
        procs.append(worker)
        gw = await spawn("serve", "--host", "127.0.0.1", "--port", "0", "--admin-port", "0",
                         "--worker", f"127.0.0.1:{worker.port}", "--drain-timeout-s", "20", "--log-level", "WARNING")
        procs.append(gw)
        stub = stream_stub(channels(gw.port))
        calls = [stub(generate_input(3000 + i, max_new_tokens=30), timeout=30) for i in range(50)]
        for c in calls:
            await c.read()  # every stream is in flight: it has its first message
        gw.proc.send_signal(signal.SIGTERM)
        # after the signal, new calls are refused (UNAVAILABLE), not accepted
        late = stream_stub(channels(gw.port, **{"grpc.channel_id": 99}))
        refused = 0
        for i in range(5):
            try:
                async for _ in late(generate_input(3100 + i), timeout=5):
                    pass
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.code()
                refused += 1
        assert refused == 5
        # the in-flight streams all finish cleanly
        for c in calls:
            n = 1
            while await c.read() is not grpc.aio.EOF:
                n += 1
            assert await c.code() == grpc.StatusCode.OK
            assert n == 30
        assert await asyncio.wait_for(gw.proc.wait(), 20) == 0
    finally:
        for p in procs:
            await stop(p, signal.SIGKILL)
