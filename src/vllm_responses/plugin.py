"""vLLM endpoint plugin: ``VLLM_PLUGINS=responses`` swaps in our ``/v1/responses`` family and
adds ``/v1/conversations``.

Implements ``vllm.plugins.endpoint_plugins.interface.EndpointPlugin`` structurally, so this
module imports nothing from vLLM: the engine adapter is loaded only in :meth:`init_state`.
Settings come from ``VLLM_RESPONSES_*`` environment variables (:mod:`.settings`).
"""

from argparse import Namespace
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException

from .api import auth, conversations, openapi, routes, websocket
from .api import compact as compaction_route
from .api import input_tokens as token_count
from .api.codex_models import CodexCatalog
from .api.paths import families
from .common.logs import get_logger, redact_url
from .common.sealing import ReasoningSealer
from .core.hosted import McpHostedTools
from .core.mcp_client import McpFailure, McpServer, describe, vllm_tool_server_urls
from .core.service import ResponsesService, warm_up
from .request import builtins, protocol
from .settings import REASONING_KEYS, McpSettings, Settings
from .store import StoreUnavailable, open_store

logger = get_logger(__name__)


class ResponsesPlugin:
    name = "responses"
    required_tasks: tuple[str, ...] | None = ("generate",)

    def attach_router(self, app: FastAPI) -> None:
        app.include_router(compaction_route.router)  # POST /v1/responses/compact (before /v1/responses/{id} routes)
        app.include_router(routes.router)
        app.include_router(websocket.router)  # GET /v1/responses: WebSocket mode
        app.include_router(token_count.router)  # POST /v1/responses/input_tokens
        app.add_middleware(CodexCatalog)  # GET /v1/models?client_version=...: Codex's model metadata
        app.include_router(conversations.router)
        openapi.describe(app)  # our bodies, parameters and answers in /openapi.json, built when first asked
        ours = families(routes.router, websocket.router, conversations.router)
        auth.guard(app, ours)  # --api-key answered in OpenAI's shape
        app.add_exception_handler(StarletteHTTPException, routes.http_errors(ours))  # 404, 405 on our paths
        _on_shutdown(app)

    async def init_state(self, engine_client: Any, state: Any, args: Namespace) -> None:
        if engine_client is None:  # the CPU-only render server has no engine
            return
        from .engine.vllm_engine import VllmEngine

        settings = Settings.from_env()
        sealer = ReasoningSealer(settings.reasoning_keys)
        if sealer.ephemeral:
            logger.warning(
                "%s is not set: reasoning sealed for clients (include reasoning.encrypted_content) can be opened "
                "only by "
                "this process, so it is lost across restarts, replicas and --api-server-count > 1. Set it to one or "
                "more "
                "base64 32-byte keys (`openssl rand -base64 32`).",
                REASONING_KEYS,
            )
        service = ResponsesService(
            VllmEngine(engine_client, state, args),
            open_store(settings.store_url, settings.retention),
            sealer,
            capture_dir=settings.capture_dir,
            capture_max_bytes=settings.capture_max_bytes,
            lease_s=settings.lease_s,
            max_body_bytes=settings.max_body_bytes,
            keepalive_s=settings.keepalive_s,
            max_history_bytes=settings.max_history_bytes,
            max_background=settings.max_background,
            hosted=await hosted_tools(settings.mcp, getattr(args, "tool_server", None)),
        )
        protocol.LIMITS = settings.requests
        try:
            await service.store.heartbeat(service.owner, settings.lease_s)
            logger.info("responses store: %s", redact_url(settings.store_url))
        except StoreUnavailable as exc:
            shown = redact_url(settings.store_url)
            logger.error(
                "responses store %s is unavailable (%s); requests that need it answer 503 until it is back",
                shown,
                str(exc).replace(settings.store_url, shown),
            )
        warm_up()
        service.start()
        state.vllm_responses = service


async def hosted_tools(settings: McpSettings, tool_server: str | None) -> McpHostedTools:
    """The MCP servers the server runs tools on: ``VLLM_RESPONSES_TOOL_SERVERS`` and vLLM's own
    ``--tool-server host:port,...`` (each labelled by the name its MCP server gives itself, as
    upstream labels them: ``browser``, ``python``; one that cannot be reached now is left out,
    with an error in the log), and per-request URLs the allow-list lets through."""
    servers = list(settings.tool_servers)
    known: dict[str, set[str]] = {}
    if tool_server:
        try:
            urls = vllm_tool_server_urls(tool_server)
        except ValueError as exc:
            logger.error("%s: the flag is ignored", exc)
            urls = []
        for url in urls:
            try:
                listing = await describe(McpServer.build("--tool-server", url, transport="sse"), settings)
            except McpFailure as exc:
                logger.error("--tool-server %s: %s; its tools are not served", url, exc.message)
                continue
            label = listing.name or url
            servers.append((label, url))
            known[label] = {tool.name for tool in listing.tools}
            logger.info("--tool-server %s: MCP server %r, %d tools", url, label, len(listing.tools))
    hosted = McpHostedTools(replace(settings, tool_servers=tuple(servers)), known)
    builtins.SERVED.clear()
    builtins.SERVED.update(hosted.served())  # web_search / code_interpreter offered to the model from now on
    return hosted


def _on_shutdown(app: FastAPI) -> None:
    """vLLM's lifespan has no hook for plugins: wrap it to stop our service inside it."""
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
        async with inner(app) as state:
            try:
                yield state
            finally:
                service = getattr(app.state, "vllm_responses", None)
                if service is not None:
                    await service.stop()

    app.router.lifespan_context = lifespan
