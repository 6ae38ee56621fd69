"""Issue 8 points that had no test of their own: every hosted tool type is accepted and never
offered to the model, echoed tools carry the ``strict`` that was used, and
``truncation: "auto"`` never drops instructions, system/developer messages or the last user
message (the algorithm, with a stand-in for rendering; the real engine's run is in
tests/e2e/test_parity.py)."""

import asyncio
import json
from types import SimpleNamespace

import pytest
from demo_requests import HOSTED_TOOLS
from fakes import ScriptedEngine
from test_routes import SCRIPT, post

from vllm_responses.request.chat import chat_tools
from vllm_responses.events.conformance import check_response
from vllm_responses.common.errors import APIError
from vllm_responses.request.protocol import parse_request
from vllm_responses.engine.vllm_engine import VllmEngine

CLOSED = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"], "additionalProperties": False}
OPEN = {"type": "object", "properties": {"a": {"type": "string"}}}


def parse(**body):
    return parse_request(json.dumps({"model": "demo", "input": "hi", **body}).encode())


@pytest.mark.parametrize("tool", HOSTED_TOOLS, ids=[t["type"] for t in HOSTED_TOOLS])
def test_hosted_tools_are_accepted_and_never_offered(tool):
    request = parse(tools=[tool, {"type": "function", "name": "f", "parameters": CLOSED}])
    assert [t["function"]["name"] for t in chat_tools(request.tools).tools] == ["f"]
    assert not chat_tools(parse(tools=[tool]).tools).tools


@pytest.mark.anyio
async def test_echoed_tools_carry_the_strict_that_was_used():
    tools = [{"type": "function", "name": "a", "parameters": CLOSED}, {"type": "function", "name": "b", "parameters": OPEN},
             {"type": "function", "name": "c", "parameters": CLOSED, "strict": False}, *HOSTED_TOOLS]
    body = (await post(ScriptedEngine(SCRIPT), {"model": "demo", "input": "hi", "tools": tools})).json()
    assert check_response(body) == []
    functions = [t for t in body["tools"] if t["type"] == "function"]
    assert [(t["name"], t["strict"]) for t in functions] == [("a", True), ("b", False), ("c", False)]
    assert [t["type"] for t in body["tools"][3:]] == [t["type"] for t in HOSTED_TOOLS]  # echoed as sent


# -- truncation: "auto" --------------------------------------------------------------------------
class Renderer:
    """Stands in for the chat template: a prompt "fits" when its items' texts are short enough."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.model_config = SimpleNamespace(max_model_len=budget)
        self.instructions: set[str | None] = set()

    async def _fitting(self, fields, instructions, items, need):
        self.instructions.add(instructions)
        size = sum(len(json.dumps(i.model_dump(mode="json"))) for i in items)
        return ("chat request", None, list(items)) if size <= self.budget else None


def size(items) -> int:
    return sum(len(json.dumps(i.model_dump(mode="json"))) for i in items)


def text_of(item) -> str:
    if getattr(item, "type", None) in ("function_call", "function_call_output"):
        return item.call_id
    content = item.content
    return content if isinstance(content, str) else content[0].text


def test_truncation_drops_the_oldest_items_only():
    items = parse(input=[
        {"role": "developer", "content": "dev rules"},
        {"role": "user", "content": "old 1 " * 20},
        {"role": "assistant", "content": "old 2 " * 20},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "result " * 20},
        {"role": "user", "content": "newer " * 20},
        {"role": "assistant", "content": "answer " * 20},
        {"role": "user", "content": "the last question"},
        {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c2", "output": "after the last question"},
    ]).input
    must_keep = [items[0], *items[7:]]
    renderer = Renderer(budget=size(must_keep) + size(items[5:7]) + 10)
    _, _, kept = asyncio.run(VllmEngine._truncate(renderer, {}, "Be brief.", items, need=16))
    # old 1, old 2, the c1 call and its output (dropped with its call) go; the rest is kept in order
    assert [text_of(i) for i in kept] == [text_of(i) for i in (items[0], *items[5:])]
    assert renderer.instructions == {"Be brief."}  # every attempt renders the instructions

    tight = Renderer(budget=size(must_keep))
    _, _, kept = asyncio.run(VllmEngine._truncate(tight, {}, "Be brief.", items, need=16))
    assert [text_of(i) for i in kept] == [text_of(i) for i in must_keep]
    with pytest.raises(APIError) as info:  # not even what must stay fits: a 400, nothing more dropped
        asyncio.run(VllmEngine._truncate(Renderer(budget=size(must_keep) - 1), {}, "Be brief.", items, need=16))
    assert (info.value.status, info.value.code) == (400, "context_length_exceeded")
