"""Codex CLI over WebSocket mode (``supports_websockets = true``), and the model catalog it
fetches from ``/v1/models`` (its provider authenticates by command, which makes Codex ask)."""

import json
from itertools import pairwise
from pathlib import Path

import httpx
from codex import CodexRun, run_codex, thread_requests
from demo_requests import CASES
from server import Server
from vllm_responses.api.codex_models import BASE_INSTRUCTIONS

METADATA_WARNING = "Model metadata for"


def over_websocket(tmp_path: Path, base_url: str, prompt: str, *extra: str) -> CodexRun:
    """``codex exec --json`` over the WebSocket transport, which fetched the model catalog: Codex
    warns of no model it lacks metadata for."""
    run = run_codex(tmp_path, base_url, prompt, "--json", *extra, websockets=True)
    assert METADATA_WARNING not in run.proc.stderr + run.proc.stdout, run.proc.stderr[-3000:]
    return run


def socket_requests(server: Server, thread_id: str) -> list[dict]:
    """The messages Codex sent in one thread, in order, each with its response id as ``_id``."""
    assert server.capture_dir is not None, "needs the server's capture dir"
    return [{**body, "_id": response_id} for response_id, body in thread_requests(server.capture_dir, thread_id)]


def check_over_the_socket(requests: list[dict], turns: int) -> None:
    """Every request came as a `response.create` message (the HTTP route never sees that
    field): Codex's `generate: false` warm-up first, then each step continuing from the last."""
    assert requests and all(r["type"] == "response.create" for r in requests), requests
    assert requests[0]["generate"] is False and "previous_response_id" not in requests[0]
    assert len(requests) == 1 + turns
    for before, after in pairwise(requests):
        assert after["previous_response_id"] == before["_id"]


def test_codex_single_turn_over_websocket(tmp_path: Path, server: Server) -> None:
    run = over_websocket(tmp_path, server.base_url, "Hello there!")
    assert run.last.strip() == CASES["default"].content
    requests = socket_requests(server, run.thread_id())
    check_over_the_socket(requests, turns=1)
    # The catalog's base_instructions replace Codex's own prompt (README says so): the first
    # message of the thread (the warm-up's; the next step continues from it).
    first = requests[0]["input"][0]
    assert first["role"] == "developer" and first["content"][0]["text"] == BASE_INSTRUCTIONS, json.dumps(first)[:500]


def test_codex_exec_command_loop_over_websocket(tmp_path: Path, server: Server) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "marker-file.txt").write_text("x")
    run = over_websocket(tmp_path, server.base_url, "Please list files in this folder.", "--dangerously-bypass-approvals-and-sandbox")
    commands = run.items("command_execution")
    assert commands and "marker-file.txt" in commands[0]["aggregated_output"]
    assert run.last.strip() == CASES["after_tool"].content
    requests = socket_requests(server, run.thread_id())
    check_over_the_socket(requests, turns=2)
    # Continuing, Codex sends only what is new: the call's output, not the history.
    assert [i["type"] for i in requests[2]["input"]] == ["function_call_output"]


def test_codex_freeform_apply_patch_over_websocket(tmp_path: Path, server: Server) -> None:
    """The catalog offers the freeform (grammar) apply_patch for every served model, `demo` too."""
    run = over_websocket(tmp_path, server.base_url, "Please apply a patch.", "--dangerously-bypass-approvals-and-sandbox")
    assert (tmp_path / "work" / "hello.txt").read_text() == "Hello, world!\n"
    assert run.last.strip() == CASES["after_tool"].content
    requests = socket_requests(server, run.thread_id())
    check_over_the_socket(requests, turns=2)
    assert any(t["type"] == "custom" and t["name"] == "apply_patch" for t in requests[1]["tools"])


def test_model_catalog_for_codex_and_models_unchanged_for_others(base_url: str) -> None:
    plain = httpx.get(f"{base_url}/v1/models", timeout=30).json()
    assert set(plain) == {"object", "data"} and plain["object"] == "list"
    codex = httpx.get(f"{base_url}/v1/models", params={"client_version": "0.163.0"}, timeout=30).json()
    cards = lambda listing: [(c["id"], c["root"], c["parent"], c["max_model_len"]) for c in listing["data"]]  # `created` is per call
    assert codex["object"] == "list" and cards(codex) == cards(plain)
    by_slug = {m["slug"]: m for m in codex["models"]}
    assert set(by_slug) == {card["id"] for card in plain["data"]} >= {"demo", "gpt-5.5"}
    for card in plain["data"]:
        model = by_slug[card["id"]]
        assert model["context_window"] == card["max_model_len"] == model["max_context_window"]
        assert model["supports_reasoning_summaries"] is True  # served with --reasoning-parser qwen3
        assert model["apply_patch_tool_type"] == "freeform" and model["supports_parallel_tool_calls"] is True
        assert model["input_modalities"] == ["text"]  # the demo model reads no images
