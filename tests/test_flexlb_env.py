"""Java FlexLB HEAD's vocabulary, the pure parts: names, did-you-mean, spec strings, traffic policy."""

from __future__ import annotations

import zlib
from collections import Counter
from typing import Any

import pytest

from flexlb.balancer.request import RouteRequest
from flexlb.balancer.traffic_policy import TargetGroup, TrafficPolicy, TrafficRule, bucket, weighted_group
from flexlb.balancer.workers import Role
from flexlb.config_values import ConfigError
from flexlb.flexlb_env import (
    edit_distance,
    max_edits,
    parse_multipliers,
    parse_slo_buckets,
    parse_traffic_policy,
    show_buckets,
    show_multipliers,
    suggest,
    traffic_policy_warnings,
    unknown_field_warnings,
    unmatched_env_warnings,
    upper_snake,
)
from tests.balancer_support import addrs, make_router

# ---------------------------------------------------------------------------------------------- names


@pytest.mark.parametrize(("camel", "snake"), [
    ("flexlbBatchSizeMax", "FLEXLB_BATCH_SIZE_MAX"),
    ("autoTpmSloLengthBuckets", "AUTO_TPM_SLO_LENGTH_BUCKETS"),
    ("prefixIndexTtlS", "PREFIX_INDEX_TTL_S"),
    ("ttftPriorUsPerToken", "TTFT_PRIOR_US_PER_TOKEN"),
    ("deploy", "DEPLOY"),
    ("defaultScheduleMode", "DEFAULT_SCHEDULE_MODE"),
    ("CostBasedPrefill", "COST_BASED_PREFILL"),
    ("ShortestTtft", "SHORTEST_TTFT"),
])
def test_upper_snake(camel: str, snake: str) -> None:
    assert upper_snake(camel) == snake


def test_edit_distance() -> None:
    assert edit_distance("", "abc") == 3
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("abcd", "abdc") == 1  # a swap of neighbours is one edit
    assert edit_distance("same", "same") == 0
    assert edit_distance("loadbalancingstrategy", "loadbalancestrategy") == 3


def test_suggest_within_two_edits_ignoring_case_and_underscores() -> None:
    known = ["loadBalanceStrategy", "decodeLoadBalanceStrategy", "batchSize", "FLEXLB_BATCH_SIZE_MAX"]
    assert suggest("loadBalanceStrategi", known) == "loadBalanceStrategy"
    assert suggest("batchsize", known) == "batchSize"
    assert suggest("btchSze", known) == "batchSize"  # 2 edits
    assert suggest("bchSze", known) is None  # 3 edits on a short name
    assert suggest("FLEXLB_BATCH_SIZ_MAX", known) == "FLEXLB_BATCH_SIZE_MAX"
    assert suggest("flexlb_batch_size_max", known) == "FLEXLB_BATCH_SIZE_MAX"
    assert suggest("somethingElse", known) is None


def test_long_names_allow_one_edit_per_seven_characters() -> None:
    assert max_edits("batchSize") == 2
    assert max_edits("loadBalancingStrategy") == 3  # 21 characters
    assert suggest("loadBalancingStrategy", ["loadBalanceStrategy", "decodeLoadBalanceStrategy"]) == (
        "loadBalanceStrategy")
    assert suggest("LOAD_BALANCING_STRATEGY", ["LOAD_BALANCE_STRATEGY"]) == "LOAD_BALANCE_STRATEGY"


def test_suggest_prefers_the_closest_then_the_first() -> None:
    assert suggest("maxInFlightPerWorkr", ["maxInFlight", "maxInFlightPerWorker"]) == "maxInFlightPerWorker"
    assert suggest("ab", ["ax", "ay"]) == "ax"


def test_unknown_field_warnings() -> None:
    out = unknown_field_warnings({"loadBalancingStrategy": "X", "batchSize": 2, "zzz": 1}, "FLEXLB_CONFIG",
                                 ["loadBalanceStrategy", "batchSize"])
    assert out == [
        "FLEXLB_CONFIG.loadBalancingStrategy: unknown field, ignored; did you mean loadBalanceStrategy?",
        "FLEXLB_CONFIG.zzz: unknown field, ignored",
    ]


