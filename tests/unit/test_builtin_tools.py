"""Built-in tools the client runs (docs/events.md#built-in-tools): offered to the model as chat
functions, their calls streamed as the typed items and events OpenAI sends, their outputs sent
back rendered for the model, and a server-run tool search going on inside one response."""

import json
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from fakes import ScriptedEngine, usage
from vllm_responses.common.errors import APIError
from vllm_responses.core.service import ResponsesService
from vllm_responses.core.tool_search import search
from vllm_responses.events.conformance import check_events, parse_sse
from vllm_responses.events.deltas import Finish, ReasoningDelta, Sampling, TextDelta, ToolCallDelta, Usage
from vllm_responses.events.stream import ResponseStream, StreamOptions
from vllm_responses.events.wire import event_json
from vllm_responses.plugin import ResponsesPlugin
from vllm_responses.request.chat import chat_messages, chat_tool_choice
from vllm_responses.request.protocol import initial_response, parse_items, parse_request
from vllm_responses.store.sqlite import SQLiteStore

EVENT = TypeAdapter(ResponseStreamEvent)
SHELL = {"type": "shell", "environment": {"type": "local"}}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
DEFERRED_WEATHER = {**WEATHER, "defer_loading": True}
CRM = {
    "type": "namespace",
    "name": "crm",
    "description": "Customer records.",
    "tools": [{"type": "function", "name": "lookup_customer", "description": "Find a customer.", "defer_loading": True}],
}


def request(**body: Any):
    return parse_request(json.dumps({"model": "demo", "input": "hi", **body}).encode())


def call(builtin: str | None, arguments: str, name: str | None = None, execution: str | None = None, index: int = 0):
    options = {"execution": execution, "environment": {"type": "local"} if builtin == "shell" else None}
    return ToolCallDelta(index, arguments, name or builtin or "", f"call_{index}", None, False, builtin, options)


def run(deltas: list[Any], end: Finish | None = None) -> list[dict]:
    stream = ResponseStream(initial_response(request(), "resp_1", 1, "demo", Sampling()), StreamOptions(), clock=lambda: 2)
    events = stream.start()
    for d in deltas:
        events += stream.feed(d)
    events += stream.finish(end or Finish("stop", Usage(3, 4)))
    out = [json.loads(event_json(e)) for e in events]
    for e in out:
        EVENT.validate_python(e)  # every event is an openai model
    return out


# -- offered ---------------------------------------------------------------------------------
def test_each_builtin_is_offered_as_a_function_of_our_schema():
    r = request(tools=[SHELL, {"type": "local_shell"}, {"type": "apply_patch"}, {"type": "tool_search"}, WEATHER])
    tools = r.offered_tools_for(r.input)
    by_name = {t["function"]["name"]: t["function"] for t in tools.tools}
    assert list(by_name) == ["shell", "local_shell", "apply_patch", "tool_search", "get_weather"]
    assert by_name["shell"]["parameters"]["required"] == ["commands"]
    assert by_name["apply_patch"]["parameters"]["properties"]["operation"]["properties"]["type"]["enum"] == [
        "create_file", "update_file", "delete_file"]
    assert tools.target("shell").builtin == "shell" and tools.target("tool_search").execution == "server"
    assert r.unoffered_tool_types == []


def test_a_container_shell_is_not_offered_and_named():
    r = request(tools=[{"type": "shell", "environment": {"type": "container_auto"}}])
    assert r.offered_tools_for(r.input).tools == []
    assert r.unoffered_tool_types == ["shell"]


def test_client_tool_search_brings_its_own_description_and_parameters():
    params = {"type": "object", "properties": {"goal": {"type": "string"}}}
    r = request(tools=[{"type": "tool_search", "execution": "client", "description": "Find tools.", "parameters": params}])
    fn = r.offered_tools_for(r.input).tools[0]["function"]
    assert (fn["description"], fn["parameters"]) == ("Find tools.", params)
    assert r.offered_tools_for(r.input).target("tool_search").execution == "client"


def test_deferred_tools_are_hidden_until_loaded():
    r = request(tools=[{"type": "tool_search"}, DEFERRED_WEATHER, CRM])
    tools = r.offered_tools_for(r.input)
    assert [t["function"]["name"] for t in tools.tools] == ["tool_search"]
    assert [(ns and ns.name, t.name) for ns, t in tools.deferred] == [(None, "get_weather"), ("crm", "lookup_customer")]
    loaded = parse_items([
        {"type": "tool_search_call", "call_id": "c1", "arguments": {"query": "weather"}, "execution": "server"},
        {"type": "tool_search_output", "call_id": "c1", "execution": "server", "tools": [DEFERRED_WEATHER]},
        {"type": "additional_tools", "role": "developer", "tools": [CRM]},
    ], "input")
    tools = r.offered_tools_for(loaded)
    assert [t["function"]["name"] for t in tools.tools] == ["get_weather", "crm__lookup_customer", "tool_search"]
    assert tools.deferred == []


