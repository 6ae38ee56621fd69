"""The server's MCP client (core/mcp_client.py) against real MCP servers in processes of their
own (tests/mcp_servers.py), over streamable HTTP (SSE or JSON answers) and SSE, and against
servers that misbehave: every failure is an McpFailure or a call's ``error``, within its
deadline, naming the server's label and never its headers. Also the per-request allow-list
and the settings. No vLLM."""

import asyncio
import json
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from mcp_servers import McpServerProcess, search_corpus

from vllm_responses.common.errors import APIError
from vllm_responses.core.mcp_client import (
    ListedTool,
    McpFailure,
    McpServer,
    call_tool,
    check_headers,
    check_server_url,
    describe,
    list_tools,
    operator_server,
    vllm_tool_server_urls,
)
from vllm_responses.environment import MCP_ALLOWED_URLS, TOOL_SERVERS
from vllm_responses.request.mcp_filters import allowed, needs_approval
from vllm_responses.settings import McpSettings, Settings

LIMITS = McpSettings(list_timeout_s=20, call_timeout_s=20, max_bytes=1024 * 1024)
# The secrets a request sends; none may show in a message or the log.
TOKEN = "tok-3f9a-secret"
TENANT = "tenant-77c1-secret"
# A failure must come well before a 20 s deadline (or right after a 1 s one): a bound a hang
# clearly exceeds.
FAST = 8.0

MCP_TRANSPORTS = ("streamable_http", "streamable_http_json", "sse")


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, McpServerProcess]]:
    """Every server once per module, started together (each start is a Python process)."""
    procs = {f"tools-{t}": McpServerProcess("tools", t) for t in MCP_TRANSPORTS}
    procs["search"] = McpServerProcess("search", "streamable_http")
    procs["python"] = McpServerProcess("python", "sse", arg="1")
    for kind in ("hang", "trickle", "garbage", "close", "endless"):
        procs[kind] = McpServerProcess(kind)
    for status in ("401", "405", "500"):
        procs[status] = McpServerProcess("status", arg=status)
    try:
        for proc in procs.values():
            proc.launch()
        for proc in procs.values():
            proc.wait_ready()
        # Another host by name (localhost), the tools server by address: a followed redirect works.
        procs["redirect"] = McpServerProcess("redirect", arg=str(procs["tools-streamable_http"].port))
        procs["redirect"].start()
        yield procs
    finally:
        for proc in procs.values():
            proc.__exit__(None, None, None)


def server(url: str, transport: str = "auto", label: str = "test") -> McpServer:
    return McpServer.build(label, url, {"X-Tenant": TENANT}, TOKEN, transport)  # type: ignore[arg-type]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def timed(coro: Any) -> tuple[Any, float]:
    start = time.monotonic()
    result = run(coro)
    return result, time.monotonic() - start


def failure(coro: Any) -> tuple[McpFailure, float]:
    start = time.monotonic()
    with pytest.raises(McpFailure) as caught:
        run(coro)
    return caught.value, time.monotonic() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- list and call ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["explicit", "auto"])
@pytest.mark.parametrize("transport", MCP_TRANSPORTS)
def test_list_and_call_over_each_transport(servers: dict[str, McpServerProcess], transport: str, mode: str) -> None:
    proc = servers[f"tools-{transport}"]
    chosen = "auto" if mode == "auto" else ("sse" if transport == "sse" else "streamable_http")
    target = server(proc.url, chosen)
    tools = {t.name: t for t in run(list_tools(target, LIMITS))}
    assert {"add", "echo", "slow", "fail", "big", "whoami", "list_count"} <= set(tools)
    add = tools["add"].item()
    assert add["description"] == "Add two integers."
    assert add["input_schema"]["properties"].keys() == {"a", "b"} and add["input_schema"]["type"] == "object"
    assert set(add) == {"name", "description", "input_schema", "annotations"}
    assert run(call_tool(target, "add", {"a": 2, "b": 40}, LIMITS)).output == "42"
    echoed = run(call_tool(target, "echo", {"text": "héllo\nwörld"}, LIMITS))
    assert (echoed.output, echoed.error) == ("héllo\nwörld", None)


@pytest.mark.parametrize("transport", ["streamable_http", "sse"])
def test_headers_and_authorization_reach_the_server(servers: dict[str, McpServerProcess], transport: str) -> None:
    outcome = run(call_tool(server(servers[f"tools-{transport}"].url), "whoami", {}, LIMITS))
    assert json.loads(outcome.output) == {"authorization": f"Bearer {TOKEN}", "x-tenant": TENANT}


