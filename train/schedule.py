"""Learning rate: warm-up over the first optimiser steps, then cosine annealing per epoch (SPEC §2).

Two schedules, chosen by ``train.schedule``:

``cosine`` (the default) — closed form, the rate is a function of (epoch, global step) only:

- optimiser step ``s`` (0-based) with s <= warmup_steps: lr * k(s), where with W = warmup_steps
  and r = warmup_ratio the factor k(s) is (``train.warmup``)
  linear: 1 - (1 - s / W) * (1 - r);   exp: r ** (1 - s / W);   constant: r
- afterwards, during epoch ``e`` (0-based) of ``epochs``:
  min_lr + (lr - min_lr) * (1 + cos(pi * e / epochs)) / 2

``upstream`` — exactly what upstream NanoDet-Plus's trainer does (``nanodet/trainer/task.py``):
its ``optimizer_step`` writes lr * k(s) into every param group while s <= W, and Lightning steps
PyTorch's ``CosineAnnealingLR(T_max=epochs, eta_min=min_lr)`` once at the end of every epoch.
That scheduler is recursive: at the end of epoch e it sets

    lr <- min_lr + (lr - min_lr) * (1 + cos(pi * (e + 1) / epochs)) / (1 + cos(pi * e / epochs))

from whatever rate the group holds, which is the warm-up's rate when the warm-up is still running.
When the warm-up ends inside epoch E > 0 the rate then stays at lr until that epoch ends, and the
cosine continues from lr instead of from the lower closed-form value; in a short run (few steps
per epoch, warm-up spanning epochs) the rate is 10-15 % higher than ``cosine`` in the first
epochs. When the warm-up ends within the first epoch the two schedules agree (except ``constant``
warm-up, which upstream leaves at lr * r until the epoch ends).

A param group may carry ``lr_scale`` (e.g. a smaller rate for a fine-tuned backbone): its base
rate is lr * lr_scale. ``cosine`` scales the whole rate; ``upstream`` uses one ``min_lr`` for every
group, as PyTorch's scheduler does.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the config loader imports the names below without torch
    import torch

SCHEDULES = ("cosine", "upstream")
WARMUPS = ("linear", "exp", "constant")


def warmup_factor(step: int, warmup_steps: int, warmup_ratio: float, warmup: str = "linear") -> float:
    """k(step) for 0 <= step <= warmup_steps: warmup_ratio-ish at step 0, 1 at warmup_steps."""
    progress = step / warmup_steps
    if warmup == "linear":
        return 1.0 - (1.0 - progress) * (1.0 - warmup_ratio)
    if warmup == "exp":
        return warmup_ratio ** (1.0 - progress)
    if warmup == "constant":
        return warmup_ratio
    raise ValueError(f"warm-up must be one of {', '.join(WARMUPS)}, got {warmup!r}")


def learning_rate(
    epoch: int, step: int, lr: float, epochs: int, warmup_steps: int, warmup_ratio: float, min_lr: float,
    warmup: str = "linear",
) -> float:
    """The ``cosine`` rate for optimiser step ``step`` (global, 0-based) taken during ``epoch`` (0-based)."""
    if warmup_steps > 0 and step <= warmup_steps:
        return lr * warmup_factor(step, warmup_steps, warmup_ratio, warmup)
    return min_lr + (lr - min_lr) * (1.0 + math.cos(math.pi * epoch / max(epochs, 1))) / 2.0


class _Schedule:
    """What both schedules are given: the optimiser and the config's train.lr / epochs / warm-up / min_lr."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        lr: float,
        epochs: int,
        warmup_steps: int,
        warmup_ratio: float,
        min_lr: float,
        warmup: str = "linear",
    ):
        self.optimizer = optimizer
        self.lr, self.epochs, self.min_lr = float(lr), int(epochs), float(min_lr)
        self.warmup_steps, self.warmup_ratio, self.warmup = int(warmup_steps), float(warmup_ratio), warmup


