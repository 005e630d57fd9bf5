// nanoplus.runtime._native's door to decode_nms.h: select_candidates and decode_nms, the two compiled
// steps of runtime/postprocess.py (the scores between them stay numpy's). Arrays arrive through the
// buffer protocol (no numpy headers); results go back as bytearrays for np.frombuffer.
#include "decode_nms_module.h"

#include <cstring>
#include <string>

#include "decode_nms.h"

namespace {

using nanoplus::RawOutput;
using nanoplus::ScalarType;

// A C-contiguous buffer whose struct code is one of `codes` (e.g. "lq" for int64) and itemsize `itemsize`.
bool get_buffer(PyObject* obj, Py_buffer* view, const char* codes, Py_ssize_t itemsize, int ndim, const char* what,
                const char* expected) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) {
        PyErr_Format(PyExc_ValueError, "%s must be a C-contiguous array", what);
        return false;
    }
    const char* f = view->format ? view->format : "B";
    if (f[0] == '<' || f[0] == '=' || f[0] == '@') ++f;
    if (f[0] == '\0' || f[1] != '\0' || !std::strchr(codes, f[0]) || view->itemsize != itemsize || view->ndim != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must be a %d-D %s array (got %d-D, buffer format '%s')", what, ndim, expected,
                     view->ndim, view->format ? view->format : "B");
        PyBuffer_Release(view);
        return false;
    }
    return true;
}

// The raw output: a 2-D float16/32/64 buffer, (N, C) or, channels_first, (C, N).
bool get_raw(PyObject* obj, bool channels_first, Py_buffer* view, RawOutput& raw) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) {
        PyErr_SetString(PyExc_ValueError, "raw must be a C-contiguous array");
        return false;
    }
    const char* f = view->format ? view->format : "B";
    if (f[0] == '<' || f[0] == '=' || f[0] == '@') ++f;
    const std::string code(f);
    if (code == "e" && view->itemsize == 2) raw.type = ScalarType::F16;
    else if (code == "f" && view->itemsize == 4) raw.type = ScalarType::F32;
    else if (code == "d" && view->itemsize == 8) raw.type = ScalarType::F64;
    else {
        PyErr_Format(PyExc_ValueError, "raw must be float16, float32 or float64 (buffer format '%s')", f);
        PyBuffer_Release(view);
        return false;
    }
    if (view->ndim != 2 || view->shape[0] < 1 || view->shape[1] < 1) {
        PyErr_SetString(PyExc_ValueError, "raw must be a non-empty 2-D array");
        PyBuffer_Release(view);
        return false;
    }
    raw.data = view->buf;
    raw.channels_first = channels_first;
    raw.num_points = static_cast<int>(view->shape[channels_first ? 1 : 0]);
    raw.num_channels = static_cast<int>(view->shape[channels_first ? 0 : 1]);
    return true;
}

PyObject* as_bytearray(const void* data, size_t bytes) {
    return PyByteArray_FromStringAndSize(static_cast<const char*>(data), static_cast<Py_ssize_t>(bytes));
}

}  // namespace

PyObject* py_select_candidates(PyObject*, PyObject* args, PyObject* kwargs) {
    static const char* keywords[] = {"raw", "channels_first", "num_classes", "threshold", "multi_label", nullptr};
    PyObject* raw_obj;
    int channels_first = 0, num_classes = 0, multi_label = 1;
    double threshold = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Opidp", const_cast<char**>(keywords), &raw_obj, &channels_first,
                                     &num_classes, &threshold, &multi_label))
        return nullptr;
    Py_buffer view;
    RawOutput raw;
    if (!get_raw(raw_obj, channels_first != 0, &view, raw)) return nullptr;
    if (num_classes < 1 || num_classes > raw.num_channels) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "num_classes must be between 1 and the number of channels");
        return nullptr;
    }
    nanoplus::Candidates cands;
    Py_BEGIN_ALLOW_THREADS
    nanoplus::select_candidates(raw, num_classes, threshold, multi_label != 0, cands);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return Py_BuildValue("(NNN)", as_bytearray(cands.points.data(), cands.points.size() * sizeof(int64_t)),
                         as_bytearray(cands.classes.data(), cands.classes.size() * sizeof(int64_t)),
                         as_bytearray(cands.values.data(), cands.values.size() * sizeof(float)));
}

