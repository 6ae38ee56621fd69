"""Nothing lost by switching the plugin on, for upstream's server flags: a server of its own with
``--max-model-len``, ``--max-logprobs``, ``--enable-request-id-headers``, request and output
logging, its own ``--chat-template``, generation-config defaults and overrides, priority
scheduling with one sequence at a time, admission control (``--max-num-queued-reqs``), and
``--tool-server`` (MCP search and python servers that run ``web_search_preview`` and
``code_interpreter``, as upstream runs them for gpt-oss, here on any model).
The extensions on the users' flags:
tests/e2e/test_parity.py.
"""


import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from mcp_servers import McpServerProcess, search_corpus
from probes import RawClient, engine_core, wait_engine_idle, wait_until
from server import Server, demo_model_dir, running

from vllm_responses.events.conformance import check_response

ENDLESS = {"model": "demo", "input": "Count forever.", "max_output_tokens": 12}
# Holds the one sequence while the engine queues the others: 1,000 tokens, the most
# --max-model-len 1024 accepts after the 13-token prompt (seconds at full speed).
BLOCKER = {**ENDLESS, "max_output_tokens": 1000, "priority": -100, "stream": True}


QUEUE = 3  # --max-num-queued-reqs: test_priority_scheduling hands the engine three requests at once


def create(base_url: str, body: dict, headers: dict | None = None) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/responses", json=body, headers=headers or {}, timeout=120)


def ok(base_url: str, body: dict) -> dict:
    r = create(base_url, body)
    assert r.status_code == 200, r.text
    response = r.json()
    assert check_response(response) == []
    return response


def text(response: dict) -> str:
    return "".join(c["text"] for o in response["output"] if o["type"] == "message" for c in o["content"])


def logged(server: Server, line: str) -> str | None:
    """The server's log, once it holds ``line``."""
    log = server.log_path.read_text(errors="replace")
    return log if line in log else None


@pytest.fixture(scope="module")
def flagged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("parity")
    template = base / "template.jinja"
    # The demo template, plus one variable of its own that only chat_template_kwargs can set.
    template.write_text("{{- prefix_note | default('') -}}\n" + (demo_model_dir() / "chat_template.jinja").read_text())
    args = [
        "--max-model-len", "1024", "--max-logprobs", "3", "--enable-request-id-headers",
        "--enable-log-requests", "--enable-log-outputs", "--chat-template", str(template),
        "--generation-config", "auto", "--override-generation-config", json.dumps({"temperature": 0.6, "top_p": 0.9}),
        "--scheduling-policy", "priority", "--max-num-seqs", "1", "--max-num-queued-reqs", str(QUEUE),
    ]
    # vLLM's --tool-server, as upstream reads it (SSE at host:port/sse, each server labelled by the
    # name it gives itself): our search server calls itself browser, the python one python.
    with McpServerProcess("search", "sse") as search, McpServerProcess("python", "sse") as python:
        args += ["--tool-server", f"127.0.0.1:{search.port},127.0.0.1:{python.port}"]
        # The listing at start-up gets 30 s (this VM can freeze every process for 10-40 s).
        env = {"VLLM_RESPONSES_MCP_LIST_TIMEOUT_SECONDS": "30"}
        with running(plugin=True, log_path=base / "server.log", args=args, env=env) as srv:
            yield srv


def test_generation_config_defaults_are_used_and_reported(flagged: Server) -> None:
    r = ok(flagged.base_url, ENDLESS)
    assert (r["temperature"], r["top_p"]) == (0.6, 0.9)
    r = ok(flagged.base_url, {**ENDLESS, "temperature": 1.0})
    assert (r["temperature"], r["top_p"]) == (1.0, 0.9)


