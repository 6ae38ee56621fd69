"""Compaction over a scripted engine: the trigger item, /v1/responses/compact, the threshold,
and a compaction item sent back (what the model then sees)."""

import json
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes import ScriptedEngine, eventually, usage
from fastapi import FastAPI
from openai.types.responses import ResponseOutputItem
from openai.types.responses.compacted_response import CompactedResponse
from openai.types.responses.response_input_message_item import ResponseInputMessageItem
from pydantic import TypeAdapter

from vllm_responses.core.compaction import SUMMARY_PREFIX, SUMMARY_PROMPT
from vllm_responses.events.conformance import check_events, parse_sse
from vllm_responses.events.deltas import Finish, ReasoningDelta, TextDelta
from vllm_responses.plugin import ResponsesPlugin
from vllm_responses.common.sealing import ReasoningSealer
from vllm_responses.core.service import ResponsesService
from vllm_responses.store.sqlite import SQLiteStore

SCRIPT = [ReasoningDelta("Thinking."), TextDelta("The user said"), TextDelta(" hi."), Finish("stop", usage(10, 5))]
SUMMARY = "The user said hi."
TRIGGER = {"type": "compaction_trigger"}


class CountingEngine(ScriptedEngine):
    """Counts a prompt as one token per item, so thresholds are easy to cross."""

    def input_tokens(self, prepared: Any) -> int:
        return len(self.contexts[-1])


def make_client(engine: ScriptedEngine) -> tuple[httpx.AsyncClient, ResponsesService]:
    app = FastAPI()
    ResponsesPlugin().attach_router(app)
    service = ResponsesService(engine, SQLiteStore(Path(tempfile.mkdtemp()) / "responses.db"), ReasoningSealer())
    app.state.vllm_responses = service
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t"), service


def texts(items: list[Any]) -> list[tuple[str, str]]:
    """(role, text) of the messages the engine rendered; other items by type."""
    out = []
    for item in items:
        kind = getattr(item, "type", None) or "message"
        if kind != "message":
            out.append((kind, ""))
            continue
        content = item.content if isinstance(item.content, str) else "".join(getattr(p, "text", "") for p in item.content)
        out.append((item.role, content))
    return out


HISTORY = [
    {"role": "user", "content": "first question"},
    {"role": "assistant", "content": "first answer"},
    {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
    {"type": "function_call_output", "call_id": "call_1", "output": "tool said so"},
    {"role": "user", "content": "second question"},
]


@pytest.mark.anyio
async def test_trigger_streams_exactly_one_compaction_item_with_the_models_sealed_summary():
    engine = ScriptedEngine(SCRIPT)
    client, service = make_client(engine)
    async with client:
        r = await client.post("/v1/responses", json={"model": "demo", "input": HISTORY + [TRIGGER], "stream": True, "instructions": "Be brief.",
                                                        "tools": [{"type": "function", "name": "f", "parameters": {}}]})
    assert r.status_code == 200, r.text
    events = parse_sse(r.text)
    assert check_events(events) == []
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.output_item.done", "response.completed",
    ]
    item = events[-1]["response"]["output"]
    assert len(item) == 1 and item[0]["type"] == "compaction" and item[0]["id"].startswith("cmp_")
    assert events[2]["item"] == events[3]["item"] == item[0]
    assert service.sealer.open(item[0]["encrypted_content"]) == SUMMARY  # the engine's text, reasoning dropped
    assert events[-1]["response"]["usage"]["input_tokens"] == 10
    summary_request, summary_items = engine.requests[-1], engine.contexts[-1]
    assert summary_request.tools == [] and summary_request.get("instructions") == "Be brief."
    assert texts(summary_items)[-1] == ("user", SUMMARY_PROMPT)
    assert texts(summary_items)[:-1] == texts(engine.contexts[-1][:-1]) and ("user", "second question") in texts(summary_items)


@pytest.mark.anyio
async def test_compaction_item_sent_back_stands_in_for_the_history_before_it():
    engine = ScriptedEngine(SCRIPT)
    client, _service = make_client(engine)
    async with client:
        r = await client.post("/v1/responses", json={"model": "demo", "input": HISTORY + [TRIGGER]})
        compaction = r.json()["output"][0]
        r = await client.post("/v1/responses", json={"model": "demo", "input": HISTORY + [compaction, {"role": "user", "content": "third question"}]})
    assert r.status_code == 200, r.text
    assert texts(engine.contexts[-1]) == [
        ("user", "first question"), ("user", "second question"), ("user", SUMMARY_PREFIX + SUMMARY), ("user", "third question"),
    ]


@pytest.mark.anyio
async def test_trigger_response_continues_by_previous_response_id():
    engine = ScriptedEngine(SCRIPT)
    client, _ = make_client(engine)
    async with client:
        first = (await client.post("/v1/responses", json={"model": "demo", "input": HISTORY})).json()
        compacted = (await client.post("/v1/responses", json={"model": "demo", "previous_response_id": first["id"], "input": [TRIGGER]})).json()
        assert [i["type"] for i in compacted["output"]] == ["compaction"]
        r = await client.post("/v1/responses", json={"model": "demo", "previous_response_id": compacted["id"], "input": "third question"})
    assert r.status_code == 200, r.text
    assert texts(engine.contexts[-1]) == [
        ("user", "first question"), ("user", "second question"), ("user", SUMMARY_PREFIX + SUMMARY), ("user", "third question"),
    ]


