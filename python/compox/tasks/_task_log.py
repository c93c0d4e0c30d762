"""The task log: an in-memory text sink plus a small loguru-style bound logger.

Each handler owns one :class:`TaskLog`. Lines have the form
``YYYY-MM-DD HH:MM:SS LEVEL message`` in local time; only INFO and above reach the text that
is stored in the record's ``log`` field. The sink is closed at completion, failure or stop,
and anything logged afterwards is dropped from the record (optional console output, used by
local debugging, keeps working).

:class:`TaskLogger` offers the loguru methods algorithms call on ``self.task_handler.logger``
(``debug``, ``info``, ``success``, ``warning``, ``error``, ``critical``, ``exception``,
``log``, ``bind``, ``opt``). ``bind`` extras are kept but not printed, as in the original.
"""

from __future__ import annotations

import io
import sys
import threading
import traceback
from typing import Any, Callable, Dict, List, Optional, TextIO, Union

from compox._time import log_timestamp

LEVELS: Dict[str, int] = {
    "TRACE": 5,
    "DEBUG": 10,
    "INFO": 20,
    "SUCCESS": 25,
    "WARNING": 30,
    "ERROR": 40,
    "CRITICAL": 50,
}

RECORD_MIN_LEVEL = LEVELS["INFO"]

ExcInfo = Union[bool, BaseException, None]


# The record's log keeps at most this many characters: its first LOG_HEAD_CHARS and its most
# recent lines, with one line saying what was left out between them. The whole log travels
# with every record update and every poll, so an algorithm printing without end must not
# make it unbounded (the worker's frames are capped at 64 MiB; JSON may escape a character
# into six bytes).
LOG_LIMIT_CHARS = 8 * 1024 * 1024
LOG_HEAD_CHARS = 1024 * 1024
# How far past the cut a trim looks for a line end, so it does not start mid-line.
LINE_SEARCH_CHARS = 64 * 1024


class TaskLog:
    """The accumulated text of one task's log, and where else its lines go."""

    def __init__(
        self, console: Optional[Callable[[], TextIO]] = None, console_level: str = "DEBUG"
    ) -> None:
        self.stream = io.StringIO()
        self._size = 0
        self._head: Optional[str] = None
        self._dropped_lines = 0
        self._dropped_chars = 0
        self._lock = threading.Lock()
        self._open = True
        self._console = console
        self._console_level = LEVELS[console_level]
        self._drains: List[Callable[[], None]] = []

    @property
    def is_open(self) -> bool:
        return self._open

    def text(self) -> str:
        with self._lock:
            if self._head is None:
                return self.stream.getvalue()
            gap = (
                f"... {self._dropped_lines} lines ({self._dropped_chars} characters) of this "
                f"log were left out: it keeps its first and its most recent lines ...\n"
            )
            return self._head + gap + self.stream.getvalue()

    def close(self) -> None:
        self._open = False

    def add_drain(self, drain: Callable[[], None]) -> None:
        """Register something holding lines not yet emitted (captured output)."""
        self._drains.append(drain)

    def drain(self) -> None:
        """Emit what the registered drains still hold; called before the final log write."""
        for drain in self._drains:
            try:
                drain()
            except Exception:
                pass

    def emit(self, level: str, message: str, exc_text: str = "") -> None:
        number = LEVELS[level]
        line = f"{log_timestamp()} {level} {message}\n{exc_text}"
        with self._lock:
            if self._open and number >= RECORD_MIN_LEVEL:
                self.stream.write(line)
                self._size += len(line)
                if self._size > LOG_LIMIT_CHARS:
                    self._trim()
        if self._console is not None and number >= self._console_level:
            try:
                # Looked up per line, so a redirected sys.stderr is honoured.
                stream = self._console()
                stream.write(line)
                stream.flush()
            except (OSError, ValueError):
                # A closed console must never break the algorithm.
                pass

    def _trim(self) -> None:
        """Keep the head and the most recent lines, down to three quarters of the limit so
        that trimming happens once per quarter of the limit written (linear overall)."""
        text = self.stream.getvalue()
        if self._head is None:
            cut = text.rfind("\n", 0, LOG_HEAD_CHARS) + 1 or LOG_HEAD_CHARS
            self._head, text = text[:cut], text[cut:]
        keep = LOG_LIMIT_CHARS * 3 // 4 - len(self._head)
        start = len(text) - keep
        newline = text.find("\n", start, start + LINE_SEARCH_CHARS)
        if newline >= 0:
            start = newline + 1
        self._dropped_lines += text.count("\n", 0, start)
        self._dropped_chars += start
        self.stream = io.StringIO()
        self.stream.write(text[start:])
        self._size = len(self._head) + len(text) - start


def format_exception_text(error: BaseException) -> str:
    return "".join(traceback.format_exception(type(error), error, error.__traceback__))


class TaskLogger:
    """A bound logger writing into one :class:`TaskLog`."""

    def __init__(
        self,
        sink: TaskLog,
        extra: Optional[Dict[str, Any]] = None,
        exception: ExcInfo = None,
    ) -> None:
        self._sink = sink
        self.extra: Dict[str, Any] = dict(extra or {})
        self._exception = exception

    def bind(self, **extra: Any) -> "TaskLogger":
        return TaskLogger(self._sink, {**self.extra, **extra})

    def opt(self, *, exception: ExcInfo = None, **_ignored: Any) -> "TaskLogger":
        return TaskLogger(self._sink, self.extra, exception)

    def log(self, level: Union[str, int], message: Any, *args: Any, **kwargs: Any) -> None:
        name = _level_name(level)
        text = str(message)
        if args or kwargs:
            # loguru formats with str.format when arguments are given.
            try:
                text = text.format(*args, **kwargs)
            except (IndexError, KeyError, ValueError):
                pass
        self._sink.emit(name, text, self._exception_text())

    def trace(self, message: Any, *args: Any, **kwargs: Any) -> None:
        self.log("TRACE", message, *args, **kwargs)

    def debug(self, message: Any, *args: Any, **kwargs: Any) -> None:
        self.log("DEBUG", message, *args, **kwargs)

    def info(self, message: Any, *args: Any, **kwargs: Any) -> None:
        self.log("INFO", message, *args, **kwargs)

    def success(self, message: Any, *args: Any, **kwargs: Any) -> None:
        self.log("SUCCESS", message, *args, **kwargs)

    def warning(self, message: Any, *args: Any, **kwargs: Any) -> None:
        self.log("WARNING", message, *args, **kwargs)

    def error(self, message: Any, *args: Any, **kwargs: Any) -> None:
        self.log("ERROR", message, *args, **kwargs)

    def critical(self, message: Any, *args: Any, **kwargs: Any) -> None:
        self.log("CRITICAL", message, *args, **kwargs)

    def exception(self, message: Any, *args: Any, **kwargs: Any) -> None:
        TaskLogger(self._sink, self.extra, True).log("ERROR", message, *args, **kwargs)

    def _exception_text(self) -> str:
        error: Optional[BaseException]
        if self._exception is True:
            error = sys.exc_info()[1]
        elif isinstance(self._exception, BaseException):
            error = self._exception
        else:
            error = None
        return format_exception_text(error) if error is not None else ""


def _level_name(level: Union[str, int]) -> str:
    if isinstance(level, int):
        known = [name for name, number in LEVELS.items() if number <= level]
        return known[-1] if known else "TRACE"
    name = str(level).upper()
    if name not in LEVELS:
        raise ValueError(f"Level '{level}' does not exist.")
    return name
