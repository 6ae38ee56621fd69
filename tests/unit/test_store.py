"""The store contract (store/base.py), checked against every backend: SQLite and a real Redis."""

import asyncio
import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import orjson
import pytest
import redis.asyncio as aioredis

from fakes import eventually
from redis_server import RedisServer
from vllm_responses.store import ItemPage, Retention, Store, StoredResponse, StoreUnavailable
from vllm_responses.store.redis import RedisStore
from vllm_responses.store import sqlite as sqlite_store
from vllm_responses.store.sqlite import SCHEMA_VERSION, SQLiteStore

pytestmark = pytest.mark.anyio

T0 = 1_700_000_000  # a created_at in the past, far enough for any max age used below
NO_LIMITS = Retention(max_age_s=None, max_responses=None, max_conversations=None, max_bytes=None)


@dataclass
class Backend:
    """Where a backend keeps its data; ``make`` opens another store object on the same data."""

    name: str
    where: str  # the SQLite file, or the Redis URL
    prefix: str = ""

    def make(self, retention: Retention = Retention()) -> Store:
        if self.name == "sqlite":
            return SQLiteStore(Path(self.where), retention)
        return RedisStore(self.where, retention, prefix=self.prefix)

    async def leftovers(self) -> list[str]:
        """What is still stored, by table or key (the Redis insertion counter aside)."""
        if self.name == "sqlite":
            with closing(sqlite3.connect(self.where)) as conn:
                tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
                return [t for t in tables if conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]]
        client = aioredis.Redis.from_url(self.where, decode_responses=True)
        try:
            return sorted(k for k in await client.keys(f"{self.prefix}*") if k != f"{self.prefix}seq")
        finally:
            await client.aclose()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", str(tmp_path / "state" / "responses.db"))
    server: RedisServer = request.getfixturevalue("redis_server")
    return Backend("redis", server.url, f"test-{uuid.uuid4().hex}:")


@pytest.fixture
async def make_store(backend: Backend) -> AsyncIterator[Callable[..., Store]]:
    opened: list[Store] = []

    def make(retention: Retention = Retention()) -> Store:
        opened.append(backend.make(retention))
        return opened[-1]

    yield make
    for store in opened:
        await store.close()


@pytest.fixture
def store(make_store: Callable[..., Store]) -> Store:
    return make_store()


