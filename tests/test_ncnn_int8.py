"""The ncnn INT8 writer (export/ncnn_int8.py): format, arithmetic, calibration, real weights.

The fast tests use a hand-made float model (Conv 3x3 s2 + leaky ReLU -> ConvDW 3x3 + ReLU -> Conv
1x1) written here by a writer of our own, so they need no export toolchain; ncnn itself loads and
runs the int8 file. The expected int8 outputs come from a numpy model of ncnn's int8 arithmetic
(quantise the input, integer convolution, dequantise, bias, activation, requantise), not from ncnn.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from conftest import NCNN_FP16_DIR, REPO_ROOT, TINY_COCO, require, require_module

from nanoplus.export import ncnn_int8 as q

# ------------------------------------------------------------------------------------------------
# a tiny float model, written by hand

IN_C, MID_C, OUT_C, SIZE = 3, 8, 4, 12


def _tiny_weights(seed=0):
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.4, (MID_C, IN_C, 3, 3)).astype(np.float32)
    w1[3] *= 0.05  # channels of very different ranges: per-channel scales matter
    b1 = rng.normal(0, 0.1, MID_C).astype(np.float32)
    w2 = rng.normal(0, 0.5, (MID_C, 1, 3, 3)).astype(np.float32)
    b2 = rng.normal(0, 0.1, MID_C).astype(np.float32)
    w3 = rng.normal(0, 0.4, (OUT_C, MID_C, 1, 1)).astype(np.float32)
    b3 = rng.normal(0, 0.1, OUT_C).astype(np.float32)
    return w1, b1, w2, b2, w3, b3


def write_tiny_float_model(folder, seed=0):
    """in0 (3, 12, 12) -> conv1 (3x3 s2 p1, leaky 0.1) -> convdw (3x3 p1, ReLU) -> conv3 (1x1) -> out0."""
    w1, b1, w2, b2, w3, b3 = _tiny_weights(seed)
    param = folder / "tiny.param"
    lines = [
        "7767517", "4 4",
        "Input in 0 1 in0 0=12 1=12 2=3",
        f"Convolution conv1 1 1 in0 c1 0={MID_C} 1=3 3=2 4=1 5=1 6={w1.size} 9=2 -23310=1,1.000000e-01",
        f"ConvolutionDepthWise convdw 1 1 c1 c2 0={MID_C} 1=3 4=1 5=1 6={w2.size} 7={MID_C} 9=1",
        f"Convolution conv3 1 1 c2 out0 0={OUT_C} 1=1 5=1 6={w3.size}",
    ]
    param.write_text("\n".join(lines) + "\n")
    zero_tag = np.zeros(1, "<u4").tobytes()  # float32 storage
    blob = b"".join(zero_tag + w.astype("<f4").tobytes() + b.astype("<f4").tobytes()
                    for w, b in ((w1, b1), (w2, b2), (w3, b3)))
    param.with_suffix(".bin").write_bytes(blob)
    return param


def _conv(x, w, b, stride, pad, groups=1):
    """Plain float64 convolution: x (C, H, W), w (O, C/groups, k, k) -> (O, H', W')."""
    c, h, wd = x.shape
    o, cg, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    oh, ow = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    out = np.zeros((o, oh, ow))
    per_group = o // groups
    for oc in range(o):
        g = oc // per_group
        patch_in = xp[g * cg:(g + 1) * cg]
        for i in range(k):
            for j in range(k):
                window = patch_in[:, i:i + stride * oh:stride, j:j + stride * ow:stride]
                out[oc] += np.tensordot(w[oc, :, i, j], window, axes=(0, 0))
    return out + b[:, None, None]


def _act(x, kind):
    if kind == "leaky":
        return np.where(x > 0, x, 0.1 * x)
    if kind == "relu":
        return np.maximum(x, 0)
    return x


def _quant(x, scale):
    return np.clip(q.round_half_away(np.float32(x) * np.float32(scale)), -127, 127)


def float_reference(image, seed=0):
    w1, b1, w2, b2, w3, b3 = (a.astype(np.float64) for a in _tiny_weights(seed))
    x = _act(_conv(image, w1, b1, 2, 1), "leaky")
    x = _act(_conv(x, w2, b2, 1, 1, groups=MID_C), "relu")
    return _conv(x, w3, b3, 1, 0)


def int8_reference(image, in_scales, seed=0):
    """ncnn's int8 arithmetic for the tiny model, every conv int8; conv1 and convdw requantise.

    Integer accumulation of int8 input x int8 weights, then sum / (s_in * s_w) + bias, activation,
    and for a requantising layer round(y * s_next) as the next layer's int8 input.
    """
    weights = _tiny_weights(seed)
    layers = [(weights[0], weights[1], 2, 1, 1, "leaky"), (weights[2], weights[3], 1, 1, MID_C, "relu"),
              (weights[4], weights[5], 1, 0, 1, "none")]
    x_q = _quant(image, in_scales[0])
    for i, (w, b, stride, pad, groups, act) in enumerate(layers):
        rows = w.shape[0] if groups == 1 else groups
        absmax = np.abs(w.reshape(rows, -1)).max(1)
        levels = 31 if (w.shape[2] == 3 and stride == 1 and groups == 1) else 127
        s_w = (np.float32(levels) / absmax).astype(np.float32)
        w_q = np.clip(q.round_half_away(w.reshape(rows, -1) * s_w[:, None]), -127, 127).reshape(w.shape)
        acc = _conv(x_q.astype(np.float64), w_q.astype(np.float64), np.zeros(w.shape[0]), stride, pad, groups)
        y = _act(acc / (in_scales[i] * s_w.astype(np.float64))[:, None, None] + b[:, None, None], act)
        if i + 1 < len(layers):
            x_q = _quant(y, in_scales[i + 1])
        else:
            return y


def _run_ncnn(param, image, blob="out0"):
    ncnn = require_module("ncnn")
    net = ncnn.Net()
    for flag in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage"):
        setattr(net.opt, flag, False)
    net.opt.num_threads = 1
    assert net.load_param(str(param)) == 0 and net.load_model(str(param.with_suffix(".bin"))) == 0
    ex = net.create_extractor()
    ex.input("in0", ncnn.Mat(np.ascontiguousarray(image, dtype=np.float32)))
    ret, out = ex.extract(blob)
    assert ret == 0
    return np.array(out, dtype=np.float64)


def _cosine(a, b):
    return float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture()
def tiny(tmp_path):
    return write_tiny_float_model(tmp_path)


def test_hand_made_float_model_matches_our_reference(tiny):
    """The float test model itself: ncnn computes what the numpy reference does."""
    image = np.random.default_rng(1).normal(0, 1, (IN_C, SIZE, SIZE)).astype(np.float32)
    out = _run_ncnn(tiny, image)
    np.testing.assert_allclose(out, float_reference(image), atol=1e-4, rtol=1e-4)


def test_int8_file_format_bytes(tiny, tmp_path):
    """.param keys and .bin layout as ncnn's loader reads them, checked against the bytes."""
    model = q.load_float_ncnn(tiny)
    layers = {layer.name: layer for layer in q.quantisable_layers(model)}
    plans = {name: q.LayerQuant(q.weight_scales(layer), 10.0 + i) for i, (name, layer) in enumerate(layers.items())}
    plans = q.with_requantisation(model, plans)
    out = q.write_int8_model(model, plans, tmp_path / "int8.param")
    lines = out.read_text().splitlines()
    assert "8=102" in lines[3] and "8=101" in lines[4] and lines[5].endswith("8=2")  # conv3 feeds no conv
    data = out.with_suffix(".bin").read_bytes()
    # conv1: tag, 216 int8 weights (a multiple of 4), 8 bias, 8 weight scales, bottom scale, top scale
    assert int.from_bytes(data[:4], "little") == 0x000D4B38
    weights = np.frombuffer(data[4:4 + 216], np.int8)
    w1 = _tiny_weights()[0].reshape(MID_C, -1)
    assert np.abs(weights.reshape(MID_C, -1)).max(1).tolist() == [127] * MID_C  # absmax row -> +-127
    rest = np.frombuffer(data[4 + 216:4 + 216 + 4 * (8 + 8 + 2)], "<f4")
    np.testing.assert_array_equal(rest[:8], _tiny_weights()[1])
    np.testing.assert_allclose(rest[8:16], 127 / np.abs(w1).max(1), rtol=1e-6)
    assert rest[16] == 10.0 and rest[17] == 11.0  # its bottom scale, then convdw's bottom scale
    # convdw: 72 weights padded to 72, scales per group; conv3: 32 weights, no top scale
    expected = (4 + 216 + 4 * 18) + (4 + 72 + 4 * (8 + 8 + 2)) + (4 + 32 + 4 * (4 + 4 + 1))
    assert len(data) == expected