def test_tool_choice_and_allowed_tools_name_builtins():
    assert chat_tool_choice({"type": "shell"}) == {"type": "function", "function": {"name": "shell"}}
    request(tools=[SHELL], tool_choice={"type": "shell"})
    request(tools=[{"type": "apply_patch"}], tool_choice={"type": "apply_patch"})
    r = request(tools=[SHELL, WEATHER], tool_choice={"type": "allowed_tools", "mode": "required", "tools": [{"type": "shell"}]})
    assert [t["function"]["name"] for t in r.offered_tools_for(r.input).tools] == ["shell"]
    with pytest.raises(APIError) as exc:
        request(tools=[WEATHER], tool_choice={"type": "shell"})
    assert exc.value.param == "tool_choice"
    with pytest.raises(APIError) as exc:
        request(tools=[WEATHER], tool_choice={"type": "allowed_tools", "mode": "auto", "tools": [{"type": "apply_patch"}]})
    assert exc.value.param == "tool_choice.tools[0]"


def test_a_function_named_like_an_offered_builtin_is_refused():
    with pytest.raises(APIError) as exc:
        request(tools=[SHELL, {**WEATHER, "name": "shell"}])
    assert exc.value.status == 400 and exc.value.param == "tools[1].name"
    with pytest.raises(APIError):
        request(tools=[{"type": "apply_patch"}, {"type": "apply_patch"}])
    # A container shell is not offered: a function named shell beside it is the model's shell.
    request(tools=[{"type": "shell", "environment": {"type": "container_auto"}}, {**WEATHER, "name": "shell"}])


# -- streamed --------------------------------------------------------------------------------
def test_shell_call_streams_its_commands():
    events = run([ReasoningDelta("I will run them."), call("shell", '{"commands": ["pytest -q",'), call(None, ' "echo ok"]}', name=None)])
    assert check_events(events) == []
    kinds = [e["type"] for e in events if "shell" in e["type"] or "output_item" in e["type"]]
    assert kinds[2:] == [
        "response.output_item.added",
        "response.shell_call_command.added", "response.shell_call_command.delta", "response.shell_call_command.done",
        "response.shell_call_command.added", "response.shell_call_command.delta", "response.shell_call_command.done",
        "response.output_item.done",
    ]
    added = next(e for e in events if e["type"] == "response.output_item.added" and e["item"]["type"] == "shell_call")
    assert added["item"]["status"] == "in_progress" and added["item"]["action"]["commands"] == []
    done = [e for e in events if e["type"] == "response.shell_call_command.done"]
    assert [(e["command_index"], e["command"], e["output_index"]) for e in done] == [(0, "pytest -q", 1), (1, "echo ok", 1)]
    item = events[-1]["response"]["output"][1]
    assert item["type"] == "shell_call" and item["id"].startswith("sh_") and item["call_id"] == "call_0"
    assert item["action"]["commands"] == ["pytest -q", "echo ok"] and item["status"] == "completed"
    assert item["environment"] == {"type": "local"}
    assert not [e for e in events if "arguments" in e["type"]]
    Response.model_validate(events[-1]["response"])


@pytest.mark.parametrize(
    ("builtin", "arguments", "expect"),
    [
        ("apply_patch", {"operation": {"type": "create_file", "path": "a.txt", "diff": "+hi\n"}},
         {"type": "apply_patch_call", "operation": {"type": "create_file", "path": "a.txt", "diff": "+hi\n"}}),
        ("apply_patch", {"operation": {"type": "delete_file", "path": "a.txt"}},
         {"type": "apply_patch_call", "operation": {"type": "delete_file", "path": "a.txt"}}),
        ("local_shell", {"command": ["ls", "-a"]},
         {"type": "local_shell_call", "action": {"type": "exec", "command": ["ls", "-a"], "env": {}, "timeout_ms": None,
                                                "user": None, "working_directory": None}}),
        ("tool_search", {"query": "weather"},
         {"type": "tool_search_call", "arguments": {"query": "weather"}, "execution": "client"}),
    ],
)
def test_whole_item_builtins_go_out_added_then_done(builtin, arguments, expect):
    events = run([call(builtin, json.dumps(arguments), execution="client")])
    assert check_events(events) == []
    assert [e["type"] for e in events][2:-1] == ["response.output_item.added", "response.output_item.done"]
    added, done = events[2]["item"], events[3]["item"]
    assert added["status"] == "in_progress" and done["status"] == "completed"
    assert {k: done[k] for k in expect} == expect
    assert done["call_id"] == "call_0"


