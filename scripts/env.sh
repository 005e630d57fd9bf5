# Sourced by the set-up scripts: pick the Python environment and install nanoplus into it.
#
#   . scripts/env.sh             sets PY (the interpreter to use) and prints where it is
#   install_nanoplus EXTRAS      pip install -e ".[EXTRAS]" with the locked versions (torch: the CPU wheel)
#
# Inside an active virtual environment (or conda env) that one is used. Otherwise a project
# environment is made once in .venv (NANOPLUS_VENV overrides the folder) and reused after, so a
# stock system Python (PEP 668, "externally-managed-environment") is never pip-installed into and
# no root is needed. Running a script twice reuses the environment and installs nothing new.
# NANOPLUS_NO_LOCK=1 installs the newest versions pyproject.toml allows instead of the lock.

NANOPLUS_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NANOPLUS_LOCK="$NANOPLUS_ROOT/requirements/lock.txt"
NANOPLUS_TORCH="torch==2.13.0"   # the CPU wheel; an unpinned torch pulls a multi-GB CUDA build

if [ -n "${VIRTUAL_ENV:-}" ] || [ -n "${CONDA_PREFIX:-}" ]; then
    PY=$(command -v python3 || command -v python)
    echo "== using the active environment: $("$PY" -c 'import sys; print(sys.prefix)')"
else
    NANOPLUS_VENV=${NANOPLUS_VENV:-$NANOPLUS_ROOT/.venv}
    if [ ! -x "$NANOPLUS_VENV/bin/python" ]; then
        base=$(command -v python3 || true)
        [ -n "$base" ] || { echo "error: no python3 found; install Python 3.9 or newer" >&2; exit 1; }
        echo "== making the project environment $NANOPLUS_VENV (from $base, $("$base" -V 2>&1))"
        if ! "$base" -m venv "$NANOPLUS_VENV"; then
            echo "error: '$base -m venv' failed; on Debian/Ubuntu: sudo apt install python3-venv" >&2
            rm -rf "$NANOPLUS_VENV"
            exit 1
        fi
    fi
    PY=$NANOPLUS_VENV/bin/python
    echo "== using the project environment $NANOPLUS_VENV ($("$PY" -V 2>&1)); activate it with: source ${NANOPLUS_VENV#"$PWD"/}/bin/activate"
fi

install_nanoplus() {
    local extras=$1
    local constraint=()
    if [ "${NANOPLUS_NO_LOCK:-0}" = 1 ]; then
        echo "== installing nanoplus[$extras] with the newest allowed versions (NANOPLUS_NO_LOCK=1)"
    else
        local locked_py
        locked_py=$(sed -n 's/^# python: *//p' "$NANOPLUS_LOCK")
        if [ "$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != "$locked_py" ]; then
            echo "warning: requirements/lock.txt is made for Python $locked_py; pip may have to pick or build other versions here" >&2
        fi
        constraint=(-c "$NANOPLUS_LOCK")
        echo "== installing nanoplus[$extras] with the locked versions (requirements/lock.txt)"
    fi
    case ",$extras," in
        *,train,*|*,export,*|*,all,*|*,dev,*) "$PY" -m pip install -q "${constraint[@]}" "$NANOPLUS_TORCH" ;;
    esac
    "$PY" -m pip install -q "${constraint[@]}" -e "$NANOPLUS_ROOT[$extras]"
}
