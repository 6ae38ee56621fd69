"""MCP tools the server runs, end to end: the real server (allowed to reach 127.0.0.1, see
tests/conftest.py), real MCP servers (tests/mcp_servers.py) over streamable HTTP and SSE, the
demo model calling ``tools__add``, and real clients (openai SDK strict, the Agents SDK's
HostedMCPTool with and without approval). docs/events.md#mcp-tools."""

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from agents import Agent, HostedMCPTool, OpenAIResponsesModel, Runner, set_tracing_disabled
from openai import AsyncOpenAI

from demo_requests import CASES
from mcp_servers import McpServerProcess
from probes import wait_until
from sdk import sdk, wire
from vllm_responses.events.conformance import assert_conforms, check_response, parse_sse

set_tracing_disabled(True)  # no network here; traces would go to OpenAI

AFTER_TOOL = CASES["after_tool"].content
PROMPT = "Please add 2 and 3."


@pytest.fixture(scope="module", params=["streamable_http", "sse"])
def tools_server(request: pytest.FixtureRequest) -> Iterator[McpServerProcess]:
    with McpServerProcess("tools", request.param) as proc:
        yield proc


def mcp(server: McpServerProcess, **extra) -> dict:
    return {"type": "mcp", "server_label": "tools", "server_url": server.url, **extra}


def listings(base_url: str, server: McpServerProcess) -> int:
    """How many times the MCP server was listed (its list_count tool, called directly)."""
    from vllm_responses.core.mcp_client import McpServer, call_tool
    from vllm_responses.settings import McpSettings

    outcome = asyncio.run(call_tool(McpServer.build("tools", server.url), "list_count", {}, McpSettings()))
    return int(outcome.output or "-1")


def test_the_model_calls_an_mcp_tool_and_answers_in_one_response(base_url: str, tools_server: McpServerProcess) -> None:
    before = listings(base_url, tools_server)
    with httpx.stream("POST", f"{base_url}/v1/responses", timeout=120, json={
        "model": "demo", "input": PROMPT, "stream": True, "tools": [mcp(tools_server, require_approval="never")],
    }) as r:
        events = parse_sse(r.read())
    assert_conforms(events)
    response = events[-1]["response"]
    kinds = [i["type"] for i in response["output"] if i["type"] != "reasoning"]
    assert kinds == ["mcp_list_tools", "mcp_call", "message"]
    listing = response["output"][0]
    assert "add" in [t["name"] for t in listing["tools"]]
    call = next(i for i in response["output"] if i["type"] == "mcp_call")
    assert (call["name"], json.loads(call["arguments"]), call["output"], call["status"]) == ("add", {"a": 2, "b": 3}, "5", "completed")
    assert response["output"][-1]["content"][0]["text"] == AFTER_TOOL
    order = [e["type"] for e in events if e["type"].startswith("response.mcp")]
    assert order == ["response.mcp_list_tools.in_progress", "response.mcp_list_tools.completed",
                     "response.mcp_call.in_progress", "response.mcp_call_arguments.delta",
                     "response.mcp_call_arguments.done", "response.mcp_call.completed"]
    # A later turn reuses the stored listing: the MCP server is not listed again.
    client = sdk(base_url)
    later = client.responses.create(model="demo", previous_response_id=response["id"], input=PROMPT,
                                    tools=[mcp(tools_server, require_approval="never")])
    assert [i.type for i in later.output if i.type != "reasoning"] == ["mcp_call", "message"]
    assert listings(base_url, tools_server) == before + 1


def test_openai_sdk_approves_a_call(base_url: str, tools_server: McpServerProcess) -> None:
    client = sdk(base_url)
    with client.responses.stream(model="demo", input=PROMPT, tools=[mcp(tools_server)]) as s:
        events = [wire(e) for e in s]
        first = s.get_final_response()
    assert_conforms(events)
    request = next(i for i in first.output if i.type == "mcp_approval_request")
    assert (request.name, json.loads(request.arguments)) == ("add", {"a": 2, "b": 3})
    assert not [i for i in first.output if i.type == "mcp_call"]
    second = client.responses.create(
        model="demo", previous_response_id=first.id, tools=[mcp(tools_server)],
        input=[{"type": "mcp_approval_response", "approval_request_id": request.id, "approve": True}],
    )
    call = second.output[0]
    assert (call.type, call.approval_request_id, call.output) == ("mcp_call", request.id, "5")
    assert second.output_text == AFTER_TOOL
    assert check_response(httpx.get(f"{base_url}/v1/responses/{second.id}").json()) == []


