"""SQLite storage of spans for the local SGP server, with the upsert semantics of the real API.

Two kinds of store, as SGP has two (`StoreKind`):

- ``"tracing"`` (SGP's tracing service, the default): one row per (account, trace_id, id, UTC
  day of start_timestamp): the day is part of the identity because the real service
  partitions by it, so re-sending a span with a start on another day stores a second row.
  For a repeated key a completed span beats an in-progress one, else the later write wins.
- ``"legacy"`` (SGP's legacy store): one row per (account, id), and the last write wins,
  whatever it is: an in-progress write landing after the completed one reopens the span.

Either way `write` reports how many in-progress writes came after their span's completed
one (`count_reopened`): the ordering defect a client must never commit, visible as a stuck
span on the legacy store and silently forgiven by the tracing service.

Each row keeps the whole answer-shaped span as JSON bytes
(`data`) next to the few columns searches need, so echoing and reading a span never
re-encode it.

Why the key index lives in a Python dict and not in a SQLite UNIQUE index: inserting random
uuid keys into a B-tree gets slower as the table grows (about 3x at 200k rows in our
measurements), while a dict look-up stays flat, and ingestion throughput is the point of this
server. The table itself is append-mostly (rows addressed by `seq`). The dict costs a few
hundred bytes per stored span and is rebuilt from the table when a database file is opened.
One server process per database file at a time.

A single connection is used from the event loop thread only; every call is short and
synchronous, which is faster than hopping to a worker thread for each request. The store owns
it: `close()` closes it (the app does so on shutdown and when its store is replaced), and a
store garbage-collected unclosed closes it on the way out, so a test that drops an app
without closing it leaks no connection (Python 3.13 warns about every unclosed one).
"""

from __future__ import annotations

import sqlite3
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import orjson

__all__ = ["STORE_KINDS", "Row", "SearchQuery", "SpanStore", "StoreKind", "count_reopened"]

StoreKind = Literal["tracing", "legacy"]
STORE_KINDS: tuple[StoreKind, ...] = ("tracing", "legacy")

