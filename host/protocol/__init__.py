"""The run protocol (docs/protocol.md): schemas, message dataclasses, trace files, golden examples."""
from host.protocol.constants import (  # noqa: F401
    COMPONENTS, IMAGE_F32, IMAGE_PNG, MODELS_DIR, NOISE_FILE, PROTOCOL_VERSION, REQUEST_FILE, REQUEST_SCHEMA,
    REQUEST_VERSION, SPAN_CATS, STATUS_FILE, TRACE_FILE, TRACE_SCHEMA, TRACE_VERSION,
)
from host.protocol.messages import (  # noqa: F401
    BlockModelSpec, EventRecord, ImageSpec, MemoryRecord, MetaRecord, ModelSpec, NoiseSpec, ProfilingSpec,
    PromptSpec, RunRequest, RuntimeSpec, SchedulerSpec, SpanRecord, Status, TensorSpec, TraceRecord,
    record_from_dict,
)
from host.protocol.trace import TraceWriter, read_trace, read_trace_dicts  # noqa: F401
from host.protocol.validation import (  # noqa: F401
    ProtocolError, validate_request, validate_status, validate_trace_record,
)
