"""The loaded form of every dataset format: one ``ImageRecord`` per image, and the
``DetectionDataset`` holding them with the COCO ground truth for evaluation."""
from __future__ import annotations

import contextlib
import io
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nanoplus.runtime.datasets.issues import ISSUE_TEXT, NOTES


@dataclass
class ImageRecord:
    """One image and its training targets.

    boxes: (n, 4) float32 x1, y1, x2, y2 in original pixels, inside [0, width] x [0, height].
    labels: (n,) int64 class indices 0..C-1.
    ignore_boxes: (m, 4) float32 crowd / VOC-difficult regions, not training targets (upstream's
      gt_bboxes_ignore); ignore_labels: (m,) int64 their classes.
    """

    path: str
    image_id: int
    height: int
    width: int
    boxes: np.ndarray
    labels: np.ndarray
    ignore_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    ignore_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


@dataclass
class DetectionDataset:
    """A validated dataset: records for training and inference, COCO ground truth for evaluation."""

    class_names: list[str]
    records: list[ImageRecord]
    coco_gt: dict  # {"images", "annotations", "categories"} as pycocotools reads them
    category_ids: list[int]  # class index -> category id used in coco_gt and in results files
    source: str  # the file the annotations came from (json, data YAML or VOC split list)
    format: str  # "coco" | "yolo" | "voc"
    split: str
    issues: dict[str, int] = field(default_factory=dict)  # issue kind -> count (see ISSUE_TEXT)
    issue_examples: dict[str, str] = field(default_factory=dict)  # issue kind -> first place seen
    _coco_api: Any = field(default=None, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_boxes(self) -> int:
        return int(sum(len(r.labels) for r in self.records))

    def subset(self, records: list[ImageRecord]) -> "DetectionDataset":
        """The same dataset restricted to ``records`` (some of its own), with only their ground truth,
        so that pycocotools scores exactly those images."""
        ids = {r.image_id for r in records}
        gt = dict(self.coco_gt)
        gt["images"] = [im for im in self.coco_gt["images"] if im["id"] in ids]
        gt["annotations"] = [a for a in self.coco_gt["annotations"] if a["image_id"] in ids]
        return dataclasses.replace(self, records=list(records), coco_gt=gt, _coco_api=None)

    def coco(self):
        """The ground truth as a pycocotools ``COCO`` object (built once, quietly)."""
        if self._coco_api is None:
            from pycocotools.coco import COCO

            api = COCO()
            api.dataset = self.coco_gt
            with contextlib.redirect_stdout(io.StringIO()):
                api.createIndex()
            self._coco_api = api
        return self._coco_api

    def summary(self) -> str:
        """One line: size of the data and every counted fix or note."""
        head = (f"dataset {self.source} [{self.split}, {self.format}]: {len(self.records)} images, "
                f"{self.num_boxes} boxes, {self.num_classes} classes")
        parts = []
        for kind, count in self.issues.items():
            example = self.issue_examples.get(kind) if kind not in NOTES else None
            parts.append(f"{count} {ISSUE_TEXT[kind]}" + (f" (first: {example})" if example else ""))
        return head + ("; " + "; ".join(parts) if parts else "")
