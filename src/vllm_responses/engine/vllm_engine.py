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

import asyncio
import contextvars
import functools
import re
from argparse import Namespace
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import ClientError
from jinja2 import TemplateError
from pydantic import ValidationError
from vllm import envs
from vllm.entrypoints.generate.base.serving import PRIORITY_HEADER, SESSION_ID_HEADER
from vllm.entrypoints.launchers.launcher import terminate_if_errored
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.serve.utils.api_utils import get_max_tokens
from vllm.exceptions import (
    GenerationError,
    GracefulHTTPError,
    VLLMUnprocessableEntityError,
    VLLMValidationError,
)
from vllm.lora.request import LoRARequest
from vllm.parser import DelegatingParser, ParserManager
from vllm.tracing.utils import contains_trace_headers, extract_trace_headers
from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

from ..common import metrics
from ..common.errors import (
    ENGINE_DEAD,
    APIError,
    context_length_exceeded,
    engine_dead,
    invalid_request,
    model_not_found,
    overloaded,
)
from ..common.logs import get_logger
from ..events.deltas import (
    Delta,
    EngineFailure,
    Finish,
    ReasoningDelta,
    Sampling,
    Started,
    TextDelta,
    TokenLogprob,
    Usage,
)
from ..request import chat, file_parsing
from ..request.item_cache import ITEMS
from ..request.protocol import OFF_LOOP_ITEMS, ResponsesRequest, off_loop_if
from ..settings import Settings
from .base import Engine, Prepared
from .prompt_tokens import PromptTokenizer
from .tool_calls import ToolCallMapper

logger = get_logger(__name__)

WATCH_INTERVAL_S = 1.0  # how often the engine client's liveness is checked (see VllmEngine._watch)

# vLLM's chat-request parameter names → the Responses names a client knows.
_PARAMS = {
    "max_tokens": "max_output_tokens",
    "max_completion_tokens": "max_output_tokens",
    "messages": "input",
    "response_format": "text.format",
    "logprobs": "top_logprobs",
}


@dataclass
class _Prepared(Prepared):
    chat_request: Any
    engine_input: Any
    prompt_token_ids: list[int]
    sampling_params: Any
    parser: Any
    reasoning_kwargs: dict[str, Any]
    top_logprobs: int
    tools: chat.ChatTools
    parallel_tool_calls: bool
    include_reasoning: bool
    engine_request_id: str | None  # the client's own (vLLM's ``request_id`` extension)
    routing: dict[str, Any]  # priority, session_id, data_parallel_rank, trace_headers
    lora_request: Any = None  # the LoRA adapter the request's ``model`` names; None: the base model
    text_only: bool = False  # the parser can only hand each delta back as content now (see _text_only)
    grammar_param: str | None = None  # what a grammar that does not compile came from (see _grammar_param)


