"""Java FlexLB HEAD's configuration vocabulary: its parsed-only fields, spec strings, traffic policy JSON,
the per-field environment names, and the warnings for names nothing reads (with a did-you-mean).

Pure functions over plain values; flexlb/config.py holds the field table (MASTER_FIELDS) that uses them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from flexlb.balancer.traffic_policy import TargetGroup, TrafficPolicy, TrafficRule
from flexlb.config_values import ConfigError, _bool, _int, _obj, _str

# ---------------------------------------------------------------- names


def upper_snake(name: str) -> str:
    """camelCase field name -> its environment variable: `flexlbBatchSizeMax` -> `FLEXLB_BATCH_SIZE_MAX`."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).upper()


def edit_distance(a: str, b: str) -> int:
    """Edits (insert, delete, substitute, swap two neighbours) turning `a` into `b` (optimal string alignment)."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[len(b)]


def _plain(name: str) -> str:
    # case and separators do not count: flexlb_batch_size_max and FLEXLB_BATCH_SIZE_MAX are the same name
    return re.sub(r"[_\-.]", "", name).casefold()


def max_edits(name: str) -> int:
    """How far a name may be from a known one to be suggested: 2 edits, or one per 7 characters of a longer name
    (3 from 21 characters: loadBalancingStrategy is 3 edits from loadBalanceStrategy)."""
    return max(2, len(_plain(name)) // 7)


def suggest(name: str, known: Iterable[str]) -> str | None:
    """The known name closest to `name` within max_edits (ties: the first in `known`), or None."""
    target = _plain(name)
    best: tuple[int, str] | None = None
    for k in known:
        d = edit_distance(target, _plain(k))
        if d <= max_edits(name) and (best is None or d < best[0]):
            best = (d, k)
    return best[1] if best else None


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    s = suggest(name, known)
    return f"; did you mean {s}?" if s else ""


def unknown_field_warnings(raw: Mapping[str, Any], path: str, known: Iterable[str]) -> list[str]:
    """One warning per key of `raw` that is not in `known`, with a did-you-mean."""
    names = list(known)
    accepted = set(names)
    return [f"{path}.{k}: unknown field, ignored{_did_you_mean(k, names)}" for k in raw if k not in accepted]


# variables with these prefixes that nothing reads are warned about (Java FlexLB HEAD's rule)
ENV_PREFIXES = ("FLEXLB_", "AUTO_TPM_", "COST_", "WORKER_")

# variables with those prefixes the gateway reads besides the per-field ones (config.py and model_service.py)
READ_ENV: frozenset[str] = frozenset({"FLEXLB_CONFIG", "FLEXLB_SYNC_CONSISTENCY_CONFIG", "FLEXLB_ADMIN_TOKEN",
                                      "FLEXLB_DOMAIN_ADDRESSES"})
# ... and whole families of them: the hosts of a DomainAddress endpoint (model_service.py domain_env_names)
READ_ENV_PREFIXES = ("FLEXLB_DOMAIN_ADDRESS_",)

# Java FlexLB variables (HEAD §5.4 and the kvcm branch) this gateway knows and does not use: why
HEAD_UNUSED_ENV: dict[str, str] = {
    "WORKER_TIMEOUT_US": "worker status freshness; the active health checks decide here, see healthCheckIntervalMs",
    "WORKER_CLEAN_INTERVAL_MS": "worker status freshness; the active health checks decide here, see "
                                "healthCheckIntervalMs",
    "FLEXLB_GRPC_EXECUTOR_CORE_SIZE": "a Java thread pool; the gateway runs one event loop",
    "FLEXLB_GRPC_EXECUTOR_MAX_SIZE": "a Java thread pool; the gateway runs one event loop",
    "FLEXLB_GRPC_EXECUTOR_QUEUE_SIZE": "a Java thread pool; the gateway runs one event loop",
}
HEAD_UNUSED_ENV_PREFIXES: dict[str, str] = {"FLEXLB_NACOS_": "Nacos hot reload (kvcm branch) is not supported"}
# deprecated in HEAD and ignored there with a warning; so here
DEPRECATED_ENV: dict[str, str] = {
    "FLEXLB_BATCH_ENABLED": "deprecated and ignored; the mode is defaultScheduleMode (DEFAULT_SCHEDULE_MODE)",
    "ENABLE_QUEUEING": "deprecated and ignored; the mode is defaultScheduleMode (DEFAULT_SCHEDULE_MODE)",
}


def unmatched_env_warnings(env: Mapping[str, str], known: Iterable[str]) -> list[str]:
    """Warnings for variables with ENV_PREFIXES that nothing reads (did-you-mean among `known` and READ_ENV),
    for the Java FlexLB variables the gateway does not use, and for the deprecated ones."""
    names = sorted(set(known) | READ_ENV)
    accepted = set(names)
    out: list[str] = []
    for var in sorted(env):
        if var in DEPRECATED_ENV:
            out.append(f"{var}: {DEPRECATED_ENV[var]}")
        elif not var.startswith(ENV_PREFIXES) or var in accepted or var.startswith(READ_ENV_PREFIXES):
            continue
        elif var in HEAD_UNUSED_ENV:
            out.append(f"{var}: a Java FlexLB setting this gateway does not use ({HEAD_UNUSED_ENV[var]}); ignored")
        elif prefix := next((p for p in HEAD_UNUSED_ENV_PREFIXES if var.startswith(p)), None):
            out.append(f"{var}: {HEAD_UNUSED_ENV_PREFIXES[prefix]}; ignored")
        else:
            out.append(f"{var}: unknown environment variable, ignored{_did_you_mean(var, names)}")
    return out


# ---------------------------------------------------------------- spec strings


def _entries(path: str, value: Any, what: str) -> list[tuple[int, str, str]]:
    text = _str(path, value).strip()
    out = []
    for i, entry in enumerate(text.split(",") if text else [], 1):
        left, sep, right = entry.strip().partition(":")
        if not sep or not left.strip() or not right.strip():
            raise ConfigError(path, f"entry {i} {entry.strip()!r}: expected '{what}'")
        out.append((i, left.strip(), right.strip()))
    return out


def parse_slo_buckets(path: str, value: Any, allow_empty: bool = False) -> tuple[tuple[int | None, int], ...]:
    """"256:150,1024:300,*:2400" -> ((256, 150), (1024, 300), (None, 2400)): inclusive upper seq_len (`*`: any
    length, last only), strictly increasing, and the SLO in ms (>= 1)."""
    entries = _entries(path, value, "maxSeqLen:sloMs")
    if not entries and not allow_empty:
        raise ConfigError(path, "expected at least one 'maxSeqLen:sloMs' entry, e.g. '256:150,*:2400'")
    out: list[tuple[int | None, int]] = []
    for i, bound, slo in entries:
        where = f"{path} entry {i}"
        if out and out[-1][0] is None:
            raise ConfigError(path, f"entry {i}: '*' must be the last entry")
        upper = None if bound == "*" else _int(f"{where} maxSeqLen", bound, 1)
        if upper is not None and out and upper <= (out[-1][0] or 0):
            raise ConfigError(path, f"entry {i}: maxSeqLen {upper} must be above the previous {out[-1][0]}")
        out.append((upper, _int(f"{where} sloMs", slo, 1)))
    return tuple(out)


def parse_multipliers(path: str, value: Any) -> tuple[tuple[int, float], ...]:
    """"30:2.0,50:1.0,70:0.5" -> ((30, 2.0), ...): priority 1-100 strictly increasing, multiplier > 0."""
    entries = _entries(path, value, "priority:multiplier")
    if not entries:
        raise ConfigError(path, "expected at least one 'priority:multiplier' entry, e.g. '30:2.0,70:0.5'")
    out: list[tuple[int, float]] = []
    for i, prio, mult in entries:
        p = _int(f"{path} entry {i} priority", prio, 1)
        if p > 100:
            raise ConfigError(path, f"entry {i}: priority must be <= 100, got {p}")
        if out and p <= out[-1][0]:
            raise ConfigError(path, f"entry {i}: priority {p} must be above the previous {out[-1][0]}")
        try:
            m = float(mult)
        except ValueError:
            m = math.nan
        if not math.isfinite(m) or m <= 0:
            raise ConfigError(path, f"entry {i}: multiplier must be a number > 0, got {mult!r}")
        out.append((p, m))
    return tuple(out)


def show_buckets(spec: tuple[tuple[int | None, int], ...]) -> str:
    """The spec string of parse_slo_buckets' result."""
    return ",".join(f"{'*' if b is None else b}:{ms}" for b, ms in spec)


