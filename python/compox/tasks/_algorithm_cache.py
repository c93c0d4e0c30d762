"""The process-wide LRU of loaded runners (``runtime.md`` §9.4).

Keys are ``repr`` strings of (algorithm record, device override, checkpoint id, resolved
minor), so any change to the record is a miss. Values are ``(runner, assets, device)``. A
per-key lock makes concurrent misses for the same key load once; the slow load runs outside
the cache-wide lock so different algorithms can load in parallel.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Dict, Optional, Tuple

CacheKey = Tuple[str, str, str, str]
CacheValue = Tuple[Any, Dict[str, str], str]


def make_cache_key(
    algorithm_record: Any, override: Any, checkpoint_id: Any, minor: Any
) -> CacheKey:
    record, override_repr, checkpoint, minor_repr = (
        repr(part) for part in (algorithm_record, override, checkpoint_id, minor)
    )
    return record, override_repr, checkpoint, minor_repr


class AlgorithmCache:
    def __init__(self) -> None:
        self._entries: "OrderedDict[CacheKey, CacheValue]" = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: Dict[CacheKey, threading.Lock] = {}

    def get_or_load(
        self, key: CacheKey, maxsize: int, load: Callable[[], CacheValue]
    ) -> Tuple[CacheValue, bool]:
        """Return ``(value, hit)``; ``load`` runs at most once per key at a time."""
        hit = self._lookup(key)
        if hit is not None:
            return hit, True

        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            hit = self._lookup(key)
            if hit is not None:
                return hit, True
            value = load()
            with self._lock:
                self._entries[key] = value
                self._entries.move_to_end(key)
                while len(self._entries) > max(1, maxsize):
                    evicted, _ = self._entries.popitem(last=False)
                    self._key_locks.pop(evicted, None)
            return value, False

    def _lookup(self, key: CacheKey) -> Optional[CacheValue]:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._key_locks.clear()

    def keys(self) -> list:
        with self._lock:
            return list(self._entries)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


algorithm_cache = AlgorithmCache()
