"""The training loop: AdamW, warmup + cosine, gradient clipping, EMA, AMP on CUDA, DDP, exact resume.

One ``Trainer`` per run folder. Per optimiser step: set the learning rate for (epoch, global
step), ``model.forward_train`` (through DistributedDataParallel when there are several
processes), backward (scaled on CUDA with AMP), clip the gradient norm, step, update the EMA.
Per epoch: mean losses (averaged over ranks), evaluation of the EMA weights every
``val_interval`` epochs and at the end, ``last.ckpt`` (and ``best.ckpt`` by mAP), the CSV/JSON
logs and PNG curves. Rank 0 alone writes files; every rank runs the same collectives.

Resume: ``last.ckpt`` holds the model, EMA, optimiser, scheduler, AMP scaler, RNG states,
epoch, global step, best mAP and the epoch history. An interrupted epoch is run again from its
start, exactly as the uninterrupted run would have run it: the sampler order depends on
(seed, epoch) and every sample's augmentation on (seed, epoch, index), and the learning rate and
EMA ramp are functions of (epoch, global step).

Evaluation reuses the runtime: ``postprocess`` (decode + NMS, the project's one implementation),
``boxes_to_original`` and ``evaluate_detections`` (pycocotools).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from nanoplus.atomic import write_text_atomic
from nanoplus.errors import NanoplusError
from nanoplus.train import distributed as du
from nanoplus.train.config import Config, save_config
from nanoplus.train.dataset import DetectionDataset, collate, meta_from_config
from nanoplus.train.ema import ModelEMA
from nanoplus.train.schedule import build as build_schedule

# Testing aid, and a way to bound a run: stop (as Ctrl-C would) once this many optimiser steps
# have been taken in total. The run then resumes from its last checkpoint.
STOP_AFTER_STEPS_ENV = "NANOPLUS_STOP_AFTER_STEPS"

LOSS_KEYS = ("loss", "loss_qfl", "loss_bbox", "loss_dfl", "loss_aux_qfl", "loss_aux_bbox", "loss_aux_dfl")
STEP_FIELDS = ("step", "epoch", "lr") + LOSS_KEYS + ("num_pos", "grad_norm")


class TrainError(NanoplusError):
    """A training set-up the trainer refuses; the message says which field or option to change."""


# ------------------------------------------------------------------------------------------------
# Parameters: freezing, optimiser


def apply_freeze(model: nn.Module, prefixes: Sequence[str]) -> list[str]:
    """requires_grad=False for parameters whose name starts with one of ``prefixes``.

    Returns the frozen parameter names. A prefix that matches nothing is an error (a typo would
    otherwise silently train everything).
    """
    frozen = []
    for prefix in prefixes:
        matched = [n for n, _ in model.named_parameters() if _matches(n, prefix)]
        if not matched:
            top = sorted({n.split(".")[0] for n, _ in model.named_parameters()})
            raise TrainError(
                f"train.freeze: prefix '{prefix}' matches no parameter; parameter names start with "
                f"{', '.join(top)} (e.g. train.freeze=[backbone] or [backbone.stage2])"
            )
        frozen += matched
    for name, p in model.named_parameters():
        if name in frozen:
            p.requires_grad_(False)
    return frozen


def _matches(name: str, prefix: str) -> bool:
    prefix = prefix.rstrip(".")
    return name == prefix or name.startswith(prefix + ".")


def set_train_mode(model: nn.Module, frozen_prefixes: Sequence[str], freeze_bn: bool = False) -> None:
    """model.train(), but frozen parts stay in eval mode: their BatchNorm keeps its statistics.

    freeze_bn: every BatchNorm normalises with its running statistics and leaves them unchanged
    (its scale and shift still train) — for fine-tuning with small batches.
    """
    model.train()
    for name, module in model.named_modules():
        if name and any(_matches(name, p) for p in frozen_prefixes):
            module.eval()
        elif freeze_bn and isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def build_optimizer(model: nn.Module, train_cfg) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters with one weight decay for all of them.

    Upstream NanoDet-Plus m_416 decays every parameter (its optimiser builder can exempt norms,
    but the published config does not ask for it), and so does this.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainError("every parameter is frozen (train.freeze); nothing would be trained")
    return torch.optim.AdamW(params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)


# ------------------------------------------------------------------------------------------------
# RNG state (stored in checkpoints as plain tensors / numbers / lists)


def capture_rng_state() -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Optional[dict]) -> None:
    if not state:
        return
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------------------
# Weights


def load_weights_into(model: nn.Module, state: dict, source: str, log: Callable = print) -> dict:
    """Load ``state`` by name, non-strictly (``checkpoint.load_state_dict_non_strict``: entries of
    another shape are skipped, unknown ones dropped), and say so in a few lines rather than one
    per entry. Returns that function's report (loaded / skipped / unexpected / missing)."""
    from nanoplus.train.checkpoint import load_state_dict_non_strict

    report = load_state_dict_non_strict(model, state, source, logger=lambda _msg: None)

    def some(names):
        return ", ".join(names[:4]) + (" ..." if len(names) > 4 else "")

    if report["skipped"]:
        log(f"weights {source}: {len(report['skipped'])} entries have another shape and keep their fresh "
            f"initialisation (e.g. another class count): {some(report['skipped'])}")
    if report["unexpected"]:
        log(f"weights {source}: {len(report['unexpected'])} entries unknown to this model were ignored: "
            f"{some(report['unexpected'])}")
    deploy_missing = [m for m in report["missing"] if not m.startswith(("aux_fpn.", "aux_head."))]
    if deploy_missing:
        log(f"weights {source}: {len(deploy_missing)} deploy entries are not in the file and keep their "
            f"initialisation: {some(deploy_missing)}")
    return report


