"""Property test: whatever bytes or odd-but-valid messages arrive, the gateway answers each with a status
and keeps serving everyone else."""

from __future__ import annotations

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flexlb.pb import model_rpc_service_pb2 as pb
from tests.conftest import generate_input, stream_stub, wait_for

# a hang would show as DEADLINE_EXCEEDED at the client; UNKNOWN would mean an unhandled exception
ACCEPTABLE = {
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INTERNAL, grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNAVAILABLE,
}

int32 = st.integers(-(2**31), 2**31 - 1)
odd_inputs = st.builds(
    lambda rid, tokens, max_new, beams, streaming, timeout, roles: pb.GenerateInputPB(
        request_id=rid, token_ids=tokens,
        generate_config=pb.GenerateConfigPB(
            max_new_tokens=max_new, num_beams=beams, is_streaming=streaming, timeout_ms=timeout,
            role_addrs=[pb.RoleAddrPB(role=r % 5, ip=ip, grpc_port=port) for r, ip, port in roles],  # type: ignore[arg-type]
        ),
    ),
    st.integers(-(2**63), 2**63 - 1),
    st.lists(int32, max_size=300),
    st.integers(-5, 40),
    st.integers(-3, 4),
    st.booleans(),
    int32,
    st.lists(st.tuples(st.integers(0, 9), st.sampled_from(["", "127.0.0.1", "::1", "not-an-ip", "x" * 300]),
                       st.integers(-1, 70000)), max_size=3),
)

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


async def _status(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    try:
        async for _ in call:
            pass
        return grpc.StatusCode.OK
    except grpc.aio.AioRpcError as exc:
        return exc.code()


@SETTINGS
@given(payload=st.binary(max_size=2000))
async def test_random_bytes_get_a_status(payload: bytes, fuzz_gateway) -> None:
    _, ch = fuzz_gateway
    code = await _status(ch.unary_stream("/RpcService/GenerateStreamCall")(payload, timeout=10))
    assert code in ACCEPTABLE, code
    unary = ch.unary_unary("/RpcService/BatchGenerateCall")
    try:
        await unary(payload, timeout=10)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() in ACCEPTABLE, exc.code()


@SETTINGS
@given(message=odd_inputs)
async def test_odd_but_valid_messages_get_a_status(message: pb.GenerateInputPB, fuzz_gateway) -> None:
    _, ch = fuzz_gateway
    code = await _status(stream_stub(ch)(message, timeout=10))
    assert code in ACCEPTABLE, code


@SETTINGS
@given(path=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=60))
async def test_any_method_path_gets_a_status(path: str, fuzz_gateway) -> None:
    _, ch = fuzz_gateway
    try:
        await ch.unary_unary("/" + path)(b"\x08\x01", timeout=10)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() in ACCEPTABLE | {grpc.StatusCode.NOT_FOUND}, exc.code()


async def test_gateway_still_serves_after_the_fuzzing(fuzz_gateway) -> None:
    gw, ch = fuzz_gateway
    assert len([m async for m in stream_stub(ch)(generate_input(990), timeout=10)]) == 8
    await wait_for(lambda: gw.cluster.ledger.calls == 0, what="in-flight back to 0")
