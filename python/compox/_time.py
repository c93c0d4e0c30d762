"""Timestamp formats used in task records and task logs.

Records use local naive time with six fractional digits (the original omitted them when the
microseconds were zero; we always emit them). Log lines use local time without fractions.
"""

from __future__ import annotations

from datetime import datetime


def record_timestamp(moment: datetime | None = None) -> str:
    """``YYYY-MM-DD HH:MM:SS.ffffff`` in local time."""
    return (moment or datetime.now()).strftime("%Y-%m-%d %H:%M:%S.%f")


def log_timestamp(moment: datetime | None = None) -> str:
    """``YYYY-MM-DD HH:MM:SS`` in local time, as printed at the start of each log line."""
    return (moment or datetime.now()).strftime("%Y-%m-%d %H:%M:%S")
