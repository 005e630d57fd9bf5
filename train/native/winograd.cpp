// nanoplus.train._winograd: the tile transforms of a Winograd F(2x2, 3x3) convolution on NHWC maps
// (3x3, stride 1, padding 1), for training the aux head (train/winograd.py does the rest: the
// weight transform and the 16 matrix products, in PyTorch).
//
// A 4x4 input tile d (padded coordinates 2i..2i+3, 2j..2j+3) gives the 2x2 outputs at 2i.., 2j..:
//   forward   V = B^T d B,  M[xi] = V[xi] U[xi] (U = G w G^T),  y = A^T M A
//   backward  dM = A dy A^T,  dV[xi] = dM[xi] U[xi]^T,  dx += B dV B^T (tiles overlap by 2),
//             dU[xi] = V[xi]^T dM[xi]
// with B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]], A^T = [[1,1,1,0],[0,1,-1,-1]]: additions
// only, so the transforms round no more than a direct convolution's sums do.
//
// Layouts: maps (N, H, W, C) float32 C-contiguous; transformed tiles (16, N, TH, TW, C) with
// TH = ceil(H / 2), TW = ceil(W / 2), xi = 4 * row + column; pixels outside the map read as 0.
// Work is split over the N images (fixed order inside each: results do not depend on the thread
// count). Arrays arrive through the buffer protocol (numpy views of torch tensors).
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <cstring>
#include <thread>
#include <vector>

