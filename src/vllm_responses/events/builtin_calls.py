"""The items the model's calls of the built-in tools become, and back.

The model calls a built-in tool (``shell``, ``local_shell``, ``apply_patch``, ``tool_search``)
as a chat function with a fixed schema (:mod:`..request.builtins`); :func:`call_item` makes its
arguments the typed item OpenAI's API gives (``shell_call``, ...), and
:func:`replayed_arguments` makes a call item sent back as input the arguments the model wrote:
one translation, both ways.
"""

import json
from typing import Any

from ..common.ids import new_id

# Id prefixes of the items, by built-in tool type.
ID_PREFIX = {"shell": "sh", "local_shell": "lsh", "apply_patch": "apc", "tool_search": "ts"}


def _object(arguments: str) -> dict[str, Any] | None:
    try:
        value = json.loads(arguments)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _strings(value: Any) -> list[str] | None:
    if isinstance(value, str):  # a model that wrote one command as a string
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def call_item(
    kind: str, item_id: str, call_id: str, arguments: str, status: str, **extra: Any
) -> dict[str, Any] | None:
    """The item (JSON) the model's call of built-in ``kind`` becomes; ``None`` when its arguments
    do not fit the schema (the caller hands the call on as the ``function_call`` it was, so that
    nothing is lost and nothing a client would run is guessed). ``extra``: ``environment`` for
    ``shell``, ``execution`` for ``tool_search``."""
    args = _object(arguments)
    if args is None:
        return None
    base = {"id": item_id, "call_id": call_id, "status": status}
    if kind == "shell":
        commands = _strings(args.get("commands"))
        if commands is None:
            return None
        action = {
            "commands": commands,
            "timeout_ms": _int(args.get("timeout_ms")),
            "max_output_length": _int(args.get("max_output_length")),
        }
        return {"type": "shell_call", **base, "action": action, "environment": extra.get("environment")}
    if kind == "local_shell":
        command = _strings(args.get("command"))
        env = args.get("env") or {}
        if command is None or not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            return None
        action = {
            "type": "exec",
            "command": command,
            "env": env,
            "timeout_ms": _int(args.get("timeout_ms")),
            "user": args.get("user") if isinstance(args.get("user"), str) else None,
            "working_directory": args.get("working_directory")
            if isinstance(args.get("working_directory"), str)
            else None,
        }
        return {"type": "local_shell_call", **base, "action": action}
    if kind == "apply_patch":
        operation = args.get("operation", args)  # a model that left out the wrapper
        if not isinstance(operation, dict) or not isinstance(operation.get("path"), str):
            return None
        op, diff = operation.get("type"), operation.get("diff")
        if op == "delete_file":
            return {"type": "apply_patch_call", **base, "operation": {"type": op, "path": operation["path"]}}
        if op not in ("create_file", "update_file") or not isinstance(diff, str):
            return None
        # OpenAI's apply_patch_call has no ``incomplete``: a call cut short stays ``in_progress``.
        status = "completed" if status == "completed" else "in_progress"
        item = {"type": "apply_patch_call", **base, "status": status}
        return {**item, "operation": {"type": op, "path": operation["path"], "diff": diff}}
    if kind == "tool_search":
        return {
            "type": "tool_search_call",
            **base,
            "arguments": args,
            "execution": extra.get("execution") or "server",
        }
    raise ValueError(f"not a built-in tool: {kind}")


def replayed_arguments(item: Any) -> tuple[str, str, str]:
    """A built-in call item (typed input item) as the chat call it stands for:
    (call id, function name, arguments JSON), the arguments as the model wrote them."""
    kind = item.type
    call_id = getattr(item, "call_id", None) or item.id
    if kind == "shell_call":
        action = item.action
        args: dict[str, Any] = {"commands": list(action.commands)}
        for key in ("timeout_ms", "max_output_length"):
            if getattr(action, key, None) is not None:
                args[key] = getattr(action, key)
        return call_id, "shell", dumps(args)
    if kind == "local_shell_call":
        action = item.action
        args = {"command": list(action.command)}
        for key in ("timeout_ms", "working_directory", "env", "user"):
            if getattr(action, key, None):
                args[key] = getattr(action, key)
        return call_id, "local_shell", dumps(args)
    if kind == "apply_patch_call":
        op = plain(item.operation)  # in the order the schema asks for it (the prompt then extends the last one)
        operation = {"type": op.get("type"), "path": op.get("path"), **({"diff": op["diff"]} if "diff" in op else {})}
        return call_id, "apply_patch", dumps({"operation": operation})
    if kind == "tool_search_call":
        return call_id, "tool_search", dumps(plain(item.arguments))
    raise ValueError(f"not a built-in call: {kind}")


def search_output(call_id: str | None, tools: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``tool_search_output`` with which a server-run search answers the call ``call_id``."""
    return {
        "type": "tool_search_output",
        "id": new_id("tso"),
        "call_id": call_id,
        "execution": "server",
        "status": "completed",
        "tools": tools,
    }


def plain(value: Any) -> Any:
    """A typed value (an ``openai`` model) as its JSON, null fields left out; anything else as it is."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", exclude_none=True)
    return value


def dumps(value: Any) -> str:
    """JSON text as a model writes it (non-ASCII kept)."""
    return json.dumps(value, ensure_ascii=False)
