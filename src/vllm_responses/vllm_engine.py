"""The engine adapter: the ONLY module that imports vLLM internals.

It renders a Responses request with the server's chat template (``--chat-template``
honoured, tools passed to the template) through vLLM's own chat renderer, runs
``engine_client.generate``, and turns the output into semantic deltas with the server's
``--reasoning-parser`` and ``--tool-call-parser``. When upstream moves, this file changes.

The translation target is vLLM's ``ChatCompletionRequest``: the Responses request becomes
the chat request a chat-completions client would have sent, so chat templating, structured
outputs (``text.format``), ``tool_choice`` enforcement and sampling defaults are exactly
upstream's.
"""

from argparse import Namespace
from collections.abc import AsyncIterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from pydantic import ValidationError
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.serve.utils.api_utils import get_max_tokens
from vllm.exceptions import VLLMValidationError
from vllm.parser import ParserManager

from .logs import get_logger
from . import chat
from .tool_calls import ToolCallMapper
from .backend import Engine
from .deltas import Delta, Finish, ReasoningDelta, Started, TextDelta, TokenLogprob, Usage
from .errors import APIError, EngineFailure, context_length_exceeded, invalid_request, model_not_found
from .protocol import ResponsesRequest

logger = get_logger(__name__)

# vLLM's chat-request parameter names → the Responses names a client knows.
_PARAMS = {
    "max_tokens": "max_output_tokens",
    "max_completion_tokens": "max_output_tokens",
    "messages": "input",
    "response_format": "text.format",
    "logprobs": "top_logprobs",
}


@dataclass
class _Prepared:
    chat_request: Any
    engine_input: Any
    prompt_token_ids: list[int]
    sampling_params: Any
    parser: Any
    reasoning_kwargs: dict[str, Any]
    top_logprobs: int
    tools: chat.ChatTools
    parallel_tool_calls: bool


