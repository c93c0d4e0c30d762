"""Shared pieces of the typed runners: stacking fetched inputs and output type checks."""

from __future__ import annotations

from typing import Any, Dict, List

import numpy as np


def stack_field(fetched: List[Dict[str, Any]], key: str) -> np.ndarray:
    """``np.stack`` of one field over all inputs; inputs of different shapes raise ValueError."""
    return np.stack([item[key] for item in fetched], axis=0)


def require_ndarray(data: Any, runner_name: str) -> np.ndarray:
    # An explicit check instead of `assert`, so it also holds under `python -O`.
    if not isinstance(data, np.ndarray):
        raise AssertionError(
            f"{runner_name}.inference must return a numpy array; got {type(data).__name__}."
        )
    return data


def require_count(data: np.ndarray, expected: int, what: str) -> None:
    if data.shape[0] != expected:
        raise ValueError(
            f"Expected {expected} {what} along the first axis of the inference output, "
            f"got {data.shape[0]}."
        )
