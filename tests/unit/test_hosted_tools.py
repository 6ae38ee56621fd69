"""MCP tools the server runs inside one response (core/tool_loop.py, core/hosted.py), with a
scripted engine and scripted MCP servers: listing, calls, approvals, failures, secrets and
cancellation. The real MCP client and servers: tests/unit/test_mcp_client.py and the e2e tier."""

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes import eventually, usage
from fastapi import FastAPI
from test_builtin_tools import PassesEngine

from vllm_responses.core.hosted import (
    CallResult,
    HostedFailure,
    HostedTools,
    execution_error,
)
from vllm_responses.core.service import ResponsesService
from vllm_responses.events.conformance import check_events, parse_sse
from vllm_responses.events.deltas import Finish, TextDelta, ToolCallDelta
from vllm_responses.plugin import ResponsesPlugin
from vllm_responses.store.sqlite import SQLiteStore

ADD = {"name": "add", "description": "Add two numbers.", "input_schema": {"type": "object", "properties": {"a": {}, "b": {}}}}
ECHO = {"name": "echo", "input_schema": {"type": "object"}, "annotations": {"readOnlyHint": True}}


def mcp_tool(**extra: Any) -> dict[str, Any]:
    return {"type": "mcp", "server_label": "calc", "server_url": "http://mcp.test/mcp", **extra}


def mcp_call(name: str = "add", arguments: str = '{"a": 1, "b": 2}', index: int = 0) -> ToolCallDelta:
    return ToolCallDelta(index, arguments, name, f"call_{index}", None, False, "mcp", {"server_label": "calc"})


CALL_PASS = [mcp_call(), Finish("stop", usage(10, 5))]
ANSWER_PASS = [TextDelta("It is 3."), Finish("stop", usage(20, 3))]


class ScriptedServers(HostedTools):
    """MCP servers as a test scripts them; records every list and call."""

    def __init__(self, tools: list[dict] | None = None, fail_list: bool = False, block: bool = False) -> None:
        self.tools = tools if tools is not None else [ADD, ECHO]
        self.fail_list, self.block = fail_list, block
        self.listed: list[str] = []
        self.calls: list[tuple[str, str, dict]] = []
        self.cancelled = asyncio.Event()
        self.running = asyncio.Event()

    def check(self, request) -> None:
        pass

    async def list_tools(self, tool) -> list[dict]:
        self.listed.append(tool.server_label)
        if self.fail_list:
            raise HostedFailure("calc: connection refused")
        return self.tools

    async def call(self, tool, name, arguments) -> CallResult:
        self.calls.append((tool.server_label, name, arguments))
        if self.block:
            self.running.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        if name == "fail":
            return CallResult(error=execution_error("division by zero"))
        if name == "unreachable":
            raise HostedFailure("calc: timed out after 30 s")
        return CallResult(output=str(arguments.get("a", 0) + arguments.get("b", 0)))


def make_app(engine, servers: HostedTools | None) -> tuple[FastAPI, Path]:
    app = FastAPI()
    ResponsesPlugin().attach_router(app)
    path = Path(tempfile.mkdtemp()) / "responses.db"
    app.state.vllm_responses = ResponsesService(engine, SQLiteStore(path), hosted=servers)
    return app, path


async def call(app, method: str, path: str, body: dict | None = None) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        return await client.request(method, path, json=body)


def kinds(response: dict) -> list[str]:
    return [i["type"] for i in response["output"]]


@pytest.mark.anyio
async def test_list_call_and_answer_in_one_streamed_response():
    engine, servers = PassesEngine([CALL_PASS, ANSWER_PASS]), ScriptedServers()
    app, _ = make_app(engine, servers)
    r = await call(app, "POST", "/v1/responses", {"model": "demo", "input": "add 1 and 2", "stream": True,
                                                  "tools": [mcp_tool(require_approval="never")]})
    events = parse_sse(r.text)
    assert check_events(events) == []
    response = events[-1]["response"]
    assert kinds(response) == ["mcp_list_tools", "mcp_call", "message"]
    listing, done = response["output"][0], response["output"][1]
    assert listing["server_label"] == "calc" and [t["name"] for t in listing["tools"]] == ["add", "echo"]
    assert (done["name"], done["arguments"], done["output"], done["status"]) == ("add", '{"a": 1, "b": 2}', "3", "completed")
    assert servers.calls == [("calc", "add", {"a": 1, "b": 2})]
    assert engine.offered[-2:] == [["calc__add", "calc__echo"], ["calc__add", "calc__echo"]]
    order = [e["type"] for e in events if e["type"].startswith(("response.mcp", "response.output_item"))]
    assert order[:10] == [
        "response.output_item.added", "response.mcp_list_tools.in_progress", "response.mcp_list_tools.completed",
        "response.output_item.done",
        "response.output_item.added", "response.mcp_call.in_progress", "response.mcp_call_arguments.delta",
        "response.mcp_call_arguments.done", "response.mcp_call.completed", "response.output_item.done",
    ]
    assert response["usage"]["input_tokens"] == 30
    # The model's second pass saw the call and its output.
    assert [getattr(i, "type", "message") for i in engine.contexts[-1]][-2:] == ["mcp_list_tools", "mcp_call"]


