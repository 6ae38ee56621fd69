"""Responses input items and tools, as the chat messages and tools a chat template renders.

Pure translation, no engine: the adapter hands the result to vLLM's chat-template renderer.
Prior tool calls become assistant ``tool_calls``; their outputs become ``tool`` messages, so
a model's template sees a multi-turn tool conversation in its native form.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from ..common.errors import invalid_request
from . import builtins, files, mcp_filters

# A custom (freeform) tool is shown to the model as a function taking one string.
CUSTOM_TOOL_INPUT = "input"
_CUSTOM_TOOL_PARAMETERS = {
    "type": "object",
    "properties": {CUSTOM_TOOL_INPUT: {"type": "string", "description": "The raw input for the tool."}},
    "required": [CUSTOM_TOOL_INPUT],
}


@dataclass(frozen=True)
class ToolTarget:
    """What a chat function name the model calls stands for in the Responses API: a function
    (in a ``namespace``), a ``custom`` tool, or a ``builtin`` tool type (:mod:`.builtins`, with
    the ``execution`` of a ``tool_search`` and the ``environment`` of a ``shell``)."""

    name: str
    namespace: str | None = None
    custom: bool = False
    builtin: str | None = None
    execution: str | None = None
    environment: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    server_label: str | None = None  # an ``mcp`` tool's server (``builtin`` is then ``mcp``)


def chat_name(name: str, namespace: str | None) -> str:
    """The one flat function name a chat template sees for a (namespace, name) pair."""
    if not namespace:
        return name
    return f"{namespace}{'' if namespace.endswith('__') else '__'}{name}"


@dataclass
class ChatTools:
    """Tools as chat-completions function tools, and what each chat name maps back to.

    ``deferred``: tools with ``defer_loading`` that no ``tool_search_output`` (nor
    ``additional_tools`` item) has loaded yet, as (namespace, tool): not shown to the model; a
    server-run tool search looks among them (:mod:`..core.tool_search`)."""

    tools: list[dict[str, Any]] = field(default_factory=list)
    targets: dict[str, ToolTarget] = field(default_factory=dict)
    deferred: list[tuple[Any, Any]] = field(default_factory=list)

    def add(self, tool: Any, namespace: str | None = None) -> None:
        custom = tool.type == "custom"
        name = chat_name(tool.name, namespace)
        if name in self.targets:  # loaded twice (a search, then the same tool again): one offer
            return
        fn: dict[str, Any] = {
            "name": name,
            "parameters": _CUSTOM_TOOL_PARAMETERS
            if custom
            else (tool.parameters or {"type": "object", "properties": {}}),
        }
        if tool.description:
            fn["description"] = tool.description
        if not custom and tool.strict is not None:  # decided in .protocol; vLLM enforces it
            fn["strict"] = tool.strict
        self.tools.append({"type": "function", "function": fn})
        self.targets[name] = ToolTarget(tool.name, namespace, custom)

    def add_builtin(self, tool: Any) -> None:
        fn = builtins.function(tool)
        if fn["name"] in self.targets:
            return
        self.tools.append({"type": "function", "function": fn})
        environment = getattr(tool, "environment", None)
        self.targets[fn["name"]] = ToolTarget(
            fn["name"],
            builtin=tool.type,
            execution=builtins.execution(tool) if tool.type == "tool_search" else None,
            environment=environment.model_dump(mode="json", exclude_none=True) if environment is not None else None,
        )

    def add_served(self, kind: str) -> None:
        """A hosted tool the server runs through its operator's tool server (``web_search``, ``code_interpreter``)."""
        for fn in builtins.SERVER_FUNCTIONS[kind]:
            if fn["name"] not in self.targets:
                self.tools.append({"type": "function", "function": fn})
                self.targets[fn["name"]] = ToolTarget(fn["name"], builtin=kind)

    def add_mcp(self, label: str, tool: Any) -> None:
        """A tool an ``mcp_list_tools`` item lists for the server ``label`` (the server runs its calls)."""
        name = chat_name(tool.name, label)
        if name in self.targets:
            return
        fn: dict[str, Any] = {"name": name, "parameters": tool.input_schema or {"type": "object", "properties": {}}}
        if tool.description:
            fn["description"] = tool.description
        self.tools.append({"type": "function", "function": fn})
        self.targets[name] = ToolTarget(tool.name, builtin="mcp", server_label=label)

    def only(self, allowed: list[dict[str, Any]]) -> "ChatTools":
        """The tools a ``tool_choice: {"type": "allowed_tools", ...}`` leaves the model.

        Entries name function and custom tools (``namespace`` for a namespaced one) and built-in
        tools by type; hosted tool types are never offered here, so entries for them restrict
        nothing further.
        """
        names: set[str] = set()
        for i, entry in enumerate(allowed):
            kind = entry.get("type")
            if kind == "mcp":  # every listed tool of that server, or the one it names
                label, tool_name = entry.get("server_label"), entry.get("name")
                names |= {n for n, t in self.targets.items() if t.server_label == label and tool_name in (None, t.name)}
                continue
            if kind in builtins.BUILTINS:
                if kind not in self.targets:
                    raise invalid_request(
                        f"Invalid value for 'tool_choice.tools[{i}]': no '{kind}' tool in 'tools'.",
                        param=f"tool_choice.tools[{i}]",
                    )
                names.add(kind)
                continue
            if kind not in ("function", "custom"):
                continue
            for key in ("name", "namespace"):
                if not isinstance(entry.get(key, ""), (str, type(None))):
                    raise invalid_request(
                        f"Invalid type for 'tool_choice.tools[{i}].{key}': expected a string.",
                        param=f"tool_choice.tools[{i}].{key}",
                        code="invalid_type",
                    )
            name = chat_name(entry.get("name") or "", entry.get("namespace"))
            if name not in self.targets:
                raise invalid_request(
                    f"Invalid value for 'tool_choice.tools[{i}]': no tool named '{entry.get('name')}' in 'tools'.",
                    param=f"tool_choice.tools[{i}]",
                )
            names.add(name)
        out = ChatTools()
        out.tools = [tool for tool in self.tools if tool["function"]["name"] in names]
        out.targets = {name: target for name, target in self.targets.items() if name in names}
        out.deferred = self.deferred
        return out

    def target(self, chat_function_name: str) -> ToolTarget:
        return self.targets.get(chat_function_name) or ToolTarget(chat_function_name)


