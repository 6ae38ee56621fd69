"""Compaction on the real server: /v1/responses/compact with the openai SDK, a
``compaction_trigger`` item, ``context_management``'s threshold, and the compaction item
replayed later. The summary is the demo model's own answer to the summarisation prompt (its
default scenario); what the model sees afterwards is proven by token counts: the replayed
prompt has exactly as many tokens as the documented rendering (the user messages, then the
summary message) and fewer than the history it replaced."""

from pathlib import Path
from typing import Any

import httpx
from codex import CodexRun, run_codex, thread_answers
from demo_requests import CASES
from openai import OpenAI
from openai.types.responses import ResponseOutputItem, ResponseUsage
from openai.types.responses.response_input_message_item import ResponseInputMessageItem
from pydantic import TypeAdapter
from sdk import sdk

from vllm_responses.core.compaction import SUMMARY_PREFIX, SUMMARY_PROMPT
from vllm_responses.events.conformance import check_events, parse_sse

SUMMARY = CASES["default"].content  # what the demo model answers to SUMMARY_PROMPT
USER_1, USER_2, NEXT = "Hello there!", "Tell me more about yourself.", "Hello again!"
HISTORY: list[dict[str, Any]] = [  # the tool output makes the history longer than its summary
    {"role": "user", "content": USER_1},
    {"role": "assistant", "content": CASES["default"].content},
    {"role": "user", "content": USER_2},
    {"type": "function_call", "call_id": "call_read", "name": "read_notes", "arguments": "{}"},
    {"type": "function_call_output", "call_id": "call_read", "output": "a note about the demo model " * 40},
    {"role": "assistant", "content": CASES["default"].content},
]
TRIGGER = {"type": "compaction_trigger"}
OUTPUT_ITEM: TypeAdapter[Any] = TypeAdapter(ResponseOutputItem)


