#!/usr/bin/env bash
# The Python runtime on arm64 Debian 12 (bookworm, the base of 64-bit Raspberry Pi OS), emulated.
#
#   sudo bash scripts/arm64_check.sh          # about 30-60 min on 2 cores; the root is built once
#
# Builds (or reuses) an arm64 Debian root in .arm64/root with debootstrap + qemu-user-static, and
# installs nanoplus there as the README's device recipe does: the sdist built here, with the runtime
# extras only ([ncnn] and [onnxruntime], no torch) at the versions of requirements/lock.txt, every
# dependency from a wheel (--only-binary=:all:; our own extension is the one thing compiled, by the
# root's g++, so the portable C++ path is what runs). The checkout's tests are copied in beside it. Inside it then runs the runtime's tests that need no torch,
# `nanoplus eval` of the published fp16 and int8 NCNN models on tiny_coco val, `nanoplus infer` on
# the photos, the compiled pre-processing on the photos, and `nanoplus bench`. The same install on
# this x86 host gives the reference; scripts/arm64_compare.py compares the two and prints the
# closing line: both mAP values and PASS / FAIL.
#
# Environment:
#   ARM64_CPU      core qemu emulates (default cortex-a72, the Raspberry Pi 4's; cortex-a76 is the
#                  Pi 5's, `qemu-aarch64-static -cpu help` lists the others)
#   ARM64_MIRROR   Debian mirror for debootstrap (default: the one in this host's apt sources)
#   ARM64_REBUILD=1  build the root again; ARM64_KEEP_VENV=1 reuse the last run's venvs (faster, not clean)
#   NANOPLUS_SHARED  the reference material (default ../shared beside the checkout)
#
# Exit status: 0 PASS, 1 FAIL, 3 this machine cannot run the check (the message says why).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARED="${NANOPLUS_SHARED:-$REPO/../shared}"
WORK="$REPO/.arm64"                 # ignored by git; the root is cached here between runs
ROOT="$WORK/root"
LOCK="$REPO/requirements/lock.txt"
EXTRAS="ncnn,onnxruntime"
TEST_DEPS="pytest jsonschema"       # what the runtime's tests import beyond the runtime
ARM64_CPU="${ARM64_CPU:-cortex-a72}"
# debootstrap's mirror: ARM64_MIRROR, else the Debian mirror this host's apt uses
MIRROR="${ARM64_MIRROR:-$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | grep -v '^[[:space:]]*#' | grep -o -E 'https?://[^ ]+/debian/?( |$)' | head -1 | tr -d ' ' || true)}"
ROOT_PACKAGES="python3,python3-venv,python3-dev,g++,ca-certificates"
FP16_MODEL="assets/models/nanodet-plus-m_416-ncnn-fp16/nanodet-plus-m_416.param"
INT8_MODEL="assets/models/nanodet-plus-m_416-ncnn-int8/nanodet-plus-m_416-int8.param"
# The runtime's tests run in the root: every tests/test_*.py except those that import torch at module
# level and these (training, export, set-up: they import torch through nanoplus.train or need the
# whole project). Tests inside the runtime's files that need torch or onnx skip.
OTHER_TESTS="test_arm64_check test_augment test_checkpoint test_config test_distributed test_export test_import
  test_model_configs test_model_upstream test_schedule test_setup test_trainer"

cannot_run() { echo "arm64_check: cannot run here: $*" >&2; exit 3; }
say() { echo "[arm64_check $(date -u +%H:%M:%S)] $*"; }
START=$(date +%s)

# ------------------------------------------------------------------ what this machine must have
[ "$(id -u)" = 0 ] || cannot_run "needs root (debootstrap, chroot and bind mounts); run it with sudo"
[ "$(uname -m)" = x86_64 ] || cannot_run "the reference run is x86-64's; this host is $(uname -m)"
for tool in debootstrap qemu-aarch64-static chroot git python3; do
    command -v "$tool" >/dev/null || cannot_run "$tool is missing (apt-get install debootstrap qemu-user-static binfmt-support git python3-venv)"
done
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null \
        || cannot_run "binfmt_misc is not mounted and cannot be (mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc)"
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
fi
grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null \
    || cannot_run "qemu-aarch64 is not registered with binfmt_misc (update-binfmts --enable qemu-aarch64)"
grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 \
    || cannot_run "qemu-aarch64's binfmt entry lacks the F flag (Debian's qemu-user-static sets it); a chroot cannot find the interpreter"
[ -d "$SHARED/assets" ] || cannot_run "the reference material is absent: $SHARED/assets (set NANOPLUS_SHARED)"
SHARED="$(cd "$SHARED" && pwd)"
CHROOT="$(command -v chroot)"
[ -f "$LOCK" ] || cannot_run "$LOCK is missing: the check installs the locked versions"
python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || cannot_run "the host's python3 is $(python3 -V 2>&1 | cut -d' ' -f2); the lock is for CPython 3.11 (Debian 12's)"

# ------------------------------------------------------------------ the arm64 root (cached)
if [ -n "${ARM64_REBUILD:-}" ]; then rm -rf "$ROOT"; fi
if [ ! -f "$ROOT/.nanoplus-root" ]; then
    [ -n "$MIRROR" ] || cannot_run "no Debian mirror in /etc/apt/sources*; set ARM64_MIRROR"
    say "building the arm64 Debian 12 root in $ROOT (debootstrap, then its second stage under qemu; 15-30 min)"
    rm -rf "$ROOT.partial"
    mkdir -p "$WORK"
    debootstrap --arch=arm64 --foreign --variant=minbase --include="$ROOT_PACKAGES" bookworm "$ROOT.partial" "$MIRROR" \
        > "$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log"; echo "debootstrap failed: $WORK/debootstrap.log" >&2; exit 1; }
    chroot "$ROOT.partial" /debootstrap/debootstrap --second-stage >> "$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log"; echo "debootstrap's second stage failed: $WORK/debootstrap.log" >&2; exit 1; }
    echo "debian bookworm arm64 minbase + $ROOT_PACKAGES, built $(date -u +%FT%TZ)" > "$ROOT.partial/.nanoplus-root"
    mv "$ROOT.partial" "$ROOT"
fi
say "root: $(cat "$ROOT/.nanoplus-root")"

# ------------------------------------------------------------------ the checkout, twice
# What git would commit (tracked + untracked, not ignored): no venvs, no build folders.
copy_checkout() {
    rm -rf "$1"
    mkdir -p "$1"
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
        [ -e "$f" ] && printf '%s\0' "$f"; done | tar --null -T - -cf -) | tar -xf - -C "$1"
}
N="$ROOT/nanoplus"                  # /nanoplus inside the root
mkdir -p "$N"
copy_checkout "$N/src"
copy_checkout "$WORK/src-x86"
rm -rf "$N/out" "$WORK/out-x86" "$N/dist" "$WORK/dist"
mkdir -p "$N/out" "$N/shared" "$N/dist" "$WORK/out-x86"

# ------------------------------------------------------------------ mounts, undone on exit
MOUNTS=()
cleanup() {
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do umount "${MOUNTS[$i]}" 2>/dev/null || umount -l "${MOUNTS[$i]}" || true; done
}
trap cleanup EXIT
mount -t proc proc "$ROOT/proc"; MOUNTS+=("$ROOT/proc")
mount --rbind /dev "$ROOT/dev"; mount --make-rslave "$ROOT/dev"; MOUNTS+=("$ROOT/dev")
mount --bind "$SHARED" "$N/shared"; mount -o remount,bind,ro "$N/shared"; MOUNTS+=("$N/shared")
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"   # pip reaches the package index from inside
# A host whose HTTPS goes through a proxy with its own CA names the bundle in PIP_CERT or pip's config:
# the root's pip needs the same bundle.
HOST_CA="${PIP_CERT:-$(pip config get global.cert 2>/dev/null || true)}"
ROOT_CA=""
if [ -n "$HOST_CA" ] && [ -f "$HOST_CA" ]; then
    cp -L "$HOST_CA" "$N/host-ca.crt"
    ROOT_CA=/nanoplus/host-ca.crt
fi

