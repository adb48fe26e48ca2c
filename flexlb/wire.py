"""Facts of the RTP-LLM wire protocol shared by the gateway and the mock worker."""

from __future__ import annotations

import grpc

from flexlb.pb import model_rpc_service_pb2 as pb

RPC_SERVICE = "RpcService"
FLEXLB_SERVICE = "FlexlbService"
GENERATE_STREAM_CALL = "/RpcService/GenerateStreamCall"
BATCH_GENERATE_CALL = "/RpcService/BatchGenerateCall"
CHECK_HEALTH = "/RpcService/CheckHealth"
REMOTE_GENERATE = "/RpcService/RemoteGenerate"
GET_WORKER_STATUS = "/RpcService/GetWorkerStatus"
GET_CACHE_STATUS = "/RpcService/GetCacheStatus"
# VIT (multimodal) workers serve their status on their own service
VIT_SERVICE = "MultimodalRpcService"
VIT_GET_WORKER_STATUS = "/MultimodalRpcService/GetWorkerStatus"
VIT_GET_CACHE_STATUS = "/MultimodalRpcService/GetCacheStatus"
CANCEL = "/RpcService/Cancel"

# the message size limit of RTP-LLM's gRPC client and server (both default to 1 GiB)
RTP_LLM_MAX_MESSAGE_BYTES = 1024 * 1024 * 1024


def _one_request_paths() -> frozenset[str]:
    from grpc_health.v1 import health_pb2

    from flexlb.pb import flexlb_schedule_service_pb2

    services = (pb.DESCRIPTOR.services_by_name[RPC_SERVICE],
                flexlb_schedule_service_pb2.DESCRIPTOR.services_by_name[FLEXLB_SERVICE],
                health_pb2.DESCRIPTOR.services_by_name["Health"])
    return frozenset(f"/{s.full_name}/{m.name}" for s in services for m in s.methods if not m.client_streaming)


# methods the gateway serves whose request is exactly one message
ONE_REQUEST_PATHS = _one_request_paths()

# binary trailer carrying a serialized ErrorDetailsPB (not a google.rpc.Status)
ERROR_DETAILS_TRAILER = "grpc-status-details-bin"

# engine ErrorCode numbers used by FlexLB and the mock worker
GET_HOST_FAILED = 8200
CONNECT_FAILED = 8202
CONNECTION_RESET_BY_PEER = 8205
REMOTE_GENERATE_FAILED = 8209
KEEP_ALIVE_TIMEOUT = 8214
UNKNOWN_ERROR = 514
MALLOC_FAILED = 602
CANCELLED_ERROR = 8100
GENERATE_TIMEOUT = 603
LONG_PROMPT_ERROR = 511  # the prompt is longer than the engine's max_seq_len (gRPC OUT_OF_RANGE)
INVALID_PARAMS = 605
PRIORITY_PREEMPTED = 8429
# FlexLB's own codes (flexlb-original §7.1 StrategyErrorType)
NO_AVAILABLE_WORKER = 8400
NO_PREFILL_WORKER = 8402
NO_DECODE_WORKER = 8403
NO_PDFUSION_WORKER = 8404
NO_VIT_WORKER = 8405
INVALID_REQUEST = 8406
QUEUE_FULL = 8502

_RESOURCE_EXHAUSTED = {602, 8211, 8429}
_DEADLINE = {603, 8203, 8204, 8213, 8214, 8300, 8304, 8307, 8316, 8321, 8324}
_OUT_OF_RANGE = {8101, 511}


def grpc_code_for_engine_error(error_code: int) -> grpc.StatusCode:
    """The gRPC status an RTP-LLM worker uses for an engine ErrorCode (RpcErrorCode.h)."""
    if error_code == CANCELLED_ERROR:
        return grpc.StatusCode.CANCELLED
    if error_code in _RESOURCE_EXHAUSTED:
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if error_code in _DEADLINE:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if error_code in _OUT_OF_RANGE:
        return grpc.StatusCode.OUT_OF_RANGE
    return grpc.StatusCode.INTERNAL


def error_trailer(error_code: int, message: str) -> tuple[tuple[str, bytes], ...]:
    """Trailing metadata in the shape RTP-LLM clients parse: ErrorDetailsPB in grpc-status-details-bin."""
    details = pb.ErrorDetailsPB(error_code=error_code, error_message=message).SerializeToString()
    return ((ERROR_DETAILS_TRAILER, details),)


def role_addr(role: int, ip: str, grpc_port: int, http_port: int) -> pb.RoleAddrPB:
    """A RoleAddrPB with the enum and the string both written, as RTP-LLM writers do."""
    out = pb.RoleAddrPB(ip=ip, grpc_port=grpc_port, http_port=http_port, role_str=pb.RoleAddrPB.RoleType.Name(role))
    out.role = role  # type: ignore[assignment]  # enum fields take their int values
    return out


def is_final(outputs: pb.GenerateOutputsPB) -> bool:
    """A message ends the request when `finished` is non-empty and all true (model_rpc_client.py)."""
    finished = outputs.flatten_output.finished
    return len(finished) > 0 and all(finished)