@pytest.mark.anyio
async def test_a_later_turn_reuses_the_listing_and_allowed_tools_filter():
    engine, servers = PassesEngine([ANSWER_PASS]), ScriptedServers()
    app, _ = make_app(engine, servers)
    first = (await call(app, "POST", "/v1/responses", {"model": "demo", "input": "hi", "tools": [mcp_tool()]})).json()
    tool = mcp_tool(allowed_tools={"read_only": True})
    second = (await call(app, "POST", "/v1/responses", {"model": "demo", "input": "again",
                                                        "previous_response_id": first["id"], "tools": [tool]})).json()
    assert kinds(first) == ["mcp_list_tools", "message"] and kinds(second) == ["message"]
    assert servers.listed == ["calc"]  # listed once, as OpenAI does
    assert engine.offered[-1] == ["calc__echo"]


@pytest.mark.anyio
async def test_a_call_waits_for_approval_then_runs_on_the_next_request():
    engine, servers = PassesEngine([CALL_PASS]), ScriptedServers()
    app, _ = make_app(engine, servers)
    first = (await call(app, "POST", "/v1/responses", {"model": "demo", "input": "add", "tools": [mcp_tool()]})).json()
    assert kinds(first) == ["mcp_list_tools", "mcp_approval_request"] and servers.calls == []
    request_item = first["output"][1]
    assert (request_item["name"], request_item["arguments"]) == ("add", '{"a": 1, "b": 2}')
    engine.scripts, engine.generated = [ANSWER_PASS], 0
    second = (await call(app, "POST", "/v1/responses", {
        "model": "demo", "previous_response_id": first["id"], "tools": [mcp_tool()],
        "input": [{"type": "mcp_approval_response", "approval_request_id": request_item["id"], "approve": True}]})).json()
    assert kinds(second) == ["mcp_call", "message"]
    assert second["output"][0]["approval_request_id"] == request_item["id"] and second["output"][0]["output"] == "3"
    assert servers.calls == [("calc", "add", {"a": 1, "b": 2})] and servers.listed == ["calc"]


@pytest.mark.anyio
async def test_a_declined_call_never_runs_and_the_model_is_told():
    engine, servers = PassesEngine([CALL_PASS]), ScriptedServers()
    app, _ = make_app(engine, servers)
    first = (await call(app, "POST", "/v1/responses", {"model": "demo", "input": "add", "tools": [mcp_tool()]})).json()
    engine.scripts, engine.generated = [ANSWER_PASS], 0
    approval = {"type": "mcp_approval_response", "approval_request_id": first["output"][1]["id"], "approve": False}
    second = (await call(app, "POST", "/v1/responses", {"model": "demo", "previous_response_id": first["id"],
                                                        "tools": [mcp_tool()], "input": [approval]})).json()
    assert kinds(second) == ["message"] and servers.calls == []
    from vllm_responses.request.chat import chat_messages
    told = chat_messages(None, engine.contexts[-1])
    assert told[-1] == {"role": "tool", "tool_call_id": first["output"][1]["id"],
                        "content": "The user did not approve this call: it was not run."}


@pytest.mark.anyio
@pytest.mark.parametrize("policy", [{"never": {"tool_names": ["add"]}}, "never"])
async def test_approval_filters(policy):
    engine, servers = PassesEngine([CALL_PASS, ANSWER_PASS]), ScriptedServers()
    app, _ = make_app(engine, servers)
    r = (await call(app, "POST", "/v1/responses", {"model": "demo", "input": "add",
                                                   "tools": [mcp_tool(require_approval=policy)]})).json()
    assert kinds(r) == ["mcp_list_tools", "mcp_call", "message"]