def test_arguments_that_do_not_fit_stay_the_function_call_the_model_wrote():
    events = run([call("shell", '{"cmd": "ls"}')])
    assert check_events(events) == []
    item = events[-1]["response"]["output"][0]
    assert (item["type"], item["name"], item["arguments"]) == ("function_call", "shell", '{"cmd": "ls"}')
    assert "response.function_call_arguments.delta" in [e["type"] for e in events]


def test_a_call_cut_by_the_token_limit_ends_incomplete():
    events = run([call("shell", '{"commands": ["ls"]')], end=Finish("length", Usage(3, 4)))
    assert check_events(events) == []
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["output"][0]["type"] == "function_call"  # the JSON never closed


def test_checker_catches_shell_command_violations():
    events = run([call("shell", '{"commands": ["a", "b"]}')])
    done = next(i for i, e in enumerate(events) if e["type"] == "response.shell_call_command.done")
    broken = [dict(e) for e in events]
    broken[done] = {**broken[done], "command": "x"}
    assert any("concatenate" in p for p in check_events(broken))
    item_done = next(i for i, e in enumerate(events) if e["type"] == "response.output_item.done")
    broken = [dict(e) for e in events]
    broken[item_done] = {**broken[item_done], "item": {**broken[item_done]["item"], "action": {"commands": ["a"]}}}
    assert any("action.commands" in p for p in check_events(broken))


