#!/usr/bin/env bash
# Refresh requirements/lock.txt: resolve nanoplus[dev] (every extra) afresh with the newest versions
# pyproject.toml allows, in a brand-new virtual environment, and write the exact versions of every
# direct and transitive dependency. Prints what changed against the previous lock.
#
#   bash scripts/lock.sh            # then run bash scripts/test.sh, and commit the lock if it passes
#
# The lock is a pip constraints file (pip install -c requirements/lock.txt ...): any subset of the
# extras installs at the locked versions, so the runtime-only install on a device (nanoplus[ncnn])
# uses the same numpy and OpenCV as the test suite. Made with CPython 3.11 on Linux; every runtime
# pin also has aarch64 wheels (scripts/arm64_check.sh installs it there).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
LOCK=$ROOT/requirements/lock.txt
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

echo "== resolving nanoplus[dev] in a fresh environment ($("$PYTHON" -V 2>&1))"
"$PYTHON" -m venv "$WORK/venv"
{
    "$WORK/venv/bin/python" -m pip install -q --upgrade pip
    "$WORK/venv/bin/python" -m pip install -q "torch==2.13.0"   # the CPU wheel
    "$WORK/venv/bin/python" -m pip install -q -e "$ROOT[dev]"
} > "$WORK/pip.log" 2>&1 || { cat "$WORK/pip.log" >&2; echo "error: the install failed (above)" >&2; exit 1; }
pyver=$("$WORK/venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')

{
    echo "# nanoplus dependency lock: pip constraints, exact versions of every direct and transitive dependency."
    echo "# Used by scripts/test.sh, scripts/demo.sh and .ci/run (pip install -c requirements/lock.txt ...)."
    echo "# Refresh with: bash scripts/lock.sh   (resolves afresh, prints what changed)"
    echo "# made: $(date -u +%Y-%m-%d)"
    echo "# python: $pyver"
    echo "# platform: linux (x86_64; the runtime pins also aarch64)"
    # torch: the version, not the local build tag (+cpu), so the pin matches the CPU wheel and does
    # not require it where torch is not installed at all (devices run the runtime only)
    "$WORK/venv/bin/python" -m pip freeze --exclude-editable --all \
        | grep -v -i -E '^(pip|setuptools|wheel)==' \
        | sed -E 's/^(torch==[^+]*)\+.*/\1/' \
        | LC_ALL=C sort -f
} > "$WORK/lock.txt"

if [ -f "$LOCK" ]; then
    echo "== changes against the previous lock"
    python3 - "$LOCK" "$WORK/lock.txt" <<'PY'
import sys
def pins(path):
    out = {}
    for line in open(path):
        line = line.strip()
        if line and not line.startswith("#") and "==" in line:
            name, version = line.split("==", 1)
            out[name.lower().replace("_", "-")] = version
    return out
old, new = pins(sys.argv[1]), pins(sys.argv[2])
changes = [f"  {n}: {old.get(n, '-')} -> {new.get(n, '-')}" for n in sorted(old.keys() | new.keys()) if old.get(n) != new.get(n)]
print("\n".join(changes) if changes else "  none")
PY
fi
mkdir -p "$(dirname "$LOCK")"
cp "$WORK/lock.txt" "$LOCK.tmp" && mv "$LOCK.tmp" "$LOCK"
echo "== wrote $LOCK ($(grep -c '==' "$LOCK") pins); now run: bash scripts/test.sh"
