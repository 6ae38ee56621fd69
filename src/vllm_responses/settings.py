"""Every setting of the plugin, read from the environment in one place.

vLLM owns the command line, so the plugin is configured through ``VLLM_RESPONSES_*``
environment variables (documented in docs/operations.md). Bad values fail at start-up with a
message naming the variable, never later in a request.
"""

import base64
import binascii
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from .common.logs import redact_url
from .environment import (
    CAPTURE_DIR,
    CAPTURE_MAX_MB,
    FILE_PARSE_MB,
    FILE_PARSE_SECONDS,
    FILES_MAX_BYTES,
    FILES_MAX_COUNT,
    KEEPALIVE,
    LEASE,
    MAX_AGE,
    MAX_BACKGROUND,
    MAX_BODY,
    MAX_CONVERSATIONS,
    MAX_HISTORY,
    MAX_INPUT_ITEMS,
    MAX_RESPONSES,
    MAX_TOOLS,
    MAX_TOOLS_BYTES,
    MCP_ALLOWED_URLS,
    MCP_CALL_TIMEOUT,
    MCP_LIST_TIMEOUT,
    MCP_MAX_BYTES,
    PROMPT_CACHE_MB,
    REASONING_KEYS,
    STORE,
    STORE_MAX_BYTES,
    TENANCY,
    TOOL_SERVERS,
    UNOFFERED_TOOLS,
    WS_CACHE_MAX_BYTES,
    WS_MAX_CONNECTIONS,
    WS_MAX_IN_FLIGHT,
    WS_MAX_MESSAGE,
    WS_MAX_SECONDS,
)
from .store import Retention, default_url

DEFAULT_CAPTURE_MAX = 1024 * 1024 * 1024  # the capture directory's bound (:mod:`.capture`)

# Whether API keys are tenants (:mod:`.tenancy`).
Tenancy = Literal["per-key", "shared"]
MODES: tuple[Tenancy, ...] = ("per-key", "shared")

# The stored history one request may continue (a chain or a conversation), counted as it
# loads: past it, 400 ``history_too_large`` (history.py); as much as one request body may carry.
DEFAULT_MAX_HISTORY_BYTES = 64 * 1024 * 1024

DEFAULT_MAX_BODY = 64 * 1024 * 1024
DEFAULT_WS_MAX_MESSAGE = 16 * 1024 * 1024  # uvicorn's own frame limit (``--ws-max-size``)


@dataclass(frozen=True)
class FileLimits:
    """``max_files``, ``max_bytes``: files in one prompt and their decoded bytes together.
    ``parse_s``: seconds all PDFs of one request may take to read. ``parse_memory_bytes``:
    the address space of the process that reads one."""

    max_files: int = 32
    max_bytes: int = 32 * 1024 * 1024
    parse_s: float = 10.0
    parse_memory_bytes: int = 1024 * 1024 * 1024


# What a request's tools of types the model is not offered get (docs/events.md#tools):
# ``accept`` (Codex sends ``web_search`` on every turn) or ``reject`` (400 ``unsupported_value``).
UnofferedTools = Literal["accept", "reject"]
UNOFFERED_MODES: tuple[UnofferedTools, ...] = ("accept", "reject")


@dataclass(frozen=True)
class RequestLimits:
    """What one create request may carry (:mod:`.protocol` holds each body to them): input
    items (a long Codex session resends a few thousand), tools, and the tools' JSON size
    (hosted tools are echoed and stored as sent: a 5 MB ``file_search`` tool would be kept
    in every response of a chain). ``unoffered_tools``: tools of types the model is not
    offered are accepted (named in a response header, warned about once per type) or refused."""

    max_input_items: int = 20_000
    max_tools: int = 512
    max_tools_bytes: int = 4 * 1024 * 1024
    unoffered_tools: UnofferedTools = "accept"


