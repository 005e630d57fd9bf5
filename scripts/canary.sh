#!/usr/bin/env bash
# Upgrade canary: install the NEWEST versions pyproject.toml allows (no lock) into a brand-new
# environment and run the default test suite, so that an upstream release that changes results is
# seen here before a user sees it. Prints the date, the versions that matter and the pytest summary.
# The environment is made afresh each time in .venv-canary (NANOPLUS_VENV overrides).
#
#   bash scripts/canary.sh            # then record its closing lines in README.md ("Upgrade canary")
set -euo pipefail
cd "$(dirname "$0")/.."
export NANOPLUS_VENV=${NANOPLUS_VENV:-$PWD/.venv-canary}
export NANOPLUS_NO_LOCK=1
rm -rf "$NANOPLUS_VENV"
unset VIRTUAL_ENV CONDA_PREFIX
. scripts/env.sh
install_nanoplus dev
log=$(mktemp)
set +e
"$PY" -m pytest -q -p no:cacheprovider "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
echo "== canary $(date -u +%Y-%m-%d): python $("$PY" -c 'import platform; print(platform.python_version())')," \
    "$("$PY" -m pip list --format=freeze 2>/dev/null | grep -i -E '^(numpy|opencv-python-headless|torch|onnx|onnxruntime|openvino|ncnn|pnnx|nncf|pycocotools)==' | tr '\n' ' ')"
echo "== canary result: $(tail -n 1 "$log" | sed 's/=//g; s/^ *//; s/ *$//') -> $([ "$rc" = 0 ] && echo PASS || echo FAIL)"
rm -f "$log"
exit "$rc"