def test_max_logprobs_request_id_header_and_request_logging(flagged: Server) -> None:
    r = create(flagged.base_url, {**ENDLESS, "include": ["message.output_text.logprobs"], "top_logprobs": 5})
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs", r.text
    r = create(flagged.base_url, {**ENDLESS, "request_id": "parity-request-42"}, headers={"X-Request-Id": "header-7"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "header-7"
    log = flagged.log_path.read_text(errors="replace")
    assert "Received request parity-request-42" in log and "Generated response parity-request-42" in log
    # A finished generation is not aborted afterwards (vLLM's generator is run to its end, not
    # left to be closed later, which aborts and logs "Request ... aborted.").
    ok(flagged.base_url, {**ENDLESS, "request_id": "parity-request-43"})
    # A late abort of 43 would come from its API process once 43 was done with; by the time
    # the next request has run through the engine (one sequence at a time) and been logged, and
    # the engine is idle, it has had its chance.
    ok(flagged.base_url, {**ENDLESS, "request_id": "parity-request-44"})
    wait_engine_idle(flagged.base_url)
    log = wait_until("request 44's output logged", lambda: logged(flagged, "Generated response parity-request-44"))
    assert "Generated response parity-request-43" in log and "parity-request-43 aborted" not in log


def test_chat_template_kwargs_reach_the_template(flagged: Server) -> None:
    plain = ok(flagged.base_url, {"model": "demo", "input": "Hello there"})
    noted = ok(flagged.base_url, {"model": "demo", "input": "Hello there", "chat_template_kwargs": {"prefix_note": "one two three four"}})
    assert noted["usage"]["input_tokens"] > plain["usage"]["input_tokens"]
    assert text(noted) == text(plain)


def test_truncation_auto_drops_the_oldest_items(flagged: Server) -> None:
    history = []
    for i in range(8):
        history += [
            {"role": "user", "content": f"question {i}: " + "lorem ipsum dolor sit amet " * 12},
            {"role": "assistant", "content": f"answer {i}: " + "consectetur adipiscing elit " * 12},
        ]
    body = {"model": "demo", "instructions": "Be brief.", "input": [*history, {"role": "user", "content": "Hello there"}]}
    r = create(flagged.base_url, body)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
    r = ok(flagged.base_url, {**body, "truncation": "auto"})
    assert r["truncation"] == "auto" and r["status"] == "completed"
    assert 0 < r["usage"]["input_tokens"] + r["usage"]["output_tokens"] <= 1024
    assert text(r) == text(ok(flagged.base_url, {"model": "demo", "input": "Hello there"}))  # the last user message kept


def test_priority_scheduling(flagged: Server) -> None:
    """One sequence at a time: a later request with a better priority runs before an earlier
    one. The ``X-Vllm-Priority`` header wins over the body's ``priority``, as on upstream's routes.

    No timing decides the order. The engine is stopped (SIGSTOP of its EngineCore process)
    while three requests are handed to it in turn, each seen in the log (``Added request``): a
    blocker with the best priority (-100: nothing preempts it), then ``low`` (priority 10), then
    ``high`` (body 20, header -10). Once it runs again the blocker takes the one sequence
    whatever it reads first, and its 1,000 tokens (seconds) leave the engine all the time it
    needs to queue the other two, already waiting in its input; the best of them runs next. The
    order is read where the engine finishes them (vLLM's output log, ``--enable-log-outputs``):
    blocker, ``high``, ``low``. Had the body's 20 won, ``low`` would run before ``high``.

    Not vLLM's gauges, nor a blocker already running: while a sequence generates here, the API
    process serves no new HTTP request (not even /health) until the engine has nothing to
    generate (measured: 3.5-4.7 s for 1,000 tokens, with or without the plugin), so requests
    sent behind a running blocker reach the engine only once it is idle, and a gauge read only
    then.
    """
    base, tag = flagged.base_url, f"prio-{time.monotonic_ns()}"
    wait_engine_idle(base)
    engine = engine_core(flagged.proc.pid)
    blocker: RawClient | None = None
    try:
        with ThreadPoolExecutor(2) as pool:
            engine.suspend()
            try:
                blocker = RawClient(base, {**BLOCKER, "request_id": f"{tag}-blocker"})
                wait_until("the blocker handed to the engine", lambda: logged(flagged, f"Added request {tag}-blocker"), 60)
                low = pool.submit(create, base, {**ENDLESS, "priority": 10, "request_id": f"{tag}-low"})
                wait_until("low handed to the engine", lambda: logged(flagged, f"Added request {tag}-low"), 60)
                high = pool.submit(create, base, {**ENDLESS, "priority": 20, "request_id": f"{tag}-high"}, {"X-Vllm-Priority": "-10"})
                wait_until("high handed to the engine", lambda: logged(flagged, f"Added request {tag}-high"), 60)
            finally:
                engine.resume()
            assert b"response.incomplete" in blocker.read_body()  # its 1,000 tokens, to the end
            for name, answer in (("low", low), ("high", high)):
                r = answer.result(timeout=120)
                assert r.status_code == 200, (name, r.text)
    finally:
        if blocker is not None:
            blocker.leave()
    log = flagged.log_path.read_text(errors="replace")
    order = sorted(("blocker", "high", "low"), key=lambda name: log.index(f"Generated response {tag}-{name}:"))
    assert order == ["blocker", "high", "low"], log[-3000:]


def test_a_full_queue_answers_503_as_upstream_does(flagged: Server) -> None:
    """Admission control (issue 21): with ``--max-num-queued-reqs 3`` full, vLLM refuses a
    request on submission (``QueueOverflowError``, a ``GracefulHTTPError``; vLLM 0.33 refuses
    the same way while paused, ``RetryableRequestError``: tests/unit/test_engine_refusals.py).
    Ours answers before any event, 503 ``server_is_overloaded`` with vLLM's message, streaming or
    not, as upstream's chat route answers 503 on the same server (it answered 500 before); a
    background response, its stream already begun, ends ``failed``.

    The queue is filled with the engine stopped (SIGSTOP of EngineCore): three streams, each seen
    in the log as handed to the engine (``Added request``); the refusals happen in the API
    process, which the stopped engine does not hold up."""
    base, tag = flagged.base_url, f"full-{time.monotonic_ns()}"
    wait_engine_idle(base)
    engine = engine_core(flagged.proc.pid)
    held: list[RawClient] = []
    try:
        engine.suspend()
        try:
            for i in range(QUEUE):
                held.append(RawClient(base, {**ENDLESS, "stream": True, "request_id": f"{tag}-{i}"}))
                wait_until(f"request {i} handed to the engine", lambda i=i: logged(flagged, f"Added request {tag}-{i}"), 60)
            upstream = httpx.post(f"{base}/v1/chat/completions", timeout=60,
                                  json={"model": "demo", "messages": [{"role": "user", "content": "Count forever."}], "max_tokens": 4})
            assert upstream.status_code == 503, upstream.text
            message = upstream.json()["error"]["message"]
            for stream in (False, True):
                r = create(base, {**ENDLESS, "stream": stream})
                assert r.status_code == 503, r.text
                assert r.json() == {"error": {"message": message, "type": "server_error", "param": None, "code": "server_is_overloaded"}}
            background = create(base, {**ENDLESS, "background": True})
            assert background.status_code == 200, background.text

            def failed() -> dict | None:
                got = httpx.get(f"{base}/v1/responses/{background.json()['id']}", timeout=60).json()
                return got if got["status"] == "failed" else None

            assert wait_until("the background response failed", failed, 60)["error"] == {"code": "server_error", "message": message}
        finally:
            engine.resume()
    finally:
        for client in held:
            client.leave()
    wait_engine_idle(base)


def test_tool_server_runs_web_search_inside_the_response(flagged: Server) -> None:
    body = {"model": "demo", "input": "Please search the web.", "tools": [{"type": "web_search_preview"}],
            "include": ["web_search_call.action.sources"], "max_output_tokens": 200}
    r = create(flagged.base_url, body)
    assert r.status_code == 200, r.text
    assert "x-vllm-responses-tools-not-offered" not in r.headers
    response = r.json()
    assert check_response(response) == []
    kinds = [i["type"] for i in response["output"] if i["type"] != "reasoning"]
    assert kinds == ["web_search_call", "message"], response["output"]
    search = next(i for i in response["output"] if i["type"] == "web_search_call")
    query = search["action"]["query"]
    assert search["status"] == "completed" and query
    assert search["action"]["sources"] == [{"type": "url", "url": hit["url"]} for hit in search_corpus(query)]
    assert text(response) == "The tool finished. Here is the result."


def test_tool_server_runs_code_inside_the_response(flagged: Server) -> None:
    body = {"model": "demo", "input": "Please run python.", "tools": [{"type": "code_interpreter", "container": {"type": "auto"}}],
            "include": ["code_interpreter_call.outputs"], "max_output_tokens": 200}
    r = create(flagged.base_url, body)
    assert r.status_code == 200, r.text
    response = r.json()
    assert check_response(response) == []
    ran = next(i for i in response["output"] if i["type"] == "code_interpreter_call")
    assert (ran["code"], ran["outputs"], ran["status"]) == ("print(6 * 7)", [{"type": "logs", "logs": "42\n"}], "completed")
    assert text(response) == "The tool finished. Here is the result."
