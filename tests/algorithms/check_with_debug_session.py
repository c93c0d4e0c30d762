"""Check the test algorithms in this folder with compox's LocalDebugSession, outside any server.

Usage (from the repository root):

    .venv/bin/python tests/algorithms/check_with_debug_session.py [--fixtures DIR] [NAME ...]

1. Statically checks every `pyproject.toml` here (must be valid per algorithms.md §1.3-§1.5) and
   under `tests/algorithms_invalid/` (each must break the rule it is named after).
2. Writes the fixture images (`tests/fixtures/make_images.py`) into `--fixtures` or a temp folder.
3. Runs each check below in its own child process (so `Runner` modules cached in `sys.modules`
   by one algorithm cannot leak into the next, and a crashing algorithm only ends its child):
   the child builds a fresh `LocalDebugSession(device="cpu")` per run, loads fixtures with
   `load_data`, runs the algorithm and reads the outputs back with `task.fetch_data`.
4. Verifies the child's exit status and output, prints one PASS/FAIL line per check and exits
   non-zero if any failed.

Only the debug handler is exercised: no record writes, so no stop requests; the sleepers are run
for a fraction of a second to check their progress calls, not their stop behaviour.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
INVALID = REPO / "tests" / "algorithms_invalid"
FIXTURE_SCRIPT = REPO / "tests" / "fixtures" / "make_images.py"
CHILD_TIMEOUT_S = 300

# ---------------------------------------------------------------------------------------------
# Static pyproject checks (a subset of the deployer's validation, enough to vet these folders).
# ---------------------------------------------------------------------------------------------

ALGORITHM_TYPES = {
    "Image2Alignment", "Image2Image", "Image2Segmentation", "Image2MultiRegionSegmentation",
    "Image2Embedding", "Undefined", "Generic",
}
DEVICES = {"cpu", "gpu", "mps"}
SCALAR_TYPES = {"string": str, "int": int, "float": float, "bool": bool}
RANGE_TYPES = {"int_range": int, "float_range": float}
ENUM_TYPES = {"string_enum": str, "int_enum": int, "float_enum": float}
LIST_TYPES = {"string_list", "int_list", "float_list", "bool_list"}


def is_typed(value, expected):
    """The deployer's type test: int accepts bools, float accepts only floats."""
    if expected is float:
        return isinstance(value, float)
    if expected is int:
        return isinstance(value, int)
    return isinstance(value, expected)


def parameter_problems(index, parameter):
    """Problems of one `additional_parameters` entry."""
    where = f"additional_parameters[{index}]"
    if not isinstance(parameter.get("name"), str):
        return [f"{where}: name missing or not a string"]
    where = f"{where} ({parameter['name']})"
    config = parameter.get("config")
    if not isinstance(config, dict):
        return [f"{where}: config table missing"]

    kind = config.get("type")
    default = config.get("default")
    options = config.get("options", [])
    problems = []
    if kind in SCALAR_TYPES:
        if default is not None and not is_typed(default, SCALAR_TYPES[kind]):
            problems.append(f"{where}: default {default!r} is not {kind}")
    elif kind in RANGE_TYPES:
        bounds = [config.get(key) for key in ("min", "max", "step")]
        if any(bound is None for bound in bounds):
            problems.append(f"{where}: min, max and step are required")
        elif not all(is_typed(bound, RANGE_TYPES[kind]) for bound in bounds):
            problems.append(f"{where}: min/max/step must be {RANGE_TYPES[kind].__name__}")
        elif not bounds[0] < bounds[1]:
            problems.append(f"{where}: min must be below max")
        if default is not None and not is_typed(default, RANGE_TYPES[kind]):
            problems.append(f"{where}: default {default!r} is not {RANGE_TYPES[kind].__name__}")
    elif kind in ENUM_TYPES:
        if not options:
            problems.append(f"{where}: options must not be empty")
        elif not all(is_typed(option, ENUM_TYPES[kind]) for option in options):
            problems.append(f"{where}: every option must be {ENUM_TYPES[kind].__name__}")
        if default is not None and default not in options:
            problems.append(f"{where}: default {default!r} is not one of the options")
    elif kind in LIST_TYPES:
        if default is not None and not isinstance(default, list):
            problems.append(f"{where}: default must be an array")
        if not all(isinstance(option, list) for option in options):
            problems.append(f"{where}: every option must itself be an array")
    else:
        problems.append(f"{where}: unknown config type {kind!r}")

    precision = config.get("decimal_precision")
    if precision is not None and not isinstance(precision, int):
        problems.append(f"{where}: decimal_precision must be an int")
    return problems


