// nanoplus.runtime._native: Python's door to warp_normalize.h (the compiled pre-processing that
// runtime/preprocess.py uses when it is built). Arrays arrive through the buffer protocol, so no
// numpy headers are needed to build it.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <cstring>

#include "decode_nms_module.h"
#include "warp_normalize.h"

namespace {

// format: the struct code ("B" uint8, "f" float32); dtype: its numpy name, for the message.
bool get_buffer(PyObject* obj, Py_buffer* view, int flags, const char* format, const char* dtype, int ndim,
                const char* what) {
    if (PyObject_GetBuffer(obj, view, flags | PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) {
        PyErr_Format(PyExc_ValueError, "%s must be a C-contiguous array", what);
        return false;
    }
    const char* f = view->format ? view->format : "B";
    if (f[0] == '<' || f[0] == '=' || f[0] == '@') ++f;
    if (std::strcmp(f, format) != 0 || view->ndim != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must be a %d-D %s array (got %d-D, buffer format '%s')", what, ndim, dtype,
                     view->ndim, view->format ? view->format : "B");
        PyBuffer_Release(view);
        return false;
    }
    return true;
}

// simd: True (the best this CPU has), False (portable code), or a cap by name: "avx512vbmi", "avx2", "none".
bool simd_cap(PyObject* obj, int* level) {
    if (PyBool_Check(obj)) {
        *level = obj == Py_True ? nanoplus::kSimdBest : nanoplus::kSimdNone;
        return true;
    }
    const char* name = PyUnicode_Check(obj) ? PyUnicode_AsUTF8(obj) : nullptr;
    if (name && std::strcmp(name, "avx512vbmi") == 0) *level = nanoplus::kSimdAvx512Vbmi;
    else if (name && std::strcmp(name, "avx2") == 0) *level = nanoplus::kSimdAvx2;
    else if (name && std::strcmp(name, "none") == 0) *level = nanoplus::kSimdNone;
    else {
        PyErr_SetString(PyExc_ValueError, "simd must be True, False, 'avx512vbmi', 'avx2' or 'none'");
        return false;
    }
    return true;
}

PyObject* py_warp_normalize(PyObject*, PyObject* args, PyObject* kwargs) {
    static const char* keywords[] = {"image", "scale_x", "scale_y", "out", "mul", "add", "to_rgb", "simd", nullptr};
    PyObject *image_obj, *out_obj;
    double scale_x, scale_y;
    double mul[3], add[3];
    int to_rgb = 0;
    PyObject* simd_obj = Py_True;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OddO(ddd)(ddd)|pO", const_cast<char**>(keywords), &image_obj,
                                     &scale_x, &scale_y, &out_obj, &mul[0], &mul[1], &mul[2], &add[0], &add[1],
                                     &add[2], &to_rgb, &simd_obj))
        return nullptr;
    int max_simd;
    if (!simd_cap(simd_obj, &max_simd)) return nullptr;
    if (!(scale_x > 0) || !(scale_y > 0)) {
        PyErr_SetString(PyExc_ValueError, "scale_x and scale_y must be positive");
        return nullptr;
    }
    Py_buffer image, out;
    if (!get_buffer(image_obj, &image, PyBUF_SIMPLE, "B", "uint8", 3, "image")) return nullptr;
    if (!get_buffer(out_obj, &out, PyBUF_WRITABLE, "f", "float32", 4, "out")) {
        PyBuffer_Release(&image);
        return nullptr;
    }
    const Py_ssize_t* is = image.shape;
    const Py_ssize_t* os = out.shape;
    if (is[2] != 3 || is[0] < 1 || is[1] < 1 || os[0] != 1 || os[1] != 3 || os[2] < 1 || os[3] < 1) {
        PyErr_SetString(PyExc_ValueError, "image must be (h, w, 3) uint8 and out (1, 3, H, W) float32");
        PyBuffer_Release(&image);
        PyBuffer_Release(&out);
        return nullptr;
    }
    const float mulf[3] = {static_cast<float>(mul[0]), static_cast<float>(mul[1]), static_cast<float>(mul[2])};
    const float addf[3] = {static_cast<float>(add[0]), static_cast<float>(add[1]), static_cast<float>(add[2])};
    nanoplus::ImageView view;
    view.data = static_cast<const uint8_t*>(image.buf);
    view.height = static_cast<int>(is[0]), view.width = static_cast<int>(is[1]);
    const int dst_h = static_cast<int>(os[2]), dst_w = static_cast<int>(os[3]);
    float* const base = static_cast<float*>(out.buf);
    const size_t plane = static_cast<size_t>(dst_h) * dst_w;
    float* const planes[3] = {base, base + plane, base + 2 * plane};
    int level;
    Py_BEGIN_ALLOW_THREADS
    level = nanoplus::warp_normalize(view, scale_x, scale_y, dst_h, dst_w, mulf, addf, to_rgb != 0, planes, max_simd);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&image);
    PyBuffer_Release(&out);
    return PyUnicode_FromString(nanoplus::simd_name(level));
}

PyObject* py_simd(PyObject*, PyObject* args) {
    PyObject* cap = Py_True;
    int level;
    if (!PyArg_ParseTuple(args, "|O", &cap) || !simd_cap(cap, &level)) return nullptr;
    return PyUnicode_FromString(nanoplus::simd_name(level));
}

PyMethodDef methods[] = {
    {"warp_normalize", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(py_warp_normalize)),
     METH_VARARGS | METH_KEYWORDS,
     "warp_normalize(image, scale_x, scale_y, out, mul, add, to_rgb=False, simd=True)\n\n"
     "image (h, w, 3) uint8 -> out (1, 3, H, W) float32: the warp by diag(scale_x, scale_y, 1) as\n"
     "runtime/preprocess_reference.py defines it (bilinear, border 0, rounded), then v * mul[c] + add[c].\n"
     "to_rgb: plane 0 reads channel 2. simd: True (the best vector path here), False (portable code)\n"
     "or a cap: 'avx512vbmi', 'avx2', 'none'. Every path gives the same bits. Returns the path that ran."},
    {"simd", py_simd, METH_VARARGS,
     "simd(cap=True): the vector path warp_normalize takes here under that cap ('avx512vbmi', 'avx2+fma',\n"
     "'none'); a strong downscale falls back from avx512vbmi to avx2+fma"},
    NANOPLUS_DECODE_NMS_METHODS,
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", "Compiled pre-processing, decoding and NMS for nanoplus.runtime", -1, methods,
                      nullptr, nullptr, nullptr, nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
