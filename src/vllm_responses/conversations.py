"""The Conversations API (``/v1/conversations``), in the shapes the openai SDK types it.

A conversation is a list of items the server keeps; a response created with
``conversation`` reads them as its history and appends its input and output to them
(:mod:`.history`, :meth:`~.service.ResponsesService.persist`). A conversation belongs to the
tenant (API key) that created it; to any other it reads as missing, 404 (:mod:`.tenancy`).
"""

import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from .errors import invalid_request, not_found
from .ids import new_id
from .protocol import parse_items, parse_json_object
from .routes import answers_errors, include_param, item_list, json_response, list_params, read_body, service_of
from .service import ResponsesService, store_call
from .tenancy import tenant_of
from .validation import check_metadata

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
        raise invalid_request(f"Invalid type for '{param}': expected an array of items.", param=param, code="invalid_type")
    if len(value) > MAX_ITEMS_PER_CALL:
        raise invalid_request(
            f"Invalid '{param}': array too long. At most {MAX_ITEMS_PER_CALL} items can be added at a time, but got {len(value)}.",
            param=param,
            code="array_above_max_length",
        )
    # References reach this conversation's items, and server-made ids (history.own_items).
    return parse_items(value, param)


async def _items(service: ResponsesService, items: list[Any], tenant: str | None, conversation_id: str | None = None) -> list[dict[str, Any]]:
    """In stored shape, references resolved where the tenant may look (:meth:`.History.own_items`)."""
    return await store_call(service.history.own_items(items, conversation_id=conversation_id, tenant=tenant))


async def _conversation(service: ResponsesService, conversation_id: str, raw: Request) -> dict[str, Any]:
    """The conversation, if the request's tenant may see it; else 404, as for a missing one."""
    return (await store_call(service.history.conversation(conversation_id, tenant_of(raw.scope)))).conversation


@router.post("/v1/conversations")
@answers_errors
async def create_conversation(raw: Request) -> Response:
    service, body = service_of(raw), await _body(raw)
    conversation = {"id": new_id("conv"), "object": "conversation", "created_at": int(time.time()), "metadata": check_metadata(body.get("metadata"))}
    tenant = tenant_of(raw.scope)
    await store_call(service.store.create_conversation(conversation, await _items(service, _typed_items(body.get("items")), tenant), tenant))
    return json_response(orjson.dumps(conversation))


@router.get("/v1/conversations/{conversation_id}")
@answers_errors
async def retrieve_conversation(conversation_id: str, raw: Request) -> Response:
    return json_response(orjson.dumps(await _conversation(service_of(raw), conversation_id, raw)))


@router.post("/v1/conversations/{conversation_id}")
@answers_errors
async def update_conversation(conversation_id: str, raw: Request) -> Response:
    service, body = service_of(raw), await _body(raw)
    if "metadata" not in body:
        raise invalid_request("Missing required parameter: 'metadata'.", param="metadata", code="missing_required_parameter")
    conversation = {**await _conversation(service, conversation_id, raw), "metadata": check_metadata(body["metadata"])}
    if not await store_call(service.store.update_conversation(conversation)):
        raise not_found("Conversation", conversation_id, "conversation_id", "conversation_not_found")
    return json_response(orjson.dumps(conversation))


@router.delete("/v1/conversations/{conversation_id}")
@answers_errors
async def delete_conversation(conversation_id: str, raw: Request) -> Response:
    service = service_of(raw)
    await _conversation(service, conversation_id, raw)
    if not await store_call(service.store.delete_conversation(conversation_id)):
        raise not_found("Conversation", conversation_id, "conversation_id", "conversation_not_found")
    return json_response(orjson.dumps({"id": conversation_id, "object": "conversation.deleted", "deleted": True}))


@router.get("/v1/conversations/{conversation_id}/items")
@answers_errors
async def list_items(conversation_id: str, raw: Request) -> Response:
    include_param(raw)
    limit, order, after = list_params(raw)
    service = service_of(raw)
    await _conversation(service, conversation_id, raw)
    page = await store_call(service.store.list_conversation_items(conversation_id, after=after, limit=limit, order=order))  # type: ignore[arg-type]
    if page is None:
        raise not_found("Conversation", conversation_id, "conversation_id", "conversation_not_found")
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
    await _conversation(service, conversation_id, raw)
    items = await _items(service, typed, tenant_of(raw.scope), conversation_id=conversation_id)
    if not await store_call(service.store.add_conversation_items(conversation_id, items)):
        raise not_found("Conversation", conversation_id, "conversation_id", "conversation_not_found")
    return json_response(orjson.dumps(item_list(items, False)))


@router.get("/v1/conversations/{conversation_id}/items/{item_id}")
@answers_errors
async def retrieve_item(conversation_id: str, item_id: str, raw: Request) -> Response:
    include_param(raw)
    service = service_of(raw)
    await _conversation(service, conversation_id, raw)
    item = await store_call(service.store.get_conversation_item(conversation_id, item_id))
    if item is None:
        raise not_found("Item", item_id, "item_id", "item_not_found")
    return json_response(orjson.dumps(item))


@router.delete("/v1/conversations/{conversation_id}/items/{item_id}")
@answers_errors
async def delete_item(conversation_id: str, item_id: str, raw: Request) -> Response:
    service = service_of(raw)
    conversation = await _conversation(service, conversation_id, raw)
    if not await store_call(service.store.delete_conversation_item(conversation_id, item_id)):
        raise not_found("Item", item_id, "item_id", "item_not_found")
    return json_response(orjson.dumps(conversation))
