"""What the model sees: the request's input after the state it names is brought in.

``previous_response_id`` brings every earlier turn of the chain (their input items and all
their output items: reasoning, messages, tool calls and outputs; not their instructions),
``conversation`` brings the conversation's items, ``item_reference`` items become the stored
items they name, and sealed reasoning (``encrypted_content``) is opened so the chat template
gets the model's own earlier thinking back.

State is found only where the request's tenant may see it (:mod:`.tenancy`): another tenant's
response or conversation reads as missing, with the very answer a missing one gets.
"""

from dataclasses import dataclass, field
from typing import Any

from ..common.errors import invalid_request, not_found
from ..common.sealing import BrokenSeal, Dropped, ReasoningSealer
from ..request.items import sealed_free, to_model_input, to_stored
from ..request.protocol import OFF_LOOP_ITEMS, ResponsesRequest, off_loop_if
from ..settings import DEFAULT_MAX_HISTORY_BYTES
from ..store import Store, StoredConversation, visible
from ..store.base import JSON, RUNNING_STATUSES
from . import compaction

# A chain longer than this is refused rather than walked (it would not fit a context anyway).
MAX_CHAIN = 10_000


@dataclass
class Context:
    """``model_items``: typed items for the engine, in order (history first).
    ``input_items``: the request's own input items in stored shape (ids assigned, references
    resolved, reasoning opened): what the response keeps as its input and what a
    conversation gains."""

    model_items: list[Any] = field(default_factory=list)
    input_items: list[JSON] = field(default_factory=list)
    earlier: list[JSON] = field(default_factory=list)  # what the state brought in, stored shape


class History:
    def __init__(self, store: Store, sealer: ReasoningSealer, max_bytes: int = DEFAULT_MAX_HISTORY_BYTES) -> None:
        self.store = store
        self.sealer = sealer
        self.max_bytes = max_bytes

    async def resolve(self, request: ResponsesRequest, earlier: list[JSON] | None = None) -> Context:
        """``earlier``: the items ``previous_response_id`` stands for, when the caller already
        holds them (a WebSocket connection's last turn); otherwise they come from the store."""
        dropped = Dropped()  # blobs not ours: one log line for the request, however many
        try:
            return await self._resolve(request, earlier, dropped)
        finally:
            dropped.log()

    async def _resolve(self, request: ResponsesRequest, earlier: list[JSON] | None, dropped: Dropped) -> Context:
        if earlier is None:
            earlier = []
            if request.previous_response_id:
                earlier = await self.chain(request.previous_response_id, request.tenant)
            elif request.conversation_id:
                earlier = await self.conversation_items(request.conversation_id, request.tenant)
        own = await self.own_items(request.input, earlier, dropped=dropped, tenant=request.tenant)
        check_tool_calls(request.input, earlier + own)
        if not earlier:  # the request's typed items are already what the engine needs
            return Context(compaction.window(request_items(request, own), self.sealer, dropped), own)
        where = "previous_response_id" if request.previous_response_id else "conversation"
        model_items = compaction.window(
            to_model_input(earlier, where) + request_items(request, own), self.sealer, dropped
        )
        return Context(model_items, own, earlier)

    async def chain(self, response_id: str, tenant: str | None = None) -> list[JSON]:
        """Every item of a chain of responses, oldest first, ending with ``response_id``'s output."""
        turns: list[list[JSON]] = []
        current: str | None = response_id
        loaded = 0
        while current is not None:
            record = await self.store.get_response(current, with_input=True)
            if record is None or not visible(record.tenant, tenant):
                # 400, as OpenAI answers it (clients look for 400 + this code to resend the whole input)
                raise invalid_request(
                    f"Previous response with id '{current}' not found.",
                    param="previous_response_id",
                    code="previous_response_not_found",
                )
            if record.status in RUNNING_STATUSES:
                raise invalid_request(
                    f"Previous response with id '{current}' is still {record.status.replace('_', ' ')}; "
                    "continue from it once it has finished.",
                    param="previous_response_id",
                    code="previous_response_not_finished",
                )
            loaded += record.size  # what this record brought into memory
            if loaded > self.max_bytes:  # one record at a time: memory stays near the budget
                raise invalid_request(
                    f"The chain of previous responses ending with '{response_id}' holds more than {self.max_bytes} "
                    "bytes "
                    "(VLLM_RESPONSES_MAX_HISTORY_BYTES); continue from a compacted response, or send the input you "
                    "need.",
                    param="previous_response_id",
                    code="history_too_large",
                )
            turns.append(
                (record.input_items or []) + [sealed_free(item) for item in record.response.get("output") or []]
            )
            current = record.previous_response_id
            if len(turns) > MAX_CHAIN:
                raise invalid_request("The chain of previous responses is too long.", param="previous_response_id")
        return [item for turn in reversed(turns) for item in turn]

    async def conversation(
        self, conversation_id: str, tenant: str | None, param: str = "conversation_id"
    ) -> StoredConversation:
        """A conversation the tenant may see; 404 (as for a missing one) otherwise."""
        found = await self.store.get_conversation(conversation_id)
        if found is None or not visible(found.tenant, tenant):
            raise not_found("Conversation", conversation_id, param, "conversation_not_found")
        return found

    async def conversation_items(self, conversation_id: str, tenant: str | None = None) -> list[JSON]:
        size = (await self.conversation(conversation_id, tenant, "conversation")).size
        if size > self.max_bytes:  # refused before its items are read
            raise invalid_request(
                f"Conversation '{conversation_id}' holds more than {self.max_bytes} bytes "
                "(VLLM_RESPONSES_MAX_HISTORY_BYTES); "
                "compact it or start a new one.",
                param="conversation",
                code="history_too_large",
            )
        page = await self.store.list_conversation_items(conversation_id, order="asc")
        if page is None:
            raise not_found("Conversation", conversation_id, "conversation", "conversation_not_found")
        return page.items

    async def own_items(
        self,
        items: list[Any],
        earlier: list[JSON] | None = None,
        conversation_id: str | None = None,
        dropped: Dropped | None = None,
        tenant: str | None = None,
    ) -> list[JSON]:
        """Typed input items in stored shape, references resolved and seals opened (a
        request's input, or items added to a conversation). Blobs that are not ours are
        counted in ``dropped``; without one, they are logged here, in one line.

        An ``item_reference`` finds, in this order: an item of ``earlier`` (the chain or
        conversation the request continues; the latest copy of an id), an item of the
        conversation ``conversation_id`` (which the caller checked the tenant may see), or an
        item whose id the server made (the store's index; 192-bit, unguessable), in a response
        of the ``tenant``. An id a client chose is thus reached only from its own chain or
        conversation, never from another client's response."""
        references = list(dict.fromkeys(item.id for item in items if getattr(item, "type", None) == "item_reference"))
        found: dict[str, JSON] = {}
        if references:
            wanted = set(references)
            for item in earlier or ():
                if item.get("id") in wanted:
                    found[item["id"]] = item
            if conversation_id:
                for ref in references:
                    if (
                        ref not in found
                        and (item := await self.store.get_conversation_item(conversation_id, ref)) is not None
                    ):
                        found[ref] = item
            rest = [ref for ref in references if ref not in found]
            if rest:
                found.update(await self.store.get_items(rest, tenant))
        mine = dropped is None
        dropped = dropped or Dropped()
        try:
            return await off_loop_if(len(items) >= OFF_LOOP_ITEMS, self._own, items, found, dropped)
        finally:
            if mine:
                dropped.log()

    def _own(self, items: list[Any], found: dict[str, JSON], dropped: Dropped) -> list[JSON]:
        out: list[JSON] = []
        for i, item in enumerate(items):
            kind = getattr(item, "type", None)
            if kind == "item_reference":
                stored = found.get(item.id)
                if stored is None:
                    raise not_found("Item", item.id, f"input[{i}]", "item_not_found")
                out.append(stored)
            elif kind == "reasoning" and item.encrypted_content:
                opened = self._open(item, i, dropped)
                if opened is not None:
                    out.append(opened)
            elif kind == "compaction":  # kept sealed; a blob that is not ours is dropped
                try:
                    if self.sealer.open(item.encrypted_content, "compaction item", dropped) is not None:
                        out.append(to_stored(item))
                except BrokenSeal as exc:
                    raise invalid_request(
                        str(exc), param=f"input[{i}].encrypted_content", code="invalid_encrypted_content"
                    ) from None
            else:
                out.append(to_stored(item))
        return out

    def _open(self, item: Any, index: int, dropped: Dropped) -> JSON | None:
        """A sealed reasoning item with its plaintext put back; ``None`` if the seal is not ours."""
        try:
            text = self.sealer.open(item.encrypted_content, dropped=dropped)
        except BrokenSeal as exc:
            raise invalid_request(
                str(exc), param=f"input[{index}].encrypted_content", code="invalid_encrypted_content"
            ) from None
        stored = to_stored(item)
        stored.pop("encrypted_content", None)
        if text is None:
            if not item.content:  # nothing readable is left: drop it, as the module says
                return None
            return stored
        stored["content"] = [{"type": "reasoning_text", "text": text}]
        return stored


