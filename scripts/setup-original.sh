#!/usr/bin/env bash
# Creates .venv-original: the original Python Compox 3.2.0 from PyPI plus moto[server] (the
# in-memory S3 it runs against), for the cross-implementation bundle tests
# (tests/bundle_compat.rs). Use the same interpreter as PYO3_PYTHON: the original compiles
# deployed algorithms to .pyc files that our workers must be able to load, and the other way
# round. Idempotent: does nothing when compox 3.2.0 and moto are already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VERSION=3.2.0
if [ -x .venv-original/bin/python ] \
  && .venv-original/bin/python -c "
import importlib.metadata as m, sys
sys.exit(0 if m.version('compox') == '$VERSION' and m.version('moto') else 1)
" 2>/dev/null \
  && [ -x .venv-original/bin/moto_server ]; then
  exit 0
fi
if [ ! -x .venv-original/bin/python ]; then
  "$PYTHON" -m venv .venv-original
fi
.venv-original/bin/python -m pip install --quiet --disable-pip-version-check \
  "compox==$VERSION" "moto[server]>=5,<6"
