"""Real MCP servers for tests, each a process of its own on loopback, written with the ``mcp``
package (``MCPServer``), over streamable HTTP or SSE (chosen per start); and misbehaving plain
HTTP servers for the failure paths.

    with McpServerProcess("tools", "streamable_http") as server:   # listening, its port known
        server.url                                                 # http://127.0.0.1:PORT/mcp

Kinds: ``tools`` (add, echo, slow, fail, big, whoami, list_count), ``search`` (search,
open_page, find over :data:`CORPUS`; it calls itself ``browser``, as upstream vLLM's
``--tool-server`` expects of a search server), ``python`` (runs code in a subprocess with a
time limit), and the misbehaving ``hang`` (accepts, never answers), ``trickle`` (starts an
answer and sends a few bytes every 0.2 s for ever), ``garbage`` (answers HTTP that is not
MCP), ``close`` (closes the connection mid-answer), ``endless`` (an answer that never ends:
JSON whitespace to a POST, SSE comments to a GET), ``redirect`` (redirects every request to
``localhost`` on the port in its argument: another host by name, the same server by address),
``status`` (answers every request with the HTTP status in its argument, logging the methods).

The child binds port 0 itself and prints the port once it listens: the parent waits for that
line with a deadline (a real signal, no port race, no fixed sleep). The child ends when its
stdin (held by the parent) closes, so a test run that dies leaves no server behind.
"""

import json
import os
import re
import select
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, Self

KINDS = ("tools", "search", "python", "hang", "trickle", "garbage", "close", "endless", "redirect", "status")
# ``streamable_http_json``: streamable HTTP answering with JSON bodies instead of SSE streams.
TRANSPORTS = ("streamable_http", "streamable_http_json", "sse")
PATHS = {"streamable_http": "/mcp", "streamable_http_json": "/mcp", "sse": "/sse"}

# The search server's corpus: no internet here.
CORPUS: list[dict[str, str]] = [
    {
        "url": "https://docs.example.org/vllm/paged-attention",
        "title": "PagedAttention",
        "text": "PagedAttention stores the KV cache in fixed-size blocks, like virtual memory pages.\n"
        "Blocks are allocated on demand, so memory waste stays under four percent.\n"
        "vLLM introduced PagedAttention in 2023.",
    },
    {
        "url": "https://docs.example.org/mcp/overview",
        "title": "Model Context Protocol overview",
        "text": "The Model Context Protocol (MCP) connects models to tools and data.\n"
        "Servers offer tools; clients list them and call them over streamable HTTP or SSE.",
    },
    {
        "url": "https://docs.example.org/responses/api",
        "title": "The Responses API",
        "text": "The Responses API creates model responses with tools, state and streaming events.\n"
        "A response holds output items such as messages, reasoning and tool calls.",
    },
    {
        "url": "https://weather.example.org/paris",
        "title": "Weather in Paris",
        "text": "Paris weather today: sunny, 21 degrees Celsius, light wind from the west.\n"
        "Tomorrow: clouds and 18 degrees.",
    },
    {
        "url": "https://recipes.example.org/pancakes",
        "title": "Pancakes",
        "text": "Mix 200 g flour, 2 eggs and 300 ml milk; rest the batter 30 minutes.\n"
        "Fry in a hot buttered pan until golden on both sides.",
    },
    {
        "url": "https://history.example.org/eiffel-tower",
        "title": "The Eiffel Tower",
        "text": "The Eiffel Tower in Paris was completed in 1889 for the World's Fair.\n"
        "It is 330 metres tall and was the tallest structure in the world until 1930.",
    },
]

PYTHON_TIME_LIMIT_S = 10.0


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def search_corpus(query: str, top: int = 3) -> list[dict[str, str]]:
    """Documents sharing words with ``query``, most shared first (title words count twice), ties
    in corpus order; each with its first line as the snippet."""
    want = _words(query)
    scored = []
    for i, doc in enumerate(CORPUS):
        score = len(want & _words(doc["text"])) + 2 * len(want & _words(doc["title"]))
        if score:
            scored.append((-score, i, doc))
    scored.sort(key=lambda s: (s[0], s[1]))
    return [{"title": d["title"], "url": d["url"], "snippet": d["text"].splitlines()[0]} for _, _, d in scored[:top]]


