"""Every request parameter is honoured, accepted without effect, or refused: never dropped.
And the response object carries, field by field, what the hosted API sends."""

import json

import pytest

from fakes import EngineFailure, ScriptedEngine, usage
from test_routes import SCRIPT, post
from vllm_responses.request.chat import chat_tools
from vllm_responses.events.conformance import check_events, check_response, parse_sse
from vllm_responses.events.deltas import Finish, TextDelta
from vllm_responses.common.errors import APIError
from vllm_responses.events.open_responses import error_problems
from vllm_responses.request.parameters import CHAT_HABITS, NO_EFFECT, REFUSED, VLLM_EXTENSIONS
from vllm_responses.request.protocol import parse_request, strict_compatible


def parse(**body):
    return parse_request(json.dumps({"model": "demo", "input": "hi", **body}).encode())


def refused(**body) -> APIError:
    with pytest.raises(APIError) as info:
        parse(**body)
    assert info.value.status == 400
    assert error_problems(json.loads(info.value.json())) == []  # the Open Responses error shape
    return info.value


@pytest.mark.parametrize("name", sorted(CHAT_HABITS))
def test_chat_completions_habits_name_the_responses_equivalent(name):
    error = refused(**{name: 1})
    assert error.code == "unsupported_parameter" and error.param == name
    assert "In the Responses API" in error.message


def test_max_tokens_points_to_max_output_tokens():
    assert "max_output_tokens" in refused(max_tokens=5).message
    assert "`input`" in refused(messages=[{"role": "user", "content": "x"}]).message


def test_unknown_parameter_is_refused_as_openai_does():
    error = refused(frobnicate=True)
    assert (error.code, error.param, error.message) == ("unknown_parameter", "frobnicate", "Unknown parameter: 'frobnicate'.")


@pytest.mark.parametrize("name", sorted(NO_EFFECT))
def test_fields_without_effect_are_accepted(name):
    values = {"stream_options": {"include_obfuscation": False}, "service_tier": "auto", "prompt_cache_retention": "24h",
              "prompt_cache_options": {}, "background_options": {}, "image": {}}
    parse(**{name: values.get(name, "x")})


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_what_cannot_be_honoured_is_refused_with_the_reason(name):
    error = refused(**{name: {"id": "x"} if name in ("prompt", "moderation", "access_programs") else [{"type": "compaction"}] if name != "enable_response_messages" else True})
    assert error.code == "unsupported_parameter" and error.param == name
    assert REFUSED[name] in error.message
    parse(**{name: None})  # asking for nothing is fine


def test_vllm_extensions_reach_the_engine_as_sent():
    request = parse(seed=7, stop=["x"], top_k=3, min_p=0.1, cache_salt="salt", vllm_xargs={"a": 1}, request_id="mine", spaces_between_special_tokens=False)
    assert request.extensions == {
        "seed": 7, "stop": ["x"], "top_k": 3, "min_p": 0.1, "cache_salt": "salt", "vllm_xargs": {"a": 1}, "request_id": "mine",
        "spaces_between_special_tokens": False,  # vLLM 0.33's own /v1/responses accepts it (issue 21)
    }
    assert "seed" not in request.params
    assert VLLM_EXTENSIONS.isdisjoint(CHAT_HABITS) and VLLM_EXTENSIONS.isdisjoint(NO_EFFECT) and VLLM_EXTENSIONS.isdisjoint(REFUSED)


def test_strict_is_decided_as_openai_decides_it():
    closed = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"], "additionalProperties": False}
    open_ = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    partial = {**closed, "required": []}
    nested = {**closed, "properties": {"a": {"type": "array", "items": open_}}}
    assert strict_compatible(closed) and not strict_compatible(open_) and not strict_compatible(partial)
    assert not strict_compatible(nested)
    request = parse(tools=[
        {"type": "function", "name": "a", "parameters": closed},
        {"type": "function", "name": "b", "parameters": open_},
        {"type": "function", "name": "c", "parameters": closed, "strict": False},
    ])
    assert [t.strict for t in request.tools] == [True, False, False]
    assert [t["function"].get("strict") for t in chat_tools(request.tools).tools] == [True, False, False]


def test_allowed_tools_restrict_what_is_offered():
    request = parse(tools=[{"type": "function", "name": n, "parameters": {}} for n in ("a", "b", "c")])
    tools = chat_tools(request.tools).only([{"type": "function", "name": "b"}, {"type": "mcp", "server_label": "x"}])
    assert [t["function"]["name"] for t in tools.tools] == ["b"] and list(tools.targets) == ["b"]
    with pytest.raises(APIError) as info:
        chat_tools(request.tools).only([{"type": "function", "name": "nope"}])
    assert info.value.param == "tool_choice.tools[0]"


