"""Test algorithm `threshold_segmenter`: one global threshold per slice, uint8 0/1 masks out.

Exercises: Image2SegmentationRunner with its default pre/postprocess and an enum parameter.
"""

import numpy as np
from skimage.filters import threshold_mean, threshold_otsu

from compox.algorithm_utils.Image2SegmentationRunner import Image2SegmentationRunner

THRESHOLD_METHODS = {"otsu": threshold_otsu, "mean": threshold_mean}


def to_gray(image):
    """Channel-first RGB (3, H, W) becomes its channel mean; a 2-D image is returned as float64."""
    values = np.asarray(image, dtype=np.float64)
    return values.mean(axis=0) if values.ndim == 3 else values


class Runner(Image2SegmentationRunner):
    """Thresholds every input image; each mask is uint8 with 1 above the threshold."""

    def __init__(self):
        super().__init__()

    def inference(self, data, args=None):
        args = args or {}
        method = str(args.get("method", "otsu"))
        if method not in THRESHOLD_METHODS:
            raise ValueError(
                f"Unknown threshold method {method!r}; expected one of {sorted(THRESHOLD_METHODS)}."
            )
        invert = bool(args.get("invert", False))

        count = data.shape[0]
        masks = np.zeros((count,) + data.shape[-2:], dtype=np.uint8)
        for index in range(count):
            gray = to_gray(data[index])
            threshold = THRESHOLD_METHODS[method](gray)
            foreground = gray <= threshold if invert else gray > threshold
            masks[index] = foreground.astype(np.uint8)
            self.log_message(
                f"Slice {index}: {method} threshold {float(threshold):.4f}, "
                f"foreground fraction {float(foreground.mean()):.4f}."
            )
            self.set_progress((index + 1) / count)
        return masks
