"""A Schedule request's priority and its SLO (FlexLB's ScheduleBudget). Pure: no grpc, no clock.

priority = FlexlbScheduleRequestPB.priority (field 14) when it is in 1..100, else the gRPC metadata
`x-dashscope-inner-qos-level` when that is an integer in 1..100, else the configured default (50).
SLO = base(seq_len bucket) x multiplier(priority): buckets are upper-inclusive, the multiplier is
piecewise linear between its points and clamped at both ends.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from flexlb.schedule_modes import PrioritySettings

PRIORITY_HEADER = "x-dashscope-inner-qos-level"
MIN_PRIORITY, MAX_PRIORITY = 1, 100


def _valid(value: int) -> bool:
    return MIN_PRIORITY <= value <= MAX_PRIORITY


def header_priority(metadata: Iterable[tuple[str, str | bytes]] | None) -> int | None:
    """The priority carried by `x-dashscope-inner-qos-level`, if present and an integer in 1..100."""
    for key, value in metadata or ():
        if key.lower() != PRIORITY_HEADER:
            continue
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        try:
            parsed = int(text.strip())
        except ValueError:
            return None
        return parsed if _valid(parsed) else None
    return None


def resolve_priority(field: int, header: int | None, default: int) -> int:
    """Field 14 if in 1..100, else the header's value, else `default`."""
    if _valid(field):
        return field
    if header is not None and _valid(header):
        return header
    return default


def base_slo_ms(seq_len: int, buckets: tuple[tuple[int | None, int], ...]) -> float:
    """The SLO of a prompt of `seq_len` tokens at the reference priority (first bucket whose bound covers it)."""
    for upper, slo in buckets:
        if upper is None or seq_len <= upper:
            return float(slo)
    return float(buckets[-1][1]) if buckets else 0.0


def slo_multiplier(priority: int, points: tuple[tuple[int, float], ...]) -> float:
    """Piecewise-linear multiplier over (priority, multiplier) points, clamped at both ends."""
    if not points:
        return 1.0
    pts = sorted(points)
    if priority <= pts[0][0]:
        return pts[0][1]
    for (p0, m0), (p1, m1) in itertools.pairwise(pts):
        if priority <= p1:
            return m0 + (m1 - m0) * (priority - p0) / (p1 - p0)
    return pts[-1][1]


def request_slo_ms(seq_len: int, priority: int, settings: PrioritySettings) -> float:
    """base(seq_len bucket) x multiplier(priority)."""
    return base_slo_ms(seq_len, settings.slo_length_buckets) * slo_multiplier(
        priority, settings.priority_slo_multipliers)
