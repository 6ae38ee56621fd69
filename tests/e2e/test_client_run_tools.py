"""Built-in tools the client runs, end to end on the real server (docs/events.md#built-in-tools):
the Agents SDK's ShellTool and ApplyPatchTool really run what the demo model calls, the openai
SDK (strict) parses every new item and event, and the items replay through
``previous_response_id``, a conversation and compaction. A server-run tool search loads a
deferred tool and the response goes on."""

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from agents import Agent, ApplyPatchTool, OpenAIResponsesModel, Runner, ShellTool, set_tracing_disabled
from agents.apply_diff import apply_diff
from agents.editor import ApplyPatchOperation, ApplyPatchResult
from agents.tool import ShellCallOutcome, ShellCommandOutput, ShellCommandRequest, ShellResult
from openai import AsyncOpenAI

from demo_requests import CASES, WEATHER_TOOL
from sdk import sdk, wire
from vllm_responses.demo_model.scenarios import expected_tool_calls
from vllm_responses.events.conformance import assert_conforms, check_response, parse_sse

set_tracing_disabled(True)  # no network here; traces would go to OpenAI

SHELL = {"type": "shell", "environment": {"type": "local"}}
AFTER_TOOL = CASES["after_tool"].content
COMMANDS = expected_tool_calls("shell_tests")[0]["arguments"]["commands"]
CREATE = expected_tool_calls("create_file")[0]["arguments"]["operation"]
UPDATE = expected_tool_calls("update_file")[0]["arguments"]["operation"]


def _model(base_url: str) -> tuple[OpenAIResponsesModel, AsyncOpenAI]:
    client = AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", _strict_response_validation=True, max_retries=0)
    return OpenAIResponsesModel(model="demo", openai_client=client), client


async def _run(agent: Agent, prompt: str, streamed: bool) -> tuple[Any, list[dict]]:
    if not streamed:
        return await Runner.run(agent, prompt), []
    result = Runner.run_streamed(agent, prompt)
    raw = [wire(e.data) async for e in result.stream_events() if e.type == "raw_response_event"]
    return result, raw


def _each_stream_conforms(raw: list[dict], turns: int) -> None:
    starts = [i for i, e in enumerate(raw) if e["type"] == "response.created"]
    assert len(starts) == turns
    for a, b in zip(starts, starts[1:] + [len(raw)]):
        assert_conforms(raw[a:b])


async def _input_items(client: AsyncOpenAI, response_id: str) -> list[dict]:
    return [i.model_dump(mode="json") async for i in client.responses.input_items.list(response_id, order="asc")]


@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run_streamed"])
def test_agent_runs_the_shell_calls_of_the_model(base_url: str, tmp_path: Path, streamed: bool) -> None:
    ran: list[list[str]] = []

    def executor(request: ShellCommandRequest) -> ShellResult:
        ran.append(list(request.data.action.commands))
        outputs = []
        for command in request.data.action.commands:
            done = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=30)
            outputs.append(ShellCommandOutput(done.stdout, done.stderr, ShellCallOutcome("exit", done.returncode)))
        return ShellResult(output=outputs)

    async def run() -> tuple[Any, list[dict], list[dict]]:
        model, client = _model(base_url)
        agent = Agent(name="tester", instructions="Run what is asked.", tools=[ShellTool(executor=executor)], model=model)
        result, raw = await _run(agent, "Please run the tests.", streamed)
        return result, raw, await _input_items(client, result.raw_responses[-1].response_id)

    result, raw, sent = asyncio.run(run())
    assert ran == [COMMANDS]
    assert result.final_output == AFTER_TOOL
    # The second request carried what the commands really printed.
    expected = [subprocess.run(c, shell=True, cwd=tmp_path, capture_output=True, text=True).stdout for c in COMMANDS]
    output = next(i for i in sent if i["type"] == "shell_call_output")
    assert [o["stdout"] for o in output["output"]] == expected and all(expected)
    call = next(i for i in sent if i["type"] == "shell_call")
    assert call["action"]["commands"] == COMMANDS and output["call_id"] == call["call_id"]
    if streamed:
        _each_stream_conforms(raw, 2)
        commands = [e["command"] for e in raw if e["type"] == "response.shell_call_command.done"]
        assert commands == COMMANDS


