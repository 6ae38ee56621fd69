"""The request and response shapes, taken from the ``openai`` package's own types.

A request body is validated against ``openai.types.responses``: top-level fields against
``ResponseCreateParamsBase``, input items against ``ResponseInputItem`` and tools against
``Tool``. Nothing here is a hand-written copy of the spec; when OpenAI adds a field, a newer
``openai`` release brings it.
"""

import asyncio
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import orjson
from openai.types.responses import ResponseInputItem, Tool
from openai.types.responses.response_create_params import ResponseCreateParamsBase
from openai.types.responses.response_input_item import ItemReference
from pydantic import TypeAdapter, ValidationError

from ..common.errors import invalid_request
from ..common.logs import get_logger
from ..environment import UNOFFERED_TOOLS
from ..events.deltas import Sampling
from ..events.response import ResponseObject
from ..settings import RequestLimits
from . import builtins
from .chat import (
    OFFERED_TOOL_TYPES,
    ChatTools,
    chat_name,
    chat_response_format,
    chat_tools,
    is_offered,
)
from .item_cache import ITEMS
from .parameters import split_extensions
from .validation import (
    check_depth,
    check_metadata,
    from_validation_error,
    nested_too_deeply,
)

T = TypeVar("T")

logger = get_logger(__name__)

_PARAMS = TypeAdapter(ResponseCreateParamsBase)
_KNOWN = frozenset(ResponseCreateParamsBase.__annotations__) | {"stream"}
_INPUT_ITEMS = TypeAdapter(list[ResponseInputItem])
_TOOL = TypeAdapter(Tool)

# What one request may carry: the plugin sets the operator's (VLLM_RESPONSES_MAX_INPUT_ITEMS, ...).
LIMITS = RequestLimits()

# OpenAI's own length limits on identifiers that are echoed and stored (the ``openai``
# package documents 128 for ``safety_identifier``; the hosted API answers 64 for the others).
ID_LENGTHS = {"user": 64, "prompt_cache_key": 64, "safety_identifier": 128}

# A tool of a type not in ``chat.OFFERED_TOOL_TYPES`` (docs/events.md#tools) is never offered:
# accepted (the answer names its type in a header, the log once per type) or refused with a
# 400, as the operator chooses (``RequestLimits.unoffered_tools``); never silently.

# Fields validated on their own (as ``openai`` BaseModels) rather than through the TypedDict.
_SEPARATE = frozenset({"input", "tools", "stream"})


