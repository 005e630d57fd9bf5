"""Decoding and NMS against upstream's fixture, a plain-Python reference, and hand-made cases."""
from __future__ import annotations

import json

import numpy as np
import pytest

import nanoplus.runtime.postprocess as pp
from conftest import UPSTREAM_CASE, require
from nanoplus.runtime.postprocess import ModelOutputError, batched_nms, decode_boxes, make_center_priors, postprocess

STRIDES = (8, 16, 32, 64)


@pytest.fixture(scope="module")
def case():
    require(UPSTREAM_CASE / "case.npz")
    return np.load(UPSTREAM_CASE / "case.npz"), json.loads((UPSTREAM_CASE / "meta.json").read_text())


def _run(raw, meta, **kw):
    args = dict(input_hw=meta["input_hw"], strides=meta["strides"], reg_max=meta["reg_max"],
                score_thr=meta["postprocess"]["score_thr"], iou_thr=meta["postprocess"]["nms_iou"],
                max_det=meta["postprocess"]["max_num"], scores_are_sigmoid=False)
    args.update(kw)
    return postprocess(raw, **args)


def _assert_same_dets(boxes, scores, labels, expected):
    """Fixture README §6: same rows in the same order; boxes 1e-3 px, scores 1e-6."""
    assert len(boxes) == len(expected)
    np.testing.assert_array_equal(labels, expected[:, 5].astype(np.int64))
    np.testing.assert_allclose(boxes, expected[:, :4], rtol=0, atol=1e-3)
    np.testing.assert_allclose(scores, expected[:, 4], rtol=0, atol=1e-6)


def test_center_priors(case):
    arrays, meta = case
    priors = make_center_priors(meta["input_hw"], meta["strides"])
    np.testing.assert_array_equal(priors, arrays["center_priors"])
    assert priors.dtype == np.float32 and len(priors) == meta["num_points"]
    assert len(make_center_priors((320, 320), STRIDES)) == 2125
    # non-square: ceil per side, height first; 320x416: 40*52 + 20*26 + 10*13 + 5*7
    priors = make_center_priors((320, 416), STRIDES)
    assert len(priors) == 40 * 52 + 20 * 26 + 10 * 13 + 5 * 7
    np.testing.assert_array_equal(priors[51], [51 * 8, 0, 8, 8])  # end of the first row
    np.testing.assert_array_equal(priors[52], [0, 8, 8, 8])  # next row: x = col*stride, no +0.5


@pytest.mark.parametrize("layout", ["NC", "CN view"])
def test_reproduces_upstream_postprocess(case, layout):
    arrays, meta = case
    for i in range(meta["batch_size"]):
        raw = arrays["pp_in"][i]
        if layout == "CN view":  # a channels-first engine output, decoded through a transposed view
            raw = np.ascontiguousarray(raw.T).T
        boxes, scores, labels = _run(raw, meta)
        assert boxes.dtype == np.float32 and scores.dtype == np.float32 and labels.dtype == np.int64
        _assert_same_dets(boxes, scores, labels, arrays[f"pp_dets_{i}"])


def test_reproduces_upstream_with_sigmoid_scores(case):
    """ONNX-style input: sigmoid already applied to the class channels."""
    arrays, meta = case
    c = meta["num_classes"]
    for i in range(meta["batch_size"]):
        raw = arrays["pp_in"][i].copy()
        raw[:, :c] = 1.0 / (1.0 + np.exp(-raw[:, :c]))
        _assert_same_dets(*_run(raw, meta, scores_are_sigmoid=True), arrays[f"pp_dets_{i}"])


def test_reproduces_upstream_with_small_nms_blocks(case, monkeypatch):
    """Candidates resolved across many NMS blocks give the same answer."""
    arrays, meta = case
    monkeypatch.setattr(pp, "_NMS_BLOCK", 7)
    for i in range(meta["batch_size"]):
        _assert_same_dets(*_run(arrays["pp_in"][i], meta), arrays[f"pp_dets_{i}"])


