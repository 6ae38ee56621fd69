"""Requests that trigger each demo-model scenario, and what a correct answer holds.

Triggers and scripts come from ``vllm_responses.demo_model.scenarios`` (the one source).
"""

import json
from dataclasses import dataclass, field
from typing import Any

from vllm_responses.demo_model.scenarios import SCENARIOS, expected_content, expected_reasoning, expected_tool_calls

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
EXEC_TOOL = {
    "type": "function",
    "name": "exec_command",
    "description": "Run a shell command.",
    "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]},
}


@dataclass(frozen=True)
class Case:
    scenario: str
    body: dict[str, Any]
    max_output_tokens: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def request(self, **overrides: Any) -> dict[str, Any]:
        body = {"model": "demo", **self.body, **overrides}
        if self.max_output_tokens is not None:
            body.setdefault("max_output_tokens", self.max_output_tokens)
        return body

    @property
    def reasoning(self) -> str:
        return expected_reasoning(self.scenario)

    @property
    def content(self) -> str | None:
        return expected_content(self.scenario, self.max_output_tokens)

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        return expected_tool_calls(self.scenario)

    @property
    def incomplete(self) -> bool:
        return SCENARIOS[self.scenario].endless


APPLY_PATCH_TOOL = {
    "type": "custom",
    "name": "apply_patch",
    "description": "Edit files with a patch.",
    "format": {"type": "grammar", "syntax": "lark", "definition": "start: begin_patch hunk+ end_patch\nbegin_patch: \"*** Begin Patch\" LF\nend_patch: \"*** End Patch\" LF?\nhunk: /(.|\\n)+?/\nLF: /\\n/"},
}
CRM_NAMESPACE = {
    "type": "namespace",
    "name": "crm",
    "description": "Customer records.",
    "tools": [
        {
            "type": "function",
            "name": "lookup_customer",
            "description": "Find a customer by id.",
            "parameters": {"type": "object", "properties": {"customer_id": {"type": "string"}}, "required": ["customer_id"]},
        }
    ],
}

AFTER_TOOL_INPUT = [
    {"type": "message", "role": "user", "content": "What is the weather in Paris?"},
    {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": json.dumps({"city": "Paris"})},
    {"type": "function_call_output", "call_id": "call_1", "output": "Sunny, 22 C"},
]

CASES = {
    c.scenario: c
    for c in [
        Case("default", {"input": "Hello there!"}),
        Case("no_reasoning", {"input": "Answer with no reasoning, please."}),
        Case("json", {"input": "Reply in JSON."}),
        Case("endless", {"input": "Count forever."}, max_output_tokens=12),
        Case("weather_call", {"input": "What is the weather in Paris?", "tools": [WEATHER_TOOL]}),
        Case("two_calls", {"input": "What is the weather in Paris and London?", "tools": [WEATHER_TOOL]}),
        Case("exec_command", {"input": "Please list files in this folder.", "tools": [EXEC_TOOL]}),
        Case("after_tool", {"input": AFTER_TOOL_INPUT, "tools": [WEATHER_TOOL]}),
        Case("apply_patch", {"input": "Please apply a patch.", "tools": [APPLY_PATCH_TOOL, {"type": "web_search"}]}),
        Case("namespace_call", {"input": "Who is customer 42?", "tools": [CRM_NAMESPACE, {"type": "tool_search"}]}),
    ]
}


def check_output(case: Case, output: list[dict[str, Any]]) -> None:
    """The final ``output`` items hold exactly the scenario's script."""
    kinds = [item["type"] for item in output]
    call_kind = "custom_tool_call" if case.scenario == "apply_patch" else "function_call"
    expected_kinds = (["reasoning"] if case.reasoning else []) + (
        [call_kind] * len(case.tool_calls) if case.tool_calls else ["message"]
    )
    assert kinds == expected_kinds, (kinds, output)
    if case.reasoning:
        assert output[0]["content"] == [{"type": "reasoning_text", "text": case.reasoning}]
    calls = [item for item in output if item["type"] in ("function_call", "custom_tool_call")]
    assert [_as_chat_call(c) for c in calls] == case.tool_calls
    assert len({c["call_id"] for c in calls}) == len(calls)
    assert all(c["status"] == "completed" for c in calls)
    messages = [item for item in output if item["type"] == "message"]
    if messages:
        assert messages[0]["content"][0]["text"] == case.content
        assert messages[0]["status"] == ("incomplete" if case.incomplete else "completed")


def _as_chat_call(item: dict[str, Any]) -> dict[str, Any]:
    """A Responses call item as the flat chat call the demo model scripts."""
    if item["type"] == "custom_tool_call":
        return {"name": item["name"], "arguments": {"input": item["input"]}}
    name = f"{item['namespace']}__{item['name']}" if item.get("namespace") else item["name"]
    return {"name": name, "arguments": json.loads(item["arguments"])}
