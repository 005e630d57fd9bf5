#!/usr/bin/env bash
# Install nanoplus with every extra at the locked versions (requirements/lock.txt) and run the default
# test suite (what CI runs: .ci/run). Outside a virtual environment it makes and reuses .venv here
# (scripts/env.sh). Arguments go to pytest: bash scripts/test.sh -m slow -k export
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
install_nanoplus dev
"$PY" -m pytest -q "$@"
