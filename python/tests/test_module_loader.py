"""Module archive extraction, integrity checks and import (runtime.md §9.3, algorithms.md §7)."""

from __future__ import annotations

import io
import os
import stat
import sys
import zipfile

import pytest

from compox._deploy_tools import build_module_zip
from compox.exceptions import CompoxImportError, CompoxValidationError
from compox.tasks._module_loader import load_runner_class, sanitize_module_id
from helpers import write_algorithm

RUNNER = '''
    from compox.algorithm_utils.BaseRunner import BaseRunner

    class Runner(BaseRunner):
        def preprocess(self, input_data, args=None):
            return None

        def inference(self, data, args=None):
            return None

        def postprocess(self, data, args=None):
            return []
'''


def make_zip(members: dict) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    return buffer.getvalue()


def test_sanitize_module_id():
    assert sanitize_module_id("9b2f") == "m_9b2f"
    assert sanitize_module_id("abc-def..g") == "abc_def_g"
    assert sanitize_module_id("") == "m_"


def test_extracts_once_with_private_permissions_and_imports_as_package(tmp_path):
    module_id, zip_bytes, _ = build_module_zip(str(write_algorithm(tmp_path / "a", {"Runner.py": RUNNER})))
    cache = tmp_path / "cache"
    runner_class = load_runner_class(zip_bytes, module_id, str(cache))
    module_dir = cache / sanitize_module_id(module_id) / "module"
    assert runner_class.__module__ == f"{module_id}.Runner"
    assert sys.path[0] == str(module_dir)
    assert stat.S_IMODE(os.stat(module_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(module_dir / module_id / "Runner.py").st_mode) == 0o600
    assert load_runner_class(zip_bytes, module_id, str(cache)) is runner_class
    assert sys.path.count(str(module_dir)) == 1


@pytest.mark.parametrize("name", ["../evil.py", "/abs.py", "a/../../b.py", "C:/x.py"])
def test_unsafe_member_paths_are_rejected(tmp_path, name):
    with pytest.raises(CompoxValidationError) as caught:
        load_runner_class(make_zip({name: "x = 1"}), "bad", str(tmp_path))
    assert caught.value.code == "unsafe_zip_member_path"
    assert caught.value.http_status == 400


def test_integrity_mismatch_and_missing_file(tmp_path):
    module_id, zip_bytes, _ = build_module_zip(str(write_algorithm(tmp_path / "a", {"Runner.py": RUNNER})))
    cache = tmp_path / "cache"
    load_runner_class(zip_bytes, module_id, str(cache))
    runner_file = cache / sanitize_module_id(module_id) / "module" / module_id / "Runner.py"
    runner_file.write_text("tampered = True\n")
    with pytest.raises(CompoxImportError) as caught:
        load_runner_class(zip_bytes, module_id, str(cache))
    assert caught.value.code == "module_cache_integrity_mismatch"
    runner_file.unlink()
    with pytest.raises(CompoxImportError) as caught:
        load_runner_class(zip_bytes, module_id, str(cache))
    assert caught.value.code == "module_cache_integrity_missing_file"


def test_hand_made_zip_without_package_loads_standalone(tmp_path):
    import textwrap

    zip_bytes = make_zip({"Runner.py": textwrap.dedent(RUNNER)})
    runner_class = load_runner_class(zip_bytes, "hand-made", str(tmp_path))
    assert runner_class.__module__ == "compox_runner_hand_made"


def test_nested_runner_is_found(tmp_path):
    import textwrap

    zip_bytes = make_zip({"outer/inner/__init__.py": "", "outer/__init__.py": "",
                          "outer/inner/Runner.py": textwrap.dedent(RUNNER)})
    runner_class = load_runner_class(zip_bytes, "nested_pkg_x", str(tmp_path))
    assert runner_class.__module__ == "outer.inner.Runner"
