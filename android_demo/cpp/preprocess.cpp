#include "preprocess.h"

#include <algorithm>

namespace nanoplus {

WarpMatrix get_warp_matrix(int src_h, int src_w, int dst_h, int dst_w, bool keep_ratio) {
    double sx = static_cast<double>(dst_w) / src_w;
    double sy = static_cast<double>(dst_h) / src_h;
    if (keep_ratio) sx = sy = std::min(sx, sy);
    return {sx, sy};
}

void preprocess_to_planes(const ImageView& image, const WarpMatrix& matrix, int dst_h, int dst_w,
                          const std::array<double, 3>& mean, const std::array<double, 3>& std, bool to_rgb,
                          bool normalize, float* const planes[3]) {
    // each computed in double and rounded once to float, as runtime/preprocess.py does
    float mul[3] = {1.f, 1.f, 1.f}, add[3] = {0.f, 0.f, 0.f};
    if (normalize) {
        for (int c = 0; c < 3; ++c) {
            mul[c] = static_cast<float>(1.0 / std[c]);
            add[c] = static_cast<float>(-mean[c] / std[c]);
        }
    }
    warp_normalize(image, matrix.scale_x, matrix.scale_y, dst_h, dst_w, mul, add, to_rgb, planes);
}

}  // namespace nanoplus
