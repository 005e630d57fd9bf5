"""Quality Focal Loss, Distribution Focal Loss and GIoU loss, normalised as upstream NanoDet-Plus.

For one head (main or aux) and a batch with the assignment's targets:
- QFL (weight 1.0): summed over all B*N points and C classes, / max(#positives, 1).
- GIoU (weight 2.0): positives only, each weighted by w = max sigmoid class score of the head's own
  prediction (no gradient through w); sum w * (1 - GIoU) / max(sum w, 1).
- DFL (weight 0.25): positives' 4 sides, same w; / (4 * max(sum w, 1)).
Boxes are decoded without clamping. With several processes the normalisers are averaged over
them (as upstream's ``reduce_mean``); every rank joins every all-reduce.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch.nn import functional as F

from nanoplus.train.assigner import Assignment
from nanoplus.train.box_ops import aligned_giou
from nanoplus.train.distributed import all_reduce_mean


def quality_focal_loss(logits: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor,
                       beta: float = 2.0) -> torch.Tensor:
    """(M, C) logits, (M,) labels (C = background), (M,) soft targets -> (M,) loss summed over classes.

    Every class is pushed to 0 with weight sigmoid^beta; a positive's own class is pushed to its
    score with weight |score - sigmoid|^beta.
    """
    probs = logits.sigmoid()
    loss = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none") * probs.pow(beta)
    num_classes = logits.shape[1]
    pos = ((labels >= 0) & (labels < num_classes)).nonzero().squeeze(1)
    if pos.numel() > 0:
        pos_label = labels[pos].long()
        pos_logits = logits[pos, pos_label]
        pos_loss = F.binary_cross_entropy_with_logits(pos_logits, scores[pos], reduction="none") * (
            scores[pos] - probs[pos, pos_label]
        ).abs().pow(beta)
        loss = loss.index_put((pos, pos_label), pos_loss)
    return loss.sum(dim=1)


class _NegativeFocalSum(torch.autograd.Function):
    """sum over all elements of BCE-with-logits(x, 0) * sigmoid(x)^beta, with a fused backward.

    BCE-with-logits against 0 is softplus(x), and d/dx softplus(x) s^beta = s^beta * (s + beta *
    softplus(x) * (1 - s)) with s = sigmoid(x): a few in-place passes over the (B*N, C) logits
    instead of autograd's graph of a dozen full-size temporaries (BCE, its zeros target, the pow,
    the product, the index_put copy and their backwards).
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, beta: float) -> torch.Tensor:
        probs = torch.sigmoid(logits)
        terms = F.softplus(logits)
        _mul_pow_(terms, probs, beta)
        ctx.save_for_backward(logits, probs)
        ctx.beta = beta
        return terms.sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, probs = ctx.saved_tensors
        dx = F.softplus(logits)
        dx.mul_(1 - probs).mul_(ctx.beta).add_(probs)
        _mul_pow_(dx, probs, ctx.beta)
        return dx.mul_(grad), None


def _mul_pow_(out: torch.Tensor, base: torch.Tensor, beta: float) -> torch.Tensor:
    if beta == 2.0:
        return out.mul_(base).mul_(base)
    return out.mul_(base.pow(beta))


def quality_focal_loss_sum(logits: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor,
                           beta: float = 2.0) -> torch.Tensor:
    """``quality_focal_loss(logits, labels, scores, beta).sum()``, computed as the all-negative sum
    (``_NegativeFocalSum``) corrected at the positives' own classes: same terms, summed in another
    order (equal within float rounding; tests/test_train_speed.py), several times faster on the
    (B*N, C) logits of a training batch."""
    total = _NegativeFocalSum.apply(logits, beta)
    num_classes = logits.shape[1]
    pos = ((labels >= 0) & (labels < num_classes)).nonzero().squeeze(1)
    if pos.numel() > 0:
        pos_logits = logits[pos, labels[pos].long()]
        pos_probs = pos_logits.sigmoid()
        pos_scores = scores[pos]
        negative = F.binary_cross_entropy_with_logits(pos_logits, torch.zeros_like(pos_logits),
                                                      reduction="none") * pos_probs.pow(beta)
        positive = F.binary_cross_entropy_with_logits(pos_logits, pos_scores, reduction="none") * (
            pos_scores - pos_probs).abs().pow(beta)
        total = total + (positive - negative).sum()
    return total


