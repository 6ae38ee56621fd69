"""Input items and tools → chat messages and tools, and tool-call fragments back."""

import json

import pytest

from vllm_responses.request.chat import chat_messages, chat_tools
from vllm_responses.engine.tool_calls import ToolCallMapper
from vllm_responses.common.errors import APIError
from vllm_responses.request.protocol import parse_request

PATCH = '*** Begin Patch\n*** Add File: a.txt\n+"quoted" \\ é 😀\n*** End Patch\n'


def request(**body):
    return parse_request(json.dumps({"model": "demo", "input": "hi", **body}).encode())


def test_tools_flatten_namespaces_and_customs():
    r = request(tools=[
        {"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}},
        {"type": "custom", "name": "apply_patch", "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}},
        {"type": "namespace", "name": "multi_agent_v1", "description": "d", "tools": [{"type": "function", "name": "spawn_agent"}]},
        {"type": "web_search"},
        {"type": "tool_search"},
    ])
    tools = chat_tools(r.tools)
    names = [t["function"]["name"] for t in tools.tools]
    assert names == ["f", "apply_patch", "multi_agent_v1__spawn_agent", "tool_search"]  # web_search: not offered
    assert tools.tools[1]["function"]["parameters"]["required"] == ["input"]
    assert tools.target("multi_agent_v1__spawn_agent").namespace == "multi_agent_v1"
    assert tools.target("apply_patch").custom


def test_history_renders_as_chat_tool_calls():
    r = request(
        instructions="Be brief.",
        input=[
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "dev"}]},
            {"role": "user", "content": "patch it"},
            {"type": "reasoning", "id": "rs_1", "summary": [], "content": None, "encrypted_content": "x"},
            {"type": "custom_tool_call", "call_id": "c1", "name": "apply_patch", "input": PATCH},
            {"type": "function_call", "call_id": "c2", "name": "spawn_agent", "namespace": "multi_agent_v1", "arguments": "{}"},
            {"type": "custom_tool_call_output", "call_id": "c1", "output": "Done!"},
            {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "ok"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "All done."}]},
        ],
    )
    messages = chat_messages(r.get("instructions"), r.input)
    assert [m["role"] for m in messages] == ["system", "system", "user", "assistant", "tool", "tool", "assistant"]
    calls = messages[3]["tool_calls"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"input": PATCH}
    assert calls[1]["function"]["name"] == "multi_agent_v1__spawn_agent"
    assert messages[5] == {"role": "tool", "tool_call_id": "c2", "content": "ok"}
    assert messages[6]["content"] == "All done."


def test_item_reference_without_store_is_a_clear_400():
    r = request(input=[{"type": "item_reference", "id": "msg_1"}])
    with pytest.raises(APIError) as exc:
        chat_messages(None, r.input)
    assert exc.value.status == 400 and exc.value.param == "input[0]"


def _mapper(parallel=True):
    r = request(tools=[
        {"type": "function", "name": "get_weather", "parameters": {}},
        {"type": "custom", "name": "apply_patch"},
    ])
    return ToolCallMapper(chat_tools(r.tools), parallel=parallel)


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_custom_input_streams_unwrapped(step):
    mapper = _mapper()
    args = json.dumps({"input": PATCH})
    out = mapper.feed(0, "apply_patch", "call_1", "")
    for i in range(0, len(args), step):
        out += mapper.feed(0, None, None, args[i:i + step])
    out += mapper.finish()
    assert out[0].custom and out[0].name == "apply_patch" and out[0].call_id == "call_1"
    assert "".join(d.arguments for d in out) == PATCH
    assert len([d for d in out if d.arguments]) > (1 if step < 100 else 0)


def test_parallel_false_keeps_first_call_only():
    mapper = _mapper(parallel=False)
    out = mapper.feed(0, "get_weather", None, '{"city": "Paris"}') + mapper.feed(1, "get_weather", None, '{"city": "London"}')
    assert [d.index for d in out] == [0]


