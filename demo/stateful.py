"""The design this project replaces, kept to show what it loses (``--stateful``).

Like many tracing processors in the field, it remembers started spans in a per-process dict
and builds the close from what it remembered. When the end of a span runs on another worker
process than its start, the close is dropped (the span stays "Running" forever on the server)
and the started entry leaks in the process that saw the start.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from sgp_client import SpanItem
from sgp_tracing import Span, SpanSink

__all__ = ["StatefulProcessor"]

logger = logging.getLogger("demo.stateful")


class StatefulProcessor:
    """Per-process memory of open spans: the anti-pattern, for comparison only."""

    def __init__(self, sink: SpanSink) -> None:
        self._sink = sink
        self.open_spans: dict[str, Span] = {}
        self.lost_ends = 0

    def on_span_start(self, span: Span, /) -> None:
        self.open_spans[span.id] = span
        self._sink.submit(_item(span, completed=False))

    def on_span_end(self, span: Span, /) -> None:
        started = self.open_spans.pop(span.id, None)
        if started is None:
            # The typical line in such processors: "span not found, ignoring".
            self.lost_ends += 1
            logger.debug("end of unknown span %s ignored", span.id)
            return
        started.output, started.end_time, started.status = span.output, span.end_time, span.status
        self._sink.submit(_item(started, completed=True))

    def on_spans_start(self, spans: Iterable[Span], /) -> None:
        for span in spans:
            self.on_span_start(span)

    def on_spans_end(self, spans: Iterable[Span], /) -> None:
        for span in spans:
            self.on_span_end(span)

    def shutdown(self) -> None:
        pass


def _item(span: Span, *, completed: bool) -> SpanItem:
    return SpanItem(
        id=span.id,
        trace_id=span.trace_id,
        parent_id=span.parent_id,
        name=span.name,
        start_timestamp=span.start_time,
        end_timestamp=span.end_time if completed else None,
        status=span.status if completed else None,  # type: ignore[arg-type]
        input=span.input if isinstance(span.input, dict) else None,
        output=span.output if completed and isinstance(span.output, dict) else None,
    )