# -- the response object ---------------------------------------------------------------------
@pytest.mark.anyio
async def test_response_object_is_exact():
    r = await post(ScriptedEngine(SCRIPT), {"model": "demo", "input": "hi", "temperature": 0.5})
    body = r.json()
    assert check_response(body) == []
    assert isinstance(body["created_at"], int) and isinstance(body["completed_at"], int)
    assert '"created_at":' + str(body["created_at"]) + "," in r.text  # no ".0"
    expected = {
        "truncation": "disabled", "service_tier": "default", "temperature": 0.5, "top_p": 1.0, "presence_penalty": 0.0,
        "frequency_penalty": 0.0, "top_logprobs": 0, "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
        "text": {"format": {"type": "text"}, "verbosity": "medium"}, "reasoning": {"effort": None, "summary": None},
        "max_output_tokens": None, "max_tool_calls": None, "metadata": {}, "prompt_cache_key": None,
        "safety_identifier": None, "user": None, "store": True, "background": False, "error": None,
        "incomplete_details": None, "previous_response_id": None, "instructions": None,
    }
    assert {k: body.get(k, "missing") for k in expected} == expected


@pytest.mark.anyio
async def test_streamed_timestamps_and_completed_at_only_when_completed():
    r = await post(ScriptedEngine(SCRIPT), {"model": "demo", "input": "hi", "stream": True, "user": "u", "prompt_cache_key": "k"})
    events = parse_sse(r.text)
    assert check_events(events) == []
    assert events[0]["response"]["completed_at"] is None
    assert (events[-1]["response"]["user"], events[-1]["response"]["prompt_cache_key"]) == ("u", "k")
    cut = ScriptedEngine([TextDelta("a"), Finish("length", usage())])
    body = (await post(cut, {"model": "demo", "input": "hi", "max_output_tokens": 1})).json()
    assert body["status"] == "incomplete" and body["completed_at"] is None and check_response(body) == []


@pytest.mark.anyio
async def test_failed_response_carries_the_usage_so_far():
    engine = ScriptedEngine([TextDelta("part"), EngineFailure("boom", usage=usage(12, 3))])
    events = parse_sse((await post(engine, {"model": "demo", "input": "hi", "stream": True})).text)
    assert check_events(events) == []
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["completed_at"] is None
    assert (failed["usage"]["input_tokens"], failed["usage"]["output_tokens"]) == (12, 3)


def test_docs_table_names_every_parameter():
    """docs/events.md's table stays true: every field the openai package knows and every
    class in parameters.py is named there."""
    from pathlib import Path

    from openai.types.responses.response_create_params import ResponseCreateParamsBase

    docs = (Path(__file__).parents[2] / "docs" / "events.md").read_text()
    section = docs[docs.index("## Request parameters") : docs.index("## The response object")]
    names = set(ResponseCreateParamsBase.__annotations__) | set(NO_EFFECT) | set(REFUSED) | set(CHAT_HABITS) | VLLM_EXTENSIONS
    missing = sorted(name for name in names if f"`{name}`" not in section)
    assert not missing, f"docs/events.md does not describe: {missing}"


@pytest.mark.parametrize("where", ["tools", "text", "metadata", "input"])
def test_deeply_nested_requests_are_a_400_not_a_recursion_error(where):
    nested = '{"type":"object","properties":{"a":' * 500 + "{}" + "}}" * 500
    body = {
        "tools": '{"model":"demo","input":"hi","tools":[{"type":"function","name":"f","parameters":%s}]}',
        "text": '{"model":"demo","input":"hi","text":{"format":{"type":"json_schema","name":"x","schema":%s}}}',
        "metadata": '{"model":"demo","input":"hi","metadata":%s}',
        "input": '{"model":"demo","input":[{"role":"user","content":[{"type":"input_text","text":"x","extra":%s}]}]}',
    }[where] % nested
    try:
        parse_request(body.encode())
    except APIError as error:
        assert error.status == 400 and error_problems(json.loads(error.json())) == []


def test_input_image_detail_defaults_to_auto():
    image = {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}
    request = parse(input=[
        {"role": "user", "content": [{"type": "input_text", "text": "look"}, image]},
        {"type": "function_call_output", "call_id": "c", "output": [image]},
    ])
    assert request.input[0].content[1].detail == "auto"
    assert request.input[1].output[0].detail == "auto"