@dataclass(frozen=True)
class ResponsesRequest:
    """A validated ``POST /v1/responses`` body, read once: frozen, a change is a copy
    (``dataclasses.replace``).

    ``params`` holds the validated top-level fields (unknown ones dropped), ``input`` the
    typed input items, ``tools`` the typed tools (echoed in the response; only those of
    ``OFFERED_TOOL_TYPES`` are offered to the model); ``unsupported_tools`` are tools of
    types the ``openai`` package does not know: accepted, neither offered nor echoed.
    ``extensions`` holds vLLM's own request extensions (``seed``, ``stop``, ``top_k``, ...,
    see :mod:`.parameters`) as sent; the engine adapter hands them to vLLM. ``headers``:
    the HTTP headers (lower-case names) vLLM's routes read as request parameters
    (priority, session, data-parallel rank, trace context). ``tenant``: whose stored state
    the request may see and what it stores belongs to (:mod:`.tenancy`; ``None``: shared).
    """

    params: dict[str, Any]
    model: str
    stream: bool
    input: list[Any]
    tools: list[Any] = field(default_factory=list)
    unsupported_tools: list[dict[str, Any]] = field(default_factory=list)
    extensions: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    tenant: str | None = None

    def get(self, key: str, default: Any = None) -> Any:
        value = self.params.get(key)
        return default if value is None else value

    @property
    def unoffered_tool_types(self) -> list[str]:
        """The types of the request's tools that the model is not offered, sorted, each once
        (the one place that decides it; the transport names them, :func:`_warn_unoffered` logs them)."""
        types = {tool.type for tool in self.tools if not is_offered(tool)}
        return sorted(types | {tool["type"] for tool in self.unsupported_tools})

    # -- what the state parameters mean (read here, nowhere else) -------------------------
    @property
    def store(self) -> bool:
        """``store`` defaults to true, as in OpenAI's API."""
        return self.get("store", True) is not False

    @property
    def background(self) -> bool:
        return bool(self.get("background", False))

    @property
    def previous_response_id(self) -> str | None:
        return self.get("previous_response_id") or None

    @property
    def conversation_id(self) -> str | None:
        conversation = self.get("conversation")
        if isinstance(conversation, dict):
            return conversation.get("id") or None
        return conversation or None

    @property
    def reasoning_summary(self) -> str | None:
        """``reasoning.summary`` (or its deprecated name ``generate_summary``)."""
        reasoning = self.get("reasoning") or {}
        return reasoning.get("summary") or reasoning.get("generate_summary")

    @property
    def include(self) -> frozenset[str]:
        return frozenset(self.get("include", ()))

    @property
    def sealed_reasoning(self) -> bool:
        """The client keeps reasoning itself, sealed (``reasoning.encrypted_content``)."""
        return "reasoning.encrypted_content" in self.include

    # -- what the generation parameters mean (the engine adapter reads these, not ``params``) --
    @property
    def tool_choice(self) -> Any:
        """The ``tool_choice`` the model is held to: ``allowed_tools``' ``mode`` when it names a
        subset (see :attr:`offered_tools`), else as sent; ``"auto"`` by default."""
        choice = self.get("tool_choice", "auto")
        if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
            return choice.get("mode") or "auto"
        return choice

    def offered_tools_for(self, items: list[Any]) -> ChatTools:
        """The tools the model is shown over ``items`` (the whole context: history, input, and a
        response's own output so far), as chat tools with their mapping back: function, custom
        and namespace tools and the built-ins (:mod:`.builtins`), deferred ones once a
        ``tool_search_output`` or ``additional_tools`` item among ``items`` loads them;
        ``allowed_tools`` narrows them. ``tool_choice: "none"``: the caller shows none."""
        choice = self.get("tool_choice", "auto")
        tools = chat_tools(self.tools, items)
        if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
            tools = tools.only(choice.get("tools") or [])
        return tools

    @property
    def parallel_tool_calls(self) -> bool:
        """Defaults to true, as in OpenAI's API."""
        return bool(self.get("parallel_tool_calls", True))

    @property
    def temperature(self) -> float | None:
        return self.get("temperature")

    @property
    def top_p(self) -> float | None:
        return self.get("top_p")

    @property
    def max_output_tokens(self) -> int | None:
        return self.get("max_output_tokens")

    @property
    def instructions(self) -> Any:
        return self.get("instructions")

    @property
    def text_format(self) -> dict[str, Any]:
        """``text.format`` (``{}`` when not given: plain text)."""
        return (self.get("text") or {}).get("format") or {}

    @property
    def response_format(self) -> dict[str, Any] | None:
        """``text.format`` as the chat request's ``response_format``."""
        return chat_response_format(self.get("text"))

    @property
    def reasoning_effort(self) -> str | None:
        return (self.get("reasoning") or {}).get("effort") or None

    @property
    def logprobs(self) -> bool:
        """Output text logprobs were asked for (``include``)."""
        return "message.output_text.logprobs" in self.include

    @property
    def top_logprobs(self) -> int:
        return self.get("top_logprobs", 0)

    @property
    def truncate(self) -> bool:
        """``truncation: "auto"``: the oldest items go until the prompt fits."""
        return self.get("truncation") == "auto"

    @property
    def compaction_triggered(self) -> bool:
        """The input ends with a ``compaction_trigger`` (anywhere else was refused at parsing)."""
        return bool(self.input) and getattr(self.input[-1], "type", None) == "compaction_trigger"

    @property
    def compact_threshold(self) -> int | None:
        """``context_management``'s smallest ``compact_threshold`` (checked at parsing), or ``None``."""
        found = [
            entry["compact_threshold"]
            for entry in self.get("context_management") or []
            if entry.get("compact_threshold") is not None
        ]
        return min(found) if found else None

    @property
    def include_reasoning(self) -> bool:
        """vLLM's ``include_reasoning`` extension: false drops the reasoning from the output."""
        return self.extensions.get("include_reasoning", True) is not False

    @property
    def engine_request_id(self) -> str | None:
        """vLLM's ``request_id`` extension: the id the engine request carries."""
        return self.extensions.get("request_id")


