"""SQLite backend: one file, shared by every API process on the machine (the default).

Why these settings:
- WAL lets readers (other threads, other processes) run beside the one writer, and
  ``synchronous=NORMAL`` in WAL mode loses nothing when a process crashes (only an OS crash
  can drop the last commits) for far fewer fsyncs than ``FULL``.
- ``busy_timeout`` makes a writer wait for another process's transaction instead of failing
  at once; past it the store is stuck and says so (:class:`StoreUnavailable`).
- ``auto_vacuum=INCREMENTAL`` (only settable when the file is created) lets :meth:`prune`
  give freed pages back to the disk without a full ``VACUUM``.
- Every read-modify-write runs in ``BEGIN IMMEDIATE``: it takes the write lock before
  reading, so two processes cannot both see "running" and both finish a response.
- sqlite3 calls block, so they run on a small dedicated thread pool, each thread with its
  own connection; the event loop only awaits them.
- The writes every response makes (created, finished; a background response's events; a
  conversation's new turn) are group-committed: those that arrive while one transaction
  runs go together into the next, each in its own savepoint. Under load a process then pays
  one transaction, one thread hop and one wake-up of the event loop for many writes, and
  its writes never queue for the file's lock behind each other.
"""

import asyncio
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson

from ..common.private import make_dir, touch
from .base import (
    JSON,
    RUNNING_STATUSES,
    ItemPage,
    Order,
    Retention,
    Store,
    StoredConversation,
    StoredResponse,
    StoreUnavailable,
    page_of,
)

T = TypeVar("T")

# Kinds of a response's items (``response_items.kind``).
INPUT, OUTPUT = 0, 1

# ``_MIGRATIONS[v]`` brings a file from ``PRAGMA user_version`` v to v + 1; a new schema
# version appends its statements here, so old files upgrade in place when opened.
_MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE responses (
            id TEXT PRIMARY KEY,
            created_at REAL NOT NULL,
            running INTEGER NOT NULL,
            owner TEXT,
            previous_response_id TEXT,
            conversation_id TEXT,
            background INTEGER NOT NULL,
            data BLOB NOT NULL
        )""",
        "CREATE INDEX responses_by_age ON responses (created_at)",
        "CREATE INDEX responses_running ON responses (running) WHERE running = 1",
        # The response's own copy of its input and output items, in order.
        """CREATE TABLE response_items (
            response_id TEXT NOT NULL,
            kind INTEGER NOT NULL,
            position INTEGER NOT NULL,
            item_id TEXT,
            data BLOB NOT NULL,
            PRIMARY KEY (response_id, kind, position)
        )""",
        # Which copy answers for a server-made item id: the first response that wrote it.
        """CREATE TABLE item_index (
            item_id TEXT PRIMARY KEY,
            response_id TEXT NOT NULL,
            kind INTEGER NOT NULL,
            position INTEGER NOT NULL
        ) WITHOUT ROWID""",
        "CREATE INDEX item_index_by_response ON item_index (response_id)",
        """CREATE TABLE events (
            response_id TEXT NOT NULL,
            sequence_number INTEGER NOT NULL,
            data TEXT NOT NULL,
            PRIMARY KEY (response_id, sequence_number)
        ) WITHOUT ROWID""",
        "CREATE TABLE cancels (response_id TEXT PRIMARY KEY) WITHOUT ROWID",
        "CREATE TABLE owners (owner TEXT PRIMARY KEY, expires_at REAL NOT NULL) WITHOUT ROWID",
        "CREATE TABLE conversations (id TEXT PRIMARY KEY, updated_at REAL NOT NULL, data BLOB NOT NULL)",
        "CREATE INDEX conversations_by_age ON conversations (updated_at)",
        """CREATE TABLE conversation_items (
            conversation_id TEXT NOT NULL,
            position INTEGER NOT NULL,
            item_id TEXT NOT NULL,
            data BLOB NOT NULL,
            PRIMARY KEY (conversation_id, position)
        )""",
        "CREATE UNIQUE INDEX conversation_items_by_id ON conversation_items (conversation_id, item_id)",
    ],
    # 2: what each record takes (retention by bytes, the history's budget; issue 24).
    [
        "ALTER TABLE responses ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE conversations ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0",
        """UPDATE responses SET bytes = length(data)
            + (SELECT COALESCE(SUM(length(data)), 0) FROM response_items WHERE response_id = responses.id)
            + (SELECT COALESCE(SUM(length(CAST(data AS BLOB))), 0) FROM events WHERE response_id = responses.id)""",
        """UPDATE conversations SET bytes = length(data)
            + (SELECT COALESCE(SUM(length(data)), 0) FROM conversation_items
               WHERE conversation_id = conversations.id)""",
    ],
    # 3: the tenant (API key) that made each record; NULL: shared, as every older record is.
    [
        "ALTER TABLE responses ADD COLUMN tenant TEXT",
        "ALTER TABLE conversations ADD COLUMN tenant TEXT",
    ],
]
SCHEMA_VERSION = len(_MIGRATIONS)

# Primary result codes that mean the file cannot be used right now (as opposed to a bug in a
# statement): busy/locked past the timeout, I/O errors, read-only, full, unopenable, corrupt.
_UNAVAILABLE = frozenset(
    {
        sqlite3.SQLITE_PERM,
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
        sqlite3.SQLITE_NOTADB,
    }
)
_CHUNK = 500  # ids per IN (...) list or per prune transaction, well under SQLite's limits
_BATCH = 256  # writes per group commit at most, so that one transaction stays short

_Waiting = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]"]


class _Group:
    """One event loop's writes waiting for a group commit; ``busy`` while a batch runs."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waiting: list[_Waiting] = []
        self.busy = False


