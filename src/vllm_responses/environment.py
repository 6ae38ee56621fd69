"""The plugin's environment variables by name, and the vLLM general plugin that declares them.

vLLM checks every ``VLLM_*`` variable against its own registry (``vllm.envs``) while it builds
the engine config, before any endpoint plugin is loaded: each of ours drew "Unknown vLLM
environment variable detected" (read by users as "this setting is ignored"), and
``--fail-on-environ-validation`` refused to start. General plugins (entry point group
``vllm.general_plugins``, same name ``responses``, so ``VLLM_PLUGINS=responses`` allows both)
load before that check, in every vLLM process, engine core and workers included: this module
imports nothing of ours, and ``vllm.envs`` only when called. It is the one place outside the
engine adapter that touches vLLM, and only its registry of names.
"""

STORE = "VLLM_RESPONSES_STORE"
MAX_AGE = "VLLM_RESPONSES_STORE_MAX_AGE"
MAX_RESPONSES = "VLLM_RESPONSES_STORE_MAX_RESPONSES"
MAX_CONVERSATIONS = "VLLM_RESPONSES_STORE_MAX_CONVERSATIONS"
STORE_MAX_BYTES = "VLLM_RESPONSES_STORE_MAX_BYTES"
MAX_HISTORY = "VLLM_RESPONSES_MAX_HISTORY_BYTES"
REASONING_KEYS = "VLLM_RESPONSES_REASONING_KEYS"
LEASE = "VLLM_RESPONSES_LEASE_SECONDS"
CAPTURE_DIR = "VLLM_RESPONSES_CAPTURE_DIR"
CAPTURE_MAX_MB = "VLLM_RESPONSES_CAPTURE_MAX_MB"
MAX_BODY = "VLLM_RESPONSES_MAX_BODY_BYTES"
KEEPALIVE = "VLLM_RESPONSES_KEEPALIVE_SECONDS"
WS_MAX_SECONDS = "VLLM_RESPONSES_WS_MAX_SECONDS"
WS_MAX_MESSAGE = "VLLM_RESPONSES_WS_MAX_MESSAGE_BYTES"
WS_MAX_IN_FLIGHT = "VLLM_RESPONSES_WS_MAX_IN_FLIGHT"
PROMPT_CACHE_MB = "VLLM_RESPONSES_PROMPT_CACHE_MB"
FILES_MAX_COUNT = "VLLM_RESPONSES_FILES_MAX_COUNT"
FILES_MAX_BYTES = "VLLM_RESPONSES_FILES_MAX_BYTES"
FILE_PARSE_SECONDS = "VLLM_RESPONSES_FILE_PARSE_SECONDS"
FILE_PARSE_MB = "VLLM_RESPONSES_FILE_PARSE_MB"

MAX_INPUT_ITEMS = "VLLM_RESPONSES_MAX_INPUT_ITEMS"
MAX_TOOLS = "VLLM_RESPONSES_MAX_TOOLS"
MAX_TOOLS_BYTES = "VLLM_RESPONSES_MAX_TOOLS_BYTES"
MAX_BACKGROUND = "VLLM_RESPONSES_MAX_BACKGROUND"
WS_MAX_CONNECTIONS = "VLLM_RESPONSES_WS_MAX_CONNECTIONS"
WS_CACHE_MAX_BYTES = "VLLM_RESPONSES_WS_CACHE_MAX_BYTES"
TENANCY = "VLLM_RESPONSES_TENANCY"
UNOFFERED_TOOLS = "VLLM_RESPONSES_UNOFFERED_TOOLS"
# Remote MCP servers (core/mcp_client.py): per-request allow-list, limits, operator tool servers.
MCP_ALLOWED_URLS = "VLLM_RESPONSES_MCP_ALLOWED_URLS"
MCP_LIST_TIMEOUT = "VLLM_RESPONSES_MCP_LIST_TIMEOUT_SECONDS"
MCP_CALL_TIMEOUT = "VLLM_RESPONSES_MCP_CALL_TIMEOUT_SECONDS"
MCP_MAX_BYTES = "VLLM_RESPONSES_MCP_MAX_BYTES"
TOOL_SERVERS = "VLLM_RESPONSES_TOOL_SERVERS"


NAMES = (
    STORE,
    MAX_AGE,
    MAX_RESPONSES,
    MAX_CONVERSATIONS,
    REASONING_KEYS,
    LEASE,
    CAPTURE_DIR,
    CAPTURE_MAX_MB,
    MAX_BODY,
    KEEPALIVE,
    WS_MAX_SECONDS,
    WS_MAX_MESSAGE,
    WS_MAX_IN_FLIGHT,
    PROMPT_CACHE_MB,
    STORE_MAX_BYTES,
    MAX_HISTORY,
)
NAMES += (FILES_MAX_COUNT, FILES_MAX_BYTES, FILE_PARSE_SECONDS, FILE_PARSE_MB)
NAMES += (MAX_INPUT_ITEMS, MAX_TOOLS, MAX_TOOLS_BYTES, MAX_BACKGROUND, WS_MAX_CONNECTIONS, WS_CACHE_MAX_BYTES)
NAMES += (TENANCY,)
NAMES += (UNOFFERED_TOOLS,)
NAMES += (MCP_ALLOWED_URLS, MCP_LIST_TIMEOUT, MCP_CALL_TIMEOUT, MCP_MAX_BYTES, TOOL_SERVERS)


def declare_to_vllm() -> None:
    """The general plugin: our names join vLLM's registry, so vLLM's check passes them (a
    misspelt one is still reported). Their getter answers ``None`` whatever the value: vLLM
    hashes every registered variable's value into its torch.compile cache key, and a new store
    URL or reasoning key must not cost a recompilation (nor put a key into a hash input).

    Never raises: vLLM calls general plugins unguarded, in every process, whether or not the
    endpoint plugin is enabled; a vLLM whose registry moved gets its warnings back, nothing
    worse."""
    try:
        from vllm import envs

        registry = envs.environment_variables
        for name in NAMES:
            registry.setdefault(name, _not_for_vllm)
    except Exception:  # noqa: BLE001 - see above
        pass


def _not_for_vllm() -> None:
    return None
