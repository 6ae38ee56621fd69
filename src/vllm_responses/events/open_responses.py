"""Validation against the Open Responses specification (openresponses.org), as published.

The schema comes from ``openresponses-types``: pydantic models generated from the
specification's OpenAPI document (its version is in that package's module docstring).
Objects are validated from their JSON in strict mode, so ``1764107796.0`` is not an integer.

Where the specification and OpenAI's API (``openai``'s types, which the clients parse)
disagree, the wire follows OpenAI; :data:`DIVERGENCES` lists each case, and only those
cases are left out of the check:

- types the specification does not define are OpenAI's extensions to it: custom and
  namespaced tools and their calls, built-in and hosted tool types in ``tools`` and their
  items, ``response.shell_call_command.*``, and the events
  ``response.reasoning_text.*`` (the specification names them ``response.reasoning.*``)
  and ``response.custom_tool_call_input.*``;
- ``text.format.schema`` of a ``json_schema`` format: openresponses-types 2.4 types it
  as null (its generator's reading of the specification's free-form object), so the check
  looks at the format without it;
- the ``error`` event: the specification nests ``{type, code, message, param}`` under
  ``error``; OpenAI sends them at the top level, and openai-python raises ``APIError`` on
  any event with a top-level ``error`` object, so the nested form would break its clients.
"""

import inspect
from enum import Enum
from typing import Any

import orjson
from openresponses_types import types as spec
from pydantic import BaseModel, ValidationError

DIVERGENCES = {
    "extensions": "types the specification does not define (custom/namespaced tools and their calls, hosted "
    "tools, response.reasoning_text.*, response.custom_tool_call_input.*) are OpenAI's and not checked",
    "error": "the error event's fields are at the top level, as openai's ResponseErrorEvent has them",
    "text.format.schema": "openresponses-types types a json_schema format's schema as null; not checked",
}

_SKIPPED_EVENTS = frozenset({"error"})
_ITEM_TYPES = frozenset({"message", "function_call", "function_call_output", "reasoning", "compaction"})


def _event_models() -> dict[str, type[BaseModel]]:
    """Each streaming event model of the specification, by its ``type`` value."""
    models: dict[str, type[BaseModel]] = {}
    for _, cls in inspect.getmembers(spec, inspect.isclass):
        if not (issubclass(cls, BaseModel) and cls.__name__.endswith("StreamingEvent")):
            continue
        annotation = cls.model_fields["type"].annotation
        if isinstance(annotation, type) and issubclass(annotation, Enum) and len(annotation) == 1:
            models[next(iter(annotation)).value] = cls
    return models


_EVENTS = _event_models()


def event_problems(event: dict[str, Any]) -> list[str]:
    """Where a stream event departs from the specification (beyond :data:`DIVERGENCES`)."""
    kind = event.get("type")
    model = _EVENTS.get(kind) if isinstance(kind, str) else None
    if model is None or kind in _SKIPPED_EVENTS:
        return []
    if "item" in event and (event.get("item") or {}).get("type") not in _ITEM_TYPES:
        return []
    if isinstance(event.get("response"), dict):
        event = {**event, "response": _spec_view(event["response"])}
    return _problems(model, event)


def response_problems(response: dict[str, Any]) -> list[str]:
    """Where a response object departs from the specification's ``ResponseResource``."""
    return _problems(spec.ResponseResource, _spec_view(response))


def error_problems(body: dict[str, Any]) -> list[str]:
    """Where an HTTP error body (``{"error": {...}}``) departs from the specification's
    error payload."""
    if not isinstance(body.get("error"), dict):
        return ["no `error` object"]
    return _problems(spec.ErrorPayload, body["error"])


def _spec_view(response: dict[str, Any]) -> dict[str, Any]:
    """The response without the OpenAI extensions the specification does not define."""
    view = {
        **response,
        "output": [item for item in response.get("output") or [] if item.get("type") in _ITEM_TYPES],
        "tools": [tool for tool in response.get("tools") or [] if tool.get("type") == "function"],
    }
    fmt = (response.get("text") or {}).get("format") or {}
    if fmt.get("type") == "json_schema":
        view["text"] = {**response["text"], "format": {**fmt, "schema": None}}
    return view


def _problems(model: type[BaseModel], data: dict[str, Any]) -> list[str]:
    try:
        model.model_validate_json(orjson.dumps(data), strict=True)
    except ValidationError as exc:
        return [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3]]
    return []
