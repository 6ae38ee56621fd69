"""Background responses: they run to the end without a client and can be followed again.

A :class:`BackgroundRun` drives the same :class:`~.run.Run` a streaming request does
and publishes its events twice: to followers in this process (the creating client, resumed
streams) and, in batches, to the store, where followers in other processes and replicas
read them (:func:`follow_stored`). Whoever follows, the stream ends with a terminal event:
when the owning process died, :func:`abandon` ends the response ``failed`` for it.

Built from narrow parts (the store, the records writer, a function that starts a run, the
capture), not from the service, so that a background run can be built and tested alone.
"""

import asyncio
from collections.abc import AsyncIterator, Callable
from http import HTTPStatus
from typing import Any

import orjson
from openai.types.responses import Response

from ..common import metrics
from ..common.errors import APIError
from ..common.logs import get_logger
from ..events.response import ResponseObject
from ..events.stream import TERMINAL_EVENTS, Event, ResponseStream, error_event
from ..events.wire import event_json, frame_of
from ..request.items import stored_response
from ..store import Store, StoredResponse, StoreUnavailable
from ..store.base import RUNNING_STATUSES
from .capture import Capture
from .owners import OwnerWatch
from .records import Records
from .run import Run

logger = get_logger(__name__)

# (sequence_number, event type, event JSON): an event as it is logged, stored and replayed.
Logged = tuple[int, str, str]

FLUSH_INTERVAL = 0.1  # seconds between batched event writes
KEEP_AFTER_END = 60.0  # seconds a finished run stays followable in memory


class BackgroundRun:
    """One background response owned by this process."""

    def __init__(self, runs: "BackgroundRuns", stream: ResponseStream, prepared: Any, record: StoredResponse) -> None:
        self.runs = runs
        self.stream = stream
        self.record = record
        self.log: list[Logged] = []
        self.done = False
        self._unflushed: list[tuple[int, str]] = []
        self._flushing = asyncio.Lock()  # batches reach the store in order, one at a time
        self._changed = asyncio.Event()
        self._capture = runs.capture(stream.response.id)
        self._failure: str | None = None
        self._stop_requested = self._started = False
        self._publish(stream.queue())
        self._phase = metrics.BackgroundPhase()  # queued → in_progress → off the gauge when its task ends
        self.task = asyncio.ensure_future(self._main(prepared))
        self.task.add_done_callback(lambda _: self._phase.to(None))

    @property
    def id(self) -> str:
        return self.stream.response.id

    @property
    def response(self) -> Response:
        return self.stream.response

    # -- driving --------------------------------------------------------------------------
    async def _main(self, prepared: Any) -> None:
        self._started = True
        if self._stop_requested:  # stopped before it began: the engine never saw it
            await self._end(self.stream.fail(self._failure) if self._failure else self.stream.cancel())
            metrics.response_ended("background", self.response.status, self._phase.created, self.log[-1][0] + 1)
            return
        self._phase.to("in_progress")
        run = self.runs.start_run(self.stream, prepared)
        batches = run.batches()
        flusher = asyncio.ensure_future(self._flush_periodically())
        try:
            started = False
            async for batch in batches:
                if self.stream.terminated:
                    await self._end(batch)
                    return
                self._publish(batch)
                if not started:
                    started = True
                    await self._store(self.runs.store.update_running_response(stored_response(self.response)))
        except asyncio.CancelledError:
            run.failure = self._failure
            await batches.aclose()
            await self._end(run.final_events)
        finally:
            flusher.cancel()

    async def _end(self, terminal: list[Event]) -> None:
        """Store the final response, then its last events, then let followers finish."""
        self._stop_requested = True  # from here on, a cancel has nothing left to stop
        published = False

        async def last_events() -> None:  # after the final response is stored (now, or once the store is back)
            nonlocal published
            if not published:
                published = True
                self._publish(terminal)
            await self._flush_all()

        await self.runs.records.persist(self.response, self.record, then=last_events)
        if not published:  # the store is away: followers here need not wait for it
            published = True
            self._publish(terminal)
        self.done = True
        self._changed.set()
        if self._capture is not None:
            self._capture.close(True)
        asyncio.get_running_loop().call_later(KEEP_AFTER_END, self.runs.forget, self.id)

    def cancel(self, failure: str | None = None) -> None:
        """Stop it: ``cancelled``, or ``failed`` with the message ``failure``."""
        if self.done or self._stop_requested:
            return
        self._stop_requested = True
        self._failure = failure
        if self._started:  # a task cancelled before its first step would never run its cleanup
            self.task.cancel()

    # -- events ---------------------------------------------------------------------------
    def _publish(self, events: list[Event]) -> None:
        if not events:
            return
        logged = [(e.sequence_number, e.type, event_json(e)) for e in events]
        self.log += logged
        self._unflushed += [(seq, data) for seq, _, data in logged]
        if self._capture is not None:
            self._capture.write("".join(frame_of(kind, data) for _, kind, data in logged).encode())
        self._changed.set()
        self._changed = asyncio.Event()

    async def _flush(self) -> None:
        async with self._flushing:
            batch, self._unflushed = self._unflushed, []
            if not batch:
                return
            try:
                await self.runs.store.append_events(self.id, batch)
            except StoreUnavailable as exc:  # kept for the next flush (appends are idempotent)
                self._unflushed = batch + self._unflushed
                logger.error(
                    "background response %s: the store is unavailable (%s); its followers elsewhere lag", self.id, exc
                )

    async def _flush_all(self) -> None:
        """Every event so far in the store, or :class:`StoreUnavailable`."""
        await self._flush()
        if self._unflushed:
            raise StoreUnavailable(f"{len(self._unflushed)} events of response {self.id} are not stored yet")

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            await self._flush()

    async def _store(self, call: Any) -> None:
        try:
            await call
        except StoreUnavailable as exc:
            logger.error(
                "background response %s: the store is unavailable (%s); its followers in other processes lag",
                self.id,
                exc,
            )

    async def follow(self, after: int = -1) -> AsyncIterator[list[Logged]]:
        """The logged events after sequence number ``after``, then live ones to the end."""
        position = next((i for i, (seq, _, _) in enumerate(self.log) if seq > after), len(self.log))
        while True:
            changed = self._changed
            if position < len(self.log):
                batch = self.log[position:]
                position = len(self.log)
                yield batch
                continue
            if self.done:
                return
            await changed.wait()


