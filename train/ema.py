"""Exponential moving average of a model's weights (all parameters and buffers), with a ramp.

As upstream NanoDet-Plus (its ``ExpMovingAverager``, from d2go): after optimiser step number
``step`` (0-based global step) every floating-point entry of the state dict moves as

    ema = ema * (1 - w) + model * w,    w = decay * exp(-(1 + step) / ramp) + (1 - decay)

so early on (w close to 1) the average follows the model, and it settles to ``decay`` (0.9998)
after a few ``ramp`` (2000) steps. Integer buffers (BatchNorm's ``num_batches_tracked``) are
copied. The average lives in its own module copy, kept in eval mode, which is what evaluation,
the best checkpoint and export use.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float = 0.9998, ramp: float = 2000.0):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.ramp = float(ramp)
        self.module = copy.deepcopy(unwrap(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def weight_of_new(self, step: int) -> float:
        """The weight w of the model's current values after optimiser step ``step``."""
        return self.decay * math.exp(-(1 + step) / self.ramp) + (1.0 - self.decay)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        w = self.weight_of_new(step)
        current = unwrap(model).state_dict()
        averages, values = [], []
        for name, avg in self.module.state_dict().items():
            value = current[name].detach()
            if avg.is_floating_point():
                averages.append(avg)
                values.append(value.to(avg.dtype))
            else:
                avg.copy_(value)
        if averages:  # ema * (1 - w) + model * w, as one multi-tensor op per term (same rounding as per tensor)
            torch._foreach_mul_(averages, 1.0 - w)
            torch._foreach_add_(averages, values, alpha=w)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DistributedDataParallel (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
