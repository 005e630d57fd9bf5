// warp_normalize.h: what this computes. How:
//
// Why it exists: at 1 thread OpenCV's general warp plus numpy's normalisation take about 1.4 ms at
// 416x416, 6% of the model's own time; the matrix is always diagonal, so the warp is separable and
// the normalisation and the HWC -> CHW split can be done while the result is in registers.
// preprocess.py falls back to OpenCV + numpy (within a grey level) when the Python module is not built.
//
// The arithmetic is OpenCV 5.0's, in the same order, and runtime/preprocess_reference.py writes it
// out in numpy (tests compare the two bit for bit): source coordinates in float32 from the inverted
// matrix; each of the two source rows blended horizontally, then the two results vertically, each
// blend a fused multiply-add (one rounding); rounded half to even. On CPUs without an fma
// instruction the product and sum are formed in double, which is exact for these operands (a byte
// difference times a float weight), so the one rounding to float is the fma's. This file must be
// compiled with -ffp-contract=off: the normalisation rounds twice, as numpy does.
//
// Three implementations of the same arithmetic, chosen by what the CPU has: portable C++, AVX2 + FMA
// (pixel-interleaved rows, one 8-byte load per column) and AVX-512 VBMI (planar rows: the taps of
// 16 columns picked from a 128-byte window of the source row by two byte permutes, then every step
// 16 values wide with no transposes; for scales where 16 columns fit such a window, i.e. all but
// strong downscales). Tests compare each with the numpy reference bit for bit.
#include "warp_normalize.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define NANOPLUS_X86 1
#endif