def test_weight_padding_and_rounding():
    """Odd weight counts are padded to 4 bytes; halves round away from zero, as C's round()."""
    assert q.round_half_away(np.array([0.5, -0.5, 1.5, -2.5, 2.4])).tolist() == [1, -1, 2, -3, 2]

    class Layer:  # a 1x1 convolution with 3 outputs of 1 weight each
        type = "Convolution"
        weights = {"weight": np.array([2.0, -0.5, 0.0], np.float32)}
        params = {0: 3, 1: 1}

        def get(self, key, default=0):
            return self.params.get(key, default)

    scales = q.weight_scales(Layer())
    assert scales.tolist() == [63.5, 254.0, 1.0]  # a zero channel: scale 1, finite (inf gives NaN in ncnn)
    assert q.quantise_weights(Layer(), scales).tolist() == [127, -127, 0]
    blob = q._layer_blob(Layer(), q.LayerQuant(scales, 1.0))
    assert len(blob) == 4 + 4 + 3 * 4 + 4  # tag, 3 int8 padded to 4, 3 scales, bottom scale


def test_ncnn_runs_the_int8_file_as_our_int8_arithmetic(tiny, tmp_path):
    """ncnn's int8 path gives what the numpy model of int8 arithmetic gives, and stays near fp32."""
    rng = np.random.default_rng(2)
    image = rng.normal(0, 1, (IN_C, SIZE, SIZE)).astype(np.float32)
    model = q.load_float_ncnn(tiny)
    f = float_reference(image)
    w1, b1, w2, b2 = (a.astype(np.float64) for a in _tiny_weights()[:4])
    c1 = _act(_conv(image.astype(np.float64), w1, b1, 2, 1), "leaky")
    c2 = _act(_conv(c1, w2, b2, 1, 1, groups=MID_C), "relu")
    in_scales = [127 / np.abs(blob).max() for blob in (image, c1, c2)]
    plans = {layer.name: q.LayerQuant(q.weight_scales(layer), float(s))
             for layer, s in zip(q.quantisable_layers(model), in_scales)}
    out = q.write_int8_model(model, q.with_requantisation(model, plans), tmp_path / "int8.param")
    got = _run_ncnn(out, image)
    expected = int8_reference(image, [np.float32(s) for s in in_scales])
    np.testing.assert_allclose(got, expected, atol=2e-3 * np.abs(expected).max())
    assert np.abs(got - f).max() > 1e-3  # it is not the float path
    assert _cosine(got, f) > 0.99


