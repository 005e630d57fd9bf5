"""bench/thin_boxes.py (the README's thin-box numbers): its counts on boxes whose sizes are known."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from conftest import REPO_ROOT

torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")

from nanoplus.runtime.metadata import ModelMeta  # noqa: E402
from nanoplus.train.config import load_config  # noqa: E402
from nanoplus.train.dataset import DetectionDataset  # noqa: E402
from nanoplus.train.model import build_model  # noqa: E402


def _script():
    spec = importlib.util.spec_from_file_location("thin_boxes", REPO_ROOT / "bench" / "thin_boxes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Record:
    def __init__(self, path, boxes, labels, h, w):
        self.path, self.image_id, self.height, self.width = str(path), 1, h, w
        self.boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        self.labels = np.asarray(labels, np.int64)


def test_counts_thin_and_out_of_view_boxes(tmp_path):
    path = tmp_path / "img.png"
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8))
    # input = image size (no resize): a normal box, a 0.5 px wide one, and one of zero width on the
    # right border (what the warp leaves of an object moved out of view)
    records = [_Record(path, [[10, 10, 50, 40], [20, 20, 20.5, 40], [96, 5, 96, 30]], [0, 1, 2], 64, 96)] * 2
    meta = ModelMeta(class_names=["a", "b", "c"], input_hw=[64, 96])
    dataset = DetectionDataset(records, meta, augment_cfg=None, min_box_size=0)
    torch.manual_seed(0)
    model = build_model(load_config("nanodet-plus-m_416", ["model.num_classes=3"]).model, load_pretrained=False).eval()
    counts = _script().thin_box_effect(model, dataset, epoch=0, batch_size=2)
    assert (counts["boxes"], counts["thin"], counts["out_of_view"]) == (6, 4, 2)
    assert counts["thin_with_positive"] <= counts["positives_on_thin"] <= counts["positives_keep"]
    assert counts["taken_from_real"] <= counts["positives_on_thin"]
    assert counts["positives_drop"] > 0  # the normal box is assigned
    if counts["positives_on_thin"] == 0:
        assert counts["positives_keep"] == counts["positives_drop"]
