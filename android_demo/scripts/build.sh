#!/usr/bin/env bash
# Build nanoplus_ncnn (and, on the host, the JNI bridge) against ncnn built by build_ncnn.sh.
#
#   android_demo/scripts/build.sh host       # -> android_demo/build/host/nanoplus/nanoplus_ncnn (+ libnanoplus_jni.so)
#   android_demo/scripts/build.sh aarch64    # -> android_demo/build/aarch64/nanoplus/nanoplus_ncnn (static, for a Pi)
#
# Builds ncnn first when android_demo/build/<target>/ncnn-install is missing (a few minutes).
# Needs: cmake, g++ (host) or g++-aarch64-linux-gnu (aarch64), libstb-dev (stb_image.h); the JNI
# bridge is built when a JDK's jni.h is found (JAVA_HOME, or javac on the PATH).
# Environment: JOBS (default 2).
set -euo pipefail

TARGET=${1:-host}
HERE=$(cd "$(dirname "$0")/.." && pwd)
OUT=$HERE/build/$TARGET
JOBS=${JOBS:-2}

case "$TARGET" in
    host|aarch64) ;;
    *) echo "usage: $0 host|aarch64" >&2; exit 2 ;;
esac
if [ ! -f /usr/include/stb/stb_image.h ] && [ -z "${STB_INCLUDE_DIR:-}" ]; then
    echo "stb_image.h not found: apt-get install libstb-dev (or set STB_INCLUDE_DIR)" >&2
    exit 1
fi
if [ ! -f "$OUT/ncnn-install/lib/cmake/ncnn/ncnnConfig.cmake" ]; then
    "$HERE/scripts/build_ncnn.sh" "$TARGET"
fi

OPTIONS=(-DCMAKE_BUILD_TYPE=Release -Dncnn_DIR="$OUT/ncnn-install/lib/cmake/ncnn")
[ -n "${STB_INCLUDE_DIR:-}" ] && OPTIONS+=(-DSTB_INCLUDE_DIR="$STB_INCLUDE_DIR")
if [ "$TARGET" = aarch64 ]; then
    # a static program (one file to copy to the board) needs OpenMP's static runtime, not libgomp.so
    OPTIONS+=(-DCMAKE_TOOLCHAIN_FILE="$HERE/cmake/aarch64-linux-gnu.toolchain.cmake" -DNANOPLUS_STATIC=ON
              -DOpenMP_gomp_LIBRARY="$(aarch64-linux-gnu-gcc -print-file-name=libgomp.a)")
else
    # ncnn was built without runtime dispatch, so it already needs what its x86 build enabled
    # (AVX2 + FMA + F16C); the pre-processing is then compiled for the same CPUs
    if grep -q -- "-mfma" "$OUT/ncnn-build/src/CMakeFiles/ncnn.dir/flags.make" 2>/dev/null; then
        OPTIONS+=(-DNANOPLUS_ARCH_FLAGS="-mavx2 -mfma -mf16c")
    fi
    if [ -z "${JAVA_HOME:-}" ] && command -v javac >/dev/null; then
        JAVA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v javac)")")")
        export JAVA_HOME
    fi
    if [ -n "${JAVA_HOME:-}" ] && [ -f "$JAVA_HOME/include/jni.h" ]; then
        OPTIONS+=(-DNANOPLUS_BUILD_JNI=ON)
    else
        echo "== no JDK found: skipping the JNI bridge"
    fi
fi

cmake -S "$HERE" -B "$OUT/nanoplus" "${OPTIONS[@]}" >"$OUT/nanoplus-configure.log" 2>&1 || { tail -30 "$OUT/nanoplus-configure.log"; exit 1; }
if ! cmake --build "$OUT/nanoplus" -j "$JOBS" >"$OUT/nanoplus-build.log" 2>&1; then
    tail -40 "$OUT/nanoplus-build.log"; exit 1
fi
grep -A3 "warning:" "$OUT/nanoplus-build.log" | head -40 || true
BIN=$OUT/nanoplus/nanoplus_ncnn
[ -x "$BIN" ] || { echo "build failed: $BIN missing" >&2; exit 1; }
echo "== built $BIN ($(du -h "$BIN" | cut -f1), $(file -b "$BIN" | cut -d, -f1-2))"
[ -f "$OUT/nanoplus/libnanoplus_jni.so" ] && echo "== built $OUT/nanoplus/libnanoplus_jni.so ($(du -h "$OUT/nanoplus/libnanoplus_jni.so" | cut -f1))"
exit 0
