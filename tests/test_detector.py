"""Detector on the published NanoDet-Plus models (foreign ncnn files) and on small synthetic models."""
from __future__ import annotations

import logging
import sys

import cv2
import numpy as np
import pytest

from conftest import IMAGES, NCNN_FP16_DIR, NCNN_INT8_DIR, require, require_module
from nanoplus.errors import NanoplusError
from nanoplus.runtime.backends import BackendUnavailableError, ModelFileError, read_ncnn_blob_names
from nanoplus.runtime.coco import COCO_CATEGORY_IDS, COCO_CLASS_NAMES, is_coco
from nanoplus.runtime.detector import Detector, ImageReadError, input_size_from_name, parse_input_size
from nanoplus.runtime.metadata import MetadataError, ModelMeta, write_sidecar
from nanoplus.runtime.postprocess import ModelOutputError, make_center_priors, sigmoid
from nanoplus.runtime.preprocess import boxes_to_original


def _iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def fp16():
    require_module("ncnn")
    return Detector(require(NCNN_FP16_DIR / "nanodet-plus-m_416.param"), threads=1)


@pytest.fixture(scope="module")
def int8():
    require_module("ncnn")
    return Detector(require(NCNN_INT8_DIR / "nanodet-plus-m_416-int8.param"), threads=1)


def _link_ncnn(src_param, dst_param):
    """The published files under another name (symlinks; nothing is copied)."""
    dst_param.symlink_to(src_param)
    dst_param.with_suffix(".bin").symlink_to(src_param.with_suffix(".bin"))
    return dst_param


# -- published models ---------------------------------------------------------------------------------
def test_foreign_ncnn_models_are_detected(fp16, int8):
    """ASSETS.md: fp16 -> raw logits (112, N) from in0/out0; int8 -> sigmoid (N, 112) from data/output."""
    for det in (fp16, int8):
        assert det.meta.num_classes == 80 and list(det.meta.class_names) == list(COCO_CLASS_NAMES)
        assert list(det.meta.input_hw) == [416, 416]
        assert det.backend.name == "ncnn" and det.backend.version
    assert (fp16.meta.layout, fp16.meta.score_activation) == ("CN", "none")
    assert (fp16.meta.input_name, fp16.meta.output_name) == ("in0", "out0")
    assert (int8.meta.layout, int8.meta.score_activation) == ("NC", "sigmoid")
    assert (int8.meta.input_name, int8.meta.output_name) == ("data", "output")


def test_input_size_from_name_is_announced(caplog):
    require_module("ncnn")
    with caplog.at_level(logging.WARNING, logger="nanoplus"):
        Detector(require(NCNN_FP16_DIR), threads=1)  # a folder with one .param
    assert "taken from the file name" in caplog.text and "--input-size" in caplog.text


def test_dog_photo_fp16(fp16):
    """The fast real-weights check: the dog photo's three objects, where they are."""
    dets = fp16(require(IMAGES / "dog.jpg"))
    assert dets.boxes.dtype == np.float32 and dets.class_ids.dtype == np.int64
    assert np.all(np.diff(dets.scores) <= 0) and np.all(dets.scores > 0.35)
    found = {name: box for name, box in zip(dets.class_names, dets.boxes)}
    # approximate positions in the 768x576 photo
    for name, where in {"dog": (130, 225, 315, 540), "bicycle": (125, 135, 570, 425), "car": (468, 77, 700, 172)}.items():
        assert name in found, dets.summary()
        assert _iou(found[name], where) > 0.85, (name, found[name])


def test_fp16_and_int8_agree(fp16, int8):
    for name in ("dog", "eagle", "giraffe", "person"):
        a = fp16(require(IMAGES / f"{name}.jpg"))
        b = int8(require(IMAGES / f"{name}.jpg"))
        assert len(a) and len(b)
        # every confident int8 detection has a matching fp16 one: same class, IoU > 0.85, and a
        # score within 0.15 (int8 quantisation moves scores by up to ~0.13 on these photos)
        for box, score, cid in zip(b.boxes, b.scores, b.class_ids):
            if score < 0.5:
                continue
            same = [(_iou(box, bx), s) for bx, s, c in zip(a.boxes, a.scores, a.class_ids) if c == cid]
            assert same, (name, COCO_CLASS_NAMES[cid])
            best_iou, best_score = max(same)
            assert best_iou > 0.85 and abs(best_score - score) < 0.15, (name, COCO_CLASS_NAMES[cid])


