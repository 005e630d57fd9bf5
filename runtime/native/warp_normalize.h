// The pre-processing warp and normalisation in one pass: the definition of nanoplus's
// pre-processing, equal bit for bit to the plain numpy reference runtime/preprocess_reference.py
// (a warp by a diagonal matrix, bilinear, constant border 0, rounded to uint8 -- the arithmetic
// of OpenCV 5.0's cv2.warpPerspective; then v * mul + add per channel in float32,
// mul = float(1/std), add = float(-mean/std)). Other OpenCV versions round differently in a few
// values (runtime/preprocess.py's fallback; measured in README.md).
//
// One implementation for both users: the Python runtime (module.cpp, nanoplus.runtime._native)
// and the native C++ program / Android library (android_demo/). Plain C++17, no dependencies.
#pragma once

#include <cstdint>

namespace nanoplus {

enum class PixelFormat { BGR, RGB, BGRA, RGBA, GRAY };

// Borrowed 8-bit pixels, rows `stride` bytes apart (Android Bitmaps are RGBA with padded rows).
struct ImageView {
    const uint8_t* data = nullptr;
    int width = 0, height = 0;
    int stride = 0;  // bytes per row; 0 = width * channels
    PixelFormat format = PixelFormat::BGR;
};

int channels_of(PixelFormat format);

// image -> 3 float planes of dst_h x dst_w (planes[c], row-major), warped by diag(scale_x, scale_y, 1)
// from image pixels to network pixels as cv2.warpPerspective does it, then v * mul[c] + add[c]
// (mul 1 and add 0 give the raw 0..255 values). Plane c holds blue, green, red (to_rgb: red, green,
// blue); a GRAY image gives the same values in all three. max_simd caps the vector instructions
// (SimdLevel; by default the best this CPU has): every level gives the same bits.
enum SimdLevel : int { kSimdNone = 0, kSimdAvx2 = 1, kSimdAvx512Vbmi = 2, kSimdBest = kSimdAvx512Vbmi };
// Returns the SimdLevel that ran.
int warp_normalize(const ImageView& image, double scale_x, double scale_y, int dst_h, int dst_w,
                   const float mul[3], const float add[3], bool to_rgb, float* const planes[3],
                   int max_simd = kSimdBest);

// The vector instructions warp_normalize uses on this CPU with that cap: "avx512vbmi", "avx2+fma" or
// "none" (portable code). (A downscale by more than about 5x falls back from avx512vbmi to avx2+fma.)
const char* simd_name(int max_simd = kSimdBest);

}  // namespace nanoplus
