#!/usr/bin/env bash
# Install nanoplus with every extra (torch: the CPU wheel, pinned so pip never pulls a CUDA build)
# and run the default test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q "torch==2.13.0"
python3 -m pip install -q -e ".[dev]"
python3 -m pytest -q "$@"