class VllmEngine(Engine):
    def __init__(self, engine_client: Any, state: Any, args: Namespace) -> None:
        self.client = engine_client
        self.renderer = state.online_renderer
        self.models = state.openai_serving_models
        self.model_config = engine_client.model_config
        self.tokenizer = self.renderer.renderer.tokenizer
        # Long histories: unchanged input items are not validated, the rendered prompt's
        # unchanged pieces not tokenized again (both bounded: VLLM_RESPONSES_PROMPT_CACHE_MB).
        settings = Settings.from_env()
        cache_bytes = settings.prompt_cache_bytes
        self.file_limits = settings.files
        ITEMS.lru.max_bytes = cache_bytes
        self.prompt_tokens = _prompt_cache(self.renderer.renderer, self.tokenizer, cache_bytes)
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
        self.reasoning = bool(reasoning_parser)  # the model thinks, and its reasoning is parsed out
        # A text-only model answers images with a 400 before anything is loaded (vLLM would fail
        # deep in its multimodal path).
        self.accepts_images = bool(getattr(self.model_config, "is_multimodal_model", False))
        # ``--enable-log-requests`` / ``--enable-log-outputs``, as on upstream's routes.
        self.request_logger = getattr(self.renderer, "request_logger", None)
        self.log_outputs = bool(getattr(args, "enable_log_outputs", False))
        # Engine failures, as upstream's routes treat them (``engine_error_handler``).
        self.state = state  # ``state.server``: the uvicorn server, set by vLLM's launcher
        self.log_error_stack = bool(getattr(args, "log_error_stack", False))
        self.death_reported = False
        self.watch: asyncio.Task[None] | None = None

    def _died(self) -> None:
        """The engine is dead: say so once, and shut the server down as upstream's routes do
        (``terminate_if_errored``: unless ``VLLM_KEEP_ALIVE_ON_ENGINE_DEATH``, the uvicorn
        server exits once in-flight requests have ended, so an orchestrator restarts it).
        vLLM's own watchdog does the same within 5 s; this only makes it immediate."""
        if not self.death_reported:
            self.death_reported = True
            logger.error(
                "the vLLM engine is dead: Responses requests answer 503 engine_dead%s",
                " (VLLM_KEEP_ALIVE_ON_ENGINE_DEATH: the server stays up)"
                if envs.VLLM_KEEP_ALIVE_ON_ENGINE_DEATH
                else "; the server shuts down",
            )
        server = getattr(self.state, "server", None)
        if server is not None:
            terminate_if_errored(server, self.client)

    async def _watch(self) -> None:
        """End the requests in flight once the engine client is errored, even where vLLM does
        not: an API process of ``--api-server-count > 1`` does not watch the engine itself; when
        its parent sees the engine die it stops that process's engine client (its output handler
        cancelled, no error reaches the requests), and streams would hang until the parent kills
        the process, cut without a terminal event. This hands them ``EngineDeadError`` as vLLM's
        output handler does when it fails itself (vLLM's ``errored`` is its ``/health``'s "dead")."""
        while not self.client.errored:
            await asyncio.sleep(WATCH_INTERVAL_S)
        processor = getattr(
            self.client, "output_processor", None
        )  # AsyncLLM's; other clients end their requests themselves
        if processor is not None:
            processor.propagate_error(EngineDeadError())

    def _generate_failed(self, request_id: str, exc: BaseException) -> None:
        """One request's generation failed in vLLM (``EngineGenerateError``, recoverable): one
        line, the stack only with ``--log-error-stack``, as upstream's routes log it."""
        cause = exc.__cause__ or exc
        if self.log_error_stack:
            logger.exception("generation %s failed", request_id)
        else:
            logger.error("generation %s failed: %s: %s", request_id, type(cause).__name__, cause)
        if self.client.errored:
            self._died()

    async def prepare(self, request: ResponsesRequest, items: list[Any]) -> _Prepared:
        if self.client.errored:  # before anything is stored (a background response would end failed at once)
            self._died()
            raise engine_dead()
        try:
            return await self._prepare(request, items)
        except VLLMValidationError as exc:
            raise _client_error(exc) from None
        except RecursionError:  # a schema or content nested deeper than vLLM's code can walk
            raise invalid_request(
                "The request is nested too deeply to be processed.", code="nested_too_deeply"
            ) from None

    def input_tokens(self, prepared: Prepared) -> int:
        assert isinstance(prepared, _Prepared)
        return len(prepared.prompt_token_ids)

    async def _prepare(self, request: ResponsesRequest, items: list[Any]) -> _Prepared:
        lora_request = await self._adapter(request.model)
        if chat.has_files(items):  # decoding and PDF text extraction: once, off the event loop, within a budget
            items = await file_parsing.inline_files(items, self.file_limits)
        tool_choice, tools = request.tool_choice, request.offered_tools_for(items)
        fields: dict[str, Any] = {
            **{k: v for k, v in request.extensions.items() if k != "request_id"},
            "model": request.model,
            "stream": True,
            "parallel_tool_calls": request.parallel_tool_calls,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_completion_tokens": request.max_output_tokens,
            "response_format": request.response_format,
        }
        if tools.tools and tool_choice != "none":  # "none": the model is not shown the tools at all
            fields["tools"] = tools.tools
            fields["tool_choice"] = chat.chat_tool_choice(tool_choice)
        if request.reasoning_effort:
            fields["reasoning_effort"] = request.reasoning_effort
        top_logprobs = request.top_logprobs
        if request.logprobs:
            fields["logprobs"] = True
            fields["top_logprobs"] = top_logprobs

        instructions = request.instructions
        if request.truncate:
            # Truncated prompts leave the output its room: max_output_tokens, else a quarter of
            # the context (at most 4,096 tokens).
            need = request.max_output_tokens or min(4096, self.model_config.max_model_len // 4)
            rendered = await self._fitting(fields, instructions, items, need) or await self._truncate(
                fields, instructions, items, need
            )
        else:
            rendered = await self._render(fields, instructions, items)
        chat_request, engine_input, prompt_token_ids = rendered
        max_tokens = self._room(chat_request, prompt_token_ids)
        if max_tokens <= 0:
            raise context_length_exceeded(
                f"The input ({len(prompt_token_ids)} tokens) leaves no room for output in the model's "
                f"context of {self.model_config.max_model_len} tokens."
            )
        sampling_params = chat_request.to_sampling_params(max_tokens, self.default_sampling)
        used = Sampling(
            temperature=sampling_params.temperature,
            top_p=sampling_params.top_p,
            presence_penalty=sampling_params.presence_penalty,
            frequency_penalty=sampling_params.frequency_penalty,
        )

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
            used,
            chat_request,
            engine_input,
            prompt_token_ids,
            sampling_params,
            parser,
            reasoning_kwargs,
            top_logprobs,
            tools,
            request.parallel_tool_calls,
            include_reasoning=request.include_reasoning,
            engine_request_id=request.engine_request_id,
            routing=_routing(request),
            lora_request=lora_request,
            grammar_param=_grammar_param(request),
        )

    async def _adapter(self, model: str) -> LoRARequest | None:
        """The LoRA adapter that ``model`` names, or None for the base model, as upstream's routes
        resolve it (``_check_model`` + ``_maybe_get_adapters``): an adapter of ``--lora-modules`` or
        ``POST /v1/load_lora_adapter``; a served name of the base model (any name with
        ``VLLM_SKIP_MODEL_NAME_VALIDATION``); with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``, an adapter a
        LoRA resolver plugin finds and loads. Anything else: 404 ``model_not_found``."""
        if model in self.models.lora_requests:
            return self.models.lora_requests[model]
        if envs.VLLM_SKIP_MODEL_NAME_VALIDATION or self.models.is_base_model(model):
            return None
        if envs.VLLM_ALLOW_RUNTIME_LORA_UPDATING:
            resolved = await self.models.resolve_lora(model)
            if isinstance(resolved, LoRARequest):
                return resolved
            if resolved.error.code == HTTPStatus.BAD_REQUEST:  # found by a resolver, but it would not load
                raise invalid_request(resolved.error.message, param="model")
        raise model_not_found(model)

    async def _render(
        self, fields: dict[str, Any], instructions: str | None, items: list[Any]
    ) -> tuple[Any, Any, list[int]]:
        """The chat request for ``items`` and the prompt the server's template makes of it."""
        messages, chat_request = await off_loop_if(
            len(items) >= OFF_LOOP_ITEMS, self._chat_request, fields, instructions, items
        )
        try:
            rendered = await self._render_chat(chat_request)
        except (APIError, VLLMValidationError):
            raise
        except (
            VLLMUnprocessableEntityError,
            ClientError,
            TimeoutError,
        ) as exc:  # an image URL: 4xx, unreachable, too slow
            raise _image_error(exc, "invalid_image_url") from None
        except Exception as exc:  # template errors, bad content: the client's input did this
            if _has_images(messages) and not isinstance(exc, TemplateError):  # vLLM's media loading or processing
                raise _image_error(exc, "invalid_image") from None
            raise invalid_request(
                f"The input could not be rendered with the model's chat template: {exc}", param="input"
            ) from None
        if not isinstance(rendered, tuple):  # vLLM's ErrorResponse
            raise _from_vllm_error(rendered)
        engine_input = rendered[1][0]
        return chat_request, engine_input, list(engine_input.get("prompt_token_ids") or [])

    def _chat_request(
        self, fields: dict[str, Any], instructions: str | None, items: list[Any]
    ) -> tuple[list[Any], Any]:
        messages = chat.chat_messages(instructions, items, accepts_images=self.accepts_images)
        try:
            chat_request = ChatCompletionRequest.model_validate(
                {k: v for k, v in fields.items() if v is not None} | {"messages": messages}
            )
        except ValidationError as exc:
            err = exc.errors()[0]
            field = str(err["loc"][0]) if err["loc"] else ""
            raise invalid_request(f"Invalid request: {err['msg']}.", param=_PARAMS.get(field, field) or None) from None
        return messages, chat_request

    async def _render_chat(self, chat_request: Any) -> Any:
        """vLLM's ``render_chat``, its tokenization going through our prompt cache."""
        token = _PROMPT_CACHE.set(self.prompt_tokens)
        salt = _PROMPT_SALT.set(getattr(chat_request, "cache_salt", None))
        try:
            return await self.renderer.render_chat(chat_request)
        finally:
            _PROMPT_SALT.reset(salt)
            _PROMPT_CACHE.reset(token)

    def _room(self, chat_request: Any, prompt_token_ids: list[int]) -> int:
        """How many tokens the output may have: the request's limit within what the context leaves."""
        try:
            return get_max_tokens(
                self.model_config.max_model_len,
                chat_request.max_completion_tokens,
                len(prompt_token_ids),
                self.default_sampling,
            )
        except ValueError as exc:
            raise context_length_exceeded(str(exc)) from None

    async def _fitting(
        self, fields: dict[str, Any], instructions: str | None, items: list[Any], need: int
    ) -> tuple[Any, Any, list[int]] | None:
        """:meth:`_render`, or None when the prompt leaves less than ``need`` tokens for output."""
        try:
            rendered = await self._render(fields, instructions, items)
        except VLLMValidationError as exc:
            if exc.parameter in ("input_tokens", "input_text"):
                return None
            raise
        return rendered if self.model_config.max_model_len - len(rendered[2]) >= need else None

    async def _truncate(
        self, fields: dict[str, Any], instructions: str | None, items: list[Any], need: int
    ) -> tuple[Any, Any, list[int]]:
        """``truncation: "auto"``: drop the fewest oldest items that make the prompt fit.

        Instructions, system/developer messages and the last user message with everything
        after it are never dropped; a tool call's output goes with its call.
        """
        last_user = max((i for i, item in enumerate(items) if _role(item) == "user"), default=len(items))
        droppable = [i for i in range(last_user) if _role(items[i]) not in ("system", "developer")]

        async def keep(count: int) -> tuple[Any, Any, list[int]] | None:
            dropped = set(droppable[:count])
            calls = {
                getattr(items[i], "call_id", None)
                for i in dropped
                if getattr(items[i], "type", None) in chat.CALL_TYPES
            }
            kept = [
                item
                for i, item in enumerate(items)
                if i not in dropped
                and not (
                    getattr(item, "type", None) in chat.OUTPUT_TYPES and chat.answered_call(item) in calls
                )
            ]
            return await self._fitting(fields, instructions, kept, need)

        low, high, best = 1, len(droppable), None  # binary search: prompts shrink as items go
        while low <= high:
            mid = (low + high) // 2
            attempt = await keep(mid)
            if attempt is not None:
                best, high = attempt, mid - 1
            else:
                low = mid + 1
        if best is None:
            raise context_length_exceeded(
                "The input does not fit the model's context even with every older item dropped "
                f"(context {self.model_config.max_model_len} tokens, {need} of them kept for output; instructions and "
                "the last user message are kept)."
            )
        return best

    def _template_kwargs(self, chat_request: Any) -> dict[str, Any]:
        """The chat-template kwargs the renderer used, which the parsers must see too (0.32
        and 0.33 both have the method; 0.33's also maps ``reasoning_effort`` per model)."""
        return self.renderer.effective_chat_template_kwargs(chat_request)

    async def generate(self, prepared: Prepared, request_id: str) -> AsyncIterator[Started | Delta | Finish]:
        assert isinstance(prepared, _Prepared)
        p = prepared
        request_id = p.engine_request_id or request_id
        if self.request_logger is not None:
            self.request_logger.log_inputs(
                request_id,
                p.engine_input.get("prompt"),
                p.prompt_token_ids,
                None,
                params=p.sampling_params,
                lora_request=p.lora_request,
            )
        generated: list[int] = []
        text: list[str] = []
        cached_tokens = 0
        finish_reason: str | None = None
        calls = ToolCallMapper(
            p.tools, parallel=p.parallel_tool_calls, complete=self._whole_arguments(p, text, generated)
        )

        def usage() -> Usage:
            reasoning_tokens = p.parser.count_reasoning_tokens(generated) if p.parser is not None else 0
            return Usage(len(p.prompt_token_ids), len(generated), reasoning_tokens, cached_tokens)

        if self.watch is None:
            self.watch = asyncio.ensure_future(self._watch())
        results = self.client.generate(
            p.engine_input,
            p.sampling_params,
            request_id,
            lora_request=p.lora_request,
            **p.routing,
            **p.reasoning_kwargs,
        )
        started = refused = False
        try:
            try:
                result = await anext(results, None)
            except VLLMValidationError as exc:  # the engine checks some parameters (and 0.33 the grammar) on submission
                refused = True
                raise _client_error(exc, p.grammar_param) from None
            except (
                GracefulHTTPError,
                GenerationError,
            ) as exc:  # refused on submission: queue full; 0.33: engine paused
                refused = True
                raise _refused(exc) from None
            started = True
            yield Started()
            while result is not None:
                if result.num_cached_tokens:
                    cached_tokens = result.num_cached_tokens
                output = result.outputs[0]
                token_ids = list(output.token_ids)
                generated += token_ids
                text.append(output.text)
                finish_reason = output.finish_reason
                if finish_reason == "error":
                    raise EngineFailure("The engine failed while generating this response.", usage=usage())
                if finish_reason == "abort":  # stopped by someone else (admin, shutdown), not by our client
                    raise EngineFailure("The generation was aborted by the server.", usage=usage())
                for delta in self._deltas(p, calls, output, token_ids, finished=finish_reason is not None):
                    yield delta
                # After the final output this ends vLLM's generator (None): left suspended, it
                # would be closed later and abort (and log) a request that already finished.
                result = await anext(results, None)
        except (EngineFailure, APIError):
            raise
        except EngineDeadError:
            self._died()
            if not started:
                raise engine_dead() from None
            raise EngineFailure(ENGINE_DEAD, usage=usage()) from None
        except (GracefulHTTPError, GenerationError) as exc:  # 0.33: a request-level failure once running
            logger.warning("generation %s failed: %s: %s", request_id, type(exc).__name__, exc)
            raise EngineFailure(
                str(exc), usage=usage()
            ) from None  # server_error: a response's error codes have no "overloaded"
        except EngineGenerateError as exc:
            self._generate_failed(request_id, exc)
            if not started:
                raise APIError(
                    "The engine could not start this generation.", status=500, type="server_error", code="server_error"
                ) from None
            raise EngineFailure("The engine failed while generating this response.", usage=usage()) from None
        except Exception as exc:
            logger.exception("generation %s failed", request_id)
            raise EngineFailure(
                f"The engine failed while generating this response: {type(exc).__name__}.", usage=usage()
            ) from exc
        finally:
            # A dead engine has nothing to abort, and one that refused the request has already dropped it.
            if finish_reason is None and not refused and not self.client.errored:
                metrics.ENGINE_ABORTS.inc()
                await self.client.abort(request_id)
        if finish_reason is None:
            raise EngineFailure("The engine ended the generation without a finish reason.", usage=usage())
        for delta in calls.finish():
            yield delta
        if self.request_logger is not None and self.log_outputs:
            self.request_logger.log_outputs(request_id, "".join(text), generated, finish_reason, is_streaming=False)
        yield Finish("length" if finish_reason == "length" else "stop", usage())

    def _whole_arguments(
        self, p: _Prepared, text: list[str], generated: list[int]
    ) -> Callable[[int], str | None] | None:
        """For :class:`ToolCallMapper`: the n-th call's arguments as the parser's non-streaming
        pass (Chat Completions' ``stream: false``) reads the output so far."""
        if p.parser is None or p.parser.tool_parser is None or not p.chat_request.tools:
            return None

        def whole(position: int) -> str | None:
            parser = self.parser_cls(
                self.tokenizer,
                p.chat_request.tools,
                chat_template_kwargs=self._template_kwargs(p.chat_request),
                model_config=self.model_config,
            )
            # As vLLM's chat route before ``parse``: 0.33's reasoning parsers read the prompt (thinking
            # switched off in it: the output is no reasoning); 0.32's parsers ignore it.
            set_prompt = getattr(parser, "set_prompt_token_ids", None)
            if set_prompt is not None:
                set_prompt(p.prompt_token_ids)
            try:
                _, _, found = parser.parse(
                    "".join(text), p.chat_request, enable_auto_tools=True, model_output_token_ids=generated
                )
            except Exception:  # a parser that cannot read a partial output: keep what streamed
                return None
            return found[position].arguments if found and position < len(found) else None

        return whole

    def _deltas(
        self, p: _Prepared, calls: ToolCallMapper, output: Any, token_ids: list[int], finished: bool
    ) -> list[Delta]:
        if p.parser is None:
            return [TextDelta(output.text, self._logprobs(p, output, token_ids))] if output.text else []
        if p.text_only:  # what parse_delta would return, without its per-step join of the whole output
            return (
                [TextDelta(output.text, _content_logprobs(self._logprobs(p, output, token_ids), output.text))]
                if output.text
                else []
            )
        try:
            message = p.parser.parse_delta(
                delta_text=output.text,
                delta_token_ids=token_ids,
                request=p.chat_request,
                prompt_token_ids=p.prompt_token_ids,
                finished=finished,
            )
        except Exception as exc:  # a parser bug must not fail the response: the rest is plain text
            logger.warning(
                "the reasoning/tool parser failed (%s: %s); the rest of this response streams as text",
                type(exc).__name__,
                exc,
            )
            p.parser = None
            return calls.finish() + self._deltas(p, calls, output, token_ids, finished)
        p.text_only = _text_only(p.parser, p.chat_request)
        if message is None:
            return []
        # Reasoning or text after a call closes it first: the arguments the mapper completes
        # at its close (see ToolCallMapper) must arrive while the call is still open.
        deltas: list[Delta] = []
        if message.reasoning and p.include_reasoning:
            deltas += calls.finish()
            deltas.append(ReasoningDelta(message.reasoning))
        if message.content:
            deltas += calls.finish()
            deltas.append(
                TextDelta(message.content, _content_logprobs(self._logprobs(p, output, token_ids), message.content))
            )
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
                    bytes=list(_token_text(chosen, token_id, self.tokenizer).encode("utf-8", "replace")),
                    top=[
                        TokenLogprob(
                            _token_text(lp, tid, self.tokenizer),
                            max(lp.logprob, -9999.0),
                            list(_token_text(lp, tid, self.tokenizer).encode("utf-8", "replace")),
                        )
                        for tid, lp in top
                    ],
                )
            )
        return result