def _tools_server() -> Any:
    import anyio
    from mcp.server.mcpserver import Context, MCPServer

    class Counting(MCPServer):
        """Counts ``tools/list`` requests (a later turn must reuse a stored listing)."""

        lists = 0

        async def list_tools(self) -> Any:
            Counting.lists += 1
            return await super().list_tools()

    server = Counting("tools")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @server.tool()
    async def slow(seconds: float) -> str:
        """Sleep for the given seconds, then answer."""
        await anyio.sleep(seconds)
        return f"slept {seconds}"

    @server.tool()
    def fail() -> str:
        """Always fails."""
        raise RuntimeError("the fail tool failed on purpose")

    @server.tool()
    def big(size: int) -> str:
        """A text of ``size`` characters."""
        return "x" * size

    @server.tool()
    def whoami(ctx: Context) -> str:
        """The Authorization and X-Tenant headers this request carried, as JSON."""
        headers = ctx.headers or {}
        return json.dumps({"authorization": headers.get("authorization"), "x-tenant": headers.get("x-tenant")})

    @server.tool()
    def list_count() -> int:
        """How many tools/list requests this server has answered."""
        return Counting.lists

    return server


def _search_server() -> Any:
    from mcp.server.mcpserver import MCPServer

    # Named as upstream vLLM's --tool-server expects a web search server to name itself.
    server = MCPServer("browser", instructions="Search a small local corpus, open its pages, find text in them.")

    @server.tool()
    def search(query: str) -> str:
        """Search the web. Returns a JSON list of hits (title, url, snippet), best first."""
        return json.dumps(search_corpus(query))

    @server.tool()
    def open_page(url: str) -> str:
        """The text of the page at ``url``."""
        for doc in CORPUS:
            if doc["url"] == url:
                return f"{doc['title']}\n\n{doc['text']}"
        raise ValueError(f"no page at {url}")

    @server.tool()
    def find(url: str, pattern: str) -> str:
        """The lines of the page at ``url`` containing ``pattern`` (case-insensitive)."""
        for doc in CORPUS:
            if doc["url"] == url:
                lines = [line for line in doc["text"].splitlines() if pattern.lower() in line.lower()]
                return "\n".join(lines) or f"{pattern!r} not found"
        raise ValueError(f"no page at {url}")

    return server


def _python_server(limit_s: float = PYTHON_TIME_LIMIT_S) -> Any:
    import anyio
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("python", instructions="Run Python code in a fresh process.")

    @server.tool(description=f"Run Python code in a fresh process (time limit {limit_s:g} s); its stdout and stderr.")
    async def python(code: str) -> str:
        try:
            with anyio.fail_after(limit_s):
                done = await anyio.run_process(
                    [sys.executable, "-I", "-c", code], check=False, stdin=subprocess.DEVNULL
                )
        except TimeoutError:
            return f"error: the code ran longer than {limit_s:g} s and was stopped"
        out = done.stdout.decode(errors="replace")
        err = done.stderr.decode(errors="replace")
        return out + (f"\n[stderr]\n{err}" if err else "") + (f"\n[exit {done.returncode}]" if done.returncode else "")

    return server


def _serve_mcp(kind: str, transport: str, arg: str, sock: socket.socket) -> None:
    import anyio
    import uvicorn

    if kind == "python":
        server = _python_server(float(arg) if arg else PYTHON_TIME_LIMIT_S)
    else:
        server = {"tools": _tools_server, "search": _search_server}[kind]()
    if transport == "sse":
        app = server.sse_app()
    else:
        app = server.streamable_http_app(json_response=transport == "streamable_http_json")
    config = uvicorn.Config(app, log_level="warning")
    anyio.run(lambda: uvicorn.Server(config).serve(sockets=[sock]))


