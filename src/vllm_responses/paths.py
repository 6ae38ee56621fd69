"""Our path families (``/v1/responses``, ``/v1/conversations``) on a server that serves others
too: what the key gate and the router's refusals treat as ours."""

from collections.abc import Iterable
from typing import Any

from starlette.types import Scope


def families(*routers: Any) -> tuple[str, ...]:
    """The path families the routers serve: each route's first two segments."""
    return tuple(sorted({"/".join(route.path.split("/")[:3]) for router in routers for route in router.routes}))


def under(scope: Scope, prefixes: Iterable[str]) -> bool:
    """Whether the request's path (without the server's ``root_path``) is in one of them."""
    path = scope["path"].removeprefix(scope.get("root_path", ""))
    return any(path == p or path.startswith(p + "/") for p in prefixes)
