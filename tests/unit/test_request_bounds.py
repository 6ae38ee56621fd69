"""What one request, one WebSocket and one process may hold (issue 24 point 2): OpenAI's
length limits on identifiers, caps on input items, tools and their size, background runs
and WebSocket connections at once, the WebSocket's cached last turn (docs/operations.md)."""

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

import orjson
import pytest
from fakes import ScriptedEngine, usage
from fastapi import FastAPI
from starlette.testclient import TestClient

from vllm_responses.request import protocol
from vllm_responses.api import websocket
from vllm_responses.events.deltas import Finish, TextDelta
from vllm_responses.common.errors import APIError
from vllm_responses.plugin import ResponsesPlugin
from vllm_responses.request.protocol import parse_request
from vllm_responses.core.service import ResponsesService
from vllm_responses.settings import RequestLimits, Settings
from vllm_responses.store.sqlite import SQLiteStore

SCRIPT = [TextDelta("Hello"), Finish("stop", usage())]


def refused(body: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(APIError) as caught:
        parse_request(orjson.dumps({"model": "demo", "input": "hi", **body}))
    assert caught.value.status == 400
    return caught.value.body()["error"]


@pytest.mark.parametrize(("name", "limit"), [("user", 64), ("prompt_cache_key", 64), ("safety_identifier", 128)])
def test_identifiers_have_openais_length_limits(name: str, limit: int) -> None:
    parse_request(orjson.dumps({"model": "demo", "input": "hi", name: "x" * limit}))
    error = refused({name: "x" * (limit + 1)})
    assert (error["param"], error["code"], error["type"]) == (name, "string_above_max_length", "invalid_request_error")
    assert f"maximum length {limit}" in error["message"]


def test_input_items_and_tools_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "LIMITS", RequestLimits(max_input_items=3, max_tools=2, max_tools_bytes=2048))
    item = {"type": "message", "role": "user", "content": "hi"}
    parse_request(orjson.dumps({"model": "demo", "input": [item] * 3}))
    error = refused({"input": [item] * 4})
    assert (error["param"], error["code"]) == ("input", "array_above_max_length")
    tool = {"type": "function", "name": "f", "parameters": {"type": "object"}}
    parse_request(orjson.dumps({"model": "demo", "input": "hi", "tools": [tool] * 2}))
    error = refused({"tools": [tool] * 3})
    assert (error["param"], error["code"]) == ("tools", "array_above_max_length")
    # A hosted tool that never runs here is echoed and stored as sent: its size counts too.
    error = refused({"tools": [{"type": "file_search", "vector_store_ids": ["vs_" + "x" * 3000]}]})
    assert (error["param"], error["code"]) == ("tools", "tools_too_large")


def test_default_caps_refuse_a_5mb_hosted_tool_and_admit_a_long_history() -> None:
    error = refused({"tools": [{"type": "file_search", "vector_store_ids": ["vs_" + "x" * 1000] * 5000}]})
    assert error["code"] == "tools_too_large"
    history = [{"type": "message", "role": "user", "content": f"turn {i}"} for i in range(5000)]
    assert len(parse_request(orjson.dumps({"model": "demo", "input": history})).input) == 5000


def test_settings_read_every_limit_from_the_environment() -> None:
    settings = Settings.from_env({
        "VLLM_RESPONSES_MAX_INPUT_ITEMS": "7", "VLLM_RESPONSES_MAX_TOOLS": "8", "VLLM_RESPONSES_MAX_TOOLS_BYTES": "4096",
        "VLLM_RESPONSES_MAX_BACKGROUND": "9", "VLLM_RESPONSES_WS_MAX_CONNECTIONS": "10", "VLLM_RESPONSES_WS_CACHE_MAX_BYTES": "11",
    })
    assert settings.requests == RequestLimits(7, 8, 4096)
    assert (settings.max_background, settings.ws_max_connections, settings.ws_cache_max_bytes) == (9, 10, 11)
    with pytest.raises(ValueError, match="VLLM_RESPONSES_MAX_TOOLS"):
        Settings.from_env({"VLLM_RESPONSES_MAX_TOOLS": "0"})


@pytest.mark.anyio
async def test_background_responses_at_once_are_capped() -> None:
    service = ResponsesService(ScriptedEngine(SCRIPT, delay=3600), SQLiteStore(Path(tempfile.mkdtemp()) / "r.db"), max_background=1)
    body = orjson.dumps({"model": "demo", "input": "hi", "background": True})
    try:
        first = await service.create(parse_request(body))
        with pytest.raises(APIError) as caught:
            await service.create(parse_request(body))
        assert (caught.value.status, caught.value.code) == (429, "too_many_background_responses")
        assert service.background.reserved == 0
        first.cancel()
        await asyncio.wait_for(first.task, 60)
        second = await service.create(parse_request(body))  # the slot is free again
        assert second.id != first.id
    finally:
        await service.stop()


def _client(monkeypatch: pytest.MonkeyPatch, **settings: Any) -> TestClient:
    monkeypatch.setattr(websocket, "_settings", lambda: Settings(**settings))
    app = FastAPI()
    ResponsesPlugin().attach_router(app)
    app.state.vllm_responses = ResponsesService(ScriptedEngine(SCRIPT), SQLiteStore(Path(tempfile.mkdtemp()) / "r.db"))
    return TestClient(app)


def _turn(ws: Any, body: dict[str, Any]) -> list[dict[str, Any]]:
    ws.send_text(json.dumps({"type": "response.create", **body}))
    events = [json.loads(ws.receive_text())]
    while events[-1]["type"] not in ("response.completed", "response.failed", "error"):
        events.append(json.loads(ws.receive_text()))
    return events


def test_websocket_connections_at_once_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    client = _client(monkeypatch, ws_max_connections=1)
    with client.websocket_connect("/v1/responses") as first:
        assert _turn(first, {"model": "demo", "input": "hi"})[-1]["type"] == "response.completed"
        with client.websocket_connect("/v1/responses") as second:
            frame = _turn(second, {"model": "demo", "input": "hi"})[0]
            assert (frame["status"], frame["error"]["code"]) == (429, "too_many_websocket_connections")
    with client.websocket_connect("/v1/responses") as again:  # the first one's slot is free
        assert _turn(again, {"model": "demo", "input": "hi"})[-1]["type"] == "response.completed"


def test_websocket_cache_keeps_no_turn_above_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    for bound, continued in ((1 << 20, True), (100, False)):
        with _client(monkeypatch, ws_cache_max_bytes=bound).websocket_connect("/v1/responses") as ws:
            rid = _turn(ws, {"model": "demo", "input": "hi", "store": False})[-1]["response"]["id"]
            last = _turn(ws, {"model": "demo", "input": "again", "store": False, "previous_response_id": rid})[-1]
            if continued:
                assert last["type"] == "response.completed"
            else:  # not kept, not stored: as after an eviction
                assert (last["status"], last["error"]["code"]) == (400, "previous_response_not_found")
