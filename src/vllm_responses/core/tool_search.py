"""The server's own tool search: which deferred tools a ``tool_search`` query loads.

No external service: the query's words are matched against each deferred tool's name and
description and its namespace's name and description (docs/events.md#tool-search). A word
found among the tool's name's words scores 3, in its namespace's name 2, in a description 1;
a word that only starts one of the name's words (``weath`` for ``get_weather``) scores 1.
The best :data:`LIMIT` tools with a score above 0 are loaded, ties in the order of ``tools``;
a namespaced tool comes back inside its namespace (one entry per namespace), as the client
defined it.
"""

import re
from typing import Any

from ..events.response import dump_json_dict

LIMIT = 5
_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str | None) -> set[str]:
    """Lower-case words, ``snake_case`` and ``camelCase`` split."""
    if not text:
        return set()
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", text)
    return set(_WORD.findall(spaced.lower()))


def query_text(arguments: Any) -> str:
    """The query a call's arguments hold: ``query``, else every string among them."""
    if isinstance(arguments, dict):
        if isinstance(arguments.get("query"), str):
            return arguments["query"]
        return " ".join(v for v in arguments.values() if isinstance(v, str))
    return arguments if isinstance(arguments, str) else ""


def score(query: set[str], namespace: Any, tool: Any) -> int:
    name = _words(tool.name)
    space = _words(namespace.name) if namespace is not None else set()
    described = _words(getattr(tool, "description", None)) | (
        _words(getattr(namespace, "description", None)) if namespace is not None else set()
    )
    total = 0
    for word in query:
        if word in name:
            total += 3
        elif word in space:
            total += 2
        elif word in described:
            total += 1
        elif len(word) >= 3 and any(n.startswith(word) for n in name):
            total += 1
    return total


def search(arguments: Any, deferred: list[tuple[Any, Any]], limit: int = LIMIT) -> list[dict[str, Any]]:
    """The tool definitions (JSON, as ``tool_search_output.tools`` holds them) that a search
    with ``arguments`` loads from ``deferred`` ((namespace or None, tool) pairs)."""
    query = _words(query_text(arguments))
    ranked = sorted(
        ((score(query, ns, tool), i, ns, tool) for i, (ns, tool) in enumerate(deferred)),
        key=lambda entry: (-entry[0], entry[1]),
    )
    found = [(ns, tool) for points, _, ns, tool in ranked[:limit] if points > 0]
    out: list[dict[str, Any]] = []
    spaces: dict[str, dict[str, Any]] = {}
    for ns, tool in found:
        definition = {k: v for k, v in dump_json_dict(tool).items() if v is not None}
        if ns is None:
            out.append(definition)
            continue
        if ns.name not in spaces:
            spaces[ns.name] = {"type": "namespace", "name": ns.name, "description": ns.description, "tools": []}
            out.append(spaces[ns.name])
        spaces[ns.name]["tools"].append(definition)
    return out
