"""Shared fixtures: an in-memory bridge, algorithm folders built on the fly, and clean caches."""

from __future__ import annotations

import sys
import tempfile

import pytest

from compox._bridge_memory import InMemoryBridge
from compox.algorithm_utils import runner_context
from compox.algorithm_utils.runner_context import current_runner_context
from compox.tasks import context_handler
from compox.tasks.context_handler import current_handler
from compox.tasks._algorithm_cache import algorithm_cache
from compox.tasks.TaskSession import TaskSession


@pytest.fixture(autouse=True)
def _clean_process_state():
    algorithm_cache.clear()
    TaskSession.reset_all()
    # Tests share one thread, so start each with unset ContextVars and no process fallbacks.
    handler_token = current_handler.set(None)
    context_token = current_runner_context.set(None)
    context_handler.clear_process_fallback()
    runner_context.clear_process_fallback()
    known_modules = set(sys.modules)
    known_path = list(sys.path)
    yield
    _forget_algorithm_modules(known_modules)
    sys.path[:] = known_path
    current_handler.reset(handler_token)
    current_runner_context.reset(context_token)
    algorithm_cache.clear()
    TaskSession.reset_all()
    context_handler.clear_process_fallback()
    runner_context.clear_process_fallback()


@pytest.fixture
def bridge() -> InMemoryBridge:
    return InMemoryBridge(collections=("data-store", "execution-store", "module-store", "asset-store"))


def _forget_algorithm_modules(known: set) -> None:
    """Drop modules imported from temporary algorithm folders, so tests do not share them."""
    temp_root = tempfile.gettempdir()
    for name in set(sys.modules) - known:
        origin = getattr(sys.modules[name], "__file__", None) or ""
        if origin.startswith(temp_root):
            del sys.modules[name]
