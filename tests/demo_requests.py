"""Requests that trigger each demo-model scenario, and what a correct answer holds.

Triggers and scripts come from ``vllm_responses.demo_model.scenarios`` (the one source).
"""

import json
from dataclasses import dataclass, field, replace
from typing import Any

from vllm_responses.demo_model.scenarios import expected_content, expected_reasoning, expected_tool_calls, family_of

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

# Hosted tool types, one of each, as clients send them: accepted, echoed, never offered to the model.
HOSTED_TOOLS = [
    {"type": "web_search"},
    {"type": "file_search", "vector_store_ids": ["vs_1"]},
    {"type": "code_interpreter", "container": {"type": "auto"}},
    {"type": "image_generation"},
    {"type": "computer_use_preview", "display_width": 1024, "display_height": 768, "environment": "browser"},
]


# The built-in tools a client runs (issue 22), as clients send them, and the plain function
# each is offered to the model as (the fixed names and argument schemas of the contract).
SHELL_TOOL = {"type": "shell", "environment": {"type": "local"}}
BUILTIN_AS_FUNCTIONS = {
    "shell": {
        "type": "function",
        "name": "shell",
        "description": "Run shell commands.",
        "parameters": {
            "type": "object",
            "properties": {
                "commands": {"type": "array", "items": {"type": "string"}},
                "timeout_ms": {"type": "integer"},
                "max_output_length": {"type": "integer"},
            },
            "required": ["commands"],
        },
    },
    "local_shell": {
        "type": "function",
        "name": "local_shell",
        "description": "Run a command on the local machine.",
        "parameters": {
            "type": "object",
            "properties": {
                "command": {"type": "array", "items": {"type": "string"}},
                "timeout_ms": {"type": "integer"},
                "working_directory": {"type": "string"},
                "env": {"type": "object", "additionalProperties": {"type": "string"}},
                "user": {"type": "string"},
            },
            "required": ["command"],
        },
    },
    "apply_patch": {
        "type": "function",
        "name": "apply_patch",
        "description": "Create, update or delete a file with a V4A diff.",
        "parameters": {
            "type": "object",
            "properties": {
                "operation": {
                    "type": "object",
                    "properties": {
                        "type": {"type": "string", "enum": ["create_file", "update_file", "delete_file"]},
                        "path": {"type": "string"},
                        "diff": {"type": "string"},
                    },
                    "required": ["type", "path"],
                }
            },
            "required": ["operation"],
        },
    },
    "tool_search": {
        "type": "function",
        "name": "tool_search",
        "description": "Search the tools that are not loaded yet.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    },
}

#: Scenarios in which the model calls a built-in tool (the Case offers it by its built-in type).
BUILTIN_SCENARIOS = frozenset({"shell_tests", "create_file", "update_file", "local_shell_call", "tool_search"})

# Tools the server runs (issue 23), as the chat functions the server offers the model: the
# tool `add` of an MCP server labelled `tools` (<label>__<tool>), web search, code interpreter.
HOSTED_AS_FUNCTIONS = {
    "tools__add": {
        "type": "function",
        "name": "tools__add",
        "description": "Add two numbers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
    "web_search": {
        "type": "function",
        "name": "web_search",
        "description": "Search the web.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    },
    "code_interpreter": {
        "type": "function",
        "name": "code_interpreter",
        "description": "Run Python code.",
        "parameters": {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]},
    },
}

#: Scenarios in which the model calls a tool the server runs (their Cases offer the plain
#: functions of HOSTED_AS_FUNCTIONS: ordinary function-call scenarios).
HOSTED_SCENARIOS = frozenset({"mcp_add", "web_search", "run_python"})


@dataclass(frozen=True)
class Case:
    scenario: str
    body: dict[str, Any]
    max_output_tokens: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    family: str | None = None  # the demo model's family (default: qwen3 + hermes)
    call_kind: str = "function_call"  # the output item type of the scenario's calls

    def request(self, **overrides: Any) -> dict[str, Any]:
        body = {"model": "demo", **self.body, **overrides}
        if self.max_output_tokens is not None:
            body.setdefault("max_output_tokens", self.max_output_tokens)
        return body

    @property
    def reasoning(self) -> str:
        """The reasoning item's text; "" when there is none (the parser's reasoning is empty
        or only whitespace, which opens no item)."""
        text = expected_reasoning(self.scenario, self.family)
        return text if text.strip() else ""

    @property
    def content(self) -> str | None:
        """The message's text: the answer, or text before the calls (``None``: no message)."""
        text = expected_content(self.scenario, self.max_output_tokens, self.family)
        return text if text is None or text.strip() or not self.tool_calls else None

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        return expected_tool_calls(self.scenario, self.family)

    @property
    def incomplete(self) -> bool:
        return family_of(self.family).scenario(self.scenario).endless

    def as_plain_functions(self) -> "Case":
        """The same request with each built-in tool replaced by the plain function of the same
        name and schema: the model's call comes back as a ``function_call``."""
        tools = [BUILTIN_AS_FUNCTIONS.get(t["type"], t) for t in self.body.get("tools", [])]
        tools = [t for t in tools if not t.get("defer_loading")]
        return replace(self, body={**self.body, "tools": tools}, call_kind="function_call")


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
        Case("apply_patch", {"input": "Please apply a patch.", "tools": [APPLY_PATCH_TOOL, {"type": "web_search"}]}, call_kind="custom_tool_call"),
        Case("namespace_call", {"input": "Who is customer 42?", "tools": [CRM_NAMESPACE, {"type": "tool_search"}]}),
        # Real between-item shapes: `</think>\n\n<tool_call>`, text before a call, a newline after it.
        Case("think_then_call", {"input": "Forecast for Oslo?", "tools": [WEATHER_TOOL]}),
        Case("text_then_call", {"input": "Do I need an umbrella in Bergen?", "tools": [WEATHER_TOOL]}),
        Case("call_then_newline", {"input": "Rain in Stockholm tomorrow?", "tools": [WEATHER_TOOL]}),
        # Built-in tools the client runs, offered by their built-in types (issue 22).
        Case("shell_tests", {"input": "Please run the tests.", "tools": [SHELL_TOOL]}, call_kind="shell_call"),
        Case("create_file", {"input": "Please create a file with my shopping list.", "tools": [{"type": "apply_patch"}]}, call_kind="apply_patch_call"),
        Case("update_file", {"input": "Now update the file: pears, not apples.", "tools": [{"type": "apply_patch"}]}, call_kind="apply_patch_call"),
        Case("local_shell_call", {"input": "Please list the directory.", "tools": [{"type": "local_shell"}]}, call_kind="local_shell_call"),
        # A client-run search ends the response with the call (a server-run one goes on: tests/e2e/test_client_run_tools.py).
        Case("tool_search", {"input": "Please find the weather tool.", "tools": [{"type": "tool_search", "execution": "client"}, {**WEATHER_TOOL, "defer_loading": True}]}, call_kind="tool_search_call"),
        # Tools the server runs (issue 23), offered for now as the plain functions the server
        # offers them as: the call comes back as a function_call.
        Case("mcp_add", {"input": "Please add 2 and 3.", "tools": [HOSTED_AS_FUNCTIONS["tools__add"]]}),
        Case("web_search", {"input": "Please search the web for the Responses API.", "tools": [HOSTED_AS_FUNCTIONS["web_search"]]}),
        Case("run_python", {"input": "Please run python to multiply 6 by 7.", "tools": [HOSTED_AS_FUNCTIONS["code_interpreter"]]}),
    ]
}