def test_authorization_replaces_an_authorization_header_and_headers_stay_out_of_repr() -> None:
    built = McpServer.build("s", "http://h/mcp", {"authorization": "Basic old", "X-A": "1"}, "Bearer tok")
    assert dict(built.headers) == {"X-A": "1", "Authorization": "Bearer tok"}
    assert "tok" not in repr(built) and "X-A" not in repr(built)
    assert dict(McpServer.build("s", "http://h/mcp", None, "tok").headers) == {"Authorization": "Bearer tok"}


def test_a_tool_that_fails_is_an_execution_error(servers: dict[str, McpServerProcess]) -> None:
    outcome = run(call_tool(server(servers["tools-streamable_http"].url), "fail", {}, LIMITS))
    assert outcome.output is None
    assert outcome.error["type"] == "mcp_tool_execution_error"
    assert "fail" in outcome.error_text
    unknown = run(call_tool(server(servers["tools-sse"].url), "no_such_tool", {}, LIMITS))
    assert unknown.output is None and "no_such_tool" in unknown.error_text


def test_a_slow_call_ends_at_the_call_deadline(servers: dict[str, McpServerProcess]) -> None:
    limits = McpSettings(call_timeout_s=1.0)
    outcome, took = timed(call_tool(server(servers["tools-streamable_http"].url), "slow", {"seconds": 60}, limits))
    assert outcome.output is None
    assert outcome.error == {
        "type": "mcp_protocol_error",
        "code": -32001,
        "message": "Error calling tool 'slow' on MCP server 'test': no answer within 1 s",
    }
    assert took < FAST
    # A call within its deadline is not cut.
    assert run(call_tool(server(servers["tools-sse"].url), "slow", {"seconds": 0.2}, limits)).output == "slept 0.2"


# --- failures ---------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["auto", "streamable_http", "sse"])
@pytest.mark.parametrize("kind", ["hang", "trickle"])
def test_a_server_that_never_answers_fails_at_the_list_deadline(
    servers: dict[str, McpServerProcess], kind: str, transport: str
) -> None:
    """Silent, or trickling bytes so that no single read times out: the deadline covers the
    whole operation, connecting included."""
    limits = McpSettings(list_timeout_s=1.0)
    failed, took = failure(list_tools(server(servers[kind].url, transport, "hanging"), limits))
    assert failed.message == "Error retrieving tool list from MCP server 'hanging': no answer within 1 s"
    assert failed.server_label == "hanging" and failed.error["code"] == -32001
    assert took < FAST


def test_a_call_to_a_server_that_never_answers_is_an_error(servers: dict[str, McpServerProcess]) -> None:
    outcome, took = timed(call_tool(server(servers["hang"].url), "add", {}, McpSettings(call_timeout_s=1.0)))
    assert outcome.error["code"] == -32001 and took < FAST


@pytest.mark.parametrize("transport", ["auto", "streamable_http", "sse"])
@pytest.mark.parametrize("kind", ["garbage", "close", "endless"])
def test_a_server_that_answers_garbage_closes_or_never_ends_fails_at_once(
    servers: dict[str, McpServerProcess], kind: str, transport: str
) -> None:
    """Well before the 20 s deadline: the transport error (or the byte bound) ends the
    operation, where the ``mcp`` package alone would wait for an answer that never comes."""
    limits = McpSettings(list_timeout_s=20, call_timeout_s=20, max_bytes=256 * 1024)
    failed, took = failure(list_tools(server(servers[kind].url, transport, kind), limits))
    reason = {
        "garbage": "Unexpected content type: text/html (code -32600)"
        if transport != "sse"
        else "its answer is not MCP",
        "close": "the connection closed before the answer was complete",
        "endless": "its answer is larger than 262144 bytes (VLLM_RESPONSES_MCP_MAX_BYTES)",
    }[kind]
    assert failed.message == f"Error retrieving tool list from MCP server '{kind}': {reason}"
    assert took < FAST, failed.message
    outcome, took = timed(call_tool(server(servers[kind].url, transport, kind), "add", {}, limits))
    assert outcome.output is None and outcome.error["type"] in ("mcp_protocol_error", "http_error")
    assert took < FAST, outcome.error


def test_an_endless_answer_is_cut_at_the_byte_bound(servers: dict[str, McpServerProcess]) -> None:
    failed, _ = failure(list_tools(server(servers["endless"].url, "streamable_http"), McpSettings(max_bytes=100_000)))
    assert "larger than 100000 bytes (VLLM_RESPONSES_MCP_MAX_BYTES)" in failed.message


