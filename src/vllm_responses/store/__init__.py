"""Persistence of responses, their items, background events and conversations.

:class:`~.base.Store` is the interface; :func:`open_store` picks a backend from a URL:
``sqlite://PATH`` (the embedded default, :mod:`.sqlite`) or ``redis://HOST:PORT/DB``
(:mod:`.redis`, for several replicas and API processes).
"""

import os
from pathlib import Path

from .base import (
    ItemPage,
    Retention,
    Store,
    StoredConversation,
    StoredResponse,
    StoreUnavailable,
    visible,
)
from .metered import instrument_store

__all__ = [
    "ItemPage",
    "Retention",
    "Store",
    "StoredConversation",
    "StoredResponse",
    "StoreUnavailable",
    "default_url",
    "open_store",
    "visible",
]


def default_url() -> str:
    """A SQLite file under the user's cache directory (``$XDG_CACHE_HOME`` or ``~/.cache``)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return f"sqlite://{cache / 'vllm-responses' / 'responses.db'}"


def open_store(url: str, retention: Retention = Retention()) -> Store:
    """The backend for ``url``; raises ``ValueError`` for a scheme it does not know."""
    if url.startswith("sqlite://"):
        from .sqlite import SQLiteStore

        return instrument_store(SQLiteStore(Path(url.removeprefix("sqlite://")).expanduser(), retention))
    if url.startswith(("redis://", "rediss://", "unix://")):
        from .redis import RedisStore

        return instrument_store(RedisStore(url, retention))
    raise ValueError(f"unknown store URL {url!r}: use sqlite://PATH or redis://HOST:PORT/DB")