#: Output item types of a model's tool calls.
CALL_KINDS = ("function_call", "custom_tool_call", "shell_call", "local_shell_call", "apply_patch_call", "tool_search_call")


def check_output(case: Case, output: list[dict[str, Any]]) -> None:
    """The final ``output`` items hold exactly the scenario's script."""
    kinds = [item["type"] for item in output]
    expected_kinds = (
        (["reasoning"] if case.reasoning else [])
        + (["message"] if case.content is not None else [])
        + [case.call_kind] * len(case.tool_calls)
    )
    assert kinds == expected_kinds, (kinds, output)
    if case.reasoning:
        assert output[0]["content"] == [{"type": "reasoning_text", "text": case.reasoning}]
    calls = [item for item in output if item["type"] in CALL_KINDS]
    assert [_as_chat_call(c) for c in calls] == case.tool_calls
    assert len({c["call_id"] for c in calls}) == len(calls)
    assert all(c["status"] == "completed" for c in calls)
    messages = [item for item in output if item["type"] == "message"]
    if messages:
        assert messages[0]["content"][0]["text"] == case.content
        assert messages[0]["status"] == ("incomplete" if case.incomplete else "completed")


def _as_chat_call(item: dict[str, Any]) -> dict[str, Any]:
    """A Responses call item as the flat chat call the demo model scripts (a built-in tool's
    typed item as the function call the model wrote: its fixed name and arguments)."""
    kind = item["type"]
    if kind == "custom_tool_call":
        return {"name": item["name"], "arguments": {"input": item["input"]}}
    if kind == "shell_call":
        action = item["action"]
        extra = {k: action[k] for k in ("timeout_ms", "max_output_length") if action.get(k) is not None}
        return {"name": "shell", "arguments": {"commands": action["commands"], **extra}}
    if kind == "local_shell_call":
        action = {k: v for k, v in item["action"].items() if k != "type" and v not in (None, {})}
        return {"name": "local_shell", "arguments": action}
    if kind == "apply_patch_call":
        return {"name": "apply_patch", "arguments": {"operation": item["operation"]}}
    if kind == "tool_search_call":
        return {"name": "tool_search", "arguments": item["arguments"]}
    name = f"{item['namespace']}__{item['name']}" if item.get("namespace") else item["name"]
    return {"name": name, "arguments": json.loads(item["arguments"])}
