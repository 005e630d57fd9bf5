// Decoding and NMS for NanoDet-Plus outputs: the same semantics as runtime/postprocess.py
// (upstream's evaluation post-processing, reference fixture README §5).
//
// score = sigmoid(class logit) (or the model's sigmoid output); every (point, class) pair with
// score > score_thr is a candidate (multi-label; single-label keeps each point's best class only);
// each candidate's point decodes one box: softmax over each side's reg_max+1 bins, expectation,
// x stride, distances (l, t, r, b) from the prior (x*stride, y*stride) (no +0.5), x clamped to
// [0, W] and y to [0, H]; greedy NMS per class in descending score order (equal scores keep
// (point, class) order), a box dropped when its IoU (area without +1) with a kept box of the same
// class is > iou_thr; survivors best first, at most max_det (<= 0: all).
#pragma once

#include <cstddef>
#include <vector>

#include "preprocess.h"

namespace nanoplus {

struct Detection {
    float x1, y1, x2, y2;  // input pixels after postprocess, original pixels after boxes_to_original
    float score;
    int class_id;
};

struct PostprocessOptions {
    float score_thr = 0.35f;  // the runtime's edge default; upstream evaluation uses 0.05
    float iou_thr = 0.6f;
    int max_det = 100;
    bool multi_label = true;
};

// The raw output of one image. NC: row-major (num_points, num_channels); CN: (num_channels,
// num_points) (ncnn's channels-first outputs are read in place). Channels: num_classes scores, then
// 4 * (reg_max + 1) bins for the sides left, top, right, bottom.
struct RawOutput {
    const float* data = nullptr;
    int num_points = 0;
    int num_channels = 0;
    bool channels_first = false;
    bool scores_are_sigmoid = true;  // false: class channels are logits

    float at(int point, int channel) const {
        return channels_first ? data[static_cast<size_t>(channel) * num_points + point]
                              : data[static_cast<size_t>(point) * num_channels + channel];
    }
};

// (x, y, stride) per point, levels in `strides` order, row-major within a level; ceil(H/s) x ceil(W/s) each.
struct Prior {
    float x, y, stride;
};
std::vector<Prior> make_center_priors(int input_h, int input_w, const std::vector<int>& strides);

// Throws Error when the output's shape does not fit (num_points of the priors, >= 1 class).
std::vector<Detection> postprocess(const RawOutput& raw, int input_h, int input_w, const std::vector<int>& strides,
                                   int reg_max, const PostprocessOptions& options);

// Input pixels -> original pixels: the inverse of the (diagonal) warp matrix applied to the corners,
// in double, clipped to [0, src_w] x [0, src_h] (runtime/preprocess.py boxes_to_original).
void boxes_to_original(std::vector<Detection>& detections, const WarpMatrix& matrix, int src_h, int src_w);

}  // namespace nanoplus
