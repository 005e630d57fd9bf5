"""COCO mAP of a model on a dataset, the same way for a checkpoint and for each of its exports.

MODEL is a nanoplus checkpoint (run through PyTorch), an .onnx (onnxruntime, or OpenVINO with
--backend openvino), an OpenVINO .xml or an ncnn .param (or a folder holding one). Foreign
NanoDet-Plus files without nanoplus metadata work too (see the foreign-model options).
DATA is any dataset `nanoplus train` reads: a COCO folder or json, a YOLO data YAML, a VOC folder.

Every image goes through the runtime's one pipeline (warp, normalise, model, decode, multi-label
per-class NMS, boxes back to the image) with upstream's evaluation thresholds: score > 0.05,
IoU 0.6, at most 100 detections (a checkpoint's own eval settings where it has them), then
pycocotools. Prints a metrics table; --json writes it with the fields "mAP", "AP50", "AP75", ...,
"per_class" for comparing runs.

examples:
  nanoplus eval runs/exp/best.ckpt --data coco/ --split val
  nanoplus eval model.onnx --data data.yaml --json metrics.json
  nanoplus eval nanodet-plus-m_416.param --data coco/ --backend ncnn --threads 4
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from nanoplus.atomic import write_json_atomic
from nanoplus.runtime.infer_command import add_model_arguments, open_detector

EVAL_DEFAULTS = {"score_thr": 0.05, "iou_thr": 0.6, "max_det": 100}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="checkpoint, .onnx, .xml, .param, or a folder with one")
    parser.add_argument("--data", required=True, metavar="DATA",
                        help="COCO folder or json, YOLO data YAML, or Pascal VOC folder")
    parser.add_argument("--split", default="val", help="split to evaluate (default: val)")
    parser.add_argument("--json", default=None, metavar="FILE", help="write the metrics as JSON")
    parser.add_argument("--coco-json", default=None, metavar="FILE",
                        help="also write the detections in the COCO results format")
    parser.add_argument("--score-thr", type=float, default=None,
                        help="score threshold (default: the model's eval setting, else 0.05)")
    parser.add_argument("--iou-thr", type=float, default=None, help="NMS IoU threshold (default 0.6)")
    parser.add_argument("--max-det", type=int, default=None, help="detections kept per image (default 100)")
    parser.add_argument("--single-label", action="store_true",
                        help="one class per point (argmax) instead of upstream's multi-label candidates")
    parser.add_argument("--verbose", action="store_true", help="print pycocotools' own summary too")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_arguments(parser)


def eval_settings(detector, overrides: Optional[dict] = None) -> dict:
    """Thresholds: ``overrides`` (the flags; None values ignored), else the checkpoint's eval config,
    else upstream's 0.05 / 0.6 / 100. ``nanoplus bench --data`` evaluates with these too."""
    settings = dict(EVAL_DEFAULTS)
    eval_cfg = getattr(getattr(detector.backend, "config", None), "eval", None)
    if eval_cfg is not None:
        for key in settings:
            if getattr(eval_cfg, key, None) is not None:
                settings[key] = getattr(eval_cfg, key)
    for key, value in (overrides or {}).items():
        if value is not None:
            settings[key] = value
    return settings


def run(args: argparse.Namespace) -> int:
    from nanoplus.runtime.datasets import check_num_classes, load_dataset
    from nanoplus.runtime.evaluate import STAT_NAMES, evaluate_detector, format_metrics, write_coco_results

    dataset = load_dataset(args.data, args.split, log=False)  # its summary is printed below, once
    detector = open_detector(args, multi_label=not args.single_label)
    settings = eval_settings(detector, {key: getattr(args, key) for key in EVAL_DEFAULTS})
    detector.score_thr, detector.iou_thr, detector.max_det = (
        float(settings["score_thr"]), float(settings["iou_thr"]), int(settings["max_det"]))
    check_num_classes(dataset, detector.meta.num_classes, source=str(detector.model_path),
                      class_names=detector.meta.class_names)
    print(f"model   {detector.describe()}")
    print(f"data    {dataset.summary()}")
    print(f"eval    score > {detector.score_thr}, NMS IoU {detector.iou_thr}, max {detector.max_det} per image, "
          f"{'single' if args.single_label else 'multi'}-label")

    metrics, predictions, info = evaluate_detector(detector, dataset, progress=not args.quiet, verbose=args.verbose)
    for message in info["unreadable"]:
        print(f"skipped: {message}", file=sys.stderr)
    print(format_metrics(metrics))
    per_image_ms = 1000.0 * info["seconds"] / max(1, len(dataset.records))
    print(f"{len(dataset.records)} images in {info['seconds']:.1f} s ({per_image_ms:.1f} ms per image, end to end); "
          f"mAP {metrics['mAP']:.4f}  AP50 {metrics['AP50']:.4f}")

    if args.json:
        document = {
            "model": str(detector.model_path),
            "model_name": detector.meta.model_name,
            "backend": detector.backend.name,
            "backend_version": detector.backend.version,
            "precision": detector.backend.precision,
            "data": str(dataset.source),
            "split": dataset.split,
            "format": dataset.format,
            **{k: metrics[k] for k in STAT_NAMES if k in metrics},
            "per_class": metrics.get("per_class", {}),
            "num_images": metrics.get("num_images"),
            "num_detections": metrics.get("num_detections"),
            "score_thr": detector.score_thr,
            "iou_thr": detector.iou_thr,
            "max_det": detector.max_det,
            "multi_label": not args.single_label,
            "input_hw": list(detector.meta.input_hw),
            "skipped_images": len(info["unreadable"]),
        }
        print(f"wrote {write_json_atomic(args.json, document)}")
    if args.coco_json:
        print(f"wrote {write_coco_results(args.coco_json, dataset, predictions)}")
    return 0
