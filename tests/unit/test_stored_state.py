"""Stored state over HTTP with a scripted engine and a real SQLite store: chaining, retrieval,
deletion, input items, background runs, cancel, resumed streams, sealed reasoning,
conversations. The same behaviour against real vLLM is in tests/e2e/test_state.py."""

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from fakes import ScriptedEngine, eventually, usage
from vllm_responses.events.conformance import check_events, parse_sse
from vllm_responses.events.deltas import Finish, ReasoningDelta, TextDelta, ToolCallDelta
from vllm_responses.plugin import ResponsesPlugin
from vllm_responses.common.sealing import ReasoningSealer
from vllm_responses.core.service import ResponsesService
from vllm_responses.store import StoreUnavailable
from vllm_responses.store.sqlite import SQLiteStore

SCRIPT = [ReasoningDelta("Hmm."), TextDelta("Hello"), TextDelta(" world"), Finish("stop", usage())]
CALL = [ReasoningDelta("Call it."), ToolCallDelta(0, '{"city": "Paris"}', "get_weather", "call_1"), Finish("stop", usage())]
WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


class Client:
    def __init__(self, app: FastAPI, engine: ScriptedEngine, service: ResponsesService) -> None:
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        self.engine = engine
        self.service = service

    async def create(self, **body):
        r = await self.http.post("/v1/responses", json={"model": "demo", **body})
        return r

    async def ok(self, **body) -> dict:
        r = await self.create(**body)
        assert r.status_code == 200, r.text
        return r.json()

    async def status(self, response_id: str, status: str) -> dict:
        """The stored response, once its status is ``status`` (a background run ended)."""

        async def stored() -> dict | None:
            got = (await self.http.get(f"/v1/responses/{response_id}")).json()
            return got if got["status"] == status else None

        return await eventually(f"{response_id} {status}", stored)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    engine = ScriptedEngine(SCRIPT)
    app = FastAPI()
    ResponsesPlugin().attach_router(app)
    service = ResponsesService(engine, SQLiteStore(tmp_path / "r.db"), ReasoningSealer([b"k" * 32]))
    app.state.vllm_responses = service
    c = Client(app, engine, service)
    yield c
    await service.stop()
    await c.http.aclose()


def item_types(items) -> list[str]:
    return [getattr(i, "type", None) or "message" for i in items]


