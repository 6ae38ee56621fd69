"""Input items validated once per distinct JSON: the cache ``protocol.parse_items`` goes through
(see :mod:`..engine.prompt_tokens` for the story of both prompt caches)."""

import hashlib
from collections.abc import Callable
from typing import Any

import orjson

from ..common.errors import APIError
from ..common.lru import DEFAULT_MAX_BYTES, LRU, _salt_key

VALIDATE_CHUNK = 16  # items validated in one call (≈ 1 ms for a Codex tool loop's items)


class ValidatedItems:
    """Input items validated once per distinct JSON.

    ``validate(raw_items)`` is the one validation (``protocol.parse_items``'s); items it has
    validated before are taken from the cache, the others validated together. Any error is
    the whole list's, exactly as without the cache (paths name the item's index). The items
    handed out are shared between requests: code changes an item with ``model_copy``, never
    in place.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.lru: LRU[bytes, Any] = LRU(max_bytes)

    def validate(
        self, raw: list[Any], validate: Callable[[list[Any]], list[Any]], salt: str | None = None
    ) -> list[Any]:
        if self.lru.max_bytes <= 0 or not raw:
            return validate(raw)
        keyed = [_json_key(item, salt) for item in raw]
        keys = [k[0] if k is not None else None for k in keyed]
        out = [self.lru.get(key) if key is not None else None for key in keys]
        missing = [i for i, item in enumerate(out) if item is None]
        if not missing:
            return out
        if len(missing) == len(raw) and len(raw) <= VALIDATE_CHUNK:
            fresh = validate(raw)
        else:
            fresh = []
            try:
                # In chunks: off the event loop (a long body), the GIL can pass between them.
                for start in range(0, len(missing), VALIDATE_CHUNK):
                    fresh += validate([raw[i] for i in missing[start : start + VALIDATE_CHUNK]])
            except APIError:
                return validate(raw)  # the error as the whole list gives it (an item's index in the path)
        for i, item in zip(missing, fresh):
            out[i] = item
            entry = keyed[i]
            if entry is not None:
                self.lru.put(entry[0], item, _item_weight(raw[i], entry[1]))
        return out


def _json_key(item: Any, salt: str | None) -> tuple[bytes, int] | None:
    """A digest of the item's JSON (and of the request's ``cache_salt``: whether a text was
    seen before is not visible across salts), with the JSON's length. A digest, not the JSON:
    orjson's bytes keep a buffer of 4 KiB or more each, whatever their length."""
    try:
        data = orjson.dumps(item)  # the client's own key order: a client resends what it sent
    except TypeError:  # not plain JSON (a lone surrogate, an object): validated every time
        return None
    digest = hashlib.blake2b(data, digest_size=32, key=_salt_key(salt))
    return digest.digest(), len(data)


# What a validated item really takes, measured with tracemalloc on Codex-shaped histories
# (tests/unit/test_prompt_cache.py holds a full cache to its bound within 20%): its strings
# (≈ its JSON's length) plus ≈ ITEM_NODE_BYTES per JSON value (a pydantic model and its
# ``__dict__`` per object, a list per array, a field per value; 1.1 to 2.5 KB for a small
# item); the LRU adds its entry's own cost. Weighed at 2x their JSON, as before, a cache of
# such items took ≈ 9x its bound.
ITEM_NODE_BYTES = 200


def _item_weight(item: Any, json_len: int) -> int:
    return json_len + ITEM_NODE_BYTES * _nodes(item)


def _nodes(value: Any) -> int:
    """The JSON values in an item (no recursion: items may nest 100 deep)."""
    count, stack = 0, [value]
    while stack:
        node = stack.pop()
        count += 1
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return count


ITEMS = ValidatedItems()  # the process's; :func:`protocol.parse_items` goes through it
