"""Task sessions and their LRU caches (runtime.md §10)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from compox._bridge_memory import InMemoryBridge
from compox.exceptions import CompoxStateError, CompoxTaskError
from compox.tasks.DebuggingTaskHandler import DebuggingTaskHandler
from compox.tasks.TaskHandler import TaskHandler
from compox.tasks.TaskSession import DataCache, TaskSession


def test_data_cache_evicts_least_recently_used():
    cache = DataCache(max_size=2)
    cache.add_item("a", "a")
    cache.add_item("b", "b")
    assert cache["a"] == "a"  # a becomes most recent
    cache.add_item("c", "c")
    assert cache.keys() == ["a", "c"]
    assert cache.removed_keys_len == ["b"]
    with pytest.raises(KeyError, match="at most 2 items"):
        cache["b"]
    with pytest.raises(KeyError, match="not found"):
        cache["zzz"]


def test_data_cache_readding_a_key_updates_and_moves_to_front():
    cache = DataCache(max_size=2)
    cache.add_item(1, "a")
    cache.add_item(2, "b")
    cache.add_item(3, "a")
    assert cache.keys() == ["b", "a"] and cache["a"] == 3 and len(cache) == 2
    cache.add_item(4, "c")
    assert cache.keys() == ["a", "c"]


def test_data_cache_memory_limit():
    cache = DataCache(max_size=10, max_memory_mb=1)
    cache.add_item(b"x" * 700_000, "one")
    cache.add_item(b"x" * 700_000, "two")  # below the limit before inserting
    cache.add_item(b"x" * 10, "three")  # 1.4 MB present: evict until one item remains
    assert cache.keys() == ["two", "three"]
    assert cache.removed_keys_memory == ["one"]
    with pytest.raises(KeyError, match="MB"):
        cache["one"]
    cache.remove_item("missing")
    cache.clear()
    assert len(cache) == 0 and "two" not in cache


def test_session_lookup_errors():
    session = TaskSession("tok")
    with pytest.raises(KeyError, match="Key k not found in cache for session tok"):
        session["k"]
    with pytest.raises(KeyError):
        session.remove_item("k")
    session.add_item(1, "k")
    session.remove_item("other")  # missing key in an existing session: no-op
    assert session["k"] == 1
    with pytest.raises(KeyError, match="Key z not found in cache for session tok"):
        session["z"]
    session.clear_cache()
    with pytest.raises(KeyError):
        session["k"]


def test_generated_tokens_are_uuid1():
    token = TaskSession().session_token
    assert len(token) == 36 and token[14] == "1"


def test_eviction_happens_only_when_a_session_is_created():
    for index in range(5):
        TaskSession(f"t{index}").add_item(index, "k")
    assert len(TaskSession()) == 5
    TaskSession("t0")  # resuming or constructing evicts nothing
    TaskSession("unused")
    assert "t0" in TaskSession() and len(TaskSession()) == 5
    TaskSession("t0").add_item(9, "other")  # existing session: still nothing evicted
    assert len(TaskSession()) == 5
    TaskSession("new").add_item(1, "k")
    assert "t0" not in TaskSession() and "new" in TaskSession()
    assert len(TaskSession()) == 5


def test_sessions_expire_after_creation_time():
    TaskSession("old").add_item(1, "k")
    TaskSession.data_caches["old"]["time_created"] = datetime.now() - timedelta(hours=25)
    TaskSession("other")
    assert "old" not in TaskSession()


def test_not_implemented_sessions():
    session = TaskSession("x", not_implemented=True)
    assert session.session_token is None
    with pytest.raises(NotImplementedError, match="fastapi_background_tasks"):
        session.add_item(1, "k")


def handler_with(session):
    bridge = InMemoryBridge()
    bridge.begin_task({"execution_id": "e"})
    return TaskHandler("e", bridge, task_session=session)


def test_handler_session_helpers_and_errors():
    handler = handler_with(TaskSession("h"))
    with pytest.raises(KeyError):
        handler.load_item_from_session("missing")
    assert handler.status == "STARTED"  # a KeyError does not mark the task failed
    handler.save_item_to_session({"a": 1}, "k")
    assert handler.load_item_from_session("k") == {"a": 1}
    handler.remove_item_from_session("k")
    assert "Saved object with key k to the task session." in handler.log
    assert "Loaded object with key k from the task session." in handler.log
    assert "Removed object with key k from the task session." in handler.log

    broken = handler_with(TaskSession("nope", not_implemented=True))
    with pytest.raises(CompoxTaskError) as caught:
        broken.save_item_to_session(1, "k")
    assert caught.value.code == "task_session_save_failed"
    assert caught.value.details == {"key": "k"}
    with pytest.raises(CompoxTaskError) as caught:
        broken.load_item_from_session("k")
    assert caught.value.code == "task_session_load_failed"


def test_no_session_is_a_state_error():
    handler = DebuggingTaskHandler("d")
    with pytest.raises(CompoxStateError) as caught:
        handler.save_item_to_session(1, "k")
    assert caught.value.code == "task_session_not_initialized"
    assert str(caught.value) == "Task session is not initialized."
