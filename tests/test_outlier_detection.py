"""Failure classification, engine codes from trailers, and Envoy-style outlier detection (pure, injected clock)."""

from __future__ import annotations

import base64

import pytest

from flexlb import wire
from flexlb.balancer.failures import ENGINE_CODE_KIND, FailureKind, classify, status_name
from flexlb.balancer.health import (
    CONSECUTIVE_5XX,
    EJECTED,
    FAILURE_PERCENTAGE,
    IN_ROTATION,
    OUT_BY_OPERATOR,
    SUCCESS_RATE,
    UNHEALTHY,
    WORKER_STATES,
    Ejection,
    OutlierConfig,
    OutlierDetector,
    usable,
    worker_state,
)
from flexlb.balancer.workers import Cluster, Role, WorkerAddr, WorkerState
from flexlb.call.failures_wire import classify_trailers, engine_code_from_trailers
from flexlb.metrics import Metrics, _ClusterCollector
from flexlb.pb import model_rpc_service_pb2 as pb

OK, WORKER, BUSY, REQUEST, CLIENT = (FailureKind.OK, FailureKind.WORKER, FailureKind.BUSY, FailureKind.REQUEST,
                                     FailureKind.CLIENT)

# every engine code of RTP-LLM's ErrorCode.h (and FlexLB's own) with the kind it must land in
ENGINE_EXPECTED: dict[int, FailureKind] = {
    511: REQUEST, 604: REQUEST, 605: REQUEST, 607: REQUEST,
    608: REQUEST, 609: REQUEST, 610: REQUEST, 611: REQUEST, 612: REQUEST, 613: REQUEST,
    901: REQUEST, 902: REQUEST, 905: REQUEST, 8101: REQUEST, 8406: REQUEST,
    603: REQUEST,  # GENERATE_TIMEOUT: the request's own deadline
    8100: CLIENT,
    8106: BUSY, 8213: BUSY, 8330: BUSY, 8429: BUSY, 8402: BUSY, 8403: BUSY, 8404: BUSY,
    514: WORKER, 606: WORKER, 602: WORKER, 8211: WORKER,
    8102: WORKER, 8103: WORKER, 8104: WORKER, 8105: WORKER,
    903: WORKER, 904: WORKER, 906: WORKER, 907: WORKER,
    8400: WORKER, 8401: WORKER, 8214: WORKER,
    **dict.fromkeys(range(8200, 8213), WORKER),
    **{c: WORKER for c in range(8300, 8333) if c != 8330},
}

GRPC_EXPECTED: dict[str, FailureKind] = {
    "OK": OK, "CANCELLED": CLIENT, "UNKNOWN": WORKER, "INVALID_ARGUMENT": REQUEST, "DEADLINE_EXCEEDED": WORKER,
    "NOT_FOUND": REQUEST, "ALREADY_EXISTS": REQUEST, "PERMISSION_DENIED": REQUEST, "RESOURCE_EXHAUSTED": BUSY,
    "FAILED_PRECONDITION": REQUEST, "ABORTED": BUSY, "OUT_OF_RANGE": REQUEST, "UNIMPLEMENTED": REQUEST,
    "INTERNAL": WORKER, "UNAVAILABLE": WORKER, "DATA_LOSS": WORKER, "UNAUTHENTICATED": REQUEST,
}

# no volume rule fires unless a test wants it; consecutive ejection off unless a test wants it
NO_STREAK = 10**9


def _cluster(n: int, role: Role = Role.PDFUSION) -> Cluster:
    return Cluster([WorkerAddr("10.0.0.1", 1000 + i, 2000 + i, role) for i in range(n)])


def _calls(d: OutlierDetector, w: WorkerState, role: list[WorkerState], now_s: float, ok: int, failed: int) -> None:
    """`ok` successes and `failed` worker faults, interleaved so that no streak forms by accident."""
    for i in range(max(ok, failed)):
        if i < failed:
            d.fault(w, role, now_s)
        if i < ok:
            d.success(w)


# ---------------------------------------------------------------- classification


