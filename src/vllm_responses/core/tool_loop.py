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
        tool.type == "mcp" or (tool.type == "tool_search" and getattr(tool, "execution", None) != "client")
        for tool in request.tools
    ) or any(getattr(item, "type", None) == "mcp_approval_response" for item in request.input)


def _server_search(delta: ToolCallDelta) -> bool:
    return delta.builtin == "tool_search" and (delta.builtin_options or {}).get("execution") == "server"


@dataclass
class _McpCall:
    server_label: str
    name: str
    arguments: list[str] = field(default_factory=list)


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
                        if delta.name is not None and delta.builtin == "mcp":
                            label = (delta.builtin_options or {}).get("server_label") or ""
                            mcp[delta.index] = _McpCall(label, delta.name, [delta.arguments])
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
                async for delta in self._mcp_call(call):
                    waiting = waiting or isinstance(delta, ItemDelta)
                    ran += isinstance(delta, HostedEnd)
                    yield delta
            client_calls = any(item.type in CALL_TYPES and item.type != "tool_search_call" for item in made)
            if client_calls or waiting or not ran:
                yield Finish("stop", usage)
                return
            passes += 1
            first_item = len(self.output())
            inner = await self._next_pass(response_id, passes)

    # -- one pass and the next ------------------------------------------------------------------
    async def _next_pass(self, response_id: str, passes: int) -> Any:
        context = self.window(self.items + self._as_input(self.output()))
        prepared = await self.engine.prepare(self.request, context)
        return self.engine.generate(prepared, f"{response_id}-{passes}" if passes else response_id)

    def _context(self) -> list[Any]:
        return self.items + self._as_input(self.output())

    @staticmethod
    def _as_input(output: list[Any]) -> list[Any]:
        """The response's output items as the input items the next pass renders."""
        return to_model_input([sealed_free(dump_json_dict(item)) for item in output], "output")

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