@dataclass(frozen=True)
class McpSettings:
    """Remote MCP servers the server calls on a request's behalf (:mod:`.mcp_client`).
    ``allowed_urls``: where a request's own ``server_url`` may point: URL prefixes
    (``https://mcp.example.com/v1/``) or hosts (``mcp.example.com``, ``mcp.example.com:8443``);
    empty: no request may name a ``server_url``. ``list_timeout_s``, ``call_timeout_s``: the
    deadline of one listing / one tool call, connection included. ``max_bytes``: what one of
    them may read from the server. ``tool_servers``: the operator's named servers, ``(label,
    url)``; always allowed, whatever ``allowed_urls`` says."""

    allowed_urls: tuple[str, ...] = ()
    list_timeout_s: float = 10.0
    call_timeout_s: float = 60.0
    max_bytes: int = 4 * 1024 * 1024
    tool_servers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Settings:
    """``store_url``: ``sqlite://PATH`` or ``redis://HOST:PORT/DB``.
    ``retention``: what the store keeps (age in seconds, counts, bytes; ``0`` = no limit).
    ``max_history_bytes``: a chain of previous responses past this many stored bytes is refused (400).
    ``reasoning_keys``: 32-byte AES keys; the first seals, all open (rotation). Empty: a
    random key per process.
    ``lease_s``: a process that has not proved it is alive for this long is dead, and the
    responses it was running are marked failed.
    ``capture_dir``: debugging aid, every stream is also written there.
    ``capture_max_bytes``: capturing stops once the capture directory holds this much.
    ``max_body_bytes``: larger request bodies are refused (413) before they are read whole.
    ``ws_max_s``, ``ws_max_message_bytes``, ``ws_max_in_flight``: a WebSocket connection on
    ``/v1/responses`` lasts at most this long (OpenAI's limit is 60 minutes), takes messages
    up to this size, and holds at most this many ``response.create`` messages at once (the
    one running and those queued behind it).
    ``keepalive_s``: an SSE stream silent this long (queued, a long prefill) gets a comment
    line, so proxies and clients with idle timeouts keep it; ``0`` switches them off.
    ``requests``: :class:`RequestLimits`. ``max_background``: background responses running at
    once in this process; ``ws_max_connections``: WebSocket connections open at once in this
    process; ``ws_cache_max_bytes``: the largest last turn (JSON bytes of its items) a
    connection keeps in memory for its next turn (a larger one is read back from the store).
    ``prompt_cache_bytes``: what each of the API process's two prompt caches (validated input
    items, tokenized prompt pieces; :mod:`.prompt_cache`) may hold; ``0`` switches them off.
    ``tenancy``: with several API keys, ``per-key`` keeps each key's stored state its own,
    ``shared`` lets every key see all of it (:mod:`.tenancy`).
    """

    store_url: str = field(default_factory=default_url)
    retention: Retention = Retention()
    reasoning_keys: tuple[bytes, ...] = ()
    lease_s: float = 10.0
    capture_dir: str | None = None
    capture_max_bytes: int = DEFAULT_CAPTURE_MAX
    max_body_bytes: int = DEFAULT_MAX_BODY
    ws_max_s: float = 3600.0
    ws_max_message_bytes: int = DEFAULT_WS_MAX_MESSAGE
    ws_max_in_flight: int = 8
    keepalive_s: float = 10.0
    prompt_cache_bytes: int = 64 * 1024 * 1024
    max_history_bytes: int = DEFAULT_MAX_HISTORY_BYTES
    # ``input_file`` parts: see :class:`FileLimits`.
    files: FileLimits = FileLimits()
    requests: RequestLimits = RequestLimits()
    max_background: int = 256
    ws_max_connections: int = 256
    ws_cache_max_bytes: int = 16 * 1024 * 1024
    tenancy: Tenancy = "per-key"
    mcp: McpSettings = McpSettings()

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "Settings":
        defaults = Retention()
        return cls(
            store_url=env.get(STORE) or default_url(),
            retention=Retention(
                max_age_s=_limit(env, MAX_AGE, defaults.max_age_s, float),
                max_responses=_limit(env, MAX_RESPONSES, defaults.max_responses, int),
                max_conversations=_limit(env, MAX_CONVERSATIONS, defaults.max_conversations, int),
                max_bytes=_limit(env, STORE_MAX_BYTES, defaults.max_bytes, int),
            ),
            reasoning_keys=_keys(env.get(REASONING_KEYS, "")),
            lease_s=_number(env, LEASE, 10.0, float, minimum=1.0),
            capture_dir=env.get(CAPTURE_DIR) or None,
            capture_max_bytes=int(
                _number(env, CAPTURE_MAX_MB, DEFAULT_CAPTURE_MAX / (1024 * 1024), float, minimum=1) * 1024 * 1024
            ),
            max_body_bytes=int(_number(env, MAX_BODY, DEFAULT_MAX_BODY, int, minimum=1024)),
            ws_max_s=_number(env, WS_MAX_SECONDS, 3600.0, float, minimum=1.0),
            ws_max_message_bytes=int(_number(env, WS_MAX_MESSAGE, DEFAULT_WS_MAX_MESSAGE, int, minimum=1024)),
            ws_max_in_flight=int(_number(env, WS_MAX_IN_FLIGHT, 8, int, minimum=1)),
            keepalive_s=_number(env, KEEPALIVE, 10.0, float),
            prompt_cache_bytes=int(_number(env, PROMPT_CACHE_MB, 64, float) * 1024 * 1024),
            max_history_bytes=int(_number(env, MAX_HISTORY, DEFAULT_MAX_HISTORY_BYTES, int, minimum=1024)),
            files=_file_limits(env),
            requests=RequestLimits(
                max_input_items=int(_number(env, MAX_INPUT_ITEMS, RequestLimits.max_input_items, int, minimum=1)),
                max_tools=int(_number(env, MAX_TOOLS, RequestLimits.max_tools, int, minimum=1)),
                max_tools_bytes=int(_number(env, MAX_TOOLS_BYTES, RequestLimits.max_tools_bytes, int, minimum=1024)),
                unoffered_tools=_unoffered_tools(env),
            ),
            max_background=int(_number(env, MAX_BACKGROUND, 256, int, minimum=1)),
            ws_max_connections=int(_number(env, WS_MAX_CONNECTIONS, 256, int, minimum=1)),
            ws_cache_max_bytes=int(_number(env, WS_CACHE_MAX_BYTES, 16 * 1024 * 1024, int)),
            tenancy=tenancy_from_env(env),
            mcp=_mcp(env),
        )


