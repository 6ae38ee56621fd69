"""Model → server-run tool → model, inside one response.

The server runs two kinds of tools itself: a ``tool_search`` whose ``execution`` is ``server``
(:mod:`.tool_search`) and the tools of ``mcp`` servers (:mod:`.hosted`). Before the first model
pass, the servers of the request's ``mcp`` tools that the conversation has not listed yet are
listed (an ``mcp_list_tools`` item each), and the calls the user approved since the last turn
(``mcp_approval_response``) are run. When a model pass ends with calls of server-run tools, the
server runs them, their items join the response, and the model goes on in the same response
from everything so far, offered what they loaded. One stream of events, sequence numbers and
output indexes running on; usage adds up every pass.

An MCP call's fragments never reach the stream while the model writes it: once the pass ends,
its ``mcp_call`` item opens with the whole arguments, stays open while the server runs it, and
closes with its output or error (``HostedStart`` / ``HostedEnd``), as OpenAI streams it. A call
that needs the user's approval becomes an ``mcp_approval_request`` item instead, and the
response ends there.

The response ends when a pass ends without server-run calls; when it also called tools the
client runs, or asked for an approval (the client must act: the server-run calls of that pass
are answered first); when a pass is cut short (``length``); or after :data:`MAX_SERVER_CALLS`
server-run calls (or the request's ``max_tool_calls``, when lower).
"""

import json
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from ..common.ids import new_id
from ..engine.base import Engine
from ..events.builtin_calls import search_output
from ..events.deltas import (
    Delta,
    Finish,
    HostedEnd,
    HostedStart,
    ItemDelta,
    PassEnd,
    Started,
    ToolCallDelta,
    Usage,
)
from ..events.response import dump_json_dict
from ..request.builtins import served_kind
from ..request.chat import CALL_TYPES, listed_servers
from ..request.items import sealed_free, to_model_input
from ..request.mcp_filters import needs_approval
from ..request.protocol import ResponsesRequest
from . import tool_search
from .compaction import Direct, Plan, added
from .hosted import (
    CallResult,
    HostedFailure,
    HostedTools,
    NoHostedTools,
    call_error,
    execution_error,
)

# The most server-run tool calls one response makes.
MAX_SERVER_CALLS = 16


def runs_server_tools(request: ResponsesRequest) -> bool:
    """Whether the request offers a tool the server runs (else no loop is needed)."""
    return any(
        tool.type == "mcp"
        or served_kind(tool.type) is not None
        or (tool.type == "tool_search" and getattr(tool, "execution", None) != "client")
        for tool in request.tools
    ) or any(getattr(item, "type", None) == "mcp_approval_response" for item in request.input)


def _server_search(delta: ToolCallDelta) -> bool:
    return delta.builtin == "tool_search" and (delta.builtin_options or {}).get("execution") == "server"


@dataclass
class _McpCall:
    """A call of a tool the server runs, as the model wrote it: an MCP server's tool, or a
    hosted tool (``kind`` ``web_search`` / ``code_interpreter``) run on the operator's server."""

    server_label: str
    name: str
    arguments: list[str] = field(default_factory=list)
    kind: str = "mcp"


_SERVED = frozenset({"mcp", "web_search", "code_interpreter"})


