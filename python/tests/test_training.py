"""Training and benchmark jobs through run_job and an InMemoryBridge (``training.md`` §2.4,
§3.3–§3.9, §4.2, §5.3–§5.7), plus the pure-Python TempStore, TrainingSample and
TrainingDataset."""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

import numpy as np
import pytest

from compox._worker import run_job
from compox.algorithm_utils.io_schemas import ImageSchema
from compox.exceptions import CompoxNotFoundError, CompoxTaskError, CompoxValidationError
from compox.tasks.BenchmarkHandler import json_safe_results
from compox.training.TempStore import TempStore
from compox.training.TrainingDataset import TrainingDataset
from compox.training.TrainingSample import TrainingSample
from helpers import Deployment, log_messages, put_image

TRAINABLE = Path(__file__).resolve().parents[2] / "tests" / "algorithms" / "trainable"
UTC_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$")
LOCAL_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}$")


def sample_manifest(files, sample_id=None, tags=()):
    return {
        "sample_id": sample_id or str(uuid.uuid1()),
        "files": files,
        "tags": list(tags),
        "time_created": "2026-01-01 00:00:00.000000",
    }


# -- TempStore (§3.9) --------------------------------------------------------------------------


def test_temp_store_saves_loads_and_cleans_up(tmp_path):
    with TempStore(base_dir=str(tmp_path)) as store:
        image = np.arange(6, dtype=np.uint8).reshape(2, 3)
        paths = store.save("a/b", [{"image": image}, {"image": image * 2}], ImageSchema)
        assert [os.path.dirname(p) for p in paths] == [os.path.join(store.root, "a", "b")] * 2
        assert all(uuid.UUID(os.path.basename(p)).version == 1 for p in paths)
        assert not any(name.endswith(".tmp") for name in os.listdir(os.path.dirname(paths[0])))
        loaded = store.load(paths)
        np.testing.assert_array_equal(loaded[1]["image"], image * 2)
        assert store.load(paths[:1], False, "image", "missing")[0]["missing"] is None
        with pytest.raises(ValueError, match="escapes temp root"):
            store.save("../outside", [{"image": image}], ImageSchema)
        with pytest.raises(ValueError):
            store.save("a", [], ImageSchema)
        root = store.root
    assert not os.path.exists(root)
    store.cleanup()  # idempotent


# -- TrainingSample and TrainingDataset (§2.4, §3.8) -------------------------------------------


def test_training_sample_indexing():
    sample = TrainingSample(
        None,
        sample_manifest=sample_manifest(
            [{"input": ["a", "b"], "target": ["c"]}, {"input": ["d"], "target": []}],
            tags=["Train", " train "],
        ),
    )
    assert len(sample) == 2
    assert sample[0] == {"input": ["a", "b"], "target": ["c"]}
    assert sample[0, "input"] == ["a", "b"]
    assert sample[0:2, "input"] == ["a", "b", "d"]
    assert sample[:, :] == ["a", "b", "c", "d"]
    assert sample.get_key_list() == ["input", "target"]
    assert sample.sample_manifest.tags == ["train"]
    assert sample.check_tags(["train"], ["val"]) and not sample.check_tags(["val"])
    with pytest.raises(TypeError):
        sample[1:3, :]
    with pytest.raises(KeyError):
        sample[0, "nope"]


def test_training_sample_sources(bridge):
    with pytest.raises(CompoxValidationError) as both:
        TrainingSample(bridge)
    assert both.value.code == "sample_source_invalid"
    with pytest.raises(CompoxNotFoundError) as missing:
        TrainingSample(bridge, sample_id="nope")
    assert missing.value.code == "sample_not_found"
    bridge.put_object("sample-store", "bad", json.dumps({"sample_id": "bad", "files": []}).encode())
    with pytest.raises(CompoxValidationError) as invalid:
        TrainingSample(bridge, sample_id="bad")
    assert invalid.value.code == "invalid_sample_manifest"


def test_training_dataset_keys_and_indexing():
    one = TrainingSample(None, sample_manifest=sample_manifest([{"x": ["a"], "y": ["b"]}], "s1"))
    two = TrainingSample(None, sample_manifest=sample_manifest([{"x": ["c"], "y": []}], "s2"))
    other = TrainingSample(None, sample_manifest=sample_manifest([{"z": ["e"]}], "s3"))
    dataset = TrainingDataset([one])
    dataset = dataset + two
    assert len(dataset) == 2 and list(dataset) == [one, two]
    assert dataset[1, "x"] == ["c"]
    assert dataset[0, :] == ["a", "b"]
    assert dataset[0:2, "x"] == [["a"], ["c"]]
    assert dataset[0, 0] == {"x": ["a"], "y": ["b"]}
    assert dataset.get_sample_by_id("s2") is two and dataset.get_sample_by_id("s9") is None
    assert dataset.get_sample_keys() == ["x", "y"]
    assert repr(dataset) == "TrainingDataset(num_samples=2, schema=['x', 'y'])"
    with pytest.raises(ValueError, match="Inconsistent file keys"):
        dataset.add_sample(other)
    with pytest.raises(TypeError):
        dataset + 1


