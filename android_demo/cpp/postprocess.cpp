#include "postprocess.h"

#include <algorithm>

namespace nanoplus {

void boxes_to_original(std::vector<Detection>& detections, const WarpMatrix& matrix, int src_h, int src_w) {
    for (Detection& d : detections) {  // the Python runtime's mapping (decode_nms.h), one box at a time
        float box[4] = {d.x1, d.y1, d.x2, d.y2};
        boxes_to_original(box, 1, 1.0 / matrix.scale_x, 1.0 / matrix.scale_y, src_w, src_h);
        d.x1 = box[0], d.y1 = box[1], d.x2 = box[2], d.y2 = box[3];
    }
}

}  // namespace nanoplus