def tenancy_from_env(env: Mapping[str, str] = os.environ) -> Tenancy:
    """``VLLM_RESPONSES_TENANCY``: ``per-key`` (the default) or ``shared``. Read on its own by
    the key gate, which is built before the rest of the settings are."""
    raw = (env.get(TENANCY) or "per-key").strip().lower()
    for mode in MODES:
        if raw == mode:
            return mode
    raise ValueError(f"{TENANCY}={raw!r} must be one of: {', '.join(MODES)}")


def _unoffered_tools(env: Mapping[str, str]) -> UnofferedTools:
    raw = (env.get(UNOFFERED_TOOLS) or "accept").strip().lower()
    for mode in UNOFFERED_MODES:
        if raw == mode:
            return mode
    raise ValueError(f"{UNOFFERED_TOOLS}={raw!r} must be one of: {', '.join(UNOFFERED_MODES)}")


def _file_limits(env: Mapping[str, str]) -> FileLimits:
    d = FileLimits()
    return FileLimits(
        max_files=int(_number(env, FILES_MAX_COUNT, d.max_files, int, minimum=1)),
        max_bytes=int(_number(env, FILES_MAX_BYTES, d.max_bytes, int, minimum=1024)),
        parse_s=_number(env, FILE_PARSE_SECONDS, d.parse_s, float, minimum=0.5),
        parse_memory_bytes=int(
            _number(env, FILE_PARSE_MB, d.parse_memory_bytes // (1024 * 1024), int, minimum=128) * 1024 * 1024
        ),
    )


def _mcp(env: Mapping[str, str]) -> McpSettings:
    d = McpSettings()
    return McpSettings(
        allowed_urls=tuple(_allowed(entry) for entry in _entries(env.get(MCP_ALLOWED_URLS, ""))),
        list_timeout_s=_number(env, MCP_LIST_TIMEOUT, d.list_timeout_s, float, minimum=0.1),
        call_timeout_s=_number(env, MCP_CALL_TIMEOUT, d.call_timeout_s, float, minimum=0.1),
        max_bytes=int(_number(env, MCP_MAX_BYTES, d.max_bytes, int, minimum=1024)),
        tool_servers=_tool_servers(env.get(TOOL_SERVERS, "")),
    )


def _entries(raw: str) -> list[str]:
    return [entry.strip() for entry in raw.split(",") if entry.strip()]


def _allowed(entry: str) -> str:
    """An allow-list entry as it is matched: a URL prefix (``http(s)://host[:port][/path]``) or
    a host (``host`` or ``host:port``), lower-cased where case does not matter."""
    if "://" in entry:
        http_url(entry, MCP_ALLOWED_URLS)
        return entry
    parts = urlsplit("//" + entry)
    try:
        parts.port  # noqa: B018 - raises on a bad port
        bad = not parts.hostname or bool(parts.path or parts.query) or parts.username is not None
    except ValueError:
        bad = True
    if bad:
        shown = "an entry with credentials" if "@" in entry else repr(entry)
        raise ValueError(f"{MCP_ALLOWED_URLS}: {shown} is neither a URL prefix (https://host/path) nor a host")
    return entry.lower()


def http_url(url: str, name: str) -> None:
    """Refuses (ValueError naming ``name``) anything but an ``http``/``https`` URL with a host
    and no credentials in it."""
    shown = redact_url(url)  # a password in it stays out of the message
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(f"{name}: {shown!r} is not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username is not None:
        raise ValueError(f"{name}: {shown!r} must be an http:// or https:// URL with a host and no credentials")


_LABEL = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _tool_servers(raw: str) -> tuple[tuple[str, str], ...]:
    """``label=url,label=url``: the operator's MCP servers, by a label of letters, digits,
    ``_`` and ``-``."""
    servers: dict[str, str] = {}
    for entry in _entries(raw):
        label, sep, url = (part.strip() for part in entry.partition("="))
        if not sep or not _LABEL.fullmatch(label):
            raise ValueError(f"{TOOL_SERVERS}: {entry!r} is not label=url (a label of letters, digits, _ and -)")
        if label in servers:
            raise ValueError(f"{TOOL_SERVERS}: the label {label!r} is given twice")
        http_url(url, TOOL_SERVERS)
        servers[label] = url
    return tuple(servers.items())


def _number(env: Mapping[str, str], name: str, default: float, kind: type, minimum: float = 0) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise ValueError(f"{name}={raw!r} must be at least {minimum}")
    return value


def _limit(env: Mapping[str, str], name: str, default: float | None, kind: type) -> float | None:
    """A retention limit: unset keeps the default, ``0`` switches that limit off."""
    if not env.get(name):
        return default
    return _number(env, name, 0, kind) or None


def _keys(raw: str) -> tuple[bytes, ...]:
    keys = []
    for i, text in enumerate(k.strip() for k in raw.split(",")):
        if not text:
            continue
        try:
            key = base64.b64decode(
                text + "=" * (-len(text) % 4), altchars=b"-_" if ("-" in text or "_" in text) else None, validate=True
            )
        except (binascii.Error, ValueError):
            raise ValueError(f"{REASONING_KEYS}: key {i + 1} is not base64") from None
        if len(key) != 32:
            raise ValueError(
                f"{REASONING_KEYS}: key {i + 1} is {len(key)} bytes; AES-256 keys are 32 bytes (e.g. `openssl rand "
                "-base64 32`)"
            )
        keys.append(key)
    return tuple(keys)
