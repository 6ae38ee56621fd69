"""vLLM's refusals and request-level failures through the real engine adapter (issue 21), as
vLLM's own routes answer them: ``VllmEngine.generate`` on a scripted engine client, under our
real routes and service.

The exception types are vLLM's own, raised by the fake client where vLLM raises them: 0.32
(installed here) raises ``QueueOverflowError`` (``--max-num-queued-reqs``) and xgrammar's
``VLLMValidationError`` on submission itself; ``RetryableRequestError`` (a paused engine) and the
grammar compile error as a ``VLLMValidationError`` ("Invalid structured outputs: ...") come only
from 0.33, which this CPU host cannot run: they are faked here, raised where 0.33 raises them
(the first ``anext`` of ``generate``, before any output).
"""

import json
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fakes import eventually
from fastapi import FastAPI
from vllm.exceptions import (
    GenerationError,
    QueueOverflowError,
    RetryableRequestError,
    VLLMValidationError,
)

from vllm_responses.core.service import ResponsesService
from vllm_responses.engine.vllm_engine import VllmEngine, _grammar_param, _Prepared
from vllm_responses.events.conformance import check_events, parse_sse
from vllm_responses.events.deltas import Sampling
from vllm_responses.plugin import ResponsesPlugin
from vllm_responses.request import chat
from vllm_responses.store.sqlite import SQLiteStore

PAUSED = "Generation is paused. Please retry after it resumes."  # 0.33's message (EngineCore._reject_add_while_paused)
BAD_GRAMMAR = "Invalid structured outputs: Unsupported JSON schema type 'wat'"  # 0.33's compile error, via RequestError.to_exception


def output(text: str, finish_reason: str | None = None) -> Any:
    """A RequestOutput as vLLM hands it over (DELTA): one token, its text."""
    return SimpleNamespace(num_cached_tokens=0, outputs=[SimpleNamespace(token_ids=[7], text=text, finish_reason=finish_reason, logprobs=None)])


class Client:
    """An engine client whose ``generate`` yields ``before`` outputs, then raises ``fail``."""

    errored = False

    def __init__(self, fail: BaseException, before: int = 0) -> None:
        self.fail, self.before, self.aborted = fail, before, []

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self._outputs()

    async def _outputs(self) -> Any:
        for _ in range(self.before):
            yield output("Hi")
        raise self.fail

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)


class Adapter(VllmEngine):
    """The real adapter's ``generate`` and its error mapping; ``prepare`` without a model
    (no renderer here): what ``_prepare`` hands ``generate`` for a plain-text request."""

    def __init__(self, client: Client) -> None:
        self.client, self.request_logger, self.parser_cls, self.log_error_stack = client, None, None, False
        self.watch, self.death_reported, self.state = object(), False, None  # watch: no liveness task

    async def prepare(self, request: Any, items: list[Any]) -> _Prepared:
        return _Prepared(
            Sampling(), chat_request=None, engine_input={"prompt": "hi"}, prompt_token_ids=[1, 2, 3], sampling_params=None,
            parser=None, reasoning_kwargs={}, top_logprobs=0, tools=chat.ChatTools(), parallel_tool_calls=True,
            include_reasoning=True, engine_request_id=None, routing={}, grammar_param=_grammar_param(request),
        )


def app_for(client: Client) -> FastAPI:
    app = FastAPI()
    ResponsesPlugin().attach_router(app)
    app.state.vllm_responses = ResponsesService(Adapter(client), SQLiteStore(Path(tempfile.mkdtemp()) / "responses.db"))
    return app


async def post(client: Client, **body: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app_for(client))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        return await http.post("/v1/responses", json={"model": "demo", "input": "hi", **body})


REFUSALS = [
    pytest.param(RetryableRequestError(PAUSED), PAUSED, id="paused-0.33"),
    pytest.param(QueueOverflowError(), QueueOverflowError().message, id="queue-full"),
]


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("fail", "message"), REFUSALS)
async def test_a_paused_or_full_engine_answers_503_before_the_stream(fail: Exception, message: str, stream: bool) -> None:
    client = Client(fail)
    r = await post(client, stream=stream)
    assert r.status_code == 503, r.text
    assert r.json() == {"error": {"message": message, "type": "server_error", "param": None, "code": "server_is_overloaded"}}
    assert client.aborted == []  # vLLM dropped it: nothing for us to abort (nor to count as aborted)


@pytest.mark.anyio
@pytest.mark.parametrize(("fail", "message"), REFUSALS)
async def test_a_background_response_refused_ends_failed_with_vllms_message(fail: Exception, message: str) -> None:
    """Its stream began before the engine saw it: ``failed`` with ``server_error`` (the codes of a
    response's ``error`` have no "overloaded") and vLLM's message, which says to retry."""
    transport = httpx.ASGITransport(app=app_for(Client(fail)))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        r = await http.post("/v1/responses", json={"model": "demo", "input": "hi", "background": True})
        assert r.status_code == 200, r.text

        async def failed() -> dict | None:
            got = (await http.get(f"/v1/responses/{r.json()['id']}")).json()
            return got if got["status"] == "failed" else None

        response = await eventually("the background response failed", failed)
    assert response["error"] == {"code": "server_error", "message": message}