@pytest.mark.parametrize(("code", "kind"), sorted(ENGINE_EXPECTED.items()))
def test_every_engine_code_lands_in_its_kind(code: int, kind: FailureKind) -> None:
    # with the gRPC status an RTP-LLM worker really sends for it (RpcErrorCode.h), and with INTERNAL
    assert classify(wire.grpc_code_for_engine_error(code).name, code) is kind
    assert classify("INTERNAL", code) is kind
    assert ENGINE_CODE_KIND[code] is kind


@pytest.mark.parametrize(("name", "kind"), sorted(GRPC_EXPECTED.items()))
def test_every_grpc_code_without_details(name: str, kind: FailureKind) -> None:
    assert classify(name, None) is kind
    assert classify(name, 0) is kind  # NONE_ERROR says nothing
    assert classify(name, 777) is kind  # an engine code we do not know: the status decides


def test_the_issue_case_is_a_worker_fault_that_fails_over() -> None:
    # `flexlb mock-worker --error-rate 1 --error-code 8200`: INTERNAL + ErrorDetailsPB(8200)
    kind = classify("INTERNAL", wire.GET_HOST_FAILED)
    assert kind is WORKER and kind.blames_worker and kind.fails_over


def test_kind_properties() -> None:
    assert [k for k in FailureKind if k.blames_worker] == [WORKER]
    assert {k for k in FailureKind if k.fails_over} == {WORKER, BUSY}


def test_ok_and_client_override_the_engine_code() -> None:
    assert classify("OK", 8200) is OK
    assert classify("INTERNAL", 8200, client_ended=True) is CLIENT
    assert classify("DEADLINE_EXCEEDED", None, client_ended=True) is CLIENT  # the client's deadline: no blame
    assert classify("DEADLINE_EXCEEDED", None) is WORKER  # the gateway's first-message timeout
    assert classify("RESOURCE_EXHAUSTED", 602) is WORKER  # engine malloc, not admission
    assert classify("RESOURCE_EXHAUSTED", None) is BUSY


def test_status_name_forms() -> None:
    assert status_name("StatusCode.UNAVAILABLE") == "UNAVAILABLE"
    assert status_name("14") == "UNAVAILABLE" and status_name("0") == "OK" and status_name("99") == "UNKNOWN"
    assert classify("unavailable", None) is WORKER
    assert classify("NO_SUCH_CODE", None) is WORKER  # unknown: as UNKNOWN


# ---------------------------------------------------------------- trailers


def test_engine_code_from_raw_bytes_trailer() -> None:
    trailers = (("x-other", b"1"), *wire.error_trailer(8200, "get host failed"))
    assert engine_code_from_trailers(trailers) == 8200
    assert classify_trailers("INTERNAL", trailers) is WORKER


@pytest.mark.parametrize("padded", [False, True])
def test_engine_code_from_base64_text_trailer(padded: bool) -> None:
    raw = pb.ErrorDetailsPB(error_code=605, error_message="bad params").SerializeToString()
    text = base64.b64encode(raw).decode()
    if not padded:
        text = text.rstrip("=")
    assert engine_code_from_trailers([("grpc-status", "13"), ("Grpc-Status-Details-Bin", text)]) == 605
    assert classify_trailers("13", [("grpc-status-details-bin", text)]) is REQUEST


@pytest.mark.parametrize("value", [
    b"\xff\xff\xff\xff", b"\x08", b"", "!!not base64!!", "////", base64.b64encode(b"\x08\xff").decode(),
    pb.ErrorDetailsPB(error_code=0, error_message="none").SerializeToString(),
])
def test_garbage_details_are_none(value: str | bytes) -> None:
    assert engine_code_from_trailers([("grpc-status-details-bin", value)]) is None


def test_no_details_trailer() -> None:
    assert engine_code_from_trailers(None) is None
    assert engine_code_from_trailers([]) is None
    assert engine_code_from_trailers([("grpc-message", "boom")]) is None
    assert classify_trailers("INTERNAL", None) is WORKER


# ---------------------------------------------------------------- consecutive failures