# -- outputs back to the model ------------------------------------------------------------------
def test_calls_and_outputs_render_as_tool_calls_and_results():
    items = parse_items([
        {"type": "message", "role": "user", "content": "run the tests"},
        {"type": "shell_call", "call_id": "s1", "action": {"commands": ["pytest -q"], "timeout_ms": 1000}},
        {"type": "shell_call_output", "call_id": "s1", "output": [
            {"stdout": "3 passed\n", "stderr": "", "outcome": {"type": "exit", "exit_code": 0}},
        ]},
        {"type": "apply_patch_call", "call_id": "p1", "status": "completed",
         "operation": {"type": "create_file", "path": "a.txt", "diff": "+hi\n"}},
        {"type": "apply_patch_call_output", "call_id": "p1", "status": "failed", "output": "exists"},
        {"type": "local_shell_call", "id": "lsh_1", "call_id": "l1", "status": "completed",
         "action": {"type": "exec", "command": ["ls"], "env": {}}},
        {"type": "local_shell_call_output", "id": "l1", "output": "a.txt\n"},
        {"type": "tool_search_call", "arguments": {"query": "weather"}, "execution": "server"},
        {"type": "tool_search_output", "execution": "server", "tools": [WEATHER]},
    ], "input")
    messages = chat_messages(None, items)
    calls = [c for m in messages for c in m.get("tool_calls") or []]
    assert [(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls[:3]] == [
        ("s1", "shell", {"commands": ["pytest -q"], "timeout_ms": 1000}),
        ("p1", "apply_patch", {"operation": {"type": "create_file", "path": "a.txt", "diff": "+hi\n"}}),
        ("l1", "local_shell", {"command": ["ls"]}),
    ]
    results = [m for m in messages if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in results[:3]] == ["s1", "p1", "l1"]
    assert results[0]["content"] == "stdout:\n3 passed\n\nstderr:\n\nexit code 0"
    assert results[1]["content"] == "status: failed\nexists"
    assert results[2]["content"] == "a.txt\n"
    search_call = calls[3]
    assert search_call["function"]["name"] == "tool_search"
    assert results[3]["tool_call_id"] == search_call["id"]  # paired without call ids
    assert "get_weather" in results[3]["content"]


# -- the server's own tool search -----------------------------------------------------------------
def test_search_ranks_names_over_descriptions_and_groups_namespaces():
    r = request(tools=[{"type": "tool_search"}, DEFERRED_WEATHER, CRM,
                       {"type": "function", "name": "send_mail", "description": "Mail the weather report.", "defer_loading": True}])
    deferred = r.offered_tools_for(r.input).deferred
    found = search({"query": "weather"}, deferred)
    assert [t["name"] for t in found] == ["get_weather", "send_mail"]
    assert search({"query": "customer records"}, deferred) == [
        {"type": "namespace", "name": "crm", "description": "Customer records.", "tools": [{**CRM["tools"][0], "strict": False}]}]
    assert search({"query": "nothing matches"}, deferred) == []
    assert [t["name"] for t in search({"query": "weath"}, deferred)] == ["get_weather"]  # a prefix of a name word


class PassesEngine(ScriptedEngine):
    """Plays one script per model pass, and records what each pass was offered."""

    def __init__(self, scripts: list[list[Any]]) -> None:
        super().__init__([])
        self.scripts = scripts
        self.offered: list[list[str]] = []
        self.generated = 0

    async def prepare(self, request, items):
        self.offered.append([t["function"]["name"] for t in request.offered_tools_for(items).tools])
        return await super().prepare(request, items)

    async def generate(self, prepared, request_id):
        self.generated += 1  # the n-th pass plays the n-th script (the last one again after)
        self.script = self.scripts[min(self.generated, len(self.scripts)) - 1]
        async for delta in super().generate(prepared, request_id):
            yield delta


def make_app(engine) -> FastAPI:
    app = FastAPI()
    ResponsesPlugin().attach_router(app)
    store = SQLiteStore(Path(tempfile.mkdtemp()) / "responses.db")
    app.state.vllm_responses = ResponsesService(engine, store)
    return app


async def post(app, body: dict) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        return await client.post("/v1/responses", content=json.dumps(body), headers={"content-type": "application/json"})


SEARCH_PASS = [ReasoningDelta("I need a weather tool."), call("tool_search", '{"query": "weather"}', execution="server"),
               Finish("stop", usage(10, 5))]
ANSWER_PASS = [TextDelta("Loaded it."), Finish("stop", usage(20, 3))]


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [True, False], ids=["sse", "json"])
async def test_a_server_search_goes_on_in_the_same_response(stream):
    engine = PassesEngine([SEARCH_PASS, ANSWER_PASS])
    app = make_app(engine)
    body = {"model": "demo", "input": "find the weather tool", "stream": stream, "tools": [{"type": "tool_search"}, DEFERRED_WEATHER]}
    r = await post(app, body)
    assert r.status_code == 200, r.text
    if stream:
        events = parse_sse(r.text)
        assert check_events(events) == []
        response = events[-1]["response"]
    else:
        response = r.json()
    assert [i["type"] for i in response["output"]] == ["reasoning", "tool_search_call", "tool_search_output", "message"]
    search_call, output = response["output"][1], response["output"][2]
    assert search_call["execution"] == "server" and search_call["arguments"] == {"query": "weather"}
    assert output["call_id"] == search_call["call_id"] and [t["name"] for t in output["tools"]] == ["get_weather"]
    assert response["usage"]["input_tokens"] == 30 and response["usage"]["output_tokens"] == 8
    assert engine.offered == [["tool_search"], ["get_weather", "tool_search"]]  # the second pass sees what it loaded
    # The second pass renders the first's output: the call and what it loaded.
    assert [getattr(i, "type", "message") for i in engine.contexts[1]][-3:] == ["reasoning", "tool_search_call", "tool_search_output"]
    Response.model_validate(response)
    # A later turn offers what the search loaded (replayed through previous_response_id).
    engine.scripts, engine.generated = [ANSWER_PASS], 0
    r = await post(app, {"model": "demo", "input": "and now?", "previous_response_id": response["id"],
                          "tools": [{"type": "tool_search"}, DEFERRED_WEATHER]})
    assert r.status_code == 200, r.text
    assert engine.offered[-1] == ["get_weather", "tool_search"]


@pytest.mark.anyio
async def test_a_client_search_ends_the_response_for_the_client():
    engine = PassesEngine([[call("tool_search", '{"query": "weather"}', execution="client"), Finish("stop", usage())]])
    r = await post(make_app(engine), {"model": "demo", "input": "find the weather tool",
                                      "tools": [{"type": "tool_search", "execution": "client"}, DEFERRED_WEATHER]})
    assert [i["type"] for i in r.json()["output"]] == ["tool_search_call"]
    assert r.json()["output"][0]["execution"] == "client"
    assert len(engine.offered) == 1


@pytest.mark.anyio
async def test_server_searches_are_bounded():
    engine = PassesEngine([SEARCH_PASS])  # a model that searches forever
    r = await post(make_app(engine), {"model": "demo", "input": "find", "max_tool_calls": 2,
                                      "tools": [{"type": "tool_search"}, DEFERRED_WEATHER]})
    kinds = [i["type"] for i in r.json()["output"]]
    assert kinds.count("tool_search_output") == 2 and kinds[-1] == "tool_search_call"
    assert r.json()["status"] == "completed"