class VllmEngine(Engine):
    def __init__(self, engine_client: Any, state: Any, args: Namespace) -> None:
        self.client = engine_client
        self.renderer = state.online_renderer
        self.models = state.openai_serving_models
        self.model_config = engine_client.model_config
        self.tokenizer = self.renderer.renderer.tokenizer
        reasoning_parser = getattr(args, "reasoning_parser", None) or getattr(
            getattr(args, "structured_outputs_config", None), "reasoning_parser", None
        )
        self.parser_cls = ParserManager.get_parser(
            tool_parser_name=args.tool_call_parser,
            reasoning_parser_name=reasoning_parser,
            enable_auto_tools=bool(args.enable_auto_tool_choice),
            model_name=self.model_config.model,
            is_harmony=self.model_config.hf_config.model_type == "gpt_oss",
            tool_strict_level=getattr(args, "tool_strict_level", "auto"),
            tokenizer=self.tokenizer,
        )
        self.default_sampling = self.model_config.get_diff_sampling_param()

    async def prepare(self, request: ResponsesRequest, items: list[Any]) -> _Prepared:
        try:
            return await self._prepare(request, items)
        except VLLMValidationError as exc:
            raise _client_error(exc) from None

    async def _prepare(self, request: ResponsesRequest, items: list[Any]) -> _Prepared:
        if not self.models.is_base_model(request.model):
            raise model_not_found(request.model)
        tools = chat.chat_tools(request.tools)
        fields: dict[str, Any] = {
            "model": request.model,
            "messages": chat.chat_messages(request.get("instructions"), items),
            "stream": True,
            "parallel_tool_calls": request.get("parallel_tool_calls", True),
            "temperature": request.get("temperature"),
            "top_p": request.get("top_p"),
            "max_completion_tokens": request.get("max_output_tokens"),
            "response_format": chat.chat_response_format(request.get("text")),
        }
        tool_choice = request.get("tool_choice", "auto")
        if tools.tools and tool_choice != "none":  # "none": the model is not shown the tools at all
            fields["tools"] = tools.tools
            fields["tool_choice"] = chat.chat_tool_choice(tool_choice)
        effort = (request.get("reasoning") or {}).get("effort")
        if effort:
            fields["reasoning_effort"] = effort
        top_logprobs = request.get("top_logprobs", 0)
        if "message.output_text.logprobs" in request.get("include", []):
            fields["logprobs"] = True
            fields["top_logprobs"] = top_logprobs
        try:
            chat_request = ChatCompletionRequest.model_validate({k: v for k, v in fields.items() if v is not None})
        except ValidationError as exc:
            err = exc.errors()[0]
            field = str(err["loc"][0]) if err["loc"] else ""
            raise invalid_request(f"Invalid request: {err['msg']}.", param=_PARAMS.get(field, field) or None) from None

        try:
            rendered = await self.renderer.render_chat(chat_request)
        except (APIError, VLLMValidationError):
            raise
        except Exception as exc:  # template errors, bad content: the client's input did this
            raise invalid_request(f"The input could not be rendered with the model's chat template: {exc}", param="input") from None
        if not isinstance(rendered, tuple):  # vLLM's ErrorResponse
            raise _from_vllm_error(rendered)
        _, engine_inputs = rendered
        engine_input = engine_inputs[0]
        prompt_token_ids = list(engine_input.get("prompt_token_ids") or [])

        try:
            max_tokens = get_max_tokens(
                self.model_config.max_model_len,
                chat_request.max_completion_tokens,
                len(prompt_token_ids),
                self.default_sampling,
            )
        except ValueError as exc:
            raise context_length_exceeded(str(exc)) from None
        if max_tokens <= 0:
            raise context_length_exceeded(
                f"The input ({len(prompt_token_ids)} tokens) leaves no room for output in the model's "
                f"context of {self.model_config.max_model_len} tokens."
            )
        sampling_params = chat_request.to_sampling_params(max_tokens, self.default_sampling)

        parser = None
        reasoning_kwargs: dict[str, Any] = {}
        if self.parser_cls is not None:
            template_kwargs = self._template_kwargs(chat_request)
            parser = self.parser_cls(
                self.tokenizer, chat_request.tools, chat_template_kwargs=template_kwargs, model_config=self.model_config
            )
            reasoning_kwargs["reasoning_ended"] = chat_request.resolve_reasoning_ended(parser, prompt_token_ids)
            if parser.reasoning_parser is not None:
                reasoning_kwargs["reasoning_parser_kwargs"] = {"chat_template_kwargs": template_kwargs}
        return _Prepared(
            chat_request, engine_input, prompt_token_ids, sampling_params, parser, reasoning_kwargs, top_logprobs,
            tools, bool(request.get("parallel_tool_calls", True)),
        )

    def _template_kwargs(self, chat_request: Any) -> dict[str, Any]:
        """The chat-template kwargs the renderer used, which the parsers must see too."""
        effective = getattr(self.renderer, "effective_chat_template_kwargs", None)
        if effective is not None:  # vLLM >= 0.33 (maps reasoning effort per model)
            return effective(chat_request)
        return (  # vLLM 0.32
            chat_request.build_chat_params(self.renderer.chat_template, self.renderer.chat_template_content_format)
            .with_defaults(self.renderer.default_chat_template_kwargs)
            .chat_template_kwargs
        )

    async def generate(self, prepared: _Prepared, request_id: str) -> AsyncIterator[Started | Delta | Finish]:
        p = prepared
        generated: list[int] = []
        cached_tokens = 0
        finish_reason: str | None = None
        calls = ToolCallMapper(p.tools, parallel=p.parallel_tool_calls)
        results = self.client.generate(p.engine_input, p.sampling_params, request_id, **p.reasoning_kwargs)
        try:
            try:
                result = await anext(results, None)
            except VLLMValidationError as exc:  # the engine checks some parameters on submission
                raise _client_error(exc) from None
            yield Started()
            while result is not None:
                if result.num_cached_tokens:
                    cached_tokens = result.num_cached_tokens
                output = result.outputs[0]
                token_ids = list(output.token_ids)
                generated += token_ids
                finish_reason = output.finish_reason
                if finish_reason == "error":
                    raise EngineFailure("The engine failed while generating this response.")
                if finish_reason == "abort":  # stopped by someone else (admin, shutdown), not by our client
                    raise EngineFailure("The generation was aborted by the server.")
                for delta in self._deltas(p, calls, output, token_ids, finished=finish_reason is not None):
                    yield delta
                if finish_reason is not None:
                    break
                result = await anext(results, None)
        except (EngineFailure, APIError):
            raise
        except Exception as exc:
            logger.exception("generation %s failed", request_id)
            raise EngineFailure(f"The engine failed while generating this response: {type(exc).__name__}.") from exc
        finally:
            if finish_reason is None:
                await self.client.abort(request_id)
        if finish_reason is None:
            raise EngineFailure("The engine ended the generation without a finish reason.")
        for delta in calls.finish():
            yield delta
        reasoning_tokens = p.parser.count_reasoning_tokens(generated) if p.parser is not None else 0
        usage = Usage(len(p.prompt_token_ids), len(generated), reasoning_tokens, cached_tokens)
        yield Finish("length" if finish_reason == "length" else "stop", usage)

    def _deltas(self, p: _Prepared, calls: ToolCallMapper, output: Any, token_ids: list[int], finished: bool) -> list[Delta]:
        if p.parser is None:
            return [TextDelta(output.text, self._logprobs(p, output, token_ids))] if output.text else []
        message = p.parser.parse_delta(
            delta_text=output.text,
            delta_token_ids=token_ids,
            request=p.chat_request,
            prompt_token_ids=p.prompt_token_ids,
            finished=finished,
        )
        if message is None:
            return []
        deltas: list[Delta] = []
        if message.reasoning:
            deltas.append(ReasoningDelta(message.reasoning))
        if message.content:
            deltas.append(TextDelta(message.content, _content_logprobs(self._logprobs(p, output, token_ids), message.content)))
        for call in message.tool_calls:
            fn = call.function
            deltas += calls.feed(call.index, fn.name if fn else None, call.id, (fn.arguments or "") if fn else "")
        return deltas

    def _logprobs(self, p: _Prepared, output: Any, token_ids: list[int]) -> list[TokenLogprob] | None:
        if not output.logprobs:
            return None
        result = []
        for token_id, candidates in zip(token_ids, output.logprobs):
            chosen = candidates.get(token_id)
            if chosen is None:
                continue
            top = sorted(candidates.items(), key=lambda kv: kv[1].rank or 0)[: p.top_logprobs]
            result.append(
                TokenLogprob(
                    token=_token_text(chosen, token_id, self.tokenizer),
                    logprob=max(chosen.logprob, -9999.0),
                    bytes=list(_token_text(chosen, token_id, self.tokenizer).encode()),
                    top=[
                        TokenLogprob(_token_text(lp, tid, self.tokenizer), max(lp.logprob, -9999.0), list(_token_text(lp, tid, self.tokenizer).encode()))
                        for tid, lp in top
                    ],
                )
            )
        return result


