"""Local debugging: build_params_dict, debug, the CLI, LocalDebugSession (runtime.md §13)."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest

from compox.algorithm_debug import BadParameter, build_params_dict, debug
from compox.algorithm_utils.io_schemas import ImageSchema
from compox.algorithm_utils.LocalDebugSession import LocalDebugSession
from helpers import write_algorithm

DEBUG_RUNNER = {
    "Runner.py": '''
        from compox.algorithm_utils.Image2ImageRunner import Image2ImageRunner
        from compox.algorithm_debug import debug
        from helpers_local import scale

        class Runner(Image2ImageRunner):
            def load_assets(self):
                self.factor = float(self.fetch_asset("files/factor.txt").read())

            def inference(self, data, args=None):
                self.log_message(f"device={self.device} factor={self.factor} args={args}")
                return scale(data, self.factor).astype(data.dtype)

        if __name__ == "__main__":
            debug()
    ''',
    "helpers_local.py": '''
        def scale(data, factor):
            return data * factor
    ''',
    "files/factor.txt": "2",
}


def test_build_params_dict():
    assert build_params_dict([]) is None
    assert build_params_dict(None) is None
    assert build_params_dict(["a=3", " b = true ", "c=[1,2]", 'd={"x":1}', "e=text", "a=4", "f=x=y"]) == {
        "a": 4, "b": True, "c": [1, 2], "d": {"x": 1}, "e": "text", "f": "x=y",
    }
    with pytest.raises(BadParameter, match="must be in the form key=value"):
        build_params_dict(["novalue"])


def test_debug_import_is_cheap():
    code = ("import sys\nfrom compox.algorithm_debug import debug\n"
            "print(sorted(m for m in ('PIL', 'argparse', 'h5py', 'compox.algorithm_utils.LocalDebugSession') "
            "if m in sys.modules))")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "[]"


def test_load_data_variants(tmp_path):
    from PIL import Image

    session = LocalDebugSession(task_id="loads")
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("b.PNG", "a.png", "notes.txt"):
        if name.endswith("txt"):
            (folder / name).write_text("x")
        else:
            Image.fromarray(np.full((4, 5), ord(name[0]), np.uint8)).save(folder / name)
    ids = session.load_data(str(folder))
    images = [session.task.fetch_data([i], ImageSchema)[0]["image"] for i in ids]
    assert [int(image[0, 0]) for image in images] == [ord("a"), ord("b")]

    np.save(tmp_path / "vol.npy", np.zeros((3, 4, 4), np.float32))
    assert len(session.load_data(str(tmp_path / "vol.npy"))) == 3
    np.save(tmp_path / "bad.npy", np.zeros((2, 2, 2, 2)))
    with pytest.raises(ValueError):
        session.load_data(str(tmp_path / "bad.npy"))

    with h5py.File(tmp_path / "data.h5", "w") as file:
        file.create_dataset("meta", data=np.zeros(3))
        file.create_group("g").create_dataset("stack", data=np.zeros((2, 4, 4), np.uint8))
    assert len(session.load_data(str(tmp_path / "data.h5"))) == 2
    with h5py.File(tmp_path / "empty.h5", "w") as file:
        file.create_dataset("meta", data=np.zeros(3))
    with pytest.raises(KeyError):
        session.load_data(str(tmp_path / "empty.h5"))

    frames = [Image.fromarray(np.full((3, 3), i, np.uint8)) for i in range(3)]
    frames[0].save(tmp_path / "stack.tif", save_all=True, append_images=frames[1:])
    assert len(session.load_data(str(tmp_path / "stack.tif"))) == 3

    with pytest.raises(ValueError, match="Unsupported file type"):
        session.load_data(str(tmp_path / "file.xyz"))
    with pytest.raises(ValueError):
        session.load_data(str(tmp_path / "images" / "notes.txt"))


def test_debug_runs_an_algorithm_folder(tmp_path, capsys):
    algorithm = write_algorithm(tmp_path / "algo", DEBUG_RUNNER)
    np.save(tmp_path / "input.npy", np.ones((2, 3, 3), np.uint8))
    out = debug(algo_dir=str(algorithm), data=str(tmp_path / "input.npy"), params={"k": 1}, device="gpu")
    assert out is None
    printed = capsys.readouterr()
    assert "Output dataset ids: [" in printed.out
    assert "device=cuda factor=2.0 args={'k': 1}" in printed.err


def test_session_outputs_and_unique_runner_modules(tmp_path):
    first = write_algorithm(tmp_path / "one", DEBUG_RUNNER)
    second = write_algorithm(tmp_path / "two", dict(DEBUG_RUNNER, **{"files/factor.txt": "3"}))
    np.save(tmp_path / "input.npy", np.ones((3, 3), np.uint8))
    results = []
    for folder in (first, second):
        session = LocalDebugSession(task_id=folder.name, device="cpu")
        ids = session.load_data(str(tmp_path / "input.npy"))
        session.run(str(folder), {"input_dataset_ids": ids})
        output_ids = session.task.output_dataset_ids
        (body,) = session.task.database_connection.get_objects("data-store", output_ids)
        results.append(session.task.fetch_data(output_ids, ImageSchema)[0]["image"][0, 0])
        assert body and session.task.status == "COMPLETED"
        assert str(folder) not in sys.path
    assert results == [2, 3]


def test_debug_failure_raises_to_the_caller(tmp_path):
    algorithm = write_algorithm(tmp_path / "algo", dict(DEBUG_RUNNER, **{"files/factor.txt": "nan?"}))
    np.save(tmp_path / "input.npy", np.ones((3, 3), np.uint8))
    with pytest.raises(ValueError):
        debug(algo_dir=str(algorithm), data=str(tmp_path / "input.npy"))
    with pytest.raises(ImportError, match="Could not import the algorithm runner"):
        LocalDebugSession().run(str(tmp_path / "missing"), {"input_dataset_ids": []})


def test_cli(tmp_path):
    algorithm = write_algorithm(tmp_path / "algo", DEBUG_RUNNER)
    np.save(tmp_path / "input.npy", np.ones((3, 3), np.uint8))
    completed = subprocess.run(
        [sys.executable, "-m", "compox.algorithm_debug", "run", "--algo", str(algorithm),
         "--data", str(tmp_path / "input.npy"), "-p", "k=5", "--param", "name=x"],
        capture_output=True, text=True, check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "args={'k': 5, 'name': 'x'}" in completed.stderr
    completed = subprocess.run(
        [sys.executable, "-m", "compox.algorithm_debug", "run", "--data", "x", "-p", "broken"],
        capture_output=True, text=True, check=False,
    )
    assert completed.returncode == 2 and "key=value" in completed.stderr
