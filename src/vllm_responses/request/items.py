"""Items as they are kept and listed: the one place that turns a request's input items into
the ``ResponseItem`` / ``ConversationItem`` shapes (every item with an ``id`` and a
``status``), and stored items back into typed input items for the model.
"""

import typing
from typing import Any

from openai.types.conversations import ConversationItem

from ..common.ids import new_id
from ..events.response import dump_json_dict
from ..store.base import JSON
from .protocol import parse_items

# Id prefixes of items this server names (OpenAI's where it has one).
_PREFIX = {
    "message": "msg",
    "function_call": "fc",
    "function_call_output": "fco",
    "custom_tool_call": "ctc",
    "custom_tool_call_output": "ctco",
    "reasoning": "rs",
    "compaction": "cmp",
    "shell_call": "sh",
    "shell_call_output": "sho",
    "local_shell_call": "lsh",
    "apply_patch_call": "apc",
    "apply_patch_call_output": "apco",
    "tool_search_call": "ts",
    "tool_search_output": "tso",
    "additional_tools": "at",
}


def _status_required() -> frozenset[str]:
    """The item types whose listed shape (``openai``'s ``ConversationItem``) requires a ``status``."""
    members = typing.get_args(typing.get_args(ConversationItem)[0])
    return frozenset(
        typing.get_args(m.model_fields["type"].annotation)[0]
        for m in members
        if "status" in m.model_fields and m.model_fields["status"].is_required()
    )


# Item types whose listed shape carries a ``status`` (sent as null or left out: ``completed``).
_WITH_STATUS = (
    frozenset({"message", "function_call", "function_call_output", "custom_tool_call", "reasoning"})
    | _status_required()
)


def to_stored(item: Any) -> JSON:
    """A typed input item (``openai.types.responses.ResponseInputItem``) in listed shape."""
    data = dump_json_dict(item)
    kind = data.setdefault("type", "message")
    if kind == "message":
        data = _message(data)
    data["id"] = data.get("id") or new_id(_PREFIX.get(kind, "item"))  # also when sent as null
    if kind in _WITH_STATUS and data.get("status") is None:
        data["status"] = "completed"
    return data


def _message(data: JSON) -> JSON:
    """Input messages list as ``ResponseInputMessageItem``; assistant ones as output messages."""
    content = data.get("content")
    if data.get("role") == "assistant":
        if isinstance(content, str):
            content = [{"type": "output_text", "text": content, "annotations": [], "logprobs": []}]
        return {
            "id": data.get("id") or new_id("msg"),
            "type": "message",
            "role": "assistant",
            "status": data.get("status") or "completed",
            "content": content,
        }
    if isinstance(content, str):
        content = [{"type": "input_text", "text": content}]
    out = {"type": "message", "role": data["role"], "content": content}
    if data.get("id"):
        out["id"] = data["id"]
    return out


def to_model_input(items: list[JSON], where: str = "input") -> list[Any]:
    """Stored items as the typed input items the engine renders."""
    return parse_items(items, where)


def sealed_free(item: JSON) -> JSON:
    """An item as it is kept: reasoning holds its plaintext, never a sealed copy."""
    if item.get("type") == "reasoning" and item.get("encrypted_content") is not None:
        item = {k: v for k, v in item.items() if k != "encrypted_content"}
    return item


def stored_response(response: Any) -> JSON:
    """A ``Response`` as it is kept: JSON, reasoning in plaintext (sealed copies are made on read)."""
    data = dump_json_dict(response)
    data["output"] = [sealed_free(item) for item in data.get("output") or []]
    return data


def page(items: list[JSON], after: str | None, limit: int, order: str) -> tuple[list[JSON], bool]:
    """One page of an in-memory list, as the list routes page (``after`` is an item id)."""
    ordered = items if order == "asc" else items[::-1]
    if after is not None:
        ids = [item.get("id") for item in ordered]
        if after not in ids:
            return [], False
        ordered = ordered[ids.index(after) + 1 :]
    return ordered[:limit], len(ordered) > limit