# The prompt cache of the request being rendered: set only around our ``render_chat``, so
# upstream's routes, which share the renderer, tokenize exactly as before.
_PROMPT_CACHE: contextvars.ContextVar[PromptTokenizer | None] = contextvars.ContextVar(
    "vllm_responses_prompt_cache", default=None
)
_PROMPT_SALT: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "vllm_responses_prompt_salt", default=None
)  # its cache_salt


def _prompt_cache(renderer: Any, tokenizer: Any, max_bytes: int) -> PromptTokenizer | None:
    """A :class:`PromptTokenizer` for ``tokenizer``, put where vLLM's renderer tokenizes a
    rendered prompt (``_tokenize_prompt_async``: in its thread pool, after its length checks,
    before ``process_for_engine``). None where it is off, or vLLM's renderer has moved on."""
    if max_bytes <= 0 or tokenizer is None:
        return None
    original = getattr(renderer, "_tokenize_prompt_async", None)
    executor = getattr(renderer, "_executor", None)
    if (
        original is None
        or executor is None
        or not hasattr(renderer, "_build_tokens_prompt")
        or not hasattr(renderer, "_wants_offsets")
    ):
        logger.warning("prompt token cache off: this vLLM's renderer does not tokenize where this version expects")
        return None
    cache = PromptTokenizer(tokenizer, max_bytes)
    if not cache.enabled:
        return None

    async def tokenize(prompt: Any, params: Any) -> Any:
        active = _PROMPT_CACHE.get()
        if active is not None and isinstance(prompt.get("prompt"), str) and not renderer._wants_offsets(prompt, params):
            ids = await asyncio.get_running_loop().run_in_executor(
                executor, active.encode, prompt["prompt"], params.get_encode_kwargs(), _PROMPT_SALT.get()
            )
            if ids is not None:
                return renderer._build_tokens_prompt(ids, prompt)
        return await original(prompt, params)

    renderer._tokenize_prompt_async = tokenize
    return cache


