"""Test algorithm `multi_region`: returns `{"dark": mask, "bright": mask}` per slice.

Exercises the mapping form accepted by Image2MultiRegionSegmentationRunner's default postprocess
(region names are the keys, in insertion order).
"""

import numpy as np
from skimage.filters import threshold_otsu

from compox.algorithm_utils.Image2MultiRegionSegmentationRunner import (
    Image2MultiRegionSegmentationRunner,
)


def to_gray(image):
    """Channel-first RGB (3, H, W) becomes its channel mean; a 2-D image is returned as float64."""
    values = np.asarray(image, dtype=np.float64)
    return values.mean(axis=0) if values.ndim == 3 else values


class Runner(Image2MultiRegionSegmentationRunner):
    """Two complementary uint8 masks per input image."""

    def __init__(self):
        super().__init__()

    def inference(self, data, args=None):
        count = data.shape[0]
        regions = []
        for index in range(count):
            gray = to_gray(data[index])
            bright = gray > threshold_otsu(gray)
            regions.append({"dark": (~bright).astype(np.uint8), "bright": bright.astype(np.uint8)})
            self.set_progress((index + 1) / count)
        return regions