def distribution_focal_loss(bin_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(K, reg_max+1) bin logits, (K,) target distances in bin units -> (K,) loss.

    Cross-entropy towards the two bins around the target, weighted by proximity.
    """
    left = target.long()
    right = left + 1
    weight_left = right.float() - target
    weight_right = target - left.float()
    return (F.cross_entropy(bin_logits, left, reduction="none") * weight_left
            + F.cross_entropy(bin_logits, right, reduction="none") * weight_right)


def giou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(K, 4), (K, 4) -> (K,) 1 - GIoU."""
    return 1 - aligned_giou(pred, target, eps=eps)


def _mean_over_ranks(value: torch.Tensor) -> float:
    return float(all_reduce_mean(value.detach()).item())


def head_losses(cls_logits: torch.Tensor, reg_logits: torch.Tensor, decoded_bboxes: torch.Tensor,
                assignments: Sequence[Assignment], loss_cfg, reg_max: int) -> dict[str, torch.Tensor]:
    """One head's losses. cls_logits (B, N, C), reg_logits (B, N, 4*(reg_max+1)), decoded_bboxes
    (B, N, 4) unclamped; ``assignments`` one per image. -> {"loss_qfl", "loss_bbox", "loss_dfl"}."""
    num_classes = cls_logits.shape[-1]
    device = cls_logits.device
    labels = torch.cat([a.labels for a in assignments])
    scores = torch.cat([a.label_scores for a in assignments])
    num_pos = torch.tensor(float(sum(a.num_pos for a in assignments)), device=device)
    num_total = max(_mean_over_ranks(num_pos), 1.0)

    cls_flat = cls_logits.reshape(-1, num_classes)
    reg_flat = reg_logits.reshape(-1, 4 * (reg_max + 1))
    loss_qfl = loss_cfg.qfl_weight * (quality_focal_loss_sum(cls_flat, labels, scores, beta=loss_cfg.qfl_beta) / num_total)

    pos = ((labels >= 0) & (labels < num_classes)).nonzero().squeeze(1)
    weights = cls_flat[pos].detach().sigmoid().max(dim=1).values if pos.numel() else cls_flat.new_zeros(0)
    # Reduced on every rank, positives or not, so that no rank waits for another forever.
    weight_sum = max(_mean_over_ranks(weights.sum()), 1.0)
    if pos.numel() == 0:
        zero = reg_flat.sum() * 0
        return {"loss_qfl": loss_qfl, "loss_bbox": zero, "loss_dfl": zero}

    bbox_targets = torch.cat([a.bbox_targets for a in assignments])[pos]
    if torch.any(weights > 0):
        loss_bbox = loss_cfg.giou_weight * (
            (giou_loss(decoded_bboxes.reshape(-1, 4)[pos], bbox_targets) * weights).sum() / weight_sum
        )
    else:  # upstream's GIoULoss returns a zero that keeps the graph
        loss_bbox = (decoded_bboxes.reshape(-1, 4)[pos] * weights[:, None]).sum()

    dist_targets = torch.cat([a.dist_targets for a in assignments])[pos]
    dfl = distribution_focal_loss(reg_flat[pos].reshape(-1, reg_max + 1), dist_targets.reshape(-1))
    loss_dfl = loss_cfg.dfl_weight * ((dfl * weights[:, None].expand(-1, 4).reshape(-1)).sum() / (4.0 * weight_sum))
    return {"loss_qfl": loss_qfl, "loss_bbox": loss_bbox, "loss_dfl": loss_dfl}