def _text_only(parser: Any, chat_request: Any) -> bool:
    """Whether vLLM's parser can, from now on, only return each delta's text as content:
    vLLM's own ``DelegatingParser``, reasoning over, and no tool call possible (no tool
    parser, or a string-based one under ``tool_choice`` ``none``, its phase begun). Then its
    ``parse_delta`` re-joins the whole output so far on every step (quadratic in the output's
    length) to hand the delta back unchanged, and its end of generation adds nothing (an
    engine-based reasoning parser is not flushed once reasoning ended): the adapter skips it.
    Anything unexpected (another parser class, a vLLM that renamed these attributes) keeps it."""
    if not _plain_delegating(type(parser)):
        return False
    state = getattr(parser, "_stream_state", None)
    if state is None or getattr(state, "reasoning_ended", False) is not True:
        return False
    tools = getattr(parser, "_tool_parser", False)
    if tools is None:
        return True
    return (
        tools is not False
        and getattr(tools, "engine_based_streaming", True) is False
        and getattr(state, "tool_call_text_started", False) is True
        and chat_request.tool_choice == "none"
    )


# What _text_only relies on DelegatingParser doing (a subclass overriding one of them is kept).
_DELEGATING = ("parse_delta", "finalize_generation", "_extract_tool_calls_streaming", "_flush_engine_parsers")


