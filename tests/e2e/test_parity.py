"""Nothing lost by switching the plugin on: vLLM's extensions and server flags, on the real engine.

Each extension is shown by its effect. The demo model's scripts win every sampling step by
a wide margin, so randomness is made with ``logit_bias``: with the scripted successor of
"Again" (" and") pushed to -100, every other token is equally likely, and only the
sampling parameters decide what comes out.
"""

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from server import Server, demo_model_dir, others_paused, running
from tokenizers import Tokenizer

from vllm_responses.conformance import check_response

ENDLESS = {"model": "demo", "input": "Count forever.", "max_output_tokens": 12}


@pytest.fixture(scope="module")
def token() -> "dict[str, int]":
    tok = Tokenizer.from_file(str(demo_model_dir() / "tokenizer.json"))
    ids = {text: tok.encode(text, add_special_tokens=False).ids for text in (" and", " yes", " no")}
    assert all(len(v) == 1 for v in ids.values()), ids
    return {text: v[0] for text, v in ids.items()}


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


def random_tokens(token: dict[str, int], **extra: object) -> dict:
    return {**ENDLESS, "logit_bias": {str(token[" and"]): -100}, **extra}


# -- on the session's server (the users' flags) -------------------------------------------------
def test_stop_strings_and_stop_token_ids_end_the_endless_script(base_url: str, token: dict[str, int]) -> None:
    assert text(ok(base_url, ENDLESS)).startswith("Again and again and again")
    stopped = ok(base_url, {**ENDLESS, "stop": [" and again"]})
    assert (stopped["status"], text(stopped)) == ("completed", "Again")
    kept = ok(base_url, {**ENDLESS, "stop": " and again", "include_stop_str_in_output": True})
    assert text(kept) == "Again and again"
    assert text(ok(base_url, {**ENDLESS, "stop_token_ids": [token[" and"]]})) == "Again"


def test_logit_bias_and_seed(base_url: str, token: dict[str, int]) -> None:
    a = text(ok(base_url, random_tokens(token, seed=7)))
    assert not a.startswith("Again and")  # the bias took the scripted token away
    assert text(ok(base_url, random_tokens(token, seed=7))) == a  # a seed repeats sampled output
    assert text(ok(base_url, random_tokens(token, seed=8))) != a


def test_top_k_and_min_p(base_url: str, token: dict[str, int]) -> None:
    yes, no = str(token[" yes"]), str(token[" no"])
    biased = {str(token[" and"]): -100, yes: 5, no: 4.8}
    greedy = text(ok(base_url, {**ENDLESS, "logit_bias": biased, "top_k": 1})).split()
    assert greedy[0] == "Again" and set(greedy[1:]) == {"yes"} and len(greedy) > 5
    # min_p 0.5 keeps " yes" and " no" (e^-0.2 of the top), drops the 32,000 tokens at e^-5.
    words = text(ok(base_url, {**ENDLESS, "logit_bias": biased, "min_p": 0.5})).split()
    assert words[0] == "Again" and set(words[1:]) <= {"yes", "no"}
    loose = text(ok(base_url, {**ENDLESS, "logit_bias": biased, "seed": 3})).split()
    assert not set(loose[1:]) <= {"yes", "no"}


def test_repetition_penalty(base_url: str) -> None:
    penalised = text(ok(base_url, {**ENDLESS, "repetition_penalty": 100}))
    assert penalised.startswith("Again") and not penalised.startswith("Again and again and again")


def test_cache_salt_separates_prefix_caches(base_url: str) -> None:
    body = {"model": "demo", "input": "lorem ipsum dolor sit amet " * 60 + "parity", "max_output_tokens": 2}
    cached = lambda r: r["usage"]["input_tokens_details"]["cached_tokens"]
    ok(base_url, body)
    assert cached(ok(base_url, body)) > 0
    salt = f"salt-{time.time_ns()}"
    assert cached(ok(base_url, {**body, "cache_salt": salt})) == 0
    assert cached(ok(base_url, {**body, "cache_salt": salt})) > 0


def test_structured_outputs_ignore_eos_and_include_reasoning(base_url: str) -> None:
    hello = {"model": "demo", "input": "Hello there"}
    assert text(ok(base_url, {**hello, "structured_outputs": {"choice": ["yes", "no"]}})) in ("yes", "no")
    both = create(base_url, {**hello, "structured_outputs": {"choice": ["yes"]}, "text": {"format": {"type": "json_object"}}})
    assert both.status_code == 400
    long = ok(base_url, {**hello, "ignore_eos": True, "max_output_tokens": 64})
    assert long["status"] == "incomplete" and long["usage"]["output_tokens"] == 64
    plain = ok(base_url, {**hello, "include_reasoning": False})
    assert [o["type"] for o in plain["output"]] == ["message"] and plain["usage"]["output_tokens_details"]["reasoning_tokens"] > 0


def test_sampling_values_are_reported_and_bad_extensions_are_400(base_url: str) -> None:
    r = ok(base_url, {**ENDLESS, "presence_penalty": 1.5, "frequency_penalty": -0.5, "temperature": 0.7, "top_p": 0.8})
    assert (r["presence_penalty"], r["frequency_penalty"], r["temperature"], r["top_p"]) == (1.5, -0.5, 0.7, 0.8)
    ok(base_url, {**ENDLESS, "vllm_xargs": {"anything": 1}, "mm_processor_kwargs": {}, "session_id": "s"})
    for field, value in (("vllm_xargs", {"x": {"nested": 1}}), ("chat_template_kwargs", 5), ("top_k", "many"), ("cache_salt", "")):
        r = create(base_url, {**ENDLESS, field: value})
        assert r.status_code == 400 and r.json()["error"]["param"] == field, (field, r.text)
    r = create(base_url, {**ENDLESS, "max_tokens": 5})
    assert r.status_code == 400 and "max_output_tokens" in r.json()["error"]["message"]


def test_stored_responses_are_exact_too(base_url: str) -> None:
    created = ok(base_url, {"model": "demo", "input": "Hello there", "metadata": {"k": "v"}})
    retrieved = httpx.get(f"{base_url}/v1/responses/{created['id']}", timeout=30).json()
    assert check_response(retrieved) == [] and retrieved == created
    queued = ok(base_url, {"model": "demo", "input": "Hello there", "background": True})
    assert queued["status"] == "queued" and queued["completed_at"] is None


# -- on a server with upstream's other flags ----------------------------------------------------
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
    with others_paused(), running(plugin=True, log_path=base / "server.log", args=args) as srv:
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
