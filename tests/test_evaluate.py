"""COCO evaluation against hand-computed average precisions and the shared tiny_coco ground truth."""
from __future__ import annotations

import contextlib
import io
import json
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from conftest import TINY_COCO, require
from nanoplus.runtime.datasets import load_dataset
from nanoplus.runtime.evaluate import (EvaluationError, evaluate_detections, format_metrics,
                                       write_coco_results)


@pytest.fixture
def squares(tmp_path):
    """10 images of 200 x 200, each with one 100 x 100 box of class 'a' (category id 5); images
    1 and 2 also hold a 60 x 60 box of class 'b' (category id 9). Class 'c' has no ground truth."""
    images, anns = [], []
    (tmp_path / "val").mkdir()
    for i in range(1, 11):
        cv2.imwrite(str(tmp_path / "val" / f"{i}.png"), np.zeros((200, 200, 3), np.uint8))
        images.append({"id": i, "file_name": f"{i}.png", "height": 200, "width": 200})
        anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 5, "bbox": [50, 50, 100, 100],
                     "area": 10000, "iscrowd": 0})
        if i <= 2:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 9, "bbox": [0, 0, 60, 60],
                         "area": 3600, "iscrowd": 0})
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val.json").write_text(json.dumps({
        "images": images, "annotations": anns,
        "categories": [{"id": 5, "name": "a"}, {"id": 9, "name": "b"}, {"id": 11, "name": "c"}]}))
    return load_dataset(tmp_path, "val", log=False)


def gt_predictions(ds, dx=0.0, classes=(0, 1, 2)):
    preds = {}
    for r in ds.records:
        keep = np.isin(r.labels, classes)
        preds[r.image_id] = (r.boxes[keep] + np.float32([dx, 0, dx, 0]), np.ones(keep.sum()), r.labels[keep])
    return preds


def test_ground_truth_as_predictions_scores_one(squares):
    m = evaluate_detections(squares, gt_predictions(squares))
    for key in ("mAP", "AP50", "AP75", "AR100"):
        assert m[key] == pytest.approx(1.0)
    # no small objects (area < 32^2) in the data: pycocotools reports -1 there
    assert m["AP_small"] == -1.0 and m["AP_medium"] == pytest.approx(1.0)
    assert m["per_class"] == {"a": pytest.approx(1.0), "b": pytest.approx(1.0), "c": -1.0}
    assert m["AR1"] == pytest.approx(1.0)  # at most one object per class and image


def test_shifted_boxes_lose_the_strict_thresholds(squares):
    # a 100-px box moved 16 px: IoU = 84 / 116 = 0.724 -> a hit at IoU 0.50 .. 0.70 (5 of the 10
    # thresholds), a miss from 0.75 on; the 60-px boxes: IoU = 44 / 76 = 0.579 -> hits at 0.50, 0.55
    m = evaluate_detections(squares, gt_predictions(squares, dx=16.0))
    assert m["per_class"]["a"] == pytest.approx(0.5)
    assert m["per_class"]["b"] == pytest.approx(0.2)
    assert m["mAP"] == pytest.approx((0.5 + 0.2) / 2)
    assert m["AP50"] == pytest.approx(1.0) and m["AP75"] == pytest.approx(0.0)


def test_half_recall_and_a_false_positive_ranked_first(squares):
    # class a found in 5 of 10 images, no false positives: precision 1 up to recall 0.5, i.e. at
    # 51 of pycocotools' 101 recall points
    preds = {r.image_id: (r.boxes[r.labels == 0], [0.9], [0]) for r in squares.records[:5]}
    assert evaluate_detections(squares, preds)["per_class"]["a"] == pytest.approx(51 / 101)
    # class b: a false positive (0.9) above both hits (0.8, 0.7): precision 0, 1/2, 2/3 at recall
    # 0, 1/2, 1; the interpolated precision is 2/3 at every recall point
    r1, r2 = squares.records[:2]
    preds = {1: ([[120, 120, 180, 180], *r1.boxes[r1.labels == 1].tolist()], [0.9, 0.8], [1, 1]),
             2: (r2.boxes[r2.labels == 1], [0.7], [1])}
    m = evaluate_detections(squares, preds)
    assert m["per_class"]["b"] == pytest.approx(2 / 3)
    assert m["per_class"]["a"] == 0.0 and m["mAP"] == pytest.approx(1 / 3)