# The tool types the model may be offered (a namespace's own tools are function and custom
# tools; a ``shell`` only with a local environment, :func:`.builtins.offered`); every other type
# is accepted and named as not offered (``ResponsesRequest.unoffered_tool_types``).
OFFERED_TOOL_TYPES = frozenset({"function", "custom", "namespace", "mcp", *builtins.BUILTINS})


# Item types that are a tool call of the model, and those that answer one (:func:`answered_call`).
CALL_TYPES = frozenset({"function_call", "custom_tool_call", *builtins.CALL_TYPES})
OUTPUT_TYPES = frozenset({"function_call_output", "custom_tool_call_output", *builtins.OUTPUT_TYPES})


def answered_call(item: Any) -> str | None:
    """The ``call_id`` an output item answers."""
    if item.type in builtins.OUTPUT_TYPES:
        return builtins.output_call_id(item) or None
    return getattr(item, "call_id", None)


def is_offered(tool: Any) -> bool:
    kind = getattr(tool, "type", None)
    if builtins.served_kind(kind or "") is not None:
        return True
    return kind in OFFERED_TOOL_TYPES and (kind not in builtins.BUILTINS or builtins.offered(tool))


def _deferred(tool: Any) -> bool:
    return bool(getattr(tool, "defer_loading", None))


def listed_servers(items: Sequence[Any]) -> dict[str, Any]:
    """The latest ``mcp_list_tools`` item of each server label among ``items`` (a listing that
    failed lists nothing: its server is listed again)."""
    return {
        item.server_label: item
        for item in items
        if getattr(item, "type", None) == "mcp_list_tools" and not getattr(item, "error", None)
    }


def _mcp_tools(tool: Any, items: Sequence[Any]) -> list[Any]:
    """What an ``mcp`` tool offers the model: its server's listed tools, less those its
    ``allowed_tools`` (names, or a filter by names and ``readOnlyHint``) leaves out."""
    listing = listed_servers(items).get(tool.server_label)
    return [] if listing is None else mcp_filters.allowed(list(listing.tools), tool.allowed_tools)


def loaded_tools(items: Sequence[Any]) -> list[Any]:
    """The tools that ``tool_search_output`` and ``additional_tools`` items among ``items`` load."""
    return [
        tool
        for item in items
        if getattr(item, "type", None) in ("tool_search_output", "additional_tools")
        for tool in getattr(item, "tools", None) or []
    ]


