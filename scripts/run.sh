#!/usr/bin/env bash
# Sets up the worker Python environment (.venv) and starts the server on its embedded defaults:
# filesystem storage in ./compox_store, http://127.0.0.1:5481. Extra arguments are settings
# overrides, e.g. `scripts/run.sh --port 6000`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHON="${PYTHON:-$(python3 -c 'import sys; print(sys.executable)')}"
scripts/setup-python.sh
export PYO3_PYTHON="$PYTHON"
cargo build --quiet
exec target/debug/compox run --inference.python_env "$PWD/.venv" "$@"
