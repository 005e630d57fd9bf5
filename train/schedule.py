"""Learning rate: linear warmup over the first steps, then cosine annealing per epoch (SPEC §2).

As upstream NanoDet-Plus (Lightning ``optimizer_step`` warmup + ``CosineAnnealingLR`` stepped per
epoch), written in closed form so that the rate is a function of (epoch, global step) only — a
resumed run lands on exactly the same rate:

- optimiser step ``s`` (0-based) with s <= warmup_steps:
  lr * (1 - (1 - s / warmup_steps) * (1 - warmup_ratio))   (lr * warmup_ratio at s = 0)
- afterwards, during epoch ``e`` (0-based) of ``epochs``:
  min_lr + (lr - min_lr) * (1 + cos(pi * e / epochs)) / 2

Upstream's CosineAnnealingLR is the recursive form, which starts from whatever rate the warmup
left in the optimiser; the closed form is the schedule it approximates.
"""
from __future__ import annotations

import math

import torch


def learning_rate(
    epoch: int, step: int, lr: float, epochs: int, warmup_steps: int, warmup_ratio: float, min_lr: float
) -> float:
    """The rate for optimiser step ``step`` (global, 0-based) taken during ``epoch`` (0-based)."""
    if warmup_steps > 0 and step <= warmup_steps:
        return lr * (1.0 - (1.0 - step / warmup_steps) * (1.0 - warmup_ratio))
    return min_lr + (lr - min_lr) * (1.0 + math.cos(math.pi * epoch / max(epochs, 1))) / 2.0


class WarmupCosineSchedule:
    """Sets every param group's ``lr`` before each optimiser step.

    A param group may carry ``lr_scale`` (e.g. a smaller rate for a fine-tuned backbone).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        lr: float,
        epochs: int,
        warmup_steps: int,
        warmup_ratio: float,
        min_lr: float,
    ):
        self.optimizer = optimizer
        self.lr, self.epochs, self.min_lr = float(lr), int(epochs), float(min_lr)
        self.warmup_steps, self.warmup_ratio = int(warmup_steps), float(warmup_ratio)
        self.last_lr = self.rate(0, 0)

    def rate(self, epoch: int, step: int) -> float:
        return learning_rate(epoch, step, self.lr, self.epochs, self.warmup_steps, self.warmup_ratio, self.min_lr)

    def step(self, epoch: int, step: int) -> float:
        self.last_lr = self.rate(epoch, step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.last_lr * group.get("lr_scale", 1.0)
        return self.last_lr

    def state_dict(self) -> dict:
        return {
            "lr": self.lr, "epochs": self.epochs, "min_lr": self.min_lr,
            "warmup_steps": self.warmup_steps, "warmup_ratio": self.warmup_ratio, "last_lr": self.last_lr,
        }

    def load_state_dict(self, state: dict) -> None:
        # The schedule's shape comes from the config; only the last rate is state.
        self.last_lr = float(state.get("last_lr", self.last_lr))


def build(optimizer: torch.optim.Optimizer, train_cfg) -> WarmupCosineSchedule:
    return WarmupCosineSchedule(
        optimizer, train_cfg.lr, train_cfg.epochs, train_cfg.warmup_steps, train_cfg.warmup_ratio, train_cfg.min_lr
    )
