from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RequestStatePB(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REQUEST_STATE_UNSPECIFIED: _ClassVar[RequestStatePB]
    REQUEST_STATE_QUEUED: _ClassVar[RequestStatePB]
    REQUEST_STATE_DISPATCHING: _ClassVar[RequestStatePB]
    REQUEST_STATE_ACKNOWLEDGED: _ClassVar[RequestStatePB]
    REQUEST_STATE_CANCEL_REQUESTED: _ClassVar[RequestStatePB]
    REQUEST_STATE_CANCELLED: _ClassVar[RequestStatePB]
    REQUEST_STATE_TIMED_OUT: _ClassVar[RequestStatePB]
    REQUEST_STATE_FAILED: _ClassVar[RequestStatePB]
    REQUEST_STATE_COMPLETED: _ClassVar[RequestStatePB]

class CancelReasonPB(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CANCEL_REASON_UNSPECIFIED: _ClassVar[CancelReasonPB]
    CANCEL_REASON_CLIENT_CANCELLED: _ClassVar[CancelReasonPB]
    CANCEL_REASON_DEADLINE_EXCEEDED: _ClassVar[CancelReasonPB]

class ScheduleFailureReasonPB(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCHEDULE_FAILURE_REASON_UNSPECIFIED: _ClassVar[ScheduleFailureReasonPB]
    HIGHER_PRIORITY_AHEAD: _ClassVar[ScheduleFailureReasonPB]
    SAME_PRIORITY_AHEAD: _ClassVar[ScheduleFailureReasonPB]
    RESOURCE_EXHAUSTED: _ClassVar[ScheduleFailureReasonPB]
REQUEST_STATE_UNSPECIFIED: RequestStatePB
REQUEST_STATE_QUEUED: RequestStatePB
REQUEST_STATE_DISPATCHING: RequestStatePB
REQUEST_STATE_ACKNOWLEDGED: RequestStatePB
REQUEST_STATE_CANCEL_REQUESTED: RequestStatePB
REQUEST_STATE_CANCELLED: RequestStatePB
REQUEST_STATE_TIMED_OUT: RequestStatePB
REQUEST_STATE_FAILED: RequestStatePB
REQUEST_STATE_COMPLETED: RequestStatePB
CANCEL_REASON_UNSPECIFIED: CancelReasonPB
CANCEL_REASON_CLIENT_CANCELLED: CancelReasonPB
CANCEL_REASON_DEADLINE_EXCEEDED: CancelReasonPB
SCHEDULE_FAILURE_REASON_UNSPECIFIED: ScheduleFailureReasonPB
HIGHER_PRIORITY_AHEAD: ScheduleFailureReasonPB
SAME_PRIORITY_AHEAD: ScheduleFailureReasonPB
RESOURCE_EXHAUSTED: ScheduleFailureReasonPB

class FlexlbScheduleRequestPB(_message.Message):
    __slots__ = ("request_id", "generate_input", "block_cache_keys", "seq_len", "generate_timeout", "request_time_ms", "max_new_tokens", "num_beams", "force_disable_sp_run", "model", "api_key", "cache_key_block_size", "priority", "forward_hop")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATE_INPUT_FIELD_NUMBER: _ClassVar[int]
    BLOCK_CACHE_KEYS_FIELD_NUMBER: _ClassVar[int]
    SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    GENERATE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_BEAMS_FIELD_NUMBER: _ClassVar[int]
    FORCE_DISABLE_SP_RUN_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    CACHE_KEY_BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    FORWARD_HOP_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    generate_input: bytes
    block_cache_keys: _containers.RepeatedScalarFieldContainer[int]
    seq_len: int
    generate_timeout: int
    request_time_ms: int
    max_new_tokens: int
    num_beams: int
    force_disable_sp_run: bool
    model: str
    api_key: str
    cache_key_block_size: int
    priority: int
    forward_hop: int
    def __init__(self, request_id: _Optional[int] = ..., generate_input: _Optional[bytes] = ..., block_cache_keys: _Optional[_Iterable[int]] = ..., seq_len: _Optional[int] = ..., generate_timeout: _Optional[int] = ..., request_time_ms: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., num_beams: _Optional[int] = ..., force_disable_sp_run: _Optional[bool] = ..., model: _Optional[str] = ..., api_key: _Optional[str] = ..., cache_key_block_size: _Optional[int] = ..., priority: _Optional[int] = ..., forward_hop: _Optional[int] = ...) -> None: ...

class FlexlbScheduleResponsePB(_message.Message):
    __slots__ = ("success", "code", "error_message", "server_status", "real_master_host", "queue_length", "enqueued_by_master", "lifecycle", "admission_reject_reason")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SERVER_STATUS_FIELD_NUMBER: _ClassVar[int]
    REAL_MASTER_HOST_FIELD_NUMBER: _ClassVar[int]
    QUEUE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    ENQUEUED_BY_MASTER_FIELD_NUMBER: _ClassVar[int]
    LIFECYCLE_FIELD_NUMBER: _ClassVar[int]
    ADMISSION_REJECT_REASON_FIELD_NUMBER: _ClassVar[int]
    success: bool
    code: int
    error_message: str
    server_status: _containers.RepeatedCompositeFieldContainer[FlexlbServerStatusPB]
    real_master_host: str
    queue_length: int
    enqueued_by_master: bool
    lifecycle: RequestLifecyclePB
    admission_reject_reason: ScheduleFailureReasonPB
    def __init__(self, success: _Optional[bool] = ..., code: _Optional[int] = ..., error_message: _Optional[str] = ..., server_status: _Optional[_Iterable[_Union[FlexlbServerStatusPB, _Mapping]]] = ..., real_master_host: _Optional[str] = ..., queue_length: _Optional[int] = ..., enqueued_by_master: _Optional[bool] = ..., lifecycle: _Optional[_Union[RequestLifecyclePB, _Mapping]] = ..., admission_reject_reason: _Optional[_Union[ScheduleFailureReasonPB, str]] = ...) -> None: ...

class FlexlbServerStatusPB(_message.Message):
    __slots__ = ("role", "server_ip", "http_port", "grpc_port")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SERVER_IP_FIELD_NUMBER: _ClassVar[int]
    HTTP_PORT_FIELD_NUMBER: _ClassVar[int]
    GRPC_PORT_FIELD_NUMBER: _ClassVar[int]
    role: str
    server_ip: str
    http_port: int
    grpc_port: int
    def __init__(self, role: _Optional[str] = ..., server_ip: _Optional[str] = ..., http_port: _Optional[int] = ..., grpc_port: _Optional[int] = ...) -> None: ...

class RequestLifecyclePB(_message.Message):
    __slots__ = ("request_id", "state", "batch_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    state: RequestStatePB
    batch_id: int
    def __init__(self, request_id: _Optional[int] = ..., state: _Optional[_Union[RequestStatePB, str]] = ..., batch_id: _Optional[int] = ...) -> None: ...

class FlexlbCancelRequestPB(_message.Message):
    __slots__ = ("request_id", "batch_id", "reason")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    batch_id: int
    reason: CancelReasonPB
    def __init__(self, request_id: _Optional[int] = ..., batch_id: _Optional[int] = ..., reason: _Optional[_Union[CancelReasonPB, str]] = ...) -> None: ...

class FlexlbCancelResponsePB(_message.Message):
    __slots__ = ("found", "lifecycle")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    LIFECYCLE_FIELD_NUMBER: _ClassVar[int]
    found: bool
    lifecycle: RequestLifecyclePB
    def __init__(self, found: _Optional[bool] = ..., lifecycle: _Optional[_Union[RequestLifecyclePB, _Mapping]] = ...) -> None: ...

class GetRequestStateRequestPB(_message.Message):
    __slots__ = ("request_id", "batch_id", "forward_hop")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    FORWARD_HOP_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    batch_id: int
    forward_hop: int
    def __init__(self, request_id: _Optional[int] = ..., batch_id: _Optional[int] = ..., forward_hop: _Optional[int] = ...) -> None: ...

class GetRequestStateResponsePB(_message.Message):
    __slots__ = ("found", "lifecycle")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    LIFECYCLE_FIELD_NUMBER: _ClassVar[int]
    found: bool
    lifecycle: RequestLifecyclePB
    def __init__(self, found: _Optional[bool] = ..., lifecycle: _Optional[_Union[RequestLifecyclePB, _Mapping]] = ...) -> None: ...