def pyproject_problems(folder):
    """Why `folder` would fail to deploy, as a list of messages (empty when it looks valid)."""
    problems = []
    if not (folder / "Runner.py").is_file():
        problems.append("no Runner.py in the algorithm root")
    try:
        document = tomllib.loads((folder / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        return problems + [f"pyproject.toml unreadable: {error}"]

    project = document.get("project", {})
    name = project.get("name")
    if not isinstance(name, str):
        problems.append("[project] name missing or not a string")
    elif "~" in name:
        problems.append(f"name {name!r} contains '~'")
    version = project.get("version")
    parts = version.split(".") if isinstance(version, str) else []
    if len(parts) < 2 or not all(re.fullmatch(r"[0-9]+", part) for part in parts[:2]):
        problems.append(f"version {version!r} has no decimal major.minor")

    tool = document.get("tool", {}).get("compox", {})
    if tool.get("algorithm_type", "Undefined") not in ALGORITHM_TYPES:
        problems.append(f"algorithm_type {tool.get('algorithm_type')!r} not allowed")
    supported = tool.get("supported_devices", ["cpu"])
    if not set(supported) <= DEVICES:
        problems.append(f"supported_devices {supported!r} has unknown devices")
    if tool.get("default_device", "cpu") not in supported:
        problems.append(f"default_device {tool.get('default_device')!r} not in {supported!r}")
    for index, parameter in enumerate(tool.get("additional_parameters", [])):
        problems.extend(parameter_problems(index, parameter))
    return problems


def algorithm_folders(root):
    return sorted(path for path in root.iterdir() if (path / "pyproject.toml").is_file())


def static_checks():
    """(label, ok, detail) for every pyproject here and under algorithms_invalid/."""
    results = []
    for folder in algorithm_folders(HERE):
        problems = pyproject_problems(folder)
        results.append((f"pyproject {folder.name}", not problems, "; ".join(problems)))
    for folder in algorithm_folders(INVALID):
        problems = pyproject_problems(folder)
        detail = "; ".join(problems) or "no problem found, but the folder must be invalid"
        results.append((f"invalid {folder.name}", bool(problems), detail))
    return results


# ---------------------------------------------------------------------------------------------
# Child side: one check per process.
# ---------------------------------------------------------------------------------------------

CHECKS = {}


def check(name, exit_code=0, output_contains=(), needs_fixtures=True):
    """Register a child-side check; `output_contains` are regexes the child's output must match."""

    def register(function):
        CHECKS[name] = {
            "function": function,
            "exit_code": exit_code,
            "output_contains": output_contains,
        }
        return function

    return register


class Context:
    """What a check needs: fixture paths and a helper to run an algorithm on them."""

    def __init__(self, fixtures):
        self.fixtures = fixtures

    def session(self):
        from compox.algorithm_utils.LocalDebugSession import LocalDebugSession

        return LocalDebugSession(device="cpu")

    def load(self, session, *names):
        ids = []
        for name in names:
            ids.extend(session.load_data(str(self.fixtures / name)))
        return ids

    def run(self, algorithm, inputs=(), args=None, input_ids=None, session=None):
        """Run `algorithm` on fixture files (or given ids); returns (session, output ids)."""
        session = session or self.session()
        ids = list(input_ids) if input_ids is not None else self.load(session, *inputs)
        session.run(str(HERE / algorithm), {"input_dataset_ids": ids}, args=args or {})
        outputs = session.task.output_dataset_ids
        assert isinstance(outputs, list), f"output_dataset_ids is {outputs!r}, not a list"
        return session, list(outputs)

    def fetch(self, session, ids, schema):
        return session.task.fetch_data(ids, schema)

    def image(self, name, key="image"):
        import h5py

        with h5py.File(self.fixtures / name, "r") as handle:
            return handle[key][()]


def total_variation(image):
    values = np.asarray(image, dtype=np.float64)
    return float(np.abs(np.diff(values, axis=-1)).sum() + np.abs(np.diff(values, axis=-2)).sum())


def expect(condition, message):
    if not condition:
        raise AssertionError(message)


@check("tv_denoiser", output_contains=(r"with weight 0\.1\b", r"Denoised 1 slice"))
def check_tv_denoiser(ctx):
    from compox.algorithm_utils.io_schemas import ImageSchema

    # Default args: the weight comes from the asset files/config/defaults.json.
    session, ids = ctx.run("tv_denoiser", ["cell.h5"])
    expect(len(ids) == 1, f"expected 1 output, got {ids}")
    source = ctx.image("cell.h5")
    output = ctx.fetch(session, ids, ImageSchema)[0]["image"]
    expect(output.shape == source.shape, f"shape {output.shape} != {source.shape}")
    expect(output.dtype == np.float32, f"dtype {output.dtype} != float32")
    expect(total_variation(output) < 0.8 * total_variation(source), "total variation not reduced")
    expect(output.min() >= source.min() - 1e-4 and output.max() <= source.max() + 1e-4,
           "output left the input's intensity range")

    # A larger weight smooths more; a uint8 input comes back as float32 in its own range.
    coins = ctx.image("coins.h5")
    variations = []
    for weight in (0.05, 0.3):
        session, ids = ctx.run("tv_denoiser", ["coins.h5"], {"denoising_weight": weight})
        output = ctx.fetch(session, ids, ImageSchema)[0]["image"]
        expect(output.shape == coins.shape and output.dtype == np.float32, "bad coins output")
        variations.append(total_variation(output))
    expect(variations[1] < variations[0] < total_variation(coins),
           f"total variation not ordered by weight: {variations} vs {total_variation(coins)}")

    # A 3-D file is split into one input per slice: three outputs in input order.
    rgb = ctx.image("rgb.h5")
    session, ids = ctx.run("tv_denoiser", ["rgb.h5"], {"denoising_weight": 0.1})
    expect(len(ids) == 3, f"expected 3 outputs for rgb.h5, got {len(ids)}")
    outputs = [item["image"] for item in ctx.fetch(session, ids, ImageSchema)]
    for channel, output in enumerate(outputs):
        expect(output.shape == rgb.shape[1:], f"slice {channel} shape {output.shape}")
        expect(total_variation(output) < total_variation(rgb[channel]), f"slice {channel} TV")


@check("threshold_segmenter", output_contains=(r"otsu threshold", r"mean threshold"))
def check_threshold_segmenter(ctx):
    from compox.algorithm_utils.io_schemas import SegmentationSchema

    coins = ctx.image("coins.h5")
    masks = {}
    for label, args in (("otsu", {}), ("mean", {"method": "mean"}),
                        ("inverted", {"method": "otsu", "invert": True})):
        session, ids = ctx.run("threshold_segmenter", ["coins.h5"], args)
        expect(len(ids) == 1, f"{label}: expected 1 output, got {ids}")
        mask = ctx.fetch(session, ids, SegmentationSchema)[0]["mask"]
        expect(mask.shape == coins.shape, f"{label}: shape {mask.shape} != {coins.shape}")
        expect(mask.dtype == np.uint8, f"{label}: dtype {mask.dtype} != uint8")
        expect(set(np.unique(mask).tolist()) == {0, 1}, f"{label}: values {np.unique(mask)}")
        expect(0.1 < mask.mean() < 0.9, f"{label}: foreground fraction {mask.mean():.3f}")
        masks[label] = mask
    expect(np.array_equal(masks["inverted"], 1 - masks["otsu"]), "invert is not the complement")
    expect(not np.array_equal(masks["otsu"], masks["mean"]), "otsu and mean gave the same mask")


@check("phase_registration", output_contains=(r"shift to reference",))
def check_phase_registration(ctx):
    from compox.algorithm_utils.io_schemas import AlignmentSchema

    files = ["camera_shifted_0.h5", "camera_shifted_1.h5", "camera_shifted_0.h5"]
    session, ids = ctx.run("phase_registration", files)
    expect(len(ids) == 2, f"expected N-1 = 2 outputs, got {ids}")
    items = ctx.fetch(session, ids, AlignmentSchema)
    for item in items:
        matrix = item["translation_matrix"]
        expect(isinstance(matrix, np.ndarray) and matrix.shape == (3, 3), f"matrix {matrix!r}")
        expect(matrix.dtype == np.float64, f"dtype {matrix.dtype}")
        expect(np.array_equal(matrix, item["transform_matrix"]), "transform != translation")
        expect(np.allclose(matrix[:2, :2], np.eye(2)) and np.allclose(matrix[2], [0, 0, 1]),
               f"not a pure translation: {matrix}")

    shifted = items[0]["translation_matrix"]
    recovered = (-shifted[1, 2], -shifted[0, 2])  # (row, col) shift of input 1 relative to 0
    expect(abs(recovered[0] - 5) <= 1 and abs(recovered[1] + 3) <= 1,
           f"recovered shift {recovered}, expected (5, -3)")
    expect(np.allclose(items[1]["translation_matrix"], np.eye(3), atol=0.5),
           "the reference registered to itself is not the identity")

    # A single input gives no outputs.
    _, ids = ctx.run("phase_registration", ["camera_shifted_0.h5"])
    expect(ids == [], f"single input gave {ids}")


ALL_PARAMS_ARGS = {
    "label": "hello",
    "iterations": 3,
    "scale": 1.5,
    "verbose": True,
    "tile-size": 64,
    "alpha": 0.5,
    "__noise__model": "poisson",
    "levels": 4,
    "gamma": 2.2,
    "channel_names": ["blue"],
    "kernel_sizes": [3, 5, 7],
    "weights": [0.25, 0.75],
    "flags": [True, False],
}


@check("all_params", output_contains=(r"arg label = 'hello'", r"arg flags = \[True, False\]",
                                       r"Received 13 argument", r"Received 0 argument"))
def check_all_params(ctx):
    import json

    from compox.algorithm_utils.io_schemas import GenericSchema

    for args in (ALL_PARAMS_ARGS, {}):
        session, ids = ctx.run("all_params", ["coins.h5"], dict(args))
        expect(len(ids) == 1, f"expected 1 output, got {ids}")
        data = ctx.fetch(session, ids, GenericSchema)[0]["data"]
        expect(data.dtype == np.uint8 and data.ndim == 1, f"data {data.dtype} {data.shape}")
        echoed = json.loads(data.tobytes().decode("utf-8"))
        expect(echoed == args, f"echoed {echoed} != sent {args}")

    # Generic runners accept no inputs at all.
    _, ids = ctx.run("all_params", input_ids=[], args={"label": "no inputs"})
    expect(len(ids) == 1, f"expected 1 output without inputs, got {ids}")


@check("multi_region")
def check_multi_region(ctx):
    from compox.algorithm_utils.io_schemas import MultiRegionSegmentationSchema

    coins = ctx.image("coins.h5")
    session, ids = ctx.run("multi_region", ["coins.h5", "coins.h5"])
    expect(len(ids) == 2, f"expected 2 outputs, got {ids}")
    for item in ctx.fetch(session, ids, MultiRegionSegmentationSchema):
        expect(item["region_names"] == ["dark", "bright"], f"names {item['region_names']}")
        dark, bright = item["region_masks"]
        for mask in (dark, bright):
            expect(mask.shape == coins.shape and mask.dtype == np.uint8,
                   f"mask {mask.shape} {mask.dtype}")
            expect(0 < mask.sum() < mask.size, "a region is empty or covers everything")
        expect(np.all(dark + bright == 1), "dark and bright do not partition the image")


@check("embedder")
def check_embedder(ctx):
    from compox.algorithm_utils.io_schemas import EmbeddingSchema

    for size in (32, None):
        args = {} if size is None else {"input_size": size}
        expected_size = size or 64
        session, ids = ctx.run("embedder", ["coins.h5"], args)
        expect(len(ids) == 1, f"expected 1 output, got {ids}")
        item = ctx.fetch(session, ids, EmbeddingSchema)[0]
        features = item["features"]
        expect(features.shape == (2, expected_size, expected_size), f"shape {features.shape}")
        expect(features.dtype == np.float32, f"dtype {features.dtype}")
        expect(np.isfinite(features).all() and features[0].max() == 1.0, "features not scaled")
        expect(tuple(int(v) for v in item["input_size"]) == (expected_size, expected_size),
               f"input_size {item['input_size']}")
        expect(tuple(int(v) for v in item["original_size"]) == (303, 384),
               f"original_size {item['original_size']}")


@check("seg_smoother")
def check_seg_smoother(ctx):
    from compox.algorithm_utils.io_schemas import SegmentationSchema

    coins = ctx.image("coins.h5")
    clean = (coins > 100).astype(np.uint8)
    noisy = clean.copy()
    rng = np.random.default_rng(7)
    specks = rng.random(noisy.shape) < 0.02
    noisy[specks] = 1 - noisy[specks]

    outputs = {}
    for radius in (0, 1, 2):
        session = ctx.session()
        input_ids = session.task.post_data([{"mask": noisy * 255}], SegmentationSchema)
        _, ids = ctx.run("seg_smoother", input_ids=input_ids, args={"radius": radius},
                         session=session)
        expect(len(ids) == 1, f"radius {radius}: expected 1 output, got {ids}")
        mask = ctx.fetch(session, ids, SegmentationSchema)[0]["mask"]
        expect(mask.shape == noisy.shape and mask.dtype == np.uint8,
               f"radius {radius}: {mask.shape} {mask.dtype}")
        expect(set(np.unique(mask).tolist()) <= {0, 1}, f"radius {radius}: not binary")
        outputs[radius] = mask

    expect(np.array_equal(outputs[0], noisy), "radius 0 must only binarise")
    for radius in (1, 2):
        expect(np.all(outputs[radius] <= noisy), f"radius {radius}: opening added pixels")
    expect(outputs[2].sum() < outputs[1].sum() < noisy.sum(), "opening removed nothing")
    isolated = noisy.astype(bool) & ~clean.astype(bool)
    expect(outputs[1][isolated].mean() < 0.2, "most isolated specks survived radius 1")


@check("noop")
def check_noop(ctx):
    _, ids = ctx.run("noop", ["coins.h5"])
    expect(ids == [], f"noop returned {ids}")
    _, ids = ctx.run("noop", input_ids=[])
    expect(ids == [], f"noop without inputs returned {ids}")


@check("printer", output_contains=(r"printer: stdout line 1 of 3", r"printer: stdout line 3 of 3",
                                   r"printer: stdout line 5 of 5", r"printer: stderr line"))
def check_printer(ctx):
    for args in ({}, {"lines": 5}):
        _, ids = ctx.run("printer", args=args)
        expect(ids == [], f"printer returned {ids}")


@check("raiser", output_contains=(r"raiser: about to raise",))
def check_raiser(ctx):
    try:
        ctx.run("raiser", ["coins.h5"])
    except RuntimeError as error:
        expect(str(error) == "deliberate failure in inference", f"message {error!s}")
        return
    raise AssertionError("raiser did not raise")


@check("sleeper", output_contains=(r"sleeper: done",))
def check_sleeper(ctx):
    _, ids = ctx.run("sleeper", args={"seconds": 0.3})
    expect(ids == [], f"sleeper returned {ids}")
    _, ids = ctx.run("sleeper", args={"seconds": 1})  # an int is converted by the algorithm
    expect(ids == [], f"sleeper returned {ids}")


@check("stubborn_sleeper", output_contains=(r"stubborn_sleeper: done, 0 exception",))
def check_stubborn_sleeper(ctx):
    _, ids = ctx.run("stubborn_sleeper", args={"seconds": 0.3})
    expect(ids == [], f"stubborn_sleeper returned {ids}")


@check("deaf_sleeper", output_contains=(r"deaf_sleeper: done",))
def check_deaf_sleeper(ctx):
    _, ids = ctx.run("deaf_sleeper", args={"seconds": 0.2})
    expect(ids == [], f"deaf_sleeper returned {ids}")


@check("bad_import")
def check_bad_import(ctx):
    try:
        ctx.run("bad_import")
    except ImportError:
        return
    raise AssertionError("bad_import was imported without error")


@check("crasher", exit_code=3, output_contains=(r"crasher: exiting the worker with code 3",))
def check_crasher(ctx):
    ctx.run("crasher")
    raise AssertionError("crasher returned")


@check("segfaulter", exit_code=-11, output_contains=(r"segfaulter: reading address 0",))
def check_segfaulter(ctx):
    ctx.run("segfaulter")
    raise AssertionError("segfaulter returned")


def child_main(name, fixtures):
    """Run one check in this process; exit status 0 means it passed."""
    try:
        import compox  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(REPO / "python"))
    CHECKS[name]["function"](Context(Path(fixtures)))
    print(f"child check {name} finished", flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# Parent side.
# ---------------------------------------------------------------------------------------------


def make_fixtures(folder):
    completed = subprocess.run([sys.executable, str(FIXTURE_SCRIPT), str(folder)],
                               capture_output=True, text=True, check=True)
    written = completed.stdout.split()
    print(f"fixtures: {len(written)} files in {folder}")
    if completed.stderr.strip():
        print(completed.stderr.strip())


def run_child(name, fixtures):
    """Run check `name` in a child process; returns (ok, detail)."""
    spec = CHECKS[name]
    environment = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
    try:
        completed = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--child", name,
             "--fixtures", str(fixtures)],
            capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, env=environment,
            cwd=str(REPO),
        )
    except subprocess.TimeoutExpired:
        return False, f"timed out after {CHILD_TIMEOUT_S} s"

    output = completed.stdout + completed.stderr
    if completed.returncode != spec["exit_code"]:
        tail = "\n".join(output.strip().splitlines()[-25:])
        return False, f"exit status {completed.returncode}, expected {spec['exit_code']}\n{tail}"
    missing = [pattern for pattern in spec["output_contains"] if not re.search(pattern, output)]
    if missing:
        tail = "\n".join(output.strip().splitlines()[-25:])
        return False, f"output lacks {missing}\n{tail}"
    return True, ""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"checks to run (default: all of {list(CHECKS)})")
    parser.add_argument("--fixtures", type=Path, help="fixture folder (default: a temp folder)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.child:
        return child_main(options.child, options.fixtures)

    unknown = [name for name in options.names if name not in CHECKS]
    if unknown:
        parser.error(f"unknown checks {unknown}; known: {list(CHECKS)}")

    results = static_checks()
    with tempfile.TemporaryDirectory(prefix="compox-fixtures-") as temporary:
        fixtures = options.fixtures or Path(temporary)
        make_fixtures(fixtures)
        for name in options.names or list(CHECKS):
            ok, detail = run_child(name, fixtures)
            results.append((f"run {name}", ok, detail))

    for label, ok, detail in results:
        print(f"{'PASS' if ok else 'FAIL'} {label}" + (f": {detail}" if detail and not ok else ""))
    failed = sum(1 for _, ok, _ in results if not ok)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
