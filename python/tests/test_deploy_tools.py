"""Module build steps 4–7 and the import relativizer (algorithms.md §2.3, §2.3.1)."""

from __future__ import annotations

import importlib.util
import io
import json
import marshal
import py_compile
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from compox._deploy_tools import (
    OUTER_INIT_TEXT,
    build_module_zip,
    compute_module_id,
    local_top_level_names,
    process_package,
    relative_module,
    relativize_source,
    stage_package,
)
from helpers import write_algorithm

LOCAL = {"Runner", "main", "dependencies"}


@pytest.mark.parametrize(
    "package, source, expected",
    [
        ([], "from dependencies.utils import f", "from .dependencies.utils import f"),
        (["dependencies", "sub"], "from dependencies.utils import f", "from ..utils import f"),
        (["dependencies", "sub"], "from main import x", "from ...main import x"),
        (["dependencies"], "from dependencies import utils", "from . import utils"),
        ([], "from main import a, b as c", "from .main import a, b as c"),
        ([], "import dependencies", "from . import dependencies"),
        ([], "import dependencies.utils as u", "from .dependencies import utils as u"),
        ([], "import main as m", "from . import main as m"),
        (["dependencies", "sub"], "import main", "from ... import main"),
        (["dependencies", "sub"], "import dependencies.utils as u", "from .. import utils as u"),
        ([], "import numpy", "import numpy"),
        ([], "from numpy import array", "from numpy import array"),
        ([], "from . import main", "from . import main"),
        ([], "from .dependencies import utils", "from .dependencies import utils"),
        ([], "from dependencies import *", "from .dependencies import *"),
    ],
)
def test_relativizer_examples(package, source, expected):
    assert relativize_source(source, package, LOCAL) == expected


def test_import_of_dotted_module_binds_the_top_name():
    rewritten = relativize_source("import dependencies.utils", [], LOCAL)
    assert rewritten.splitlines() == [
        "from .dependencies import utils as _compox_import_dependencies_utils",
        "del _compox_import_dependencies_utils",
        "from . import dependencies",
    ]


def test_mixed_import_statement_is_split_in_order():
    rewritten = relativize_source("import os, dependencies, sys", [], LOCAL)
    assert rewritten.splitlines() == ["import os", "from . import dependencies", "import sys"]


def test_nested_imports_are_rewritten_and_code_is_unparsed():
    source = (
        "# a comment\n"
        "def f():\n"
        "    import dependencies.utils as u  # trailing\n"
        "    return u\n"
        "try:\n"
        "    from main import x\n"
        "except ImportError:\n"
        "    x = None\n"
        "class C:\n"
        "    from dependencies import utils\n"
        "y = 'single'\n"
    )
    rewritten = relativize_source(source, [], LOCAL)
    assert "from .dependencies import utils as u" in rewritten
    assert "    from .main import x" in rewritten
    assert "    from .dependencies import utils" in rewritten
    assert "comment" not in rewritten and "y = 'single'" in rewritten


def test_relative_module_function():
    assert relative_module([], ["dependencies", "utils"]) == (1, "dependencies.utils")
    assert relative_module(["dependencies", "sub"], ["dependencies", "utils"]) == (2, "utils")
    assert relative_module(["a", "b"], []) == (3, "")


def stage(tmp_path: Path, files: dict) -> Path:
    folder = write_algorithm(tmp_path / "algo", files)
    package = tmp_path / "build" / "__module__"
    stage_package(str(folder), str(package))
    return package


FILES = {
    "Runner.py": '''
        """Docstring."""
        from dependencies.sub.layer import value
        import dependencies.utils as u
        import dependencies

        class Runner:
            answer = value + u.base
    ''',
    "dependencies/utils.py": "base = 40\n",
    "dependencies/sub/layer.py": '''
        from dependencies.utils import base
        from main import two
        value = two + base - base
    ''',
    "main.py": "two = 2\n",
    "files/readme.txt": "not code",
}


def test_process_package_rewrites_and_patches_init(tmp_path):
    package = stage(tmp_path, FILES)
    assert local_top_level_names(str(package)) == {"Runner", "main", "dependencies"}
    assert (package / "dependencies" / "sub" / "__init__.py").read_bytes() == b""
    assert not (package / "files").exists()

    result = process_package(str(package), obfuscate=False, pyc_only=False)

    assert result == {"warnings": []}
    init = (package / "__init__.py").read_bytes()
    assert init == b"\nfrom .Runner import Runner\n" and len(init) == 28
    layer = (package / "dependencies" / "sub" / "layer.py").read_text()
    assert "from ..utils import base" in layer and "from ...main import two" in layer
    runner = (package / "Runner.py").read_text()
    assert "from .dependencies.sub.layer import value" in runner
    assert "from .dependencies import utils as u" in runner
    assert "from . import dependencies" in runner


def test_rewritten_package_imports_under_any_name(tmp_path):
    package = stage(tmp_path, FILES)
    process_package(str(package), obfuscate=False, pyc_only=False)
    renamed = package.rename(package.parent / "pkg_under_test_1")
    sys.path.insert(0, str(renamed.parent))
    try:
        module = importlib.import_module("pkg_under_test_1")
        assert module.Runner.answer == 42
        assert module.Runner.__module__ == "pkg_under_test_1.Runner"
    finally:
        sys.path.remove(str(renamed.parent))
        for name in [n for n in sys.modules if n.startswith("pkg_under_test_1")]:
            del sys.modules[name]