def test_no_predictions_give_zero(squares):
    for empty in ({}, [(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))] * len(squares)):
        m = evaluate_detections(squares, empty)
        assert m["mAP"] == 0.0 and m["AP50"] == 0.0 and m["AR100"] == 0.0
        assert m["per_class"] == {"a": 0.0, "b": 0.0, "c": -1.0} and m["num_detections"] == 0


def test_prediction_formats_and_errors(squares):
    as_list = [SimpleNamespace(boxes=r.boxes, scores=np.ones(len(r.boxes)), class_ids=r.labels)
               for r in squares.records]
    assert evaluate_detections(squares, as_list)["mAP"] == pytest.approx(1.0)
    with pytest.raises(EvaluationError, match="class index 3 is out of range for the dataset's 3 classes"):
        evaluate_detections(squares, {1: ([[0, 0, 5, 5]], [0.5], [3])})
    with pytest.raises(EvaluationError, match="image id 99 is not in"):
        evaluate_detections(squares, {99: ([[0, 0, 5, 5]], [0.5], [0])})
    with pytest.raises(EvaluationError, match="2 entries for 10 images"):
        evaluate_detections(squares, as_list[:2])
    with pytest.raises(EvaluationError, match="1 boxes, 2 scores"):
        evaluate_detections(squares, {1: ([[0, 0, 5, 5]], [0.5, 0.4], [0])})


def test_quiet_unless_verbose(squares, capsys):
    evaluate_detections(squares, gt_predictions(squares))
    assert capsys.readouterr().out == ""
    evaluate_detections(squares, gt_predictions(squares), verbose=True)
    assert "Average Precision  (AP) @[ IoU=0.50:0.95" in capsys.readouterr().out


def test_results_json_round_trips_through_loadRes(squares, tmp_path):
    from pycocotools.cocoeval import COCOeval

    preds = gt_predictions(squares, dx=16.0)
    path = write_coco_results(tmp_path / "out" / "results.json", squares, preds)
    rows = json.loads(path.read_text())
    assert len(rows) == 12 and not list(path.parent.glob("*.tmp"))
    assert rows[0] == {"image_id": 1, "category_id": 5, "bbox": [66.0, 50.0, 100.0, 100.0], "score": 1.0}
    assert {r["category_id"] for r in rows} == {5, 9}
    gt = squares.coco()
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(str(path)), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    assert ev.stats[0] == pytest.approx(evaluate_detections(squares, preds)["mAP"])


def test_tiny_coco_ground_truth_and_crowd_regions():
    ds = load_dataset(require(TINY_COCO), "val", log=False)
    preds = gt_predictions(ds, classes=range(80))
    assert evaluate_detections(ds, preds)["mAP"] == pytest.approx(1.0)
    # detections on crowd regions are neither hits nor false positives (pycocotools' iscrowd rule)
    crowded = {}
    for r in ds.records:
        boxes, scores, labels = preds[r.image_id]
        crowded[r.image_id] = (np.concatenate([boxes, r.ignore_boxes]),
                               np.concatenate([scores, np.full(len(r.ignore_boxes), 2.0)]),
                               np.concatenate([labels, r.ignore_labels]))
    assert sum(len(r.ignore_boxes) for r in ds.records) == 5
    assert evaluate_detections(ds, crowded)["mAP"] == pytest.approx(1.0)
    # the same boxes given a class that has no crowd region there are ordinary false positives
    wrong = {k: (b, s, np.where(s > 1, (l + 1) % 80, l)) for k, (b, s, l) in crowded.items()}
    assert evaluate_detections(ds, wrong)["mAP"] < 1.0


