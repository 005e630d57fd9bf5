#include "decode_nms.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>

namespace nanoplus {

namespace {

// Candidates are pre-selected on the raw logits with this much slack, then the exact sigmoid score
// is compared with score_thr: the same result as thresholding sigmoid(logit), without a sigmoid
// for each of the N x C values (runtime/postprocess.py _LOGIT_SLACK).
constexpr double kLogitSlack = 1e-3;

float half_to_float(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu;
    uint32_t bits;
    if (exponent == 0x1f) {
        bits = sign | 0x7f800000u | (mantissa << 13);  // inf, NaN
    } else if (exponent != 0) {
        bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {
        bits = sign;  // +-0
    } else {  // subnormal half: normalise
        int e = 113;
        while (!(mantissa & 0x400u)) {
            mantissa <<= 1;
            --e;
        }
        bits = sign | (static_cast<uint32_t>(e) << 23) | ((mantissa & 0x3ffu) << 13);
    }
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

// A raw element in the precision its compares are made in (half and float compare exactly as float).
template <typename T> struct Element;
template <> struct Element<uint16_t> {
    using Compare = float;
    static float load(uint16_t v) { return half_to_float(v); }
};
template <> struct Element<float> {
    using Compare = float;
    static float load(float v) { return v; }
};
template <> struct Element<double> {
    using Compare = double;
    static double load(double v) { return v; }
};

// Whether any of n values is > thr: the scan over every class value, so vectorised (AVX2 on x86
// where the CPU has it, else what the compiler's baseline allows); NaN is never above.
inline bool any_above_portable(const float* v, size_t n, float thr) {
    int any = 0;
    for (size_t i = 0; i < n; ++i) any |= static_cast<int>(v[i] > thr);
    return any != 0;
}
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
__attribute__((target("avx2"))) bool any_above_avx2(const float* v, size_t n, float thr) {
    int any = 0;
    for (size_t i = 0; i < n; ++i) any |= static_cast<int>(v[i] > thr);
    return any != 0;
}
bool any_above(const float* v, size_t n, float thr) {
    static const bool avx2 = __builtin_cpu_supports("avx2");
    return avx2 ? any_above_avx2(v, n, thr) : any_above_portable(v, n, thr);
}
#else
bool any_above(const float* v, size_t n, float thr) { return any_above_portable(v, n, thr); }
#endif

template <typename T, typename C>
bool any_above(const T* v, size_t n, C thr) {
    int any = 0;
    for (size_t i = 0; i < n; ++i) any |= static_cast<int>(Element<T>::load(v[i]) > thr);
    return any != 0;
}

// numpy's maximum / minimum: NaN in either argument gives NaN.
inline float nan_max(float a, float b) { return (a != a || b != b) ? std::numeric_limits<float>::quiet_NaN() : (a < b ? b : a); }
inline float nan_min(float a, float b) { return (a != a || b != b) ? std::numeric_limits<float>::quiet_NaN() : (b < a ? b : a); }

template <typename T>
void select_typed(const RawOutput& raw, int num_classes, double threshold, bool multi_label, Candidates& out) {
    using E = Element<T>;
    using C = typename E::Compare;
    const T* data = static_cast<const T*>(raw.data);
    const C thr = static_cast<C>(threshold);
    const size_t num_points = static_cast<size_t>(raw.num_points), stride = static_cast<size_t>(raw.num_channels);
    auto push = [&](size_t p, int c, C value) {
        out.points.push_back(static_cast<int64_t>(p));
        out.classes.push_back(c);
        out.values.push_back(static_cast<float>(value));
    };
    if (multi_label && !raw.channels_first) {
        for (size_t p = 0; p < num_points; ++p) {
            const T* row = data + p * stride;
            if (!any_above(row, static_cast<size_t>(num_classes), thr)) continue;  // most rows have no candidate
            for (int c = 0; c < num_classes; ++c) {
                const C v = E::load(row[c]);
                if (v > thr) push(p, c, v);
            }
        }
    } else if (multi_label) {
        // channels-first: walk each class row in memory order, then restore (point, class) order
        std::vector<int64_t> keys;
        constexpr size_t kChunk = 64;
        for (int c = 0; c < num_classes; ++c) {
            const T* row = data + static_cast<size_t>(c) * num_points;
            for (size_t start = 0; start < num_points; start += kChunk) {
                const size_t stop = std::min(start + kChunk, num_points);
                if (!any_above(row + start, stop - start, thr)) continue;
                for (size_t p = start; p < stop; ++p)
                    if (E::load(row[p]) > thr) keys.push_back(static_cast<int64_t>(p) * num_classes + c);
            }
        }
        std::sort(keys.begin(), keys.end());
        for (int64_t key : keys) {
            const size_t p = static_cast<size_t>(key / num_classes);
            const int c = static_cast<int>(key % num_classes);
            push(p, c, E::load(data[static_cast<size_t>(c) * num_points + p]));
        }
    } else {
        // each point's first maximum class (numpy's argmax: the first NaN, if any, is the maximum)
        auto at = [&](size_t p, int c) {
            return E::load(raw.channels_first ? data[static_cast<size_t>(c) * num_points + p] : data[p * stride + c]);
        };
        std::vector<C> best_value(num_points);
        std::vector<int> best(num_points, 0);
        for (size_t p = 0; p < num_points; ++p) best_value[p] = at(p, 0);
        for (int c = 1; c < num_classes; ++c) {
            for (size_t p = 0; p < num_points; ++p) {
                const C v = at(p, c), b = best_value[p];
                if (b != b) continue;
                if (v > b || v != v) {
                    best_value[p] = v;
                    best[p] = c;
                }
            }
        }
        for (size_t p = 0; p < num_points; ++p)
            if (best_value[p] > thr) push(p, best[p], best_value[p]);
    }
}

// One point's box from its 4 x (reg_max + 1) bin logits, clamped to the input: x1, y1, x2, y2.
template <typename T>
void decode_typed(const RawOutput& raw, size_t point, int num_classes, const float* prior, int reg_max, float w, float h,
                  float* box) {
    const T* data = static_cast<const T*>(raw.data);
    const size_t num_points = static_cast<size_t>(raw.num_points), num_channels = static_cast<size_t>(raw.num_channels);
    const int num_bins = reg_max + 1;
    float logits[4 * 64];
    float* bins = logits;
    std::vector<float> large;
    if (4 * num_bins > 4 * 64) {
        large.resize(static_cast<size_t>(4 * num_bins));
        bins = large.data();
    }
    for (int i = 0; i < 4 * num_bins; ++i) {
        const size_t channel = static_cast<size_t>(num_classes + i);
        bins[i] = static_cast<float>(Element<T>::load(raw.channels_first ? data[channel * num_points + point]
                                                                         : data[point * num_channels + channel]));
    }
    const float limit[4] = {w, h, w, h};
    const float point_xy[4] = {prior[0], prior[1], prior[0], prior[1]};
    for (int side = 0; side < 4; ++side) {
        const float* side_bins = bins + side * num_bins;
        float side_max = side_bins[0];
        for (int b = 1; b < num_bins; ++b) side_max = nan_max(side_max, side_bins[b]);
        float weighted = 0.f, total = 0.f;
        for (int b = 0; b < num_bins; ++b) {
            const float e = std::exp(side_bins[b] - side_max);
            weighted += e * static_cast<float>(b);
            total += e;
        }
        const float distance = weighted / total;
        const float signed_stride = side < 2 ? -prior[2] : prior[2];
        box[side] = nan_min(nan_max(distance * signed_stride + point_xy[side], 0.f), limit[side]);
    }
}

// IoU of a kept box a against a later one b, as runtime/postprocess.py _pairwise_iou computes it;
// NaN (two empty boxes, NaN coordinates) never suppresses.
inline float iou(const float* a, const float* b) {
    const float w = nan_min(a[2], b[2]) - nan_max(a[0], b[0]);
    const float h = nan_min(a[3], b[3]) - nan_max(a[1], b[1]);
    const float inter = nan_max(w, 0.f) * nan_max(h, 0.f);
    const float area_a = (a[2] - a[0]) * (a[3] - a[1]);
    const float area_b = (b[2] - b[0]) * (b[3] - b[1]);
    return inter / (area_a + area_b - inter);
}

}  // namespace

void boxes_to_original(float* boxes, size_t n, double inv_x, double inv_y, double src_w, double src_h) {
    auto clip = [](double v, double hi) { return static_cast<float>(std::min(std::max(v, 0.0), hi)); };
    for (size_t i = 0; i < n; ++i) {
        float* box = boxes + 4 * i;
        box[0] = clip(box[0] * inv_x, src_w);
        box[1] = clip(box[1] * inv_y, src_h);
        box[2] = clip(box[2] * inv_x, src_w);
        box[3] = clip(box[3] * inv_y, src_h);
    }
}

double pre_threshold(double score_thr, bool scores_are_sigmoid) {
    if (scores_are_sigmoid) return score_thr;
    if (score_thr <= 0.0) return -std::numeric_limits<double>::infinity();
    if (score_thr >= 1.0) return std::numeric_limits<double>::infinity();
    return std::log(score_thr / (1.0 - score_thr)) - kLogitSlack;
}

std::vector<float> make_center_priors(int input_h, int input_w, const std::vector<int>& strides) {
    std::vector<float> priors;
    for (int stride : strides) {
        const int rows = (input_h + stride - 1) / stride, cols = (input_w + stride - 1) / stride;
        for (int y = 0; y < rows; ++y)
            for (int x = 0; x < cols; ++x)
                priors.insert(priors.end(), {static_cast<float>(x * stride), static_cast<float>(y * stride),
                                             static_cast<float>(stride), static_cast<float>(stride)});
    }
    return priors;
}

void select_candidates(const RawOutput& raw, int num_classes, double threshold, bool multi_label, Candidates& out) {
    switch (raw.type) {
        case ScalarType::F16: return select_typed<uint16_t>(raw, num_classes, threshold, multi_label, out);
        case ScalarType::F32: return select_typed<float>(raw, num_classes, threshold, multi_label, out);
        case ScalarType::F64: return select_typed<double>(raw, num_classes, threshold, multi_label, out);
    }
}

size_t decode_nms(const RawOutput& raw, int num_classes, int reg_max, const float* priors, int input_h, int input_w,
                  const int64_t* points, const int64_t* classes, const float* scores, size_t n, float iou_thr,
                  int max_det, int64_t* kept, float* boxes) {
    std::vector<size_t> order(n);
    std::iota(order.begin(), order.end(), size_t{0});
    std::stable_sort(order.begin(), order.end(), [scores](size_t a, size_t b) { return scores[a] > scores[b]; });
    const size_t max_keep = max_det > 0 ? std::min(static_cast<size_t>(max_det), n) : n;
    const float w = static_cast<float>(input_w), h = static_cast<float>(input_h);
    std::vector<std::vector<size_t>> kept_of_class(static_cast<size_t>(num_classes));  // positions in kept[]
    size_t num_kept = 0;
    for (size_t i = 0; i < n && num_kept < max_keep; ++i) {
        const size_t cand = order[i];
        const size_t point = static_cast<size_t>(points[cand]);
        float* box = boxes + 4 * num_kept;  // decoded in place; overwritten if suppressed
        switch (raw.type) {
            case ScalarType::F16: decode_typed<uint16_t>(raw, point, num_classes, priors + 4 * point, reg_max, w, h, box); break;
            case ScalarType::F32: decode_typed<float>(raw, point, num_classes, priors + 4 * point, reg_max, w, h, box); break;
            case ScalarType::F64: decode_typed<double>(raw, point, num_classes, priors + 4 * point, reg_max, w, h, box); break;
        }
        std::vector<size_t>& same_class = kept_of_class[static_cast<size_t>(classes[cand])];
        bool suppressed = false;
        for (size_t k = 0; k < same_class.size() && !suppressed; ++k) suppressed = iou(boxes + 4 * same_class[k], box) > iou_thr;
        if (!suppressed) {
            same_class.push_back(num_kept);
            kept[num_kept++] = static_cast<int64_t>(cand);
        }
    }
    return num_kept;
}

std::vector<Detection> postprocess(const RawOutput& raw, int input_h, int input_w, const std::vector<int>& strides,
                                   int reg_max, const PostprocessOptions& options) {
    const std::vector<float> priors = make_center_priors(input_h, input_w, strides);
    const int num_bins = 4 * (reg_max + 1);
    const int num_classes = raw.num_channels - num_bins;
    if (static_cast<size_t>(raw.num_points) * 4 != priors.size() || num_classes < 1 || reg_max < 0) {
        throw std::invalid_argument(
            "model output of shape (" + std::to_string(raw.num_points) + " points, " + std::to_string(raw.num_channels) +
            " channels) does not fit a NanoDet-Plus head with input " + std::to_string(input_h) + "x" + std::to_string(input_w) +
            " and reg_max " + std::to_string(reg_max) + ": expected (" + std::to_string(priors.size() / 4) + ", num_classes + " +
            std::to_string(num_bins) + "); check the model's input size and layout");
    }
    double threshold = pre_threshold(options.score_thr, raw.scores_are_sigmoid);
    if (raw.type != ScalarType::F64) threshold = static_cast<float>(threshold);  // compared as the data is
    Candidates cands;
    select_candidates(raw, num_classes, threshold, options.multi_label, cands);

    // the exact score test: sigmoid(logit) > score_thr (or the sigmoid output itself)
    size_t n = 0;
    for (size_t i = 0; i < cands.values.size(); ++i) {
        const float v = cands.values[i];
        const float score = raw.scores_are_sigmoid ? v : 1.f / (1.f + std::exp(-v));
        if (score > options.score_thr) {
            cands.points[n] = cands.points[i];
            cands.classes[n] = cands.classes[i];
            cands.values[n] = score;
            ++n;
        }
    }
    std::vector<int64_t> kept(n);
    std::vector<float> boxes(4 * n);
    const size_t num_kept = decode_nms(raw, num_classes, reg_max, priors.data(), input_h, input_w, cands.points.data(),
                                       cands.classes.data(), cands.values.data(), n, options.iou_thr, options.max_det,
                                       kept.data(), boxes.data());
    std::vector<Detection> out(num_kept);
    for (size_t k = 0; k < num_kept; ++k) {
        const float* b = &boxes[4 * k];
        out[k] = {b[0], b[1], b[2], b[3], cands.values[static_cast<size_t>(kept[k])],
                  static_cast<int>(cands.classes[static_cast<size_t>(kept[k])])};
    }
    return out;
}

}  // namespace nanoplus
