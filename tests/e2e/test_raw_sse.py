"""Raw HTTP + SSE against the real server: every scenario through the conformance checker."""

import json
import uuid

import httpx
import pytest

from demo_requests import BUILTIN_SCENARIOS, CASES, HOSTED_SCENARIOS, check_output
from probes import RawClient, captured_request, wait_engine_idle, wait_until
from server import Server
from vllm_responses.events.conformance import assert_conforms, parse_sse
from vllm_responses.api.routes import VERSION_HEADER


# Seconds to wait for what a busy server does: while vLLM generates at full speed on 2 cores its
# API server answers late (/metrics after 30-70 s, measured), and an endless request that was
# not aborted would run for ~8 min, so the waits still tell the two apart.
BUSY_S = 180


def stream(base_url: str, body: dict) -> tuple[httpx.Response, list[dict]]:
    with httpx.stream("POST", f"{base_url}/v1/responses", json={**body, "stream": True}, timeout=120) as r:
        raw = r.read()
    assert r.status_code == 200, raw
    assert r.headers["content-type"].startswith("text/event-stream")
    return r, parse_sse(raw)


@pytest.mark.parametrize("scenario", list(CASES))
def test_scenario_stream(base_url: str, scenario: str) -> None:
    case = CASES[scenario]
    response, events = stream(base_url, case.request())
    assert response.headers[VERSION_HEADER]
    assert_conforms(events)
    terminal = events[-1]
    assert terminal["type"] == ("response.incomplete" if case.incomplete else "response.completed")
    check_output(case, terminal["response"]["output"])
    usage = terminal["response"]["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    if case.reasoning:
        assert usage["output_tokens_details"]["reasoning_tokens"] > 0


@pytest.mark.parametrize("scenario", sorted(BUILTIN_SCENARIOS))
def test_builtin_scenario_as_plain_function(base_url: str, scenario: str) -> None:
    """The demo model's built-in tool scenarios, offered as plain functions of the same names
    and schemas, play exactly their scripted call (``function_call``) through the real server."""
    case = CASES[scenario].as_plain_functions()
    _, events = stream(base_url, case.request())
    assert_conforms(events)
    assert events[-1]["type"] == "response.completed"
    check_output(case, events[-1]["response"]["output"])
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [json.loads(e["arguments"]) for e in done] == [c["arguments"] for c in case.tool_calls]


@pytest.mark.parametrize("scenario", sorted(HOSTED_SCENARIOS))
def test_hosted_tool_scenario_as_plain_function(base_url: str, scenario: str) -> None:
    """The scenarios of the tools the server runs (MCP, web search, code interpreter), offered
    as the plain functions the server offers them as: exactly the scripted call, arguments
    typed as the schema says; its result sent back as the server will feed it plays after_tool."""
    case = CASES[scenario]
    _, events = stream(base_url, case.request())
    assert_conforms(events)
    assert events[-1]["type"] == "response.completed"
    output = events[-1]["response"]["output"]
    check_output(case, output)
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [e["arguments"] for e in done] == [json.dumps(c["arguments"]) for c in case.tool_calls]
    (call,) = [item for item in output if item["type"] == "function_call"]
    result = {"type": "function_call_output", "call_id": call["call_id"], "output": "42"}
    _, events = stream(base_url, case.request(input=[{"role": "user", "content": case.body["input"]}, *output, result]))
    assert_conforms(events)
    check_output(CASES["after_tool"], events[-1]["response"]["output"])


@pytest.mark.parametrize("scenario", ["default", "weather_call", "endless"])
def test_non_streaming_equals_streamed_response(base_url: str, scenario: str) -> None:
    case = CASES[scenario]
    r = httpx.post(f"{base_url}/v1/responses", json=case.request(), timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    _, events = stream(base_url, case.request())
    streamed = events[-1]["response"]

    def comparable(resp: dict) -> dict:
        out = {k: v for k, v in resp.items() if k not in ("id", "created_at", "completed_at")}
        out["output"] = [{k: v for k, v in i.items() if k not in ("id", "call_id")} for i in resp["output"]]
        return out

    assert comparable(body) == comparable(streamed)
    check_output(case, body["output"])


def test_reasoning_summary_mirrors_reasoning(base_url: str) -> None:
    case = CASES["default"]
    _, events = stream(base_url, case.request(reasoning={"summary": "auto"}))
    assert_conforms(events)
    summary = "".join(e["delta"] for e in events if e["type"] == "response.reasoning_summary_text.delta")
    assert summary == case.reasoning
    assert events[-1]["response"]["output"][0]["summary"] == [{"type": "summary_text", "text": case.reasoning}]


def test_sampling_is_deterministic_for_the_demo(base_url: str) -> None:
    case = CASES["default"]
    _, events = stream(base_url, case.request(temperature=1.0, top_p=1.0))
    check_output(case, events[-1]["response"]["output"])


def test_bad_requests_are_openai_errors(base_url: str) -> None:
    for body, status, code in [
        ({"model": "nope", "input": "hi"}, 404, "model_not_found"),
        ({"model": "demo"}, 400, "missing_required_parameter"),
        ({"model": "demo", "input": "x " * 300_000}, 400, "context_length_exceeded"),
    ]:
        r = httpx.post(f"{base_url}/v1/responses", json=body, timeout=120)
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert error["code"] == code and isinstance(error["message"], str), error


def test_client_disconnect_aborts_generation(base_url: str) -> None:
    """An endless generation (no token limit: it would run for many minutes) stops as soon as
    its client goes away: the engine runs nothing within a deadline."""
    body = CASES["endless"].request(stream=True)
    body.pop("max_output_tokens")
    with httpx.stream("POST", f"{base_url}/v1/responses", json=body, timeout=120) as r:
        seen = 0
        for line in r.iter_lines():
            if line.startswith("data:") and json.loads(line[5:])["type"] == "response.output_text.delta":
                seen += 1
                if seen == 5:
                    break
    assert seen == 5
    wait_engine_idle(base_url, BUSY_S)


def test_non_streaming_client_disconnect_aborts_generation(server: Server) -> None:
    """The same for a client waiting for one JSON answer, which leaves once the engine
    generates for it: its captured stream has output deltas. Read from disk, not /metrics:
    while vLLM generates at full speed on 2 cores its API server can take a minute to
    answer /metrics (upstream's chat completions too), and the client would wait that long."""
    assert server.capture_dir is not None, "needs the server's capture dir (E2E_CAPTURE_DIR in the developer loop)"
    tag = uuid.uuid4().hex
    body = CASES["endless"].request(metadata={"n": tag})
    body.pop("max_output_tokens")
    client = RawClient(server.base_url, body)
    events = server.capture_dir / f"{captured_request(server.capture_dir, tag, BUSY_S)}.sse"
    wait_until("the engine generating for the JSON request", lambda: events.exists() and b"response.output_text.delta" in events.read_bytes(), BUSY_S)
    client.leave()
    wait_engine_idle(server.base_url, BUSY_S)
