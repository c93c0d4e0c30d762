"""``Image2ImageRunner``: N input images in, N output images out (``runtime.md`` §3)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from compox.algorithm_utils._image_runner_base import require_count, require_ndarray, stack_field
from compox.algorithm_utils.BaseRunner import BaseRunner
from compox.algorithm_utils.io_schemas import ImageSchema


class Image2ImageRunner(BaseRunner):
    algorithm_type = "Image2Image"

    def fetch_data(
        self, file_ids: List[str], *keys: str, parallel: bool = False
    ) -> List[Dict[str, Any]]:
        return super().fetch_data(file_ids, ImageSchema, *keys, parallel=parallel)

    def post_data(self, data: List[Dict[str, Any]], parallel: bool = False) -> List[str]:
        return super().post_data(data, ImageSchema, parallel=parallel)

    def preprocess(
        self, input_data: Dict[str, Any], args: Optional[Dict[str, Any]] = None
    ) -> np.ndarray:
        fetched = self.fetch_data(input_data["input_dataset_ids"], "image")
        stacked = stack_field(fetched, "image")
        self._input_images_count = stacked.shape[0]
        return stacked

    def inference(self, data: Any, args: Optional[Dict[str, Any]] = None) -> Any:
        raise NotImplementedError("The inference method is not implemented by this algorithm.")

    def postprocess(self, data: Any, args: Optional[Dict[str, Any]] = None) -> List[str]:
        data = require_ndarray(data, "Image2ImageRunner")
        count = self._input_images_count
        require_count(data, count, "images")
        return self.post_data([{"image": data[i]} for i in range(count)])


__all__ = ["Image2ImageRunner"]
