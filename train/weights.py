"""Weights into a model: does a state dict fit, non-strict loading, reading a ``--weights`` file,
starting a run from it (aux branch, class names), and BatchNorm re-calibration of un-folded weights.

``fit_state_dict`` is the one "does it fit" check: the import command refuses what does not fit,
the inference loader refuses it, the training loaders keep fresh weights for it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from nanoplus.errors import NanoplusError
from nanoplus.train import distributed as du
from nanoplus.train.errors import TrainError
from nanoplus.train.model import AUX_PREFIXES

log = logging.getLogger(__name__)


@dataclass
class StateFit:
    """How a state dict matches a model's, entry by entry."""

    usable: dict  # name -> tensor: in the model, with the model's shape
    mismatched: list  # (name, shape in the file, shape in the model)
    unexpected: list  # names the model does not have
    missing: list  # model entries absent from the state dict

    @property
    def missing_weights(self) -> list:
        """Missing entries that change what the model computes (not the num_batches_tracked counters)."""
        return [k for k in self.missing if not k.endswith("num_batches_tracked")]


def fit_state_dict(own: dict, state: dict) -> StateFit:
    """Compare ``state`` with a model's ``own`` state dict by name and shape."""
    usable, mismatched, unexpected = {}, [], []
    for name, value in state.items():
        if name not in own:
            unexpected.append(name)
        elif tuple(value.shape) != tuple(own[name].shape):
            mismatched.append((name, tuple(value.shape), tuple(own[name].shape)))
        else:
            usable[name] = value
    missing = [name for name in own if name not in state]
    return StateFit(usable, mismatched, unexpected, missing)


def has_aux_entries(names) -> bool:
    """True when any of ``names`` belongs to the training-only aux branch."""
    return any(n.startswith(AUX_PREFIXES) for n in names)


def load_state_dict_non_strict(model: nn.Module, state: dict, source: str = "weights",
                               logger: Callable[[str], None] = log.info) -> dict:
    """Upstream's non-strict load: entries of another shape are skipped (the model keeps its own),
    unknown names are dropped, absent entries keep their current values; each case is logged.

    -> {"loaded": [...], "skipped": [...], "unexpected": [...], "missing": [...]}.
    """
    fit = fit_state_dict(model.state_dict(), state)
    for name, theirs, ours in fit.mismatched:
        logger(f"{source}: skip {name}: shape {list(theirs)} in the file, {list(ours)} in the model")
    for name in fit.unexpected:
        logger(f"{source}: drop {name}: the model has no such entry")
    for name in fit.missing:
        logger(f"{source}: no {name} in the file; the model keeps its current value")
    model.load_state_dict(fit.usable, strict=False)
    return {"loaded": list(fit.usable), "skipped": [m[0] for m in fit.mismatched],
            "unexpected": fit.unexpected, "missing": fit.missing}


def load_weights_into(model: nn.Module, state: dict, source: str, log: Callable = print) -> dict:
    """Load ``state`` by name, non-strictly (``load_state_dict_non_strict``), and say so in a few
    lines rather than one per entry. Returns that function's report."""
    report = load_state_dict_non_strict(model, state, source, logger=lambda _msg: None)

    def some(names):
        return ", ".join(names[:4]) + (" ..." if len(names) > 4 else "")

    if report["skipped"]:
        log(f"weights {source}: {len(report['skipped'])} entries have another shape and keep their fresh "
            f"initialisation (e.g. another class count): {some(report['skipped'])}")
    if report["unexpected"]:
        log(f"weights {source}: {len(report['unexpected'])} entries unknown to this model were ignored: "
            f"{some(report['unexpected'])}")
    deploy_missing = [m for m in report["missing"] if not m.startswith(AUX_PREFIXES)]
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


def start_from_weights(model: nn.Module, path: str, class_names: Sequence[str], aux_init: str,
                       aux_warmup_epochs: Optional[int], epochs: int, log: Callable[[str], None]) -> int:
    """Load ``--weights`` into a fresh training model and return the number of epochs during which
    labels are assigned from the main head.

    Deploy-only weights (no aux branch) start aux_fpn as a copy of fpn; with ``aux_init``
    "main-assign" the main head assigns the labels for ``aux_warmup_epochs`` (default: all epochs)
    while the fresh aux head learns.
    """
    state, weight_names = read_weights_file(path)
    load_weights_into(model, state, path, log)
    if weight_names and list(weight_names) != list(class_names) and len(weight_names) == len(class_names):
        first = next(i for i, (a, b) in enumerate(zip(weight_names, class_names)) if a != b)
        log(f"weights {path}: class {first} is '{weight_names[first]}' there and "
            f"'{class_names[first]}' in the data (classes are matched by index)")
    assign_from_main_until = 0
    if has_aux_entries(model.state_dict()) and not has_aux_entries(state):
        init_aux_from_main(model)
        if aux_init == "main-assign":
            assign_from_main_until = aux_warmup_epochs if aux_warmup_epochs is not None else epochs
        log(f"weights {path}: deploy-only (no aux branch): aux_fpn starts as a copy of fpn, aux_head fresh; "
            + (f"labels are assigned from the main head for {assign_from_main_until} epoch(s)"
               if assign_from_main_until else "labels are assigned from the aux head"))
    return assign_from_main_until


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