def test_consecutive_faults_eject_and_return_the_event() -> None:
    c = _cluster(4)
    w, role = c.all()[0], c.all()
    d = OutlierDetector(OutlierConfig(consecutive_failures=3, base_ejection_s=5.0))
    assert d.fault(w, role, 0.0) is None and d.fault(w, role, 0.0) is None
    d.success(w)  # a success breaks the streak
    assert d.fault(w, role, 1.0) is None and d.fault(w, role, 1.0) is None
    ev = d.fault(w, role, 10.0)
    assert ev == Ejection(w.key, "PDFUSION", CONSECUTIVE_5XX, 5.0, 15.0, 1, "3 worker faults in a row")
    assert not usable(w, 10.0) and w.probing and w.ejections == 1 and d.ejections_total == 1
    assert "ejected (consecutive_5xx)" in w.notes["outlier"]
    assert d.fault(w, role, 11.0) is None  # already out: no second event


def test_observe_counts_only_what_blames_the_worker() -> None:
    c = _cluster(2)
    w, role = c.all()[0], c.all()
    d = OutlierDetector(OutlierConfig(consecutive_failures=3))
    assert d.observe(w, WORKER, role, 0.0) is None and d.observe(w, WORKER, role, 0.0) is None
    for kind in (BUSY, CLIENT):  # busy is not sick, a client leaving says nothing: neither count nor reset
        assert d.observe(w, kind, role, 0.0) is None
    assert w.consecutive_failures == 2
    d.observe(w, REQUEST, role, 0.0)  # the worker answered a bad request correctly: the streak ends
    assert w.consecutive_failures == 0
    for _ in range(2):
        d.observe(w, WORKER, role, 0.0)
    ev = d.observe(w, WORKER, role, 0.0)
    assert ev is not None and ev.reason == CONSECUTIVE_5XX


def test_the_bool_api_still_answers() -> None:
    c = _cluster(2)
    d = OutlierDetector(OutlierConfig(consecutive_failures=1))
    assert d.failure(c.all()[0], c.all(), 0.0) is True
    assert d.failure(c.all()[1], c.all(), 0.0) is False  # the cap


# ---------------------------------------------------------------- failure percentage and success rate


def test_two_workers_one_failing_every_call_is_ejected_by_failure_percentage() -> None:
    c = _cluster(2)
    bad, good = c.all()
    d = OutlierDetector(OutlierConfig(consecutive_failures=NO_STREAK))
    assert d.evaluate(c.all(), 0.0) == []  # starts the interval
    _calls(d, bad, c.all(), 1.0, ok=0, failed=40)  # it fails fast, so it draws the traffic
    _calls(d, good, c.all(), 1.0, ok=4, failed=0)  # the healthy one is far below any volume
    assert d.evaluate(c.all(), 4.9) == []  # the interval is not over yet
    events = d.evaluate(c.all(), 5.0)
    assert [(e.worker, e.reason) for e in events] == [(bad.key, FAILURE_PERCENTAGE)]
    assert events[0].detail.startswith("40 of 40 calls failed")
    assert not usable(bad, 5.0) and usable(good, 5.0)
    _calls(d, good, c.all(), 6.0, ok=0, failed=40)  # now the other one fails too: the last in rotation stays
    assert d.evaluate(c.all(), 10.0) == [] and usable(good, 10.0)


def test_failure_percentage_needs_volume_and_threshold() -> None:
    c = _cluster(3)
    a, b, e = c.all()
    d = OutlierDetector(OutlierConfig(consecutive_failures=NO_STREAK))
    d.evaluate(c.all(), 0.0)
    _calls(d, a, c.all(), 1.0, ok=3, failed=27)  # 90 % of 30: out
    _calls(d, b, c.all(), 1.0, ok=15, failed=15)  # 50 %: stays
    _calls(d, e, c.all(), 1.0, ok=0, failed=24)  # 100 % but below the volume of 25: stays
    events = d.evaluate(c.all(), 5.0)
    assert [(ev.worker, ev.reason) for ev in events] == [(a.key, FAILURE_PERCENTAGE)]  # 3 < 5 hosts: no stdev rule
    assert usable(b, 5.0) and usable(e, 5.0)
    # the counts start again each interval: what e did before does not add up with what it does now
    _calls(d, e, c.all(), 6.0, ok=0, failed=5)
    assert d.evaluate(c.all(), 10.0) == []


