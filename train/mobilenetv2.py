"""MobileNetV2 backbone laid out as upstream NanoDet's (``first_layer``, ``stage0`` .. ``stage6``).

19 layers: a stride-2 3x3 stem (32 ch), seven inverted-residual stages with repeats
(1, 2, 3, 4, 3, 3, 1), strides (1, 2, 2, 2, 1, 2, 1), expansion 1 then 6 and channels
(16, 24, 32, 64, 96, 160, 320); stage 6 ends with a 1x1 conv-BN-act to 1280 (``stage6.1``).
With out_stages (2, 4, 6): 32 ch at stride 8, 96 at 16, 1280 at 32.

ImageNet weights come from a local file, in this layout or torchvision's (``features.N``), which
is mapped by position; nothing is downloaded.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from nanoplus.train.modules import BatchNorm2d, ModelConfigError, build_activation

# (expansion t, channels c, repeats n, stride s) per stage
INVERTED_RESIDUAL_SETTING = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class ConvBNReLU(nn.Sequential):
    """conv -> BN -> act as one Sequential (keys ``0.weight``, ``1.*``)."""

    def __init__(self, in_planes: int, out_planes: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, activation: str = "ReLU"):
        super().__init__(
            nn.Conv2d(in_planes, out_planes, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
            BatchNorm2d(out_planes),
            build_activation(activation),
        )


class InvertedResidual(nn.Module):
    """[1x1 expand] -> 3x3 depthwise -> 1x1 linear projection, residual when shapes allow."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int, activation: str = "ReLU"):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU(inp, hidden, kernel_size=1, activation=activation))
        layers += [
            ConvBNReLU(hidden, hidden, stride=stride, groups=hidden, activation=activation),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """(B, 3, H, W) -> tuple of the ``out_stages`` maps."""

    def __init__(self, model_size: str = "1.0x", out_stages: Sequence[int] = (2, 4, 6),
                 activation: str = "LeakyReLU", last_channel: int = 1280,
                 pretrained_weights: Optional[str] = None):
        super().__init__()
        if model_size != "1.0x":
            raise ModelConfigError(f"model.backbone.model_size: MobileNetV2 is built at 1.0x only, got '{model_size}'")
        if not set(out_stages) <= set(range(7)):
            raise ModelConfigError(f"model.backbone.out_stages: MobileNetV2 has stages 0..6; got {list(out_stages)}")
        self.out_stages = tuple(out_stages)
        stage_channels = [c for _, c, _, _ in INVERTED_RESIDUAL_SETTING]
        stage_channels[6] = last_channel
        self.out_channels = [stage_channels[s] for s in self.out_stages]

        self.first_layer = ConvBNReLU(3, 32, stride=2, activation=activation)
        inp = 32
        for index, (t, c, n, s) in enumerate(INVERTED_RESIDUAL_SETTING):
            blocks = []
            for i in range(n):
                blocks.append(InvertedResidual(inp, c, s if i == 0 else 1, expand_ratio=t, activation=activation))
                inp = c
            if index == 6:
                blocks.append(ConvBNReLU(inp, last_channel, kernel_size=1, activation=activation))
            setattr(self, f"stage{index}", nn.Sequential(*blocks))
        # Upstream leaves torch's default initialisation here (its init_weights is never called).
        if pretrained_weights:
            from nanoplus.train.checkpoint import load_backbone_weights

            load_backbone_weights(self, pretrained_weights, rename=torchvision_to_nanodet_names)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.first_layer(x)
        outputs = []
        for index in range(7):
            x = getattr(self, f"stage{index}")(x)
            if index in self.out_stages:
                outputs.append(x)
        return tuple(outputs)


def torchvision_to_nanodet_names(name: str) -> str:
    """'features.3.conv.0.0.weight' -> 'stage2.0.conv.0.0.weight' (torchvision's MobileNetV2 layout).

    features.0 is the stem, features.1..17 the 17 inverted residuals in order, features.18 the
    final 1x1 conv; other names (classifier.*) are returned unchanged and later reported unused.
    """
    if not name.startswith("features."):
        return name
    _, index, rest = name.split(".", 2)
    index = int(index)
    if index == 0:
        return f"first_layer.{rest}"
    if index == 18:
        return f"stage6.1.{rest}"
    block = index - 1
    for stage, (_, _, repeats, _) in enumerate(INVERTED_RESIDUAL_SETTING):
        if block < repeats:
            return f"stage{stage}.{block}.{rest}"
        block -= repeats
    return name
