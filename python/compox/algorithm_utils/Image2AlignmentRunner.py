"""``Image2AlignmentRunner``: N images in, N-1 transformation matrices out (``runtime.md`` §3).

``inference`` stays abstract, so a subclass must define it. Each matrix is written to both
``transform_matrix`` and ``translation_matrix``, as clients of the original expect.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from compox.algorithm_utils._image_runner_base import stack_field
from compox.algorithm_utils.BaseRunner import BaseRunner
from compox.algorithm_utils.io_schemas import AlignmentSchema, ImageSchema


class Image2AlignmentRunner(BaseRunner):
    algorithm_type = "Image2Alignment"

    def fetch_data(
        self, file_ids: List[str], *keys: str, parallel: bool = False
    ) -> List[Dict[str, Any]]:
        return super().fetch_data(file_ids, ImageSchema, *keys, parallel=parallel)

    def post_data(self, data: List[Dict[str, Any]], parallel: bool = False) -> List[str]:
        return super().post_data(data, AlignmentSchema, parallel=parallel)

    def preprocess(
        self, input_data: Dict[str, Any], args: Optional[Dict[str, Any]] = None
    ) -> np.ndarray:
        fetched = self.fetch_data(input_data["input_dataset_ids"], "image")
        stacked = stack_field(fetched, "image")
        self._input_images_count = stacked.shape[0]
        return stacked

    def postprocess(self, data: Any, args: Optional[Dict[str, Any]] = None) -> List[str]:
        # Explicit checks instead of `assert`, so they also hold under `python -O`.
        if not isinstance(data, list) or not all(isinstance(m, np.ndarray) for m in data):
            raise AssertionError(
                "Image2AlignmentRunner.inference must return a list of numpy arrays."
            )
        expected = self._input_images_count - 1
        if len(data) != expected:
            raise AssertionError(
                f"Expected {expected} transformation matrices for "
                f"{self._input_images_count} images, got {len(data)}."
            )
        items = [
            {
                "points1": [],
                "points2": [],
                "confidence": [],
                "transform_matrix": matrix,
                "translation_matrix": matrix,
            }
            for matrix in data
        ]
        return self.post_data(items)


__all__ = ["Image2AlignmentRunner"]
