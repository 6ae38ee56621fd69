"""The OpenAPI description of our routes (openapi.py), and answers checked against it over a
scripted engine; the cases the fuzzer (tests/e2e/test_fuzz.py) found stay here as regressions."""

import json
import tempfile
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from fakes import ScriptedEngine, usage
from fastapi import FastAPI

from vllm_responses.events.deltas import Finish, TextDelta
from vllm_responses.request.parameters import NO_EFFECT, REFUSED, VLLM_EXTENSIONS
from vllm_responses.plugin import ResponsesPlugin
from vllm_responses.core.service import ResponsesService
from vllm_responses.store.sqlite import SQLiteStore


class CountingEngine(ScriptedEngine):
    def input_tokens(self, prepared: Any) -> int:
        return 3


def make_app() -> FastAPI:
    app = FastAPI()
    ResponsesPlugin().attach_router(app)
    store = SQLiteStore(Path(tempfile.mkdtemp()) / "responses.db")
    app.state.vllm_responses = ResponsesService(CountingEngine([TextDelta("Hello"), Finish("stop", usage())]), store)
    return app


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return make_app().openapi()


def test_built_when_first_asked_and_once() -> None:
    app = make_app()
    assert app.openapi_schema is None  # nothing built at start-up
    first = app.openapi()
    assert app.openapi() is first and app.openapi_schema is first


def test_create_body(document: dict[str, Any]) -> None:
    create = document["paths"]["/v1/responses"]["post"]
    assert create["requestBody"] == {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/responses.ResponseCreateParams"}}}}
    body = document["components"]["schemas"]["responses.ResponseCreateParams"]
    assert body["required"] == ["model", "input"] and body["additionalProperties"] is False
    assert body["properties"]["temperature"]["anyOf"][0] == {"type": "number", "minimum": 0, "maximum": 2}
    assert body["properties"]["prompt"]["type"] == "null"  # refused
    assert {"model", "input", "tools", "stream", "max_output_tokens"} | VLLM_EXTENSIONS | set(NO_EFFECT) | set(REFUSED) <= set(body["properties"])
    assert "max_tokens" not in body["properties"]  # a chat habit: answered 400


@pytest.mark.parametrize(
    "path, method, names",
    [
        ("/v1/responses", "post", []),
        ("/v1/responses/{response_id}", "get", ["response_id", "include", "stream", "starting_after"]),
        ("/v1/responses/{response_id}", "delete", ["response_id"]),
        ("/v1/responses/{response_id}/cancel", "post", ["response_id"]),
        ("/v1/responses/{response_id}/input_items", "get", ["response_id", "include", "limit", "order", "after"]),
        ("/v1/conversations", "post", []),
        ("/v1/conversations/{conversation_id}", "get", ["conversation_id"]),
        ("/v1/conversations/{conversation_id}", "post", ["conversation_id"]),
        ("/v1/conversations/{conversation_id}", "delete", ["conversation_id"]),
        ("/v1/conversations/{conversation_id}/items", "get", ["conversation_id", "include", "limit", "order", "after"]),
        ("/v1/conversations/{conversation_id}/items", "post", ["conversation_id", "include"]),
        ("/v1/conversations/{conversation_id}/items/{item_id}", "get", ["conversation_id", "item_id", "include"]),
        ("/v1/conversations/{conversation_id}/items/{item_id}", "delete", ["conversation_id", "item_id"]),
        ("/v1/responses/compact", "post", []),
        ("/v1/responses/input_tokens", "post", []),
    ],
)
def test_every_route_described(document: dict[str, Any], path: str, method: str, names: list[str]) -> None:
    operation = document["paths"][path][method]
    assert [p["name"] for p in operation.get("parameters", [])] == names
    assert operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].startswith("#/components/schemas/responses.")
    assert operation["responses"]["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/responses.Error"}
    assert "422" not in operation["responses"]  # FastAPI's validation error never comes from our routes


def test_links_name_real_operations(document: dict[str, Any]) -> None:
    ids = {op["operationId"] for methods in document["paths"].values() for op in methods.values()}
    links = document["paths"]["/v1/responses"]["post"]["responses"]["200"]["links"]
    assert len(links) == 4 and all(link["operationId"] in ids and link["parameters"] == {"response_id": "$response.body#/id"} for link in links.values())


