"""GhostPAN, NanoDet-Plus's neck: a path-aggregation network built from Ghost bottlenecks.

For in_channels [c8, c16, c32] and out_channels D (96 for m, 128 for 1.5x):
1. reduce: 1x1 conv-BN-act per level to D channels;
2. top-down: upsample x2 (bilinear), concat with the finer map (2D), GhostBottleneck -> D;
3. bottom-up: stride-2 depthwise-separable conv on the finer output, concat with the coarser
   top-down map, GhostBottleneck -> D;
4. extra levels: (stride-2 conv of the reduced coarsest input) + (stride-2 conv of the coarsest
   output).
Output: len(in_channels) + num_extra_level maps of D channels at strides 8, 16, 32, 64.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from nanoplus.train.modules import BatchNorm2d, ConvModule, DepthwiseConv2d, DepthwiseConvModule, build_activation


class GhostModule(nn.Module):
    """A 1x1 "primary" conv to half the outputs plus a cheap depthwise conv making the other half.

    (B, inp, H, W) -> (B, oup, H, W). ``activation=None``: no activation (the second module of a
    bottleneck is linear).
    """

    def __init__(self, inp: int, oup: int, kernel_size: int = 1, ratio: int = 2, dw_size: int = 3,
                 activation: Optional[str] = "ReLU"):
        super().__init__()
        init_channels = math.ceil(oup / ratio)
        new_channels = init_channels * (ratio - 1)
        self.primary_conv = nn.Sequential(
            nn.Conv2d(inp, init_channels, kernel_size, 1, kernel_size // 2, bias=False),
            BatchNorm2d(init_channels),
            build_activation(activation) if activation else nn.Sequential(),
        )
        self.cheap_operation = nn.Sequential(
            nn.Conv2d(init_channels, new_channels, dw_size, 1, dw_size // 2, groups=init_channels, bias=False),
            BatchNorm2d(new_channels),
            build_activation(activation) if activation else nn.Sequential(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary_conv(x)
        return torch.cat([x1, self.cheap_operation(x1)], dim=1)


class GhostBottleneck(nn.Module):
    """ghost1 (with activation) -> ghost2 (linear), plus a shortcut.

    The shortcut is the identity when in == out channels, else depthwise k x k conv-BN then 1x1
    conv-BN. Stride 1 only (all GhostPAN uses). (B, in_chs, H, W) -> (B, out_chs, H, W).
    """

    def __init__(self, in_chs: int, mid_chs: int, out_chs: int, dw_kernel_size: int = 3,
                 activation: str = "ReLU"):
        super().__init__()
        self.ghost1 = GhostModule(in_chs, mid_chs, activation=activation)
        self.ghost2 = GhostModule(mid_chs, out_chs, activation=None)
        if in_chs == out_chs:
            self.shortcut = nn.Sequential()
        else:
            pad = (dw_kernel_size - 1) // 2
            self.shortcut = nn.Sequential(
                DepthwiseConv2d(in_chs, dw_kernel_size, 1, pad),
                BatchNorm2d(in_chs),
                nn.Conv2d(in_chs, out_chs, 1, 1, 0, bias=False),
                BatchNorm2d(out_chs),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ghost2(self.ghost1(x)) + self.shortcut(x)


class GhostBlocks(nn.Module):
    """``num_blocks`` GhostBottlenecks in a Sequential named ``blocks`` (upstream's key layout)."""

    def __init__(self, in_channels: int, out_channels: int, expand: float = 1, kernel_size: int = 5,
                 num_blocks: int = 1, use_res: bool = False, activation: str = "LeakyReLU"):
        super().__init__()
        self.use_res = use_res
        if use_res:
            self.reduce_conv = ConvModule(in_channels, out_channels, 1, activation=activation)
        self.blocks = nn.Sequential(*[
            GhostBottleneck(in_channels, int(out_channels * expand), out_channels,
                            dw_kernel_size=kernel_size, activation=activation)
            for _ in range(num_blocks)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(x)
        return out + self.reduce_conv(x) if self.use_res else out


class GhostPAN(nn.Module):
    """list of (B, in_channels[i], H_i, W_i) -> tuple of (B, out_channels, h_k, w_k), finest first."""

    def __init__(self, in_channels: Sequence[int], out_channels: int, use_depthwise: bool = True,
                 kernel_size: int = 5, expand: float = 1, num_blocks: int = 1, use_res: bool = False,
                 num_extra_level: int = 1, activation: str = "LeakyReLU"):
        super().__init__()
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        pad = kernel_size // 2

        def downsample() -> nn.Module:
            if use_depthwise:
                return DepthwiseConvModule(out_channels, out_channels, kernel_size, stride=2, padding=pad,
                                           activation=activation)
            return ConvModule(out_channels, out_channels, kernel_size, stride=2, padding=pad, activation=activation)

        def ghost_blocks() -> nn.Module:
            return GhostBlocks(out_channels * 2, out_channels, expand, kernel_size=kernel_size,
                               num_blocks=num_blocks, use_res=use_res, activation=activation)

        levels = len(self.in_channels)
        self.reduce_layers = nn.ModuleList(
            [ConvModule(c, out_channels, 1, activation=activation) for c in self.in_channels]
        )
        self.top_down_blocks = nn.ModuleList([ghost_blocks() for _ in range(levels - 1)])
        self.downsamples = nn.ModuleList()
        self.bottom_up_blocks = nn.ModuleList()
        for _ in range(levels - 1):
            self.downsamples.append(downsample())
            self.bottom_up_blocks.append(ghost_blocks())
        self.extra_lvl_in_conv = nn.ModuleList([downsample() for _ in range(num_extra_level)])
        self.extra_lvl_out_conv = nn.ModuleList([downsample() for _ in range(num_extra_level)])

    @staticmethod
    def upsample(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        assert len(inputs) == len(self.in_channels), "one input map per in_channels entry"
        inputs = [reduce(x) for x, reduce in zip(inputs, self.reduce_layers)]
        levels = len(inputs)

        # top-down: coarse to fine
        inner_outs = [inputs[-1]]
        for idx in range(levels - 1, 0, -1):
            block = self.top_down_blocks[levels - 1 - idx]
            inner_outs.insert(0, block(torch.cat([self.upsample(inner_outs[0]), inputs[idx - 1]], 1)))

        # bottom-up: fine to coarse
        outs = [inner_outs[0]]
        for idx in range(levels - 1):
            down = self.downsamples[idx](outs[-1])
            outs.append(self.bottom_up_blocks[idx](torch.cat([down, inner_outs[idx + 1]], 1)))

        for extra_in, extra_out in zip(self.extra_lvl_in_conv, self.extra_lvl_out_conv):
            outs.append(extra_in(inputs[-1]) + extra_out(outs[-1]))
        return tuple(outs)
