#!/usr/bin/env bash
# Sets up what the tests need (the .venv Python environment with the compox package and the
# algorithms' packages) and runs the whole suite: Rust unit and integration tests (which start
# real servers and workers), the Python package's pytest suite, and the test algorithms' checks.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHON="${PYTHON:-$(python3 -c 'import sys; print(sys.executable)')}"
scripts/setup-python.sh
# The original Compox 3.2.0, which tests/bundle_compat.rs exchanges bundles with.
scripts/setup-original.sh
# pyo3 builds the worker against this interpreter; build.rs adds an rpath to its libpython.
export PYO3_PYTHON="$PYTHON"
cargo test --all-targets
# The file, deploy and execution suites once more on S3 (a moto_server per test binary).
COMPOX_TEST_BACKEND=s3 cargo test --test files --test deploy --test executions
.venv/bin/python -m pytest python/tests -q
.venv/bin/python tests/algorithms/check_with_debug_session.py
