"""The bad input matrix (issue 9): hostile requests and the exact OpenAI-shaped error each gets.

One table, played by tests/unit/test_bad_input.py over our routes on a scripted engine and,
for the cases marked ``e2e``, by tests/e2e/test_hostile_input.py against the real server.
Codes are the hosted API's where known (``unknown_parameter``, ``invalid_type``,
``invalid_value``, ``missing_required_parameter``, ``empty_array``, the range codes, 404s);
the others are listed in docs/events.md.
"""

import json
from dataclasses import dataclass
from typing import Any

MODEL = "demo"


@dataclass(frozen=True)
class Case:
    """One request and the error it must get. ``body``: a dict (sent as JSON, ``model`` and
    ``input`` filled in unless given) or raw bytes; ``None`` sends no body."""

    name: str
    body: dict[str, Any] | bytes | None
    status: int
    param: str | None
    code: str | None
    method: str = "POST"
    path: str = "/v1/responses"
    type: str = "invalid_request_error"
    e2e: bool = False  # also played against the real server
    engine: bool = False  # needs the real engine (tokenizer, context length): e2e only

    def content(self) -> bytes | None:
        if self.body is None or isinstance(self.body, bytes):
            return self.body
        text = json.dumps(self.body)
        for token, raw in _DEEP.items():  # nesting Python's json module cannot write
            text = text.replace(f'"{token}"', raw)
        return text.encode()


def create(extra: dict[str, Any], status: int, param: str | None, code: str | None, **kw: Any) -> dict[str, Any]:
    """Arguments of a ``POST /v1/responses`` case: a valid body plus ``extra``."""
    return dict(body={"model": MODEL, "input": "hi", **extra}, status=status, param=param, code=code, **kw)


_DEEP: dict[str, str] = {}


def _raw(text: str) -> str:
    """A placeholder that :meth:`Case.content` replaces with the JSON ``text``."""
    token = f"@@deep{len(_DEEP)}@@"
    _DEEP[token] = text
    return token


def nested(depth: int, key: str = "a") -> str:
    """``{"a": {"a": ... "x"}}``, ``depth`` objects deep."""
    return _raw(f'{{"{key}": ' * depth + '"x"' + "}" * depth)


def deep_schema(depth: int) -> str:
    """An object schema whose property is one, ``depth`` times (two JSON levels each)."""
    return _raw('{"type": "object", "properties": {"a": ' * depth + '{"type": "string"}' + "}}" * depth)


WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
CALL = {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"}
OUTPUT = {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}
USER = {"role": "user", "content": "hi"}


def _c(name: str, **kw: Any) -> Case:
    return Case(name, **kw)


CASES: list[Case] = [
    # -- malformed JSON --------------------------------------------------------------------
    _c("json_truncated", body=b'{"model": "demo", "input": "hi"', status=400, param=None, code="invalid_json", e2e=True),
    _c("json_empty_body", body=b"", status=400, param=None, code="invalid_json"),
    _c("json_trailing_garbage", body=b'{"model": "demo", "input": "hi"} x', status=400, param=None, code="invalid_json"),
    _c("json_two_objects", body=b'{"model": "demo"}{"input": "hi"}', status=400, param=None, code="invalid_json"),
    _c("json_invalid_utf8", body=b'{"model": "demo", "input": "\xff\xfe"}', status=400, param=None, code="invalid_json", e2e=True),
    _c("json_nan", body=b'{"model": "demo", "input": "hi", "temperature": NaN}', status=400, param=None, code="invalid_json"),
    _c("json_infinite_number", body=b'{"model": "demo", "input": "hi", "temperature": 1e400}', status=400, param=None, code="invalid_json"),
    _c("json_single_quotes", body=b"{'model': 'demo'}", status=400, param=None, code="invalid_json"),
    _c("json_lone_surrogate", body=b'{"model": "demo", "input": "a\\ud800b"}', status=400, param=None, code="invalid_json", e2e=True),
    _c("json_raw_nul_in_string", body=b'{"model": "demo", "input": "a\x00b"}', status=400, param=None, code="invalid_json", e2e=True),
    _c("json_array", body=b"[1]", status=400, param=None, code="invalid_type", e2e=True),
    _c("json_string", body=b'"hi"', status=400, param=None, code="invalid_type"),
    _c("json_null", body=b"null", status=400, param=None, code="invalid_type"),
    _c("json_number", body=b"42", status=400, param=None, code="invalid_type"),
    _c("json_too_deep_for_parser", body=b"[" * 2000 + b"]" * 2000, status=400, param=None, code="nested_too_deeply"),
    # -- missing / empty required fields ---------------------------------------------------
    _c("model_missing", body={"input": "hi"}, status=400, param="model", code="missing_required_parameter"),
    _c("model_null", body={"model": None, "input": "hi"}, status=400, param="model", code="missing_required_parameter"),
    _c("input_missing", body={"model": MODEL}, status=400, param="input", code="missing_required_parameter", e2e=True),
    _c("input_empty_string", **create({"input": ""}, 400, "input", "empty_string")),
    _c("input_empty_list", **create({"input": []}, 400, "input", "empty_array", e2e=True)),
    # -- wrong types for every top-level field ------------------------------------------------
    _c("model_int", **create({"model": 5}, 400, "model", "invalid_type")),
    _c("model_empty", **create({"model": ""}, 400, "model", "empty_string")),
    _c("input_int", **create({"input": 5}, 400, "input", "invalid_type")),
    _c("input_object", **create({"input": {"role": "user", "content": "hi"}}, 400, "input", "invalid_type", e2e=True)),
    _c("input_bool", **create({"input": True}, 400, "input", "invalid_type")),
    _c("instructions_int", **create({"instructions": 5}, 400, "instructions", "invalid_type")),
    _c("instructions_object", **create({"instructions": {"a": 1}}, 400, "instructions", "invalid_type")),
    _c("tools_string", **create({"tools": "get_weather"}, 400, "tools", "invalid_type")),
    _c("tools_object", **create({"tools": WEATHER}, 400, "tools", "invalid_type")),
    _c("tools_item_int", **create({"tools": [5]}, 400, "tools[0]", "invalid_type")),
    _c("tools_item_no_type", **create({"tools": [{"name": "x"}]}, 400, "tools[0].type", "missing_required_parameter")),
    _c("tools_function_no_name", **create({"tools": [{"type": "function", "parameters": {}}]}, 400, "tools[0].name", "missing_required_parameter")),
    _c("tools_function_name_int", **create({"tools": [{"type": "function", "name": 5, "parameters": {}}]}, 400, "tools[0].name", "invalid_type")),
    _c("tools_function_parameters_string", **create({"tools": [{**WEATHER, "parameters": "object"}]}, 400, "tools[0].parameters", "invalid_type")),
    _c("tool_choice_int", **create({"tool_choice": 5}, 400, "tool_choice", "invalid_type")),
    _c("tool_choice_unknown_mode", **create({"tool_choice": "sometimes"}, 400, "tool_choice", "invalid_value")),
    _c("tool_choice_function_no_name", **create({"tools": [WEATHER], "tool_choice": {"type": "function"}}, 400, "tool_choice.name", "missing_required_parameter")),
    _c("text_string", **create({"text": "json"}, 400, "text", "invalid_type")),
    _c("text_format_string", **create({"text": {"format": "json"}}, 400, "text.format", "invalid_type")),
    _c("text_format_unknown_type", **create({"text": {"format": {"type": "yaml"}}}, 400, "text.format.type", "invalid_value")),
    _c("text_verbosity_bad", **create({"text": {"verbosity": "loud"}}, 400, "text.verbosity", "invalid_value")),
    _c("reasoning_string", **create({"reasoning": "high"}, 400, "reasoning", "invalid_type")),
    _c("reasoning_effort_bad", **create({"reasoning": {"effort": "extreme"}}, 400, "reasoning.effort", "invalid_value")),
    _c("reasoning_summary_int", **create({"reasoning": {"summary": 1}}, 400, "reasoning.summary", "invalid_type")),
    _c("temperature_string", **create({"temperature": "hot"}, 400, "temperature", "invalid_type", e2e=True)),
    _c("temperature_list", **create({"temperature": [1]}, 400, "temperature", "invalid_type")),
    _c("temperature_bool", **create({"temperature": True}, 400, "temperature", "invalid_type")),
    _c("max_output_tokens_bool", **create({"max_output_tokens": True}, 400, "max_output_tokens", "invalid_type")),
    _c("stream_with_bad_input_is_json", **create({"stream": True, "temperature": 5}, 400, "temperature", "decimal_above_max_value")),
    _c("top_p_string", **create({"top_p": "all"}, 400, "top_p", "invalid_type")),
    _c("max_output_tokens_string", **create({"max_output_tokens": "10"}, 400, "max_output_tokens", "invalid_type")),
    _c("max_output_tokens_float", **create({"max_output_tokens": 10.5}, 400, "max_output_tokens", "invalid_type")),
    _c("stream_string", **create({"stream": "yes"}, 400, "stream", "invalid_type")),
    _c("stream_int", **create({"stream": 1}, 400, "stream", "invalid_type")),
    _c("store_string", **create({"store": "no"}, 400, "store", "invalid_type")),
    _c("background_string", **create({"background": "true"}, 400, "background", "invalid_type")),
    _c("previous_response_id_int", **create({"previous_response_id": 5}, 400, "previous_response_id", "invalid_type")),
    _c("previous_response_id_no_prefix", **create({"previous_response_id": "abc"}, 400, "previous_response_id", "invalid_value")),
    _c("conversation_int", **create({"conversation": 5}, 400, "conversation", "invalid_type")),
    _c("conversation_id_int", **create({"conversation": {"id": 5}}, 400, "conversation.id", "invalid_type")),
    _c("conversation_object_no_id", **create({"conversation": {}}, 400, "conversation.id", "missing_required_parameter")),
    _c("conversation_no_prefix", **create({"conversation": "abc"}, 400, "conversation", "invalid_value")),
    _c("include_string", **create({"include": "reasoning.encrypted_content"}, 400, "include", "invalid_type")),
    _c("include_unknown_value", **create({"include": ["everything"]}, 400, "include[0]", "invalid_value", e2e=True)),
    _c("include_int_value", **create({"include": [5]}, 400, "include[0]", "invalid_type")),
    _c("metadata_string", **create({"metadata": "x"}, 400, "metadata", "invalid_type")),
    _c("metadata_int_value", **create({"metadata": {"k": 5}}, 400, "metadata.k", "invalid_type")),
    _c("metadata_nested_value", **create({"metadata": {"k": {"a": "b"}}}, 400, "metadata.k", "invalid_type")),
    _c("parallel_tool_calls_string", **create({"parallel_tool_calls": "yes"}, 400, "parallel_tool_calls", "invalid_type")),
    _c("truncation_bad", **create({"truncation": "sometimes"}, 400, "truncation", "invalid_value")),
    _c("truncation_int", **create({"truncation": 5}, 400, "truncation", "invalid_type")),
    _c("user_int", **create({"user": 5}, 400, "user", "invalid_type")),
    _c("safety_identifier_list", **create({"safety_identifier": ["a"]}, 400, "safety_identifier", "invalid_type")),
    _c("prompt_cache_key_int", **create({"prompt_cache_key": 5}, 400, "prompt_cache_key", "invalid_type")),
    _c("prompt_cache_retention_bad", **create({"prompt_cache_retention": "forever"}, 400, "prompt_cache_retention", "invalid_value")),
    _c("service_tier_bad", **create({"service_tier": "gold"}, 400, "service_tier", "invalid_value")),
    _c("service_tier_int", **create({"service_tier": 1}, 400, "service_tier", "invalid_type")),
    _c("top_logprobs_string", **create({"top_logprobs": "5"}, 400, "top_logprobs", "invalid_type")),
    _c("max_tool_calls_string", **create({"max_tool_calls": "3"}, 400, "max_tool_calls", "invalid_type")),
    _c("stream_options_string", **create({"stream_options": "x"}, 400, "stream_options", "invalid_type")),
    _c("unknown_parameter", **create({"frobnicate": 1}, 400, "frobnicate", "unknown_parameter", e2e=True)),
    _c("chat_habit_parameter", **create({"max_tokens": 5}, 400, "max_tokens", "unsupported_parameter")),
    _c("refused_parameter", **create({"prompt": {"id": "pmpt_1"}}, 400, "prompt", "unsupported_parameter")),
    # vLLM's extensions are validated by vLLM (its ChatCompletionRequest): always invalid_value.
    _c("extension_wrong_type", **create({"top_k": "many"}, 400, "top_k", "invalid_value", e2e=True, engine=True)),
    _c("extension_stop_int", **create({"stop": 5}, 400, "stop", "invalid_value", e2e=True, engine=True)),
    _c("extension_seed_beyond_int64", **create({"seed": 2**70}, 400, "seed", "invalid_value", e2e=True, engine=True)),
    _c("extension_logit_bias_not_token_ids", **create({"logit_bias": {"abc": 1}}, 400, "logit_bias", "invalid_value", e2e=True, engine=True)),
    # -- ranges --------------------------------------------------------------------------------
    _c("max_output_tokens_negative", **create({"max_output_tokens": -1}, 400, "max_output_tokens", "integer_below_min_value", e2e=True)),
    _c("max_output_tokens_zero", **create({"max_output_tokens": 0}, 400, "max_output_tokens", "integer_below_min_value")),
    _c("max_output_tokens_huge", **create({"max_output_tokens": 10**12}, 400, "max_output_tokens", "integer_above_max_value", e2e=True)),
    # Above the model's context (131,072 tokens for the demo model): vLLM's own check.
    _c("max_output_tokens_above_context", **create({"max_output_tokens": 1_000_000}, 400, "max_output_tokens", "invalid_value", e2e=True, engine=True)),
    _c("max_output_tokens_beyond_int64", **create({"max_output_tokens": 10**30}, 400, "max_output_tokens", "integer_above_max_value")),
    _c("temperature_negative", **create({"temperature": -0.5}, 400, "temperature", "decimal_below_min_value")),
    _c("temperature_above_two", **create({"temperature": 2.5}, 400, "temperature", "decimal_above_max_value", e2e=True)),
    _c("top_p_above_one", **create({"top_p": 1.5}, 400, "top_p", "decimal_above_max_value")),
    _c("top_p_negative", **create({"top_p": -1}, 400, "top_p", "decimal_below_min_value")),
    _c("top_logprobs_above_twenty", **create({"top_logprobs": 21}, 400, "top_logprobs", "integer_above_max_value")),
    _c("max_tool_calls_zero", **create({"max_tool_calls": 0}, 400, "max_tool_calls", "integer_below_min_value")),
    # -- metadata limits -------------------------------------------------------------------------
    _c("metadata_17_keys", **create({"metadata": {f"k{i}": "v" for i in range(17)}}, 400, "metadata", "object_above_max_properties")),
    _c("metadata_key_65_chars", **create({"metadata": {"k" * 65: "v"}}, 400, "metadata", "string_above_max_length")),
    _c("metadata_value_513_chars", **create({"metadata": {"k": "v" * 513}}, 400, "metadata.k", "string_above_max_length", e2e=True)),
    # -- input items and content parts -------------------------------------------------------------
    _c("item_int", **create({"input": [5]}, 400, "input[0]", "invalid_type")),
    _c("item_string", **create({"input": ["hi"]}, 400, "input[0]", "invalid_type")),
    _c("item_unknown_type", **create({"input": [{"type": "telepathy", "content": "hi"}]}, 400, "input[0].type", "invalid_value", e2e=True)),
    _c("item_type_int", **create({"input": [{"type": 5}]}, 400, "input[0].type", "invalid_type")),
    _c("message_missing_role", **create({"input": [{"type": "message", "content": "hi"}]}, 400, "input[0].role", "missing_required_parameter")),
    _c("message_missing_content", **create({"input": [{"type": "message", "role": "user"}]}, 400, "input[0].content", "missing_required_parameter")),
    _c("message_bad_role", **create({"input": [{"role": "wizard", "content": "hi"}]}, 400, "input[0].role", "invalid_value")),
    _c("message_content_int", **create({"input": [{"role": "user", "content": 5}]}, 400, "input[0].content", "invalid_type")),
    _c("part_unknown_type", **create({"input": [{"role": "user", "content": [{"type": "input_video", "url": "x"}]}]}, 400, "input[0].content[0].type", "invalid_value", e2e=True)),
    _c("part_not_object", **create({"input": [{"role": "user", "content": ["hi"]}]}, 400, "input[0].content[0]", "invalid_type")),
    _c("part_missing_text", **create({"input": [{"role": "user", "content": [{"type": "input_text"}]}]}, 400, "input[0].content[0].text", "missing_required_parameter")),
    _c("part_text_int", **create({"input": [{"role": "user", "content": [{"type": "input_text", "text": 5}]}]}, 400, "input[0].content[0].text", "invalid_type")),
    _c("function_call_missing_call_id", **create({"input": [{k: v for k, v in CALL.items() if k != "call_id"}]}, 400, "input[0].call_id", "missing_required_parameter")),
    _c("function_call_missing_name", **create({"input": [{k: v for k, v in CALL.items() if k != "name"}]}, 400, "input[0].name", "missing_required_parameter")),
    _c("function_call_missing_arguments", **create({"input": [{k: v for k, v in CALL.items() if k != "arguments"}]}, 400, "input[0].arguments", "missing_required_parameter")),
    _c("function_call_arguments_object", **create({"input": [{**CALL, "arguments": {"city": "x"}}]}, 400, "input[0].arguments", "invalid_type")),
    _c("function_call_output_missing_output", **create({"input": [CALL, {k: v for k, v in OUTPUT.items() if k != "output"}]}, 400, "input[1].output", "missing_required_parameter")),
    _c("function_call_output_output_int", **create({"input": [CALL, {**OUTPUT, "output": 5}]}, 400, "input[1].output", "invalid_type")),
    _c("item_type_not_run_here", **create({"input": [{"type": "computer_call_output", "call_id": "c1", "output": {"type": "computer_screenshot", "image_url": "https://example.com/s.png"}}]}, 400, "input[0]", "unsupported_value", e2e=True, engine=True)),
    _c("image_for_text_only_model", **create({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}]}]}, 400, "input[0].content[0]", "unsupported_value", e2e=True, engine=True)),
    _c("item_reference_missing_id", **create({"input": [{"type": "item_reference"}]}, 400, "input[0].id", "missing_required_parameter")),
    _c("item_reference_unknown", **create({"input": [{"type": "item_reference", "id": "msg_missing"}]}, 404, "input[0]", "item_not_found")),
    _c("duplicate_call_ids", **create({"input": [USER, CALL, {**CALL, "arguments": '{"city": "x"}'}, OUTPUT]}, 400, "input[2].call_id", "invalid_value")),
    _c("output_without_call", **create({"input": [USER, OUTPUT]}, 400, "input[1].call_id", "invalid_value", e2e=True)),
    _c("custom_output_without_call", **create({"input": [USER, {"type": "custom_tool_call_output", "call_id": "call_9", "output": "x"}]}, 400, "input[1].call_id", "invalid_value")),
    # -- tool_choice against the tools offered --------------------------------------------------------
    _c("tool_choice_names_missing_function", **create({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "launch"}}, 400, "tool_choice", "invalid_value", e2e=True)),
    _c("tool_choice_function_without_tools", **create({"tool_choice": {"type": "function", "name": "get_weather"}}, 400, "tool_choice", "invalid_value")),
    _c("tool_choice_allowed_unknown_tool", **create({"tools": [WEATHER], "tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "launch"}]}}, 400, "tool_choice.tools[0]", "invalid_value")),
    _c("tool_choice_allowed_namespace_int", **create({"tools": [WEATHER], "tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "get_weather", "namespace": 5}]}}, 400, "tool_choice.tools[0].namespace", "invalid_type")),
    _c("tool_choice_allowed_name_list", **create({"tools": [WEATHER], "tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": ["get_weather"]}]}}, 400, "tool_choice.tools[0].name", "invalid_type")),
    _c("tool_choice_required_without_tools", **create({"tool_choice": "required"}, 400, "tool_choice", "invalid_value")),
    _c("tool_choice_hosted_type", **create({"tools": [WEATHER], "tool_choice": {"type": "web_search_preview"}}, 400, "tool_choice", "unsupported_value")),
    # -- text.format JSON schema ------------------------------------------------------------------------
    _c("schema_not_object", **create({"text": {"format": {"type": "json_schema", "name": "x", "schema": "object"}}}, 400, "text.format.schema", "invalid_type")),
    _c("schema_missing", **create({"text": {"format": {"type": "json_schema", "name": "x"}}}, 400, "text.format.schema", "missing_required_parameter")),
    _c("schema_missing_name", **create({"text": {"format": {"type": "json_schema", "schema": {"type": "object"}}}}, 400, "text.format.name", "missing_required_parameter", e2e=True)),
    _c("schema_bad_name_characters", **create({"text": {"format": {"type": "json_schema", "name": "my schema!", "schema": {"type": "object"}}}}, 400, "text.format.name", "invalid_value")),
    _c("schema_name_too_long", **create({"text": {"format": {"type": "json_schema", "name": "n" * 65, "schema": {"type": "object"}}}}, 400, "text.format.name", "string_above_max_length")),
    # The grammar compiler's verdict on the schema itself (vLLM names no param).
    _c("schema_properties_not_object", **create({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object", "properties": "x"}}}}, 400, "text.format.schema", "invalid_value", e2e=True, engine=True)),
    _c("schema_unknown_type", **create({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "wat"}}}}, 400, "text.format.schema", "invalid_value", e2e=True, engine=True)),
    _c("schema_dangling_ref", **create({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"$ref": "#/$defs/missing"}}}}, 400, "text.format.schema", "invalid_value", engine=True)),
    # -- deeply nested JSON anywhere ------------------------------------------------------------------
    _c("nested_schema", **create({"text": {"format": {"type": "json_schema", "name": "x", "schema": deep_schema(500)}}}, 400, "text", "nested_too_deeply", e2e=True)),
    _c("nested_tool_parameters", **create({"tools": [{**WEATHER, "parameters": deep_schema(300)}]}, 400, "tools", "nested_too_deeply")),
    _c("nested_metadata", **create({"metadata": {"k": nested(200)}}, 400, "metadata", "nested_too_deeply")),
    _c("nested_input_content", **create({"input": [{"role": "user", "content": [nested(200, key="text")]}]}, 400, "input", "nested_too_deeply")),
    _c("nested_unknown_field", **create({"extra": nested(900)}, 400, "extra", "nested_too_deeply")),
    # -- body size (the unit test's service takes at most 64 KiB) ---------------------------------
    _c("body_too_large", **create({"input": "x" * 100_000}, 413, None, "request_too_large")),
    _c("conversation_body_too_large", body={"metadata": {"k": "x" * 100_000}}, status=413, param=None, code="request_too_large", path="/v1/conversations"),
    # -- context length ------------------------------------------------------------------------------------
    # (the demo model's context is 131,072 tokens: these are ~150,000 and ~160,000)
    _c("context_overflow", **create({"input": "hello " * 150_000}, 400, "input", "context_length_exceeded", e2e=True, engine=True)),
    _c("long_single_word_overflow", **create({"input": "x" * 640_000}, 400, "input", "context_length_exceeded", e2e=True, engine=True)),
    # -- bad ids on every route --------------------------------------------------------------------------
    _c("get_missing_response", body=None, method="GET", path="/v1/responses/resp_missing", status=404, param="response_id", code="response_not_found", e2e=True),
    _c("get_garbage_id", body=None, method="GET", path="/v1/responses/%00%FF..x", status=404, param="response_id", code="response_not_found"),
    _c("get_unicode_id", body=None, method="GET", path="/v1/responses/resp_%F0%9F%92%A9", status=404, param="response_id", code="response_not_found"),
    _c("get_long_id", body=None, method="GET", path="/v1/responses/resp_" + "x" * 4000, status=404, param="response_id", code="response_not_found"),
    _c("get_stream_missing", body=None, method="GET", path="/v1/responses/resp_missing?stream=true", status=404, param="response_id", code="response_not_found", e2e=True),
    _c("get_stream_bad_flag", body=None, method="GET", path="/v1/responses/resp_missing?stream=maybe", status=400, param="stream", code="invalid_type"),
    _c("get_stream_bad_starting_after", body=None, method="GET", path="/v1/responses/resp_missing?stream=true&starting_after=x", status=400, param="starting_after", code="invalid_type"),
    _c("get_include_unknown", body=None, method="GET", path="/v1/responses/resp_missing?include=everything", status=400, param="include", code="invalid_value"),
    _c("delete_missing_response", body=None, method="DELETE", path="/v1/responses/resp_missing", status=404, param="response_id", code="response_not_found", e2e=True),
    _c("cancel_missing_response", body=None, method="POST", path="/v1/responses/resp_missing/cancel", status=404, param="response_id", code="response_not_found", e2e=True),
    _c("put_responses", body=None, method="PUT", path="/v1/responses", status=405, param=None, code="method_not_allowed", e2e=True),
    _c("patch_response", body=None, method="PATCH", path="/v1/responses/resp_missing", status=405, param=None, code="method_not_allowed"),
    _c("put_conversation", body=None, method="PUT", path="/v1/conversations/conv_missing", status=405, param=None, code="method_not_allowed", e2e=True),
    _c("unknown_response_subpath", body=None, method="GET", path="/v1/responses/resp_missing/nothing", status=404, param=None, code="not_found", e2e=True),
    _c("input_items_missing_response", body=None, method="GET", path="/v1/responses/resp_missing/input_items", status=404, param="response_id", code="response_not_found"),
    _c("input_items_bad_limit", body=None, method="GET", path="/v1/responses/resp_missing/input_items?limit=0", status=400, param="limit", code="invalid_value"),
    _c("input_items_limit_not_int", body=None, method="GET", path="/v1/responses/resp_missing/input_items?limit=ten", status=400, param="limit", code="invalid_type"),
    _c("input_items_bad_order", body=None, method="GET", path="/v1/responses/resp_missing/input_items?order=sideways", status=400, param="order", code="invalid_value"),
    _c("input_items_include_unknown", body=None, method="GET", path="/v1/responses/resp_missing/input_items?include=everything", status=400, param="include", code="invalid_value"),
    _c("get_missing_conversation", body=None, method="GET", path="/v1/conversations/conv_missing", status=404, param="conversation_id", code="conversation_not_found", e2e=True),
    _c("update_missing_conversation", body={"metadata": {}}, method="POST", path="/v1/conversations/conv_missing", status=404, param="conversation_id", code="conversation_not_found"),
    _c("delete_missing_conversation", body=None, method="DELETE", path="/v1/conversations/conv_missing", status=404, param="conversation_id", code="conversation_not_found"),
    _c("list_items_missing_conversation", body=None, method="GET", path="/v1/conversations/conv_missing/items", status=404, param="conversation_id", code="conversation_not_found"),
    _c("add_items_missing_conversation", body={"items": [USER]}, method="POST", path="/v1/conversations/conv_missing/items", status=404, param="conversation_id", code="conversation_not_found"),
    _c("get_item_missing_conversation", body=None, method="GET", path="/v1/conversations/conv_missing/items/msg_missing", status=404, param="conversation_id", code="conversation_not_found"),
    _c("delete_item_missing_conversation", body=None, method="DELETE", path="/v1/conversations/conv_missing/items/msg_missing", status=404, param="conversation_id", code="conversation_not_found"),
    # -- bad conversation bodies ---------------------------------------------------------------------------
    _c("conversation_body_not_json", body=b"{nope", path="/v1/conversations", status=400, param=None, code="invalid_json"),
    _c("conversation_body_array", body=b"[]", path="/v1/conversations", status=400, param=None, code="invalid_type"),
    _c("conversation_metadata_string", body={"metadata": "x"}, path="/v1/conversations", status=400, param="metadata", code="invalid_type"),
    _c("conversation_metadata_17_keys", body={"metadata": {f"k{i}": "v" for i in range(17)}}, path="/v1/conversations", status=400, param="metadata", code="object_above_max_properties"),
    _c("conversation_metadata_value_513", body={"metadata": {"k": "v" * 513}}, path="/v1/conversations", status=400, param="metadata.k", code="string_above_max_length"),
    _c("conversation_items_object", body={"items": USER}, path="/v1/conversations", status=400, param="items", code="invalid_type"),
    _c("conversation_items_unknown_type", body={"items": [{"type": "telepathy"}]}, path="/v1/conversations", status=400, param="items[0].type", code="invalid_value"),
    _c("conversation_items_21", body={"items": [USER] * 21}, path="/v1/conversations", status=400, param="items", code="array_above_max_length"),
    _c("conversation_items_missing", body={}, path="/v1/conversations/conv_missing/items", status=400, param="items", code="missing_required_parameter"),
    _c("conversation_items_empty", body={"items": []}, path="/v1/conversations/conv_missing/items", status=400, param="items", code="empty_array"),
]

# Hostile but valid: each must be answered normally (200, a completed or incomplete response).
ACCEPTED: list[Case] = [
    _c("nul_escape_in_text", **create({"input": "a\u0000b"}, 200, None, None, e2e=True)),
    _c("nul_escape_in_instructions", **create({"instructions": "be\u0000nice", "max_output_tokens": 16}, 200, None, None, e2e=True)),
    _c("call_arguments_not_json", **create({"input": [USER, {**CALL, "arguments": "{not json"}, OUTPUT], "tools": [WEATHER]}, 200, None, None, e2e=True)),
    _c("long_single_word", **create({"input": "x" * 20_000}, 200, None, None, e2e=True)),
    _c("null_fields_mean_defaults", **create({"temperature": None, "tools": None, "metadata": None, "stream": None}, 200, None, None)),
    _c("metadata_at_the_limits", **create({"metadata": {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}}, 200, None, None)),
    _c("call_and_output", **create({"input": [USER, CALL, OUTPUT]}, 200, None, None)),
]

NORMAL: dict[str, Any] = {"model": MODEL, "input": "hi", "max_output_tokens": 16}
