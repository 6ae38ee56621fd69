"""WebSocket transport of the Responses API: ``GET /v1/responses`` with an upgrade.

OpenAI's WebSocket mode (and the Open Responses specification's WebSocket transport):
the client sends ``{"type": "response.create", ...create body...}`` text frames; the server
answers each with the same events an SSE stream carries, one JSON text frame per event,
from the same :class:`~.service.Run` and state machine. Nothing here builds an event.

Rules (docs/events.md, "WebSocket mode"):
- turns run one at a time, in the order they arrive; at most ``ws_max_in_flight`` messages
  are held (the running one included), more are refused with an error frame;
- ``stream`` is implied; ``background`` is refused; ``generate: false`` prepares a turn
  (checks, state, the record when stored) and completes it with no output;
- ``previous_response_id`` continues from the connection's last response, which is kept in
  memory even with ``store: false``, else from the store; a turn that fails (an error
  frame, or a response that ends failed) evicts the response it continued from;
- errors are ``{"type": "error", "status": <HTTP status>, "error": {OpenAI's error object}}``,
  the frame Codex reads; the connection stays open;
- after ``ws_max_s`` the connection ends with ``websocket_connection_limit_reached``.

A plain ``GET /v1/responses`` (no upgrade) is answered 426, which Codex's built-in provider
reads as "no WebSocket here, use HTTP".
"""

import asyncio
import time
from dataclasses import dataclass, field
from functools import cache
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import Response
from starlette.websockets import WebSocketDisconnect, WebSocketState

from .. import __version__
from ..common import metrics
from ..common.errors import APIError, invalid_request, request_too_large
from ..common.logs import get_logger
from ..core.run import Run
from ..core.service import ResponsesService
from ..events.wire import event_json
from ..request.items import stored_response
from ..request.protocol import parse_request_off_loop
from ..settings import Settings
from ..store.base import JSON
from .routes import VERSION_HEADER, error_response
from .tenancy import tenant_of

logger = get_logger(__name__)

router = APIRouter()

CONNECTION_LIMIT = "websocket_connection_limit_reached"
# Close codes (RFC 6455): 1000 normal, 1008 policy (the time limit), 1011 our failure.
_CLOSE_LIMIT = 1008


@cache
def _settings() -> Settings:
    return Settings.from_env()


@dataclass
class _Turn:
    """The connection's last response: its id and every item the next turn continues from
    (the context it saw, its own input, its output), in stored shape."""

    response_id: str
    items: list[JSON] = field(default_factory=list)


class Connection:
    """One WebSocket: a reader that queues ``response.create`` messages, one turn at a time."""

    def __init__(self, ws: WebSocket, service: ResponsesService, settings: Settings) -> None:
        self.ws = ws
        self.service = service
        self.settings = settings
        self.deadline = time.monotonic() + settings.ws_max_s
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.in_flight = 0
        self.last: _Turn | None = None
        self.send_lock = asyncio.Lock()

    async def serve(self) -> None:
        worker = asyncio.ensure_future(self._work())
        try:
            await self._read(worker)
        finally:
            if not worker.done():
                worker.cancel()  # the client left mid-turn: Run aborts the engine request
            await asyncio.gather(worker, return_exceptions=True)
            failure = None if worker.cancelled() else worker.exception()
            if failure is not None and not isinstance(failure, (WebSocketDisconnect, RuntimeError)):
                logger.error("websocket %s ended by an error", id(self.ws), exc_info=failure)

    # -- reading ---------------------------------------------------------------------------
    async def _read(self, worker: "asyncio.Future[None]") -> None:
        while not worker.done():
            receiving = asyncio.ensure_future(self.ws.receive())
            await asyncio.wait({receiving, worker}, return_when=asyncio.FIRST_COMPLETED)
            if not receiving.done():  # the worker ended the connection (time limit)
                receiving.cancel()
                return
            message = receiving.result()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                await self.error(
                    invalid_request("Send events as JSON text frames, not binary frames.", code="invalid_event")
                )
                continue
            if len(text.encode()) > self.settings.ws_max_message_bytes:
                await self.error(request_too_large(self.settings.ws_max_message_bytes))
                continue
            if self.in_flight >= self.settings.ws_max_in_flight:
                await self.error(
                    APIError(
                        f"This connection already holds {self.in_flight} response.create messages (at most "
                        f"{self.settings.ws_max_in_flight}); they run one at a time. Wait for a response to finish.",
                        status=HTTPStatus.TOO_MANY_REQUESTS,
                        code="too_many_messages_in_flight",
                    )
                )
                continue
            self.in_flight += 1
            self.queue.put_nowait(text)

    # -- turns -----------------------------------------------------------------------------
    async def _work(self) -> None:
        while True:
            try:
                text = await asyncio.wait_for(self.queue.get(), max(0.0, self.deadline - time.monotonic()))
            except TimeoutError:
                await self._close_at_limit()
                return
            try:
                if time.monotonic() >= self.deadline:
                    await self._close_at_limit()
                    return
                await self._turn(text)
            finally:
                self.in_flight -= 1

    async def _turn(self, text: str) -> None:
        continued: str | None = None
        try:
            body = _create_body(text)
            continued = body.get("previous_response_id") if isinstance(body.get("previous_response_id"), str) else None
            generate = body.pop("generate", True)
            if not isinstance(generate, bool):
                raise invalid_request(
                    "Invalid type for 'generate': expected a boolean.", param="generate", code="invalid_type"
                )
            request = await parse_request_off_loop(
                orjson.dumps(body), headers=self.ws.headers, tenant=tenant_of(self.ws.scope)
            )
            earlier = self.last.items if self.last is not None and continued == self.last.response_id else None
            run = await self.service.create(
                request, earlier=earlier, generate=generate, transport="websocket", body=text.encode()
            )
        except APIError as exc:
            self._evict(continued)
            await self.error(exc)
            return
        except Exception:  # a bug of ours: an error frame, never a dead connection
            logger.exception("websocket %s: response.create failed", id(self.ws))
            self._evict(continued)
            await self.error(
                APIError(
                    "The server could not handle this request.", status=500, type="server_error", code="server_error"
                )
            )
            return
        assert isinstance(run, Run)  # background is refused above
        logger.info(
            "websocket %s: response %s%s", id(self.ws), run.response.id, "" if generate else " (generate: false)"
        )
        await self._stream(run)

    async def _stream(self, run: Run) -> None:
        batches = run.batches()
        try:
            async for batch in batches:
                async with self.send_lock:
                    for event in batch:
                        await self.ws.send_text(event_json(event))
        finally:
            await batches.aclose()
        response, context = run.response, run.context
        if response.status in ("completed", "incomplete"):
            output = stored_response(response)["output"]
            items = context.earlier + context.input_items + output
            # Kept only up to its bound: a larger turn is read back from the store (with
            # ``store: false``, the next turn cannot continue it: previous_response_not_found).
            self.last = _Turn(response.id, items) if _json_size(items) <= self.settings.ws_cache_max_bytes else None
        else:
            self._evict(response.previous_response_id)

    def _evict(self, response_id: str | None) -> None:
        """A turn that continued from ``response_id`` failed: that state is not reused."""
        if response_id is not None and self.last is not None and self.last.response_id == response_id:
            self.last = None

    # -- answers ---------------------------------------------------------------------------
    async def error(self, error: APIError) -> None:
        """An error frame: OpenAI's error object, with the HTTP status it would have had."""
        frame = orjson.dumps({"type": "error", "status": error.status, **error.body()}).decode()
        async with self.send_lock:
            if self.ws.application_state == WebSocketState.CONNECTED:
                await self.ws.send_text(frame)

    async def _close_at_limit(self) -> None:
        minutes = self.settings.ws_max_s / 60
        await self.error(
            APIError(
                f"Responses websocket connection limit reached ({minutes:g} minutes). Create a new websocket "
                "connection to continue.",
                code=CONNECTION_LIMIT,
            )
        )
        await self.ws.close(_CLOSE_LIMIT, CONNECTION_LIMIT)