def test_one_worker_is_never_ejected() -> None:
    c = _cluster(1)
    d = OutlierDetector(OutlierConfig(consecutive_failures=1))
    d.evaluate(c.all(), 0.0)
    _calls(d, c.all()[0], c.all(), 1.0, ok=0, failed=100)
    assert d.evaluate(c.all(), 5.0) == [] and usable(c.all()[0], 5.0)


def test_eight_workers_success_rate_outlier() -> None:
    c = _cluster(8)
    ws = c.all()
    d = OutlierDetector(OutlierConfig(consecutive_failures=NO_STREAK))
    d.evaluate(ws, 0.0)
    for w in ws[:7]:
        _calls(d, w, ws, 1.0, ok=60, failed=0)
    _calls(d, ws[7], ws, 1.0, ok=42, failed=18)  # 70 %: far below the others, far above 15 % success
    events = d.evaluate(ws, 5.0)
    assert [(e.worker, e.reason) for e in events] == [(ws[7].key, SUCCESS_RATE)]
    assert "success rate 70.0% of 60 calls" in events[0].detail
    assert sum(usable(w, 5.0) for w in ws) == 7


def test_success_rate_leaves_a_uniform_role_alone() -> None:
    c = _cluster(8)
    ws = c.all()
    d = OutlierDetector(OutlierConfig(consecutive_failures=NO_STREAK))
    d.evaluate(ws, 0.0)
    for w in ws:
        _calls(d, w, ws, 1.0, ok=45, failed=15)  # all equally bad (75 %): nobody is an outlier, none >= 85 %
    assert d.evaluate(ws, 5.0) == []


def test_success_rate_needs_the_request_volume_and_enough_hosts() -> None:
    c = _cluster(8)
    ws = c.all()
    d = OutlierDetector(OutlierConfig(consecutive_failures=NO_STREAK))
    d.evaluate(ws, 0.0)
    for w in ws[:4]:
        _calls(d, w, ws, 1.0, ok=60, failed=0)
    for w in ws[4:7]:
        _calls(d, w, ws, 1.0, ok=40, failed=0)  # below the volume of 50: not compared
    _calls(d, ws[7], ws, 1.0, ok=30, failed=30)  # 50 %: 5 workers have the volume (4 + itself), enough
    assert [e.reason for e in d.evaluate(ws, 5.0)] == [SUCCESS_RATE]
    d2 = OutlierDetector(OutlierConfig(consecutive_failures=NO_STREAK))
    d2.evaluate(ws, 0.0)
    for w in ws[:3]:
        _calls(d2, w, ws, 1.0, ok=60, failed=0)
    _calls(d2, ws[7], ws, 1.0, ok=30, failed=30)  # 4 hosts with the volume < 5: no stdev rule, 50 % < 85 %
    assert d2.evaluate(ws, 5.0) == []


def test_the_cap_ejects_the_worst_first() -> None:
    c = _cluster(8)
    ws = c.all()
    d = OutlierDetector(OutlierConfig(consecutive_failures=NO_STREAK, max_ejected_share=0.5))
    d.evaluate(ws, 0.0)
    for i, w in enumerate(ws[:6]):
        _calls(d, w, ws, 1.0, ok=i, failed=40)  # 100 %, 97.6 %, ... all above 85 %
    for w in ws[6:]:
        _calls(d, w, ws, 1.0, ok=40, failed=0)
    events = d.evaluate(ws, 5.0)
    assert [e.worker for e in events] == [w.key for w in ws[:4]]  # half the role, the worst first
    assert sum(usable(w, 5.0) for w in ws) == 4 and d.refused_total == 2
    assert ws[4].notes["outlier"].startswith("not ejected (failure_percentage")  # /actuator/info says why


def test_consecutive_ejection_respects_the_cap() -> None:
    c = _cluster(4)
    d = OutlierDetector(OutlierConfig(consecutive_failures=1, max_ejected_share=0.5))
    events = [d.fault(w, c.all(), 0.0) for w in c.all()]
    assert [e is not None for e in events] == [True, True, False, False]
    assert sum(usable(w, 0.0) for w in c.all()) == 2


