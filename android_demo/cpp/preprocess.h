// The one pre-processing path, identical to runtime/preprocess.py (and so to upstream's validation):
// one warp matrix from original to network-input pixels, applied like cv2.warpPerspective
// (bilinear, constant border 0) to the 8-bit image, then (v - mean) / std per channel in float32.
//
// This is NOT ncnn::Mat::from_pixels_resize (which samples at pixel centres: a half-pixel shift
// that costs about 0.01 mAP on tiny_coco, see ../shared/assets/ASSETS.md). The matrix is diagonal
// in both resize modes: stretch = diag(W/w, H/h, 1); letterbox = diag(s, s, 1), s = min(W/w, H/h),
// image at the top-left, the rest 0.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

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

// diag(scale_x, scale_y, 1): original pixel (x, y) -> network-input pixel (x * scale_x, y * scale_y).
struct WarpMatrix {
    double scale_x = 1.0, scale_y = 1.0;
};

WarpMatrix get_warp_matrix(int src_h, int src_w, int dst_h, int dst_w, bool keep_ratio);

// src -> (dst_h, dst_w, 3) BGR uint8, row-major, as cv2.warpPerspective(src, M, (dst_w, dst_h),
// INTER_LINEAR, BORDER_CONSTANT, 0) computes it with OpenCV 5: source coordinates in float32 from
// the inverted matrix, float32 bilinear blends as fused multiply-adds, rounded half to even.
// Bit-identical to OpenCV on the shared photos (tests/test_native.py checks it).
void warp_image(const ImageView& src, const WarpMatrix& matrix, int dst_h, int dst_w, uint8_t* dst_bgr);

// (h, w, 3) uint8 BGR -> 3 float planes, plane c at planes[c] (each h * w floats):
// v * float(1 / std[c]) + float(-mean[c] / std[c]) in float32 (runtime/preprocess.py
// normalize_to_blob does the same two float32 operations). to_rgb: plane 0 takes the R channel.
// normalize false (input_dtype uint8): the raw values.
void normalize_to_planes(const uint8_t* hwc_bgr, int h, int w, const std::array<double, 3>& mean,
                         const std::array<double, 3>& std, bool to_rgb, bool normalize, float* const planes[3]);

}  // namespace nanoplus