def test_stages_equal_call(fp16, int8):
    img = cv2.imread(str(require(IMAGES / "horses.jpg")))
    for det in (fp16, int8):
        blob, matrix = det.preprocess(img)
        raw = det.infer(blob)
        assert raw.shape == (3598, 112) and raw.dtype == np.float32
        cls = raw[:, :80]
        assert cls.min() >= 0 and cls.max() <= 1  # sigmoid scores whatever the model emits
        staged = det.postprocess(raw, matrix, img.shape[:2])
        called = det(img)
        np.testing.assert_allclose(staged.boxes, called.boxes, atol=1e-4)
        np.testing.assert_allclose(staged.scores, called.scores, atol=1e-6)
        np.testing.assert_array_equal(staged.class_ids, called.class_ids)
    # fp16's infer is sigmoid(logits) of the engine output
    blob, _ = fp16.preprocess(img)
    engine = fp16.backend.run(blob)
    np.testing.assert_allclose(fp16.infer(blob)[:, :80], sigmoid(engine[:80].T), atol=1e-6)
    np.testing.assert_array_equal(fp16.infer(blob)[:, 80:], engine[80:].T)


def test_thresholds_and_single_label(fp16):
    img = cv2.imread(str(require(IMAGES / "kite.jpg")))
    many = Detector(require(NCNN_FP16_DIR), threads=1, score_thr=0.05, max_det=100)(img)
    few = fp16(img)
    assert len(many) > len(few) > 0
    capped = Detector(require(NCNN_FP16_DIR), threads=1, score_thr=0.05, max_det=7)(img)
    np.testing.assert_allclose(capped.scores, many.scores[:7])
    single = Detector(require(NCNN_FP16_DIR), threads=1, score_thr=0.05, multi_label=False)(img)
    boxes = single.boxes
    # single-label: no two detections share a box (one class per point)
    assert len({tuple(np.round(b, 3)) for b in boxes}) == len(boxes)


def test_flags_override_detection(tmp_path):
    require_module("ncnn")
    param = require(NCNN_FP16_DIR / "nanodet-plus-m_416.param")
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"thing{i}" for i in range(80)))
    det = Detector(param, threads=1, class_names=str(names), score_activation="logits", layout="CN")
    assert det.meta.class_names[17] == "thing17"
    with pytest.raises(ModelOutputError, match="does not look like NanoDet-Plus"):
        Detector(param, threads=1, layout="NC")  # the output is (112, N), not (N, 112)
    with pytest.raises(NanoplusError, match="class names"):
        bad = tmp_path / "bad.txt"
        bad.write_text("a\nb\n")
        Detector(param, threads=1, class_names=str(bad))


def test_wrong_input_size_is_a_clear_error():
    require_module("ncnn")
    with pytest.raises(ModelOutputError, match="--input-size"):
        Detector(require(NCNN_FP16_DIR / "nanodet-plus-m_416.param"), threads=1, input_size=320, layout="NC")


def test_no_size_anywhere_is_a_clear_error(tmp_path):
    require_module("ncnn")
    param = _link_ncnn(require(NCNN_FP16_DIR / "nanodet-plus-m_416.param"), tmp_path / "model.param")
    with pytest.raises(MetadataError, match="--input-size"):
        Detector(param)
    det = Detector(param, threads=1, input_size="416")
    assert det.meta.layout == "CN" and len(det(require(IMAGES / "dog.jpg"))) >= 3


def test_sidecar_metadata_is_used(tmp_path, caplog):
    require_module("ncnn")
    param = _link_ncnn(require(NCNN_INT8_DIR / "nanodet-plus-m_416-int8.param"), tmp_path / "coco.param")
    meta = ModelMeta(class_names=[f"c{i}" for i in range(80)], input_hw=[416, 416], layout="NC",
                     score_activation="sigmoid", input_name="data", output_name="output", model_name="m")
    write_sidecar(meta, param)
    with caplog.at_level(logging.WARNING, logger="nanoplus"):
        det = Detector(param, threads=1)
    assert "file name" not in caplog.text
    dets = det(require(IMAGES / "dog.jpg"))
    assert "c16" in dets.class_names  # dog, under the sidecar's names
    # a sidecar that disagrees with the file is caught on the first run
    write_sidecar(ModelMeta(class_names=["a"] * 79, input_hw=[416, 416], input_name="data", output_name="output"), param)
    with pytest.raises(ModelOutputError, match="metadata"):
        Detector(param, threads=1)(require(IMAGES / "dog.jpg"))


