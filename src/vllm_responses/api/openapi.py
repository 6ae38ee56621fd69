"""The OpenAPI description of our routes, built from the ``openai`` package's own types.

Our routes read the raw request (:mod:`.routes` parses bodies itself, for exact OpenAI
errors), so FastAPI knows neither their bodies nor their parameters nor their answers.
:func:`describe` fills them into the app's ``/openapi.json``: request bodies and query
parameters as ``openai`` types them, the answers (``Response``, item lists, conversations,
and the error object for every 4xx/5xx). Built on the first ``/openapi.json`` request, not at
start-up; the component names carry the prefix ``responses.`` so they never meet vLLM's.
"""

import typing
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from ..request.parameters import CHAT_HABITS, NO_EFFECT, REFUSED, VLLM_EXTENSIONS
from ..request.protocol import RANGES

PREFIX = "responses."
_JSON = "application/json"


def describe(app: FastAPI) -> None:
    """Make ``app.openapi()`` describe our routes (lazily, once, on top of FastAPI's own)."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            annotate(generate())  # FastAPI keeps the dict it returns in app.openapi_schema
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def annotate(document: dict[str, Any]) -> None:
    """Write our operations' bodies, parameters and answers into an OpenAPI document."""
    components = document.setdefault("components", {}).setdefault("schemas", {})
    components.update(schemas())
    for path, methods in operations().items():
        for method, operation in methods.items():
            target = document.get("paths", {}).get(path, {}).get(method)
            if target is not None:  # e.g. the render-only server has none of our routes
                target.update(operation)
    for methods in document.get("paths", {}).values():  # links name operations by (path, method)
        for operation in methods.values():
            for answer in operation.get("responses", {}).values():
                for link in answer.get("links", {}).values():
                    if "x-operation" in link:
                        path, method = link.pop("x-operation")
                        link["operationId"] = document["paths"][path][method]["operationId"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{PREFIX}{name}"}


def schemas() -> dict[str, dict[str, Any]]:
    """Every component our operations refer to, named ``responses.<Name>``."""
    from openai.types.conversations import (
        Conversation,
        ConversationDeletedResource,
        ConversationItem,
        ConversationItemList,
    )
    from openai.types.conversations.conversation_create_params import (
        ConversationCreateParams,
    )
    from openai.types.conversations.conversation_update_params import (
        ConversationUpdateParams,
    )
    from openai.types.conversations.item_create_params import ItemCreateParams
    from openai.types.responses import (
        CompactedResponse,
        InputTokenCountResponse,
        ResponseInputItem,
    )
    from openai.types.responses.response_create_params import ResponseCreateParamsBase
    from openai.types.responses.response_item_list import ResponseItemList
    from openai.types.shared.error_object import ErrorObject
    from pydantic import TypeAdapter

    from ..events.response import ResponseObject

    bodies = {
        "ResponseCreateParams": ResponseCreateParamsBase,
        "ConversationCreateParams": ConversationCreateParams,
        "ConversationUpdateParams": ConversationUpdateParams,
        "ConversationItemCreateParams": ItemCreateParams,
    }
    answers = {
        "Response": ResponseObject,
        "ResponseItemList": ResponseItemList,
        "Conversation": Conversation,
        "ConversationDeletedResource": ConversationDeletedResource,
        "ConversationItem": ConversationItem,
        "ConversationItemList": ConversationItemList,
        "ErrorObject": ErrorObject,
        "ResponseInputItem": ResponseInputItem,
        "CompactedResponse": CompactedResponse,
        "InputTokenCountResponse": InputTokenCountResponse,
    }
    inputs: list[tuple[str, Any, TypeAdapter[Any]]] = [
        (name, "validation", TypeAdapter(t)) for name, t in bodies.items()
    ]
    inputs += [(name, "serialization", TypeAdapter(t)) for name, t in answers.items()]
    tops, defs = TypeAdapter.json_schemas(inputs, ref_template=f"#/components/schemas/{PREFIX}{{model}}")
    out = {PREFIX + name: schema for name, schema in defs.get("$defs", {}).items()}
    for (name, _), schema in tops.items():
        out[PREFIX + name] = _resolved(schema, out)
    _create_body(out[PREFIX + "ResponseCreateParams"])
    out[PREFIX + "ConversationItemCreateParams"]["properties"].pop("include", None)  # a query parameter
    for name in ("ResponseItemList", "ConversationItemList"):  # an empty list has no first or last id
        for key in ("first_id", "last_id"):
            out[PREFIX + name]["properties"][key] = {"anyOf": [{"type": "string"}, {"type": "null"}]}
    # Items are listed in openai's output shapes where this server has them (messages, calls,
    # reasoning); an item of another type is kept as it was sent, with an id (items.to_stored).
    out[PREFIX + "KeptInputItem"] = {
        "allOf": [
            _ref("ResponseInputItem"),
            {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]},
        ],
        "description": "An input item of a type this server does not produce, listed as it was sent, with an id.",
    }
    out[PREFIX + "ConversationItem"] = {"anyOf": [out[PREFIX + "ConversationItem"], _ref("KeptInputItem")]}
    # A compaction's output is the context's user messages (listed shape), then its compaction
    # item: conversation items, where openai's type says output items (assistant messages only).
    out[PREFIX + "CompactedResponse"]["properties"]["output"]["items"] = _ref("ConversationItem")
    for name in ("ResponseItemList", "ConversationItemList"):
        data = out[PREFIX + name]["properties"]["data"]
        data["items"] = {"anyOf": [data["items"], _ref("KeptInputItem")]}
    out[PREFIX + "Error"] = {
        "type": "object",
        "properties": {"error": _ref("ErrorObject")},
        "required": ["error"],
        "description": "Every failure: OpenAI's error object.",
    }
    out[PREFIX + "ResponseDeleted"] = {
        "type": "object",
        "properties": {"id": {"type": "string"}, "object": {"const": "response"}, "deleted": {"const": True}},
        "required": ["id", "object", "deleted"],
    }
    return out


