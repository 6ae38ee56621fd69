"""Nothing lost by switching the plugin on, for upstream's server flags: a server of its own with
``--max-model-len``, ``--max-logprobs``, ``--enable-request-id-headers``, request and output
logging, its own ``--chat-template``, generation-config defaults and overrides, and priority
scheduling with one sequence at a time. The extensions on the users' flags:
tests/e2e/test_parity.py.
"""


import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from server import Server, demo_model_dir, running

from vllm_responses.conformance import check_response

ENDLESS = {"model": "demo", "input": "Count forever.", "max_output_tokens": 12}


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
        "--scheduling-policy", "priority", "--max-num-seqs", "1",
    ]
    with running(plugin=True, log_path=base / "server.log", args=args) as srv:
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
    time.sleep(1)
    log = flagged.log_path.read_text(errors="replace")
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

    No timing decides the order. Four blockers with the best priority hold the one slot for
    ~3,600 generated tokens; ``low`` and then ``high`` go in one after the other, each once the
    server has logged the one before as received (``--enable-log-requests``). Both then wait
    behind the blockers, and the order is read where the engine finishes them (vLLM's output
    log, ``--enable-log-outputs``), not from when answers reach their client threads.
    """
    for _ in range(3):  # a run where the blockers ended before ``high`` arrived proves nothing: again
        tag = f"prio-{time.monotonic_ns()}"
        log = _priority_run(flagged, tag)
        # ``high`` arrived before the second-to-last blocker ended: a whole blocker's run of margin.
        if log.index(f"Received request {tag}-high") < log.index(f"Generated response {tag}-b2"):
            break
    else:
        pytest.fail("in three runs the blockers always ended before the prioritised request arrived")
    assert log.index(f"Generated response {tag}-high") < log.index(f"Generated response {tag}-low"), log[-3000:]


def _priority_run(flagged: Server, tag: str) -> str:
    """Blockers b0..b3, then ``low``, then ``high``; the server log once all have answered."""

    def run(name: str, priority: int, max_output_tokens: int, headers: dict | None = None) -> None:
        body = {**ENDLESS, "max_output_tokens": max_output_tokens, "priority": priority, "request_id": f"{tag}-{name}"}
        r = create(flagged.base_url, body, headers)
        assert r.status_code == 200, r.text

    def received(name: str) -> None:
        deadline = time.monotonic() + 60
        while f"Received request {tag}-{name}" not in flagged.log_path.read_text(errors="replace"):
            assert time.monotonic() < deadline, f"the server never logged {tag}-{name} as received"
            time.sleep(0.01)

    with ThreadPoolExecutor(6) as pool:
        futures = []
        for name, priority, tokens, headers in [
            *((f"b{i}", -100, 900, None) for i in range(4)),
            ("low", 10, 8, None),
            ("high", 20, 8, {"X-Vllm-Priority": "-10"}),
        ]:
            futures.append(pool.submit(run, name, priority, tokens, headers))
            received(name)
        for f in futures:
            f.result()
    return flagged.log_path.read_text(errors="replace")