@functools.cache
def _plain_delegating(cls: type) -> bool:
    """Whether a parser class does what _text_only relies on (once per class, not per step)."""
    return all(getattr(cls, name, None) is getattr(DelegatingParser, name) for name in _DELEGATING)


def _routing(request: ResponsesRequest) -> dict[str, Any]:
    """What vLLM's routes hand the engine beside the sampling parameters, read as they read
    it: the priority header over the body's ``priority``, the body's ``session_id`` over the
    header (then ``vllm_xargs``), the data-parallel rank header, the trace context."""
    headers = request.headers
    ext = request.extensions
    session_id = ext.get("session_id") or headers.get(SESSION_ID_HEADER.lower())
    xargs = ext.get("vllm_xargs") or {}
    if not session_id and isinstance(xargs.get("session_id"), str):
        session_id = xargs["session_id"]
    return {
        "priority": _int(headers.get(PRIORITY_HEADER.lower()), ext.get("priority", 0)),
        "session_id": session_id or None,
        "data_parallel_rank": _int(headers.get("x-data-parallel-rank"), None),
        "trace_headers": extract_trace_headers(headers) if contains_trace_headers(headers) else None,
    }


def _int(value: str | None, default: Any) -> Any:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def _has_images(messages: list[dict[str, Any]]) -> bool:
    return any(
        isinstance(part, dict) and part.get("type") == "image_url"
        for m in messages
        if isinstance(m.get("content"), list)
        for part in m["content"]
    )


