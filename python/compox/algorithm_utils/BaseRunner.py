"""``BaseRunner``: the class every algorithm's ``Runner`` derives from (``runtime.md`` §2).

The framework never calls ``Runner(...)``. It creates the object with ``Runner.__new__``,
then ``initialize(device=...)`` and ``_load_assets()`` once per cached runner, and
``initialize()`` plus ``run(...)`` for every execution.

Attribute model: attributes set in ``load_assets`` are stored on the instance, shared by all
executions, and locked against reassignment; every other attribute an algorithm sets goes
into the per-execution runner context (:mod:`compox.algorithm_utils.runner_context`), which
``initialize`` replaces with a fresh dict. Reads look in the context first, then normally.
"""

from __future__ import annotations

import contextlib
import io
import time
from abc import ABC, abstractmethod
from typing import Any, Dict, Iterator, List, Optional, Type

from compox.algorithm_utils.runner_context import active_runner_context, begin_runner_context
from compox.exceptions import (
    CompoxError,
    CompoxStateError,
    CompoxTrainingError,
    TaskStoppedException,
)
from compox.tasks.context_handler import active_handler

# Names that bypass the runner context: framework bookkeeping and the read-only properties.
_FRAMEWORK_ATTRIBUTES = frozenset(
    {
        "_locked_attributes",
        "_locking_assets",
        "_device",
        "task_handler",
        "runner_context",
        "device",
        "_initializing",
    }
)

_LOG_LEVELS = ("INFO", "WARNING", "ERROR", "DEBUG")


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


