"""COCO box evaluation with pycocotools, for every dataset format and every backend.

``evaluate_detections(dataset, predictions)`` scores detections against ``dataset.coco_gt`` (see
``runtime/datasets/``: a COCO source's own json, crowd regions included; YOLO / VOC converted).
``predictions`` is either a mapping ``image_id -> detections`` or a sequence aligned with
``dataset.records``; detections are ``(boxes (k, 4) x1y1x2y2 in original pixels, scores (k,),
labels (k,) class indices)`` or any object with ``boxes``, ``scores`` and ``class_ids`` (the
runtime's ``Detections``). An image without detections is fine; with no detections at all every
AP is 0.

Returned numbers are pycocotools' ``stats`` in [0, 1]: ``mAP`` (AP@[.50:.95]), ``AP50``, ``AP75``,
``AP_small``, ``AP_medium``, ``AP_large``, ``AR1``, ``AR10``, ``AR100``, ``AR_small``,
``AR_medium``, ``AR_large``; ``per_class`` maps class name -> AP@[.50:.95]. As in pycocotools, a
value is -1.0 where the data has no ground truth for it (e.g. no small objects, or a class absent
from the split).

``evaluate_detector(detector, dataset)`` is the one path from a model to those numbers: every
record's image through a runtime ``Detector`` (a model file, or a torch model in memory wrapped by
``Detector.from_backend``), then ``evaluate_detections``. ``nanoplus eval``, export's ``--check``
and the trainer's validation all predict with ``predict_records``.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np

from nanoplus.atomic import write_json_atomic
from nanoplus.errors import NanoplusError

logger = logging.getLogger("nanoplus.evaluate")

STAT_NAMES = ("mAP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
              "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")


class EvaluationError(NanoplusError, ValueError):
    """Predictions that do not fit the dataset (unknown image, class index out of range, bad shape)."""


def _as_arrays(det: Any, where: str, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if hasattr(det, "boxes") and hasattr(det, "scores"):
        boxes, scores = det.boxes, det.scores
        labels = det.class_ids if hasattr(det, "class_ids") else det.labels
    else:
        try:
            boxes, scores, labels = det
        except (TypeError, ValueError):
            raise EvaluationError(f"{where}: expected (boxes, scores, labels), got {type(det).__name__}") from None
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4) if np.size(boxes) else np.zeros((0, 4))
    scores = np.asarray(scores, np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if not (len(boxes) == len(scores) == len(labels)):
        raise EvaluationError(f"{where}: {len(boxes)} boxes, {len(scores)} scores and {len(labels)} labels; "
                              "they must have the same length")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes or
                        not np.all(np.equal(np.mod(labels, 1), 0))):
        raise EvaluationError(f"{where}: class index {labels.max() if labels.max() >= num_classes else labels.min()} "
                              f"is out of range for the dataset's {num_classes} classes; is the model "
                              "trained on these classes?")
    return boxes, scores, labels.astype(np.int64)


def _iter_predictions(dataset, predictions) -> list[tuple[int, Any]]:
    """(image_id, detections) pairs from a mapping or a sequence aligned with the records."""
    if isinstance(predictions, Mapping):
        known = {int(img["id"]) for img in dataset.coco_gt["images"]}
        pairs = []
        for image_id, det in predictions.items():
            if int(image_id) not in known:
                raise EvaluationError(f"predictions: image id {image_id} is not in {dataset.source}")
            pairs.append((int(image_id), det))
        return pairs
    if isinstance(predictions, (str, bytes)) or not isinstance(predictions, Sequence):
        raise EvaluationError("predictions must map image_id -> detections or be a list aligned with "
                              f"the dataset's records, got {type(predictions).__name__}")
    if len(predictions) != len(dataset.records):
        raise EvaluationError(f"predictions: {len(predictions)} entries for {len(dataset.records)} images "
                              f"of {dataset.source}; a list must have one entry per record")
    return [(record.image_id, det) for record, det in zip(dataset.records, predictions)]


def coco_results(dataset, predictions) -> list[dict]:
    """Detections in the COCO results format: image_id, category_id (the dataset's own ids),
    bbox [x, y, w, h] in original pixels, score. Non-finite detections are dropped (counted in a
    warning)."""
    category_ids = np.asarray(dataset.category_ids, np.int64)
    results, dropped = [], 0
    for image_id, det in _iter_predictions(dataset, predictions):
        boxes, scores, labels = _as_arrays(det, f"predictions for image {image_id}", len(category_ids))
        finite = np.isfinite(boxes).all(1) & np.isfinite(scores)
        dropped += int((~finite).sum())
        boxes, scores, labels = boxes[finite], scores[finite], labels[finite]
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).tolist()
        for box, score, cat in zip(xywh, scores.tolist(), category_ids[labels].tolist()):
            results.append({"image_id": image_id, "category_id": cat, "bbox": box, "score": score})
    if dropped:
        logger.warning(f"{dropped} detections with NaN/inf boxes or scores dropped before evaluation")
    return results


def _results_api(gt_api, results: list[dict]):
    """A pycocotools COCO object of the results, built like COCO.loadRes but quietly and also for
    an empty list (loadRes fails on one)."""
    from pycocotools.coco import COCO

    anns = []
    for k, r in enumerate(results):
        x, y, w, h = r["bbox"]
        anns.append({"id": k + 1, "image_id": r["image_id"], "category_id": r["category_id"],
                     "bbox": [x, y, w, h], "score": r["score"], "area": w * h, "iscrowd": 0})
    api = COCO()
    api.dataset = {"images": list(gt_api.dataset["images"]), "categories": list(gt_api.dataset["categories"]),
                   "annotations": anns}
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex()
    return api


def evaluate_detections(dataset, predictions, verbose: bool = False) -> dict:
    """pycocotools bbox evaluation; see the module docstring for the inputs and the keys returned.

    verbose: print pycocotools' own output (its 12-line summary) instead of silencing it.
    """
    from pycocotools.cocoeval import COCOeval

    gt_api = dataset.coco()
    results = coco_results(dataset, predictions)
    dt_api = _results_api(gt_api, results)
    evaluator = COCOeval(gt_api, dt_api, "bbox")
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    metrics: dict[str, Any] = {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats)}

    # precision: (iou thresholds, recall points, categories in params.catIds order, area, max dets)
    precision = evaluator.eval["precision"]
    column = {int(c): k for k, c in enumerate(evaluator.params.catIds)}
    per_class = {}
    for name, cat in zip(dataset.class_names, dataset.category_ids):
        p = precision[:, :, column[int(cat)], 0, -1]
        p = p[p > -1]
        per_class[name] = float(p.mean()) if p.size else -1.0
    metrics["per_class"] = per_class
    metrics["num_images"] = len(dataset.coco_gt["images"])
    metrics["num_detections"] = len(results)
    return metrics


def format_metrics(metrics: dict, columns: int = 3) -> str:
    """A readable table: the headline numbers, then AP per class in ``columns`` columns."""
    def cell(v):
        return "  n/a" if v is None or v < 0 else f"{v:.3f}"

    head = [name for name in STAT_NAMES[:9] if name in metrics]
    lines = ["  ".join(f"{n:>9}" for n in head), "  ".join(f"{cell(metrics[n]):>9}" for n in head)]
    per_class = metrics.get("per_class") or {}
    if per_class:
        width = max(len(n) for n in per_class)
        lines.append("")
        lines.append("AP per class (IoU 0.50:0.95):")
        items = [f"{n:<{width}}  {cell(v)}" for n, v in per_class.items()]
        rows = (len(items) + columns - 1) // columns
        for r in range(rows):
            lines.append("    ".join(items[r + c * rows] for c in range(columns) if r + c * rows < len(items)))
    return "\n".join(lines)


def write_coco_results(path: Union[str, os.PathLike], dataset, predictions) -> Path:
    """Write detections as a COCO results json (a list of {image_id, category_id, bbox, score}),
    atomically; boxes rounded to 0.001 px and scores to 1e-6."""
    results = coco_results(dataset, predictions)
    for r in results:
        r["bbox"] = [round(v, 3) for v in r["bbox"]]
        r["score"] = round(r["score"], 6)
    return write_json_atomic(path, results, indent=None)


def predict_records(detector, records: Sequence, progress: bool = True, desc: str = "eval",
                    skip_unreadable: bool = True) -> tuple[list, list[str]]:
    """Run ``detector`` on each record's image (``record.path``), in order.

    Returns (one ``Detections`` per record, messages naming the unreadable images). An unreadable
    image gets no detections when ``skip_unreadable``, else its ``ImageReadError`` is raised.
    """
    from tqdm import tqdm

    from nanoplus.runtime.detector import Detections
    from nanoplus.runtime.images import ImageReadError, read_image

    predictions, unreadable = [], []
    for record in tqdm(records, desc=desc, unit="img", disable=not progress, file=sys.stderr):
        try:
            img = read_image(record.path)
        except ImageReadError as e:
            if not skip_unreadable:
                raise
            unreadable.append(str(e))
            predictions.append(Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                                          np.zeros(0, np.int64), []))
            continue
        predictions.append(detector(img))
    return predictions, unreadable


def evaluate_detector(detector, dataset, progress: bool = True, desc: str = "eval",
                      verbose: bool = False) -> tuple[dict, list, dict]:
    """COCO metrics of ``detector`` on every image of ``dataset``.

    Returns (metrics as ``evaluate_detections`` gives them, the predictions aligned with the
    records, {"unreadable": [messages], "seconds": wall time of the predictions}).
    """
    start = time.perf_counter()
    predictions, unreadable = predict_records(detector, dataset.records, progress, desc)
    info = {"unreadable": unreadable, "seconds": time.perf_counter() - start}
    return evaluate_detections(dataset, predictions, verbose=verbose), predictions, info
