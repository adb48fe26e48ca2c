"""Shared fixtures: real mock workers and real gateways on loopback, all in the test's event loop."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from typing import Any

import grpc
import pytest

from flexlb import wire
from flexlb.app import Gateway
from flexlb.balancer.request import Deploy
from flexlb.balancer.workers import Role, WorkerAddr
from flexlb.config import ConsistencyConfig, MasterConfig, ServerConfig, Settings
from flexlb.consistency.local_zookeeper import ZooKeeper
from flexlb.pb import model_rpc_service_pb2 as pb
from flexlb.sim.batching import BatchingParams
from flexlb.sim.engine import EngineParams
from flexlb.sim.mock_worker import Faults, MockWorker, MockWorkerConfig
from flexlb.tls import ServerTls

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

# fast simulated engine: a few ms per call so suites stay quick but timing is still real
FAST = EngineParams(
    prefill_base_ms=2.0,
    prefill_ms_per_uncached_token=0.002,
    decode_step_base_ms=1.0,
    decode_step_ms_per_running=0.0,
)


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 5.0, what: str = "condition") -> None:
    """Poll `predicate` until true; fail the test with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.01)


def generate_input(
    request_id: int, n_tokens: int = 64, max_new_tokens: int = 8, streaming: bool = True, first_token: int = 1
) -> pb.GenerateInputPB:
    """A GenerateInputPB like the RTP-LLM frontend sends (PD allowed)."""
    return pb.GenerateInputPB(
        request_id=request_id,
        token_ids=[(first_token + i * 31) % 30000 for i in range(n_tokens)],
        generate_config=pb.GenerateConfigPB(
            max_new_tokens=max_new_tokens, is_streaming=streaming, can_use_pd_separation=True
        ),
    )


def engine_error_code(exc: grpc.aio.AioRpcError) -> int | None:
    """The ErrorDetailsPB error code in a failed call's trailers (None: none sent)."""
    for key, value in exc.trailing_metadata() or ():
        if key == wire.ERROR_DETAILS_TRAILER:
            return int(pb.ErrorDetailsPB.FromString(value).error_code)
    return None


def stream_stub(channel: grpc.aio.Channel) -> grpc.aio.UnaryStreamMultiCallable:
    """Typed GenerateStreamCall callable."""
    return channel.unary_stream(
        "/RpcService/GenerateStreamCall",
        request_serializer=pb.GenerateInputPB.SerializeToString,
        response_deserializer=pb.GenerateOutputsPB.FromString,
    )


WorkerFactory = Callable[..., Awaitable[MockWorker]]
GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def mock_workers() -> AsyncIterator[WorkerFactory]:
    """Start mock workers on free loopback ports; all are stopped at the end of the test."""
    started: list[MockWorker] = []

    async def start(
        role: str = "PDFUSION",
        time_scale: float = 1.0,
        faults: Faults | None = None,
        params: EngineParams = FAST,
        port: int = 0,
        engine: str = "batching",
        batching: BatchingParams | None = None,
        tls: ServerTls | None = None,
        **config: Any,
    ) -> MockWorker:
        # batching=None: `params`' costs as iterations (a prompt alone costs what it costs on the FIFO engine);
        # `config`: any other MockWorkerConfig field (max_seq_len, ...)
        w = MockWorker(
            MockWorkerConfig(role=role, port=port, time_scale=time_scale, params=params, faults=faults or Faults(),
                             engine=engine, batching=batching, tls=tls, **config)
        )
        await w.start()
        started.append(w)
        return w

    yield start
    for w in started:
        await w.stop(grace_s=0)


def worker_addr(w: MockWorker, group: str = "") -> WorkerAddr:
    """The WorkerAddr of a running mock worker."""
    return WorkerAddr("127.0.0.1", w.port, w.port - 1, Role[w.config.role], group)


@pytest.fixture(params=["h2", "grpcio"])
async def gateways(request: pytest.FixtureRequest) -> AsyncIterator[GatewayFactory]:
    """Start in-process gateways on free loopback ports, once per relay engine; all are stopped after the test."""
    started: list[Gateway] = []
    engine: str = request.param

    async def start(
        workers: list[WorkerAddr],
        deploy: Deploy | None = None,
        strategy: str = "ROUND_ROBIN",
        decode_strategy: str = "ROUND_ROBIN",
        master: dict[str, Any] | None = None,
        consistency: ConsistencyConfig | None = None,
        **server: Any,
    ) -> Gateway:
        if deploy is None:
            deploy = Deploy.DISAGGREGATED if any(w.role is Role.PREFILL for w in workers) else Deploy.PD_FUSION
        settings = Settings(
            server=replace(ServerConfig(host="127.0.0.1", http_port=0, grpc_port=0, admin_port=0, relay_engine=engine),
                           **server),
            master=MasterConfig(
                load_balance_strategy=strategy, decode_load_balance_strategy=decode_strategy, **(master or {})
            ),
            workers=tuple(workers),
            deploy=deploy,
            consistency=consistency or ConsistencyConfig(),
        )
        gw = Gateway(settings, seed=1)
        await gw.start()
        started.append(gw)
        return gw

    yield start
    for gw in started:
        await gw.stop(grace_s=0)


@pytest.fixture
async def channels() -> AsyncIterator[Callable[[int], grpc.aio.Channel]]:
    """Client channels to loopback ports (TLS when given credentials), closed at the end of the test."""
    opened: list[grpc.aio.Channel] = []

    def open_(port: int, credentials: grpc.ChannelCredentials | None = None, **options: Any) -> grpc.aio.Channel:
        target, opts = f"127.0.0.1:{port}", list(options.items())
        ch = grpc.aio.secure_channel(target, credentials, opts) if credentials is not None \
            else grpc.aio.insecure_channel(target, options=opts)
        opened.append(ch)
        return ch

    yield open_
    for ch in opened:
        await ch.close()


@pytest.fixture
async def fuzz_gateway(mock_workers, gateways, channels):  # type: ignore[no-untyped-def]
    """A gateway (each engine) in front of one fast mock worker, shared by a fuzz test's examples."""
    w = await mock_workers(time_scale=0.0)
    gw = await gateways([worker_addr(w)], max_receive_message_bytes=1 << 20)
    return gw, channels(gw.grpc_port)


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """Contexts that reached the event loop's exception handler during the test (errors nobody handled)."""
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    seen: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    yield seen
    loop.set_exception_handler(previous)


@pytest.fixture
async def raw() -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """Raw HTTP/2 clients (bench/attacks.py) to a loopback port; with a handshake, returned once the server's
    SETTINGS are in. All are closed at the end of the test."""
    from bench.attacks import PREFACE, RawClient

    opened: list[RawClient] = []

    async def connect(port: int, **kw: Any) -> RawClient:
        c = await RawClient.connect("127.0.0.1", port, **kw)
        opened.append(c)
        if kw.get("read", True) and kw.get("settings", ()) is not None and kw.get("preface", PREFACE) is not None:
            await c.wait_until(lambda: c.settings_frames > 0 or c.ended(), 5.0)
        return c

    yield connect
    for c in opened:
        await c.close()


@pytest.fixture(scope="module")
def zookeeper() -> Iterator[ZooKeeper]:
    """A real ZooKeeper server for the module's tests (stopped and removed after)."""
    zk = ZooKeeper()
    zk.start()
    yield zk
    zk.destroy()
