"""Train NanoDet-Plus on COCO json, YOLO (data YAML) or Pascal VOC data.

Upstream's recipe by default (AdamW, warmup + cosine, gradient clip 35, EMA 0.9998, one random
warp + colour jitter per image); any config key can be overridden as section.key=value.
The run folder gets last.ckpt (every epoch), best.ckpt (best mAP of the EMA weights),
config.yaml (the resolved config), results.csv / results.json (per epoch), steps.csv (per step)
and curves.png.

examples:
  nanoplus train --data data.yaml model.num_classes=3 train.epochs=100 train.batch_size=32
  nanoplus train --config nanodet-plus-m_320 --data coco/ --weights imported.ckpt \\
      train.lr=1e-4 train.warmup_steps=50 train.epochs=10
  nanoplus train --resume runs/nanodet-plus-m_416          # after an interruption
  torchrun --nproc_per_node=4 -m nanoplus train --data coco/ train.batch_size=96   # 4 GPUs

Fine-tuning deploy-only weights (imported from NCNN or an exported model: no aux branch):
aux_fpn starts as a copy of fpn and the aux head fresh; by default (--aux-init copy) the labels
are assigned from that aux branch as upstream would (measured best: README, "Training");
--aux-init main-assign assigns from the main head while the aux head learns, for
--aux-warmup-epochs (default: the whole run).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from nanoplus.train.config import builtin_config_names

    parser.add_argument("--config", default="nanodet-plus-m_416", metavar="NAME_OR_YAML",
                        help="built-in config name or YAML file (default: nanodet-plus-m_416); built-in: "
                             + ", ".join(builtin_config_names()) + " (a YAML file may start from one with 'base: NAME')")
    parser.add_argument("--data", metavar="DATA",
                        help="dataset: COCO folder or json, YOLO data YAML, VOC folder")
    parser.add_argument("--train-split", default="train", help="split to train on (default: train)")
    parser.add_argument("--val-data", metavar="DATA", help="dataset to evaluate on (default: --data)")
    parser.add_argument("--val-split", default="val", help="split to evaluate on (default: val)")
    parser.add_argument("--no-val", action="store_true", help="train without evaluation (no best.ckpt)")
    parser.add_argument("--weights", metavar="CKPT",
                        help="start from these weights (nanoplus checkpoint, e.g. from 'nanoplus import', "
                             "or an upstream .ckpt/.pth); entries of another shape are skipped")
    parser.add_argument("--resume", nargs="?", const="", metavar="RUN_DIR|CKPT",
                        help="continue an interrupted run exactly (its last.ckpt); without a value: --out, "
                             "or the most recent run under runs/")
    parser.add_argument("--out", metavar="DIR", help="run folder (default: runs/CONFIG_NAME, numbered if taken)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--workers", type=int, help="data loader processes (default: train.workers)")
    parser.add_argument("--aux-init", choices=("main-assign", "copy"), default="copy",
                        help="deploy-only --weights: where labels come from while the fresh aux head "
                             "learns (default: copy)")
    parser.add_argument("--aux-warmup-epochs", type=int, metavar="N",
                        help="with --aux-init main-assign: epochs of main-head assignment (default: all)")
    parser.add_argument("--bn-calibration-images", type=int, default=256, metavar="N",
                        help="--weights whose BatchNorm was folded (NCNN/ONNX imports): re-estimate its "
                             "statistics on N training images first (function-preserving; 0: off)")
    parser.add_argument("--freeze-bn", action="store_true",
                        help="BatchNorm layers keep their running statistics (eval mode) while the rest trains; "
                             "for fine-tuning with small batches")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. train.epochs=50 data.input_hw=[320,320]")


def _find_resume_checkpoint(value: str, out: str | None) -> Path:
    from nanoplus.train.trainer import TrainError

    if value:
        path = Path(value)
        if path.is_dir():
            path = path / "last.ckpt"
        if not path.is_file():
            raise TrainError(f"--resume {value}: no checkpoint there (expected a run folder with last.ckpt, or a .ckpt)")
        return path
    if out:
        path = Path(out) / "last.ckpt"
        if not path.is_file():
            raise TrainError(f"--resume: {path} does not exist; name the run folder: --resume runs/NAME")
        return path
    candidates = sorted(Path("runs").glob("*/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise TrainError("--resume: no runs/*/last.ckpt found here; name the run folder: --resume runs/NAME")
    return candidates[-1]


def _new_run_dir(out: str | None, name: str) -> Path:
    base = Path(out) if out else Path("runs") / name
    if not base.exists() or not any(base.iterdir()):
        return base
    if out and not (base / "last.ckpt").exists():
        return base  # a folder the user named that holds no run yet
    i = 2
    while (base.parent / f"{base.name}{i}").exists():
        i += 1
    return base.parent / f"{base.name}{i}"


def _check_weights_path(weights: str) -> None:
    """--weights must be a file; a config name there means the user wants published weights."""
    from nanoplus.train.config import builtin_config_names
    from nanoplus.train.trainer import TrainError

    if Path(weights).is_file():
        return
    if weights in builtin_config_names():
        raise TrainError(
            f"--weights {weights}: no such file. Weights are not downloaded: '{weights}' is a config name. "
            "Turn published weights into a checkpoint first, e.g. "
            f"nanoplus import nanodet-plus-m_416.param --config {weights} --out {weights}.ckpt "
            f"(or an upstream .ckpt/.pth), then pass --weights {weights}.ckpt")
    raise TrainError(f"--weights {weights}: no such file; give a nanoplus checkpoint (from 'nanoplus train' or "
                     "'nanoplus import') or an upstream .ckpt/.pth")


def _print_start(out_dir: Path, resumed: Optional[Path], cfg, train_set, val_set) -> None:
    """What the run will do, before the first step: where it writes, on what data, how long."""
    world = max(1, int(os.environ.get("WORLD_SIZE", "1")))
    per_rank_batch = max(1, cfg.train.batch_size // world)
    per_rank_images = -(-len(train_set.records) // world)
    steps_per_epoch = max(1, per_rank_images // per_rank_batch) if per_rank_images >= per_rank_batch else 1
    total_steps = steps_per_epoch * cfg.train.epochs
    print(f"run folder: {out_dir}" + (f" (resuming {resumed})" if resumed else ""))
    print(f"train: {train_set.summary()}")
    print(f"val:   {val_set.summary()}" if val_set is not None else "val:   none (--no-val: no best.ckpt)")
    print(f"plan:  {cfg.train.epochs} epochs x {steps_per_epoch} steps (batch {cfg.train.batch_size}) = "
          f"{total_steps} steps, input {cfg.data.input_hw[0]}x{cfg.data.input_hw[1]} (h x w), "
          f"lr {cfg.train.lr:g}, warm-up {cfg.train.warmup_steps} steps"
          + (f", evaluation every {cfg.train.val_interval} epochs and after the last" if val_set is not None else ""))
    if cfg.train.warmup_steps >= total_steps:
        print(f"warning: train.warmup_steps={cfg.train.warmup_steps} is not shorter than the whole run "
              f"({total_steps} steps): the learning rate never reaches train.lr={cfg.train.lr:g}; "
              f"set e.g. train.warmup_steps={max(1, total_steps // 10)}", file=sys.stderr)
    sys.stdout.flush()


def _load_split(data: str, split: str):
    from nanoplus.runtime.datasets import load_dataset

    return load_dataset(data, split=split)


def run(args: argparse.Namespace) -> int:
    from nanoplus.runtime.datasets import check_num_classes
    from nanoplus.train import checkpoint as ckpt_lib
    from nanoplus.train.config import config_from_dict, load_config
    from nanoplus.train.trainer import Trainer, TrainError

    resume_path = None
    if args.resume is not None:
        resume_path = _find_resume_checkpoint(args.resume, args.out)
        ckpt = ckpt_lib.load_checkpoint(resume_path)
        run_info = dict(ckpt.get("run") or {})
        raw = ckpt["config"]
        if args.overrides:
            from nanoplus.train.config import apply_overrides

            raw = apply_overrides(raw, args.overrides)
        cfg = config_from_dict(raw)
        data = args.data or run_info.get("data")
        if not data:
            raise TrainError(f"--resume {resume_path}: the checkpoint does not say which data it trained on; pass --data")
        run_info["data"] = data
        out_dir = resume_path.parent
        del ckpt
    else:
        if not args.data:
            raise TrainError("--data is required (a COCO folder/json, a YOLO data YAML or a VOC folder)")
        cfg = load_config(args.config, args.overrides)
        if args.weights:
            _check_weights_path(args.weights)
        data = args.data
        run_info = {
            "data": data, "train_split": args.train_split, "val_data": args.val_data or None,
            "val_split": args.val_split, "no_val": bool(args.no_val), "weights": args.weights,
            "aux_init": args.aux_init, "aux_warmup_epochs": args.aux_warmup_epochs,
            "bn_calibration_images": args.bn_calibration_images, "freeze_bn": bool(args.freeze_bn),
            "command": "nanoplus " + " ".join(sys.argv[1:]),
        }
        out_dir = _new_run_dir(args.out, cfg.name)

    train_set = _load_split(data, run_info.get("train_split", "train"))
    names = list(train_set.class_names)
    if cfg.class_names is not None and list(cfg.class_names) != names:
        raise TrainError(
            f"class_names in the config ({len(cfg.class_names)}: {cfg.class_names[:3]}...) differ from the data's "
            f"({len(names)}: {names[:3]}...); remove class_names from the config to take the data's"
        )
    check_num_classes(train_set, cfg.model.num_classes, f"config '{cfg.name}' (model.num_classes)")
    if not any(len(record.boxes) for record in train_set.records):
        counted = ", ".join(f"{k}: {v}" for k, v in train_set.issues.items()) or "none"
        raise TrainError(
            f"{data} (split '{run_info.get('train_split', 'train')}'): none of its {len(train_set.records)} images "
            f"has a box to learn from (problems found while loading: {counted}); check the labels (class ids, "
            "box format, file names)")
    cfg.class_names = names
    val_set = None
    if not run_info.get("no_val"):
        val_data = run_info.get("val_data") or data
        val_set = _load_split(val_data, run_info.get("val_split", "val"))
        if list(val_set.class_names) != names:
            raise TrainError(
                f"the validation data {val_data} has other classes than the training data "
                f"({len(val_set.class_names)} vs {len(names)}); both must list the same classes in the same order"
            )

    if int(os.environ.get("RANK", "0")) == 0:
        _print_start(out_dir, resume_path, cfg, train_set, val_set)
    trainer = Trainer(
        cfg, train_set.records, val_set, out_dir,
        device=args.device,
        weights=None if resume_path else run_info.get("weights"),
        resume=str(resume_path) if resume_path else None,
        aux_init=run_info.get("aux_init") or "copy",
        aux_warmup_epochs=run_info.get("aux_warmup_epochs"),
        calibrate_images=run_info.get("bn_calibration_images", 256),
        freeze_bn=bool(run_info.get("freeze_bn")),
        workers=args.workers,
        progress=not args.no_progress,
        run_info=run_info,
    )
    try:
        row = trainer.fit()
    finally:
        from nanoplus.train import distributed as du

        du.cleanup()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run folder: {out_dir}")
        if row.get("best_map") is not None:
            print(f"best mAP {row['best_map']:.4f} (EMA weights): {out_dir / 'best.ckpt'}")
    return 0
