#include "postprocess.h"

#include <algorithm>

namespace nanoplus {

void boxes_to_original(std::vector<Detection>& detections, const WarpMatrix& matrix, int src_h, int src_w) {
    const double inv_x = 1.0 / matrix.scale_x, inv_y = 1.0 / matrix.scale_y;
    auto clip = [](double v, double hi) { return static_cast<float>(std::min(std::max(v, 0.0), hi)); };
    for (Detection& d : detections) {
        d.x1 = clip(d.x1 * inv_x, src_w);
        d.y1 = clip(d.y1 * inv_y, src_h);
        d.x2 = clip(d.x2 * inv_x, src_w);
        d.y2 = clip(d.y2 * inv_y, src_h);
    }
}

}  // namespace nanoplus