# -- records -----------------------------------------------------------------------------------
def item(item_id: str, text: str = "hi") -> dict:
    return {"id": item_id, "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def response(rid: str, status: str = "in_progress", created_at: float = T0, output: list | None = None) -> dict:
    return {"id": rid, "object": "response", "status": status, "created_at": created_at, "output": output or []}


def record(rid: str, status: str = "in_progress", inputs: list | None = None, **kw) -> StoredResponse:
    created_at = kw.pop("created_at", T0)
    kw.setdefault("owner", "owner-1")
    return StoredResponse(response(rid, status, created_at), inputs or [], **kw)


def ids(page: ItemPage | None) -> list[str]:
    assert page is not None
    return [i["id"] for i in page.items]


# -- responses ---------------------------------------------------------------------------------
async def test_create_and_get_response(store: Store):
    rec = record("resp_1", inputs=[item("msg_a"), item("msg_b")], previous_response_id="resp_0",
                 conversation_id="conv_1", background=True, owner="proc-1")
    await store.create_response(rec)
    got = await store.get_response("resp_1")
    assert got is not None
    assert got.response == rec.response and got.input_items is None
    assert (got.previous_response_id, got.conversation_id, got.background, got.owner) == (
        "resp_0", "conv_1", True, "proc-1")
    got = await store.get_response("resp_1", with_input=True)
    assert got is not None and got.input_items == [item("msg_a"), item("msg_b")]
    assert await store.get_response("resp_missing") is None

    await store.create_response(record("resp_2", "completed", owner=None))
    got = await store.get_response("resp_2", with_input=True)
    assert got is not None and got.input_items == []
    assert (got.previous_response_id, got.conversation_id, got.background, got.owner) == (None, None, False, None)


async def test_create_replaces_record_and_its_items(store: Store):
    await store.create_response(record("resp_1", inputs=[item("msg_old")]))
    await store.append_events("resp_1", [(0, "{}")])
    await store.create_response(record("resp_1", "queued", inputs=[item("msg_new")]))
    got = await store.get_response("resp_1", with_input=True)
    assert got is not None and got.status == "queued" and got.input_items == [item("msg_new")]
    assert await store.get_items(["msg_old", "msg_new"]) == {"msg_new": item("msg_new")}
    assert await store.read_events("resp_1") == []


async def test_finish_response(store: Store):
    await store.create_response(record("resp_1", owner="proc-1"))
    final = response("resp_1", "completed", output=[item("msg_out")])
    assert await store.finish_response(final) is True
    got = await store.get_response("resp_1")
    assert got is not None and got.response == final and got.owner is None
    # Terminal: a second writer (a late cancel, the sweeper) changes nothing.
    assert await store.finish_response(response("resp_1", "failed")) is False
    assert (await store.get_response("resp_1")).status == "completed"
    assert await store.finish_response(response("resp_missing", "completed")) is False


async def test_first_terminal_writer_wins_under_concurrency(make_store: Callable[..., Store]):
    one, other = make_store(), make_store()  # two connections / clients racing
    await one.create_response(record("resp_1"))
    statuses = ["completed", "cancelled", "failed", "incomplete"] * 5
    results = await asyncio.gather(
        *((one if i % 2 else other).finish_response(response("resp_1", s)) for i, s in enumerate(statuses))
    )
    assert results.count(True) == 1
    winner = statuses[results.index(True)]
    assert (await other.get_response("resp_1")).status == winner


async def test_update_running_response(store: Store):
    await store.create_response(record("resp_1", "queued"))
    assert await store.update_running_response(response("resp_1", "in_progress")) is True
    assert (await store.get_response("resp_1")).status == "in_progress"
    assert await store.finish_response(response("resp_1", "cancelled")) is True
    assert await store.update_running_response(response("resp_1", "in_progress")) is False
    assert (await store.get_response("resp_1")).status == "cancelled"
    assert await store.update_running_response(response("resp_missing")) is False


async def test_delete_response_removes_everything_it_owns(store: Store):
    await store.create_response(record("resp_1", inputs=[item("msg_in")]))
    await store.append_events("resp_1", [(0, '{"a":0}')])
    await store.request_cancel("resp_1")
    await store.finish_response(response("resp_1", "completed", output=[item("msg_out")]))
    assert await store.delete_response("resp_1") is True
    assert await store.get_response("resp_1") is None
    assert await store.get_items(["msg_in", "msg_out"]) == {}
    assert await store.read_events("resp_1") == []
    assert await store.cancel_requested(["resp_1"]) == set()
    assert await store.delete_response("resp_1") is False


async def test_item_index(store: Store):
    await store.create_response(record("resp_1", inputs=[item("msg_in"), {"type": "message", "content": "no id"}]))
    assert await store.get_items(["msg_in", "msg_out", "msg_missing"]) == {"msg_in": item("msg_in")}
    await store.finish_response(response("resp_1", "completed", output=[item("msg_out", "answer")]))
    assert await store.get_items(["msg_in", "msg_out", "msg_in"]) == {
        "msg_in": item("msg_in"), "msg_out": item("msg_out", "answer")}
    assert await store.get_items([]) == {}

    # The first writer of an id keeps it; deleting the later one leaves it alone.
    await store.create_response(record("resp_2", inputs=[item("msg_out", "echoed")]))
    assert await store.get_items(["msg_out"]) == {"msg_out": item("msg_out", "answer")}
    assert await store.delete_response("resp_2")
    assert await store.get_items(["msg_out"]) == {"msg_out": item("msg_out", "answer")}
    assert await store.delete_response("resp_1")
    assert await store.get_items(["msg_in", "msg_out"]) == {}


async def test_client_chosen_ids_never_cross_responses(make_store: Callable[..., Store]):
    """Two clients (two processes on one store) both send an item with id ``msg_shared``:
    neither can take the other's item, and an id a client chose is not reachable by id at
    all (only from its own chain or conversation, which history resolves)."""
    alice, mallory = make_store(), make_store()
    await alice.create_response(record("resp_a", inputs=[item("msg_shared", "alice's secret")],
                                       client_ids=frozenset({"msg_shared"})))
    await alice.finish_response(response("resp_a", "completed", output=[item("msg_srv_a", "answer a")]))
    await mallory.create_response(record("resp_m", inputs=[item("msg_shared", "poison"), item("msg_srv_a", "forged")],
                                         client_ids=frozenset({"msg_shared", "msg_srv_a"})))
    await mallory.finish_response(response("resp_m", "completed"))
    # Mallory cannot read Alice's item by its client id, nor replace her server-made one.
    assert await mallory.get_items(["msg_shared", "msg_srv_a"]) == {"msg_srv_a": item("msg_srv_a", "answer a")}
    assert await alice.get_items(["msg_shared"]) == {}
    # Each response still holds its own copy.
    got_a, got_m = await alice.get_response("resp_a", with_input=True), await alice.get_response("resp_m", with_input=True)
    assert got_a is not None and got_a.input_items == [item("msg_shared", "alice's secret")]
    assert got_m is not None and got_m.input_items[0] == item("msg_shared", "poison")
    # Mallory's copy going away leaves Alice's index entry.
    assert await mallory.delete_response("resp_m")
    assert await alice.get_items(["msg_srv_a"]) == {"msg_srv_a": item("msg_srv_a", "answer a")}


async def test_tenants_are_kept_and_items_found_only_by_their_own(store: Store):
    """Each record keeps the tenant (API key) that made it; a server-made item id finds its
    item only for that tenant, or for a request without one; a record without a tenant
    (shared, or made before tenancy) is found by all (base.visible)."""
    await store.create_response(record("resp_a", inputs=[item("msg_a_in")], tenant="t_alice"))
    await store.finish_response(response("resp_a", "completed", output=[item("msg_a_out")]))
    await store.create_response(record("resp_s", inputs=[item("msg_shared_in")]))
    assert (await store.get_response("resp_a")).tenant == "t_alice"
    assert (await store.get_response("resp_a", with_input=True)).tenant == "t_alice"  # survives finishing
    assert (await store.get_response("resp_s")).tenant is None
    wanted = ["msg_a_in", "msg_a_out", "msg_shared_in"]
    assert set(await store.get_items(wanted, tenant="t_alice")) == set(wanted)
    assert set(await store.get_items(wanted)) == set(wanted)
    assert await store.get_items(wanted, tenant="t_bob") == {"msg_shared_in": item("msg_shared_in")}

    await store.create_conversation(conversation("conv_a"), [item("c1")], tenant="t_alice")
    await store.create_conversation(conversation("conv_s"), [])
    got = await store.get_conversation("conv_a")
    assert got is not None and (got.id, got.tenant, got.conversation) == ("conv_a", "t_alice", conversation("conv_a"))
    assert got.size >= len(json.dumps(conversation("conv_a"))) + len(json.dumps(item("c1"))) - 20
    assert (await store.get_conversation("conv_s")).tenant is None
    # An update keeps the tenant and counts the object's new size; recreated without one, it is shared.
    assert await store.update_conversation(conversation("conv_a", topic="x" * 1000))
    again = await store.get_conversation("conv_a")
    assert again.tenant == "t_alice" and again.size >= got.size + 1000
    await store.create_conversation(conversation("conv_a"), [])
    assert (await store.get_conversation("conv_a")).tenant is None


# -- background events and cancellation ----------------------------------------------------------
async def test_events_in_order_after_any_number(store: Store):
    await store.create_response(record("resp_1"))
    await store.append_events("resp_1", [(0, '{"n":0}'), (1, '{"n":1}')])
    await store.append_events("resp_1", [(2, '{"n":2}'), (3, '{"n":3}'), (4, '{"n":4}')])
    assert [s for s, _ in await store.read_events("resp_1")] == [0, 1, 2, 3, 4]
    assert await store.read_events("resp_1", after=2) == [(3, '{"n":3}'), (4, '{"n":4}')]
    assert await store.read_events("resp_1", after=0, limit=2) == [(1, '{"n":1}'), (2, '{"n":2}')]
    assert await store.read_events("resp_1", after=4) == []
    assert await store.read_events("resp_1", after=0, limit=0) == []
    assert await store.read_events("resp_missing") == []
    # A retried append (numbers already stored) adds nothing.
    await store.append_events("resp_1", [(4, '{"n":4}')])
    assert len(await store.read_events("resp_1")) == 5


async def test_events_of_a_missing_response_are_dropped(store: Store):
    # The response was deleted while its owner still ran: nothing would delete them again.
    await store.append_events("resp_gone", [(0, "{}")])
    assert await store.read_events("resp_gone") == []


async def test_wait_events_wakes_up_when_another_store_appends(make_store: Callable[..., Store]):
    writer, follower = make_store(), make_store()
    await writer.create_response(record("resp_1"))

    async def append_later() -> None:
        await asyncio.sleep(0.2)
        await writer.append_events("resp_1", [(0, '{"n":0}')])

    task = asyncio.create_task(append_later())
    with anyio.fail_after(20):  # a guard, not a speed claim: timeout=600 must not be reached
        assert await follower.wait_events("resp_1", after=-1, timeout=600) == [(0, '{"n":0}')]
    await task
    # Events already there come back without waiting; after the last one it times out empty.
    with anyio.fail_after(20):
        assert await follower.wait_events("resp_1", after=-1, timeout=600) == [(0, '{"n":0}')]
    assert await follower.wait_events("resp_1", after=0, timeout=0.2) == []
    assert await follower.wait_events("resp_1", after=0, timeout=0) == []


async def test_cancel_flags(store: Store):
    await store.create_response(record("resp_1"))
    await store.create_response(record("resp_2"))
    assert await store.cancel_requested(["resp_1", "resp_2"]) == set()
    await store.request_cancel("resp_1")
    await store.request_cancel("resp_1")
    await store.request_cancel("resp_missing")
    assert await store.cancel_requested(["resp_1", "resp_2", "resp_missing"]) == {"resp_1"}
    assert await store.cancel_requested([]) == set()


# -- owners ------------------------------------------------------------------------------------
async def test_owners_alive_until_ttl(store: Store):
    assert await store.alive("proc-1") is False
    await store.heartbeat("proc-1", ttl=60)
    await store.heartbeat("proc-2", ttl=0.2)
    assert await store.alive("proc-1") and await store.alive("proc-2")
    await asyncio.sleep(0.5)
    assert await store.alive("proc-1") is True
    assert await store.alive("proc-2") is False
    await store.heartbeat("proc-2", ttl=60)
    assert await store.alive("proc-2") is True


async def test_running_responses(store: Store):
    await store.create_response(record("resp_q", "queued", owner="proc-1"))
    await store.create_response(record("resp_p", "in_progress", owner=None))
    await store.create_response(record("resp_done", "completed", owner=None))
    assert sorted(await store.running_responses()) == [("resp_p", None), ("resp_q", "proc-1")]
    await store.update_running_response(response("resp_q", "in_progress"))
    assert ("resp_q", "proc-1") in await store.running_responses()
    await store.finish_response(response("resp_q", "failed"))
    await store.delete_response("resp_p")
    assert await store.running_responses() == []


# -- conversations ---------------------------------------------------------------------------
def conversation(cid: str, **metadata: str) -> dict:
    return {"id": cid, "object": "conversation", "created_at": T0, "metadata": metadata}


async def test_conversation_lifecycle(store: Store):
    assert await store.get_conversation("conv_1") is None
    assert await store.update_conversation(conversation("conv_1")) is False
    assert await store.add_conversation_items("conv_1", [item("msg_a")]) is False
    assert await store.list_conversation_items("conv_1") is None
    await store.create_conversation(conversation("conv_1", topic="a"), [item("msg_a")])
    assert (await store.get_conversation("conv_1")).conversation == conversation("conv_1", topic="a")
    assert await store.update_conversation(conversation("conv_1", topic="b")) is True
    assert (await store.get_conversation("conv_1")).conversation == conversation("conv_1", topic="b")
    assert ids(await store.list_conversation_items("conv_1")) == ["msg_a"]
    assert await store.delete_conversation("conv_1") is True
    assert await store.get_conversation("conv_1") is None
    assert await store.get_conversation_item("conv_1", "msg_a") is None
    assert await store.delete_conversation("conv_1") is False
    # Created again, it starts from its new items only.
    await store.create_conversation(conversation("conv_1"), [])
    assert await store.list_conversation_items("conv_1") == ItemPage([], False)


async def test_conversation_items_keep_order_and_replace_in_place(store: Store):
    await store.create_conversation(conversation("conv_1"), [item("a"), item("b")])
    assert await store.add_conversation_items("conv_1", [item("c"), item("d")]) is True
    assert await store.add_conversation_items("conv_1", [item("b", "edited"), item("e")]) is True
    page = await store.list_conversation_items("conv_1")
    assert ids(page) == ["a", "b", "c", "d", "e"] and page.has_more is False
    assert page.items[1] == item("b", "edited")
    assert ids(await store.list_conversation_items("conv_1", order="desc")) == ["e", "d", "c", "b", "a"]
    assert await store.get_conversation_item("conv_1", "b") == item("b", "edited")
    assert await store.get_conversation_item("conv_1", "zz") is None
    assert await store.get_conversation_item("conv_missing", "b") is None


async def test_conversation_paging(store: Store):
    await store.create_conversation(conversation("conv_1"), [item(x) for x in "abcde"])
    page = await store.list_conversation_items("conv_1", limit=2)
    assert (ids(page), page.has_more) == (["a", "b"], True)
    page = await store.list_conversation_items("conv_1", after="b", limit=2)
    assert (ids(page), page.has_more) == (["c", "d"], True)
    page = await store.list_conversation_items("conv_1", after="d", limit=2)
    assert (ids(page), page.has_more) == (["e"], False)
    page = await store.list_conversation_items("conv_1", after="c", limit=2)
    assert (ids(page), page.has_more) == (["d", "e"], False)
    page = await store.list_conversation_items("conv_1", after="e")
    assert (ids(page), page.has_more) == ([], False)

    page = await store.list_conversation_items("conv_1", order="desc", limit=2)
    assert (ids(page), page.has_more) == (["e", "d"], True)
    page = await store.list_conversation_items("conv_1", order="desc", after="d", limit=2)
    assert (ids(page), page.has_more) == (["c", "b"], True)
    page = await store.list_conversation_items("conv_1", order="desc", after="b")
    assert (ids(page), page.has_more) == (["a"], False)

    assert await store.list_conversation_items("conv_1", after="nope") == ItemPage([], False)
    assert await store.list_conversation_items("conv_1", order="desc", after="nope", limit=3) == ItemPage([], False)
    page = await store.list_conversation_items("conv_1", limit=0)
    assert (ids(page), page.has_more) == ([], True)
    page = await store.list_conversation_items("conv_1", limit=5)
    assert (ids(page), page.has_more) == (list("abcde"), False)


async def test_delete_conversation_item(store: Store):
    await store.create_conversation(conversation("conv_1"), [item(x) for x in "abc"])
    assert await store.delete_conversation_item("conv_1", "b") is True
    assert await store.delete_conversation_item("conv_1", "b") is False
    assert await store.delete_conversation_item("conv_missing", "a") is False
    assert ids(await store.list_conversation_items("conv_1")) == ["a", "c"]
    assert await store.list_conversation_items("conv_1", after="b") == ItemPage([], False)
    # Added again, it goes to the end.
    await store.add_conversation_items("conv_1", [item("b")])
    assert ids(await store.list_conversation_items("conv_1")) == ["a", "c", "b"]


async def test_concurrent_appends_lose_nothing(make_store: Callable[..., Store]):
    stores = [make_store(), make_store()]
    await stores[0].create_conversation(conversation("conv_1"), [])
    await asyncio.gather(
        *(stores[i % 2].add_conversation_items("conv_1", [item(f"m{i}")]) for i in range(60))
    )
    assert sorted(ids(await stores[0].list_conversation_items("conv_1"))) == sorted(f"m{i}" for i in range(60))


# -- retention ---------------------------------------------------------------------------------
async def test_prune_by_age(make_store: Callable[..., Store], backend: Backend):
    store = make_store(Retention(max_age_s=3600, max_responses=None, max_conversations=None))
    now = time.time()
    await store.create_response(record("resp_old", inputs=[item("msg_old")], created_at=now - 7200))
    await store.append_events("resp_old", [(0, "{}")])
    await store.request_cancel("resp_old")
    await store.finish_response(response("resp_old", "completed", now - 7200, output=[item("msg_old_out")]))
    await store.create_response(record("resp_old_running", created_at=now - 7200))
    await store.create_response(record("resp_new", "completed", created_at=now - 60))
    await store.create_conversation(conversation("conv_1"), [item("c1")])

    assert await store.prune(now) == 1
    assert await store.get_response("resp_old") is None
    assert await store.get_items(["msg_old", "msg_old_out"]) == {}
    assert await store.read_events("resp_old") == []
    assert await store.cancel_requested(["resp_old"]) == set()
    assert await store.get_response("resp_old_running") is not None  # running: never pruned
    assert await store.get_response("resp_new") is not None
    assert await store.get_conversation("conv_1") is not None

    # Two hours on: the conversation (aged from its last change) and resp_new go too.
    assert await store.prune(now + 7200) == 2
    assert await store.get_conversation("conv_1") is None
    assert await store.get_response("resp_new") is None
    assert [rid for rid, _ in await store.running_responses()] == ["resp_old_running"]


async def test_prune_by_bytes_removes_the_oldest_first(make_store: Callable[..., Store]):
    """Responses (items and events included) and conversations share one byte budget."""
    big = "x" * 10_000
    store = make_store(Retention(max_age_s=None, max_responses=None, max_conversations=None, max_bytes=25_000))
    await store.create_response(record("resp_run", inputs=[item("i0", big)], created_at=T0))  # running, oldest
    for n in (1, 2):
        await store.create_response(record(f"resp_{n}", inputs=[item(f"i{n}", big)], created_at=T0 + n))
        await store.finish_response(response(f"resp_{n}", "completed", T0 + n))
    await store.create_response(record("resp_3", created_at=T0 + 3))  # small; its events are not
    await store.append_events("resp_3", [(0, "e" * 10_000)])
    await store.finish_response(response("resp_3", "completed", T0 + 3))
    await store.create_conversation(conversation("conv_1"), [item("c1", big)])  # newest of all
    assert await store.prune() == 2  # resp_2 and resp_1 lie past 25 kB counted from the newest
    kept = [rid for rid in ("resp_run", "resp_1", "resp_2", "resp_3") if await store.get_response(rid)]
    assert kept == ["resp_run", "resp_3"]  # running: never pruned
    assert await store.get_conversation("conv_1") is not None
    assert await store.prune() == 0
    assert (await store.get_conversation("conv_1")).size > 10_000 and await store.get_conversation("conv_missing") is None
    # A conversation that grows past the budget pushes the older response out.
    await store.add_conversation_items("conv_1", [item("c2", big)])
    assert await store.prune() == 1
    assert await store.get_response("resp_3") is None and await store.get_conversation("conv_1") is not None


async def test_prune_by_count_keeps_the_newest(make_store: Callable[..., Store]):
    store = make_store(Retention(max_age_s=None, max_responses=2, max_conversations=2))
    await store.create_response(record("resp_1", created_at=T0 + 1))  # running, oldest
    for n in range(2, 6):
        await store.create_response(record(f"resp_{n}", "completed", created_at=T0 + n))
    for n in range(1, 5):
        await store.create_conversation(conversation(f"conv_{n}"), [item(f"c{n}")])
        await asyncio.sleep(0.01)  # distinct last-change times
    await store.add_conversation_items("conv_1", [item("c1b")])  # conv_1 changed last

    assert await store.prune() == 2 + 2  # resp_2, resp_3 (resp_1 runs), conv_2, conv_3
    kept = [rid for rid in (f"resp_{n}" for n in range(1, 6)) if await store.get_response(rid)]
    assert kept == ["resp_1", "resp_4", "resp_5"]
    kept = [cid for cid in (f"conv_{n}" for n in range(1, 5)) if await store.get_conversation(cid)]
    assert kept == ["conv_1", "conv_4"]
    assert await store.prune() == 0


async def test_nothing_is_left_behind(backend: Backend, make_store: Callable[..., Store]):
    """Deleting and pruning remove every row or key a record owned: storage stays bounded."""
    store = make_store(Retention(max_age_s=3600, max_responses=None, max_conversations=None))
    for n in range(3):
        await store.create_response(record(f"resp_{n}", inputs=[item(f"in_{n}")]))
        await store.append_events(f"resp_{n}", [(0, "{}"), (1, "{}")])
        await store.request_cancel(f"resp_{n}")
        await store.finish_response(response(f"resp_{n}", "cancelled", output=[item(f"out_{n}")]))
    await store.create_conversation(conversation("conv_1"), [item("a"), item("b")])
    await store.create_conversation(conversation("conv_2"), [item("a")])
    assert await backend.leftovers()
    await store.delete_response("resp_0")
    await store.delete_conversation("conv_1")
    assert await store.prune(time.time() + 7200) == 3
    assert await backend.leftovers() == []


# -- persistence and processes ---------------------------------------------------------------
async def test_reopened_store_sees_everything(backend: Backend, make_store: Callable[..., Store]):
    first = make_store()
    await first.create_response(record("resp_1", inputs=[item("msg_in")]))
    await first.append_events("resp_1", [(0, '{"n":0}')])
    await first.finish_response(response("resp_1", "completed", output=[item("msg_out")]))
    await first.create_conversation(conversation("conv_1"), [item("a"), item("b")])
    await first.close()

    again = make_store()
    got = await again.get_response("resp_1", with_input=True)
    assert got is not None and got.status == "completed" and got.input_items == [item("msg_in")]
    assert set(await again.get_items(["msg_in", "msg_out"])) == {"msg_in", "msg_out"}
    assert await again.read_events("resp_1") == [(0, '{"n":0}')]
    assert ids(await again.list_conversation_items("conv_1")) == ["a", "b"]


WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from vllm_responses.store.redis import RedisStore
    from vllm_responses.store.sqlite import SQLiteStore

    async def main(kind, where, prefix, tag, count):
        store = SQLiteStore(Path(where)) if kind == "sqlite" else RedisStore(where, prefix=prefix)
        print("ready", flush=True)
        sys.stdin.readline()  # both processes start writing together
        for i in range(count):
            item = {"id": f"{tag}-{i}", "type": "message", "role": "user", "content": []}
            assert await store.add_conversation_items("conv_1", [item])
        final = {"id": "resp_1", "status": "completed", "created_at": 0, "output": [], "by": tag}
        print("won" if await store.finish_response(final) else "lost", flush=True)
        await store.close()

    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])))
    """
)


async def test_two_processes_share_the_store(backend: Backend, store: Store):
    await store.create_conversation(conversation("conv_1"), [])
    await store.create_response(record("resp_1"))
    count = 150
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, backend.name, backend.where, backend.prefix, tag, str(count)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        for tag in ("p1", "p2")
    ]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outcomes = [proc.communicate(timeout=120)[0].strip() for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    assert [proc.returncode for proc in procs] == [0, 0]
    assert sorted(outcomes) == ["lost", "won"]
    stored = ids(await store.list_conversation_items("conv_1"))
    assert sorted(stored) == sorted(f"{tag}-{i}" for tag in ("p1", "p2") for i in range(count))
    for tag in ("p1", "p2"):  # each process's items in the order it added them
        assert [x for x in stored if x.startswith(tag)] == [f"{tag}-{i}" for i in range(count)]
    winner = "p1" if outcomes[0] == "won" else "p2"
    assert (await store.get_response("resp_1")).response["by"] == winner


# -- SQLite only -------------------------------------------------------------------------------
async def test_sqlite_file_settings(tmp_path: Path):
    path = tmp_path / "a" / "b" / "responses.db"  # parents are created
    store = SQLiteStore(path)
    await store.heartbeat("proc-1", 1)
    await store.close()
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental


async def test_sqlite_file_of_schema_1_gains_byte_counts(tmp_path: Path):
    """A file written before retention by bytes and tenants is upgraded in place; its records
    are weighed, and shared."""
    path = tmp_path / "responses.db"
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for statement in sqlite_store._MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 1")
        conn.execute("INSERT INTO responses VALUES ('resp_old', ?, 0, NULL, NULL, NULL, 0, ?)",
                     (T0, orjson.dumps(response("resp_old", "completed"))))
        conn.execute("INSERT INTO response_items VALUES ('resp_old', 0, 0, 'i', ?)", (orjson.dumps(item("i", "x" * 5000)),))
    store = SQLiteStore(path, Retention(max_age_s=None, max_responses=None, max_conversations=None, max_bytes=4000))
    try:
        assert (await store.get_response("resp_old")).tenant is None  # older than tenancy: shared
        await store.create_response(record("resp_new", "completed", created_at=T0 + 1))
        assert await store.prune() == 1
        assert await store.get_response("resp_old") is None and await store.get_response("resp_new") is not None
    finally:
        await store.close()


async def test_sqlite_runs_off_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    threads: set[int] = set()
    connect = sqlite3.connect

    def traced(*args, **kwargs) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)
        conn.set_trace_callback(lambda statement: threads.add(threading.get_ident()))
        return conn

    monkeypatch.setattr(sqlite3, "connect", traced)
    store = SQLiteStore(tmp_path / "responses.db")
    try:
        await store.create_response(record("resp_1"))
        await store.get_response("resp_1")
        await store.prune()
    finally:
        await store.close()
    assert threads and threading.get_ident() not in threads


async def test_sqlite_unusable_file_is_unavailable(tmp_path: Path):
    (tmp_path / "a-file").write_text("")
    store = SQLiteStore(tmp_path / "a-file" / "responses.db")  # its parent cannot be a directory
    with pytest.raises(StoreUnavailable):
        await store.get_response("resp_1")
    await store.close()

    (tmp_path / "junk.db").write_bytes(b"this is not a database" * 1000)
    store = SQLiteStore(tmp_path / "junk.db")
    with pytest.raises(StoreUnavailable):
        await store.get_response("resp_1")
    await store.close()


@contextmanager
def _write_lock_held(path: Path) -> Iterator[None]:
    """Another process's writer holding the file's write lock meanwhile."""
    with closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            other.execute("ROLLBACK")


async def test_sqlite_locked_past_busy_timeout_is_unavailable(tmp_path: Path):
    path = tmp_path / "responses.db"
    store = SQLiteStore(path, busy_timeout=0.2)
    try:
        await store.create_response(record("resp_1"))
        with _write_lock_held(path):
            with pytest.raises(StoreUnavailable):
                await store.finish_response(response("resp_1", "completed"))
            assert (await store.get_response("resp_1")).status == "in_progress"  # readers go on in WAL
        assert await store.finish_response(response("resp_1", "completed")) is True
    finally:
        await store.close()


async def test_sqlite_group_commit_batches_writes_each_with_its_own_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Writes that wait beside each other share one transaction, and each caller still gets
    its own answer: here half the finishes find their response already ended (False)."""
    store = SQLiteStore(tmp_path / "responses.db")
    sizes: list[int] = []
    commit_batch = store._commit_batch

    def counted(group, batch):  # type: ignore[no-untyped-def]
        sizes.append(len(batch))
        commit_batch(group, batch)

    monkeypatch.setattr(store, "_commit_batch", counted)
    try:
        await asyncio.gather(*(store.create_response(record(f"resp_{n}", inputs=[item(f"in_{n}")])) for n in range(100)))
        await asyncio.gather(*(store.finish_response(response(f"resp_{n}", "cancelled")) for n in range(0, 100, 2)))
        done = await asyncio.gather(*(
            store.finish_response(response(f"resp_{n}", "completed", output=[item(f"out_{n}")])) for n in range(100)
        ))
        assert done == [n % 2 == 1 for n in range(100)]
        assert max(sizes) > 1 and sum(sizes) == 250 and len(sizes) < 250
        for n in range(100):
            got = await store.get_response(f"resp_{n}", with_input=True)
            assert got is not None and got.input_items == [item(f"in_{n}")]
            assert got.status == ("completed" if n % 2 else "cancelled")
        assert len(await store.get_items([f"out_{n}" for n in range(100)])) == 50
    finally:
        await store.close()


