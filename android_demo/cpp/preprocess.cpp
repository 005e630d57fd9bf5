#include "preprocess.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace nanoplus {

namespace {

// a * b + c rounded once to float, as OpenCV's fused multiply-add does. Where the CPU has an fma
// instruction (aarch64; x86 built with -mfma) it is used; elsewhere the double product and sum are
// exact for these operands (pixel values below 512, float weights), so the one rounding to float
// is the fma's too.
inline float fused(float a, float b, float c) {
#if defined(__FP_FAST_FMAF) || defined(__ARM_FEATURE_FMA)
    return std::fma(a, b, c);
#else
    return static_cast<float>(static_cast<double>(a) * static_cast<double>(b) + static_cast<double>(c));
#endif
}

// Rounds to nearest, ties to even, as cvRound does, for 0 <= v < 2^22: adding 1.5 * 2^23 leaves no
// fraction bits in float, so the addition itself rounds (in the default rounding mode). Inline and
// branch-free where std::nearbyint may be a library call.
inline float round_half_even(float v) {
    const float magic = 12582912.f;
    return (v + magic) - magic;  // IEEE semantics (no -ffast-math) keep the two roundings
}

// The source taps of each output column (or row): first index and the blend weight of the next.
struct Taps {
    std::vector<int> first;
    std::vector<float> alpha;
};

Taps taps(int dst_len, double inverse_scale) {
    const float m = static_cast<float>(inverse_scale);
    Taps out;
    out.first.resize(static_cast<size_t>(dst_len));
    out.alpha.resize(static_cast<size_t>(dst_len));
    for (int i = 0; i < dst_len; ++i) {
        float coord = m * static_cast<float>(i);  // + 0: the matrix has no translation
        float base = std::floor(coord);
        out.first[static_cast<size_t>(i)] = static_cast<int>(base);
        out.alpha[static_cast<size_t>(i)] = coord - base;
    }
    return out;
}

}  // namespace

int channels_of(PixelFormat format) {
    switch (format) {
        case PixelFormat::GRAY: return 1;
        case PixelFormat::BGR:
        case PixelFormat::RGB: return 3;
        default: return 4;
    }
}

WarpMatrix get_warp_matrix(int src_h, int src_w, int dst_h, int dst_w, bool keep_ratio) {
    double sx = static_cast<double>(dst_w) / src_w;
    double sy = static_cast<double>(dst_h) / src_h;
    if (keep_ratio) sx = sy = std::min(sx, sy);
    return {sx, sy};
}

void warp_image(const ImageView& src, const WarpMatrix& matrix, int dst_h, int dst_w, uint8_t* dst_bgr) {
    const int cn = channels_of(src.format);
    const int stride = src.stride ? src.stride : src.width * cn;
    // where B, G, R sit in a source pixel
    int bgr[3];
    switch (src.format) {
        case PixelFormat::RGB:
        case PixelFormat::RGBA: bgr[0] = 2; bgr[1] = 1; bgr[2] = 0; break;
        case PixelFormat::GRAY: bgr[0] = bgr[1] = bgr[2] = 0; break;
        default: bgr[0] = 0; bgr[1] = 1; bgr[2] = 2; break;
    }
    // OpenCV inverts the 3x3 matrix (in double) and samples the source at M^-1 (x, y) in float32
    const Taps xs = taps(dst_w, 1.0 / matrix.scale_x);
    const Taps ys = taps(dst_h, 1.0 / matrix.scale_y);

    // Bilinear with a diagonal matrix is separable: OpenCV blends each of the two source rows
    // horizontally, then the two results vertically, rounding exactly as below. A horizontally
    // blended source row is computed once and reused by every output row that needs it.
    // BORDER_CONSTANT 0: a tap left or right of the image reads a zero pixel at either end of a
    // padded row copy; a row above or below the image is all zeros.
    const int padded = (src.width + 2) * cn;
    std::vector<uint8_t> source_row(static_cast<size_t>(padded), 0);
    std::vector<int> offset0(static_cast<size_t>(dst_w)), offset1(static_cast<size_t>(dst_w));
    auto column_offset = [&](int x) { return (x < -1 || x > src.width ? -1 : x) * cn + cn; };
    for (int x = 0; x < dst_w; ++x) {
        offset0[static_cast<size_t>(x)] = column_offset(xs.first[static_cast<size_t>(x)]);
        offset1[static_cast<size_t>(x)] = column_offset(xs.first[static_cast<size_t>(x)] + 1);
    }
    const size_t row_len = static_cast<size_t>(dst_w) * 3;
    // two blended rows, B G R interleaved, with the source row index each holds (-2: none yet)
    std::vector<float> blended(row_len * 2);
    int held[2] = {-2, -2};
    auto blend_row = [&](int y, int slot) {
        float* out = blended.data() + slot * row_len;
        held[slot] = y;
        if (y < 0 || y >= src.height) {
            std::fill(out, out + row_len, 0.f);
            return;
        }
        std::memcpy(source_row.data() + cn, src.data + static_cast<size_t>(y) * stride, static_cast<size_t>(src.width) * cn);
        const uint8_t* row = source_row.data();
        for (int x = 0; x < dst_w; ++x, out += 3) {
            const float ax = xs.alpha[static_cast<size_t>(x)];
            const uint8_t* p0 = row + offset0[static_cast<size_t>(x)];
            const uint8_t* p1 = row + offset1[static_cast<size_t>(x)];
            for (int c = 0; c < 3; ++c) {
                const float v0 = p0[bgr[c]], v1 = p1[bgr[c]];
                out[c] = fused(ax, v1 - v0, v0);
            }
        }
    };
    // the slot holding source row y, computing it (in the slot not holding `keep`) when needed
    auto row_slot = [&](int y, int keep) {
        if (held[0] == y) return 0;
        if (held[1] == y) return 1;
        const int slot = held[0] == keep ? 1 : 0;
        blend_row(y, slot);
        return slot;
    };

    for (int y = 0; y < dst_h; ++y) {
        const int sy = ys.first[static_cast<size_t>(y)];
        const float ay = ys.alpha[static_cast<size_t>(y)];
        const int slot0 = row_slot(sy, sy + 1);
        const int slot1 = row_slot(sy + 1, sy);
        const float* top = blended.data() + slot0 * row_len;
        const float* bottom = blended.data() + slot1 * row_len;
        uint8_t* out = dst_bgr + static_cast<size_t>(y) * row_len;
        for (size_t i = 0; i < row_len; ++i) {
            const float v = fused(ay, bottom[i] - top[i], top[i]);  // in [0, 255]: a blend of bytes
            out[i] = static_cast<uint8_t>(round_half_even(v));
        }
    }
}

void normalize_to_planes(const uint8_t* hwc_bgr, int h, int w, const std::array<double, 3>& mean,
                         const std::array<double, 3>& std, bool to_rgb, bool normalize, float* const planes[3]) {
    const size_t n = static_cast<size_t>(h) * w;
    for (int c = 0; c < 3; ++c) {
        const int source = to_rgb ? 2 - c : c;
        // mean / std are given in the network's channel order (color_order)
        const float scale = normalize ? static_cast<float>(1.0 / std[c]) : 1.f;
        const float shift = normalize ? static_cast<float>(-mean[c] / std[c]) : 0.f;
        float* out = planes[c];
        const uint8_t* in = hwc_bgr + source;
        for (size_t i = 0; i < n; ++i) {
            float v = static_cast<float>(in[i * 3]) * scale;  // two roundings, as numpy does them
            out[i] = v + shift;
        }
    }
}

}  // namespace nanoplus