def test_missing_and_corrupt_model_files(tmp_path):
    require_module("ncnn")
    with pytest.raises(ModelFileError, match="not found"):
        Detector(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.param"
    bad.write_text("not an ncnn file\n")
    (tmp_path / "bad.bin").write_bytes(b"\0" * 16)
    with pytest.raises(ModelFileError, match="7767517"):
        Detector(bad)
    # a valid graph with truncated weights: ncnn's load_model fails, which must be caught here
    src = require(NCNN_FP16_DIR / "nanodet-plus-m_416.param")
    trunc = tmp_path / "trunc_416.param"
    trunc.symlink_to(src)
    trunc.with_suffix(".bin").write_bytes(src.with_suffix(".bin").read_bytes()[:5000])
    with pytest.raises(ModelFileError, match="weights"):
        Detector(trunc)
    with pytest.raises(ModelFileError, match="unknown model file type"):
        (tmp_path / "model.tflite").write_bytes(b"x")
        Detector(tmp_path / "model.tflite")
    (tmp_path / "b.onnx").write_bytes(b"junk")
    with pytest.raises(ModelFileError, match="exactly one"):
        Detector(tmp_path)  # a folder with two model files


def test_unreadable_image(fp16, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not a jpeg")
    with pytest.raises(ImageReadError, match="bad.jpg"):
        fp16(bad)


def test_ncnn_blob_names_from_param():
    assert read_ncnn_blob_names(require(NCNN_FP16_DIR / "nanodet-plus-m_416.param")) == ("in0", "out0")
    assert read_ncnn_blob_names(require(NCNN_INT8_DIR / "nanodet-plus-m_416-int8.param")) == ("data", "output")


def test_small_helpers():
    assert input_size_from_name(NCNN_FP16_DIR / "nanodet-plus-m_416.param") == 416
    assert input_size_from_name(NCNN_FP16_DIR / "nanodet-plus-m-1.5x_320.onnx") == 320
    assert input_size_from_name(NCNN_FP16_DIR / "model.param") is None
    assert parse_input_size("320x416") == (320, 416) and parse_input_size(416) == (416, 416)
    with pytest.raises(NanoplusError):
        parse_input_size("big")
    assert len(COCO_CATEGORY_IDS) == 80 and COCO_CATEGORY_IDS[0] == 1 and COCO_CATEGORY_IDS[-1] == 90
    assert COCO_CATEGORY_IDS[COCO_CLASS_NAMES.index("dog")] == 18 and is_coco(COCO_CLASS_NAMES)


# -- synthetic ONNX models: embedded metadata, onnxruntime and OpenVINO ----------------------------------
def _synthetic_onnx(path, hw=(64, 96), num_classes=3, meta=True, layout="NC", output_shape=None, seed=0, gain=0.0):
    """A tiny ONNX graph whose output is a fixed tensor plus gain * mean(input): known output, any
    backend (gain 0: the same output for every image)."""
    onnx = require_module("onnx")
    from onnx import TensorProto, helper, numpy_helper

    n = len(make_center_priors(hw, (8, 16, 32, 64)))
    shape = output_shape or ((1, n, num_classes + 32) if layout == "NC" else (1, num_classes + 32, n))
    rng = np.random.default_rng(seed)
    const = rng.normal(0, 1.5, shape).astype(np.float32)
    if layout == "NC" and output_shape is None:
        const[..., :num_classes] = 1 / (1 + np.exp(-(const[..., :num_classes] - 1)))  # sigmoid scores
    nodes = [
        helper.make_node("ReduceMean", ["data"], ["m"], keepdims=1),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Reshape", ["z", "shape"], ["z3"]),
        helper.make_node("Add", ["z3", "const"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, *hw])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, list(shape))],
        initializer=[numpy_helper.from_array(np.full(1, gain, np.float32), "zero"),
                     numpy_helper.from_array(np.array([1] * len(shape), np.int64), "shape"),
                     numpy_helper.from_array(const, "const")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    if meta:
        m = ModelMeta(class_names=["a", "b", "c"][:num_classes], input_hw=list(hw), layout=layout,
                      score_activation="sigmoid", model_name="synthetic")
        helper.set_model_props(model, {"nanoplus": m.to_json()})
    onnx.save(model, str(path))
    return path, const[0]


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_onnx_embedded_metadata(tmp_path, backend):
    require_module(backend)
    path, const = _synthetic_onnx(tmp_path / "synthetic.onnx")
    det = Detector(path, backend=backend, threads=1, score_thr=0.3)
    assert det.backend.name == backend and det.backend.precision == "fp32"
    assert det.meta.class_names == ["a", "b", "c"] and list(det.meta.input_hw) == [64, 96]
    img = np.random.default_rng(0).integers(0, 255, (120, 180, 3), dtype=np.uint8)
    blob, matrix = det.preprocess(img)
    np.testing.assert_allclose(det.infer(blob), const, atol=1e-5)
    dets = det(img)
    # the same detections as decoding the known output by hand
    from nanoplus.runtime.postprocess import postprocess

    boxes, scores, labels = postprocess(const, (64, 96), (8, 16, 32, 64), 7, 0.3, 0.6, 100, True)
    assert len(dets) == len(boxes) > 0
    np.testing.assert_allclose(dets.boxes, boxes_to_original(boxes, matrix, img.shape[:2]), atol=1e-3)
    assert dets.class_names == [["a", "b", "c"][i] for i in labels]
    # the way back inside the decoding call (the matrix preprocess just made) is boxes_to_original's,
    # bit for bit, and a matrix of the caller's own (a copy, another size) takes boxes_to_original itself
    raw = det.infer(blob)
    for m, src_hw in ((matrix, img.shape[:2]), (matrix.copy(), img.shape[:2]), (np.diag([0.5, 0.25, 1.0]), (256, 192))):
        got = det.postprocess(raw, m, src_hw)
        ours = det._decoder(raw, det.score_thr, det.iou_thr, det.max_det, True)
        np.testing.assert_array_equal(got.boxes, boxes_to_original(ours[0], m, src_hw))
        np.testing.assert_array_equal(got.scores, dets.scores)


def test_onnx_foreign_channels_first_and_static_size(tmp_path):
    require_module("onnxruntime")
    path, const = _synthetic_onnx(tmp_path / "upstream.onnx", hw=(64, 64), meta=False, layout="CN")
    det = Detector(path, threads=1)
    # size from the graph's static input shape, layout and logits detected, generic names for 3 classes
    assert list(det.meta.input_hw) == [64, 64] and det.meta.layout == "CN" and det.meta.score_activation == "none"
    assert det.meta.class_names == ["class0", "class1", "class2"]
    np.testing.assert_allclose(det.infer(det.preprocess(np.zeros((64, 64, 3), np.uint8))[0]),
                               np.concatenate([sigmoid(const[:3]), const[3:]]).T, atol=1e-6)


def test_output_that_is_not_nanodet(tmp_path):
    require_module("onnxruntime")
    path, _ = _synthetic_onnx(tmp_path / "other.onnx", hw=(64, 64), meta=False, output_shape=(1, 10, 5))
    with pytest.raises(ModelOutputError, match="does not look like NanoDet-Plus"):
        Detector(path)


def test_corrupt_onnx(tmp_path):
    require_module("onnxruntime")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    with pytest.raises(ModelFileError, match="bad.onnx"):
        Detector(bad)


def test_missing_engine_names_the_extra(tmp_path, monkeypatch):
    path, _ = _synthetic_onnx(tmp_path / "m.onnx")
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(BackendUnavailableError, match=r'pip install "openvino>='):
        Detector(path, backend="openvino")


def test_torch_backend_on_imported_weights(tmp_path):
    """A nanoplus checkpoint (the published weights imported from ncnn) through the torch backend
    gives the ncnn model's detections."""
    require_module("torch")
    from nanoplus.cli import main

    out = tmp_path / "m416.ckpt"
    rc = main(["import", str(require(NCNN_FP16_DIR / "nanodet-plus-m_416.param")), "--config", "nanodet-plus-m_416",
               "--out", str(out)])
    assert rc == 0 and out.is_file()
    det_torch = Detector(out, threads=1)
    det_ncnn = Detector(NCNN_FP16_DIR / "nanodet-plus-m_416.param", threads=1, precision="fp32")
    assert det_torch.backend.name == "torch" and det_torch.meta.num_classes == 80
    img = cv2.imread(str(require(IMAGES / "dog.jpg")))
    a, b = det_torch(img), det_ncnn(img)
    np.testing.assert_array_equal(a.class_ids, b.class_ids)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=0.5)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-3)
    # bf16 autocast (the PyTorch side of a bf16 benchmark): the same objects, bf16-close
    det_bf16 = Detector(out, threads=1, precision="bf16")
    assert det_bf16.backend.precision == "bf16"
    c = det_bf16(img)
    assert len(c) >= 1 and c.class_names[0] == a.class_names[0]
    np.testing.assert_allclose(c.boxes[0], a.boxes[0], atol=8.0)
    assert abs(float(c.scores[0]) - float(a.scores[0])) < 0.05
    with pytest.raises(NanoplusError, match="fp32.*bf16"):
        Detector(out, threads=1, precision="fp16")


