"""NanoDet-Plus heads: the deployed NanoDetPlusHead and the training-only SimpleConvHead (aux).

Both return (B, N, C + 4*(reg_max+1)): per point C class logits, then 4 groups of reg_max+1 bin
logits for the sides left, top, right, bottom. Points are ordered by level (stride order) and
row-major within a level.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from nanoplus.train.modules import ConvModule, DepthwiseConvModule, Scale, normal_init
from nanoplus.train.winograd import WinogradConv2d

# Class bias so that the initial sigmoid score is 0.01: -log((1 - 0.01) / 0.01).
PRIOR_BIAS = -4.595


class Integral(nn.Module):
    """Bin logits -> expected distance in bin units: softmax over each side's reg_max+1 bins, then
    the expectation with [0, 1, ..., reg_max] (the buffer ``project``).

    (..., 4*(reg_max+1)) -> (..., 4).
    """

    def __init__(self, reg_max: int = 7):
        super().__init__()
        self.reg_max = reg_max
        self.register_buffer("project", torch.linspace(0, reg_max, reg_max + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[:-1]
        x = F.softmax(x.reshape(*shape, 4, self.reg_max + 1), dim=-1)
        return F.linear(x, self.project.type_as(x)).reshape(*shape, 4)


class NanoDetPlusHead(nn.Module):
    """Per level (weights not shared): ``stacked_convs`` depthwise-separable k x k blocks, then one
    1x1 conv to C + 4*(reg_max+1) channels.

    ``sigmoid_scores``: export flag; when True the C class channels leave through a sigmoid
    (upstream's ONNX convention), the bins stay raw.
    """

    def __init__(self, num_classes: int, input_channel: int, feat_channels: int = 96, stacked_convs: int = 2,
                 kernel_size: int = 5, strides: Sequence[int] = (8, 16, 32, 64), reg_max: int = 7,
                 activation: str = "LeakyReLU", use_depthwise: bool = True):
        super().__init__()
        self.num_classes = num_classes
        self.strides = list(strides)
        self.reg_max = reg_max
        self.sigmoid_scores = False
        self.distribution_project = Integral(reg_max)
        block = DepthwiseConvModule if use_depthwise else ConvModule
        self.cls_convs = nn.ModuleList()
        for _ in self.strides:
            self.cls_convs.append(nn.ModuleList([
                block(input_channel if i == 0 else feat_channels, feat_channels, kernel_size,
                      padding=kernel_size // 2, activation=activation)
                for i in range(stacked_convs)
            ]))
        self.gfl_cls = nn.ModuleList(
            [nn.Conv2d(feat_channels, num_classes + 4 * (reg_max + 1), 1) for _ in self.strides]
        )
        self.init_weights()

    def init_weights(self) -> None:
        for m in self.cls_convs.modules():
            if isinstance(m, nn.Conv2d):
                normal_init(m, std=0.01)
        # Upstream sets the prior bias on all output channels, the bins included; a softmax over
        # each side's bins ignores the constant.
        for conv in self.gfl_cls:
            normal_init(conv, std=0.01, bias=PRIOR_BIAS)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """list of (B, feat, h_k, w_k) -> (B, N, C + 4*(reg_max+1))."""
        outputs = []
        for feat, convs, gfl_cls in zip(feats, self.cls_convs, self.gfl_cls):
            for conv in convs:
                feat = conv(feat)
            out = gfl_cls(feat)
            if self.sigmoid_scores:
                cls, reg = out.split([self.num_classes, 4 * (self.reg_max + 1)], dim=1)
                out = torch.cat([cls.sigmoid(), reg], dim=1)
            outputs.append(out)
        return _points_last(outputs)


class SimpleConvHead(nn.Module):
    """The aux head: shared over levels, separate cls and reg towers of ``stacked_convs`` 3x3
    conv-GroupNorm-act, 3x3 output convs to C and 4*(reg_max+1) channels, and a learnable scale
    per level on the box bins.
    """

    def __init__(self, num_classes: int, input_channel: int, feat_channels: int = 192, stacked_convs: int = 4,
                 strides: Sequence[int] = (8, 16, 32, 64), reg_max: int = 7, activation: str = "LeakyReLU",
                 num_groups: int = 32):
        super().__init__()
        self.num_classes = num_classes
        self.reg_max = reg_max
        self.cls_convs = nn.ModuleList()
        self.reg_convs = nn.ModuleList()
        for i in range(stacked_convs):
            chn = input_channel if i == 0 else feat_channels
            for tower in (self.cls_convs, self.reg_convs):
                tower.append(ConvModule(chn, feat_channels, 3, padding=1, norm="GN", num_groups=num_groups,
                                        activation=activation))
        self.gfl_cls = WinogradConv2d(feat_channels, num_classes, 3, padding=1)
        self.gfl_reg = WinogradConv2d(feat_channels, 4 * (reg_max + 1), 3, padding=1)
        self.scales = nn.ModuleList([Scale(1.0) for _ in strides])
        self.init_weights()

    def init_weights(self) -> None:
        for m in list(self.cls_convs) + list(self.reg_convs):
            normal_init(m.conv, std=0.01)
        normal_init(self.gfl_cls, std=0.01, bias=PRIOR_BIAS)
        normal_init(self.gfl_reg, std=0.01)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """list of (B, input_channel, h_k, w_k) -> (B, N, C + 4*(reg_max+1))."""
        outputs = []
        for x, scale in zip(feats, self.scales):
            cls_feat, reg_feat = x, x
            for conv in self.cls_convs:
                cls_feat = conv(cls_feat)
            for conv in self.reg_convs:
                reg_feat = conv(reg_feat)
            cls_score = self.gfl_cls(cls_feat)
            bbox_pred = scale(self.gfl_reg(reg_feat)).float()
            outputs.append((cls_score, bbox_pred))
        return _points_last(outputs)


def _points_last(outputs) -> torch.Tensor:
    """Per level (B, K, h, w) maps (or a pair whose channels are concatenated) -> (B, N, K), levels in
    order, points row-major.

    NCHW maps: flatten, concatenate, then a permuted view (the form the exporters trace). Channels-
    last (NHWC) maps, as in training: each map is already (B, h, w, K) in memory, so one
    concatenation gives a contiguous (B, N, K) (the same values); the permuted view of the NCHW form
    would leave the 4*(reg_max+1) bins strided by N, which made the loss's softmax over them 10x slower.
    """
    first = outputs[0][0] if isinstance(outputs[0], tuple) else outputs[0]
    if first.is_contiguous(memory_format=torch.channels_last) and not first.is_contiguous():
        flat = []
        for out in outputs:
            parts = out if isinstance(out, tuple) else (out,)
            nhwc = [p.permute(0, 2, 3, 1) for p in parts]
            nhwc = torch.cat(nhwc, dim=-1) if len(nhwc) > 1 else nhwc[0]
            flat.append(nhwc.reshape(nhwc.shape[0], -1, nhwc.shape[-1]))
        return torch.cat(flat, dim=1)
    flat = [(torch.cat(out, dim=1) if isinstance(out, tuple) else out).flatten(start_dim=2) for out in outputs]
    return torch.cat(flat, dim=2).permute(0, 2, 1)
