"""examples/onnxruntime_detect.py (one file, numpy + OpenCV + onnxruntime) gives the runtime's detections."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import IMAGES, REPO_ROOT, require, require_module
from nanoplus.runtime.detector import Detector
from nanoplus.runtime.images import read_image
from test_detector import _synthetic_onnx

EXAMPLE = REPO_ROOT / "examples" / "onnxruntime_detect.py"


def _example_module():
    spec = importlib.util.spec_from_file_location("onnxruntime_detect", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _set_resize_mode(path, mode):
    onnx = require_module("onnx")
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == "nanoplus":
            meta = json.loads(prop.value)
            meta["resize_mode"] = mode
            prop.value = json.dumps(meta)
    onnx.save(model, str(path))


def test_example_imports_only_numpy_opencv_and_onnxruntime():
    source = EXAMPLE.read_text()
    imports = {line.split()[1].split(".")[0] for line in source.splitlines() if line.startswith(("import ", "from "))}
    assert imports <= {"__future__", "argparse", "json", "math", "sys", "cv2", "numpy", "onnxruntime"}, imports


@pytest.mark.parametrize("resize_mode", ["stretch", "letterbox"])
def test_example_gives_the_runtimes_detections(tmp_path, resize_mode):
    require_module("onnxruntime")
    path, _ = _synthetic_onnx(tmp_path / "m.onnx", hw=(64, 96), gain=0.5)
    _set_resize_mode(path, resize_mode)
    example = _example_module().NanoDetPlus(str(path), score_thr=0.3, iou_thr=0.6, max_det=100, threads=1)
    runtime = Detector(path, threads=1, score_thr=0.3, iou_thr=0.6, max_det=100)
    assert runtime.meta.resize_mode == resize_mode
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (120, 200, 3), dtype=np.uint8), np.full((300, 90, 3), 200, np.uint8)]
    for name in ("dog", "person"):
        if (IMAGES / f"{name}.jpg").exists():
            images.append(read_image(IMAGES / f"{name}.jpg"))
    compared = 0
    for img in images:
        got, want = example(img), runtime(img)
        assert len(got) == len(want)
        compared += len(want)
        for (box, score, name), wbox, wscore, wname in zip(got, want.boxes, want.scores, want.class_names):
            assert name == wname and abs(score - wscore) < 1e-5  # float32 round-off of the normalisation
            np.testing.assert_allclose(box, wbox, atol=1e-3)
    assert compared > 20


def test_example_command_line(tmp_path):
    require_module("onnxruntime")
    path, _ = _synthetic_onnx(tmp_path / "m.onnx", hw=(64, 96), gain=0.5)
    image = require(IMAGES / "dog.jpg")
    result = subprocess.run([sys.executable, str(EXAMPLE), str(path), str(image), "--save", str(tmp_path / "d.jpg")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    want = Detector(path, threads=1)(read_image(image))
    lines = result.stdout.splitlines()
    assert len(lines) == len(want) > 0 and lines[0].split()[0] == want.class_names[0]
    assert read_image(tmp_path / "d.jpg").shape == read_image(image).shape
