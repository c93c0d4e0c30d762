"""Sessions: Python objects kept in memory between executions sharing a ``session_token``.

``TaskSession.data_caches`` is one process-wide dict ``{token: {"data_cache", "time_created"}}``
guarded by a class-level lock. Sessions expire ``expire_hours`` after creation. When the
number of sessions is at its limit, the oldest one is evicted, but (unlike the original) only
when a new session is actually created by its first ``add_item``, so resuming a session or
running an execution that never uses one evicts nothing.

``DataCache`` is the per-session LRU of items, bounded by item count and optionally by the
shallow ``sys.getsizeof`` sum of its items.
"""

from __future__ import annotations

import sys
import threading
import uuid
from collections import OrderedDict
from datetime import datetime, timedelta
from typing import Any, ClassVar, Dict, List, Optional, Type

_NOT_IMPLEMENTED_MESSAGE = (
    "Task sessions are not available with this executor; they need "
    "inference.backend_settings.executor = fastapi_background_tasks."
)


class DataCache:
    """An LRU of session items."""

    def __init__(self, max_size: int = 5, max_memory_mb: Optional[float] = None) -> None:
        self.max_size = max_size
        self.max_memory_mb = max_memory_mb
        self._items: "OrderedDict[str, Any]" = OrderedDict()
        self.removed_keys_len: List[str] = []
        self.removed_keys_memory: List[str] = []

    def add_item(self, obj: Any, key: str) -> None:
        if key in self._items:
            # Re-adding a key is an update: it replaces the value and becomes most recent.
            self._items[key] = obj
            self._items.move_to_end(key)
            return

        if len(self._items) >= self.max_size and self._items:
            evicted, _ = self._items.popitem(last=False)
            self.removed_keys_len.append(evicted)

        if self.max_memory_mb is not None:
            limit = self.max_memory_mb * 1024 * 1024
            while len(self._items) > 1 and self._shallow_size() >= limit:
                evicted, _ = self._items.popitem(last=False)
                self.removed_keys_memory.append(evicted)

        self._forget_removal(key)
        self._items[key] = obj

    def __getitem__(self, key: str) -> Any:
        if key not in self._items:
            if key in self.removed_keys_len:
                raise KeyError(
                    f"Key {key} was evicted because the cache holds at most "
                    f"{self.max_size} items."
                )
            if key in self.removed_keys_memory:
                raise KeyError(
                    f"Key {key} was evicted because the cache exceeded "
                    f"{self.max_memory_mb} MB."
                )
            raise KeyError(f"Key {key} not found in the cache.")
        self._items.move_to_end(key)
        return self._items[key]

    def remove_item(self, key: str) -> None:
        self._items.pop(key, None)

    def clear(self) -> None:
        self._items.clear()

    def keys(self) -> List[str]:
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def _shallow_size(self) -> int:
        return sum(sys.getsizeof(value) for value in self._items.values())

    def _forget_removal(self, key: str) -> None:
        for removed in (self.removed_keys_len, self.removed_keys_memory):
            while key in removed:
                removed.remove(key)


class TaskSession:
    """Access to one session of the process-wide session store."""

    data_caches: ClassVar[Dict[str, Dict[str, Any]]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        session_token: Optional[str] = None,
        max_number_of_data_caches: int = 5,
        max_cache_size: int = 5,
        max_cache_memory_mb: Optional[float] = None,
        expire_hours: float = 24,
        not_implemented: bool = False,
    ) -> None:
        self._session_token = session_token or str(uuid.uuid1())
        self.max_number_of_data_caches = max_number_of_data_caches
        self.max_cache_size = max_cache_size
        self.max_cache_memory_mb = max_cache_memory_mb
        self.expire_hours = expire_hours
        self.not_implemented = not_implemented
        with self._lock:
            self._drop_expired()

    def __enter__(self) -> "TaskSession":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        # Sessions outlive the execution on purpose; nothing to release.
        return None

    @property
    def session_token(self) -> Optional[str]:
        return None if self.not_implemented else self._session_token

    def add_item(self, obj: Any, key: str) -> None:
        self._require_implemented()
        with self._lock:
            entry = self.data_caches.get(self._session_token)
            if entry is None:
                self._drop_expired()
                while len(self.data_caches) >= self.max_number_of_data_caches:
                    del self.data_caches[self._oldest_token()]
                entry = {
                    "data_cache": DataCache(self.max_cache_size, self.max_cache_memory_mb),
                    "time_created": datetime.now(),
                }
                self.data_caches[self._session_token] = entry
            entry["data_cache"].add_item(obj, key)

    def __getitem__(self, key: str) -> Any:
        self._require_implemented()
        entry = self.data_caches.get(self._session_token)
        missing = KeyError(f"Key {key} not found in cache for session {self._session_token}")
        if entry is None:
            raise missing
        try:
            return entry["data_cache"][key]
        except KeyError:
            raise missing from None

    def remove_item(self, key: str) -> None:
        self._require_implemented()
        entry = self.data_caches.get(self._session_token)
        if entry is None:
            raise KeyError(f"Session {self._session_token} not found.")
        entry["data_cache"].remove_item(key)

    def clear_cache(self) -> None:
        self._require_implemented()
        entry = self.data_caches.get(self._session_token)
        if entry is None:
            raise KeyError(f"Session {self._session_token} not found.")
        entry["data_cache"].clear()

    def __len__(self) -> int:
        return len(self.data_caches)

    def __contains__(self, token: object) -> bool:
        return token in self.data_caches

    @classmethod
    def reset_all(cls: Type["TaskSession"]) -> None:
        """Drop every session of the process (tests use this)."""
        with cls._lock:
            cls.data_caches.clear()

    def _oldest_token(self) -> str:
        return min(self.data_caches, key=lambda t: self.data_caches[t]["time_created"])

    def _drop_expired(self) -> None:
        limit = datetime.now() - timedelta(hours=self.expire_hours)
        for token in [t for t, e in self.data_caches.items() if e["time_created"] < limit]:
            del self.data_caches[token]

    def _require_implemented(self) -> None:
        if self.not_implemented:
            raise NotImplementedError(_NOT_IMPLEMENTED_MESSAGE)
