"""Validation rules and messages of the io_schemas (runtime.md §4)."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import BaseModel, ValidationError

import compox.algorithm_utils.io_schemas as schemas
from compox.algorithm_utils.io_schemas import (
    AlignmentSchema,
    DataSchema,
    EmbeddingSchema,
    GenericSchema,
    ImageSchema,
    MeshSchema,
    MultiRegionSegmentationSchema,
    SegmentationSchema,
    VolumeSchema,
)


def messages(error: ValidationError) -> str:
    return " | ".join(item["msg"] for item in error.errors())


def test_schemas_are_pydantic_models_with_arbitrary_types():
    for name in schemas.__all__:
        assert issubclass(getattr(schemas, name), BaseModel)
    assert DataSchema.model_config["arbitrary_types_allowed"] is True


def test_ndarray_fields_are_isinstance_checks_without_copy():
    image = np.zeros((2, 2), np.uint8)
    dumped = ImageSchema.model_validate({"image": image}).model_dump()
    assert dumped["image"] is image
    assert dumped == {"image": image, "mask": None, "points": None}
    for value in ([[0, 1], [2, 3]], np.float64(1.0)):
        with pytest.raises(ValidationError, match="Input should be an instance of ndarray"):
            GenericSchema.model_validate({"data": value})


def test_unknown_keys_are_dropped_and_data_schema_is_empty():
    assert DataSchema.model_validate({"x": 1}).model_dump() == {}
    assert SegmentationSchema.model_validate({"mask": np.zeros(3), "y": 2}).model_dump().keys() == {"mask"}


@pytest.mark.parametrize(
    "image",
    [np.zeros((4, 4), np.uint8), np.zeros((3, 4, 4), np.uint16), np.zeros((4, 4), np.float16),
     np.zeros((4, 4), np.float32), np.zeros((4, 4), np.float64)],
)
def test_image_accepts(image):
    ImageSchema.model_validate({"image": image})


@pytest.mark.parametrize(
    "image, fragment",
    [
        (np.zeros((4, 4, 3), np.uint8), "channel-first"),
        (np.zeros((4,), np.uint8), "channel-first"),
        (np.zeros((1, 3, 4, 4), np.uint8), "channel-first"),
        (np.zeros((4, 4), bool), "dtype"),
        (np.zeros((4, 4), np.int32), "dtype"),
        (np.zeros((4, 4), ">u2"), "dtype"),
    ],
)
def test_image_rejects(image, fragment):
    with pytest.raises(ValidationError) as caught:
        ImageSchema.model_validate({"image": image})
    assert fragment in messages(caught.value)


def test_image_mask_and_points_are_not_checked_against_image():
    dumped = ImageSchema.model_validate(
        {"image": np.zeros((4, 4), np.uint8), "mask": np.zeros((9,), bool), "points": np.zeros((5, 2))}
    ).model_dump()
    assert len(dumped["points"]) == 5 and dumped["points"][0].shape == (2,)


def test_volume_rules():
    VolumeSchema.model_validate({"volume": np.zeros((2, 2, 2), np.int32), "stats": b"ok"})
    with pytest.raises(ValidationError) as caught:
        VolumeSchema.model_validate({"volume": np.zeros((2, 2))})
    assert "Volume must be a 3 dimensional array." in messages(caught.value)
    with pytest.raises(ValidationError):
        VolumeSchema.model_validate({"volume": np.zeros((2, 2, 2)), "stats": 3})


def test_mesh_rules():
    good = {"vertices": np.zeros((4, 3)), "faces": np.zeros((2, 3), dtype=int)}
    MeshSchema.model_validate(good)
    for vertices in (np.zeros((4, 3), np.float32), np.zeros((4, 2)), np.zeros(3)):
        with pytest.raises(ValidationError) as caught:
            MeshSchema.model_validate({**good, "vertices": vertices})
        assert "Mesh vertices must be Nx3 numpy array of floats" in messages(caught.value)
    for faces in (np.zeros((2, 3), np.int32), np.zeros((2, 3), np.uint64), np.zeros((2, 4), int)):
        with pytest.raises(ValidationError, match="Mesh faces"):
            MeshSchema.model_validate({**good, "faces": faces})


def test_alignment_defaults_and_explicit_none():
    dumped = AlignmentSchema.model_validate({}).model_dump()
    assert dumped == {"points1": [], "points2": [], "confidence": [], "transform_matrix": None,
                      "translation_matrix": None}
    assert AlignmentSchema.model_validate({"points1": None}).model_dump()["points1"] is None
    confidence = AlignmentSchema.model_validate({"confidence": np.array([0.5, 1.0])}).model_dump()["confidence"]
    assert confidence == [0.5, 1.0] and all(type(c) is float for c in confidence)


def test_embedding_requires_all_fields_and_keeps_tuple_items():
    with pytest.raises(ValidationError) as caught:
        EmbeddingSchema.model_validate({"features": np.zeros(3)})
    assert {e["loc"][0] for e in caught.value.errors()} == {"input_size", "original_size"}
    dumped = EmbeddingSchema.model_validate(
        {"features": np.zeros(3), "input_size": np.array([2, 3]), "original_size": [4, 5]}
    ).model_dump()
    assert dumped["input_size"] == (2, 3) and isinstance(dumped["input_size"][0], np.int64)
    assert dumped["original_size"] == (4, 5)


@pytest.mark.parametrize(
    "names, masks, message",
    [
        (["a"], [], "Number of region names must match number of region masks."),
        (["a"], [np.zeros((2, 2, 2))], "Region mask at index 0 must be a 2D numpy array."),
        (["a", "b"], [np.zeros((2, 2)), np.zeros((3, 3))],
         "All region masks for one output item must have the same shape."),
    ],
)
def test_multiregion_rules(names, masks, message):
    with pytest.raises(ValidationError) as caught:
        MultiRegionSegmentationSchema.model_validate({"region_names": names, "region_masks": masks})
    assert message in messages(caught.value)


def test_multiregion_accepts_empty_and_stacked_masks():
    MultiRegionSegmentationSchema.model_validate({"region_names": [], "region_masks": []})
    dumped = MultiRegionSegmentationSchema.model_validate(
        {"region_names": ["a", "b"], "region_masks": np.zeros((2, 3, 3))}
    ).model_dump()
    assert [m.shape for m in dumped["region_masks"]] == [(3, 3), (3, 3)]


def test_algorithms_can_subclass_data_schema():
    from pydantic import field_validator

    class Thresholded(DataSchema):
        image: np.ndarray
        threshold: float = 0.5

        @field_validator("threshold")
        @classmethod
        def _range(cls, value):
            if not 0 <= value <= 1:
                raise ValueError("threshold out of range")
            return value

    assert Thresholded.model_validate({"image": np.zeros(2)}).model_dump()["threshold"] == 0.5
    with pytest.raises(ValidationError, match="threshold out of range"):
        Thresholded.model_validate({"image": np.zeros(2), "threshold": 3})