class BackgroundRuns:
    """This process's background responses, by id; at most ``limit`` running at once
    (``VLLM_RESPONSES_MAX_BACKGROUND``): each holds an engine request and a task for as long
    as it runs, with no client to pace it.

    ``start_run`` makes the :class:`Run` of a response from its stream and prepared engine
    request; ``capture`` gives a response's capture, if capturing."""

    def __init__(
        self,
        store: Store,
        records: Records,
        start_run: Callable[[ResponseStream, Any], Run],
        capture: Callable[[str], Capture | None] = lambda _: None,
        limit: int = 256,
    ) -> None:
        self.store = store
        self.records = records
        self.start_run = start_run
        self.capture = capture
        self.limit = limit
        self.runs: dict[str, BackgroundRun] = {}
        self.reserved = 0  # slots taken by requests still being set up

    def reserve(self) -> None:
        """Take a slot for a background response about to start, or refuse it (429);
        :meth:`start` or :meth:`release` gives the slot back."""
        running = len(self.running_ids()) + self.reserved
        if running >= self.limit:
            raise APIError(
                f"This server already runs {running} background responses (at most {self.limit}). Retry when one "
                "has finished.",
                status=HTTPStatus.TOO_MANY_REQUESTS,
                code="too_many_background_responses",
            )
        self.reserved += 1

    def release(self) -> None:
        self.reserved -= 1

    def start(self, stream: ResponseStream, prepared: Any, record: StoredResponse) -> BackgroundRun:
        run = BackgroundRun(self, stream, prepared, record)
        self.runs[run.id] = run
        return run

    def get(self, response_id: str) -> BackgroundRun | None:
        return self.runs.get(response_id)

    def forget(self, response_id: str) -> None:
        run = self.runs.get(response_id)
        if run is not None and run.done:
            del self.runs[response_id]

    def running_ids(self) -> list[str]:
        return [rid for rid, run in self.runs.items() if not run.done]

    async def shutdown(self) -> None:
        """Cancel what still runs (the server is stopping) and wait for it to be stored."""
        runs = [run for run in self.runs.values() if not run.done]
        for run in runs:
            run.cancel(failure="The server shut down before this response finished.")
        await asyncio.gather(*(run.task for run in runs), return_exceptions=True)


