"""SQLite storage of spans for the local SGP server, with the upsert semantics of the real API.

One row per (account, trace_id, id, UTC day of start_timestamp): the day is part of the
identity because the real service partitions by it, so re-sending a span with a start on
another day stores a second row. Each row keeps the whole answer-shaped span as JSON bytes
(`data`) next to the indexed columns searches need, so echoing and reading a span never
re-encode it.

A single connection is used from the event loop thread only; every call is short and
synchronous, which is faster than hopping to a worker thread for each request.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

__all__ = ["Row", "SearchQuery", "SpanStore"]

# (account_id, trace_id, id, day, parent_id, group_id, name, status, type,
#  start_us, end_us, has_end, input_tokens, output_tokens, data)
Row = tuple[
    str, str, str, int, str | None, str | None, str, str | None, str | None,
    int, int | None, int, int | None, int | None, bytes,
]  # fmt: skip

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spans (
    seq INTEGER PRIMARY KEY,
    account_id TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    id TEXT NOT NULL,
    day INTEGER NOT NULL,
    parent_id TEXT,
    group_id TEXT,
    name TEXT NOT NULL,
    status TEXT,
    type TEXT,
    start_us INTEGER NOT NULL,
    end_us INTEGER,
    has_end INTEGER NOT NULL,
    input_tokens INTEGER,
    output_tokens INTEGER,
    data BLOB NOT NULL,
    UNIQUE (account_id, trace_id, id, day)
);
CREATE INDEX IF NOT EXISTS spans_by_id ON spans (account_id, id);
"""

_COLUMNS = (
    "account_id, trace_id, id, day, parent_id, group_id, name, status, type, "
    "start_us, end_us, has_end, input_tokens, output_tokens, data"
)
_INSERT = f"INSERT INTO spans ({_COLUMNS}) VALUES ({', '.join('?' * 15)})"  # noqa: S608
# Completed beats in-progress; otherwise the later write wins.
_UPSERT = (
    _INSERT + " ON CONFLICT (account_id, trace_id, id, day) DO UPDATE SET "
    "parent_id = excluded.parent_id, group_id = excluded.group_id, name = excluded.name, "
    "status = excluded.status, type = excluded.type, start_us = excluded.start_us, "
    "end_us = excluded.end_us, has_end = excluded.has_end, "
    "input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens, "
    "data = excluded.data WHERE excluded.has_end OR NOT spans.has_end"
)
_INSERT_NEW = _INSERT + " ON CONFLICT (account_id, trace_id, id, day) DO NOTHING"
_GET_KEY = "SELECT data, has_end FROM spans WHERE account_id = ? AND trace_id = ? AND id = ? AND day = ?"

# Sort keys the search endpoint accepts, mapped to SQL expressions (no user text reaches SQL).
_SORT_EXPR = {
    "start_timestamp": "start_us",
    "end_timestamp": "COALESCE(end_us, 9223372036854775807)",
    # An in-progress span has no known duration: it sorts as unbounded.
    "duration_ms": "COALESCE((end_us - start_us) / 1000, 9223372036854775807)",
    "input_tokens": "COALESCE(input_tokens, 0)",
    "output_tokens": "COALESCE(output_tokens, 0)",
}
SORT_KEYS = frozenset(_SORT_EXPR)


class SearchQuery:
    """Filters of ``POST /v5/spans/search`` translated to a SQL WHERE clause."""

    def __init__(self, account_id: str) -> None:
        self.clauses: list[str] = ["account_id = ?"]
        self.params: list[Any] = [account_id]

    def any_of(self, column: str, values: Sequence[Any]) -> None:
        self.clauses.append(f"{column} IN ({', '.join('?' * len(values))})")
        self.params.extend(values)

    def none_of(self, column: str, values: Sequence[Any]) -> None:
        self.clauses.append(f"{column} NOT IN ({', '.join('?' * len(values))})")
        self.params.extend(values)

    def where(self, clause: str, *params: Any) -> None:
        self.clauses.append(clause)
        self.params.extend(params)