namespace nanoplus {

namespace {

inline float fused(float a, float b, float c) {
#if defined(__ARM_FEATURE_FMA)
    return std::fma(a, b, c);
#else
    return static_cast<float>(static_cast<double>(a) * static_cast<double>(b) + static_cast<double>(c));
#endif
}

// Nearest, ties to even, for 0 <= v < 2^22: adding 1.5 * 2^23 leaves no fraction bits.
inline float round_half_even(float v) {
    const float magic = 12582912.f;
    return (v + magic) - magic;
}

struct Plan {
    int src_h, src_w, stride, cn, dst_h, dst_w;
    // per output column: byte offsets of the two taps in a padded row, the weight of the second
    std::vector<int> off0, off1;
    std::vector<float> ax;
    // the 3-channel vector path: per column (and one spare) the offset of an 8-byte load holding
    // both taps, and the column's weight four times
    std::vector<int> pair_off;
    std::vector<float> ax4;
    // the AVX-512 VBMI path: per group of 16 output columns, `windows` windows of 128 bytes of a
    // padded row, each with its start, two 64-byte permute indices and their masks (0: a zero
    // byte: a tap on the border, a column past the last); the weights, 16 per group.
    // window_fits: every window holds its taps.
    // The windows are read straight from the image's rows (the zero pixels are masked, never
    // read): window_base is a byte offset in a source row, window_load the bytes of each 64-byte
    // half that lie in the row (masked loads do not touch the rest).
    int windows = 1;
    std::vector<int> window_base;
    std::vector<uint64_t> window_load;
    std::vector<uint8_t> window_index;
    std::vector<uint64_t> window_mask;
    std::vector<float> group_ax;
    bool window_fits = false;
    // per output row: first source row and the weight of the second
    std::vector<int> sy;
    std::vector<float> ay;
    int source[3];  // byte of a source pixel that output plane c reads
    float mul[3], add[3];
};

// Source coordinate of output index i, as OpenCV computes it: float32 inverse scale times i.
inline void tap(float inverse, int i, int* first, float* alpha) {
    const float coord = inverse * static_cast<float>(i);
    const float base = std::floor(coord);
    *first = static_cast<int>(base);
    *alpha = coord - base;
}

constexpr int kGroup = 16;        // output columns per AVX-512 step
constexpr int kWindow = 128;      // bytes of a source row two permutes read from

int column_groups(int dst_w) { return (dst_w + kGroup - 1) / kGroup; }

// The permute tables of the VBMI path for `windows` (1 or 2) windows per group, each serving
// 16 / windows of its columns; false where some window's taps span more than kWindow bytes. Byte j
// of the first permute's result (j = 16 * part + k, column k of the group) is, for part 0..2, plane
// `part`'s byte of the first tap and, for part 3, plane 0's byte of the second tap; the second
// permute's parts 0 and 1 are planes 1 and 2 of the second tap. Zero pixels are masked, never read.
bool plan_windows(Plan& p, int windows) {
    const int groups = column_groups(p.dst_w), per_window = kGroup / windows;
    const int left_zero = 0, right_zero = (p.src_w + 1) * p.cn;  // the padding pixels' offsets
    const size_t count = static_cast<size_t>(groups) * windows;
    p.windows = windows;
    p.window_base.assign(count, 0);
    p.window_load.assign(count * 2, 0);
    p.window_index.assign(count * 128, 0);
    p.window_mask.assign(count * 2, 0);
    for (size_t w = 0; w < count; ++w) {
        const int first_x = static_cast<int>(w) * per_window;
        const int last_x = std::min(first_x + per_window, p.dst_w);  // exclusive
        int lo = 1 << 30, hi = -1;
        for (int x = first_x; x < last_x; ++x) {
            for (int o : {p.off0[x], p.off1[x]}) {
                if (o == left_zero || o == right_zero) continue;
                lo = std::min(lo, o), hi = std::max(hi, o + p.cn - 1);
            }
        }
        if (hi < 0) continue;  // every tap a zero pixel (or no column): all masked
        if (hi - lo >= kWindow) return false;
        const int row_bytes = p.src_w * p.cn, base = lo - p.cn;  // lo: past the left zero pixel
        p.window_base[w] = base;
        for (int half = 0; half < 2; ++half) {
            const int bytes = std::clamp(row_bytes - base - 64 * half, 0, 64);
            p.window_load[w * 2 + half] = bytes == 64 ? ~uint64_t{0} : (uint64_t{1} << bytes) - 1;
        }
        uint8_t* index = p.window_index.data() + w * 128;
        uint64_t* mask = p.window_mask.data() + w * 2;
        for (int x = first_x; x < last_x; ++x) {
            const int k = x % kGroup;
            const int taps[6] = {p.off0[x], p.off0[x], p.off0[x], p.off1[x], p.off1[x], p.off1[x]};
            for (int part = 0; part < 6; ++part) {
                const int o = taps[part];
                if (o == left_zero || o == right_zero) continue;
                const int table = part / 4, j = (part % 4) * kGroup + k;
                index[table * 64 + j] = static_cast<uint8_t>(o + p.source[part % 3] - lo);
                mask[table] |= uint64_t{1} << j;
            }
        }
    }
    return true;
}

// One window per group where the taps allow it, else two (downscales up to about 5x), else none.
void plan_groups(Plan& p) {
    const int groups = column_groups(p.dst_w);
    p.group_ax.assign(static_cast<size_t>(groups) * kGroup, 0.f);
    for (int x = 0; x < p.dst_w; ++x) p.group_ax[x] = p.ax[x];
    p.window_fits = p.cn == 3 && (plan_windows(p, 1) || plan_windows(p, 2));
}

Plan make_plan(const ImageView& image, double scale_x, double scale_y, int dst_h, int dst_w, const float mul[3],
               const float add[3], bool to_rgb) {
    Plan p;
    p.src_h = image.height, p.src_w = image.width, p.dst_h = dst_h, p.dst_w = dst_w;
    p.cn = channels_of(image.format);
    p.stride = image.stride ? image.stride : image.width * p.cn;
    const float inv_x = static_cast<float>(1.0 / scale_x), inv_y = static_cast<float>(1.0 / scale_y);
    p.off0.resize(dst_w), p.off1.resize(dst_w), p.ax.resize(dst_w);
    // A padded row holds one zero pixel left and right of the image: a tap outside the image
    // (BORDER_CONSTANT 0) reads the left zero pixel. Where the two taps are not neighbours both
    // are such zeros, so the vector path reads 8 zero bytes from the slack after the right one.
    const int cn = p.cn;
    auto column = [&](int c) { return (c < -1 || c > p.src_w ? -1 : c) * cn + cn; };
    const int zeros = (p.src_w + 2) * cn;
    p.pair_off.assign(dst_w + 1, zeros), p.ax4.assign(static_cast<size_t>(dst_w + 1) * 4, 0.f);
    for (int x = 0; x < dst_w; ++x) {
        int first;
        tap(inv_x, x, &first, &p.ax[x]);
        p.off0[x] = column(first);
        p.off1[x] = column(first + 1);
        if (p.off1[x] == p.off0[x] + cn) p.pair_off[x] = p.off0[x];
        for (int k = 0; k < 4; ++k) p.ax4[static_cast<size_t>(x) * 4 + k] = p.ax[x];
    }
    p.sy.resize(dst_h), p.ay.resize(dst_h);
    for (int y = 0; y < dst_h; ++y) tap(inv_y, y, &p.sy[y], &p.ay[y]);
    // where blue, green and red sit in a source pixel
    int bgr[3] = {0, 1, 2};
    if (image.format == PixelFormat::RGB || image.format == PixelFormat::RGBA) bgr[0] = 2, bgr[2] = 0;
    if (image.format == PixelFormat::GRAY) bgr[0] = bgr[1] = bgr[2] = 0;
    for (int c = 0; c < 3; ++c) {
        p.source[c] = bgr[to_rgb ? 2 - c : c];
        p.mul[c] = mul[c], p.add[c] = add[c];
    }
    return p;
}

// A padded row, with slack after it for the vector loads (8 bytes; a 128-byte window).
size_t padded_row_bytes(const Plan& p) { return static_cast<size_t>(p.src_w + 2) * p.cn + kWindow; }

// Source row y between its zero pixels (the buffer's padding and slack stay zero).
void load_row(const Plan& p, const uint8_t* src_row, uint8_t* row) {
    std::memcpy(row + p.cn, src_row, static_cast<size_t>(p.src_w) * p.cn);
}

// Horizontal blend of one padded row into 3 planes of dst_w floats; `floats` is scratch for the
// row as floats (converting once is faster than per tap).
void blend_row_generic(const Plan& p, const uint8_t* __restrict row, float* __restrict floats, float* __restrict out) {
    const int n = (p.src_w + 2) * p.cn;
    for (int i = 0; i < n; ++i) floats[i] = row[i];
    for (int c = 0; c < 3; ++c) {
        const float* r = floats + p.source[c];
        float* o = out + static_cast<size_t>(c) * p.dst_w;
        for (int x = 0; x < p.dst_w; ++x) {
            const float v0 = r[p.off0[x]], v1 = r[p.off1[x]];
            o[x] = fused(p.ax[x], v1 - v0, v0);
        }
    }
}

// Vertical blend of two horizontally blended rows, rounded, normalised, into output row y.
void finish_row_generic(const Plan& p, float ay, const float* __restrict top, const float* __restrict bottom,
                        float* const planes[3], int y) {
    for (int c = 0; c < 3; ++c) {
        const float* t = top + static_cast<size_t>(c) * p.dst_w;
        const float* b = bottom + static_cast<size_t>(c) * p.dst_w;
        float* out = planes[c] + static_cast<size_t>(y) * p.dst_w;
        const float m = p.mul[c], a = p.add[c];
        for (int x = 0; x < p.dst_w; ++x) {
            const float u = round_half_even(fused(ay, b[x] - t[x], t[x]));
            const float v = u * m;
            out[x] = v + a;
        }
    }
}

#ifdef NANOPLUS_X86
// AVX2 + FMA, 3-channel images. A blended row here is pixel-interleaved, 4 floats per column
// (source bytes 0, 1, 2 and a spare lane), for 8-column groups plus one spare column. One 8-byte
// load per column reads both taps of all three channels; two columns are blended per
// instruction; the vertical pass turns 8 columns around (an in-lane 4x4 transpose) into the
// planes. Same roundings as the portable path: _mm*_fmadd_ps rounds once, like its exact double
// product and sum. The spare lanes blend neighbouring bytes and are never stored.
int interleaved_columns(int dst_w) { return (dst_w + 1 + 7) / 8 * 8; }

__attribute__((target("avx2,fma"))) void blend_row_avx2(const Plan& p, const uint8_t* __restrict row,
                                                        float* __restrict out) {
    // bytes 0-3 of each column's 8-byte load are the first tap (+ 1 spare), 3-6 the second
    const __m128i first_tap = _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m128i second_tap = _mm_setr_epi8(3, 4, 5, 6, 11, 12, 13, 14, -1, -1, -1, -1, -1, -1, -1, -1);
    for (int x = 0; x < p.dst_w; x += 2) {  // the spare column makes x + 1 valid
        __m128i both = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + p.pair_off[x]));
        both = _mm_unpacklo_epi64(both, _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + p.pair_off[x + 1])));
        const __m256 v0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_shuffle_epi8(both, first_tap)));
        const __m256 v1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_shuffle_epi8(both, second_tap)));
        const __m256 weight = _mm256_loadu_ps(p.ax4.data() + static_cast<size_t>(x) * 4);
        _mm256_storeu_ps(out + static_cast<size_t>(x) * 4, _mm256_fmadd_ps(weight, _mm256_sub_ps(v1, v0), v0));
    }
}

