#include "postprocess.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "metadata.h"

namespace nanoplus {

namespace {

// Candidates are pre-selected on the raw logits with this much slack, then the exact sigmoid score
// is compared with score_thr: the same result as thresholding sigmoid(logit), without a sigmoid
// for each of the N x C values (runtime/postprocess.py _LOGIT_SLACK).
constexpr double kLogitSlack = 1e-3;

struct Candidate {
    int point;
    int class_id;
    float score;
};

inline float sigmoid(float x) { return 1.f / (1.f + std::exp(-x)); }

float pre_threshold(float score_thr, bool scores_are_sigmoid) {
    if (scores_are_sigmoid) return score_thr;
    if (score_thr <= 0.f) return -std::numeric_limits<float>::infinity();
    if (score_thr >= 1.f) return std::numeric_limits<float>::infinity();
    return static_cast<float>(std::log(score_thr / (1.0 - score_thr)) - kLogitSlack);
}

// (point, class, score) of every candidate, in (point, class) order.
std::vector<Candidate> select_candidates(const RawOutput& raw, int num_classes, const PostprocessOptions& options) {
    const float pre_thr = pre_threshold(options.score_thr, raw.scores_are_sigmoid);
    auto exact_score = [&](float value) { return raw.scores_are_sigmoid ? value : sigmoid(value); };
    std::vector<Candidate> out;
    if (options.multi_label) {
        // walk the class channels in memory order, then restore (point, class) order
        if (raw.channels_first) {
            for (int c = 0; c < num_classes; ++c) {
                const float* row = raw.data + static_cast<size_t>(c) * raw.num_points;
                for (int p = 0; p < raw.num_points; ++p)
                    if (row[p] > pre_thr) out.push_back({p, c, 0.f});
            }
            std::sort(out.begin(), out.end(), [](const Candidate& a, const Candidate& b) {
                return a.point != b.point ? a.point < b.point : a.class_id < b.class_id;
            });
        } else {
            for (int p = 0; p < raw.num_points; ++p) {
                const float* row = raw.data + static_cast<size_t>(p) * raw.num_channels;
                for (int c = 0; c < num_classes; ++c)
                    if (row[c] > pre_thr) out.push_back({p, c, 0.f});
            }
        }
    } else {
        for (int p = 0; p < raw.num_points; ++p) {
            int best = 0;
            float best_value = raw.at(p, 0);
            for (int c = 1; c < num_classes; ++c) {
                float v = raw.at(p, c);
                if (v > best_value) { best_value = v; best = c; }  // first maximum, as argmax
            }
            if (best_value > pre_thr) out.push_back({p, best, 0.f});
        }
    }
    std::vector<Candidate> kept;
    kept.reserve(out.size());
    for (Candidate& cand : out) {
        cand.score = exact_score(raw.at(cand.point, cand.class_id));
        if (cand.score > options.score_thr) kept.push_back(cand);
    }
    return kept;
}

// One point's box from its 4 x (reg_max + 1) bin logits, clamped to the input.
Detection decode_box(const RawOutput& raw, int point, int num_classes, const Prior& prior, int reg_max, int input_h, int input_w) {
    const int num_bins = reg_max + 1;
    float distance[4];
    for (int side = 0; side < 4; ++side) {
        const int first = num_classes + side * num_bins;
        float side_max = raw.at(point, first);
        for (int b = 1; b < num_bins; ++b) side_max = std::max(side_max, raw.at(point, first + b));
        float weighted = 0.f, total = 0.f;
        for (int b = 0; b < num_bins; ++b) {
            float e = std::exp(raw.at(point, first + b) - side_max);
            weighted += e * static_cast<float>(b);
            total += e;
        }
        distance[side] = weighted / total;
    }
    const float w = static_cast<float>(input_w), h = static_cast<float>(input_h);
    Detection d;
    d.x1 = std::min(std::max(distance[0] * -prior.stride + prior.x, 0.f), w);
    d.y1 = std::min(std::max(distance[1] * -prior.stride + prior.y, 0.f), h);
    d.x2 = std::min(std::max(distance[2] * prior.stride + prior.x, 0.f), w);
    d.y2 = std::min(std::max(distance[3] * prior.stride + prior.y, 0.f), h);
    return d;
}

// IoU of a kept box against a later one; NaN (two empty boxes) never suppresses.
inline float iou(const Detection& a, const Detection& b) {
    const float w = std::min(a.x2, b.x2) - std::max(a.x1, b.x1);
    const float h = std::min(a.y2, b.y2) - std::max(a.y1, b.y1);
    const float inter = std::max(w, 0.f) * std::max(h, 0.f);
    const float area_a = (a.x2 - a.x1) * (a.y2 - a.y1);
    const float area_b = (b.x2 - b.x1) * (b.y2 - b.y1);
    return inter / (area_a + area_b - inter);
}

}  // namespace

std::vector<Prior> make_center_priors(int input_h, int input_w, const std::vector<int>& strides) {
    std::vector<Prior> priors;
    for (int stride : strides) {
        const int rows = (input_h + stride - 1) / stride, cols = (input_w + stride - 1) / stride;
        for (int y = 0; y < rows; ++y)
            for (int x = 0; x < cols; ++x)
                priors.push_back({static_cast<float>(x * stride), static_cast<float>(y * stride), static_cast<float>(stride)});
    }
    return priors;
}

std::vector<Detection> postprocess(const RawOutput& raw, int input_h, int input_w, const std::vector<int>& strides,
                                   int reg_max, const PostprocessOptions& options) {
    const std::vector<Prior> priors = make_center_priors(input_h, input_w, strides);
    const int num_bins = 4 * (reg_max + 1);
    const int num_classes = raw.num_channels - num_bins;
    if (raw.num_points != static_cast<int>(priors.size()) || num_classes < 1) {
        throw Error("model output of shape (" + std::to_string(raw.num_points) + " points, " + std::to_string(raw.num_channels) +
                    " channels) does not fit a NanoDet-Plus head with input " + std::to_string(input_h) + "x" + std::to_string(input_w) +
                    " and reg_max " + std::to_string(reg_max) + ": expected (" + std::to_string(priors.size()) +
                    ", num_classes + " + std::to_string(num_bins) + "); check the model's input size and layout");
    }

    std::vector<Candidate> candidates = select_candidates(raw, num_classes, options);
    std::stable_sort(candidates.begin(), candidates.end(),
                     [](const Candidate& a, const Candidate& b) { return a.score > b.score; });

    const size_t max_keep = options.max_det > 0 ? static_cast<size_t>(options.max_det) : candidates.size();
    std::vector<Detection> kept;
    for (const Candidate& cand : candidates) {
        if (kept.size() >= max_keep) break;
        Detection box = decode_box(raw, cand.point, num_classes, priors[static_cast<size_t>(cand.point)], reg_max, input_h, input_w);
        box.score = cand.score;
        box.class_id = cand.class_id;
        bool suppressed = false;
        for (const Detection& k : kept) {
            if (k.class_id == box.class_id && iou(k, box) > options.iou_thr) { suppressed = true; break; }
        }
        if (!suppressed) kept.push_back(box);
    }
    return kept;
}

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
