"""``POST /v1/responses/compact``: a ``response.compaction`` object (openai's ``CompactedResponse``).

The body is a create body (``model``, ``input``, ``instructions``, ``previous_response_id``,
Codex's ``tools``/``reasoning``/``text``, …); its state is brought in as for create, and the
same response as a create with a ``compaction_trigger`` is run (:mod:`.compaction`). The
answer's output is every user message of the context, then that ``compaction`` item. It is
stored (unless ``store: false``) as a completed response with that output and no earlier
chain, so its id works as ``previous_response_id``: the continuation sees the user messages
and the summary, not the history it replaced.
"""

import time

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from openai.types.responses.response_input_item import CompactionTrigger

from .errors import ENGINE_DEAD, APIError, engine_dead, invalid_request
from .items import stored_response
from .protocol import dump_json_dict, parse_request_off_loop
from .routes import answers_errors, json_response, read_body, service_of
from .tenancy import tenant_of
from .service import Run, store_call
from .store import StoredResponse

router = APIRouter()

# Create parameters that mean nothing for a compaction (answered as unsupported).
_NOT_HERE = ("stream", "background", "conversation")


@router.post("/v1/responses/compact")
@answers_errors
async def compact_response(raw: Request) -> Response:
    service = service_of(raw)
    request = await parse_request_off_loop(await read_body(raw), headers=raw.headers, tenant=tenant_of(raw.scope))
    for name in _NOT_HERE:
        if request.params.get(name) or (name == "stream" and request.stream):
            raise invalid_request(f"`{name}` is not supported by /v1/responses/compact.", param=name, code="unsupported_parameter")
    if any(getattr(item, "type", None) == "compaction_trigger" for item in request.input):
        raise invalid_request("/v1/responses/compact compacts without a `compaction_trigger` item.", param="input")
    store = request.store
    context = await store_call(service.history.resolve(request))
    request.input = [*request.input, CompactionTrigger(type="compaction_trigger")]
    request.params = {**request.params, "store": False}
    run = await service.create(request, context=context)
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
        message = response.error.message if response.error else "The compaction failed."
        if message == ENGINE_DEAD:
            raise engine_dead()
        raise APIError(message, status=500, type="server_error", code="server_error")
    users = [item for item in context.earlier + context.input_items if item.get("type") == "message" and item.get("role") == "user"]
    output = users + [dump_json_dict(response.output[-1])]
    usage = dump_json_dict(response.usage)
    if store:
        data = {**stored_response(response), "output": output}
        await store_call(service.store.create_response(StoredResponse(response=data, input_items=[], owner=None, tenant=request.tenant)))
    body = {"id": response.id, "object": "response.compaction", "created_at": int(time.time()), "output": output, "usage": usage}
    return json_response(orjson.dumps(body))


__all__ = ["router"]
