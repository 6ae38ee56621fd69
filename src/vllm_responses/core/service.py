"""The one door into the core: every operation of the Responses and Conversations APIs, whole.

Transports (HTTP routes, the WebSocket) parse a request, call one method here and frame the
answer; they never touch the store, the history or the capture. ``ResponsesService.create``
does every check that can fail up front (so such failures are plain 4xx answers), brings in
the state the request names (:mod:`.history`), and hands back either a :class:`~.run.Run`
whose events the transport writes out as SSE frames or folds into one JSON body, or, for
``background: true``, a :class:`~.background.BackgroundRun` that goes on without the client.
A stored response is written before the client sees its terminal event, so a client that
continues at once always finds what it continues from.
"""

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

from openai.types.responses import Response
from openai.types.responses.response_input_item import CompactionTrigger

from ..common import metrics
from ..common.errors import (
    ENGINE_DEAD,
    APIError,
    engine_dead,
    invalid_request,
    not_found,
)
from ..common.ids import new_id
from ..common.logs import get_logger
from ..common.sealing import ReasoningSealer
from ..common.tasks import settle, spawn
from ..engine.base import Engine
from ..events.deltas import (
    Delta,
    EngineFailure,
    Finish,
    ReasoningDelta,
    Sampling,
    Started,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
    Usage,
)
from ..events.response import dump_json_dict
from ..events.stream import ResponseStream, StreamOptions
from ..events.wire import event_json
from ..request.items import stored_response
from ..request.protocol import (
    ResponsesRequest,
    body_without_secrets,
    initial_response,
    parse_request,
)
from ..settings import DEFAULT_MAX_HISTORY_BYTES
from ..store import Store, StoredResponse, visible
from ..store.base import JSON, RUNNING_STATUSES
from . import compaction
from .background import BackgroundRun, BackgroundRuns, Logged, abandon, follow_stored
from .capture import DEFAULT_MAX_BYTES, Capture, CaptureWriter
from .conversations import Conversations
from .history import Context, History, client_ids
from .hosted import HostedTools, NoHostedTools
from .late_writes import LateWrites
from .owners import OwnerWatch
from .records import Records, store_call
from .run import Run, not_generated
from .tool_loop import ToolLoop, runs_server_tools
from .upkeep import Keeper

logger = get_logger(__name__)


