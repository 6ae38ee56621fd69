"""The openai Python SDK, with strict validation, against the real server."""

import json

import openai
import pytest
from openai import OpenAI

from demo_requests import CASES, check_output
from sdk import wire
from vllm_responses.events.conformance import assert_conforms


@pytest.fixture(scope="module")
def client(base_url: str) -> OpenAI:
    return OpenAI(base_url=f"{base_url}/v1", api_key="unused", _strict_response_validation=True, max_retries=0)


def test_sdk_version() -> None:
    major, minor = (int(x) for x in openai.__version__.split(".")[:2])
    assert (major, minor) >= (3, 57)


@pytest.mark.parametrize("scenario", ["default", "no_reasoning", "json", "weather_call", "two_calls", "after_tool"])
def test_create_stream(client: OpenAI, scenario: str) -> None:
    case = CASES[scenario]
    events = [wire(e) for e in client.responses.create(**case.request(), stream=True)]
    assert_conforms(events)
    assert events[-1]["type"] == "response.completed"
    check_output(case, events[-1]["response"]["output"])


@pytest.mark.parametrize("scenario", ["default", "weather_call", "two_calls"])
def test_stream_helper_final_response(client: OpenAI, scenario: str) -> None:
    case = CASES[scenario]
    with client.responses.stream(**case.request()) as stream:
        events = list(stream)  # the helper raises on any ordering or identity violation
        final = stream.get_final_response()
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    check_output(case, final.model_dump(mode="json", exclude={"output": {"__all__": {"parsed_arguments"}}}, warnings=False)["output"])
    assert final.id == events[0].response.id
    assert final.output_text == (case.content or "")


def test_non_streaming(client: OpenAI) -> None:
    case = CASES["default"]
    response = client.responses.create(**case.request())
    assert response.status == "completed"
    assert response.output_text == case.content
    check_output(case, response.to_dict()["output"])
    assert response.usage is not None and response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens


def test_function_call_round_trip(client: OpenAI) -> None:
    first = client.responses.create(**CASES["weather_call"].request())
    call = next(item for item in first.output if item.type == "function_call")
    assert json.loads(call.arguments) == {"city": "Paris"}
    follow_up = client.responses.create(
        model="demo",
        tools=CASES["weather_call"].body["tools"],
        input=[
            {"role": "user", "content": "What is the weather in Paris?"},
            *[item.to_dict() for item in first.output],
            {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"},
        ],
    )
    assert follow_up.output_text == CASES["after_tool"].content


def test_errors_raise_typed_exceptions(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        client.responses.create(model="nope", input="hi")
    assert exc.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="demo", input=[{"type": "message", "role": "wizard", "content": "x"}])
