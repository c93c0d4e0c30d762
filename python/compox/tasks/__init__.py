"""Task handlers: the per-execution object algorithms reach as ``self.task_handler``.

``TaskHandler`` holds the record-write, logging, data, asset and session logic;
``DebuggingTaskHandler`` is its local, storage-free variant. Internal helpers (module loading,
the runner cache, device resolution, the task log) live in the underscore modules.
"""
