"""``POST /v1/responses/input_tokens`` on the real server: the count equals the real request's
``usage.input_tokens``, through raw HTTP and the openai SDK."""

import httpx
import pytest
from demo_requests import APPLY_PATCH_TOOL, CASES, WEATHER_TOOL
from openai import NotFoundError, OpenAI
from openai.types.responses import InputTokenCountResponse

BODIES = {
    "string input": CASES["default"].request(),
    "instructions and reasoning": CASES["default"].request(instructions="Be brief.", reasoning={"effort": "low"}),
    "function tools": CASES["weather_call"].request(),
    "tool output in the input": CASES["after_tool"].request(),
    "custom grammar tool": CASES["apply_patch"].request(),
    "tool_choice none hides the tools": CASES["weather_call"].request(tool_choice="none"),
}


def count(base_url: str, body: dict) -> int:
    r = httpx.post(f"{base_url}/v1/responses/input_tokens", json=body, timeout=120)
    assert r.status_code == 200, r.text
    answer = InputTokenCountResponse.model_validate(r.json(), strict=True)
    assert answer.object == "response.input_tokens"
    return answer.input_tokens


def used(base_url: str, body: dict) -> int:
    r = httpx.post(f"{base_url}/v1/responses", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["usage"]["input_tokens"]


@pytest.mark.parametrize("name", list(BODIES))
def test_count_equals_the_real_requests_input_tokens(base_url: str, name: str) -> None:
    body = BODIES[name]
    assert count(base_url, body) == used(base_url, body)


def test_count_follows_previous_response_id(base_url: str) -> None:
    first = httpx.post(f"{base_url}/v1/responses", json=CASES["weather_call"].request(), timeout=120).json()
    call = next(i for i in first["output"] if i["type"] == "function_call")
    body = {
        "model": "demo",
        "tools": [WEATHER_TOOL],
        "previous_response_id": first["id"],
        "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "Sunny, 22 C"}],
    }
    counted = count(base_url, body)
    assert counted == used(base_url, body) > first["usage"]["input_tokens"]


def test_openai_sdk_counts(base_url: str) -> None:
    client = OpenAI(base_url=f"{base_url}/v1", api_key="unused")
    answer = client.responses.input_tokens.count(model="demo", input="Please apply a patch.", tools=[APPLY_PATCH_TOOL])
    assert isinstance(answer, InputTokenCountResponse)
    assert answer.input_tokens == used(base_url, CASES["apply_patch"].request(tools=[APPLY_PATCH_TOOL]))
    with pytest.raises(NotFoundError) as missing:
        client.responses.input_tokens.count(model="nope", input="Hi")
    assert missing.value.code == "model_not_found"


def test_bad_bodies_are_400(base_url: str) -> None:
    r = httpx.post(f"{base_url}/v1/responses/input_tokens", json={"model": "demo", "input": "Hi", "temperature": 9}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"
    r = httpx.post(f"{base_url}/v1/responses/input_tokens", content=b"{", headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
