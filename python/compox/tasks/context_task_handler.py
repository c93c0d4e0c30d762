"""Old (2.x) name of :mod:`compox.tasks.context_handler`, kept for older algorithms."""

from compox.tasks.context_handler import current_handler

current_task_handler = current_handler

__all__ = ["current_task_handler", "current_handler"]