def test_pyc_only_compiles_checked_hash_and_removes_sources(tmp_path):
    package = stage(tmp_path, FILES)
    process_package(str(package), obfuscate=False, pyc_only=True)
    assert list(package.rglob("*.py")) == []
    compiled = sorted(p.relative_to(package).as_posix() for p in package.rglob("*.pyc"))
    assert compiled == [
        "Runner.pyc", "__init__.pyc", "dependencies/__init__.pyc", "dependencies/sub/__init__.pyc",
        "dependencies/sub/layer.pyc", "dependencies/utils.pyc", "main.pyc",
    ]
    data = (package / "dependencies" / "utils.pyc").read_bytes()
    assert data[:4] == importlib.util.MAGIC_NUMBER
    flags = int.from_bytes(data[4:8], "little")
    assert flags == 0b11  # hash-based and checked
    code = marshal.loads(data[16:])
    assert code.co_filename == "dependencies/utils.py"
    assert not list(package.rglob("__pycache__"))


def test_obfuscate_minifies_and_drops_docstrings(tmp_path):
    package = stage(tmp_path, FILES)
    before = (package / "Runner.py").read_text()
    process_package(str(package), obfuscate=True, pyc_only=False)
    after = (package / "Runner.py").read_text()
    assert "Docstring" in before and "Docstring" not in after
    assert len(after) < len(before)
    assert "from.dependencies import utils as u" in after
    compile(after, "Runner.py", "exec")


def test_obfuscate_without_python_minifier_fails_instead_of_shipping_readable_code(
        tmp_path, monkeypatch):
    package = stage(tmp_path, FILES)
    monkeypatch.setitem(sys.modules, "python_minifier", None)  # import raises ImportError
    with pytest.raises(RuntimeError, match="python-minifier is not installed.*obfuscate = false"):
        process_package(str(package), obfuscate=True, pyc_only=False)
    # Without obfuscation the minifier is not needed.
    plain = stage(tmp_path / "plain", FILES)
    process_package(str(plain), obfuscate=False, pyc_only=False)
    assert "Docstring" in (plain / "Runner.py").read_text()


def test_unparseable_file_is_left_alone_then_fails_compilation(tmp_path):
    files = dict(FILES, **{"broken.py": "def broken(:\n    pass\n"})
    package = stage(tmp_path, files)
    original = (package / "broken.py").read_bytes()
    result = process_package(str(package), obfuscate=False, pyc_only=False)
    assert (package / "broken.py").read_bytes() == original
    assert any("broken.py" in warning for warning in result["warnings"])

    package = stage(tmp_path / "again", files)
    with pytest.raises(py_compile.PyCompileError):
        process_package(str(package), obfuscate=False, pyc_only=True)
    package = stage(tmp_path / "third", files)
    with pytest.raises(SyntaxError):
        process_package(str(package), obfuscate=True, pyc_only=False)


def test_shadowing_a_known_module_warns(tmp_path):
    package = stage(tmp_path, {"Runner.py": "import json\n", "json.py": "x = 1\n"})
    result = process_package(str(package), obfuscate=False, pyc_only=False)
    assert any("'json'" in warning for warning in result["warnings"])
    assert (package / "Runner.py").read_text().startswith("from . import json")


def test_command_line(tmp_path):
    package = stage(tmp_path, FILES)
    completed = subprocess.run(
        [sys.executable, "-m", "compox._deploy_tools", str(package), "--obfuscate", "false",
         "--pyc-only", "true"],
        capture_output=True, text=True, check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout.strip()) == {"warnings": []}
    assert (package / "Runner.pyc").is_file()

    completed = subprocess.run(
        [sys.executable, "-m", "compox._deploy_tools", str(tmp_path / "nowhere"), "--obfuscate",
         "false", "--pyc-only", "false"],
        capture_output=True, text=True, check=False,
    )
    assert completed.returncode == 1
    assert json.loads(completed.stdout.strip())["error"].startswith("FileNotFoundError: ")


def test_build_module_zip_layout(tmp_path):
    folder = write_algorithm(tmp_path / "algo", FILES)
    module_id, zip_bytes, _ = build_module_zip(str(folder), pyc_only=True)
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as archive:
        names = set(archive.namelist())
        assert archive.read("__init__.py").decode() == OUTER_INIT_TEXT
        assert len(OUTER_INIT_TEXT.encode()) == 27
    assert f"{module_id}/" in names and f"{module_id}/dependencies/" in names
    assert f"{module_id}/Runner.pyc" in names and f"{module_id}/dependencies/utils.pyc" in names
    assert not any(name.endswith(".py") and name != "__init__.py" for name in names)
    assert len(module_id) == 32


def test_module_id_is_a_content_hash(tmp_path):
    folder = write_algorithm(tmp_path / "algo", FILES)
    first, _, _ = build_module_zip(str(folder))
    second, _, _ = build_module_zip(str(folder))
    assert first == second
    (folder / "main.py").write_text("two = 3\n")
    assert build_module_zip(str(folder))[0] != first

    package = tmp_path / "pkg"
    package.mkdir()
    (package / "b.py").write_bytes(b"B")
    (package / "a.py").write_bytes(b"A")
    import hashlib
    expected = hashlib.md5(b"a.py\x00A" + b"b.py\x00B").hexdigest()
    assert compute_module_id(str(package), pyc_only=False) == expected
