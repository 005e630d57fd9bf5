"""YOLO / VOC boxes -> training records and COCO-format ground truth.

A YOLO or VOC image's boxes are clipped to the image and filtered by upstream's < 1 px rule into an
``ImageRecord``; the record's boxes become the converted ground truth's annotations, its ignore
boxes (VOC ``difficult``) ``iscrowd`` regions, so pycocotools counts detections of them neither as
hits nor as false positives.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from nanoplus.runtime.datasets.issues import Issues
from nanoplus.runtime.datasets.records import DetectionDataset, ImageRecord

# A box edge may stick out of the image by this much (pixels) before it counts as "outside":
# official COCO boxes overshoot by float rounding.
CLIP_TOLERANCE_PX = 0.01


def clip_boxes(boxes: np.ndarray, limits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Clip (n, 4) xyxy boxes to [0, limits]; also says which ones stuck out by more than the
    tolerance. limits: (4,) or (n, 4) width, height, width, height."""
    stuck_out = ((boxes[:, :2] < -CLIP_TOLERANCE_PX).any(1)
                 | (boxes[:, 2:] > limits[..., 2:] + CLIP_TOLERANCE_PX).any(1))
    return np.clip(boxes, 0.0, limits), stuck_out


def converted_record(path, image_id, height, width, boxes, labels, ignore, ignore_labels, where,
                     issues: Issues, count_empty=True) -> ImageRecord:
    """Clip, apply upstream's < 1 px rule and build the record (YOLO and VOC)."""
    limits = np.array([width, height, width, height], np.float64)
    record_boxes, record_labels = [], []
    for group, group_labels in ((boxes, labels), (ignore, ignore_labels)):
        clipped, stuck_out = clip_boxes(np.asarray(group, np.float64).reshape(-1, 4), limits)
        w = clipped[:, 2] - clipped[:, 0]
        h = clipped[:, 3] - clipped[:, 1]
        orig_w = group[:, 2] - group[:, 0] if len(group) else w
        orig_h = group[:, 3] - group[:, 1] if len(group) else h
        tiny = (orig_w < 1) | (orig_h < 1)
        outside = ~tiny & ((w < 1) | (h < 1))
        issues.add("tiny", where, int(tiny.sum()))
        issues.add("outside", where, int(outside.sum()))
        issues.add("clipped", where, int((stuck_out & ~tiny & ~outside).sum()))
        keep = ~tiny & ~outside
        record_boxes.append(clipped[keep].astype(np.float32))
        record_labels.append(np.asarray(group_labels, np.int64)[keep])
    if len(record_labels[0]) == 0 and count_empty:
        issues.add("empty", where)
    return ImageRecord(path=str(path), image_id=int(image_id), height=int(height), width=int(width),
                       boxes=record_boxes[0], labels=record_labels[0], ignore_boxes=record_boxes[1],
                       ignore_labels=record_labels[1])


def add_ground_truth(gt_images: list, gt_anns: list, record: ImageRecord, file_name: str,
                     category_ids: Sequence[int]) -> None:
    """Converted ground truth of one record: its boxes, and its ignore boxes as crowd regions."""
    gt_images.append({"id": record.image_id, "file_name": file_name, "height": record.height,
                      "width": record.width})
    for boxes, labels, crowd in ((record.boxes, record.labels, 0), (record.ignore_boxes, record.ignore_labels, 1)):
        for box, label in zip(boxes.tolist(), labels.tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": record.image_id,
                            "category_id": int(category_ids[label]), "bbox": [box[0], box[1], w, h],
                            "area": w * h, "iscrowd": crowd})


def converted_dataset(class_names, category_ids, records, gt_images, gt_anns, source, fmt, split,
                      issues: Issues) -> DetectionDataset:
    """Assemble a converted (YOLO / VOC) dataset; categories are built from the class list."""
    coco_gt = {"images": gt_images, "annotations": gt_anns,
               "categories": [{"id": int(c), "name": str(n), "supercategory": ""}
                              for c, n in zip(category_ids, class_names)]}
    return DetectionDataset(list(class_names), records, coco_gt, list(category_ids), str(source), fmt,
                            split, issues.counts, issues.examples)