def test_arguments_before_name_are_held():
    mapper = _mapper()
    out = mapper.feed(0, None, None, '{"in') + mapper.feed(0, "apply_patch", None, 'put": "x"}') + mapper.finish()
    assert "".join(d.arguments for d in out) == "x" and out[0].name == "apply_patch"


def test_reasoning_goes_back_as_the_reasoning_of_its_assistant_turn():
    r = request(input=[
        {"type": "message", "role": "user", "content": "weather?"},
        {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "I will call it."}]},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "Sunny"},
        {"type": "reasoning", "id": "rs_2", "summary": [{"type": "summary_text", "text": "a summary is not the thought"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Sunny."}]},
        {"type": "message", "role": "user", "content": "thanks"},
        {"type": "reasoning", "id": "rs_3", "summary": [], "content": [{"type": "reasoning_text", "text": "Only thought."}]},
        {"type": "message", "role": "user", "content": "again"},
    ])
    messages = chat_messages(None, r.input)
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant", "user", "assistant", "user"]
    assert messages[1]["reasoning"] == "I will call it." and messages[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert "reasoning" not in messages[3] and messages[3]["content"] == "Sunny."  # summaries are not replayed
    assert messages[5] == {"role": "assistant", "content": "", "reasoning": "Only thought."}


def test_text_then_calls_share_a_turn_but_new_reasoning_opens_one():
    r = request(input=[
        {"type": "message", "role": "user", "content": "go"},
        {"type": "message", "role": "assistant", "content": "Let me check."},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "Next."}]},
        {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{}"},
    ])
    messages = chat_messages(None, r.input)
    assert [m["role"] for m in messages] == ["user", "assistant", "assistant"]
    assert [c["id"] for c in messages[1]["tool_calls"]] == ["c1"]
    assert messages[2]["reasoning"] == "Next." and [c["id"] for c in messages[2]["tool_calls"]] == ["c2"]


def _completing_mapper(whole):
    asked = []

    def complete(position):
        asked.append(position)
        return whole[position] if position < len(whole) else None

    r = request(tools=[
        {"type": "function", "name": "get_weather", "parameters": {"type": "object"}},
        {"type": "custom", "name": "apply_patch"},
    ])
    return ToolCallMapper(chat_tools(r.tools), complete=complete), asked


def test_arguments_a_parser_dropped_are_completed_before_the_call_closes():
    """vLLM's deepseek_v3 parser, fed several tokens per step, sends a call's name and no
    arguments: what its non-streaming pass reads completes them."""
    whole = ['{"city": "Paris"}', json.dumps({"input": PATCH})]
    mapper, asked = _completing_mapper(whole)
    out = mapper.feed(0, "get_weather", "call_1", "")
    out += mapper.feed(0, None, None, '{"city"')
    out += mapper.feed(1, "apply_patch", "call_2", "")  # closes call 0: completed first
    out += mapper.finish()
    assert "".join(d.arguments for d in out if d.index == 0) == '{"city": "Paris"}'
    assert "".join(d.arguments for d in out if d.index == 1) == PATCH  # custom input decoded
    assert asked == [0, 1]


def test_complete_arguments_are_left_alone():
    mapper, asked = _completing_mapper(['{"city": "Rome"}'])
    out = mapper.feed(0, "get_weather", None, '{"city": "Paris"}') + mapper.finish()
    assert "".join(d.arguments for d in out) == '{"city": "Paris"}' and asked == []  # complete JSON: no parse
    mapper, asked = _completing_mapper(['{"city": "Rome"}'])
    out = mapper.feed(0, "get_weather", None, '{"city": "Pa') + mapper.finish()
    assert "".join(d.arguments for d in out) == '{"city": "Pa' and asked == [0]  # not a prefix: kept as streamed
    mapper, _ = _completing_mapper([])
    out = mapper.feed(0, "get_weather", None, "") + mapper.finish()
    assert "".join(d.arguments for d in out) == ""  # nothing better known
