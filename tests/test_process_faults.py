"""Faults with real processes: a worker SIGKILLed under load, and SIGTERM drain of the gateway."""

from __future__ import annotations

import asyncio
import json
import signal

import grpc

from flexlb.launch import Proc, spawn, stop
from tests.conftest import generate_input, stream_stub, wait_for

HEALTH_INTERVAL_S = 0.5


async def test_worker_sigkill_under_200_streams(channels) -> None:
    procs: list[Proc] = []
    try:
        # decode steps of ~40 ms: a 40-token stream lasts ~1.6 s, so many are mid-stream at the kill
        workers = [await spawn("mock-worker", "--port", "0", "--time-scale", "4") for _ in range(3)]
        procs += workers
        args = ["serve", "--host", "127.0.0.1", "--port", "0", "--admin-port", "0",
                "--http-port", "0", "--log-level", "WARNING"]
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
        gw = await spawn("serve", "--host", "127.0.0.1", "--port", "0", "--admin-port", "0", "--http-port", "0",
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


async def test_master_sigkill_new_master_in_time_and_no_failed_calls(zookeeper, channels) -> None:
    import aiohttp

    zk_timeout_ms = 2000
    env = {
        "WHALE_SYNC_LB_CONSISTENCY_CONFIG": json.dumps({"needConsistency": True, "masterElectType": "ZOOKEEPER",
                                                        "zookeeperConfig": {"zkHost": zookeeper.hosts,
                                                                            "zkTimeoutMs": zk_timeout_ms}}),
        "HIPPO_ROLE": "sigkill", "FLEXLB_ADMIN_TOKEN": "t0ken",
    }
    procs: list[Proc] = []
    try:
        worker = await spawn("mock-worker", "--port", "0")
        procs.append(worker)
        replicas = [await spawn("serve", "--host", "127.0.0.1", "--port", "0", "--admin-port", "0", "--http-port", "0",
                                "--worker", f"127.0.0.1:{worker.port}", "--log-level", "WARNING", env=env)
                    for _ in range(3)]
        procs += replicas

        async def masters_named(http: aiohttp.ClientSession, who: list[Proc]) -> set[str | None]:
            names = set()
            for r in who:
                async with http.post(f"http://127.0.0.1:{r.admin_port}/rtp_llm/master/info", json={}) as resp:
                    names.add((await resp.json())["real_master_host"])
            return names

        async with aiohttp.ClientSession() as http:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 15
            while True:
                names = await masters_named(http, replicas)
                if len(names) == 1 and None not in names:
                    break
                assert loop.time() < deadline, f"replicas never agreed on a master: {names}"
                await asyncio.sleep(0.1)  # polling interval while waiting for agreement
            master_host = names.pop()
            master = next(r for r in replicas if master_host == f"127.0.0.1:{r.http_port}")
            survivors = [r for r in replicas if r is not master]
            failures: list[str] = []
            stop_calls = asyncio.Event()

            async def client(r: Proc, n: int) -> None:
                stub = stream_stub(channels(r.port, **{"grpc.channel_id": n}))
                i = 0
                while not stop_calls.is_set():
                    i += 1
                    try:
                        assert len([m async for m in stub(generate_input(6000 + n * 10000 + i), timeout=10)]) == 8
                    except (grpc.aio.AioRpcError, AssertionError) as exc:
                        failures.append(repr(exc))

            clients = [asyncio.create_task(client(r, n)) for n, r in enumerate(survivors)]
            master.proc.kill()
            killed_at = loop.time()
            while True:
                names = await masters_named(http, survivors)
                if len(names) == 1 and None not in names and master_host not in names:
                    break
                assert loop.time() - killed_at < zk_timeout_ms / 1000 + 2, f"no new master in time: {names}"
                await asyncio.sleep(0.05)
            switched_after = loop.time() - killed_at
            stop_calls.set()
            await asyncio.gather(*clients)
        assert switched_after <= zk_timeout_ms / 1000 + 2
        assert failures == []
    finally:
        for p in procs:
            await stop(p, signal.SIGKILL)


async def test_sigterm_with_only_schedule_reservations_does_not_wait_out_the_drain(channels) -> None:
    from flexlb.pb import flexlb_schedule_service_pb2 as fpb

    procs: list[Proc] = []
    try:
        worker = await spawn("mock-worker", "--port", "0")
        procs.append(worker)
        gw = await spawn("serve", "--host", "127.0.0.1", "--port", "0", "--admin-port", "0", "--http-port", "0",
                         "--worker", f"127.0.0.1:{worker.port}", "--drain-timeout-s", "60", "--log-level", "WARNING")
        procs.append(gw)
        schedule = channels(gw.port).unary_unary(
            "/FlexlbService/Schedule", request_serializer=fpb.FlexlbScheduleRequestPB.SerializeToString,
            response_deserializer=fpb.FlexlbScheduleResponsePB.FromString)
        for i in range(5):  # a replica's requests (forward_hop 1): load reserved here for 600 s
            reply = await schedule(fpb.FlexlbScheduleRequestPB(request_id=i, seq_len=100, forward_hop=1), timeout=5)
            assert reply.success and reply.lifecycle.state == fpb.REQUEST_STATE_DISPATCHING
        gw.proc.send_signal(signal.SIGTERM)
        # reservations are no client calls of this gateway: it exits well within the drain timeout
        assert await asyncio.wait_for(gw.proc.wait(), 10) == 0
    finally:
        for p in procs:
            await stop(p, signal.SIGKILL)


async def test_a_mock_worker_exits_zero_on_sigterm() -> None:
    worker = await spawn("mock-worker", "--port", "0")
    try:
        worker.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(worker.proc.wait(), 10) == 0
    finally:
        await stop(worker, signal.SIGKILL)