def test_http_errors_and_when_auto_tries_sse(servers: dict[str, McpServerProcess]) -> None:
    """A 405 to the POST (an SSE-only server) sends ``auto`` on to SSE (a GET); a 500 or a 401
    is the server's answer: no GET."""
    for status, sse_too in (("500", False), ("401", False), ("405", True)):
        proc = servers[status]
        failed, took = failure(list_tools(server(proc.url, "auto", "s"), LIMITS))
        assert failed.message == f"Error retrieving tool list from MCP server 's': it answered HTTP {status}"
        assert failed.error == {"type": "http_error", "code": int(status), "message": failed.message}
        assert ("GET" in proc.methods()) is sse_too, proc.methods()
        assert took < FAST
    outcome = run(call_tool(server(servers["500"].url, "streamable_http", "s"), "add", {}, LIMITS))
    assert outcome.error == {
        "type": "http_error",
        "code": 500,
        "message": "Error calling tool 'add' on MCP server 's': it answered HTTP 500",
    }


def test_a_caller_that_gives_up_cancels_the_operation(servers: dict[str, McpServerProcess]) -> None:
    """A client that leaves cancels the running call: the cancellation reaches the caller as
    itself, at once, not as an outcome after the call's own deadline."""
    call = call_tool(server(servers["tools-streamable_http"].url), "slow", {"seconds": 60}, LIMITS)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        run(asyncio.wait_for(call, timeout=1.0))
    assert time.monotonic() - start < FAST


def test_headers_that_cannot_be_sent_fail_without_their_values() -> None:
    for headers in ({"X-Bad": f"{TOKEN}\r\nInjected: 1"}, {"Bad Name": TOKEN}, {"X-Nul": f"{TOKEN}\x00"}):
        failed, took = failure(list_tools(McpServer.build("h", "http://127.0.0.1:9/mcp", headers), LIMITS))
        assert "is not a valid HTTP header" in failed.message and TOKEN not in failed.message and took < FAST
        with pytest.raises(APIError) as caught:
            check_headers(headers, param="tools[0].headers")
        assert caught.value.param == "tools[0].headers" and TOKEN not in caught.value.message
    check_headers({"X-Ok": "value with spaces\tand a tab", "Authorization": "Bearer x"})


def test_a_url_that_is_not_http_fails_at_once() -> None:
    for url in ("ftp://127.0.0.1/mcp", "http:///mcp", "http://[::1/mcp"):
        failed, took = failure(list_tools(McpServer.build("u", url), LIMITS))
        assert failed.message.endswith("its URL is not an http:// or https:// URL with a host") and took < FAST


def test_nothing_listening_fails_at_once() -> None:
    failed, took = failure(list_tools(server(f"http://127.0.0.1:{free_port()}/mcp"), LIMITS))
    assert "could not connect" in failed.message and took < FAST


@pytest.mark.parametrize("transport", MCP_TRANSPORTS)
def test_a_large_output_is_cut_at_the_byte_bound(servers: dict[str, McpServerProcess], transport: str) -> None:
    target = server(servers[f"tools-{transport}"].url)
    limits = McpSettings(max_bytes=64 * 1024)
    outcome, took = timed(call_tool(target, "big", {"size": 1_000_000}, limits))
    assert outcome.output is None
    assert outcome.error["message"] == (
        "Error calling tool 'big' on MCP server 'test': its answer is larger than 65536 bytes "
        "(VLLM_RESPONSES_MCP_MAX_BYTES)"
    )
    assert took < FAST
    assert run(call_tool(target, "big", {"size": 1000}, limits)).output == "x" * 1000


@pytest.mark.parametrize("transport", ["auto", "streamable_http", "sse"])
def test_a_redirect_to_another_host_is_not_followed(servers: dict[str, McpServerProcess], transport: str) -> None:
    """The redirect points at the tools server by another name: followed, the listing would
    succeed and the tools server would count it."""
    tools = server(servers["tools-streamable_http"].url)
    before = run(call_tool(tools, "list_count", {}, LIMITS)).output
    failed, took = failure(list_tools(server(servers["redirect"].url, transport, "redirecting"), LIMITS))
    assert failed.message == (
        "Error retrieving tool list from MCP server 'redirecting': the server redirected to another host, "
        "which is not followed"
    )
    assert took < FAST
    assert run(call_tool(tools, "list_count", {}, LIMITS)).output == before