@dataclass
class ToolLoop:
    """Runs ``first`` (the response's first pass, compaction included), then more passes while
    the model calls server-run tools. ``output``: the response's output items so far (the
    stream's, read after a :class:`PassEnd` has closed the pass's last item); ``window``: the
    items the model sees of a context (:func:`.compaction.window`). Stands where a ``Direct``
    would."""

    engine: Engine
    request: ResponsesRequest
    items: list[Any]
    first: Plan | Direct
    output: Callable[[], list[Any]]
    window: Callable[[list[Any]], list[Any]]
    hosted: HostedTools = field(default_factory=NoHostedTools)

    def __post_init__(self) -> None:
        self._results: dict[str, tuple[str, str, str]] = {}  # a served call's item id: (function, arguments, result)

    @property
    def sampling(self) -> Any:
        return self.first.sampling

    async def deltas(self, response_id: str) -> AsyncGenerator[Started | Delta | Finish, None]:
        usage, self._calls_left = Usage(), min(MAX_SERVER_CALLS, self.request.get("max_tool_calls") or MAX_SERVER_CALLS)
        passes, first_item = 0, 0
        # (A response that compacts first keeps its plan: its servers are listed on the next turn.)
        if isinstance(self.first, Direct) and (self._unlisted() or self._approved()):
            yield Started()  # the server's own work comes first: the engine takes the first pass after it
            async for delta in self._before_first_pass():
                yield delta
            inner = await self._next_pass(response_id, passes)
            first_item = len(self.output())
        else:
            inner = self.first.deltas(response_id)
        while True:
            finish, searched, mcp = None, False, {}
            try:
                async for delta in inner:
                    if isinstance(delta, Finish):
                        finish = delta
                        break
                    if isinstance(delta, Started) and (passes or first_item):
                        continue
                    if isinstance(delta, ToolCallDelta):
                        if delta.name is not None and delta.builtin in _SERVED:
                            label = (delta.builtin_options or {}).get("server_label") or ""
                            mcp[delta.index] = _McpCall(label, delta.name, [delta.arguments], delta.builtin or "mcp")
                            continue
                        if delta.name is None and delta.index in mcp:
                            mcp[delta.index].arguments.append(delta.arguments)
                            continue
                        searched = searched or (delta.name is not None and _server_search(delta))
                    yield delta
            finally:
                await inner.aclose()
            if finish is None:  # the engine broke its contract; the run ends the response failed
                return
            usage = added(usage, finish.usage)
            if finish.reason != "stop" or not (searched or mcp) or self._calls_left <= 0:
                yield Finish(finish.reason, usage)
                return
            yield PassEnd()  # the pass's last item closes: its calls are whole in the output
            made = self.output()[first_item:]
            ran, waiting = 0, False
            async for delta in self._searches(made):
                ran += 1
                yield delta
            for call in mcp.values():
                calls = self._mcp_call(call) if call.kind == "mcp" else self._served_call(call)
                async for delta in calls:
                    waiting = waiting or isinstance(delta, ItemDelta)
                    ran += isinstance(delta, HostedEnd)
                    yield delta
            client_calls = any(
                item.type in CALL_TYPES
                and not (item.type == "tool_search_call" and getattr(item, "execution", None) == "server")
                for item in made
            )
            if client_calls or waiting or not ran:
                yield Finish("stop", usage)
                return
            passes += 1
            first_item = len(self.output())
            inner = await self._next_pass(response_id, passes)

    # -- one pass and the next ------------------------------------------------------------------
    async def _next_pass(self, response_id: str, passes: int) -> Any:
        prepared = await self.engine.prepare(self.request, self.window(self._context()))
        return self.engine.generate(prepared, f"{response_id}-{passes}" if passes else response_id)

    def _context(self) -> list[Any]:
        return self.items + self._as_input(self.output())

    def _as_input(self, output: list[Any]) -> list[Any]:
        """The response's output items as the input items the next pass renders. A web search
        or code run this response made goes back as the call and its result (which its item
        does not hold), exactly as the model wrote and saw them."""
        items: list[dict[str, Any]] = []
        for item in output:
            data = sealed_free(dump_json_dict(item))
            result = self._results.get(data.get("id") or "")
            if result is None:
                items.append(data)
                continue
            name, arguments, text = result
            items.append({"type": "function_call", "call_id": data["id"], "name": name, "arguments": arguments})
            items.append({"type": "function_call_output", "call_id": data["id"], "output": text})
        return to_model_input(items, "output")

    # -- before the first pass: listings and approved calls ----------------------------------------
    def _mcp_tools(self) -> dict[str, Any]:
        return {tool.server_label: tool for tool in self.request.tools if tool.type == "mcp"}

    def _unlisted(self) -> list[Any]:
        listed = listed_servers(self.items)
        return [tool for label, tool in self._mcp_tools().items() if label not in listed]

    def _approved(self) -> list[tuple[Any, Any]]:
        """(request, response) pairs the user approved whose call has not run yet."""
        requests = {i.id: i for i in self.items if getattr(i, "type", None) == "mcp_approval_request"}
        ran = {i.approval_request_id for i in self.items if getattr(i, "type", None) == "mcp_call"}
        return [
            (requests[i.approval_request_id], i)
            for i in self.request.input
            if getattr(i, "type", None) == "mcp_approval_response"
            and i.approve
            and i.approval_request_id in requests
            and i.approval_request_id not in ran
        ]

    async def _before_first_pass(self) -> AsyncGenerator[Delta, None]:
        for tool in self._unlisted():
            yield HostedStart(
                {"type": "mcp_list_tools", "id": new_id("mcpl"), "server_label": tool.server_label, "tools": []}
            )
            try:
                yield HostedEnd({"tools": await self.hosted.list_tools(tool)})
            except HostedFailure as exc:
                yield HostedEnd({"error": exc.message})
        for request, _ in self._approved():
            call = _McpCall(request.server_label, request.name, [request.arguments])
            async for delta in self._mcp_call(call, approval_request_id=request.id):
                yield delta

    # -- server-run calls ---------------------------------------------------------------------
    async def _searches(self, made: list[Any]) -> AsyncGenerator[Delta, None]:
        searches = [i for i in made if i.type == "tool_search_call" and getattr(i, "execution", None) == "server"]
        if not searches:
            return
        deferred = self.request.offered_tools_for(self._context()).deferred
        for call in searches[: self._calls_left]:
            self._calls_left -= 1
            yield ItemDelta(search_output(call.call_id, tool_search.search(call.arguments, deferred)))

    async def _mcp_call(self, call: _McpCall, approval_request_id: str | None = None) -> AsyncGenerator[Delta, None]:
        tool = self._mcp_tools().get(call.server_label)
        arguments = "".join(call.arguments)
        if (
            tool is not None
            and approval_request_id is None
            and needs_approval(self._listed(call), tool.require_approval)
        ):
            yield ItemDelta(
                {
                    "type": "mcp_approval_request",
                    "id": new_id("mcpr"),
                    "server_label": call.server_label,
                    "name": call.name,
                    "arguments": arguments,
                }
            )
            return
        if self._calls_left <= 0:
            return
        self._calls_left -= 1
        item = {
            "type": "mcp_call",
            "id": new_id("mcp"),
            "server_label": call.server_label,
            "name": call.name,
            "arguments": arguments,
            "status": "in_progress",
        }
        if approval_request_id is not None:
            item["approval_request_id"] = approval_request_id
        yield HostedStart(item)
        result = await self._run_mcp(tool, call.name, arguments)
        if result.error is not None:
            yield HostedEnd({"status": "failed", "error": result.error})
        else:
            yield HostedEnd({"status": "completed", "output": result.output or ""})

    def _listed(self, call: _McpCall) -> Any:
        """The listed tool a call names (its annotations decide a ``read_only`` filter)."""
        listing = listed_servers(self._context()).get(call.server_label)
        found = [t for t in (listing.tools if listing is not None else []) if t.name == call.name]
        return found[0] if found else SimpleNamespace(name=call.name, annotations=None)

    async def _served_call(self, call: _McpCall) -> AsyncGenerator[Delta, None]:
        """A web search or code run on the operator's tool server: its item open while it runs;
        its result goes to the model (the item keeps sources / logs only when ``include`` asks)."""
        if self._calls_left <= 0:
            return
        self._calls_left -= 1
        arguments = "".join(call.arguments)
        try:
            parsed = json.loads(arguments or "{}")
        except ValueError:
            parsed = None
        parsed = parsed if isinstance(parsed, dict) else {}
        include = self.request.include
        item_id = new_id("ws" if call.kind == "web_search" else "ci")
        if call.kind == "web_search":
            action, server_arguments = _web_action(call.name, parsed)
            yield HostedStart({"type": "web_search_call", "id": item_id, "action": action, "status": "in_progress"})
            result = await self._run_served(action["type"], server_arguments)
            if action["type"] == "search" and "web_search_call.action.sources" in include and result.output is not None:
                action = {**action, "sources": _sources(result.output)}
            end: dict[str, Any] = {"action": action, "status": "failed" if result.error else "completed"}
        else:
            code = str(parsed.get("code") or "")
            yield HostedStart(
                {
                    "type": "code_interpreter_call",
                    "id": item_id,
                    "code": code,
                    "container_id": "python",
                    "outputs": None,
                    "status": "in_progress",
                }
            )
            result = await self._run_served("code_interpreter", {"code": code})
            end = {"status": "failed" if result.error else "completed"}
            if "code_interpreter_call.outputs" in include:
                end["outputs"] = [{"type": "logs", "logs": result.output or _error_text(result)}]
        text = result.output if result.error is None else f"The call failed: {_error_text(result)}"
        self._results[item_id] = (call.name, arguments, text or "")
        yield HostedEnd(end)

    async def _run_served(self, kind: str, arguments: dict[str, Any]) -> CallResult:
        try:
            return await self.hosted.run_served(kind, arguments)
        except HostedFailure as exc:
            return CallResult(error=call_error(exc))

    async def _run_mcp(self, tool: Any, name: str, arguments: str) -> CallResult:
        if tool is None:
            return CallResult(error=execution_error("No mcp tool with this server label is in the request's tools."))
        try:
            parsed = json.loads(arguments or "{}")
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            return CallResult(error=execution_error(f"The arguments are not a JSON object: {arguments[:200]}"))
        try:
            return await self.hosted.call(tool, name, parsed)
        except HostedFailure as exc:
            return CallResult(error=call_error(exc))


def _web_action(function: str, arguments: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A web search function's call as the ``web_search_call.action`` it is, and what the
    search server's tool is sent."""
    url, pattern = str(arguments.get("url") or ""), str(arguments.get("pattern") or "")
    if function == "open_page":
        return {"type": "open_page", "url": url}, {"url": url}
    if function == "find_in_page":
        return {"type": "find_in_page", "url": url, "pattern": pattern}, {"url": url, "pattern": pattern}
    query = str(arguments.get("query") or "")
    return {"type": "search", "query": query}, {"query": query}


def _error_text(result: CallResult) -> str:
    error = result.error or {}
    if error.get("type") == "mcp_tool_execution_error":
        return " ".join(str(c.get("text", "")) for c in error.get("content") or [] if isinstance(c, dict))
    return str(error.get("message") or "")


def _sources(output: str) -> list[dict[str, str]]:
    """The URLs a search server's answer names (a JSON list of hits with ``url``), as ``sources``."""
    try:
        hits = json.loads(output)
    except ValueError:
        return []
    if not isinstance(hits, list):
        return []
    return [
        {"type": "url", "url": hit["url"]} for hit in hits if isinstance(hit, dict) and isinstance(hit.get("url"), str)
    ]