namespace {

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define NANOPLUS_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define NANOPLUS_CLONES
#endif

struct Shape {
    long n, h, w, c, th, tw;
    long tiles_per_image() const { return th * tw; }
    long tile_plane() const { return n * th * tw * c; }  // floats per xi in the tile array
};

// 16 channels at once; GCC lowers it to whatever vector width the clone's target has.
typedef float Vec __attribute__((vector_size(64)));

template <class T>
__attribute__((always_inline)) inline T load(const float* p) {
    T v;
    std::memcpy(&v, p, sizeof(T));
    return v;
}

template <class T>
__attribute__((always_inline)) inline void store(float* p, const T& v) {
    std::memcpy(p, &v, sizeof(T));
}

// The input pixels of one tile: p[16] point at the 4x4 pixels (row-major; zeros outside the map),
// shift (or null) at C values subtracted from the pixels inside the map (inside[16]: 1 or 0).
struct InputTile {
    const float* p[16];
    float inside[16];
    const float* shift;
};

template <class T>
__attribute__((always_inline)) inline T pixel(const InputTile& in, int at, long k) {
    const T d = load<T>(in.p[at] + k);
    if (!in.shift) return d;
    return d - load<T>(in.shift + k) * in.inside[at];  // outside: 0 - shift * 0
}

// One tile at channel k (T: one float or a Vec of 16) into o[16], the 16 transformed outputs.
template <class T>
__attribute__((always_inline)) inline void input_tile_at(const InputTile& in, float* const* o, long k) {
    T t[16];
    for (int s = 0; s < 4; ++s) {
        const T d0 = pixel<T>(in, s, k), d1 = pixel<T>(in, 4 + s, k), d2 = pixel<T>(in, 8 + s, k),
                d3 = pixel<T>(in, 12 + s, k);
        t[s] = d0 - d2;
        t[4 + s] = d1 + d2;
        t[8 + s] = d2 - d1;
        t[12 + s] = d1 - d3;
    }
    for (int a = 0; a < 4; ++a) {
        const T* r = t + 4 * a;
        store(o[4 * a] + k, r[0] - r[2]);
        store(o[4 * a + 1] + k, r[1] + r[2]);
        store(o[4 * a + 2] + k, r[2] - r[1]);
        store(o[4 * a + 3] + k, r[1] - r[3]);
    }
}

// m[16] -> the 2x2 outputs; q[r*2+s] is null where the pixel is outside the map.
template <class T>
__attribute__((always_inline)) inline void output_tile_at(const float* const* m, float* const* q, long k) {
    T u[8];  // u[r*4 + b]: A^T applied over rows
    for (int b = 0; b < 4; ++b) {
        const T m0 = load<T>(m[b] + k), m1 = load<T>(m[4 + b] + k), m2 = load<T>(m[8 + b] + k),
                m3 = load<T>(m[12 + b] + k);
        u[b] = m0 + m1 + m2;
        u[4 + b] = m1 - m2 - m3;
    }
    for (int r = 0; r < 2; ++r) {
        const T* v = u + 4 * r;
        if (q[2 * r]) store(q[2 * r] + k, v[0] + v[1] + v[2]);
        if (q[2 * r + 1]) store(q[2 * r + 1] + k, v[1] - v[2] - v[3]);
    }
}

// 2x2 output gradients (g[4], pointing at zeros outside the map) -> dM = A g A^T (16).
template <class T>
__attribute__((always_inline)) inline void grad_tile_at(const float* const* g, float* const* o, long k) {
    T e[8];  // e[a*2 + s]: A applied over rows
    for (int s = 0; s < 2; ++s) {
        const T g0 = load<T>(g[s] + k), g1 = load<T>(g[2 + s] + k);
        e[s] = g0;
        e[2 + s] = g0 + g1;
        e[4 + s] = g0 - g1;
        e[6 + s] = -g1;
    }
    for (int a = 0; a < 4; ++a) {
        const T e0 = e[2 * a], e1 = e[2 * a + 1];
        store(o[4 * a] + k, e0);
        store(o[4 * a + 1] + k, e0 + e1);
        store(o[4 * a + 2] + k, e0 - e1);
        store(o[4 * a + 3] + k, -e1);
    }
}

// dV (16) -> B dV B^T, added into the 4x4 input pixels p[16] (null outside the map).
template <class T>
__attribute__((always_inline)) inline void input_grad_tile_at(const float* const* dv, float* const* p, long k) {
    T f[16];  // f[r*4 + b]: B applied over rows
    for (int b = 0; b < 4; ++b) {
        const T v0 = load<T>(dv[b] + k), v1 = load<T>(dv[4 + b] + k), v2 = load<T>(dv[8 + b] + k),
                v3 = load<T>(dv[12 + b] + k);
        f[b] = v0;
        f[4 + b] = v1 - v2 + v3;
        f[8 + b] = v1 + v2 - v0;
        f[12 + b] = -v3;
    }
    for (int r = 0; r < 4; ++r) {
        const T* x = f + 4 * r;
        const T out[4] = {x[0], x[1] - x[2] + x[3], x[1] + x[2] - x[0], -x[3]};
        for (int s = 0; s < 4; ++s)
            if (p[4 * r + s]) store(p[4 * r + s] + k, load<T>(p[4 * r + s] + k) + out[s]);
    }
}

constexpr long kLanes = sizeof(Vec) / sizeof(float);

#define NANOPLUS_TILE_LOOP(name, Src, Dst)                                   \
    NANOPLUS_CLONES void name(Src a, Dst b, long c) {                        \
        long k = 0;                                                          \
        for (; k + kLanes <= c; k += kLanes) name##_at<Vec>(a, b, k);        \
        for (; k < c; ++k) name##_at<float>(a, b, k);                        \
    }

NANOPLUS_TILE_LOOP(input_tile, const InputTile&, float* const*)
NANOPLUS_TILE_LOOP(output_tile, const float* const*, float* const*)
NANOPLUS_TILE_LOOP(grad_tile, const float* const*, float* const*)
NANOPLUS_TILE_LOOP(input_grad_tile, const float* const*, float* const*)

enum class Op { kInput, kOutput, kGrad, kInputGrad };

// map: the (N, H, W, C) array; tiles: the (16, N, TH, TW, C) array; images [n0, n1); shift: see InputTile.
void run_images(Op op, const Shape& s, float* map, float* tiles, const float* zeros, const float* shift, long n0,
                long n1) {
    const long c = s.c, plane = s.tile_plane();
    for (long n = n0; n < n1; ++n) {
        float* image = map + n * s.h * s.w * c;
        if (op == Op::kInputGrad) std::memset(image, 0, sizeof(float) * s.h * s.w * c);
        for (long i = 0; i < s.th; ++i) {
            for (long j = 0; j < s.tw; ++j) {
                float* tile_ptr[16];
                float* tile0 = tiles + ((n * s.th + i) * s.tw + j) * c;
                for (int xi = 0; xi < 16; ++xi) tile_ptr[xi] = tile0 + xi * plane;
                if (op == Op::kInput || op == Op::kInputGrad) {
                    // the 4x4 pixels of padded (2i.., 2j..) = map (2i-1.., 2j-1..)
                    float* pix[16];
                    InputTile in;
                    in.shift = shift;
                    for (int r = 0; r < 4; ++r) {
                        const long y = 2 * i + r - 1;
                        for (int q = 0; q < 4; ++q) {
                            const long x = 2 * j + q - 1;
                            const bool inside = y >= 0 && y < s.h && x >= 0 && x < s.w;
                            pix[4 * r + q] = inside ? image + (y * s.w + x) * c : nullptr;
                            in.p[4 * r + q] = inside ? pix[4 * r + q] : zeros;
                            in.inside[4 * r + q] = inside ? 1.0f : 0.0f;
                        }
                    }
                    if (op == Op::kInput) input_tile(in, tile_ptr, c);
                    else input_grad_tile(tile_ptr, pix, c);
                } else {
                    float* pix[4];
                    const float* in[4];
                    for (int r = 0; r < 2; ++r) {
                        const long y = 2 * i + r;
                        for (int q = 0; q < 2; ++q) {
                            const long x = 2 * j + q;
                            const bool inside = y < s.h && x < s.w;
                            pix[2 * r + q] = inside ? image + (y * s.w + x) * c : nullptr;
                            in[2 * r + q] = inside ? pix[2 * r + q] : zeros;
                        }
                    }
                    if (op == Op::kOutput) output_tile(tile_ptr, pix, c);
                    else grad_tile(in, tile_ptr, c);
                }
            }
        }
    }
}

void run(Op op, const Shape& s, float* map, float* tiles, const float* shift, int threads) {
    std::vector<float> zeros(s.c, 0.0f);
    const long n = s.n;
    if (threads > n) threads = static_cast<int>(n);
#ifdef _OPENMP
    // PyTorch's own OpenMP threads (the same libgomp.so.1 is loaded): they are spinning, ready, right
    // after its last parallel op; a thread of our own would have to share a core with one of them.
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int t = 0; t < threads; ++t)
        run_images(op, s, map, tiles, zeros.data(), shift, n * t / threads, n * (t + 1) / threads);
#else
    if (threads <= 1) {
        run_images(op, s, map, tiles, zeros.data(), shift, 0, n);
        return;
    }
    std::vector<std::thread> pool;
    for (int t = 1; t < threads; ++t)
        pool.emplace_back(run_images, op, std::cref(s), map, tiles, zeros.data(), shift, n * t / threads,
                          n * (t + 1) / threads);
    run_images(op, s, map, tiles, zeros.data(), shift, 0, n / threads);
    for (auto& th : pool) th.join();
#endif
}