@pytest.mark.anyio
async def test_compact_endpoint_keeps_user_messages_ends_with_compaction_and_is_stored():
    engine = ScriptedEngine(SCRIPT)
    client, service = make_client(engine)
    async with client:
        r = await client.post("/v1/responses/compact", json={"model": "demo", "input": HISTORY})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "response.compaction" and body["id"].startswith("resp_")
        parsed = CompactedResponse.model_construct(**body)  # user messages are no ResponseOutputItem (see docs/events.md)
        assert parsed.object == "response.compaction"
        *users, last = body["output"]
        assert [TypeAdapter(ResponseInputMessageItem).validate_python(u).content[0].text for u in users] == ["first question", "second question"]
        assert TypeAdapter(ResponseOutputItem).validate_python(last).type == "compaction"
        assert service.sealer.open(last["encrypted_content"]) == SUMMARY
        assert body["usage"]["total_tokens"] == 15
        r = await client.post("/v1/responses", json={"model": "demo", "previous_response_id": body["id"], "input": "third question"})
        assert r.status_code == 200, r.text
        stored = (await client.get(f"/v1/responses/{body['id']}")).json()
    assert stored["status"] == "completed" and stored["output"] == body["output"]
    assert texts(engine.contexts[-1]) == [
        ("user", "first question"), ("user", "second question"), ("user", SUMMARY_PREFIX + SUMMARY), ("user", "third question"),
    ]


@pytest.mark.anyio
async def test_threshold_compacts_before_the_answer_in_the_same_stream():
    engine = CountingEngine(SCRIPT)
    client, _service = make_client(engine)
    body = {"model": "demo", "input": HISTORY, "stream": True, "context_management": [{"type": "compaction", "compact_threshold": 3}]}
    async with client:
        r = await client.post("/v1/responses", json=body)
        events = parse_sse(r.text)
        assert check_events(events) == []
        final = events[-1]["response"]
        assert [i["type"] for i in final["output"]] == ["compaction", "reasoning", "message"]
        assert final["usage"]["input_tokens"] == 20  # the summary pass and the answer
        assert texts(engine.contexts[-1]) == [("user", "first question"), ("user", "second question"), ("user", SUMMARY_PREFIX + SUMMARY)]
        # Under the threshold nothing is compacted.
        r = await client.post("/v1/responses", json={**body, "input": "short", "stream": False})
    assert [i["type"] for i in r.json()["output"]] == ["reasoning", "message"]


