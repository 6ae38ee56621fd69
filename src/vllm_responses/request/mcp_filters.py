"""What an ``mcp`` tool's filters mean: ``allowed_tools`` (which of its server's tools the model
is offered) and ``require_approval`` (which calls wait for the user), as OpenAI reads them.

A filter object (``{"tool_names": [...], "read_only": bool}``) matches a tool that meets every
criterion it gives (``read_only``: the tool's ``readOnlyHint`` annotation); one that gives none
matches nothing. Tools are anything with a ``name`` and ``annotations`` (an ``mcp_list_tools``
item's entries, the MCP client's listing).
"""

from collections.abc import Mapping
from typing import Any, TypeVar

from ..events.builtin_calls import plain

T = TypeVar("T")


def read_only(tool: Any) -> bool:
    annotations = getattr(tool, "annotations", None)
    return isinstance(annotations, Mapping) and annotations.get("readOnlyHint") is True


def matches(tool: Any, rule: Any) -> bool:
    rule = plain(rule)
    if not isinstance(rule, Mapping):
        return False
    names, only = rule.get("tool_names"), rule.get("read_only")
    if names is None and only is None:
        return False
    return (names is None or tool.name in names) and (only is None or read_only(tool) == bool(only))


def allowed(tools: list[T], allowed_tools: Any) -> list[T]:
    """The tools ``allowed_tools`` lets the model see: all when it is absent, those named when it
    is a list, those its filter object matches otherwise."""
    allowed_tools = plain(allowed_tools)
    if allowed_tools is None:
        return list(tools)
    if isinstance(allowed_tools, list):
        return [t for t in tools if t.name in allowed_tools]
    return [t for t in tools if matches(t, allowed_tools)]


def needs_approval(tool: Any, require_approval: Any) -> bool:
    """Whether a call of ``tool`` waits for an ``mcp_approval_response``. ``always`` or absent
    (OpenAI's default): yes; ``never``: no. A filter object: a tool its ``never`` matches needs
    none, one its ``always`` matches needs one; any other tool needs one unless the object gives
    ``always`` alone (then the tools it names are the ones that need it)."""
    require_approval = plain(require_approval)
    if require_approval == "never":
        return False
    if not isinstance(require_approval, Mapping):  # "always", absent
        return True
    always, never = require_approval.get("always"), require_approval.get("never")
    if matches(tool, never):
        return False
    if matches(tool, always):
        return True
    return not (always is not None and never is None)