bool float_buffer(PyObject* obj, Py_buffer* view, int ndim, bool writable, const char* what) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) != 0) {
        PyErr_Format(PyExc_ValueError, "%s must be a C-contiguous%s float32 array", what,
                     writable ? ", writable" : "");
        return false;
    }
    const char* f = view->format ? view->format : "B";
    if (f[0] == '<' || f[0] == '=' || f[0] == '@') ++f;
    if (std::strcmp(f, "f") != 0 || view->ndim != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must be a %d-D float32 array (got %d-D, format '%s')", what, ndim,
                     view->ndim, view->format ? view->format : "B");
        PyBuffer_Release(view);
        return false;
    }
    return true;
}

// (map, tiles, threads[, shift]): map (N, H, W, C), tiles (16, N, ceil(H/2), ceil(W/2), C); shift (C,)
// only for the input transform.
PyObject* call(Op op, PyObject* args) {
    PyObject *map_obj, *tiles_obj, *shift_obj = Py_None;
    int threads = 1;
    if (!PyArg_ParseTuple(args, op == Op::kInput ? "OO|iO" : "OO|i", &map_obj, &tiles_obj, &threads, &shift_obj))
        return nullptr;
    const bool map_written = op == Op::kOutput || op == Op::kInputGrad;
    Py_buffer map, tiles;
    if (!float_buffer(map_obj, &map, 4, map_written, "map (N, H, W, C)")) return nullptr;
    if (!float_buffer(tiles_obj, &tiles, 5, !map_written, "tiles (16, N, TH, TW, C)")) {
        PyBuffer_Release(&map);
        return nullptr;
    }
    Shape s{map.shape[0], map.shape[1], map.shape[2], map.shape[3], (map.shape[1] + 1) / 2, (map.shape[2] + 1) / 2};
    const Py_ssize_t want[5] = {16, s.n, s.th, s.tw, s.c};
    bool ok = s.n > 0 && s.h > 0 && s.w > 0 && s.c > 0;
    for (int d = 0; d < 5; ++d) ok = ok && tiles.shape[d] == want[d];
    Py_buffer shift;
    const bool has_shift = shift_obj != Py_None;
    if (!ok) {
        PyErr_Format(PyExc_ValueError,
                     "tiles must have shape (16, %zd, %zd, %zd, %zd) for a map of shape (%zd, %zd, %zd, %zd)",
                     want[1], want[2], want[3], want[4], map.shape[0], map.shape[1], map.shape[2], map.shape[3]);
    } else if (has_shift && !float_buffer(shift_obj, &shift, 1, false, "shift (C,)")) {
        ok = false;
    } else if (has_shift && shift.shape[0] != s.c) {
        PyErr_Format(PyExc_ValueError, "shift must have %zd values (one per channel), not %zd", s.c, shift.shape[0]);
        PyBuffer_Release(&shift);
        ok = false;
    }
    if (ok) {
        float* map_ptr = static_cast<float*>(map.buf);
        float* tiles_ptr = static_cast<float*>(tiles.buf);
        const float* shift_ptr = has_shift ? static_cast<const float*>(shift.buf) : nullptr;
        Py_BEGIN_ALLOW_THREADS
        run(op, s, map_ptr, tiles_ptr, shift_ptr, threads < 1 ? 1 : threads);
        Py_END_ALLOW_THREADS
        if (has_shift) PyBuffer_Release(&shift);
    }
    PyBuffer_Release(&map);
    PyBuffer_Release(&tiles);
    if (!ok) return nullptr;
    Py_RETURN_NONE;
}

