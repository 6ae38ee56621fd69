"""The tools the server runs for a response: MCP servers, the request's own (``server_url``) or
the operator's (by ``server_label``).

:class:`HostedTools` is what the response loop (:mod:`.tool_loop`) needs of them; the real one
speaks MCP (:mod:`.mcp_client`), unit tests give a scripted one. Whether a call waits for the
user's approval is decided here too (:func:`needs_approval`), as OpenAI decides it.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from ..common.errors import invalid_request
from ..environment import TOOL_SERVERS
from ..request.protocol import ResponsesRequest
from ..settings import McpSettings
from . import mcp_client
from .mcp_client import (
    McpFailure,
    McpServer,
    check_headers,
    check_server_url,
    operator_server,
)


class HostedFailure(Exception):
    """A server-run tool could not be reached or answered nonsense: the item fails, the response goes on."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class CallResult:
    """What an MCP call gives back: its ``output`` text, or the ``error`` of the ``mcp_call`` item
    (openai's ``McpToolCallError`` JSON)."""

    output: str | None = None
    error: dict[str, Any] | None = None


class HostedTools(ABC):
    """The server-run tools a response may use.

    Contract: :meth:`check` raises an OpenAI-style 400 for a tool the server will not run for this
    request (before anything is stored or streamed); :meth:`list_tools` and :meth:`call` never
    hang past their own deadlines and raise only :class:`HostedFailure` (a call's own failure is
    a :class:`CallResult` with an ``error``); cancelling them (the client left, a cancel) stops
    the work.
    """

    @abstractmethod
    def check(self, request: ResponsesRequest) -> None:
        """Refuse the request's ``mcp`` tools this server will not reach."""

    @abstractmethod
    async def list_tools(self, tool: Any) -> list[dict[str, Any]]:
        """The tools of an ``mcp`` tool's server, as ``mcp_list_tools.tools`` entries
        (``name``, ``description``, ``input_schema``, ``annotations``)."""

    @abstractmethod
    async def call(self, tool: Any, name: str, arguments: dict[str, Any]) -> CallResult:
        """Run ``name`` on an ``mcp`` tool's server."""

    async def run_served(self, kind: str, arguments: dict[str, Any]) -> CallResult:
        """Run a hosted tool's action through the operator's tool server for it (:data:`SERVED_BY`:
        ``search``, ``open_page``, ``find_in_page`` on the ``browser`` server; ``code_interpreter``
        on the ``python`` server's ``python``)."""
        raise HostedFailure(f"No tool server runs {kind} here.")


class NoHostedTools(HostedTools):
    """No MCP server is reachable (none registered, per-request URLs not allowed)."""

    def __init__(self, setting: str = "VLLM_RESPONSES_MCP_ALLOWED_URLS") -> None:
        self.setting = setting

    def check(self, request: ResponsesRequest) -> None:
        for i, tool in enumerate(request.tools):
            if tool.type == "mcp":
                raise invalid_request(
                    f"Invalid 'tools[{i}]': this server reaches no MCP servers: its operator registers none and "
                    f"allows no 'server_url' ({self.setting}).",
                    param=f"tools[{i}].server_url",
                    code="unsupported_value",
                )

    async def list_tools(self, tool: Any) -> list[dict[str, Any]]:
        raise HostedFailure("No MCP server is reachable from this server.")

    async def call(self, tool: Any, name: str, arguments: dict[str, Any]) -> CallResult:
        raise HostedFailure("No MCP server is reachable from this server.")


class McpHostedTools(HostedTools):
    """MCP servers over the network (:mod:`.mcp_client`): a request's own ``server_url`` where
    ``VLLM_RESPONSES_MCP_ALLOWED_URLS`` allows it, else the operator's server of the tool's label."""

    def __init__(self, settings: McpSettings, known_tools: dict[str, set[str]] | None = None) -> None:
        self.settings = settings
        self.known_tools = known_tools or {}  # the tool names of servers listed at start-up, by label

    def server(self, tool: Any) -> McpServer | None:
        if tool.server_url:
            return McpServer.build(tool.server_label, tool.server_url, tool.headers, tool.authorization)
        found = operator_server(tool.server_label, self.settings)
        if found is None:
            return None
        return McpServer.build(found.label, found.url, tool.headers, tool.authorization, found.transport)

    def check(self, request: ResponsesRequest) -> None:
        for i, tool in enumerate(request.tools):
            if tool.type != "mcp":
                continue
            if tool.server_url:
                check_server_url(tool.server_url, self.settings, param=f"tools[{i}].server_url")
            elif operator_server(tool.server_label, self.settings) is None:
                raise invalid_request(
                    f"Invalid 'tools[{i}]': an mcp tool needs a 'server_url', or the label of an MCP server this "
                    f"server's operator registered ({TOOL_SERVERS}); '{tool.server_label[:64]}' is neither.",
                    param=f"tools[{i}].server_url",
                    code="missing_required_parameter",
                )
            check_headers(
                {**(tool.headers or {}), **({"Authorization": tool.authorization} if tool.authorization else {})},
                param=f"tools[{i}].headers",
            )

    async def list_tools(self, tool: Any) -> list[dict[str, Any]]:
        server = self.server(tool)
        if server is None:
            raise HostedFailure(f"No MCP server is labelled '{tool.server_label}'.")
        try:
            return [listed.item() for listed in await mcp_client.list_tools(server, self.settings)]
        except McpFailure as exc:
            raise HostedFailure(exc.message) from None

    async def call(self, tool: Any, name: str, arguments: dict[str, Any]) -> CallResult:
        server = self.server(tool)
        if server is None:
            raise HostedFailure(f"No MCP server is labelled '{tool.server_label}'.")
        outcome = await mcp_client.call_tool(server, name, arguments, self.settings)
        return CallResult(outcome.output, outcome.error)

    def served(self) -> set[str]:
        """The hosted tools the operator's servers run: a server labelled ``browser`` (upstream
        vLLM's name for its search server) searches the web, one labelled ``python`` runs code."""
        labels = dict(self.settings.tool_servers)
        return {kind for kind, label in (("web_search", "browser"), ("code_interpreter", "python")) if label in labels}

    async def run_served(self, kind: str, arguments: dict[str, Any]) -> CallResult:
        label, names = SERVED_BY[kind]
        known = self.known_tools.get(label, set())
        tool_name = next((name for name in names if name in known), names[0])
        server = operator_server(label, self.settings)
        if server is None:
            raise HostedFailure(f"No tool server runs {kind} here.")
        outcome = await mcp_client.call_tool(server, tool_name, arguments, self.settings)
        return CallResult(outcome.output, outcome.error)


# The operator's tool server (its label) and the tool that runs each served action (the first of
# the names its listing at start-up holds, else the first): web search's ``search``,
# ``open_page`` and ``find_in_page``, and ``code_interpreter``.
SERVED_BY: dict[str, tuple[str, tuple[str, ...]]] = {
    "search": ("browser", ("search",)),
    "open_page": ("browser", ("open_page", "open")),  # upstream's gpt-oss browser server names it open
    "find_in_page": ("browser", ("find", "find_in_page")),
    "code_interpreter": ("python", ("python",)),
}


def call_error(failure: HostedFailure) -> dict[str, Any]:
    """The ``mcp_call.error`` of a call that never got an answer."""
    return {"type": "mcp_protocol_error", "code": -32603, "message": failure.message}


def execution_error(text: str) -> dict[str, Any]:
    """The ``mcp_call.error`` of a call the tool itself failed (an MCP result with ``isError``)."""
    return {"type": "mcp_tool_execution_error", "content": [{"type": "text", "text": text}]}