def _json_size(items: list[JSON]) -> int:
    try:
        return len(orjson.dumps(items))
    except TypeError:  # not plain JSON: not kept
        return 1 << 62


def _create_body(text: str) -> dict[str, Any]:
    """The create body inside a ``response.create`` message."""
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise invalid_request("The message is not valid JSON.", code="invalid_json") from None
    if not isinstance(message, dict):
        raise invalid_request("A message must be a JSON object with a 'type'.", code="invalid_event")
    kind = message.pop("type", None)
    if kind != "response.create":
        raise invalid_request(
            f"Unsupported event type {kind!r}; this connection accepts 'response.create'.",
            param="type",
            code="invalid_event",
        )
    stream = message.pop("stream", True)
    if stream is not True and stream is not None:
        raise invalid_request("Responses over a WebSocket always stream; leave 'stream' out.", param="stream")
    if message.get("background"):
        raise invalid_request(
            "`background: true` is not supported over a WebSocket; use HTTP.",
            param="background",
            code="unsupported_parameter",
        )
    return message


TOO_MANY_CONNECTIONS = "too_many_websocket_connections"
_CLOSE_TRY_LATER = 1013  # RFC 6455 "try again later"
_open = 0  # connections open in this process (VLLM_RESPONSES_WS_MAX_CONNECTIONS)


@router.websocket("/v1/responses")
async def responses_socket(ws: WebSocket) -> None:
    global _open
    service = getattr(ws.app.state, "vllm_responses", None)
    if service is None:  # no engine (the render-only server): refuse the upgrade
        await ws.close(1011)
        return
    settings = _settings()
    await ws.accept(headers=[(VERSION_HEADER.encode(), __version__.encode())])
    if _open >= settings.ws_max_connections:
        # Accepted, then refused with the error frame clients read (a refused upgrade is
        # only a bare 403 to most WebSocket clients), and closed "try again later".
        await Connection(ws, service, settings).error(
            APIError(
                f"This server already holds {_open} WebSocket connections (at most {settings.ws_max_connections}). "
                "Retry later, or use HTTP.",
                status=HTTPStatus.TOO_MANY_REQUESTS,
                code=TOO_MANY_CONNECTIONS,
            )
        )
        await ws.close(_CLOSE_TRY_LATER, TOO_MANY_CONNECTIONS)
        return
    _open += 1
    logger.info("websocket %s: connected", id(ws))
    metrics.WEBSOCKETS.inc()
    try:
        await Connection(ws, service, settings).serve()
    except WebSocketDisconnect:
        pass
    finally:
        _open -= 1
        metrics.WEBSOCKETS.dec()
        logger.info("websocket %s: closed", id(ws))


@router.get("/v1/responses", include_in_schema=False)  # a WebSocket endpoint; OpenAPI has no words for it
async def responses_without_upgrade(raw: Request) -> Response:
    """``GET /v1/responses`` is the WebSocket endpoint: without the upgrade, 426."""
    response = error_response(
        APIError(
            "GET /v1/responses is the Responses WebSocket endpoint: connect with a WebSocket upgrade, or POST "
            "/v1/responses.",
            status=HTTPStatus.UPGRADE_REQUIRED,
            code="websocket_upgrade_required",
        )
    )
    response.headers["Upgrade"] = "websocket"
    return response


__all__ = ["router"]
