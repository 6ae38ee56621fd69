"""One response from request to terminal event, independent of the transport.

``ResponsesService.create`` does every check that can fail up front (so such failures are
plain 4xx answers), brings in the state the request names (:mod:`.history`), and hands back
either a :class:`Run` whose events the transport writes out as SSE frames or folds into one
JSON body, or, for ``background: true``, a :class:`~.background.BackgroundRun` that goes on
without the client. A stored response is written before the client sees its terminal
event, so a client that continues at once always finds what it continues from.
"""

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from pathlib import Path

from openai.types.responses import Response

from . import compaction, metrics
from .backend import Engine
from .background import BackgroundRun, BackgroundRuns, Logged, abandon, follow_stored
from .capture import DEFAULT_MAX_BYTES, Capture, CaptureWriter
from .deltas import (
    Delta,
    Finish,
    ReasoningDelta,
    Sampling,
    Started,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
    Usage,
)
from .errors import (
    APIError,
    EngineFailure,
    invalid_request,
    not_found,
    store_unavailable,
)
from .history import Context, History, client_ids
from .ids import new_id
from .items import stored_response
from .late_writes import LateWrites
from .logs import get_logger
from .owners import OwnerWatch
from .protocol import ResponsesRequest, initial_response, parse_request
from .sealing import ReasoningSealer
from .settings import DEFAULT_MAX_HISTORY_BYTES
from .sse import event_json
from .store import Store, StoredResponse, StoreUnavailable, visible
from .store.base import RUNNING_STATUSES
from .stream import Event, ResponseStream, StreamOptions
from .tasks import settle, spawn
from .upkeep import Keeper

logger = get_logger(__name__)

# Called with the final response before its terminal event leaves (persistence).
OnEnd = Callable[[Response], Awaitable[None]]


class Run:
    """A started response: iterate :meth:`batches` once; ``response`` is final afterwards.

    If the consumer stops early (the client left, a background response was cancelled) at
    any point, the first batch included, the engine request is aborted before
    :meth:`batches` returns, the response ends ``cancelled`` (``failed`` with
    :attr:`failure` as its message when that is set first, e.g. the server is stopping),
    :attr:`final_events` holds the events that end it and ``on_end`` still runs (in a task
    of its own).

    ``accepting``: the engine has not yet accepted the request (it waits in the queue or
    prefills); the first events go out once it has, and a refusal ends the response
    ``failed``. ``transport`` and ``started`` (``time.perf_counter()`` at the request) are
    for the metrics.
    """

    def __init__(
        self,
        stream: ResponseStream,
        deltas: AsyncGenerator[Started | Delta | Finish, None],
        on_end: OnEnd | None = None,
        accepting: "asyncio.Future[None] | None" = None,
        transport: str = "sse",
        started: float | None = None,
    ) -> None:
        self.transport, self.started = transport, time.perf_counter() if started is None else started
        self.first_sent = False  # its first events were handed to the transport
        self.stream = stream
        self._deltas = deltas
        self._on_end = on_end
        self._accepting = accepting
        self._read = False
        self.final_events: list[Event] = []
        self.ended: asyncio.Future[None] | None = None
        self.failure: str | None = None

    @property
    def response(self) -> Response:
        return self.stream.response

    async def batches(self) -> AsyncIterator[list[Event]]:
        """The events, grouped by engine step, so a transport writes once per step."""
        self._read = True
        stream, deltas = self.stream, self._deltas
        terminal: list[Event] | None = None
        opening: list[Event] = []  # the first events, when a failure comes before they went out
        try:
            try:
                if self._accepting is not None:
                    opening = stream.start()
                    await self._accepting
                    self.first_sent = metrics.first_event(self.transport, self.started)
                    yield opening
                    opening = []
                else:
                    self.first_sent = metrics.first_event(self.transport, self.started)
                    yield stream.start()
                async for delta in deltas:
                    if isinstance(delta, Started):
                        continue
                    if isinstance(delta, Finish):
                        terminal = stream.finish(delta)
                        break
                    events = stream.feed(delta)
                    if events:
                        yield events
                else:
                    terminal = stream.fail("The engine stopped without finishing the response.")
            except EngineFailure as exc:
                logger.warning("response %s failed: %s", stream.response.id, exc.message)
                terminal = opening + stream.fail(exc.message, exc.code, exc.usage)
            except APIError as exc:  # the engine refused it on submission (background, or a stream it kept waiting)
                logger.warning("response %s refused by the engine: %s", stream.response.id, exc.message)
                terminal = opening + stream.fail(exc.message, "server_error" if exc.status >= 500 else "invalid_prompt")
            except Exception as exc:  # a bug of ours must still end the stream properly
                logger.exception("response %s failed", stream.response.id)
                terminal = opening + stream.fail(f"Internal error: {type(exc).__name__}.")
        finally:
            if terminal is None:  # the consumer left
                await self._stop()
            else:
                await deltas.aclose()
        self.final_events = terminal
        metrics.run_ended(self, stopped=False)
        if self._on_end is not None and self._accepted():  # kept even if the client leaves now
            self.ended = spawn(self._on_end(stream.response))
            await asyncio.shield(self.ended)
        yield terminal

    async def close(self) -> None:
        """For a transport that may never read :meth:`batches` (its client left first)."""
        if not self._read:
            self._read = True
            await self._stop()

    async def _stop(self) -> None:
        """Stop the engine now (nobody will see the rest) and end the response."""
        await settle(self._accepting)
        await asyncio.shield(spawn(self._deltas.aclose()))  # aborts the engine request if still running
        self.final_events = self.stream.fail(self.failure) if self.failure else self.stream.cancel()
        metrics.run_ended(self, stopped=True)
        if self._on_end is not None and self._accepted():
            self.ended = spawn(self._on_end(self.stream.response))

    def _accepted(self) -> bool:
        """Whether the engine accepted the request (and so a stored one was stored)."""
        a = self._accepting
        return a is None or (a.done() and not a.cancelled() and a.exception() is None)


