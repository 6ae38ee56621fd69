"""What each top-level request parameter does here, in one table: nothing is silently dropped.

Every name a ``POST /v1/responses`` body may carry falls in exactly one class:

- the Responses API's own parameters (``openai``'s ``ResponseCreateParamsBase``), honoured
  by :mod:`.protocol` and the engine adapter, except those listed below;
- :data:`NO_EFFECT`: accepted, echoed where the response has the field, but they change
  nothing here (with the reason, for docs/events.md);
- :data:`REFUSED`: what we cannot do; asking for it is a 400 ``unsupported_parameter``;
- :data:`CHAT_HABITS`: chat-completions parameters sent by habit; a 400 naming the
  Responses equivalent;
- :data:`VLLM_EXTENSIONS`: vLLM's own extensions, which upstream's ``/v1/responses``
  accepts; passed to the engine adapter as sent (vLLM validates and applies them exactly
  as on its own routes);
- anything else: 400 ``unknown_parameter``, as OpenAI answers.
"""

from typing import Any

from ..common.errors import invalid_request

# Parameters that ask for nothing this server would do differently.
NO_EFFECT: dict[str, str] = {
    "user": "an identifier for abuse monitoring; echoed",
    "safety_identifier": "an identifier for abuse monitoring; echoed",
    "prompt_cache_key": "vLLM's prefix cache needs no key (use `cache_salt` to separate caches); echoed",
    "prompt_cache_retention": "vLLM's prefix cache keeps blocks while memory allows",
    "prompt_cache_options": "vLLM's prefix cache keeps blocks while memory allows",
    "service_tier": "one tier; the response says `default`",
    "stream_options": "`include_obfuscation`: no obfuscation padding is ever sent",
    "client_metadata": "client bookkeeping (Codex sends it)",
    "background_options": "background runs need no options here",
    "image": "options of the hosted image tool, which is never offered",
    "mm_payload": "vLLM's render-endpoint option; ignored on generation, as upstream does",
    "return_mm_kwargs": "vLLM's render-endpoint option; ignored on generation, as upstream does",
}

# Parameters whose request we cannot honour: name → why (a value of None, false or empty
# asks for nothing and is accepted).
REFUSED: dict[str, str] = {
    "prompt": "stored prompt templates live on OpenAI's platform; send `instructions` and `input` instead",
    "moderation": "no moderation model runs here",
    "access_programs": "access programs are an OpenAI platform feature",
    "enable_response_messages": "upstream vLLM's debugging output of rendered messages is not offered",
    "previous_input_messages": "harmony-format message history (gpt-oss only); use `previous_response_id` or `input`",
}

# Chat-completions parameters → what the Responses API calls them.
CHAT_HABITS: dict[str, str] = {
    "max_tokens": "`max_output_tokens`",
    "max_completion_tokens": "`max_output_tokens`",
    "messages": "`input` (and `instructions` for the system message)",
    "response_format": "`text.format`",
    "functions": '`tools` (each `{"type": "function", "name", "parameters"}`)',
    "function_call": "`tool_choice`",
    "logprobs": '`include: ["message.output_text.logprobs"]` with `top_logprobs`',
    "n": "separate requests: a response holds one answer",
    "modalities": "the output item types: text is the only output here",
    "audio": "nothing: audio output is not supported",
    "prediction": "nothing: predicted outputs are not supported",
    "web_search_options": "a `web_search` tool (not run by this server)",
}

# vLLM's extensions to the Responses API (upstream's ResponsesRequest), applied by vLLM.
VLLM_EXTENSIONS: frozenset[str] = frozenset(
    {
        "cache_salt",
        "chat_template_kwargs",
        "ec_transfer_params",
        "frequency_penalty",
        "ignore_eos",
        "include_reasoning",
        "include_stop_str_in_output",
        "kv_transfer_params",
        "logit_bias",
        "media_io_kwargs",
        "min_p",
        "mm_processor_kwargs",
        "presence_penalty",
        "priority",
        "repetition_penalty",
        "request_id",
        "seed",
        "session_id",
        "skip_special_tokens",
        "spaces_between_special_tokens",
        "stop",
        "stop_token_ids",
        "structured_outputs",
        "top_k",
        "vllm_xargs",
        "watermarking",
    }
)


def split_extensions(data: dict[str, Any], known: frozenset[str]) -> dict[str, Any]:
    """Check every top-level name of a request body; return vLLM's extensions it carries.

    ``known``: the Responses API's own parameter names.
    """
    extensions: dict[str, Any] = {}
    for name, value in data.items():
        if name in REFUSED:
            if value not in (None, False, [], {}, ""):
                raise invalid_request(
                    f"Unsupported parameter: '{name}': {REFUSED[name]}.", param=name, code="unsupported_parameter"
                )
        elif name in known or name in NO_EFFECT:
            continue
        elif name in VLLM_EXTENSIONS:
            if value is not None:
                extensions[name] = value
        elif name in CHAT_HABITS:
            raise invalid_request(
                f"Unsupported parameter: '{name}'. In the Responses API, use {CHAT_HABITS[name]} instead.",
                param=name,
                code="unsupported_parameter",
            )
        else:
            raise invalid_request(f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter")
    return extensions
