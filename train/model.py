"""NanoDet-Plus: backbone -> GhostPAN -> NanoDetPlusHead, plus the training-only aux branch.

``build_model(cfg.model)`` gives the full model (``aux_fpn``, ``aux_head`` included);
``build_model(cfg.model, deploy=True)`` only backbone, fpn and head. Module names follow upstream,
so upstream state dicts load by name.

Training (``forward_train``): labels are assigned per image from the aux head's predictions
(Assign Guidance Module) and the same targets train both heads. From ``detach_epoch`` on the aux
branch receives detached inputs: it keeps learning and assigning but sends no gradient into the
shared backbone and FPN.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from nanoplus.train.assigner import DynamicSoftLabelAssigner
from nanoplus.train.box_ops import distance2bbox, make_center_priors
from nanoplus.train.ghost_pan import GhostPAN
from nanoplus.train.head import NanoDetPlusHead, SimpleConvHead
from nanoplus.train.losses import head_losses
from nanoplus.train.mobilenetv2 import MobileNetV2
from nanoplus.train.modules import ModelConfigError, check_activation
from nanoplus.train.shufflenetv2 import ShuffleNetV2
from nanoplus.train.winograd import WinogradConv2d

AUX_PREFIXES = ("aux_fpn.", "aux_head.")


def build_backbone(cfg, load_pretrained: bool = True) -> nn.Module:
    """``cfg``: ModelConfig.backbone."""
    weights = cfg.pretrained_weights if load_pretrained else None
    if cfg.name == "ShuffleNetV2":
        return ShuffleNetV2(cfg.model_size, cfg.out_stages, cfg.activation, pretrained_weights=weights)
    if cfg.name == "MobileNetV2":
        return MobileNetV2(cfg.model_size, cfg.out_stages, cfg.activation, pretrained_weights=weights)
    raise ModelConfigError(f"model.backbone.name: unknown backbone '{cfg.name}'; use ShuffleNetV2 or MobileNetV2")


def build_fpn(cfg) -> GhostPAN:
    """``cfg``: ModelConfig.fpn."""
    return GhostPAN(cfg.in_channels, cfg.out_channels, use_depthwise=cfg.use_depthwise, kernel_size=cfg.kernel_size,
                    num_extra_level=cfg.num_extra_level, activation=cfg.activation)


def build_head(cfg, num_classes: int, input_channel: int) -> NanoDetPlusHead:
    """``cfg``: ModelConfig.head."""
    return NanoDetPlusHead(num_classes, input_channel, cfg.feat_channels, cfg.stacked_convs, cfg.kernel_size,
                           cfg.strides, cfg.reg_max, cfg.activation)


def build_aux_head(cfg, head_cfg, num_classes: int, input_channel: int) -> SimpleConvHead:
    """``cfg``: ModelConfig.aux_head; strides and reg_max come from the main head's config."""
    return SimpleConvHead(num_classes, input_channel, cfg.feat_channels, cfg.stacked_convs, head_cfg.strides,
                          head_cfg.reg_max, cfg.activation, cfg.num_groups)


