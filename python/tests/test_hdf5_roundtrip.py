"""HDF5 files in data-store: what post_data writes and fetch_data returns (runtime.md §5)."""

from __future__ import annotations

import io

import h5py
import numpy as np
import pytest
from pydantic import ValidationError

from compox.algorithm_utils import _hdf5_io
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
from compox.exceptions import CompoxExecutionError
from compox.tasks.DebuggingTaskHandler import DebuggingTaskHandler
from helpers import h5_bytes


@pytest.fixture
def handler() -> DebuggingTaskHandler:
    return DebuggingTaskHandler("hdf5")


def post_and_open(handler, item, schema):
    (object_id,) = handler.post_data([item], schema)
    body = handler.database_connection.get_object("data-store", object_id)
    fetched = handler.fetch_data([object_id], schema)[0]
    return h5py.File(io.BytesIO(body), "r"), fetched


def is_bool_enum(dataset) -> bool:
    """h5py's bool convention on disk: an 8-bit HDF5 enum FALSE=0, TRUE=1."""
    low_level = dataset.id.get_type()
    if not isinstance(low_level, h5py.h5t.TypeEnumID) or low_level.get_size() != 1:
        return False
    members = {low_level.get_member_name(i): low_level.get_member_value(i)
               for i in range(low_level.get_nmembers())}
    return members == {b"FALSE": 0, b"TRUE": 1}


def is_utf8_string(dataset) -> bool:
    info = h5py.check_string_dtype(dataset.dtype)
    return info is not None and info.encoding == "utf-8" and info.length is None


@pytest.mark.parametrize("shape, dtype", [((4, 5), np.uint16), ((3, 4, 5), np.float32)])
def test_image_keeps_dtype_and_shape(handler, shape, dtype):
    image = np.arange(np.prod(shape)).reshape(shape).astype(dtype)
    file, fetched = post_and_open(handler, {"image": image}, ImageSchema)
    with file:
        assert file["image"].shape == shape and file["image"].dtype == dtype
        assert set(file) == {"image"}  # None fields are omitted
        assert dict(file.attrs) == {} and file["image"].chunks is None
    np.testing.assert_array_equal(fetched["image"], image)
    assert fetched["image"].dtype == dtype
    assert fetched["mask"] is None and fetched["points"] is None


@pytest.mark.parametrize("schema, field, value", [
    (ImageSchema, "image", np.zeros((4, 4), np.uint8)),
    (VolumeSchema, "volume", np.zeros((2, 4, 4), np.uint8)),
])
def test_bool_mask_is_an_enum_and_points_are_stacked(handler, schema, field, value):
    mask = np.eye(4, dtype=bool)
    points = [np.array([1.0, 2.0]), np.array([3.0, 4.0]), np.array([5.0, 6.0])]
    file, fetched = post_and_open(handler, {field: value, "mask": mask, "points": points}, schema)
    with file:
        assert is_bool_enum(file["mask"])
        assert file["points"].shape == (3, 2) and file["points"].dtype == np.float64
    assert fetched["mask"].dtype == bool
    np.testing.assert_array_equal(fetched["mask"], mask)
    assert isinstance(fetched["points"], list) and len(fetched["points"]) == 3
    np.testing.assert_array_equal(fetched["points"][2], points[2])


def test_volume_and_stats_string(handler):
    volume = np.ones((3, 4, 5), np.int16)
    file, fetched = post_and_open(handler, {"volume": volume, "stats": "mean=1"}, VolumeSchema)
    with file:
        assert file["volume"].shape == (3, 4, 5)
        assert file["stats"].shape == () and is_utf8_string(file["stats"])
    assert fetched["stats"] == "mean=1" and isinstance(fetched["stats"], str)
    np.testing.assert_array_equal(fetched["volume"], volume)


