"""COCO mAP of each benchmarked file (``nanoplus bench --data``), through the runtime's one
evaluation path (``evaluate_detector``) at ``nanoplus eval``'s thresholds (``eval_settings``).

Each (file, backend, input size) is evaluated once, with the detector the benchmark opened for it
(its first thread count); every result of that group gets the same accuracy record.
"""
from __future__ import annotations

import sys
from typing import Optional

from nanoplus.errors import NanoplusError
from nanoplus.runtime.bench import BenchError, Case


def load_eval_data(data: str, split: str, eval_images: Optional[int]):
    """The dataset to score on (its first ``eval_images`` images when given); errors name --data."""
    from nanoplus.runtime.datasets import load_dataset

    if eval_images is not None and eval_images < 1:
        raise BenchError(f"--eval-images must be at least 1, got {eval_images}")
    try:
        dataset = load_dataset(data, split, log=False)
    except NanoplusError as e:
        raise BenchError(f"--data {data}: {e}") from None
    if not dataset.records:
        raise BenchError(f"--data {data}: the {split} split has no images; give a dataset with images or another --split")
    if eval_images is not None and eval_images < len(dataset.records):
        dataset = dataset.subset(dataset.records[:eval_images])
    return dataset


def group_key(case: Case) -> tuple:
    return case.model_path, case.backend_name, tuple(case.input_hw or ())


def evaluate_cases(cases: list[Case], dataset, progress: bool = True) -> dict[tuple, dict]:
    """group_key(case) -> accuracy record {"data", "split", "images", "mAP", "AP50", thresholds}."""
    from nanoplus.runtime.datasets import check_num_classes
    from nanoplus.runtime.eval_command import eval_settings
    from nanoplus.runtime.evaluate import evaluate_detector

    accuracy = {}
    for case in cases:
        key = group_key(case)
        if key in accuracy:
            continue
        det = case.detector
        check_num_classes(dataset, det.meta.num_classes, source=str(case.model_path),
                          class_names=det.meta.class_names)
        settings = eval_settings(det)
        kept = (det.score_thr, det.iou_thr, det.max_det)
        det.score_thr, det.iou_thr, det.max_det = (
            float(settings["score_thr"]), float(settings["iou_thr"]), int(settings["max_det"]))
        try:
            metrics, _, info = evaluate_detector(det, dataset, progress=progress,
                                                 desc=f"eval {case.model_path} ({case.backend_name})")
        finally:
            det.score_thr, det.iou_thr, det.max_det = kept
        for message in info["unreadable"]:
            print(f"skipped: {message}", file=sys.stderr)
        accuracy[key] = {
            "data": str(dataset.source),
            "split": dataset.split,
            "images": len(dataset.records),
            "mAP": metrics["mAP"],
            "AP50": metrics["AP50"],
            "score_thr": float(settings["score_thr"]),
            "iou_thr": float(settings["iou_thr"]),
            "max_det": int(settings["max_det"]),
            "multi_label": bool(getattr(det, "multi_label", True)),
        }
    return accuracy