def _validator(document: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    """A validator for one of our components; the document is its root, so its references resolve."""
    return jsonschema.Draft202012Validator({**document, "$ref": f"#/components/schemas/responses.{name}"})


async def _call(app: FastAPI, method: str, path: str, body: Any = None) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        return await client.request(method, path, content=None if body is None else json.dumps(body), headers={"content-type": "application/json"})


@pytest.mark.anyio
async def test_answers_hold_to_the_schema(document: dict[str, Any]) -> None:
    app = make_app()
    created = await _call(app, "POST", "/v1/responses", {"model": "demo", "input": "hi"})
    assert created.status_code == 200
    _validator(document, "Response").validate(created.json())
    rid = created.json()["id"]
    listed = await _call(app, "GET", f"/v1/responses/{rid}/input_items?after=nope")
    assert listed.json()["data"] == [] and listed.json()["first_id"] is None
    _validator(document, "ResponseItemList").validate(listed.json())
    conversation = (await _call(app, "POST", "/v1/conversations", {})).json()
    _validator(document, "Conversation").validate(conversation)
    empty = await _call(app, "GET", f"/v1/conversations/{conversation['id']}/items")
    _validator(document, "ConversationItemList").validate(empty.json())
    compacted = await _call(app, "POST", "/v1/responses/compact", {"model": "demo", "input": [{"role": "user", "content": "hi"}]})
    assert compacted.status_code == 200, compacted.text
    _validator(document, "CompactedResponse").validate(compacted.json())  # user messages, then the compaction item
    counted = await _call(app, "POST", "/v1/responses/input_tokens", {"model": "demo", "input": "hi"})
    assert counted.status_code == 200, counted.text
    _validator(document, "InputTokenCountResponse").validate(counted.json())
    missing = await _call(app, "GET", "/v1/responses/resp_nope")
    assert missing.status_code == 404
    _validator(document, "Error").validate(missing.json())


# -- what the fuzzer found ------------------------------------------------------------------
@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/v1/responses", "/v1/conversations"])
async def test_item_reference_without_type(path: str) -> None:
    """``{"id": ...}`` is an ``item_reference`` (its ``type`` is optional): was a 500 (KeyError 'role')."""
    key = "input" if path == "/v1/responses" else "items"
    r = await _call(make_app(), "POST", path, {"model": "demo", key: [{"id": "msg_nope"}]} if key == "input" else {key: [{"id": "msg_nope"}]})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "item_not_found"


@pytest.mark.anyio
async def test_items_sent_with_null_id_and_status(document: dict[str, Any]) -> None:
    """An item with ``id: null`` was stored without an id (500, NOT NULL); a ``shell_call`` with
    ``status: null`` was listed without the status openai's ConversationItem requires; items
    of types without an output shape there broke the published item schema."""
    app = make_app()
    items = [
        {"type": "function_call", "id": None, "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "shell_call", "id": None, "call_id": "c2", "status": None, "action": {"commands": []}, "environment": {"type": "local"}},
        {"type": "tool_search_call", "id": None, "arguments": None, "call_id": None, "execution": None, "status": None},
        {"type": "compaction_trigger"},  # no output shape in openai's ConversationItem: listed as sent
    ]
    created = await _call(app, "POST", "/v1/conversations", {"items": items})
    assert created.status_code == 200
    listed = (await _call(app, "GET", f"/v1/conversations/{created.json()['id']}/items?order=asc")).json()
    assert [(i["type"], i["id"][:3], i.get("status")) for i in listed["data"]] == [
        ("function_call", "fc_", "completed"),
        ("shell_call", "sh_", "completed"),
        ("tool_search_call", "ts_", "completed"),
        ("compaction_trigger", "ite", None),
    ]
    _validator(document, "ConversationItemList").validate(listed)
    for item in listed["data"]:
        one = await _call(app, "GET", f"/v1/conversations/{created.json()['id']}/items/{item['id']}")
        _validator(document, "ConversationItem").validate(one.json())