async def test_sqlite_group_commit_a_failing_write_leaves_the_others(tmp_path: Path):
    store = SQLiteStore(tmp_path / "responses.db")

    def fails(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO owners VALUES ('half-written', 0)")
        raise ValueError("a bug in one write")

    try:
        results = await asyncio.gather(
            store.create_response(record("resp_1")), store._commit(fails), store.create_response(record("resp_2")),
            return_exceptions=True,
        )
        assert results[0] is None and results[2] is None
        assert isinstance(results[1], ValueError)
        assert await store.get_response("resp_1") is not None and await store.get_response("resp_2") is not None
        assert not await store.alive("half-written")  # its own savepoint was rolled back
        with closing(sqlite3.connect(tmp_path / "responses.db")) as conn:
            assert conn.execute("SELECT COUNT(*) FROM owners").fetchone()[0] == 0
    finally:
        await store.close()


async def test_sqlite_group_commit_when_the_file_is_locked_every_write_says_so(tmp_path: Path):
    path = tmp_path / "responses.db"
    store = SQLiteStore(path, busy_timeout=0.2)
    try:
        await store.create_response(record("resp_0"))
        with _write_lock_held(path):
            results = await asyncio.gather(
                *(store.create_response(record(f"resp_{n}")) for n in range(1, 6)),
                store.finish_response(response("resp_0", "completed")),
                return_exceptions=True,
            )
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        await asyncio.gather(*(store.create_response(record(f"resp_{n}")) for n in range(1, 6)))
        assert await store.finish_response(response("resp_0", "completed")) is True
        assert all([await store.get_response(f"resp_{n}") for n in range(6)])
    finally:
        await store.close()


async def test_sqlite_group_commit_a_cancelled_caller_leaves_the_others_their_answers(tmp_path: Path):
    """Cancelling a caller does not undo its write (as with any thread-pool call): it lands,
    and the writes beside it are answered."""
    store = SQLiteStore(tmp_path / "responses.db")
    try:
        await store.create_response(record("resp_0"))  # the file exists: the next batch is quick
        first = asyncio.ensure_future(store.create_response(record("resp_1")))
        cancelled = asyncio.ensure_future(store.create_response(record("resp_2")))
        last = asyncio.ensure_future(store.finish_response(response("resp_0", "completed")))
        await asyncio.sleep(0)  # all three are waiting for a transaction
        cancelled.cancel()
        assert await first is None and await last is True
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        await eventually("its write landed (its batch may still be committing)", lambda: store.get_response("resp_2"))
    finally:
        await store.close()


async def test_sqlite_prune_gives_space_back(tmp_path: Path):
    path = tmp_path / "responses.db"
    store = SQLiteStore(path, Retention(max_age_s=60, max_responses=None, max_conversations=None))
    try:
        big = "x" * 20_000
        for n in range(100):
            await store.create_response(record(f"resp_{n}", "completed", inputs=[item(f"in_{n}", big)]))
        await store.prune(T0 + 1)  # nothing old enough yet: settles the WAL into the file
        size = path.stat().st_size
        assert await store.prune(T0 + 3600) == 100
        assert path.stat().st_size < size / 4
        with closing(sqlite3.connect(path)) as conn:
            assert conn.execute("PRAGMA freelist_count").fetchone()[0] == 0
    finally:
        await store.close()


# -- Redis only --------------------------------------------------------------------------------
async def test_redis_outage_raises_and_the_store_recovers():
    with RedisServer() as server:
        store = RedisStore(server.url, prefix="outage:")
        try:
            await store.create_conversation(conversation("conv_1"), [item("a")])
            server.stop()
            with pytest.raises(StoreUnavailable):
                await store.get_conversation("conv_1")
            with pytest.raises(StoreUnavailable):
                await store.add_conversation_items("conv_1", [item("b")])
            with pytest.raises(StoreUnavailable):
                await store.wait_events("resp_1", -1, timeout=1)
            server.start()  # empty again: no persistence
            assert await store.get_conversation("conv_1") is None
            await store.create_conversation(conversation("conv_1"), [item("a")])
            await store.create_response(record("resp_1"))
            assert await store.finish_response(response("resp_1", "completed")) is True
            assert ids(await store.list_conversation_items("conv_1")) == ["a"]
        finally:
            await store.close()


async def test_redis_keys_stay_under_the_prefix(redis_server: RedisServer):
    prefix = f"test-{uuid.uuid4().hex}:"
    store = RedisStore(redis_server.url, prefix=prefix)
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        before = set(await client.keys("*"))
        await store.create_response(record("resp_1", inputs=[item("a")]))
        await store.append_events("resp_1", [(0, "{}")])
        await store.request_cancel("resp_1")
        await store.heartbeat("proc-1", 60)
        await store.create_conversation(conversation("conv_1"), [item("a")])
        new = set(await client.keys("*")) - before
        assert new and all(key.startswith(prefix) for key in new)
    finally:
        await client.aclose()
        await store.close()
