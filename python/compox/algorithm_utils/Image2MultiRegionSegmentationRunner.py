"""``Image2MultiRegionSegmentationRunner``: one named set of region masks per input image.

Inference returns a list with one dict per input image, either in the explicit form
``{"region_names": [...], "region_masks": [...]}`` or as a mapping ``{name: mask, ...}``
(insertion order). Both are normalised to the explicit form and validated by
``MultiRegionSegmentationSchema`` (``runtime.md`` §3).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from compox.algorithm_utils._image_runner_base import stack_field
from compox.algorithm_utils.BaseRunner import BaseRunner
from compox.algorithm_utils.io_schemas import ImageSchema, MultiRegionSegmentationSchema


def normalise_regions(item: Dict[str, Any], index: int) -> Dict[str, List[Any]]:
    if "region_names" in item or "region_masks" in item:
        if "region_names" not in item or "region_masks" not in item:
            raise ValueError(
                f"Output item {index} must define both 'region_names' and 'region_masks'."
            )
        names, masks = list(item["region_names"]), list(item["region_masks"])
    else:
        names, masks = list(item.keys()), list(item.values())
    if len(names) != len(masks):
        raise ValueError("Number of region names must match number of region masks.")
    return {"region_names": names, "region_masks": masks}


class Image2MultiRegionSegmentationRunner(BaseRunner):
    algorithm_type = "Image2MultiRegionSegmentation"

    def fetch_data(
        self, file_ids: List[str], *keys: str, parallel: bool = False
    ) -> List[Dict[str, Any]]:
        return super().fetch_data(file_ids, ImageSchema, *keys, parallel=parallel)

    def post_data(self, data: List[Dict[str, Any]], parallel: bool = False) -> List[str]:
        return super().post_data(data, MultiRegionSegmentationSchema, parallel=parallel)

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
        if not isinstance(data, list):
            raise TypeError(
                "Image2MultiRegionSegmentationRunner.inference must return a list of dicts; "
                f"got {type(data).__name__}."
            )
        expected = self._input_images_shape[0]
        if len(data) != expected:
            raise ValueError(
                f"Expected {expected} output items, one per input image, got {len(data)}."
            )
        items = []
        for index, item in enumerate(data):
            if not isinstance(item, dict):
                raise TypeError(f"Output item {index} must be a dict; got {type(item).__name__}.")
            items.append(normalise_regions(item, index))
        return self.post_data(items)


__all__ = ["Image2MultiRegionSegmentationRunner"]