class ResponsesService:
    """Creates responses on one engine and keeps them in one store.

    ``capture_dir``: when set, every response's events are also written there as
    ``<response id>.sse`` (the wire format, for ``python -m vllm_responses.events.conformance``),
    and the request that made it as ``<response id>.request.json``; the plugin takes it
    from ``VLLM_RESPONSES_CAPTURE_DIR``. Off by default. Written off the loop, at most
    ``capture_max_bytes`` in all (:mod:`.capture`).
    ``keepalive_s``: the longest silence on an SSE stream (``None``: no keep-alive comments).
    ``hosted``: the tools the server runs (MCP servers, :mod:`.hosted`); none by default.
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
        hosted: HostedTools | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.hosted = hosted or NoHostedTools()
        self.sealer = sealer or ReasoningSealer()
        self.history = History(store, self.sealer, max_history_bytes)
        self.conversations = Conversations(store, self.history)
        self.owner = owner or new_id("owner")
        self.capture_dir = Path(capture_dir) if capture_dir else None
        self.captures = CaptureWriter(self.capture_dir, capture_max_bytes) if self.capture_dir else None
        self.max_body_bytes = max_body_bytes
        self.keepalive_s = keepalive_s or None
        self.late_writes = LateWrites()
        self.records = Records(store, self.late_writes)
        self.owners = OwnerWatch(store, lease_s)
        self.background = BackgroundRuns(store, self.records, self._background_run, self.capture, max_background)
        self.keeper = Keeper(store, self.owner, self.owners, self.background, lease_s)

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

    def _captured(self, request: ResponsesRequest, response_id: str, body: bytes | None) -> Capture | None:
        """The capture of a response, its request written first (when capturing, and for a
        request a client sent: not for a compaction's inner run), without an MCP tool's
        ``headers`` and ``authorization`` (kept nowhere, docs/tools.md)."""
        if self.captures is None or body is None:
            return None
        if any(tool.type == "mcp" and (tool.headers or tool.authorization) for tool in request.tools):
            body = body_without_secrets(body)
        self.captures.request(response_id, body)
        return self.captures.capture(response_id)

    # -- create ---------------------------------------------------------------------------
    async def create(
        self,
        request: ResponsesRequest,
        patience: float | None = None,
        *,
        earlier: list[JSON] | None = None,
        generate: bool = True,
        transport: str | None = None,
        body: bytes | None = None,
    ) -> "Run | BackgroundRun":
        """Check, resolve and start a response.

        The first event waits for the engine to accept the request, so that what it
        refuses on submission is still a plain 4xx answer (chat completions also waits for
        the first output). ``patience``: after this many seconds of waiting (queued, a long
        prefill) the :class:`Run` comes back anyway, still accepting, so a stream can keep
        its client with comments meanwhile; ``None`` waits as long as it takes.
        ``earlier``: the items ``previous_response_id`` stands for, when the caller holds them
        (a WebSocket connection's last turn). ``generate=False`` (a WebSocket warm-up):
        everything but the engine run; the response completes with no output.
        ``transport``: for the metrics (default ``sse`` or ``json``, as ``stream`` says).
        ``body``: the request as sent, for the capture.
        """
        started, transport = time.perf_counter(), transport or ("sse" if request.stream else "json")
        if request.background:
            self.background.reserve()
            try:
                return await self._create(request, patience, earlier, generate, transport, started, body)
            finally:
                self.background.release()
        return await self._create(request, patience, earlier, generate, transport, started, body)

    async def _create(
        self,
        request: ResponsesRequest,
        patience: float | None,
        earlier: list[JSON] | None,
        generate: bool,
        transport: str,
        started: float,
        body: bytes | None,
        context: Context | None = None,
    ) -> "Run | BackgroundRun":
        self.hosted.check(request)
        if context is None:
            context = await store_call(self.history.resolve(request, earlier))
        prepared = await compaction.plan(self.engine, self.sealer, request, context.model_items)
        response = initial_response(request, new_id("resp"), int(time.time()), request.model, prepared.sampling)
        stream = ResponseStream(response, self._options(request), clock=lambda: int(time.time()))
        if runs_server_tools(request):
            prepared = ToolLoop(
                self.engine,
                request,
                context.model_items,
                prepared,
                lambda: stream.response.output,
                lambda items: compaction.window(items, self.sealer),
                self.hosted,
            )
        record = self._record(request, response, context) if request.store else None
        if request.background:
            assert record is not None  # protocol refuses background without store
            await store_call(self.store.create_response(record))
            self._captured(request, response.id, body)  # its frames are captured by the run itself
            return self.background.start(stream, prepared, record)

        deltas = prepared.deltas(response.id) if generate else not_generated()
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
        on_end = (lambda r: self.records.persist(r, record)) if record is not None else None
        return Run(
            stream,
            deltas,
            on_end=on_end,
            accepting=accepting,
            transport=transport,
            started=started,
            capture=self._captured(request, response.id, body),
            context=context,
        )

    async def _accept(self, deltas: AsyncIterator[Started | Delta | Finish], record: StoredResponse | None) -> None:
        """Wait until the engine accepts the request; then store it as ``in_progress``."""
        first = await anext(deltas, None)
        if not isinstance(first, Started):
            raise EngineFailure("The engine did not start the generation.")
        if record is not None:
            await store_call(self.store.create_response(record))

    def _background_run(
        self, stream: ResponseStream, prepared: "compaction.Plan | compaction.Direct | ToolLoop"
    ) -> Run:
        """A :class:`Run` for a background response: the engine's checks on submission
        happen inside it (and end it ``failed``); its owner persists it."""
        return Run(stream, prepared.deltas(stream.response.id), transport="background")

    def _options(self, request: ResponsesRequest) -> StreamOptions:
        return StreamOptions(
            reasoning_summary=request.reasoning_summary in ("auto", "concise", "detailed"),
            logprobs=request.logprobs,
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
            {**item, "encrypted_content": self.sealer.seal(_reasoning_text(item))}
            if item.get("type") == "reasoning"
            else item
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
                "Only responses created with `background: true` can be cancelled.",
                param="response_id",
                code="not_cancellable",
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
                "Only responses created with `background: true` can be streamed again.",
                param="stream",
                code="not_streamable",
            )
        run = self.background.get(response_id)
        return (
            run.follow(after)
            if run is not None
            else follow_stored(self.store, self.owners, self.owner, response_id, after)
        )

    async def input_items(self, response_id: str, tenant: str | None) -> list[dict]:
        record = await self.record(response_id, tenant, with_input=True)
        return record.input_items or []

    # -- compaction and token counts --------------------------------------------------------
    async def compact(self, request: ResponsesRequest) -> JSON:
        """``POST /v1/responses/compact``: the ``response.compaction`` object (openai's
        ``CompactedResponse``). The request's state is brought in as for create and the same
        response as a create with a ``compaction_trigger`` is run (:mod:`.compaction`). Its
        output is every user message of the context, then that ``compaction`` item; it is
        stored (unless ``store: false``) as a completed response with that output and no
        earlier chain, so its id works as ``previous_response_id``: the continuation sees the
        user messages and the summary, not the history it replaced."""
        meaningless = {
            "stream": request.stream,
            "background": request.background,
            "conversation": request.conversation_id,
        }
        for name, given in meaningless.items():
            if given:
                raise invalid_request(
                    f"`{name}` is not supported by /v1/responses/compact.", param=name, code="unsupported_parameter"
                )
        if request.compaction_triggered:
            raise invalid_request("/v1/responses/compact compacts without a `compaction_trigger` item.", param="input")
        context = await store_call(self.history.resolve(request))
        summary = replace(
            request,
            input=[*request.input, CompactionTrigger(type="compaction_trigger")],
            params={**request.params, "store": False},
        )
        run = await self._create(summary, None, None, True, "json", time.perf_counter(), None, context)
        assert isinstance(run, Run)
        batches = run.batches()
        try:
            async for _ in batches:
                pass
        finally:
            await batches.aclose()
        response = run.response
        if response.status == "incomplete":  # the context left no room to finish the summary: the input is too long
            raise invalid_request(
                "The summary was cut short by the model's context length: compact a shorter context.",
                param="input",
                code="compaction_incomplete",
            )
        if response.status != "completed" or not response.output:
            raise failure(response)
        users = [
            item
            for item in context.earlier + context.input_items
            if item.get("type") == "message" and item.get("role") == "user"
        ]
        output = users + [dump_json_dict(response.output[-1])]
        if request.store:
            data = {**stored_response(response), "output": output}
            record = StoredResponse(response=data, input_items=[], owner=None, tenant=request.tenant)
            await store_call(self.store.create_response(record))
        usage = dump_json_dict(response.usage)
        return {
            "id": response.id,
            "object": "response.compaction",
            "created_at": int(time.time()),
            "output": output,
            "usage": usage,
        }

    async def count_input_tokens(self, request: ResponsesRequest) -> int:
        """``POST /v1/responses/input_tokens``: the prompt the request would render, its
        state brought in, counted; nothing is generated or stored."""
        context = await store_call(self.history.resolve(request))
        prepared = await self.engine.prepare(request, context.model_items)
        return self.engine.input_tokens(prepared)


def failure(response: Response) -> APIError:
    """The error answer of a response that failed without a stream to end (a JSON answer)."""
    message = response.error.message if response.error else "The response failed."
    if message == ENGINE_DEAD:  # the engine died under it: 503, as for every create after
        return engine_dead()
    return APIError(message, status=500, type="server_error", code="server_error")


def warm_up() -> None:
    """Build, once, what the first response would otherwise build while its engine runs
    ahead: the ``openai`` models' validators and each event type's serialization (about
    half a second here, during which a first stream used to arrive in one lump)."""
    request = parse_request(
        b'{"model": "warm-up", "input": "hi", "reasoning": {"summary": "auto"}, '
        b'"tools": [{"type": "function", "name": "f", "parameters": {}}, {"type": "custom", "name": "c"}], '
        b'"include": ["message.output_text.logprobs"]}'
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


def _reasoning_text(item: dict) -> str:
    return "".join(part.get("text", "") for part in item.get("content") or [] if part.get("type") == "reasoning_text")