def _literal_kl_threshold(histogram, thresholds):
    """ncnn2table's loop written out element by element (float64) for the given thresholds."""
    h = np.asarray(histogram, float) / np.sum(histogram)
    best, best_t = math.inf, None
    for t in thresholds:
        clip = [1e-4 + v for v in h[:t]]
        clip[t - 1] += h[t:].sum()
        per = t / 128
        quant = []
        for j in range(128):
            start, end = j * per, (j + 1) * per
            lu, ru = math.ceil(start), math.floor(end)
            value = (lu - start) * h[lu - 1] if lu > start else 0.0
            value += (end - ru) * h[ru] if end > ru else 0.0
            value += h[lu:ru].sum()
            quant.append(value / (end - start))
        expand = [1e-4] * t
        for j in range(128):
            start, end = j * per, (j + 1) * per
            lu, ru = math.ceil(start), math.floor(end)
            if lu > start:
                expand[lu - 1] += (lu - start) * quant[j]
            if end > ru and ru < t:
                expand[ru] += (end - ru) * quant[j]
            for k in range(lu, ru):
                expand[k] += quant[j]
        kl = sum(a * math.log(a / b) for a, b in zip(clip, expand))
        if kl < best:
            best, best_t = kl, t
    return best_t


@pytest.mark.parametrize("kind", ["gaussian", "outliers"])
def test_kl_threshold_is_ncnn2tables(kind):
    """The vectorised search picks the threshold the literal loop picks (over a window around it
    and a spread of others), and clips far outliers."""
    rng = np.random.default_rng(3)
    x = np.abs(rng.normal(0, 1, 100_000))
    if kind == "outliers":
        x = np.concatenate([x, [40.0, 38.0, 35.0]])
    hist = np.bincount(np.minimum((x / x.max() * 2048).astype(int), 2047), minlength=2048)
    chosen = q.kl_threshold_bin(hist)
    window = list(range(max(128, chosen - 6), min(2048, chosen + 7))) + list(range(128, 2048, 97))
    assert _literal_kl_threshold(hist, sorted(set(window))) == chosen
    if kind == "outliers":
        assert chosen * x.max() / 2048 < 8  # the threshold stays near the bulk, far below 40


