"""Stateless tracing for SGP: spans as events, turned into upsert items as they happen.

```python
from sgp_client import UpsertQueue
from sgp_tracing import SGPTracingProcessor, Tracer

async with UpsertQueue(client) as queue:
    tracer = Tracer(SGPTracingProcessor(queue))
    async with tracer.trace("agent-run", input={"question": q}) as root:
        async with tracer.span("llm", type="COMPLETION", input={...}) as span:
            span.output = {"text": answer}
```

No processor remembers a started span: the start and the end of a span each become a
complete item, so a span started in one process can be ended in another
(``span.to_dict()`` / ``Span.from_dict()`` / ``Tracer.end_span``); hand a span to another
process only once its start is delivered (``await tracer.start_span_delivered(...)``).
``sgp_tracing.agentex`` adapts this to agentex's async processor interface.
"""

from ._coerce import to_json_safe
from ._processor import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    ERROR_METADATA_KEY,
    AwaitableRecordSink,
    AwaitableSink,
    DeliveringProcessor,
    ProcessorStats,
    RecordSink,
    SGPTracingProcessor,
    SpanSink,
    TracingProcessor,
)
from ._span import Span
from ._tracer import SpanScope, Tracer, current_span, traced

__all__ = [
    "AwaitableRecordSink",
    "AwaitableSink",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "DeliveringProcessor",
    "ERROR_METADATA_KEY",
    "ProcessorStats",
    "RecordSink",
    "SGPTracingProcessor",
    "Span",
    "SpanScope",
    "SpanSink",
    "Tracer",
    "TracingProcessor",
    "current_span",
    "to_json_safe",
    "traced",
]