def test_uncapped_counts_match_upstream(case):
    arrays, meta = case
    for i, counts in enumerate(meta["synthetic_pp_input"]["per_image"]):
        boxes, scores, _ = _run(arrays["pp_in"][i], meta, max_det=0)
        assert len(boxes) == counts["after_nms"]
        assert np.all(np.diff(scores) <= 0)


def test_untrained_model_output_gives_no_detections(case):
    arrays, meta = case
    for i in range(meta["batch_size"]):
        boxes, scores, labels = _run(arrays["deploy_out"][i], meta)
        assert boxes.shape == (0, 4) and scores.shape == (0,) and labels.shape == (0,)
        assert len(arrays[f"dets_{i}"]) == 0


# -- an independent reference: the textbook algorithm, written plainly ----------------------------
def _reference(raw, input_hw, strides, reg_max, score_thr, iou_thr, max_det, sigmoid_scores, multi_label=True):
    raw = np.asarray(raw, np.float64)
    num_classes = raw.shape[1] - 4 * (reg_max + 1)
    scores = raw[:, :num_classes] if sigmoid_scores else 1 / (1 + np.exp(-raw[:, :num_classes]))
    cands = []  # (score, point, class)
    for p in range(raw.shape[0]):
        classes = range(num_classes) if multi_label else [int(np.argmax(scores[p]))]
        for c in classes:
            if scores[p, c] > score_thr:
                cands.append((scores[p, c], p, c))
    priors = []
    for s in strides:
        for y in range(-(-input_hw[0] // s)):
            for x in range(-(-input_hw[1] // s)):
                priors.append((x * s, y * s, s))
    kept = []
    for c in sorted({c for _, _, c in cands}):
        mine = sorted([x for x in cands if x[2] == c], key=lambda x: -x[0])
        boxes = []
        for score, p, _ in mine:
            px, py, s = priors[p]
            d = []
            for side in range(4):
                logits = raw[p, num_classes + side * (reg_max + 1): num_classes + (side + 1) * (reg_max + 1)]
                e = np.exp(logits - logits.max())
                d.append(float((e / e.sum()) @ np.arange(reg_max + 1)) * s)
            box = [min(max(px - d[0], 0), input_hw[1]), min(max(py - d[1], 0), input_hw[0]),
                   min(max(px + d[2], 0), input_hw[1]), min(max(py + d[3], 0), input_hw[0])]
            ok = True
            for other in boxes:
                iw = max(0.0, min(box[2], other[2]) - max(box[0], other[0]))
                ih = max(0.0, min(box[3], other[3]) - max(box[1], other[1]))
                inter = iw * ih
                union = (box[2] - box[0]) * (box[3] - box[1]) + (other[2] - other[0]) * (other[3] - other[1]) - inter
                if union > 0 and inter / union > iou_thr:
                    ok = False
                    break
            if ok:
                boxes.append(box)
                kept.append((score, box, c))
    kept.sort(key=lambda x: -x[0])
    kept = kept[:max_det] if max_det > 0 else kept
    return (np.array([k[1] for k in kept]).reshape(-1, 4), np.array([k[0] for k in kept]),
            np.array([k[2] for k in kept], np.int64))


@pytest.mark.parametrize("seed,score_thr,multi_label,sigmoid_scores,input_hw,dtype", [
    (0, 0.35, True, False, (64, 64), np.float32),
    (1, 0.05, True, False, (64, 96), np.float32),
    (2, 0.05, False, False, (96, 64), np.float32),
    (3, 0.35, True, True, (64, 64), np.float32),
    (4, 0.2, False, True, (128, 64), np.float32),
    (5, 0.3, True, True, (64, 64), np.float16),  # an fp16 engine's sigmoid scores
    (6, 0.3, True, False, (64, 96), np.float16),
    (7, 0.05, True, True, (64, 64), np.float64),
])
def test_matches_plain_reference(seed, score_thr, multi_label, sigmoid_scores, input_hw, dtype):
    rng = np.random.default_rng(seed)
    num_classes, reg_max = 5, 7
    n = len(make_center_priors(input_hw, STRIDES))
    raw = rng.normal(0, 1.5, (n, num_classes + 32)).astype(np.float32)
    raw[:, :num_classes] += -2.0
    if sigmoid_scores:
        raw[:, :num_classes] = 1 / (1 + np.exp(-raw[:, :num_classes]))
    raw = raw.astype(dtype)
    got = postprocess(raw, input_hw, STRIDES, reg_max, score_thr, 0.5, 30, sigmoid_scores, multi_label)
    want = _reference(raw, input_hw, STRIDES, reg_max, score_thr, 0.5, 30, sigmoid_scores, multi_label)
    assert len(got[0]) == len(want[0]) > 0
    np.testing.assert_array_equal(got[2], want[2])
    np.testing.assert_allclose(got[0], want[0], atol=1e-3)
    np.testing.assert_allclose(got[1], want[1], atol=1e-6)


# -- hand-made cases -------------------------------------------------------------------------------
def test_nms_semantics_by_hand():
    boxes = np.array([[0, 0, 10, 10],    # kept (best)
                      [0, 0, 10, 7],     # IoU 0.7 with box 0, same class: suppressed
                      [0, 0, 10, 6],     # IoU 0.6 exactly: NOT suppressed (strictly greater)
                      [0, 0, 10, 7],     # same as box 1 but another class: kept
                      [20, 20, 30, 30]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5], np.float32)
    labels = np.array([0, 0, 0, 1, 0])
    np.testing.assert_array_equal(batched_nms(boxes, scores, labels, 0.6, 100), [0, 2, 3, 4])
    np.testing.assert_array_equal(batched_nms(boxes, scores, labels, 0.6, 2), [0, 2])
    # input order does not matter: the result is by score
    perm = np.array([4, 2, 0, 3, 1])
    np.testing.assert_array_equal(perm[batched_nms(boxes[perm], scores[perm], labels[perm], 0.6, 100)], [0, 2, 3, 4])
    # two empty boxes (0/0 IoU) do not suppress each other
    empty = np.zeros((2, 4), np.float32)
    assert len(batched_nms(empty, np.array([0.9, 0.8], np.float32), np.array([0, 0]), 0.6, 100)) == 2


def test_decode_by_hand():
    # all bin logits equal -> uniform softmax -> expected distance 3.5 bins; point (16, 8), stride 8
    bins = np.zeros((1, 32), np.float32)
    box = decode_boxes(bins, np.array([[16, 8, 8, 8]], np.float32), (64, 64), 7)
    np.testing.assert_allclose(box, [[0, 0, 16 + 28, 8 + 28]])  # left/top clipped at 0
    # one-hot bins: left 2, top 0, right 7, bottom 1
    bins = np.full((1, 4, 8), -1e4, np.float32)
    for side, b in enumerate((2, 0, 7, 1)):
        bins[0, side, b] = 0
    box = decode_boxes(bins.reshape(1, 32), np.array([[32, 32, 16, 16]], np.float32), (64, 200), 7)
    np.testing.assert_allclose(box, [[0, 32, 32 + 112, 48]])  # x1 = 32-32 = 0; x2 = 144 < 200


def test_score_threshold_in_logit_space_is_exact():
    """A logit just above / below logit(thr): the pre-selection in logit space must not change
    which pairs pass sigmoid(logit) > thr."""
    num_points = len(make_center_priors((64, 64), STRIDES))
    raw = np.full((num_points, 1 + 32), -20.0, np.float32)
    raw[:, 1:] = 0
    thr = 0.35
    logit = np.float32(np.log(thr / (1 - thr)))
    raw[0, 0] = np.nextafter(logit, np.float32(10))
    raw[5, 0] = np.nextafter(logit, np.float32(-10))
    raw[9, 0] = logit + 1e-4
    raw[12, 0] = logit - 1e-4
    sig = 1 / (1 + np.exp(-raw[[0, 5, 9, 12], 0]))
    expected = {p for p, s in zip([0, 5, 9, 12], sig) if s > np.float32(thr)}
    _, scores, _ = postprocess(raw, (64, 64), STRIDES, 7, thr, 0.99, 100, False)
    assert len(scores) == len(expected)
    assert 9 in expected and 12 not in expected


def test_single_label_keeps_only_the_best_class():
    n = len(make_center_priors((64, 64), STRIDES))
    raw = np.zeros((n, 3 + 32), np.float32)
    raw[:, :3] = 0.0
    raw[10, :3] = [0.6, 0.9, 0.7]
    multi = postprocess(raw, (64, 64), STRIDES, 7, 0.5, 0.6, 100, True, multi_label=True)
    single = postprocess(raw, (64, 64), STRIDES, 7, 0.5, 0.6, 100, True, multi_label=False)
    np.testing.assert_array_equal(multi[2], [1, 2, 0])
    np.testing.assert_array_equal(single[2], [1])
    np.testing.assert_allclose(single[1], [0.9])


def test_batch_axis_and_errors():
    n = len(make_center_priors((64, 64), STRIDES))
    raw = np.full((1, n, 2 + 32), -9.0, np.float32)
    boxes, scores, labels = postprocess(raw, (64, 64), STRIDES, 7, 0.05, 0.6, 100, False)
    assert boxes.shape == (0, 4)
    with pytest.raises(ModelOutputError, match="does not fit"):
        postprocess(raw[0, :-1], (64, 64), STRIDES, 7, 0.05, 0.6, 100, False)  # one point short
    with pytest.raises(ModelOutputError, match="does not fit"):
        postprocess(raw[0, :, :32], (64, 64), STRIDES, 7, 0.05, 0.6, 100, False)  # no class channels


# -- the compiled decode + NMS against the numpy one (its reference) -------------------------------
def _both(raw, *args, **kwargs):
    """postprocess through the compiled path and through numpy (NANOPLUS_NATIVE=0)."""
    if not pp.native_enabled():
        pytest.skip("nanoplus.runtime._native is not built (or NANOPLUS_NATIVE=0): nothing to compare")
    native = postprocess(raw, *args, **kwargs)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NANOPLUS_NATIVE", "0")
        assert pp.implementation() == "numpy"
        reference = postprocess(raw, *args, **kwargs)
    return native, reference


def _assert_native_matches(native, reference):
    """Same rows in the same order, scores bit-equal; boxes to 1e-4 px (exp and the bin sums are
    libm's / C++'s against numpy's, a few float32 ulps apart)."""
    (boxes, scores, labels), (ref_boxes, ref_scores, ref_labels) = native, reference
    assert boxes.dtype == np.float32 and scores.dtype == np.float32 and labels.dtype == np.int64
    assert boxes.shape == ref_boxes.shape
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_array_equal(scores.view(np.uint32), ref_scores.view(np.uint32))
    np.testing.assert_allclose(boxes, ref_boxes, rtol=0, atol=1e-4)
    assert boxes.flags.writeable and scores.flags.writeable and labels.flags.writeable


def _random_output(rng, input_hw, num_classes, sigmoid_scores, dtype, layout, offset=-2.0):
    n = len(make_center_priors(input_hw, STRIDES))
    raw = rng.normal(0, 1.5, (n, num_classes + 32)).astype(np.float32)
    raw[:, :num_classes] += offset
    if sigmoid_scores:
        raw[:, :num_classes] = 1 / (1 + np.exp(-raw[:, :num_classes]))
    raw = raw.astype(dtype)
    return np.ascontiguousarray(raw.T).T if layout == "CN" else raw


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("layout", ["NC", "CN"])
@pytest.mark.parametrize("sigmoid_scores", [False, True])
@pytest.mark.parametrize("multi_label", [True, False])
def test_native_matches_numpy(dtype, layout, sigmoid_scores, multi_label):
    rng = np.random.default_rng(11)
    for input_hw, num_classes, score_thr, max_det in [((64, 96), 5, 0.05, 0), ((96, 64), 80, 0.05, 100),
                                                      ((64, 64), 3, 0.35, 100), ((128, 64), 20, 0.3, 7)]:
        raw = _random_output(rng, input_hw, num_classes, sigmoid_scores, dtype, layout)
        native, reference = _both(raw, input_hw, STRIDES, 7, score_thr, 0.5, max_det, sigmoid_scores, multi_label)
        assert len(reference[0]) > 0
        _assert_native_matches(native, reference)


def test_native_matches_numpy_on_upstream_case(case):
    arrays, meta = case
    for i in range(meta["batch_size"]):
        for raw in (arrays["pp_in"][i], np.ascontiguousarray(arrays["pp_in"][i].T).T):
            for max_det in (meta["postprocess"]["max_num"], 0, 3):
                _assert_native_matches(*_both(raw, meta["input_hw"], meta["strides"], meta["reg_max"], 0.05,
                                              meta["postprocess"]["nms_iou"], max_det, False))


def test_native_ties_keep_point_class_order():
    """Equal scores (the same logit at many points and classes, and distinct logits whose float32
    sigmoid rounds to one value) keep (point, class) order, as numpy's stable sort does."""
    n = len(make_center_priors((64, 64), STRIDES))
    raw = np.full((n, 4 + 32), -9.0, np.float32)
    raw[:, 4:] = 0
    rng = np.random.default_rng(3)
    points = rng.choice(n, 40, replace=False)
    raw[points, :4] = 1.25  # 160 candidates of one score, boxes far apart or identical
    raw[points[:10], 4:] = rng.normal(0, 2, (10, 32))
    big = np.float32(17.0)  # sigmoid rounds to 1.0 for every logit from ~16.6 on
    raw[points[40 - 5:], 1] = big + np.arange(5, dtype=np.float32)
    for multi_label in (True, False):
        for layout_raw in (raw, np.ascontiguousarray(raw.T).T):
            native, reference = _both(layout_raw, (64, 64), STRIDES, 7, 0.3, 0.6, 0, False, multi_label)
            assert len(np.unique(reference[1])) < len(reference[1])  # there are ties
            _assert_native_matches(native, reference)


def test_native_edge_cases():
    n = len(make_center_priors((64, 64), STRIDES))
    rng = np.random.default_rng(5)
    # nothing above the threshold
    raw = np.full((n, 2 + 32), -9.0, np.float32)
    (boxes, scores, labels), reference = _both(raw, (64, 64), STRIDES, 7, 0.05, 0.6, 100, False)
    assert boxes.shape == (0, 4) and scores.shape == (0,) and labels.shape == (0,)
    _assert_native_matches((boxes, scores, labels), reference)
    # NaN / inf in class and bin channels, thresholds 0 and 1, a batch axis
    raw = rng.normal(0, 2, (n, 3 + 32)).astype(np.float32)
    raw[rng.choice(n, 20), rng.integers(0, 35, 20)] = np.nan
    raw[rng.choice(n, 20), rng.integers(0, 35, 20)] = np.inf
    raw[rng.choice(n, 20), rng.integers(0, 35, 20)] = -np.inf
    for score_thr in (0.0, 0.05, 0.5, 1.0):
        for multi_label in (True, False):
            native, reference = _both(raw[None], (64, 64), STRIDES, 7, score_thr, 0.6, 0, False, multi_label)
            np.testing.assert_array_equal(native[2], reference[2])
            np.testing.assert_array_equal(native[1].view(np.uint32), reference[1].view(np.uint32))
            np.testing.assert_allclose(native[0], reference[0], rtol=0, atol=1e-4)  # NaN where numpy has NaN
    # a strided view that is neither layout is copied, and decoded the same
    wide = np.zeros((n, 2 * (3 + 32)), np.float32)
    wide[:, ::2] = raw
    _assert_native_matches(*_both(wide[:, ::2], (64, 64), STRIDES, 7, 0.05, 0.6, 100, False))


def test_native_threshold_in_each_precision():
    """Values at the rounded threshold of each precision: the compiled compare is numpy's."""
    n = len(make_center_priors((64, 64), STRIDES))
    for dtype in (np.float16, np.float32, np.float64):
        for score_thr, sigmoid_scores in ((0.35, True), (0.05, False), (0.99, False), (0.3, True)):
            pre = pp._pre_threshold(score_thr, sigmoid_scores)
            raw = np.full((n, 1 + 32), -30 if not sigmoid_scores else 0, dtype)
            t = dtype(pre)
            raw[:6, 0] = [t, np.nextafter(t, dtype(10)), np.nextafter(t, dtype(-10)),
                          np.nextafter(np.nextafter(t, dtype(10)), dtype(10)), dtype(score_thr), dtype(1)]
            _assert_native_matches(*_both(raw, (64, 64), STRIDES, 7, score_thr, 0.99, 0, sigmoid_scores))


# -- Decoder (what a Detector runs per image) and the way back to original pixels ------------------
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("layout", ["NC", "CN"])
@pytest.mark.parametrize("sigmoid_scores", [False, True])
def test_decoder_equals_postprocess_and_maps_back_as_the_reference(dtype, layout, sigmoid_scores):
    """Decoder(...)(raw, ...) gives postprocess's detections bit for bit in every layout, precision
    and score kind (the compiled one-call path or postprocess itself), and with ``to_original`` the
    boxes of ``scale_boxes_back`` (numpy: the reference of the compiled boxes_to_original) applied
    to them, whether decoded compiled or in numpy."""
    rng = np.random.default_rng(5)
    input_hw, num_classes = (96, 128), 7
    decoder = pp.Decoder(input_hw, STRIDES, 7, num_classes)
    back = (1.0 / 0.3, 1.0 / 0.41, 430, 233)  # an image of 430 x 233, boxes past its edges clipped
    for score_thr, max_det in ((0.05, 100), (0.35, 5), (0.3, 0)):
        raw = _random_output(rng, input_hw, num_classes, sigmoid_scores, dtype, layout, offset=-1.0)
        expected = postprocess(raw, input_hw, STRIDES, 7, score_thr, 0.5, max_det, sigmoid_scores)
        assert len(expected[0]) > 0
        got = decoder(raw, score_thr, 0.5, max_det, sigmoid_scores)
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a, b)
        mapped = decoder(raw, score_thr, 0.5, max_det, sigmoid_scores, to_original=back)
        np.testing.assert_array_equal(mapped[0], pp.scale_boxes_back(expected[0], *back))
        np.testing.assert_array_equal(mapped[1], expected[1])
        np.testing.assert_array_equal(mapped[2], expected[2])
        assert mapped[0][:, 0::2].max() <= 430 and mapped[0][:, 1::2].max() <= 233 and mapped[0].min() >= 0
        if pp.native_enabled():
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("NANOPLUS_NATIVE", "0")
                numpy_boxes = postprocess(raw, input_hw, STRIDES, 7, score_thr, 0.5, max_det, sigmoid_scores,
                                          to_original=back)[0]
            np.testing.assert_allclose(numpy_boxes, mapped[0], rtol=0, atol=1e-3)


def test_scale_boxes_back_by_hand():
    boxes = np.array([[10.0, 20.0, 30.0, 40.0], [-1.0, 0.0, 500.0, 7.0], [np.nan, 1.0, 2.0, 3.0]], np.float32)
    out = pp.scale_boxes_back(boxes, 2.0, 0.5, 100, 50)
    np.testing.assert_array_equal(out[:2], [[20.0, 10.0, 60.0, 20.0], [0.0, 0.0, 100.0, 3.5]])
    assert np.isnan(out[2, 0]) and out.dtype == np.float32
    if pp.native_enabled():  # the compiled step on the same rows (NaN stays NaN)
        raw = np.full((len(make_center_priors((64, 64), STRIDES)), 1 + 32), -9.0, np.float32)
        raw[0, 0] = 0.9  # one detection at the first point, bins all equal: distances 3.5 strides
        boxes, _, _ = postprocess(raw, (64, 64), STRIDES, 7, 0.5, 0.6, 10, True)
        mapped, _, _ = postprocess(raw, (64, 64), STRIDES, 7, 0.5, 0.6, 10, True, to_original=(2.0, 0.5, 100, 50))
        np.testing.assert_array_equal(mapped, pp.scale_boxes_back(boxes, 2.0, 0.5, 100, 50))