def _read_request(conn: socket.socket) -> bytes:
    """The request's head and as much of its body as its Content-Length says."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.search(rb"content-length:\s*(\d+)", head, re.IGNORECASE)
    need = int(match.group(1)) if match else 0
    while len(body) < need:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head


stop = threading.Event()  # never set: the process ends by a signal


def _head(status: str, **headers: str) -> bytes:
    """A response head; ``Connection: close``: one connection, one answer (never reused)."""
    fields = [f"HTTP/1.1 {status}", "Connection: close"]
    fields += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(fields) + "\r\n\r\n").encode()


def _misbehave(kind: str, arg: str, conn: socket.socket) -> None:
    held: list[socket.socket] = []
    try:
        if kind == "hang":
            held.append(conn)  # never answered, never closed
            threading.Event().wait()
        head = _read_request(conn)
        get = head.startswith(b"GET")
        if kind == "garbage":
            body = b"<html><body>Hello! This is not an MCP server.</body></html>"
            conn.sendall(_head("200 OK", Content_Type="text/html", Content_Length=str(len(body))) + body)
        elif kind == "close":
            # An answer that promises more than it sends, then the connection goes: a JSON body
            # shorter than its length to a POST, an event stream cut inside its chunk to a GET.
            if get:
                conn.sendall(_head("200 OK", Content_Type="text/event-stream", Transfer_Encoding="chunked"))
                conn.sendall(b"400\r\nevent: endpoint\ndata: /messa")
            else:
                conn.sendall(_head("200 OK", Content_Type="application/json", Content_Length="5000"))
                conn.sendall(b'{"jsonrpc": "2.0", "id": 1, "result": {"too')
        elif kind in ("trickle", "endless"):
            # Trickle: an answer that starts and never gets anywhere, a few bytes every 0.2 s
            # (each read succeeds: only a deadline over the whole operation ends it). Endless:
            # 64 KiB chunks as fast as they go. JSON whitespace to a POST, SSE comments to a GET.
            kind_of = "text/event-stream" if get else "application/json"
            conn.sendall(_head("200 OK", Content_Type=kind_of, Transfer_Encoding="chunked"))
            size = 2 if kind == "trickle" else 65536
            data = (b": " + b"x" * (size - 3) + b"\n") if get else b" " * size
            chunk = b"%x\r\n%s\r\n" % (len(data), data)
            while not (kind == "trickle" and stop.wait(0.2)):
                conn.sendall(chunk)
        elif kind == "status":
            # Every request answered with the status in ``arg`` (and a short JSON body); the
            # methods seen, one line each, go to stderr (the process's log).
            print(head.split(b" ", 1)[0].decode(errors="replace"), file=sys.stderr, flush=True)
            body = b'{"detail": "no"}'
            conn.sendall(_head(f"{arg} Status", Content_Type="application/json", Content_Length=str(len(body))) + body)
        elif kind == "redirect":
            path = head.split(b" ", 2)[1].decode() if head.count(b" ") >= 2 else "/mcp"
            conn.sendall(_head("307 Temporary Redirect", Location=f"http://localhost:{arg}{path}", Content_Length="0"))
    except OSError:
        pass
    finally:
        if not held:
            conn.close()


def _serve_plain(kind: str, arg: str, sock: socket.socket) -> None:
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=_misbehave, args=(kind, arg, conn), daemon=True).start()


def _exit_with_parent() -> None:
    """The parent holds our stdin open: its end (a crash, a killed test run included) is EOF."""
    sys.stdin.buffer.read()
    os._exit(0)


def main(argv: list[str]) -> None:
    kind, transport, arg = argv[0], argv[1], argv[2] if len(argv) > 2 else ""
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    print(sock.getsockname()[1], flush=True)  # the parent's signal: listening on this port
    if kind in ("tools", "search", "python"):
        _serve_mcp(kind, transport, arg, sock)
    else:
        _serve_plain(kind, arg, sock)


class McpServerProcess:
    """One server process (:data:`KINDS`, :data:`TRANSPORTS`) on 127.0.0.1; ``url`` is its
    endpoint (``/mcp`` or ``/sse``). ``arg``: the port a ``redirect`` server points at, the
    ``python`` server's time limit in seconds, a ``status`` server's status."""

    def __init__(self, kind: str, transport: str = "streamable_http", arg: str = "") -> None:
        if kind not in KINDS or transport not in TRANSPORTS:
            raise ValueError(f"unknown server {kind!r} over {transport!r}")
        self.kind, self.transport, self.arg = kind, transport, arg
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.log = Path(tempfile.mkstemp(prefix=f"mcp-{kind}-", suffix=".log")[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATHS[self.transport]}"

    def start(self, timeout: float = 30) -> None:
        """Start the process and return once it listens (its port printed), or raise with its log."""
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the process without waiting (start several, then :meth:`wait_ready` each)."""
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, self.kind, self.transport, self.arg],
                stdout=subprocess.PIPE, stderr=log, stdin=subprocess.PIPE,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def wait_ready(self, timeout: float = 30) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else b""
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(
                f"MCP test server {self.kind} did not start within {timeout} s:\n"
                + self.log.read_text(errors="replace")[-2000:]
            )
        self.port = int(line)

    def methods(self) -> list[str]:
        """The HTTP methods a ``status`` server has been sent, in order."""
        return self.log.read_text().split()

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pipe in (self.proc.stdout, self.proc.stdin):
            if pipe is not None:
                pipe.close()
        self.proc = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        self.log.unlink(missing_ok=True)


if __name__ == "__main__":
    main(sys.argv[1:])
