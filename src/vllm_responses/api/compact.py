"""``POST /v1/responses/compact``: a ``response.compaction`` object (openai's ``CompactedResponse``).

The body is a create body (``model``, ``input``, ``instructions``, ``previous_response_id``,
Codex's ``tools``/``reasoning``/``text``, …); what the compaction does and keeps:
:meth:`~.service.ResponsesService.compact`.
"""

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from .routes import answers_errors, json_response, parse, read_body, service_of

router = APIRouter()


@router.post("/v1/responses/compact")
@answers_errors
async def compact_response(raw: Request) -> Response:
    service = service_of(raw)
    request = await parse(raw, await read_body(raw))
    return json_response(orjson.dumps(await service.compact(request)))


__all__ = ["router"]