def parse_json_object(body: bytes) -> dict[str, Any]:
    """A request body that must be one JSON object (every POST route's)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit exceeded"):
            raise nested_too_deeply() from None
        raise invalid_request(f"We could not parse the JSON body of your request: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise invalid_request("The request body must be a JSON object.", code="invalid_type")
    check_depth(data)
    return data


def parse_request(body: bytes, headers: Mapping[str, str] | None = None, tenant: str | None = None) -> ResponsesRequest:
    try:
        return _parse_request(body, headers, tenant)
    except RecursionError:
        raise nested_too_deeply() from None


# What makes a request long enough for its work to leave the event loop (worker threads),
# so that the streams the loop serves meanwhile do not stall: a body of ``OFF_LOOP_BYTES``
# (≈ 3 ms of parsing and validating on the 2-core test machine, longer than an engine
# step), a history of ``OFF_LOOP_ITEMS`` items (a Codex tool loop of 50 steps has ≈ 150).
OFF_LOOP_BYTES = 64 * 1024
OFF_LOOP_ITEMS = 32


async def off_loop_if(long: bool, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``: on a worker thread when the request is ``long`` (see above), else right
    here, where a thread hop would cost more than it saves."""
    return await asyncio.to_thread(fn, *args) if long else fn(*args)


async def parse_request_off_loop(
    body: bytes, headers: Mapping[str, str] | None = None, tenant: str | None = None
) -> ResponsesRequest:
    """:func:`parse_request`; a long body (a Codex turn resends its whole history, 100 KB and
    more) on a worker thread, so that the streams the event loop serves meanwhile go on. Its
    items are validated in chunks (:class:`~.prompt_cache.ValidatedItems`), between which the
    GIL passes back to the loop."""
    return await off_loop_if(len(body) >= OFF_LOOP_BYTES, parse_request, body, headers, tenant)


def _parse_request(body: bytes, headers: Mapping[str, str] | None, tenant: str | None) -> ResponsesRequest:
    data = parse_json_object(body)
    model = data.get("model")
    if model is None:
        raise invalid_request("Missing required parameter: 'model'.", param="model", code="missing_required_parameter")
    if not isinstance(model, str):
        raise invalid_request("Invalid type for 'model': expected a string.", param="model", code="invalid_type")
    if not model:
        raise invalid_request(
            "Invalid 'model': empty string. Expected a model name.", param="model", code="empty_string"
        )
    stream = data.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise invalid_request("Invalid type for 'stream': expected a boolean.", param="stream", code="invalid_type")

    extensions = split_extensions(data, _KNOWN)
    # A null top-level field means "not given" (clients write out their defaults as null).
    params = _validate(
        _PARAMS,
        {k: v for k, v in data.items() if k in _KNOWN and k not in _SEPARATE and v is not None},
        "",
        strict=True,
    )
    params = cast(dict[str, Any], _materialize(params))
    _check_ranges(params)
    _check_lengths(params)
    _check_state(params)
    check_metadata(params.get("metadata"))
    _check_text_format(params.get("text"))
    tools = _parse_tools(data.get("tools"))
    _check_tool_choice(params.get("tool_choice"), tools["tools"])
    _check_context_management(params.get("context_management"))
    items = _parse_input(
        data.get("input"),
        chained=bool(params.get("previous_response_id") or params.get("conversation")),
        salt=_salt(extensions),
    )
    _check_compaction_trigger(items)
    request = ResponsesRequest(
        params=params,
        model=model,
        stream=stream,
        input=items,
        **tools,
        extensions=extensions,
        headers={k.lower(): v for k, v in (headers or {}).items()},
        tenant=tenant,
    )
    _warn_unoffered(request.unoffered_tool_types)
    return request