def test_evaluate_ignores_workers_out_of_rotation() -> None:
    c = _cluster(3)
    a, b, e = c.all()
    b.operator_out = True
    e.healthy = False
    d = OutlierDetector(OutlierConfig(consecutive_failures=NO_STREAK))
    d.evaluate(c.all(), 0.0)
    for w in c.all():
        _calls(d, w, c.all(), 1.0, ok=0, failed=40)
    events = d.evaluate(c.all(), 5.0)
    # b and e are not in rotation (no candidates, and only 1 in rotation < 2 hosts): nobody ejected
    assert events == [] and usable(a, 5.0)


# ---------------------------------------------------------------- ejection time and re-admission


def test_ejection_time_grows_with_each_ejection_and_is_capped() -> None:
    c = _cluster(2)
    w = c.all()[0]
    d = OutlierDetector(OutlierConfig(consecutive_failures=1, base_ejection_s=5.0, max_ejection_s=17.0))
    durations = []
    now = 0.0
    for n in range(1, 6):
        ev = d.fault(w, c.all(), now)
        assert ev is not None and ev.ejections == n
        durations.append(ev.duration_s)
        now = ev.until_s
        d.probe_ok(w, now)
    assert durations == [5.0, 10.0, 15.0, 17.0, 17.0]  # base x ejections (Envoy), capped


def test_healthy_intervals_shrink_the_ejection_time_again() -> None:
    c = _cluster(2)
    w = c.all()[0]
    d = OutlierDetector(OutlierConfig(consecutive_failures=1, base_ejection_s=5.0, interval_s=5.0))
    now = 0.0
    d.evaluate(c.all(), now)
    for _ in range(3):
        ev = d.fault(w, c.all(), now)
        assert ev is not None
        now = ev.until_s
        d.probe_ok(w, now)
    assert ev.duration_s == 15.0
    for _ in range(2):  # two intervals in rotation: the multiplier goes 3 -> 1
        now += 5.0
        assert d.evaluate(c.all(), now) == []
    ev = d.fault(w, c.all(), now)
    assert ev is not None and ev.duration_s == 10.0  # (1 + 1) x base


def test_back_only_through_a_probe_after_the_ejection() -> None:
    c = _cluster(2)
    w = c.all()[0]
    d = OutlierDetector(OutlierConfig(consecutive_failures=3, base_ejection_s=5.0))
    for _ in range(3):
        d.fault(w, c.all(), 0.0)
    assert w.probing
    assert not usable(w, 6.0)  # the time is up, but no probe said it is fine
    d.probe_ok(w, 4.0)
    assert not usable(w, 6.0)  # a probe during the ejection does not count
    for _ in range(5):
        assert d.fault(w, c.all(), 4.5) is None  # calls still in flight while it is out
    d.probe_ok(w, 6.0)
    assert usable(w, 6.0) and "outlier" not in w.notes
    # what piled up while it was out is not held against it: one more fault is not the 3rd in a row
    assert d.fault(w, c.all(), 7.0) is None and usable(w, 7.0)


def test_stats_start_afresh_after_readmission() -> None:
    c = _cluster(2)
    bad = c.all()[0]
    d = OutlierDetector(OutlierConfig(consecutive_failures=NO_STREAK, base_ejection_s=1.0))
    d.evaluate(c.all(), 0.0)
    _calls(d, bad, c.all(), 1.0, ok=0, failed=30)
    assert [e.reason for e in d.evaluate(c.all(), 5.0)] == [FAILURE_PERCENTAGE]
    _calls(d, bad, c.all(), 5.5, ok=0, failed=30)  # calls that were in flight fail while it is out
    d.probe_ok(bad, 6.0)
    _calls(d, bad, c.all(), 7.0, ok=5, failed=0)
    assert d.evaluate(c.all(), 10.0) == [] and usable(bad, 10.0)  # judged on 5 of 5, not 5 of 35


# ---------------------------------------------------------------- state and metrics


