"""``Image2SegmentationRunner``: N input images in, N masks out (``runtime.md`` §3)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from compox.algorithm_utils._image_runner_base import require_count, require_ndarray, stack_field
from compox.algorithm_utils.BaseRunner import BaseRunner
from compox.algorithm_utils.io_schemas import ImageSchema, SegmentationSchema


class Image2SegmentationRunner(BaseRunner):
    algorithm_type = "Image2Segmentation"

    def fetch_data(
        self, file_ids: List[str], *keys: str, parallel: bool = False
    ) -> List[Dict[str, Any]]:
        return super().fetch_data(file_ids, ImageSchema, *keys, parallel=parallel)

    def post_data(self, data: List[Dict[str, Any]], parallel: bool = False) -> List[str]:
        return super().post_data(data, SegmentationSchema, parallel=parallel)

    def preprocess(
        self, input_data: Dict[str, Any], args: Optional[Dict[str, Any]] = None
    ) -> np.ndarray:
        fetched = self.fetch_data(input_data["input_dataset_ids"], "image")
        stacked = stack_field(fetched, "image")
        self._input_images_shape = stacked.shape
        return stacked

    def inference(self, data: Any, args: Optional[Dict[str, Any]] = None) -> Any:
        raise NotImplementedError("The inference method is not implemented by this algorithm.")

    def postprocess(self, data: Any, args: Optional[Dict[str, Any]] = None) -> List[str]:
        data = require_ndarray(data, "Image2SegmentationRunner")
        count = self._input_images_shape[0]
        require_count(data, count, "masks")
        return self.post_data([{"mask": data[i]} for i in range(count)])


__all__ = ["Image2SegmentationRunner"]
