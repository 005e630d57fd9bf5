// Decoding and NMS for NanoDet-Plus outputs, the same semantics as runtime/postprocess.py (upstream's
// evaluation post-processing, reference fixture README §5).
//
// One implementation for both users: the Python runtime (module.cpp, nanoplus.runtime._native, used
// by runtime/postprocess.py when built) and the native C++ program / Android library (android_demo/).
// Plain C++17, no dependencies.
//
// score = sigmoid(class logit) (or the model's sigmoid output); every (point, class) pair with
// score > score_thr is a candidate (multi-label; single-label keeps each point's best class only);
// each candidate's point decodes one box: softmax over each side's reg_max+1 bins, expectation,
// x stride, distances (l, t, r, b) from the prior (x*stride, y*stride) (no +0.5), x clamped to
// [0, W] and y to [0, H]; greedy NMS per class in descending score order (equal scores keep
// (point, class) order), a box dropped when its IoU (area without +1) with a kept box of the same
// class is > iou_thr; survivors best first, at most max_det (<= 0: all).
//
// The work is split in three steps so that the Python runtime can compute the scores (the sigmoid)
// with numpy, whose exp is the reference its tests compare against bit for bit:
//   select_candidates (threshold on the raw values) -> scores (sigmoid, exact threshold) -> decode_nms.
// postprocess() runs all three with std::exp for the C++ program.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

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

enum class ScalarType { F16, F32, F64 };  // F16: IEEE half, read as raw 16-bit words

// The raw output of one image. NC: row-major (num_points, num_channels); CN: (num_channels,
// num_points) (channels-first outputs are read in place). Channels: num_classes scores, then
// 4 * (reg_max + 1) bins for the sides left, top, right, bottom.
struct RawOutput {
    const void* data = nullptr;
    ScalarType type = ScalarType::F32;
    int num_points = 0;
    int num_channels = 0;
    bool channels_first = false;
    bool scores_are_sigmoid = true;  // false: class channels are logits
};

// (num_points, 4) rows (x, y, stride, stride), row-major, as runtime/postprocess.py make_center_priors:
// x = column * stride, y = row * stride, levels in `strides` order, ceil(H/s) x ceil(W/s) points each.
std::vector<float> make_center_priors(int input_h, int input_w, const std::vector<int>& strides);

// The candidates before scoring, in (point, class) order; value: the class channel's raw value as float.
struct Candidates {
    std::vector<int64_t> points, classes;
    std::vector<float> values;
};

// Every (point, class) with value > threshold (multi_label), or each point's first maximum class
// when that value > threshold. The compare is made in the output's own precision: `threshold` must
// be representable in it (the Python caller rounds it as numpy would).
void select_candidates(const RawOutput& raw, int num_classes, double threshold, bool multi_label, Candidates& out);

// Greedy class-aware NMS over n scored candidates, decoding each box as it is reached.
// points[i] / classes[i] / scores[i] describe candidate i (classes in [0, num_classes), scores never NaN); priors has
// raw.num_points rows of 4 (make_center_priors). Writes at most max_det (<= 0: n) survivors, best first (stable for equal
// scores): their candidate indices to kept[] and boxes (x1, y1, x2, y2) to boxes[4 * j ...].
// Returns the number written.
size_t decode_nms(const RawOutput& raw, int num_classes, int reg_max, const float* priors, int input_h, int input_w,
                  const int64_t* points, const int64_t* classes, const float* scores, size_t n, float iou_thr,
                  int max_det, int64_t* kept, float* boxes);

// All three steps, scores by std::exp. Throws std::invalid_argument when the output's shape does not
// fit (num_points of the priors, >= 1 class).
std::vector<Detection> postprocess(const RawOutput& raw, int input_h, int input_w, const std::vector<int>& strides,
                                   int reg_max, const PostprocessOptions& options);

// Boxes (x1, y1, x2, y2 per row, n rows) in network-input pixels -> original pixels, in place: times
// inv_x / inv_y (1 / the warp's scale) in double, clipped to [0, src_w] x [0, src_h], rounded to float
// (runtime/preprocess.py boxes_to_original; NaN stays NaN).
void boxes_to_original(float* boxes, size_t n, double inv_x, double inv_y, double src_w, double src_h);

// The pre-selection threshold on the raw class values: score_thr itself for sigmoid scores, else
// logit(score_thr) minus a small slack (the exact sigmoid test follows), +-inf at the ends.
double pre_threshold(double score_thr, bool scores_are_sigmoid);

}  // namespace nanoplus
