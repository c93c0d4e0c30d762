#!/usr/bin/env bash
# Creates .venv (the Python environment workers run algorithms in) and installs the compox
# package and what the test algorithms need. Idempotent; safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check \
  "numpy<3" "h5py>=3.8" "pydantic>=2,<3" "scikit-image>=0.22" "python-minifier>=2.9" \
  "pytest>=7" "pydicom>=2.4" "moto[server]>=5,<6"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ./python
