// Decoding and NMS for NanoDet-Plus outputs: runtime/native/decode_nms.h, the Python runtime's own
// C++ (nanoplus.runtime._native), shared, not copied; the same semantics as runtime/postprocess.py.
// This file adds the step back to the original image.
#pragma once

#include <vector>

#include "decode_nms.h"  // Detection, PostprocessOptions, RawOutput, make_center_priors, postprocess
#include "preprocess.h"

namespace nanoplus {

// Input pixels -> original pixels: the inverse of the (diagonal) warp matrix applied to the corners,
// in double, clipped to [0, src_w] x [0, src_h] (runtime/preprocess.py boxes_to_original).
void boxes_to_original(std::vector<Detection>& detections, const WarpMatrix& matrix, int src_h, int src_w);

}  // namespace nanoplus
