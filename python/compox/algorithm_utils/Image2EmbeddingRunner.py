"""``Image2EmbeddingRunner``: images in, feature arrays out (``runtime.md`` §3).

The default postprocess posts ``{"features": ...}`` only; ``EmbeddingSchema`` also requires
``input_size`` and ``original_size``, so real embedding algorithms override ``postprocess``
(kept as in the original, where the default can never succeed).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from compox.algorithm_utils._image_runner_base import require_ndarray, stack_field
from compox.algorithm_utils.BaseRunner import BaseRunner
from compox.algorithm_utils.io_schemas import EmbeddingSchema, ImageSchema


class Image2EmbeddingRunner(BaseRunner):
    algorithm_type = "Image2Embedding"

    def fetch_data(
        self, file_ids: List[str], *keys: str, parallel: bool = False
    ) -> List[Dict[str, Any]]:
        return super().fetch_data(file_ids, ImageSchema, *keys, parallel=parallel)

    def post_data(self, data: List[Dict[str, Any]], parallel: bool = False) -> List[str]:
        return super().post_data(data, EmbeddingSchema, parallel=parallel)

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
        data = require_ndarray(data, "Image2EmbeddingRunner")
        return self.post_data([{"features": data[i]} for i in range(data.shape[0])])


__all__ = ["Image2EmbeddingRunner"]
