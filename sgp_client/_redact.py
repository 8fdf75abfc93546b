"""Client-side redaction: credential-shaped values masked before span data leaves the process.

A ``Redactor`` takes the JSON encoding of ONE field value (a span's ``name``, ``input``,
``output``, ``metadata`` or ``expected``) and returns a JSON encoding of the same shape. It is
never given ids: an id such as ``"task-0001"`` contains ``sk-`` and must reach the server
byte for byte.

``redact_credentials`` is the hook shipped, opt-in (``AsyncSGPClient(redact=...)``; the SGP
API masks credentials itself, server side). It replaces, with ``[REDACTED:credential]`` (the
marker SGP's own server-side redaction writes):

- the token of ``Bearer <token>`` (a token of 12 or more characters holding a digit);
- ``sk-`` style API keys (``sk-``, ``sk-proj-``, ``sk-ant-...``: 20 or more key characters
  after ``sk-``, not preceded by a letter or digit, so ``task-...`` is left alone);
- the password of a URL (``scheme://user:password@host``);
- the whole value (string or number) of a JSON key named like a credential: one containing
  ``password``/``passwd``, ``secret`` or ``authorization``, or ending in ``token``,
  ``api_key``/``apikey``/``api-key``, ``private_key`` or ``access_key``, in any case and
  with any prefix (``DB_PASSWORD``, ``clientSecret``, ``x-api-key``, ``refresh_token``).
  ``max_tokens`` or ``token_count`` are not credentials and are kept.

The output is always valid JSON when the input is: every pattern matches only characters that
cannot be a quote, a backslash or part of an escape sequence, a key's value is replaced as a
whole JSON token, and the marker itself needs no escaping.

Cost: when on, it runs for every item the queue sends, so the usual value (no credential) is
answered by a prefilter: one lowercase copy and a few substring searches for rare fragments
(``sk-``, ``bearer``, ``@``, ``secret``, ``passw``, ``authoriz``, ``token"``, ``key"``). Only
a value holding one of them goes through the regular expressions. Measured: about 3 us per
span of ~300 bytes of content; multi-character substring search runs at about 1 ns a byte
here, and neither a single regex nor an Aho-Corasick automaton (pyahocorasick,
ahocorasick-rs) did better than 1.6 us for the same content.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

__all__ = ["REDACTED", "Redactor", "may_hold_credentials", "redact_credentials"]

#: A redaction hook: the JSON encoding of one field value in, a JSON encoding out.
Redactor = Callable[[bytes], bytes]

#: What replaces a credential (the marker SGP's server-side redaction uses).
REDACTED: Final = b"[REDACTED:credential]"
_REDACTED_STR: Final = b'"' + REDACTED + b'"'


# A match may start where a word starts: not after a letter, digit, "_" or "-" (so "task-..."
# is no key), nor after a backslash (in JSON, "\b" of "\bearer" is an escape, and cutting it
# off would leave a broken escape). Right after the escapes "\n", "\r", "\t" is a word start.
# The checks look behind the literal (sk-, bearer) rather than ahead of it, so the regex
# engine can search for the literal at C speed instead of trying every position.
def _word_start(literal: bytes) -> bytes:
    size = str(len(literal))
    return (
        rb"(?:(?<![A-Za-z0-9_\-\\].{"
        + size.encode()
        + rb"})|(?<=\\[nrt].{"
        + size.encode()
        + rb"}))"
    )


# Token characters: never a quote or a backslash, so a match cannot leave its JSON string.
_SK_KEY: Final = re.compile(rb"sk-" + _word_start(b"sk-") + rb"[A-Za-z0-9_\-]{20,}")
# Matched on the lowercased bytes (same length, same offsets), then spliced into the original.
_BEARER: Final = re.compile(
    rb"bearer"
    + _word_start(b"bearer")
    + rb"(?: |\\t)+(?=[a-z0-9._~+/=\-]*[0-9])([a-z0-9._~+/=\-]{12,})"
)
# scheme://user:password@ : the password is what goes.
_URL_PASSWORD: Final = re.compile(rb"(://[^\s/?#@:\"\\]*:)[^\s/?#@\"\\]+@")

# A JSON key (no quote or backslash inside, so its closing quote is a real end of string)
# followed by a string or number value. Whether the key names a credential is decided on the
# key alone, by _CREDENTIAL_KEY.
_KEY_VALUE: Final = re.compile(
    rb'"([^"\\]{1,128})"(\s*:\s*)(?:"(?:[^"\\]|\\.)*"|-?[0-9][0-9.eE+\-]*)'
)
_CREDENTIAL_KEY: Final = re.compile(
    rb"(?i)passw|secret|authoriz|(?:token|api[_\-]?key|private[_\-]?key|access[_\-]?key)$"
)


def _mask_key_value(match: re.Match[bytes]) -> bytes:
    if _CREDENTIAL_KEY.search(match.group(1)) is None:
        return match.group(0)
    return b'"' + match.group(1) + b'"' + match.group(2) + _REDACTED_STR


def _mask_bearer(data: bytes) -> bytes:
    parts: list[bytes] = []
    done = 0
    for match in _BEARER.finditer(data.lower()):
        start, end = match.span(1)
        parts += (data[done:start], REDACTED)
        done = end
    if not parts:
        return data
    parts.append(data[done:])
    return b"".join(parts)


def _mask_url_password(match: re.Match[bytes]) -> bytes:
    return match.group(1) + REDACTED + b"@"


_KEY_FRAGMENTS: Final = ('key"', 'token"', "secret", "passw", "authoriz")


def may_hold_credentials(data: bytes | str) -> bool:
    """The prefilter of ``redact_credentials``: False means it would change nothing.

    Every pattern needs one of a few fragments; a value holding none of them (nearly all
    values) costs a lowercase copy and a few C-speed substring searches. It can run on
    several values joined together: a false alarm only costs the exact pass.
    """
    # On str rather than bytes: ``in`` costs about half as much there (no buffer protocol),
    # and latin-1 decodes any bytes, ASCII at memcpy speed.
    text = data.decode("latin-1") if isinstance(data, bytes) else data
    if "sk-" in text or "@" in text:
        return True
    low = text.lower()
    return (
        "bearer" in low
        or 'key"' in low
        or 'token"' in low
        or "secret" in low
        or "passw" in low
        or "authoriz" in low
    )


def redact_credentials(data: bytes) -> bytes:
    """Mask credential-shaped values in the JSON encoding of one field value.

    Returns ``data`` itself (no copy) when there is nothing to mask, which is the usual case.
    """
    if not may_hold_credentials(data):
        return data
    text = data.decode("latin-1")
    low = text.lower()
    if any(fragment in low for fragment in _KEY_FRAGMENTS):
        data = _KEY_VALUE.sub(_mask_key_value, data)
    if "bearer" in low:
        data = _mask_bearer(data)
    if "sk-" in text:
        data = _SK_KEY.sub(REDACTED, data)
    if "@" in text:
        data = _URL_PASSWORD.sub(_mask_url_password, data)
    return data
