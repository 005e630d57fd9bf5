"""Decoding and NMS for NanoDet-Plus outputs, written once in numpy (every backend and training's
evaluation call this).

Upstream's post-processing (reference fixture README §5): score = sigmoid(class logit); each point
decodes one box (softmax over each side's reg_max+1 bins, expectation, x stride, distances from the
prior point, clamped to the input); every (point, class) pair with score > score_thr is a candidate;
greedy NMS per class (IoU > iou_thr suppresses; area without +1); survivors sorted by score; the
first max_det kept.

Why it is fast: the threshold is applied first, on the raw class channels (in logit space when the
model emits logits, so no sigmoid over all N x C values), and only the candidates' points are
decoded. NMS walks the candidates in global score order with a class mask, which is the same as
per-class greedy NMS followed by a global sort, in blocks (one small IoU matrix each), and stops
once max_det boxes are kept.

Two implementations give the same rows in the same order: this numpy code, and the compiled
``nanoplus.runtime._native`` (runtime/native/decode_nms.cpp, the C++ program's own decode + NMS,
built at install where a C++ compiler is found), which selects the candidates and runs decode +
NMS in C++, while the scores between those two steps stay numpy's (so they are the same bits).
The compiled one is used when it is built, unless NANOPLUS_NATIVE=0; ``implementation()`` says which.
"""
from __future__ import annotations

import math
import os
from functools import lru_cache
from typing import Optional, Sequence

import numpy as np

from nanoplus.errors import NanoplusError

try:
    from nanoplus.runtime import _native
except ImportError:  # not built (no compiler at install): numpy
    _native = None

# NMS resolves candidates in blocks of this many (in score order) with one IoU matrix each; 128 was
# fastest on real outputs at both score 0.35 (~50 candidates) and 0.05 (~800).
_NMS_BLOCK = 128
# Candidates are pre-selected in logit space with this much slack, then the exact sigmoid score is
# compared with score_thr, so the result is the same as thresholding sigmoid(logit) directly.
_LOGIT_SLACK = 1e-3
_SIDE_SIGN = np.array([-1, -1, 1, 1], dtype=np.float32)
# the raw output precisions the compiled path reads (others: numpy)
_NATIVE_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_FLOAT32 = np.dtype(np.float32)


def native_enabled() -> bool:
    """Whether ``postprocess`` uses the compiled path: built, and not switched off by NANOPLUS_NATIVE=0."""
    return _native is not None and hasattr(_native, "decode_nms") and os.environ.get("NANOPLUS_NATIVE", "1") != "0"


def implementation() -> str:
    """'native' (compiled candidate selection, decode and NMS) or 'numpy': what ``postprocess`` runs."""
    return "native" if native_enabled() else "numpy"


class ModelOutputError(NanoplusError, ValueError):
    """A model output whose shape does not fit a NanoDet-Plus head with the given settings."""


