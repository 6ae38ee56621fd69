"""Codex CLI (``openai-codex-cli-bin``) running ``codex exec`` against the real server."""

from pathlib import Path

import httpx
from codex import run_codex, thread_answers
from demo_requests import CASES
from probes import kv_block_size


def test_codex_exec_single_turn(tmp_path: Path, base_url: str) -> None:
    proc, last = run_codex(tmp_path, base_url, "Hello there!")
    assert last.strip() == CASES["default"].content
    assert "stream disconnected" not in proc.stderr


def test_codex_shows_reasoning_summary(tmp_path: Path, base_url: str) -> None:
    proc, last = run_codex(tmp_path, base_url, "Hello there!", "-c", "model_reasoning_summary=auto")
    assert last.strip() == CASES["default"].content
    assert CASES["default"].reasoning in proc.stderr + proc.stdout


def test_codex_runs_exec_command_and_answers(tmp_path: Path, base_url: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "marker-file.txt").write_text("x")
    run = run_codex(tmp_path, base_url, "Please list files in this folder.", "--json", "--dangerously-bypass-approvals-and-sandbox")
    commands = run.items("command_execution")
    assert commands, run.proc.stdout[-3000:]
    assert commands[0]["command"].endswith("ls") and "marker-file.txt" in commands[0]["aggregated_output"]
    assert run.last.strip() == CASES["after_tool"].content


def test_codex_applies_a_freeform_patch(tmp_path: Path, base_url: str) -> None:
    """Under `gpt-5.5` Codex offers apply_patch as a lark-grammar custom tool."""
    _, last = run_codex(tmp_path, base_url, "Please apply a patch.", "-m", "gpt-5.5", "--json", "--dangerously-bypass-approvals-and-sandbox")
    assert (tmp_path / "work" / "hello.txt").read_text() == "Hello, world!\n"
    assert last.strip() == CASES["after_tool"].content


def _replayed(base_url: str, body: dict) -> dict:
    """The usage of ``body`` (a request Codex sent) sent again, unstored and not streamed."""
    replay = {**body, "stream": False, "store": False}
    return httpx.post(f"{base_url}/v1/responses", json=replay, timeout=120).raise_for_status().json()["usage"]


def _input_tokens(base_url: str, body: dict) -> int:
    return _replayed(base_url, body)["input_tokens"]


def _padded(body: dict, pad: int) -> dict:
    """``body`` with ``pad`` tokens (" the" each) more at the end of its first message, Codex's
    developer instructions (it sends no ``instructions``): the rest of the prompt moves by ``pad``."""
    first = body["input"][0]
    *parts, last = first["content"]
    padded = {**first, "content": [*parts, {**last, "text": last["text"] + " the" * pad}]}
    return {**body, "input": [padded, *body["input"][1:]]}


def _without(body: dict, drop) -> dict:
    return {**body, "input": [item for item in (drop(i) for i in body["input"]) if item is not None]}


def test_codex_multi_turn_resume_carries_its_sealed_reasoning(tmp_path: Path, base_url: str, server) -> None:
    """`codex exec`, then `codex exec resume --last`: Codex sends turn 1's reasoning back sealed
    (store: false, include reasoning.encrypted_content) and the server opens it into the prompt."""
    assert server.capture_dir is not None, "needs the server's capture dir (E2E_CAPTURE_DIR in the developer loop)"
    first = run_codex(tmp_path, base_url, "Hello there!", "--json", "-c", "model_reasoning_summary=auto", ephemeral=False)
    assert first.last.strip() == CASES["default"].content
    thread_id = first.thread_id()
    _, last2 = run_codex(tmp_path, base_url, "Answer with no reasoning, please.", "--json", "-c", "model_reasoning_summary=auto", ephemeral=False, resume=True)
    assert last2.strip() == CASES["no_reasoning"].content

    requests = thread_answers(server.capture_dir, thread_id)
    assert len(requests) == 2
    body, response = requests[1]
    assert body["store"] is False and "reasoning.encrypted_content" in body["include"]
    carried = [i for i in body["input"] if i.get("type") == "reasoning"]
    assert len(carried) == 1 and carried[0]["encrypted_content"]
    assert carried[0]["encrypted_content"] == requests[0][1]["output"][0]["encrypted_content"]

    # Replayed: as Codex sent it, sealed only, and without the reasoning.
    as_sent = _input_tokens(base_url, body)
    sealed_only = _input_tokens(base_url, _without(body, lambda i: {k: v for k, v in i.items() if k != "content"} if i.get("type") == "reasoning" else i))
    forgotten = _input_tokens(base_url, _without(body, lambda i: None if i.get("type") == "reasoning" else i))
    assert response["usage"]["input_tokens"] == as_sent == sealed_only > forgotten


def test_codex_tool_loop_reuses_the_cache_of_its_reasoning(tmp_path: Path, base_url: str, server) -> None:
    """Within one Codex turn (exec_command, then the answer), the second request carries the
    first's reasoning sealed; opened into the prompt token for token, the engine's prefix cache
    covers it. The cache hits whole KV blocks, and where Codex's prompt puts a block boundary
    is its own: as Codex ran it, the hit reaches the last boundary before the reasoning's end;
    replayed with its developer message padded so that a boundary falls just after the reasoning
    (as test_state's prefix-cache test does), the hit covers the reasoning whole, and without
    the reasoning it stops inside step 1's prompt."""
    assert server.capture_dir is not None
    run = run_codex(tmp_path, base_url, "Please list files in this folder.", "--json", "-c", "model_reasoning_summary=auto",
                    "--dangerously-bypass-approvals-and-sandbox")
    (body1, step1), (body, step2) = thread_answers(server.capture_dir, run.thread_id())
    p1 = step1["usage"]["input_tokens"]
    assert [i["type"] for i in body["input"][-3:]] == ["reasoning", "function_call", "function_call_output"]
    forget = lambda b: _without(b, lambda i: None if i.get("type") == "reasoning" else i)
    assert step2["usage"]["input_tokens"] == _input_tokens(base_url, body) > _input_tokens(base_url, forget(body))
    bs = kv_block_size(base_url)
    reasoning_end = step1["usage"]["output_tokens_details"]["reasoning_tokens"] + 2  # <think> + reasoning + </think>
    cached = step2["usage"]["input_tokens_details"]["cached_tokens"]
    assert cached % bs == 0 and cached >= (p1 + reasoning_end) // bs * bs, (cached, p1, reasoning_end, bs)

    # One " the" more is one token more (the first may also keep the message's trailing
    # whitespace, which the template trims otherwise: measured, not assumed).
    one = _input_tokens(base_url, _padded(body1, 1))
    pad = 1 + (-(one + reasoning_end + 4)) % bs
    padded = lambda b: _padded(b, pad)
    p1 = one + pad - 1
    assert _replayed(base_url, padded(body1))["input_tokens"] == p1  # step 1 again, its blocks cached
    replay = _replayed(base_url, padded(body))["input_tokens_details"]["cached_tokens"]
    assert replay >= p1 + reasoning_end, (replay, p1, reasoning_end, bs)
    forgotten = _replayed(base_url, padded(forget(body)))["input_tokens_details"]["cached_tokens"]
    assert forgotten <= p1, (forgotten, p1)  # so the check above can fail
