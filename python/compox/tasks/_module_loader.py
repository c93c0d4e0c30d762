"""Extraction and import of algorithm module zips (``runtime.md`` §9.3, ``algorithms.md`` §7).

Flow for one load:

1. Check every member name (no absolute paths, drive letters or ``..``).
2. Extract once per process into ``<cache dir>/<safe module id>/module/`` (through a temporary
   sibling directory and a rename, so a half-written extraction is never used), with
   permissions 0700/0600.
3. On every load, compare the SHA-256 of each file member with the extracted file.
4. Put ``module/`` at the front of ``sys.path`` (once; it stays there).
5. Find the Runner file and import it as ``<pkg>.Runner`` when every directory on its way has
   an ``__init__``; otherwise load it standalone as ``compox_runner_<safe id>``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import io
import os
import re
import shutil
import sys
import tempfile
import threading
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, List, Optional

from compox.exceptions import CompoxImportError, CompoxValidationError

_extract_lock = threading.Lock()


def sanitize_module_id(module_id: str) -> str:
    """Turn a module id into a safe directory name (``9b2f...`` → ``m_9b2f...``)."""
    safe = re.sub(r"[^0-9a-zA-Z_]+", "_", module_id)
    if not safe or safe[0].isdigit():
        safe = f"m_{safe}"
    return safe


def load_runner_class(zip_bytes: bytes, module_id: str, cache_dir: str) -> Any:
    """Extract (if needed), verify and import a module zip; return its ``Runner`` class."""
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as archive:
        members = archive.infolist()
        _check_member_names(members)
        module_dir = Path(cache_dir) / sanitize_module_id(module_id) / "module"
        with _extract_lock:
            if not module_dir.is_dir():
                _extract(archive, module_dir)
        _verify(archive, members, module_dir)

    _add_to_sys_path(module_dir)
    return getattr(_import_runner_module(module_dir, module_id), "Runner")


def _check_member_names(members: List[zipfile.ZipInfo]) -> None:
    for info in members:
        name = info.filename.replace("\\", "/")
        parts = PurePosixPath(name).parts
        if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in parts:
            raise CompoxValidationError(
                f"Unsafe path '{info.filename}' in the algorithm module archive.",
                code="unsafe_zip_member_path",
                details={"member": info.filename},
            )


def _extract(archive: zipfile.ZipFile, module_dir: Path) -> None:
    parent = module_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="extract_", dir=parent))
    try:
        archive.extractall(staging)
        _restrict_permissions(staging)
        os.replace(staging, module_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _best_effort_chmod(parent, 0o700)


def _restrict_permissions(root: Path) -> None:
    _best_effort_chmod(root, 0o700)
    for current, dirs, files in os.walk(root):
        for name in dirs:
            _best_effort_chmod(Path(current) / name, 0o700)
        for name in files:
            _best_effort_chmod(Path(current) / name, 0o600)


def _best_effort_chmod(path: Path, mode: int) -> None:
    try:
        os.chmod(path, mode)
    except OSError:
        pass


def _verify(archive: zipfile.ZipFile, members: List[zipfile.ZipInfo], module_dir: Path) -> None:
    for info in members:
        if info.is_dir():
            continue
        target = module_dir / info.filename.replace("\\", "/")
        if not target.is_file():
            raise CompoxImportError(
                f"Extracted module file '{info.filename}' is missing from the module cache.",
                code="module_cache_integrity_missing_file",
                details={"member": info.filename, "path": str(target)},
            )
        expected = hashlib.sha256(archive.read(info)).hexdigest()
        actual = hashlib.sha256(target.read_bytes()).hexdigest()
        if expected != actual:
            raise CompoxImportError(
                f"Extracted module file '{info.filename}' does not match the module archive.",
                code="module_cache_integrity_mismatch",
                details={"member": info.filename, "path": str(target)},
            )


def _add_to_sys_path(module_dir: Path) -> None:
    entry = str(module_dir)
    if entry not in sys.path:
        sys.path.insert(0, entry)
    importlib.invalidate_caches()


def _find_runner_file(module_dir: Path, module_id: str) -> Path:
    for candidate in (
        module_dir / module_id / "Runner.py",
        module_dir / module_id / "Runner.pyc",
        module_dir / "Runner.py",
        module_dir / "Runner.pyc",
    ):
        if candidate.is_file():
            return candidate

    # Breadth-first, so parents are searched before their children.
    level = [module_dir]
    while level:
        for name in ("Runner.py", "Runner.pyc"):
            for directory in level:
                if (directory / name).is_file():
                    return directory / name
        level = sorted(
            child
            for directory in level
            for child in directory.iterdir()
            if child.is_dir() and child.name != "__pycache__"
        )
    raise FileNotFoundError(f"No Runner.py or Runner.pyc found in module {module_id}.")


def _package_chain(module_dir: Path, runner_file: Path) -> Optional[str]:
    """Dotted package of the Runner file, or ``None`` if some directory lacks an ``__init__``."""
    relative_dirs = runner_file.parent.relative_to(module_dir).parts
    if not relative_dirs:
        return None
    current = module_dir
    for part in relative_dirs:
        current = current / part
        if not ((current / "__init__.py").is_file() or (current / "__init__.pyc").is_file()):
            return None
    return ".".join(relative_dirs)


def _import_runner_module(module_dir: Path, module_id: str) -> Any:
    runner_file = _find_runner_file(module_dir, module_id)
    package = _package_chain(module_dir, runner_file)
    if package is not None:
        return importlib.import_module(f"{package}.Runner")

    name = f"compox_runner_{sanitize_module_id(module_id)}"
    if name in sys.modules:
        return sys.modules[name]
    if runner_file.suffix == ".pyc":
        loader: Any = importlib.machinery.SourcelessFileLoader(name, str(runner_file))
    else:
        loader = importlib.machinery.SourceFileLoader(name, str(runner_file))
    spec = importlib.util.spec_from_file_location(name, str(runner_file), loader=loader)
    if spec is None:
        raise ImportError(f"Cannot load {runner_file}.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