EMULATION="qemu-aarch64-static $(qemu-aarch64-static --version | head -1 | awk '{print $3}') -cpu $ARM64_CPU on $(uname -m) ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'))"
in_root() {  # run a bash script inside the root, as aarch64, with a clean environment
    env -i HOME=/root PATH=/nanoplus/venv/bin:/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 \
        QEMU_CPU="$ARM64_CPU" NANOPLUS_EMULATION="$EMULATION" NANOPLUS_SHARED=/nanoplus/shared ${ROOT_CA:+PIP_CERT=$ROOT_CA} \
        OMP_NUM_THREADS=2 "$CHROOT" "$ROOT" /bin/bash -euo pipefail -c "$1"
}

# ------------------------------------------------------------------ the install, on each side
# The README's device recipe: pip install -c lock.txt "nanoplus-VERSION.tar.gz[extras]", here with
# --only-binary=:all:, so every dependency must come as a wheel; the sdist itself is built by pip (our
# extension, with that side's g++). The x86 venv also gets `build`, which makes the sdist.
INSTALL='python3 -m venv "$VENV" && "$VENV/bin/pip" install -q --disable-pip-version-check --only-binary=:all: -c "$LOCK" "$SDIST[$EXTRAS]" '"$TEST_DEPS"
no_aarch64_wheel() {  # name the locked packages without an aarch64 wheel for CPython 3.11
    say "finding which locked dependencies have no aarch64 wheel (pip download on the host)"
    local bad=""
    while read -r req; do
        [ -n "$req" ] || continue
        # Debian 12's glibc is 2.36: any manylinux_2_17 ... _2_36 wheel installs there
        pip download -q --no-deps --only-binary=:all: --python-version 3.11 --implementation cp \
            $(for v in $(seq 17 36); do printf -- '--platform manylinux_2_%s_aarch64 ' "$v"; done) \
            --platform manylinux2014_aarch64 --platform linux_aarch64 -d "$WORK/wheel-probe" "$req" >/dev/null 2>&1 \
            || bad="$bad $req"
    done < <(grep '==' "$WORK/out-x86/versions.txt" | grep -v -E '^(pip|setuptools|wheel|build|pyproject_hooks)==')  # what x86 resolved
    if [ -n "$bad" ]; then
        echo "NO AARCH64 WHEEL at the locked version:$bad" >&2
        echo "fix: in requirements/lock.txt pin each to a version that publishes a manylinux aarch64 cp311 wheel" >&2
        echo "(check: pip download --no-deps --only-binary=:all: --platform manylinux_2_28_aarch64 --python-version 3.11 NAME==VERSION)" >&2
    else
        echo "every locked package has an aarch64 wheel; the install failed for another reason (see above)" >&2
    fi
}

say "x86-64: venv + build + the sdist (the reference side)"
rm -rf "$WORK/venv-x86"
python3 -m venv "$WORK/venv-x86"
"$WORK/venv-x86/bin/pip" install -q --disable-pip-version-check -c "$LOCK" build > "$WORK/out-x86/install.log" 2>&1
"$WORK/venv-x86/bin/python" -m build --sdist --outdir "$WORK/dist" "$WORK/src-x86" >> "$WORK/out-x86/install.log" 2>&1 \
    || { tail -20 "$WORK/out-x86/install.log"; echo "arm64 check: python -m build --sdist failed FAIL"; exit 1; }
SDIST_NAME="$(cd "$WORK/dist" && ls nanoplus-*.tar.gz)"
cp "$WORK/dist/$SDIST_NAME" "$N/dist/"
cp "$LOCK" "$N/dist/lock.txt"
say "x86-64: pip install -c lock.txt --only-binary=:all: '$SDIST_NAME[$EXTRAS]' $TEST_DEPS"
(VENV="$WORK/venv-x86" SDIST="$WORK/dist/$SDIST_NAME" LOCK="$LOCK"; eval "$INSTALL") >> "$WORK/out-x86/install.log" 2>&1 \
    || { tail -30 "$WORK/out-x86/install.log"; echo "arm64 check: install failed on x86-64 FAIL"; exit 1; }
"$WORK/venv-x86/bin/pip" freeze --all > "$WORK/out-x86/versions.txt"

if [ -n "${ARM64_KEEP_VENV:-}" ] && [ -x "$N/venv/bin/nanoplus" ]; then
    say "aarch64: reusing the venv (ARM64_KEEP_VENV), reinstalling nanoplus only"
    in_root "pip install -q --no-deps --force-reinstall /nanoplus/dist/$SDIST_NAME" > "$N/out/install.log" 2>&1
