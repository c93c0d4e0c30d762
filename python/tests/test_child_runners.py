"""Default preprocess/postprocess of the six typed runners (runtime.md §3)."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
from pydantic import ValidationError

from compox.algorithm_utils.Image2AlignmentRunner import Image2AlignmentRunner
from compox.algorithm_utils.Image2EmbeddingRunner import Image2EmbeddingRunner
from compox.algorithm_utils.Image2ImageRunner import Image2ImageRunner
from compox.algorithm_utils.Image2MultiRegionSegmentationRunner import (
    Image2MultiRegionSegmentationRunner,
)
from compox.algorithm_utils.Image2SegmentationRunner import Image2SegmentationRunner
from compox.algorithm_utils.io_schemas import (
    AlignmentSchema,
    EmbeddingSchema,
    ImageSchema,
    MultiRegionSegmentationSchema,
    SegmentationSchema,
)
from compox.algorithm_utils.Segmentation2SegmentationRunner import Segmentation2SegmentationRunner
from compox.tasks.DebuggingTaskHandler import DebuggingTaskHandler
from helpers import put_image


class Alignment(Image2AlignmentRunner):
    def inference(self, data, args=None):
        return [np.eye(3) for _ in range(data.shape[0] - 1)]


@pytest.fixture
def handler() -> DebuggingTaskHandler:
    handler = DebuggingTaskHandler("child-runners")
    handler.set_as_current_handler()
    return handler


def make(runner_class):
    runner = runner_class.__new__(runner_class)
    runner.initialize(device="cpu")
    return runner


PREPROCESS_CASES = [
    (Image2ImageRunner, "image", "_input_images_count", 3),
    (Image2SegmentationRunner, "image", "_input_images_shape", (3, 2, 2)),
    (Image2MultiRegionSegmentationRunner, "image", "_input_images_shape", (3, 2, 2)),
    (Alignment, "image", "_input_images_count", 3),
    (Image2EmbeddingRunner, "image", "_input_images_count", 3),
    (Segmentation2SegmentationRunner, "mask", "_input_images_count", 3),
]


@pytest.mark.parametrize("runner_class, key, attribute, expected", PREPROCESS_CASES)
def test_default_preprocess_fetches_key_and_stacks(handler, runner_class, key, attribute, expected):
    runner = make(runner_class)
    fetched = [{key: np.full((2, 2), i, dtype=np.uint8)} for i in range(3)]
    with mock.patch.object(runner_class, "fetch_data", return_value=fetched) as fetch:
        stacked = runner.preprocess({"input_dataset_ids": ["a", "b", "c"]}, {"x": 1})
    assert fetch.call_args.args[-1] == key
    assert fetch.call_args.args[0] == ["a", "b", "c"]
    assert stacked.shape == (3, 2, 2)
    assert stacked[2, 0, 0] == 2
    assert getattr(runner, attribute) == expected
    assert attribute in runner.runner_context


@pytest.mark.parametrize(
    "runner_class, fetch_schema, post_schema",
    [
        (Image2ImageRunner, ImageSchema, ImageSchema),
        (Image2SegmentationRunner, ImageSchema, SegmentationSchema),
        (Image2MultiRegionSegmentationRunner, ImageSchema, MultiRegionSegmentationSchema),
        (Alignment, ImageSchema, AlignmentSchema),
        (Image2EmbeddingRunner, ImageSchema, EmbeddingSchema),
        (Segmentation2SegmentationRunner, SegmentationSchema, SegmentationSchema),
    ],
)
def test_runners_fix_their_schemas(handler, runner_class, fetch_schema, post_schema):
    runner = make(runner_class)
    with mock.patch.object(handler, "fetch_data", return_value=[]) as fetch:
        runner.fetch_data(["a"], "image")
    assert fetch.call_args.args[1] is fetch_schema
    with mock.patch.object(handler, "post_data", return_value=[]) as post:
        runner.post_data([{}])
    assert post.call_args.args[1] is post_schema
    assert post.call_args.kwargs == {"parallel": False}


def test_preprocess_of_different_shapes_fails(handler):
    runner = make(Image2ImageRunner)
    ids = [put_image(handler.database_connection, np.zeros((2, 2), np.uint8)),
           put_image(handler.database_connection, np.zeros((3, 3), np.uint8))]
    with pytest.raises(ValueError):
        runner.preprocess({"input_dataset_ids": ids})


@pytest.mark.parametrize(
    "runner_class, attribute, value, key",
    [
        (Image2ImageRunner, "_input_images_count", 2, "image"),
        (Image2SegmentationRunner, "_input_images_shape", (2, 4, 4), "mask"),
        (Segmentation2SegmentationRunner, "_input_images_count", 2, "mask"),
    ],
)
def test_postprocess_posts_one_item_per_input(handler, runner_class, attribute, value, key):
    runner = make(runner_class)
    setattr(runner, attribute, value)
    data = np.arange(32, dtype=np.float32).reshape(2, 4, 4)
    with mock.patch.object(runner_class, "post_data", return_value=["x", "y"]) as post:
        assert runner.postprocess(data) == ["x", "y"]
    items = post.call_args.args[0]
    assert [list(item) for item in items] == [[key], [key]]
    np.testing.assert_array_equal(items[1][key], data[1])


@pytest.mark.parametrize(
    "runner_class, attribute, value",
    [
        (Image2ImageRunner, "_input_images_count", 3),
        (Image2SegmentationRunner, "_input_images_shape", (3, 4, 4)),
        (Segmentation2SegmentationRunner, "_input_images_count", 3),
    ],
)
def test_postprocess_count_mismatch_is_value_error(handler, runner_class, attribute, value):
    runner = make(runner_class)
    setattr(runner, attribute, value)
    with pytest.raises(ValueError):
        runner.postprocess(np.zeros((2, 4, 4)))


@pytest.mark.parametrize(
    "runner_class",
    [Image2ImageRunner, Image2SegmentationRunner, Segmentation2SegmentationRunner,
     Image2EmbeddingRunner],
)
def test_postprocess_requires_ndarray(handler, runner_class):
    runner = make(runner_class)
    runner._input_images_count = 1
    runner._input_images_shape = (1, 2, 2)
    with pytest.raises(AssertionError):
        runner.postprocess([[1, 2]])


def test_alignment_postprocess_writes_matrix_twice(handler):
    runner = make(Alignment)
    runner._input_images_count = 3
    matrices = [np.eye(3), 2 * np.eye(3)]
    with mock.patch.object(Alignment, "post_data", return_value=["a", "b"]) as post:
        runner.postprocess(matrices)
    items = post.call_args.args[0]
    assert items[1]["transform_matrix"] is matrices[1]
    assert items[1]["translation_matrix"] is matrices[1]
    assert items[0]["points1"] == [] and items[0]["confidence"] == []


@pytest.mark.parametrize("bad", [[np.eye(3)], np.eye(3), [np.eye(3), "x"]])
def test_alignment_postprocess_checks_are_assertion_errors(handler, bad):
    runner = make(Alignment)
    runner._input_images_count = 3
    with pytest.raises(AssertionError):
        runner.postprocess(bad)


def test_embedding_postprocess_has_no_count_check_but_fails_validation(handler):
    runner = make(Image2EmbeddingRunner)
    runner._input_images_count = 5
    with pytest.raises(ValidationError):
        runner.postprocess(np.zeros((2, 8)))


def test_alignment_inference_is_abstract():
    assert "inference" in Image2AlignmentRunner.__abstractmethods__
    with pytest.raises(NotImplementedError):
        make(Image2ImageRunner).inference(None)


def test_multiregion_normalises_both_forms(handler):
    runner = make(Image2MultiRegionSegmentationRunner)
    runner._input_images_shape = (2, 4, 4)
    mask = np.zeros((4, 4), np.uint8)
    data = [
        {"region_names": ("a", "b"), "region_masks": (mask, mask)},
        {"left": mask, "right": mask, "top": mask},
    ]
    with mock.patch.object(Image2MultiRegionSegmentationRunner, "post_data", return_value=["1", "2"]) as post:
        runner.postprocess(data)
    items = post.call_args.args[0]
    assert items[0] == {"region_names": ["a", "b"], "region_masks": [mask, mask]}
    assert items[1]["region_names"] == ["left", "right", "top"]
    assert len(items[1]["region_masks"]) == 3


@pytest.mark.parametrize(
    "data, error",
    [
        ({"a": 1}, TypeError),
        ([{"a": np.zeros((4, 4))}], ValueError),
        ([{"a": np.zeros((4, 4))}, "not a dict"], TypeError),
        ([{"region_names": ["a"]}, {"a": np.zeros((4, 4))}], ValueError),
        ([{"region_names": ["a", "b"], "region_masks": [np.zeros((4, 4))]}, {}], ValueError),
    ],
)
def test_multiregion_postprocess_errors(handler, data, error):
    runner = make(Image2MultiRegionSegmentationRunner)
    runner._input_images_shape = (2, 4, 4)
    with pytest.raises(error):
        runner.postprocess(data)


def test_multiregion_postprocess_end_to_end_through_schema(handler):
    runner = make(Image2MultiRegionSegmentationRunner)
    runner._input_images_shape = (1, 4, 4)
    with pytest.raises(ValidationError, match="same shape"):
        runner.postprocess([{"a": np.zeros((4, 4)), "b": np.zeros((3, 3))}])
    ids = runner.postprocess([{"a": np.zeros((4, 4)), "b": np.ones((4, 4))}])
    fetched = handler.fetch_data(ids, MultiRegionSegmentationSchema)
    assert fetched[0]["region_names"] == ["a", "b"]
    np.testing.assert_array_equal(fetched[0]["region_masks"][1], np.ones((4, 4)))


def test_algorithm_types():
    assert Image2ImageRunner.algorithm_type == "Image2Image"
    assert Image2SegmentationRunner.algorithm_type == "Image2Segmentation"
    assert Image2MultiRegionSegmentationRunner.algorithm_type == "Image2MultiRegionSegmentation"
    assert Image2AlignmentRunner.algorithm_type == "Image2Alignment"
    assert Image2EmbeddingRunner.algorithm_type == "Image2Embedding"
    assert Segmentation2SegmentationRunner.algorithm_type == "Segmentation2Segmentation"
