"""3x3 convolutions (stride 1, padding 1) by Winograd's F(2x2, 3x3) for training on channels-last maps.

The aux head's 3x3 convolutions (``SimpleConvHead``: eight 192 -> 192 per level, plus the two
output convolutions) are most of a training step, and oneDNN already runs them at this CPU's fp32
peak. F(2x2, 3x3) computes each 2x2 block of outputs from a 4x4 input tile with 16 products per
input/output channel pair instead of 36: the work becomes 16 matrix products (``torch.bmm``) between
transformed tiles and transformed weights, forward and backward, 2.25x fewer multiplications.
The tile transforms are additions only (``train/native/winograd.cpp``, the compiled extension
``nanoplus.train._winograd``), so the result rounds about as a direct convolution does: against a
float64 convolution the output and both gradients are as close as PyTorch's direct float32 ones
(1e-7 to 1e-6 of the largest value, often closer; tests/test_winograd.py), far inside the upstream
fixtures' tolerances (tests/test_train_speed.py).

Shapes: ``winograd_conv3x3(x (N, C, H, W) channels-last, weight (K, C, 3, 3), bias (K,) or None)``
-> (N, K, H, W) channels-last. Transformed tiles are (16, N, ceil(H/2), ceil(W/2), C).
"""
from __future__ import annotations

import threading
from typing import Optional

import torch

try:
    from nanoplus.train import _winograd
except ImportError:  # built without a C++ compiler: the direct convolution is used instead
    _winograd = None

# Below this many pixels per map PyTorch's direct convolution is faster. 16 x 192 -> 192, forward +
# backward, direct / Winograd, 1 thread and 2: 7 x 7 8.5 / 11.2 and 4.7 / 5.9 ms; 13 x 13 26.1 / 24.3
# and 13.9 / 12.3; 26 x 26 106 / 84 and 53 / 41; 52 x 52 492 / 355 and 225 / 175.
MIN_PIXELS = 100

# G (4 x 3): the weight transform U = G w G^T.
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def available() -> bool:
    return _winograd is not None


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """(K, C, 3, 3) -> (16, C, K): U[xi] = G w G^T at xi = 4 * row + column."""
    g = weight.new_tensor(_G)
    u = torch.einsum("ai,kcij,bj->abck", g, weight, g)
    return u.reshape(16, weight.shape[1], weight.shape[0])


class _Workspace(threading.local):
    """Per-thread scratch tiles, kept between calls: a fresh 133 MB buffer (16 x 192 x 52 x 52 maps)
    costs ~40 ms of page faults, a third of the convolution. Every buffer taken is given back before
    the call that took it returns (nothing here is saved for backward), so none is ever in use twice."""

    def __init__(self):
        self.free: dict[tuple, list] = {}

    def take(self, shape: tuple) -> torch.Tensor:
        free = self.free.get(shape)
        return free.pop() if free else torch.empty(shape)

    def give(self, *buffers: torch.Tensor) -> None:
        for b in buffers:
            self.free.setdefault(tuple(b.shape), []).append(b)

    def clear(self) -> None:
        self.free.clear()


_workspace = _Workspace()


def release_workspace() -> None:
    """Free this thread's kept scratch tiles (about 0.5 GB after a step of NanoDet-Plus at 416, batch 16)."""
    _workspace.clear()