__attribute__((target("avx2,fma"))) void finish_row_avx2(const Plan& p, float ay, const float* __restrict top,
                                                         const float* __restrict bottom, float* const planes[3],
                                                         int y) {
    const __m256 magic = _mm256_set1_ps(12582912.f);
    const __m256 weight = _mm256_set1_ps(ay);
    float* out[3];
    __m256 mul[3], add[3];
    for (int c = 0; c < 3; ++c) {
        out[c] = planes[c] + static_cast<size_t>(y) * p.dst_w;
        mul[c] = _mm256_set1_ps(p.mul[c]);
        add[c] = _mm256_set1_ps(p.add[c]);
    }
    int x = 0;
    for (; x + 8 <= p.dst_w; x += 8) {
        __m256 u[4];
        for (int k = 0; k < 4; ++k) {  // u[k] = columns x+k (low lane) and x+k+4 (high lane)
            const float* t = top + static_cast<size_t>(x + k) * 4;
            const float* b = bottom + static_cast<size_t>(x + k) * 4;
            const __m256 tv = _mm256_set_m128(_mm_loadu_ps(t + 16), _mm_loadu_ps(t));
            const __m256 bv = _mm256_set_m128(_mm_loadu_ps(b + 16), _mm_loadu_ps(b));
            const __m256 v = _mm256_fmadd_ps(weight, _mm256_sub_ps(bv, tv), tv);
            u[k] = _mm256_sub_ps(_mm256_add_ps(v, magic), magic);
        }
        const __m256 s0 = _mm256_unpacklo_ps(u[0], u[1]), s1 = _mm256_unpackhi_ps(u[0], u[1]);
        const __m256 s2 = _mm256_unpacklo_ps(u[2], u[3]), s3 = _mm256_unpackhi_ps(u[2], u[3]);
        // source byte 0, 1, 2 of the 8 columns
        const __m256 byte[3] = {_mm256_shuffle_ps(s0, s2, 0x44), _mm256_shuffle_ps(s0, s2, 0xEE),
                                _mm256_shuffle_ps(s1, s3, 0x44)};
        for (int c = 0; c < 3; ++c)
            _mm256_storeu_ps(out[c] + x, _mm256_add_ps(_mm256_mul_ps(byte[p.source[c]], mul[c]), add[c]));
    }
    for (; x < p.dst_w; ++x) {
        for (int c = 0; c < 3; ++c) {
            const size_t i = static_cast<size_t>(x) * 4 + p.source[c];
            const float u = round_half_even(std::fma(ay, bottom[i] - top[i], top[i]));
            const float v = u * p.mul[c];
            out[c][x] = v + p.add[c];
        }
    }
}