@pytest.mark.anyio
async def test_stored_by_default_and_retrieved_exactly(client: Client):
    created = await client.ok(input="hi")
    assert created["store"] is True
    got = (await client.http.get(f"/v1/responses/{created['id']}")).json()
    assert got == created
    unstored = await client.ok(input="hi", store=False)
    r = await client.http.get(f"/v1/responses/{unstored['id']}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "response_not_found"


@pytest.mark.anyio
async def test_chaining_brings_every_earlier_item_but_not_instructions(client: Client):
    client.engine.script = CALL
    r1 = await client.ok(input="weather?", instructions="Be brief.", tools=[WEATHER])
    client.engine.script = SCRIPT
    r2 = await client.ok(previous_response_id=r1["id"], input=[{"type": "function_call_output", "call_id": "call_1", "output": "Sunny"}], tools=[WEATHER])
    r3 = await client.ok(previous_response_id=r2["id"], input="thanks")
    assert item_types(client.engine.contexts[-1]) == [
        "message", "reasoning", "function_call",  # turn 1: input, output
        "function_call_output", "reasoning", "message",  # turn 2
        "message",  # turn 3's own input
    ]
    first = client.engine.contexts[-1][1]
    assert first.content[0].text == "Call it."
    assert [r.get("instructions") for r in client.engine.requests] == ["Be brief.", None, None]
    assert r3["previous_response_id"] == r2["id"]


@pytest.mark.anyio
async def test_missing_or_deleted_previous_response_is_400_as_openai_answers(client: Client):
    r = await client.create(previous_response_id="resp_nope", input="x")
    assert r.status_code == 400
    assert r.json()["error"] == {"message": "Previous response with id 'resp_nope' not found.", "type": "invalid_request_error", "param": "previous_response_id", "code": "previous_response_not_found"}
    r1 = await client.ok(input="hi")
    deleted = await client.http.delete(f"/v1/responses/{r1['id']}")
    assert deleted.json() == {"id": r1["id"], "object": "response", "deleted": True}
    assert (await client.http.delete(f"/v1/responses/{r1['id']}")).status_code == 404
    assert (await client.create(previous_response_id=r1["id"], input="x")).status_code == 400


@pytest.mark.anyio
async def test_item_reference_resolves_to_the_stored_item(client: Client):
    r1 = await client.ok(input="hi")
    message_id = r1["output"][1]["id"]
    await client.ok(input=[{"type": "item_reference", "id": message_id}, {"role": "user", "content": "and?"}])
    ref = client.engine.contexts[-1][0]
    assert ref.type == "message" and ref.content[0].text == "Hello world"


@pytest.mark.anyio
async def test_two_clients_cannot_share_an_item_id(client: Client):
    """Issue 24: a client-chosen id is kept as sent, but reaches only its own chain; a second
    client sending the same id neither replaces nor reads the first one's item."""
    def message(text: str) -> dict:
        return {"type": "message", "role": "user", "id": "msg_shared", "content": [{"type": "input_text", "text": text}]}

    reference = {"type": "item_reference", "id": "msg_shared"}
    alice = await client.ok(input=[message("alice's secret")])
    mallory = await client.ok(input=[message("poison")])
    # Alice's chain resolves to her own item, not to the later writer's.
    await client.ok(previous_response_id=alice["id"], input=[reference])
    assert client.engine.contexts[-1][-1].content[0].text == "alice's secret"
    await client.ok(previous_response_id=mallory["id"], input=[reference])
    assert client.engine.contexts[-1][-1].content[0].text == "poison"
    # Outside any chain, a client-chosen id is not found (it cannot be read across clients).
    r = await client.create(input=[reference])
    assert r.status_code == 404 and r.json()["error"]["code"] == "item_not_found", r.text
    # A server-made id stays reachable by reference (unguessable, as OpenAI's).
    made = alice["output"][1]["id"]
    await client.ok(input=[{"type": "item_reference", "id": made}])
    assert client.engine.contexts[-1][0].content[0].text == "Hello world"
    items = (await client.http.get(f"/v1/responses/{alice['id']}/input_items")).json()["data"]
    assert [i["content"][0]["text"] for i in items] == ["alice's secret"]


@pytest.mark.anyio
async def test_a_chain_past_the_history_budget_is_400(client: Client):
    client.service.history.max_bytes = 6000
    last = await client.ok(input="x" * 1000)
    for _ in range(5):
        r = await client.create(previous_response_id=last["id"], input="y" * 1000)
        if r.status_code != 200:
            break
        last = r.json()
    assert r.status_code == 400, "a chain of 6 turns of > 1 kB each passed a 6 kB budget"
    error = r.json()["error"]
    assert (error["code"], error["param"]) == ("history_too_large", "previous_response_id")

    conversation = (await client.http.post("/v1/conversations", json={"items": [{"role": "user", "content": "z" * 7000}]})).json()
    r = await client.create(conversation=conversation["id"], input="and?")
    assert r.status_code == 400, r.text
    assert (r.json()["error"]["code"], r.json()["error"]["param"]) == ("history_too_large", "conversation")


@pytest.mark.anyio
async def test_input_items_pages(client: Client):
    items = [{"type": "message", "role": "user", "content": f"m{i}"} for i in range(5)]
    r = await client.ok(input=items)
    path = f"/v1/responses/{r['id']}/input_items"
    page = (await client.http.get(path, params={"limit": 2, "order": "asc"})).json()
    assert [i["content"][0]["text"] for i in page["data"]] == ["m0", "m1"] and page["has_more"] is True
    assert page["object"] == "list" and page["first_id"] == page["data"][0]["id"] and page["last_id"] == page["data"][1]["id"]
    rest = (await client.http.get(path, params={"limit": 10, "order": "asc", "after": page["last_id"]})).json()
    assert [i["content"][0]["text"] for i in rest["data"]] == ["m2", "m3", "m4"] and rest["has_more"] is False
    desc = (await client.http.get(path)).json()  # default: newest first, 20
    assert [i["content"][0]["text"] for i in desc["data"]] == ["m4", "m3", "m2", "m1", "m0"]
    for bad in ({"limit": 0}, {"limit": 101}, {"order": "up"}, {"include": "nope"}):
        assert (await client.http.get(path, params=bad)).status_code == 400
    assert (await client.http.get("/v1/responses/resp_nope/input_items")).status_code == 404


@pytest.mark.anyio
async def test_background_returns_at_once_and_finishes_without_a_client(client: Client):
    client.engine.delay = 0.05
    queued = await client.ok(input="hi", background=True)
    assert queued["status"] == "queued" and queued["background"] is True
    got = await client.status(queued["id"], "completed")
    assert got["output"][1]["content"][0]["text"] == "Hello world"
    events = parse_sse((await client.http.get(f"/v1/responses/{queued['id']}", params={"stream": "true"})).text)
    assert [e["type"] for e in events][:3] == ["response.created", "response.queued", "response.in_progress"]
    assert check_events(events) == []
    for after in (0, 3, len(events) - 2):
        tail = parse_sse((await client.http.get(f"/v1/responses/{queued['id']}", params={"stream": "true", "starting_after": after})).text)
        assert tail == events[after + 1 :]


@pytest.mark.anyio
async def test_background_stream_from_the_create_call(client: Client):
    r = await client.create(input="hi", background=True, stream=True)
    events = parse_sse(r.text)
    assert check_events(events) == [] and events[-1]["response"]["status"] == "completed"


@pytest.mark.anyio
async def test_cancel_a_running_background_response(client: Client):
    client.engine.script = [TextDelta("tick ")] * 200 + [Finish("stop", usage())]
    client.engine.delay = 0.02
    queued = await client.ok(input="hi", background=True)
    run = client.service.background.get(queued["id"])
    await eventually("the engine generating", lambda: any(kind == "response.output_text.delta" for _, kind, _ in run.log))
    cancelled = (await client.http.post(f"/v1/responses/{queued['id']}/cancel")).json()
    assert cancelled["status"] == "cancelled"
    assert client.engine.aborted == [queued["id"]]
    again = await client.http.post(f"/v1/responses/{queued['id']}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    events = parse_sse((await client.http.get(f"/v1/responses/{queued['id']}", params={"stream": "true"})).text)
    assert events[-1]["type"] == "response.incomplete" and events[-1]["response"]["status"] == "cancelled"
    assert check_events(events) == []


@pytest.mark.anyio
async def test_only_running_background_responses_can_be_cancelled(client: Client):
    plain = await client.ok(input="hi")
    r = await client.http.post(f"/v1/responses/{plain['id']}/cancel")
    assert r.status_code == 400 and r.json()["error"]["code"] == "not_cancellable"
    r = await client.http.get(f"/v1/responses/{plain['id']}", params={"stream": "true"})
    assert r.status_code == 400
    done = await client.ok(input="hi", background=True)
    await client.status(done["id"], "completed")
    r = await client.http.post(f"/v1/responses/{done['id']}/cancel")
    assert r.status_code == 400 and "already completed" in r.json()["error"]["message"]
    assert (await client.http.post("/v1/responses/resp_nope/cancel")).status_code == 404


@pytest.mark.anyio
async def test_sealed_reasoning_round_trip(client: Client):
    r1 = await client.ok(input="hi", store=False, include=["reasoning.encrypted_content"])
    reasoning = r1["output"][0]
    assert reasoning["encrypted_content"] and "Hmm." not in reasoning["encrypted_content"]
    sealed_only = {"type": "reasoning", "id": reasoning["id"], "summary": [], "encrypted_content": reasoning["encrypted_content"]}
    await client.ok(store=False, input=[{"role": "user", "content": "hi"}, sealed_only, r1["output"][1], {"role": "user", "content": "more"}])
    opened = client.engine.contexts[-1][1]
    assert opened.type == "reasoning" and opened.content[0].text == "Hmm." and opened.encrypted_content is None

    tampered = bytearray(base64.urlsafe_b64decode(reasoning["encrypted_content"] + "=="))
    tampered[-1] ^= 1
    bad = {**sealed_only, "encrypted_content": base64.urlsafe_b64encode(bytes(tampered)).decode()}
    r = await client.create(store=False, input=[bad, {"role": "user", "content": "x"}])
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_encrypted_content" and r.json()["error"]["param"] == "input[0].encrypted_content"

    foreign = {**sealed_only, "encrypted_content": ReasoningSealer([b"x" * 32]).seal("other")}
    await client.ok(store=False, input=[foreign, {"role": "user", "content": "x"}])
    assert item_types(client.engine.contexts[-1]) == ["message"]  # dropped, not refused


@pytest.mark.anyio
async def test_foreign_seals_are_logged_once_per_request_not_once_per_blob(client: Client, caplog):
    """A body of many blobs that are not ours (a 64 MiB one holds about a million) gives one
    warning with their count, not a line each that would flood the log."""
    other = ReasoningSealer([b"x" * 32])
    foreign = [{"type": "reasoning", "id": f"rs_{i}", "summary": [], "encrypted_content": other.seal("t")} for i in range(300)]
    garbage = [{"type": "reasoning", "id": f"rs_g{i}", "summary": [], "encrypted_content": "not ours"} for i in range(200)]
    compacted = [{"type": "compaction", "encrypted_content": other.seal("s")}]
    caplog.set_level("WARNING")
    await client.ok(store=False, input=[*foreign, *garbage, *compacted, {"role": "user", "content": "x"}])
    lines = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(lines) == 1, lines[:3]
    assert "300 reasoning item(s)" in lines[0] and "200 reasoning item(s)" in lines[0] and "1 compaction item(s)" in lines[0]


@pytest.mark.anyio
async def test_retrieve_seals_reasoning_on_request_and_never_stores_a_seal(client: Client):
    r1 = await client.ok(input="hi", include=["reasoning.encrypted_content"])
    plain = (await client.http.get(f"/v1/responses/{r1['id']}")).json()
    assert "encrypted_content" not in plain["output"][0]
    sealed = (await client.http.get(f"/v1/responses/{r1['id']}", params={"include[]": "reasoning.encrypted_content"})).json()
    assert client.service.sealer.open(sealed["output"][0]["encrypted_content"]) == "Hmm."


@pytest.mark.anyio
async def test_conversations_api_and_responses_in_a_conversation(client: Client):
    http = client.http
    conv = (await http.post("/v1/conversations", json={"items": [{"role": "user", "content": "Remember 7."}], "metadata": {"k": "v"}})).json()
    assert conv["object"] == "conversation" and conv["id"].startswith("conv_") and conv["metadata"] == {"k": "v"}
    assert (await http.get(f"/v1/conversations/{conv['id']}")).json() == conv

    r = await client.ok(conversation=conv["id"], input="What number?")
    assert r["conversation"] == {"id": conv["id"]}
    assert item_types(client.engine.contexts[-1]) == ["message", "message"]
    items = (await http.get(f"/v1/conversations/{conv['id']}/items", params={"order": "asc"})).json()
    assert [i["type"] for i in items["data"]] == ["message", "message", "reasoning", "message"]
    assert items["data"][-1]["id"] == r["output"][-1]["id"]

    added = (await http.post(f"/v1/conversations/{conv['id']}/items", json={"items": [{"role": "user", "content": "x"}]})).json()
    assert added["object"] == "list" and len(added["data"]) == 1
    item_id = added["data"][0]["id"]
    assert (await http.get(f"/v1/conversations/{conv['id']}/items/{item_id}")).json() == added["data"][0]
    after_delete = (await http.delete(f"/v1/conversations/{conv['id']}/items/{item_id}")).json()
    assert after_delete["id"] == conv["id"]
    assert (await http.get(f"/v1/conversations/{conv['id']}/items/{item_id}")).status_code == 404

    updated = (await http.post(f"/v1/conversations/{conv['id']}", json={"metadata": {"k": "w"}})).json()
    assert updated["metadata"] == {"k": "w"}
    assert (await http.delete(f"/v1/conversations/{conv['id']}")).json() == {"id": conv["id"], "object": "conversation.deleted", "deleted": True}
    assert (await http.get(f"/v1/conversations/{conv['id']}")).status_code == 404
    assert (await client.create(conversation=conv["id"], input="x")).status_code == 404


@pytest.mark.anyio
@pytest.mark.parametrize("body", [b"{", b"[]", json.dumps({"metadata": "x"}).encode(), json.dumps({"items": "x"}).encode(),
                                  json.dumps({"items": [{"role": "user", "content": "x"}] * 21}).encode(),
                                  json.dumps({"metadata": {f"k{i}": "v" for i in range(17)}}).encode()])
async def test_bad_conversation_bodies_are_400(client: Client, body: bytes):
    r = await client.http.post("/v1/conversations", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_a_store_that_is_down_answers_503_and_store_false_still_works(client: Client, monkeypatch):
    async def down(*args, **kwargs):
        raise StoreUnavailable("connection refused")

    for name in ("create_response", "get_response", "get_items", "create_conversation", "list_conversation_items"):
        monkeypatch.setattr(client.service.store, name, down)
    for r in (
        await client.create(input="hi"),
        await client.create(input="hi", store=False, previous_response_id="resp_x"),
        await client.http.get("/v1/responses/resp_x"),
        await client.http.post("/v1/conversations", json={}),
    ):
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "store_unavailable" and r.json()["error"]["type"] == "server_error"
    assert len(client.engine.aborted) == 1  # the stored request: its engine work stopped when the record could not be written
    assert (await client.ok(input="hi", store=False))["status"] == "completed"
