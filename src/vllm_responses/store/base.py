"""The store interface: what the Responses layer keeps, and the contract every backend meets.

Shaped like the Agents SDK's ``memory/session.py``: one small ABC, backends beside it
(:mod:`.sqlite`, :mod:`.redis`). Records are plain JSON-ready dicts in the shapes the API
returns (a ``Response``, ``ResponseItem``/``ConversationItem``, a ``Conversation``), so a
backend never imports ``openai`` and never interprets what it keeps beyond the few fields
named here (``id``, ``status``, ``created_at``).
"""

import asyncio
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

JSON = dict[str, Any]
Order = Literal["asc", "desc"]

# A response in one of these states is still owned by the process running it.
RUNNING_STATUSES = frozenset({"queued", "in_progress"})


@dataclass
class StoredResponse:
    """One response and what the store knows about it.

    ``response`` is the ``Response`` object as the API returns it (its ``status`` is the
    record's status). ``input_items`` are the request's own input items in item shape (each
    with an ``id``); they are loaded only by :meth:`Store.get_response` with
    ``with_input=True``. ``owner`` is the process running the response while its status is
    ``queued`` or ``in_progress``.
    """

    response: JSON
    input_items: list[JSON] | None = None
    previous_response_id: str | None = None
    conversation_id: str | None = None
    background: bool = False
    owner: str | None = None
    # Input item ids the server did not make (the client chose them, or they are copies of
    # referenced items): kept with the response but never put in the global item index, so
    # that another response's ``item_reference`` cannot reach them and a later writer of the
    # same id cannot take the index from this one (issue 24).
    client_ids: frozenset[str] = frozenset()
    # Bytes of what was read back (the response JSON, and its input items when loaded):
    # what ``history`` counts against its budget.
    size: int = 0
    # The API key that made it, as a tenant id (:mod:`..tenancy`); ``None``: shared.
    tenant: str | None = None

    @property
    def id(self) -> str:
        return self.response["id"]

    @property
    def status(self) -> str:
        return self.response["status"]

    @property
    def created_at(self) -> float:
        return float(self.response["created_at"])


@dataclass
class StoredConversation:
    """A ``Conversation`` object as the API returns it, with what the store knows about it:
    ``size``, the bytes it takes with its items (read without loading them, so that a huge
    one is refused unread), and the ``tenant`` that made it (``None``: shared)."""

    conversation: JSON
    size: int = 0
    tenant: str | None = None

    @property
    def id(self) -> str:
        return self.conversation["id"]


def visible(owner: str | None, tenant: str | None) -> bool:
    """Whether a record made by ``owner`` is seen by a request of ``tenant``: a request
    without a tenant (one API key or none, or shared state) sees everything, a record without
    one (made so, or before tenancy) is seen by everyone; otherwise only its own tenant does."""
    return owner is None or tenant is None or owner == tenant


@dataclass
class ItemPage:
    """One page of a list: ``has_more`` says whether items follow in the same order."""

    items: list[JSON] = field(default_factory=list)
    has_more: bool = False


def page_of(items: list[JSON], limit: int | None) -> ItemPage:
    """The page from up to ``limit + 1`` items read in order: backends read one item past the
    limit so that ``has_more`` needs no second count query."""
    if limit is None or len(items) <= limit:
        return ItemPage(items)
    return ItemPage(items[:limit], has_more=True)


@dataclass(frozen=True)
class Retention:
    """How long and how much the store keeps; ``None`` means no limit of that kind.

    Ages count from a response's ``created_at`` and from a conversation's last change.
    """

    max_age_s: float | None = 30 * 24 * 3600
    max_responses: int | None = 10_000
    max_conversations: int | None = 10_000
    # Responses (with their items and events) and conversations (with their items) together;
    # the oldest of either kind go first, so that 10,000 large responses cannot fill a disk.
    max_bytes: int | None = 2 * 1024**3


