"""Issue 7 points that had no test of their own: retention settings and the server enforcing
them, the default store location, ``store: false`` writing nothing, background events
written in batches, chaining through custom tool calls, the SDK's types for every
Conversations route, ``include`` on input items, and resumed streams that start at or past
the last event."""

import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from fakes import ScriptedEngine, eventually, usage
from fastapi import FastAPI
from openai import AsyncOpenAI

from vllm_responses.core import background, upkeep
from vllm_responses.events.conformance import check_events, parse_sse
from vllm_responses.events.deltas import Finish, ReasoningDelta, TextDelta, ToolCallDelta
from vllm_responses.plugin import ResponsesPlugin
from vllm_responses.common.sealing import ReasoningSealer
from vllm_responses.core.service import ResponsesService
from vllm_responses.settings import MAX_AGE, MAX_CONVERSATIONS, MAX_RESPONSES, STORE, Settings
from vllm_responses.store import Retention, default_url, open_store
from vllm_responses.store.redis import RedisStore
from vllm_responses.store.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio

SCRIPT = [ReasoningDelta("Hmm."), TextDelta("Hello"), TextDelta(" world"), Finish("stop", usage())]
WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
PATCH = {"type": "custom", "name": "apply_patch", "description": "Apply a patch."}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class App:
    """Our routes over a scripted engine and a real SQLite file, with an HTTP client and the
    openai SDK (strict validation) on it."""

    def __init__(self, path: Path, retention: Retention | None = None, lease_s: float = 10.0) -> None:
        self.path = path
        self.engine = ScriptedEngine(SCRIPT)
        app = FastAPI()
        ResponsesPlugin().attach_router(app)
        self.service = ResponsesService(self.engine, SQLiteStore(path, retention or Retention()), ReasoningSealer([b"k" * 32]), lease_s=lease_s)
        app.state.vllm_responses = self.service
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        self.sdk = AsyncOpenAI(base_url="http://t/v1", api_key="unused", http_client=self.http, _strict_response_validation=True, max_retries=0)

    async def ok(self, **body) -> dict:
        r = await self.http.post("/v1/responses", json={"model": "demo", **body})
        assert r.status_code == 200, r.text
        return r.text if body.get("stream") else r.json()

    async def completed(self, response_id: str) -> None:
        """Until the stored response is ``completed`` (a background run ended)."""

        async def done() -> bool:
            return (await self.http.get(f"/v1/responses/{response_id}")).json()["status"] == "completed"

        await eventually(f"{response_id} completed", done)

    def rows(self) -> dict[str, int]:
        """Row count of every table that holds what clients stored."""
        with closing(sqlite3.connect(self.path)) as db:
            tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'") if t != "owners"]
            return {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables}

    async def close(self) -> None:
        await self.service.stop()
        await self.http.aclose()


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    a = App(tmp_path / "r.db")
    yield a
    await a.close()


# -- 7.1: the store's settings ---------------------------------------------------------------
def test_retention_settings_from_the_environment():
    assert Settings.from_env({}).retention == Retention(max_age_s=30 * 24 * 3600, max_responses=10_000, max_conversations=10_000)
    env = {MAX_AGE: "3600", MAX_RESPONSES: "5", MAX_CONVERSATIONS: "0"}  # 0: that limit off
    assert Settings.from_env(env).retention == Retention(max_age_s=3600.0, max_responses=5, max_conversations=None)
    for name in (MAX_AGE, MAX_RESPONSES, MAX_CONVERSATIONS):
        with pytest.raises(ValueError, match=name):
            Settings.from_env({name: "lots"})
        with pytest.raises(ValueError, match=name):
            Settings.from_env({name: "-1"})


async def test_default_store_is_a_sqlite_file_under_the_cache_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_url() == f"sqlite://{tmp_path / 'cache' / 'vllm-responses' / 'responses.db'}"
    assert Settings.from_env({}).store_url == default_url()
    store = open_store(Settings.from_env({}).store_url)
    try:
        assert isinstance(store, SQLiteStore)
        await store.heartbeat("owner-1", 1)  # opening it creates the file and its folders
        assert (tmp_path / "cache" / "vllm-responses" / "responses.db").is_file()
    finally:
        await store.close()
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_url() == f"sqlite://{Path.home() / '.cache' / 'vllm-responses' / 'responses.db'}"
    redis = open_store(Settings.from_env({STORE: "redis://127.0.0.1:1/0"}).store_url)
    assert isinstance(redis, RedisStore)
    await redis.close()
    with pytest.raises(ValueError, match="sqlite://PATH or redis://"):
        open_store("postgres://db/x")