class ResponsesService:
    """Creates responses on one engine and keeps them in one store.

    ``capture_dir``: when set, every response's events are also written there as
    ``<response id>.sse`` (the wire format, for ``python -m vllm_responses.conformance``),
    and the request that made it as ``<response id>.request.json``; the plugin takes it
    from ``VLLM_RESPONSES_CAPTURE_DIR``. Off by default. Written off the loop, at most
    ``capture_max_bytes`` in all (:mod:`.capture`).
    ``keepalive_s``: the longest silence on an SSE stream (``None``: no keep-alive comments).
    """

    def __init__(
        self,
        engine: Engine,
        store: Store,
        sealer: ReasoningSealer | None = None,
        *,
        owner: str | None = None,
        capture_dir: str | Path | None = None,
        capture_max_bytes: int = DEFAULT_MAX_BYTES,
        lease_s: float = 10.0,
        max_body_bytes: int = 64 * 1024 * 1024,
        keepalive_s: float | None = 10.0,
        max_history_bytes: int = DEFAULT_MAX_HISTORY_BYTES,
        max_background: int = 256,
    ) -> None:
        self.engine = engine
        self.store = store
        self.sealer = sealer or ReasoningSealer()
        self.history = History(store, self.sealer, max_history_bytes)
        self.owner = owner or new_id("owner")
        self.capture_dir = Path(capture_dir) if capture_dir else None
        self.captures = CaptureWriter(self.capture_dir, capture_max_bytes) if self.capture_dir else None
        self.max_body_bytes = max_body_bytes
        self.keepalive_s = keepalive_s or None
        self.background = BackgroundRuns(self, max_background)
        self.owners = OwnerWatch(store, lease_s)
        self.keeper = Keeper(self, lease_s)
        self.late_writes = LateWrites()

    def start(self) -> None:
        """Begin upkeep (heartbeat, cancels from other processes, sweeping, retention)."""
        self.keeper.start()

    async def stop(self) -> None:
        """The server is stopping: end what runs here, then release the store."""
        await self.keeper.stop()
        await self.background.shutdown()
        await self.late_writes.drain(timeout_s=5.0)
        await self.store.close()
        if self.captures is not None:
            await asyncio.to_thread(self.captures.stop)

    def capture(self, response_id: str) -> Capture | None:
        """Where a response's frames go, when capturing (:mod:`.capture`)."""
        return self.captures.capture(response_id) if self.captures is not None else None

    def capture_request(self, response_id: str, body: bytes) -> None:
        if self.captures is not None:
            self.captures.request(response_id, body)

    # -- create ---------------------------------------------------------------------------
    async def create(
        self, request: ResponsesRequest, patience: float | None = None, *, context: Context | None = None, generate: bool = True,
        transport: str | None = None,
    ) -> "Run | BackgroundRun":
        """Check, resolve and start a response.

        The first event waits for the engine to accept the request, so that what it
        refuses on submission is still a plain 4xx answer (chat completions also waits for
        the first output). ``patience``: after this many seconds of waiting (queued, a long
        prefill) the :class:`Run` comes back anyway, still accepting, so a stream can keep
        its client with comments meanwhile; ``None`` waits as long as it takes.
        ``context``: already resolved by the caller (a WebSocket turn continuing from its
        connection's cache). ``generate=False`` (a WebSocket warm-up): everything but the
        engine run; the response completes with no output. ``transport``: for the metrics
        (default ``sse`` or ``json``, as ``stream`` says).
        """
        started, transport = time.perf_counter(), transport or ("sse" if request.stream else "json")
        if request.background:
            self.background.reserve()
            try:
                return await self._create(request, patience, context, generate, transport, started)
            finally:
                self.background.release()
        return await self._create(request, patience, context, generate, transport, started)

    async def _create(
        self, request: ResponsesRequest, patience: float | None, context: Context | None, generate: bool, transport: str, started: float
    ) -> "Run | BackgroundRun":
        if context is None:
            context = await store_call(self.history.resolve(request))
        prepared = await compaction.plan(self.engine, self.sealer, request, context.model_items)
        response = initial_response(request, new_id("resp"), int(time.time()), request.model, prepared.sampling)
        stream = ResponseStream(response, self._options(request), clock=lambda: int(time.time()))
        record = self._record(request, response, context) if request.store else None
        if request.background:
            assert record is not None  # protocol refuses background without store
            await store_call(self.store.create_response(record))
            return self.background.start(stream, prepared, record)

        deltas = compaction.generate(self.engine, prepared, response.id) if generate else _not_generated()
        accepting: asyncio.Future[None] | None = asyncio.ensure_future(self._accept(deltas, record))
        try:
            await asyncio.wait((accepting,), timeout=patience)
            if accepting.done():
                accepting.result()  # a refusal is raised here: a plain error answer
                accepting = None
        except BaseException as exc:  # refused, or the client left: the engine request ends here
            metrics.client_left_early(transport, exc)
            await settle(accepting)
            await asyncio.shield(spawn(deltas.aclose()))
            raise
        on_end = (lambda r: self.persist(r, record)) if record is not None else None
        return Run(stream, deltas, on_end=on_end, accepting=accepting, transport=transport, started=started)

    async def _accept(self, deltas: AsyncIterator[Started | Delta | Finish], record: StoredResponse | None) -> None:
        """Wait until the engine accepts the request; then store it as ``in_progress``."""
        first = await anext(deltas, None)
        if not isinstance(first, Started):
            raise EngineFailure("The engine did not start the generation.")
        if record is not None:
            await store_call(self.store.create_response(record))

    def run(self, stream: ResponseStream, prepared: object) -> Run:
        """A :class:`Run` for a background response: the engine's checks on submission
        happen inside it (and end it ``failed``); its owner persists it."""
        return Run(stream, compaction.generate(self.engine, prepared, stream.response.id), transport="background")

    def _options(self, request: ResponsesRequest) -> StreamOptions:
        return StreamOptions(
            reasoning_summary=request.reasoning_summary in ("auto", "concise", "detailed"),
            logprobs="message.output_text.logprobs" in request.include,
            seal=self.sealer.seal if request.sealed_reasoning else None,
        )

    def _record(self, request: ResponsesRequest, response: Response, context: Context) -> StoredResponse:
        return StoredResponse(
            response=stored_response(response),
            input_items=context.input_items,
            previous_response_id=request.previous_response_id,
            conversation_id=request.conversation_id,
            background=request.background,
            owner=self.owner,
            client_ids=client_ids(request.input),
            tenant=request.tenant,
        )

    async def persist(self, response: Response, record: StoredResponse, then: Callable[[], Awaitable[None]] | None = None) -> None:
        """Keep a finished response; a conversation gains the turn's input and output; then
        ``then`` (a background response's last events, which must not be seen before the
        response is final). What the store cannot take now is retried in the background,
        in the same order (:class:`LateWrites`)."""
        data = stored_response(response)
        conversation_id = record.conversation_id if response.status in ("completed", "incomplete") else None
        ours = True

        async def finish() -> None:
            nonlocal ours
            ours = await self._finish(data)

        async def add_turn() -> None:
            if ours and conversation_id:
                await self.store.add_conversation_items(conversation_id, (record.input_items or []) + data["output"])

        steps = [finish, add_turn] + ([then] if then is not None else [])
        try:
            await _in_order(steps)
        except StoreUnavailable as exc:
            logger.error("could not store the end of response %s (%s); retrying until the store answers", response.id, exc)
            self.late_writes.add(lambda: _in_order(steps), f"the end of response {response.id}")

    async def _finish(self, data: dict) -> bool:
        """The response's final state; ``False`` when someone else had already ended it."""
        if await self.store.finish_response(data):
            return True
        current = await self.store.get_response(data["id"])
        if current is not None and current.response == data:  # an earlier try landed
            return True
        logger.warning("response %s was finished by someone else (deleted, or its owner presumed dead)", data["id"])
        return False

    # -- stored responses -------------------------------------------------------------------
    async def record(self, response_id: str, tenant: str | None, *, with_input: bool = False) -> StoredResponse:
        """A stored response, as it stands now (a dead owner's is ended first); 404 if missing
        or another tenant's (:mod:`.tenancy`)."""
        run = self.background.get(response_id)
        record = await store_call(self.store.get_response(response_id, with_input=with_input))
        if record is None or not visible(record.tenant, tenant):
            raise not_found("Response", response_id, "response_id", "response_not_found")
        if run is not None and not run.done:  # ours and live: fresher than the store
            record.response = stored_response(run.response)
        elif record.status in RUNNING_STATUSES and record.owner != self.owner:
            if await store_call(self.owners.dead(record.owner)):
                record = await store_call(abandon(self.store, record))
        return record

    def presented(self, response: dict, include: frozenset[str]) -> dict:
        """A stored response as a client asked to see it (sealed reasoning on request)."""
        if "reasoning.encrypted_content" not in include:
            return response
        output = [
            {**item, "encrypted_content": self.sealer.seal(_reasoning_text(item))} if item.get("type") == "reasoning" else item
            for item in response.get("output") or []
        ]
        return {**response, "output": output}

    async def delete(self, response_id: str, tenant: str | None) -> dict:
        """Delete a stored response; a running background one is cancelled first, wherever it runs."""
        record = await self.record(response_id, tenant)
        if record.background and record.status in RUNNING_STATUSES:
            await self.cancel(response_id, tenant)
        if not await store_call(self.store.delete_response(response_id)):
            raise not_found("Response", response_id, "response_id", "response_not_found")
        return {"id": response_id, "object": "response", "deleted": True}

    async def cancel(self, response_id: str, tenant: str | None, wait_s: float = 10.0) -> dict:
        """Cancel a background response, wherever it runs; a cancelled one is returned as is."""
        record = await self.record(response_id, tenant)
        if not record.background:
            raise invalid_request(
                "Only responses created with `background: true` can be cancelled.", param="response_id", code="not_cancellable"
            )
        if record.status == "cancelled":
            return record.response
        if record.status not in RUNNING_STATUSES:
            raise invalid_request(
                f"Response with id '{response_id}' is already {record.status} and cannot be cancelled.",
                param="response_id",
                code="not_cancellable",
            )
        run = self.background.get(response_id)
        if run is not None:
            run.cancel()
            await asyncio.wait({run.task}, timeout=wait_s)
            return (await self.record(response_id, tenant)).response
        await store_call(self.store.request_cancel(response_id))  # its owner polls for this
        deadline = time.monotonic() + wait_s
        outage: APIError | None = None
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            try:
                record, outage = await self.record(response_id, tenant), None
            except APIError as exc:
                if exc.code != "store_unavailable":
                    raise
                outage = exc  # the request is written: a store hiccup while the owner stops it is waited out
                continue
            if record.status not in RUNNING_STATUSES:
                return record.response
        if outage is not None:  # still down: the status is unknown (a retried cancel is harmless)
            raise outage
        return record.response

    async def follow(self, response_id: str, tenant: str | None, after: int = -1) -> AsyncIterator[list[Logged]]:
        """The events of a background response after ``after``, to its terminal event."""
        record = await self.record(response_id, tenant)
        if not record.background:
            raise invalid_request(
                "Only responses created with `background: true` can be streamed again.", param="stream", code="not_streamable"
            )
        run = self.background.get(response_id)
        return run.follow(after) if run is not None else follow_stored(self, response_id, after)

    async def input_items(self, response_id: str, tenant: str | None) -> list[dict]:
        record = await self.record(response_id, tenant, with_input=True)
        return record.input_items or []