class Store(ABC):
    """Persistent state of the Responses layer, shared by every process that opens it.

    Contract (tests/unit/test_store.py checks every backend against it):
    - Every method is a coroutine and never blocks the event loop: file and network I/O
      run off the loop (a thread for SQLite, the asyncio client for Redis).
    - Writes are atomic per call: a reader sees a call's effect whole or not at all, and a
      record written by one process is visible to every other process once the call returns.
    - Missing records read as ``None`` (or ``False`` for deletes); nothing raises for them.
    - Backend failures (disk full, Redis down) raise :class:`StoreUnavailable`.
    - Responses: :meth:`create_response` writes the record with its input items;
      :meth:`finish_response` replaces the ``response`` object only while the stored one
      is still running (``queued``/``in_progress``) and reports whether it did, so the
      first terminal writer wins (the owner finishing, a cancel, the sweeper finding a dead
      owner). Output items and the input items whose ids the server made become
      addressable by id (:meth:`get_items`); the first writer of an id keeps it (ids in
      ``client_ids`` are never indexed, so a client cannot take another response's id).
    - Events of background responses are appended in order with their ``sequence_number``
      and read back after any sequence number; :meth:`wait_events` returns as soon as
      events after ``after`` exist, or an empty list when ``timeout`` passes.
    - Owners (server processes) prove they are alive with :meth:`heartbeat`; a response
      whose owner has not beaten within its ttl is abandoned (its process died).
    - Tenants: a response or conversation keeps the ``tenant`` it was created with; of the
      reads, only :meth:`get_items` filters by it (:func:`visible`), since it alone finds
      records by something other than their own id. The callers check the rest.
    - Conversation items keep insertion order; adding an item whose id the conversation
      already holds replaces its content in place.
    - :meth:`prune` enforces :class:`Retention`: it deletes what is older than
      ``max_age_s`` and the oldest records beyond the counts or ``max_bytes``, with everything they own
      (input items, events, conversation items). Running responses are never pruned.
    """

    backend = ""  # the metrics' ``backend`` label

    def __init__(self, retention: Retention = Retention()) -> None:
        self.retention = retention

    # -- responses ------------------------------------------------------------------------
    @abstractmethod
    async def create_response(self, record: StoredResponse) -> None:
        """Insert (or replace) a response with its input items, previous id, owner."""

    @abstractmethod
    async def finish_response(self, response: JSON) -> bool:
        """Store the final ``response`` (any status) if the stored one is still running.

        Clears the owner. Returns ``False`` (and changes nothing) when the response is
        missing or already terminal.
        """

    @abstractmethod
    async def update_running_response(self, response: JSON) -> bool:
        """Replace a running response's object (e.g. ``queued`` → ``in_progress``) without
        finishing it; ``False`` when it is missing or already terminal."""

    @abstractmethod
    async def get_response(self, response_id: str, *, with_input: bool = False) -> StoredResponse | None:
        """The record, with ``input_items`` loaded when ``with_input``."""

    @abstractmethod
    async def delete_response(self, response_id: str) -> bool:
        """Delete a response, its input items and events; ``True`` if it existed."""

    @abstractmethod
    async def get_items(self, item_ids: list[str], tenant: str | None = None) -> dict[str, JSON]:
        """Items of stored responses by server-made item id (missing ids are left out); an id
        a client chose is not found here, only in its own chain or conversation. Only items
        of responses :func:`visible` to ``tenant`` are found."""

    # -- background events and cancellation -----------------------------------------------
    @abstractmethod
    async def append_events(self, response_id: str, events: list[tuple[int, str]]) -> None:
        """Append ``(sequence_number, event JSON)`` pairs, in order.

        Numbers already stored are skipped (a retried append), and so are the events of a
        response that no longer exists (deleted while its owner ran): nothing would delete them.
        """

    @abstractmethod
    async def read_events(self, response_id: str, after: int = -1, limit: int | None = None) -> list[tuple[int, str]]:
        """Events with ``sequence_number > after``, in order."""

    async def wait_events(self, response_id: str, after: int, timeout: float) -> list[tuple[int, str]]:
        """Events after ``after``, waiting up to ``timeout`` seconds for the first to exist.

        This default polls; a backend with a blocking read (Redis streams) overrides it.
        """
        deadline = time.monotonic() + timeout
        while True:
            events = await self.read_events(response_id, after)
            remaining = deadline - time.monotonic()
            if events or remaining <= 0:
                return events
            await asyncio.sleep(min(self.poll_interval, remaining))

    poll_interval: float = 0.05

    @abstractmethod
    async def request_cancel(self, response_id: str) -> None:
        """Ask the owner of a running response to cancel it (a no-op for a missing response)."""

    @abstractmethod
    async def cancel_requested(self, response_ids: list[str]) -> set[str]:
        """Which of these responses someone asked to cancel."""

    # -- owners -----------------------------------------------------------------------------
    @abstractmethod
    async def heartbeat(self, owner: str, ttl: float) -> None:
        """Record that ``owner`` is alive for the next ``ttl`` seconds."""

    @abstractmethod
    async def alive(self, owner: str) -> bool:
        """Whether ``owner`` has beaten within its last ttl."""

    @abstractmethod
    async def running_responses(self) -> list[tuple[str, str | None]]:
        """``(response id, owner)`` of every response still ``queued`` or ``in_progress``."""

    @abstractmethod
    async def count_responses(self) -> int:
        """How many responses the store holds, of any status (for the metrics)."""

    # -- conversations --------------------------------------------------------------------
    @abstractmethod
    async def create_conversation(self, conversation: JSON, items: list[JSON], tenant: str | None = None) -> None:
        """Insert a ``Conversation`` object with its first items, made by ``tenant``."""

    @abstractmethod
    async def get_conversation(self, conversation_id: str) -> StoredConversation | None:
        """The ``Conversation`` object with its size and tenant (its items are not loaded)."""

    @abstractmethod
    async def update_conversation(self, conversation: JSON) -> bool:
        """Replace a conversation's object (metadata); ``False`` if it does not exist."""

    @abstractmethod
    async def delete_conversation(self, conversation_id: str) -> bool:
        """Delete a conversation and its items; ``True`` if it existed."""

    @abstractmethod
    async def add_conversation_items(self, conversation_id: str, items: list[JSON]) -> bool:
        """Append items (each with an ``id``); ``False`` if the conversation does not exist."""

    @abstractmethod
    async def list_conversation_items(
        self, conversation_id: str, *, after: str | None = None, limit: int | None = None, order: Order = "asc"
    ) -> ItemPage | None:
        """Items in ``order``, starting after the item ``after`` (in that order); ``None``
        if the conversation does not exist; an empty page if ``after`` is not in it."""

    @abstractmethod
    async def get_conversation_item(self, conversation_id: str, item_id: str) -> JSON | None:
        """One item of a conversation."""

    @abstractmethod
    async def delete_conversation_item(self, conversation_id: str, item_id: str) -> bool:
        """Delete one item of a conversation; ``True`` if it existed."""

    # -- upkeep ---------------------------------------------------------------------------
    @abstractmethod
    async def prune(self, now: float | None = None) -> int:
        """Enforce :attr:`retention`; returns how many responses and conversations it deleted."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections and threads."""


class StoreUnavailable(Exception):
    """The backend cannot be reached or cannot write (answered 503 by the routes)."""
