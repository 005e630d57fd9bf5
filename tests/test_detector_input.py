"""Detector input checks (grey, BGRA, uint16 accepted; the rest refused with what is expected) and
one Detector shared between threads, on every backend."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from conftest import NCNN_FP16_DIR, require, require_module
from nanoplus.errors import NanoplusError
from nanoplus.runtime.detector import Detector
from nanoplus.runtime.images import ImageArrayError, as_bgr_uint8
from test_detector import _synthetic_onnx


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    require_module("onnxruntime")
    path, _ = _synthetic_onnx(tmp_path_factory.mktemp("m") / "m.onnx", gain=0.5)
    return Detector(path, threads=1, score_thr=0.3)


RNG = np.random.default_rng(0)
BGR = RNG.integers(0, 256, (30, 40, 3), dtype=np.uint8)
GREY = RNG.integers(0, 256, (30, 40), dtype=np.uint8)

# image given -> the BGR uint8 image it means, built here independently of the code under test
ACCEPTED = {
    "bgr": (BGR, BGR),
    "grey_hw": (GREY, np.stack([GREY] * 3, axis=-1)),
    "grey_hw1": (GREY[:, :, None], np.stack([GREY] * 3, axis=-1)),
    "bgra": (np.concatenate([BGR, np.full((30, 40, 1), 7, np.uint8)], axis=-1), BGR),
    "uint16": (BGR.astype(np.uint16) * 257, BGR),  # 8-bit v written as 16-bit is v * 257
    "uint16_grey": (GREY.astype(np.uint16) * 257, np.stack([GREY] * 3, axis=-1)),
    "flipped_view": (BGR[:, ::-1], np.ascontiguousarray(BGR[:, ::-1])),
}


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_accepted_images_mean_what_they_obviously_mean(detector, case):
    given, meant = ACCEPTED[case]
    np.testing.assert_array_equal(as_bgr_uint8(given), meant)
    blob, matrix = detector.preprocess(given)
    want_blob, want_matrix = detector.preprocess(meant)
    np.testing.assert_array_equal(blob, want_blob)
    got, want = detector(given), detector(meant)
    assert len(got) == len(want) > 0
    np.testing.assert_array_equal(got.boxes, want.boxes)
    np.testing.assert_array_equal(got.scores, want.scores)


REFUSED = {
    "two_channels": (np.zeros((30, 40, 2), np.uint8), "shape \\(30, 40, 2\\)"),
    "channels_first": (np.zeros((3, 30, 40), np.uint8), "channels first"),
    "batched": (np.zeros((1, 30, 40, 3), np.uint8), "a batch; pass one image at a time"),
    "empty": (np.zeros((0, 40, 3), np.uint8), "an empty image"),
    "one_dimensional": (np.zeros(30, np.uint8), "shape \\(30,\\)"),
    "int32": (BGR.astype(np.int32), "int32"),
    "float32_0_1": (BGR / 255.0, "float64 \\(a float image in 0..1"),
    "float16": (BGR.astype(np.float16), "float16"),
    "bool": (BGR > 128, "bool"),
    "list": (BGR.tolist(), "got a list"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_other_images_are_refused_saying_what_is_expected(detector, case):
    given, match = REFUSED[case]
    for call in (detector, detector.preprocess):
        with pytest.raises(ImageArrayError, match=match) as info:
            call(given)
        assert isinstance(info.value, NanoplusError)
        assert "expected a BGR image as OpenCV gives it: a numpy array (height, width, 3) of uint8" in str(info.value)


# -- threads --------------------------------------------------------------------------------------------
def _shared_by_threads(detector, images, threads=4, rounds=12):
    """Every thread runs every image ``rounds`` times on the one detector; returns the failures
    and whether every result equals the one-thread result for its image."""
    expected = [detector(img) for img in images]
    start = threading.Barrier(threads)
    failures, mismatches = [], []

    def work(offset):
        start.wait()
        for k in range(rounds * len(images)):
            index = (k + offset) % len(images)
            try:
                got = detector(images[index])
            except Exception as e:  # collected: the test reports them all
                failures.append(repr(e))
                continue
            want = expected[index]
            if len(got) != len(want) or not np.array_equal(got.scores, want.scores) or not np.array_equal(got.boxes, want.boxes):
                mismatches.append(index)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return failures, mismatches


def _brightness_images():
    # the synthetic model's scores move with the image's mean: each image has its own detections
    return [np.full((240, 320, 3), value, np.uint8) for value in (0, 60, 120, 250)]


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_one_detector_shared_by_threads(tmp_path, backend):
    require_module(backend)
    path, _ = _synthetic_onnx(tmp_path / "m.onnx", hw=(320, 320), gain=0.5)
    detector = Detector(path, backend=backend, threads=1, score_thr=0.3)
    images = _brightness_images()
    assert len({len(detector(img)) for img in images}) > 1, "the images must give different detections"
    failures, mismatches = _shared_by_threads(detector, images)
    assert not failures, f"{len(failures)} calls failed, e.g. {failures[0]}"
    assert not mismatches, f"{len(mismatches)} calls got another image's detections"


def test_one_ncnn_detector_shared_by_threads():
    require_module("ncnn")
    detector = Detector(require(NCNN_FP16_DIR / "nanodet-plus-m_416.param"), threads=1)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (96, 128, 3), dtype=np.uint8) for _ in range(2)]
    failures, mismatches = _shared_by_threads(detector, images, threads=2, rounds=2)
    assert not failures and not mismatches