def _transformed_input(x: torch.Tensor, threads: int, shift: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x (N, C, H, W) channels-last (minus ``shift`` (C,) inside the map) -> its tiles V (16, N, TH, TW, C),
    in a workspace buffer."""
    n, c, h, w = x.shape
    x_nhwc = x.permute(0, 2, 3, 1).contiguous()  # a view when x is channels-last
    v = _workspace.take((16, n, (h + 1) // 2, (w + 1) // 2, c))
    if shift is None:
        _winograd.input_transform(x_nhwc.numpy(), v.numpy(), threads)
    else:
        _winograd.input_transform(x_nhwc.numpy(), v.numpy(), threads, shift.numpy())
    return v


def _window_sums(g_nhwc: torch.Tensor) -> torch.Tensor:
    """dy (N, H, W, K) -> S (K, 3, 3): S[k, 1 + a, 1 + b] = sum of dy[..., k] over the outputs whose
    input pixel at offset (a, b) lies inside the map (the weight gradient of a constant input of 1)."""
    per_pixel = g_nhwc.sum(0)  # (H, W, K)
    h, w = per_pixel.shape[:2]
    rows = (slice(1, h), slice(0, h), slice(0, h - 1))
    cols = (slice(1, w), slice(0, w), slice(0, w - 1))
    return torch.stack([torch.stack([per_pixel[r, c].sum((0, 1)) for c in cols]) for r in rows]).permute(2, 0, 1)


class _WinogradConv3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        n, c, h, w = x.shape
        k = weight.shape[0]
        threads = torch.get_num_threads()
        x = x.detach()
        u = transform_weight(weight.detach())
        v = _transformed_input(x, threads)
        m = _workspace.take(v.shape[:4] + (k,))
        torch.bmm(v.view(16, -1, c), u, out=m.view(16, -1, k))
        y = x.new_empty((n, h, w, k))
        _winograd.output_transform(y.numpy(), m.numpy(), threads)
        _workspace.give(v, m)
        if bias is not None:
            y.add_(bias.detach())
        # x, not its tiles: x is kept anyway (the activation before saved it), the tiles are 16/4 its size
        ctx.save_for_backward(x, weight, u)
        return y.permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad):
        x, weight, u = ctx.saved_tensors
        n, c, h, w = x.shape
        k = u.shape[2]
        threads = torch.get_num_threads()
        g_nhwc = grad.permute(0, 2, 3, 1).contiguous()
        dm = _workspace.take((16, n, (h + 1) // 2, (w + 1) // 2, k))
        _winograd.grad_transform(g_nhwc.numpy(), dm.numpy(), threads)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dv = _workspace.take(dm.shape[:4] + (c,))
            torch.bmm(dm.view(16, -1, k), u.transpose(1, 2), out=dv.view(16, -1, c))
            dx = grad.new_empty((n, h, w, c))
            _winograd.input_grad_transform(dx.numpy(), dv.numpy(), threads)
            _workspace.give(dv)
            dx = dx.permute(0, 3, 1, 2)
        if ctx.needs_input_grad[1]:
            # The weight gradient sums x * dy over every output; before a normalisation dy sums to ~0,
            # so a channel's mean level in x only adds terms that cancel, and their rounding, which
            # Winograd's tiles (sums of 4 pixels) enlarge. So the tiles are of x - mean (inside the
            # map), and the mean's exact share, mean * (sum of dy over each tap's window), is added
            # back: on inputs with a level (a LeakyReLU's output) the error halves, from about a direct
            # convolution's to half of it.
            mean = x.mean((0, 2, 3))
            v = _transformed_input(x, threads, mean)
            du = torch.bmm(v.view(16, -1, c).transpose(1, 2), dm.view(16, -1, k))  # (16, C, K)
            _workspace.give(v)
            g = u.new_tensor(_G)
            dw = torch.einsum("ai,abck,bj->kcij", g, du.view(4, 4, c, k), g)
            dw += mean[None, :, None, None] * _window_sums(g_nhwc)[:, None]
            if weight.is_contiguous(memory_format=torch.channels_last):
                dw = dw.contiguous(memory_format=torch.channels_last)
        _workspace.give(dm)
        if ctx.needs_input_grad[2]:  # False when bias is None
            db = g_nhwc.sum((0, 1, 2))
        return dx, dw, db


def winograd_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Same as ``F.conv2d(x, weight, bias, padding=1)`` (rounding aside) for float32 CPU maps."""
    return _WinogradConv3x3.apply(x, weight, bias)


def applies(conv: torch.nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether ``conv(x)`` runs as ``winograd_conv3x3``: switched on (``conv.winograd``, set by
    ``NanoDetPlus.use_winograd``), training with autograd on (not tracing or exporting), the
    extension built, a float32 CPU map in channels-last memory of at least
    ``MIN_PIXELS`` pixels, and a 3x3 / stride 1 / padding 1 / undilated / ungrouped convolution."""
    return (_winograd is not None and getattr(conv, "winograd", False) and conv.training
            and torch.is_grad_enabled() and not torch.jit.is_tracing()
            and x.dtype == torch.float32 and x.device.type == "cpu" and x.dim() == 4
            and x.shape[2] * x.shape[3] >= MIN_PIXELS and x.is_contiguous(memory_format=torch.channels_last)
            and conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros")


class WinogradConv2d(torch.nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state-dict keys) whose training forward runs
    ``winograd_conv3x3`` where ``applies`` once ``winograd`` is set; everything else (the default,
    eval, export, NCHW, other shapes) is ``nn.Conv2d``'s own."""

    winograd = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if applies(self, x):
            return winograd_conv3x3(x, self.weight, self.bias)
        return super().forward(x)