class BaseRunner(ABC):
    """Lifecycle, attribute model and helper methods shared by all runners."""

    algorithm_type = "Generic"

    def __init__(self) -> None:
        pass

    # -- attribute model ---------------------------------------------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _FRAMEWORK_ATTRIBUTES or _is_dunder(name):
            object.__setattr__(self, name, value)
            return

        state = object.__getattribute__(self, "__dict__")
        if state.get("_locking_assets", False):
            object.__setattr__(self, name, value)
            state["_locked_attributes"].add(name)
            return

        if name in state.get("_locked_attributes", ()):
            if state.get("_initializing", False):
                # __init__ runs again for every execution; it must not replace shared assets.
                return
            raise AttributeError(f"Attribute '{name}' is locked and cannot be modified.")

        context = active_runner_context()
        if context is not None:
            context[name] = value
        # Without any context the write has nowhere to live and is dropped, as in the original.

    def __getattribute__(self, name: str) -> Any:
        if name not in _FRAMEWORK_ATTRIBUTES and not _is_dunder(name):
            context = active_runner_context()
            if context is not None and name in context:
                return context[name]
        return object.__getattribute__(self, name)

    def __delattr__(self, name: str) -> None:
        context = active_runner_context()
        if context is not None and name in context:
            del context[name]
            return
        state = object.__getattribute__(self, "__dict__")
        if name in state.get("_locked_attributes", ()):
            raise AttributeError(f"Attribute '{name}' is locked and cannot be deleted.")
        object.__delattr__(self, name)

    @property
    def task_handler(self) -> Any:
        handler = active_handler()
        if handler is None:
            raise CompoxStateError("Task handler is not set.", code="task_handler_not_set")
        return handler

    @property
    def runner_context(self) -> Dict[str, Any]:
        context = active_runner_context()
        return context if context is not None else {}

    @property
    def device(self) -> str:
        return self._device

    # -- lifecycle ---------------------------------------------------------------------------

    def initialize(self, device: Optional[str] = None) -> None:
        """Start a fresh per-execution context and run ``__init__`` in it."""
        if device:
            self._device = device
        begin_runner_context()
        self._initializing = True
        try:
            self.__init__()
        finally:
            self._initializing = False

    def load_assets(self) -> None:
        """Hook: load models or weights with ``self.fetch_asset``; what is set here is shared."""

    def _load_assets(self) -> None:
        self._locked_attributes = set()
        self._locking_assets = True
        try:
            self.load_assets()
        finally:
            self._locking_assets = False

    def run(self, input_data: Dict[str, Any], args: Optional[Dict[str, Any]] = None) -> None:
        """Run the three stages and complete the task; failures are recorded, then re-raised."""
        handler = self.task_handler
        handler.logger.info("Starting execution.")
        if not args:
            args = {}
        started = time.perf_counter()
        with _failure_recorded(handler):
            output = self.postprocess_base(
                self.inference_base(self.preprocess_base(input_data, args), args), args
            )
            handler.logger.info(
                f"Execution completed in {round(time.perf_counter() - started, 2)} seconds."
            )
            handler.mark_as_completed(output)
        return None

    def preprocess_base(
        self, input_data: Dict[str, Any], args: Optional[Dict[str, Any]] = None
    ) -> Any:
        if not args:
            args = {}
        handler = self.task_handler
        handler.status = "RUNNING"
        started = time.perf_counter()
        data = self.preprocess(input_data, args)
        handler.logger.info(
            f"Data preprocessing finished in {round(time.perf_counter() - started, 2)} seconds"
        )
        handler.update_log()
        return data

    def inference_base(self, data: Any, args: Optional[Dict[str, Any]] = None) -> Any:
        if not args:
            args = {}
        handler = self.task_handler
        handler.logger.info("Running inference.")
        started = time.perf_counter()
        result = self.inference(data, args)
        handler.logger.info(
            f"Inference finished in {round(time.perf_counter() - started, 2)} seconds"
        )
        handler.update_log()
        return result

    def postprocess_base(self, data: Any, args: Optional[Dict[str, Any]] = None) -> Any:
        if not args:
            args = {}
        handler = self.task_handler
        handler.logger.info("Postprocessing output data.")
        started = time.perf_counter()
        output = self.postprocess(data, args)
        handler.logger.info(
            f"Postprocessing finished in {round(time.perf_counter() - started, 2)} seconds"
        )
        handler.update_log()
        return output

    @abstractmethod
    def preprocess(self, input_data: Dict[str, Any], args: Optional[Dict[str, Any]] = None) -> Any:
        """Turn ``{"input_dataset_ids": [...]}`` into the data ``inference`` works on."""

    @abstractmethod
    def inference(self, data: Any, args: Optional[Dict[str, Any]] = None) -> Any:
        """The algorithm itself."""

    @abstractmethod
    def postprocess(self, data: Any, args: Optional[Dict[str, Any]] = None) -> List[str]:
        """Store the results and return the output dataset ids."""

    # -- helpers delegated to the handler ----------------------------------------------------

    def fetch_data(
        self,
        file_ids: List[str],
        pydantic_data_schema: Type[Any],
        *keys: str,
        parallel: bool = False,
    ) -> List[Dict[str, Any]]:
        handler = self.task_handler
        return handler.fetch_data(file_ids, pydantic_data_schema, *keys, parallel=parallel)

    def post_data(
        self, data: List[Dict[str, Any]], pydantic_data_schema: Type[Any], parallel: bool = False
    ) -> List[str]:
        return self.task_handler.post_data(data, pydantic_data_schema, parallel=parallel)

    def fetch_asset(self, asset_path: str) -> io.BytesIO:
        return self.task_handler.fetch_asset(asset_path)

    def save_item_to_session(self, obj: Any, key: str) -> None:
        self.task_handler.save_item_to_session(obj, key)

    def load_item_from_session(self, key: str) -> Any:
        return self.task_handler.load_item_from_session(key)

    def remove_item_from_session(self, key: str) -> None:
        self.task_handler.remove_item_from_session(key)

    def set_progress(self, progress: float) -> None:
        # bool is an int, not a float, so it is rejected here like any int.
        if not isinstance(progress, float):
            raise ValueError("Progress must be a float.")
        if not 0.0 <= progress <= 1.0:
            raise ValueError("Progress must be between 0 and 1.")
        self.task_handler.progress = progress

    def log_message(self, message: str, logging_level: str = "INFO") -> None:
        if logging_level not in _LOG_LEVELS:
            raise ValueError("Invalid logging level provided.")
        self.task_handler.logger.log(logging_level, message)

    def set_state(self, state: Dict[str, Any]) -> None:
        self.task_handler.state = state

    def get_state(self) -> Dict[str, Any]:
        return self.task_handler.state

    # -- training and benchmarks -------------------------------------------------------------

    def _require_training_handler(self, message: str) -> Any:
        handler = self.task_handler
        if not getattr(handler, "is_training_handler", False):
            raise CompoxStateError(message, code="training_handler_required")
        return handler

    def run_training(self, training_data: List[str], args: Optional[Dict[str, Any]] = None) -> None:
        """``training.md`` §3.7: RUNNING, ``train``, then COMPLETED, or FAILED with
        ``training_no_checkpoint`` when ``train`` saved no checkpoint. Returns None."""
        handler = self._require_training_handler("Training requires a training handler.")
        handler.logger.info("Starting training.")
        handler.status = "RUNNING"
        started = time.perf_counter()
        with _failure_recorded(handler):
            self.train(training_data, args or {})
            handler.logger.info(
                f"Training completed in {round(time.perf_counter() - started, 2)} seconds."
            )
            if not handler.output_checkpoint_ids:
                # Recorded before it is raised, so the log carries the message, not a traceback.
                error = CompoxTrainingError(
                    "Training finished without a checkpoint: at least one output checkpoint "
                    "must be created.",
                    code="training_no_checkpoint",
                )
                handler.mark_as_failed(error)
                raise error
            handler.mark_as_completed()
        return None

    def train(self, training_data: List[str], args: Optional[Dict[str, Any]] = None) -> None:
        self.task_handler.logger.error("The train method is not implemented by this algorithm.")
        raise NotImplementedError("The train method is not implemented by this algorithm.")

    def save_checkpoint(
        self, checkpoint: Dict[str, bytes], properties: Optional[Dict[str, Any]] = None
    ) -> str:
        handler = self._require_training_handler("Saving a checkpoint requires a training handler.")
        try:
            return handler.save_checkpoint(checkpoint, properties or {})
        except (CompoxError, TaskStoppedException):
            raise
        except Exception as error:
            raise CompoxTrainingError(
                "Failed to save the checkpoint.", code="runner_checkpoint_save_failed", cause=error
            ) from error

    def delete_checkpoint(self, checkpoint_id: str) -> None:
        self._require_training_handler(
            "Deleting a checkpoint requires a training handler."
        ).delete_checkpoint(checkpoint_id)

    def get_training_dataset(self, ids: List[str]) -> Any:
        return self._require_training_handler(
            "Training datasets require a training handler."
        ).get_training_dataset(ids)

    def save_training_files_to_temp_store(
        self,
        folder_path: str,
        files: List[Dict[str, Any]],
        schema: Type[Any],
        parallel: bool = True,
    ) -> List[str]:
        return self._require_training_handler(
            "The temp store requires a training handler."
        ).save_training_files_to_temp_store(folder_path, files, schema, parallel=parallel)

    def download_files_to_temp_store(
        self,
        folder_path: str,
        file_ids: List[str],
        schema: Type[Any],
        batch_size: int = 8,
        *keys: str,
    ) -> List[str]:
        return self._require_training_handler(
            "The temp store requires a training handler."
        ).download_files_to_temp_store(folder_path, file_ids, schema, *keys, batch_size=batch_size)

    def download_dataset_to_temp_store(self, dataset: Any, schemas: Dict[str, Type[Any]]) -> Any:
        return self._require_training_handler(
            "The temp store requires a training handler."
        ).download_dataset_to_temp_store(dataset, schemas)

    def load_dataset_from_temp_store(self, local_samples: Any) -> Any:
        return self._require_training_handler(
            "The temp store requires a training handler."
        ).load_dataset_from_temp_store(local_samples)

    def load_files_from_temp_store(
        self, paths: List[str], parallel: bool = True, *keys: str
    ) -> List[Dict[str, Any]]:
        return self._require_training_handler(
            "The temp store requires a training handler."
        ).load_files_from_temp_store(paths, *keys, parallel=parallel)

    def run_benchmark(self, args: Optional[Dict[str, Any]] = None) -> None:
        """``training.md`` §5.3: ``benchmark`` once, its dict stored as the record's ``data``
        (by a ``BenchmarkHandler``; an execution handler refuses a dict as output ids)."""
        handler = self.task_handler
        handler.logger.info("Starting benchmark.")
        started = time.perf_counter()
        with _failure_recorded(handler):
            results = self.benchmark(args or {}) or {}
            handler.logger.info(
                f"Benchmark completed in {round(time.perf_counter() - started, 2)} seconds."
            )
            handler.mark_as_completed(results)

    def benchmark(self, args: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        self.task_handler.logger.error("The benchmark method is not implemented by this algorithm.")
        raise NotImplementedError("The benchmark method is not implemented by this algorithm.")


@contextlib.contextmanager
def _failure_recorded(handler: Any) -> Iterator[None]:
    """Record FAILED on ``handler`` for an error escaping a stage, then re-raise it."""
    try:
        yield
    except TaskStoppedException:
        raise
    except Exception as error:
        handler.mark_as_failed(error)
        raise


__all__ = ["BaseRunner"]