@pytest.mark.anyio
async def test_foreign_compaction_is_dropped_and_altered_one_refused():
    engine = ScriptedEngine(SCRIPT)
    client, _service = make_client(engine)
    foreign = ReasoningSealer().seal("someone else's summary")
    async with client:
        ours = (await client.post("/v1/responses", json={"model": "demo", "input": HISTORY + [TRIGGER]})).json()["output"][0]
        r = await client.post("/v1/responses", json={"model": "demo", "input": [{"type": "compaction", "encrypted_content": foreign}, {"role": "user", "content": "q"}]})
        assert r.status_code == 200, r.text
        assert texts(engine.contexts[-1]) == [("user", "q")]
        blob = ours["encrypted_content"]
        altered = blob[:-4] + ("AAAA" if not blob.endswith("AAAA") else "BBBB")
        r = await client.post("/v1/responses", json={"model": "demo", "input": [{"type": "compaction", "encrypted_content": altered}, {"role": "user", "content": "q"}]})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_encrypted_content" and r.json()["error"]["param"] == "input[0].encrypted_content"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "path, body, param, code",
    [
        ("/v1/responses", {"input": [TRIGGER, {"role": "user", "content": "x"}]}, "input[0]", "invalid_value"),
        ("/v1/responses", {"input": "x", "context_management": [{"type": "summarise"}]}, "context_management[0].type", "unsupported_value"),
        ("/v1/responses", {"input": "x", "context_management": [{"type": "compaction", "compact_threshold": 0}]}, "context_management[0].compact_threshold", "integer_below_min_value"),
        ("/v1/responses/compact", {"input": "x", "stream": True}, "stream", "unsupported_parameter"),
        ("/v1/responses/compact", {"input": "x", "background": True}, "background", "unsupported_parameter"),
        ("/v1/responses/compact", {"input": [{"role": "user", "content": "x"}, TRIGGER]}, "input", "invalid_value"),
        ("/v1/responses/compact", {"input": "x", "previous_response_id": "resp_missing"}, "previous_response_id", "previous_response_not_found"),
    ],
)
async def test_bad_compaction_requests_are_openai_errors(path, body, param, code):
    client, _ = make_client(ScriptedEngine(SCRIPT))
    async with client:
        r = await client.post(path, content=json.dumps({"model": "demo", **body}), headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    error = r.json()["error"]
    assert (error["param"], error["code"]) == (param, code), error


@pytest.mark.anyio
async def test_a_summary_cut_short_by_the_context_is_the_requests_400():
    """The context left no room to finish the summary: the input is too long to compact, not a server error."""
    client, service = make_client(ScriptedEngine([TextDelta("The user"), Finish("length", usage(10, 16))]))
    async with client:
        r = await client.post("/v1/responses/compact", json={"model": "demo", "input": HISTORY})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", "input", "compaction_incomplete")
    assert "cut short by the model's context length" in error["message"]
    assert await service.store.count_responses() == 0


@pytest.mark.anyio
@pytest.mark.parametrize("threshold", [False, True])
async def test_a_summary_cut_short_is_never_sealed(threshold: bool):
    """On create (trigger or threshold) the response ends ``incomplete`` without a compaction
    item, and no answer is generated from a partial summary."""
    engine = CountingEngine([TextDelta("The user"), Finish("length", usage(10, 16))])
    client, _ = make_client(engine)
    body = {"model": "demo", "input": HISTORY, "context_management": [{"type": "compaction", "compact_threshold": 1}]} if threshold \
        else {"model": "demo", "input": [*HISTORY, TRIGGER]}
    async with client:
        r = await client.post("/v1/responses", json={**body, "stream": True})
    assert r.status_code == 200, r.text
    events = parse_sse(r.text)
    assert check_events(events) == []
    assert [e["type"] for e in events] == ["response.created", "response.in_progress", "response.incomplete"]
    response = events[-1]["response"]
    assert (response["status"], response["incomplete_details"], response["output"]) == ("incomplete", {"reason": "max_output_tokens"}, [])
    assert len(engine.contexts) == (2 if threshold else 1)  # the prompt counted (threshold), the summary; no answer


@pytest.mark.anyio
async def test_background_trigger_compacts():
    engine = ScriptedEngine(SCRIPT)
    client, service = make_client(engine)
    async with client:
        r = await client.post("/v1/responses", json={"model": "demo", "input": HISTORY + [TRIGGER], "background": True})
        assert r.status_code == 200, r.text

        async def ended() -> dict | None:
            body = (await client.get(f"/v1/responses/{r.json()['id']}")).json()
            return None if body["status"] in ("queued", "in_progress") else body

        body = await eventually("the background response ended", ended)
    assert body["status"] == "completed", body
    assert [i["type"] for i in body["output"]] == ["compaction"]
    assert service.sealer.open(body["output"][0]["encrypted_content"]) == SUMMARY


@pytest.mark.anyio
async def test_conversation_keeps_the_compaction_and_renders_from_it():
    engine = ScriptedEngine(SCRIPT)
    client, _ = make_client(engine)
    async with client:
        conversation = (await client.post("/v1/conversations", json={"items": HISTORY})).json()["id"]
        r = await client.post("/v1/responses", json={"model": "demo", "conversation": conversation, "input": [TRIGGER]})
        assert [i["type"] for i in r.json()["output"]] == ["compaction"]
        r = await client.post("/v1/responses", json={"model": "demo", "conversation": conversation, "input": "third question"})
        assert r.status_code == 200, r.text
        listed = (await client.get(f"/v1/conversations/{conversation}/items", params={"order": "asc", "limit": 100})).json()["data"]
    assert [i["type"] for i in listed][-5:] == ["compaction_trigger", "compaction", "message", "reasoning", "message"]
    assert texts(engine.contexts[-1]) == [
        ("user", "first question"), ("user", "second question"), ("user", SUMMARY_PREFIX + SUMMARY), ("user", "third question"),
    ]


def test_websocket_turn_compacts_and_the_next_continues_from_the_connection():
    from starlette.testclient import TestClient

    engine = ScriptedEngine(SCRIPT)
    app = FastAPI()
    ResponsesPlugin().attach_router(app)
    app.state.vllm_responses = ResponsesService(engine, SQLiteStore(Path(tempfile.mkdtemp()) / "r.db"))

    def turn(ws: Any, body: dict[str, Any]) -> list[dict[str, Any]]:
        ws.send_text(json.dumps({"type": "response.create", "model": "demo", "store": False, **body}))
        events = [json.loads(ws.receive_text())]
        while events[-1]["type"] not in ("response.completed", "response.failed", "error"):
            events.append(json.loads(ws.receive_text()))
        return events

    with TestClient(app).websocket_connect("/v1/responses") as ws:
        compacted = turn(ws, {"input": HISTORY + [TRIGGER]})
        assert check_events(compacted) == [] and [i["type"] for i in compacted[-1]["response"]["output"]] == ["compaction"]
        answered = turn(ws, {"input": "third question", "previous_response_id": compacted[-1]["response"]["id"]})
        assert answered[-1]["type"] == "response.completed"
    assert texts(engine.contexts[-1]) == [
        ("user", "first question"), ("user", "second question"), ("user", SUMMARY_PREFIX + SUMMARY), ("user", "third question"),
    ]