PyObject* py_input_transform(PyObject*, PyObject* args) { return call(Op::kInput, args); }
PyObject* py_output_transform(PyObject*, PyObject* args) { return call(Op::kOutput, args); }
PyObject* py_grad_transform(PyObject*, PyObject* args) { return call(Op::kGrad, args); }
PyObject* py_input_grad_transform(PyObject*, PyObject* args) { return call(Op::kInputGrad, args); }

PyMethodDef methods[] = {
    {"input_transform", py_input_transform, METH_VARARGS,
     "input_transform(x, v, threads=1, shift=None): v[xi] = B^T d B for every 4x4 tile d of x (N, H, W, C) "
     "padded by zeros, shift (C,) subtracted first from the pixels inside the map"},
    {"output_transform", py_output_transform, METH_VARARGS,
     "output_transform(y, m, threads=1): y (N, H, W, K) = A^T m A per tile (2x2 outputs each)"},
    {"grad_transform", py_grad_transform, METH_VARARGS,
     "grad_transform(dy, dm, threads=1): dm[xi] = A dy A^T per tile of dy (N, H, W, K)"},
    {"input_grad_transform", py_input_grad_transform, METH_VARARGS,
     "input_grad_transform(dx, dv, threads=1): dx (N, H, W, C) = sum over tiles of B dv B^T (overwrites dx)"},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_winograd",
                      "Winograd F(2x2,3x3) tile transforms on NHWC float32 maps (train/winograd.py)", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__winograd() { return PyModule_Create(&module); }