def test_no_secret_in_a_message_or_the_log(
    servers: dict[str, McpServerProcess], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    limits = McpSettings(list_timeout_s=1.0, call_timeout_s=1.0, max_bytes=64 * 1024)
    texts = []
    for kind in ("hang", "garbage", "close", "endless", "redirect"):
        for transport in ("streamable_http", "sse"):
            failed, _ = failure(list_tools(server(servers[kind].url, transport, kind), limits))
            texts.append(failed.message + json.dumps(failed.error))
    tools = server(servers["tools-streamable_http"].url)
    for name, arguments in (("big", {"size": 1_000_000}), ("slow", {"seconds": 30}), ("fail", {})):
        texts.append(json.dumps(run(call_tool(tools, name, arguments, limits)).error))
    assert len(caplog.records) > 10  # the log was captured (DEBUG, every logger)
    for text in [*texts, caplog.text]:
        assert TOKEN not in text and TENANT not in text
    # The packages' own records (tracebacks at ERROR) went down to DEBUG; ours: one warning each.
    package = [r for r in caplog.records if r.name.split(".")[0] in ("mcp", "httpx2")]
    assert package and {r.levelname for r in package} == {"DEBUG"}
    ours = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    # (the fail tool's error is its answer, not a failure: not logged)
    assert len(ours) == len(texts) - 1 and all(m.startswith("Error ") for m in ours)


# --- the operator's servers and the allow-list ------------------------------------------


def test_the_search_server_ranks_opens_and_finds(servers: dict[str, McpServerProcess]) -> None:
    search = McpServer.build("search", servers["search"].url)
    assert {t.name for t in run(list_tools(search, LIMITS))} == {"search", "open_page", "find"}
    hits = json.loads(run(call_tool(search, "search", {"query": "When was the Eiffel Tower built?"}, LIMITS)).output)
    assert hits[0]["url"] == "https://history.example.org/eiffel-tower"
    assert hits == search_corpus("When was the Eiffel Tower built?") and set(hits[0]) == {"title", "url", "snippet"}
    page = run(call_tool(search, "open_page", {"url": hits[0]["url"]}, LIMITS)).output
    assert "completed in 1889" in page
    found = run(call_tool(search, "find", {"url": hits[0]["url"], "pattern": "metres"}, LIMITS)).output
    assert found == "It is 330 metres tall and was the tallest structure in the world until 1930."


def test_the_python_server_runs_code_with_a_time_limit(servers: dict[str, McpServerProcess]) -> None:
    python = McpServer.build("python", servers["python"].url)
    assert run(call_tool(python, "python", {"code": "print(6 * 7)"}, LIMITS)).output.strip() == "42"
    failed = run(call_tool(python, "python", {"code": "import sys; sys.exit('boom')"}, LIMITS)).output
    assert "boom" in failed and "[exit 1]" in failed
    looping, took = timed(call_tool(python, "python", {"code": "while True: pass"}, LIMITS))
    assert looping.output == "error: the code ran longer than 1 s and was stopped" and took < FAST


def test_a_listing_names_the_server_as_upstreams_tool_server_does(servers: dict[str, McpServerProcess]) -> None:
    for name, proc in (("tools", servers["tools-sse"]), ("browser", servers["search"]), ("python", servers["python"])):
        listing = run(describe(McpServer.build("x", proc.url), LIMITS))
        assert listing.name == name and listing.tools
    assert vllm_tool_server_urls("127.0.0.1:8801, localhost:8802") == [
        "http://127.0.0.1:8801/sse",
        "http://localhost:8802/sse",
    ]
    with pytest.raises(ValueError, match="demo"):
        vllm_tool_server_urls("demo")


def test_operator_servers_are_named_in_the_settings() -> None:
    search, python = "http://127.0.0.1:8801/mcp", "http://127.0.0.1:8802/sse"
    settings = Settings.from_env({TOOL_SERVERS: f"search={search}, python={python}"})
    assert settings.mcp.tool_servers == (("search", search), ("python", python))
    found = operator_server("python", settings.mcp)
    assert found is not None and (found.label, found.url, found.transport) == ("python", python, "auto")
    assert operator_server("nope", settings.mcp) is None
    for bad in ("search", "se arch=http://h/", "a=http://h/,a=http://i/", "a=ftp://h/", "a=http://u:p@h/"):
        with pytest.raises(ValueError, match=TOOL_SERVERS):
            Settings.from_env({TOOL_SERVERS: bad})


def refused(url: str, settings: McpSettings) -> APIError:
    with pytest.raises(APIError) as caught:
        check_server_url(url, settings, param="tools[0].server_url")
    return caught.value


def test_per_request_server_urls_are_off_by_default() -> None:
    error = refused("https://mcp.example.com/mcp", Settings.from_env({}).mcp)
    assert (error.status, error.param, error.code) == (400, "tools[0].server_url", "invalid_value")
    assert error.message == (
        "The MCP server_url is not allowed: this server allows no per-request MCP server URLs "
        f"(the operator's setting {MCP_ALLOWED_URLS})."
    )


def test_the_allow_list_takes_url_prefixes_and_hosts() -> None:
    allowed = "https://mcp.example.com/v1, tools.example.org, h.example.net:8443"
    settings = Settings.from_env({MCP_ALLOWED_URLS: allowed}).mcp
    for ok in (
        "https://mcp.example.com/v1",
        "https://mcp.example.com/v1/",
        "https://mcp.example.com:443/v1/mcp",
        "https://MCP.example.com/v1/sse",
        "http://tools.example.org/mcp",
        "https://tools.example.org:9000/anything",
        "https://h.example.net:8443/mcp",
    ):
        check_server_url(ok, settings)
    for bad in (
        "https://mcp.example.com/v1x",  # a prefix ends at a path segment
        "https://mcp.example.com/v2/mcp",
        "http://mcp.example.com/v1/mcp",  # another scheme
        "https://mcp.example.com:8443/v1/mcp",  # another port
        "https://mcp.example.com.evil.org/v1/mcp",
        "https://evil.org/https://mcp.example.com/v1",
        "https://sub.tools.example.org/mcp",  # no subdomains
        "https://h.example.net/mcp",  # host:port allows that port only
    ):
        error = refused(bad, settings)
        assert MCP_ALLOWED_URLS in error.message and "is not among the MCP servers this server allows" in error.message
    assert "credentials" in refused("https://user:pw@mcp.example.com/v1/mcp", settings).message
    assert "http:// or https://" in refused("file:///etc/passwd", settings).message
    assert "not a valid URL" in refused("https://mcp.example.com:99999/v1", settings).message


def test_operator_servers_are_allowed_whatever_the_allow_list() -> None:
    settings = Settings.from_env({TOOL_SERVERS: "search=http://127.0.0.1:8801/mcp"}).mcp
    check_server_url("http://127.0.0.1:8801/mcp", settings)
    refused("http://127.0.0.1:8801/other", settings)


def test_bad_allow_list_entries_fail_at_start() -> None:
    for bad in ("ftp://h/", "h.example/path", "h.example:99999", "https://u:p@h/"):
        with pytest.raises(ValueError, match=MCP_ALLOWED_URLS):
            Settings.from_env({MCP_ALLOWED_URLS: bad})


# --- allowed_tools and require_approval -------------------------------------------------

READ = ListedTool("read", {"type": "object"}, "Reads.", {"readOnlyHint": True})
WRITE = ListedTool("write", {"type": "object"}, "Writes.", {"readOnlyHint": False, "destructiveHint": True})
PLAIN = ListedTool("plain", {"type": "object"})
TOOLS = [READ, WRITE, PLAIN]


def names(tools: list[ListedTool]) -> list[str]:
    return [t.name for t in tools]


def test_allowed_tools_by_names_or_filter() -> None:
    assert names(allowed(TOOLS, None)) == ["read", "write", "plain"]
    assert names(allowed(TOOLS, ["plain", "read", "absent"])) == ["read", "plain"]
    assert names(allowed(TOOLS, [])) == []
    assert names(allowed(TOOLS, {"read_only": True})) == ["read"]
    assert names(allowed(TOOLS, {"read_only": False})) == ["write", "plain"]  # no hint: not read-only
    assert names(allowed(TOOLS, {"tool_names": ["read", "write"], "read_only": False})) == ["write"]
    assert names(allowed(TOOLS, {})) == []


def test_require_approval() -> None:
    for tool in TOOLS:
        assert needs_approval(tool, None) and needs_approval(tool, "always") and not needs_approval(tool, "never")
    never_read = {"never": {"tool_names": ["read"]}}
    assert [needs_approval(t, never_read) for t in TOOLS] == [False, True, True]
    always_write = {"always": {"tool_names": ["write"]}}
    assert [needs_approval(t, always_write) for t in TOOLS] == [False, True, False]
    both = {"always": {"tool_names": ["write"]}, "never": {"read_only": True}}
    assert [needs_approval(t, both) for t in TOOLS] == [False, True, True]


def test_a_listed_tool_round_trips_through_its_item() -> None:
    for tool in TOOLS:
        assert ListedTool.from_item(json.loads(json.dumps(tool.item()))) == tool
