"""The server's MCP client: list a remote MCP server's tools and call one, for the response
loop (a request's hosted ``mcp`` tools, the operator's tool servers). docs/tools.md.

Each operation is one connection of its own (connect, handshake, the request, close) with the
official ``mcp`` package, imported only here and only when called. What holds for every one:

- **One deadline** (``list_timeout_s`` / ``call_timeout_s``) over all of it, connection setup
  and handshake included: a server that accepts the connection and never answers fails at the
  deadline, not later.
- **A bound on the bytes read** (``max_bytes``, the wire bytes of every answer of the
  operation together; compressed answers are refused, so the count is what gets decoded): an
  endless body is cut at the bound, never buffered whole.
- **Redirects**: the ``mcp`` package follows one only within the server's origin (same scheme,
  host and port, or http to https on the same host; 307/308, which keep the POST). Our own
  transport below it refuses any request to another host and fails the operation on a
  redirect whose ``Location`` names another host, whoever would follow it.
- **Failures of any kind** (refused, timed out, an HTTP error, a closed connection, an answer
  that is not MCP, too many bytes, a redirect) are one :class:`McpFailure` for a listing and an
  ``error`` in the :class:`CallOutcome` of a call; a transport error on a request that carries
  a message fails the operation at once instead of waiting for the deadline. Messages name the
  server's label, never its headers (the header values are scrubbed from any text a server
  sends back, too); nothing here logs a header.
- **Transport** ``auto``: streamable HTTP first; when its POST is answered with a 4xx that is
  not about the client (not 401, 403, 407, 408 or 429), as an SSE-only server answers a POST
  (405 or 404), the same URL is tried once more over SSE, within the same deadline. Anything
  else (a timeout, a 5xx, garbage) is that server's answer: no second try.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from ..common.errors import invalid_request
from ..common.logs import get_logger
from ..environment import MCP_ALLOWED_URLS, MCP_MAX_BYTES
from ..settings import McpSettings

logger = get_logger(__name__)

Transport = Literal["streamable_http", "sse", "auto"]
T = TypeVar("T")

# 4xx answers to the streamable POST that do not send ``auto`` on to SSE: about the client.
_NOT_A_TRANSPORT_ANSWER = frozenset({401, 403, 407, 408, 429})
_MAX_PAGES = 100  # tools/list pages one listing follows
_MESSAGE_CHARS = 500  # a server's error text is cut to this
# JSON-RPC codes the ``mcp`` package uses for a closed connection and a timeout.
CONNECTION_CLOSED = -32000
REQUEST_TIMEOUT = -32001


@dataclass(frozen=True)
class McpServer:
    """One MCP server as an operation reaches it. ``headers`` go with every HTTP request (and
    nowhere else: not in ``repr``, logs or messages). Build with :meth:`build`."""

    label: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    transport: Transport = "auto"

    @classmethod
    def build(
        cls,
        label: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        authorization: str | None = None,
        transport: Transport = "auto",
    ) -> McpServer:
        """``authorization`` (the tool's OAuth access token) becomes ``Authorization: Bearer
        TOKEN``, replacing any ``Authorization`` among ``headers``."""
        merged = {str(k): str(v) for k, v in (headers or {}).items()}
        if authorization:
            merged = {k: v for k, v in merged.items() if k.lower() != "authorization"}
            token = authorization.strip()
            merged["Authorization"] = token if token.lower().startswith("bearer ") else f"Bearer {token}"
        return cls(label, url, merged, transport)


@dataclass(frozen=True)
class ListedTool:
    """One tool of a listing, as an ``mcp_list_tools`` item's ``tools`` entry carries it
    (openai's ``McpListToolsTool``); ``annotations`` are the MCP tool annotations as the server
    sent them (``readOnlyHint``, ...)."""

    name: str
    input_schema: dict[str, Any]
    description: str | None = None
    annotations: dict[str, Any] | None = None

    def item(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "input_schema": self.input_schema,
            "annotations": self.annotations,
        }

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> ListedTool:
        """Back from a stored ``mcp_list_tools`` item's entry (a later turn lists no more)."""
        annotations = item.get("annotations")
        return cls(
            name=str(item["name"]),
            input_schema=dict(item.get("input_schema") or {"type": "object", "properties": {}}),
            description=item.get("description"),
            annotations=dict(annotations) if isinstance(annotations, Mapping) else None,
        )

    @property
    def read_only(self) -> bool:
        """The server's ``readOnlyHint`` (absent: not read-only, as MCP defines it)."""
        return bool((self.annotations or {}).get("readOnlyHint", False))


@dataclass(frozen=True)
class CallOutcome:
    """What an ``mcp_call`` item carries: ``output`` (the result's content as text) or ``error``,
    an object of openai's ``McpToolCallError`` union: ``{"type": "mcp_tool_execution_error",
    "content": [...]}`` (the tool answered ``isError``), ``{"type": "mcp_protocol_error",
    "code", "message"}`` (a JSON-RPC error; a timeout is ``-32001``, a connection that failed or
    closed ``-32000``) or ``{"type": "http_error", "code", "message"}`` (an HTTP error status)."""

    output: str | None = None
    error: dict[str, Any] | None = None

    @property
    def error_text(self) -> str | None:
        """The error as one line of text, for the model and logs."""
        if self.error is None:
            return None
        if self.error["type"] == "mcp_tool_execution_error":
            return flatten(self.error["content"])
        return str(self.error["message"])


class McpFailure(Exception):
    """An operation on an MCP server failed; ``message`` is safe to show the client (it names
    the server's label, never its headers). ``error``: the same as an ``mcp_call`` error
    object (see :class:`CallOutcome`)."""

    def __init__(self, server_label: str, message: str, error: dict[str, Any]) -> None:
        super().__init__(message)
        self.server_label = server_label
        self.message = message
        self.error = error


# --- the allow-list ---------------------------------------------------------------------


def check_server_url(url: str, settings: McpSettings, param: str = "tools") -> None:
    """A request's ``server_url`` passes, or a 400 naming the setting: per-request URLs are off
    unless ``VLLM_RESPONSES_MCP_ALLOWED_URLS`` allows them. An entry with a scheme is a URL
    prefix: same scheme, host and port, and the path starts with the entry's path at a ``/``
    (``https://a.example/mcp`` allows ``/mcp`` and ``/mcp/x``, not ``/mcpx``). An entry without
    one is a host: that host exactly (no subdomains), over http or https, on any port; write
    ``host:port`` for one port. The operator's tool servers' URLs are always allowed."""
    try:
        parts = urlsplit(url)
        port = _port(parts.scheme, parts.port)
    except ValueError:
        raise invalid_request(f"The MCP server_url {url!r} is not a valid URL.", param) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise invalid_request("The MCP server_url must be an http:// or https:// URL with a host.", param)
    if parts.username is not None or parts.password is not None:
        raise invalid_request(
            "The MCP server_url must not carry credentials; send them in `headers` or `authorization`.", param
        )
    if url in dict(settings.tool_servers).values():
        return
    host = parts.hostname.lower().rstrip(".")
    for entry in settings.allowed_urls:
        if _allows(entry, parts.scheme, host, port, parts.path or "/"):
            return
    why = (
        "this server allows no per-request MCP server URLs"
        if not settings.allowed_urls
        else f"{host} is not among the MCP servers this server allows"
    )
    raise invalid_request(
        f"The MCP server_url is not allowed: {why} (the operator's setting {MCP_ALLOWED_URLS}).", param
    )


def _port(scheme: str, port: int | None) -> int | None:
    return port if port is not None else {"http": 80, "https": 443}.get(scheme)


def _allows(entry: str, scheme: str, host: str, port: int | None, path: str) -> bool:
    if "://" not in entry:
        want = urlsplit("//" + entry)
        return want.hostname == host and (want.port is None or want.port == port)
    want = urlsplit(entry)
    if want.scheme != scheme or (want.hostname or "").lower().rstrip(".") != host:
        return False
    if _port(want.scheme, want.port) != port:
        return False
    prefix = want.path or "/"
    return path == prefix or path.startswith(prefix if prefix.endswith("/") else prefix + "/")


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def header_problem(headers: Mapping[str, Any]) -> str | None:
    """Why these headers cannot be sent (a name that is not an HTTP token, a value that is not
    a string or holds a control character), naming the header but never its value; ``None``
    when they can."""
    for name, value in headers.items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            return f"the header name {str(name)[:64]!r} is not a valid HTTP header name"
        if not isinstance(value, str) or _BAD_VALUE.search(value):
            return f"the value of the header {name!r} is not a valid HTTP header value"
    return None


def check_headers(headers: Mapping[str, Any], param: str = "tools") -> None:
    """A request's MCP ``headers`` (and ``authorization``, as its header) can be sent, or a 400
    that names the header, never its value."""
    problem = header_problem(headers)
    if problem is not None:
        raise invalid_request(f"The MCP tool's headers cannot be sent: {problem}.", param)


def vllm_tool_server_urls(arg: str) -> list[str]:
    """vLLM's ``--tool-server host:port,host:port`` as the URLs upstream connects to (SSE at
    ``/sse``). Upstream's ``demo`` (its built-in browser and python tools) is not an MCP server
    and is refused (ValueError)."""
    urls = []
    for address in (a.strip() for a in arg.split(",")):
        if not address:
            continue
        if address == "demo":
            raise ValueError("--tool-server demo (vLLM's built-in tools) is not served; give MCP servers by host:port")
        urls.append(f"http://{address}/sse")
    return urls


def operator_server(label: str, settings: McpSettings) -> McpServer | None:
    """The operator's tool server of that label (``VLLM_RESPONSES_TOOL_SERVERS``), if any."""
    url = dict(settings.tool_servers).get(label)
    return None if url is None else McpServer.build(label, url)


# --- which tools, and which need approval ----------------------------------------------


# --- the operations ---------------------------------------------------------------------


@dataclass(frozen=True)
class Listing:
    """A server's tools with what it says of itself: ``name`` (its ``serverInfo`` name, which
    upstream vLLM's ``--tool-server`` uses as the server's label: ``browser``, ``python``) and
    ``instructions``; either may be absent."""

    tools: list[ListedTool]
    name: str | None = None
    instructions: str | None = None


async def describe(server: McpServer, limits: McpSettings) -> Listing:
    """Every tool the server lists (all pages) and its name, or :class:`McpFailure`."""

    async def op(client: Any) -> Listing:
        tools: list[ListedTool] = []
        cursor = None
        for _ in range(_MAX_PAGES):
            page = await client.list_tools(cursor=cursor)
            tools.extend(_listed(tool) for tool in page.tools)
            cursor = page.next_cursor
            if not cursor:
                break
        info = client.server_info
        return Listing(tools, getattr(info, "name", None), client.instructions)

    return await _operate(server, limits, limits.list_timeout_s, "Error retrieving tool list from", op)


async def list_tools(server: McpServer, limits: McpSettings) -> list[ListedTool]:
    """Every tool the server lists (all pages), or :class:`McpFailure`."""
    return (await describe(server, limits)).tools


async def call_tool(server: McpServer, name: str, arguments: dict[str, Any], limits: McpSettings) -> CallOutcome:
    """Runs the tool; never raises for the server's sake: a failure is the outcome's ``error``."""

    async def op(client: Any) -> CallOutcome:
        # The package lists the tools after a call it has not seen listed, to check structured
        # output against the tool's output schema: we pass on the content, so a call is one
        # ``tools/call`` (a server counting listings sees only ours).
        schemas = getattr(client.session, "_tool_output_schemas", None)
        if isinstance(schemas, dict):
            schemas.setdefault(name, None)
        result = await client.call_tool(name, arguments)
        content = [block.model_dump(by_alias=True, mode="json", exclude_none=True) for block in result.content]
        if result.is_error:
            return CallOutcome(error={"type": "mcp_tool_execution_error", "content": _scrub_json(content, server)})
        if not content and result.structured_content is not None:
            return CallOutcome(output=json.dumps(result.structured_content, ensure_ascii=False))
        return CallOutcome(output=flatten(content))

    try:
        return await _operate(server, limits, limits.call_timeout_s, f"Error calling tool '{name}' on", op)
    except McpFailure as failure:
        return CallOutcome(error=failure.error)


def flatten(content: list[dict[str, Any]]) -> str:
    """MCP content blocks as one text: text blocks as they are, an embedded text resource as
    its text, anything else described (``[image: image/png]``), joined by newlines."""
    parts = []
    for block in content:
        kind = block.get("type")
        if kind == "text":
            parts.append(str(block.get("text", "")))
        elif kind == "resource":
            resource = block.get("resource") or {}
            if "text" in resource:
                parts.append(str(resource["text"]))
            else:
                parts.append(f"[resource: {resource.get('uri', '')} ({resource.get('mimeType', 'binary')})]")
        elif kind == "resource_link":
            parts.append(f"[resource link: {block.get('name', '')} {block.get('uri', '')}]")
        elif kind in ("image", "audio"):
            parts.append(f"[{kind}: {block.get('mimeType', 'unknown type')}]")
        else:
            parts.append(f"[{kind} content]")
    return "\n".join(parts)


def _listed(tool: Any) -> ListedTool:
    annotations = None
    if tool.annotations is not None:
        annotations = tool.annotations.model_dump(by_alias=True, mode="json", exclude_none=True)
    return ListedTool(
        name=tool.name,
        input_schema=dict(tool.input_schema or {"type": "object", "properties": {}}),
        description=tool.description,
        annotations=annotations or None,
    )


# --- one operation: deadline, guard, transport ------------------------------------------


class _Guard:
    """One operation's watch over its HTTP traffic: bytes read, the host it may talk to, the
    statuses it saw; :meth:`fail` ends the operation at once (cancels its scope)."""

    def __init__(self, server: McpServer, max_bytes: int) -> None:
        self.host = ""  # set by _operate, as httpx2 writes it
        self.max_bytes = max_bytes
        self.read = 0
        self.reason: str | None = None
        self.error: dict[str, Any] | None = None
        self.scope: Any = None
        self.done = False
        self.transport: str = "streamable_http"
        self.status: int | None = None  # the first error status (>= 400) of this attempt
        self.redirected = False

    def fail(self, reason: str, error: dict[str, Any] | None = None) -> None:
        if self.reason is None and not self.done:
            self.reason = reason
            self.error = error
            if self.scope is not None:
                self.scope.cancel()

    def essential(self, method: str) -> bool:
        """A request whose failure leaves an MCP message unanswered (the streamable transport's
        GET stream is optional and reconnects; its closing DELETE is a courtesy)."""
        return method == "POST" or (method == "GET" and self.transport == "sse")


class _Tripped(Exception):
    """Raised into the HTTP stack when the guard has failed the operation."""


@functools.cache
def _guarded_transport_class() -> type:
    import httpx2

    class Counted(httpx2.AsyncByteStream):
        def __init__(self, inner: Any, guard: _Guard, essential: bool) -> None:
            self.inner, self.guard, self.essential = inner, guard, essential

        async def __aiter__(self) -> Any:
            try:
                async for chunk in self.inner:
                    self.guard.read += len(chunk)
                    if self.guard.read > self.guard.max_bytes:
                        self.guard.fail(
                            f"its answer is larger than {self.guard.max_bytes} bytes ({MCP_MAX_BYTES})",
                            {"type": "mcp_protocol_error", "code": CONNECTION_CLOSED},
                        )
                        raise _Tripped()
                    yield chunk
            except httpx2.TransportError:
                if self.essential:
                    self.guard.fail("the connection closed before the answer was complete")
                raise

        async def aclose(self) -> None:
            await self.inner.aclose()

    class Guarded(httpx2.AsyncBaseTransport):
        def __init__(self, guard: _Guard) -> None:
            self.guard = guard
            self.inner = httpx2.AsyncHTTPTransport(trust_env=False)

        async def handle_async_request(self, request: Any) -> Any:
            guard = self.guard
            essential = guard.essential(request.method)
            if (request.url.host or "").lower().rstrip(".") != guard.host:
                guard.fail("a request to another host was refused (redirects to other hosts are not followed)")
                raise _Tripped()
            try:
                response = await self.inner.handle_async_request(request)
            except httpx2.TimeoutException:
                raise
            except httpx2.TransportError as exc:
                if essential:
                    guard.fail(_connect_reason(exc))
                raise
            if 300 <= response.status_code < 400:
                guard.redirected = True
                location = response.headers.get("location")
                try:
                    target = request.url.join(location).host if location else None
                except httpx2.InvalidURL:
                    target = ""
                if target is not None and target.lower().rstrip(".") != guard.host:
                    await response.aclose()
                    guard.fail("the server redirected to another host, which is not followed")
                    raise _Tripped()
            elif response.status_code >= 400 and essential and guard.status is None:
                guard.status = response.status_code
            encoding = response.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                await response.aclose()
                guard.fail(f"it answered with a compressed body ({encoding}), which is not accepted")
                raise _Tripped()
            response.stream = Counted(response.stream, guard, essential)
            return response

        async def aclose(self) -> None:
            await self.inner.aclose()

    return Guarded


def _connect_reason(exc: BaseException) -> str:
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 8:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    if any(isinstance(e, ConnectionRefusedError) or "refused" in str(e).lower() for e in chain):
        return "could not connect (connection refused)"
    if "ConnectError" in type(exc).__name__:
        return "could not connect"
    return "the connection failed or closed before the answer was complete"


# Set while an operation runs (tasks it starts inherit it): see :func:`_demote_package_logs`.
_IN_OPERATION: ContextVar[bool] = ContextVar("mcp_operation", default=False)


class _Demote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _IN_OPERATION.get() and record.levelno > logging.DEBUG:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


@functools.cache
def _demote_package_logs() -> None:
    """The ``mcp`` and ``httpx2`` packages log what fails inside them (tracebacks at ERROR,
    several per failure, through Python's last-resort handler to stderr: their loggers are not
    vLLM's): during our operations their records go down to DEBUG, and our one warning per
    failure says what happened. Called once the packages are imported (their loggers exist)."""
    demote = _Demote()
    for name in list(logging.root.manager.loggerDict):
        if name.split(".")[0] in ("mcp", "httpx2", "httpcore2"):
            logging.getLogger(name).addFilter(demote)


async def _operate(
    server: McpServer, limits: McpSettings, timeout: float, what: str, op: Callable[[Any], Awaitable[T]]
) -> T:
    """``op(client)`` on a connected ``mcp`` client within ``timeout`` s in all, else
    :class:`McpFailure` (see the module's docstring)."""
    import anyio
    import httpx2

    closed = {"type": "mcp_protocol_error", "code": CONNECTION_CLOSED}
    problem = header_problem(server.headers)
    if problem is not None:
        raise _failure(server, what, problem, closed)
    guard = _Guard(server, limits.max_bytes)
    try:
        url = httpx2.URL(server.url)
        guard.host = url.host.lower().rstrip(".")  # as httpx2 writes it (IDNA), to compare with its requests
        valid = url.scheme in ("http", "https") and bool(guard.host)
    except (httpx2.InvalidURL, ValueError):
        valid = False
    if not valid:
        raise _failure(server, what, "its URL is not an http:// or https:// URL with a host", closed)
    transports = ["streamable_http", "sse"] if server.transport == "auto" else [server.transport]
    failure: BaseException | None = None
    box: list[T] = []
    token = _IN_OPERATION.set(True)
    try:
        with anyio.move_on_after(timeout) as scope:
            guard.scope = scope
            for transport in transports:
                guard.transport, guard.status, guard.redirected = transport, None, False
                try:
                    await _attempt(server, transport, guard, timeout, op, box)
                except Exception as exc:  # noqa: BLE001 - every failure becomes McpFailure below
                    failure = exc
                if box or guard.reason is not None:
                    break
                status = guard.status
                if transport != "streamable_http" or status is None or status >= 500:
                    break
                if status in _NOT_A_TRANSPORT_ANSWER:
                    break
    finally:
        _IN_OPERATION.reset(token)
    if box:
        return box[0]
    reason, error = _classify(guard, failure, scope.cancelled_caught, timeout)
    raise _failure(server, what, reason, error)


def _failure(server: McpServer, what: str, reason: str, error: dict[str, Any]) -> McpFailure:
    """The failure, its message (scrubbed of header values) logged once."""
    message = f"{what} MCP server '{server.label}': {_scrub(reason, server)}"
    logger.warning("%s", message)
    return McpFailure(server.label, message, {**error, "message": message})


async def _attempt(
    server: McpServer, transport: str, guard: _Guard, deadline_s: float, op: Callable[[Any], Awaitable[T]], box: list[T]
) -> None:
    """One try over one transport; the result, if any, into ``box`` (a failure while closing
    the connection afterwards does not lose it)."""
    import httpx2
    from mcp import Client
    from mcp.client.sse import sse_client
    from mcp.client.streamable_http import streamable_http_client
    from mcp_types import Implementation

    from .. import __version__

    _demote_package_logs()

    headers = {**server.headers, "Accept-Encoding": "identity"}

    def http_client(headers: dict[str, str] | None = None, timeout: Any = None, auth: Any = None) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(
            headers=headers,
            timeout=httpx2.Timeout(deadline_s),
            transport=_guarded_transport_class()(guard),
            follow_redirects=False,
            trust_env=False,
        )

    info = Implementation(name="vllm-responses", version=__version__)
    if transport == "sse":
        connection = sse_client(
            server.url,
            headers=headers,
            timeout=deadline_s,
            sse_read_timeout=deadline_s,
            httpx_client_factory=http_client,
        )
        async with Client(connection, cache=None, read_timeout_seconds=deadline_s, client_info=info) as client:
            box.append(await op(client))
            guard.done = True
        return
    async with http_client(headers) as http:
        connection = streamable_http_client(server.url, http_client=http)
        async with Client(connection, cache=None, read_timeout_seconds=deadline_s, client_info=info) as client:
            box.append(await op(client))
            guard.done = True


def _classify(
    guard: _Guard, failure: BaseException | None, timed_out: bool, timeout: float
) -> tuple[str, dict[str, Any]]:
    """The reason (for the message) and the error object (without its message) of a failure."""
    if guard.reason is not None:
        return guard.reason, guard.error or {"type": "mcp_protocol_error", "code": CONNECTION_CLOSED}
    if guard.status is not None:
        return f"it answered HTTP {guard.status}", {"type": "http_error", "code": guard.status}
    if guard.redirected:
        return (
            "it answered with a redirect that is not followed (only redirects within the server's origin are)",
            {"type": "mcp_protocol_error", "code": CONNECTION_CLOSED},
        )
    leaf = _leaf(failure)
    if timed_out or (leaf is not None and "Timeout" in type(leaf).__name__):
        return f"no answer within {timeout:g} s", {"type": "mcp_protocol_error", "code": REQUEST_TIMEOUT}
    code = getattr(getattr(leaf, "error", None), "code", None)
    if isinstance(code, int):  # an MCPError: the server's JSON-RPC error, or the package's own
        text = str(getattr(leaf, "message", "") or "error")[:_MESSAGE_CHARS]
        return f"{text} (code {code})", {"type": "mcp_protocol_error", "code": code}
    if leaf is not None and type(leaf).__name__ in ("ValidationError", "SSEError", "JSONDecodeError"):
        return "its answer is not MCP", {"type": "mcp_protocol_error", "code": CONNECTION_CLOSED}
    name = type(leaf).__name__ if leaf is not None else "unknown error"
    return f"the operation failed ({name})", {"type": "mcp_protocol_error", "code": CONNECTION_CLOSED}


def _leaf(exc: BaseException | None) -> BaseException | None:
    """The first exception of a (nested) exception group that is not a cancellation."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _leaf(inner)
            if found is not None:
                return found
        return None
    return exc


def _scrub(text: str, server: McpServer) -> str:
    """``text`` with the server's header values (and a bearer token's bare token) masked."""
    for value in server.headers.values():
        for secret in (value, value.removeprefix("Bearer ").strip()):
            if len(secret) >= 4:
                text = text.replace(secret, "***")
    return text


def _scrub_json(value: Any, server: McpServer) -> Any:
    if isinstance(value, str):
        return _scrub(value, server)
    if isinstance(value, list):
        return [_scrub_json(v, server) for v in value]
    if isinstance(value, dict):
        return {k: _scrub_json(v, server) for k, v in value.items()}
    return value