def count(base_url: str, body: dict[str, Any]) -> int:
    r = httpx.post(f"{base_url}/v1/responses/input_tokens", json={"model": "demo", **body}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["input_tokens"]


def rendered(*users: str) -> list[dict[str, Any]]:
    """The documented rendering of a compacted window: the user messages, then the summary."""
    return [{"role": "user", "content": u} for u in users] + [{"role": "user", "content": SUMMARY_PREFIX + SUMMARY}]


def test_compact_endpoint_with_the_sdk_then_continue_from_its_id(base_url: str) -> None:
    # Strict validation cannot take the user messages openai's own CompactedResponse types
    # ``output`` by ResponseOutputItem, which has no user message; checked item by item below.
    client = OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    answer = client.responses.with_raw_response.compact(model="demo", input=HISTORY, instructions="Be brief.")
    compacted, raw = answer.parse(), answer.http_response.json()
    assert compacted.object == "response.compaction" and compacted.output[-1].type == "compaction"
    assert raw["object"] == "response.compaction" and raw["id"].startswith("resp_")
    *users, last = raw["output"]
    assert [TypeAdapter(ResponseInputMessageItem).validate_python(u, strict=True).content[0].text for u in users] == [USER_1, USER_2]
    assert OUTPUT_ITEM.validate_python(last).type == "compaction" and last["encrypted_content"]
    usage = ResponseUsage.model_validate(raw["usage"], strict=True)
    # The summary pass: the whole history (instructions, no tools) and the summarisation prompt.
    assert usage.input_tokens == count(base_url, {"instructions": "Be brief.", "input": HISTORY + [{"role": "user", "content": SUMMARY_PROMPT}]})
    assert usage.output_tokens > 0

    strict = sdk(base_url)
    follow = strict.responses.create(model="demo", previous_response_id=compacted.id, input=NEXT)
    assert follow.output_text == CASES["default"].content
    assert follow.usage is not None
    assert follow.usage.input_tokens == count(base_url, {"input": rendered(USER_1, USER_2) + [{"role": "user", "content": NEXT}]})
    assert follow.usage.input_tokens < count(base_url, {"input": HISTORY + [{"role": "user", "content": NEXT}]})


def test_trigger_item_streams_exactly_one_compaction_item_and_replays_stateless(base_url: str) -> None:
    client = sdk(base_url)
    with client.responses.stream(model="demo", input=HISTORY + [TRIGGER], store=False) as stream:
        events = [event.type for event in stream]
        response = stream.get_final_response()
    assert events == ["response.created", "response.in_progress", "response.output_item.added", "response.output_item.done", "response.completed"]
    assert [item.type for item in response.output] == ["compaction"]
    compaction = response.output[0].to_dict()

    # Replayed the way the guide allows: the whole history, the compaction, a new message.
    replay = client.responses.create(model="demo", input=HISTORY + [compaction, {"role": "user", "content": NEXT}], store=False)
    assert replay.usage is not None
    assert replay.usage.input_tokens == count(base_url, {"input": rendered(USER_1, USER_2) + [{"role": "user", "content": NEXT}]})
    assert replay.usage.input_tokens < count(base_url, {"input": HISTORY + [{"role": "user", "content": NEXT}]})
    # Codex's way: only the user messages and the compaction: the same prompt.
    codex_way = [{"role": "user", "content": USER_1}, {"role": "user", "content": USER_2}, compaction, {"role": "user", "content": NEXT}]
    assert count(base_url, {"input": codex_way}) == replay.usage.input_tokens


def test_trigger_with_previous_response_id_and_raw_sse(base_url: str) -> None:
    first = httpx.post(f"{base_url}/v1/responses", json={"model": "demo", "input": HISTORY[:3]}, timeout=120).json()
    r = httpx.post(f"{base_url}/v1/responses", json={"model": "demo", "previous_response_id": first["id"], "input": [TRIGGER], "stream": True}, timeout=120)
    assert r.status_code == 200, r.text
    events = parse_sse(r.text)
    assert check_events(events) == []
    compacted = events[-1]["response"]
    assert [item["type"] for item in compacted["output"]] == ["compaction"]
    answer = httpx.post(f"{base_url}/v1/responses", json={"model": "demo", "previous_response_id": compacted["id"], "input": NEXT}, timeout=120).json()
    assert answer["status"] == "completed"
    assert answer["usage"]["input_tokens"] == count(base_url, {"input": rendered(USER_1, USER_2) + [{"role": "user", "content": NEXT}]})


def test_threshold_compacts_before_the_answer(base_url: str) -> None:
    body = {"model": "demo", "input": HISTORY + [{"role": "user", "content": NEXT}], "stream": True}
    full = count(base_url, {"input": body["input"]})
    managed = {**body, "context_management": [{"type": "compaction", "compact_threshold": full - 1}]}
    r = httpx.post(f"{base_url}/v1/responses", json=managed, timeout=120)
    assert r.status_code == 200, r.text
    events = parse_sse(r.text)
    assert check_events(events) == []
    final = events[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["compaction", "reasoning", "message"]
    assert final["output"][2]["content"][0]["text"] == CASES["default"].content
    # Usage counts both passes: the summary of everything, then the answer from the compacted window.
    summary_pass = count(base_url, {"input": body["input"] + [{"role": "user", "content": SUMMARY_PROMPT}]})
    answer_pass = count(base_url, {"input": rendered(USER_1, USER_2, NEXT)})
    assert final["usage"]["input_tokens"] == summary_pass + answer_pass

    # At the threshold (not over it) nothing is compacted.
    at = httpx.post(f"{base_url}/v1/responses", json={**body, "stream": False, "context_management": [{"type": "compaction", "compact_threshold": full}]}, timeout=120).json()
    assert [item["type"] for item in at["output"]] == ["reasoning", "message"]
    assert at["usage"]["input_tokens"] == full


def test_bad_compaction_requests(base_url: str) -> None:
    cases = [
        ("/v1/responses", {"input": [TRIGGER, {"role": "user", "content": "x"}]}, "input[0]"),
        ("/v1/responses", {"input": [{"type": "compaction", "encrypted_content": "vr1-not-ours"}, {"role": "user", "content": "x"}], "max_output_tokens": 1}, None),
        ("/v1/responses/compact", {"input": "x", "stream": True}, "stream"),
    ]
    for path, body, param in cases:
        r = httpx.post(f"{base_url}{path}", json={"model": "demo", **body}, timeout=120)
        if param is None:  # a blob that is not ours is dropped, like foreign reasoning
            assert r.status_code == 200, r.text
            continue
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param


# -- Codex CLI with remote compaction ------------------------------------------------------
def _codex(tmp_path: Path, base_url: str, prompt: str, *, resume: bool = False) -> CodexRun:
    """``codex exec --json`` with remote compaction on (``capabilities.remote_compaction = "v2"``)
    and an auto-compact limit far below its first prompt (~9k tokens): after its first model
    call it compacts through us, mid-turn."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    (work / "marker-file.txt").write_text("x")
    return run_codex(tmp_path, base_url, prompt, "--json", "--dangerously-bypass-approvals-and-sandbox", ephemeral=False, resume=resume,
                     auto_compact_limit=1000, remote_compaction=True)


def test_codex_compacts_a_session_through_us_and_goes_on_answering(tmp_path: Path, base_url: str, server) -> None:
    assert server.capture_dir is not None, "needs the server's capture dir (E2E_CAPTURE_DIR in the developer loop)"
    run = _codex(tmp_path, base_url, "Please list files in this folder.")
    thread_id = run.thread_id()
    commands = run.items("command_execution")
    assert commands and "marker-file.txt" in commands[0]["aggregated_output"]
    assert [m["text"] for m in run.items("agent_message")] == [SUMMARY]  # after compaction the summary is the last user text: the default scenario answers

    requests = thread_answers(server.capture_dir, thread_id)
    triggers = [i for i, (body, _) in enumerate(requests) if body["input"][-1]["type"] == "compaction_trigger"]
    assert triggers, [[item["type"] for item in body["input"]] for body, _ in requests]
    body, compacted = requests[triggers[0]]
    assert [item["type"] for item in body["input"][-3:]] == ["function_call", "function_call_output", "compaction_trigger"]
    assert [item["type"] for item in compacted["output"]] == ["compaction"]
    after, answered = requests[triggers[0] + 1]
    sent = [item for item in after["input"] if item["type"] == "compaction"]
    assert [item["encrypted_content"] for item in sent] == [compacted["output"][0]["encrypted_content"]]
    assert not any(item["type"] in ("function_call", "function_call_output", "reasoning") for item in after["input"])
    # The prompt held the summary where the compaction was.
    explicit = [{"role": "user", "content": SUMMARY_PREFIX + SUMMARY} if item["type"] == "compaction" else item for item in after["input"]]
    assert answered["usage"]["input_tokens"] == count(base_url, {**after, "input": explicit})

    # The session goes on: a resumed turn sends the compaction back and is answered.
    resumed = _codex(tmp_path, base_url, "Hello again!", resume=True)
    assert [m["text"] for m in resumed.items("agent_message")] == [SUMMARY]
    later = thread_answers(server.capture_dir, thread_id)[len(requests):]
    assert later and all(response["status"] == "completed" for _, response in later)
    assert any(item["type"] == "compaction" for item in later[-1][0]["input"])
