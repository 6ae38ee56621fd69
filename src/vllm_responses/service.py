"""One response from request to terminal event, independent of the transport.

``ResponsesService.start`` does every check that can fail up front (so such failures are
plain 4xx answers), then hands back a :class:`Run` whose events the transport writes out
as SSE frames or folds into one JSON body.
"""

import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

from openai.types.responses import Response

from .backend import Engine
from .deltas import Delta, Finish, Started
from .errors import EngineFailure
from .ids import new_id
from .protocol import ResponsesRequest, initial_response
from .stream import Event, ResponseStream, StreamOptions

logger = logging.getLogger(__name__)


class Run:
    """A started response: iterate :meth:`batches` once; ``response`` is final afterwards."""

    def __init__(self, stream: ResponseStream, deltas: AsyncIterator[Started | Delta | Finish]) -> None:
        self._stream = stream
        self._deltas = deltas

    @property
    def response(self) -> Response:
        return self._stream.response

    async def batches(self) -> AsyncIterator[list[Event]]:
        """The events, grouped by engine step, so a transport writes once per step."""
        stream = self._stream
        yield stream.start()
        deltas = self._deltas
        try:
            async for delta in deltas:
                if isinstance(delta, Started):
                    continue
                if isinstance(delta, Finish):
                    yield stream.finish(delta)
                    return
                events = stream.feed(delta)
                if events:
                    yield events
            failure = EngineFailure("The engine stopped without finishing the response.")
        except EngineFailure as exc:
            failure = exc
        except Exception as exc:  # a bug of ours must still end the stream properly
            logger.exception("response %s failed", stream.response.id)
            failure = EngineFailure(f"Internal error: {type(exc).__name__}.")
        finally:
            await deltas.aclose()  # aborts the engine request if it is still running
        yield stream.fail(failure.message, failure.code)


class Capture:
    """One response's frames on disk; a stream its client abandoned ends up as ``.sse.aborted``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO = open(path, "wb")

    def write(self, data: bytes) -> None:
        self._file.write(data)

    def close(self, complete: bool) -> None:
        self._file.close()
        if not complete:
            self.path.rename(self.path.with_suffix(".sse.aborted"))


class ResponsesService:
    """Starts responses on one engine.

    ``capture_dir``: when set, every response's events are also written there as
    ``<response id>.sse`` (the wire format, for ``python -m vllm_responses.conformance``);
    the plugin takes it from ``VLLM_RESPONSES_CAPTURE_DIR``. Off by default.
    """

    def __init__(self, engine: Engine, capture_dir: str | Path | None = None) -> None:
        self.engine = engine
        self.capture_dir = Path(capture_dir) if capture_dir else None

    def capture(self, response_id: str) -> "Capture | None":
        if self.capture_dir is None:
            return None
        self.capture_dir.mkdir(parents=True, exist_ok=True)
        return Capture(self.capture_dir / f"{response_id}.sse")


    async def start(self, request: ResponsesRequest) -> Run:
        prepared = await self.engine.prepare(request)
        summary = (request.get("reasoning") or {}).get("summary") or (request.get("reasoning") or {}).get("generate_summary")
        options = StreamOptions(
            reasoning_summary=summary in ("auto", "concise", "detailed"),
            logprobs="message.output_text.logprobs" in request.get("include", []),
        )
        response = initial_response(request, new_id("resp"), time.time(), request.model)
        deltas = self.engine.generate(prepared, response.id)
        # No event before the engine accepts the request, so errors it finds on submission
        # are still plain 4xx answers (chat completions also waits for the first output).
        try:
            first = await anext(deltas, None)
        except BaseException:
            await deltas.aclose()
            raise
        if not isinstance(first, Started):
            await deltas.aclose()
            raise EngineFailure("The engine did not start the generation.")
        return Run(ResponseStream(response, options, clock=time.time), deltas)