@pytest.mark.anyio
async def test_a_request_level_failure_mid_stream_ends_it_failed() -> None:
    """0.33 hands a request-level error (``GenerationError``; retryable, e.g. a multimodal cache
    miss) to a request already generating: ``response.failed`` with vLLM's message, no traceback."""
    for fail in (RetryableRequestError("Multi-modal processor cache miss."), GenerationError("boom")):
        r = await post(Client(fail, before=2), stream=True)
        assert r.status_code == 200
        events = parse_sse(r.text)
        assert check_events(events) == []
        assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
        assert events[-1]["response"]["error"] == {"code": "server_error", "message": str(fail)}
        assert events[-1]["response"]["usage"]["output_tokens"] == 2


@pytest.mark.anyio
async def test_a_non_retryable_generation_error_on_submission_is_a_500() -> None:
    r = await post(Client(GenerationError("Internal server error")))
    assert r.status_code == 500 and r.json()["error"]["code"] == "server_error" and r.json()["error"]["type"] == "server_error"


SCHEMA = {"type": "json_schema", "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "string"}}}}
TOOLS = [
    {"type": "function", "name": "other", "parameters": {"type": "object", "properties": {}}},
    {"type": "function", "name": "pick", "parameters": {"type": "object", "properties": {"a": {"type": "string"}}}},
]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"text": {"format": SCHEMA}}, "text.format.schema"),
        ({"text": {"format": {"type": "json_object"}}}, "text.format"),
        ({"structured_outputs": {"regex": "a+"}}, "structured_outputs"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "name": "pick"}}, "tools[1].parameters"),
        ({"tools": TOOLS, "tool_choice": "required"}, "tools"),
        ({"tools": [{"type": "namespace", "name": "ns", "description": "d", "tools": TOOLS}], "tool_choice": "required"}, "tools"),
    ],
)
@pytest.mark.parametrize("message", [BAD_GRAMMAR, "The provided JSON schema contains features not supported by xgrammar."])
async def test_a_grammar_that_does_not_compile_is_a_400_naming_its_source(body: dict, param: str, message: str) -> None:
    """0.33's compile error (faked: 0.32 ends such a request ``finish_reason="error"``) and
    0.32's own check on submission (the same exception, raised by 0.32 too): no parameter named
    by vLLM; ours names what the grammar came from."""
    client = Client(VLLMValidationError(message))
    r = await post(client, stream=True, **body)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == {"message": message, "type": "invalid_request_error", "param": param, "code": "invalid_value"}
    assert client.aborted == []


@pytest.mark.anyio
async def test_other_validation_errors_keep_their_own_parameter() -> None:
    r = await post(Client(VLLMValidationError("Invalid structured outputs: x", parameter="max_tokens")), text={"format": SCHEMA})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_output_tokens"
    r = await post(Client(VLLMValidationError("Request too slow.")), text={"format": SCHEMA})
    assert r.status_code == 400 and r.json()["error"]["param"] is None  # not a grammar error: nothing to name


class PromptReadingParser:
    """A parser as 0.33's reasoning parsers behave (faked: 0.32's ``DelegatingParser`` ignores
    the prompt): unless ``set_prompt_token_ids`` shows a prompt whose thinking is switched off
    (ending in ``NO_THINK``), the whole output reads as reasoning and no call is found."""

    NO_THINK = 99
    tool_parser = object()

    def __init__(self, tokenizer: Any, tools: Any, **kwargs: Any) -> None:
        self.thinking = True

    def set_prompt_token_ids(self, prompt_token_ids: list[int]) -> None:
        self.thinking = prompt_token_ids[-1:] != [self.NO_THINK]

    def parse(self, text: str, request: Any, enable_auto_tools: bool, model_output_token_ids: Any) -> tuple:
        if self.thinking:
            return text, None, []
        call = json.loads(text)
        return None, None, [SimpleNamespace(name=call["name"], arguments=json.dumps(call["arguments"]))]


def test_whole_arguments_are_parsed_with_the_prompt() -> None:
    """``_whole_arguments`` (a call's arguments as the non-streaming parse reads them) hands the
    parser the prompt first, as vLLM's chat route does (``set_prompt_token_ids``)."""
    engine = object.__new__(VllmEngine)
    engine.parser_cls, engine.tokenizer, engine.model_config = PromptReadingParser, None, None
    engine.renderer = SimpleNamespace(effective_chat_template_kwargs=lambda request: {"enable_thinking": False})
    chat_request = SimpleNamespace(tools=[{"type": "function"}])
    p = SimpleNamespace(parser=PromptReadingParser(None, None), chat_request=chat_request, prompt_token_ids=[1, 2, PromptReadingParser.NO_THINK])
    whole = engine._whole_arguments(p, ['{"name": "f", "arguments": {"a": 1}}'], [5, 6])
    assert whole is not None and whole(0) == '{"a": 1}'