async def test_the_server_enforces_retention_at_start_up_and_every_interval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Not only the store's prune: the running service calls it, at start-up and periodically."""
    a = App(tmp_path / "r.db", Retention(max_age_s=None, max_responses=2, max_conversations=None), lease_s=1.0)
    try:
        ids = [(await a.ok(input="hi"))["id"] for _ in range(4)]
        assert a.rows()["responses"] == 4
        monkeypatch.setattr(upkeep, "PRUNE_INTERVAL", 0.2)
        a.service.start()

        async def kept() -> list[str]:
            return [rid for rid in ids if (await a.http.get(f"/v1/responses/{rid}")).status_code == 200]

        async def two_kept() -> bool:
            return len(await kept()) == 2

        await eventually("the start-up prune", two_kept, timeout=30)
        assert await kept() == ids[2:]  # the newest two
        more = [(await a.ok(input="hi"))["id"] for _ in range(2)]
        ids += more
        await eventually("the next prune pass, with no restart", two_kept, timeout=30)
        assert await kept() == more
        assert a.rows()["responses"] == 2
    finally:
        await a.close()


async def test_store_false_writes_nothing(app: App):
    await app.service.store.heartbeat("owner-1", 1)  # the schema exists: empty tables, not no file
    app.engine.script = [ReasoningDelta("Call it."), ToolCallDelta(0, '{"city": "Paris"}', "get_weather", "call_1"), Finish("stop", usage())]
    await app.ok(input="weather?", tools=[WEATHER], store=False)
    await app.ok(input="weather?", tools=[WEATHER], store=False, stream=True, include=["reasoning.encrypted_content"])
    app.engine.script = SCRIPT
    call = {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"}
    await app.ok(input=[{"role": "user", "content": "x"}, call, {"type": "function_call_output", "call_id": "call_1", "output": "Sunny"}], store=False)
    await app.ok(input="hi", store=False, stream=True)
    assert set(app.rows().values()) == {0}, app.rows()
    await app.ok(input="hi")  # the check can fail: a stored response does write rows
    assert app.rows()["responses"] == 1


async def test_background_events_are_written_in_batches(app: App, monkeypatch: pytest.MonkeyPatch):
    app.engine.script = [TextDelta(f"w{i} ") for i in range(200)] + [Finish("stop", usage())]
    calls: list[int] = []
    append = app.service.store.append_events

    async def counted(response_id: str, events: list) -> None:
        calls.append(len(events))
        await append(response_id, events)

    monkeypatch.setattr(app.service.store, "append_events", counted)
    queued = await app.ok(input="hi", background=True)
    await app.completed(queued["id"])
    events = parse_sse((await app.http.get(f"/v1/responses/{queued['id']}", params={"stream": "true"})).text)
    assert check_events(events) == [] and len(events) > 200
    assert sum(calls) == len(events)  # every event stored once
    assert len(calls) <= 5, calls  # in a few batches, not one write per event


# -- 7.2: chaining brings custom tool calls and their outputs too ----------------------------
async def test_chain_carries_custom_tool_calls_and_their_outputs(app: App):
    app.engine.script = [ReasoningDelta("Patch it."), ToolCallDelta(0, "*** Begin Patch", "apply_patch", "call_p", custom=True), Finish("stop", usage())]
    r1 = await app.ok(input="patch it", tools=[PATCH])
    assert [o["type"] for o in r1["output"]] == ["reasoning", "custom_tool_call"]
    app.engine.script = SCRIPT
    r2 = await app.ok(previous_response_id=r1["id"], input=[{"type": "custom_tool_call_output", "call_id": "call_p", "output": "Done!"}], tools=[PATCH])
    await app.ok(previous_response_id=r2["id"], input="thanks")
    context = app.engine.contexts[-1]
    assert [i.type for i in context] == ["message", "reasoning", "custom_tool_call", "custom_tool_call_output", "reasoning", "message", "message"]
    assert (context[2].name, context[2].input, context[3].output) == ("apply_patch", "*** Begin Patch", "Done!")


# -- 7.4 / 7.5: every route's answer parses as the openai SDK types it (strict) ---------------
async def test_every_route_answers_in_the_sdk_types(app: App):
    sdk = app.sdk
    r = await sdk.responses.create(model="demo", input=[{"role": "user", "content": f"m{i}"} for i in range(3)],
                                   include=["reasoning.encrypted_content"])
    assert (await sdk.responses.retrieve(r.id)).id == r.id
    sealed = await sdk.responses.retrieve(r.id, include=["reasoning.encrypted_content"])
    assert app.service.sealer.open(sealed.output[0].encrypted_content) == "Hmm."
    page = await sdk.responses.input_items.list(r.id, limit=2, order="asc", include=["reasoning.encrypted_content"])
    assert [i.content[0].text for i in page.data] == ["m0", "m1"] and page.has_more and page.last_id == page.data[-1].id
    deleted = await sdk.responses.with_raw_response.delete(r.id)
    assert deleted.http_response.json() == {"id": r.id, "object": "response", "deleted": True}

    conv = await sdk.conversations.create(items=[{"type": "message", "role": "user", "content": "Remember 7."}], metadata={"k": "v"})
    assert (await sdk.conversations.retrieve(conv.id)) == conv
    assert (await sdk.conversations.update(conv.id, metadata={"k": "w"})).metadata == {"k": "w"}
    added = await sdk.conversations.items.create(conv.id, items=[{"type": "message", "role": "user", "content": "More."}])
    assert added.object == "list" and len(added.data) == 1
    listed = await sdk.conversations.items.list(conv.id, order="asc", limit=1)
    assert listed.has_more and listed.data[0].content[0].text == "Remember 7."
    item = await sdk.conversations.items.retrieve(added.data[0].id, conversation_id=conv.id)
    assert item.id == added.data[0].id and item.content[0].text == "More."
    after = await sdk.conversations.items.delete(added.data[0].id, conversation_id=conv.id)
    assert after.id == conv.id and after.object == "conversation"
    gone = await sdk.conversations.delete(conv.id)
    assert (gone.id, gone.object, gone.deleted) == (conv.id, "conversation.deleted", True)


# -- 7.6: a resumed stream that starts at or after the last event ends at once ----------------
async def test_resuming_after_the_last_event_ends_without_another_terminal_event(app: App):
    queued = await app.ok(input="hi", background=True)
    await app.completed(queued["id"])
    path = f"/v1/responses/{queued['id']}"
    events = parse_sse((await app.http.get(path, params={"stream": "true"})).text)
    last = events[-1]["sequence_number"]
    live = [parse_sse((await app.http.get(path, params={"stream": "true", "starting_after": n})).text) for n in (last, last + 5)]
    app.service.background.forget(queued["id"])  # as another process, or this one after KEEP_AFTER_END, reads it
    assert app.service.background.get(queued["id"]) is None
    stored = [parse_sse((await app.http.get(path, params={"stream": "true", "starting_after": n})).text) for n in (last - 1, last, last + 5)]
    assert live == [[], []]
    assert stored == [[events[-1]], [], []]


async def test_a_stored_stream_that_lost_its_terminal_event_gets_it_rebuilt(app: App):
    """The other side of the check above: a finished response whose last events never reached
    the store (its owner died between the two writes) still ends with its terminal event."""
    queued = await app.ok(input="hi", background=True)
    await app.completed(queued["id"])
    path = f"/v1/responses/{queued['id']}"
    events = parse_sse((await app.http.get(path, params={"stream": "true"})).text)
    app.service.background.forget(queued["id"])
    with closing(sqlite3.connect(app.path)) as db, db:
        db.execute("DELETE FROM events WHERE response_id = ? AND sequence_number = ?", (queued["id"], events[-1]["sequence_number"]))
    replay = parse_sse((await app.http.get(path, params={"stream": "true"})).text)
    assert replay[:-1] == events[:-1] and check_events(replay) == []
    assert (replay[-1]["type"], replay[-1]["sequence_number"]) == ("response.completed", events[-1]["sequence_number"])
    assert replay[-1]["response"]["output"] == events[-1]["response"]["output"]


async def test_input_items_include_seals_reasoning_on_request(app: App):
    thought = {"type": "reasoning", "id": "rs_in", "summary": [], "content": [{"type": "reasoning_text", "text": "Earlier thought."}]}
    r = await app.ok(input=[{"role": "user", "content": "a"}, thought, {"role": "user", "content": "b"}])
    path = f"/v1/responses/{r['id']}/input_items"
    plain = (await app.http.get(path, params={"order": "asc"})).json()["data"][1]
    assert plain["type"] == "reasoning" and not plain.get("encrypted_content")
    sealed = (await app.http.get(path, params={"order": "asc", "include[]": "reasoning.encrypted_content"})).json()["data"][1]
    assert app.service.sealer.open(sealed["encrypted_content"]) == "Earlier thought."
    page = await app.sdk.responses.input_items.list(r["id"], order="asc", include=["reasoning.encrypted_content"])
    assert app.service.sealer.open(page.data[1].encrypted_content) == "Earlier thought."


async def test_finished_background_runs_leave_memory(app: App, monkeypatch: pytest.MonkeyPatch):
    """Memory stays bounded: a finished run is kept only KEEP_AFTER_END for followers here."""
    monkeypatch.setattr(background, "KEEP_AFTER_END", 0.2)
    ids = [(await app.ok(input="hi", background=True))["id"] for _ in range(3)]
    await eventually("the finished runs forgotten", lambda: not app.service.background.runs)
    for rid in ids:  # still served, from the store
        assert (await app.http.get(f"/v1/responses/{rid}")).json()["status"] == "completed"
        assert parse_sse((await app.http.get(f"/v1/responses/{rid}", params={"stream": "true"})).text)[-1]["type"] == "response.completed"