# -- benchmark results (§5.7) ------------------------------------------------------------------


def test_benchmark_results_are_made_json_safe():
    assert json_safe_results(None) == {}
    assert json_safe_results({"t": np.float32(0.5), "n": np.int64(3), "v": np.arange(2)}) == {
        "t": 0.5,
        "n": 3,
        "v": [0, 1],
    }
    with pytest.raises(CompoxTaskError) as not_dict:
        json_safe_results([1, 2])
    assert not_dict.value.code == "invalid_benchmark_results"
    with pytest.raises(CompoxTaskError) as opaque:
        json_safe_results({"x": object()})
    assert opaque.value.code == "benchmark_results_not_serializable"


# -- jobs through run_job ----------------------------------------------------------------------


@pytest.fixture
def trainable(bridge):
    return Deployment(bridge, TRAINABLE, assets={"files/model.json": b'{"scale": 1.0}'})


def job_for(kind, record, deployment, tmp_path):
    cache_dir = tmp_path / "module_cache" / "pid_1_abcdef01"
    cache_dir.mkdir(parents=True, exist_ok=True)
    return {
        "kind": kind,
        "record": record,
        "algorithm_key": f"{deployment.algorithm_id}~trainable~1",
        "algorithm_record": deployment.record,
        "gpu_available": False,
        "mps_available": False,
        "cache_maxsize": 1,
        "module_cache_dir": str(cache_dir),
    }


def run_training(bridge, deployment, tmp_path, training_data, args=None, **fields):
    record = {
        "training_id": str(uuid.uuid1()),
        "algorithm_id": deployment.algorithm_id,
        "status": "PENDING",
        "progress": 0.0,
        "time_started": "2026-01-01 00:00:00.000000",
        "time_completed": None,
        "log": "",
        "training_data": training_data,
        "additional_parameters": args,
        "state": {},
        "tags": ["Exp"],
        "checkpoint_id": None,
        "algorithm_minor_version": None,
        "output_checkpoint_ids": [],
    }
    record.update(fields)
    bridge.begin_task(record, id_field="training_id")
    assert run_job(job_for("training", record, deployment, tmp_path), bridge) is None
    return bridge.record(record["training_id"])


def stored_sample(bridge, files):
    sample_id = str(uuid.uuid1())
    bridge.put_object(
        "sample-store", sample_id, json.dumps(sample_manifest(files, sample_id)).encode()
    )
    return sample_id


def test_training_job_saves_checkpoint_and_completes(bridge, trainable, tmp_path):
    image = put_image(bridge, np.zeros((4, 5), dtype=np.uint8))
    sample = stored_sample(bridge, [{"input": [image]}])
    record = run_training(bridge, trainable, tmp_path, [sample], {"scale": 4.0})
    assert record["status"] == "COMPLETED", record["log"]
    assert record["progress"] == 1.0
    assert UTC_TIME.match(record["time_completed"])
    assert record["state"] == {"epochs": 1}
    assert record["resolved_execution_device"] == "cpu"
    (checkpoint_id,) = record["output_checkpoint_ids"]
    manifest = json.loads(bridge.get_object("algorithm-checkpoint-store", checkpoint_id))
    assert manifest["parent_algorithm_id"] == trainable.algorithm_id
    assert manifest["parent_algorithm_key"] == f"{trainable.algorithm_id}~trainable~1"
    assert manifest["training_id"] == record["training_id"]
    assert manifest["tags"] == ["Exp"] and manifest["properties"] == {"loss": 0.25}
    assert UTC_TIME.match(manifest["created_at"])
    asset = manifest["assets"]["files/model.json"]
    assert json.loads(bridge.get_object("asset-store", asset)) == {"scale": 4.0}
    messages = log_messages(record["log"])
    assert "INFO Starting training." in messages
    assert "INFO trainable: shapes [[{\"input\": [[4, 5]]}]]" in messages
    statuses = [f["status"] for f in bridge.written_fields() if "status" in f]
    assert statuses == ["STARTED", "RUNNING", "COMPLETED"]
    # The log is written once, at the end (§3.2).
    assert sum("log" in f for f in bridge.written_fields()) == 1


def test_training_without_checkpoint_fails_once(bridge, trainable, tmp_path):
    image = put_image(bridge, np.zeros((2, 2), dtype=np.uint8))
    sample = stored_sample(bridge, [{"input": [image]}])
    record = run_training(bridge, trainable, tmp_path, [sample], {"save": False})
    assert record["status"] == "FAILED"
    assert record["error"]["code"] == "training_no_checkpoint"
    assert LOCAL_TIME.match(record["time_completed"])
    statuses = [f["status"] for f in bridge.written_fields() if "status" in f]
    assert statuses == ["STARTED", "RUNNING", "FAILED"]


def test_training_on_no_samples_fails_with_code(bridge, trainable, tmp_path):
    record = run_training(bridge, trainable, tmp_path, [])
    assert record["status"] == "FAILED"
    assert record["error"]["code"] == "training_samples_not_found"


