from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExchangeMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXCHANGE_MODE_UNSPECIFIED: _ClassVar[ExchangeMode]
    EXCHANGE_MODE_HE: _ClassVar[ExchangeMode]
    EXCHANGE_MODE_PLAINTEXT: _ClassVar[ExchangeMode]
EXCHANGE_MODE_UNSPECIFIED: ExchangeMode
EXCHANGE_MODE_HE: ExchangeMode
EXCHANGE_MODE_PLAINTEXT: ExchangeMode

class Envelope(_message.Message):
    __slots__ = ("version", "alg", "key_id", "method", "body_sha256", "nonce", "timestamp_ms", "request_sha256", "signature")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALG_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    BODY_SHA256_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_SHA256_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    version: str
    alg: str
    key_id: str
    method: str
    body_sha256: bytes
    nonce: bytes
    timestamp_ms: int
    request_sha256: bytes
    signature: bytes
    def __init__(self, version: _Optional[str] = ..., alg: _Optional[str] = ..., key_id: _Optional[str] = ..., method: _Optional[str] = ..., body_sha256: _Optional[bytes] = ..., nonce: _Optional[bytes] = ..., timestamp_ms: _Optional[int] = ..., request_sha256: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class RequestContext(_message.Message):
    __slots__ = ("request_id", "requester_agency", "requester_user", "requester_role", "requester_tier", "purpose", "legal_basis", "case_id", "program_id", "program_version", "consent_ref", "approval_ref", "policy_set_hash", "consent_artefact", "approval_artefact", "requester_statement")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_AGENCY_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_USER_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_ROLE_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_TIER_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    LEGAL_BASIS_FIELD_NUMBER: _ClassVar[int]
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_ID_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONSENT_REF_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_REF_FIELD_NUMBER: _ClassVar[int]
    POLICY_SET_HASH_FIELD_NUMBER: _ClassVar[int]
    CONSENT_ARTEFACT_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_ARTEFACT_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_STATEMENT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    requester_agency: str
    requester_user: str
    requester_role: str
    requester_tier: str
    purpose: str
    legal_basis: str
    case_id: str
    program_id: str
    program_version: str
    consent_ref: str
    approval_ref: str
    policy_set_hash: str
    consent_artefact: str
    approval_artefact: str
    requester_statement: str
    def __init__(self, request_id: _Optional[str] = ..., requester_agency: _Optional[str] = ..., requester_user: _Optional[str] = ..., requester_role: _Optional[str] = ..., requester_tier: _Optional[str] = ..., purpose: _Optional[str] = ..., legal_basis: _Optional[str] = ..., case_id: _Optional[str] = ..., program_id: _Optional[str] = ..., program_version: _Optional[str] = ..., consent_ref: _Optional[str] = ..., approval_ref: _Optional[str] = ..., policy_set_hash: _Optional[str] = ..., consent_artefact: _Optional[str] = ..., approval_artefact: _Optional[str] = ..., requester_statement: _Optional[str] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthResponse(_message.Message):
    __slots__ = ("agency", "status", "version", "subjects")
    AGENCY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    agency: str
    status: str
    version: str
    subjects: int
    def __init__(self, agency: _Optional[str] = ..., status: _Optional[str] = ..., version: _Optional[str] = ..., subjects: _Optional[int] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DataElement(_message.Message):
    __slots__ = ("id", "type", "unit", "min", "max", "classification", "description", "records")
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    id: str
    type: str
    unit: str
    min: int
    max: int
    classification: str
    description: str
    records: int
    def __init__(self, id: _Optional[str] = ..., type: _Optional[str] = ..., unit: _Optional[str] = ..., min: _Optional[int] = ..., max: _Optional[int] = ..., classification: _Optional[str] = ..., description: _Optional[str] = ..., records: _Optional[int] = ...) -> None: ...

class DescribeResponse(_message.Message):
    __slots__ = ("agency", "elements", "computations", "he_params_id")
    AGENCY_FIELD_NUMBER: _ClassVar[int]
    ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    COMPUTATIONS_FIELD_NUMBER: _ClassVar[int]
    HE_PARAMS_ID_FIELD_NUMBER: _ClassVar[int]
    agency: str
    elements: _containers.RepeatedCompositeFieldContainer[DataElement]
    computations: _containers.RepeatedScalarFieldContainer[str]
    he_params_id: str
    def __init__(self, agency: _Optional[str] = ..., elements: _Optional[_Iterable[_Union[DataElement, _Mapping]]] = ..., computations: _Optional[_Iterable[str]] = ..., he_params_id: _Optional[str] = ...) -> None: ...

class ElementQuery(_message.Message):
    __slots__ = ("element", "if_missing", "clamp_at", "floor_at")
    ELEMENT_FIELD_NUMBER: _ClassVar[int]
    IF_MISSING_FIELD_NUMBER: _ClassVar[int]
    CLAMP_AT_FIELD_NUMBER: _ClassVar[int]
    FLOOR_AT_FIELD_NUMBER: _ClassVar[int]
    element: str
    if_missing: int
    clamp_at: int
    floor_at: int
    def __init__(self, element: _Optional[str] = ..., if_missing: _Optional[int] = ..., clamp_at: _Optional[int] = ..., floor_at: _Optional[int] = ...) -> None: ...

class EncryptRequest(_message.Message):
    __slots__ = ("context", "mode", "pseudonyms", "elements", "public_context", "he_params_id", "context_fingerprint", "replicas", "pad_batch", "pad_offset", "pad_open", "value_tag_epoch", "envelope")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PSEUDONYMS_FIELD_NUMBER: _ClassVar[int]
    ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    HE_PARAMS_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    PAD_BATCH_FIELD_NUMBER: _ClassVar[int]
    PAD_OFFSET_FIELD_NUMBER: _ClassVar[int]
    PAD_OPEN_FIELD_NUMBER: _ClassVar[int]
    VALUE_TAG_EPOCH_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    context: RequestContext
    mode: ExchangeMode
    pseudonyms: _containers.RepeatedScalarFieldContainer[str]
    elements: _containers.RepeatedCompositeFieldContainer[ElementQuery]
    public_context: bytes
    he_params_id: str
    context_fingerprint: str
    replicas: int
    pad_batch: bytes
    pad_offset: int
    pad_open: bool
    value_tag_epoch: int
    envelope: Envelope
    def __init__(self, context: _Optional[_Union[RequestContext, _Mapping]] = ..., mode: _Optional[_Union[ExchangeMode, str]] = ..., pseudonyms: _Optional[_Iterable[str]] = ..., elements: _Optional[_Iterable[_Union[ElementQuery, _Mapping]]] = ..., public_context: _Optional[bytes] = ..., he_params_id: _Optional[str] = ..., context_fingerprint: _Optional[str] = ..., replicas: _Optional[int] = ..., pad_batch: _Optional[bytes] = ..., pad_offset: _Optional[int] = ..., pad_open: _Optional[bool] = ..., value_tag_epoch: _Optional[int] = ..., envelope: _Optional[_Union[Envelope, _Mapping]] = ...) -> None: ...

class ElementValues(_message.Message):
    __slots__ = ("element", "ciphertexts", "plain_values", "ciphertext_sha256", "padded_values", "pad_ciphertext", "pad_ciphertext_sha256", "clamped_at", "floored_at", "value_tags")
    ELEMENT_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    PLAIN_VALUES_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_SHA256_FIELD_NUMBER: _ClassVar[int]
    PADDED_VALUES_FIELD_NUMBER: _ClassVar[int]
    PAD_CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    PAD_CIPHERTEXT_SHA256_FIELD_NUMBER: _ClassVar[int]
    CLAMPED_AT_FIELD_NUMBER: _ClassVar[int]
    FLOORED_AT_FIELD_NUMBER: _ClassVar[int]
    VALUE_TAGS_FIELD_NUMBER: _ClassVar[int]
    element: str
    ciphertexts: _containers.RepeatedScalarFieldContainer[bytes]
    plain_values: _containers.RepeatedScalarFieldContainer[int]
    ciphertext_sha256: _containers.RepeatedScalarFieldContainer[bytes]
    padded_values: _containers.RepeatedScalarFieldContainer[int]
    pad_ciphertext: bytes
    pad_ciphertext_sha256: bytes
    clamped_at: int
    floored_at: int
    value_tags: bytes
    def __init__(self, element: _Optional[str] = ..., ciphertexts: _Optional[_Iterable[bytes]] = ..., plain_values: _Optional[_Iterable[int]] = ..., ciphertext_sha256: _Optional[_Iterable[bytes]] = ..., padded_values: _Optional[_Iterable[int]] = ..., pad_ciphertext: _Optional[bytes] = ..., pad_ciphertext_sha256: _Optional[bytes] = ..., clamped_at: _Optional[int] = ..., floored_at: _Optional[int] = ..., value_tags: _Optional[bytes] = ...) -> None: ...

class EncryptResponse(_message.Message):
    __slots__ = ("agency", "request_id", "elements", "node_audit_leaf_hash", "node_audit_index", "envelope")
    AGENCY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    NODE_AUDIT_LEAF_HASH_FIELD_NUMBER: _ClassVar[int]
    NODE_AUDIT_INDEX_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    agency: str
    request_id: str
    elements: _containers.RepeatedCompositeFieldContainer[ElementValues]
    node_audit_leaf_hash: bytes
    node_audit_index: int
    envelope: Envelope
    def __init__(self, agency: _Optional[str] = ..., request_id: _Optional[str] = ..., elements: _Optional[_Iterable[_Union[ElementValues, _Mapping]]] = ..., node_audit_leaf_hash: _Optional[bytes] = ..., node_audit_index: _Optional[int] = ..., envelope: _Optional[_Union[Envelope, _Mapping]] = ...) -> None: ...

class CosignRequest(_message.Message):
    __slots__ = ("checkpoint", "consistency_proof", "old_size", "state_only", "envelope")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_PROOF_FIELD_NUMBER: _ClassVar[int]
    OLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    STATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    checkpoint: bytes
    consistency_proof: _containers.RepeatedScalarFieldContainer[bytes]
    old_size: int
    state_only: bool
    envelope: Envelope
    def __init__(self, checkpoint: _Optional[bytes] = ..., consistency_proof: _Optional[_Iterable[bytes]] = ..., old_size: _Optional[int] = ..., state_only: _Optional[bool] = ..., envelope: _Optional[_Union[Envelope, _Mapping]] = ...) -> None: ...

class CosignResponse(_message.Message):
    __slots__ = ("agency", "cosignature", "key_id", "size", "root", "envelope")
    AGENCY_FIELD_NUMBER: _ClassVar[int]
    COSIGNATURE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    agency: str
    cosignature: bytes
    key_id: str
    size: int
    root: bytes
    envelope: Envelope
    def __init__(self, agency: _Optional[str] = ..., cosignature: _Optional[bytes] = ..., key_id: _Optional[str] = ..., size: _Optional[int] = ..., root: _Optional[bytes] = ..., envelope: _Optional[_Union[Envelope, _Mapping]] = ...) -> None: ...

class TrainingRequest(_message.Message):
    __slots__ = ("context", "job_id", "dataset", "elements", "epsilon", "delta", "rounds", "envelope")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    context: RequestContext
    job_id: str
    dataset: str
    elements: _containers.RepeatedScalarFieldContainer[str]
    epsilon: float
    delta: float
    rounds: int
    envelope: Envelope
    def __init__(self, context: _Optional[_Union[RequestContext, _Mapping]] = ..., job_id: _Optional[str] = ..., dataset: _Optional[str] = ..., elements: _Optional[_Iterable[str]] = ..., epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., rounds: _Optional[int] = ..., envelope: _Optional[_Union[Envelope, _Mapping]] = ...) -> None: ...

class TrainingDecision(_message.Message):
    __slots__ = ("agency", "approved", "reason", "epsilon_spent", "epsilon_cap", "envelope")
    AGENCY_FIELD_NUMBER: _ClassVar[int]
    APPROVED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EPSILON_SPENT_FIELD_NUMBER: _ClassVar[int]
    EPSILON_CAP_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    agency: str
    approved: bool
    reason: str
    epsilon_spent: float
    epsilon_cap: float
    envelope: Envelope
    def __init__(self, agency: _Optional[str] = ..., approved: _Optional[bool] = ..., reason: _Optional[str] = ..., epsilon_spent: _Optional[float] = ..., epsilon_cap: _Optional[float] = ..., envelope: _Optional[_Union[Envelope, _Mapping]] = ...) -> None: ...
