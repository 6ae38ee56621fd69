"""Issue 8.3 points on the real engine (the session's server) that had no e2e test of their
own: ``tool_choice`` with ``allowed_tools`` restricts what the model is offered, in both
modes; hosted tool types are never offered; ``strict`` function tools reach vLLM, which
holds the arguments to the schema. And issue 7.8's start-up warning for a server without
reasoning keys, with the store it uses in the same log."""

import json

import httpx
from demo_requests import CASES, EXEC_TOOL, HOSTED_TOOLS, WEATHER_TOOL
from probes import server_log


def create(base_url: str, **body) -> dict:
    r = httpx.post(f"{base_url}/v1/responses", json={"model": "demo", "store": False, **body}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def calls(response: dict) -> list[tuple[str, dict]]:
    return [(o["name"], json.loads(o["arguments"])) for o in response["output"] if o["type"] == "function_call"]


def test_allowed_tools_restrict_what_the_model_is_offered(base_url: str) -> None:
    weather = CASES["weather_call"].request()
    only_weather = create(base_url, **weather)
    for mode in ("auto", "required"):
        choice = {"type": "allowed_tools", "mode": mode, "tools": [{"type": "function", "name": "get_weather"}]}
        restricted = create(base_url, **{**weather, "tools": [EXEC_TOOL, WEATHER_TOOL], "tool_choice": choice})
        # The prompt holds get_weather alone: exactly the tokens of a request offering only it.
        assert restricted["usage"]["input_tokens"] == only_weather["usage"]["input_tokens"], mode
        assert calls(restricted) == [("get_weather", {"city": "Paris"})], mode
        assert restricted["tool_choice"] == choice and [t["name"] for t in restricted["tools"]] == ["exec_command", "get_weather"]
    both = create(base_url, **{**weather, "tools": [EXEC_TOOL, WEATHER_TOOL]})
    assert both["usage"]["input_tokens"] > only_weather["usage"]["input_tokens"]  # so the check above can fail


def test_allowed_tools_required_forces_a_call_where_auto_answers(base_url: str) -> None:
    hello = CASES["default"].request(tools=[EXEC_TOOL, WEATHER_TOOL], max_output_tokens=300)
    allowed = [{"type": "function", "name": "get_weather"}]
    auto = create(base_url, **hello, tool_choice={"type": "allowed_tools", "mode": "auto", "tools": allowed})
    assert [o["type"] for o in auto["output"]] == ["reasoning", "message"] and not calls(auto)
    required = create(base_url, **hello, tool_choice={"type": "allowed_tools", "mode": "required", "tools": allowed})
    assert [name for name, _ in calls(required)] == ["get_weather"]


def test_hosted_tools_are_never_offered(base_url: str) -> None:
    weather = CASES["weather_call"].request()
    plain = create(base_url, **weather)
    with_hosted = create(base_url, **{**weather, "tools": [WEATHER_TOOL, *HOSTED_TOOLS]})
    assert with_hosted["usage"]["input_tokens"] == plain["usage"]["input_tokens"]
    assert calls(with_hosted) == [("get_weather", {"city": "Paris"})]
    assert [t["type"] for t in with_hosted["tools"]] == ["function", *(t["type"] for t in HOSTED_TOOLS)]


def test_strict_tools_hold_the_arguments_to_their_schema(base_url: str) -> None:
    """The script asks for Paris; a strict schema that allows only Lyon gets Lyon."""
    lyon = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Lyon"]}}, "required": ["city"], "additionalProperties": False}
    weather = CASES["weather_call"].request()
    strict = create(base_url, **{**weather, "tools": [{**WEATHER_TOOL, "parameters": lyon}]})  # strict by default: the schema allows it
    assert strict["tools"][0]["strict"] is True
    assert calls(strict) == [("get_weather", {"city": "Lyon"})]
    loose = create(base_url, **{**weather, "tools": [{**WEATHER_TOOL, "parameters": lyon, "strict": False}]})
    assert loose["tools"][0]["strict"] is False
    assert calls(loose) == [("get_weather", {"city": "Paris"})]


def test_start_up_logs_the_store_and_warns_without_reasoning_keys(server) -> None:
    log = server_log(server.log_path).read_text(errors="replace")
    assert "responses store: sqlite://" in log
    assert "VLLM_RESPONSES_REASONING_KEYS is not set" in log