def test_mesh_vertices_faces_and_stats(handler):
    vertices = np.random.default_rng(0).random((6, 3))
    faces = np.array([[0, 1, 2], [3, 4, 5]])
    file, fetched = post_and_open(handler, {"vertices": vertices, "faces": faces, "stats": "ok"}, MeshSchema)
    with file:
        assert file["vertices"].dtype == np.float64 and file["faces"].dtype == np.int64
    np.testing.assert_array_equal(fetched["vertices"], vertices)
    np.testing.assert_array_equal(fetched["faces"], faces)
    assert fetched["stats"] == "ok"


def test_alignment_empty_defaults_are_empty_string_datasets(handler):
    matrix = np.eye(3)
    file, fetched = post_and_open(handler, {"transform_matrix": matrix}, AlignmentSchema)
    with file:
        for key in ("points1", "points2", "confidence"):
            assert file[key].shape == (0,) and is_utf8_string(file[key])
        assert file["transform_matrix"].shape == (3, 3)
        assert "translation_matrix" not in file
    assert fetched["points1"] == [] and fetched["points2"] == [] and fetched["confidence"] == []
    np.testing.assert_array_equal(fetched["transform_matrix"], matrix)
    assert fetched["translation_matrix"] is None


def test_alignment_non_empty_points_and_confidence(handler):
    item = {
        "points1": [np.array([0.0, 1.0]), np.array([2.0, 3.0])],
        "points2": [np.array([4.0, 5.0]), np.array([6.0, 7.0])],
        "confidence": [0.25, 0.75],
        "transform_matrix": np.eye(3),
        "translation_matrix": 2 * np.eye(3),
    }
    file, fetched = post_and_open(handler, item, AlignmentSchema)
    with file:
        assert file["points1"].shape == (2, 2) and file["points1"].dtype.kind == "f"
        assert file["confidence"].shape == (2,) and file["confidence"].dtype == np.float64
    assert isinstance(fetched["points2"], list)
    np.testing.assert_array_equal(fetched["points2"][1], [6.0, 7.0])
    assert fetched["confidence"] == [0.25, 0.75]
    assert all(type(value) is float for value in fetched["confidence"])
    np.testing.assert_array_equal(fetched["translation_matrix"], 2 * np.eye(3))


def test_embedding_features_and_sizes(handler):
    features = np.arange(8, dtype=np.float32).reshape(2, 4)
    item = {"features": features, "input_size": (224, 224), "original_size": (512, 480)}
    file, fetched = post_and_open(handler, item, EmbeddingSchema)
    with file:
        assert file["input_size"].shape == (2,) and file["input_size"].dtype == np.int64
    assert fetched["features"].dtype == np.float32
    assert fetched["original_size"] == (512, 480)
    assert isinstance(fetched["original_size"], tuple) and isinstance(fetched["input_size"][0], np.int64)


def test_multiregion_names_and_stacked_masks(handler):
    masks = [np.zeros((3, 3), np.uint8), np.ones((3, 3), np.uint8)]
    file, fetched = post_and_open(handler, {"region_names": ["bg", "cell"], "region_masks": masks},
                                  MultiRegionSegmentationSchema)
    with file:
        assert is_utf8_string(file["region_names"]) and file["region_names"].shape == (2,)
        assert file["region_masks"].shape == (2, 3, 3) and file["region_masks"].dtype == np.uint8
    assert fetched["region_names"] == ["bg", "cell"]
    assert [m.shape for m in fetched["region_masks"]] == [(3, 3), (3, 3)]
    np.testing.assert_array_equal(fetched["region_masks"][1], masks[1])


def test_multiregion_empty_lists(handler):
    file, fetched = post_and_open(handler, {"region_names": [], "region_masks": []},
                                  MultiRegionSegmentationSchema)
    with file:
        assert file["region_masks"].shape == (0,) and is_utf8_string(file["region_masks"])
    assert fetched == {"region_names": [], "region_masks": []}