def test_unmatched_env_warnings() -> None:
    env = {
        "FLEXLB_BATCH_SIZ_MAX": "3",  # typo of a field variable
        "FLEXLB_BATCH_SIZE_MAX": "3",  # a field variable
        "FLEXLB_CONFIG": "{}",  # read by the gateway
        "FLEXLB_ADMIN_TOKN": "x",  # typo of a variable the gateway reads
        "AUTO_TPM_ENABLD": "1",
        "COST_SOMETHING_ELSE": "1",
        "WORKER_TIMEOUT_US": "1",  # HEAD's, not used here
        "FLEXLB_NACOS_SERVER": "h",
        "FLEXLB_BATCH_ENABLED": "true",  # deprecated
        "ENABLE_QUEUEING": "true",  # deprecated, no prefix
        "PATH": "/bin",  # other prefixes are never looked at
        "WORKERS": "3",
    }
    out = unmatched_env_warnings(env, ["FLEXLB_BATCH_SIZE_MAX", "AUTO_TPM_ENABLED"])
    text = "\n".join(out)
    assert "AUTO_TPM_ENABLD: unknown environment variable, ignored; did you mean AUTO_TPM_ENABLED?" in out
    assert "FLEXLB_BATCH_SIZ_MAX: unknown environment variable, ignored; did you mean FLEXLB_BATCH_SIZE_MAX?" in out
    assert "FLEXLB_ADMIN_TOKN: unknown environment variable, ignored; did you mean FLEXLB_ADMIN_TOKEN?" in out
    assert "COST_SOMETHING_ELSE: unknown environment variable, ignored" in out
    assert any(w.startswith("WORKER_TIMEOUT_US: a Java FlexLB setting this gateway does not use") for w in out)
    assert any(w.startswith("FLEXLB_NACOS_SERVER: Nacos hot reload") for w in out)
    assert any(w.startswith("FLEXLB_BATCH_ENABLED: deprecated and ignored") for w in out)
    assert any(w.startswith("ENABLE_QUEUEING: deprecated and ignored") for w in out)
    assert "PATH" not in text and "WORKERS" not in text and "FLEXLB_CONFIG:" not in text
    assert len(out) == 8


# ---------------------------------------------------------------------------------------------- spec strings


def test_slo_buckets() -> None:
    spec = "256:150,1024:300,4096:600,16384:1200,*:2400"
    parsed = parse_slo_buckets("F", spec)
    assert parsed == ((256, 150), (1024, 300), (4096, 600), (16384, 1200), (None, 2400))
    assert show_buckets(parsed) == spec
    assert parse_slo_buckets("F", " 100 : 5 , * : 9 ") == ((100, 5), (None, 9))
    assert parse_slo_buckets("F", "100:5") == ((100, 5),)
    assert parse_slo_buckets("F", "", allow_empty=True) == ()