def test_worker_state_is_exactly_one() -> None:
    w = _cluster(1).all()[0]
    assert worker_state(w, 0.0) == IN_ROTATION
    w.probing, w.ejected_until_s = True, 5.0
    assert worker_state(w, 1.0) == EJECTED and worker_state(w, 9.0) == EJECTED  # out until a probe
    w.healthy = False
    assert worker_state(w, 1.0) == UNHEALTHY
    w.operator_out = True
    assert worker_state(w, 1.0) == OUT_BY_OPERATOR


def test_metrics_worker_state_and_healthy_only_in_rotation() -> None:
    c = _cluster(4)
    a, b, e, f = c.all()
    b.probing, b.ejected_until_s = True, 1e18  # ejected (the collector reads the monotonic clock)
    e.operator_out = True
    f.healthy = False
    families = {}
    for fam in _ClusterCollector(c, lambda: False, None, lambda: None).collect():
        families[fam.name] = fam
        if "flexlb_worker_state" in families:
            break
    state = {(s.labels["worker"], s.labels["state"]): s.value for s in families["flexlb_worker_state"].samples}
    assert len(state) == 4 * len(WORKER_STATES)
    expected = {a.key: IN_ROTATION, b.key: EJECTED, e.key: OUT_BY_OPERATOR, f.key: UNHEALTHY}
    for key, current in expected.items():
        assert [state[(key, s)] for s in WORKER_STATES] == [1 if s == current else 0 for s in WORKER_STATES]
    healthy = {s.labels["worker"]: s.value for s in families["flexlb_worker_healthy"].samples}
    assert healthy == {a.key: 1, b.key: 0, e.key: 0, f.key: 0}  # an ejected worker is not in rotation


def test_metrics_count_ejections_by_reason() -> None:
    m = Metrics()
    ev = Ejection("10.0.0.1:1000", "PREFILL", FAILURE_PERCENTAGE, 5.0, 5.0, 1, "40 of 40 calls failed")
    m.worker_ejected(ev)
    m.worker_ejected(ev)
    labels = {"worker": "10.0.0.1:1000", "role": "PREFILL", "reason": FAILURE_PERCENTAGE}
    assert m.registry.get_sample_value("flexlb_worker_ejections_total", labels) == 2


# ---------------------------------------------------------------------------------------------- failed calls


def _fail_fast_setup(kind):  # type: ignore[no-untyped-def]
    """Two fused workers under COST_BASED_PREFILL: b busy with a short prefill, a handed a long one that ends
    before its first token with `kind`. Returns the worker the next call goes to, and the router."""
    from flexlb.balancer.request import RouteRequest
    from flexlb.balancer.workers import Role
    from tests.balancer_support import FakeClock, addrs, make_router

    router = make_router(addrs(Role.PDFUSION, 2), "COST_BASED_PREFILL", clock=FakeClock())
    a, b = router.cluster.all()
    busy = router.route(RouteRequest(1, 100, 8, exclude=frozenset({a.key})))
    assert busy.decision.target is b
    long = router.route(RouteRequest(2, 10_000, 8, exclude=frozenset({b.key})))
    assert long.decision.target is a
    router.attempt_ended(long, kind)
    router.release(long)
    nxt = router.route(RouteRequest(3, 100, 8))
    return nxt.decision.target, a, b, router


def test_a_worker_that_failed_a_call_before_its_first_token_does_not_look_idle() -> None:
    from flexlb.balancer.failures import FailureKind

    chosen, a, b, router = _fail_fast_setup(FailureKind.WORKER)
    assert chosen is b  # a still counts as busy with the prefill it failed, so the short backlog wins
    assert router.ttft.worker(a.key).queue_wait_ms(router._clock()) > 900
    assert router.ttft.worker(a.key).observations == 0  # and nothing was learnt from it


def test_a_call_that_failed_for_its_own_reasons_frees_the_worker() -> None:
    from flexlb.balancer.failures import FailureKind

    chosen, a, _, router = _fail_fast_setup(FailureKind.REQUEST)
    assert chosen is a  # the worker answered correctly and is idle again
    assert router.ttft.worker(a.key).failed_busy_until_s == 0.0
    assert router.ttft.worker(a.key).queue_wait_ms(router._clock()) == 30.0  # only the call just sent there
