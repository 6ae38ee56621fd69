"""``POST /v1/responses/input_tokens``: how many tokens a create body's prompt has.

The body is a create body; it is checked, its state brought in (``previous_response_id``,
``conversation``, sealed reasoning) and rendered exactly as a real request would be (the
server's chat template, tools, ``truncation``), and the rendered prompt is counted: the
answer equals the ``usage.input_tokens`` that request reports. Nothing is generated or stored.
"""

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from .routes import answers_errors, json_response, parse, read_body, service_of

router = APIRouter()


@router.post("/v1/responses/input_tokens")
@answers_errors
async def count_input_tokens(raw: Request) -> Response:
    service = service_of(raw)
    request = await parse(raw, await read_body(raw))
    # openai.types.responses.InputTokenCountResponse
    return json_response(
        orjson.dumps({"object": "response.input_tokens", "input_tokens": await service.count_input_tokens(request)})
    )


__all__ = ["router"]
