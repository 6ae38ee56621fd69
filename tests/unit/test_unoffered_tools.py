"""Tool types the model is not offered are never silent (docs/events.md#tools): the answer names
them in a header, the log warns once per type, and ``VLLM_RESPONSES_UNOFFERED_TOOLS=reject``
refuses them with a 400."""

import json
import logging
import tempfile
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from fakes import ScriptedEngine, usage
from vllm_responses.api.routes import TOOLS_NOT_OFFERED_HEADER, tools_header
from vllm_responses.core.service import ResponsesService
from vllm_responses.events.conformance import check_events, parse_sse
from vllm_responses.events.deltas import Finish, TextDelta
from vllm_responses.plugin import ResponsesPlugin
from vllm_responses.request import protocol
from vllm_responses.settings import RequestLimits, Settings
from vllm_responses.store.sqlite import SQLiteStore

SCRIPT = [TextDelta("Hello"), Finish("stop", usage())]
WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}
CODEX_TOOLS = [WEATHER, {"type": "web_search", "external_web_access": False}, {"type": "shell", "environment": {"type": "container_auto"}},
               {"type": "web_search"}, {"type": "file_search", "vector_store_ids": ["vs_1"]}]


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    """Each test starts as a fresh API process: no tool type warned about yet."""
    monkeypatch.setattr(protocol, "_WARNED", set())


def make_app() -> FastAPI:
    app = FastAPI()
    ResponsesPlugin().attach_router(app)
    store = SQLiteStore(Path(tempfile.mkdtemp()) / "responses.db")
    app.state.vllm_responses = ResponsesService(ScriptedEngine(SCRIPT), store)
    return app


async def post(body: dict, path: str = "/v1/responses") -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=make_app()), base_url="http://t") as client:
        return await client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_answer_names_the_tool_types_not_offered(stream: bool) -> None:
    r = await post({"model": "demo", "input": "hi", "stream": stream, "tools": CODEX_TOOLS})
    assert r.status_code == 200, r.text
    assert r.headers[TOOLS_NOT_OFFERED_HEADER] == "file_search, shell, web_search"
    body = parse_sse(r.text)[-1]["response"] if stream else r.json()
    if stream:
        assert check_events(parse_sse(r.text)) == []
    assert [t["type"] for t in body["tools"]] == [t["type"] for t in CODEX_TOOLS]  # still echoed, as before


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/v1/responses/input_tokens", "/v1/responses/compact"])
async def test_the_other_create_bodies_name_them_too(path: str) -> None:
    r = await post({"model": "demo", "input": "hi", "tools": CODEX_TOOLS}, path)
    assert r.status_code == 200, r.text
    assert r.headers[TOOLS_NOT_OFFERED_HEADER] == "file_search, shell, web_search"


@pytest.mark.anyio
async def test_an_error_after_parsing_names_them_and_unknown_types_are_named_safely() -> None:
    tools = [{"type": "something_new"}, {"type": "new tool\r\nx-evil: 1"}, {"type": "é" * 100}]
    r = await post({"model": "nope", "input": "hi", "tools": tools})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    named = r.headers[TOOLS_NOT_OFFERED_HEADER].split(", ")
    assert named[:2] == ["new%20tool%0D%0Ax-evil%3A%201", "something_new"], named  # sorted as sent
    assert len(named[2]) <= 64 and named[2].endswith("%C3%A9") and "x-evil" not in r.headers


def test_the_header_is_bounded() -> None:
    value = tools_header([f"type_{i:03}" for i in range(500)])
    assert value.startswith("type_000, type_001") and value.endswith("type_031, ...")


@pytest.mark.anyio
@pytest.mark.parametrize("tools", [None, [], [WEATHER, {"type": "custom", "name": "apply_patch"},
                                            {"type": "namespace", "name": "crm", "description": "CRM", "tools": [WEATHER]}]])
async def test_no_header_when_every_tool_is_offered(tools) -> None:
    r = await post({"model": "demo", "input": "hi", "stream": True, **({"tools": tools} if tools is not None else {})})
    assert r.status_code == 200, r.text
    assert TOOLS_NOT_OFFERED_HEADER not in r.headers


@pytest.mark.anyio
async def test_one_warning_per_type_per_process(caplog) -> None:
    caplog.set_level(logging.WARNING)
    for _ in range(3):
        assert (await post({"model": "demo", "input": "hi", "tools": CODEX_TOOLS})).status_code == 200
    await post({"model": "demo", "input": "hi", "tools": [{"type": "image_generation"}, {"type": "web_search"}]})
    lines = [r.getMessage() for r in caplog.records if "not offered to the model" in r.getMessage()]
    warned = sorted(line.split("'")[1] for line in lines)
    assert warned == ["file_search", "image_generation", "shell", "web_search"], lines
    assert all("VLLM_RESPONSES_UNOFFERED_TOOLS=reject" in line for line in lines)


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/v1/responses", "/v1/responses/input_tokens", "/v1/responses/compact"])
async def test_reject_mode_refuses_them_naming_the_tool(monkeypatch, path: str) -> None:
    monkeypatch.setattr(protocol, "LIMITS", RequestLimits(unoffered_tools="reject"))
    r = await post({"model": "demo", "input": "hi", "tools": CODEX_TOOLS}, path)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "unsupported_value" and error["param"] == "tools[1].type"
    assert "'web_search'" in error["message"] and "VLLM_RESPONSES_UNOFFERED_TOOLS" in error["message"]
    offered = await post({"model": "demo", "input": "hi", "tools": [WEATHER]}, path)
    assert offered.status_code == 200, offered.text


def test_over_websocket_the_log_warns_and_reject_is_an_error_frame(monkeypatch, caplog) -> None:
    """No header per turn there, and no field added to the events: the log line is all (accept)."""
    caplog.set_level(logging.WARNING)
    body = {"type": "response.create", "model": "demo", "input": "hi", "tools": CODEX_TOOLS}
    with TestClient(make_app()).websocket_connect("/v1/responses") as ws:
        ws.send_text(json.dumps(body))
        events = [json.loads(ws.receive_text())]
        while events[-1]["type"] != "response.completed":
            events.append(json.loads(ws.receive_text()))
        assert check_events(events) == []
        assert sum("not offered to the model" in r.getMessage() for r in caplog.records) == 3
        monkeypatch.setattr(protocol, "LIMITS", RequestLimits(unoffered_tools="reject"))
        ws.send_text(json.dumps(body))
        frame = json.loads(ws.receive_text())
    assert frame["type"] == "error" and frame["status"] == 400, frame
    assert (frame["error"]["code"], frame["error"]["param"]) == ("unsupported_value", "tools[1].type")


def test_the_setting_is_read_from_the_environment() -> None:
    assert Settings.from_env({}).requests.unoffered_tools == "accept"
    assert Settings.from_env({"VLLM_RESPONSES_UNOFFERED_TOOLS": " Reject "}).requests.unoffered_tools == "reject"
    with pytest.raises(ValueError, match="VLLM_RESPONSES_UNOFFERED_TOOLS"):
        Settings.from_env({"VLLM_RESPONSES_UNOFFERED_TOOLS": "drop"})