# The ranges OpenAI documents for numeric parameters: (minimum, maximum), inclusive. Token
# counts above a 32-bit integer are no model's (below that, vLLM holds them to the context).
_INT32_MAX = 2**31 - 1
RANGES: dict[str, tuple[float, float | None]] = {
    "temperature": (0, 2),
    "top_p": (0, 1),
    "max_output_tokens": (1, _INT32_MAX),
    "top_logprobs": (0, 20),
    "max_tool_calls": (1, _INT32_MAX),
}


def _check_ranges(params: dict[str, Any]) -> None:
    for name, (low, high) in RANGES.items():
        value = params.get(name)
        if value is None:
            continue
        if value < low:
            raise invalid_request(
                f"Invalid '{name}': {value} is below the minimum value of {low}.",
                param=name,
                code="integer_below_min_value" if isinstance(value, int) else "decimal_below_min_value",
            )
        if high is not None and value > high:
            raise invalid_request(
                f"Invalid '{name}': {value} is above the maximum value of {high}.",
                param=name,
                code="integer_above_max_value" if isinstance(value, int) else "decimal_above_max_value",
            )


def _check_lengths(params: dict[str, Any]) -> None:
    for name, limit in ID_LENGTHS.items():
        value = params.get(name)
        if isinstance(value, str) and len(value) > limit:
            raise invalid_request(
                f"Invalid '{name}': string too long. Expected a string with maximum length {limit}, but got a "
                f"string with length {len(value)} instead.",
                param=name,
                code="string_above_max_length",
            )


def _too_many(param: str, limit: int, got: int) -> Exception:
    return invalid_request(
        f"Invalid '{param}': array too long. Expected an array with maximum length {limit}, but got an array with "
        f"length {got} instead.",
        param=param,
        code="array_above_max_length",
    )


def _check_context_management(entries: list[dict[str, Any]] | None) -> None:
    """``context_management``: compaction entries only, thresholds of at least 1."""
    for i, entry in enumerate(entries or []):
        if entry.get("type") != "compaction":
            raise invalid_request(
                f"Invalid value for 'context_management[{i}].type': {entry.get('type')!r}. Supported: 'compaction'.",
                param=f"context_management[{i}].type",
                code="unsupported_value",
            )
        value = entry.get("compact_threshold")
        if value is not None and value < 1:
            raise invalid_request(
                f"Invalid 'context_management[{i}].compact_threshold': {value} is below the minimum value of 1.",
                param=f"context_management[{i}].compact_threshold",
                code="integer_below_min_value",
            )


def _check_compaction_trigger(items: list[Any]) -> None:
    """A ``compaction_trigger`` item can only be the last input item."""
    for i, item in enumerate(items[:-1]):
        if getattr(item, "type", None) == "compaction_trigger":
            raise invalid_request("A `compaction_trigger` item must be the last input item.", param=f"input[{i}]")


def _check_state(params: dict[str, Any]) -> None:
    """Combinations of the state parameters that cannot mean anything; ids of the wrong kind."""
    if params.get("previous_response_id") and params.get("conversation"):
        raise invalid_request(
            "`previous_response_id` and `conversation` cannot be used together: a conversation already "
            "carries the earlier turns.",
            param="conversation",
            code="invalid_parameter_combination",
        )
    if params.get("store") is False:
        if params.get("background"):
            raise invalid_request(
                "Background responses must be stored: `background: true` needs `store: true`.",
                param="background",
                code="invalid_parameter_combination",
            )
        if params.get("conversation"):
            raise invalid_request(
                "A response in a conversation is stored with it: `conversation` needs `store: true`.",
                param="store",
                code="invalid_parameter_combination",
            )
    for name, value, prefix in (
        ("previous_response_id", params.get("previous_response_id"), "resp"),
        ("conversation", _conversation_id(params.get("conversation")), "conv"),
    ):
        if value and not value.startswith(prefix):
            param = name if name != "conversation" or isinstance(params.get("conversation"), str) else "conversation.id"
            raise invalid_request(
                f"Invalid '{param}': '{value}'. Expected an ID that begins with '{prefix}'.", param=param
            )


