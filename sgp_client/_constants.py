"""Constants of the wire format shared by the client, the queue and the tracing layer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

import orjson

__all__ = ["BATCH_PATH", "DUMPS_OPTIONS", "EPOCH", "MAX_ID_BYTES"]

#: The options every JSON encode of span data uses: naive datetimes are UTC (see ``_models``),
#: so orjson writes an explicit ``+00:00`` offset. Checks that ask "will this encode?" must
#: use the same options as the encode that sends it.
DUMPS_OPTIONS: Final = orjson.OPT_NAIVE_UTC
#: The API's limit on ``id``, ``trace_id``, ``parent_id`` and ``group_id``, in UTF-8 bytes.
MAX_ID_BYTES: Final = 256
#: The spans batch endpoint (``PUT`` upserts, ``POST`` inserts).
BATCH_PATH: Final = "/v5/spans/batch"
#: Integer clock readings (``time.time_ns()``) count from here.
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