def _image_error(exc: Exception, code: str) -> APIError:
    """An image vLLM could not load (fetch or decode), as a 400 the client can act on."""
    return invalid_request(
        f"An image in the input could not be loaded: {exc or type(exc).__name__}", param="input", code=code
    )


def _role(item: Any) -> str | None:
    return getattr(item, "role", None) if (getattr(item, "type", None) or "message") == "message" else None


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
    ends = {offset: len(logprobs)} | {
        start: i for start, i in starts.items()
    }  # offset where a token run ends -> next index
    joined = "".join(lp.token for lp in logprobs)
    at = joined.rfind(content)
    while at >= 0:
        if at in starts and at + len(content) in ends:
            return logprobs[starts[at] : ends[at + len(content)]]
        at = joined.rfind(content, 0, at + len(content) - 1)
    return None


def _client_error(exc: VLLMValidationError, grammar_param: str | None = None) -> APIError:
    """vLLM's parameter errors, in the Responses API's terms. A grammar that does not compile
    names no parameter in vLLM (0.32: xgrammar's check on submission; 0.33 also its compile
    error, which 0.32 reported as ``finish_reason="error"``): it names what the grammar came from."""
    message = exc.args[0] if exc.args else str(exc)
    if exc.parameter in ("input_tokens", "input_text"):
        return context_length_exceeded(message)
    param = _PARAMS.get(exc.parameter or "", exc.parameter)
    if param is None and grammar_param is not None and _GRAMMAR_ERROR.search(message):
        param = grammar_param
    return invalid_request(message, param=param)