# (account_id, trace_id, id, day, start_us, end_us, data): the key, the two timestamps the
# upsert rule and sorting need, and the whole answer-shaped span as JSON bytes.
Row = tuple[str, str, str, int, int, int | None, bytes]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spans (
    seq INTEGER PRIMARY KEY,
    account_id TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    id TEXT NOT NULL,
    day INTEGER NOT NULL,
    start_us INTEGER NOT NULL,
    end_us INTEGER,
    data BLOB NOT NULL
);
"""
# No seq: SQLite gives a new row max(seq) + 1, which `write` predicts (and checks) since this
# connection is the only writer. Letting SQLite append is cheaper than binding the rowid.
_INSERT = (
    "INSERT INTO spans (account_id, trace_id, id, day, start_us, end_us, data) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
# trace_id and day change only on the legacy store, where the id alone is the key.
_UPDATE = "UPDATE spans SET trace_id = ?, day = ?, start_us = ?, end_us = ?, data = ? WHERE seq = ?"

# Index entry of one stored row: (trace_id, day, signed seq), the sign telling whether the
# stored span is completed (+) or in progress (-). An id stored once (nearly always, and
# always on the legacy store) maps to one entry; an id stored under several traces or days
# maps to a list of them.
_Entry = tuple[str, int, int]


def count_reopened(kind: StoreKind, stored_completed: bool | None, writes: Iterable[bool]) -> int:
    """How many of `writes` (completed or not, in arrival order, all for one key) are
    in-progress writes arriving after a completed one: on the tracing store those ignored
    after a completed write (stored or earlier in the batch), on the legacy store those
    that overwrite a completed span. `stored_completed` is None for a key not stored yet."""
    reopened = 0
    completed = bool(stored_completed)
    for write_completed in writes:
        if not write_completed and completed:
            reopened += 1
        # The tracing service never forgets a completion; the legacy store keeps the last.
        completed = write_completed or (completed and kind == "tracing")
    return reopened


def json_field(name: str) -> str:
    """SQL for one top-level field of the stored span (`name` must be a trusted identifier)."""
    return f"json_extract(CAST(data AS TEXT), '$.{name}')"


_MAX_INT = "9223372036854775807"
# Sort keys the search endpoint accepts, mapped to SQL expressions (no user text reaches SQL).
_SORT_EXPR = {
    "start_timestamp": "start_us",
    "end_timestamp": f"COALESCE(end_us, {_MAX_INT})",
    # An in-progress span has no known duration: it sorts as unbounded.
    "duration_ms": f"COALESCE((end_us - start_us) / 1000, {_MAX_INT})",
    "input_tokens": f"COALESCE({json_field('input_tokens')}, 0)",
    "output_tokens": f"COALESCE({json_field('output_tokens')}, 0)",
}
SORT_KEYS = frozenset(_SORT_EXPR)


class SearchQuery:
    """Filters of ``POST /v5/spans/search`` translated to a SQL WHERE clause."""

    def __init__(self, account_id: str) -> None:
        self.clauses: list[str] = ["account_id = ?"]
        self.params: list[Any] = [account_id]
        # Python predicates the clauses call by name: registered on the connection to run.
        self.functions: dict[str, Callable[..., Any]] = {}

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
    """Spans in SQLite (`path` is a file or ``":memory:"``), with the upsert rule of `kind`."""

    def __init__(self, path: str = ":memory:", *, kind: StoreKind = "tracing") -> None:
        if kind not in STORE_KINDS:
            raise ValueError(f"store kind must be one of {list(STORE_KINDS)}, got {kind!r}")
        self.path = path
        self.kind: StoreKind = kind
        self._legacy = kind == "legacy"
        # check_same_thread=False: in-process tests may build the app in one thread and serve
        # it from another; the app itself never uses the connection concurrently.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # Holds the connection, not the store: runs when the store is collected or closed.
        self._closer = weakref.finalize(self, self._db.close)
        # Bigger pages hold more ~1 KB rows each (only effective for a new database).
        self._db.execute("PRAGMA page_size=16384")
        self._db.execute("PRAGMA journal_mode=WAL")
        # A test server: losing the last writes on an OS crash is fine, fsyncs are not.
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("PRAGMA temp_store=MEMORY")
        self._db.executescript(_SCHEMA)
        # account -> span id -> entry or entries (see _Entry).
        self._index: dict[str, dict[str, _Entry | list[_Entry]]] = {}
        self._seq = 0
        self._load_index()

    def __repr__(self) -> str:
        return f"SpanStore(path={self.path!r}, kind={self.kind!r})"

    def _load_index(self) -> None:
        self._index = {}
        self._seq = 0
        rows = self._db.execute(
            "SELECT account_id, id, trace_id, day, seq, end_us IS NOT NULL FROM spans ORDER BY seq"
        )
        for account_id, span_id, trace_id, day, seq, completed in rows:
            entry = (trace_id, day, seq if completed else -seq)
            if self._legacy:  # one row per id; a file written by the other kind: last wins
                self._index.setdefault(account_id, {})[span_id] = entry
            else:
                self._add(account_id, span_id, entry)
            self._seq = seq

    def _add(self, account_id: str, span_id: str, entry: _Entry) -> None:
        ids = self._index.get(account_id)
        if ids is None:
            ids = self._index[account_id] = {}
        found = ids.get(span_id)
        if found is None:
            ids[span_id] = entry
        elif type(found) is list:
            found.append(entry)
        else:
            assert isinstance(found, tuple)
            ids[span_id] = [found, entry]

    def _entries(self, account_id: str, span_id: str) -> list[_Entry]:
        found = self._index.get(account_id, {}).get(span_id)
        if found is None:
            return []
        return found if type(found) is list else [found]  # type: ignore[list-item]

    def close(self) -> None:
        """Close the database connection (idempotent); the store is unusable afterwards."""
        self._closer()

    @property
    def closed(self) -> bool:
        return not self._closer.alive

    def clear(self) -> None:
        self._db.execute("DELETE FROM spans")
        self._index = {}
        self._seq = 0

    # -- writes ---------------------------------------------------------------------------

    def write(
        self,
        rows: Sequence[Row],
        *,
        replace: bool,
        history: Mapping[int, Sequence[bool]] | None = None,
    ) -> tuple[list[bytes], int]:
        """Store `rows` (already deduplicated by key) and return the stored span of each, and
        how many in-progress writes came after their span's completed one (`count_reopened`).

        `replace=True` is the upsert (tracing store: completed beats in-progress, else the new
        row wins; legacy store: the new row wins); `replace=False` inserts only keys not
        stored yet and keeps what is there. `history` gives, for a row whose key the batch
        wrote several times, whether each of those writes was completed, in order.
        """
        kind = self.kind
        history = history or {}
        if rows and self._all_new(rows):
            reopened = sum(count_reopened(kind, None, writes) for writes in history.values())
            return [row[6] for row in rows], reopened
        legacy = self._legacy
        reopened = 0
        out = [row[6] for row in rows]
        inserts: list[Row] = []
        updates: list[tuple[str, int, int, int | None, bytes, int]] = []
        kept: dict[int, int] = {}  # seq -> position in `out` whose stored span is echoed
        first_seq = self._seq + 1
        try:
            ids: dict[str, _Entry | list[_Entry]] | None = None
            ids_account = None
            for pos, row in enumerate(rows):
                account_id, trace_id, span_id, day, start_us, end_us, data = row
                if account_id != ids_account:
                    ids = self._index.get(account_id)
                    if ids is None:
                        ids = self._index[account_id] = {}
                    ids_account = account_id
                assert ids is not None
                writes = history.get(pos)
                found = ids.get(span_id)
                if found is None:  # the usual case: a new span
                    self._seq += 1
                    ids[span_id] = (trace_id, day, self._seq if end_us is not None else -self._seq)
                    inserts.append(row)
                    if writes is not None:
                        reopened += count_reopened(kind, None, writes)
                    continue
                seq = 0
                if isinstance(found, tuple):
                    if legacy or (found[0] == trace_id and found[1] == day):
                        seq = found[2]
                else:
                    for entry in found:
                        if entry[0] == trace_id and entry[1] == day:
                            seq = entry[2]
                            break
                if not seq:
                    self._seq += 1
                    seq = self._seq
                    self._add(
                        account_id, span_id, (trace_id, day, seq if end_us is not None else -seq)
                    )
                    inserts.append(row)
                    if writes is not None:
                        reopened += count_reopened(kind, None, writes)
                    continue
                if replace or not legacy:  # a legacy insert-only write overwrites nothing
                    reopened += count_reopened(
                        kind, seq > 0, (end_us is not None,) if writes is None else writes
                    )
                if replace and (legacy or end_us is not None or seq < 0):
                    updates.append((trace_id, day, start_us, end_us, data, abs(seq)))
                    entry = (trace_id, day, abs(seq) if end_us is not None else -abs(seq))
                    if legacy:
                        ids[span_id] = entry
                    elif seq < 0 and end_us is not None:
                        self._replace_entry(account_id, span_id, entry)
                else:
                    kept[abs(seq)] = pos
            db = self._db
            db.execute("BEGIN")
            try:
                if inserts:
                    db.executemany(_INSERT, inserts)
                    last = db.execute("SELECT max(seq) FROM spans").fetchone()[0]
                    if last != first_seq + len(inserts) - 1:
                        raise RuntimeError("spans table changed outside this store")  # noqa: TRY301
                if updates:
                    db.executemany(_UPDATE, updates)
                for seq, data in self._fetch(list(kept)):
                    out[kept[seq]] = data
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except BaseException:
            self._load_index()  # the index must never disagree with the table
            raise
        return out, reopened

    def _all_new(self, rows: Sequence[Row]) -> bool:
        """Store `rows` if none of their span ids is stored yet and all are distinct (a burst
        of new spans, the usual case): index updates and the insert without a per-row loop.
        Returns False, having done nothing, otherwise."""
        account_id = rows[0][0]
        ids = self._index.get(account_id)
        if ids is None:
            ids = self._index[account_id] = {}
        span_ids = [row[2] for row in rows]
        if any(map(ids.__contains__, span_ids)) or len(set(span_ids)) != len(rows):
            return False
        if any(row[0] != account_id for row in rows):
            return False
        first = self._seq + 1
        seqs = range(first, first + len(rows))
        entries = [
            (row[1], row[3], seq if row[5] is not None else -seq)
            for row, seq in zip(rows, seqs, strict=True)
        ]
        db = self._db
        db.execute("BEGIN")
        try:
            db.executemany(_INSERT, rows)
            if db.execute("SELECT max(seq) FROM spans").fetchone()[0] != seqs[-1]:
                raise RuntimeError("spans table changed outside this store")  # noqa: TRY301
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        ids.update(zip(span_ids, entries, strict=True))
        self._seq = seqs[-1]
        return True

    def _replace_entry(self, account_id: str, span_id: str, entry: _Entry) -> None:
        ids = self._index[account_id]
        found = ids[span_id]
        if type(found) is tuple:
            ids[span_id] = entry
        else:
            assert isinstance(found, list)
            for n, old in enumerate(found):
                if old[0] == entry[0] and old[1] == entry[1]:
                    found[n] = entry

    def _fetch(self, seqs: list[int]) -> list[tuple[int, bytes]]:
        result: list[tuple[int, bytes]] = []
        for start in range(0, len(seqs), 500):  # stay below the bound-parameter limit
            chunk = seqs[start : start + 500]
            sql = f"SELECT seq, data FROM spans WHERE seq IN ({', '.join('?' * len(chunk))})"  # noqa: S608
            result.extend((seq, bytes(data)) for seq, data in self._db.execute(sql, chunk))
        return result

    # -- reads ----------------------------------------------------------------------------

    def traces_of(self, account_id: str, span_ids: Iterable[str]) -> dict[str, set[str]]:
        """For each of `span_ids` that is stored, the trace ids it is stored under."""
        result: dict[str, set[str]] = {}
        for span_id in span_ids:
            entries = self._entries(account_id, span_id)
            if entries:
                result[span_id] = {entry[0] for entry in entries}
        return result

    def get_data(self, account_id: str, span_id: str) -> bytes | None:
        """The stored span with this id (the most recently created row if several)."""
        entries = self._entries(account_id, span_id)
        if not entries:
            return None
        [(_, data)] = self._fetch([max(abs(entry[2]) for entry in entries)])
        return data

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
        for name, function in query.functions.items():
            self._db.create_function(name, -1, function, deterministic=True)
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
