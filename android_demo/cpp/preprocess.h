// The one pre-processing path, identical to runtime/preprocess.py (and so to upstream's validation):
// one warp matrix from original to network-input pixels, applied like cv2.warpPerspective
// (bilinear, constant border 0) to the 8-bit image, then (v - mean) / std per channel in float32.
//
// The warp and normalisation are runtime/native/warp_normalize.cpp, the same code the Python
// runtime runs (nanoplus.runtime._native): one implementation, the project's definition of the
// pre-processing (bit-identical to the numpy reference runtime/preprocess_reference.py).
//
// This is NOT ncnn::Mat::from_pixels_resize (which samples at pixel centres: a half-pixel shift
// that costs about 0.01 mAP on tiny_coco, see ../shared/assets/ASSETS.md). The matrix is diagonal
// in both resize modes: stretch = diag(W/w, H/h, 1); letterbox = diag(s, s, 1), s = min(W/w, H/h),
// image at the top-left, the rest 0.
#pragma once

#include <array>

#include "warp_normalize.h"  // ImageView, PixelFormat, warp_normalize

namespace nanoplus {

// diag(scale_x, scale_y, 1): original pixel (x, y) -> network-input pixel (x * scale_x, y * scale_y).
struct WarpMatrix {
    double scale_x = 1.0, scale_y = 1.0;
};

WarpMatrix get_warp_matrix(int src_h, int src_w, int dst_h, int dst_w, bool keep_ratio);

// image -> the network input as 3 float planes of dst_h x dst_w: warped by `matrix`, then
// v * float(1 / std[c]) + float(-mean[c] / std[c]) (normalize false, input_dtype uint8: the raw
// values). mean / std are in the network's channel order; to_rgb: plane 0 is red.
void preprocess_to_planes(const ImageView& image, const WarpMatrix& matrix, int dst_h, int dst_w,
                          const std::array<double, 3>& mean, const std::array<double, 3>& std, bool to_rgb,
                          bool normalize, float* const planes[3]);

}  // namespace nanoplus