// GCC 12's own AVX-512 headers trip -Wmaybe-uninitialized (GCC bug 105593, fixed in 13)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
// AVX-512 VBMI, 3-channel images, planar blended rows (3 planes of column_groups(dst_w) * 16
// floats). Same roundings as the other paths.
__attribute__((target("avx512f,avx512bw,avx512vbmi,fma"))) void blend_row_vbmi(const Plan& p,
                                                                              const uint8_t* __restrict row,
                                                                              float* __restrict out) {
    const int groups = column_groups(p.dst_w);
    const size_t plane = static_cast<size_t>(groups) * kGroup;
    for (int g = 0; g < groups; ++g) {
        __m512i first = _mm512_setzero_si512(), second = _mm512_setzero_si512();
        for (int w = g * p.windows; w < (g + 1) * p.windows; ++w) {  // each window fills its columns
            const uint8_t* window = row + p.window_base[w];
            const uint64_t* load = p.window_load.data() + static_cast<size_t>(w) * 2;
            const __m512i lo = _mm512_maskz_loadu_epi8(load[0], window);
            const __m512i hi = _mm512_maskz_loadu_epi8(load[1], window + 64);
            const uint8_t* index = p.window_index.data() + static_cast<size_t>(w) * 128;
            const uint64_t* mask = p.window_mask.data() + static_cast<size_t>(w) * 2;
            first = _mm512_or_si512(first, _mm512_maskz_permutex2var_epi8(mask[0], lo, _mm512_loadu_si512(index), hi));
            second = _mm512_or_si512(second,
                                     _mm512_maskz_permutex2var_epi8(mask[1], lo, _mm512_loadu_si512(index + 64), hi));
        }
        const __m128i bytes0[3] = {_mm512_castsi512_si128(first), _mm512_extracti32x4_epi32(first, 1),
                                   _mm512_extracti32x4_epi32(first, 2)};
        const __m128i bytes1[3] = {_mm512_extracti32x4_epi32(first, 3), _mm512_castsi512_si128(second),
                                   _mm512_extracti32x4_epi32(second, 1)};
        const __m512 weight = _mm512_loadu_ps(p.group_ax.data() + static_cast<size_t>(g) * kGroup);
        for (int c = 0; c < 3; ++c) {
            const __m512 v0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes0[c]));
            const __m512 v1 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes1[c]));
            _mm512_storeu_ps(out + c * plane + static_cast<size_t>(g) * kGroup,
                             _mm512_fmadd_ps(weight, _mm512_sub_ps(v1, v0), v0));
        }
    }
}