class NanoDetPlus(nn.Module):
    def __init__(self, backbone: nn.Module, fpn: GhostPAN, head: NanoDetPlusHead,
                 aux_fpn: Optional[GhostPAN] = None, aux_head: Optional[SimpleConvHead] = None,
                 assigner: Optional[DynamicSoftLabelAssigner] = None, loss_cfg=None, detach_epoch: int = 10):
        super().__init__()
        self.backbone = backbone
        self.fpn = fpn
        self.head = head
        if aux_fpn is not None:
            self.aux_fpn = aux_fpn
            self.aux_head = aux_head
        self.num_classes = head.num_classes
        self.reg_max = head.reg_max
        self.strides = list(head.strides)
        self.assigner = assigner
        self.loss_cfg = loss_cfg
        self.detach_epoch = detach_epoch
        # Which head's predictions assign the labels: "aux" (upstream) or "main" (used by the
        # trainer while a freshly initialised aux branch warms up on imported deploy weights).
        self.assign_from = "aux"
        # Memory layout of the convolutions (use_channels_last): NHWC or the default NCHW.
        self.channels_last = False

    def use_channels_last(self, enabled: bool = True) -> "NanoDetPlus":
        """Keep every 4-D weight (backbone, FPNs, heads) in channels-last (NHWC) memory, so that the
        activations stay NHWC from the first convolution on: oneDNN then runs the depthwise and
        dense convolutions (the aux head's 3x3 convolutions are most of a training step) without
        reordering, and the backbone's depthwise / 1x1 convolutions, max-pool and ShuffleNet channel
        shuffles (``concat_shuffle_channels_last``) are faster too (bench/train_throughput.py).
        The same sums in another order, so the rounding differs, within the noise of the default
        layout (tests/test_train_speed.py against upstream's fixture). Training-mode BatchNorm uses
        ``modules.BatchNorm2d``'s accurate NHWC statistics: PyTorch's own NHWC kernel is 3e-4 off
        (relative variance) on the backbone's 208x208 maps, which moved the head output past the
        fixture's 1e-4. The 5x5 depthwise convolutions (``modules.DepthwiseConv2d``) get their weight
        gradient from oneDNN's grouped-convolution kernel (the same numbers, faster). Returns self."""
        layout = torch.channels_last if enabled else torch.contiguous_format
        for part in (self.backbone, self.fpn, self.head, getattr(self, "aux_fpn", None), getattr(self, "aux_head", None)):
            if part is not None:
                part.to(memory_format=layout)
        self.channels_last = enabled
        return self

    def use_winograd(self, enabled: bool = True) -> "NanoDetPlus":
        """Train the 3x3 stride-1 convolutions (the aux head's towers and output convolutions, most of
        a training step) with Winograd F(2x2, 3x3) on channels-last float32 CPU maps
        (``train/winograd.py``): 2.25x fewer multiplications, rounding within ~2x a direct
        convolution's. Needs ``use_channels_last`` and the compiled ``nanoplus.train._winograd``;
        without either, and in eval / export / no-grad, the convolutions stay PyTorch's. Returns self."""
        for module in self.modules():
            if isinstance(module, WinogradConv2d):
                module.winograd = enabled
        return self

    @property
    def has_aux(self) -> bool:
        return hasattr(self, "aux_fpn")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised BGR -> (B, N, C + 4*(reg_max+1)) raw logits (the deploy path)."""
        return self.head(self.fpn(self.backbone(images)))

    def forward_train(self, images: torch.Tensor, gt_bboxes: Sequence[torch.Tensor], gt_labels: Sequence[torch.Tensor],
                      epoch: int, return_details: bool = False) -> dict:
        """One training forward with losses.

        images (B, 3, H, W); gt_bboxes: B tensors (n_i, 4) x1y1x2y2 in input pixels; gt_labels: B
        int64 tensors (n_i,). Returns "loss" (differentiable total), "loss_qfl", "loss_bbox",
        "loss_dfl", "loss_aux_qfl", "loss_aux_bbox", "loss_aux_dfl" and "num_pos" (positives in the
        batch). ``return_details`` adds "head_out", "aux_out" (B, N, C+4*(reg_max+1)),
        "center_priors" (N, 4) and "assignments" (one ``Assignment`` per image).
        """
        if self.assigner is None or self.loss_cfg is None:
            raise RuntimeError("this model was built without an assigner / loss config; use build_model(cfg.model)")
        self._check_targets(images, gt_bboxes, gt_labels)
        feats = self.backbone(images)
        fpn_feats = self.fpn(feats)
        head_out = self.head(fpn_feats).float()
        aux_out = None
        if self.has_aux:
            detach = epoch >= self.detach_epoch
            aux_fpn_feats = self.aux_fpn([f.detach() for f in feats] if detach else feats)
            dual = [torch.cat([f.detach() if detach else f, a], dim=1) for f, a in zip(fpn_feats, aux_fpn_feats)]
            aux_out = self.aux_head(dual).float()

        priors = make_center_priors(images.shape[-2:], self.strides, dtype=torch.float32, device=images.device)
        main = self._decode(head_out, priors)
        aux = self._decode(aux_out, priors) if aux_out is not None else None
        source = aux if aux is not None and self.assign_from == "aux" else main
        assignments = [
            self.assigner(source[0][i].detach(), priors, source[2][i].detach(), gt_bboxes[i], gt_labels[i])
            for i in range(images.shape[0])
        ]

        losses = head_losses(*main, assignments, self.loss_cfg, self.reg_max)
        total = losses["loss_qfl"] + losses["loss_bbox"] + losses["loss_dfl"]
        if aux is not None:
            aux_losses = head_losses(*aux, assignments, self.loss_cfg, self.reg_max)
            total = total + (aux_losses["loss_qfl"] + aux_losses["loss_bbox"] + aux_losses["loss_dfl"])
            losses.update({f"loss_aux_{k[len('loss_'):]}": v for k, v in aux_losses.items()})
        out = {"loss": total, **losses,
               "num_pos": torch.tensor(sum(a.num_pos for a in assignments), device=images.device)}
        if return_details:
            out.update(head_out=head_out, aux_out=aux_out, center_priors=priors, assignments=assignments)
        return out

    def _decode(self, out: torch.Tensor, priors: torch.Tensor):
        """(B, N, C+4*(reg_max+1)) -> (cls logits, bin logits, boxes (B, N, 4) unclamped)."""
        cls, reg = out.split([self.num_classes, 4 * (self.reg_max + 1)], dim=-1)
        distances = self.head.distribution_project(reg) * priors[:, 2, None]
        return cls, reg, distance2bbox(priors[:, :2], distances)

    def _check_targets(self, images, gt_bboxes, gt_labels) -> None:
        batch = images.shape[0]
        if len(gt_bboxes) != batch or len(gt_labels) != batch:
            raise ValueError(f"forward_train: {batch} images but {len(gt_bboxes)} box sets and {len(gt_labels)} label sets")
        for i, (boxes, labels) in enumerate(zip(gt_bboxes, gt_labels)):
            if boxes.ndim != 2 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:1]:
                raise ValueError(f"forward_train: image {i} has boxes {tuple(boxes.shape)} and labels "
                                 f"{tuple(labels.shape)}; expected (n, 4) and (n,)")
        all_labels = torch.cat([labels.reshape(-1) for labels in gt_labels])
        if all_labels.numel() and not bool(((all_labels >= 0) & (all_labels < self.num_classes)).all()):
            bad = sorted({int(v) for v in all_labels if not 0 <= int(v) < self.num_classes})
            raise ValueError(f"forward_train: class labels {bad} lie outside [0, {self.num_classes - 1}] "
                             f"(model.num_classes={self.num_classes})")

    def deploy_state_dict(self) -> dict:
        """The state dict without ``aux_*`` entries: what the deployed model needs."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(AUX_PREFIXES)}


