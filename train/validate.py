"""Validation during training: the model's detections on the validation loader, scored with the
runtime's COCO evaluation.

Decoding and NMS are the runtime's ``postprocess`` (the project's one implementation), the boxes
are mapped back with ``boxes_to_original`` and scored by ``evaluate_detections`` (pycocotools).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from nanoplus.train import distributed as du


@torch.no_grad()
def predict(model: nn.Module, loader, meta, eval_cfg, device: torch.device, amp: bool = False) -> dict:
    """Detections per dataset index: {index: (boxes (k, 4) original pixels, scores (k,), labels (k,))}.

    ``model`` is run in eval mode; decoding and NMS are the runtime's ``postprocess``.
    """
    from nanoplus.runtime.postprocess import postprocess
    from nanoplus.runtime.preprocess import boxes_to_original

    was_training = model.training
    model.eval()
    results = {}
    for batch in loader:
        images = batch["images"].to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"):
            raw = model(images)
        raw = raw.float().cpu().numpy()
        input_hw = tuple(images.shape[-2:])
        for i in range(raw.shape[0]):
            boxes, scores, labels = postprocess(
                raw[i], input_hw, meta.strides, meta.reg_max, eval_cfg.score_thr, eval_cfg.iou_thr,
                eval_cfg.max_det, scores_are_sigmoid=False,
            )
            src_hw = tuple(int(v) for v in batch["src_hw"][i])
            boxes = boxes_to_original(boxes, batch["warp_matrix"][i].numpy(), src_hw)
            results[int(batch["index"][i])] = (
                np.asarray(boxes, np.float32), np.asarray(scores, np.float32), np.asarray(labels, np.int64)
            )
    model.train(was_training)
    return results


def evaluate(model: nn.Module, val_set, val_loader, meta, eval_cfg, device, amp=False) -> Optional[dict]:
    """COCO metrics of ``model`` on ``val_set`` (the runtime dataset). Every rank predicts its
    shard; rank 0 gathers and scores, the others get None."""
    from nanoplus.runtime.evaluate import evaluate_detections

    local = predict(model, val_loader, meta, eval_cfg, device, amp)
    shards = du.all_gather_objects(local)
    if du.rank() != 0:
        return None
    merged = {}
    for shard in shards:
        merged.update(shard)
    predictions = [merged.get(i, _empty_detections()) for i in range(len(val_set.records))]
    return evaluate_detections(val_set, predictions)


def _empty_detections():
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64)
