"""Dynamic Soft Label Assigner (NanoDet-Plus), per image, and the training targets it yields.

Upstream's behaviour, which the fixtures check exactly:
1. Candidates: priors whose point lies strictly inside at least one GT box.
2. cost[v, g] = cls_cost + iou_factor * -log(IoU + 1e-7), with IoU between the candidate's decoded
   box and GT g (union floored at 1e-6), and cls_cost = sum over classes of
   BCE-with-logits(logit, soft_label) * |soft_label - sigmoid(logit)|^2, where soft_label is the
   IoU on g's class and 0 elsewhere. A candidate inside GT a is a full candidate for GT b: no
   penalty for lying outside b.
3. dynamic k of GT g = max(1, int(sum of its top-min(topk, #candidates) IoUs)); g takes its k
   cheapest candidates.
4. A candidate taken by several GTs goes to the GT with the lowest cost in its whole cost row.
5. Label score (the QFL target) = IoU with the GT finally assigned.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from nanoplus.train.box_ops import bbox2distance, pairwise_iou


@dataclass
class Assignment:
    """Targets of one image with N priors and C classes.

    labels (N,) int64: GT class, or C for background. gt_inds (N,) int64: 0 background, k >= 1 the
    (k-1)-th GT. label_scores (N,) float: IoU of the matched prediction (0 for background).
    bbox_targets (N, 4): the GT box. dist_targets (N, 4): (x - x1, y - y1, x2 - x, y2 - y) / stride
    clamped to [0, reg_max - 0.1]. num_pos: number of positives.
    """

    labels: torch.Tensor
    gt_inds: torch.Tensor
    label_scores: torch.Tensor
    bbox_targets: torch.Tensor
    dist_targets: torch.Tensor
    num_pos: int


class DynamicSoftLabelAssigner:
    def __init__(self, num_classes: int, reg_max: int, topk: int = 13, iou_factor: float = 3.0):
        self.num_classes = num_classes
        self.reg_max = reg_max
        self.topk = topk
        self.iou_factor = iou_factor

    @torch.no_grad()
    def __call__(self, cls_logits: torch.Tensor, priors: torch.Tensor, decoded_bboxes: torch.Tensor,
                 gt_bboxes: torch.Tensor, gt_labels: torch.Tensor) -> Assignment:
        """cls_logits (N, C) raw logits, priors (N, 4) (x, y, sx, sy), decoded_bboxes (N, 4)
        unclamped, gt_bboxes (G, 4), gt_labels (G,) -> Assignment."""
        gt_inds, ious = self.match(cls_logits, priors, decoded_bboxes, gt_bboxes, gt_labels)
        return self.targets(priors, gt_inds, ious, gt_bboxes, gt_labels)

    @torch.no_grad()
    def match(self, cls_logits, priors, decoded_bboxes, gt_bboxes, gt_labels) -> tuple[torch.Tensor, torch.Tensor]:
        """-> gt_inds (N,) int64 (0 = background, k = GT k-1) and ious (N,) of each positive with its GT."""
        num_priors, num_gt = priors.shape[0], gt_bboxes.shape[0]
        gt_inds = torch.zeros(num_priors, dtype=torch.long, device=priors.device)
        ious_out = priors.new_zeros(num_priors)
        if num_gt == 0 or num_priors == 0:
            return gt_inds, ious_out
        gt_bboxes = gt_bboxes.to(decoded_bboxes.dtype)

        centers = priors[:, None, :2]
        deltas = torch.cat([centers - gt_bboxes[None, :, :2], gt_bboxes[None, :, 2:] - centers], dim=-1)
        valid = (deltas.min(dim=-1).values > 0).any(dim=1)  # (N,) inside at least one GT
        valid_idx = valid.nonzero().squeeze(1)
        if valid_idx.numel() == 0:
            return gt_inds, ious_out

        ious = pairwise_iou(decoded_bboxes[valid_idx], gt_bboxes)  # (V, G)
        cost = self._cls_cost(cls_logits[valid_idx], ious, gt_labels) + (-torch.log(ious + 1e-7)) * self.iou_factor

        matched = self._dynamic_k_matching(cost, ious)  # (V, G) bool, at most one True per row
        fg = matched.any(dim=1)
        matched_gt = matched[fg].to(torch.uint8).argmax(dim=1)
        pos_idx = valid_idx[fg]
        gt_inds[pos_idx] = matched_gt + 1
        ious_out[pos_idx] = ious[fg].gather(1, matched_gt[:, None]).squeeze(1)
        return gt_inds, ious_out

    def _cls_cost(self, logits: torch.Tensor, ious: torch.Tensor, gt_labels: torch.Tensor) -> torch.Tensor:
        """(V, C) logits, (V, G) IoUs -> (V, G) cost summed over classes.

        The soft label is 0 on every class but the GT's, so the sum is the all-negative row sum,
        minus the GT class's negative term, plus its soft-label term: O(V*(C+G)) instead of
        upstream's (V, G, C) tensor, equal up to float rounding (checked against the literal
        formula in the tests).
        """
        logits = logits.float()
        probs = logits.sigmoid()
        negative = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none") * probs.pow(2)
        labels = gt_labels.long()
        logit_g = logits[:, labels]  # (V, G)
        prob_g = probs[:, labels]
        positive = F.binary_cross_entropy_with_logits(logit_g, ious, reduction="none") * (ious - prob_g).abs().pow(2)
        return negative.sum(dim=1, keepdim=True) - negative[:, labels] + positive

    def _dynamic_k_matching(self, cost: torch.Tensor, ious: torch.Tensor) -> torch.Tensor:
        num_valid = cost.shape[0]
        top_ious = torch.topk(ious, min(self.topk, num_valid), dim=0).values
        dynamic_ks = torch.clamp(top_ious.sum(0).int(), min=1)  # (G,)
        # GT g takes its dynamic_ks[g] cheapest candidates: rank every column once.
        order = cost.argsort(dim=0)
        take = torch.arange(num_valid, device=cost.device)[:, None] < dynamic_ks[None, :]
        matched = torch.zeros_like(cost, dtype=torch.bool).scatter_(0, order, take)
        conflicted = matched.sum(dim=1) > 1
        if conflicted.any():
            best = torch.min(cost[conflicted], dim=1).indices  # over ALL GTs of the row
            rows = torch.zeros_like(matched[conflicted])
            rows[torch.arange(rows.shape[0], device=cost.device), best] = True
            matched[conflicted] = rows
        return matched

    def targets(self, priors: torch.Tensor, gt_inds: torch.Tensor, ious: torch.Tensor,
                gt_bboxes: torch.Tensor, gt_labels: torch.Tensor) -> Assignment:
        num_priors = priors.shape[0]
        labels = torch.full((num_priors,), self.num_classes, dtype=torch.long, device=priors.device)
        label_scores = priors.new_zeros(num_priors)
        bbox_targets = torch.zeros_like(priors)
        dist_targets = torch.zeros_like(priors)
        pos = (gt_inds > 0).nonzero().squeeze(1)
        if pos.numel() > 0:
            gt_of_pos = gt_inds[pos] - 1
            pos_gt_bboxes = gt_bboxes[gt_of_pos].to(priors.dtype)
            bbox_targets[pos] = pos_gt_bboxes
            dist_targets[pos] = bbox2distance(priors[pos, :2], pos_gt_bboxes) / priors[pos, None, 2]
            # A positive may lie outside its own GT (step 2 of the module doc): that side clamps to 0.
            dist_targets = dist_targets.clamp(min=0, max=self.reg_max - 0.1)
            labels[pos] = gt_labels[gt_of_pos].long()
            label_scores[pos] = ious[pos]
        return Assignment(labels, gt_inds, label_scores, bbox_targets, dist_targets, int(pos.numel()))