PyObject* py_decode_nms(PyObject*, PyObject* args, PyObject* kwargs) {
    static const char* keywords[] = {"raw", "channels_first", "num_classes", "reg_max", "priors", "input_h", "input_w",
                                     "points", "classes", "scores", "iou_thr", "max_det", nullptr};
    PyObject *raw_obj, *priors_obj, *points_obj, *classes_obj, *scores_obj;
    int channels_first = 0, num_classes = 0, reg_max = 0, input_h = 0, input_w = 0, max_det = 0;
    float iou_thr = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OpiiOiiOOOfi", const_cast<char**>(keywords), &raw_obj,
                                     &channels_first, &num_classes, &reg_max, &priors_obj, &input_h, &input_w,
                                     &points_obj, &classes_obj, &scores_obj, &iou_thr, &max_det))
        return nullptr;
    Py_buffer views[5];
    int held = 0;
    auto release = [&]() {
        for (int i = 0; i < held; ++i) PyBuffer_Release(&views[i]);
    };
    RawOutput raw;
    if (!get_raw(raw_obj, channels_first != 0, &views[0], raw)) return nullptr;
    held = 1;
    if (!get_buffer(priors_obj, &views[1], "f", 4, 2, "priors", "float32")) return release(), nullptr;
    held = 2;
    if (!get_buffer(points_obj, &views[2], "lq", 8, 1, "points", "int64")) return release(), nullptr;
    held = 3;
    if (!get_buffer(classes_obj, &views[3], "lq", 8, 1, "classes", "int64")) return release(), nullptr;
    held = 4;
    if (!get_buffer(scores_obj, &views[4], "f", 4, 1, "scores", "float32")) return release(), nullptr;
    held = 5;
    const size_t n = static_cast<size_t>(views[2].shape[0]);
    const int64_t* points = static_cast<const int64_t*>(views[2].buf);
    const int64_t* classes = static_cast<const int64_t*>(views[3].buf);
    const float* scores = static_cast<const float*>(views[4].buf);
    bool ok = views[1].shape[0] == raw.num_points && views[1].shape[1] == 4 && static_cast<size_t>(views[3].shape[0]) == n &&
              static_cast<size_t>(views[4].shape[0]) == n && reg_max >= 0 &&
              num_classes >= 1 && num_classes + 4 * (reg_max + 1) == raw.num_channels;
    for (size_t i = 0; ok && i < n; ++i)
        ok = points[i] >= 0 && points[i] < raw.num_points && classes[i] >= 0 && classes[i] < num_classes && scores[i] == scores[i];
    if (!ok) {
        release();
        PyErr_SetString(PyExc_ValueError,
                        "decode_nms: priors must be (num_points, 4), points / classes / scores of one length with "
                        "valid indices and no NaN score, and num_classes + 4 * (reg_max + 1) the number of channels");
        return nullptr;
    }
    std::vector<int64_t> kept(n);
    std::vector<float> boxes(4 * n);
    size_t num_kept;
    Py_BEGIN_ALLOW_THREADS
    num_kept = nanoplus::decode_nms(raw, num_classes, reg_max, static_cast<const float*>(views[1].buf), input_h, input_w,
                                    points, classes, scores, n, iou_thr, max_det,
                                    kept.data(), boxes.data());
    Py_END_ALLOW_THREADS
    release();
    return Py_BuildValue("(NN)", as_bytearray(kept.data(), num_kept * sizeof(int64_t)),
                         as_bytearray(boxes.data(), 4 * num_kept * sizeof(float)));
}