@lru_cache(maxsize=16)
def _priors_cached(input_hw: tuple[int, int], strides: tuple[int, ...]) -> np.ndarray:
    height, width = input_hw
    levels = []
    for stride in strides:
        rows, cols = -(-height // stride), -(-width // stride)
        ys, xs = np.meshgrid(np.arange(rows) * stride, np.arange(cols) * stride, indexing="ij")
        level = np.empty((rows * cols, 4), dtype=np.float32)
        level[:, 0] = xs.ravel()
        level[:, 1] = ys.ravel()
        level[:, 2:] = stride
        levels.append(level)
    priors = np.concatenate(levels)
    priors.flags.writeable = False
    return priors


@lru_cache(maxsize=16)
def _decode_constants(input_hw: tuple[int, int], strides: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per point (x, y, x, y) and (-s, -s, s, s), and the clamp limits (W, H, W, H): what
    ``decode_boxes`` computes from the priors, made once per input size."""
    priors = _priors_cached(input_hw, strides)
    points_xyxy = np.ascontiguousarray(priors[:, [0, 1, 0, 1]])
    signed_strides = priors[:, 2:3] * _SIDE_SIGN
    limits = np.array([input_hw[1], input_hw[0]] * 2, dtype=np.float32)
    for array in (points_xyxy, signed_strides, limits):
        array.flags.writeable = False
    return points_xyxy, signed_strides, limits


def make_center_priors(input_hw: Sequence[int], strides: Sequence[int]) -> np.ndarray:
    """Prior points of every level, in output order.

    Returns (N, 4) float32 rows (x, y, stride, stride) with x = column * stride, y = row * stride
    (the top-left cell corner, no +0.5), levels in ``strides`` order, row-major within a level;
    N = sum(ceil(H/s) * ceil(W/s)). The array is cached and read-only.
    """
    return _priors_cached((int(input_hw[0]), int(input_hw[1])), tuple(int(s) for s in strides))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function in the input's float precision."""
    x = np.asarray(x)
    one = x.dtype.type(1) if x.dtype.kind == "f" else 1.0
    with np.errstate(over="ignore"):  # exp(-x) = inf for very negative logits gives the right 0
        return one / (one + np.exp(-x))


@lru_cache(maxsize=8)
def _bin_vectors(num_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(0, 1, ..., num_bins-1) and ones, float32: the expectation and the softmax sum as products."""
    return np.arange(num_bins, dtype=np.float32), np.ones(num_bins, dtype=np.float32)


def _bin_distances(bins: np.ndarray, reg_max: int) -> np.ndarray:
    """(k, 4 * (reg_max + 1)) bin logits -> (k, 4) expected distances in strides."""
    k = len(bins)
    num_bins = reg_max + 1
    logits = np.asarray(bins, dtype=np.float32).reshape(k, 4, num_bins)
    # softmax per side; numpy reduces a short last axis slowly (111 us against 17 us for 660
    # candidates), so the max is taken bin by bin, and the sum and expectation as matrix products
    side_max = logits[:, :, 0].copy()
    for b in range(1, num_bins):
        np.maximum(side_max, logits[:, :, b], out=side_max)
    with np.errstate(invalid="ignore"):  # inf - inf for infinite bins: NaN coordinates, as the C++ gives
        exp = np.exp(logits - side_max[:, :, None])
    values, ones = _bin_vectors(num_bins)
    return (exp @ values) / (exp @ ones)


def decode_boxes(bins: np.ndarray, priors: np.ndarray, input_hw: Sequence[int], reg_max: int) -> np.ndarray:
    """Distance bins -> boxes.

    bins: (k, 4 * (reg_max + 1)) raw bin logits in side order left, top, right, bottom;
    priors: (k, 4) (x, y, stride, stride). Returns (k, 4) float32 x1y1x2y2 in input pixels,
    x clamped to [0, W] and y to [0, H].
    """
    limits = np.array([input_hw[1], input_hw[0]] * 2, dtype=np.float32)
    return _place_boxes(_bin_distances(bins, reg_max), priors[:, 2:3] * _SIDE_SIGN, priors[:, [0, 1, 0, 1]], limits)


def _place_boxes(distances, signed_strides, points_xyxy, limits):
    """(x - l, y - t, x + r, y + b) in one pass (signed distances plus the point twice), clamped."""
    boxes = distances * signed_strides
    boxes += points_xyxy
    np.maximum(boxes, 0, out=boxes)
    np.minimum(boxes, limits, out=boxes)
    return boxes


def scale_boxes_back(boxes: np.ndarray, inv_x: float, inv_y: float, src_w: int, src_h: int) -> np.ndarray:
    """Boxes in network-input pixels -> original pixels through a diagonal warp: (k, 4) times
    (inv_x, inv_y, inv_x, inv_y) in float64, clipped to [0, src_w] x [0, src_h], as float32.

    The reference of the compiled step (``to_original`` of ``postprocess``; decode_nms.h
    boxes_to_original); ``preprocess.boxes_to_original`` uses it for the matrices it makes.
    """
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * [inv_x, inv_y, inv_x, inv_y]
    np.maximum(out, 0, out=out)
    np.minimum(out, [src_w, src_h, src_w, src_h], out=out)
    return out.astype(np.float32)


def _pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a (m, 4) against boxes b (n, 4) -> (m, n); area = (x2-x1)(y2-y1), no +1."""
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.maximum(w, 0) * np.maximum(h, 0)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def _nms_block(boxes, labels, iou_thr, max_keep):
    """Greedy NMS over a few score-sorted boxes with one IoU matrix; kept positions, ascending."""
    suppresses = (_pairwise_iou(boxes, boxes) > iou_thr) & (labels[:, None] == labels[None, :])
    alive = np.ones(len(boxes), dtype=bool)
    keep = []
    for i in range(len(boxes)):
        if alive[i]:
            keep.append(i)
            if len(keep) == max_keep:
                break
            alive &= ~suppresses[i]
    return np.asarray(keep, dtype=np.int64)


def _nms_sorted(boxes, labels, iou_thr, max_keep):
    """Exact greedy class-aware NMS over score-sorted boxes, a block of candidates at a time.

    Within a block the survivors of earlier blocks are resolved with one small IoU matrix; the
    boxes the block keeps then suppress, all at once, the later candidates. The cost grows with
    candidates x kept instead of candidates^2, and it stops as soon as max_keep are kept.
    Returns kept positions, ascending (= score order).
    """
    n = len(boxes)
    if n <= _NMS_BLOCK:  # one block (the usual case at deployment thresholds)
        return _nms_block(boxes, labels, iou_thr, max_keep)
    alive = np.ones(n, dtype=bool)
    kept, num_kept = [], 0
    for start in range(0, n, _NMS_BLOCK):
        stop = min(start + _NMS_BLOCK, n)
        members = start + np.flatnonzero(alive[start:stop])
        if len(members) == 0:
            continue
        block_kept = members[_nms_block(boxes[members], labels[members], iou_thr, max_keep - num_kept)]
        kept.append(block_kept)
        num_kept += len(block_kept)
        if num_kept >= max_keep or stop == n:
            break
        later = stop + np.flatnonzero(alive[stop:])
        if len(later):
            hits = _pairwise_iou(boxes[block_kept], boxes[later]) > iou_thr
            hits &= labels[block_kept][:, None] == labels[later][None, :]
            alive[later[hits.any(axis=0)]] = False
    return np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_thr: float, max_det: int) -> np.ndarray:
    """Per-class greedy NMS, survivors in descending score order, at most ``max_det`` (<= 0: all).

    boxes: (k, 4) x1y1x2y2; scores: (k,); labels: (k,) int. A box is dropped when its IoU with a
    kept, higher-scored box of the same label is > iou_thr. Equal scores keep their input order.
    Returns indices into the inputs, (m,) int64.
    """
    order = np.argsort(-scores, kind="stable")
    max_keep = int(max_det) if max_det and max_det > 0 else len(order)
    if len(order) == 0:
        return order.astype(np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 for two empty boxes: not suppressed
        kept = _nms_sorted(boxes[order], labels[order], iou_thr, max_keep)
    return order[kept]


def _pre_threshold(score_thr, scores_are_sigmoid):
    """The threshold on the raw class values: score_thr itself for sigmoid scores, else logit(score_thr)
    minus a little slack (the exact sigmoid test follows)."""
    if scores_are_sigmoid:
        return score_thr
    if score_thr <= 0:
        return -np.inf
    if score_thr >= 1:
        return np.inf
    return math.log(score_thr / (1.0 - score_thr)) - _LOGIT_SLACK


def _channels_first(raw_nc):
    """Whether the output is a transposed view of a contiguous channels-first (C, N) array."""
    return not raw_nc.flags.c_contiguous and raw_nc.T.flags.c_contiguous


def _raw_values_numpy(raw_nc, num_classes, pre_thr, multi_label):
    """(point indices, class indices, raw values as float32) above pre_thr, in (point, class) order."""
    num_points = raw_nc.shape[0]
    # A channels-first output arrives as a transposed view: threshold its contiguous (C, N) block.
    channels_first = _channels_first(raw_nc)
    if multi_label:
        if channels_first:
            flat = np.flatnonzero(raw_nc.T[:num_classes] > pre_thr)
            classes, points = np.divmod(flat, num_points)
            key = np.sort(points * num_classes + classes)  # back to (point, class) order
            points, classes = np.divmod(key, num_classes)
        else:
            # one compare over the whole contiguous output is faster than one per row's class block
            if raw_nc.flags.c_contiguous:
                above = (raw_nc > pre_thr)[:, :num_classes]
            else:
                above = raw_nc[:, :num_classes] > pre_thr
            points, classes = np.divmod(np.flatnonzero(above), num_classes)
        values = raw_nc[points, classes]
    else:
        cls = raw_nc.T[:num_classes] if channels_first else raw_nc[:, :num_classes].T
        best = cls.argmax(axis=0)
        best_values = cls[best, np.arange(num_points)]
        points = np.flatnonzero(best_values > pre_thr)
        classes = best[points]
        values = best_values[points]
    return points, classes.astype(np.int64), np.asarray(values, dtype=np.float32)


def _native_layout(raw_nc):
    """(C-contiguous array the compiled code reads, channels_first), or None where it does not apply."""
    if raw_nc.dtype not in _NATIVE_DTYPES:
        return None
    if raw_nc.flags.c_contiguous:
        return raw_nc, False
    if raw_nc.T.flags.c_contiguous:
        return raw_nc.T, True
    return np.ascontiguousarray(raw_nc), False


def _max_det_int(max_det):
    """max_det for the compiled code (a C int): <= 0 means no cap, as does anything beyond 2**31 - 1."""
    return min(int(max_det), 2**31 - 1)


def _detect_scored(data, channels_first, num_classes, reg_max, priors, input_hw, threshold, exact_threshold,
                   multi_label, iou_thr, max_det, to_original):
    """The one compiled call for sigmoid scores (select, decode, NMS, optionally the way back) ->
    (boxes (k, 4), scores (k,), labels (k,)); ValueError when ``data`` is not C-contiguous."""
    found = _native.detect_scored(data, channels_first, num_classes, reg_max, priors, input_hw[0], input_hw[1],
                                  threshold, exact_threshold, multi_label, iou_thr, _max_det_int(max_det), to_original)
    return (np.frombuffer(found[0], np.float32).reshape(-1, 4), np.frombuffer(found[1], np.float32),
            np.frombuffer(found[2], np.int64))


def _scored(points, classes, values, score_thr, scores_are_sigmoid, itemsize):
    """Candidates with their exact scores (sigmoid of logits), those not above score_thr dropped."""
    scores = values
    if not scores_are_sigmoid:
        scores = sigmoid(scores)
    elif itemsize >= 4:  # float32/64 scores: the pre-selection was this exact test
        return points, classes, scores
    exact = scores > score_thr
    return points[exact], classes[exact], scores[exact]


def postprocess(
    raw_nc: np.ndarray,
    input_hw: Sequence[int],
    strides: Sequence[int],
    reg_max: int,
    score_thr: float,
    iou_thr: float,
    max_det: int,
    scores_are_sigmoid: bool,
    multi_label: bool = True,
    to_original: Optional[tuple[float, float, int, int]] = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's raw output -> detections in network-input pixels (or original ones: ``to_original``).

    raw_nc: (N, C + 4*(reg_max+1)): C class scores (sigmoid when ``scores_are_sigmoid``, else
    logits), then the box bins. A transposed view of a (C+4*(reg_max+1), N) array is fine (and not
    copied). multi_label: every (point, class) above the threshold is a candidate (upstream);
    False: only each point's best class. to_original: (1/sx, 1/sy, w, h) of a diagonal warp
    (``preprocess.diagonal_inverse``): the boxes mapped back with ``scale_boxes_back``.
    Returns boxes (k, 4) float32 x1y1x2y2, scores (k,) float32, labels (k,) int64, best first,
    k <= max_det (max_det <= 0: no cap).
    """
    raw_nc = np.asarray(raw_nc)
    if raw_nc.ndim == 3 and raw_nc.shape[0] == 1:
        raw_nc = raw_nc[0]
    input_hw, strides = (int(input_hw[0]), int(input_hw[1])), tuple(int(v) for v in strides)
    priors = _priors_cached(input_hw, strides)
    num_bins = 4 * (reg_max + 1)
    num_classes = raw_nc.shape[-1] - num_bins if raw_nc.ndim == 2 else 0
    if raw_nc.ndim != 2 or raw_nc.shape[0] != len(priors) or num_classes < 1:
        raise ModelOutputError(
            f"model output of shape {raw_nc.shape} does not fit a NanoDet-Plus head with input "
            f"{tuple(input_hw)}, strides {tuple(strides)} and reg_max {reg_max}: expected "
            f"({len(priors)}, num_classes + {num_bins}); check the model's input size and layout"
        )

    score_thr = float(score_thr)
    pre_thr = _pre_threshold(score_thr, scores_are_sigmoid)
    native = _native_layout(raw_nc) if native_enabled() else None
    if native is not None and scores_are_sigmoid:  # no exp to compute: one compiled call does it all
        data, channels_first = native
        exact_thr = score_thr if raw_nc.dtype.itemsize < 4 else None  # see _scored
        return _detect_scored(data, channels_first, num_classes, reg_max, priors, input_hw,
                              float(raw_nc.dtype.type(pre_thr)), exact_thr, multi_label, float(iou_thr), max_det,
                              to_original)
    if native is not None:
        data, channels_first = native
        # numpy compares in the output's own precision: the threshold rounded to it, as numpy does
        raw_values = _native.select_candidates(data, channels_first, num_classes,
                                               float(raw_nc.dtype.type(pre_thr)), multi_label)
        points, labels, values = (np.frombuffer(b, t) for b, t in zip(raw_values, (np.int64, np.int64, np.float32)))
    else:
        points, labels, values = _raw_values_numpy(raw_nc, num_classes, pre_thr, multi_label)
    points, labels, scores = _scored(points, labels, values, score_thr, scores_are_sigmoid, raw_nc.dtype.itemsize)
    if len(points) == 0:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64)
    if native is not None:
        kept, boxes = _native.decode_nms(data, channels_first, num_classes, reg_max, priors, input_hw[0], input_hw[1],
                                         points, labels, scores, float(iou_thr), _max_det_int(max_det))
        keep = np.frombuffer(kept, np.int64)
        boxes = np.frombuffer(boxes, np.float32).reshape(-1, 4)
    else:
        points_xyxy, signed_strides, limits = _decode_constants(input_hw, strides)
        boxes = _place_boxes(_bin_distances(raw_nc[points, num_classes:], reg_max), signed_strides[points],
                             points_xyxy[points], limits)
        keep = batched_nms(boxes, scores, labels, float(iou_thr), int(max_det))
        boxes = boxes[keep]
    if to_original is not None:
        boxes = scale_boxes_back(boxes, *to_original)
    return boxes, scores[keep], labels[keep]


class Decoder:
    """``postprocess`` for one model's output, its shape and constants read once: what a ``Detector``
    runs per image.

    The same detections as ``postprocess`` (tests compare them): a float32 output with sigmoid
    scores in either layout goes straight to the compiled code in one call, with no more Python
    around it than that (right after an inference, when the interpreter's own code and data are
    out of the caches, each Python step costs several times its usual time); anything else takes
    ``postprocess``. Whether the compiled path runs (NANOPLUS_NATIVE) is decided when it is made.
    """

    def __init__(self, input_hw: Sequence[int], strides: Sequence[int], reg_max: int, num_classes: int):
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.strides = tuple(int(v) for v in strides)
        self.reg_max = int(reg_max)
        self.num_classes = int(num_classes)
        self.priors = _priors_cached(self.input_hw, self.strides)
        self.shape = (len(self.priors), self.num_classes + 4 * (self.reg_max + 1))
        self.native = native_enabled()
        self._threshold = (None, None)  # score_thr and its float32 rounding, for the compiled compare

    def __call__(self, raw_nc: np.ndarray, score_thr: float, iou_thr: float, max_det: int, scores_are_sigmoid: bool,
                 multi_label: bool = True, to_original: Optional[tuple[float, float, int, int]] = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As ``postprocess(raw_nc, <this model's input_hw, strides, reg_max>, ...)``."""
        if self.native and scores_are_sigmoid and raw_nc.dtype is _FLOAT32 and raw_nc.shape == self.shape:
            if self._threshold[0] != score_thr:
                self._threshold = (score_thr, float(np.float32(score_thr)))
            try:
                return _detect_scored(raw_nc, False, self.num_classes, self.reg_max, self.priors, self.input_hw,
                                      self._threshold[1], None, multi_label, iou_thr, max_det, to_original)
            except ValueError:  # not C-contiguous (e.g. a channels-first output's transposed view): below
                pass
        return postprocess(raw_nc, self.input_hw, self.strides, self.reg_max, score_thr, iou_thr, max_det,
                           scores_are_sigmoid, multi_label, to_original)
