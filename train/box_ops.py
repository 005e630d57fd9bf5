"""Box geometry in torch: centre priors, distance <-> box, IoU and GIoU (upstream's formulas).

Boxes are (x1, y1, x2, y2) in input pixels; distances are (left, top, right, bottom).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch


def featmap_sizes(input_hw: Sequence[int], strides: Sequence[int]) -> list[tuple[int, int]]:
    """(h, w) of each level: ceil(H / stride) x ceil(W / stride)."""
    height, width = int(input_hw[0]), int(input_hw[1])
    return [(math.ceil(height / s), math.ceil(width / s)) for s in strides]


def make_center_priors(input_hw: Sequence[int], strides: Sequence[int], dtype: torch.dtype = torch.float32,
                       device: Optional[torch.device] = None) -> torch.Tensor:
    """(N, 4) priors (x, y, stride, stride), levels in stride order, row-major within a level.

    x = column * stride, y = row * stride: the top-left corner of each cell, no half-cell offset
    (upstream NanoDet-Plus). N = sum over levels of ceil(H/s) * ceil(W/s).
    """
    priors = []
    for (h, w), stride in zip(featmap_sizes(input_hw, strides), strides):
        xs = torch.arange(w, dtype=dtype, device=device) * stride
        ys = torch.arange(h, dtype=dtype, device=device) * stride
        y, x = torch.meshgrid(ys, xs, indexing="ij")
        x, y = x.flatten(), y.flatten()
        s = x.new_full(x.shape, stride)
        priors.append(torch.stack([x, y, s, s], dim=-1))
    return torch.cat(priors, dim=0)


def distance2bbox(points: torch.Tensor, distance: torch.Tensor,
                  max_shape: Optional[Sequence[int]] = None) -> torch.Tensor:
    """(..., 2) points and (..., 4) distances -> (..., 4) boxes; clamped to (H, W) when given."""
    x1 = points[..., 0] - distance[..., 0]
    y1 = points[..., 1] - distance[..., 1]
    x2 = points[..., 0] + distance[..., 2]
    y2 = points[..., 1] + distance[..., 3]
    if max_shape is not None:
        x1 = x1.clamp(min=0, max=max_shape[1])
        y1 = y1.clamp(min=0, max=max_shape[0])
        x2 = x2.clamp(min=0, max=max_shape[1])
        y2 = y2.clamp(min=0, max=max_shape[0])
    return torch.stack([x1, y1, x2, y2], -1)


def bbox2distance(points: torch.Tensor, bbox: torch.Tensor) -> torch.Tensor:
    """(..., 2) points and (..., 4) boxes -> (..., 4) distances (left, top, right, bottom), unclamped."""
    left = points[..., 0] - bbox[..., 0]
    top = points[..., 1] - bbox[..., 1]
    right = bbox[..., 2] - points[..., 0]
    bottom = bbox[..., 3] - points[..., 1]
    return torch.stack([left, top, right, bottom], -1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) -> (...), no +1 (continuous coordinates)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def pairwise_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(m, 4), (n, 4) -> (m, n) IoU; the union is floored at ``eps``."""
    if boxes1.shape[0] == 0 or boxes2.shape[0] == 0:
        return boxes1.new_zeros((boxes1.shape[0], boxes2.shape[0]))
    area1, area2 = box_area(boxes1), box_area(boxes2)
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    union = torch.max(area1[:, None] + area2[None, :] - overlap, _floor(boxes1, eps))
    return overlap / union


def aligned_giou(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(k, 4), (k, 4) -> (k,) generalised IoU of matching rows; union and hull area floored at ``eps``."""
    area1, area2 = box_area(boxes1), box_area(boxes2)
    lt = torch.max(boxes1[:, :2], boxes2[:, :2])
    rb = torch.min(boxes1[:, 2:], boxes2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[:, 0] * wh[:, 1]
    floor = _floor(boxes1, eps)
    union = torch.max(area1 + area2 - overlap, floor)
    ious = overlap / union
    enclose_wh = (torch.max(boxes1[:, 2:], boxes2[:, 2:]) - torch.min(boxes1[:, :2], boxes2[:, :2])).clamp(min=0)
    enclose_area = torch.max(enclose_wh[:, 0] * enclose_wh[:, 1], floor)
    return ious - (enclose_area - union) / enclose_area


def _floor(like: torch.Tensor, eps: float) -> torch.Tensor:
    """``eps`` as a 1-element tensor of ``like``'s dtype and device (upstream floors with torch.max)."""
    return like.new_tensor([eps])