class FolderEditor:
    """An ApplyPatchEditor over one folder, applying V4A diffs with the Agents SDK's own apply_diff."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def create_file(self, op: ApplyPatchOperation) -> ApplyPatchResult:
        path = self.root / op.path
        path.write_text(apply_diff("", op.diff or "", mode="create"))
        return ApplyPatchResult(status="completed", output=f"created {op.path}")

    def update_file(self, op: ApplyPatchOperation) -> ApplyPatchResult:
        path = self.root / op.path
        path.write_text(apply_diff(path.read_text(), op.diff or ""))
        return ApplyPatchResult(status="completed", output=f"updated {op.path}")

    def delete_file(self, op: ApplyPatchOperation) -> ApplyPatchResult:
        (self.root / op.path).unlink()
        return ApplyPatchResult(status="completed", output=f"deleted {op.path}")


@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run_streamed"])
def test_agent_applies_the_patches_of_the_model(base_url: str, tmp_path: Path, streamed: bool) -> None:
    async def run() -> tuple[list[Any], list[dict], list[dict]]:
        model, client = _model(base_url)
        agent = Agent(name="editor", instructions="Edit files.", tools=[ApplyPatchTool(editor=FolderEditor(tmp_path))],
                      model=model)
        created, raw = await _run(agent, "Please create a file.", streamed)
        updated, raw2 = await _run(agent, "Please update the file.", streamed)
        sent = await _input_items(client, updated.raw_responses[-1].response_id)
        return [created, updated], raw + raw2, sent

    results, raw, sent = asyncio.run(run())
    assert [r.final_output for r in results] == [AFTER_TOOL, AFTER_TOOL]
    assert (tmp_path / CREATE["path"]).read_text() == apply_diff(apply_diff("", CREATE["diff"], mode="create"), UPDATE["diff"])
    call = next(i for i in sent if i["type"] == "apply_patch_call")
    output = next(i for i in sent if i["type"] == "apply_patch_call_output")
    assert call["operation"] == UPDATE and output == {**output, "call_id": call["call_id"], "status": "completed"}
    if streamed:
        _each_stream_conforms(raw, 4)
        assert not [e for e in raw if "arguments" in e["type"]]


def test_openai_sdk_streams_and_stores_every_builtin_item(base_url: str) -> None:
    client = sdk(base_url)
    tools = [SHELL, {"type": "apply_patch"}, {"type": "local_shell"}, {"type": "tool_search", "execution": "client"},
             {**WEATHER_TOOL, "defer_loading": True}]
    prompts = {"shell_call": "Please run the tests.", "apply_patch_call": "Please create a file.",
               "local_shell_call": "Please list the directory.", "tool_search_call": "Please find the weather tool."}
    for kind, prompt in prompts.items():
        with client.responses.stream(model="demo", input=prompt, tools=tools) as s:
            events = [wire(e) for e in s]
            final = s.get_final_response()
        assert_conforms(events)
        calls = [i for i in final.output if i.type.endswith("_call")]
        assert [c.type for c in calls] == [kind], (kind, final.output)
        assert calls[0].status == "completed" and calls[0].call_id
        stored = client.responses.retrieve(final.id)
        assert stored.output == final.output
        assert check_response(httpx.get(f"{base_url}/v1/responses/{final.id}").json()) == []
        if kind == "tool_search_call":
            assert calls[0].execution == "client" and calls[0].arguments == {"query": "weather"}


def test_a_shell_turn_replays_through_previous_response_id(base_url: str) -> None:
    client = sdk(base_url)
    first = client.responses.create(model="demo", input="Please run the tests.", tools=[SHELL])
    call = next(i for i in first.output if i.type == "shell_call")
    outputs = [{"stdout": f"{c}\n", "stderr": "", "outcome": {"type": "exit", "exit_code": 0}} for c in COMMANDS]
    second = client.responses.create(
        model="demo", previous_response_id=first.id, tools=[SHELL],
        input=[{"type": "shell_call_output", "call_id": call.call_id, "output": outputs}],
    )
    assert second.output_text == AFTER_TOOL
    listed = [i.type for i in client.responses.input_items.list(second.id)]
    assert listed == ["shell_call_output"]
    assert second.usage.input_tokens > first.usage.input_tokens  # the earlier turn was rendered again


def test_an_apply_patch_turn_lives_in_a_conversation_and_compacts(base_url: str) -> None:
    client = sdk(base_url)
    conversation = client.conversations.create()
    first = client.responses.create(model="demo", input="Please create a file.", tools=[{"type": "apply_patch"}],
                                    conversation=conversation.id)
    call = next(i for i in first.output if i.type == "apply_patch_call")
    assert call.operation.model_dump(mode="json", exclude_none=True) == CREATE
    second = client.responses.create(
        model="demo", conversation=conversation.id, tools=[{"type": "apply_patch"}],
        input=[{"type": "apply_patch_call_output", "call_id": call.call_id, "status": "completed", "output": "created"}],
    )
    assert second.output_text == AFTER_TOOL
    kinds = [i.type for i in client.conversations.items.list(conversation.id, order="asc")]
    assert kinds.count("apply_patch_call") == 1 and kinds.count("apply_patch_call_output") == 1
    # Compaction over that history: the summary stands in for it, and the conversation goes on.
    compacted = client.responses.compact(model="demo", previous_response_id=second.id)
    assert compacted.output[-1].type == "compaction"
    third = client.responses.create(model="demo", input=[*[i.model_dump(mode="json", exclude_none=True)
                                                          for i in compacted.output], {"role": "user", "content": "Hello there!"}])
    assert third.output_text == CASES["default"].content


def test_a_server_search_loads_the_tool_and_answers_in_one_response(base_url: str) -> None:
    tools = [{"type": "tool_search"}, {**WEATHER_TOOL, "defer_loading": True}]
    with httpx.stream("POST", f"{base_url}/v1/responses", timeout=120,
                      json={"model": "demo", "input": "Please find the weather tool.", "tools": tools, "stream": True}) as r:
        events = parse_sse(r.read())
    assert_conforms(events)
    response = events[-1]["response"]
    kinds = [i["type"] for i in response["output"] if i["type"] != "reasoning"]
    assert kinds == ["tool_search_call", "tool_search_output", "message"]
    output = next(i for i in response["output"] if i["type"] == "tool_search_output")
    assert [t["name"] for t in output["tools"]] == ["get_weather"]
    assert response["output"][-1]["content"][0]["text"] == AFTER_TOOL
    # A later turn is offered what the search loaded: the model calls it.
    client = sdk(base_url)
    later = client.responses.create(model="demo", previous_response_id=response["id"], tools=tools,
                                    input="What is the weather in Paris?")
    assert [(i.type, getattr(i, "name", None)) for i in later.output if i.type != "reasoning"] == [
        ("function_call", "get_weather")]
    assert json.loads(later.output[-1].arguments) == {"city": "Paris"}
    # Without the search, the deferred tool is not offered: no call.
    unloaded = client.responses.create(model="demo", tools=tools, input="What is the weather in Paris?")
    assert not [i for i in unloaded.output if i.type == "function_call"]