@pytest.mark.slow
def test_kl_threshold_equals_literal_loop_everywhere():
    rng = np.random.default_rng(4)
    x = rng.exponential(1.0, 50_000)
    hist = np.bincount(np.minimum((x / x.max() * 2048).astype(int), 2047), minlength=2048)
    assert _literal_kl_threshold(hist, range(128, 2048)) == q.kl_threshold_bin(hist)


def test_calibration_through_ncnn_gives_blob_scales(tiny, tmp_path):
    """collect_blob_stats reads the intermediate blobs from ncnn: their maxima equal ours."""
    images = [np.random.default_rng(i).normal(0, 1, (1, IN_C, SIZE, SIZE)).astype(np.float32) for i in range(3)]
    runner = q.NcnnRunner(tiny, "in0", threads=1)
    stats = q.collect_blob_stats(runner, ["in0", "c1"], lambda: iter(images), progress=lambda s: None)
    w1, b1 = (a.astype(np.float64) for a in _tiny_weights()[:2])
    c1_max = max(np.abs(_act(_conv(im[0].astype(np.float64), w1, b1, 2, 1), "leaky")).max() for im in images)
    assert stats["in0"].absmax == pytest.approx(max(np.abs(im).max() for im in images))
    assert stats["c1"].absmax == pytest.approx(c1_max, rel=1e-5)
    assert stats["in0"].histogram.sum() == sum(int(np.count_nonzero(im)) for im in images)
    assert 0 < stats["in0"].scale("kl") and stats["in0"].scale("minmax") == pytest.approx(127 / stats["in0"].absmax)


def test_already_int8_model_is_refused(tiny, tmp_path):
    model = q.load_float_ncnn(tiny)
    plans = {layer.name: q.LayerQuant(q.weight_scales(layer), 5.0) for layer in q.quantisable_layers(model)}
    out = q.write_int8_model(model, plans, tmp_path / "int8.param")
    with pytest.raises(q.Int8ExportError, match="already int8"):
        q.load_float_ncnn(out)


# ------------------------------------------------------------------------------------------------
# real weights