@pytest.mark.anyio
@pytest.mark.parametrize(("name", "error_type"), [("fail", "mcp_tool_execution_error"), ("unreachable", "mcp_protocol_error")])
async def test_a_failed_call_is_a_failed_item_and_the_response_goes_on(name, error_type):
    engine = PassesEngine([[mcp_call(name), Finish("stop", usage())], ANSWER_PASS])
    app, _ = make_app(engine, ScriptedServers(tools=[{**ADD, "name": name}]))
    r = await call(app, "POST", "/v1/responses", {"model": "demo", "input": "x", "stream": True,
                                                  "tools": [mcp_tool(require_approval="never")]})
    events = parse_sse(r.text)
    assert check_events(events) == []
    failed = events[-1]["response"]["output"][1]
    assert failed["status"] == "failed" and failed["error"]["type"] == error_type
    assert "response.mcp_call.failed" in [e["type"] for e in events]
    assert kinds(events[-1]["response"]) == ["mcp_list_tools", "mcp_call", "message"]


@pytest.mark.anyio
async def test_a_failed_listing_is_a_failed_item_and_offers_nothing():
    engine = PassesEngine([ANSWER_PASS])
    app, _ = make_app(engine, ScriptedServers(fail_list=True))
    r = await call(app, "POST", "/v1/responses", {"model": "demo", "input": "x", "stream": True, "tools": [mcp_tool()]})
    events = parse_sse(r.text)
    assert check_events(events) == []
    listing = events[-1]["response"]["output"][0]
    assert listing["error"] == "calc: connection refused" and listing["tools"] == []
    assert "response.mcp_list_tools.failed" in [e["type"] for e in events]
    assert engine.offered[-1] == []


@pytest.mark.anyio
async def test_headers_and_authorization_are_never_echoed_nor_stored():
    app, path = make_app(PassesEngine([ANSWER_PASS]), ScriptedServers())
    tool = mcp_tool(headers={"X-Secret": "hunter2"}, authorization="tok-s3cret")
    r = (await call(app, "POST", "/v1/responses", {"model": "demo", "input": "x", "tools": [tool]})).json()
    assert r["tools"][0].get("headers") is None and r["tools"][0].get("authorization") is None
    stored = (await call(app, "GET", f"/v1/responses/{r['id']}")).json()
    assert "hunter2" not in json.dumps(stored) and "tok-s3cret" not in json.dumps(stored)
    assert b"hunter2" not in path.read_bytes() and b"tok-s3cret" not in path.read_bytes()


@pytest.mark.anyio
async def test_the_capture_writes_the_request_without_mcp_secrets(tmp_path):
    app = FastAPI()
    ResponsesPlugin().attach_router(app)
    service = ResponsesService(PassesEngine([ANSWER_PASS]), SQLiteStore(tmp_path / "r.db"), hosted=ScriptedServers(),
                               capture_dir=tmp_path / "captured")
    app.state.vllm_responses = service
    tool = mcp_tool(headers={"X-Secret": "hunter2"}, authorization="tok-s3cret")
    r = (await call(app, "POST", "/v1/responses", {"model": "demo", "input": "x", "tools": [tool]})).json()
    path = tmp_path / "captured" / f"{r['id']}.request.json"
    await eventually("the request is captured", path.exists)
    written = path.read_bytes()
    assert b"hunter2" not in written and b"tok-s3cret" not in written
    assert json.loads(written)["tools"][0]["server_url"] == tool["server_url"]
    await service.stop()