PyObject* py_detect_scored(PyObject*, PyObject* args, PyObject* kwargs) {
    static const char* keywords[] = {"raw", "channels_first", "num_classes", "reg_max", "priors", "input_h", "input_w",
                                     "threshold", "exact_threshold", "multi_label", "iou_thr", "max_det",
                                     "to_original", nullptr};
    PyObject *raw_obj, *priors_obj, *exact_obj, *to_original = Py_None;
    int channels_first = 0, num_classes = 0, reg_max = 0, input_h = 0, input_w = 0, multi_label = 1, max_det = 0;
    double threshold = 0;
    float iou_thr = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OpiiOiidOpfi|O", const_cast<char**>(keywords), &raw_obj,
                                     &channels_first, &num_classes, &reg_max, &priors_obj, &input_h, &input_w,
                                     &threshold, &exact_obj, &multi_label, &iou_thr, &max_det, &to_original))
        return nullptr;
    // (1/sx, 1/sy, w, h): the boxes back through diag(sx, sy, 1), clipped to the w x h image
    double back[4] = {0, 0, 0, 0};
    if (to_original != Py_None && !PyArg_ParseTuple(to_original, "dddd", &back[0], &back[1], &back[2], &back[3]))
        return nullptr;
    const bool exact = exact_obj != Py_None;
    const float exact_threshold = exact ? static_cast<float>(PyFloat_AsDouble(exact_obj)) : 0.f;
    if (exact && PyErr_Occurred()) return nullptr;
    Py_buffer raw_view, priors_view;
    RawOutput raw;
    if (!get_raw(raw_obj, channels_first != 0, &raw_view, raw)) return nullptr;
    if (!get_buffer(priors_obj, &priors_view, "f", 4, 2, "priors", "float32")) {
        PyBuffer_Release(&raw_view);
        return nullptr;
    }
    if (priors_view.shape[0] != raw.num_points || priors_view.shape[1] != 4 || reg_max < 0 || num_classes < 1 ||
        num_classes + 4 * (reg_max + 1) != raw.num_channels) {
        PyBuffer_Release(&raw_view);
        PyBuffer_Release(&priors_view);
        PyErr_SetString(PyExc_ValueError,
                        "detect_scored: priors must be (num_points, 4) and num_classes + 4 * (reg_max + 1) the number of channels");
        return nullptr;
    }
    nanoplus::Candidates cands;
    std::vector<int64_t> kept;
    std::vector<float> boxes;
    size_t num_kept;
    Py_BEGIN_ALLOW_THREADS
    nanoplus::select_candidates(raw, num_classes, threshold, multi_label != 0, cands);
    size_t n = cands.values.size();
    if (exact) {  // half-precision scores: the pre-selection compared halves; the exact test is in float32
        n = 0;
        for (size_t i = 0; i < cands.values.size(); ++i) {
            if (!(cands.values[i] > exact_threshold)) continue;
            cands.points[n] = cands.points[i];
            cands.classes[n] = cands.classes[i];
            cands.values[n++] = cands.values[i];
        }
    }
    kept.resize(n);
    boxes.resize(4 * n);
    num_kept = nanoplus::decode_nms(raw, num_classes, reg_max, static_cast<const float*>(priors_view.buf), input_h,
                                    input_w, cands.points.data(), cands.classes.data(), cands.values.data(), n, iou_thr,
                                    max_det, kept.data(), boxes.data());
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&raw_view);
    PyBuffer_Release(&priors_view);
    if (to_original != Py_None) nanoplus::boxes_to_original(boxes.data(), num_kept, back[0], back[1], back[2], back[3]);
    std::vector<float> scores(num_kept);
    std::vector<int64_t> labels(num_kept);
    for (size_t k = 0; k < num_kept; ++k) {
        scores[k] = cands.values[static_cast<size_t>(kept[k])];
        labels[k] = cands.classes[static_cast<size_t>(kept[k])];
    }
    return Py_BuildValue("(NNN)", as_bytearray(boxes.data(), 4 * num_kept * sizeof(float)),
                         as_bytearray(scores.data(), num_kept * sizeof(float)),
                         as_bytearray(labels.data(), num_kept * sizeof(int64_t)));
}
