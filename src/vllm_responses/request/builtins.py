"""The built-in tools a client runs (``shell``, ``local_shell``, ``apply_patch``, ``tool_search``).

The model is shown each as a chat function with a fixed schema of ours (documented in
docs/events.md#built-in-tools), so that every chat template and tool parser can offer and read
it; the model's call comes back to the client as the typed item OpenAI's API gives
(``shell_call``, ``local_shell_call``, ``apply_patch_call``, ``tool_search_call``), and a
replayed call or output goes back to the model as the chat tool call and tool message it was.

Here: each built-in's chat function (:func:`function`) and the text an output item shows the
model (:func:`output_text`). The item a call becomes, and the arguments a replayed call item
stands for, are one translation both ways: :mod:`..events.builtin_calls`.
"""

from dataclasses import dataclass
from typing import Any

from ..events.builtin_calls import dumps, plain, replayed_arguments

__all__ = ["BUILTINS", "CALL_TYPES", "OUTPUT_TYPES", "replayed_arguments"]


@dataclass(frozen=True)
class Builtin:
    """One built-in tool type: the chat function the model sees and the item its call becomes."""

    type: str
    description: str
    parameters: dict[str, Any]
    call_type: str
    output_type: str

    @property
    def name(self) -> str:
        """The chat function's name: the tool's type (a function of that name cannot be offered beside it)."""
        return self.type


_SHELL = Builtin(
    "shell",
    "Run shell commands on the user's machine. The commands run in order; each one's stdout, stderr and "
    "exit code come back.",
    {
        "type": "object",
        "properties": {
            "commands": {"type": "array", "items": {"type": "string"}, "description": "The commands, run in order."},
            "timeout_ms": {"type": "integer", "description": "A time limit for the commands, in milliseconds."},
            "max_output_length": {"type": "integer", "description": "The most characters of output to return."},
        },
        "required": ["commands"],
    },
    "shell_call",
    "shell_call_output",
)
_LOCAL_SHELL = Builtin(
    "local_shell",
    "Run one command on the user's machine (the program and its arguments, as a list).",
    {
        "type": "object",
        "properties": {
            "command": {"type": "array", "items": {"type": "string"}, "description": "The program and its arguments."},
            "timeout_ms": {"type": "integer", "description": "A time limit, in milliseconds."},
            "working_directory": {"type": "string", "description": "Where to run the command."},
            "env": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Variables to set."},
            "user": {"type": "string", "description": "The user to run the command as."},
        },
        "required": ["command"],
    },
    "local_shell_call",
    "local_shell_call_output",
)
_APPLY_PATCH = Builtin(
    "apply_patch",
    "Create, update or delete one file. `diff` is in the V4A format: for create_file, every line of the new "
    "file prefixed with '+'; for update_file, hunks of context lines (prefixed ' '), removed lines ('-') and "
    "added lines ('+'), each hunk after a line '@@' or '@@ <a line of the file to anchor it>'. delete_file "
    "takes no diff.",
    {
        "type": "object",
        "properties": {
            "operation": {
                "type": "object",
                "properties": {
                    "type": {"type": "string", "enum": ["create_file", "update_file", "delete_file"]},
                    "path": {"type": "string", "description": "The file's path."},
                    "diff": {"type": "string", "description": "The V4A diff (not for delete_file)."},
                },
                "required": ["type", "path"],
            }
        },
        "required": ["operation"],
    },
    "apply_patch_call",
    "apply_patch_call_output",
)
_TOOL_SEARCH = Builtin(
    "tool_search",
    "Search the tools that are available but not loaded yet; the tools found are loaded for you to call.",
    {
        "type": "object",
        "properties": {"query": {"type": "string", "description": "What the tool you need does."}},
        "required": ["query"],
    },
    "tool_search_call",
    "tool_search_output",
)

BUILTINS: dict[str, Builtin] = {b.type: b for b in (_SHELL, _LOCAL_SHELL, _APPLY_PATCH, _TOOL_SEARCH)}

# The hosted tools the server runs through its operator's tool servers (``core/hosted.py``),
# each shown to the model as a function; the type's aliases map to the one function.
WEB_SEARCH_TYPES = frozenset(
    {"web_search", "web_search_2025_08_26", "web_search_preview", "web_search_preview_2025_03_11"}
)