def show_multipliers(spec: tuple[tuple[int, float], ...]) -> str:
    """The spec string of parse_multipliers' result."""
    return ",".join(f"{p}:{m:g}" for p, m in spec)


# ---------------------------------------------------------------- traffic policy (snake_case JSON)

POLICY_KEYS = ("enabled", "default_group", "default_target_groups", "rules")
TARGET_KEYS = ("group", "weight")
RULE_KEYS = ("name", "target_group", "target_groups", "api_keys", "min_seq_len", "max_seq_len")


def _policy_object(path: str, value: Any) -> Mapping[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(path, f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    return _obj(path, value)


def _list(path: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(path, f"expected a JSON array, got {value!r}")
    return value


def _group(path: str, value: Any) -> str:
    text = _str(path, value).strip()
    if not text:
        raise ConfigError(path, "expected a group name, got an empty string")
    return text


def _targets(path: str, value: Any) -> tuple[TargetGroup, ...]:
    out = []
    for i, t in enumerate(_list(path, value)):
        t = _obj(f"{path}[{i}]", t)
        out.append(TargetGroup(_group(f"{path}[{i}].group", t.get("group")),
                               _int(f"{path}[{i}].weight", t.get("weight", 1), 0)))
    if out and sum(t.weight for t in out) == 0:
        raise ConfigError(path, "the weights sum to 0; at least one target needs weight >= 1")
    return tuple(out)


def _rule(path: str, raw: Mapping[str, Any]) -> TrafficRule:
    name = _str(f"{path}.name", raw.get("name", "")).strip()
    if not name:
        raise ConfigError(f"{path}.name", "required (it salts the rule's weighted choice)")
    if ("target_group" in raw) == ("target_groups" in raw):
        raise ConfigError(path, "give exactly one of target_group and target_groups")
    if "target_group" in raw:
        targets: tuple[TargetGroup, ...] = (TargetGroup(_group(f"{path}.target_group", raw["target_group"])),)
    else:
        targets = _targets(f"{path}.target_groups", raw["target_groups"])
        if not targets:
            raise ConfigError(f"{path}.target_groups", "expected at least one target")
    keys = frozenset(_str(f"{path}.api_keys[{i}]", k) for i, k in enumerate(_list(f"{path}.api_keys",
                                                                                   raw.get("api_keys", []))))
    lo = _int(f"{path}.min_seq_len", raw["min_seq_len"], 0) if raw.get("min_seq_len") is not None else None
    hi = _int(f"{path}.max_seq_len", raw["max_seq_len"], 0) if raw.get("max_seq_len") is not None else None
    if lo is not None and hi is not None and hi < lo:
        raise ConfigError(f"{path}.max_seq_len", f"must be >= min_seq_len {lo}, got {hi}")
    if not keys and lo is None and hi is None:
        raise ConfigError(path, "a rule needs at least one matcher: api_keys, min_seq_len or max_seq_len")
    return TrafficRule(name, targets, keys, lo, hi)


def parse_traffic_policy(path: str, value: Any) -> TrafficPolicy:
    """The traffic policy from its JSON (an object, or its text); ConfigError names the field."""
    raw = _policy_object(path, value)
    return TrafficPolicy(
        enabled=_bool(f"{path}.enabled", raw.get("enabled", True)),
        default_group=_str(f"{path}.default_group", raw.get("default_group", "")).strip(),
        default_targets=_targets(f"{path}.default_target_groups", raw.get("default_target_groups", [])),
        rules=tuple(_rule(f"{path}.rules[{i}]", _obj(f"{path}.rules[{i}]", r))
                    for i, r in enumerate(_list(f"{path}.rules", raw.get("rules", [])))),
    )


def traffic_policy_warnings(path: str, value: Any) -> list[str]:
    """Unknown keys of a (valid) traffic policy's JSON, at every level, with a did-you-mean."""
    raw = _policy_object(path, value)
    out = unknown_field_warnings(raw, path, POLICY_KEYS)
    for i, t in enumerate(raw.get("default_target_groups", [])):
        out += unknown_field_warnings(t, f"{path}.default_target_groups[{i}]", TARGET_KEYS)
    for i, r in enumerate(raw.get("rules", [])):
        out += unknown_field_warnings(r, f"{path}.rules[{i}]", RULE_KEYS)
        for j, t in enumerate(r.get("target_groups", [])):
            out += unknown_field_warnings(t, f"{path}.rules[{i}].target_groups[{j}]", TARGET_KEYS)
    return out


def show_traffic_policy(policy: TrafficPolicy | None) -> str:
    """How the reference table shows the default."""
    return "none (no pinning)" if policy is None else repr(policy)


# ---------------------------------------------------------------- HEAD's fields that are parsed only


@dataclass(frozen=True)
class HeadFields:
    """Java FlexLB HEAD `FlexlbConfig` fields this gateway parses and validates but does not act on (each
    row's status in config.MASTER_FIELDS says why). Defaults are HEAD's."""

    weighted_cache_decay_factor: float = 0.001
    # recent cache-key hit window (metrics only in HEAD)
    cache_hit_time_window_ms: int = 1_800_000
    cache_hit_max_cache_keys: int = 10_000_000
    cache_hit_window_write_enabled: bool = True
    cache_hit_metric_report_enabled: bool = True
    cache_hit_trace_log_enabled: bool = False
    cache_hit_theory_log_enabled: bool = True
    # availability thresholds and QUEUE mode's water-level gating
    prefill_queue_size_threshold: int = 64
    decode_available_memory_threshold: int = 90
    decode_concurrency_limit: int = 0
    hysteresis_bias_percent: int = 15
    resource_check_interval_ms: int = 1000
    max_prefill_queue_size: int = 20
    decode_full_speed_threshold: int = 40
    decode_stop_threshold: int = 80
    # Java thread pools
    netty_select_thread_multiplier: int = 1
    netty_worker_thread_multiplier: int = 2
    grpc_client_executor_core_size: int = 32
    grpc_client_executor_max_size: int = 32
    grpc_client_executor_queue_size: int = 10_000
    grpc_client_event_loop_threads: int = 8
    grpc_server_worker_event_loop_threads: int = 4
    http_netty_event_loop_threads: int = 4
    http_netty_event_executor_threads: int = 16
    http_netty_event_executor_queue_size: int = 1000
    http_request_executor_core_size: int = 32
    http_request_executor_max_size: int = 32
    http_request_executor_queue_size: int = 10_000
    engine_sync_executor_core_size: int = 32
    engine_sync_executor_max_size: int = 64
    status_check_executor_core_size: int = 32
    status_check_executor_max_size: int = 64
    service_discovery_max_size: int = 32
    batch_dispatch_pool_size: int = 64
    batch_dispatch_queue_size: int = 256
    # HEAD's cost model
    cost_slo_filter_enabled: bool = False
    cost_slo_ms: int = 500
    cost_slo_risk_margin_ms: int = 100
    cost_slo_buckets: tuple[tuple[int | None, int], ...] = ()
    cost_hotspot_multiplier: float = 3.0
    cost_imbalance_multiplier: float = 3.0
    score_tie_random_enabled: bool = True
    score_tie_threshold_pct: float = 0.1
    score_tie_threshold_ms: int = 20
    shortest_ttft_candidate_pool_mode: str = "RATIO"
    shortest_ttft_candidate_pool_ratio: float = 0.3
    shortest_ttft_candidate_pool_min_size: int = 1
    shortest_ttft_candidate_pool_size: int = 1
    cost_formula: str = "sum(computeTokens) + 0.3*sum(hitCacheTokens)"
    prefill_predictor_type: str = "formula"
    decode_hotspot_multiplier: float = 3.0
    decode_imbalance_multiplier: float = 3.0
    max_new_tokens_cap: int = 1000
    worker_timeout_ms: int = 10_000
    # Auto-TPM admission beyond the SLO itself
    auto_tpm_prefill_queue_evict_enabled: bool = False
    auto_tpm_decode_reserved_evict_enabled: bool = False
    auto_tpm_plan_cache_hit_benefit_cap: float = 0.0
    auto_tpm_post_success_soft_timeout_ms: int = 30_000
    auto_tpm_post_success_backpressure_limit: int = 200
    auto_tpm_decode_accepted_evict_enabled: bool = False
    auto_tpm_cancel_ack_timeout_ms: int = 50
    auto_tpm_cancel_completion_timeout_ms: int = 1000
    auto_tpm_commit_strategy: str = "lockfree"
    auto_tpm_victim_guard_mode: str = "victim_presence"