class WarmupCosineSchedule(_Schedule):
    """The ``cosine`` schedule: sets every param group's ``lr`` before each optimiser step."""

    def __init__(self, optimizer: torch.optim.Optimizer, *args, **kwargs):
        super().__init__(optimizer, *args, **kwargs)
        self.last_lr = self.rate(0, 0)

    def rate(self, epoch: int, step: int) -> float:
        return learning_rate(epoch, step, self.lr, self.epochs, self.warmup_steps, self.warmup_ratio, self.min_lr,
                             self.warmup)

    def step(self, epoch: int, step: int) -> float:
        self.last_lr = self.rate(epoch, step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.last_lr * group.get("lr_scale", 1.0)
        return self.last_lr

    def state_dict(self) -> dict:
        return {"schedule": "cosine", "last_lr": self.last_lr}

    def load_state_dict(self, state: dict) -> None:
        # The schedule's shape comes from the config; only the last rate is state.
        self.last_lr = float(state.get("last_lr", self.last_lr))


class UpstreamSchedule(_Schedule):
    """The ``upstream`` schedule: warm-up writes, plus a recursive cosine step at each epoch boundary.

    The rate lives in the optimiser's param groups, as with PyTorch's scheduler, so a resumed run
    (optimiser state restored, checkpoints taken at epoch ends) continues exactly. ``step(epoch,
    step)`` is called before every optimiser step; the first call in a new epoch applies the
    end-of-epoch cosine step(s) of the epochs that ended since the previous call.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *args, **kwargs):
        super().__init__(optimizer, *args, **kwargs)
        self.epoch = None  # epoch of the last step() call; None: not stepped since construction/resume
        for group in self.optimizer.param_groups:
            group["lr"] = self._base(group)  # as the optimiser starts upstream: at the configured rate
        self.last_lr = self.lr

    def _base(self, group: dict) -> float:
        return self.lr * group.get("lr_scale", 1.0)

    def _end_of_epoch(self, finished_epoch: int) -> None:
        """CosineAnnealingLR.step() after epoch ``finished_epoch`` (0-based), recursive form."""
        t = finished_epoch + 1  # the scheduler's last_epoch after the step
        ratio = (1.0 + math.cos(math.pi * t / self.epochs)) / (1.0 + math.cos(math.pi * (t - 1) / self.epochs))
        for group in self.optimizer.param_groups:
            group["lr"] = self.min_lr + (group["lr"] - self.min_lr) * ratio

    def step(self, epoch: int, step: int) -> float:
        if self.epoch is None:
            # Fresh start: nothing ended yet. Resumed at epoch e: the optimiser holds the rate as it was
            # when epoch e - 1 ended, before that epoch's scheduler step.
            self.epoch = max(epoch - 1, 0)
        for finished in range(self.epoch, min(epoch, self.epochs - 1)):
            self._end_of_epoch(finished)
        self.epoch = epoch
        if self.warmup_steps > 0 and step <= self.warmup_steps:
            k = warmup_factor(step, self.warmup_steps, self.warmup_ratio, self.warmup)
            for group in self.optimizer.param_groups:
                group["lr"] = self._base(group) * k
        first = self.optimizer.param_groups[0]
        self.last_lr = first["lr"] / first.get("lr_scale", 1.0)
        return self.last_lr

    def state_dict(self) -> dict:
        return {"schedule": "upstream", "last_lr": self.last_lr}

    def load_state_dict(self, state: dict) -> None:
        # The rate itself comes back with the optimiser's param groups.
        self.last_lr = float(state.get("last_lr", self.last_lr))


def build(optimizer: torch.optim.Optimizer, train_cfg):
    """The schedule ``train_cfg.schedule`` names, over ``optimizer``'s param groups."""
    kinds = {"cosine": WarmupCosineSchedule, "upstream": UpstreamSchedule}
    return kinds[train_cfg.schedule](
        optimizer, train_cfg.lr, train_cfg.epochs, train_cfg.warmup_steps, train_cfg.warmup_ratio, train_cfg.min_lr,
        train_cfg.warmup,
    )
