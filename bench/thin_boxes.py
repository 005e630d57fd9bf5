"""What keeping ground-truth boxes thinner than 1 px after the augmentation warp does to the targets.

One pass over a training set with the augmentation of epoch 0 (the run's seed), every box kept
(``data.augment.min_box_size=0``); each batch is assigned twice by a trained checkpoint's model,
with and without the thin boxes. Prints how many boxes are thin, how many of them lie entirely out
of view, how many get a positive and with what IoU target, and how many of those positives a real
object held without them. README "Training" quotes its output::

    python3 bench/thin_boxes.py RUN/last.ckpt DATA [--split train] [--batch 16]
"""
from __future__ import annotations

import argparse
import sys

import torch

from nanoplus.errors import NanoplusError
from nanoplus.runtime.datasets import load_dataset
from nanoplus.runtime.metadata import meta_from_config
from nanoplus.train.checkpoint import load_checkpoint
from nanoplus.train.config import config_from_dict
from nanoplus.train.dataset import DetectionDataset, collate
from nanoplus.train.model import build_model


def thin_box_effect(model, dataset, epoch: int, batch_size: int = 16) -> dict:
    """Counts over one pass of ``dataset`` (built with min_box_size=0); see the module doc."""
    counts = dict(boxes=0, thin=0, out_of_view=0, thin_with_positive=0, positives_on_thin=0,
                  taken_from_real=0, positives_keep=0, positives_drop=0)
    iou_sum = 0.0
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            boxes, labels = batch["boxes"], batch["labels"]
            sizes = [b[:, 2:] - b[:, :2] for b in boxes]
            thin = [(s < 1).any(dim=1) for s in sizes]
            keep = model.forward_train(batch["images"], boxes, labels, epoch, return_details=True)["assignments"]
            drop = model.forward_train(batch["images"], [b[~t] for b, t in zip(boxes, thin)],
                                       [lab[~t] for lab, t in zip(labels, thin)], epoch,
                                       return_details=True)["assignments"]
            for size, t, a_keep, a_drop in zip(sizes, thin, keep, drop):
                thin_ids = t.nonzero().squeeze(1) + 1  # gt_inds are 1-based
                on_thin = torch.isin(a_keep.gt_inds, thin_ids)
                counts["boxes"] += len(t)
                counts["thin"] += int(t.sum())
                counts["out_of_view"] += int((size <= 0).any(dim=1).sum())
                counts["thin_with_positive"] += int(torch.isin(thin_ids, a_keep.gt_inds).sum())
                counts["positives_on_thin"] += int(on_thin.sum())
                counts["taken_from_real"] += int((on_thin & (a_drop.gt_inds > 0)).sum())
                counts["positives_keep"] += a_keep.num_pos
                counts["positives_drop"] += a_drop.num_pos
                iou_sum += float(a_keep.label_scores[on_thin].sum())
    counts["mean_iou_target_on_thin"] = iou_sum / max(counts["positives_on_thin"], 1)
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a nanoplus training checkpoint (last.ckpt / best.ckpt) with the aux branch")
    parser.add_argument("data", help="the dataset it trained on")
    parser.add_argument("--split", default="train")
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args(argv)
    try:
        ckpt = load_checkpoint(args.checkpoint)
        cfg = config_from_dict(ckpt["config"])
        model = build_model(cfg.model, load_pretrained=False)
        model.load_state_dict(ckpt["model"])
        data = load_dataset(args.data, args.split, log=False)
    except NanoplusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model.eval()
    meta = meta_from_config(cfg, list(data.class_names))
    dataset = DetectionDataset(data.records, meta, cfg.data.augment, seed=cfg.train.seed, min_box_size=0)
    c = thin_box_effect(model, dataset, cfg.train.epochs, args.batch)
    print(f"{c['thin']} of {c['boxes']} boxes ({100 * c['thin'] / max(c['boxes'], 1):.1f} %) are thinner than 1 px "
          f"after the warp, {c['out_of_view']} of them entirely out of view; kept, {c['thin_with_positive']} get "
          f"a positive ({c['positives_on_thin']} priors, mean IoU target {c['mean_iou_target_on_thin']:.3f}), "
          f"{c['taken_from_real']} of those priors a real object held without them; positives per pass: "
          f"{c['positives_drop']} dropping them, {c['positives_keep']} keeping them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