def _conversation_id(conversation: Any) -> Any:
    return conversation.get("id") if isinstance(conversation, dict) else conversation


def _salt(extensions: dict[str, Any]) -> str | None:
    salt = extensions.get("cache_salt")
    return salt if isinstance(salt, str) else None


def _parse_input(raw: Any, chained: bool, salt: str | None = None) -> list[Any]:
    if raw is None:
        if chained:  # a continuation may add nothing (e.g. only new instructions)
            return []
        raise invalid_request("Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    if raw == "":
        raise invalid_request(
            "Invalid 'input': empty string. Expected a string with minimum length 1.",
            param="input",
            code="empty_string",
        )
    if raw == [] and not chained:
        raise invalid_request(
            "Invalid 'input': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            param="input",
            code="empty_array",
        )
    if isinstance(raw, str):
        raw = [{"type": "message", "role": "user", "content": raw}]
    if not isinstance(raw, list):
        raise invalid_request(
            "Invalid type for 'input': expected a string or an array of items.", param="input", code="invalid_type"
        )
    if len(raw) > LIMITS.max_input_items:
        raise _too_many("input", LIMITS.max_input_items, len(raw))
    return parse_items(raw, "input", salt)


def parse_items(raw: list[Any], where: str, salt: str | None = None) -> list[Any]:
    """Input items (a request's, or stored ones going back to the model) as typed items.
    An item reference may leave out its ``type``; it is given one, so that it reads as one.
    ``salt``: the request's ``cache_salt`` (the validation cache is keyed by it too)."""
    items = ITEMS.validate(
        raw, lambda batch: _validate(_INPUT_ITEMS, [_lenient_item(item) for item in batch], where, strict=True), salt
    )
    return [
        item.model_copy(update={"type": "item_reference"})
        if isinstance(item, ItemReference) and item.type is None
        else item
        for item in items
    ]


def _lenient_item(item: Any) -> Any:
    """Accept what OpenAI accepts and the ``openai`` types are stricter about.

    Clients replay earlier answers as ``{"role": "assistant", "content": [{"type":
    "output_text", "text": ...}]}``, without the fields only output items carry; and an
    ``input_image`` may leave out ``detail`` (``auto`` by OpenAI's docs), in a message or in a
    tool output.
    """
    if not isinstance(item, dict):
        return item
    for key in ("content", "output"):
        if isinstance(item.get(key), list):
            item = {**item, key: [_with_detail(part) for part in item[key]]}
    if item.get("role") != "assistant" or not isinstance(item.get("content"), list):
        return item
    if not any(isinstance(p, dict) and p.get("type") in ("output_text", "refusal") for p in item["content"]):
        return item
    content = [
        {"annotations": [], **p} if isinstance(p, dict) and p.get("type") == "output_text" else p
        for p in item["content"]
    ]
    return {"type": "message", "id": "msg_input", "status": "completed", **item, "content": content}


def _with_detail(part: Any) -> Any:
    if isinstance(part, dict) and part.get("type") == "input_image" and part.get("detail") is None:
        return {**part, "detail": "auto"}
    return part


def _parse_tools(raw: Any) -> dict[str, list[Any]]:
    if raw is None:
        return {"tools": [], "unsupported_tools": []}
    if not isinstance(raw, list):
        raise invalid_request("Invalid type for 'tools': expected an array.", param="tools", code="invalid_type")
    if len(raw) > LIMITS.max_tools:
        raise _too_many("tools", LIMITS.max_tools, len(raw))
    size = len(orjson.dumps(raw)) if raw else 0
    if size > LIMITS.max_tools_bytes:
        raise invalid_request(
            f"Invalid 'tools': the tools take {size} bytes of JSON; this server accepts at most "
            f"{LIMITS.max_tools_bytes} "
            "(each tool is echoed in the response and stored with it).",
            param="tools",
            code="tools_too_large",
        )
    tools: list[Any] = []
    unsupported: list[dict[str, Any]] = []
    for i, tool in enumerate(raw):
        if not isinstance(tool, dict):
            raise invalid_request(
                f"Invalid type for 'tools[{i}]': expected an object.", param=f"tools[{i}]", code="invalid_type"
            )
        if "type" not in tool:
            raise invalid_request(
                f"Missing required parameter: 'tools[{i}].type'.",
                param=f"tools[{i}].type",
                code="missing_required_parameter",
            )
        if not isinstance(tool["type"], str):
            raise invalid_request(
                f"Invalid type for 'tools[{i}].type': expected a string.", param=f"tools[{i}].type", code="invalid_type"
            )
        try:
            typed = _with_strict(_TOOL.validate_python(tool, strict=True))
        except ValidationError:
            if tool["type"] in OFFERED_TOOL_TYPES:
                # Tools we offer must be well-formed; report the precise problem.
                _validate(_TOOL, tool, f"tools[{i}]", strict=True)
            typed = None
        if LIMITS.unoffered_tools == "reject" and (typed is None or not is_offered(typed)):
            raise invalid_request(
                f"Invalid value for 'tools[{i}].type': this server does not offer '{tool['type']}' tools to the "
                f"model (it offers {', '.join(sorted(OFFERED_TOOL_TYPES))} tools; a shell tool with a local "
                f"environment), and its operator refuses requests that carry them ({UNOFFERED_TOOLS}=reject). "
                "Remove the tool from 'tools'.",
                param=f"tools[{i}].type",
                code="unsupported_value",
            )
        if typed is None:
            unsupported.append(tool)
        else:
            tools.append(typed)
    _check_builtin_names(tools)
    _check_mcp(tools)
    return {"tools": tools, "unsupported_tools": unsupported}


def _without_secrets(tool: Any) -> Any:
    """A tool as the response echoes and the store keeps it: an ``mcp`` tool without its
    ``headers`` and ``authorization`` (OpenAI's API leaves them out too)."""
    if tool.type == "mcp" and (tool.headers is not None or tool.authorization is not None):
        return tool.model_copy(update={"headers": None, "authorization": None})
    return tool


def body_without_secrets(body: bytes) -> bytes:
    """A create body as it may be written down (the capture): its ``mcp`` tools without
    ``headers`` and ``authorization``."""
    data = orjson.loads(body)
    for tool in data.get("tools") or []:
        if isinstance(tool, dict) and tool.get("type") == "mcp":
            tool.pop("headers", None)
            tool.pop("authorization", None)
    return orjson.dumps(data)


def _check_mcp(tools: list[Any]) -> None:
    """What the ``mcp`` tools of a request may not ask for here: OpenAI's own connectors and
    tunnels, and two tools for one server label."""
    labels: dict[str, int] = {}
    for i, tool in enumerate(tools):
        if tool.type != "mcp":
            continue
        for key in ("connector_id", "tunnel_id"):
            if getattr(tool, key, None) is not None:
                raise invalid_request(
                    f"Invalid 'tools[{i}].{key}': this server does not reach OpenAI's connectors or tunnels. "
                    "Give the MCP server's own 'server_url' instead.",
                    param=f"tools[{i}].{key}",
                    code="unsupported_value",
                )
        if tool.server_label in labels:
            raise invalid_request(
                f"Invalid 'tools[{i}].server_label': '{tool.server_label}' is already the label of "
                f"tools[{labels[tool.server_label]}].",
                param=f"tools[{i}].server_label",
            )
        labels[tool.server_label] = i


def _check_builtin_names(tools: list[Any]) -> None:
    """A built-in tool is shown to the model as a function named after its type
    (:mod:`.builtins`): a function or custom tool of that name beside it, or the same built-in
    twice, would be two tools the model cannot tell apart."""
    seen: dict[str, int] = {}
    for i, tool in enumerate(tools):
        if tool.type in builtins.BUILTINS and is_offered(tool):
            if tool.type in seen:
                raise invalid_request(
                    f"Invalid 'tools[{i}]': a '{tool.type}' tool is already in 'tools' (tools[{seen[tool.type]}]).",
                    param=f"tools[{i}]",
                )
            seen[tool.type] = i
    for i, tool in enumerate(tools):
        if tool.type in ("function", "custom") and tool.name in seen:
            raise invalid_request(
                f"Invalid 'tools[{i}].name': '{tool.name}' is the name this server gives the built-in "
                f"'{tool.name}' tool (tools[{seen[tool.name]}]) when it offers it to the model. Rename the "
                f"{tool.type} tool, or leave out one of the two.",
                param=f"tools[{i}].name",
            )


# Tool types already warned about in this process (a type the ``openai`` package does not
# know is the client's string: past ``_WARNED_MAX`` types, new ones are no longer remembered
# nor logged, so that a client cannot grow the set or flood the log).
_WARNED: set[str] = set()
_WARNED_MAX = 256
_WARNED_LOCK = threading.Lock()  # requests are parsed on worker threads too


def _warn_unoffered(types: list[str]) -> None:
    """One warning per tool type per API process, the first time a request carries it."""
    if not types:
        return
    with _WARNED_LOCK:
        new = [t for t in types if t not in _WARNED][: max(0, _WARNED_MAX - len(_WARNED))]
        _WARNED.update(new)
    for kind in new:
        logger.warning(
            "A request carried a tool of type %r: accepted, not offered to the model (this server does not run "
            "it). HTTP answers name it in a response header; %s=reject refuses such requests with a 400. "
            "Logged once per type.",
            kind[:64],
            UNOFFERED_TOOLS,
        )


# OpenAI's rule for the names of JSON schema formats (and of functions).
_SCHEMA_NAME = re.compile(r"[a-zA-Z0-9_-]+")
_SCHEMA_NAME_LEN = 64


def _check_text_format(text: dict[str, Any] | None) -> None:
    fmt = (text or {}).get("format") or {}
    if fmt.get("type") != "json_schema":
        return
    name = fmt.get("name", "")
    if len(name) > _SCHEMA_NAME_LEN:
        raise invalid_request(
            "Invalid 'text.format.name': string too long. Expected a string with maximum length "
            f"{_SCHEMA_NAME_LEN}, but got a string with length {len(name)} instead.",
            param="text.format.name",
            code="string_above_max_length",
        )
    if not _SCHEMA_NAME.fullmatch(name):
        raise invalid_request(
            f"Invalid 'text.format.name': '{name}'. Expected a name of letters, digits, underscores and dashes.",
            param="text.format.name",
        )


def _check_tool_choice(tool_choice: Any, tools: list[Any]) -> None:
    """A ``tool_choice`` must name tools the model is offered (function and custom tools,
    also inside namespaces); hosted tools never run here, so choosing one cannot be honoured."""
    if tool_choice is None or tool_choice in ("auto", "none"):
        return
    offered = chat_tools(tools, include_deferred=True)
    if tool_choice == "required":
        if not offered.tools:
            raise invalid_request(
                "Invalid 'tool_choice': 'required' needs at least one tool the model is offered in 'tools' "
                "(a function, custom or built-in tool).",
                param="tool_choice",
            )
        return
    kind = tool_choice.get("type")
    if kind == "allowed_tools":
        offered.only(tool_choice.get("tools") or [])  # refuses entries naming no tool
    elif kind in ("function", "custom"):
        if chat_name(tool_choice["name"], tool_choice.get("namespace")) not in offered.targets:
            raise invalid_request(
                f"Invalid 'tool_choice': no {kind} tool named '{tool_choice['name']}' in 'tools'.", param="tool_choice"
            )
    elif kind in ("shell", "apply_patch"):
        if kind not in offered.targets:
            raise invalid_request(f"Invalid 'tool_choice': no '{kind}' tool in 'tools'.", param="tool_choice")
    else:
        raise invalid_request(
            f"tool_choice of type '{kind}' is not supported.", param="tool_choice", code="unsupported_value"
        )


def _text_format(fmt: dict[str, Any] | None) -> dict[str, Any]:
    """``text.format`` as the hosted API echoes it: a JSON schema format with its
    ``description`` (null when not given) and ``strict`` (false when not given)."""
    if not fmt:
        return {"type": "text"}
    if fmt.get("type") == "json_schema":
        return {"description": None, **fmt, "strict": bool(fmt.get("strict"))}
    return fmt


def _with_strict(tool: Any) -> Any:
    """A function tool's ``strict``, decided as OpenAI decides it when the client leaves it
    out: strict when the schema allows it. The engine adapter passes it on to vLLM (which
    then holds the arguments to the schema) and the response echoes it, with ``description``
    and ``parameters`` as null when not given (the Open Responses schema requires them)."""
    if tool.type == "function":
        strict = strict_compatible(tool.parameters) if tool.strict is None else tool.strict
        return tool.model_copy(
            update={"strict": strict, "description": tool.description, "parameters": tool.parameters}
        )
    if tool.type == "namespace":
        return tool.model_copy(update={"tools": [_with_strict(inner) for inner in tool.tools]})
    return tool


def strict_compatible(schema: Any) -> bool:
    """Whether a JSON schema meets strict mode's rules: every object closed
    (``additionalProperties: false``) and all its properties required."""
    if schema is None:
        return False
    if isinstance(schema, list):
        return all(strict_compatible(s) for s in schema)
    if not isinstance(schema, dict):
        return True
    if schema.get("type") == "object" or "properties" in schema:
        properties = schema.get("properties") or {}
        if schema.get("additionalProperties") is not False or set(schema.get("required") or []) != set(properties):
            return False
    children = [v for key in ("properties", "$defs", "definitions") for v in (schema.get(key) or {}).values()]
    children += [schema[key] for key in ("items", "anyOf", "oneOf", "allOf") if key in schema]
    return all(strict_compatible(child) for child in children)


def _validate(adapter: TypeAdapter[Any], value: Any, prefix: str, strict: bool = False) -> Any:
    """``strict``: JSON types as sent (``"10"`` is not an integer, ``"no"`` not a boolean)."""
    try:
        return adapter.validate_python(value, strict=strict)
    except ValidationError as exc:
        raise from_validation_error(exc, prefix) from None


def _materialize(value: Any) -> Any:
    """Turn pydantic's lazy ``Iterable`` validators into lists, validating their elements."""
    if isinstance(value, dict):
        return {k: _materialize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or isinstance(value, Iterator):
        return [_materialize(v) for v in value]
    return value


def initial_response(
    request: ResponsesRequest, response_id: str, created_at: int, model: str, sampling: Sampling
) -> ResponseObject:
    """The response as it stands when generation starts: ``in_progress`` (``queued`` in the
    background), no output, and every parameter with the value really used (``sampling``:
    the request's, else the model's generation config, else vLLM's defaults) or, where the
    request left it out, the value the hosted API reports."""
    p = request.params
    text = p.get("text") or {}
    reasoning = p.get("reasoning") or {}
    fields: dict[str, Any] = dict(
        id=response_id,
        object="response",
        created_at=created_at,
        completed_at=None,
        model=model,
        status="queued" if request.background else "in_progress",
        output=[],
        error=None,
        incomplete_details=None,
        instructions=p.get("instructions"),
        previous_response_id=p.get("previous_response_id"),
        metadata=p.get("metadata") or {},
        parallel_tool_calls=request.get("parallel_tool_calls", True),
        tool_choice=request.get("tool_choice", "auto"),
        tools=[_without_secrets(tool) for tool in request.tools],
        text={"format": _text_format(text.get("format")), "verbosity": text.get("verbosity") or "medium"},
        reasoning={"effort": reasoning.get("effort"), "summary": request.reasoning_summary},
        truncation=p.get("truncation") or "disabled",
        service_tier="default",
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        presence_penalty=sampling.presence_penalty,
        frequency_penalty=sampling.frequency_penalty,
        top_logprobs=p.get("top_logprobs") or 0,
        max_output_tokens=p.get("max_output_tokens"),
        max_tool_calls=p.get("max_tool_calls"),
        prompt_cache_key=p.get("prompt_cache_key"),
        safety_identifier=p.get("safety_identifier"),
        user=p.get("user"),
        store=request.store,
        background=request.background,
        usage=None,
    )
    if request.conversation_id:
        fields["conversation"] = {"id": request.conversation_id}
    # Tools of types the ``openai`` package does not know are accepted but not echoed: a
    # strict client could not parse them back.
    return ResponseObject.model_validate(fields)
