"""Upstream NanoDet's own training model and step, imported at run time from a user's checkout.

Nothing of upstream is copied here: ``DIR`` is a checkout of https://github.com/RangiLyu/nanodet
(Apache-2.0), e.g. ``git clone https://github.com/RangiLyu/nanodet /tmp/nanodet-upstream``; its
``nanodet`` package is put on ``sys.path`` and imported as it is.

What is stubbed (none of it runs in a training step):
- ``torchvision`` (does not import beside this torch; never install it here): a fake
  ``torchvision.ops`` whose ``nms`` raises if called. Upstream imports it at module level for
  ``multiclass_nms`` (post-processing only).
- ``nanodet.util``: its ``__init__`` imports pytorch-lightning, matplotlib, pycocotools and
  termcolor (checkpointing, logging, drawing). It is replaced by a bare package over the same folder
  that imports upstream's own ``box_transform``, ``misc``, ``util_mixins`` and ``config`` (its yacs
  config reader) for real, plus an ``overlay_bbox_cv`` that raises if called (drawing only).
Upstream's model (``nanodet.model.arch``), optimiser builder (``nanodet.optim``) and EMA
(``nanodet.model.weight_averager.ExpMovingAverager``) are upstream's own, unmodified.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

from nanoplus.errors import NanoplusError


class UpstreamCheckoutError(NanoplusError):
    pass


def check_checkout(upstream_dir, config_name: str) -> Path:
    """The upstream config file ``DIR/config/<config_name>.yml``, or a clear error about DIR."""
    root = Path(upstream_dir)
    if not (root / "nanodet" / "model" / "arch" / "nanodet_plus.py").is_file():
        raise UpstreamCheckoutError(
            f"--upstream {root}: no nanodet/model/arch/nanodet_plus.py there; give a checkout of upstream NanoDet "
            "(git clone https://github.com/RangiLyu/nanodet)")
    config = root / "config" / f"{config_name}.yml"
    if not config.is_file():
        raise UpstreamCheckoutError(f"--upstream {root}: no upstream config {config} for --config {config_name}; "
                                    "choose a --config that upstream also has (e.g. nanodet-plus-m_416)")
    return config


def _raise_not_in_training_step(name: str):
    def stub(*args, **kwargs):
        raise RuntimeError(f"{name} is stubbed by bench/upstream_nanodet.py: the training step never calls it")
    return stub


def import_upstream(upstream_dir) -> types.SimpleNamespace:
    """Import upstream's packages from ``upstream_dir`` with the stubs above; returns the pieces used."""
    root = Path(upstream_dir).resolve()
    if "nanodet" in sys.modules and not str(getattr(sys.modules["nanodet"], "__file__", "")).startswith(str(root)):
        raise UpstreamCheckoutError(f"another nanodet package is already imported ({sys.modules['nanodet']}); "
                                    "run in a fresh process")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    if "torchvision" not in sys.modules:
        torchvision = types.ModuleType("torchvision")
        ops = types.ModuleType("torchvision.ops")
        ops.nms = _raise_not_in_training_step("torchvision.ops.nms")
        torchvision.ops = ops
        sys.modules["torchvision"], sys.modules["torchvision.ops"] = torchvision, ops
    if "nanodet.util" not in sys.modules:
        import nanodet  # noqa: F401 -- upstream's top package (its __init__ only reads __about__)

        util = types.ModuleType("nanodet.util")
        util.__path__ = [str(root / "nanodet" / "util")]
        util.__package__ = "nanodet.util"
        sys.modules["nanodet.util"] = util
        import importlib

        for sub in ("box_transform", "misc", "util_mixins", "config"):
            module = importlib.import_module(f"nanodet.util.{sub}")
            setattr(util, sub, module)
        for name in ("bbox2distance", "distance2bbox"):
            setattr(util, name, getattr(util.box_transform, name))
        for name in ("images_to_levels", "multi_apply", "unmap"):
            setattr(util, name, getattr(util.misc, name))
        util.overlay_bbox_cv = _raise_not_in_training_step("nanodet.util.overlay_bbox_cv")
    from nanodet.model.arch import build_model
    from nanodet.model.weight_averager import ExpMovingAverager
    from nanodet.optim import build_optimizer
    from nanodet.util.config import cfg as default_cfg

    return types.SimpleNamespace(build_model=build_model, ExpMovingAverager=ExpMovingAverager,
                                 build_optimizer=build_optimizer, default_cfg=default_cfg)


def build_upstream(upstream_dir, config_name: str, num_classes: int, seed: int = 0):
    """Upstream's training model from its own YAML (read by its own yacs config code), with
    ``num_classes`` classes and ``pretrain=False`` (nothing is downloaded); returns (model, upstream
    namespace, config node)."""
    import torch

    config_file = check_checkout(upstream_dir, config_name)
    upstream = import_upstream(upstream_dir)
    cfg = upstream.default_cfg.clone()
    cfg.defrost()
    cfg.merge_from_file(str(config_file))
    arch = cfg.model.arch
    arch.backbone.pretrain = False
    arch.head.num_classes = num_classes
    if "aux_head" in arch:
        arch.aux_head.num_classes = num_classes
    cfg.freeze()
    torch.manual_seed(seed)
    return upstream.build_model(cfg.model).train(), upstream, cfg


def gt_meta(images, gt_boxes, gt_labels, epoch: int = 0) -> dict:
    """Our batch (images (B, 3, H, W); B tensors (n_i, 4) and (n_i,)) in the form upstream's
    ``forward_train`` takes after its collate: numpy float32 boxes, int64 labels, and an empty
    ignore-box array per image (as its CocoDataset gives when nothing is marked crowd)."""
    import numpy as np

    return {"img": images, "epoch": epoch,
            "gt_bboxes": [b.numpy().astype(np.float32) for b in gt_boxes],
            "gt_labels": [lab.numpy().astype(np.int64) for lab in gt_labels],
            "gt_bboxes_ignore": [np.zeros((0, 4), np.float32) for _ in gt_boxes]}


class UpstreamStep:
    """One upstream training step, as its Lightning task runs it: ``forward_train(gt_meta)``,
    backward, ``clip_grad_norm_`` (Lightning's gradient_clip_val), its ``build_optimizer`` (AdamW,
    lr / weight decay given), and its ``ExpMovingAverager`` update by global step."""

    def __init__(self, model, upstream, lr: float, weight_decay: float, grad_clip: float, ema_decay: float):
        self.model, self.grad_clip = model, grad_clip
        self.optimizer = upstream.build_optimizer(model, {"name": "AdamW", "lr": lr, "weight_decay": weight_decay})
        self.ema = upstream.ExpMovingAverager(ema_decay)
        self.ema.load_from(model)
        self.params = [p for p in model.parameters() if p.requires_grad]

    def __call__(self, meta: dict, step: int) -> dict:
        """One step; returns upstream's loss_states (each a 0-d tensor) with ``loss`` and ``grad_norm``."""
        import torch

        self.model.set_epoch(meta["epoch"])
        _, loss, states = self.model.forward_train(meta)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self.ema.update(self.model, step)
        return {**states, "loss": loss.detach(), "grad_norm": grad_norm}