@pytest.mark.slow
def test_published_weights_to_ncnn_int8_reach_the_target_map(tmp_path):
    """Issue 13: imported published fp16 weights -> nanoplus export --format ncnn --int8 --calib
    tiny_coco (train) -> mAP on tiny_coco val >= 0.362 through the Python runtime."""
    require(NCNN_FP16_DIR)
    require(TINY_COCO)
    require_module("ncnn")
    require_module("pnnx")
    ckpt = tmp_path / "m416.ckpt"
    cli = [sys.executable, "-m", "nanoplus.cli"]
    subprocess.run(cli + ["import", str(NCNN_FP16_DIR / "nanodet-plus-m_416.param"), "--config", "nanodet-plus-m_416",
                          "--out", str(ckpt)], check=True, cwd=REPO_ROOT)
    subprocess.run(cli + ["export", str(ckpt), "--format", "ncnn", "--int8", "--calib", str(TINY_COCO),
                          "--threads", "1", "--json", str(tmp_path / "export.json")], check=True, cwd=REPO_ROOT)
    int8 = tmp_path / "m416_ncnn_int8.param"
    assert json.loads(int8.with_suffix(".json").read_text())["precision"] == "int8"
    from nanoplus.export.parity import evaluate_file
    from nanoplus.runtime.datasets import load_dataset

    metrics = evaluate_file(int8, load_dataset(str(TINY_COCO), split="val"), threads=1)
    assert metrics["mAP"] >= 0.362


@pytest.fixture(scope="module")
def published_int8(tmp_path_factory):
    """The published fp16 ncnn file quantised by our writer: minmax scales from 4 tiny_coco train
    images, every convolution int8 (a few seconds; the KL + budget path is the slow test's)."""
    require_module("ncnn")
    param = require(NCNN_FP16_DIR / "nanodet-plus-m_416.param")
    from nanoplus.runtime.datasets import load_dataset
    from nanoplus.runtime.metadata import ModelMeta

    meta = ModelMeta.for_foreign_model(80, (416, 416), layout="CN", score_activation="none", input_name="in0",
                                       output_name="out0", model_name="nanodet-plus-m_416", precision="fp16")
    out = tmp_path_factory.mktemp("published") / "m416_int8.param"
    calib = load_dataset(str(require(TINY_COCO)), split="train")
    path, report = q.quantize_ncnn(param, meta, calib, out, max_images=4, method="minmax", budget=None, threads=1,
                                   progress=lambda s: None)
    return param, path, report


def test_published_weights_quantised_run_int8_close_to_float(published_int8):
    """Real weights, fast: 110 convolutions int8, ncnn runs them, output cosine to fp16 > 0.95 on a photo,
    detections of the photo kept (same confident classes), file about half the fp16 size."""
    import cv2

    from nanoplus.runtime.detector import Detector

    float_param, int8_param, report = published_int8
    assert report.quantised_layers == 110 and report.map_float is None
    text = int8_param.read_text()
    assert text.count("8=102") + text.count("8=101") > 40  # requantising int8 -> int8 chains
    assert int8_param.with_suffix(".bin").stat().st_size < 0.6 * float_param.with_suffix(".bin").stat().st_size
    img = cv2.imread(str(require(NCNN_FP16_DIR.parents[1] / "images" / "dog.jpg")))
    fp = Detector(float_param, backend="ncnn", threads=1, precision="fp32")
    i8 = Detector(int8_param, backend="ncnn", threads=1, precision="fp32")
    assert i8.meta.precision == "int8"
    blob, _ = fp.preprocess(img)
    a, b = np.asarray(fp.infer(blob), np.float64), np.asarray(i8.infer(blob), np.float64)
    assert _cosine(a, b) > 0.95 and np.abs(a - b).max() > 1e-3  # measured 0.975 (minmax, 4 images)
    confident = lambda d: {int(c) for c, s in zip(d.class_ids, d.scores) if s > 0.5}  # noqa: E731
    assert confident(fp(img)) == confident(i8(img)) and confident(fp(img))
