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
from nanoplus.train.winograd import WinogradConv2d


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


class _ChannelsLastBatchNormTrain(torch.autograd.Function):
    """Training-mode batch normalisation of a channels-last (NHWC) map with accurate statistics.

    PyTorch's own NHWC kernel sums each channel's statistics in one running float accumulator over
    all N*H*W positions: on the backbone's 16 x 208 x 208 maps the variance comes out 3e-4 off
    (relative), against 2e-7 for its NCHW kernel, enough to move the head output past the upstream
    fixture's 1e-4. Here the mean and the (biased) variance are two-pass reductions (``Tensor.mean``
    sums in a cascade), as accurate as NCHW's; the normalisation and the backward are PyTorch's
    NHWC kernels (``native_batch_norm_backward`` with these statistics).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum: float, eps: float):
        dims = (0, 2, 3)
        mean = x.mean(dims)
        centred = x - mean[None, :, None, None]
        var = centred.square_().mean(dims)
        del centred
        invstd = torch.rsqrt(var + eps)
        scale = invstd if weight is None else invstd * weight
        shift = -mean * scale if bias is None else bias - mean * scale
        y = torch.addcmul(shift[None, :, None, None], x, scale[None, :, None, None])
        if running_mean is not None:
            count = x.numel() // x.shape[1]
            running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
            running_var.mul_(1 - momentum).add_(var * (count / max(count - 1, 1)), alpha=momentum)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight, mean, invstd = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1],
                ctx.needs_input_grad[2]]
        grad = grad.contiguous(memory_format=torch.channels_last)
        dx, dw, db = torch.ops.aten.native_batch_norm_backward(grad, x, weight, None, None, mean, invstd, True,
                                                               ctx.eps, mask)
        return dx, dw, db, None, None, None, None


class _DepthwiseConvGroupedWeightGrad(torch.autograd.Function):
    """A depthwise convolution whose weight gradient oneDNN computes as a grouped convolution's.

    oneDNN's backward-weights kernel for depthwise convolutions is slow on NHWC maps (a 5x5 one over
    16 x 192 x 52 x 52 took 67 ms, five times its forward). Asking instead for the weight gradient of
    a grouped convolution with 8 channels per group, over the same input and output gradient, and
    keeping its diagonal (output channel c, input channel c mod 8) gives the same numbers (bit for
    bit in tests/test_train_speed.py: the same products summed in the same order) in a third of the
    time, although it computes 8x the products. The forward and the input gradient are PyTorch's own.
    """

    GROUP = 8

    @staticmethod
    def forward(ctx, x, weight, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding)
        return torch.nn.functional.conv2d(x, weight, None, stride, padding, 1, weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding = ctx.conv
        channels, group = weight.shape[0], _DepthwiseConvGroupedWeightGrad.GROUP
        grad = grad.contiguous(memory_format=torch.channels_last)
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = torch.ops.aten.convolution_backward(grad, x, weight, None, stride, padding, (1, 1), False, (0, 0),
                                                     channels, (True, False, False))[0]
        if ctx.needs_input_grad[1]:
            grouped = weight.new_empty((channels, group) + tuple(weight.shape[2:])).contiguous(
                memory_format=torch.channels_last)
            dw_grouped = torch.ops.aten.convolution_backward(grad, x, grouped, None, stride, padding, (1, 1), False,
                                                             (0, 0), channels // group, (False, True, False))[1]
            index = torch.arange(channels, device=weight.device)
            dw = dw_grouped[index, index % group].unsqueeze(1).contiguous(
                memory_format=torch.channels_last if weight.is_contiguous(memory_format=torch.channels_last)
                else torch.contiguous_format)
        return dx, dw, None, None


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(channels, channels, k, groups=channels, bias=False)`` (same parameters and
    state-dict keys) whose weight gradient, when training on channels-last maps with k >= 5 and a
    multiple of 8 channels, is computed by ``_DepthwiseConvGroupedWeightGrad``. Everything else
    (eval, no gradient, NCHW, 3x3) is ``nn.Conv2d``'s own forward."""

    def __init__(self, channels: int, kernel_size: int, stride: int = 1, padding: int = 0, bias: bool = False):
        super().__init__(channels, channels, kernel_size, stride=stride, padding=padding, groups=channels, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.training and torch.is_grad_enabled() and self.bias is None and self.kernel_size[0] >= 5
                and self.in_channels % _DepthwiseConvGroupedWeightGrad.GROUP == 0 and self.dilation == (1, 1)
                and self.padding_mode == "zeros" and isinstance(self.padding, tuple) and x.dim() == 4
                and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)):
            return _DepthwiseConvGroupedWeightGrad.apply(x, self.weight, self.stride, self.padding)
        return super().forward(x)


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (same parameters, buffers and state-dict keys) that, in training mode on a
    channels-last input, computes the batch statistics as accurately as on NCHW input
    (``_ChannelsLastBatchNormTrain``). Everything else (eval mode, NCHW input, no running
    statistics) is ``nn.BatchNorm2d``'s own forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.training and self.track_running_stats and self.momentum is not None and x.dim() == 4
                and x.shape[2] * x.shape[3] > 1 and x.shape[1] > 1 and not x.is_contiguous()
                and x.is_contiguous(memory_format=torch.channels_last)):
            self.num_batches_tracked.add_(1)
            return _ChannelsLastBatchNormTrain.apply(x, self.weight, self.bias, self.running_mean, self.running_var,
                                                     self.momentum, self.eps)
        return super().forward(x)


def build_norm(kind: str, channels: int, num_groups: int = 32) -> tuple[str, nn.Module]:
    """(attribute name, module): ``("bn", BatchNorm2d)`` or ``("gn", GroupNorm)`` as upstream names them."""
    if kind == "BN":
        return "bn", BatchNorm2d(channels)
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
        self.conv = WinogradConv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
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
        if dilation == 1:
            self.depthwise = DepthwiseConv2d(in_channels, kernel_size, stride=stride, padding=padding,
                                             bias=not with_norm)
        else:
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
