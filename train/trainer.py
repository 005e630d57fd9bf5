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

The parts around the loop have their own modules: ``weights`` (``--weights``, BatchNorm
calibration), ``optimizer`` (freezing, AdamW), ``schedule`` (learning rate), ``ema``,
``validate`` (the runtime's model -> detections -> COCO mAP path), ``run_log`` (CSV / JSON / curves),
``rng_state`` and ``checkpoint``.
"""
from __future__ import annotations

import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from nanoplus.atomic import remove_stale_temp_files
from nanoplus.train import distributed as du
from nanoplus.train.config import Config, save_config
from nanoplus.runtime.metadata import meta_from_config
from nanoplus.train.dataset import DetectionDataset, collate
from nanoplus.train.ema import ModelEMA
from nanoplus.train.errors import TrainError
from nanoplus.train.optimizer import apply_freeze, build_optimizer, set_train_mode
from nanoplus.train.rng_state import capture_rng_state, restore_rng_state
from nanoplus.train.run_log import LOSS_KEYS, RunLog, plain
from nanoplus.train.schedule import build as build_schedule
from nanoplus.train.validate import evaluate
from nanoplus.train.weights import calibrate_batchnorm, start_from_weights

__all__ = ["STOP_AFTER_STEPS_ENV", "TrainError", "Trainer"]

# Testing aid, and a way to bound a run: stop (as Ctrl-C would) once this many optimiser steps
# have been taken in total. The run then resumes from its last checkpoint.
STOP_AFTER_STEPS_ENV = "NANOPLUS_STOP_AFTER_STEPS"


class _ForwardTrain(nn.Module):
    """DDP synchronises gradients only for calls of ``forward``: route ``forward_train`` through it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images, gt_bboxes, gt_labels, epoch: int):
        return self.model.forward_train(images, gt_bboxes, gt_labels, epoch)


