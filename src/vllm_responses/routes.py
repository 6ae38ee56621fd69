"""HTTP transport: ``POST /v1/responses`` as SSE or JSON. Thin by design."""

import logging
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from . import __version__
from .errors import APIError
from .protocol import parse_request
from .service import ResponsesService
from .protocol import dump_json
from .sse import SSE_MEDIA_TYPE, frames

logger = logging.getLogger(__name__)

router = APIRouter()

VERSION_HEADER = "x-vllm-responses"
_HEADERS = {VERSION_HEADER: __version__}


def error_response(error: APIError) -> Response:
    return Response(error.json(), status_code=error.status, media_type="application/json", headers=_HEADERS)


def _service(request: Request) -> ResponsesService:
    service = getattr(request.app.state, "vllm_responses", None)
    if service is None:
        raise APIError("The Responses service is not initialised (no engine).", status=503, type="server_error", code="server_is_overloaded")
    return service


@router.post("/v1/responses")
async def create_response(raw: Request) -> Response:
    try:
        request = parse_request(await raw.body())
        run = await _service(raw).start(request)
    except APIError as exc:
        return error_response(exc)
    except Exception:
        logger.exception("could not start a response")
        return error_response(APIError("The server could not start this response.", status=500, type="server_error", code="server_error"))

    capture = _service(raw).capture(run.response.id)
    if request.stream:
        async def body() -> AsyncIterator[bytes]:
            complete = False
            try:
                async for batch in run.batches():
                    data = frames(batch)
                    if capture is not None:
                        capture.write(data)
                    yield data
                complete = True
            finally:
                if capture is not None:
                    capture.close(complete)

        headers = {**_HEADERS, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(body(), media_type=SSE_MEDIA_TYPE, headers=headers)

    batches = run.batches()
    complete = False
    try:
        async for batch in batches:
            if capture is not None:
                capture.write(frames(batch))
            if await raw.is_disconnected():  # nobody waits for the answer: stop the engine now
                return Response(status_code=499)
        complete = True
    finally:
        await batches.aclose()
        if capture is not None:
            capture.close(complete)
    if run.response.status == "failed":
        error = run.response.error
        message = error.message if error else "The response failed."
        return error_response(APIError(message, status=500, type="server_error", code="server_error"))
    return Response(dump_json(run.response), media_type="application/json", headers=_HEADERS)


__all__ = ["router"]