def chat_tools(tools: Sequence[Any], items: Sequence[Any] = (), include_deferred: bool = False) -> ChatTools:
    """The tools the model is offered: function and custom tools (also inside namespaces) and
    the built-ins, less those deferred (``defer_loading``) unless ``items`` load them or
    ``include_deferred`` (checking names a request may choose); other types are not offered."""
    out = ChatTools()
    hidden: list[tuple[Any, Any]] = []
    for tools_, loaded in ((loaded_tools(items), True), (tools, False)):  # a loaded definition first
        for tool in tools_:
            kind = getattr(tool, "type", None)
            served = builtins.served_kind(kind or "")
            if served is not None and not loaded:
                out.add_served(served)
                continue
            if kind == "mcp" and not loaded:
                for listed in _mcp_tools(tool, items):
                    out.add_mcp(tool.server_label, listed)
                continue
            inner_tools = [(tool, inner) for inner in tool.tools] if kind == "namespace" else [(None, tool)]
            if kind in builtins.BUILTINS:
                if builtins.offered(tool):
                    out.add_builtin(tool)
                continue
            for namespace, inner in inner_tools:
                if getattr(inner, "type", None) not in ("function", "custom"):
                    continue
                if _deferred(inner) and not loaded and not include_deferred:
                    hidden.append((namespace, inner))
                else:
                    out.add(inner, namespace=namespace.name if namespace is not None else None)
    out.deferred = [(ns, t) for ns, t in hidden if chat_name(t.name, ns.name if ns else None) not in out.targets]
    return out


class _FileText:
    """An ``input_file`` part whose text :func:`inline_files` already extracted."""

    type = "file_text"

    def __init__(self, text: str) -> None:
        self.text = text


def _image_part(part: Any, param: str, accepts_images: bool) -> dict[str, Any]:
    """An ``input_image`` part as the chat ``image_url`` part vLLM's multimodal path loads.

    ``detail`` is accepted and not passed on: the model's own processor decides the resolution.
    """
    url = getattr(part, "image_url", None)
    if not url and getattr(part, "file_id", None):
        raise invalid_request(
            "Images by `file_id` are not supported: this server has no Files API. Send the image as `image_url`: "
            "an http(s) URL or a base64 `data:` URL.",
            param=f"{param}.file_id",
            code="unsupported_value",
        )
    if not url:
        raise invalid_request(
            "An `input_image` part needs an `image_url`: an http(s) URL or a base64 `data:` URL.",
            param=f"{param}.image_url",
            code="missing_required_parameter",
        )
    if not accepts_images:
        raise invalid_request(
            "This model does not accept images: it is a text-only model. Send `input_image` parts to a vision model.",
            param=param,
            code="unsupported_value",
        )
    return {"type": "image_url", "image_url": {"url": url}}


