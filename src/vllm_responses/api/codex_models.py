"""Model metadata for Codex: ``GET /v1/models?client_version=...`` also lists ``models``.

Codex asks its provider's ``/models`` for a catalog (``{"models": [ModelInfo, ...]}``, read
by ``codex-rs``' models manager) when the provider authenticates by command or is the
ChatGPT backend; without an entry for the model it warns "Model metadata for ... not found"
and runs on fallback metadata (a 272,000-token context window, no freeform ``apply_patch``).
vLLM owns ``/v1/models`` and its OpenAI shape (``{"object": "list", "data": [...]}``) stays
as it is; only a request carrying Codex's ``client_version`` query gets the superset: the
same body plus ``models``, one entry per served model and adapter, with its real context
window (``max_model_len``) and what this server supports.
"""

from typing import Any
from urllib.parse import parse_qs

import orjson

from ..common.logs import get_logger

logger = get_logger(__name__)

PATH = "/v1/models"
# Codex sends these as the model's base instructions (its first developer message), in place
# of its own prompt, which only OpenAI may ship; set `model_instructions_file` in Codex's
# config to use another.
BASE_INSTRUCTIONS = (
    "You are a coding agent running in the Codex CLI, served by vLLM. You share a workspace with the user. "
    "Use the tools you are given to inspect files and run commands, make the changes the user asks for "
    "(edit files with apply_patch), check your work, and answer concisely."
)


def codex_model(
    card: dict[str, Any], priority: int, *, context_window: int, reasoning: bool, images: bool
) -> dict[str, Any]:
    """One ``ModelInfo`` (codex-rs ``codex_protocol::openai_models``) for a vLLM model card."""
    window = int(card.get("max_model_len") or context_window)
    return {
        "slug": card["id"],
        "display_name": card["id"],
        "description": f"Served by vLLM ({card.get('root') or card['id']}, {window} tokens of context).",
        "default_reasoning_level": None,
        "supported_reasoning_levels": [],
        "shell_type": "default",
        "visibility": "list",
        "supported_in_api": True,
        "priority": priority,
        "upgrade": None,
        "base_instructions": BASE_INSTRUCTIONS,
        "model_messages": None,
        # Reasoning shows as a summary when asked (this server mirrors the model's reasoning there).
        "supports_reasoning_summaries": reasoning,
        "default_reasoning_summary": "auto" if reasoning else "none",
        "support_verbosity": False,
        "default_verbosity": None,
        "apply_patch_tool_type": "freeform",  # custom tools with a grammar are served
        "web_search_tool_type": "text",
        "truncation_policy": {"mode": "bytes", "limit": 10_000},
        "supports_parallel_tool_calls": True,
        "supports_image_detail_original": False,
        "context_window": window,
        "max_context_window": window,
        "auto_compact_token_limit": None,  # Codex takes 90% of the window
        "experimental_supported_tools": [],
        "input_modalities": ["text", "image"] if images else ["text"],
        "additional_speed_tiers": [],
        "service_tiers": [],
        "default_service_tier": None,
        "availability_nux": None,
        "include_skills_usage_instructions": False,
        "use_responses_lite": False,
        "auto_review_model_override": None,
        "comp_hash": None,
    }


def catalog(listing: dict[str, Any], engine: Any) -> dict[str, Any]:
    """vLLM's ``/v1/models`` body with ``models`` added."""
    config = getattr(engine, "model_config", None)
    facts = {
        "context_window": int(getattr(config, "max_model_len", 0) or 0),
        "reasoning": bool(getattr(engine, "reasoning", False)),
        "images": bool(getattr(engine, "accepts_images", False)),
    }
    models = [codex_model(card, i + 1, **facts) for i, card in enumerate(listing.get("data") or [])]
    return {**listing, "models": models}


class CodexCatalog:
    """ASGI middleware: every other request passes straight through, untouched."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != PATH
            or scope["method"] != "GET"
            or "client_version" not in parse_qs(scope.get("query_string", b"").decode("latin-1"))
        ):
            await self.app(scope, receive, send)
            return
        start: dict[str, Any] = {}
        body: list[bytes] = []

        async def keep(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                body.append(message.get("body", b""))

        await self.app(scope, receive, keep)
        content = b"".join(body)
        service = getattr(scope["app"].state, "vllm_responses", None) if "app" in scope else None
        if start.get("status") == 200 and service is not None:
            try:
                content = orjson.dumps(catalog(orjson.loads(content), service.engine))
            except (orjson.JSONDecodeError, TypeError, KeyError, AttributeError):
                logger.exception("could not add Codex's model catalog to /v1/models")
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(content)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": content})
