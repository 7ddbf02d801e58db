#!/usr/bin/env bash
# Runs the library's tests against the oldest jax/flax/optax that jrelu6 supports,
# in a throwaway virtual environment (the examples need newer orbax and are skipped).
#   bash tools/test_oldest.sh            # venv in ${VENV:-/tmp/jrelu6-oldest}
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VENV:-/tmp/jrelu6-oldest}"
python -m venv "$venv"
"$venv/bin/python" -m pip install -q "jax==0.6.2" "jaxlib==0.6.2" "flax==0.10.7" "optax==0.2.5" \
    "pytest>=7.4" "hypothesis>=6.80"
"$venv/bin/python" -m pip install -q --no-deps -e .
"$venv/bin/python" -m pytest -q tests/test_functions.py tests/test_modules.py tests/test_api.py \
    tests/test_quant.py tests/test_compiled_cost.py jrelu6 README.md docs/getting_started.md \
    docs/boundary_study.md
