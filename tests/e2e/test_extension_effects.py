"""vLLM's extensions whose effect the parity tests did not show, on the session's server, each
against upstream's own /v1/chat/completions on the same server (the reference of "as
upstream honours it": our route hands the extensions to the same vLLM request model).

- ``skip_special_tokens``: vLLM's parsers behind the users' flags (``--reasoning-parser qwen3
  --tool-call-parser hermes``) turn it off in their ``adjust_request``, so special tokens
  stay in the text whatever the request says, on both routes; a logit bias that makes the
  model emit the special ``<|im_start|>`` shows it. ``spaces_between_special_tokens`` (accepted
  by vLLM 0.33's own ``/v1/responses``) reaches the same detokenizer, as on the chat route.
- ``watermarking``: a request asking for it on an engine without ``--watermark-config``
  runs unwatermarked, and vLLM logs that it does, on both routes.
- ``session_id`` (body or ``X-Session-ID``): vLLM's session identity, used only by KV-cache
  events (``--kv-events-config``); here it is accepted and type-checked as upstream does.
- ``kv_transfer_params`` / ``ec_transfer_params`` need a KV / EC connector; that they reach
  the engine exactly as upstream passes them (SamplingParams ``extra_args``) is shown in
  vLLM's request log on the vision server (tests/e2e/test_multimodal.py).
"""

import httpx
from probes import server_log
from server import Server

IM_START = 1  # the demo tokenizer's id of the special token <|im_start|>
PROMPT = "Count forever."
SPECIAL = {"logit_bias": {str(IM_START): 100}}
NO_WATERMARK = "Watermarking is enabled for this request, but the engine has no watermark configuration."


def responses(base_url: str, headers: dict[str, str] | None = None, **body: object) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/responses", headers=headers, timeout=120,
                      json={"model": "demo", "input": PROMPT, "store": False, "max_output_tokens": 6, **body})


def chat(base_url: str, **body: object) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/chat/completions", timeout=120,
                      json={"model": "demo", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 6, **body})


def output(r: httpx.Response) -> str:
    """All the text of a response: reasoning and message (with the bias the demo's
    reasoning parser takes the whole output as reasoning, as no ``</think>`` comes)."""
    assert r.status_code == 200, r.text
    return "".join(p["text"] for item in r.json()["output"] for p in item.get("content") or [])


def chat_output(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    message = r.json()["choices"][0]["message"]
    return (message.get("reasoning") or "") + (message["content"] or "")


def test_skip_special_tokens_as_on_upstreams_chat_route(base_url: str) -> None:
    plain = output(responses(base_url))
    assert "<|im_start|>" not in plain  # without the bias, no special token: the check can fail
    for flag in ({}, {"skip_special_tokens": True}, {"skip_special_tokens": False}, {"spaces_between_special_tokens": False}):
        ours = output(responses(base_url, **SPECIAL, **flag))
        assert ours == chat_output(chat(base_url, **SPECIAL, **flag)), flag
        assert ours == "<|im_start|>" * 6, flag  # kept: the parsers set skip_special_tokens=False


def test_watermarking_without_a_watermark_config_runs_unwatermarked(server: Server) -> None:
    greedy = {"top_k": 1}
    plain = output(responses(server.base_url, **greedy))
    assert output(responses(server.base_url, watermarking=True, **greedy)) == plain
    assert chat_output(chat(server.base_url, watermarking=True, **greedy)) == plain
    assert responses(server.base_url, watermarking=False).status_code == 200
    assert NO_WATERMARK in server_log(server.log_path).read_text(errors="replace")


def test_session_id_is_accepted_and_checked_as_upstream_does(base_url: str) -> None:
    plain = output(responses(base_url, top_k=1))
    assert output(responses(base_url, session_id="sess-1", top_k=1)) == plain
    assert output(responses(base_url, headers={"X-Session-ID": "sess-2"}, top_k=1)) == plain
    for name, bad in (("session_id", 5), ("kv_transfer_params", "x"), ("ec_transfer_params", ["x"]), ("watermarking", "maybe")):
        r = responses(base_url, **{name: bad})
        assert r.status_code == 400, r.text
        assert (r.json()["error"]["type"], r.json()["error"]["param"], r.json()["error"]["code"]) == ("invalid_request_error", name, "invalid_value")
        assert chat(base_url, **{name: bad}).status_code == 400  # upstream refuses it too
