#!/usr/bin/env bash
# Build the ncnn C++ library (static, CPU only) from ncnn's PyPI source distribution.
#
#   android_demo/scripts/build_ncnn.sh host      # x86_64 (or whatever this machine is)
#   android_demo/scripts/build_ncnn.sh aarch64   # cross-build for 64-bit ARM Linux (Raspberry Pi 4/5)
#
# Result: android_demo/build/<target>/ncnn-install/{include,lib}/ (git-ignored). Sources are fetched
# into android_demo/build/ once and never committed.
# Environment: NCNN_VERSION (default 1.0.20261020, the version of the Python ncnn package the runtime
# uses), NCNN_SDIST (an already downloaded ncnn-<version>.tar.gz), JOBS (default 2),
# NCNN_AARCH64_ARCH (aarch64 only: "armv8" (default) = plain ARMv8.0-A, runs on every 64-bit ARM
# core including the Raspberry Pi 4's Cortex-A72; "armv82" = also fp16 arithmetic and dot-product
# kernels, for Cortex-A76 (Raspberry Pi 5) and recent phones, will NOT run on a Pi 4).
set -euo pipefail

TARGET=${1:-host}
HERE=$(cd "$(dirname "$0")/.." && pwd)           # android_demo/
BUILD_ROOT=$HERE/build
VERSION=${NCNN_VERSION:-1.0.20261020}
JOBS=${JOBS:-2}
SRC_DIR=$BUILD_ROOT/ncnn-src/ncnn-$VERSION
TARBALL=${NCNN_SDIST:-$BUILD_ROOT/ncnn-src/ncnn-$VERSION.tar.gz}

case "$TARGET" in
    host|aarch64) ;;
    *) echo "usage: $0 host|aarch64" >&2; exit 2 ;;
esac

mkdir -p "$BUILD_ROOT/ncnn-src"
if [ ! -f "$SRC_DIR/CMakeLists.txt" ]; then
    if [ ! -f "$TARBALL" ]; then
        echo "== fetching the ncnn $VERSION source distribution from PyPI"
        # The sdist computes its version from today's date while pip prepares its metadata, so pip
        # rejects an older release as "inconsistent version"; faketime makes the date match.
        if ! pip download --no-deps --no-binary :all: "ncnn==$VERSION" -d "$BUILD_ROOT/ncnn-src" >/dev/null 2>&1; then
            command -v faketime >/dev/null || { echo "pip refused ncnn==$VERSION; install faketime (apt-get install faketime) and run again" >&2; exit 1; }
            day=${VERSION##*.}
            faketime "${day:0:4}-${day:4:2}-${day:6:2} 12:00:00" \
                pip download --no-deps --no-binary :all: "ncnn==$VERSION" -d "$BUILD_ROOT/ncnn-src"
        fi
    fi
    tar xzf "$TARBALL" -C "$BUILD_ROOT/ncnn-src"
fi

OPTIONS=(
    -DCMAKE_BUILD_TYPE=Release
    -DNCNN_VERSION="${VERSION##*.}"   # else ncnn stamps today's date into NCNN_VERSION_STRING
    -DNCNN_SHARED_LIB=OFF
    -DNCNN_RUNTIME_CPU=OFF
    -DNCNN_AVX512=OFF -DNCNN_AVXVNNI=OFF -DNCNN_BF16=OFF -DNCNN_XOP=OFF -DNCNN_FMA4=OFF
    -DNCNN_VULKAN=OFF
    -DNCNN_BUILD_TOOLS=OFF -DNCNN_BUILD_EXAMPLES=OFF -DNCNN_BUILD_BENCHMARK=OFF -DNCNN_BUILD_TESTS=OFF
    -DNCNN_PYTHON=OFF
)
if [ "$TARGET" = aarch64 ]; then
    command -v aarch64-linux-gnu-g++ >/dev/null || { echo "no aarch64 cross compiler: apt-get install g++-aarch64-linux-gnu" >&2; exit 1; }
    OPTIONS+=(-DCMAKE_TOOLCHAIN_FILE="$HERE/cmake/aarch64-linux-gnu.toolchain.cmake")
    # Without runtime dispatch, every enabled ISA extension is compiled into all the code, so the
    # baseline decides which cores the binary runs on.
    case "${NCNN_AARCH64_ARCH:-armv8}" in
        armv8) OPTIONS+=(-DNCNN_ARM82=OFF) ;;
        armv82) OPTIONS+=(-DNCNN_ARM82=ON -DNCNN_ARM82DOT=ON -DNCNN_ARM82FP16FML=OFF -DNCNN_ARM84BF16=OFF -DNCNN_ARM84I8MM=OFF -DNCNN_ARM86SVE=OFF) ;;
        *) echo "NCNN_AARCH64_ARCH must be armv8 or armv82" >&2; exit 2 ;;
    esac
fi

OUT=$BUILD_ROOT/$TARGET
echo "== configuring ncnn $VERSION for $TARGET in $OUT/ncnn-build"
cmake -S "$SRC_DIR" -B "$OUT/ncnn-build" -DCMAKE_INSTALL_PREFIX="$OUT/ncnn-install" "${OPTIONS[@]}" >"$OUT.ncnn-configure.log" 2>&1 \
    || { tail -30 "$OUT.ncnn-configure.log"; exit 1; }
echo "== building with $JOBS jobs (a few minutes)"
cmake --build "$OUT/ncnn-build" -j "$JOBS" >"$OUT.ncnn-build.log" 2>&1 || { tail -40 "$OUT.ncnn-build.log"; exit 1; }
cmake --install "$OUT/ncnn-build" >/dev/null
echo "== ncnn installed in $OUT/ncnn-install ($(du -h "$OUT/ncnn-install/lib/libncnn.a" | cut -f1) libncnn.a)"
