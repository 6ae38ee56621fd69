"""HTTP transport of the Conversations API (``/v1/conversations``), in the shapes the openai SDK
types it: parses, calls :class:`~.stored_conversations.Conversations` through the service,
frames the answer."""

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..common.errors import invalid_request
from ..request.protocol import parse_items, parse_json_object
from .routes import (
    answers_errors,
    include_param,
    item_list,
    json_response,
    list_params,
    read_body,
    service_of,
)
from .tenancy import tenant_of

router = APIRouter()

MAX_ITEMS_PER_CALL = 20


async def _body(raw: Request) -> dict[str, Any]:
    text = await read_body(raw)
    return parse_json_object(text) if text.strip() else {}


def _typed_items(value: Any, param: str = "items") -> list[Any]:
    """The items of a body, validated (checked before the conversation is looked up, as for
    every other bad body)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid_request(
            f"Invalid type for '{param}': expected an array of items.", param=param, code="invalid_type"
        )
    if len(value) > MAX_ITEMS_PER_CALL:
        raise invalid_request(
            f"Invalid '{param}': array too long. At most {MAX_ITEMS_PER_CALL} items can be added at a time, but got "
            f"{len(value)}.",
            param=param,
            code="array_above_max_length",
        )
    return parse_items(value, param)


@router.post("/v1/conversations")
@answers_errors
async def create_conversation(raw: Request) -> Response:
    service, body = service_of(raw), await _body(raw)
    conversation = await service.conversations.create(
        body.get("metadata"), _typed_items(body.get("items")), tenant_of(raw.scope)
    )
    return json_response(orjson.dumps(conversation))


@router.get("/v1/conversations/{conversation_id}")
@answers_errors
async def retrieve_conversation(conversation_id: str, raw: Request) -> Response:
    return json_response(orjson.dumps(await service_of(raw).conversations.get(conversation_id, tenant_of(raw.scope))))


@router.post("/v1/conversations/{conversation_id}")
@answers_errors
async def update_conversation(conversation_id: str, raw: Request) -> Response:
    service, body = service_of(raw), await _body(raw)
    if "metadata" not in body:
        raise invalid_request(
            "Missing required parameter: 'metadata'.", param="metadata", code="missing_required_parameter"
        )
    conversation = await service.conversations.update(conversation_id, body["metadata"], tenant_of(raw.scope))
    return json_response(orjson.dumps(conversation))


@router.delete("/v1/conversations/{conversation_id}")
@answers_errors
async def delete_conversation(conversation_id: str, raw: Request) -> Response:
    await service_of(raw).conversations.delete(conversation_id, tenant_of(raw.scope))
    return json_response(orjson.dumps({"id": conversation_id, "object": "conversation.deleted", "deleted": True}))


@router.get("/v1/conversations/{conversation_id}/items")
@answers_errors
async def list_items(conversation_id: str, raw: Request) -> Response:
    include_param(raw)
    limit, order, after = list_params(raw)
    conversations = service_of(raw).conversations
    tenant = tenant_of(raw.scope)
    page = await conversations.list_items(conversation_id, tenant, after, limit, order)  # type: ignore[arg-type]
    return json_response(orjson.dumps(item_list(page.items, page.has_more)))


@router.post("/v1/conversations/{conversation_id}/items")
@answers_errors
async def create_items(conversation_id: str, raw: Request) -> Response:
    include_param(raw)
    service, body = service_of(raw), await _body(raw)
    if "items" not in body:
        raise invalid_request("Missing required parameter: 'items'.", param="items", code="missing_required_parameter")
    typed = _typed_items(body["items"])
    if not typed:
        raise invalid_request("Invalid 'items': empty array. Add at least one item.", param="items", code="empty_array")
    items = await service.conversations.add_items(conversation_id, typed, tenant_of(raw.scope))
    return json_response(orjson.dumps(item_list(items, False)))


@router.get("/v1/conversations/{conversation_id}/items/{item_id}")
@answers_errors
async def retrieve_item(conversation_id: str, item_id: str, raw: Request) -> Response:
    include_param(raw)
    return json_response(
        orjson.dumps(await service_of(raw).conversations.get_item(conversation_id, item_id, tenant_of(raw.scope)))
    )


@router.delete("/v1/conversations/{conversation_id}/items/{item_id}")
@answers_errors
async def delete_item(conversation_id: str, item_id: str, raw: Request) -> Response:
    return json_response(
        orjson.dumps(await service_of(raw).conversations.delete_item(conversation_id, item_id, tenant_of(raw.scope)))
    )
