"""Model → server-run tool → model, inside one response.

When a model pass ends with calls of tools the server runs itself (today a ``tool_search``
whose ``execution`` is ``server``, :mod:`.tool_search`; the hosted tools of issue 23 join
here), the server runs them, their output items join the response, and the model goes on in
the same response from everything so far, with what those tools loaded offered. One stream of
events, sequence numbers and output indexes running on; usage adds up every pass.

The response ends when a pass ends without such calls, when it also called tools the client
runs (the client must act, so it ends there, the server-run outputs already in it), when a
pass is cut short (``length``), or after :data:`MAX_SERVER_CALLS` server-run calls (or the
request's ``max_tool_calls``, when lower): further passes would only loop.
"""

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

from ..engine.base import Engine
from ..events.builtin_calls import search_output
from ..events.deltas import (
    Delta,
    Finish,
    ItemDelta,
    PassEnd,
    Started,
    ToolCallDelta,
    Usage,
)
from ..events.response import dump_json_dict
from ..request.chat import CALL_TYPES
from ..request.items import sealed_free, to_model_input
from ..request.protocol import ResponsesRequest
from . import tool_search
from .compaction import Direct, Plan, added

# The most server-run tool calls one response makes.
MAX_SERVER_CALLS = 16


def runs_server_tools(request: ResponsesRequest) -> bool:
    """Whether the request offers a tool the server runs (else no loop is needed)."""
    return any(tool.type == "tool_search" and getattr(tool, "execution", None) != "client" for tool in request.tools)


def _server_run(delta: ToolCallDelta) -> bool:
    return delta.builtin == "tool_search" and (delta.builtin_options or {}).get("execution") == "server"


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

    @property
    def sampling(self) -> Any:
        return self.first.sampling

    async def deltas(self, response_id: str) -> AsyncGenerator[Started | Delta | Finish, None]:
        usage, calls_left = Usage(), min(MAX_SERVER_CALLS, self.request.get("max_tool_calls") or MAX_SERVER_CALLS)
        inner, passes, first_item = self.first.deltas(response_id), 0, 0
        while True:
            finish, server_calls = None, False
            try:
                async for delta in inner:
                    if isinstance(delta, Finish):
                        finish = delta
                        break
                    if isinstance(delta, Started) and passes:
                        continue
                    if isinstance(delta, ToolCallDelta) and delta.name is not None and _server_run(delta):
                        server_calls = True
                    yield delta
            finally:
                await inner.aclose()
            if finish is None:  # the engine broke its contract; the run ends the response failed
                return
            usage = added(usage, finish.usage)
            if finish.reason != "stop" or not server_calls or calls_left <= 0:
                yield Finish(finish.reason, usage)
                return
            yield PassEnd()  # the pass's last item closes: its calls are whole in the output
            output = self.output()
            made = output[first_item:]
            searches = [
                item
                for item in made
                if item.type == "tool_search_call" and getattr(item, "execution", None) == "server"
            ]
            searches = searches[:calls_left]
            calls_left -= len(searches)
            deferred = self.request.offered_tools_for(self.items + self._as_input(output)).deferred
            for call in searches:
                yield ItemDelta(search_output(call.call_id, tool_search.search(call.arguments, deferred)))
            client_calls = any(item.type in CALL_TYPES and item.type != "tool_search_call" for item in made)
            if client_calls or not searches:
                yield Finish("stop", usage)
                return
            output = self.output()
            first_item, passes = len(output), passes + 1
            context = self.window(self.items + self._as_input(output))
            prepared = await self.engine.prepare(self.request, context)
            inner = self.engine.generate(prepared, f"{response_id}-{passes}")

    @staticmethod
    def _as_input(output: list[Any]) -> list[Any]:
        """The response's output items as the input items the next pass renders."""
        return to_model_input([sealed_free(dump_json_dict(item)) for item in output], "output")