else
    say "aarch64: venv + pip install -c lock.txt --only-binary=:all: '$SDIST_NAME[$EXTRAS]' $TEST_DEPS (emulated: slow)"
    rm -rf "$N/venv"
    if ! in_root "VENV=/nanoplus/venv SDIST=/nanoplus/dist/$SDIST_NAME LOCK=/nanoplus/dist/lock.txt EXTRAS=$EXTRAS; $INSTALL" \
            > "$N/out/install.log" 2>&1; then
        tail -30 "$N/out/install.log"
        no_aarch64_wheel
        echo "arm64 check: install failed on aarch64 (log $N/out/install.log) FAIL"
        exit 1
    fi
fi
in_root "pip freeze --all" > "$N/out/versions.txt"
say "aarch64 pre-processing: $(in_root 'python -m nanoplus.runtime.preprocess')"

# ------------------------------------------------------------------ the runs
# The same steps on each side, run from $OUT (a checkout as the working folder would shadow the
# installed package); $VENV is that side's venv, $SRC its checkout, $SH the reference material.
RUNS='cd "$OUT"
"$VENV/bin/nanoplus" eval "$SH/'"$FP16_MODEL"'" --data "$SH/assets/datasets/tiny_coco" --split val --quiet --json "$OUT/eval_fp16.json" > "$OUT/eval_fp16.txt" 2>&1
"$VENV/bin/nanoplus" eval "$SH/'"$INT8_MODEL"'" --data "$SH/assets/datasets/tiny_coco" --split val --quiet --json "$OUT/eval_int8.json" > "$OUT/eval_int8.txt" 2>&1
"$VENV/bin/nanoplus" infer "$SH/'"$FP16_MODEL"'" "$SH/assets/images" --save-dir "$OUT/infer" > "$OUT/infer.txt" 2>&1
"$VENV/bin/python" "$SRC/scripts/arm64_preprocess_dump.py" "$SH/'"$FP16_MODEL"'" "$SH/assets/images" "$OUT/preprocess.npz" > "$OUT/preprocess.txt" 2>&1'

say "x86-64: eval fp16 + int8, infer, pre-processing dump"
(VENV="$WORK/venv-x86" SRC="$WORK/src-x86" SH="$SHARED" OUT="$WORK/out-x86"; eval "$RUNS") \
    || { echo "arm64 check: the x86-64 reference run failed (logs in $WORK/out-x86) FAIL"; exit 1; }

say "aarch64: the runtime's tests (torch-free)"
TEST_FILES="$(cd "$N/src" && for f in tests/test_*.py; do
    case " $(echo $OTHER_TESTS) " in *" $(basename "$f" .py) "*) continue;; esac
    grep -q -E '^(import torch|from torch)' "$f" || printf '%s ' "$f"; done)"
echo "$TEST_FILES" > "$N/out/test_files.txt"
set +e
in_root "cd /nanoplus/src && pytest -q -p no:cacheprovider $TEST_FILES" > "$N/out/tests.txt" 2>&1
TESTS_RC=$?
set -e
tail -3 "$N/out/tests.txt"

say "aarch64: eval fp16 + int8, infer, pre-processing dump (emulated: slow)"
in_root "VENV=/nanoplus/venv SRC=/nanoplus/src SH=/nanoplus/shared OUT=/nanoplus/out; $RUNS" \
    || { echo "arm64 check: the aarch64 run failed (logs in $N/out) FAIL"; exit 1; }

say "aarch64: nanoplus bench (timings are emulated)"
in_root "cd /nanoplus/out && nanoplus bench /nanoplus/shared/$FP16_MODEL --threads 1 --warmup 2 --runs 10 --quiet --json /nanoplus/out/bench.json" \
    > "$N/out/bench.txt" 2>&1 || { cat "$N/out/bench.txt"; echo "arm64 check: nanoplus bench failed FAIL"; exit 1; }
cat "$N/out/bench.txt"

# ------------------------------------------------------------------ the verdict
ELAPSED=$(( $(date +%s) - START ))
"$WORK/venv-x86/bin/python" "$REPO/scripts/arm64_compare.py" --x86 "$WORK/out-x86" --aarch64 "$N/out" \
    --tests-rc "$TESTS_RC" --elapsed-s "$ELAPSED" --emulation "$EMULATION"
