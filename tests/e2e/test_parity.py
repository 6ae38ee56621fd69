"""Nothing lost by switching the plugin on: vLLM's extensions and server flags, on the real engine.

Each extension is shown by its effect. The demo model's scripts win every sampling step by
a wide margin, so randomness is made with ``logit_bias``: with the scripted successor of
"Again" (" and") pushed to -100, every other token is equally likely, and only the
sampling parameters decide what comes out.
"""

import time

import httpx
import pytest
from server import demo_model_dir
from tokenizers import Tokenizer

from vllm_responses.events.conformance import check_response

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