__attribute__((target("avx512f,fma"))) void finish_row_vbmi(const Plan& p, float ay, const float* __restrict top,
                                                            const float* __restrict bottom, float* const planes[3],
                                                            int y) {
    const int groups = column_groups(p.dst_w);
    const size_t plane = static_cast<size_t>(groups) * kGroup;
    const __m512 magic = _mm512_set1_ps(12582912.f);
    const __m512 weight = _mm512_set1_ps(ay);
    const int tail = p.dst_w - (groups - 1) * kGroup;  // columns in the last group, 1..16
    const __mmask16 tail_mask = static_cast<__mmask16>((1u << tail) - 1);
    for (int c = 0; c < 3; ++c) {
        const float* t = top + c * plane;
        const float* b = bottom + c * plane;
        float* out = planes[c] + static_cast<size_t>(y) * p.dst_w;
        const __m512 mul = _mm512_set1_ps(p.mul[c]), add = _mm512_set1_ps(p.add[c]);
        for (int g = 0; g < groups; ++g) {
            const size_t x = static_cast<size_t>(g) * kGroup;
            const __m512 tv = _mm512_loadu_ps(t + x), bv = _mm512_loadu_ps(b + x);
            const __m512 v = _mm512_fmadd_ps(weight, _mm512_sub_ps(bv, tv), tv);
            const __m512 u = _mm512_sub_ps(_mm512_add_ps(v, magic), magic);
            const __m512 result = _mm512_add_ps(_mm512_mul_ps(u, mul), add);
            if (g + 1 < groups) _mm512_storeu_ps(out + x, result);
            else _mm512_mask_storeu_ps(out + x, tail_mask, result);
        }
    }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

bool have_avx2_fma() {
    static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return yes;
}

bool have_avx512_vbmi() {
    static const bool yes = have_avx2_fma() && __builtin_cpu_supports("avx512f") &&
                            __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vbmi");
    return yes;
}
#endif

// The vector path for 3-channel images: the best the CPU has, at most max_simd (SimdLevel).
int simd_level(int max_simd) {
#ifdef NANOPLUS_X86
    if (max_simd >= kSimdAvx512Vbmi && have_avx512_vbmi()) return kSimdAvx512Vbmi;
    if (max_simd >= kSimdAvx2 && have_avx2_fma()) return kSimdAvx2;
#else
    (void)max_simd;
#endif
    return kSimdNone;
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

const char* simd_name(int max_simd) {
    switch (simd_level(max_simd)) {
        case kSimdAvx512Vbmi: return "avx512vbmi";
        case kSimdAvx2: return "avx2+fma";
        default: return "none";
    }
}

namespace {

// What a plan is made from; two calls with equal keys get equal plans.
struct PlanKey {
    int src_h = 0, src_w = 0, stride = 0, format = 0, dst_h = 0, dst_w = 0, max_simd = 0, to_rgb = 0;
    double scale_x = 0, scale_y = 0;
    float mul[3] = {0, 0, 0}, add[3] = {0, 0, 0};

    bool operator==(const PlanKey& o) const {
        return src_h == o.src_h && src_w == o.src_w && stride == o.stride && format == o.format && dst_h == o.dst_h &&
               dst_w == o.dst_w && max_simd == o.max_simd && to_rgb == o.to_rgb && scale_x == o.scale_x &&
               scale_y == o.scale_y && std::memcmp(mul, o.mul, sizeof mul) == 0 &&
               std::memcmp(add, o.add, sizeof add) == 0;
    }
};

// The plan, the path and the scratch rows of the last call on this thread: a video's frames (and
// a benchmark's) share one size, so the tables and buffers are made once, not per image.
struct Workspace {
    bool valid = false;
    PlanKey key;
    Plan plan;
    int level = kSimdNone;
    size_t blended_len = 0;
    std::vector<uint8_t> row;
    std::vector<float> row_floats, blended;
};

Workspace& workspace_for(const ImageView& image, double scale_x, double scale_y, int dst_h, int dst_w,
                         const float mul[3], const float add[3], bool to_rgb, int max_simd) {
    thread_local Workspace ws;
    PlanKey key;
    key.src_h = image.height, key.src_w = image.width, key.format = static_cast<int>(image.format);
    key.stride = image.stride ? image.stride : image.width * channels_of(image.format);
    key.dst_h = dst_h, key.dst_w = dst_w, key.max_simd = max_simd, key.to_rgb = to_rgb;
    key.scale_x = scale_x, key.scale_y = scale_y;
    for (int c = 0; c < 3; ++c) key.mul[c] = mul[c], key.add[c] = add[c];
    if (ws.valid && ws.key == key) return ws;
    ws.valid = false;
    ws.key = key;
    Plan& p = ws.plan;
    p = make_plan(image, scale_x, scale_y, dst_h, dst_w, mul, add, to_rgb);
    int level = p.cn == 3 ? simd_level(max_simd) : kSimdNone;
    if (level == kSimdAvx512Vbmi) {
        plan_groups(p);
        if (!p.window_fits) level = simd_level(kSimdAvx2);  // a downscale by more than about 5x
    }
    size_t blended_len = static_cast<size_t>(3) * dst_w;
#ifdef NANOPLUS_X86
    if (level == kSimdAvx512Vbmi) blended_len = static_cast<size_t>(3) * column_groups(dst_w) * kGroup;
    if (level == kSimdAvx2) blended_len = static_cast<size_t>(4) * interleaved_columns(dst_w);
#endif
    ws.level = level;
    ws.blended_len = blended_len;
    ws.row.assign(padded_row_bytes(p), 0);  // the padding stays zero: rows are copied between it
    ws.row_floats.assign(ws.row.size(), 0.f);
    ws.blended.assign(2 * blended_len, 0.f);
    ws.valid = true;
    return ws;
}

}  // namespace

int warp_normalize(const ImageView& image, double scale_x, double scale_y, int dst_h, int dst_w, const float mul[3],
                   const float add[3], bool to_rgb, float* const planes[3], int max_simd) {
    Workspace& ws = workspace_for(image, scale_x, scale_y, dst_h, dst_w, mul, add, to_rgb, max_simd);
    const Plan& p = ws.plan;
    const int level = ws.level;
    const size_t blended_len = ws.blended_len;
    std::vector<uint8_t>& row = ws.row;
    std::vector<float>& row_floats = ws.row_floats;
    std::vector<float>& blended = ws.blended;
    int held[2] = {-2, -2};  // the source row each blended slot holds (-2: none)
    auto slot_of = [&](int y, int keep) {
        if (held[0] == y) return 0;
        if (held[1] == y) return 1;
        const int slot = held[0] == keep ? 1 : 0;
        float* out = blended.data() + slot * blended_len;
        held[slot] = y;
        if (y < 0 || y >= p.src_h) {  // a row above or below the image: all border zeros
            std::fill(out, out + blended_len, 0.f);
            return slot;
        }
        const uint8_t* src = image.data + static_cast<size_t>(y) * p.stride;
        // the image is usually cold (the model ran since it was decoded): ask for the next two
        // source rows while this one is blended; rows cross 4 KiB pages, where hardware
        // prefetchers stop
        for (int ahead = y + 1; ahead <= y + 2 && ahead < p.src_h; ++ahead) {
            const char* next = reinterpret_cast<const char*>(image.data) + static_cast<size_t>(ahead) * p.stride;
            for (int offset = 0; offset < p.src_w * p.cn; offset += 64) __builtin_prefetch(next + offset);
        }
#ifdef NANOPLUS_X86
        if (level == kSimdAvx512Vbmi) {
            blend_row_vbmi(p, src, out);  // reads the image row itself
            return slot;
        }
        load_row(p, src, row.data());
        if (level == kSimdAvx2) {
            blend_row_avx2(p, row.data(), out);
            return slot;
        }
#else
        load_row(p, src, row.data());
#endif
        blend_row_generic(p, row.data(), row_floats.data(), out);
        return slot;
    };
    for (int y = 0; y < p.dst_h; ++y) {
        const int sy = p.sy[y];
        const float* top = blended.data() + slot_of(sy, sy + 1) * blended_len;
        const float* bottom = blended.data() + slot_of(sy + 1, sy) * blended_len;
#ifdef NANOPLUS_X86
        if (level == kSimdAvx512Vbmi) {
            finish_row_vbmi(p, p.ay[y], top, bottom, planes, y);
            continue;
        }
        if (level == kSimdAvx2) {
            finish_row_avx2(p, p.ay[y], top, bottom, planes, y);
            continue;
        }
#endif
        finish_row_generic(p, p.ay[y], top, bottom, planes, y);
    }
    return level;
}

}  // namespace nanoplus
