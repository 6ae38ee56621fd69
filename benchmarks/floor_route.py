"""The floor of any Responses route on a vLLM API server (issue 11.3), for ``bench_e2e.py``'s
``floor`` target: ``POST /bench/floor`` does only what every streamed route must do, and
nothing of a Responses layer. It renders the chat through vLLM's ``OnlineRenderer`` (template
and tokenizer, as ours and upstream's routes do), submits it to the engine, and writes one SSE
frame per engine output (``response.output_text.delta``, the text as a JSON string) between a
``response.created`` and a ``response.completed`` frame. It has no reasoning or tool parser, no
store, no state machine, no validation of the request beyond what the chat request does.

What the API process spends on it is what the HTTP server, the middleware, vLLM's renderer,
``AsyncLLM`` and its output handler, and the socket writes cost a route: a Responses route
cannot cost less. If that floor is above 0.7x of upstream's Responses route, the target of
issue 11.3 cannot be met by any Responses layer on that server.

Loaded as a vLLM endpoint plugin named ``bench_floor`` (benchmark code, never shipped): the
entry point lives in a ``.dist-info`` that :func:`install` writes into a temporary folder,
which goes on the server's ``PYTHONPATH`` beside this folder.
"""

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import StreamingResponse

NAME = "bench_floor"
PATH = "/bench/floor"
router = APIRouter()


class FloorPlugin:
    name = NAME
    required_tasks: tuple[str, ...] | None = ("generate",)

    def attach_router(self, app: FastAPI) -> None:
        app.include_router(router)

    async def init_state(self, engine_client: Any, state: Any, args: Any) -> None:
        state.bench_floor = engine_client


def install(folder: Path) -> None:
    """The ``bench_floor`` entry point as an installed distribution in ``folder`` (put it and
    this file's folder on the server's ``PYTHONPATH``, and ``bench_floor`` in ``VLLM_PLUGINS``)."""
    info = folder / "bench_floor-0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bench-floor\nVersion: 0\n")
    (info / "entry_points.txt").write_text(f"[vllm.endpoint_plugins]\n{NAME} = floor_route:FloorPlugin\n")


def _frame(kind: str, data: dict) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


@router.post(PATH)
async def floor(raw: Request) -> StreamingResponse:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    body = await raw.json()
    engine = raw.app.state.bench_floor
    renderer = raw.app.state.online_renderer
    chat_request = ChatCompletionRequest.model_validate({
        "model": body["model"], "stream": True, "max_completion_tokens": body["max_output_tokens"],
        "messages": [{"role": "user", "content": body["input"]}],
    })
    rendered = await renderer.render_chat(chat_request)
    engine_input = rendered[1][0]
    params = chat_request.to_sampling_params(body["max_output_tokens"], engine.model_config.get_diff_sampling_param())
    request_id = f"floor-{uuid.uuid4().hex}"

    async def frames() -> AsyncIterator[bytes]:
        yield _frame("response.created", {"type": "response.created", "sequence_number": 0})
        n = 0
        async for result in engine.generate(engine_input, params, request_id):
            n += 1
            yield _frame("response.output_text.delta", {"type": "response.output_text.delta", "sequence_number": n,
                                                         "delta": result.outputs[0].text})
        yield _frame("response.completed", {"type": "response.completed", "sequence_number": n + 1})

    return StreamingResponse(frames(), media_type="text/event-stream")