# Calls and outputs paired by ``call_id`` (a tool search's may go without one; a local shell
# call's output names its call by ``id``).
_CALLS = frozenset({"function_call", "custom_tool_call", "shell_call", "apply_patch_call", "local_shell_call"})
_OUTPUTS = frozenset(
    {"function_call_output", "custom_tool_call_output", "shell_call_output", "apply_patch_call_output"}
)


def check_tool_calls(items: list[Any], context: list[JSON]) -> None:
    """Tool calls and their outputs must pair up: a call's ``call_id`` is unique among the
    request's calls, and every output answers a call of the conversation (``context``: all
    of it, in stored shape). A template given a dangling or ambiguous ``tool_call_id``
    renders something the model never saw, or fails."""
    known = {item.get("call_id") for item in context if item.get("type") in _CALLS}
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        kind = getattr(item, "type", None)
        if kind in _CALLS:
            if item.call_id in seen:
                raise invalid_request(
                    f"Duplicate 'call_id' in input[{i}]: '{item.call_id}' is already the call_id of "
                    f"input[{seen[item.call_id]}].",
                    param=f"input[{i}].call_id",
                )
            seen[item.call_id] = i
        elif kind in _OUTPUTS and item.call_id not in known:
            raise invalid_request(
                f"No tool call found for {kind.removesuffix('_output').replace('_', ' ')} output with call_id "
                f"'{item.call_id}'.",
                param=f"input[{i}].call_id",
            )


def client_ids(items: list[Any]) -> frozenset[str]:
    """Ids of input items that the client sent (its own ids, and the ids its references
    name): the store keeps them with the response but never indexes them globally."""
    return frozenset(item_id for item in items if isinstance(item_id := getattr(item, "id", None), str) and item_id)


def request_items(request: ResponsesRequest, own: list[JSON]) -> list[Any]:
    """The request's own items for the engine: its typed items, unless resolving changed them."""
    if not any(
        getattr(item, "type", None) == "item_reference" or getattr(item, "encrypted_content", None)
        for item in request.input
    ):
        return request.input
    return to_model_input(own, "input")
