"""The import surface algorithms rely on (runtime.md §1) and process-level helpers."""

from __future__ import annotations

import importlib
import sys
import threading
import time
import types

import pytest

from compox.tasks._algorithm_cache import AlgorithmCache, make_cache_key

SURFACE = {
    "compox.algorithm_utils.BaseRunner": ["BaseRunner"],
    "compox.algorithm_utils.Image2ImageRunner": ["Image2ImageRunner"],
    "compox.algorithm_utils.Image2SegmentationRunner": ["Image2SegmentationRunner"],
    "compox.algorithm_utils.Image2AlignmentRunner": ["Image2AlignmentRunner"],
    "compox.algorithm_utils.Image2EmbeddingRunner": ["Image2EmbeddingRunner"],
    "compox.algorithm_utils.Image2MultiRegionSegmentationRunner": ["Image2MultiRegionSegmentationRunner"],
    "compox.algorithm_utils.Segmentation2SegmentationRunner": ["Segmentation2SegmentationRunner"],
    "compox.algorithm_utils.io_schemas": [
        "DataSchema", "GenericSchema", "SegmentationSchema", "MultiRegionSegmentationSchema",
        "ImageSchema", "VolumeSchema", "MeshSchema", "AlignmentSchema", "EmbeddingSchema",
    ],
    "compox.algorithm_utils.runner_context": ["current_runner_context"],
    "compox.algorithm_utils.LocalDebugSession": ["LocalDebugSession"],
    "compox.algorithm_debug": ["debug", "build_params_dict", "app"],
    "compox.tasks.TaskHandler": ["TaskHandler", "TaskStoppedException"],
    "compox.tasks.context_handler": ["current_handler"],
    "compox.tasks.context_task_handler": ["current_task_handler"],
    "compox.tasks.DebuggingTaskHandler": ["DebuggingTaskHandler"],
    "compox.tasks.BenchmarkHandler": ["BenchmarkHandler"],
    # training.md §2.4, §3.7–§3.9: the training-side API.
    "compox.training.TrainingHandler": ["TrainingHandler"],
    "compox.training.TrainingSample": ["TrainingSample"],
    "compox.training.TrainingDataset": ["TrainingDataset"],
    "compox.training.TempStore": ["TempStore"],
    "compox.training.DebuggingTrainingHandler": ["DebuggingTrainingHandler"],
    "compox.exceptions": ["CompoxError", "TaskStoppedException"],
    "compox._bridge_memory": ["InMemoryBridge"],
    "compox._worker": ["run_job"],
    "compox._deploy_tools": ["process_package"],
}


@pytest.mark.parametrize("module_name", sorted(SURFACE))
def test_module_exports(module_name):
    module = importlib.import_module(module_name)
    for name in SURFACE[module_name]:
        assert hasattr(module, name), f"{module_name}.{name}"


def test_module_and_class_of_the_same_name_do_not_shadow_each_other():
    import compox.algorithm_utils.io_schemas as schemas
    import compox.algorithm_utils.BaseRunner as base_runner_module

    assert isinstance(schemas, types.ModuleType)
    assert isinstance(base_runner_module, types.ModuleType)


def test_old_names_are_aliases():
    from compox.tasks.context_handler import current_handler
    from compox.tasks.context_task_handler import current_task_handler
    from compox.tasks.TaskHandler import TaskHandler

    assert current_task_handler is current_handler
    assert TaskHandler.set_as_current_task_handler is TaskHandler.set_as_current_handler


def test_cache_loads_once_per_key_under_concurrency():
    cache = AlgorithmCache()
    calls = []

    def load():
        calls.append(1)
        time.sleep(0.05)
        return ("runner", {}, "cpu")

    key = make_cache_key({"a": 1}, None, None, "0")
    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get_or_load(key, 2, load)))
               for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert sorted(hit for _, hit in results) == [False] + [True] * 5


def test_cache_key_uses_reprs_and_lru_order():
    cache = AlgorithmCache()
    assert make_cache_key({"a": 1}, None, None, "0") == ("{'a': 1}", "None", "None", "'0'")
    for name in ("a", "b"):
        cache.get_or_load((name,), 2, lambda: (name, {}, "cpu"))
    cache.get_or_load(("a",), 2, lambda: pytest.fail("hit expected"))
    cache.get_or_load(("c",), 2, lambda: ("c", {}, "cpu"))
    assert cache.keys() == [("a",), ("c",)]


def test_worker_empties_the_cuda_cache_only_when_torch_is_loaded(monkeypatch):
    from compox import _worker

    calls = []
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(
        is_available=lambda: True,
        empty_cache=lambda: calls.append("empty"),
        ipc_collect=lambda: calls.append("ipc"),
    ))
    _worker._release_memory()
    assert calls == []
    monkeypatch.setitem(sys.modules, "torch", fake)
    _worker._release_memory()
    assert calls == ["empty", "ipc"]


def test_worker_runs_a_full_collection_only_when_torch_is_loaded(monkeypatch):
    import gc

    from compox import _worker

    generations = []
    monkeypatch.setattr(gc, "collect", lambda generation=2: generations.append(generation) or 0)
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    _worker._release_memory()
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=lambda: False)))
    _worker._release_memory()
    assert generations == [1, 2]
