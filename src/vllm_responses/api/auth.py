"""The API key on our routes: vLLM's ``--api-key`` (or ``VLLM_API_KEY``), refused in OpenAI's shape.

vLLM's ``AuthenticationMiddleware`` guards every ``/v1`` path, ours included, but answers a
missing or wrong key with ``{"error": "Unauthorized"}``, which is not OpenAI's error shape.
Endpoint plugins attach their routes before vLLM adds its middleware, so a middleware added
in ``attach_router`` would sit inside vLLM's and never see those requests. Instead, when
Starlette assembles the middleware stack (at the first ASGI call: lifespan startup),
:func:`guard` puts :class:`ApiKeyGate` directly outside vLLM's authentication middleware,
with its very keys. For our paths the gate checks the key first and answers OpenAI's 401;
every request it lets through still meets vLLM's own check, so nothing vLLM protects is
weakened. Without ``--api-key`` vLLM adds no such middleware and there is no gate.

The gate also says which tenant a request acts for (:mod:`.tenancy`): with several keys, the
one it presented.
"""

import hashlib
import secrets
from collections.abc import Iterable

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import __version__
from ..common.errors import invalid_api_key
from ..settings import Tenancy, tenancy_from_env
from .paths import under
from .tenancy import SCOPE_KEY, tenants

# The class vLLM adds for ``--api-key`` (vllm.entrypoints.serve.middleware.authenticate), found by
# name so that this module imports nothing from vLLM.
VLLM_AUTH_MIDDLEWARE = "AuthenticationMiddleware"


class ApiKeyGate:
    """Pure ASGI middleware: on ``paths`` (prefixes), a request without one of ``tokens`` as
    its Bearer key gets OpenAI's 401 (a WebSocket handshake too, where the server can answer
    it with a body; else it is refused, 403). The key is read and compared as vLLM's middleware does
    (SHA-256 digests compared with :func:`secrets.compare_digest` against every key), so both
    checks always agree, and neither leaks timing. A request let through carries its tenant
    in its scope (:data:`~.tenancy.SCOPE_KEY`) when keys are tenants."""

    def __init__(self, app: ASGIApp, tokens: Iterable[str], paths: Iterable[str], tenancy: Tenancy = "per-key") -> None:
        self.app = app
        tokens = list(tokens)
        self.digests = [hashlib.sha256(t.encode()).digest() for t in tokens]
        self.paths = tuple(paths)
        self.tenants = tenants(tokens, tenancy)

    def _key(self, headers: Headers) -> str | None:
        scheme, _, key = (headers.get("authorization") or "").partition(" ")
        return key if scheme.lower() == "bearer" else None

    def _valid(self, digest: bytes) -> bool:
        match = False
        for expected in self.digests:  # no early exit: the time taken does not depend on which key matched
            match |= secrets.compare_digest(digest, expected)
        return match

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and scope.get("method") != "OPTIONS" and under(scope, self.paths):
            key = self._key(Headers(scope=scope))
            digest = hashlib.sha256(key.encode()).digest() if key else b""
            if not key or not self._valid(digest):
                if scope["type"] == "websocket" and "websocket.http.response" not in scope.get("extensions", {}):
                    await send({"type": "websocket.close", "code": 1008})  # the server answers the handshake 403
                    return
                error = invalid_api_key(provided=bool(key))
                headers = {"WWW-Authenticate": "Bearer", "x-vllm-responses": __version__}
                response = Response(
                    error.json(), status_code=error.status, media_type="application/json", headers=headers
                )
                await response(scope, receive, send)
                return
            if self.tenants:
                scope[SCOPE_KEY] = self.tenants[digest]
        await self.app(scope, receive, send)


def guard(app: FastAPI, paths: Iterable[str]) -> None:
    """Have :class:`ApiKeyGate` cover ``paths`` on ``app`` whenever vLLM guards it with a key;
    keys are tenants as ``VLLM_RESPONSES_TENANCY`` says (read when the server starts)."""
    paths = tuple(paths)
    build = app.build_middleware_stack

    def build_with_gate() -> ASGIApp:
        insert_gate(app.user_middleware, paths, tenancy_from_env())
        return build()

    app.build_middleware_stack = build_with_gate  # type: ignore[method-assign]


def insert_gate(middleware: list[Middleware], paths: tuple[str, ...], tenancy: Tenancy = "per-key") -> None:
    """Put a gate with vLLM's keys right outside (before, in this list) vLLM's authentication
    middleware; nothing when there is none or a gate is already there."""
    if any(m.cls is ApiKeyGate for m in middleware):
        return
    for i, m in enumerate(middleware):
        cls = m.cls
        tokens = m.kwargs.get("tokens")
        if (
            getattr(cls, "__name__", "") == VLLM_AUTH_MIDDLEWARE
            and getattr(cls, "__module__", "").startswith("vllm.")
            and tokens
        ):
            middleware.insert(i, Middleware(ApiKeyGate, tokens=list(tokens), paths=paths, tenancy=tenancy))
            return
