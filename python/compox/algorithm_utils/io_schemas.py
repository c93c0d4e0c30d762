"""Pydantic v2 schemas of the data exchanged through ``data-store`` (``runtime.md`` §4).

Algorithms subclass :class:`DataSchema` with their own fields and validators; the framework
only calls ``model_validate(dict)`` and ``model_dump()``. ``np.ndarray`` fields are plain
isinstance checks (no conversion or copy), unknown keys are dropped, and the validators below
reproduce the original rules and messages.
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

_IMAGE_DTYPES = tuple(
    np.dtype(name) for name in ("uint8", "uint16", "float64", "float32", "float16")
)


class DataSchema(BaseModel):
    """Base of every data schema; has no fields of its own."""

    model_config = ConfigDict(arbitrary_types_allowed=True)


class GenericSchema(DataSchema):
    data: np.ndarray


class SegmentationSchema(DataSchema):
    mask: np.ndarray


class ImageSchema(DataSchema):
    image: np.ndarray
    mask: Optional[np.ndarray] = None
    points: Optional[List[np.ndarray]] = None

    @field_validator("image")
    @classmethod
    def _check_image(cls, image: np.ndarray) -> np.ndarray:
        grayscale = image.ndim == 2
        rgb = image.ndim == 3 and image.shape[0] == 3
        if not (grayscale or rgb):
            raise ValueError(
                "Image must be a 2 dimensional grayscale array (H, W) or a 3 dimensional "
                f"channel-first RGB array (3, H, W). Got an array of shape {image.shape}."
            )
        # dtype equality includes byte order, so big-endian arrays are rejected here too.
        if not any(image.dtype == allowed for allowed in _IMAGE_DTYPES):
            raise ValueError(
                "Image dtype must be one of uint8, uint16, float16, float32 or float64 in "
                f"native byte order. Got: {image.dtype.str}."
            )
        return image


class VolumeSchema(DataSchema):
    volume: np.ndarray
    mask: Optional[np.ndarray] = None
    points: Optional[List[np.ndarray]] = None
    stats: Optional[str] = None

    @field_validator("volume")
    @classmethod
    def _check_volume(cls, volume: np.ndarray) -> np.ndarray:
        if volume.ndim != 3:
            raise ValueError("Volume must be a 3 dimensional array.")
        return volume


class MeshSchema(DataSchema):
    vertices: np.ndarray
    faces: np.ndarray
    stats: Optional[str] = None

    @field_validator("vertices")
    @classmethod
    def _check_vertices(cls, vertices: np.ndarray) -> np.ndarray:
        if vertices.ndim != 2 or vertices.shape[1] != 3 or vertices.dtype != float:
            raise ValueError("Mesh vertices must be Nx3 numpy array of floats")
        return vertices

    @field_validator("faces")
    @classmethod
    def _check_faces(cls, faces: np.ndarray) -> np.ndarray:
        if faces.ndim != 2 or faces.shape[1] != 3 or faces.dtype != int:
            raise ValueError("Mesh faces must be Mx3 numpy array of integers")
        return faces


class AlignmentSchema(DataSchema):
    points1: Optional[List[np.ndarray]] = []
    points2: Optional[List[np.ndarray]] = []
    confidence: Optional[List[float]] = []
    transform_matrix: Optional[np.ndarray] = None
    translation_matrix: Optional[np.ndarray] = None


class EmbeddingSchema(DataSchema):
    features: np.ndarray
    input_size: tuple
    original_size: tuple


class MultiRegionSegmentationSchema(DataSchema):
    region_names: List[str]
    region_masks: List[np.ndarray]

    @model_validator(mode="after")
    def _check_regions(self) -> "MultiRegionSegmentationSchema":
        if len(self.region_names) != len(self.region_masks):
            raise ValueError("Number of region names must match number of region masks.")
        for index, mask in enumerate(self.region_masks):
            if not isinstance(mask, np.ndarray) or mask.ndim != 2:
                raise ValueError(f"Region mask at index {index} must be a 2D numpy array.")
        if len({mask.shape for mask in self.region_masks}) > 1:
            raise ValueError("All region masks for one output item must have the same shape.")
        return self


__all__ = [
    "DataSchema",
    "GenericSchema",
    "SegmentationSchema",
    "MultiRegionSegmentationSchema",
    "ImageSchema",
    "VolumeSchema",
    "MeshSchema",
    "AlignmentSchema",
    "EmbeddingSchema",
]
