"""Conversations as the core keeps them: the operations of ``/v1/conversations``, whole.

A conversation is a list of items the store keeps; a response created with ``conversation``
reads them as its history (:mod:`.history`) and appends its input and output to them
(:class:`~.records.Records`). A conversation belongs to the tenant (API key) that created it;
to any other it reads as missing, 404 (:mod:`.tenancy`). Items added here are in stored
shape, references resolved where the tenant may look.
"""

import time
from typing import Any

from ..common.errors import not_found
from ..common.ids import new_id
from ..request.validation import check_metadata
from ..store import ItemPage, Store
from ..store.base import JSON, Order
from .history import History
from .records import store_call


class Conversations:
    def __init__(self, store: Store, history: History) -> None:
        self.store = store
        self.history = history

    async def create(self, metadata: Any, items: list[Any], tenant: str | None) -> JSON:
        conversation = {
            "id": new_id("conv"),
            "object": "conversation",
            "created_at": int(time.time()),
            "metadata": check_metadata(metadata),
        }
        stored = await self._stored(items, tenant)
        await store_call(self.store.create_conversation(conversation, stored, tenant))
        return conversation

    async def get(self, conversation_id: str, tenant: str | None) -> JSON:
        """The ``Conversation`` object, if the tenant may see it; else 404, as for a missing one."""
        return (await store_call(self.history.conversation(conversation_id, tenant))).conversation

    async def update(self, conversation_id: str, metadata: Any, tenant: str | None) -> JSON:
        conversation = {**await self.get(conversation_id, tenant), "metadata": check_metadata(metadata)}
        if not await store_call(self.store.update_conversation(conversation)):
            raise _missing(conversation_id)
        return conversation

    async def delete(self, conversation_id: str, tenant: str | None) -> None:
        await self.get(conversation_id, tenant)
        if not await store_call(self.store.delete_conversation(conversation_id)):
            raise _missing(conversation_id)

    async def list_items(
        self, conversation_id: str, tenant: str | None, after: str | None, limit: int, order: Order
    ) -> ItemPage:
        await self.get(conversation_id, tenant)
        page = await store_call(
            self.store.list_conversation_items(conversation_id, after=after, limit=limit, order=order)
        )
        if page is None:
            raise _missing(conversation_id)
        return page

    async def add_items(self, conversation_id: str, items: list[Any], tenant: str | None) -> list[JSON]:
        """Typed items (the caller validated them: an empty list is refused before this)."""
        await self.get(conversation_id, tenant)
        stored = await self._stored(items, tenant, conversation_id)
        if not await store_call(self.store.add_conversation_items(conversation_id, stored)):
            raise _missing(conversation_id)
        return stored

    async def get_item(self, conversation_id: str, item_id: str, tenant: str | None) -> JSON:
        await self.get(conversation_id, tenant)
        item = await store_call(self.store.get_conversation_item(conversation_id, item_id))
        if item is None:
            raise not_found("Item", item_id, "item_id", "item_not_found")
        return item

    async def delete_item(self, conversation_id: str, item_id: str, tenant: str | None) -> JSON:
        """Deletes one item; the conversation is answered."""
        conversation = await self.get(conversation_id, tenant)
        if not await store_call(self.store.delete_conversation_item(conversation_id, item_id)):
            raise not_found("Item", item_id, "item_id", "item_not_found")
        return conversation

    async def _stored(self, items: list[Any], tenant: str | None, conversation_id: str | None = None) -> list[JSON]:
        return await store_call(self.history.own_items(items, conversation_id=conversation_id, tenant=tenant))


def _missing(conversation_id: str) -> Exception:
    return not_found("Conversation", conversation_id, "conversation_id", "conversation_not_found")


__all__ = ["Conversations"]