class SpanStore:
    """Spans in SQLite (`path` is a file or ``":memory:"``)."""

    def __init__(self, path: str = ":memory:") -> None:
        self.path = path
        # check_same_thread=False: in-process tests may build the app in one thread and serve
        # it from another; the app itself never uses the connection concurrently.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # A test server: losing the last writes on an OS crash is fine, fsyncs are not.
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("PRAGMA temp_store=MEMORY")
        self._db.executescript(_SCHEMA)

    def __repr__(self) -> str:
        return f"SpanStore(path={self.path!r})"

    def close(self) -> None:
        self._db.close()

    def clear(self) -> None:
        self._db.execute("DELETE FROM spans")

    # -- writes ---------------------------------------------------------------------------

    def write(self, rows: Sequence[Row], *, replace: bool) -> list[bytes]:
        """Store `rows` (already deduplicated by key) and return the stored span of each.

        `replace=True` is the upsert (completed beats in-progress, else the new row wins);
        `replace=False` inserts only keys not stored yet and keeps what is there.
        """
        db = self._db
        out = [row[14] for row in rows]
        db.execute("BEGIN")
        try:
            # Only a row that may lose against the stored one needs a look-up first: with
            # replace, an in-progress row (a stored completed span wins over it).
            for i, row in enumerate(rows):
                if replace and row[11]:
                    continue
                found = db.execute(_GET_KEY, row[:4]).fetchone()
                if found is not None and (not replace or found[1]):
                    out[i] = found[0]
            db.executemany(_UPSERT if replace else _INSERT_NEW, rows)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return out

    # -- reads ----------------------------------------------------------------------------

    def traces_of(self, account_id: str, span_ids: Iterable[str]) -> dict[str, set[str]]:
        """For each of `span_ids` that is stored, the trace ids it is stored under."""
        ids = list(set(span_ids))
        result: dict[str, set[str]] = {}
        # Chunked to stay well below SQLite's bound-parameter limit.
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            sql = (
                "SELECT DISTINCT id, trace_id FROM spans WHERE account_id = ? "  # noqa: S608
                f"AND id IN ({', '.join('?' * len(chunk))})"
            )
            for span_id, trace_id in self._db.execute(sql, [account_id, *chunk]):
                result.setdefault(span_id, set()).add(trace_id)
        return result

    def get_data(self, account_id: str, span_id: str) -> bytes | None:
        """The stored span with this id (the most recently created row if several)."""
        row = self._db.execute(
            "SELECT data FROM spans WHERE account_id = ? AND id = ? ORDER BY seq DESC LIMIT 1",
            (account_id, span_id),
        ).fetchone()
        return None if row is None else bytes(row[0])

    def get_span(
        self, span_id: str, *, trace_id: str | None = None, account_id: str | None = None
    ) -> dict[str, Any] | None:
        """Convenience for tests: one stored span as a dict, or None."""
        spans = self.all_spans(trace_id=trace_id, account_id=account_id, span_id=span_id)
        return spans[-1] if spans else None

    def all_spans(
        self,
        *,
        trace_id: str | None = None,
        account_id: str | None = None,
        span_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Stored spans (optionally filtered) in the order they were first stored."""
        sql, params = self._filter("SELECT data FROM spans", trace_id, account_id, span_id)
        return [orjson.loads(r[0]) for r in self._db.execute(sql + " ORDER BY seq", params)]

    def count(self, *, trace_id: str | None = None, account_id: str | None = None) -> int:
        """Number of stored rows (optionally filtered)."""
        sql, params = self._filter("SELECT COUNT(*) FROM spans", trace_id, account_id, None)
        return int(self._db.execute(sql, params).fetchone()[0])

    @staticmethod
    def _filter(
        sql: str, trace_id: str | None, account_id: str | None, span_id: str | None
    ) -> tuple[str, list[str]]:
        clauses: list[str] = []
        params: list[str] = []
        for column, value in (("trace_id", trace_id), ("account_id", account_id), ("id", span_id)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        return sql, params

    def search(
        self,
        query: SearchQuery,
        *,
        limit: int,
        sort_by: str = "start_timestamp",
        descending: bool = False,
        starting_after: str | None = None,
        ending_before: str | None = None,
    ) -> tuple[list[bytes], bool]:
        """One cursor page: (spans, has_more).

        Order is (sort key, trace_id, id, seq), a total order, so a cursor (a span id from a
        previous page) always resumes at the same place. Unknown cursors give an empty page.
        """
        key = _SORT_EXPR[sort_by]
        order_cols = f"{key}, trace_id, id, seq"
        where = " AND ".join(query.clauses)
        params = list(query.params)
        cursor_id = starting_after if starting_after is not None else ending_before
        # Going backwards from ending_before: read in the reverse order, then flip the page.
        backwards = starting_after is None and ending_before is not None
        reverse = descending != backwards
        if cursor_id is not None:
            found = self._db.execute(
                f"SELECT {order_cols} FROM spans WHERE {where} AND id = ? "  # noqa: S608
                "ORDER BY seq DESC LIMIT 1",
                [*params, cursor_id],
            ).fetchone()
            if found is None:
                return [], False
            where += f" AND ({order_cols}) {'<' if reverse else '>'} (?, ?, ?, ?)"
            params.extend(found)
        direction = "DESC" if reverse else "ASC"
        order = f"{key} {direction}, trace_id {direction}, id {direction}, seq {direction}"
        rows = self._db.execute(
            f"SELECT data FROM spans WHERE {where} ORDER BY {order} LIMIT ?",  # noqa: S608
            [*params, limit + 1],
        ).fetchall()
        has_more = len(rows) > limit
        page = [bytes(r[0]) for r in rows[:limit]]
        if backwards:
            page.reverse()
        return page, has_more