async def _in_order(steps: list[Callable[[], Awaitable[None]]]) -> None:
    """Store writes one after another, each dropped once done: a retry after a failure
    (:class:`StoreUnavailable`, raised) goes on from the write that failed."""
    while steps:
        await steps[0]()
        steps.pop(0)


def warm_up() -> None:
    """Build, once, what the first response would otherwise build while its engine runs
    ahead: the ``openai`` models' validators and each event type's serialization (about
    half a second here, during which a first stream used to arrive in one lump)."""
    request = parse_request(
        b'{"model": "warm-up", "input": "hi", "reasoning": {"summary": "auto"}, "tools": [{"type": "function", "name": "f", '
        b'"parameters": {}}, {"type": "custom", "name": "c"}], "include": ["message.output_text.logprobs"]}'
    )
    stream = ResponseStream(
        initial_response(request, "resp_warm_up", 0, "warm-up", Sampling()),
        StreamOptions(reasoning_summary=True, logprobs=True),
        clock=lambda: 0,
    )
    events = stream.start()
    for delta in (
        ReasoningDelta("."),
        TextDelta(".", [TokenLogprob(".", 0.0, [46])]),
        ToolCallDelta(0, "{}", name="f", call_id="call_f"),
        ToolCallDelta(1, ".", name="c", call_id="call_c", custom=True),
    ):
        events += stream.feed(delta)
    events += stream.finish(Finish("stop", Usage()))
    for event in events:
        event_json(event)
    stored_response(stream.response)


async def _not_generated() -> AsyncGenerator[Started | Finish, None]:
    """The engine's part of a response created with ``generate: false``: accepted, nothing generated."""
    yield Started()
    yield Finish("stop", Usage())


async def store_call(call: Awaitable):  # type: ignore[type-arg]
    try:
        return await call
    except StoreUnavailable as exc:
        raise store_unavailable(str(exc)) from None


def _reasoning_text(item: dict) -> str:
    return "".join(part.get("text", "") for part in item.get("content") or [] if part.get("type") == "reasoning_text")