def _resolved(schema: dict[str, Any], defs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A top-level schema that is only a reference, as a copy of what it refers to."""
    ref = schema.get("$ref", "")
    if len(schema) == 1 and ref.startswith("#/components/schemas/"):
        return dict(defs[ref.rsplit("/", 1)[1]])
    return schema


def _create_body(schema: dict[str, Any]) -> None:
    """``ResponseCreateParamsBase`` as :mod:`.protocol` reads it: ``model`` and ``input``
    required, ``stream`` beside it, the ranges it checks, the names of :mod:`.parameters`
    described (refused ones null), nothing else."""
    properties = schema["properties"]
    properties["stream"] = {"anyOf": [{"type": "boolean"}, {"type": "null"}], "default": False}
    for name, why in NO_EFFECT.items():
        properties.setdefault(name, {})["description"] = f"Accepted without effect: {why}."
    for name, why in REFUSED.items():
        properties[name] = {
            "type": "null",
            "description": f"Refused (null, false or empty asks for nothing and is accepted): {why}.",
        }
    for name, (low, high) in RANGES.items():
        properties[name] = {
            "anyOf": [
                {"type": "number", "minimum": low, **({"maximum": high} if high is not None else {})},
                {"type": "null"},
            ]
        }
        if name in ("max_output_tokens", "max_tool_calls", "top_logprobs"):
            properties[name]["anyOf"][0]["type"] = "integer"
    for name in sorted(VLLM_EXTENSIONS):
        properties.setdefault(
            name, {"description": "vLLM's extension, validated and applied by vLLM as on its chat route."}
        )
    schema["required"] = [
        "model",
        "input",
    ]  # `input` may be left out only when continuing (previous_response_id, conversation)
    schema["additionalProperties"] = False
    schema["description"] = (
        "The Responses API's create body (the openai package's ResponseCreateParams) with vLLM's extensions. "
        "Chat-completions names are answered with a 400 naming their Responses equivalent: "
        + ", ".join(sorted(CHAT_HABITS))
        + "."
    )


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": _ref("Error")}}}


def _json(description: str, name: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": _ref(name)}}}


def _body(name: str, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {_JSON: {"schema": _ref(name)}}}


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _include() -> dict[str, Any]:
    from openai.types.responses import ResponseIncludable

    values = sorted(typing.get_args(ResponseIncludable))
    return {
        **_query("include", {"type": "array", "items": {"enum": values}}, "Extra output to include."),
        "style": "form",
        "explode": True,
    }


def _listing() -> list[dict[str, Any]]:
    return [
        _query("limit", {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}, "How many items to return."),
        _query("order", {"enum": ["asc", "desc"], "default": "desc"}, "The order of the items."),
        _query("after", {"type": "string"}, "An item id to list the items after."),
    ]


_SSE = "text/event-stream"
_BAD, _MISSING, _LARGE = _error("Invalid request."), _error("No such object."), _error("Request body too large.")
_UNAVAILABLE = _error("The store or the engine is unavailable; retry later.")


def _links(targets: dict[str, tuple[str, ...]], **parameters: str) -> dict[str, Any]:
    """OpenAPI links from an answer to the operations that take what it returns (schemathesis's
    stateful phase follows them: create, then retrieve, list, cancel, delete)."""
    return {
        f"{method}{path}".replace("/", "_").replace("{", "").replace("}", ""): {
            "x-operation": [path, method],
            "parameters": {name: value for name, value in parameters.items() if "{" + name + "}" in path},
        }
        for path, methods in targets.items()
        for method in methods
    }


def operations() -> dict[str, dict[str, dict[str, Any]]]:
    """``path → method → operation fields`` of every route of ours."""
    response_id, conversation_id, item_id = _path("response_id"), _path("conversation_id"), _path("item_id")
    response = _json("The response object.", "Response")
    streamed = {**response, "content": {**response["content"], _SSE: {"schema": {"type": "string"}}}}
    streamed["description"] = "The response object, or its events as server-sent events (`stream`)."
    errors = {"400": _BAD, "404": _MISSING, "503": _UNAVAILABLE}
    conversation = _json("The conversation.", "Conversation")
    by_response = {
        "/v1/responses/{response_id}": ("get", "delete"),
        "/v1/responses/{response_id}/cancel": ("post",),
        "/v1/responses/{response_id}/input_items": ("get",),
    }
    by_conversation = {
        "/v1/conversations/{conversation_id}": ("get", "post", "delete"),
        "/v1/conversations/{conversation_id}/items": ("get", "post"),
    }
    by_item = {"/v1/conversations/{conversation_id}/items/{item_id}": ("get", "delete")}
    created = {**streamed, "links": _links(by_response, response_id="$response.body#/id")}
    created_conversation = {**conversation, "links": _links(by_conversation, conversation_id="$response.body#/id")}
    items = {
        "200": _json("The items.", "ConversationItemList")
        | {
            "links": _links(
                by_item, conversation_id="$request.path.conversation_id", item_id="$response.body#/data/0/id"
            )
        }
    }
    return {
        "/v1/responses": {
            "post": {
                "summary": "Create a model response",
                "requestBody": _body("ResponseCreateParams"),
                "responses": {
                    "200": created,
                    **errors,
                    "413": _LARGE,
                    "500": _error("Generation failed (the response is stored as failed)."),
                },
            }
        },
        "/v1/responses/compact": {
            "post": {
                "summary": (
                    "Compact a conversation (a create body; `stream`, `background` and `conversation` are refused)"
                ),
                "requestBody": _body("ResponseCreateParams"),
                "responses": {
                    "200": _json("The context's user messages, then one compaction item.", "CompactedResponse"),
                    **errors,
                    "413": _LARGE,
                    "500": _error("The summary could not be generated."),
                },
            }
        },
        "/v1/responses/input_tokens": {
            "post": {
                "summary": "Count the input tokens of a create body's prompt (nothing generated or stored)",
                "requestBody": _body("ResponseCreateParams"),
                "responses": {"200": _json("The count.", "InputTokenCountResponse"), **errors, "413": _LARGE},
            }
        },
        "/v1/responses/{response_id}": {
            "get": {
                "summary": "Retrieve a model response (or stream a background one again)",
                "parameters": [
                    response_id,
                    _include(),
                    _query("stream", {"type": "boolean", "default": False}, "Stream a background response's events."),
                    _query(
                        "starting_after",
                        {"type": "integer", "minimum": 0},
                        "Stream the events after this sequence number.",
                    ),
                ],
                "responses": {"200": streamed, **errors},
            },
            "delete": {
                "summary": "Delete a model response",
                "parameters": [response_id],
                "responses": {"200": _json("The response was deleted.", "ResponseDeleted"), **errors},
            },
        },
        "/v1/responses/{response_id}/cancel": {
            "post": {
                "summary": "Cancel a background response",
                "parameters": [response_id],
                "responses": {"200": response, **errors},
            }
        },
        "/v1/responses/{response_id}/input_items": {
            "get": {
                "summary": "List a response's input items",
                "parameters": [response_id, _include(), *_listing()],
                "responses": {"200": _json("The input items.", "ResponseItemList"), **errors},
            }
        },
        "/v1/conversations": {
            "post": {
                "summary": "Create a conversation",
                "requestBody": _body("ConversationCreateParams", required=False),
                "responses": {"200": created_conversation, **errors, "413": _LARGE},
            }
        },
        "/v1/conversations/{conversation_id}": {
            "get": {
                "summary": "Retrieve a conversation",
                "parameters": [conversation_id],
                "responses": {"200": conversation, **errors},
            },
            "post": {
                "summary": "Update a conversation's metadata",
                "parameters": [conversation_id],
                "requestBody": _body("ConversationUpdateParams"),
                "responses": {"200": conversation, **errors, "413": _LARGE},
            },
            "delete": {
                "summary": "Delete a conversation",
                "parameters": [conversation_id],
                "responses": {"200": _json("The conversation was deleted.", "ConversationDeletedResource"), **errors},
            },
        },
        "/v1/conversations/{conversation_id}/items": {
            "get": {
                "summary": "List a conversation's items",
                "parameters": [conversation_id, _include(), *_listing()],
                "responses": {**items, **errors},
            },
            "post": {
                "summary": "Add items to a conversation",
                "parameters": [conversation_id, _include()],
                "requestBody": _body("ConversationItemCreateParams"),
                "responses": {**items, **errors, "413": _LARGE},
            },
        },
        "/v1/conversations/{conversation_id}/items/{item_id}": {
            "get": {
                "summary": "Retrieve a conversation item",
                "parameters": [conversation_id, item_id, _include()],
                "responses": {"200": _json("The item.", "ConversationItem"), **errors},
            },
            "delete": {
                "summary": "Delete a conversation item",
                "parameters": [conversation_id, item_id],
                "responses": {"200": _json("The conversation, without the item.", "Conversation"), **errors},
            },
        },
    }
