"""`flexlb demo-ha`: three gateway replicas on a local ZooKeeper, traffic, the master SIGKILLed, a new master."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import grpc

from flexlb.consistency.local_zookeeper import ZooKeeper
from flexlb.launch import Proc, spawn, stop_all
from flexlb.pb import model_rpc_service_pb2 as pb

ZK_TIMEOUT_MS = 2000


def _master_of(http_port: int) -> str | None:
    req = urllib.request.Request(
        f"http://127.0.0.1:{http_port}/rtp_llm/master/info", data=b"{}", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=2) as r:
        master: str | None = json.load(r)["real_master_host"]
    return master


async def _agreed(replicas: list[tuple[Proc, int, int]], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        names = {_master_of(http) for _, _, http in replicas}
        if len(names) == 1 and None not in names:
            name = names.pop()
            assert name is not None
            return name
        if time.monotonic() > deadline:
            raise RuntimeError(f"replicas do not agree on a master: {names}")
        await asyncio.sleep(0.1)


async def _traffic(port: int, n: int, stop: asyncio.Event, counts: dict[str, int]) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.channel_id", n)]) as ch:
        stub = ch.unary_stream(
            "/RpcService/GenerateStreamCall", request_serializer=pb.GenerateInputPB.SerializeToString
        )
        i = 0
        while not stop.is_set():
            i += 1
            req = pb.GenerateInputPB(
                request_id=n * 100_000 + i,
                token_ids=list(range(1, 300)),
                generate_config=pb.GenerateConfigPB(max_new_tokens=8, is_streaming=True),
            )
            try:
                async for _ in stub(req, timeout=10):
                    pass
                counts["ok"] += 1
            except grpc.aio.AioRpcError:
                counts["failed"] += 1


async def demo_ha() -> int:
    """Run the whole demo; 0 when the failover happened in time with no failed call."""
    zk = ZooKeeper()
    procs: list[Proc] = []
    try:
        zk.start()
        print(f"ZooKeeper on {zk.hosts}")
        workers = [
            await spawn("mock-worker", "--port", "0", "--time-scale", "0.2", name=f"worker-{i}") for i in range(2)
        ]
        procs += workers
        ports = [w.port for w in workers]
        env = {
            "WHALE_SYNC_LB_CONSISTENCY_CONFIG": json.dumps(
                {
                    "needConsistency": True,
                    "masterElectType": "ZOOKEEPER",
                    "zookeeperConfig": {"zkHost": zk.hosts, "zkTimeoutMs": ZK_TIMEOUT_MS},
                }
            ),
            "HIPPO_ROLE": "demo",
            "FLEXLB_ADMIN_TOKEN": "demo-token",
            "WHALE_MASTER_CONFIG": json.dumps({"enableGrpcPrefillMaster": True, "prefillLbTimeoutMs": 300}),
        }
        replicas: list[tuple[Proc, int, int]] = []
        for i in range(3):
            args = ["serve", "--host", "127.0.0.1", "--port", "0", "--admin-port", "0", "--http-port", "0",
                    "--log-level", "WARNING"]
            for port in ports:
                args += ["--worker", f"127.0.0.1:{port}"]
            p = await spawn(*args, name=f"replica-{i}", env=env)
            procs.append(p)
            assert p.http_port is not None
            grpc_port, http_port = p.port, p.http_port
            replicas.append((p, grpc_port, http_port))
            print(f"  replica-{i}: HTTP API 127.0.0.1:{http_port}  gRPC 127.0.0.1:{grpc_port}")
        master = await _agreed(replicas, 15)
        print(f"all three replicas agree: master is {master}")
        victim = next(r for r in replicas if master.endswith(f":{r[2]}"))
        survivors = [r for r in replicas if r is not victim]
        counts = {"ok": 0, "failed": 0}
        stop = asyncio.Event()
        clients = [asyncio.create_task(_traffic(port, n, stop, counts)) for n, (_, port, _) in enumerate(survivors)]
        await asyncio.sleep(2)  # traffic through the two other replicas, decided by the master
        print(f"{counts['ok']} calls so far through the other replicas; SIGKILL the master ({master}) ...")
        victim[0].proc.kill()
        t0 = time.monotonic()
        new_master = master
        while new_master == master:
            try:
                new_master = await _agreed(survivors, ZK_TIMEOUT_MS / 1000 + 5)
            except RuntimeError:
                new_master = master
        switched = time.monotonic() - t0
        print(
            f"new master {new_master} agreed by both survivors after {switched:.2f} s "
            f"(session timeout {ZK_TIMEOUT_MS / 1000:.1f} s)"
        )
        await asyncio.sleep(2)
        stop.set()
        await asyncio.gather(*clients)
        print(f"client calls: {counts['ok']} ok, {counts['failed']} failed")
        print("stopping everything ...")
        return 0 if counts["failed"] == 0 else 1
    finally:
        await stop_all(procs)
        zk.destroy()


def run_demo_ha() -> int:
    """Entry point of `flexlb demo-ha`."""
    return asyncio.run(demo_ha())