def read_weights_file(path: str) -> tuple[dict, Optional[list]]:
    """(state_dict, class_names or None) from a nanoplus checkpoint (EMA weights preferred) or an
    upstream NanoDet .ckpt / .pth."""
    from nanoplus.train import checkpoint as ckpt_lib

    if not Path(path).is_file():
        raise TrainError(f"--weights {path}: no such file")
    try:
        ckpt = ckpt_lib.load_checkpoint(path)
    except NanoplusError:
        return ckpt_lib.load_upstream_weights(path), None
    state = ckpt.get("ema") or ckpt["model"]
    return state, ckpt.get("class_names")


def init_aux_from_main(model: nn.Module) -> None:
    """aux_fpn <- a copy of fpn, as upstream builds the model (aux_head keeps its initialisation)."""
    aux_fpn = getattr(model, "aux_fpn", None)
    if aux_fpn is None:
        return
    aux_fpn.load_state_dict(model.fpn.state_dict())


def _is_unfolded(bn: nn.Module) -> bool:
    return bool(torch.all(bn.running_mean == 0)) and bool(torch.all(bn.running_var == 1))


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, loader, device: torch.device, max_images: int = 256,
                        only_unfolded: bool = True) -> int:
    """Re-estimate BatchNorm statistics on real data without changing the eval-mode function.

    Weights taken from a deployed model (NCNN, ONNX) had BatchNorm folded into the convolutions;
    un-folded, each BN holds running_mean 0 / running_var 1 and the eval output is right, but in
    train mode BN normalises with the batch's statistics, which are nothing like (0, 1): the first
    training steps would compute a different network and wreck it. For each such layer (all
    layers with ``only_unfolded=False``) the input's per-channel mean m and variance v are measured
    over ``max_images`` images in eval mode, then

        gamma' = gamma * sqrt(v + eps) / sqrt(rv + eps),  beta' = beta + gamma * (m - rm) / sqrt(rv + eps),
        running_mean = m, running_var = v

    which leaves the eval output unchanged and makes train-mode BN (batch statistics ~ m, v) compute
    (almost) the same function. Statistics are summed over all ranks. Returns the number of layers.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
              and m.track_running_stats and (not only_unfolded or _is_unfolded(m))]
    if not layers:
        return 0
    sums = {bn: None for bn in layers}

    def hook(bn, inputs):
        z = inputs[0].detach().double().transpose(0, 1).flatten(1)  # (C, N*H*W)
        part = torch.stack([torch.full_like(z[:, 0], z.shape[1]), z.sum(1), (z * z).sum(1)])
        sums[bn] = part if sums[bn] is None else sums[bn] + part

    handles = [bn.register_forward_pre_hook(hook) for bn in layers]
    was_training = model.training
    model.eval()
    seen = 0
    try:
        for batch in loader:
            images = batch["images"].to(device)
            feats = model.backbone(images)
            model.head(model.fpn(feats))
            if getattr(model, "aux_fpn", None) is not None:
                model.aux_fpn(feats)
            seen += images.shape[0] * du.world_size()
            if seen >= max_images:
                break
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for bn in layers:
        part = du.all_reduce_sum(sums[bn])
        count, total, total_sq = part[0], part[1], part[2]
        mean = total / count
        var = (total_sq / count - mean * mean).clamp(min=0)
        old_std = (bn.running_var.double() + bn.eps).sqrt()
        if bn.affine:
            gamma = bn.weight.detach().double()
            bn.bias.copy_((bn.bias.double() + gamma * (mean - bn.running_mean.double()) / old_std).to(bn.bias.dtype))
            bn.weight.copy_((gamma * (var + bn.eps).sqrt() / old_std).to(bn.weight.dtype))
        bn.running_mean.copy_(mean.to(bn.running_mean.dtype))
        bn.running_var.copy_(var.to(bn.running_var.dtype))
    return len(layers)


# ------------------------------------------------------------------------------------------------
# Evaluation


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


def _plain(obj):
    """numpy scalars / arrays -> Python numbers and lists (checkpoints load with weights_only)."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