async def follow_stored(
    store: Store, owners: OwnerWatch, here: str, response_id: str, after: int = -1
) -> AsyncIterator[list[Logged]]:
    """Stored events after ``after``, following new ones (written by another process) to the
    terminal event. Never hangs: a dead owner's response is abandoned, and a finished
    response whose terminal event never arrived gets it rebuilt from the stored response.

    A store that stops answering for a while (a loaded machine, a Redis failover) is waited
    out, the connection kept open by the transport's keep-alive comments; only after
    :data:`STORE_PATIENCE` seconds without an answer does the stream end, with an ``error``
    event rather than a cut connection. ``here``: this process's owner id (its own runs are
    followed in memory, never abandoned).
    """
    finished_waits = 0
    patience = _Patience()
    while True:
        try:
            events = await store.wait_events(response_id, after, timeout=1.0)
            if events:
                patience.reset()
                batch = [(seq, _type(data), data) for seq, data in events]
                after = batch[-1][0]
                yield batch
                if any(kind in TERMINAL_EVENTS for _, kind, _ in batch):
                    return
                continue
            record = await store.get_response(response_id)
            if record is None:
                return
            if record.status in RUNNING_STATUSES:
                if record.owner != here and await owners.dead(record.owner):
                    await abandon(store, record)
                patience.reset()
                continue
            if any(_type(data) in TERMINAL_EVENTS for _, data in await store.read_events(response_id)):
                return  # ``after`` is at or past its terminal event: nothing more to send
        except StoreUnavailable as exc:
            if not await patience.wait(exc):
                logger.error(
                    "follower of %s: the store did not answer for %.0f s (%s); its stream ends",
                    response_id,
                    STORE_PATIENCE,
                    exc,
                )
                yield [_store_error(after + 1)]
                return
            continue
        patience.reset()
        finished_waits += 1
        if finished_waits >= 2:  # the owner stored the response but not (yet?) its last events
            stream = ResponseStream(ResponseObject.of(record.response), first_sequence_number=after + 1)
            yield [(e.sequence_number, e.type, event_json(e)) for e in stream.terminal()]
            return


STORE_PATIENCE = 60.0  # seconds a follower waits for a store that stopped answering


class _Patience:
    """How long the store has failed a follower without a break, and the pause between tries."""

    def __init__(self) -> None:
        self.since: float | None = None

    def reset(self) -> None:
        self.since = None

    async def wait(self, exc: StoreUnavailable) -> bool:
        """Pause before the next try; ``False`` once the store has failed for too long."""
        now = asyncio.get_running_loop().time()
        if self.since is None:
            self.since = now
            logger.warning("a follower lost the store (%s); it waits for it", exc)
        if now - self.since >= STORE_PATIENCE:
            return False
        await asyncio.sleep(0.5)
        return True


def _store_error(sequence_number: int) -> Logged:
    """The lone ``error`` event of a follower that lost the store: the response itself may
    still be running, so no ``response.failed`` follows it; a client can follow it again."""
    event = error_event(
        sequence_number,
        "store_unavailable",
        "The response store did not answer; follow this response again to resume its stream.",
    )
    return (sequence_number, "error", event_json(event))


async def abandon(store: Store, record: StoredResponse) -> StoredResponse:
    """End a response whose owner died: ``failed``, and its stream gets its terminal events."""
    events = await store.read_events(record.id) if record.background else []
    response = ResponseObject.of(record.response)
    if events:  # its stream goes on where it was cut: the open item is closed, output as streamed
        stream = ResponseStream.resumed(response, [orjson.loads(data) for _, data in events])
    else:
        stream = ResponseStream(response, first_sequence_number=2 if record.background else 0)
    terminal = stream.fail("The server running this response stopped before it finished.")
    data = stored_response(stream.response)
    if await store.finish_response(data):
        logger.warning("response %s was left %s by a server that stopped; marked failed", record.id, record.status)
        if record.background:
            await store.append_events(record.id, [(e.sequence_number, event_json(e)) for e in terminal])
        record.response = data
        record.owner = None
        return record
    return await store.get_response(record.id) or record


def _type(data: str) -> str:
    return orjson.loads(data)["type"]