# -- one model exported to every format: every backend gives the same detections -------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The published weights imported into a checkpoint and exported to ONNX, OpenVINO and NCNN."""
    require_module("torch")
    from nanoplus.cli import main

    folder = tmp_path_factory.mktemp("exported")
    ckpt = folder / "m416.ckpt"
    assert main(["import", str(require(NCNN_FP16_DIR / "nanodet-plus-m_416.param")), "--config", "nanodet-plus-m_416",
                 "--out", str(ckpt)]) == 0
    assert main(["export", str(ckpt), "--format", "all", "--out-dir", str(folder), "--no-parity"]) == 0
    return folder


BACKEND_CASES = [("m416.onnx", "onnxruntime"), ("m416.onnx", "openvino"), ("m416_openvino.xml", "openvino"),
                 ("m416_ncnn.param", "ncnn")]


@pytest.mark.parametrize("file_name,backend", BACKEND_CASES)
def test_every_backend_gives_the_checkpoints_detections(exported, file_name, backend):
    """Boxes within 0.5 px, same classes, scores within 1e-3 of the PyTorch checkpoint, on the shared
    photos (detections within 0.01 of the score threshold may appear on one side only)."""
    require_module(backend)
    reference = Detector(exported / "m416.ckpt", threads=1)
    other = Detector(exported / file_name, backend=backend, threads=1, precision="fp32")
    assert other.backend.name == backend and other.meta.class_names == reference.meta.class_names
    margin = reference.score_thr + 0.01
    for name in ("dog", "eagle", "giraffe", "horses", "kite", "person", "scream"):
        img = cv2.imread(str(require(IMAGES / f"{name}.jpg")))
        a, b = reference(img), other(img)
        for x, y in ((a, b), (b, a)):
            for box, score, cid in zip(x.boxes, x.scores, x.class_ids):
                if score < margin:
                    continue
                match = [(np.abs(box - by).max(), abs(score - sy)) for by, sy, cy in zip(y.boxes, y.scores, y.class_ids)
                         if cy == cid and np.abs(box - by).max() <= 0.5]
                assert match, f"{name}: {COCO_CLASS_NAMES[cid]} {score:.3f} {box} has no counterpart"
                assert min(d for _, d in match) <= 1e-3, f"{name}: {COCO_CLASS_NAMES[cid]} score differs"


