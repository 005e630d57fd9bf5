"""Validation during training through the runtime's one evaluation path.

The model in memory is wrapped as a runtime backend (``TorchBackend.from_model``) inside a
``Detector``, so its images go through the same pre-processing, decoding and NMS as ``nanoplus
eval`` on an exported file, and are scored by the same ``evaluate_detections`` (pycocotools).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from nanoplus.train import distributed as du


def evaluate(model: nn.Module, val_set, meta, eval_cfg, device: torch.device, amp: bool = False) -> Optional[dict]:
    """COCO metrics of ``model`` on ``val_set`` (the runtime dataset), the model in eval mode.

    Every rank predicts every world_size-th image; rank 0 gathers and scores, the others get None.
    amp: on CUDA, predict under float16 autocast as training does.
    """
    from nanoplus.runtime.backends import TorchBackend
    from nanoplus.runtime.detector import Detector
    from nanoplus.runtime.evaluate import evaluate_detections, predict_records

    indices = list(range(du.rank(), len(val_set.records), du.world_size()))
    was_training = model.training
    model.eval()
    try:
        backend = TorchBackend.from_model(model, meta, precision="fp16" if amp and device.type == "cuda" else "fp32",
                                          device=device)
        detector = Detector.from_backend(backend, meta, eval_cfg.score_thr, eval_cfg.iou_thr, eval_cfg.max_det)
        predictions, _ = predict_records(detector, [val_set.records[i] for i in indices], progress=False,
                                         skip_unreadable=False)
    finally:
        model.train(was_training)
    local = {i: (d.boxes, d.scores, d.class_ids) for i, d in zip(indices, predictions)}
    shards = du.all_gather_objects(local)
    if du.rank() != 0:
        return None
    merged = {}
    for shard in shards:
        merged.update(shard)
    empty = (np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64))
    return evaluate_detections(val_set, [merged.get(i, empty) for i in range(len(val_set.records))])