def _function(name: str, description: str, **properties: str) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "parameters": {
            "type": "object",
            "properties": {key: {"type": "string", "description": text} for key, text in properties.items()},
            "required": list(properties),
        },
    }


# The functions each served kind is offered as: web search's three actions (``search``,
# ``open_page``, ``find_in_page``, as ``web_search_call.action`` names them), and running code.
SERVER_FUNCTIONS: dict[str, list[dict[str, Any]]] = {
    "web_search": [
        _function(
            "web_search",
            "Search the web. The results (title, url, snippet) come back to you.",
            query="What to search for.",
        ),
        _function("open_page", "Open a web page. Its text comes back to you.", url="The page's URL."),
        _function(
            "find_in_page",
            "Find text in a web page. The lines that hold it come back to you.",
            url="The page's URL.",
            pattern="The text to find.",
        ),
    ],
    "code_interpreter": [
        _function(
            "code_interpreter",
            "Run Python code. What it prints (stdout and stderr) comes back to you.",
            code="The Python code to run.",
        )
    ],
}

# Which of them this server runs (its operator registered a search / python tool server): set at start-up.
SERVED: set[str] = set()


def served_kind(tool_type: str) -> str | None:
    """The function (``web_search``, ``code_interpreter``) a hosted tool type is served as, if it is."""
    kind = "web_search" if tool_type in WEB_SEARCH_TYPES else tool_type
    return kind if kind in SERVER_FUNCTIONS and kind in SERVED else None


# Item types a built-in's call or output is (what ``chat_messages`` renders through this module).
CALL_TYPES = frozenset(b.call_type for b in BUILTINS.values())
OUTPUT_TYPES = frozenset(b.output_type for b in BUILTINS.values())


def offered(tool: Any) -> bool:
    """Whether a built-in tool is offered: all four, except a ``shell`` whose environment is a
    container (OpenAI runs those on its own machines; this server has none)."""
    if tool.type != "shell":
        return tool.type in BUILTINS
    environment = getattr(tool, "environment", None)
    return environment is None or environment.type == "local"


def function(tool: Any) -> dict[str, Any]:
    """The chat function a built-in tool is shown as (a client-run ``tool_search`` may bring its
    own ``description`` and ``parameters``)."""
    builtin = BUILTINS[tool.type]
    fn = {"name": builtin.name, "description": builtin.description, "parameters": builtin.parameters}
    if tool.type == "tool_search" and execution(tool) == "client":
        if getattr(tool, "description", None):
            fn["description"] = tool.description
        if isinstance(getattr(tool, "parameters", None), dict):
            fn["parameters"] = tool.parameters
    return fn


def execution(tool: Any) -> str:
    """Who runs a ``tool_search``: ``server`` unless the tool says ``client`` (OpenAI's default)."""
    return "client" if getattr(tool, "execution", None) == "client" else "server"


def output_call_id(item: Any) -> str:
    """The call an output item answers (``local_shell_call_output`` names it by its ``id``)."""
    if item.type == "local_shell_call_output":
        return item.id
    return getattr(item, "call_id", None) or getattr(item, "id", None) or ""


def output_text(item: Any) -> str:
    """What an output item shows the model, as the tool message's text."""
    kind = item.type
    if kind == "shell_call_output":
        blocks = []
        for out in item.output:
            outcome = plain(out.outcome)
            if outcome.get("type") == "timeout":
                end = "timed out"
            else:
                end = f"exit code {outcome.get('exit_code')}"
            blocks.append(f"stdout:\n{out.stdout}\nstderr:\n{out.stderr}\n{end}")
        return "\n\n".join(blocks)
    if kind == "local_shell_call_output":
        return item.output
    if kind == "apply_patch_call_output":
        text = f"status: {item.status}"
        return f"{text}\n{item.output}" if item.output else text
    if kind == "tool_search_output":
        return "Loaded tools: " + dumps([_tool_summary(tool) for tool in item.tools])
    raise ValueError(f"not a built-in output: {kind}")


def _tool_summary(tool: Any) -> dict[str, Any]:
    data = plain(tool)
    summary = {k: data[k] for k in ("type", "name", "description") if data.get(k)}
    if data.get("type") == "namespace":
        summary["tools"] = [t.get("name") for t in data.get("tools") or []]
    return summary
