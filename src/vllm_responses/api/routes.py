"""HTTP transport of the Responses API: SSE or JSON over FastAPI. Thin by design.

``POST /v1/responses``, ``GET``/``DELETE /v1/responses/{id}`` (``GET`` can stream a background
response again), ``POST /v1/responses/{id}/cancel``, ``GET /v1/responses/{id}/input_items``.
The Conversations API is in :mod:`.conversations`.
"""

import asyncio
import re
import typing
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from functools import wraps
from typing import Any, TypeVar
from urllib.parse import quote

import orjson
from fastapi import APIRouter, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import Response
from openai.types.responses import ResponseIncludable
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..common.errors import APIError, invalid_request, request_too_large
from ..common.logs import get_logger
from ..common.tasks import settle
from ..core.background import BackgroundRun, Logged
from ..core.run import Run
from ..core.service import ResponsesService, failure
from ..events.response import dump_json
from ..events.wire import frame_of, frames
from ..request.items import page
from ..request.protocol import ResponsesRequest, parse_request_off_loop
from .paths import under
from .sse import EventStream, disconnected
from .tenancy import tenant_of

logger = get_logger(__name__)

router = APIRouter()
T = TypeVar("T")

VERSION_HEADER = "x-vllm-responses"
PROCESS_HEADER = "x-vllm-responses-process"
# The tool types a request carried that the model was not offered (docs/events.md#tools).
TOOLS_NOT_OFFERED_HEADER = "x-vllm-responses-tools-not-offered"
_HEADER_TYPES = 32  # at most this many types named (then "..."), each at most 64 characters
_PLAIN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_HEADERS = {VERSION_HEADER: __version__}
_SSE_HEADERS = {**_HEADERS, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_INCLUDABLE = frozenset(typing.get_args(ResponseIncludable))


def error_response(error: APIError) -> Response:
    return Response(error.json(), status_code=error.status, media_type="application/json", headers=_HEADERS)


def json_response(body: bytes | str, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type="application/json", headers=_HEADERS)


def service_of(request: Request) -> ResponsesService:
    service = getattr(request.app.state, "vllm_responses", None)
    if service is None:
        raise APIError(
            "The Responses service is not initialised (no engine).",
            status=503,
            type="server_error",
            code="server_is_overloaded",
        )
    return service


async def read_body(raw: Request) -> bytes:
    """The request body, refused with a 413 as soon as it is known to exceed the limit
    (by its ``Content-Length``, or while it streams in)."""
    limit = service_of(raw).max_body_bytes
    declared = raw.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise request_too_large(limit)
    chunks, size = [], 0
    async for chunk in raw.stream():
        size += len(chunk)
        if size > limit:
            raise request_too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def http_errors(prefixes: tuple[str, ...]) -> Callable[[Request, Exception], Awaitable[Response]]:
    """An exception handler for the router's own refusals (a method a path does not serve,
    405 with its ``Allow`` header; a path no route serves, 404): OpenAI-shaped on our paths
    (``prefixes``), FastAPI's ``{"detail": ...}`` elsewhere, as before."""

    async def handler(raw: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if not under(raw.scope, prefixes):
            return await http_exception_handler(raw, exc)
        path = raw.url.path
        if exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            error = APIError(
                f"Invalid method for URL ({raw.method} {path}): allowed {allowed}.",
                status=405,
                code="method_not_allowed",
            )
        elif exc.status_code == 404:
            error = APIError(f"Invalid URL ({raw.method} {path}).", status=404, code="not_found")
        else:
            error = APIError(str(exc.detail), status=exc.status_code)
        response = error_response(error)
        response.headers.update(exc.headers or {})
        return response

    return handler


def answers_errors(handler: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    """Every failure a route meets becomes an OpenAI-shaped error body, never a traceback."""

    @wraps(handler)
    async def wrapper(*args: Any, **kwargs: Any) -> Response:
        try:
            response = await handler(*args, **kwargs)
        except APIError as exc:
            response = error_response(exc)
        except Exception:
            logger.exception("%s failed", handler.__name__)
            response = error_response(
                APIError(
                    "The server could not handle this request.", status=500, type="server_error", code="server_error"
                )
            )
        not_offered = getattr(kwargs["raw"].state, "tools_not_offered", None)
        if not_offered:
            response.headers[TOOLS_NOT_OFFERED_HEADER] = tools_header(not_offered)
        service = getattr(kwargs["raw"].app.state, "vllm_responses", None)
        if service is not None:  # which API process answered (several with --api-server-count)
            response.headers[PROCESS_HEADER] = service.owner
        return response

    return wrapper


async def parse(raw: Request, body: bytes) -> ResponsesRequest:
    """A create body (``/v1/responses``, ``/compact``, ``/input_tokens``), parsed; the tool
    types it carries that the model is not offered go into the answer's header, success or
    error (:func:`answers_errors`)."""
    request = await parse_request_off_loop(body, headers=raw.headers, tenant=tenant_of(raw.scope))
    raw.state.tools_not_offered = request.unoffered_tool_types
    return request


def tools_header(types: list[str]) -> str:
    """Sorted tool types, comma-separated; a type the ``openai`` package does not know is the
    client's string, so anything but a plain name is percent-encoded (whole characters, at
    most 64 bytes), and the header bounded."""
    names = [_header_name(t) for t in types[:_HEADER_TYPES]]
    return ", ".join(names + (["..."] if len(types) > _HEADER_TYPES else []))


def _header_name(kind: str) -> str:
    if _PLAIN.fullmatch(kind):
        return kind
    name = ""
    for char in kind:
        if len(name) + len(quoted := quote(char, safe="")) > 64:
            break
        name += quoted
    return name or '""'


@router.post("/v1/responses")
@answers_errors
async def create_response(raw: Request) -> Response:
    """A client that leaves at any point has its engine request aborted at once: while it
    waits for the first event or for a JSON answer (``http.disconnect`` is watched beside
    the work), and mid-stream (:class:`~.sse.EventStream`). A background response goes on."""
    service = service_of(raw)
    body = await read_body(raw)
    request = await parse(raw, body)
    if request.background:
        run = await service.create(request, body=body)
        assert isinstance(run, BackgroundRun)
        if request.stream:
            return _sse(run.follow(), service.keepalive_s)
        return json_response(dump_json(run.response))
    answer = await until_disconnected(raw, _answer(service, request, body))
    return answer if answer is not None else Response(status_code=499)  # nobody reads it


async def _answer(service: ResponsesService, request: ResponsesRequest, body: bytes) -> Response:
    # A stream waits for the engine's acceptance only so long before it commits to a 200
    # and keeps its client with comments; a JSON answer has nothing to send meanwhile.
    run = await service.create(request, patience=service.keepalive_s if request.stream else None, body=body)
    assert isinstance(run, Run)
    batches = run.batches()
    if request.stream:

        async def frames_of() -> AsyncGenerator[bytes, None]:
            try:
                async for batch in batches:
                    yield frames(batch)
            finally:
                await batches.aclose()

        return EventStream(frames_of(), service.keepalive_s, _SSE_HEADERS, on_close=run.close)
    try:
        async for _ in batches:
            pass
    finally:
        await batches.aclose()
    if run.response.status == "failed":
        raise failure(run.response)
    return json_response(dump_json(run.response))


async def until_disconnected(raw: Request, work: Awaitable[T]) -> T | None:
    """``work``'s result; ``None`` if the client disconnected first, and then ``work`` was
    cancelled and has ended (its engine request aborted) before this returns."""
    task = asyncio.ensure_future(work)
    leaving = asyncio.ensure_future(disconnected(raw.receive))
    try:
        await asyncio.wait((task, leaving), return_when=asyncio.FIRST_COMPLETED)
    finally:
        await settle(leaving, task)  # the task only if the client left (or we were cancelled)
    return None if task.cancelled() else task.result()


@router.get("/v1/responses/{response_id}")
@answers_errors
async def retrieve_response(response_id: str, raw: Request) -> Response:
    service = service_of(raw)
    include = include_param(raw)
    if _flag(raw, "stream"):
        after = _int(raw, "starting_after", default=-1, minimum=0)
        return _sse(await service.follow(response_id, tenant_of(raw.scope), after), service.keepalive_s)
    record = await service.record(response_id, tenant_of(raw.scope))
    return json_response(_dumps(service.presented(record.response, include)))


@router.delete("/v1/responses/{response_id}")
@answers_errors
async def delete_response(response_id: str, raw: Request) -> Response:
    return json_response(_dumps(await service_of(raw).delete(response_id, tenant_of(raw.scope))))


@router.post("/v1/responses/{response_id}/cancel")
@answers_errors
async def cancel_response(response_id: str, raw: Request) -> Response:
    return json_response(_dumps(await service_of(raw).cancel(response_id, tenant_of(raw.scope))))


@router.get("/v1/responses/{response_id}/input_items")
@answers_errors
async def list_input_items(response_id: str, raw: Request) -> Response:
    include = include_param(raw)
    limit, order, after = list_params(raw)
    service = service_of(raw)
    items = service.presented({"output": await service.input_items(response_id, tenant_of(raw.scope))}, include)[
        "output"
    ]  # sealed reasoning on request
    data, has_more = page(items, after, limit, order)
    return json_response(_dumps(item_list(data, has_more)))


# -- shared by the list routes (here and in conversations) ------------------------------------
def list_params(raw: Request) -> tuple[int, str, str | None]:
    """``limit`` (1-100, default 20), ``order`` (``asc``/``desc``, default ``desc``), ``after``."""
    limit = _int(raw, "limit", default=20, minimum=1, maximum=100)
    order = raw.query_params.get("order") or "desc"
    if order not in ("asc", "desc"):
        raise invalid_request(f"Invalid 'order': {order!r}; expected 'asc' or 'desc'.", param="order")
    return limit, order, raw.query_params.get("after") or None


def item_list(data: list[dict], has_more: bool) -> dict:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def include_param(raw: Request) -> frozenset[str]:
    values = raw.query_params.getlist("include") + raw.query_params.getlist("include[]")
    for value in values:
        if value not in _INCLUDABLE:
            raise invalid_request(
                f"Invalid value for 'include': {value!r}. Supported: {', '.join(sorted(_INCLUDABLE))}.", param="include"
            )
    return frozenset(values)


def _flag(raw: Request, name: str) -> bool:
    value = (raw.query_params.get(name) or "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise invalid_request(f"Invalid '{name}': expected a boolean.", param=name, code="invalid_type")
    return value in ("true", "1")


def _int(raw: Request, name: str, *, default: int, minimum: int, maximum: int | None = None) -> int:
    text = raw.query_params.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise invalid_request(f"Invalid '{name}': expected an integer.", param=name, code="invalid_type") from None
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise invalid_request(f"Invalid '{name}': {value}; it must be {bounds}.", param=name)
    return value


def _sse(batches: AsyncIterator[list[Logged]], keepalive_s: float | None) -> EventStream:
    """A background response's events; a follower that leaves stops following, not the response."""

    async def body() -> AsyncGenerator[bytes, None]:
        async for batch in batches:
            yield "".join(frame_of(kind, data) for _, kind, data in batch).encode()

    return EventStream(body(), keepalive_s, _SSE_HEADERS)


def _dumps(body: dict) -> bytes:
    return orjson.dumps(body)


__all__ = ["router"]