@pytest.mark.anyio
async def test_a_search_beside_a_client_call_is_answered_then_the_response_ends():
    both = [call("tool_search", '{"query": "weather"}', execution="server"),
            call("shell", '{"commands": ["ls"]}', index=1), Finish("stop", usage())]
    engine = PassesEngine([both, ANSWER_PASS])
    r = await post(make_app(engine), {"model": "demo", "input": "x", "tools": [{"type": "tool_search"}, SHELL, DEFERRED_WEATHER]})
    assert [i["type"] for i in r.json()["output"]] == ["tool_search_call", "shell_call", "tool_search_output"]
    assert len(engine.offered) == 1



REPLAYED = [
    {"type": "message", "role": "user", "content": "run the tests"},
    {"type": "shell_call", "call_id": "s1", "action": {"commands": ["pytest -q"]}, "status": "completed"},
    {"type": "shell_call_output", "call_id": "s1",
     "output": [{"stdout": "3 passed\n", "stderr": "", "outcome": {"type": "exit", "exit_code": 0}}]},
    {"type": "apply_patch_call", "call_id": "p1", "status": "completed",
     "operation": {"type": "create_file", "path": "a.txt", "diff": "+hi\n"}},
    {"type": "apply_patch_call_output", "call_id": "p1", "status": "completed"},
    {"type": "local_shell_call", "id": "lsh_1", "call_id": "l1", "status": "completed",
     "action": {"type": "exec", "command": ["ls"], "env": {}}},
    {"type": "local_shell_call_output", "id": "l1", "output": "a.txt\n"},
    {"type": "tool_search_call", "call_id": "t1", "arguments": {"query": "weather"}, "execution": "client"},
    {"type": "tool_search_output", "call_id": "t1", "execution": "client", "tools": [WEATHER]},
]
TOOLS = [SHELL, {"type": "apply_patch"}, {"type": "local_shell"}, {"type": "tool_search", "execution": "client"}]


@pytest.mark.anyio
async def test_outputs_are_stored_listed_replayed_and_counted():
    from openai.types.responses import ResponseItem

    engine = PassesEngine([ANSWER_PASS])
    app = make_app(engine)
    r = await post(app, {"model": "demo", "input": REPLAYED, "tools": TOOLS})
    assert r.status_code == 200, r.text
    first = r.json()["id"]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        listed = (await client.get(f"/v1/responses/{first}/input_items?order=asc")).json()["data"]
        counted = await client.post("/v1/responses/input_tokens", json={"model": "demo", "input": REPLAYED, "tools": TOOLS})
    assert [i["type"] for i in listed] == [i["type"] for i in REPLAYED]
    for item in listed:
        TypeAdapter(ResponseItem).validate_python(item)
        assert item["id"]
    assert counted.status_code == 200 and counted.json()["input_tokens"] == len(REPLAYED)
    # Replayed through previous_response_id: the model sees every item again, typed, then loaded tools offered.
    r = await post(app, {"model": "demo", "input": "go on", "previous_response_id": first, "tools": TOOLS})
    assert r.status_code == 200, r.text
    seen = [getattr(i, "type", None) or "message" for i in engine.contexts[-1]]
    assert seen == [i["type"] for i in REPLAYED] + ["message", "message"]
    assert "get_weather" in engine.offered[-1]  # the client's tool_search_output loaded it


@pytest.mark.anyio
async def test_an_output_without_its_call_is_refused():
    r = await post(make_app(PassesEngine([ANSWER_PASS])), {"model": "demo", "input": [
        {"type": "message", "role": "user", "content": "x"},
        {"type": "shell_call_output", "call_id": "nope", "output": []}], "tools": TOOLS})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input[1].call_id"


def test_the_tools_table_names_every_tool_type_of_the_openai_package():
    """docs/events.md's Tools table stays complete: a new type in openai's ``Tool`` fails here."""
    import typing
    from pathlib import Path

    from openai.types.responses import Tool

    types = {t for m in typing.get_args(typing.get_args(Tool)[0]) for t in typing.get_args(m.model_fields["type"].annotation)}
    doc = (Path(__file__).parents[2] / "docs" / "events.md").read_text()
    table = doc[doc.index("## Tools"):doc.index("**Never silent.**")]
    assert sorted(t for t in types if f"`{t}`" not in table) == []