def test_segmentation_mask(handler):
    mask = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    file, fetched = post_and_open(handler, {"mask": mask}, SegmentationSchema)
    with file:
        assert file["mask"].dtype == np.int32
    np.testing.assert_array_equal(fetched["mask"], mask)


def test_data_schema_writes_empty_files(handler):
    (object_id,) = handler.post_data([{"anything": np.zeros(2)}], DataSchema)
    with h5py.File(io.BytesIO(handler.database_connection.get_object("data-store", object_id)), "r") as file:
        assert list(file) == []
    assert handler.fetch_data([object_id], DataSchema) == [{}]


def test_post_returns_uuid1_ids_in_order_and_counts_stats(handler):
    ids = handler.post_data([{"mask": np.full(2, i)} for i in range(3)], SegmentationSchema, parallel=True)
    assert all(len(i) == 36 and i[14] == "1" for i in ids)
    assert [int(f["mask"][0]) for f in handler.fetch_data(ids, SegmentationSchema, parallel=True)] == [0, 1, 2]
    assert handler.file_posting_stats["count"] == 3.0
    assert handler.file_fetching_stats["count"] == 3.0
    assert "Uploading 3 results to the database." in handler.log


def test_reading_decodes_strings_and_skips_groups(handler):
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as file:
        file.create_dataset("data", data=np.zeros(2))
        file.create_dataset("ascii", data=np.array([b"ab", b"cd"], dtype="S2"))
        file.create_dataset("bad", data=np.bytes_(b"\xff\xfe"))
        file.create_group("group")
    decoded = _hdf5_io.decode(buffer.getvalue())
    assert set(decoded) == {"data", "ascii", "bad"}
    assert decoded["ascii"] == ["ab", "cd"]
    assert decoded["bad"] == b"\xff\xfe"
    with pytest.raises(TypeError, match="group"):
        _hdf5_io.decode(buffer.getvalue(), ["group"])


def test_writing_string_arrays_and_scalars():
    body = _hdf5_io.encode({"u": np.array(["x", "yz"]), "s": np.array([b"q"]), "n": 3, "f": 1.5, "b": True})
    with h5py.File(io.BytesIO(body), "r") as file:
        assert is_utf8_string(file["u"]) and is_utf8_string(file["s"])
        assert file["n"].dtype == np.int64 and file["f"].dtype == np.float64
        assert is_bool_enum(file["b"])
    decoded = _hdf5_io.decode(body)
    assert decoded["u"] == ["x", "yz"] and decoded["s"] == ["q"]
    assert decoded["n"] == 3 and isinstance(decoded["n"], np.int64)


def test_fetch_with_missing_key_fails_validation(handler):
    handler.database_connection.put_object("data-store", "no-image", h5_bytes(data=np.zeros((2, 2))))
    with pytest.raises(ValidationError):
        handler.fetch_data(["no-image"], ImageSchema, "image")
    assert handler.fetch_data(["no-image"], GenericSchema)[0]["data"].shape == (2, 2)


def test_fetch_of_broken_or_missing_objects_is_data_fetch_failed(handler):
    handler.database_connection.put_object("data-store", "broken", b"not hdf5")
    for ids in (["broken"], ["missing"]):
        with pytest.raises(CompoxExecutionError) as caught:
            handler.fetch_data(ids, ImageSchema)
        assert caught.value.code == "data_fetch_failed"
        assert caught.value.details == {"file_ids": ids}
    assert handler.status == "STARTED"  # helpers do not mark the task failed themselves


def test_ragged_post_is_data_post_failed(handler):
    with pytest.raises(CompoxExecutionError) as caught:
        handler.post_data([{"points": [np.zeros(2), np.zeros(3)], "image": np.zeros((2, 2))}], ImageSchema)
    assert caught.value.code == "data_post_failed"
    with pytest.raises(ValidationError):
        handler.post_data([{"image": [1, 2]}], ImageSchema)
