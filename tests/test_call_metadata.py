"""The metadata filter both engines use, and the engine error code read from a worker's trailers."""

from __future__ import annotations

import base64

from flexlb.call.failures_wire import engine_code_from_trailers as engine_code_from
from flexlb.call.metadata import forwarded_metadata
from flexlb.pb import model_rpc_service_pb2 as pb
from flexlb.wire import ERROR_DETAILS_TRAILER


def test_only_the_calls_own_metadata_is_forwarded() -> None:
    headers = [(":method", "POST"), (":path", "/RpcService/GenerateStreamCall"), (":authority", "gw"),
               ("te", "trailers"), ("content-type", "application/grpc"), ("user-agent", "client/1"),
               ("content-length", "12"), ("grpc-timeout", "5S"), ("grpc-encoding", "gzip"),
               ("grpc-accept-encoding", "gzip"), ("x-tenant", "acme"), ("x-trace-bin", "AAE"),
               ("authorization", "Bearer t")]
    assert forwarded_metadata(headers) == [("x-tenant", "acme"), ("x-trace-bin", "AAE"),
                                           ("authorization", "Bearer t")]
    assert forwarded_metadata([("x-blob-bin", b"\x00\x01")]) == [("x-blob-bin", b"\x00\x01")]  # grpc.aio's bytes


def test_engine_code_from_raw_and_header_trailers() -> None:
    raw = pb.ErrorDetailsPB(error_code=8200, error_message="no host").SerializeToString()
    assert engine_code_from([("grpc-status", "13"), (ERROR_DETAILS_TRAILER, raw)]) == 8200
    text = base64.b64encode(raw).decode().rstrip("=")  # how an HTTP/2 header carries it
    assert engine_code_from([(ERROR_DETAILS_TRAILER, text)]) == 8200
    assert engine_code_from([("grpc-status", "13")]) is None
    assert engine_code_from([(ERROR_DETAILS_TRAILER, b"\xff\xff\xff")]) is None  # garbage is no code
