"""Codex CLI (``openai-codex-cli-bin``) running ``codex exec`` against the real server."""

import json
import subprocess
from pathlib import Path

import httpx
from codex import codex_home, exec_codex, thread_answers
from demo_requests import CASES



def run_codex(tmp_path: Path, base_url: str, prompt: str, *extra: str, ephemeral: bool = True, resume: bool = False) -> tuple[subprocess.CompletedProcess, str]:
    home = tmp_path / "codex-home"
    if not home.exists():  # a resumed session keeps what Codex wrote to its home
        codex_home(tmp_path, base_url)
    out = tmp_path / "last-message.txt"
    out.unlink(missing_ok=True)
    args = ["--skip-git-repo-check", *(["--ephemeral"] if ephemeral else []), "-o", str(out), *extra]
    proc = exec_codex(home, tmp_path / "work", args, prompt, resume=resume)
    return proc, out.read_text() if out.exists() else ""


def test_codex_exec_single_turn(tmp_path: Path, base_url: str) -> None:
    proc, last = run_codex(tmp_path, base_url, "Hello there!")
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    assert last.strip() == CASES["default"].content
    assert "stream disconnected" not in proc.stderr


def test_codex_shows_reasoning_summary(tmp_path: Path, base_url: str) -> None:
    proc, last = run_codex(tmp_path, base_url, "Hello there!", "-c", "model_reasoning_summary=auto")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert last.strip() == CASES["default"].content
    assert CASES["default"].reasoning in proc.stderr + proc.stdout


def _json_events(stdout: str) -> list[dict]:
    events = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


def test_codex_runs_exec_command_and_answers(tmp_path: Path, base_url: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "marker-file.txt").write_text("x")
    proc, last = run_codex(tmp_path, base_url, "Please list files in this folder.", "--json", "--dangerously-bypass-approvals-and-sandbox")
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    commands = [e["item"] for e in _json_events(proc.stdout) if e.get("type") == "item.completed" and e["item"].get("type") == "command_execution"]
    assert commands, proc.stdout[-3000:]
    assert commands[0]["command"].endswith("ls") and "marker-file.txt" in commands[0]["aggregated_output"]
    assert last.strip() == CASES["after_tool"].content


def test_codex_applies_a_freeform_patch(tmp_path: Path, base_url: str) -> None:
    """Under `gpt-5.5` Codex offers apply_patch as a lark-grammar custom tool."""
    proc, last = run_codex(tmp_path, base_url, "Please apply a patch.", "-m", "gpt-5.5", "--json", "--dangerously-bypass-approvals-and-sandbox")
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    assert (tmp_path / "work" / "hello.txt").read_text() == "Hello, world!\n"
    assert last.strip() == CASES["after_tool"].content


def _input_tokens(base_url: str, body: dict) -> int:
    replay = {**body, "stream": False, "store": False}
    return httpx.post(f"{base_url}/v1/responses", json=replay, timeout=120).raise_for_status().json()["usage"]["input_tokens"]


def _without(body: dict, drop) -> dict:
    return {**body, "input": [item for item in (drop(i) for i in body["input"]) if item is not None]}


def test_codex_multi_turn_resume_carries_its_sealed_reasoning(tmp_path: Path, base_url: str, server) -> None:
    """`codex exec`, then `codex exec resume --last`: Codex sends turn 1's reasoning back sealed
    (store: false, include reasoning.encrypted_content) and the server opens it into the prompt."""
    assert server.capture_dir is not None, "needs the server's capture dir (E2E_CAPTURE_DIR in the developer loop)"
    first, last1 = run_codex(tmp_path, base_url, "Hello there!", "--json", "-c", "model_reasoning_summary=auto", ephemeral=False)
    assert first.returncode == 0, first.stderr[-3000:] + first.stdout[-3000:]
    assert last1.strip() == CASES["default"].content
    thread_id = next(e["thread_id"] for e in _json_events(first.stdout) if e.get("type") == "thread.started")
    second, last2 = run_codex(tmp_path, base_url, "Answer with no reasoning, please.", "--json", "-c", "model_reasoning_summary=auto", ephemeral=False, resume=True)
    assert second.returncode == 0, second.stderr[-3000:] + second.stdout[-3000:]
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
    first's reasoning sealed; opened into the prompt, the engine's prefix cache covers it."""
    assert server.capture_dir is not None
    proc, last = run_codex(tmp_path, base_url, "Please list files in this folder.", "--json", "-c", "model_reasoning_summary=auto",
                           "--dangerously-bypass-approvals-and-sandbox")
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    thread_id = next(e["thread_id"] for e in _json_events(proc.stdout) if e.get("type") == "thread.started")
    (_, step1), (body, step2) = thread_answers(server.capture_dir, thread_id)
    p1 = step1["usage"]["input_tokens"]
    assert [i["type"] for i in body["input"][-3:]] == ["reasoning", "function_call", "function_call_output"]
    forgotten = _input_tokens(base_url, _without(body, lambda i: None if i.get("type") == "reasoning" else i))
    assert step2["usage"]["input_tokens"] == _input_tokens(base_url, body) > forgotten
    # Step 2's prompt starts with step 1's prompt and generated tokens: the cache reaches
    # past step 1's prompt whenever a KV block boundary falls inside what was generated.
    generated = step1["usage"]["output_tokens"]
    block = 128
    if (p1 + generated) // block > p1 // block:
        assert step2["usage"]["input_tokens_details"]["cached_tokens"] > p1