# -- hostile model files (issue 12 item 8) ---------------------------------------------------------------
def test_openvino_ir_without_layers(tmp_path):
    require_module("openvino")
    xml = tmp_path / "empty.xml"
    xml.write_text('<?xml version="1.0"?>\n<net name="x" version="11"><layers></layers><edges></edges></net>\n')
    xml.with_suffix(".bin").write_bytes(b"")
    with pytest.raises(ModelFileError, match=r"empty\.xml: OpenVINO reads 0 inputs and 0 outputs"):
        Detector(xml)


def test_sidecar_that_is_not_utf8(tmp_path, caplog):
    """A damaged sidecar: ignored with a warning when the ONNX carries its own metadata, a clear
    error naming it when the sidecar is all there is."""
    require_module("onnxruntime")
    path, _ = _synthetic_onnx(tmp_path / "m.onnx")
    path.with_suffix(".json").write_bytes(b'{"class_names": ["\xe9"]}')
    with caplog.at_level(logging.WARNING, logger="nanoplus"):
        det = Detector(path)
    assert det.meta.class_names == ["a", "b", "c"] and "m.json: the metadata sidecar is not UTF-8" in caplog.text
    foreign, _ = _synthetic_onnx(tmp_path / "f.onnx", meta=False)
    foreign.with_suffix(".json").write_bytes(b"\xff\xfe")
    with pytest.raises(MetadataError, match=r"f\.json: the metadata sidecar is not UTF-8 text"):
        Detector(foreign)