def build_model(model_cfg, deploy: bool = False, load_pretrained: Optional[bool] = None) -> NanoDetPlus:
    """NanoDet-Plus from ``cfg.model`` (a ModelConfig).

    ``deploy``: backbone, fpn and head only. ``load_pretrained``: read the backbone's local
    ImageNet weights (``model.backbone.pretrained_weights``); by default only for a training model.
    """
    _check(model_cfg)
    if load_pretrained is None:
        load_pretrained = not deploy
    backbone = build_backbone(model_cfg.backbone, load_pretrained)
    if list(backbone.out_channels) != list(model_cfg.fpn.in_channels):
        raise ModelConfigError(
            f"model.fpn.in_channels is {list(model_cfg.fpn.in_channels)} but the {model_cfg.backbone.name} "
            f"{model_cfg.backbone.model_size} backbone gives {list(backbone.out_channels)} channels for out_stages "
            f"{list(model_cfg.backbone.out_stages)}; set model.fpn.in_channels={list(backbone.out_channels)}"
        )
    fpn = build_fpn(model_cfg.fpn)
    head = build_head(model_cfg.head, model_cfg.num_classes, model_cfg.fpn.out_channels)
    aux_fpn = aux_head = None
    if not deploy:
        aux_fpn = build_fpn(model_cfg.fpn)
        aux_fpn.load_state_dict(fpn.state_dict())  # upstream starts aux_fpn as a copy of fpn
        aux_head = build_aux_head(model_cfg.aux_head, model_cfg.head, model_cfg.num_classes, 2 * model_cfg.fpn.out_channels)
    assigner = DynamicSoftLabelAssigner(model_cfg.num_classes, model_cfg.head.reg_max, model_cfg.assigner.topk,
                                        model_cfg.assigner.iou_factor)
    return NanoDetPlus(backbone, fpn, head, aux_fpn, aux_head, assigner, model_cfg.loss, model_cfg.detach_epoch)


def _check(model_cfg) -> None:
    for section in ("backbone", "fpn", "head", "aux_head"):
        check_activation(getattr(model_cfg, section).activation, f"model.{section}.activation")
    if model_cfg.head.reg_max < 1:
        raise ModelConfigError(f"model.head.reg_max must be >= 1, got {model_cfg.head.reg_max}")
    if model_cfg.head.stacked_convs < 1 or model_cfg.aux_head.stacked_convs < 1:
        raise ModelConfigError("model.head.stacked_convs and model.aux_head.stacked_convs must be >= 1")