def test_voc_difficult_objects_are_ignored(tmp_path):
    from test_datasets import voc_dataset

    root = voc_dataset(tmp_path, {"a": [("dog", (10, 5, 30, 25), False), ("dog", (35, 5, 55, 35), True)],
                                  "b": [("cat", (5, 5, 25, 25), False)]})
    ds = load_dataset(root, "val", log=False)
    dog = ds.class_names.index("dog")
    found = {1: ([[10, 5, 30, 25]], [0.9], [dog]), 2: ([[5, 5, 25, 25]], [0.9], [ds.class_names.index("cat")])}
    assert evaluate_detections(ds, found)["mAP"] == pytest.approx(1.0)  # missing the difficult one is fine
    found[1] = ([[35, 5, 55, 35], [10, 5, 30, 25]], [0.95, 0.9], [dog, dog])
    assert evaluate_detections(ds, found)["mAP"] == pytest.approx(1.0)  # detecting it is no false positive


def test_format_metrics_table(squares):
    text = format_metrics(evaluate_detections(squares, gt_predictions(squares, dx=16.0)))
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["mAP", "AP50", "AP75"]
    assert lines[1].split()[:4] == ["0.350", "1.000", "0.000", "n/a"]
    assert "AP per class" in text and "a  0.500" in text and "c    n/a" in text


def test_a_torch_model_in_memory_runs_the_runtime_path(tmp_path):
    """Detector.from_backend(TorchBackend.from_model(...)) gives what the pipeline composed by hand
    gives (preprocess -> model -> postprocess -> boxes back), and evaluate_detector scores exactly
    those detections: the one path that eval, export --check and the trainer's validation share."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    from nanoplus.runtime.backends import TorchBackend
    from nanoplus.runtime.detector import Detector
    from nanoplus.runtime.evaluate import evaluate_detector
    from nanoplus.runtime.images import read_image
    from nanoplus.runtime.metadata import meta_from_config
    from nanoplus.runtime.postprocess import postprocess
    from nanoplus.runtime.preprocess import boxes_to_original, preprocess
    from nanoplus.train.config import load_config
    from nanoplus.train.model import build_model
    from test_datasets import coco_folder

    cfg = load_config("nanodet-plus-m_416", ["model.num_classes=2", "data.input_hw=[96,128]"])
    torch.manual_seed(0)
    model = build_model(cfg.model, deploy=True, load_pretrained=False).eval()
    with torch.no_grad():  # a non-zero class bias so that some points pass a low threshold
        for conv in model.head.gfl_cls:
            conv.bias[:2] = 1.0
    meta = meta_from_config(cfg, ["dog", "cat"])
    detector = Detector.from_backend(TorchBackend.from_model(model, meta), meta, score_thr=0.05, iou_thr=0.6, max_det=20)

    root = coco_folder(tmp_path, [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [5, 5, 30, 20], "area": 600,
                                   "iscrowd": 0}])
    dataset = load_dataset(root, "val2017", log=False)
    by_hand = []
    for record in dataset.records:
        img = read_image(record.path)
        blob, matrix = preprocess(img, meta)
        with torch.no_grad():
            raw = model(torch.from_numpy(blob))[0].numpy()
        boxes, scores, labels = postprocess(raw, meta.input_hw, meta.strides, meta.reg_max, 0.05, 0.6, 20,
                                            scores_are_sigmoid=False)
        by_hand.append((boxes_to_original(boxes, matrix, img.shape[:2]), scores, labels))
        got = detector(img)
        assert len(got) == len(scores) > 0
        np.testing.assert_allclose(got.boxes, by_hand[-1][0], atol=1e-3)
        np.testing.assert_allclose(got.scores, scores, atol=1e-6)
        np.testing.assert_array_equal(got.class_ids, labels)

    metrics, predictions, info = evaluate_detector(detector, dataset, progress=False)
    assert info["unreadable"] == [] and len(predictions) == len(dataset.records)
    assert metrics == evaluate_detections(dataset, by_hand)
