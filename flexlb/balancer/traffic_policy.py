"""Traffic policy (Java FlexLB HEAD's `TrafficPolicyConfig`): which worker group a request is pinned to.

Pure: rules are checked in order, a rule holds when all of its matchers do (api key in its list, prompt
length within its bounds), and a weighted target is chosen deterministically per request from
CRC32(`requestId|apiKey|seqLen|salt`) mod the weights' sum, the salt being the rule's name or "default".
The configuration parser (flexlb/flexlb_env.py) builds these; bad input never reaches them.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_SALT = "default"


@dataclass(frozen=True)
class TargetGroup:
    """One weighted target: a worker group (MODEL_SERVICE_CONFIG role_endpoints group)."""

    group: str
    weight: int = 1


@dataclass(frozen=True)
class TrafficRule:
    """A named rule: its matchers (at least one) and the group(s) it sends matching requests to."""

    name: str
    targets: tuple[TargetGroup, ...]  # one group (target_group), or weighted ones (target_groups)
    api_keys: frozenset[str] = frozenset()  # empty: no api-key matcher
    min_seq_len: int | None = None  # inclusive; None: no lower bound
    max_seq_len: int | None = None  # inclusive; None: no upper bound

    def matches(self, api_key: str, seq_len: int) -> bool:
        """Whether every matcher of the rule holds for this request."""
        if self.api_keys and api_key not in self.api_keys:
            return False
        if self.min_seq_len is not None and seq_len < self.min_seq_len:
            return False
        return self.max_seq_len is None or seq_len <= self.max_seq_len


@dataclass(frozen=True)
class TrafficPolicy:
    """Rules in order, then the defaults: weighted default targets, else the default group."""

    enabled: bool = True
    default_group: str = ""
    default_targets: tuple[TargetGroup, ...] = ()
    rules: tuple[TrafficRule, ...] = ()

    def choose(self, request_id: int, api_key: str, seq_len: int) -> str | None:
        """The group this request is pinned to, or None (disabled, or nothing matches and no default)."""
        if not self.enabled:
            return None
        for rule in self.rules:
            if rule.matches(api_key, seq_len):
                return weighted_group(rule.targets, request_id, api_key, seq_len, rule.name)
        if self.default_targets:
            return weighted_group(self.default_targets, request_id, api_key, seq_len, DEFAULT_SALT)
        return self.default_group or None


def bucket(request_id: int, api_key: str, seq_len: int, salt: str, total_weight: int) -> int:
    """CRC32 of `requestId|apiKey|seqLen|salt` (UTF-8) mod the total weight: the same request, the same bucket."""
    return zlib.crc32(f"{request_id}|{api_key}|{seq_len}|{salt}".encode()) % total_weight


def weighted_group(targets: Sequence[TargetGroup], request_id: int, api_key: str, seq_len: int, salt: str) -> str:
    """The target whose cumulative weight range holds the request's bucket (a lone target: that one)."""
    if len(targets) == 1:
        return targets[0].group
    total = sum(t.weight for t in targets)
    b = bucket(request_id, api_key, seq_len, salt, total)
    for t in targets:
        if b < t.weight:
            return t.group
        b -= t.weight
    raise ValueError("weights must sum to more than 0")  # the parser guarantees it
