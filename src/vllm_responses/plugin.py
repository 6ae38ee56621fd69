"""vLLM endpoint plugin: ``VLLM_PLUGINS=responses`` swaps in our ``/v1/responses``.

Implements ``vllm.plugins.endpoint_plugins.interface.EndpointPlugin`` structurally, so this
module imports nothing from vLLM: the engine adapter is loaded only in :meth:`init_state`.
"""

import os
from argparse import Namespace
from typing import Any

from fastapi import FastAPI

from .routes import router
from .service import ResponsesService


# Debugging aid: a folder where every response's SSE stream is also written (see ResponsesService).
CAPTURE_ENV = "VLLM_RESPONSES_CAPTURE_DIR"


class ResponsesPlugin:
    name = "responses"
    required_tasks: tuple[str, ...] | None = ("generate",)

    def attach_router(self, app: FastAPI) -> None:
        app.include_router(router)

    async def init_state(self, engine_client: Any, state: Any, args: Namespace) -> None:
        if engine_client is None:  # the CPU-only render server has no engine
            return
        from .vllm_engine import VllmEngine

        state.vllm_responses = ResponsesService(
            VllmEngine(engine_client, state, args), capture_dir=os.environ.get(CAPTURE_ENV) or None
        )
