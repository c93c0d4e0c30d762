"""Intensity scaling helpers, imported by Runner.py as a sub-folder package without __init__.py."""

import numpy as np


def to_unit_range(image):
    """Scale `image` to float64 values in [0, 1].

    Returns the scaled image together with the original minimum and maximum, so that the result of
    later processing can be mapped back with `from_unit_range`. A constant image maps to zeros.
    """
    values = np.asarray(image, dtype=np.float64)
    low = float(values.min())
    high = float(values.max())
    if high <= low:
        return np.zeros_like(values), low, high
    return (values - low) / (high - low), low, high


def from_unit_range(image, low, high):
    """Map a [0, 1] image back to the intensity range [low, high]."""
    return np.asarray(image, dtype=np.float64) * (high - low) + low
