"""Building blocks shared by the backbone, the neck and the heads.

Submodule names are upstream NanoDet's, because they become state-dict keys and published weights
load by name: ``ConvModule`` holds ``conv`` then ``bn`` (BatchNorm) or ``gn`` (GroupNorm) then
``act``; ``DepthwiseConvModule`` holds ``depthwise``, ``pointwise``, ``dwnorm``, ``pwnorm``, ``act``
(registered in that order, which is the order of the keys in upstream's state dicts).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from nanoplus.errors import NanoplusError


class ModelConfigError(NanoplusError, ValueError):
    """A model setting that cannot be built; the message names the config field and the fix."""


# Upstream builds every activation in place; LeakyReLU always uses slope 0.1 (not torch's 0.01).
_ACTIVATIONS = {
    "ReLU": lambda: nn.ReLU(inplace=True),
    "LeakyReLU": lambda: nn.LeakyReLU(negative_slope=0.1, inplace=True),
    "ReLU6": lambda: nn.ReLU6(inplace=True),
    "SELU": lambda: nn.SELU(inplace=True),
    "ELU": lambda: nn.ELU(inplace=True),
    "GELU": lambda: nn.GELU(),
    "PReLU": lambda: nn.PReLU(),
    "SiLU": lambda: nn.SiLU(inplace=True),
    "HardSwish": lambda: nn.Hardswish(inplace=True),
    "Hardswish": lambda: nn.Hardswish(inplace=True),
}


def build_activation(name: Optional[str], field: str = "activation") -> nn.Module:
    """An activation module by upstream's name; ``None`` gives the identity."""
    if name is None:
        return nn.Identity()
    if name not in _ACTIVATIONS:
        raise ModelConfigError(
            f"{field}: unknown activation '{name}'; choose one of {', '.join(sorted(_ACTIVATIONS))}"
        )
    return _ACTIVATIONS[name]()


def check_activation(name: Optional[str], field: str) -> None:
    """Fail early, naming the config field, when an activation name is unknown."""
    if name is not None and name not in _ACTIVATIONS:
        build_activation(name, field)


def build_norm(kind: str, channels: int, num_groups: int = 32) -> tuple[str, nn.Module]:
    """(attribute name, module): ``("bn", BatchNorm2d)`` or ``("gn", GroupNorm)`` as upstream names them."""
    if kind == "BN":
        return "bn", nn.BatchNorm2d(channels)
    if kind == "GN":
        if channels % num_groups:
            raise ModelConfigError(f"GroupNorm over {channels} channels needs a group count dividing it, got {num_groups}")
        return "gn", nn.GroupNorm(num_groups, channels)
    raise ModelConfigError(f"unknown normalisation '{kind}'; use 'BN' or 'GN'")


# ------------------------------------------------------------------------------------------------
# Initialisation (upstream's helpers, from MMDetection)


def kaiming_init(module: nn.Module, nonlinearity: str = "relu", bias: float = 0.0) -> None:
    """He-normal init with fan_out, as upstream's ConvModule uses by default."""
    nn.init.kaiming_normal_(module.weight, a=0, mode="fan_out", nonlinearity=nonlinearity)
    if getattr(module, "bias", None) is not None:
        nn.init.constant_(module.bias, bias)


def normal_init(module: nn.Module, std: float = 1.0, bias: float = 0.0) -> None:
    nn.init.normal_(module.weight, 0.0, std)
    if getattr(module, "bias", None) is not None:
        nn.init.constant_(module.bias, bias)


def constant_init(module: nn.Module, value: float, bias: float = 0.0) -> None:
    if getattr(module, "weight", None) is not None:
        nn.init.constant_(module.weight, value)
    if getattr(module, "bias", None) is not None:
        nn.init.constant_(module.bias, bias)


def _nonlinearity(activation: Optional[str]) -> str:
    # Upstream passes 'leaky_relu' with the default a=0, i.e. the ReLU gain; kept for fidelity.
    return "leaky_relu" if activation == "LeakyReLU" else "relu"


# ------------------------------------------------------------------------------------------------
# Blocks


class ConvModule(nn.Module):
    """conv -> norm -> activation. No conv bias when a norm follows.

    Args: as ``nn.Conv2d``, plus ``norm`` ("BN", "GN" or None), ``num_groups`` (GN) and
    ``activation`` (an upstream name or None).
    Shapes: (B, in_channels, H, W) -> (B, out_channels, H', W').
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, dilation: int = 1, groups: int = 1, norm: Optional[str] = "BN",
                 num_groups: int = 32, activation: Optional[str] = "ReLU"):
        super().__init__()
        self.activation = activation
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                              dilation=dilation, groups=groups, bias=norm is None)
        self.norm_name = None
        if norm is not None:
            self.norm_name, norm_module = build_norm(norm, out_channels, num_groups)
            self.add_module(self.norm_name, norm_module)
        if activation is not None:
            self.act = build_activation(activation)
        self.init_weights()

    @property
    def norm(self) -> Optional[nn.Module]:
        return getattr(self, self.norm_name) if self.norm_name else None

    def init_weights(self) -> None:
        kaiming_init(self.conv, nonlinearity=_nonlinearity(self.activation))
        if self.norm is not None:
            constant_init(self.norm, 1.0, bias=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm_name:
            x = getattr(self, self.norm_name)(x)
        if self.activation is not None:
            x = self.act(x)
        return x


class DepthwiseConvModule(nn.Module):
    """Depthwise-separable conv: depthwise k x k -> norm -> act -> pointwise 1x1 -> norm -> act.

    Shapes: (B, in_channels, H, W) -> (B, out_channels, H / stride, W / stride).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, dilation: int = 1, norm: Optional[str] = "BN",
                 activation: Optional[str] = "ReLU"):
        super().__init__()
        self.activation = activation
        with_norm = norm is not None
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size, stride=stride, padding=padding,
                                   dilation=dilation, groups=in_channels, bias=not with_norm)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=not with_norm)
        if with_norm:
            self.dwnorm = build_norm(norm, in_channels)[1]
            self.pwnorm = build_norm(norm, out_channels)[1]
        else:
            self.dwnorm = nn.Identity()
            self.pwnorm = nn.Identity()
        if activation is not None:
            self.act = build_activation(activation)
        self.init_weights()

    def init_weights(self) -> None:
        nonlinearity = _nonlinearity(self.activation)
        kaiming_init(self.depthwise, nonlinearity=nonlinearity)
        kaiming_init(self.pointwise, nonlinearity=nonlinearity)
        for norm in (self.dwnorm, self.pwnorm):
            if isinstance(norm, nn.BatchNorm2d):
                constant_init(norm, 1.0, bias=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dwnorm(self.depthwise(x))
        if self.activation is not None:
            x = self.act(x)
        x = self.pwnorm(self.pointwise(x))
        if self.activation is not None:
            x = self.act(x)
        return x


class Scale(nn.Module):
    """A learnable scalar multiplier (upstream's ``Scale``; its 0-d parameter is named ``scale``)."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale, dtype=torch.float))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale
