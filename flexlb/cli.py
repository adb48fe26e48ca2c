"""`flexlb` command line: serve | mock-worker | demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace

from flexlb import __version__
from flexlb.balancer.prefill_queue import PrefillQueueConfig
from flexlb.balancer.strategies import strategy_names
from flexlb.config import EDGE_LIMIT_FLAGS, NOT_ACTED_ON, CliOverrides, ConfigError
from flexlb.logs import LOG_LEVELS, parse_format, parse_level, parse_sample, setup_logging
from flexlb.sim.batching import BatchingEngine, BatchingParams
from flexlb.sim.engine import EngineParams, PrefixCache
from flexlb.sim.mock_worker import ENGINES, ROLE_NAMES, Faults, MockWorkerConfig
from flexlb.tls import TLS_FLAGS, tls_config

# FIFO cost flags (dest names); on the batching engine they are mapped onto iterations when no --batch-* is given
_FIFO_COSTS = ("prefill_base_ms", "prefill_ms_per_token", "decode_step_ms", "decode_step_ms_per_running")
_BATCH_COSTS = {"batch_base_ms": "base_ms", "batch_prefill_base_ms": "prefill_base_ms",
                "batch_ms_per_prefill_token": "ms_per_prefill_token",
                "batch_ms_per_cached_token": "ms_per_cached_token",
                "batch_ms_per_decode_seq": "ms_per_decode_sequence"}

# the original FlexLB's Spring Boot run line: --server.port=P --management.server.port=Q
_SPRING_FLAGS = {"--server.port": "--http-port", "--management.server.port": "--admin-port"}


def _spring_to_flags(argv: Sequence[str]) -> list[str]:
    """Map the Spring run line onto our flags; server.port=P also puts gRPC on P+2 unless --port is given."""
    out: list[str] = []
    server_port: str | None = None
    args = list(argv)
    i = 0
    while i < len(args):
        name, sep, value = args[i].partition("=")
        if name in _SPRING_FLAGS:
            out.append(_SPRING_FLAGS[name])
            if not sep and i + 1 < len(args):
                i += 1
                value = args[i]
            out.append(value)
            if name == "--server.port":
                server_port = value
        else:
            out.append(args[i])
        i += 1
    given_grpc = any(a == "--port" or a.startswith("--port=") for a in out)
    if server_port is not None and not given_grpc and server_port.strip().isdigit():
        # the frontend sends Schedule to server.port + 2 (FlexLB's FLEXLB_GRPC_PORT_OFFSET)
        grpc_port = int(server_port) + 2 if int(server_port) else 0
        if grpc_port > 65535:
            print(f"flexlb: config error: --server.port: {server_port} leaves no gRPC port at server.port + 2 "
                  "(at most 65533, or give --port)", file=sys.stderr)
            raise SystemExit(2)
        out += ["--port", str(grpc_port)]
    return out


def _run(coro: object) -> int:
    """Run the main coroutine on uvloop when it is installed (measurably faster relay)."""
    try:
        import uvloop

        return int(uvloop.run(coro))  # type: ignore[arg-type]
    except ImportError:
        return int(asyncio.run(coro))  # type: ignore[arg-type]


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    by_reason: dict[str, list[str]] = {}
    for key, reason in NOT_ACTED_ON.items():
        by_reason.setdefault(reason, []).append(key)
    not_yet = "; ".join(f"{', '.join(keys)} ({reason})" for reason, keys in by_reason.items())
    p = sub.add_parser(
        "serve",
        help="run the gateway",
        description="Run the FlexLB gateway. Workers and balancing come from MODEL_SERVICE_CONFIG and "
        "WHALE_MASTER_CONFIG (or FLEXLB_CONFIG) in the environment; flags override them. "
        "WHALE_SYNC_LB_CONSISTENCY_CONFIG turns on master election (ZooKeeper).",
        epilog=(f"Parsed and validated but NOT ACTED ON YET: {not_yet}. " if not_yet else "")
        + "The original FlexLB's run line --server.port=P --management.server.port=Q is accepted: HTTP API on P, "
        "gRPC on P+2, management on Q.",
    )
    p.add_argument("--config", default=None, metavar="FILE",
                   help="configuration file (.toml, .yaml, .yml or .json) holding what the environment holds; "
                   "flags > environment > file (see `flexlb config check FILE`)")
    p.add_argument("--host", default=None, help="bind address of the gRPC port, and of the admin port "
                   "unless --admin-host (default 0.0.0.0)")
    p.add_argument("--http-port", type=int, default=None,
                   help="HTTP API port, Spring's --server.port: /rtp_llm/master/info, notify/snapshot, /health "
                   "(default 7001; --server.port=P also puts gRPC on P+2, where the frontend sends Schedule)")
    p.add_argument("--port", type=int, default=None, help="gRPC port (RpcService relay, FlexlbService; default 7003)")
    p.add_argument("--admin-port", type=int, default=None,
                   help="management HTTP port, Spring's --management.server.port: /actuator/*, /admin/* and the "
                   "HTTP API again (default 7002)")
    p.add_argument("--admin-host", default=None,
                   help="bind address of the admin port (default: --host), e.g. 127.0.0.1 to keep it local")
    p.add_argument("--deploy", default=None, help="DISAGGREGATED or PD_FUSION (default: inferred from workers)")
    p.add_argument("--strategy", default=None, help=f"prefill/fused strategy: {', '.join(strategy_names())}")
    p.add_argument("--decode-strategy", default=None, help="decode strategy (same names)")
    p.add_argument("--worker", action="append", default=[], metavar="IP:GRPC_PORT", help="a PDFUSION worker")
    p.add_argument("--prefill", action="append", default=[], metavar="IP:GRPC_PORT", help="a PREFILL worker")
    p.add_argument("--decode", action="append", default=[], metavar="IP:GRPC_PORT", help="a DECODE worker")
    dyn = p.add_argument_group("dynamic membership (README: Dynamic membership)")
    dyn.add_argument("--workers-dns", action="append", default=[], metavar="[ROLE[@GROUP]=]NAME[:GRPC_PORT]",
                     help="workers are the A/AAAA records of NAME at GRPC_PORT, or the targets of the SRV name "
                     "_SERVICE._PROTO.NAME at their ports; re-resolved on an interval (role default PDFUSION)")
    dyn.add_argument("--workers-dns-interval-s", type=float, default=None, metavar="SECONDS",
                     help="re-resolve interval of --workers-dns names (default 5)")
    dyn.add_argument("--dns-server", default=None, metavar="IP:PORT",
                     help="the nameserver to ask (default: the system's, /etc/resolv.conf)")
    dyn.add_argument("--workers-dns-allow-empty", action="store_true", default=None,
                     help="an NXDOMAIN or empty answer means no workers from that name (default: keep the last "
                     "good answer, as for a failed lookup)")
    dyn.add_argument("--workers-file", default=None, metavar="PATH",
                     help="a file of 'ROLE IP:GRPC_PORT [GROUP]' lines, re-read when it changes")
    dyn.add_argument("--workers-file-interval-s", type=float, default=None, metavar="SECONDS",
                     help="how often --workers-file is checked for a change (default 1)")
    p.add_argument("--max-message-bytes", type=int, default=None, help="max gRPC message size (default 1 GiB)")
    p.add_argument("--upstream-channels", type=int, default=None, help="channels per worker (default 1)")
    p.add_argument("--drain-timeout-s", type=float, default=None, help="SIGTERM drain bound (default 30)")
    p.add_argument("--role-id", default=None, help="election role id (default: HIPPO_ROLE, else 'default')")
    p.add_argument("--admin-token", default=None,
                   help="Bearer token of the mutating admin endpoints: rotation and consistency "
                   "(default: FLEXLB_ADMIN_TOKEN; none: loopback callers only)")
    p.add_argument("--advertise-host", default=None, help="host other replicas dial (default: --host, or this host)")
    p.add_argument("--relay-engine", default=None, choices=["h2", "grpcio"],
                   help="h2: HTTP/2 frame relay (default, ~5x less CPU); grpcio: grpc.aio re-originates each call")
    for name, row in EDGE_LIMIT_FLAGS.items():
        p.add_argument(row.flag, dest=name, type=int if row.integer else float, default=None, help=row.help_text())
    tls = p.add_argument_group("TLS (README: TLS and mTLS)")
    for t in TLS_FLAGS:
        tls.add_argument(t.flag, dest=t.cli, default=None, metavar=t.metavar, help=t.help)
    tls.add_argument("--upstream-tls", action="store_true", default=None,
                     help="dial workers over TLS (the system's trust store unless --upstream-tls-ca)")
    p.add_argument("--log-level", default=None, metavar="LEVEL",
                   help=f"least severe level logged: {', '.join(LOG_LEVELS)} (any case; default INFO)")
    p.add_argument("--log-format", default=None, metavar="FORMAT",
                   help="text (default) or json: one JSON object per line with time, level, logger, message and "
                   "the record's fields")
    p.add_argument("--access-log-sample", default=None, metavar="RATE",
                   help="share of OK calls written to the access log (logger flexlb.access, one line per call), "
                   "0 to 1 (default 1); calls that did not end OK are always written")


def _mock_parser(sub: argparse._SubParsersAction) -> None:
    d = EngineParams()
    b = BatchingParams()
    p = sub.add_parser(
        "mock-worker",
        help="run a simulated RTP-LLM worker",
        description="A simulated inference engine speaking the RTP-LLM worker protocol. The batching engine's "
        "default costs are Llama-3.1-8B on one H100 (flexlb/sim/batching.py); given FIFO cost flags and no "
        "--batch-* cost, it maps the FIFO costs onto iterations (a lone prompt and a decode step cost the same).",
    )
    p.add_argument("--role", default="PDFUSION", choices=sorted(ROLE_NAMES))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True, help="gRPC port (0 = any free port)")
    p.add_argument("--time-scale", type=float, default=1.0, help="multiplies every simulated duration")
    p.add_argument("--engine", default="batching", choices=ENGINES,
                   help="batching: continuous batching in iterations (default); fifo: one prefill at a time")
    fifo = p.add_argument_group("FIFO engine costs")
    fifo.add_argument("--prefill-base-ms", type=float, default=None, help=f"default {d.prefill_base_ms:g}")
    fifo.add_argument("--prefill-ms-per-token", type=float, default=None,
                      help=f"default {d.prefill_ms_per_uncached_token:g}")
    fifo.add_argument("--decode-step-ms", type=float, default=None, help=f"default {d.decode_step_base_ms:g}")
    fifo.add_argument("--decode-step-ms-per-running", type=float, default=None,
                      help=f"default {d.decode_step_ms_per_running:g}")
    bat = p.add_argument_group("batching engine (iteration = base + prefill base if any prompt tokens + "
                               "per prefill token + per cached token + per decode row)")
    bat.add_argument("--batch-base-ms", type=float, default=None, help=f"default {b.base_ms:g}")
    bat.add_argument("--batch-prefill-base-ms", type=float, default=None, help=f"default {b.prefill_base_ms:g}")
    bat.add_argument("--batch-ms-per-prefill-token", type=float, default=None,
                     help=f"default {b.ms_per_prefill_token:g}")
    bat.add_argument("--batch-ms-per-cached-token", type=float, default=None,
                     help=f"default {b.ms_per_cached_token:g}")
    bat.add_argument("--batch-ms-per-decode-seq", type=float, default=None,
                     help=f"default {b.ms_per_decode_sequence:g}")
    bat.add_argument("--max-batch-tokens", type=int, default=b.max_batch_tokens,
                     help="token budget of an iteration (reported as max_batch_tokens_size)")
    bat.add_argument("--max-batch-size", type=int, default=b.max_batch_size, help="rows running at once")
    bat.add_argument("--chunked-prefill", action="store_true", help="split prompts over the budget across iterations")
    bat.add_argument("--kv-blocks", type=int, default=None,
                     help=f"KV blocks of --block-size tokens (default: {b.kv_blocks * b.block_size_tokens} tokens)")
    bat.add_argument("--preempt", action="store_true",
                     help="admission preempts running sequences that arrived after the head of the queue")
    bat.add_argument("--max-seq-len", type=int, default=b.max_seq_len,
                     help="longest prompt served, both engines (longer: LONG_PROMPT_ERROR); reported as max_seq_len")
    p.add_argument("--block-size", type=int, default=d.block_size_tokens, help="tokens per KV block")
    p.add_argument("--cache-blocks", type=int, default=d.cache_capacity_blocks, help="prefix cache capacity")
    p.add_argument("--error-rate", type=float, default=0.0, help="share of generate calls failing at once")
    p.add_argument("--error-code", type=int, default=514, help="engine ErrorCode of injected failures")
    p.add_argument("--delay-ms", type=float, default=0.0, help="extra delay before the first message")
    p.add_argument("--hang", action="store_true", help="accept generate calls and never answer")
    p.add_argument("--crash-after", type=int, default=0, help="exit abruptly after N generate calls")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tls-cert", default=None, metavar="FILE", help="PEM certificate chain: serve TLS only")
    p.add_argument("--tls-key", default=None, metavar="FILE", help="PEM private key of --tls-cert")
    p.add_argument("--tls-client-ca", default=None, metavar="FILE",
                   help="PEM CA certificates: callers must present a certificate signed by one of them (mTLS)")


def _fleet_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "mock-fleet",
        help="run many schedule-only mock workers in one process (master benchmark)",
        description="Schedule-only mock workers on consecutive ports of one process: they answer health checks, "
        "GetWorkerStatus and GetCacheStatus and ACK every EnqueueBatch request (no generation). PREFILL ports "
        "come first, then DECODE, then PDFUSION.",
    )
    p.add_argument("--prefill", type=int, default=0, help="PREFILL workers")
    p.add_argument("--decode", type=int, default=0, help="DECODE workers")
    p.add_argument("--pdfusion", type=int, default=0, help="PDFUSION workers")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--base-port", type=int, default=61000, help="first gRPC port (default 61000)")
    p.add_argument("--task-ms", type=float, default=0.0,
                   help="an enqueued request is reported running this long, then finished (default 0)")
    p.add_argument("--grpc-health", action="store_true",
                   help="also serve grpc.health.v1 Check (RTP-LLM serves only CheckHealth)")


def _mock_fleet(args: argparse.Namespace) -> int:
    from flexlb.sim.fleet import FleetConfig, serve_fleet_forever

    try:
        cfg = FleetConfig(prefill=args.prefill, decode=args.decode, pdfusion=args.pdfusion, host=args.host,
                          base_port=args.base_port, task_ms=args.task_ms, grpc_health=args.grpc_health)
    except ValueError as exc:
        print(f"flexlb mock-fleet: {exc}", file=sys.stderr)
        return 2
    return _run(serve_fleet_forever(cfg))


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = argparse.ArgumentParser(prog="flexlb", description="FlexLB gRPC gateway for RTP-LLM clusters")
    parser.add_argument("--version", action="version", version=f"flexlb {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _mock_parser(sub)
    _fleet_parser(sub)
    sim = sub.add_parser(
        "sim",
        help="replay a Mooncake-format trace against simulated workers (offline, virtual clock)",
        description="Offline simulator: the balancer core of the gateway routes a trace over simulated "
        "workers that use the mock worker's engine model.",
    )
    sim.add_argument("--trace", required=True, help="JSONL with timestamp, input_length, output_length, hash_ids")
    sim.add_argument("--workers", type=int, default=8, help="fused workers (ignored with --prefill)")
    sim.add_argument("--prefill", type=int, default=0, help="PREFILL workers (PD mode)")
    sim.add_argument("--decode", type=int, default=0, help="DECODE workers (PD mode)")
    sim.add_argument("--strategy", default="COST_BASED_PREFILL")
    sim.add_argument("--decode-strategy", default="WEIGHTED_CACHE")
    sim.add_argument("--compare", default=None, help="comma-separated strategies to run side by side")
    sim.add_argument("--speed", type=float, default=1.0, help="multiplies the arrival rate")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--limit", type=int, default=None, help="only the first N requests")
    sim.add_argument("--skip", type=int, default=0, help="drop the first N requests (the clock starts at the next)")
    sim.add_argument("--noise", type=float, default=0.0, help="lognormal sigma on prefill times")
    sim.add_argument("--engine", default="batching", choices=ENGINES,
                     help="batching: continuous batching, the FIFO engine's costs as iterations (default); "
                     "fifo: one prefill at a time, decode beside it")
    sim.add_argument("--max-batch-tokens", type=int, default=BatchingParams.max_batch_tokens,
                     help="batching: token budget of an iteration")
    sim.add_argument("--chunked-prefill", action="store_true", help="batching: split long prompts across iterations")
    sim.add_argument("--preempt", action="store_true",
                     help="batching: admission preempts running sequences that arrived later")
    sim.add_argument("--queue-depth", type=int, default=PrefillQueueConfig.depth,
                     help="prefillQueueDepth: prefills sent to a worker at a time, the rest wait at the gateway "
                     "(0: off, every call goes straight to its worker's FIFO)")
    sim.add_argument("--queue-aging", type=float, default=PrefillQueueConfig.aging,
                     help="prefillQueueAging: priority gained per ms held, in ms of estimated prefill")
    sim.add_argument("--json", action="store_true", help="print one JSON object (per strategy: one per line)")
    sim.add_argument("--plot", default=None, help="write TTFT CDFs to this PNG (needs matplotlib)")
    config = sub.add_parser("config", help="configuration file tools",
                            description="Tools for the configuration file of `flexlb serve --config FILE`.")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser(
        "check", help="validate a configuration file and print the effective configuration (secrets masked)",
        description="Validate FILE as `flexlb serve --config FILE` would, under this environment's variables "
        "(flags > environment > file), and print the effective configuration as JSON with secrets masked. "
        "Exit 2 with a one-line error naming the file and the key when it is not valid.")
    check.add_argument("file", metavar="FILE")
    check.add_argument("--ignore-env", action="store_true",
                       help="check the file alone, without this environment's configuration variables")
    sub.add_parser("demo-ha", help="three replicas on a local ZooKeeper: traffic, master SIGKILL, new master")
    demo = sub.add_parser("demo", help="start a PD set of mock workers and a gateway, send traffic, report")
    demo.add_argument("--requests", type=int, default=400)
    demo.add_argument("--concurrency", type=int, default=32)
    demo.add_argument("--strategy", default=None, help="prefill strategy (default: the gateway's default)")
    return parser


def _serve(args: argparse.Namespace) -> int:
    from flexlb.app import run_gateway
    from flexlb.config_file import LoggingOptions, load_config_file, settings_with_file

    try:
        file = load_config_file(args.config) if args.config else None
        logs = file.logging if file is not None else LoggingOptions()
        setup_logging(parse_level(args.log_level or logs.level or "INFO"),
                      parse_format(args.log_format or logs.format or "text"))
        access_log_sample = parse_sample(args.access_log_sample or logs.access_log_sample or "1")
    except ConfigError as exc:
        print(f"flexlb: config error: {exc}", file=sys.stderr)
        return 2
    try:
        settings = settings_with_file(
            file,
            os.environ,
            CliOverrides(
                host=args.host,
                http_port=args.http_port,
                grpc_port=args.port,
                admin_port=args.admin_port,
                deploy=args.deploy,
                strategy=args.strategy,
                decode_strategy=args.decode_strategy,
                prefill=tuple(args.prefill),
                decode=tuple(args.decode),
                fused=tuple(args.worker),
                max_message_bytes=args.max_message_bytes,
                upstream_channels=args.upstream_channels,
                drain_timeout_s=args.drain_timeout_s,
                relay_engine=args.relay_engine,
                role_id=args.role_id,
                admin_token=args.admin_token,
                advertise_host=args.advertise_host,
                admin_host=args.admin_host,
                limits=tuple((name, getattr(args, name)) for name in EDGE_LIMIT_FLAGS
                             if getattr(args, name) is not None),
                upstream_tls=args.upstream_tls,
                **{t.cli: getattr(args, t.cli) for t in TLS_FLAGS},
                workers_dns=tuple(args.workers_dns),
                workers_dns_interval_s=args.workers_dns_interval_s,
                dns_server=args.dns_server,
                workers_dns_allow_empty=args.workers_dns_allow_empty,
                workers_file=args.workers_file,
                workers_file_interval_s=args.workers_file_interval_s,
            ),
        )
    except ConfigError as exc:
        print(f"flexlb: config error: {exc}", file=sys.stderr)
        return 2
    for warning in settings.warnings:  # unknown names (with a did-you-mean), ignored values
        logging.getLogger("flexlb.config").warning("%s", warning)
    return _run(run_gateway(settings, access_log_sample=access_log_sample))


def _config_check(args: argparse.Namespace) -> int:
    from flexlb.config_file import check_report, load_config_file, settings_of

    env = {} if args.ignore_env else os.environ
    try:
        file = load_config_file(args.file)
        report = check_report(file, settings_of(file, env, CliOverrides()))
    except ConfigError as exc:
        print(f"flexlb: config error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0


def _given(value: float | None, default: float) -> float:
    return default if value is None else value


def _batching_params(args: argparse.Namespace, params: EngineParams) -> BatchingParams:
    """--batch-* costs, else the FIFO flags mapped onto iterations when any is given, else the calibrated defaults."""
    fifo_given = any(getattr(args, name) is not None for name in _FIFO_COSTS)
    batch_given = any(getattr(args, name) is not None for name in _BATCH_COSTS)
    base = BatchingParams.from_engine(params) if fifo_given and not batch_given else BatchingParams()
    costs = {field: getattr(args, name) for name, field in _BATCH_COSTS.items() if getattr(args, name) is not None}
    kv_tokens = BatchingParams().kv_blocks * BatchingParams().block_size_tokens
    return replace(
        base,
        **costs,
        block_size_tokens=args.block_size,
        kv_blocks=args.kv_blocks if args.kv_blocks is not None else max(1, kv_tokens // max(1, args.block_size)),
        max_batch_tokens=args.max_batch_tokens,
        max_batch_size=args.max_batch_size,
        chunked_prefill=args.chunked_prefill,
        preempt=args.preempt,
        max_seq_len=args.max_seq_len,
    )


def _mock_worker(args: argparse.Namespace) -> int:
    from flexlb.sim.mock_worker import serve_forever

    if not 0 <= args.port <= 65535:
        print(f"flexlb mock-worker: --port: must be 0 to 65535 (0 picks a free port), got {args.port}", file=sys.stderr)
        return 2
    d = EngineParams()
    params = EngineParams(
        prefill_base_ms=_given(args.prefill_base_ms, d.prefill_base_ms),
        prefill_ms_per_uncached_token=_given(args.prefill_ms_per_token, d.prefill_ms_per_uncached_token),
        decode_step_base_ms=_given(args.decode_step_ms, d.decode_step_base_ms),
        decode_step_ms_per_running=_given(args.decode_step_ms_per_running, d.decode_step_ms_per_running),
        block_size_tokens=args.block_size,
        cache_capacity_blocks=args.cache_blocks,
    )
    try:
        batching = _batching_params(args, params) if args.engine == "batching" else None
        if batching is not None:
            BatchingEngine(batching, PrefixCache(0))  # validates the limits before binding a port
        tls = tls_config(tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca).grpc
    except ValueError as exc:  # ConfigError included
        print(f"flexlb mock-worker: {exc}", file=sys.stderr)
        return 2
    faults = Faults(
        error_rate=args.error_rate,
        error_code=args.error_code,
        delay_ms=args.delay_ms,
        hang=args.hang,
        crash_after=args.crash_after,
    )
    cfg = MockWorkerConfig(
        role=args.role,
        host=args.host,
        port=args.port,
        time_scale=args.time_scale,
        params=params,
        faults=faults,
        seed=args.seed,
        engine=args.engine,
        batching=batching,
        max_seq_len=args.max_seq_len,
        tls=tls if tls.enabled else None,
    )
    return _run(serve_forever(cfg))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `flexlb` console script."""
    args = build_parser().parse_args(_spring_to_flags(sys.argv[1:] if argv is None else argv))
    if args.command == "serve":
        return _serve(args)
    if args.command == "mock-worker":
        return _mock_worker(args)
    if args.command == "mock-fleet":
        return _mock_fleet(args)
    if args.command == "config":
        return _config_check(args)
    if args.command == "sim":
        from flexlb.sim.report import run_sim_cli

        return run_sim_cli(args)
    if args.command == "demo-ha":
        from flexlb.demo_ha import run_demo_ha

        return run_demo_ha()
    from flexlb.demo import run_demo

    return run_demo(args.requests, args.concurrency, args.strategy)
