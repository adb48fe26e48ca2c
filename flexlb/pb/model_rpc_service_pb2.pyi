from google.protobuf import wrappers_pb2 as _wrappers_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RoleTypePB(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_TYPE_PDFUSION: _ClassVar[RoleTypePB]
    ROLE_TYPE_PREFILL: _ClassVar[RoleTypePB]
    ROLE_TYPE_DECODE: _ClassVar[RoleTypePB]
    ROLE_TYPE_VIT: _ClassVar[RoleTypePB]
    ROLE_TYPE_FRONTEND: _ClassVar[RoleTypePB]

class ErrorCodePB(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NONE_ERROR: _ClassVar[ErrorCodePB]
    UNKNOWN_ERROR: _ClassVar[ErrorCodePB]
    CANCELLED: _ClassVar[ErrorCodePB]
    LOAD_CACHE_TIMEOUT: _ClassVar[ErrorCodePB]
    CACHE_STORE_LOAD_CONNECT_FAILED: _ClassVar[ErrorCodePB]
    CACHE_STORE_LOAD_SEND_REQUEST_FAILED: _ClassVar[ErrorCodePB]
    CACHE_STORE_CALL_PREFILL_TIMEOUT: _ClassVar[ErrorCodePB]
    CACHE_STORE_LOAD_RDMA_CONNECT_FAILED: _ClassVar[ErrorCodePB]
    CACHE_STORE_LOAD_RDMA_WRITE_FAILED: _ClassVar[ErrorCodePB]
    CACHE_STORE_LOAD_BUFFER_TIMEOUT: _ClassVar[ErrorCodePB]
    P2P_CONNECTOR_CALL_PREFILL_FAILED: _ClassVar[ErrorCodePB]
    P2P_CONNECTOR_LOAD_FROM_PREFILL_FAILED: _ClassVar[ErrorCodePB]
    P2P_CONNECTOR_SCHEDULER_CALL_WORKER_FAILED: _ClassVar[ErrorCodePB]
    P2P_CONNECTOR_SCHEDULER_STREAM_RESOURCE_FAILED: _ClassVar[ErrorCodePB]
    P2P_CONNECTOR_SCHEDULER_FILL_RESPONSE_FAILED: _ClassVar[ErrorCodePB]
    P2P_CONNECTOR_WORKER_ASYMMETRIC_TP_FAILED: _ClassVar[ErrorCodePB]
    P2P_CONNECTOR_WORKER_HANDLE_READ_TIMEOUT: _ClassVar[ErrorCodePB]
    P2P_CONNECTOR_WORKER_HANDLE_READ_CANCELLED: _ClassVar[ErrorCodePB]
    P2P_CONNECTOR_WORKER_HANDLE_READ_TRANSFER_FAILED: _ClassVar[ErrorCodePB]
    P2P_CONNECTOR_WORKER_READ_TRANSFER_RDMA_FAILED: _ClassVar[ErrorCodePB]
    P2P_CONNECTOR_WORKER_READ_BUFFER_MISMATCH: _ClassVar[ErrorCodePB]
    P2P_CONNECTOR_WORKER_HANDLE_READ_TRANSFER_TIMEOUT: _ClassVar[ErrorCodePB]
    P2P_CONNECTOR_WORKER_READ_FAILED: _ClassVar[ErrorCodePB]
    P2P_CONNECTOR_WORKER_READ_CANCELED: _ClassVar[ErrorCodePB]
    P2P_CONNECTOR_WORKER_READ_TIMEOUT: _ClassVar[ErrorCodePB]
    P2P_CONNECTOR_WORKER_READ_TRANSFER_NOT_DONE: _ClassVar[ErrorCodePB]

class RemoteStage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ALLOCATE: _ClassVar[RemoteStage]
    LOAD: _ClassVar[RemoteStage]
    GENERATE: _ClassVar[RemoteStage]

class TaskPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_PHASE_PENDING: _ClassVar[TaskPhase]
    TASK_PHASE_RECEIVED: _ClassVar[TaskPhase]
    TASK_PHASE_KV_ALLOCATED: _ClassVar[TaskPhase]
    TASK_PHASE_RUNNING: _ClassVar[TaskPhase]

class PriorityPreemptionProgressPB(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIORITY_PREEMPTION_NONE: _ClassVar[PriorityPreemptionProgressPB]
    PRIORITY_PREEMPTION_CANCELING: _ClassVar[PriorityPreemptionProgressPB]
    PRIORITY_PREEMPTION_CANCELED: _ClassVar[PriorityPreemptionProgressPB]

class CancelStatusPB(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CANCEL_STATUS_UNSPECIFIED: _ClassVar[CancelStatusPB]
    CANCEL_STATUS_ACCEPTED: _ClassVar[CancelStatusPB]
    CANCEL_STATUS_NOT_FOUND: _ClassVar[CancelStatusPB]
    CANCEL_STATUS_TOMBSTONED: _ClassVar[CancelStatusPB]

class P2PConnectorBroadcastType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    READ: _ClassVar[P2PConnectorBroadcastType]
    HANDLE_READ: _ClassVar[P2PConnectorBroadcastType]
    CANCEL_READ: _ClassVar[P2PConnectorBroadcastType]
    CANCEL_HANDLE_READ: _ClassVar[P2PConnectorBroadcastType]

class RemoteOpType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REMOTE_OPERATION_UNSPECIFIED: _ClassVar[RemoteOpType]
    REMOTE_OPERATION_READ: _ClassVar[RemoteOpType]
    REMOTE_OPERATION_WRITE: _ClassVar[RemoteOpType]
ROLE_TYPE_PDFUSION: RoleTypePB
ROLE_TYPE_PREFILL: RoleTypePB
ROLE_TYPE_DECODE: RoleTypePB
ROLE_TYPE_VIT: RoleTypePB
ROLE_TYPE_FRONTEND: RoleTypePB
NONE_ERROR: ErrorCodePB
UNKNOWN_ERROR: ErrorCodePB
CANCELLED: ErrorCodePB
LOAD_CACHE_TIMEOUT: ErrorCodePB
CACHE_STORE_LOAD_CONNECT_FAILED: ErrorCodePB
CACHE_STORE_LOAD_SEND_REQUEST_FAILED: ErrorCodePB
CACHE_STORE_CALL_PREFILL_TIMEOUT: ErrorCodePB
CACHE_STORE_LOAD_RDMA_CONNECT_FAILED: ErrorCodePB
CACHE_STORE_LOAD_RDMA_WRITE_FAILED: ErrorCodePB
CACHE_STORE_LOAD_BUFFER_TIMEOUT: ErrorCodePB
P2P_CONNECTOR_CALL_PREFILL_FAILED: ErrorCodePB
P2P_CONNECTOR_LOAD_FROM_PREFILL_FAILED: ErrorCodePB
P2P_CONNECTOR_SCHEDULER_CALL_WORKER_FAILED: ErrorCodePB
P2P_CONNECTOR_SCHEDULER_STREAM_RESOURCE_FAILED: ErrorCodePB
P2P_CONNECTOR_SCHEDULER_FILL_RESPONSE_FAILED: ErrorCodePB
P2P_CONNECTOR_WORKER_ASYMMETRIC_TP_FAILED: ErrorCodePB
P2P_CONNECTOR_WORKER_HANDLE_READ_TIMEOUT: ErrorCodePB
P2P_CONNECTOR_WORKER_HANDLE_READ_CANCELLED: ErrorCodePB
P2P_CONNECTOR_WORKER_HANDLE_READ_TRANSFER_FAILED: ErrorCodePB
P2P_CONNECTOR_WORKER_READ_TRANSFER_RDMA_FAILED: ErrorCodePB
P2P_CONNECTOR_WORKER_READ_BUFFER_MISMATCH: ErrorCodePB
P2P_CONNECTOR_WORKER_HANDLE_READ_TRANSFER_TIMEOUT: ErrorCodePB
P2P_CONNECTOR_WORKER_READ_FAILED: ErrorCodePB
P2P_CONNECTOR_WORKER_READ_CANCELED: ErrorCodePB
P2P_CONNECTOR_WORKER_READ_TIMEOUT: ErrorCodePB
P2P_CONNECTOR_WORKER_READ_TRANSFER_NOT_DONE: ErrorCodePB
ALLOCATE: RemoteStage
LOAD: RemoteStage
GENERATE: RemoteStage
TASK_PHASE_PENDING: TaskPhase
TASK_PHASE_RECEIVED: TaskPhase
TASK_PHASE_KV_ALLOCATED: TaskPhase
TASK_PHASE_RUNNING: TaskPhase
PRIORITY_PREEMPTION_NONE: PriorityPreemptionProgressPB
PRIORITY_PREEMPTION_CANCELING: PriorityPreemptionProgressPB
PRIORITY_PREEMPTION_CANCELED: PriorityPreemptionProgressPB
CANCEL_STATUS_UNSPECIFIED: CancelStatusPB
CANCEL_STATUS_ACCEPTED: CancelStatusPB
CANCEL_STATUS_NOT_FOUND: CancelStatusPB
CANCEL_STATUS_TOMBSTONED: CancelStatusPB
READ: P2PConnectorBroadcastType
HANDLE_READ: P2PConnectorBroadcastType
CANCEL_READ: P2PConnectorBroadcastType
CANCEL_HANDLE_READ: P2PConnectorBroadcastType
REMOTE_OPERATION_UNSPECIFIED: RemoteOpType
REMOTE_OPERATION_READ: RemoteOpType
REMOTE_OPERATION_WRITE: RemoteOpType

class GenerateInputPB(_message.Message):
    __slots__ = ("request_id", "token_ids", "multimodal_inputs", "generate_config", "client_id", "start_time", "group_size", "group_id", "request_info", "priority")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    MULTIMODAL_INPUTS_FIELD_NUMBER: _ClassVar[int]
    GENERATE_CONFIG_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_INFO_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    multimodal_inputs: _containers.RepeatedCompositeFieldContainer[MultimodalInputPB]
    generate_config: GenerateConfigPB
    client_id: str
    start_time: int
    group_size: int
    group_id: _wrappers_pb2.Int64Value
    request_info: RequestInfoPB
    priority: int
    def __init__(self, request_id: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., multimodal_inputs: _Optional[_Iterable[_Union[MultimodalInputPB, _Mapping]]] = ..., generate_config: _Optional[_Union[GenerateConfigPB, _Mapping]] = ..., client_id: _Optional[str] = ..., start_time: _Optional[int] = ..., group_size: _Optional[int] = ..., group_id: _Optional[_Union[_wrappers_pb2.Int64Value, _Mapping]] = ..., request_info: _Optional[_Union[RequestInfoPB, _Mapping]] = ..., priority: _Optional[int] = ...) -> None: ...

class GenerateConfigPB(_message.Message):
    __slots__ = ("max_new_tokens", "num_beams", "num_return_sequences", "min_new_tokens", "top_k", "top_p", "temperature", "repetition_penalty", "no_repeat_ngram_size", "random_seed", "top_p_decay", "top_p_min", "top_p_reset_ids", "task_id", "calculate_loss", "return_incremental", "return_hidden_states", "return_logits", "is_streaming", "timeout_ms", "stop_words_list", "select_tokens_id", "adapter_name", "sp_edit", "sp_advice_prompt_token_ids", "force_disable_sp_run", "return_all_probs", "sp_input_lookup", "can_use_pd_separation", "return_softmax_probs", "return_cum_log_probs", "in_think_mode", "max_thinking_tokens", "end_think_token_ids", "gen_timeline", "global_request_id", "force_sp_accept", "hidden_states_cut_dim", "normalized_hidden_states", "profile_step", "role_addrs", "ignore_eos", "presence_penalty", "frequency_penalty", "do_sample", "reuse_cache", "variable_num_beams", "trace_id", "return_all_hidden_states", "enable_memory_cache", "enable_device_cache", "enable_remote_cache", "unique_key", "group_timeout", "profile_trace_name", "combo_token_size", "banned_combo_token_ids", "return_all_probs_mode", "enable_cross_sequence_ban", "cross_seq_diverge_start_combo", "return_prompt_logits", "prompt_logits_top_k", "prompt_logits_start", "prompt_logits_end", "return_target_logprob", "begin_think_token_ids", "json_schema", "regex", "ebnf", "structural_tag", "thinking_mode")
    class ThinkingModePB(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        THINKING_MODE_UNSPECIFIED: _ClassVar[GenerateConfigPB.ThinkingModePB]
        THINKING_MODE_DISABLED: _ClassVar[GenerateConfigPB.ThinkingModePB]
        THINKING_MODE_ADAPTIVE: _ClassVar[GenerateConfigPB.ThinkingModePB]
        THINKING_MODE_ENABLED: _ClassVar[GenerateConfigPB.ThinkingModePB]
    THINKING_MODE_UNSPECIFIED: GenerateConfigPB.ThinkingModePB
    THINKING_MODE_DISABLED: GenerateConfigPB.ThinkingModePB
    THINKING_MODE_ADAPTIVE: GenerateConfigPB.ThinkingModePB
    THINKING_MODE_ENABLED: GenerateConfigPB.ThinkingModePB
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_BEAMS_FIELD_NUMBER: _ClassVar[int]
    NUM_RETURN_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    MIN_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    REPETITION_PENALTY_FIELD_NUMBER: _ClassVar[int]
    NO_REPEAT_NGRAM_SIZE_FIELD_NUMBER: _ClassVar[int]
    RANDOM_SEED_FIELD_NUMBER: _ClassVar[int]
    TOP_P_DECAY_FIELD_NUMBER: _ClassVar[int]
    TOP_P_MIN_FIELD_NUMBER: _ClassVar[int]
    TOP_P_RESET_IDS_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    CALCULATE_LOSS_FIELD_NUMBER: _ClassVar[int]
    RETURN_INCREMENTAL_FIELD_NUMBER: _ClassVar[int]
    RETURN_HIDDEN_STATES_FIELD_NUMBER: _ClassVar[int]
    RETURN_LOGITS_FIELD_NUMBER: _ClassVar[int]
    IS_STREAMING_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    STOP_WORDS_LIST_FIELD_NUMBER: _ClassVar[int]
    SELECT_TOKENS_ID_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_NAME_FIELD_NUMBER: _ClassVar[int]
    SP_EDIT_FIELD_NUMBER: _ClassVar[int]
    SP_ADVICE_PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    FORCE_DISABLE_SP_RUN_FIELD_NUMBER: _ClassVar[int]
    RETURN_ALL_PROBS_FIELD_NUMBER: _ClassVar[int]
    SP_INPUT_LOOKUP_FIELD_NUMBER: _ClassVar[int]
    CAN_USE_PD_SEPARATION_FIELD_NUMBER: _ClassVar[int]
    RETURN_SOFTMAX_PROBS_FIELD_NUMBER: _ClassVar[int]
    RETURN_CUM_LOG_PROBS_FIELD_NUMBER: _ClassVar[int]
    IN_THINK_MODE_FIELD_NUMBER: _ClassVar[int]
    MAX_THINKING_TOKENS_FIELD_NUMBER: _ClassVar[int]
    END_THINK_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    GEN_TIMELINE_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_SP_ACCEPT_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_STATES_CUT_DIM_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_HIDDEN_STATES_FIELD_NUMBER: _ClassVar[int]
    PROFILE_STEP_FIELD_NUMBER: _ClassVar[int]
    ROLE_ADDRS_FIELD_NUMBER: _ClassVar[int]
    IGNORE_EOS_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_PENALTY_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_PENALTY_FIELD_NUMBER: _ClassVar[int]
    DO_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    REUSE_CACHE_FIELD_NUMBER: _ClassVar[int]
    VARIABLE_NUM_BEAMS_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    RETURN_ALL_HIDDEN_STATES_FIELD_NUMBER: _ClassVar[int]
    ENABLE_MEMORY_CACHE_FIELD_NUMBER: _ClassVar[int]
    ENABLE_DEVICE_CACHE_FIELD_NUMBER: _ClassVar[int]
    ENABLE_REMOTE_CACHE_FIELD_NUMBER: _ClassVar[int]
    UNIQUE_KEY_FIELD_NUMBER: _ClassVar[int]
    GROUP_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    PROFILE_TRACE_NAME_FIELD_NUMBER: _ClassVar[int]
    COMBO_TOKEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    BANNED_COMBO_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    RETURN_ALL_PROBS_MODE_FIELD_NUMBER: _ClassVar[int]
    ENABLE_CROSS_SEQUENCE_BAN_FIELD_NUMBER: _ClassVar[int]
    CROSS_SEQ_DIVERGE_START_COMBO_FIELD_NUMBER: _ClassVar[int]
    RETURN_PROMPT_LOGITS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_LOGITS_TOP_K_FIELD_NUMBER: _ClassVar[int]
    PROMPT_LOGITS_START_FIELD_NUMBER: _ClassVar[int]
    PROMPT_LOGITS_END_FIELD_NUMBER: _ClassVar[int]
    RETURN_TARGET_LOGPROB_FIELD_NUMBER: _ClassVar[int]
    BEGIN_THINK_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    JSON_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    REGEX_FIELD_NUMBER: _ClassVar[int]
    EBNF_FIELD_NUMBER: _ClassVar[int]
    STRUCTURAL_TAG_FIELD_NUMBER: _ClassVar[int]
    THINKING_MODE_FIELD_NUMBER: _ClassVar[int]
    max_new_tokens: int
    num_beams: int
    num_return_sequences: int
    min_new_tokens: int
    top_k: int
    top_p: float
    temperature: float
    repetition_penalty: float
    no_repeat_ngram_size: _wrappers_pb2.Int32Value
    random_seed: _wrappers_pb2.Int64Value
    top_p_decay: _wrappers_pb2.FloatValue
    top_p_min: _wrappers_pb2.FloatValue
    top_p_reset_ids: _wrappers_pb2.Int32Value
    task_id: _wrappers_pb2.StringValue
    calculate_loss: int
    return_incremental: bool
    return_hidden_states: bool
    return_logits: bool
    is_streaming: bool
    timeout_ms: int
    stop_words_list: IntMatrix
    select_tokens_id: _containers.RepeatedScalarFieldContainer[int]
    adapter_name: _wrappers_pb2.StringValue
    sp_edit: bool
    sp_advice_prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    force_disable_sp_run: bool
    return_all_probs: bool
    sp_input_lookup: bool
    can_use_pd_separation: bool
    return_softmax_probs: bool
    return_cum_log_probs: bool
    in_think_mode: bool
    max_thinking_tokens: int
    end_think_token_ids: _containers.RepeatedScalarFieldContainer[int]
    gen_timeline: bool
    global_request_id: int
    force_sp_accept: bool
    hidden_states_cut_dim: int
    normalized_hidden_states: bool
    profile_step: int
    role_addrs: _containers.RepeatedCompositeFieldContainer[RoleAddrPB]
    ignore_eos: bool
    presence_penalty: float
    frequency_penalty: float
    do_sample: bool
    reuse_cache: bool
    variable_num_beams: _containers.RepeatedScalarFieldContainer[int]
    trace_id: _wrappers_pb2.StringValue
    return_all_hidden_states: bool
    enable_memory_cache: bool
    enable_device_cache: bool
    enable_remote_cache: bool
    unique_key: str
    group_timeout: _wrappers_pb2.Int32Value
    profile_trace_name: str
    combo_token_size: int
    banned_combo_token_ids: IntMatrix
    return_all_probs_mode: int
    enable_cross_sequence_ban: bool
    cross_seq_diverge_start_combo: int
    return_prompt_logits: bool
    prompt_logits_top_k: int
    prompt_logits_start: int
    prompt_logits_end: int
    return_target_logprob: bool
    begin_think_token_ids: _containers.RepeatedScalarFieldContainer[int]
    json_schema: _wrappers_pb2.StringValue
    regex: _wrappers_pb2.StringValue
    ebnf: _wrappers_pb2.StringValue
    structural_tag: _wrappers_pb2.StringValue
    thinking_mode: GenerateConfigPB.ThinkingModePB
    def __init__(self, max_new_tokens: _Optional[int] = ..., num_beams: _Optional[int] = ..., num_return_sequences: _Optional[int] = ..., min_new_tokens: _Optional[int] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ..., temperature: _Optional[float] = ..., repetition_penalty: _Optional[float] = ..., no_repeat_ngram_size: _Optional[_Union[_wrappers_pb2.Int32Value, _Mapping]] = ..., random_seed: _Optional[_Union[_wrappers_pb2.Int64Value, _Mapping]] = ..., top_p_decay: _Optional[_Union[_wrappers_pb2.FloatValue, _Mapping]] = ..., top_p_min: _Optional[_Union[_wrappers_pb2.FloatValue, _Mapping]] = ..., top_p_reset_ids: _Optional[_Union[_wrappers_pb2.Int32Value, _Mapping]] = ..., task_id: _Optional[_Union[_wrappers_pb2.StringValue, _Mapping]] = ..., calculate_loss: _Optional[int] = ..., return_incremental: _Optional[bool] = ..., return_hidden_states: _Optional[bool] = ..., return_logits: _Optional[bool] = ..., is_streaming: _Optional[bool] = ..., timeout_ms: _Optional[int] = ..., stop_words_list: _Optional[_Union[IntMatrix, _Mapping]] = ..., select_tokens_id: _Optional[_Iterable[int]] = ..., adapter_name: _Optional[_Union[_wrappers_pb2.StringValue, _Mapping]] = ..., sp_edit: _Optional[bool] = ..., sp_advice_prompt_token_ids: _Optional[_Iterable[int]] = ..., force_disable_sp_run: _Optional[bool] = ..., return_all_probs: _Optional[bool] = ..., sp_input_lookup: _Optional[bool] = ..., can_use_pd_separation: _Optional[bool] = ..., return_softmax_probs: _Optional[bool] = ..., return_cum_log_probs: _Optional[bool] = ..., in_think_mode: _Optional[bool] = ..., max_thinking_tokens: _Optional[int] = ..., end_think_token_ids: _Optional[_Iterable[int]] = ..., gen_timeline: _Optional[bool] = ..., global_request_id: _Optional[int] = ..., force_sp_accept: _Optional[bool] = ..., hidden_states_cut_dim: _Optional[int] = ..., normalized_hidden_states: _Optional[bool] = ..., profile_step: _Optional[int] = ..., role_addrs: _Optional[_Iterable[_Union[RoleAddrPB, _Mapping]]] = ..., ignore_eos: _Optional[bool] = ..., presence_penalty: _Optional[float] = ..., frequency_penalty: _Optional[float] = ..., do_sample: _Optional[bool] = ..., reuse_cache: _Optional[bool] = ..., variable_num_beams: _Optional[_Iterable[int]] = ..., trace_id: _Optional[_Union[_wrappers_pb2.StringValue, _Mapping]] = ..., return_all_hidden_states: _Optional[bool] = ..., enable_memory_cache: _Optional[bool] = ..., enable_device_cache: _Optional[bool] = ..., enable_remote_cache: _Optional[bool] = ..., unique_key: _Optional[str] = ..., group_timeout: _Optional[_Union[_wrappers_pb2.Int32Value, _Mapping]] = ..., profile_trace_name: _Optional[str] = ..., combo_token_size: _Optional[int] = ..., banned_combo_token_ids: _Optional[_Union[IntMatrix, _Mapping]] = ..., return_all_probs_mode: _Optional[int] = ..., enable_cross_sequence_ban: _Optional[bool] = ..., cross_seq_diverge_start_combo: _Optional[int] = ..., return_prompt_logits: _Optional[bool] = ..., prompt_logits_top_k: _Optional[int] = ..., prompt_logits_start: _Optional[int] = ..., prompt_logits_end: _Optional[int] = ..., return_target_logprob: _Optional[bool] = ..., begin_think_token_ids: _Optional[_Iterable[int]] = ..., json_schema: _Optional[_Union[_wrappers_pb2.StringValue, _Mapping]] = ..., regex: _Optional[_Union[_wrappers_pb2.StringValue, _Mapping]] = ..., ebnf: _Optional[_Union[_wrappers_pb2.StringValue, _Mapping]] = ..., structural_tag: _Optional[_Union[_wrappers_pb2.StringValue, _Mapping]] = ..., thinking_mode: _Optional[_Union[GenerateConfigPB.ThinkingModePB, str]] = ...) -> None: ...

class RoleAddrPB(_message.Message):
    __slots__ = ("role", "ip", "http_port", "grpc_port", "role_str")
    class RoleType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        PDFUSION: _ClassVar[RoleAddrPB.RoleType]
        PREFILL: _ClassVar[RoleAddrPB.RoleType]
        DECODE: _ClassVar[RoleAddrPB.RoleType]
        VIT: _ClassVar[RoleAddrPB.RoleType]
        FRONTEND: _ClassVar[RoleAddrPB.RoleType]
    PDFUSION: RoleAddrPB.RoleType
    PREFILL: RoleAddrPB.RoleType
    DECODE: RoleAddrPB.RoleType
    VIT: RoleAddrPB.RoleType
    FRONTEND: RoleAddrPB.RoleType
    ROLE_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    HTTP_PORT_FIELD_NUMBER: _ClassVar[int]
    GRPC_PORT_FIELD_NUMBER: _ClassVar[int]
    ROLE_STR_FIELD_NUMBER: _ClassVar[int]
    role: RoleAddrPB.RoleType
    ip: str
    http_port: int
    grpc_port: int
    role_str: str
    def __init__(self, role: _Optional[_Union[RoleAddrPB.RoleType, str]] = ..., ip: _Optional[str] = ..., http_port: _Optional[int] = ..., grpc_port: _Optional[int] = ..., role_str: _Optional[str] = ...) -> None: ...

class RequestInfoPB(_message.Message):
    __slots__ = ("frontend_ip", "dash_ip", "trace_id", "request_id", "source_role")
    FRONTEND_IP_FIELD_NUMBER: _ClassVar[int]
    DASH_IP_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ROLE_FIELD_NUMBER: _ClassVar[int]
    frontend_ip: str
    dash_ip: str
    trace_id: str
    request_id: str
    source_role: str
    def __init__(self, frontend_ip: _Optional[str] = ..., dash_ip: _Optional[str] = ..., trace_id: _Optional[str] = ..., request_id: _Optional[str] = ..., source_role: _Optional[str] = ...) -> None: ...

class IntMatrix(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[IntVector]
    def __init__(self, rows: _Optional[_Iterable[_Union[IntVector, _Mapping]]] = ...) -> None: ...

class IntVector(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

class TensorPB(_message.Message):
    __slots__ = ("data_type", "shape", "fp32_data", "int32_data", "fp16_data", "bf16_data")
    class DataType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        FP32: _ClassVar[TensorPB.DataType]
        INT32: _ClassVar[TensorPB.DataType]
        FP16: _ClassVar[TensorPB.DataType]
        BF16: _ClassVar[TensorPB.DataType]
    FP32: TensorPB.DataType
    INT32: TensorPB.DataType
    FP16: TensorPB.DataType
    BF16: TensorPB.DataType
    DATA_TYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    FP32_DATA_FIELD_NUMBER: _ClassVar[int]
    INT32_DATA_FIELD_NUMBER: _ClassVar[int]
    FP16_DATA_FIELD_NUMBER: _ClassVar[int]
    BF16_DATA_FIELD_NUMBER: _ClassVar[int]
    data_type: TensorPB.DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    fp32_data: bytes
    int32_data: bytes
    fp16_data: bytes
    bf16_data: bytes
    def __init__(self, data_type: _Optional[_Union[TensorPB.DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., fp32_data: _Optional[bytes] = ..., int32_data: _Optional[bytes] = ..., fp16_data: _Optional[bytes] = ..., bf16_data: _Optional[bytes] = ...) -> None: ...

class MultimodalInputPB(_message.Message):
    __slots__ = ("multimodal_url", "multimodal_type", "multimodal_tensor", "mm_preprocess_config")
    MULTIMODAL_URL_FIELD_NUMBER: _ClassVar[int]
    MULTIMODAL_TYPE_FIELD_NUMBER: _ClassVar[int]
    MULTIMODAL_TENSOR_FIELD_NUMBER: _ClassVar[int]
    MM_PREPROCESS_CONFIG_FIELD_NUMBER: _ClassVar[int]
    multimodal_url: str
    multimodal_type: int
    multimodal_tensor: TensorPB
    mm_preprocess_config: MMPreprocessConfigPB
    def __init__(self, multimodal_url: _Optional[str] = ..., multimodal_type: _Optional[int] = ..., multimodal_tensor: _Optional[_Union[TensorPB, _Mapping]] = ..., mm_preprocess_config: _Optional[_Union[MMPreprocessConfigPB, _Mapping]] = ...) -> None: ...

class MMPreprocessConfigPB(_message.Message):
    __slots__ = ("width", "height", "min_pixels", "max_pixels", "fps", "min_frames", "max_frames", "crop_positions", "mm_timeout_ms")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    MIN_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_PIXELS_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    MIN_FRAMES_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAMES_FIELD_NUMBER: _ClassVar[int]
    CROP_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    MM_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    min_pixels: int
    max_pixels: int
    fps: int
    min_frames: int
    max_frames: int
    crop_positions: _containers.RepeatedScalarFieldContainer[float]
    mm_timeout_ms: int
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., min_pixels: _Optional[int] = ..., max_pixels: _Optional[int] = ..., fps: _Optional[int] = ..., min_frames: _Optional[int] = ..., max_frames: _Optional[int] = ..., crop_positions: _Optional[_Iterable[float]] = ..., mm_timeout_ms: _Optional[int] = ...) -> None: ...

class GenerateOutputsPB(_message.Message):
    __slots__ = ("request_id", "flatten_output", "receive_load_time", "start_load_time", "receive_generate_time", "load_done_time", "begin_compute_time", "compute_done_time", "error_info")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FLATTEN_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    RECEIVE_LOAD_TIME_FIELD_NUMBER: _ClassVar[int]
    START_LOAD_TIME_FIELD_NUMBER: _ClassVar[int]
    RECEIVE_GENERATE_TIME_FIELD_NUMBER: _ClassVar[int]
    LOAD_DONE_TIME_FIELD_NUMBER: _ClassVar[int]
    BEGIN_COMPUTE_TIME_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_DONE_TIME_FIELD_NUMBER: _ClassVar[int]
    ERROR_INFO_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    flatten_output: FlattenOutputPB
    receive_load_time: int
    start_load_time: int
    receive_generate_time: int
    load_done_time: int
    begin_compute_time: int
    compute_done_time: int
    error_info: RpcErrorPB
    def __init__(self, request_id: _Optional[int] = ..., flatten_output: _Optional[_Union[FlattenOutputPB, _Mapping]] = ..., receive_load_time: _Optional[int] = ..., start_load_time: _Optional[int] = ..., receive_generate_time: _Optional[int] = ..., load_done_time: _Optional[int] = ..., begin_compute_time: _Optional[int] = ..., compute_done_time: _Optional[int] = ..., error_info: _Optional[_Union[RpcErrorPB, _Mapping]] = ...) -> None: ...

class FlattenOutputPB(_message.Message):
    __slots__ = ("finished", "aux_info", "output_ids", "hidden_states", "loss", "logits", "all_probs", "all_hidden_states", "prompt_logits")
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    AUX_INFO_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_IDS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_STATES_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    ALL_PROBS_FIELD_NUMBER: _ClassVar[int]
    ALL_HIDDEN_STATES_FIELD_NUMBER: _ClassVar[int]
    PROMPT_LOGITS_FIELD_NUMBER: _ClassVar[int]
    finished: _containers.RepeatedScalarFieldContainer[bool]
    aux_info: _containers.RepeatedCompositeFieldContainer[AuxInfoPB]
    output_ids: TensorPB
    hidden_states: TensorPB
    loss: TensorPB
    logits: TensorPB
    all_probs: TensorPB
    all_hidden_states: TensorPB
    prompt_logits: PromptLogitsOutputPB
    def __init__(self, finished: _Optional[_Iterable[bool]] = ..., aux_info: _Optional[_Iterable[_Union[AuxInfoPB, _Mapping]]] = ..., output_ids: _Optional[_Union[TensorPB, _Mapping]] = ..., hidden_states: _Optional[_Union[TensorPB, _Mapping]] = ..., loss: _Optional[_Union[TensorPB, _Mapping]] = ..., logits: _Optional[_Union[TensorPB, _Mapping]] = ..., all_probs: _Optional[_Union[TensorPB, _Mapping]] = ..., all_hidden_states: _Optional[_Union[TensorPB, _Mapping]] = ..., prompt_logits: _Optional[_Union[PromptLogitsOutputPB, _Mapping]] = ...) -> None: ...

class AuxInfoPB(_message.Message):
    __slots__ = ("cost_time_us", "iter_count", "input_len", "total_reuse_len", "prefix_len", "output_len", "cum_log_probs", "step_output_len", "pd_sep", "first_token_cost_time_us", "softmax_probs", "wait_time_us", "local_reuse_len", "remote_reuse_len", "prefill_total_reuse_len", "prefill_local_reuse_len", "prefill_remote_reuse_len", "decode_total_reuse_len", "decode_local_reuse_len", "decode_remote_reuse_len", "aux_string", "memory_reuse_len", "prefill_memory_reuse_len", "decode_memory_reuse_len", "multimodal_lengths", "speculative_draft_rounds", "speculative_accepted_tokens_per_pos")
    class MultimodalLengthsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    COST_TIME_US_FIELD_NUMBER: _ClassVar[int]
    ITER_COUNT_FIELD_NUMBER: _ClassVar[int]
    INPUT_LEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_REUSE_LEN_FIELD_NUMBER: _ClassVar[int]
    PREFIX_LEN_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_LEN_FIELD_NUMBER: _ClassVar[int]
    CUM_LOG_PROBS_FIELD_NUMBER: _ClassVar[int]
    STEP_OUTPUT_LEN_FIELD_NUMBER: _ClassVar[int]
    PD_SEP_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_COST_TIME_US_FIELD_NUMBER: _ClassVar[int]
    SOFTMAX_PROBS_FIELD_NUMBER: _ClassVar[int]
    WAIT_TIME_US_FIELD_NUMBER: _ClassVar[int]
    LOCAL_REUSE_LEN_FIELD_NUMBER: _ClassVar[int]
    REMOTE_REUSE_LEN_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TOTAL_REUSE_LEN_FIELD_NUMBER: _ClassVar[int]
    PREFILL_LOCAL_REUSE_LEN_FIELD_NUMBER: _ClassVar[int]
    PREFILL_REMOTE_REUSE_LEN_FIELD_NUMBER: _ClassVar[int]
    DECODE_TOTAL_REUSE_LEN_FIELD_NUMBER: _ClassVar[int]
    DECODE_LOCAL_REUSE_LEN_FIELD_NUMBER: _ClassVar[int]
    DECODE_REMOTE_REUSE_LEN_FIELD_NUMBER: _ClassVar[int]
    AUX_STRING_FIELD_NUMBER: _ClassVar[int]
    MEMORY_REUSE_LEN_FIELD_NUMBER: _ClassVar[int]
    PREFILL_MEMORY_REUSE_LEN_FIELD_NUMBER: _ClassVar[int]
    DECODE_MEMORY_REUSE_LEN_FIELD_NUMBER: _ClassVar[int]
    MULTIMODAL_LENGTHS_FIELD_NUMBER: _ClassVar[int]
    SPECULATIVE_DRAFT_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    SPECULATIVE_ACCEPTED_TOKENS_PER_POS_FIELD_NUMBER: _ClassVar[int]
    cost_time_us: int
    iter_count: int
    input_len: int
    total_reuse_len: int
    prefix_len: int
    output_len: int
    cum_log_probs: TensorPB
    step_output_len: int
    pd_sep: bool
    first_token_cost_time_us: int
    softmax_probs: TensorPB
    wait_time_us: int
    local_reuse_len: int
    remote_reuse_len: int
    prefill_total_reuse_len: int
    prefill_local_reuse_len: int
    prefill_remote_reuse_len: int
    decode_total_reuse_len: int
    decode_local_reuse_len: int
    decode_remote_reuse_len: int
    aux_string: str
    memory_reuse_len: int
    prefill_memory_reuse_len: int
    decode_memory_reuse_len: int
    multimodal_lengths: _containers.ScalarMap[int, int]
    speculative_draft_rounds: int
    speculative_accepted_tokens_per_pos: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, cost_time_us: _Optional[int] = ..., iter_count: _Optional[int] = ..., input_len: _Optional[int] = ..., total_reuse_len: _Optional[int] = ..., prefix_len: _Optional[int] = ..., output_len: _Optional[int] = ..., cum_log_probs: _Optional[_Union[TensorPB, _Mapping]] = ..., step_output_len: _Optional[int] = ..., pd_sep: _Optional[bool] = ..., first_token_cost_time_us: _Optional[int] = ..., softmax_probs: _Optional[_Union[TensorPB, _Mapping]] = ..., wait_time_us: _Optional[int] = ..., local_reuse_len: _Optional[int] = ..., remote_reuse_len: _Optional[int] = ..., prefill_total_reuse_len: _Optional[int] = ..., prefill_local_reuse_len: _Optional[int] = ..., prefill_remote_reuse_len: _Optional[int] = ..., decode_total_reuse_len: _Optional[int] = ..., decode_local_reuse_len: _Optional[int] = ..., decode_remote_reuse_len: _Optional[int] = ..., aux_string: _Optional[str] = ..., memory_reuse_len: _Optional[int] = ..., prefill_memory_reuse_len: _Optional[int] = ..., decode_memory_reuse_len: _Optional[int] = ..., multimodal_lengths: _Optional[_Mapping[int, int]] = ..., speculative_draft_rounds: _Optional[int] = ..., speculative_accepted_tokens_per_pos: _Optional[_Iterable[int]] = ...) -> None: ...

class PromptLogitsOutputPB(_message.Message):
    __slots__ = ("topk_logprobs", "topk_token_ids", "target_logprobs", "start_pos", "end_pos")
    TOPK_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    TOPK_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TARGET_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    START_POS_FIELD_NUMBER: _ClassVar[int]
    END_POS_FIELD_NUMBER: _ClassVar[int]
    topk_logprobs: TensorPB
    topk_token_ids: TensorPB
    target_logprobs: TensorPB
    start_pos: int
    end_pos: int
    def __init__(self, topk_logprobs: _Optional[_Union[TensorPB, _Mapping]] = ..., topk_token_ids: _Optional[_Union[TensorPB, _Mapping]] = ..., target_logprobs: _Optional[_Union[TensorPB, _Mapping]] = ..., start_pos: _Optional[int] = ..., end_pos: _Optional[int] = ...) -> None: ...

class ErrorDetailsPB(_message.Message):
    __slots__ = ("error_code", "error_message")
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    error_code: int
    error_message: str
    def __init__(self, error_code: _Optional[int] = ..., error_message: _Optional[str] = ...) -> None: ...

class RpcErrorPB(_message.Message):
    __slots__ = ("error_code", "error_message")
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    error_code: ErrorCodePB
    error_message: str
    def __init__(self, error_code: _Optional[_Union[ErrorCodePB, str]] = ..., error_message: _Optional[str] = ...) -> None: ...

class EmptyPB(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusVersionPB(_message.Message):
    __slots__ = ("latest_cache_version", "latest_finished_version")
    LATEST_CACHE_VERSION_FIELD_NUMBER: _ClassVar[int]
    LATEST_FINISHED_VERSION_FIELD_NUMBER: _ClassVar[int]
    latest_cache_version: int
    latest_finished_version: int
    def __init__(self, latest_cache_version: _Optional[int] = ..., latest_finished_version: _Optional[int] = ...) -> None: ...

class WorkerStatusPB(_message.Message):
    __slots__ = ("role", "available_concurrency", "running_task_info", "finished_task_list", "waiting_query_len", "running_query_len", "step_latency_ms", "iterate_count", "dp_size", "tp_size", "status_version", "alive", "precision", "latest_finished_version", "dp_rank", "available_kv_cache", "total_kv_cache", "role_type", "max_seq_len", "max_batch_tokens_size")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    RUNNING_TASK_INFO_FIELD_NUMBER: _ClassVar[int]
    FINISHED_TASK_LIST_FIELD_NUMBER: _ClassVar[int]
    WAITING_QUERY_LEN_FIELD_NUMBER: _ClassVar[int]
    RUNNING_QUERY_LEN_FIELD_NUMBER: _ClassVar[int]
    STEP_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    ITERATE_COUNT_FIELD_NUMBER: _ClassVar[int]
    DP_SIZE_FIELD_NUMBER: _ClassVar[int]
    TP_SIZE_FIELD_NUMBER: _ClassVar[int]
    STATUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    LATEST_FINISHED_VERSION_FIELD_NUMBER: _ClassVar[int]
    DP_RANK_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_KV_CACHE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_KV_CACHE_FIELD_NUMBER: _ClassVar[int]
    ROLE_TYPE_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_TOKENS_SIZE_FIELD_NUMBER: _ClassVar[int]
    role: str
    available_concurrency: int
    running_task_info: _containers.RepeatedCompositeFieldContainer[TaskInfoPB]
    finished_task_list: _containers.RepeatedCompositeFieldContainer[TaskInfoPB]
    waiting_query_len: int
    running_query_len: int
    step_latency_ms: float
    iterate_count: int
    dp_size: int
    tp_size: int
    status_version: int
    alive: bool
    precision: str
    latest_finished_version: int
    dp_rank: int
    available_kv_cache: int
    total_kv_cache: int
    role_type: RoleTypePB
    max_seq_len: int
    max_batch_tokens_size: int
    def __init__(self, role: _Optional[str] = ..., available_concurrency: _Optional[int] = ..., running_task_info: _Optional[_Iterable[_Union[TaskInfoPB, _Mapping]]] = ..., finished_task_list: _Optional[_Iterable[_Union[TaskInfoPB, _Mapping]]] = ..., waiting_query_len: _Optional[int] = ..., running_query_len: _Optional[int] = ..., step_latency_ms: _Optional[float] = ..., iterate_count: _Optional[int] = ..., dp_size: _Optional[int] = ..., tp_size: _Optional[int] = ..., status_version: _Optional[int] = ..., alive: _Optional[bool] = ..., precision: _Optional[str] = ..., latest_finished_version: _Optional[int] = ..., dp_rank: _Optional[int] = ..., available_kv_cache: _Optional[int] = ..., total_kv_cache: _Optional[int] = ..., role_type: _Optional[_Union[RoleTypePB, str]] = ..., max_seq_len: _Optional[int] = ..., max_batch_tokens_size: _Optional[int] = ...) -> None: ...

class TaskInfoPB(_message.Message):
    __slots__ = ("request_id", "prefix_length", "input_length", "waiting_time_ms", "iterate_count", "end_time_ms", "dp_rank", "is_waiting", "error_info", "batch_id", "phase", "execution_time_ms", "priority_preemption_progress", "priority")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PREFIX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    INPUT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    WAITING_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    ITERATE_COUNT_FIELD_NUMBER: _ClassVar[int]
    END_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    DP_RANK_FIELD_NUMBER: _ClassVar[int]
    IS_WAITING_FIELD_NUMBER: _ClassVar[int]
    ERROR_INFO_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_PREEMPTION_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    prefix_length: int
    input_length: int
    waiting_time_ms: int
    iterate_count: int
    end_time_ms: int
    dp_rank: int
    is_waiting: bool
    error_info: ErrorDetailsPB
    batch_id: int
    phase: TaskPhase
    execution_time_ms: int
    priority_preemption_progress: PriorityPreemptionProgressPB
    priority: int
    def __init__(self, request_id: _Optional[int] = ..., prefix_length: _Optional[int] = ..., input_length: _Optional[int] = ..., waiting_time_ms: _Optional[int] = ..., iterate_count: _Optional[int] = ..., end_time_ms: _Optional[int] = ..., dp_rank: _Optional[int] = ..., is_waiting: _Optional[bool] = ..., error_info: _Optional[_Union[ErrorDetailsPB, _Mapping]] = ..., batch_id: _Optional[int] = ..., phase: _Optional[_Union[TaskPhase, str]] = ..., execution_time_ms: _Optional[int] = ..., priority_preemption_progress: _Optional[_Union[PriorityPreemptionProgressPB, str]] = ..., priority: _Optional[int] = ...) -> None: ...

class CacheVersionPB(_message.Message):
    __slots__ = ("latest_cache_version", "need_cache_keys")
    LATEST_CACHE_VERSION_FIELD_NUMBER: _ClassVar[int]
    NEED_CACHE_KEYS_FIELD_NUMBER: _ClassVar[int]
    latest_cache_version: int
    need_cache_keys: bool
    def __init__(self, latest_cache_version: _Optional[int] = ..., need_cache_keys: _Optional[bool] = ...) -> None: ...

class CacheStatusPB(_message.Message):
    __slots__ = ("available_kv_cache", "total_kv_cache", "block_size", "version", "cache_keys")
    class CacheKeysEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: bool
        def __init__(self, key: _Optional[int] = ..., value: _Optional[bool] = ...) -> None: ...
    AVAILABLE_KV_CACHE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_KV_CACHE_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CACHE_KEYS_FIELD_NUMBER: _ClassVar[int]
    available_kv_cache: int
    total_kv_cache: int
    block_size: int
    version: int
    cache_keys: _containers.ScalarMap[int, bool]
    def __init__(self, available_kv_cache: _Optional[int] = ..., total_kv_cache: _Optional[int] = ..., block_size: _Optional[int] = ..., version: _Optional[int] = ..., cache_keys: _Optional[_Mapping[int, bool]] = ...) -> None: ...

class CheckHealthResponsePB(_message.Message):
    __slots__ = ("health",)
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    health: str
    def __init__(self, health: _Optional[str] = ...) -> None: ...

class EnqueueBatchRequestPB(_message.Message):
    __slots__ = ("batch_id", "dp_slots", "fetch_attach_timeout_ms")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    DP_SLOTS_FIELD_NUMBER: _ClassVar[int]
    FETCH_ATTACH_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    dp_slots: _containers.RepeatedCompositeFieldContainer[EnqueueBatchDpSlotPB]
    fetch_attach_timeout_ms: int
    def __init__(self, batch_id: _Optional[int] = ..., dp_slots: _Optional[_Iterable[_Union[EnqueueBatchDpSlotPB, _Mapping]]] = ..., fetch_attach_timeout_ms: _Optional[int] = ...) -> None: ...

class EnqueueBatchDpSlotPB(_message.Message):
    __slots__ = ("dp_rank", "requests")
    DP_RANK_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    dp_rank: int
    requests: _containers.RepeatedCompositeFieldContainer[EnqueueBatchExternalInputPB]
    def __init__(self, dp_rank: _Optional[int] = ..., requests: _Optional[_Iterable[_Union[EnqueueBatchExternalInputPB, _Mapping]]] = ...) -> None: ...

class EnqueueBatchExternalInputPB(_message.Message):
    __slots__ = ("input",)
    INPUT_FIELD_NUMBER: _ClassVar[int]
    input: GenerateInputPB
    def __init__(self, input: _Optional[_Union[GenerateInputPB, _Mapping]] = ...) -> None: ...

class EnqueueGroupRequestPB(_message.Message):
    __slots__ = ("batch_id", "dp_rank", "requests", "fetch_attach_timeout_ms")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    DP_RANK_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    FETCH_ATTACH_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    dp_rank: int
    requests: _containers.RepeatedCompositeFieldContainer[EnqueueGroupInputPB]
    fetch_attach_timeout_ms: int
    def __init__(self, batch_id: _Optional[int] = ..., dp_rank: _Optional[int] = ..., requests: _Optional[_Iterable[_Union[EnqueueGroupInputPB, _Mapping]]] = ..., fetch_attach_timeout_ms: _Optional[int] = ...) -> None: ...

class EnqueueGroupInputPB(_message.Message):
    __slots__ = ("input",)
    INPUT_FIELD_NUMBER: _ClassVar[int]
    input: GenerateInputPB
    def __init__(self, input: _Optional[_Union[GenerateInputPB, _Mapping]] = ...) -> None: ...

class EnqueueBatchResponsePB(_message.Message):
    __slots__ = ("batch_id", "successes", "errors")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    SUCCESSES_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    successes: _containers.RepeatedCompositeFieldContainer[EnqueueBatchSuccessPB]
    errors: _containers.RepeatedCompositeFieldContainer[EnqueueBatchErrorPB]
    def __init__(self, batch_id: _Optional[int] = ..., successes: _Optional[_Iterable[_Union[EnqueueBatchSuccessPB, _Mapping]]] = ..., errors: _Optional[_Iterable[_Union[EnqueueBatchErrorPB, _Mapping]]] = ...) -> None: ...

class EnqueueBatchSuccessPB(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    def __init__(self, request_id: _Optional[int] = ...) -> None: ...

class EnqueueBatchErrorPB(_message.Message):
    __slots__ = ("request_id", "error_info")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_INFO_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    error_info: ErrorDetailsPB
    def __init__(self, request_id: _Optional[int] = ..., error_info: _Optional[_Union[ErrorDetailsPB, _Mapping]] = ...) -> None: ...

class FetchRequestPB(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    def __init__(self, request_id: _Optional[int] = ...) -> None: ...

class CancelRequestPB(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    def __init__(self, request_id: _Optional[int] = ...) -> None: ...

class CancelResponsePB(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: CancelStatusPB
    def __init__(self, status: _Optional[_Union[CancelStatusPB, str]] = ...) -> None: ...

class BatchGenerateInputPB(_message.Message):
    __slots__ = ("inputs",)
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedCompositeFieldContainer[GenerateInputPB]
    def __init__(self, inputs: _Optional[_Iterable[_Union[GenerateInputPB, _Mapping]]] = ...) -> None: ...

class BatchGenerateOutputsPB(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[BatchGenerateResultPB]
    def __init__(self, results: _Optional[_Iterable[_Union[BatchGenerateResultPB, _Mapping]]] = ...) -> None: ...

class BatchGenerateResultPB(_message.Message):
    __slots__ = ("final_output", "error_info")
    FINAL_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    ERROR_INFO_FIELD_NUMBER: _ClassVar[int]
    final_output: GenerateOutputsPB
    error_info: RpcErrorPB
    def __init__(self, final_output: _Optional[_Union[GenerateOutputsPB, _Mapping]] = ..., error_info: _Optional[_Union[RpcErrorPB, _Mapping]] = ...) -> None: ...

class GenerateRequestPB(_message.Message):
    __slots__ = ("stage", "request_id", "client_id", "start_time", "first_generate_token_id", "input", "peer_addrs", "propose_token_ids", "position_ids", "propose_probs", "propose_hidden")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    FIRST_GENERATE_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRS_FIELD_NUMBER: _ClassVar[int]
    PROPOSE_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    POSITION_IDS_FIELD_NUMBER: _ClassVar[int]
    PROPOSE_PROBS_FIELD_NUMBER: _ClassVar[int]
    PROPOSE_HIDDEN_FIELD_NUMBER: _ClassVar[int]
    stage: RemoteStage
    request_id: int
    client_id: str
    start_time: int
    first_generate_token_id: int
    input: GenerateInputPB
    peer_addrs: _containers.RepeatedScalarFieldContainer[str]
    propose_token_ids: _containers.RepeatedScalarFieldContainer[int]
    position_ids: _containers.RepeatedScalarFieldContainer[int]
    propose_probs: TensorPB
    propose_hidden: TensorPB
    def __init__(self, stage: _Optional[_Union[RemoteStage, str]] = ..., request_id: _Optional[int] = ..., client_id: _Optional[str] = ..., start_time: _Optional[int] = ..., first_generate_token_id: _Optional[int] = ..., input: _Optional[_Union[GenerateInputPB, _Mapping]] = ..., peer_addrs: _Optional[_Iterable[str]] = ..., propose_token_ids: _Optional[_Iterable[int]] = ..., position_ids: _Optional[_Iterable[int]] = ..., propose_probs: _Optional[_Union[TensorPB, _Mapping]] = ..., propose_hidden: _Optional[_Union[TensorPB, _Mapping]] = ...) -> None: ...

class BroadcastLoadRequestPB(_message.Message):
    __slots__ = ("request_id", "request_key", "peer_addrs", "cache_keys", "block_num", "reuse_block_size", "timeout_ms", "dp_rank", "partition_count", "partition_id", "prefill_cp_size", "tagged_group_block_ids")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_KEY_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRS_FIELD_NUMBER: _ClassVar[int]
    CACHE_KEYS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_NUM_FIELD_NUMBER: _ClassVar[int]
    REUSE_BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    DP_RANK_FIELD_NUMBER: _ClassVar[int]
    PARTITION_COUNT_FIELD_NUMBER: _ClassVar[int]
    PARTITION_ID_FIELD_NUMBER: _ClassVar[int]
    PREFILL_CP_SIZE_FIELD_NUMBER: _ClassVar[int]
    TAGGED_GROUP_BLOCK_IDS_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    request_key: str
    peer_addrs: _containers.RepeatedScalarFieldContainer[str]
    cache_keys: _containers.RepeatedScalarFieldContainer[int]
    block_num: int
    reuse_block_size: int
    timeout_ms: int
    dp_rank: int
    partition_count: int
    partition_id: int
    prefill_cp_size: int
    tagged_group_block_ids: _containers.RepeatedCompositeFieldContainer[TaggedBlockIdsPB]
    def __init__(self, request_id: _Optional[int] = ..., request_key: _Optional[str] = ..., peer_addrs: _Optional[_Iterable[str]] = ..., cache_keys: _Optional[_Iterable[int]] = ..., block_num: _Optional[int] = ..., reuse_block_size: _Optional[int] = ..., timeout_ms: _Optional[int] = ..., dp_rank: _Optional[int] = ..., partition_count: _Optional[int] = ..., partition_id: _Optional[int] = ..., prefill_cp_size: _Optional[int] = ..., tagged_group_block_ids: _Optional[_Iterable[_Union[TaggedBlockIdsPB, _Mapping]]] = ...) -> None: ...

class BroadcastLoadResponsePB(_message.Message):
    __slots__ = ("error_info", "done_time_us")
    ERROR_INFO_FIELD_NUMBER: _ClassVar[int]
    DONE_TIME_US_FIELD_NUMBER: _ClassVar[int]
    error_info: RpcErrorPB
    done_time_us: int
    def __init__(self, error_info: _Optional[_Union[RpcErrorPB, _Mapping]] = ..., done_time_us: _Optional[int] = ...) -> None: ...

class TaggedBlockIdsPB(_message.Message):
    __slots__ = ("tag", "block_ids")
    TAG_FIELD_NUMBER: _ClassVar[int]
    BLOCK_IDS_FIELD_NUMBER: _ClassVar[int]
    tag: str
    block_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, tag: _Optional[str] = ..., block_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class TaggedBlockPB(_message.Message):
    __slots__ = ("tag", "block_id", "layer_id")
    TAG_FIELD_NUMBER: _ClassVar[int]
    BLOCK_ID_FIELD_NUMBER: _ClassVar[int]
    LAYER_ID_FIELD_NUMBER: _ClassVar[int]
    tag: str
    block_id: int
    layer_id: int
    def __init__(self, tag: _Optional[str] = ..., block_id: _Optional[int] = ..., layer_id: _Optional[int] = ...) -> None: ...

class RemoteFinishRequestPB(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    def __init__(self, request_id: _Optional[int] = ...) -> None: ...

class RemoteGenerateRequestPBNew(_message.Message):
    __slots__ = ("input", "client_id", "start_time_us", "addrs", "block_ids", "reuse_block_size", "mtp_hidden_states_key", "use_mla", "layer_num", "deadline_us")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    START_TIME_US_FIELD_NUMBER: _ClassVar[int]
    ADDRS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_IDS_FIELD_NUMBER: _ClassVar[int]
    REUSE_BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    MTP_HIDDEN_STATES_KEY_FIELD_NUMBER: _ClassVar[int]
    USE_MLA_FIELD_NUMBER: _ClassVar[int]
    LAYER_NUM_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_US_FIELD_NUMBER: _ClassVar[int]
    input: GenerateInputPB
    client_id: str
    start_time_us: int
    addrs: _containers.RepeatedScalarFieldContainer[str]
    block_ids: _containers.RepeatedScalarFieldContainer[int]
    reuse_block_size: int
    mtp_hidden_states_key: str
    use_mla: bool
    layer_num: int
    deadline_us: int
    def __init__(self, input: _Optional[_Union[GenerateInputPB, _Mapping]] = ..., client_id: _Optional[str] = ..., start_time_us: _Optional[int] = ..., addrs: _Optional[_Iterable[str]] = ..., block_ids: _Optional[_Iterable[int]] = ..., reuse_block_size: _Optional[int] = ..., mtp_hidden_states_key: _Optional[str] = ..., use_mla: _Optional[bool] = ..., layer_num: _Optional[int] = ..., deadline_us: _Optional[int] = ...) -> None: ...

class RemoteGenerateResponsePBNew(_message.Message):
    __slots__ = ("error_info", "output", "first_generate_token_id", "first_token_rt_us", "finished")
    ERROR_INFO_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    FIRST_GENERATE_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_RT_US_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    error_info: ErrorDetailsPB
    output: GenerateOutputsPB
    first_generate_token_id: int
    first_token_rt_us: int
    finished: bool
    def __init__(self, error_info: _Optional[_Union[ErrorDetailsPB, _Mapping]] = ..., output: _Optional[_Union[GenerateOutputsPB, _Mapping]] = ..., first_generate_token_id: _Optional[int] = ..., first_token_rt_us: _Optional[int] = ..., finished: _Optional[bool] = ...) -> None: ...

class RemoteStorePartition(_message.Message):
    __slots__ = ("remote_addr", "remote_partition_id", "remote_partition_count", "local_partition_id", "local_partition_count")
    REMOTE_ADDR_FIELD_NUMBER: _ClassVar[int]
    REMOTE_PARTITION_ID_FIELD_NUMBER: _ClassVar[int]
    REMOTE_PARTITION_COUNT_FIELD_NUMBER: _ClassVar[int]
    LOCAL_PARTITION_ID_FIELD_NUMBER: _ClassVar[int]
    LOCAL_PARTITION_COUNT_FIELD_NUMBER: _ClassVar[int]
    remote_addr: str
    remote_partition_id: int
    remote_partition_count: int
    local_partition_id: int
    local_partition_count: int
    def __init__(self, remote_addr: _Optional[str] = ..., remote_partition_id: _Optional[int] = ..., remote_partition_count: _Optional[int] = ..., local_partition_id: _Optional[int] = ..., local_partition_count: _Optional[int] = ...) -> None: ...

class RemoteStoreRequestPB(_message.Message):
    __slots__ = ("dp_rank", "request_id", "request_key", "decode_block_ids", "prefill_block_ids", "reuse_block_size", "partition_infos", "deadline_us", "client_id")
    DP_RANK_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_KEY_FIELD_NUMBER: _ClassVar[int]
    DECODE_BLOCK_IDS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_BLOCK_IDS_FIELD_NUMBER: _ClassVar[int]
    REUSE_BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    PARTITION_INFOS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_US_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    dp_rank: int
    request_id: int
    request_key: str
    decode_block_ids: _containers.RepeatedScalarFieldContainer[int]
    prefill_block_ids: _containers.RepeatedScalarFieldContainer[int]
    reuse_block_size: int
    partition_infos: _containers.RepeatedCompositeFieldContainer[RemoteStorePartition]
    deadline_us: int
    client_id: str
    def __init__(self, dp_rank: _Optional[int] = ..., request_id: _Optional[int] = ..., request_key: _Optional[str] = ..., decode_block_ids: _Optional[_Iterable[int]] = ..., prefill_block_ids: _Optional[_Iterable[int]] = ..., reuse_block_size: _Optional[int] = ..., partition_infos: _Optional[_Iterable[_Union[RemoteStorePartition, _Mapping]]] = ..., deadline_us: _Optional[int] = ..., client_id: _Optional[str] = ...) -> None: ...

class RemoteStoreResponsePB(_message.Message):
    __slots__ = ("error_info", "done_time_us")
    ERROR_INFO_FIELD_NUMBER: _ClassVar[int]
    DONE_TIME_US_FIELD_NUMBER: _ClassVar[int]
    error_info: RpcErrorPB
    done_time_us: int
    def __init__(self, error_info: _Optional[_Union[RpcErrorPB, _Mapping]] = ..., done_time_us: _Optional[int] = ...) -> None: ...

class TPWorkerInfoPB(_message.Message):
    __slots__ = ("ip", "cache_store_port")
    IP_FIELD_NUMBER: _ClassVar[int]
    CACHE_STORE_PORT_FIELD_NUMBER: _ClassVar[int]
    ip: str
    cache_store_port: int
    def __init__(self, ip: _Optional[str] = ..., cache_store_port: _Optional[int] = ...) -> None: ...

class LayerCacheBlockPB(_message.Message):
    __slots__ = ("layer_id", "cache_keys", "block_ids", "cache_tag")
    LAYER_ID_FIELD_NUMBER: _ClassVar[int]
    CACHE_KEYS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_IDS_FIELD_NUMBER: _ClassVar[int]
    CACHE_TAG_FIELD_NUMBER: _ClassVar[int]
    layer_id: int
    cache_keys: _containers.RepeatedScalarFieldContainer[int]
    block_ids: _containers.RepeatedScalarFieldContainer[int]
    cache_tag: str
    def __init__(self, layer_id: _Optional[int] = ..., cache_keys: _Optional[_Iterable[int]] = ..., block_ids: _Optional[_Iterable[int]] = ..., cache_tag: _Optional[str] = ...) -> None: ...

class P2PConnectorBroadcastTpRequestPB(_message.Message):
    __slots__ = ("layer_blocks", "peer_workers", "unique_key", "request_id", "deadline_ms", "type", "remote_tp_size")
    LAYER_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    PEER_WORKERS_FIELD_NUMBER: _ClassVar[int]
    UNIQUE_KEY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    REMOTE_TP_SIZE_FIELD_NUMBER: _ClassVar[int]
    layer_blocks: _containers.RepeatedCompositeFieldContainer[LayerCacheBlockPB]
    peer_workers: _containers.RepeatedCompositeFieldContainer[TPWorkerInfoPB]
    unique_key: str
    request_id: int
    deadline_ms: int
    type: P2PConnectorBroadcastType
    remote_tp_size: int
    def __init__(self, layer_blocks: _Optional[_Iterable[_Union[LayerCacheBlockPB, _Mapping]]] = ..., peer_workers: _Optional[_Iterable[_Union[TPWorkerInfoPB, _Mapping]]] = ..., unique_key: _Optional[str] = ..., request_id: _Optional[int] = ..., deadline_ms: _Optional[int] = ..., type: _Optional[_Union[P2PConnectorBroadcastType, str]] = ..., remote_tp_size: _Optional[int] = ...) -> None: ...

class P2PConnectorBroadcastTpResponsePB(_message.Message):
    __slots__ = ("error_code", "error_message")
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    error_code: ErrorCodePB
    error_message: str
    def __init__(self, error_code: _Optional[_Union[ErrorCodePB, str]] = ..., error_message: _Optional[str] = ...) -> None: ...

class GetPeerInfoRequestPB(_message.Message):
    __slots__ = ("requester_ip", "requester_tp_size")
    REQUESTER_IP_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_TP_SIZE_FIELD_NUMBER: _ClassVar[int]
    requester_ip: str
    requester_tp_size: int
    def __init__(self, requester_ip: _Optional[str] = ..., requester_tp_size: _Optional[int] = ...) -> None: ...

class GetPeerInfoResponsePB(_message.Message):
    __slots__ = ("tp_size",)
    TP_SIZE_FIELD_NUMBER: _ClassVar[int]
    tp_size: int
    def __init__(self, tp_size: _Optional[int] = ...) -> None: ...

class P2PConnectorStartLoadRequestPB(_message.Message):
    __slots__ = ("unique_key", "workers", "deadline_ms")
    UNIQUE_KEY_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    unique_key: str
    workers: _containers.RepeatedCompositeFieldContainer[TPWorkerInfoPB]
    deadline_ms: int
    def __init__(self, unique_key: _Optional[str] = ..., workers: _Optional[_Iterable[_Union[TPWorkerInfoPB, _Mapping]]] = ..., deadline_ms: _Optional[int] = ...) -> None: ...

class P2PConnectorStartLoadResponsePB(_message.Message):
    __slots__ = ("error_code", "error_message", "payload")
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    error_code: ErrorCodePB
    error_message: str
    payload: SideChannelPayloadPB
    def __init__(self, error_code: _Optional[_Union[ErrorCodePB, str]] = ..., error_message: _Optional[str] = ..., payload: _Optional[_Union[SideChannelPayloadPB, _Mapping]] = ...) -> None: ...

class SideChannelPayloadPB(_message.Message):
    __slots__ = ("tensors", "first_generate_token_id", "total_reuse_len", "local_reuse_len", "remote_reuse_len", "memory_reuse_len")
    class TensorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: SideChannelTensorPB
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[SideChannelTensorPB, _Mapping]] = ...) -> None: ...
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    FIRST_GENERATE_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TOTAL_REUSE_LEN_FIELD_NUMBER: _ClassVar[int]
    LOCAL_REUSE_LEN_FIELD_NUMBER: _ClassVar[int]
    REMOTE_REUSE_LEN_FIELD_NUMBER: _ClassVar[int]
    MEMORY_REUSE_LEN_FIELD_NUMBER: _ClassVar[int]
    tensors: _containers.MessageMap[str, SideChannelTensorPB]
    first_generate_token_id: int
    total_reuse_len: int
    local_reuse_len: int
    remote_reuse_len: int
    memory_reuse_len: int
    def __init__(self, tensors: _Optional[_Mapping[str, SideChannelTensorPB]] = ..., first_generate_token_id: _Optional[int] = ..., total_reuse_len: _Optional[int] = ..., local_reuse_len: _Optional[int] = ..., remote_reuse_len: _Optional[int] = ..., memory_reuse_len: _Optional[int] = ...) -> None: ...

class SideChannelTensorPB(_message.Message):
    __slots__ = ("tensor",)
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    tensor: TensorPB
    def __init__(self, tensor: _Optional[_Union[TensorPB, _Mapping]] = ...) -> None: ...

class FunctionRequestPB(_message.Message):
    __slots__ = ("mem_request", "remote_request", "p2p_request")
    MEM_REQUEST_FIELD_NUMBER: _ClassVar[int]
    REMOTE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    P2P_REQUEST_FIELD_NUMBER: _ClassVar[int]
    mem_request: MemoryOperationRequestPB
    remote_request: RemoteOperationRequestPB
    p2p_request: P2PConnectorBroadcastTpRequestPB
    def __init__(self, mem_request: _Optional[_Union[MemoryOperationRequestPB, _Mapping]] = ..., remote_request: _Optional[_Union[RemoteOperationRequestPB, _Mapping]] = ..., p2p_request: _Optional[_Union[P2PConnectorBroadcastTpRequestPB, _Mapping]] = ...) -> None: ...

class FunctionResponsePB(_message.Message):
    __slots__ = ("mem_response", "remote_response", "p2p_response")
    MEM_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    REMOTE_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    P2P_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    mem_response: MemoryOperationResponsePB
    remote_response: RemoteOperationResponsePB
    p2p_response: P2PConnectorBroadcastTpResponsePB
    def __init__(self, mem_response: _Optional[_Union[MemoryOperationResponsePB, _Mapping]] = ..., remote_response: _Optional[_Union[RemoteOperationResponsePB, _Mapping]] = ..., p2p_response: _Optional[_Union[P2PConnectorBroadcastTpResponsePB, _Mapping]] = ...) -> None: ...

class MemoryOperationRequestPB(_message.Message):
    __slots__ = ("copy_items", "copy_direction")
    class CopyDirection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        H2D: _ClassVar[MemoryOperationRequestPB.CopyDirection]
        D2H: _ClassVar[MemoryOperationRequestPB.CopyDirection]
    H2D: MemoryOperationRequestPB.CopyDirection
    D2H: MemoryOperationRequestPB.CopyDirection
    class BackingType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        MEMORY: _ClassVar[MemoryOperationRequestPB.BackingType]
        DISK: _ClassVar[MemoryOperationRequestPB.BackingType]
    MEMORY: MemoryOperationRequestPB.BackingType
    DISK: MemoryOperationRequestPB.BackingType
    class CacheBlockKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        COMPLETE_KV: _ClassVar[MemoryOperationRequestPB.CacheBlockKind]
        INCOMPLETE_KV: _ClassVar[MemoryOperationRequestPB.CacheBlockKind]
        COMPRESSED_KV: _ClassVar[MemoryOperationRequestPB.CacheBlockKind]
        STATE_SWA_KV: _ClassVar[MemoryOperationRequestPB.CacheBlockKind]
    COMPLETE_KV: MemoryOperationRequestPB.CacheBlockKind
    INCOMPLETE_KV: MemoryOperationRequestPB.CacheBlockKind
    COMPRESSED_KV: MemoryOperationRequestPB.CacheBlockKind
    STATE_SWA_KV: MemoryOperationRequestPB.CacheBlockKind
    class CopyItem(_message.Message):
        __slots__ = ("mem_block", "is_complete", "backing_type", "disk_slot", "cache_block_kind", "src_mem_block", "slot_valid_mask", "src_backing_type", "src_disk_slot", "tagged_gpu_blocks")
        MEM_BLOCK_FIELD_NUMBER: _ClassVar[int]
        IS_COMPLETE_FIELD_NUMBER: _ClassVar[int]
        BACKING_TYPE_FIELD_NUMBER: _ClassVar[int]
        DISK_SLOT_FIELD_NUMBER: _ClassVar[int]
        CACHE_BLOCK_KIND_FIELD_NUMBER: _ClassVar[int]
        SRC_MEM_BLOCK_FIELD_NUMBER: _ClassVar[int]
        SLOT_VALID_MASK_FIELD_NUMBER: _ClassVar[int]
        SRC_BACKING_TYPE_FIELD_NUMBER: _ClassVar[int]
        SRC_DISK_SLOT_FIELD_NUMBER: _ClassVar[int]
        TAGGED_GPU_BLOCKS_FIELD_NUMBER: _ClassVar[int]
        mem_block: int
        is_complete: bool
        backing_type: MemoryOperationRequestPB.BackingType
        disk_slot: int
        cache_block_kind: MemoryOperationRequestPB.CacheBlockKind
        src_mem_block: int
        slot_valid_mask: _containers.RepeatedScalarFieldContainer[int]
        src_backing_type: MemoryOperationRequestPB.BackingType
        src_disk_slot: int
        tagged_gpu_blocks: _containers.RepeatedCompositeFieldContainer[TaggedBlockPB]
        def __init__(self, mem_block: _Optional[int] = ..., is_complete: _Optional[bool] = ..., backing_type: _Optional[_Union[MemoryOperationRequestPB.BackingType, str]] = ..., disk_slot: _Optional[int] = ..., cache_block_kind: _Optional[_Union[MemoryOperationRequestPB.CacheBlockKind, str]] = ..., src_mem_block: _Optional[int] = ..., slot_valid_mask: _Optional[_Iterable[int]] = ..., src_backing_type: _Optional[_Union[MemoryOperationRequestPB.BackingType, str]] = ..., src_disk_slot: _Optional[int] = ..., tagged_gpu_blocks: _Optional[_Iterable[_Union[TaggedBlockPB, _Mapping]]] = ...) -> None: ...
    COPY_ITEMS_FIELD_NUMBER: _ClassVar[int]
    COPY_DIRECTION_FIELD_NUMBER: _ClassVar[int]
    copy_items: _containers.RepeatedCompositeFieldContainer[MemoryOperationRequestPB.CopyItem]
    copy_direction: MemoryOperationRequestPB.CopyDirection
    def __init__(self, copy_items: _Optional[_Iterable[_Union[MemoryOperationRequestPB.CopyItem, _Mapping]]] = ..., copy_direction: _Optional[_Union[MemoryOperationRequestPB.CopyDirection, str]] = ...) -> None: ...

class MemoryOperationResponsePB(_message.Message):
    __slots__ = ("success",)
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    def __init__(self, success: _Optional[bool] = ...) -> None: ...

class RemoteOperationRequestPB(_message.Message):
    __slots__ = ("op", "trace_id", "block_ids", "uris", "group_tags")
    OP_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    BLOCK_IDS_FIELD_NUMBER: _ClassVar[int]
    URIS_FIELD_NUMBER: _ClassVar[int]
    GROUP_TAGS_FIELD_NUMBER: _ClassVar[int]
    op: RemoteOpType
    trace_id: str
    block_ids: _containers.RepeatedScalarFieldContainer[int]
    uris: _containers.RepeatedScalarFieldContainer[str]
    group_tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, op: _Optional[_Union[RemoteOpType, str]] = ..., trace_id: _Optional[str] = ..., block_ids: _Optional[_Iterable[int]] = ..., uris: _Optional[_Iterable[str]] = ..., group_tags: _Optional[_Iterable[str]] = ...) -> None: ...

class RemoteOperationResponsePB(_message.Message):
    __slots__ = ("succeed_block", "actual_uris")
    SUCCEED_BLOCK_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_URIS_FIELD_NUMBER: _ClassVar[int]
    succeed_block: RemoteBlockMaskPB
    actual_uris: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, succeed_block: _Optional[_Union[RemoteBlockMaskPB, _Mapping]] = ..., actual_uris: _Optional[_Iterable[str]] = ...) -> None: ...

class RemoteBlockMaskPB(_message.Message):
    __slots__ = ("offset", "bool_masks")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    BOOL_MASKS_FIELD_NUMBER: _ClassVar[int]
    offset: int
    bool_masks: RemoteBoolMasksTypePB
    def __init__(self, offset: _Optional[int] = ..., bool_masks: _Optional[_Union[RemoteBoolMasksTypePB, _Mapping]] = ...) -> None: ...

class RemoteBoolMasksTypePB(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, values: _Optional[_Iterable[bool]] = ...) -> None: ...

class UpdateEplbConfigRequestPB(_message.Message):
    __slots__ = ("mode", "update_time")
    MODE_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    mode: str
    update_time: int
    def __init__(self, mode: _Optional[str] = ..., update_time: _Optional[int] = ...) -> None: ...

class SetLogLevelRequestPB(_message.Message):
    __slots__ = ("log_level",)
    LOG_LEVEL_FIELD_NUMBER: _ClassVar[int]
    log_level: str
    def __init__(self, log_level: _Optional[str] = ...) -> None: ...

class StartProfileRequestPB(_message.Message):
    __slots__ = ("trace_name", "start_step", "num_steps", "enable_all_rank")
    TRACE_NAME_FIELD_NUMBER: _ClassVar[int]
    START_STEP_FIELD_NUMBER: _ClassVar[int]
    NUM_STEPS_FIELD_NUMBER: _ClassVar[int]
    ENABLE_ALL_RANK_FIELD_NUMBER: _ClassVar[int]
    trace_name: str
    start_step: int
    num_steps: int
    enable_all_rank: bool
    def __init__(self, trace_name: _Optional[str] = ..., start_step: _Optional[int] = ..., num_steps: _Optional[int] = ..., enable_all_rank: _Optional[bool] = ...) -> None: ...

class StartProfileInternalRequestPB(_message.Message):
    __slots__ = ("trace_name", "start_step", "num_steps")
    TRACE_NAME_FIELD_NUMBER: _ClassVar[int]
    START_STEP_FIELD_NUMBER: _ClassVar[int]
    NUM_STEPS_FIELD_NUMBER: _ClassVar[int]
    trace_name: str
    start_step: int
    num_steps: int
    def __init__(self, trace_name: _Optional[str] = ..., start_step: _Optional[int] = ..., num_steps: _Optional[int] = ...) -> None: ...

class UpdateSchedulerInfoRequestPB(_message.Message):
    __slots__ = ("scheduler_info",)
    SCHEDULER_INFO_FIELD_NUMBER: _ClassVar[int]
    scheduler_info: str
    def __init__(self, scheduler_info: _Optional[str] = ...) -> None: ...

class UpdateWeightsRequestPB(_message.Message):
    __slots__ = ("name", "desc", "method")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESC_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    name: str
    desc: str
    method: str
    def __init__(self, name: _Optional[str] = ..., desc: _Optional[str] = ..., method: _Optional[str] = ...) -> None: ...

class MultimodalInputsPB(_message.Message):
    __slots__ = ("multimodal_inputs",)
    MULTIMODAL_INPUTS_FIELD_NUMBER: _ClassVar[int]
    multimodal_inputs: _containers.RepeatedCompositeFieldContainer[MultimodalInputPB]
    def __init__(self, multimodal_inputs: _Optional[_Iterable[_Union[MultimodalInputPB, _Mapping]]] = ...) -> None: ...

class MultimodalOutputPB(_message.Message):
    __slots__ = ("multimodal_embedding", "multimodal_pos_id", "multimodal_extra_input", "split_size")
    MULTIMODAL_EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    MULTIMODAL_POS_ID_FIELD_NUMBER: _ClassVar[int]
    MULTIMODAL_EXTRA_INPUT_FIELD_NUMBER: _ClassVar[int]
    SPLIT_SIZE_FIELD_NUMBER: _ClassVar[int]
    multimodal_embedding: TensorPB
    multimodal_pos_id: TensorPB
    multimodal_extra_input: _containers.RepeatedCompositeFieldContainer[TensorPB]
    split_size: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, multimodal_embedding: _Optional[_Union[TensorPB, _Mapping]] = ..., multimodal_pos_id: _Optional[_Union[TensorPB, _Mapping]] = ..., multimodal_extra_input: _Optional[_Iterable[_Union[TensorPB, _Mapping]]] = ..., split_size: _Optional[_Iterable[int]] = ...) -> None: ...

class EmbeddingInputPB(_message.Message):
    __slots__ = ("token_ids", "token_type_ids", "input_lengths", "request_id", "multimodal_features", "vit_role_addr", "gen_timeline", "profile_step", "profile_trace_name")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_TYPE_IDS_FIELD_NUMBER: _ClassVar[int]
    INPUT_LENGTHS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MULTIMODAL_FEATURES_FIELD_NUMBER: _ClassVar[int]
    VIT_ROLE_ADDR_FIELD_NUMBER: _ClassVar[int]
    GEN_TIMELINE_FIELD_NUMBER: _ClassVar[int]
    PROFILE_STEP_FIELD_NUMBER: _ClassVar[int]
    PROFILE_TRACE_NAME_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    token_type_ids: _containers.RepeatedScalarFieldContainer[int]
    input_lengths: _containers.RepeatedScalarFieldContainer[int]
    request_id: int
    multimodal_features: _containers.RepeatedCompositeFieldContainer[MultimodalInputPB]
    vit_role_addr: str
    gen_timeline: bool
    profile_step: int
    profile_trace_name: str
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., token_type_ids: _Optional[_Iterable[int]] = ..., input_lengths: _Optional[_Iterable[int]] = ..., request_id: _Optional[int] = ..., multimodal_features: _Optional[_Iterable[_Union[MultimodalInputPB, _Mapping]]] = ..., vit_role_addr: _Optional[str] = ..., gen_timeline: _Optional[bool] = ..., profile_step: _Optional[int] = ..., profile_trace_name: _Optional[str] = ...) -> None: ...

class EmbeddingHealthRequestPB(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    def __init__(self, request_id: _Optional[int] = ...) -> None: ...

class EmbeddingTensorMapPB(_message.Message):
    __slots__ = ("tensor_map",)
    class TensorMapEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: TensorPB
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[TensorPB, _Mapping]] = ...) -> None: ...
    TENSOR_MAP_FIELD_NUMBER: _ClassVar[int]
    tensor_map: _containers.MessageMap[str, TensorPB]
    def __init__(self, tensor_map: _Optional[_Mapping[str, TensorPB]] = ...) -> None: ...

class EmbeddingOutputPB(_message.Message):
    __slots__ = ("output_is_tensor", "output_t", "output_map")
    OUTPUT_IS_TENSOR_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_T_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_MAP_FIELD_NUMBER: _ClassVar[int]
    output_is_tensor: bool
    output_t: TensorPB
    output_map: _containers.RepeatedCompositeFieldContainer[EmbeddingTensorMapPB]
    def __init__(self, output_is_tensor: _Optional[bool] = ..., output_t: _Optional[_Union[TensorPB, _Mapping]] = ..., output_map: _Optional[_Iterable[_Union[EmbeddingTensorMapPB, _Mapping]]] = ...) -> None: ...
