"""Python-side steps of building an algorithm module (``algorithms.md`` §2.3 steps 4–7).

The Rust deployer stages the package (the algorithm's ``.py`` files plus empty
``__init__.py`` files) and calls :func:`process_package`, which, in order:

4. rewrites absolute imports of the algorithm's own top-level names into relative ones
   (:func:`relativize_source`, with the corrected ``import X`` form of §2.3.1);
5. appends ``"\\nfrom .Runner import Runner\\n"`` to the root ``__init__.py``;
6. minifies every file with python-minifier when asked (skipped with a warning if missing);
7. compiles every file to a ``CHECKED_HASH`` ``.pyc`` beside it and deletes the sources
   when asked.

It runs inside the interpreter that will execute the algorithms, so the ``.pyc`` magic
number matches. ``python -m compox._deploy_tools PACKAGE_DIR --obfuscate {true,false}
--pyc-only {true,false}`` prints the result as one JSON line.

:func:`build_module_zip` adds the remaining steps (staging, module id, zip) for tests and
local tooling; the server does those in Rust.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.util
import io
import json
import os
import py_compile
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

OUTER_INIT_TEXT = "# Init file for the module\n"
RUNNER_IMPORT_LINE = "\nfrom .Runner import Runner\n"


# -- import rewriting ------------------------------------------------------------------------


def local_top_level_names(package_dir: str) -> Set[str]:
    """Root-level directories and root-level ``.py`` stems, minus ``__init__``."""
    names: Set[str] = set()
    for entry in os.scandir(package_dir):
        if entry.is_dir() and entry.name != "__pycache__":
            names.add(entry.name)
        elif entry.is_file() and entry.name.endswith(".py"):
            names.add(entry.name[: -len(".py")])
    names.discard("__init__")
    return names


def relative_module(package: Sequence[str], module: Sequence[str]) -> Tuple[int, str]:
    """``rel(P, M)``: the level and dotted tail that reach ``module`` from package ``P``."""
    common = 0
    while common < len(package) and common < len(module) and package[common] == module[common]:
        common += 1
    level = (len(package) - common) + 1
    return level, ".".join(module[common:])


class _ImportRelativizer(ast.NodeTransformer):
    def __init__(self, package: Sequence[str], local_names: Set[str]) -> None:
        self.package = list(package)
        self.local_names = local_names

    def visit_ImportFrom(self, node: ast.ImportFrom) -> ast.AST:
        if node.level or not node.module or node.module.split(".")[0] not in self.local_names:
            return node
        level, tail = relative_module(self.package, node.module.split("."))
        return ast.copy_location(
            ast.ImportFrom(module=tail or None, names=node.names, level=level), node
        )

    def visit_Import(self, node: ast.Import) -> object:
        replacement: List[ast.stmt] = []
        kept: List[ast.alias] = []

        def flush_kept() -> None:
            if kept:
                replacement.append(ast.copy_location(ast.Import(names=list(kept)), node))
                kept.clear()

        for alias in node.names:
            parts = alias.name.split(".")
            if parts[0] not in self.local_names:
                kept.append(alias)
                continue
            flush_kept()
            replacement.extend(
                ast.copy_location(statement, node)
                for statement in self._rewrite_import(parts, alias.asname)
            )
        flush_kept()
        return replacement

    def _from_import(self, target: Sequence[str], asname: Optional[str]) -> ast.ImportFrom:
        """``from <rel(P, parent)> import <last> [as asname]`` for a dotted target."""
        level, tail = relative_module(self.package, target[:-1])
        return ast.ImportFrom(
            module=tail or None, names=[ast.alias(name=target[-1], asname=asname)], level=level
        )

    def _rewrite_import(self, parts: List[str], asname: Optional[str]) -> List[ast.stmt]:
        if asname is not None or len(parts) == 1:
            # `import X as Z` / `import X.Y as Z` bind Z to the target; `import X` binds X.
            binding = asname if asname is not None else None
            return [self._from_import(parts, binding)]

        # `import X.Y.Z` loads X.Y.Z and binds X. The throw-away name loads the submodule.
        placeholder = "_compox_import_" + "_".join(parts)
        return [
            self._from_import(parts, placeholder),
            ast.Delete(targets=[ast.Name(id=placeholder, ctx=ast.Del())]),
            self._from_import(parts[:1], None),
        ]


def relativize_source(source: str, package: Sequence[str], local_names: Set[str]) -> str:
    """Rewrite the imports of one file located in dotted package ``package``.

    Raises ``SyntaxError`` when the source does not parse.
    """
    tree = ast.parse(source)
    tree = _ImportRelativizer(package, local_names).visit(tree)
    ast.fix_missing_locations(tree)
    return ast.unparse(tree)


# -- the four steps --------------------------------------------------------------------------


def _python_files(package_dir: Path) -> List[Path]:
    return sorted(
        path
        for path in package_dir.rglob("*.py")
        if path.is_file() and "__pycache__" not in path.relative_to(package_dir).parts
    )


def _relativize_package(package_dir: Path, warnings: List[str]) -> None:
    local_names = local_top_level_names(str(package_dir))
    for name in sorted(local_names):
        if _shadows_installed_module(name, package_dir):
            warnings.append(
                f"The algorithm's top-level name '{name}' shadows an installed or standard "
                "module; inside the algorithm it refers to the algorithm's own code."
            )

    for path in _python_files(package_dir):
        relative = path.relative_to(package_dir)
        package = list(relative.parts[:-1])
        source = path.read_text(encoding="utf-8")
        try:
            rewritten = relativize_source(source, package, local_names)
        except SyntaxError as error:
            # Left byte-identical; minification or compilation reports it if they run.
            warnings.append(f"{relative.as_posix()} does not parse and was not rewritten: {error}")
            continue
        if rewritten and not rewritten.endswith("\n"):
            rewritten += "\n"
        path.write_text(rewritten, encoding="utf-8")


def _shadows_installed_module(name: str, package_dir: Path) -> bool:
    if name in getattr(sys, "stdlib_module_names", ()):
        return True
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    if spec is None or spec.origin in (None, "namespace"):
        return False
    # The package itself may be importable when the current directory is its parent.
    return not Path(spec.origin).resolve().is_relative_to(package_dir.resolve())


def _append_runner_import(package_dir: Path) -> None:
    init_file = package_dir / "__init__.py"
    with open(init_file, "a", encoding="utf-8") as handle:
        handle.write(RUNNER_IMPORT_LINE)


def _minify_package(package_dir: Path) -> None:
    # Shipping readable code when the author asked for obfuscation would break a promise, and
    # the other module id would add a minor version for unchanged code: refuse instead.
    try:
        import python_minifier
    except ImportError:
        raise RuntimeError(
            "obfuscate is on, but python-minifier is not installed in the Python environment "
            f"{sys.prefix}. Install it there (pip install python-minifier), point "
            "inference.python_env (or VIRTUAL_ENV) at an environment that has it, or set "
            "obfuscate = false in [tool.compox]."
        ) from None
    for path in _python_files(package_dir):
        source = path.read_text(encoding="utf-8")
        path.write_text(
            python_minifier.minify(source, remove_literal_statements=True), encoding="utf-8"
        )


def _compile_package(package_dir: Path) -> None:
    sources = _python_files(package_dir)
    for path in sources:
        py_compile.compile(
            str(path),
            cfile=str(path.with_suffix(".pyc")),
            dfile=path.relative_to(package_dir).as_posix(),
            doraise=True,
            invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH,
        )
    for path in sources:
        path.unlink()


def process_package(package_dir: str, obfuscate: bool, pyc_only: bool) -> Dict[str, List[str]]:
    """Run steps 4–7 on a staged package directory; see the module docs."""
    root = Path(package_dir)
    if not (root / "__init__.py").is_file():
        raise FileNotFoundError(f"{package_dir} has no __init__.py; stage the package first.")

    warnings: List[str] = []
    _relativize_package(root, warnings)
    _append_runner_import(root)
    if obfuscate:
        _minify_package(root)
    if pyc_only:
        _compile_package(root)
    return {"warnings": warnings}


# -- whole-module helper for tests and local tooling ----------------------------------------


def _algorithm_python_files(algorithm_dir: Path) -> List[Path]:
    """The module files of an algorithm folder (``algorithms.md`` §1.2, simplified)."""
    found = []
    for current, dirs, files in os.walk(algorithm_dir):
        dirs[:] = sorted(d for d in dirs if d not in (".git", "__pycache__"))
        for name in sorted(files):
            if name.endswith(".py") and not name.startswith("."):
                found.append(Path(current) / name)
    return found


def stage_package(algorithm_dir: str, package_dir: str) -> None:
    """Steps 2–3: copy the ``.py`` files and create the missing ``__init__.py`` files."""
    source_root = Path(algorithm_dir)
    target_root = Path(package_dir)
    target_root.mkdir(parents=True, exist_ok=True)
    for path in _algorithm_python_files(source_root):
        target = target_root / path.relative_to(source_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    for directory in [target_root, *[p for p in target_root.rglob("*") if p.is_dir()]]:
        init_file = directory / "__init__.py"
        if not init_file.exists():
            init_file.write_bytes(b"")


def compute_module_id(package_dir: str, pyc_only: bool) -> str:
    """Step 8: MD5 over ``path \\0 bytes`` of the shipped files, sorted by POSIX path."""
    root = Path(package_dir)
    suffix = ".pyc" if pyc_only else ".py"
    files = sorted(
        (path.relative_to(root).as_posix(), path)
        for path in root.rglob(f"*{suffix}")
        if path.is_file() and "__pycache__" not in path.relative_to(root).parts
    )
    digest = hashlib.md5()
    for relative, path in files:
        digest.update(relative.encode("utf-8") + b"\x00" + path.read_bytes())
    return digest.hexdigest()


def build_module_zip(
    algorithm_dir: str, obfuscate: bool = False, pyc_only: bool = False
) -> Tuple[str, bytes, Dict[str, List[str]]]:
    """Build the module zip of an algorithm folder: ``(module_id, zip_bytes, result)``."""
    with tempfile.TemporaryDirectory(prefix="compox_module_build_") as temp:
        build = Path(temp) / "module_build"
        package = build / "__module__"
        build.mkdir()
        (build / "__init__.py").write_text(OUTER_INIT_TEXT, encoding="utf-8")
        stage_package(algorithm_dir, str(package))
        result = process_package(str(package), obfuscate=obfuscate, pyc_only=pyc_only)
        module_id = compute_module_id(str(package), pyc_only)
        package = package.rename(build / module_id)

        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.write(package, module_id)
            archive.write(build / "__init__.py", "__init__.py")
            for path in sorted(package.rglob("*")):
                if "__pycache__" in path.parts:
                    continue
                archive.write(path, path.relative_to(build).as_posix())
        return module_id, buffer.getvalue(), result


# -- command line ----------------------------------------------------------------------------


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m compox._deploy_tools",
        description="Rewrite imports, patch __init__, minify and compile a staged package.",
    )
    parser.add_argument("package_dir")
    parser.add_argument("--obfuscate", type=_parse_bool, required=True)
    parser.add_argument("--pyc-only", dest="pyc_only", type=_parse_bool, required=True)
    options = parser.parse_args(argv)
    try:
        result = process_package(options.package_dir, options.obfuscate, options.pyc_only)
    except Exception as error:
        print(json.dumps({"error": f"{type(error).__name__}: {error}"}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