def _deliver(batch: list[_Waiting], results: list[tuple[bool, Any]]) -> None:
    for (_, _, done), (ok, value) in zip(batch, results):
        if done.done():  # its caller was cancelled; the write happened all the same
            continue
        if ok:
            done.set_result(value)
        else:
            done.set_exception(value)


class SQLiteStore(Store):
    """The store in one SQLite file, safe for many threads and processes at once."""

    backend = "sqlite"

    def __init__(
        self, path: Path, retention: Retention = Retention(), *, busy_timeout: float = 5.0, threads: int = 4
    ) -> None:
        super().__init__(retention)
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        # Nothing touches the disk here: the first call opens the file on a pool thread.
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vllm-responses-sqlite")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._schema_ready = False
        self._closed = False
        self._groups: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Group] = weakref.WeakKeyDictionary()

    # -- plumbing -------------------------------------------------------------------------
    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn, args)

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        """Runs on a pool thread; turns "the file cannot be used" into StoreUnavailable."""
        try:
            return fn(self._connection(), *args)
        except (sqlite3.Error, OSError) as e:
            raise self._unavailable(e) from e

    def _unavailable(self, e: BaseException) -> BaseException:
        """``e``, or StoreUnavailable when it says the file cannot be used right now."""
        if isinstance(e, sqlite3.Error):
            code = getattr(e, "sqlite_errorcode", None)
            if code is not None and code & 0xFF in _UNAVAILABLE:
                return StoreUnavailable(f"SQLite store {self.path}: {e}")
        elif isinstance(e, OSError):  # the parent directory cannot be created
            return StoreUnavailable(f"SQLite store {self.path}: {e}")
        return e

    async def _commit(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(conn, *args)`` inside a write transaction, group-committed with the writes
        that wait beside it (see the module's docstring)."""
        loop = asyncio.get_running_loop()
        group = self._groups.get(loop)
        if group is None:
            group = self._groups[loop] = _Group(loop)
        done: asyncio.Future[T] = loop.create_future()
        group.waiting.append((fn, args, done))
        if not group.busy:
            self._next_batch(group)
        return await done

    def _next_batch(self, group: "_Group") -> None:
        """On the event loop: send what waits as one batch to a pool thread."""
        batch, group.waiting = group.waiting[:_BATCH], group.waiting[_BATCH:]
        group.busy = bool(batch)
        if not batch:
            return
        try:
            self._executor.submit(self._commit_batch, group, batch)
        except RuntimeError as exc:  # the pool is shut down: the store is closed
            batch, group.waiting, group.busy = batch + group.waiting, [], False
            _deliver(batch, [(False, exc)] * len(batch))

    def _commit_batch(self, group: "_Group", batch: list[_Waiting]) -> None:
        """On a pool thread: the batch in one transaction, each write in a savepoint so that
        one that fails leaves the others; then its results back to the event loop at once."""
        results: list[tuple[bool, Any]] = []
        try:
            conn = self._connection()
            with _write(conn):
                for fn, args, _ in batch:
                    conn.execute("SAVEPOINT one")
                    try:
                        value = fn(conn, *args)
                    except Exception as e:
                        if not conn.in_transaction:  # SQLite rolled it all back (I/O error, disk full)
                            raise
                        conn.execute("ROLLBACK TO one")
                        conn.execute("RELEASE one")
                        results.append((False, self._unavailable(e)))
                    else:
                        conn.execute("RELEASE one")
                        results.append((True, value))
        except Exception as e:  # noqa: BLE001 - the transaction as a whole (BEGIN, COMMIT): every write fails
            results = [(False, self._unavailable(e)) for _ in batch]
        try:
            group.loop.call_soon_threadsafe(self._batch_done, group, batch, results)
        except RuntimeError:  # that event loop is closed: nobody waits any more
            pass

    def _batch_done(self, group: "_Group", batch: list[_Waiting], results: list[tuple[bool, Any]]) -> None:
        _deliver(batch, results)
        self._next_batch(group)

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._open()
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _open(self) -> sqlite3.Connection:
        make_dir(self.path.parent)
        touch(self.path)  # 0600: the store holds what every client sent
        # isolation_level=None: no implicit transactions, each one is spelled out below.
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            conn.execute("PRAGMA synchronous = NORMAL")
            # A checkpointed WAL is cut back to this size instead of keeping its peak size.
            conn.execute("PRAGMA journal_size_limit = 67108864")
            with self._lock:
                if not self._schema_ready:
                    _migrate(conn)
                    self._schema_ready = True
        except BaseException:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._shutdown)

    def _shutdown(self) -> None:
        self._executor.shutdown(wait=True)
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    # -- responses ------------------------------------------------------------------------
    async def create_response(self, record: StoredResponse) -> None:
        await self._commit(self._create_response, record)

    def _create_response(self, conn: sqlite3.Connection, record: StoredResponse) -> None:
        _delete_response_rows(conn, record.id)
        data = orjson.dumps(record.response)
        conn.execute(
            "INSERT INTO responses (id, created_at, running, owner, previous_response_id, conversation_id, background,"
            " data, bytes, tenant) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
            (
                record.id,
                record.created_at,
                _running(record.response),
                record.owner,
                record.previous_response_id,
                record.conversation_id,
                record.background,
                data,
                record.tenant,
            ),
        )
        size = len(data) + _store_items(conn, record.id, INPUT, record.input_items or [], record.client_ids)
        conn.execute("UPDATE responses SET bytes = ? WHERE id = ?", (size, record.id))

    async def finish_response(self, response: JSON) -> bool:
        return await self._commit(self._finish_response, response)

    def _finish_response(self, conn: sqlite3.Connection, response: JSON) -> bool:
        rid, data = response["id"], orjson.dumps(response)
        # Every expression on the right reads the row as it was: the old data's length goes.
        cur = conn.execute(
            "UPDATE responses SET bytes = bytes - length(data) + ? - (SELECT COALESCE(SUM(length(data)), 0)"
            " FROM response_items WHERE response_id = ? AND kind = ?), data = ?, running = ?, owner = NULL"
            " WHERE id = ? AND running = 1",
            (len(data), rid, OUTPUT, data, _running(response), rid),
        )
        if cur.rowcount == 0:
            return False
        conn.execute("DELETE FROM item_index WHERE response_id = ? AND kind = ?", (rid, OUTPUT))
        conn.execute("DELETE FROM response_items WHERE response_id = ? AND kind = ?", (rid, OUTPUT))
        size = _store_items(conn, rid, OUTPUT, response.get("output") or [])
        conn.execute("UPDATE responses SET bytes = bytes + ? WHERE id = ?", (size, rid))
        return True

    async def update_running_response(self, response: JSON) -> bool:
        return await self._commit(self._update_running_response, response)

    def _update_running_response(self, conn: sqlite3.Connection, response: JSON) -> bool:
        # One statement: atomic on its own, the status check and the write cannot be split.
        data = orjson.dumps(response)
        cur = conn.execute(
            "UPDATE responses SET bytes = bytes - length(data) + ?, data = ?, running = ? WHERE id = ? AND running = 1",
            (len(data), data, _running(response), response["id"]),
        )
        return cur.rowcount > 0

    async def get_response(self, response_id: str, *, with_input: bool = False) -> StoredResponse | None:
        return await self._run(self._get_response, response_id, with_input)

    def _get_response(self, conn: sqlite3.Connection, response_id: str, with_input: bool) -> StoredResponse | None:
        with _read(conn):
            row = conn.execute(
                "SELECT data, previous_response_id, conversation_id, background, owner, tenant FROM responses WHERE "
                "id = ?",
                (response_id,),
            ).fetchone()
            if row is None:
                return None
            inputs, size = None, len(row[0])
            if with_input:
                rows = conn.execute(
                    "SELECT data FROM response_items WHERE response_id = ? AND kind = ? ORDER BY position",
                    (response_id, INPUT),
                ).fetchall()
                inputs = [orjson.loads(data) for (data,) in rows]
                size += sum(len(data) for (data,) in rows)
        data, previous, conversation, background, owner, tenant = row
        return StoredResponse(
            orjson.loads(data), inputs, previous, conversation, bool(background), owner, size=size, tenant=tenant
        )

    async def delete_response(self, response_id: str) -> bool:
        return await self._run(self._delete_response, response_id)

    def _delete_response(self, conn: sqlite3.Connection, response_id: str) -> bool:
        with _write(conn):
            return _delete_response_rows(conn, response_id)

    async def get_items(self, item_ids: list[str], tenant: str | None = None) -> dict[str, JSON]:
        return await self._run(self._get_items, item_ids, tenant)

    def _get_items(self, conn: sqlite3.Connection, item_ids: list[str], tenant: str | None) -> dict[str, JSON]:
        found: dict[str, JSON] = {}
        with _read(conn):
            for chunk in _chunks(list(dict.fromkeys(item_ids))):
                # base.visible, in SQL: a request without a tenant sees all, a record without one is seen by all.
                rows = conn.execute(
                    "SELECT x.item_id, i.data FROM item_index x JOIN response_items i"
                    " ON i.response_id = x.response_id AND i.kind = x.kind AND i.position = x.position"
                    " JOIN responses r ON r.id = x.response_id"
                    f" WHERE x.item_id IN ({_marks(chunk)}) AND (? IS NULL OR r.tenant IS NULL OR r.tenant = ?)",
                    [*chunk, tenant, tenant],
                ).fetchall()
                found.update((item_id, orjson.loads(data)) for item_id, data in rows)
        return found

    # -- background events and cancellation -----------------------------------------------
    async def append_events(self, response_id: str, events: list[tuple[int, str]]) -> None:
        await self._commit(self._append_events, response_id, events)

    def _append_events(self, conn: sqlite3.Connection, response_id: str, events: list[tuple[int, str]]) -> None:
        # Events of a response that is gone (deleted or pruned while its owner still
        # runs) are dropped: nothing would ever delete them again.
        if conn.execute("SELECT 1 FROM responses WHERE id = ?", (response_id,)).fetchone() is None:
            return
        size = 0
        for seq, data in events:  # one by one: a retried event (ignored) adds no bytes
            if conn.execute("INSERT OR IGNORE INTO events VALUES (?, ?, ?)", (response_id, seq, data)).rowcount:
                size += len(data.encode())
        conn.execute("UPDATE responses SET bytes = bytes + ? WHERE id = ?", (size, response_id))

    async def read_events(self, response_id: str, after: int = -1, limit: int | None = None) -> list[tuple[int, str]]:
        return await self._run(self._read_events, response_id, after, limit)

    def _read_events(
        self, conn: sqlite3.Connection, response_id: str, after: int, limit: int | None
    ) -> list[tuple[int, str]]:
        rows = conn.execute(
            "SELECT sequence_number, data FROM events WHERE response_id = ? AND sequence_number > ?"
            " ORDER BY sequence_number LIMIT ?",
            (response_id, after, -1 if limit is None else max(limit, 0)),
        ).fetchall()
        return [(seq, data) for seq, data in rows]

    async def request_cancel(self, response_id: str) -> None:
        await self._run(self._request_cancel, response_id)

    def _request_cancel(self, conn: sqlite3.Connection, response_id: str) -> None:
        # Only for a response that exists: a flag nothing owns would never be deleted.
        conn.execute("INSERT OR IGNORE INTO cancels SELECT id FROM responses WHERE id = ?", (response_id,))

    async def cancel_requested(self, response_ids: list[str]) -> set[str]:
        return await self._run(self._cancel_requested, response_ids)

    def _cancel_requested(self, conn: sqlite3.Connection, response_ids: list[str]) -> set[str]:
        found: set[str] = set()
        for chunk in _chunks(list(dict.fromkeys(response_ids))):
            rows = conn.execute(f"SELECT response_id FROM cancels WHERE response_id IN ({_marks(chunk)})", chunk)
            found.update(rid for (rid,) in rows)
        return found

    # -- owners -----------------------------------------------------------------------------
    async def heartbeat(self, owner: str, ttl: float) -> None:
        await self._run(self._heartbeat, owner, ttl)

    def _heartbeat(self, conn: sqlite3.Connection, owner: str, ttl: float) -> None:
        # Wall-clock time: the processes sharing the file share the machine's clock.
        conn.execute(
            "INSERT INTO owners VALUES (?, ?) ON CONFLICT (owner) DO UPDATE SET expires_at = excluded.expires_at",
            (owner, time.time() + ttl),
        )

    async def alive(self, owner: str) -> bool:
        return await self._run(self._alive, owner)

    def _alive(self, conn: sqlite3.Connection, owner: str) -> bool:
        row = conn.execute("SELECT expires_at FROM owners WHERE owner = ?", (owner,)).fetchone()
        return row is not None and row[0] > time.time()

    async def running_responses(self) -> list[tuple[str, str | None]]:
        return await self._run(self._running_responses)

    def _running_responses(self, conn: sqlite3.Connection) -> list[tuple[str, str | None]]:
        rows = conn.execute("SELECT id, owner FROM responses WHERE running = 1").fetchall()
        return [(rid, owner) for rid, owner in rows]

    async def count_responses(self) -> int:
        return await self._run(lambda conn: conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    # -- conversations --------------------------------------------------------------------
    async def create_conversation(self, conversation: JSON, items: list[JSON], tenant: str | None = None) -> None:
        await self._run(self._create_conversation, conversation, items, tenant)

    def _create_conversation(
        self, conn: sqlite3.Connection, conversation: JSON, items: list[JSON], tenant: str | None
    ) -> None:
        cid = conversation["id"]
        with _write(conn):
            conn.execute("DELETE FROM conversation_items WHERE conversation_id = ?", (cid,))
            conn.execute(
                "INSERT OR REPLACE INTO conversations (id, updated_at, data, tenant) VALUES (?, ?, ?, ?)",
                (cid, time.time(), orjson.dumps(conversation), tenant),
            )
            _add_conversation_items(conn, cid, items)
            _resize_conversation(conn, cid)

    async def get_conversation(self, conversation_id: str) -> StoredConversation | None:
        return await self._run(self._get_conversation, conversation_id)

    def _get_conversation(self, conn: sqlite3.Connection, conversation_id: str) -> StoredConversation | None:
        row = conn.execute("SELECT data, bytes, tenant FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
        return None if row is None else StoredConversation(orjson.loads(row[0]), row[1], row[2])

    async def update_conversation(self, conversation: JSON) -> bool:
        return await self._run(self._update_conversation, conversation)

    def _update_conversation(self, conn: sqlite3.Connection, conversation: JSON) -> bool:
        data = orjson.dumps(conversation)
        cur = conn.execute(
            "UPDATE conversations SET bytes = bytes - length(data) + ?, data = ?, updated_at = ? WHERE id = ?",
            (len(data), data, time.time(), conversation["id"]),
        )
        return cur.rowcount > 0

    async def delete_conversation(self, conversation_id: str) -> bool:
        return await self._run(self._delete_conversation, conversation_id)

    def _delete_conversation(self, conn: sqlite3.Connection, conversation_id: str) -> bool:
        with _write(conn):
            return _delete_conversation_rows(conn, conversation_id)

    async def add_conversation_items(self, conversation_id: str, items: list[JSON]) -> bool:
        return await self._commit(self._add_items, conversation_id, items)

    def _add_items(self, conn: sqlite3.Connection, conversation_id: str, items: list[JSON]) -> bool:
        cur = conn.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (time.time(), conversation_id))
        if cur.rowcount == 0:
            return False
        _add_conversation_items(conn, conversation_id, items)
        _resize_conversation(conn, conversation_id)
        return True

    async def list_conversation_items(
        self, conversation_id: str, *, after: str | None = None, limit: int | None = None, order: Order = "asc"
    ) -> ItemPage | None:
        return await self._run(self._list_items, conversation_id, after, limit, order)

    def _list_items(
        self, conn: sqlite3.Connection, conversation_id: str, after: str | None, limit: int | None, order: Order
    ) -> ItemPage | None:
        compare, direction = (">", "ASC") if order == "asc" else ("<", "DESC")
        fetch = -1 if limit is None else limit + 1  # one past the page tells has_more
        with _read(conn):
            if conn.execute("SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)).fetchone() is None:
                return None
            if after is None:
                rows = conn.execute(
                    f"SELECT data FROM conversation_items WHERE conversation_id = ? ORDER BY position {direction} "
                    "LIMIT ?",
                    (conversation_id, fetch),
                ).fetchall()
            else:
                # An unknown ``after`` makes the subquery NULL, and nothing compares to NULL:
                # the empty page the contract asks for.
                rows = conn.execute(
                    f"SELECT data FROM conversation_items WHERE conversation_id = ? AND position {compare}"
                    " (SELECT position FROM conversation_items WHERE conversation_id = ? AND item_id = ?)"
                    f" ORDER BY position {direction} LIMIT ?",
                    (conversation_id, conversation_id, after, fetch),
                ).fetchall()
        return page_of([orjson.loads(data) for (data,) in rows], limit)

    async def get_conversation_item(self, conversation_id: str, item_id: str) -> JSON | None:
        return await self._run(self._get_conversation_item, conversation_id, item_id)

    def _get_conversation_item(self, conn: sqlite3.Connection, conversation_id: str, item_id: str) -> JSON | None:
        row = conn.execute(
            "SELECT data FROM conversation_items WHERE conversation_id = ? AND item_id = ?", (conversation_id, item_id)
        ).fetchone()
        return None if row is None else orjson.loads(row[0])

    async def delete_conversation_item(self, conversation_id: str, item_id: str) -> bool:
        return await self._run(self._delete_conversation_item, conversation_id, item_id)

    def _delete_conversation_item(self, conn: sqlite3.Connection, conversation_id: str, item_id: str) -> bool:
        with _write(conn):
            cur = conn.execute(
                "DELETE FROM conversation_items WHERE conversation_id = ? AND item_id = ?", (conversation_id, item_id)
            )
            if cur.rowcount == 0:
                return False
            conn.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (time.time(), conversation_id))
            _resize_conversation(conn, conversation_id)
            return True

    # -- upkeep ---------------------------------------------------------------------------
    async def prune(self, now: float | None = None) -> int:
        return await self._run(self._prune, time.time() if now is None else now)

    def _prune(self, conn: sqlite3.Connection, now: float) -> int:
        r = self.retention
        responses: set[str] = set()
        conversations: set[str] = set()
        with _read(conn):
            if r.max_age_s is not None:
                rows = conn.execute(
                    "SELECT id FROM responses WHERE running = 0 AND created_at < ?", (now - r.max_age_s,)
                )
                responses.update(rid for (rid,) in rows)
                rows = conn.execute("SELECT id FROM conversations WHERE updated_at < ?", (now - r.max_age_s,))
                conversations.update(cid for (cid,) in rows)
            if r.max_responses is not None:
                rows = conn.execute(
                    "SELECT id FROM (SELECT id, running FROM responses ORDER BY created_at DESC, rowid DESC"
                    " LIMIT -1 OFFSET ?) WHERE running = 0",
                    (r.max_responses,),
                )
                responses.update(rid for (rid,) in rows)
            if r.max_conversations is not None:
                rows = conn.execute(
                    "SELECT id FROM conversations ORDER BY updated_at DESC, rowid DESC LIMIT -1 OFFSET ?",
                    (r.max_conversations,),
                )
                conversations.update(cid for (cid,) in rows)
            if r.max_bytes is not None:
                # Newest first, both kinds together: what lies past the budget goes.
                rows = conn.execute(
                    "SELECT kind, id FROM (SELECT kind, id, running, SUM(bytes) OVER (ORDER BY t DESC, kind, id"
                    " ROWS UNBOUNDED PRECEDING) AS total FROM (SELECT 0 AS kind, id, running, created_at AS t, bytes"
                    " FROM responses UNION ALL SELECT 1, id, 0, updated_at, bytes FROM conversations))"
                    " WHERE total > ? AND running = 0",
                    (r.max_bytes,),
                )
                for kind, rid in rows:
                    (conversations if kind else responses).add(rid)
        deleted = 0
        # Small transactions: other processes get the write lock between chunks.
        for chunk in _chunks(sorted(responses)):
            with _write(conn):
                for rid in chunk:
                    # Checked again under the lock: it may have been replaced by a running one.
                    if conn.execute("SELECT running FROM responses WHERE id = ?", (rid,)).fetchone() == (0,):
                        deleted += _delete_response_rows(conn, rid)
        for chunk in _chunks(sorted(conversations)):
            with _write(conn):
                deleted += sum(_delete_conversation_rows(conn, cid) for cid in chunk)
        conn.execute("DELETE FROM owners WHERE expires_at < ?", (time.time(),))
        if deleted:
            # Give the freed pages back to the file system; in WAL mode the file shrinks once
            # the WAL is checkpointed, which TRUNCATE does (and empties the WAL file too).
            # executescript, not execute: the pragma frees one page per step, and only
            # executescript steps a statement that returns no rows to its end.
            conn.executescript("PRAGMA incremental_vacuum")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        return deleted


# -- helpers (run on pool threads) -----------------------------------------------------------
def _migrate(conn: sqlite3.Connection) -> None:
    """Create or upgrade the schema; several processes may race here, BEGIN IMMEDIATE orders them."""
    # Only effective while the file has no table yet; a no-op on an existing file.
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    conn.execute("PRAGMA journal_mode = WAL").fetchall()
    with _write(conn):
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreUnavailable(
                f"SQLite store schema version {version} is newer than this vllm-responses knows ({SCHEMA_VERSION})"
            )
        for migration in _MIGRATIONS[version:]:
            for statement in migration:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


@contextmanager
def _write(conn: sqlite3.Connection) -> Iterator[None]:
    """A transaction holding the write lock from its first read (no lost updates)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


@contextmanager
def _read(conn: sqlite3.Connection) -> Iterator[None]:
    """A read transaction: several SELECTs see one snapshot."""
    conn.execute("BEGIN")
    try:
        yield
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")


def _running(response: JSON) -> bool:
    return response["status"] in RUNNING_STATUSES


def _store_items(
    conn: sqlite3.Connection, response_id: str, kind: int, items: list[JSON], private: frozenset[str] = frozenset()
) -> int:
    """Store a response's items; index the ids the server made (first writer keeps an id);
    returns their bytes."""
    rows = [(response_id, kind, i, item.get("id"), orjson.dumps(item)) for i, item in enumerate(items)]
    conn.executemany("INSERT INTO response_items VALUES (?, ?, ?, ?, ?)", rows)
    conn.executemany(
        "INSERT OR IGNORE INTO item_index VALUES (?, ?, ?, ?)",
        [
            (item_id, response_id, kind, i)
            for _, _, i, item_id, _ in rows
            if isinstance(item_id, str) and item_id not in private
        ],
    )
    return sum(len(data) for *_, data in rows)


def _resize_conversation(conn: sqlite3.Connection, conversation_id: str) -> None:
    """Count a conversation's bytes again (``length`` of a blob reads no content)."""
    conn.execute(
        "UPDATE conversations SET bytes = length(data) + (SELECT COALESCE(SUM(length(data)), 0)"
        " FROM conversation_items WHERE conversation_id = ?) WHERE id = ?",
        (conversation_id, conversation_id),
    )


def _delete_response_rows(conn: sqlite3.Connection, response_id: str) -> bool:
    for table, column in (
        ("item_index", "response_id"),
        ("response_items", "response_id"),
        ("events", "response_id"),
        ("cancels", "response_id"),
    ):
        conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (response_id,))
    return conn.execute("DELETE FROM responses WHERE id = ?", (response_id,)).rowcount > 0


def _delete_conversation_rows(conn: sqlite3.Connection, conversation_id: str) -> bool:
    conn.execute("DELETE FROM conversation_items WHERE conversation_id = ?", (conversation_id,))
    return conn.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,)).rowcount > 0


def _add_conversation_items(conn: sqlite3.Connection, conversation_id: str, items: list[JSON]) -> None:
    """Append at the end; an id already there keeps its position and takes the new content."""
    (last,) = conn.execute(
        "SELECT COALESCE(MAX(position), -1) FROM conversation_items WHERE conversation_id = ?", (conversation_id,)
    ).fetchone()
    conn.executemany(
        "INSERT INTO conversation_items VALUES (?, ?, ?, ?)"
        " ON CONFLICT (conversation_id, item_id) DO UPDATE SET data = excluded.data",
        [(conversation_id, last + 1 + i, item["id"], orjson.dumps(item)) for i, item in enumerate(items)],
    )


def _chunks(values: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


def _marks(values: list[str]) -> str:
    return ", ".join("?" * len(values))
