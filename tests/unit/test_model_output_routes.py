"""Hostile model output through the real routes (issue 9, point 2): regression tests.

The engine plays tool-call fragments as a vLLM tool parser sends them, through
ToolCallMapper for the request's tools, as VllmEngine does. Before the fix, custom-tool input
with an invalid ``\\u`` escape ended ``response.failed``; a lone surrogate cut the SSE stream
without a terminal event and answered a JSON client with a plain-text 500.
"""

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from fakes import ScriptedEngine, usage
from test_routes import post
from vllm_responses.request.chat import chat_tools
from vllm_responses.events.conformance import check_events, check_response, parse_sse
from vllm_responses.events.deltas import Finish, ReasoningDelta, TextDelta
from vllm_responses.events.stream import TERMINAL_EVENTS
from vllm_responses.engine.tool_calls import ToolCallMapper


@dataclass
class Call:
    """A chat tool-call fragment as a tool parser sends it."""

    index: int
    arguments: str
    name: str | None = None
    call_id: str | None = None


class ParserEngine(ScriptedEngine):
    """Plays its script; :class:`Call` steps go through ToolCallMapper for the request's tools."""

    async def generate(self, prepared: Any, request_id: str) -> AsyncIterator[Any]:
        mapper = ToolCallMapper(chat_tools(prepared.request.tools or []))
        async for step in super().generate(prepared, request_id):
            if isinstance(step, Call):
                for delta in mapper.feed(step.index, step.name, step.call_id, step.arguments):
                    yield delta
                continue
            if isinstance(step, Finish):
                for delta in mapper.finish():
                    yield delta
            yield step


TOOLS = [  # descriptions: the Open Responses schema wants them on the tools a response echoes
    {"type": "custom", "name": "apply_patch", "description": "Edit files."},
    {
        "type": "function", "name": "get_weather", "description": "Weather.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
]


def custom_call(arguments: str) -> list[Any]:
    """``apply_patch`` called with ``arguments`` (the JSON the model wrote), a few characters a fragment."""
    steps: list[Any] = [ReasoningDelta("Patch it."), Call(0, "", "apply_patch", "call_p")]
    steps += [Call(0, arguments[i : i + 3]) for i in range(0, len(arguments), 3)]
    return steps + [Finish("stop", usage())]


CASES = {
    # The two bugs the review found.
    "invalid_u_escape": (custom_call(r'{"input": "C:\users\me \uZZZZ"}'), "custom_tool_call", "input", r"C:\users\me \uZZZZ"),
    "lone_surrogate_escape": (custom_call(r'{"input": "a\ud800b\udc00c"}'), "custom_tool_call", "input", "a\ufffdb\ufffdc"),
    # Their relatives: a pair stays one character; input not in the shape asked for passes on.
    "surrogate_pair_escape": (custom_call(r'{"input": "\ud83d\ude00"}'), "custom_tool_call", "input", "😀"),
    "custom_input_not_json": (custom_call("*** Begin Patch\n\\q"), "custom_tool_call", "input", "*** Begin Patch\n\\q"),
    # Raw lone surrogates and NULs in text, and in function arguments that are not JSON.
    "text_lone_surrogate_and_nul": ([TextDelta("x\ud800\x00y"), Finish("stop", usage())], "message", "text", "x\ufffd\x00y"),
    "arguments_not_json": (
        [Call(0, "", "get_weather", "call_w"), Call(0, '{"city": Par\udfffis'), Finish("length", usage())],
        "function_call", "arguments", '{"city": Par\ufffdis',
    ),
}


def payload(item: dict[str, Any], field: str) -> Any:
    return item["content"][0]["text"] if field == "text" else item[field]


@pytest.mark.anyio
@pytest.mark.parametrize("case", list(CASES))
async def test_stream_ends_with_one_terminal_event(case):
    script, kind, field, expected = CASES[case]
    r = await post(ParserEngine(script), {"model": "demo", "input": "hi", "tools": TOOLS, "stream": True})
    assert r.status_code == 200
    events = parse_sse(r.content)
    assert check_events(events) == []
    assert [e["type"] for e in events if e["type"] in TERMINAL_EVENTS] == [events[-1]["type"]]
    final = events[-1]["response"]
    assert final["status"] == ("incomplete" if case == "arguments_not_json" else "completed")
    (item,) = [i for i in final["output"] if i["type"] == kind]
    assert payload(item, field) == expected


@pytest.mark.anyio
@pytest.mark.parametrize("case", list(CASES))
async def test_json_answer_is_the_response(case):
    script, kind, field, expected = CASES[case]
    r = await post(ParserEngine(script), {"model": "demo", "input": "hi", "tools": TOOLS})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    body = json.loads(r.content)
    assert check_response(body) == []
    assert body["status"] == ("incomplete" if case == "arguments_not_json" else "completed")
    (item,) = [i for i in body["output"] if i["type"] == kind]
    assert payload(item, field) == expected
    r.content.decode("utf-8")  # strict UTF-8 on the wire
