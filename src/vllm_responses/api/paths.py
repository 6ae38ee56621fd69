"""Our path families (``/v1/responses``, ``/v1/conversations``) on a server that serves others
too: what the key gate and the router's refusals treat as ours."""

from collections.abc import Iterable
from typing import Any

from starlette._utils import get_route_path
from starlette.types import Scope


def families(*routers: Any) -> tuple[str, ...]:
    """The path families the routers serve: each route's first two segments."""
    return tuple(sorted({"/".join(route.path.split("/")[:3]) for router in routers for route in router.routes}))


def under(scope: Scope, prefixes: Iterable[str]) -> bool:
    """Whether the request's path, as the router sees it, is in one of them. The router strips
    the server's ``root_path`` only at a segment boundary (with ``--root-path /v``,
    ``/v1/responses`` stays whole); a plain ``removeprefix``, as vLLM's own key middleware does,
    would strip ``/v`` from it, miss our paths and let the request by without a key."""
    path = get_route_path(scope)
    return any(path == p or path.startswith(p + "/") for p in prefixes)
