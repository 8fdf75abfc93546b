"""Server-side masking of credential-shaped values, as the real API does before storing a span.

The real API replaces credential-shaped values in ``name``, ``input``, ``output``, ``metadata``
and ``expected`` with ``[REDACTED:credential]``, so the stored and returned span carries the
mask. The detector is the client's own opt-in one (`sgp_client._redact.redact_credentials`):
one rule for both sides. Ids are never looked at: an id such as ``task-...`` must be kept
byte for byte.

Cost: the whole request body goes through the detector's prefilter first (a few substring
searches); only a body that may hold a credential has its items' fields encoded and checked
one by one.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from sgp_client._redact import may_hold_credentials, redact_credentials

__all__ = ["MASKED_FIELDS", "mask_items"]

MASKED_FIELDS = ("name", "input", "output", "metadata", "expected")


def _encoded(value: Any) -> bytes | None:
    try:
        return orjson.dumps(value)
    except TypeError:
        pass
    try:
        # Lone surrogates (replaced later) or huge integers: the stdlib encodes both, as
        # ASCII escapes the detector reads like any other character.
        return json.dumps(value).encode()
    except (TypeError, ValueError, RecursionError):
        return None  # cannot be stored either: validation refuses the batch


def mask_items(body: bytes, items: Any) -> int:
    """Mask credential-shaped values in the items of a write, in place; returns how many
    field values changed. `body` is the raw request they were parsed from."""
    # An escaped character (\\u0073k-...) hides a fragment from the prefilter.
    if type(items) is not list or not (may_hold_credentials(body) or b"\\u" in body):
        return 0
    changed = 0
    for item in items:
        if type(item) is not dict:
            continue
        for field in MASKED_FIELDS:
            value = item.get(field)
            if value is None or (field == "name" and type(value) is not str):
                continue
            encoded = _encoded(value)
            if encoded is None:
                continue
            masked = redact_credentials(encoded)
            if masked is not encoded and masked != encoded:
                item[field] = json.loads(masked)
                changed += 1
    return changed