# vLLM's messages for a structured-outputs constraint it cannot compile (xgrammar's checks, 0.33's
# "Invalid structured outputs: ..."), which carry no parameter name.
_GRAMMAR_ERROR = re.compile(r"grammar|schema|structured output|regex|choices", re.IGNORECASE)


def _grammar_param(request: ResponsesRequest) -> str | None:
    """What the request's grammar comes from, for the error when it does not compile, as the
    hosted API names it: ``text.format.schema``, the client's ``structured_outputs``, the forced
    function's ``tools[i].parameters``, else ``tools`` (``required``, strict tools, a namespace's).
    None: the request has no grammar."""
    fmt = request.text_format.get("type")
    if fmt == "json_schema":
        return "text.format.schema"
    if fmt == "json_object":
        return "text.format"
    if request.extensions.get("structured_outputs") is not None:
        return "structured_outputs"
    tools = request.tools or []
    choice = request.tool_choice
    if not tools or choice == "none":
        return None
    if isinstance(choice, dict) and choice.get("type") == "function":
        for i, tool in enumerate(tools):
            if getattr(tool, "type", None) == "function" and tool.name == choice.get("name"):
                return f"tools[{i}].parameters"
    return "tools"


def _refused(exc: GracefulHTTPError | GenerationError) -> APIError:
    """vLLM's refusals, with the status its own routes give them (``create_error_response``):
    a full queue (``QueueOverflowError``, ``MaxQueuedTokensError``: ``GracefulHTTPError``) and,
    in 0.33, a paused engine (``RetryableRequestError``) are 503s that clients retry."""
    if isinstance(exc, GracefulHTTPError):
        status, message = int(exc.http_status), exc.message
    else:
        status, message = int(getattr(exc, "status_code", HTTPStatus.INTERNAL_SERVER_ERROR)), str(exc)
    if status == HTTPStatus.SERVICE_UNAVAILABLE:
        return overloaded(message)
    if status == HTTPStatus.TOO_MANY_REQUESTS:
        return APIError(message, status=status, type="rate_limit_error", code="rate_limit_exceeded")
    if status >= 500:
        return APIError(message, status=status, type="server_error", code="server_error")
    return (
        invalid_request(message, code=None)
        if status == HTTPStatus.BAD_REQUEST
        else APIError(message, status=status, code=None)
    )


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
