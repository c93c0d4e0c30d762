"""Test algorithm `seg_smoother`: removes specks and thin bridges from 2-D masks.

Exercises Segmentation2SegmentationRunner, whose default preprocess fetches the `mask` key.
"""

import numpy as np
from skimage.morphology import disk, opening

from compox.algorithm_utils.Segmentation2SegmentationRunner import (
    Segmentation2SegmentationRunner,
)


class Runner(Segmentation2SegmentationRunner):
    """Binary opening (mask > 0, then erosion and dilation by a disk) of every input mask."""

    def __init__(self):
        super().__init__()

    def inference(self, data, args=None):
        args = args or {}
        radius = int(args.get("radius", 1))
        if radius < 0:
            raise ValueError(f"radius must be >= 0, got {radius}.")
        if data.ndim != 3:
            raise ValueError(f"seg_smoother expects 2-D masks, got stacked shape {data.shape}.")

        count = data.shape[0]
        output = (data > 0).astype(np.uint8)
        if radius > 0:
            footprint = disk(radius)
            for index in range(count):
                output[index] = opening(output[index], footprint)
                self.set_progress((index + 1) / count)
        return output