@pytest.mark.anyio
async def test_without_hosted_tools_an_mcp_tool_is_refused():
    app, _ = make_app(PassesEngine([ANSWER_PASS]), None)
    r = await call(app, "POST", "/v1/responses", {"model": "demo", "input": "x", "tools": [mcp_tool()]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools[0].server_url"


@pytest.mark.anyio
@pytest.mark.parametrize("key", ["connector_id", "tunnel_id"])
async def test_connectors_and_tunnels_are_refused(key):
    value = "connector_gmail" if key == "connector_id" else "tun_1"
    app, _ = make_app(PassesEngine([ANSWER_PASS]), ScriptedServers())
    r = await call(app, "POST", "/v1/responses", {"model": "demo", "input": "x", "tools": [mcp_tool(**{key: value})]})
    assert r.status_code == 400 and r.json()["error"]["param"] == f"tools[0].{key}"


@pytest.mark.anyio
async def test_cancelling_a_background_response_stops_the_running_call():
    engine, servers = PassesEngine([CALL_PASS, ANSWER_PASS]), ScriptedServers(block=True)
    app, _ = make_app(engine, servers)
    r = (await call(app, "POST", "/v1/responses", {"model": "demo", "input": "x", "background": True,
                                                   "tools": [mcp_tool(require_approval="never")]})).json()
    await asyncio.wait_for(servers.running.wait(), 30)
    cancelled = (await call(app, "POST", f"/v1/responses/{r['id']}/cancel")).json()
    assert cancelled["status"] == "cancelled"
    await asyncio.wait_for(servers.cancelled.wait(), 30)
    stored = await eventually("the cancelled response is stored", lambda: _final(app, r["id"]))
    assert [(i["type"], i.get("status")) for i in stored["output"]][-1] == ("mcp_call", "incomplete")


async def _final(app, response_id: str) -> dict | None:
    body = (await call(app, "GET", f"/v1/responses/{response_id}")).json()
    return body if body["status"] == "cancelled" else None


@pytest.mark.anyio
async def test_max_tool_calls_bounds_the_calls():
    engine, servers = PassesEngine([CALL_PASS]), ScriptedServers()  # a model that calls forever
    app, _ = make_app(engine, servers)
    r = (await call(app, "POST", "/v1/responses", {"model": "demo", "input": "x", "max_tool_calls": 3,
                                                   "tools": [mcp_tool(require_approval="never")]})).json()
    assert len(servers.calls) == 3 and kinds(r).count("mcp_call") == 3
    assert r["status"] == "completed"


HITS = [{"title": "The Responses API", "url": "https://docs.example.org/responses/api", "snippet": "Create responses."}]


class ServedTools(ScriptedServers):
    async def run_served(self, kind, arguments) -> CallResult:
        self.calls.append(("served", kind, arguments))
        if kind == "search":
            return CallResult(output=json.dumps(HITS))
        if kind in ("open_page", "find_in_page"):
            return CallResult(output="The Responses API creates model responses.")
        return CallResult(output="42\n")


@pytest.fixture
def served(monkeypatch):
    from vllm_responses.request import builtins

    monkeypatch.setattr(builtins, "SERVED", {"web_search", "code_interpreter"})


def served_call(name: str, arguments: dict) -> ToolCallDelta:
    return ToolCallDelta(0, json.dumps(arguments), name, "call_0", None, False, name, {"server_label": None})


@pytest.mark.anyio
@pytest.mark.parametrize("tool_type", ["web_search", "web_search_preview"])
async def test_web_search_runs_on_the_operator_server_and_the_model_reads_the_hits(served, tool_type):
    engine, servers = PassesEngine([[served_call("web_search", {"query": "responses api"}), Finish("stop", usage())],
                                    ANSWER_PASS]), ServedTools()
    app, _ = make_app(engine, servers)
    r = await call(app, "POST", "/v1/responses", {"model": "demo", "input": "search the web", "stream": True,
                                                  "tools": [{"type": tool_type}],
                                                  "include": ["web_search_call.action.sources"]})
    assert "x-vllm-responses-tools-not-offered" not in r.headers
    events = parse_sse(r.text)
    assert check_events(events) == []
    response = events[-1]["response"]
    assert kinds(response) == ["web_search_call", "message"]
    search = response["output"][0]
    assert search["action"] == {"type": "search", "query": "responses api", "sources": [{"type": "url", "url": HITS[0]["url"]}]}
    assert [e["type"] for e in events if e["type"].startswith("response.web_search")] == [
        "response.web_search_call.in_progress", "response.web_search_call.searching", "response.web_search_call.completed"]
    assert servers.calls == [("served", "search", {"query": "responses api"})]
    assert engine.offered[-1] == ["web_search", "open_page", "find_in_page"]
    # The second pass read the hits as the search's result.
    from vllm_responses.request.chat import chat_messages
    assert chat_messages(None, engine.contexts[-1])[-1] == {"role": "tool", "tool_call_id": search["id"], "content": json.dumps(HITS)}


@pytest.mark.anyio
async def test_code_interpreter_runs_and_its_logs_come_back_when_included(served):
    engine, servers = PassesEngine([[served_call("code_interpreter", {"code": "print(6 * 7)"}), Finish("stop", usage())],
                                    ANSWER_PASS]), ServedTools()
    app, _ = make_app(engine, servers)
    r = await call(app, "POST", "/v1/responses", {"model": "demo", "input": "run python", "stream": True,
                                                  "tools": [{"type": "code_interpreter", "container": {"type": "auto"}}],
                                                  "include": ["code_interpreter_call.outputs"]})
    events = parse_sse(r.text)
    assert check_events(events) == []
    ran = events[-1]["response"]["output"][0]
    assert (ran["type"], ran["code"], ran["outputs"], ran["status"]) == (
        "code_interpreter_call", "print(6 * 7)", [{"type": "logs", "logs": "42\n"}], "completed")
    assert "response.code_interpreter_call_code.done" in [e["type"] for e in events]
    # Replayed later, the logs it kept go back to the model.
    from vllm_responses.request.chat import chat_messages
    from vllm_responses.request.protocol import parse_items
    replay = chat_messages(None, parse_items([ran], "input"))
    assert replay[-1] == {"role": "tool", "tool_call_id": ran["id"], "content": "42\n"}


@pytest.mark.anyio
async def test_without_a_tool_server_web_search_stays_unoffered():
    engine = PassesEngine([ANSWER_PASS])
    app, _ = make_app(engine, ServedTools())
    r = await call(app, "POST", "/v1/responses", {"model": "demo", "input": "x", "tools": [{"type": "web_search"}]})
    assert r.headers["x-vllm-responses-tools-not-offered"] == "web_search" and engine.offered[-1] == []


@pytest.mark.anyio
@pytest.mark.parametrize(("function", "arguments", "action"), [
    ("open_page", {"url": HITS[0]["url"]}, {"type": "open_page", "url": HITS[0]["url"]}),
    ("find_in_page", {"url": HITS[0]["url"], "pattern": "responses"},
     {"type": "find_in_page", "url": HITS[0]["url"], "pattern": "responses"}),
])
async def test_web_search_opens_and_finds_in_pages(served, function, arguments, action):
    engine = PassesEngine([[ToolCallDelta(0, json.dumps(arguments), function, "call_0", None, False, "web_search", {}),
                            Finish("stop", usage())], ANSWER_PASS])
    servers = ServedTools()
    app, _ = make_app(engine, servers)
    r = await call(app, "POST", "/v1/responses", {"model": "demo", "input": "x", "stream": True,
                                                  "tools": [{"type": "web_search"}]})
    events = parse_sse(r.text)
    assert check_events(events) == []
    item = events[-1]["response"]["output"][0]
    assert (item["type"], item["action"], item["status"]) == ("web_search_call", action, "completed")
    assert servers.calls == [("served", action["type"], arguments)]
    from vllm_responses.request.chat import chat_messages
    from vllm_responses.request.protocol import parse_items
    replayed = [m for m in chat_messages(None, parse_items([item], "input")) if m.get("tool_calls")]
    assert replayed[0]["tool_calls"][0]["function"] == {"name": function, "arguments": json.dumps(arguments)}


def test_a_websocket_turn_runs_mcp_calls_and_the_next_turn_continues_from_the_connection():
    from starlette.testclient import TestClient
    from test_websocket_transport import turn

    engine, servers = PassesEngine([CALL_PASS, ANSWER_PASS]), ScriptedServers()
    app, _ = make_app(engine, servers)
    with TestClient(app).websocket_connect("/v1/responses") as ws:
        first = turn(ws, {"model": "demo", "input": "add", "store": False, "tools": [mcp_tool(require_approval="never")]})
        assert check_events(first) == [] and kinds(first[-1]["response"]) == ["mcp_list_tools", "mcp_call", "message"]
        engine.scripts, engine.generated = [ANSWER_PASS], 0
        second = turn(ws, {"model": "demo", "input": "again", "store": False, "tools": [mcp_tool(require_approval="never")],
                           "previous_response_id": first[-1]["response"]["id"]})
        assert kinds(second[-1]["response"]) == ["message"]
    assert servers.listed == ["calc"] and servers.calls == [("calc", "add", {"a": 1, "b": 2})]


@pytest.mark.anyio
async def test_a_client_that_leaves_stops_the_running_call():
    from vllm_responses.request.protocol import parse_request

    engine, servers = PassesEngine([CALL_PASS, ANSWER_PASS]), ScriptedServers(block=True)
    service = ResponsesService(engine, SQLiteStore(Path(tempfile.mkdtemp()) / "r.db"), hosted=servers)
    body = {"model": "demo", "input": "x", "stream": True, "tools": [mcp_tool(require_approval="never")]}
    run = await service.create(parse_request(json.dumps(body).encode()))
    batches = run.batches()
    async for batch in batches:
        if any(getattr(e, "type", None) == "response.mcp_call.in_progress" for e in batch):
            break
    reading = asyncio.ensure_future(anext(batches))  # the transport waits for the next events: the call runs
    await asyncio.wait_for(servers.running.wait(), 30)
    reading.cancel()  # the client went: the SSE answer cancels its body, then closes it (api/sse.py)
    await asyncio.gather(reading, return_exceptions=True)
    await batches.aclose()
    await asyncio.wait_for(servers.cancelled.wait(), 30)
    assert run.response.status == "cancelled"
    last = run.response.output[-1]
    assert (last.type, last.status) == ("mcp_call", "incomplete")
    await service.stop()


@pytest.fixture(scope="module")
def tools_process():
    from mcp_servers import McpServerProcess

    with McpServerProcess("tools", "streamable_http") as proc:
        yield proc


@pytest.mark.anyio
async def test_an_operator_server_serves_an_mcp_tool_by_its_label(tools_process):
    from vllm_responses.core.hosted import McpHostedTools
    from vllm_responses.settings import McpSettings

    hosted = McpHostedTools(McpSettings(tool_servers=(("tools", tools_process.url),)))
    engine = PassesEngine([[ToolCallDelta(0, '{"a": 2, "b": 3}', "add", "c0", None, False, "mcp", {"server_label": "tools"}),
                            Finish("stop", usage())], ANSWER_PASS])
    app, _ = make_app(engine, hosted)
    tool = {"type": "mcp", "server_label": "tools", "require_approval": "never"}  # no server_url: the operator's
    r = (await call(app, "POST", "/v1/responses", {"model": "demo", "input": "add", "tools": [tool]})).json()
    assert kinds(r) == ["mcp_list_tools", "mcp_call", "message"], r
    assert "add" in [t["name"] for t in r["output"][0]["tools"]] and r["output"][1]["output"] == "5"
    # A label the operator did not register, and a server_url the allow-list (empty) does not hold: 400s.
    for bad, code in (({"type": "mcp", "server_label": "nope"}, "missing_required_parameter"),
                      ({"type": "mcp", "server_label": "x", "server_url": "http://127.0.0.1:9/mcp"}, None)):
        refused = await call(app, "POST", "/v1/responses", {"model": "demo", "input": "x", "tools": [bad]})
        error = refused.json()["error"]
        assert refused.status_code == 400 and error["param"] == "tools[0].server_url", error
        assert code is None or error["code"] == code


@pytest.mark.anyio
@pytest.mark.parametrize(("known", "expected"), [({"search", "open", "find"}, "open"), (set(), "open_page")])
async def test_open_page_runs_the_tool_the_browser_server_listed(monkeypatch, known, expected):
    """Upstream's gpt-oss browser server calls it ``open``; ours ``open_page`` (tests/mcp_servers.py)."""
    from vllm_responses.core import hosted as hosted_module
    from vllm_responses.core.mcp_client import CallOutcome
    from vllm_responses.settings import McpSettings

    called: list[str] = []

    async def call_tool(server, name, arguments, limits):
        called.append(name)
        return CallOutcome(output="page")

    monkeypatch.setattr(hosted_module.mcp_client, "call_tool", call_tool)
    tools = hosted_module.McpHostedTools(McpSettings(tool_servers=(("browser", "http://127.0.0.1:9/sse"),)), {"browser": known})
    assert (await tools.run_served("open_page", {"url": "u"})).output == "page" and called == [expected]


def test_a_response_whose_owner_died_mid_call_ends_with_the_call_incomplete():
    """A follower ends a response whose owner died while its MCP call ran (ResponseStream.resumed)."""
    from vllm_responses.events.deltas import HostedStart, Sampling
    from vllm_responses.events.stream import ResponseStream, StreamOptions
    from vllm_responses.events.wire import event_json
    from vllm_responses.request.protocol import initial_response, parse_request

    request = parse_request(json.dumps({"model": "demo", "input": "x"}).encode())
    live = ResponseStream(initial_response(request, "resp_1", 1, "demo", Sampling()), StreamOptions())
    item = {"type": "mcp_call", "id": "mcp_1", "server_label": "calc", "name": "add", "arguments": "{}", "status": "in_progress"}
    logged = [json.loads(event_json(e)) for e in live.start() + live.feed(HostedStart(item))]
    resumed = ResponseStream.resumed(initial_response(request, "resp_1", 1, "demo", Sampling()), logged)
    events = logged + [json.loads(event_json(e)) for e in resumed.fail("The server handling this response stopped.")]
    assert check_events(events) == []
    assert events[-1]["response"]["output"] == [{**item, "status": "incomplete"}]
