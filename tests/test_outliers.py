"""Passive ejection rules of the pure core."""

from __future__ import annotations

from flexlb.balancer.health import OutlierConfig, OutlierDetector, usable
from flexlb.balancer.workers import Cluster, Role, WorkerAddr


def _cluster(n: int) -> Cluster:
    return Cluster([WorkerAddr("10.0.0.1", 1000 + i, 999 + i, Role.PDFUSION) for i in range(n)])


def test_ejection_after_consecutive_failures_only() -> None:
    c = _cluster(4)
    w = c.all()[0]
    d = OutlierDetector(OutlierConfig(consecutive_failures=3))
    assert not d.failure(w, c.all(), 0.0) and not d.failure(w, c.all(), 0.0)
    d.success(w)  # a success breaks the streak
    assert not d.failure(w, c.all(), 0.0) and not d.failure(w, c.all(), 0.0)
    assert d.failure(w, c.all(), 10.0)
    assert not usable(w, 10.0) and w.ejected_until_s == 15.0


def test_ejection_time_doubles_and_is_capped() -> None:
    c = _cluster(2)
    w = c.all()[0]
    d = OutlierDetector(OutlierConfig(consecutive_failures=1, base_ejection_s=5, max_ejection_s=12))
    durations = []
    now = 0.0
    for _ in range(4):
        assert d.failure(w, c.all(), now)
        durations.append(w.ejected_until_s - now)
        now = w.ejected_until_s
        d.probe_ok(w, now)
        assert usable(w, now)
    assert durations == [5, 10, 12, 12]


def test_never_ejects_more_than_the_share_of_a_role() -> None:
    c = _cluster(4)
    d = OutlierDetector(OutlierConfig(consecutive_failures=1, max_ejected_share=0.5))
    ejected = [d.failure(w, c.all(), 0.0) for w in c.all()]
    assert ejected == [True, True, False, False]
    assert sum(usable(w, 0.0) for w in c.all()) == 2


def test_back_only_through_a_probe_after_the_ejection() -> None:
    c = _cluster(2)
    w = c.all()[0]
    d = OutlierDetector(OutlierConfig(consecutive_failures=1, base_ejection_s=5))
    d.failure(w, c.all(), 0.0)
    assert not usable(w, 6.0)  # time is up, but no probe said it is fine
    d.probe_ok(w, 4.0)
    assert not usable(w, 6.0)  # a probe during the ejection does not count
    d.probe_ok(w, 6.0)
    assert usable(w, 6.0)