@pytest.mark.parametrize("approve", [True, False, None], ids=["approved", "declined", "never-asked"])
def test_agents_sdk_hosted_mcp_tool(base_url: str, tools_server: McpServerProcess, approve: bool | None) -> None:
    asked: list[str] = []

    def on_approval(request) -> dict:
        asked.append(request.data.name)
        return {"approve": bool(approve)}

    config = mcp(tools_server, require_approval="never" if approve is None else "always")
    tool = HostedMCPTool(tool_config=config, on_approval_request=None if approve is None else on_approval)

    async def run():
        client = AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", _strict_response_validation=True, max_retries=0)
        agent = Agent(name="calc", instructions="Use the tools.", tools=[tool],
                      model=OpenAIResponsesModel(model="demo", openai_client=client))
        result = Runner.run_streamed(agent, PROMPT)
        raw = [wire(e.data) async for e in result.stream_events() if e.type == "raw_response_event"]
        return result, raw

    result, raw = asyncio.run(run())
    outputs = [item.raw_item for item in result.new_items]
    calls = [o for o in outputs if getattr(o, "type", None) == "mcp_call"]
    if approve is False:
        assert asked == ["add"] and calls == []
        # Declined: the model is told, and answers from that.
        assert result.final_output == AFTER_TOOL
    else:
        assert asked == ([] if approve is None else ["add"])
        assert [c.output for c in calls] == ["5"]
        assert result.final_output == AFTER_TOOL
    starts = [i for i, e in enumerate(raw) if e["type"] == "response.created"]
    for a, b in zip(starts, starts[1:] + [len(raw)]):
        assert_conforms(raw[a:b])


def test_a_server_url_outside_the_allow_list_is_refused(base_url: str) -> None:
    r = httpx.post(f"{base_url}/v1/responses", json={"model": "demo", "input": PROMPT, "tools": [
        {"type": "mcp", "server_label": "x", "server_url": "https://mcp.example.com/mcp"}]})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == "tools[0].server_url" and "VLLM_RESPONSES_MCP_ALLOWED_URLS" in error["message"]


def test_a_hanging_server_fails_its_listing_and_the_response_goes_on(base_url: str) -> None:
    with McpServerProcess("hang") as hang:
        r = httpx.post(f"{base_url}/v1/responses", timeout=120, json={"model": "demo", "input": "Hello there!",
                       "tools": [{"type": "mcp", "server_label": "tools", "server_url": hang.url}]})
    body = r.json()
    assert r.status_code == 200, body
    listing = body["output"][0]
    assert listing["type"] == "mcp_list_tools" and listing["error"] and listing["tools"] == []
    assert body["status"] == "completed" and body["output"][-1]["content"][0]["text"] == CASES["default"].content


def test_headers_reach_no_store_and_no_answer(server, base_url: str, tools_server: McpServerProcess) -> None:
    secret = "tok-e2e-7f3c-secret"
    tools = [mcp(tools_server, require_approval="never", headers={"X-Tenant": secret}, authorization=secret)]
    client = sdk(base_url)
    response = client.responses.create(model="demo", input=PROMPT, tools=tools)
    assert response.output_text == AFTER_TOOL
    stored = httpx.get(f"{base_url}/v1/responses/{response.id}").text
    assert secret not in stored and secret not in response.model_dump_json()
    db = Path(str(server.log_path)).with_suffix(".db")
    assert db.exists() and secret.encode() not in db.read_bytes()
    assert secret not in Path(str(server.log_path)).read_text(errors="replace")
    captured = server.capture_dir / f"{response.id}.request.json"  # the capture writes the request down too
    assert wait_until("the request is captured", captured.exists) and secret.encode() not in captured.read_bytes()
    assert json.loads(captured.read_bytes())["tools"][0]["server_label"] == "tools"