# ------------------------------------------------------------------------------------------------
# Logs


def _csv_text(rows: list[dict], keys: Optional[Sequence[str]] = None) -> str:
    if keys is None:
        keys = []
        for row in rows:
            keys += [k for k in row if k not in keys and not isinstance(row[k], (dict, list))]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in keys})
    return buf.getvalue()


def read_csv_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _num(v):
    if v in ("", None):
        return None
    try:
        f = float(v)
    except ValueError:
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f


# ------------------------------------------------------------------------------------------------
# The trainer


class _ForwardTrain(nn.Module):
    """DDP synchronises gradients only for calls of ``forward``: route ``forward_train`` through it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images, gt_bboxes, gt_labels, epoch: int):
        return self.model.forward_train(images, gt_bboxes, gt_labels, epoch)


class Trainer:
    """Trains ``cfg`` on ``train_records`` and evaluates on ``val_set``, writing into ``out_dir``.

    train_records: ImageRecord list (``nanoplus.runtime.datasets``); val_set: the runtime
    DetectionDataset (its records and its COCO evaluation). ``weights``: a checkpoint to start
    from (fine-tuning); ``resume``: a ``last.ckpt`` to continue exactly.
    aux_init: what to do when ``weights`` has no aux branch (deploy-only weights): "copy"
    (aux_fpn = copy of fpn, fresh aux head, labels assigned from the aux head as usual),
    or "main-assign" (same copy, and labels are assigned from the main head for the first
    ``aux_warmup_epochs`` epochs while the aux head learns).
    """

    def __init__(
        self,
        cfg: Config,
        train_records: Sequence,
        val_set,
        out_dir: str | os.PathLike,
        *,
        device: Optional[str] = None,
        weights: Optional[str] = None,
        resume: Optional[str] = None,
        aux_init: str = "copy",
        aux_warmup_epochs: Optional[int] = None,
        calibrate_images: int = 256,
        freeze_bn: bool = False,
        workers: Optional[int] = None,
        progress: bool = True,
        run_info: Optional[dict] = None,
        log: Callable[[str], None] = None,
    ):
        self.cfg = cfg
        self.train_records = list(train_records)
        self.val_set = val_set
        self.out_dir = Path(out_dir)
        self.device_name = device
        self.weights = weights
        self.resume = resume
        if aux_init not in ("copy", "main-assign"):
            raise TrainError(f"--aux-init must be 'copy' or 'main-assign', got '{aux_init}'")
        self.aux_init = aux_init
        self.aux_warmup_epochs = aux_warmup_epochs
        self.calibrate_images = int(calibrate_images)
        self.freeze_bn = bool(freeze_bn)
        self.workers = cfg.train.workers if workers is None else workers
        self.progress = progress
        self.run_info = dict(run_info or {})
        self._log = log
        self.class_names = list(cfg.class_names or [])
        if len(self.class_names) != cfg.model.num_classes:
            raise TrainError(
                f"the config has {cfg.model.num_classes} classes but {len(self.class_names)} class names; "
                f"set model.num_classes={len(self.class_names)}"
            )

    # -- small helpers ---------------------------------------------------------------------------
    def log(self, text: str) -> None:
        if du.rank() == 0:
            if self._log is not None:
                self._log(text)
            else:
                from tqdm import tqdm

                tqdm.write(text)

    def _loader(self, dataset, batch_size, sampler, drop_last):
        return torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, num_workers=self.workers,
            collate_fn=collate, drop_last=drop_last, pin_memory=self.device.type == "cuda",
            persistent_workers=False,  # workers are re-made each epoch and see set_epoch
        )

    # -- set-up ----------------------------------------------------------------------------------
    def _setup(self) -> None:
        from nanoplus.train import checkpoint as ckpt_lib
        from nanoplus.train.model import build_model

        cfg = self.cfg
        self.dist = du.setup(self.device_name)
        self.device = self.dist.device
        self.world = self.dist.world_size
        if cfg.train.batch_size % self.world:
            raise TrainError(
                f"train.batch_size={cfg.train.batch_size} is the total over {self.world} processes and must "
                f"divide evenly; use a multiple of {self.world}"
            )
        self.batch_per_rank = cfg.train.batch_size // self.world
        self.amp = bool(cfg.train.amp and self.device.type == "cuda")

        torch.manual_seed(cfg.train.seed)  # same initial weights on every rank (DDP also broadcasts)
        model = build_model(cfg.model).to(self.device)
        self.model = model
        self.assign_from_main_until = 0  # epochs during which labels come from the main head

        ckpt = None
        if self.resume:
            ckpt = ckpt_lib.load_checkpoint(self.resume)
            if ckpt.get("optimizer") is None:
                raise TrainError(
                    f"--resume {self.resume}: this checkpoint holds no training state (optimizer); "
                    "it can start a new run with --weights instead"
                )
            model.load_state_dict(ckpt["model"])
            self.assign_from_main_until = int(ckpt.get("assign_from_main_until") or 0)
        elif self.weights:
            state, weight_names = read_weights_file(self.weights)
            load_weights_into(model, state, self.weights, self.log)
            if weight_names and list(weight_names) != self.class_names and len(weight_names) == len(self.class_names):
                first = next(i for i, (a, b) in enumerate(zip(weight_names, self.class_names)) if a != b)
                self.log(f"weights {self.weights}: class {first} is '{weight_names[first]}' there and "
                         f"'{self.class_names[first]}' in the data (classes are matched by index)")
            has_aux_module = any(n.startswith(("aux_fpn.", "aux_head.")) for n in model.state_dict())
            has_aux_weights = any(k.startswith(("aux_fpn.", "aux_head.")) for k in state)
            if has_aux_module and not has_aux_weights:
                init_aux_from_main(model)
                if self.aux_init == "main-assign":
                    self.assign_from_main_until = (
                        self.aux_warmup_epochs if self.aux_warmup_epochs is not None else cfg.train.epochs
                    )
                self.log(
                    f"weights {self.weights}: deploy-only (no aux branch): aux_fpn starts as a copy of fpn, "
                    f"aux_head fresh; "
                    + (f"labels are assigned from the main head for {self.assign_from_main_until} epoch(s)"
                       if self.assign_from_main_until else "labels are assigned from the aux head")
                )

        meta = meta_from_config(cfg, self.class_names)
        self.meta = meta
        self.train_set = DetectionDataset(self.train_records, meta, cfg.data.augment, seed=cfg.train.seed)
        self.train_sampler = torch.utils.data.DistributedSampler(
            self.train_set, num_replicas=self.world, rank=self.dist.rank, shuffle=True, seed=cfg.train.seed
        )
        per_rank = math.ceil(len(self.train_set) / self.world)
        # drop a ragged last batch (BatchNorm on a batch of 1 is useless) unless that leaves nothing
        drop_last = per_rank >= self.batch_per_rank
        self.train_loader = self._loader(self.train_set, self.batch_per_rank, self.train_sampler, drop_last)
        if len(self.train_loader) == 0:
            raise TrainError(f"the training split has {len(self.train_set)} images: no batch to train on")

        self.val_loader = None
        if self.val_set is not None:
            val_ds = DetectionDataset(self.val_set.records, meta, None)
            shard = list(range(self.dist.rank, len(val_ds), self.world))
            self.val_loader = self._loader(
                torch.utils.data.Subset(val_ds, shard), self.batch_per_rank, None, drop_last=False
            )

        if self.weights and not self.resume and self.calibrate_images > 0:
            layers = calibrate_batchnorm(model, self.train_loader, self.device,
                                         max_images=self.calibrate_images, only_unfolded=True)
            if layers:
                self.log(f"weights {self.weights}: {layers} BatchNorm layers had folded statistics (mean 0, "
                         f"var 1, as an NCNN/exported model gives); re-estimated on the training data "
                         f"(function-preserving), so that training-mode BatchNorm matches the model")

        self.frozen = apply_freeze(model, cfg.train.freeze) if cfg.train.freeze else []
        self.optimizer = build_optimizer(model, cfg.train)
        self.schedule = build_schedule(self.optimizer, cfg.train)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.ema = ModelEMA(model, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None

        self.start_epoch, self.global_step, self.best_map = 0, 0, None
        self.history: list[dict] = []
        if ckpt is not None:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.schedule.load_state_dict(ckpt.get("scheduler") or {})
            if ckpt.get("scaler") and self.amp:
                self.scaler.load_state_dict(ckpt["scaler"])
            if self.ema is not None and ckpt.get("ema") is not None:
                self.ema.load_state_dict(ckpt["ema"])
            self.start_epoch = int(ckpt["epoch"])
            self.global_step = int(ckpt["global_step"])
            self.best_map = ckpt.get("best_map")
            self.history = list(ckpt.get("history") or [])
            restore_rng_state(ckpt.get("rng"))
            self.log(f"resumed {self.resume}: epoch {self.start_epoch}/{cfg.train.epochs} done, "
                     f"global step {self.global_step}, best mAP {self.best_map}")

        self.train_model = model
        if self.dist.distributed:
            self.train_model = nn.parallel.DistributedDataParallel(
                _ForwardTrain(model),
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                # Every parameter gets a gradient on every rank, also on a rank without positives
                # (the box losses are then a zero that keeps the graph; tests/test_distributed.py).
                find_unused_parameters=False,
            )

    # -- one epoch -------------------------------------------------------------------------------
    def _train_epoch(self, epoch: int, stop_after: Optional[int], step_log) -> dict:
        cfg = self.cfg
        model, train_model = self.model, self.train_model
        set_train_mode(model, cfg.train.freeze, self.freeze_bn)
        self.train_sampler.set_epoch(epoch)
        self.train_set.set_epoch(epoch)
        if hasattr(model, "assign_from"):
            model.assign_from = "main" if epoch < self.assign_from_main_until else "aux"
        params = [p for p in model.parameters() if p.requires_grad]
        sums = {k: 0.0 for k in LOSS_KEYS}
        num_pos_sum, steps = 0.0, 0
        present: set = set()

        bar = None
        iterator = self.train_loader
        if self.progress and du.rank() == 0:
            from tqdm import tqdm

            bar = tqdm(iterator, total=len(self.train_loader), desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                       dynamic_ncols=True, leave=True, file=sys.stderr)
            iterator = bar
        for batch in iterator:
            lr = self.schedule.step(epoch, self.global_step)
            images = batch["images"].to(self.device, non_blocking=True)
            gt_boxes = [b.to(self.device) for b in batch["boxes"]]
            gt_labels = [lab.to(self.device) for lab in batch["labels"]]
            with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp):
                if isinstance(train_model, nn.parallel.DistributedDataParallel):
                    losses = train_model(images, gt_boxes, gt_labels, epoch)
                else:
                    losses = model.forward_train(images, gt_boxes, gt_labels, epoch)
            loss = losses["loss"]
            # Logged values are those of the whole batch over all ranks: each rank's loss is its sum
            # over the global normaliser, so the mean over ranks is the one-process loss. Reduced
            # before backward so that every rank sees a non-finite loss and stops together.
            keys = [k for k in LOSS_KEYS if k in losses]
            logged = torch.stack([losses[k].detach().float() for k in keys]
                                 + [torch.as_tensor(losses.get("num_pos", 0), dtype=torch.float32, device=loss.device)])
            logged = du.all_reduce_mean(logged).tolist()
            values = dict(zip(keys, logged[:-1]))
            num_pos = logged[-1] * self.world  # positives in the whole batch
            if not math.isfinite(values["loss"]):
                raise TrainError(
                    f"the loss became {values['loss']} at epoch {epoch + 1}, step {self.global_step}; "
                    "lower train.lr or check the data's boxes"
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.train.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip))
            else:
                grad_norm = float("nan")
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.ema is not None:
                self.ema.update(model, self.global_step)

            for k, v in values.items():
                sums[k] += v
            present.update(values)
            num_pos_sum += num_pos
            steps += 1
            step_log({"step": self.global_step, "epoch": epoch, "lr": lr, **values, "num_pos": num_pos,
                      "grad_norm": grad_norm})
            self.global_step += 1
            if bar is not None:
                bar.set_postfix_str(
                    " ".join(f"{k.replace('loss_', '')}={v:.3f}" for k, v in values.items()) + f" lr={lr:.2e}",
                    refresh=False,
                )
            if stop_after is not None and self.global_step >= stop_after:
                if bar is not None:
                    bar.close()
                raise KeyboardInterrupt(f"{STOP_AFTER_STEPS_ENV}={stop_after} reached")
        if bar is not None:
            bar.close()
        keys = [k for k in LOSS_KEYS if k in present]
        row = {k: sums[k] / max(steps, 1) for k in keys}  # already averaged over ranks per step
        row["num_pos"] = num_pos_sum / max(steps, 1)
        row["lr"] = self.schedule.last_lr
        return row

    # -- checkpoints -------------------------------------------------------------------------------
    def _checkpoint_fields(self, epoch_done: int) -> dict:
        return dict(
            config=self.cfg.to_dict(),
            class_names=self.class_names,
            model=self.model.state_dict(),
            ema=self.ema.state_dict() if self.ema is not None else None,
            epoch=epoch_done,
            global_step=self.global_step,
            best_map=self.best_map,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.schedule.state_dict(),
            scaler=self.scaler.state_dict() if self.amp else None,
            rng=capture_rng_state(),
            history=self.history,
            assign_from_main_until=self.assign_from_main_until,
            run=self.run_info,
        )

    def _save(self, name: str, fields: dict) -> Path:
        from nanoplus.train import checkpoint as ckpt_lib

        path = self.out_dir / name
        ckpt_lib.save_checkpoint(path, **fields)
        return path

    # -- logs ----------------------------------------------------------------------------------------
    def _write_logs(self, step_rows: list[dict]) -> None:
        write_text_atomic(self.out_dir / "results.csv", _csv_text(self.history))
        write_text_atomic(self.out_dir / "results.json", json.dumps(
            {"run": self.run_info, "class_names": self.class_names, "best_map": self.best_map,
             "epochs": self.history}, indent=1, default=float))
        try:
            from nanoplus.train.plots import plot_curves

            plot_curves(step_rows, self.history, self.out_dir / "curves.png")
        except ImportError:  # matplotlib is optional for a run (pip install 'nanoplus[train]')
            pass

    # -- the run ---------------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train to ``cfg.train.epochs``; returns the last epoch's row (losses, lr, metrics)."""
        self._setup()
        cfg = self.cfg
        main = du.rank() == 0
        stop_env = os.environ.get(STOP_AFTER_STEPS_ENV)
        stop_after = int(stop_env) if stop_env else None

        steps_path = self.out_dir / "steps.csv"
        step_rows: list[dict] = []
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out_dir / "config.yaml")
            # keep the step log of the completed epochs only (an interrupted epoch is run again)
            if self.resume:
                step_rows = [r for r in read_csv_rows(steps_path) if r["step"] < self.global_step]
            write_text_atomic(steps_path, _csv_text(step_rows, STEP_FIELDS))
            self.history = [h for h in self.history if h["epoch"] <= self.start_epoch]

        def step_log(row: dict) -> None:
            if main:
                step_rows.append(row)

        previous_sigterm = None
        if threading_main():
            previous_sigterm = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        last_row: dict = self.history[-1] if self.history else {}
        try:
            if self.start_epoch >= cfg.train.epochs:
                self.log(f"nothing to do: {self.start_epoch} of {cfg.train.epochs} epochs are done")
            for epoch in range(self.start_epoch, cfg.train.epochs):
                t0 = time.time()
                n_before = len(step_rows)
                row = {"epoch": epoch + 1, **self._train_epoch(epoch, stop_after, step_log)}
                row["time_s"] = round(time.time() - t0, 2)
                self.log(f"epoch {epoch + 1}/{cfg.train.epochs}: " + " ".join(
                    f"{k}={row[k]:.4f}" for k in LOSS_KEYS if k in row) + f" lr={row['lr']:.2e} ({row['time_s']:.0f} s)")
                last_epoch = epoch + 1 == cfg.train.epochs
                if self.val_loader is not None and ((epoch + 1) % max(cfg.train.val_interval, 1) == 0 or last_epoch):
                    eval_model = self.ema.module if self.ema is not None else self.model
                    du.broadcast_module(eval_model)  # every rank evaluates rank 0's weights
                    metrics = evaluate(eval_model, self.val_set, self.val_loader, self.meta, cfg.eval, self.device, self.amp)
                    metrics = du.broadcast_object(metrics)
                    row.update({k: float(metrics[k]) for k in ("mAP", "AP50", "AP75") if k in metrics})
                    improved = self.best_map is None or row["mAP"] > self.best_map
                    if improved:
                        self.best_map = row["mAP"]
                    from nanoplus.runtime.evaluate import format_metrics

                    self.log(f"epoch {epoch + 1}: mAP {row['mAP']:.4f}  AP50 {row.get('AP50', float('nan')):.4f}"
                             f"  (best {self.best_map:.4f}; {'EMA' if self.ema is not None else 'model'} weights)\n"
                             + format_metrics(metrics))
                    row["per_class"] = _plain(metrics.get("per_class"))
                else:
                    improved = False
                row["best_map"] = self.best_map
                self.history.append(row)
                if main:
                    fields = self._checkpoint_fields(epoch + 1)
                    self._save("last.ckpt", fields)
                    if improved:
                        self._save("best.ckpt", fields)
                    with open(steps_path, "a", encoding="utf-8", newline="") as f:
                        writer = csv.DictWriter(f, fieldnames=STEP_FIELDS, extrasaction="ignore")
                        writer.writerows(step_rows[n_before:])
                    self._write_logs(step_rows)
                du.barrier()
                last_row = row
        except KeyboardInterrupt:
            done = self.history[-1]["epoch"] if self.history else self.start_epoch
            self.log(
                f"interrupted during epoch {done + 1} at global step {self.global_step}; {self.out_dir / 'last.ckpt'} "
                f"holds the {done} completed epoch(s); continue with: nanoplus train --resume {self.out_dir}"
            )
            raise
        finally:
            if previous_sigterm is not None:
                signal.signal(signal.SIGTERM, previous_sigterm)
        return last_row


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")
