"""A thread-safe least-recently-used map bounded by bytes, and the salted keys of the caches built on it."""

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
_ENTRY_OVERHEAD = 200  # bytes an entry costs beyond its key and value (dict slot, link, tuple, int)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A thread-safe least-recently-used map bounded by bytes and entries (callers say what
    an entry weighs). Tokenization runs in vLLM's thread pool; validation on the event loop."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, max_entries: int = 1_000_000) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._data: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: K) -> V | None:
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: K, value: V, weight: int) -> None:
        weight += _ENTRY_OVERHEAD
        if weight > self.max_bytes:
            return  # would evict everything else: not worth keeping
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            self._data[key] = (value, weight)
            self.bytes += weight
            while self.bytes > self.max_bytes or len(self._data) > self.max_entries:
                _, (_, w) = self._data.popitem(last=False)
                self.bytes -= w

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.bytes = 0


def _salt_key(salt: str | None) -> bytes:
    return hashlib.blake2b(salt.encode("utf-8", "surrogatepass"), digest_size=32).digest() if salt else b""
