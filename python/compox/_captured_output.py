"""``print`` output of algorithms as INFO lines of their task log (``runtime.md`` §8.3).

While a job runs, ``sys.stdout`` and ``sys.stderr`` are two line writers that live as long as
the process and are attached to each job in turn. They are never dropped because CPython
3.11's ``print()`` holds only a borrowed reference to ``sys.stdout``: a thread printing while
a job ends would otherwise write into a freed object and crash the worker.

Output of threads that belong to an earlier job (left running by it) goes to the process log,
not into the job's log (:mod:`compox.tasks._job_threads`). Output written
below Python (C code writing to fd 1 or 2, child processes given ``sys.stdout``) also goes to
the process log: ``fileno()`` names the real descriptors.
"""

from __future__ import annotations

import codecs
import io
import sys
import threading
from typing import Any, List, Optional, TextIO

from compox.tasks._job_threads import started_before_job

# Pending text without a line end (progress bars that only redraw with '\r', output that
# never ends a line) is emitted as a line once it reaches this length, so the writer does not
# hold it without bound.
LINE_LIMIT = 64 * 1024


class _LineWriter(io.TextIOBase):
    """A text stream that turns each completed line into an INFO line of the attached log."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self._handler: Optional[Any] = None
        self._fallback: Optional[TextIO] = None
        self._parts: List[str] = []
        self._pending = 0
        self._lock = threading.Lock()
        self._binary = _BinaryWriter(self)

    def attach(self, handler: Any, fallback: TextIO) -> None:
        with self._lock:
            self._handler, self._fallback = handler, fallback
            self._parts, self._pending = [], 0

    def detach(self) -> None:
        self.flush()
        with self._lock:
            self._handler = None

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "replace"

    @property
    def line_buffering(self) -> bool:
        return True

    @property
    def buffer(self) -> "_BinaryWriter":
        return self._binary

    def fileno(self) -> int:
        return self._fd

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def reconfigure(self, **_settings: Any) -> None:
        """Accepted and ignored: the writer is always UTF-8 and line buffered."""

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        with self._lock:
            handler = self._handler
            if handler is not None and not started_before_job():
                lines = self._complete_lines(text)
            else:
                handler, lines = None, []
        if handler is None:
            self._write_fallback(text)
        for line in lines:
            self._emit(handler, line)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            handler = self._handler
            rest = "".join(self._parts)
            self._parts, self._pending = [], 0
        if rest and handler is not None:
            self._emit(handler, rest)

    def _complete_lines(self, text: str) -> List[str]:
        """Adds ``text`` to the pending line; returns the lines it completes. Linear in the
        length of ``text``, however long the pending line already is."""
        pieces = text.split("\n")
        self._parts.append(pieces[0])
        self._pending += len(pieces[0])
        if len(pieces) == 1:
            if self._pending < LINE_LIMIT:
                return []
            lines = ["".join(self._parts)]
            self._parts, self._pending = [], 0
            return lines
        lines = ["".join(self._parts)] + pieces[1:-1]
        self._parts, self._pending = [pieces[-1]], len(pieces[-1])
        return lines

    def _emit(self, handler: Any, line: str) -> None:
        # Progress bars redraw with '\r'; only the last state of the line is worth keeping.
        line = line.rstrip("\r").rsplit("\r", 1)[-1]
        if not line.strip():
            return
        if handler._task_log.is_open:
            handler.logger.info(line)
        else:
            # After the task log closed, keep the output visible in the process log.
            self._write_fallback(line + "\n")

    def _write_fallback(self, text: str) -> None:
        fallback = self._fallback or sys.__stderr__
        if fallback is None:
            return
        try:
            fallback.write(text)
        except (OSError, ValueError):
            pass


class _BinaryWriter(io.BufferedIOBase):
    """``sys.stdout.buffer``: bytes decoded as UTF-8 (invalid bytes replaced) into the text."""

    def __init__(self, text: _LineWriter) -> None:
        super().__init__()
        self._text = text
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._lock = threading.Lock()

    def write(self, data: Any) -> int:  # type: ignore[override]
        chunk = bytes(data)
        with self._lock:
            text = self._decoder.decode(chunk)
        if text:
            self._text.write(text)
        return len(chunk)

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._text.fileno()

    def flush(self) -> None:
        self._text.flush()


_WRITERS = (_LineWriter(1), _LineWriter(2))


class CapturedOutput:
    """Points ``sys.stdout``/``sys.stderr`` at the process's line writers for one job."""

    def __init__(self, handler: Any) -> None:
        self._handler = handler
        self._saved: Optional[tuple] = None

    def __enter__(self) -> "CapturedOutput":
        self._saved = (sys.stdout, sys.stderr)
        fallback = sys.__stderr__ or sys.stderr
        for writer in _WRITERS:
            writer.attach(self._handler, fallback)
        # A line still pending when the task ends belongs in its final log.
        self._handler._task_log.add_drain(flush_captured_output)
        sys.stdout, sys.stderr = _WRITERS
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for writer in _WRITERS:
            writer.detach()
        if self._saved is not None:
            sys.stdout, sys.stderr = self._saved


def flush_captured_output() -> None:
    for writer in _WRITERS:
        writer.flush()


__all__ = ["CapturedOutput"]
