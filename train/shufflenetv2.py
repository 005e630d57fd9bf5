"""ShuffleNetV2 backbone (0.5x / 1.0x / 1.5x), laid out as upstream NanoDet's.

Outputs the requested stages (default 2, 3, 4 at strides 8, 16, 32): 116/232/464 channels for
1.0x, 176/352/704 for 1.5x, 48/96/192 for 0.5x. Module names (``conv1``, ``stage2.0.branch1.0``,
...) equal torchvision's ShuffleNetV2, so torchvision ImageNet weights load by name from a local
file; nothing is ever downloaded.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from nanoplus.train.modules import BatchNorm2d, ModelConfigError, build_activation

STAGE_OUT_CHANNELS = {
    "0.5x": [24, 48, 96, 192, 1024],
    "1.0x": [24, 116, 232, 464, 1024],
    "1.5x": [24, 176, 352, 704, 1024],
    "2.0x": [24, 244, 488, 976, 2048],
}
STAGE_REPEATS = [4, 8, 4]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W) with channels interleaved across ``groups``."""
    b, c, h, w = x.shape
    x = x.view(b, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(b, -1, h, w)


def concat_shuffle_channels_last(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``channel_shuffle(torch.cat((a, b), 1), 2)`` for channels-last (NHWC) maps, in one copy and
    channels-last out: output channel 2i is a's channel i, 2i+1 is b's. (The view / transpose form
    would return NCHW, so every block would convert back and forth.) Same values: a permutation."""
    n, c, h, w = a.shape
    pairs = torch.stack((a.permute(0, 2, 3, 1), b.permute(0, 2, 3, 1)), dim=-1)  # (n, h, w, c, 2)
    return pairs.view(n, h, w, 2 * c).permute(0, 3, 1, 2)


def _depthwise(channels: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 3, stride, 1, bias=False, groups=channels)


class ShuffleV2Block(nn.Module):
    """Stride 1: split channels, transform one half; stride 2: transform two copies. Then shuffle.

    ``native_shuffle`` (set for the NCNN export by ``use_native_shuffle``): the shuffle as PyTorch's
    ``nn.ChannelShuffle`` module, which pnnx turns into ncnn's ShuffleChannel layer. Traced at two sizes,
    the view / transpose / view form becomes Reshapes with shape expressions, which ncnn runs about
    ten times slower than the whole rest of the model on AVX-512 CPUs (its packed layout falls back
    to a slow path). Same values either way: a shuffle is a permutation.
    """

    native_shuffle = False

    def __init__(self, inp: int, oup: int, stride: int, activation: str = "ReLU"):
        super().__init__()
        self.stride = stride
        self.shuffle = nn.ChannelShuffle(2)  # no parameters: the state dict is upstream's
        branch = oup // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                _depthwise(inp, stride),
                BatchNorm2d(inp),
                nn.Conv2d(inp, branch, 1, 1, 0, bias=False),
                BatchNorm2d(branch),
                build_activation(activation),
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if stride > 1 else branch, branch, 1, 1, 0, bias=False),
            BatchNorm2d(branch),
            build_activation(activation),
            _depthwise(branch, stride),
            BatchNorm2d(branch),
            nn.Conv2d(branch, branch, 1, 1, 0, bias=False),
            BatchNorm2d(branch),
            build_activation(activation),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            halves = (x1, self.branch2(x2))
        else:
            halves = (self.branch1(x), self.branch2(x))
        if not self.native_shuffle and x.is_contiguous(memory_format=torch.channels_last):
            return concat_shuffle_channels_last(*halves)
        out = torch.cat(halves, dim=1)
        if self.native_shuffle:
            return self.shuffle(out)
        return channel_shuffle(out, 2)


def use_native_shuffle(model: nn.Module, on: bool = True) -> nn.Module:
    """Switch every ShuffleV2Block of ``model`` to PyTorch's ``channel_shuffle`` op (or back)."""
    for module in model.modules():
        if isinstance(module, ShuffleV2Block):
            module.native_shuffle = on
    return model


class ShuffleNetV2(nn.Module):
    """(B, 3, H, W) -> tuple of the ``out_stages`` maps (stage k has stride 2**(k+1))."""

    def __init__(self, model_size: str = "1.0x", out_stages: Sequence[int] = (2, 3, 4),
                 activation: str = "LeakyReLU", pretrained_weights: Optional[str] = None):
        super().__init__()
        if model_size not in STAGE_OUT_CHANNELS:
            raise ModelConfigError(
                f"model.backbone.model_size: ShuffleNetV2 comes in {', '.join(STAGE_OUT_CHANNELS)}, got '{model_size}'"
            )
        if not set(out_stages) <= {2, 3, 4}:
            raise ModelConfigError(f"model.backbone.out_stages: ShuffleNetV2 has stages 2, 3, 4; got {list(out_stages)}")
        self.model_size = model_size
        self.out_stages = tuple(out_stages)
        channels = STAGE_OUT_CHANNELS[model_size]
        self.out_channels = [channels[s - 1] for s in self.out_stages]

        self.conv1 = nn.Sequential(
            nn.Conv2d(3, channels[0], 3, 2, 1, bias=False),
            BatchNorm2d(channels[0]),
            build_activation(activation),
        )
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inp = channels[0]
        for stage, repeats, oup in zip((2, 3, 4), STAGE_REPEATS, channels[1:]):
            blocks = [ShuffleV2Block(inp, oup, 2, activation)]
            blocks += [ShuffleV2Block(oup, oup, 1, activation) for _ in range(repeats - 1)]
            setattr(self, f"stage{stage}", nn.Sequential(*blocks))
            inp = oup
        self._initialize_weights()
        if pretrained_weights:
            from nanoplus.train.checkpoint import load_backbone_weights

            load_backbone_weights(self, pretrained_weights)

    def _initialize_weights(self) -> None:
        # Upstream's init: conv ~ N(0, 1/fan_in_per_group), BN weight 1 and bias 1e-4.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 1.0 / m.weight.shape[1])
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0.0001)
                nn.init.constant_(m.running_mean, 0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.maxpool(self.conv1(x))
        outputs = []
        for stage in (2, 3, 4):
            x = getattr(self, f"stage{stage}")(x)
            if stage in self.out_stages:
                outputs.append(x)
        return tuple(outputs)
