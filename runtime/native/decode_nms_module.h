// The decode + NMS functions of nanoplus.runtime._native (decode_nms_module.cpp); module.cpp lists them.
#pragma once

#define PY_SSIZE_T_CLEAN
#include <Python.h>

PyObject* py_select_candidates(PyObject* self, PyObject* args, PyObject* kwargs);
PyObject* py_decode_nms(PyObject* self, PyObject* args, PyObject* kwargs);
PyObject* py_detect_scored(PyObject* self, PyObject* args, PyObject* kwargs);

#define NANOPLUS_DECODE_NMS_METHODS                                                                                   \
    {"select_candidates", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(py_select_candidates)),     \
     METH_VARARGS | METH_KEYWORDS,                                                                                    \
     "select_candidates(raw, channels_first, num_classes, threshold, multi_label)\n\n"                               \
     "raw (N, C+bins) float16/32/64, or (C+bins, N) when channels_first -> (points, classes, values) as\n"           \
     "bytearrays of int64, int64, float32: every (point, class) with value > threshold (multi_label), else\n"        \
     "each point's first maximum class; in (point, class) order. threshold must be representable in raw's dtype."}, \
    {"decode_nms", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(py_decode_nms)),                   \
     METH_VARARGS | METH_KEYWORDS,                                                                                    \
     "decode_nms(raw, channels_first, num_classes, reg_max, priors, input_h, input_w, points, classes, scores,\n"     \
     "           iou_thr, max_det)\n\n"                                                                               \
     "Greedy class-aware NMS over the scored candidates, decoding each box when reached -> (kept, boxes):\n"         \
     "bytearrays of int64 candidate indices and float32 (k, 4) boxes, best first, k <= max_det (<= 0: all)."},    \
    {"detect_scored", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(py_detect_scored)),             \
     METH_VARARGS | METH_KEYWORDS,                                                                                    \
     "detect_scored(raw, channels_first, num_classes, reg_max, priors, input_h, input_w, threshold,\n"                \
     "              exact_threshold, multi_label, iou_thr, max_det, to_original=None)\n\n"                          \
     "For outputs whose class channels are the scores (sigmoid applied): select_candidates, then (unless\n"        \
     "exact_threshold is None) keep float32(value) > exact_threshold, then decode_nms, in one call ->\n"           \
     "(boxes, scores, labels) as bytearrays of float32 (k, 4), float32, int64. to_original=(1/sx, 1/sy, w, h):\n"  \
     "the boxes in original pixels (boxes_to_original), else in network-input pixels."}
