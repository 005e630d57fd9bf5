"""torch Dataset over the runtime's dataset records, and the batch collate.

Training samples: the image is read, warped by one random matrix and colour-jittered
(``augment.py``); its ground-truth boxes go through the same matrix, are clipped to the input and
the ones left thinner than ``min_box_size`` input pixels (e.g. warped out of view) are dropped.
Samples without augmentation (``augment_cfg=None``): exactly the runtime's ``preprocess`` (no
randomness), and the matrix is kept so that predictions map back to original pixels with
``boxes_to_original``. (The trainer's validation runs the runtime's ``Detector`` itself: validate.py.)

Augmentation randomness is seeded per sample from (seed, epoch, index): a sample looks the same
whatever the worker count, process rank or interruption, which makes resumed and multi-process
runs reproducible. Call ``set_epoch`` before each epoch.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from nanoplus.runtime.images import read_image
from nanoplus.runtime.metadata import ModelMeta
from nanoplus.runtime.preprocess import preprocess
from nanoplus.train.augment import augment, warp_boxes
from nanoplus.train.config import AugmentConfig


class DetectionDataset(torch.utils.data.Dataset):
    """Items: dict(image (3, H, W) float32, boxes (n, 4) float32 input pixels, labels (n,) int64,
    index int, warp_matrix (3, 3) float64, src_hw (2,) int64).

    records: ``nanoplus.runtime.datasets.ImageRecord`` list (path, image_id, height, width,
    boxes (n, 4) x1y1x2y2 original pixels, labels (n,)).
    augment_cfg: None for validation (the runtime's pre-processing, deterministic).
    """

    def __init__(
        self,
        records: Sequence,
        meta: ModelMeta,
        augment_cfg: Optional[AugmentConfig] = None,
        seed: int = 0,
        min_box_size: float = 1.0,
    ):
        self.records = list(records)
        self.meta = meta
        self.augment_cfg = augment_cfg
        self.seed = int(seed)
        self.min_box_size = float(min_box_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        img = read_image(record.path)
        boxes = np.asarray(record.boxes, dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(record.labels, dtype=np.int64).reshape(-1)
        dst_hw = tuple(int(v) for v in self.meta.input_hw)
        if self.augment_cfg is None:
            blob, matrix = preprocess(img, self.meta)
            image = blob[0]
            boxes = warp_boxes(boxes, matrix, dst_hw)
        else:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            image, boxes, matrix = augment(
                img, boxes, dst_hw, self.augment_cfg, self.meta.resize_mode == "letterbox",
                self.meta.mean, self.meta.std, rng,
            )
        keep = ((boxes[:, 2] - boxes[:, 0]) >= self.min_box_size) & ((boxes[:, 3] - boxes[:, 1]) >= self.min_box_size)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
            "boxes": torch.from_numpy(boxes[keep]),
            "labels": torch.from_numpy(labels[keep]),
            "index": index,
            "warp_matrix": torch.from_numpy(np.asarray(matrix, dtype=np.float64)),
            "src_hw": torch.tensor(img.shape[:2], dtype=torch.int64),
        }


def collate(items: list[dict], divisor: int = 32) -> dict:
    """Stack a batch, zero-padding images bottom/right to a common size, a multiple of ``divisor``.

    Returns dict(images (B, 3, H, W), boxes list of (n_i, 4), labels list of (n_i,),
    index (B,) int64, warp_matrix (B, 3, 3), src_hw (B, 2)).
    """
    height = max(it["image"].shape[1] for it in items)
    width = max(it["image"].shape[2] for it in items)
    height = int(math.ceil(height / divisor) * divisor)
    width = int(math.ceil(width / divisor) * divisor)
    images = items[0]["image"].new_zeros((len(items), 3, height, width))
    for i, it in enumerate(items):
        _, h, w = it["image"].shape
        images[i, :, :h, :w] = it["image"]
    return {
        "images": images,
        "boxes": [it["boxes"] for it in items],
        "labels": [it["labels"] for it in items],
        "index": torch.tensor([it["index"] for it in items], dtype=torch.int64),
        "warp_matrix": torch.stack([it["warp_matrix"] for it in items]),
        "src_hw": torch.stack([it["src_hw"] for it in items]),
    }