def _content_logprobs(logprobs: list[TokenLogprob] | None, content: str) -> list[TokenLogprob] | None:
    """The logprobs of the tokens that make up ``content``.

    One engine step can hold several tokens (the engine runs ahead of a slow consumer):
    reasoning and marker tokens (``</think>``) before the content, the end-of-sequence
    token after it. So find the last run of tokens whose texts are exactly ``content``.
    """
    if not logprobs or not content:
        return None
    starts: dict[int, int] = {}  # character offset where a token starts -> its index
    offset = 0
    for i, lp in enumerate(logprobs):
        starts[offset] = i
        offset += len(lp.token)
    ends = {offset: len(logprobs)} | {start: i for start, i in starts.items()}  # offset where a token run ends -> next index
    joined = "".join(lp.token for lp in logprobs)
    at = joined.rfind(content)
    while at >= 0:
        if at in starts and at + len(content) in ends:
            return logprobs[starts[at] : ends[at + len(content)]]
        at = joined.rfind(content, 0, at + len(content) - 1)
    return None


def _client_error(exc: VLLMValidationError) -> APIError:
    """vLLM's parameter errors, in the Responses API's terms."""
    message = exc.args[0] if exc.args else str(exc)
    if exc.parameter in ("input_tokens", "input_text"):
        return context_length_exceeded(message)
    return invalid_request(message, param=_PARAMS.get(exc.parameter or "", exc.parameter))


def _token_text(logprob: Any, token_id: int, tokenizer: Any) -> str:
    text = getattr(logprob, "decoded_token", None)
    return text if text is not None else tokenizer.decode([token_id])


def _from_vllm_error(error: Any) -> APIError:
    info = error.error
    status = int(getattr(info, "code", 400) or 400)
    message = str(info.message)
    if "maximum context length" in message or "context length" in message:
        return context_length_exceeded(message)
    if status >= 500:
        return APIError(message, status=HTTPStatus.INTERNAL_SERVER_ERROR, type="server_error", code="server_error")
    return invalid_request(message, param=getattr(info, "param", None) or "input")
