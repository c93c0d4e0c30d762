"""Test algorithm `embedder`: overrides postprocess to fill every EmbeddingSchema field.

The default Image2EmbeddingRunner postprocess posts only `features`, which EmbeddingSchema rejects
(it also requires `input_size` and `original_size`); real embedding algorithms override it, as here.
"""

import numpy as np
from skimage.filters import sobel
from skimage.transform import resize

from compox.algorithm_utils.Image2EmbeddingRunner import Image2EmbeddingRunner

FEATURE_CHANNELS = 2


def to_gray(image):
    """Channel-first RGB (3, H, W) becomes its channel mean; a 2-D image is returned as float64."""
    values = np.asarray(image, dtype=np.float64)
    return values.mean(axis=0) if values.ndim == 3 else values


def embed(gray, size):
    """Float32 (2, size, size): the resized image scaled to [0, 1], and its Sobel magnitude."""
    small = resize(gray, (size, size), anti_aliasing=True, preserve_range=True)
    low, high = float(small.min()), float(small.max())
    if high > low:
        small = (small - low) / (high - low)
    else:
        small = np.zeros_like(small)
    return np.stack([small, sobel(small)]).astype(np.float32)


class Runner(Image2EmbeddingRunner):
    """One embedding item per input image."""

    def __init__(self):
        super().__init__()

    def inference(self, data, args=None):
        args = args or {}
        size = int(args.get("input_size", 64))
        if size < 1:
            raise ValueError(f"input_size must be >= 1, got {size}.")

        count = data.shape[0]
        items = []
        for index in range(count):
            gray = to_gray(data[index])
            items.append(
                {
                    "features": embed(gray, size),
                    "input_size": (size, size),
                    "original_size": (int(gray.shape[0]), int(gray.shape[1])),
                }
            )
            self.set_progress((index + 1) / count)
        return items

    def postprocess(self, data, args=None):
        return self.post_data(data)