def test_stop_during_training_ends_stopped(bridge, trainable, tmp_path):
    image = put_image(bridge, np.zeros((2, 2), dtype=np.uint8))
    sample = stored_sample(bridge, [{"input": [image]}])
    bridge.stop_when(lambda fields: "progress" in fields and fields["progress"] > 0)
    record = run_training(bridge, trainable, tmp_path, [sample], {"seconds": 5.0})
    assert record["status"] == "STOPPED"
    assert 0.0 < record["progress"] < 1.0
    assert LOCAL_TIME.match(record["time_completed"])
    assert record["output_checkpoint_ids"] == []


def test_checkpoint_paths_are_checked(bridge, tmp_path):
    from algorithms import MAIN_FILES
    from helpers import write_algorithm

    folder = write_algorithm(tmp_path / "bad_saver", {
        **MAIN_FILES,
        "Runner.py": MAIN_FILES["Runner.py"]
        + "\n\ndef _train(self, training_data, args=None):\n"
        "    self.save_checkpoint({'files/unknown.bin': b'x'})\n\nRunner.train = _train\n",
    })
    deployment = Deployment(bridge, folder, assets={"files/config.txt": b"cfg"})
    image = put_image(bridge, np.zeros((2, 2), dtype=np.uint8))
    sample = stored_sample(bridge, [{"input": [image]}])
    record = run_training(bridge, deployment, tmp_path, [sample])
    assert record["status"] == "FAILED"
    assert record["error"]["code"] == "checkpoint_asset_path_invalid"
    assert record["error"]["details"] == {
        "asset_path": "files/unknown.bin",
        "existing_asset_paths": ["files/config.txt"],
    }


def test_benchmark_job_stores_results(bridge, trainable, tmp_path):
    record = {
        "benchmark_id": str(uuid.uuid1()),
        "algorithm_id": trainable.algorithm_id,
        "additional_parameters": {"repeats": 2},
        "status": "PENDING",
        "time_started": "2026-01-01 00:00:00.000000",
        "time_completed": "",
        "log": "",
        "data": {},
    }
    bridge.begin_task(record, id_field="benchmark_id")
    run_job(job_for("benchmark", record, trainable, tmp_path), bridge)
    stored = bridge.record(record["benchmark_id"])
    assert stored["status"] == "COMPLETED", stored["log"]
    assert stored["data"]["model_size"] == 14
    assert set(stored) == {
        "benchmark_id", "algorithm_id", "additional_parameters", "status", "time_started",
        "time_completed", "log", "data",
    }
    final = bridge.written_fields()[-1]
    assert final["status"] == "COMPLETED" and final["data"] == stored["data"]
    assert "INFO Fetching algorithm for benchmark..." in log_messages(stored["log"])


def test_execution_refuses_a_foreign_checkpoint(bridge, trainable, tmp_path):
    """§4.4 quirk fix: a checkpoint whose parent is another algorithm is not applied."""
    from helpers import make_job

    bridge.put_object("asset-store", "foreign-asset", b'{"scale": 9.0}')
    bridge.put_object("algorithm-checkpoint-store", "foreign", json.dumps({
        "checkpoint_id": "foreign", "parent_algorithm_id": "someone-else",
        "assets": {"files/model.json": "foreign-asset"}}).encode())
    job = make_job(bridge, trainable, [], tmp_path, record={"checkpoint_id": "foreign"})
    run_job(job, bridge)
    record = bridge.record(job["record"]["execution_id"])
    assert record["status"] == "FAILED"
    assert record["error"]["code"] == "checkpoint_asset_incompatible"
    assert record["error"]["details"]["parent_algorithm_id"] == "someone-else"


def test_debugging_training_handler_trains_a_folder_locally(tmp_path):
    """§3.10 with its quirks fixed: no pre-seeded records, checkpoints from the folder's assets,
    and a checkpoint's assets as streams with the folder as fallback."""
    from compox._bridge_memory import InMemoryBridge
    from compox.training.DebuggingTrainingHandler import DebuggingTrainingHandler

    bridge = InMemoryBridge()
    image = put_image(bridge, np.zeros((3, 3), dtype=np.uint8))
    sample = stored_sample(bridge, [{"input": [image]}])
    handler = DebuggingTrainingHandler(bridge, "local-training", TempStore(base_dir=str(tmp_path)))
    handler.set_as_current_handler()
    runner = handler.fetch_algorithm(str(TRAINABLE))
    assert runner.model_bytes == (TRAINABLE / "files" / "model.json").read_bytes()
    runner.run_training([sample], args={"scale": 6.0})
    record = bridge.record("local-training")
    assert record["status"] == "COMPLETED", record["log"]
    (checkpoint_id,) = handler.output_checkpoint_ids

    again = DebuggingTrainingHandler(bridge, "second", TempStore(base_dir=str(tmp_path)))
    again.set_as_current_handler()
    runner = again.fetch_algorithm(str(TRAINABLE), checkpoint_id=checkpoint_id)
    assert json.loads(runner.model_bytes) == {"scale": 6.0}
    assert again.fetch_asset("files/model.json").read() == runner.model_bytes