@pytest.mark.parametrize(("spec", "says"), [
    ("", "at least one"),
    ("256", "entry 1 '256': expected 'maxSeqLen:sloMs'"),
    ("256:150,,*:2", "entry 2"),
    ("256:abc", "sloMs: expected an integer"),
    ("0:10", "maxSeqLen: must be >= 1"),
    ("256:0", "sloMs: must be >= 1"),
    ("1024:1,256:2", "entry 2: maxSeqLen 256 must be above the previous 1024"),
    ("*:1,256:2", "entry 2: '*' must be the last entry"),
    ("256:1,256:2", "must be above the previous 256"),
])
def test_bad_slo_buckets_name_the_field(spec: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_slo_buckets("FLEXLB_CONFIG.autoTpmSloLengthBuckets", spec)
    assert str(info.value).startswith("FLEXLB_CONFIG.autoTpmSloLengthBuckets")
    assert says in str(info.value)


def test_multipliers() -> None:
    spec = "30:2.0,40:1.5,50:1.0,60:0.75,70:0.5"
    parsed = parse_multipliers("F", spec)
    assert parsed == ((30, 2.0), (40, 1.5), (50, 1.0), (60, 0.75), (70, 0.5))
    assert parse_multipliers("F", show_multipliers(parsed)) == parsed


@pytest.mark.parametrize(("spec", "says"), [
    ("", "at least one"),
    ("30", "expected 'priority:multiplier'"),
    ("0:1.0", "priority: must be >= 1"),
    ("101:1.0", "priority must be <= 100"),
    ("50:1,40:2", "priority 40 must be above the previous 50"),
    ("30:0", "multiplier must be a number > 0"),
    ("30:-1", "multiplier must be a number > 0"),
    ("30:x", "multiplier must be a number > 0"),
    ("30:inf", "multiplier must be a number > 0"),
    (7, "expected a string"),
])
def test_bad_multipliers_name_the_field(spec: Any, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_multipliers("AUTO_TPM_PRIORITY_SLO_MULTIPLIERS", spec)
    assert str(info.value).startswith("AUTO_TPM_PRIORITY_SLO_MULTIPLIERS")
    assert says in str(info.value)


# ---------------------------------------------------------------------------------------------- traffic policy

POLICY: dict[str, Any] = {
    "default_target_groups": [{"group": "g1", "weight": 3}, {"group": "g2"}],
    "rules": [
        {"name": "vip", "api_keys": ["k1", "k2"], "target_group": "gv"},
        {"name": "long", "min_seq_len": 8192, "target_groups": [{"group": "g2"}, {"group": "g3", "weight": 1}]},
        {"name": "vip-short", "api_keys": ["k3"], "max_seq_len": 100, "target_group": "gs"},
    ],
}


def test_traffic_policy_parsed_into_frozen_dataclasses() -> None:
    p = parse_traffic_policy("TRAFFIC_POLICY_CONFIG", POLICY)
    assert p == TrafficPolicy(
        enabled=True,
        default_group="",
        default_targets=(TargetGroup("g1", 3), TargetGroup("g2", 1)),
        rules=(
            TrafficRule("vip", (TargetGroup("gv"),), frozenset({"k1", "k2"})),
            TrafficRule("long", (TargetGroup("g2"), TargetGroup("g3")), min_seq_len=8192),
            TrafficRule("vip-short", (TargetGroup("gs"),), frozenset({"k3"}), max_seq_len=100),
        ),
    )
    assert parse_traffic_policy("X", '{"enabled": "off", "default_group": "g1"}') == TrafficPolicy(False, "g1")


def test_rules_in_order_all_matchers_then_defaults() -> None:
    p = parse_traffic_policy("T", POLICY)
    assert p.choose(1, "k1", 10) == "gv"
    assert p.choose(1, "k2", 100_000) == "gv"  # the first matching rule wins
    assert p.choose(1, "k3", 100) == "gs"  # bounds are inclusive
    assert p.choose(1, "k3", 101) in {"g1", "g2"}  # one matcher fails: the rule does not hold
    assert p.choose(1, "", 8192) in {"g2", "g3"}
    assert p.choose(1, "nobody", 10) in {"g1", "g2"}
    assert TrafficPolicy(default_group="g9").choose(1, "", 1) == "g9"
    assert TrafficPolicy().choose(1, "", 1) is None
    assert parse_traffic_policy("T", {**POLICY, "enabled": False}).choose(1, "k1", 10) is None


def test_weighted_choice_is_crc32_of_the_request_mod_the_weights() -> None:
    targets = (TargetGroup("a", 3), TargetGroup("b", 0), TargetGroup("c", 2))
    for rid in range(200):
        b = zlib.crc32(f"{rid}|key|77|salt".encode()) % 5
        assert bucket(rid, "key", 77, "salt", 5) == b
        assert weighted_group(targets, rid, "key", 77, "salt") == ("a" if b < 3 else "c")
    # the same request always gets the same group; the salt changes the draw; shares follow the weights
    p = parse_traffic_policy("T", POLICY)
    assert {p.choose(42, "x", 5) for _ in range(10)} == {p.choose(42, "x", 5)}
    shares = Counter(p.choose(rid, "x", 5) for rid in range(10_000))
    assert set(shares) == {"g1", "g2"}
    assert 0.72 < shares["g1"] / 10_000 < 0.78
    rule = Counter(p.choose(rid, "x", 9000) for rid in range(10_000))
    assert 0.45 < rule["g2"] / 10_000 < 0.55
    salted = [weighted_group(targets, rid, "k", 1, "default") for rid in range(100)]
    assert salted != [weighted_group(targets, rid, "k", 1, "other") for rid in range(100)]


@pytest.mark.parametrize(("policy", "path", "says"), [
    ("{", "T", "not valid JSON"),
    ([], "T", "expected a JSON object"),
    ({"enabled": "maybe"}, "T.enabled", "expected true or false"),
    ({"rules": {}}, "T.rules", "expected a JSON array"),
    ({"rules": [{"api_keys": ["k"], "target_group": "g"}]}, "T.rules[0].name", "required"),
    ({"rules": [{"name": "r", "api_keys": ["k"]}]}, "T.rules[0]", "exactly one of target_group and target_groups"),
    ({"rules": [{"name": "r", "api_keys": ["k"], "target_group": "g", "target_groups": []}]}, "T.rules[0]",
     "exactly one"),
    ({"rules": [{"name": "r", "target_group": "g"}]}, "T.rules[0]", "at least one matcher"),
    ({"rules": [{"name": "r", "api_keys": [], "target_group": "g"}]}, "T.rules[0]", "at least one matcher"),
    ({"rules": [{"name": "r", "api_keys": ["k"], "target_group": ""}]}, "T.rules[0].target_group", "group name"),
    ({"rules": [{"name": "r", "api_keys": ["k"], "target_groups": []}]}, "T.rules[0].target_groups",
     "at least one target"),
    ({"rules": [{"name": "r", "api_keys": [1], "target_group": "g"}]}, "T.rules[0].api_keys[0]", "a string"),
    ({"rules": [{"name": "r", "min_seq_len": 10, "max_seq_len": 5, "target_group": "g"}]},
     "T.rules[0].max_seq_len", "must be >= min_seq_len 10"),
    ({"rules": [{"name": "r", "min_seq_len": -1, "target_group": "g"}]}, "T.rules[0].min_seq_len", ">= 0"),
    ({"default_target_groups": [{"group": "g", "weight": 0}]}, "T.default_target_groups", "sum to 0"),
    ({"default_target_groups": [{"group": "g", "weight": -1}]}, "T.default_target_groups[0].weight", ">= 0"),
    ({"default_target_groups": [{"weight": 1}]}, "T.default_target_groups[0].group", "expected a string"),
    ({"default_target_groups": ["g"]}, "T.default_target_groups[0]", "expected a JSON object"),
])
def test_bad_traffic_policy_names_the_field(policy: Any, path: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_traffic_policy("T", policy)
    assert info.value.field_path == path
    assert says in str(info.value)


def test_traffic_policy_unknown_keys_are_warnings() -> None:
    raw = {"enabld": True, "default_target_groups": [{"group": "g", "wieght": 2}],
           "rules": [{"name": "r", "api_key": ["k"], "target_groups": [{"group": "g", "weigth": 1}]}]}
    assert traffic_policy_warnings("T", raw) == [
        "T.enabld: unknown field, ignored; did you mean enabled?",
        "T.default_target_groups[0].wieght: unknown field, ignored; did you mean weight?",
        "T.rules[0].api_key: unknown field, ignored; did you mean api_keys?",
        "T.rules[0].target_groups[0].weigth: unknown field, ignored; did you mean weight?",
    ]


def test_pinned_group_keeps_every_role_in_the_group() -> None:
    workers = (addrs(Role.PREFILL, 2, "g1", 8000) + addrs(Role.PREFILL, 2, "g2", 8100)
               + addrs(Role.DECODE, 2, "g1", 9000) + addrs(Role.DECODE, 2, "g2", 9100))
    router = make_router(workers)
    for rid in range(8):
        d = router.route(RouteRequest(rid, 100, pinned_group="g2")).decision
        assert d.target.addr.group == "g2" and d.decode is not None and d.decode.addr.group == "g2"
    groups = {router.route(RouteRequest(rid, 100)).decision.target.addr.group for rid in range(8)}
    assert groups == {"g1", "g2"}  # unpinned calls use both


def test_pinned_group_without_workers_is_no_worker_available() -> None:
    from flexlb.balancer.request import NoWorkerAvailable

    router = make_router(addrs(Role.PDFUSION, 2, "g1"))
    with pytest.raises(NoWorkerAvailable):
        router.route(RouteRequest(1, 100, pinned_group="g2"))