def loader_workers(requested: int, device_type: str = "cpu") -> int:
    """Data loader processes: ``requested``, or for -1 (the default) what the device wants.

    Training on the CPU: none. The step uses every core, and the data pipeline is some 60x faster
    than it (coco128 at 416: 210 images/s in one process against 3.3 images/s for the step on 2 cores,
    ``bench/train_throughput.py --data``), so loader processes only compete with the step: a real
    epoch took 52 s with 2 workers, 51 s with 1 and 38 s with none. On a GPU: one per CPU core this
    process may use, to keep the GPU fed. (A fixed 4 made PyTorch warn twice a run on 2-core machines.)
    """
    if requested >= 0:
        return requested
    if device_type == "cpu":
        return 0
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


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
        self.requested_workers = cfg.train.workers if workers is None else workers
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
        self.workers = loader_workers(self.requested_workers, self.device.type)
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
        if cfg.train.channels_last:
            model.use_channels_last()
        model.use_winograd(cfg.train.winograd)
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
            self.assign_from_main_until = start_from_weights(
                model, self.weights, self.class_names, self.aux_init, self.aux_warmup_epochs,
                cfg.train.epochs, self.log)

        meta = meta_from_config(cfg, self.class_names)
        self.meta = meta
        self.train_set = DetectionDataset(self.train_records, meta, cfg.data.augment, seed=cfg.train.seed,
                                          min_box_size=cfg.data.augment.min_box_size)
        self.train_sampler = torch.utils.data.DistributedSampler(
            self.train_set, num_replicas=self.world, rank=self.dist.rank, shuffle=True, seed=cfg.train.seed
        )
        per_rank = math.ceil(len(self.train_set) / self.world)
        # drop a ragged last batch (BatchNorm on a batch of 1 is useless) unless that leaves nothing
        drop_last = per_rank >= self.batch_per_rank
        self.train_loader = self._loader(self.train_set, self.batch_per_rank, self.train_sampler, drop_last)
        if len(self.train_loader) == 0:
            raise TrainError(f"the training split has {len(self.train_set)} images: no batch to train on")

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
            self._restore_training_state(ckpt)

        self.train_model = model
        if self.dist.distributed:
            self.train_model = nn.parallel.DistributedDataParallel(
                _ForwardTrain(model),
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                # Every parameter gets a gradient on every rank, also on a rank without positives
                # (the box losses are then a zero that keeps the graph; tests/test_distributed.py).
                find_unused_parameters=False,
            )

    def _restore_training_state(self, ckpt: dict) -> None:
        """Optimiser, schedule, scaler, EMA, counters, history and RNG from a ``last.ckpt``."""
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
        self.log(f"resumed {self.resume}: epoch {self.start_epoch}/{self.cfg.train.epochs} done, "
                 f"global step {self.global_step}, best mAP {self.best_map}")

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

    # -- the run ---------------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train to ``cfg.train.epochs``; returns the last epoch's row (losses, lr, metrics)."""
        self._setup()
        cfg = self.cfg
        main = du.rank() == 0
        stop_env = os.environ.get(STOP_AFTER_STEPS_ENV)
        stop_after = int(stop_env) if stop_env else None

        run_log = None
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            for stale in remove_stale_temp_files(self.out_dir):  # left by a killed run (up to 68 MB each)
                self.log(f"removed {stale.name}, a temporary file of an interrupted run")
            save_config(cfg, self.out_dir / "config.yaml")
            run_log = RunLog(self.out_dir, self.global_step if self.resume else None)
            self.history = [h for h in self.history if h["epoch"] <= self.start_epoch]

        def step_log(row: dict) -> None:
            if run_log is not None:
                run_log.add_step(row)

        previous_sigterm = None
        if threading_main():
            previous_sigterm = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        last_row: dict = self.history[-1] if self.history else {}
        try:
            if self.start_epoch >= cfg.train.epochs:
                self.log(f"nothing to do: {self.start_epoch} of {cfg.train.epochs} epochs are done")
            for epoch in range(self.start_epoch, cfg.train.epochs):
                t0 = time.time()
                row = {"epoch": epoch + 1, **self._train_epoch(epoch, stop_after, step_log)}
                row["time_s"] = round(time.time() - t0, 2)
                self.log(f"epoch {epoch + 1}/{cfg.train.epochs}: " + " ".join(
                    f"{k}={row[k]:.4f}" for k in LOSS_KEYS if k in row) + f" lr={row['lr']:.2e} ({row['time_s']:.0f} s)")
                last_epoch = epoch + 1 == cfg.train.epochs
                if self.val_set is not None and ((epoch + 1) % max(cfg.train.val_interval, 1) == 0 or last_epoch):
                    eval_model = self.ema.module if self.ema is not None else self.model
                    du.broadcast_module(eval_model)  # every rank evaluates rank 0's weights
                    metrics = evaluate(eval_model, self.val_set, self.meta, cfg.eval, self.device, self.amp)
                    metrics = du.broadcast_object(metrics)
                    row.update({k: float(metrics[k]) for k in ("mAP", "AP50", "AP75") if k in metrics})
                    improved = self.best_map is None or row["mAP"] > self.best_map
                    if improved:
                        self.best_map = row["mAP"]
                    from nanoplus.runtime.evaluate import format_metrics

                    self.log(f"epoch {epoch + 1}: mAP {row['mAP']:.4f}  AP50 {row.get('AP50', float('nan')):.4f}"
                             f"  (best {self.best_map:.4f}; {'EMA' if self.ema is not None else 'model'} weights)\n"
                             + format_metrics(metrics))
                    row["per_class"] = plain(metrics.get("per_class"))
                else:
                    improved = False
                row["best_map"] = self.best_map
                self.history.append(row)
                if main:
                    # the logs first: a kill before the checkpoint's rename leaves rows that the
                    # resumed run drops and writes again; the other order lost them for good
                    run_log.write_epoch(self.history, self.run_info, self.class_names, self.best_map)
                    fields = self._checkpoint_fields(epoch + 1)
                    self._save("last.ckpt", fields)
                    if improved:
                        self._save("best.ckpt", fields)
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