def _content(content: Any, param: str, accepts_images: bool = True) -> str | list[dict[str, Any]]:
    """Content parts (a message's, or a tool call's output) as chat content.

    Text-only content collapses to a string (every template reads that): text parts joined as
    they are, a file's text (:mod:`.files`) on lines of its own. With an image the parts stay
    parts, images as ``image_url`` parts.
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    blocks: list[bool] = []  # per part: a file's text, which goes on lines of its own
    has_image = False
    for j, part in enumerate(content):
        part = _namespace(part)  # a plain dict part, too
        kind = getattr(part, "type", None)
        where = f"{param}[{j}]"
        if kind in ("input_text", "output_text"):
            parts.append({"type": "text", "text": getattr(part, "text", None) or ""})
        elif kind == "refusal":
            parts.append({"type": "text", "text": getattr(part, "refusal", None) or ""})
        elif kind == "input_image":
            parts.append(_image_part(part, where, accepts_images))
            has_image = True
        elif kind == "input_file":
            parts.append({"type": "text", "text": files.file_block(part, where)})
        elif kind == _FileText.type:
            parts.append({"type": "text", "text": part.text})
        else:
            raise invalid_request(
                f"Input content of type '{kind}' is not supported.", param=where, code="unsupported_value"
            )
        blocks.append(kind in ("input_file", _FileText.type))
    if has_image:
        return parts
    text = ""
    for j, part in enumerate(parts):
        if j and (blocks[j] or blocks[j - 1]):
            text += "\n"
        text += part["text"]
    return text


def has_files(items: list[Any]) -> bool:
    """Whether any message or tool output among ``items`` holds an ``input_file`` part."""
    return any(_type(part) == "input_file" for item in items for part in _parts(item))


def inline_files(items: list[Any]) -> list[Any]:
    """``items`` with the text of every ``input_file`` part extracted once, in this thread
    (the server reads them within a budget instead: :mod:`.file_parsing`). Items without
    files are returned as they are; the others are copies."""
    return with_file_texts(items, {(i, j): files.file_block(part, param) for i, j, param, part in file_parts(items)})


def file_parts(items: list[Any]) -> list[tuple[int, int, str, Any]]:
    """Every ``input_file`` part among ``items``: item index, part index, the ``param`` that
    names it in errors, and the part (attributes, a plain dict part too)."""
    found = []
    for i, item in enumerate(items):
        field = _field(item)
        for j, part in enumerate(_parts(item)):
            if _type(part) == "input_file":
                found.append((i, j, f"input[{i}].{field}[{j}]", _namespace(part)))
    return found


def with_file_texts(items: list[Any], texts: dict[tuple[int, int], str]) -> list[Any]:
    """``items`` with the parts at ``texts``' keys (item, part) replaced by that text, as
    :func:`chat_messages` renders a file; items without such parts are returned as they are."""
    out = []
    for i, item in enumerate(items):
        parts = _parts(item)
        if not any((i, j) in texts for j in range(len(parts))):
            out.append(item)
            continue
        replaced = [_FileText(texts[i, j]) if (i, j) in texts else part for j, part in enumerate(parts)]
        out.append(item.model_copy(update={_field(item): replaced}))
    return out


def _field(item: Any) -> str:
    return "output" if (getattr(item, "type", None) or "").endswith("_call_output") else "content"


def _type(part: Any) -> Any:
    return part.get("type") if isinstance(part, dict) else getattr(part, "type", None)


def _namespace(part: Any) -> Any:
    return SimpleNamespace(**part) if isinstance(part, dict) else part


def _parts(item: Any) -> list[Any]:
    kind = getattr(item, "type", None) or "message"
    value = (
        getattr(item, "output", None)
        if kind.endswith("_call_output")
        else getattr(item, "content", None)
        if kind == "message"
        else None
    )
    return value if isinstance(value, list) else []


def chat_messages(instructions: str | None, items: list[Any], accepts_images: bool = True) -> list[dict[str, Any]]:
    """The chat conversation a template renders.

    ``accepts_images``: whether the model takes images (a text-only model answers an
    ``input_image`` with a 400 naming the part, before anything is loaded).

    Reasoning items become the ``reasoning`` of the assistant turn they precede (vLLM hands it
    to the template as ``reasoning`` and ``reasoning_content``), so a template that renders
    thinking renders it as the model generated it, and the prefix cache still matches.
    Item references must have been resolved before (see :mod:`.history`).
    """
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    reasoning: list[str] = []  # thoughts waiting for the assistant turn they belong to
    last_search = ""  # a tool search's output without a call id answers the search before it

    def assistant(content: Any) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if reasoning:
            message["reasoning"] = "".join(reasoning)
            reasoning.clear()
        messages.append(message)
        return message

    def assistant_for_calls() -> dict[str, Any]:
        # Calls of one turn share one assistant message, after any text of that turn; new
        # reasoning means a new turn.
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant" and not reasoning:
            last.setdefault("tool_calls", [])
            return last
        message = assistant(None)
        message["tool_calls"] = []
        return message

    for i, item in enumerate(items):
        kind = getattr(item, "type", None) or "message"
        if kind == "reasoning":
            reasoning.extend(part.text for part in item.content or [] if part.type == "reasoning_text")
            continue
        if kind in ("additional_tools", "mcp_list_tools", "mcp_approval_response"):
            continue  # tools to offer (:func:`loaded_tools`, :func:`listed_servers`), an answer the server acted on
        if kind in ("mcp_call", "mcp_approval_request"):
            _mcp_turn(item, items, assistant_for_calls, messages)
            continue
        if kind in ("web_search_call", "code_interpreter_call"):
            _served_turn(item, assistant_for_calls, messages)
            continue
        if (
            kind not in ("function_call", "custom_tool_call", *builtins.CALL_TYPES)
            and not (kind == "message" and item.role == "assistant")
            and reasoning
        ):
            assistant("")  # reasoning that ended its turn without an answer
        if kind == "message":
            content = _content(item.content, f"input[{i}].content", accepts_images)
            if item.role == "assistant":
                assistant(content)
            else:
                messages.append({"role": "system" if item.role == "developer" else item.role, "content": content})
        elif kind in ("function_call", "custom_tool_call"):
            if kind == "function_call":
                arguments = item.arguments
            else:
                arguments = json.dumps({CUSTOM_TOOL_INPUT: item.input}, ensure_ascii=False)
            name = chat_name(item.name, getattr(item, "namespace", None))
            assistant_for_calls()["tool_calls"].append(
                {"id": item.call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            )
        elif kind in builtins.CALL_TYPES:
            call_id, name, arguments = builtins.replayed_arguments(item)
            last_search = call_id if kind == "tool_search_call" else last_search
            assistant_for_calls()["tool_calls"].append(
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            )
        elif kind in builtins.OUTPUT_TYPES:
            call_id = builtins.output_call_id(item) or (last_search if kind == "tool_search_output" else "")
            messages.append({"role": "tool", "tool_call_id": call_id, "content": builtins.output_text(item)})
        elif kind in ("function_call_output", "custom_tool_call_output"):
            # A list output (text, images, files) keeps its parts, as chat tool messages may.
            content = _content(item.output, f"input[{i}].output", accepts_images)
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": content})
        else:
            raise invalid_request(
                f"Input items of type '{kind}' are not supported by this server.",
                param=f"input[{i}]",
                code="unsupported_value",
            )
    if reasoning:
        assistant("")
    return messages


def _mcp_turn(item: Any, items: list[Any], assistant_for_calls: Any, messages: list[dict[str, Any]]) -> None:
    """An MCP call the server ran (its output or error), or an approval request the user
    declined, as the tool call and result the model sees. A request still waiting for its answer,
    or one whose approved call follows, renders nothing."""
    if item.type == "mcp_approval_request":
        answers = [
            i for i in items if getattr(i, "type", None) == "mcp_approval_response" and i.approval_request_id == item.id
        ]
        ran = any(getattr(i, "type", None) == "mcp_call" and i.approval_request_id == item.id for i in items)
        if ran or not answers or answers[-1].approve:
            return
        result = "The user did not approve this call: it was not run."
    elif item.error is not None:
        result = f"The call failed: {_error_text(item.error)}"
    else:
        result = item.output or ""
    name = chat_name(item.name, item.server_label)
    assistant_for_calls()["tool_calls"].append(
        {"id": item.id, "type": "function", "function": {"name": name, "arguments": item.arguments}}
    )
    messages.append({"role": "tool", "tool_call_id": item.id, "content": result})


def _served_turn(item: Any, assistant_for_calls: Any, messages: list[dict[str, Any]]) -> None:
    """A web search or code run of an earlier response, as the call and result the model saw.
    Search results are not kept in the item (as OpenAI keeps them); a code run's logs are when
    its response was asked for them (``include``)."""
    if item.type == "web_search_call":
        action = item.action.model_dump(mode="json", exclude_none=True) if item.action is not None else {}
        if action.get("type") == "open_page":
            name, arguments = "open_page", {"url": action.get("url") or ""}
        elif action.get("type") == "find_in_page":
            name, arguments = "find_in_page", {"url": action.get("url") or "", "pattern": action.get("pattern") or ""}
        else:
            name, arguments = "web_search", {"query": action.get("query") or " ".join(action.get("queries") or [])}
        result = "The results of this search are not kept."
    else:
        name, arguments = "code_interpreter", {"code": item.code or ""}
        logs = [o.logs for o in item.outputs or [] if getattr(o, "type", None) == "logs"]
        result = "\n".join(logs) if logs else "The output of this run is not kept."
    assistant_for_calls()["tool_calls"].append(
        {
            "id": item.id,
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
        }
    )
    messages.append({"role": "tool", "tool_call_id": item.id, "content": result})


def _error_text(error: Any) -> str:
    if isinstance(error, str):
        return error
    data = error.model_dump(mode="json") if hasattr(error, "model_dump") else error
    if isinstance(data, dict) and data.get("message"):
        return str(data["message"])
    return json.dumps(data, ensure_ascii=False)


def chat_tool_choice(tool_choice: Any) -> Any:
    """Responses ``tool_choice`` → chat-completions ``tool_choice``."""
    if tool_choice is None or isinstance(tool_choice, str):
        return tool_choice
    kind = tool_choice.get("type")
    if kind in ("function", "custom"):
        return {"type": "function", "function": {"name": chat_name(tool_choice["name"], tool_choice.get("namespace"))}}
    if kind in builtins.BUILTINS:
        return {"type": "function", "function": {"name": builtins.BUILTINS[kind].name}}
    raise invalid_request(
        f"tool_choice of type '{kind}' is not supported.", param="tool_choice", code="unsupported_value"
    )


def chat_response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    fmt = (text or {}).get("format")
    if not fmt or fmt.get("type") == "text":
        return None
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    if fmt["type"] == "json_schema":
        schema = {"name": fmt.get("name") or "response", "schema": fmt.get("schema") or {}}
        if fmt.get("strict") is not None:
            schema["strict"] = fmt["strict"]
        return {"type": "json_schema", "json_schema": schema}
    raise invalid_request(
        f"text.format of type '{fmt['type']}' is not supported.", param="text.format", code="unsupported_value"
    )
