"""Winograd F(2x2, 3x3) training convolutions (train/winograd.py, train/native/winograd.cpp).

The four tile transforms are checked exactly against a float64 numpy reference written here from
the matrices (integer-valued inputs, so every sum is exact whatever its order); the convolution,
forward and backward, against a float64 direct convolution with the same bound a float32 direct
convolution meets; the switch (``use_winograd``) and where it applies; the scratch buffers kept
between calls. The model's training step with it on reproduces upstream's fixture:
tests/test_train_speed.py.

Speed (not timed here): ``python3 bench/train_throughput.py --layouts channels_last,winograd``.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nanoplus.train import winograd

pytestmark = pytest.mark.skipif(not winograd.available(),
                                reason="nanoplus.train._winograd is not built (no C++ compiler at install)")

B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)
CL = torch.channels_last


def _tiles_of(x_nhwc: np.ndarray) -> np.ndarray:
    """(N, H, W, C) -> the 4x4 input tiles (N, TH, TW, 4, 4, C) of the map padded by 1 (and to even)."""
    n, h, w, c = x_nhwc.shape
    th, tw = (h + 1) // 2, (w + 1) // 2
    padded = np.zeros((n, 2 * th + 2, 2 * tw + 2, c))
    padded[:, 1:h + 1, 1:w + 1] = x_nhwc
    tiles = np.empty((n, th, tw, 4, 4, c))
    for i in range(th):
        for j in range(tw):
            tiles[:, i, j] = padded[:, 2 * i:2 * i + 4, 2 * j:2 * j + 4]
    return tiles


def _ints(rng, shape) -> np.ndarray:
    return rng.integers(-8, 9, size=shape).astype(np.float32)


@pytest.mark.parametrize("shape", [(2, 6, 8, 16), (3, 7, 5, 20), (1, 1, 1, 3), (2, 13, 13, 33)])
@pytest.mark.parametrize("threads", [1, 3])
def test_transforms_equal_the_matrix_reference(shape, threads):
    from nanoplus.train import _winograd

    rng = np.random.default_rng(sum(shape))
    n, h, w, c = shape
    th, tw = (h + 1) // 2, (w + 1) // 2
    x = _ints(rng, shape)
    v = np.full((16, n, th, tw, c), np.nan, np.float32)
    _winograd.input_transform(x, v, threads)
    want = np.einsum("ar,nijrsc,bs->abnijc", B_T, _tiles_of(x.astype(np.float64)), B_T).reshape(v.shape)
    np.testing.assert_array_equal(v, want)

    m = _ints(rng, (16, n, th, tw, c))
    y = np.full(shape, np.nan, np.float32)
    _winograd.output_transform(y, m, threads)
    blocks = np.einsum("ra,abnijc,sb->nirjsc", A_T, m.astype(np.float64).reshape(4, 4, n, th, tw, c), A_T)
    np.testing.assert_array_equal(y, blocks.reshape(n, 2 * th, 2 * tw, c)[:, :h, :w])

    dy = _ints(rng, shape)
    dm = np.full((16, n, th, tw, c), np.nan, np.float32)
    _winograd.grad_transform(dy, dm, threads)
    dy_even = np.zeros((n, 2 * th, 2 * tw, c))
    dy_even[:, :h, :w] = dy
    dy_blocks = dy_even.reshape(n, th, 2, tw, 2, c)
    np.testing.assert_array_equal(dm, np.einsum("ra,nirjsc,sb->abnijc", A_T, dy_blocks, A_T).reshape(dm.shape))

    dv = _ints(rng, (16, n, th, tw, c))
    dx = np.full(shape, np.nan, np.float32)  # overwritten, not added to
    _winograd.input_grad_transform(dx, dv, threads)
    per_tile = np.einsum("ar,abnijc,bs->nijrsc", B_T, dv.astype(np.float64).reshape(4, 4, n, th, tw, c), B_T)
    padded = np.zeros((n, 2 * th + 2, 2 * tw + 2, c))
    for i in range(th):
        for j in range(tw):
            padded[:, 2 * i:2 * i + 4, 2 * j:2 * j + 4] += per_tile[:, i, j]
    np.testing.assert_array_equal(dx, padded[:, 1:h + 1, 1:w + 1])


def test_build_without_openmp_gives_the_same_tiles(tmp_path):
    """Where the compiler takes no -fopenmp (setup.py probes it), the transforms run on threads of their
    own: that build, compiled here, must give the same tiles as the installed one at 1 and 3 threads."""
    import importlib.util
    import shutil
    import subprocess
    import sysconfig

    from conftest import REPO_ROOT
    from nanoplus.train import _winograd

    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("no g++ to build the transforms without OpenMP")
    target = tmp_path / ("_winograd" + sysconfig.get_config_var("EXT_SUFFIX"))
    subprocess.run([compiler, "-O2", "-std=c++17", "-ffp-contract=off", "-Wno-psabi", "-shared", "-fPIC",
                    f"-I{sysconfig.get_paths()['include']}", str(REPO_ROOT / "train" / "native" / "winograd.cpp"),
                    "-o", str(target)], check=True, capture_output=True, timeout=300)
    spec = importlib.util.spec_from_file_location("_winograd", target)
    plain = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plain)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, 9, 8, 24)).astype(np.float32)
    shift = rng.standard_normal(24).astype(np.float32)
    want = np.empty((16, 5, 5, 4, 24), np.float32)
    _winograd.input_transform(x, want, 2, shift)
    for threads in (1, 3):
        got = np.empty_like(want)
        plain.input_transform(x, got, threads, shift)
        np.testing.assert_array_equal(got, want)
        dx = np.empty_like(x)
        plain.input_grad_transform(dx, want, threads)
        ref = np.empty_like(x)
        _winograd.input_grad_transform(ref, want, 1)
        np.testing.assert_array_equal(dx, ref)


def test_transforms_name_a_wrong_array():
    from nanoplus.train import _winograd

    x = np.zeros((1, 4, 4, 8), np.float32)
    with pytest.raises(ValueError, match=r"tiles must have shape \(16, 1, 2, 2, 8\)"):
        _winograd.input_transform(x, np.zeros((16, 1, 2, 3, 8), np.float32))
    with pytest.raises(ValueError, match="float32"):
        _winograd.input_transform(x.astype(np.float64), np.zeros((16, 1, 2, 2, 8), np.float32))


def _errors(n, c, k, h, w, bias, seed=0):
    """Max |error| of y, dx, dw, db against float64, relative to the largest float64 value of each,
    for Winograd and for PyTorch's direct float32 convolution."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g).clamp(min=-0.5).contiguous(memory_format=CL)
    weight = torch.randn(k, c, 3, 3, generator=g) * (2 / (9 * c)) ** 0.5
    b = torch.randn(k, generator=g) if bias else None
    dy = torch.randn(n, k, h, w, generator=g).contiguous(memory_format=CL)

    def run(fn, dtype):
        xs = x.to(dtype, copy=True).requires_grad_()
        ws = weight.to(dtype, copy=True).requires_grad_()
        bs = b.to(dtype, copy=True).requires_grad_() if bias else None
        y = fn(xs, ws, bs)
        y.backward(dy.to(dtype))
        return [y.detach(), xs.grad, ws.grad] + ([bs.grad] if bias else [])

    def direct(xs, ws, bs):
        return torch.nn.functional.conv2d(xs, ws, bs, padding=1)

    ref = run(direct, torch.float64)
    out = {}
    for name, fn in (("winograd", winograd.winograd_conv3x3), ("direct", direct)):
        got = run(fn, torch.float32)
        out[name] = [float((a.double() - r).abs().max() / r.abs().max()) for a, r in zip(got, ref)]
        if name == "winograd":
            assert got[0].is_contiguous(memory_format=CL) and got[1].is_contiguous(memory_format=CL)
    return out


@pytest.mark.parametrize("n,c,k,h,w,bias", [(2, 192, 192, 26, 26, False), (2, 192, 80, 13, 13, True),
                                            (3, 20, 24, 7, 9, True), (1, 16, 32, 1, 2, False)])
def test_convolution_and_its_gradients_match_float64(n, c, k, h, w, bias):
    errors = _errors(n, c, k, h, w, bias)
    # Measured, relative to the largest float64 value: PyTorch's direct float32 convolution 3e-8 .. 1.7e-6,
    # Winograd 1e-7 .. 1.1e-6 (its 16 products are summed by a GEMM, which blocks more finely than the
    # direct kernel's). 5e-6 bounds both.
    for name, errs in errors.items():
        assert max(errs) < 5e-6, (name, errs)


def _model_conv(winograd_on: bool = True) -> winograd.WinogradConv2d:
    conv = winograd.WinogradConv2d(16, 16, 3, padding=1).to(memory_format=CL)
    conv.winograd = winograd_on
    return conv


def test_applies_only_where_switched_on_training_channels_last_3x3():
    assert winograd.MIN_PIXELS == 100
    big = torch.randn(1, 16, 10, 10).contiguous(memory_format=CL)
    conv = _model_conv()
    assert winograd.applies(conv, big)
    assert not winograd.applies(_model_conv(False), big)  # the default: off
    assert not winograd.applies(conv, big.contiguous())  # NCHW
    assert not winograd.applies(conv, big[:, :, :9].contiguous(memory_format=CL))  # < MIN_PIXELS
    assert not winograd.applies(conv, big.double().contiguous(memory_format=CL))
    with torch.no_grad():
        assert not winograd.applies(conv, big)
    conv.eval()
    assert not winograd.applies(conv, big)
    for other in (winograd.WinogradConv2d(16, 16, 3, stride=2, padding=1), winograd.WinogradConv2d(16, 16, 1),
                  winograd.WinogradConv2d(16, 16, 3, padding=1, groups=2),
                  winograd.WinogradConv2d(16, 16, 3, padding=2, dilation=2)):
        other.winograd = True
        assert not winograd.applies(other, big)


def test_model_switch_reaches_the_aux_head_only_as_asked():
    from nanoplus.train.config import load_config
    from nanoplus.train.model import build_model

    model = build_model(load_config("nanodet-plus-m_320").model)
    convs = [m for m in model.modules() if isinstance(m, winograd.WinogradConv2d)]
    assert model.aux_head.gfl_cls in convs and model.aux_head.cls_convs[0].conv in convs
    assert not any(m.winograd for m in convs)
    model.use_winograd()
    assert all(m.winograd for m in convs)
    model.use_winograd(False)
    assert not any(m.winograd for m in convs)
    assert load_config("nanodet-plus-m_416").train.winograd is True
    assert load_config("nanodet-plus-m_416", ["train.winograd=false"]).train.winograd is False


def test_module_equals_the_direct_convolution_and_keeps_its_scratch():
    conv = _model_conv()
    x = torch.randn(4, 16, 21, 20).contiguous(memory_format=CL).requires_grad_()
    winograd.release_workspace()
    y = conv(x)
    y.square().sum().backward(retain_graph=True)
    first = (x.grad.clone(), conv.weight.grad.clone(), conv.bias.grad.clone())
    kept = {shape: len(buffers) for shape, buffers in winograd._workspace.free.items()}
    assert kept == {(16, 4, 11, 10, 16): 2}  # the forward's V and M, then backward's V, dM, dV: two at once
    x.grad = None
    conv.zero_grad()
    y.square().sum().backward()  # a second backward through the same graph: the scratch was not saved
    for a, b in zip(first, (x.grad, conv.weight.grad, conv.bias.grad)):
        assert torch.equal(a, b)
    assert {shape: len(buffers) for shape, buffers in winograd._workspace.free.items()} == kept

    xd = x.detach().double().requires_grad_()
    wd, bd = conv.weight.detach().double().requires_grad_(), conv.bias.detach().double().requires_grad_()
    yd = torch.nn.functional.conv2d(xd, wd, bd, padding=1)
    yd.square().sum().backward()
    assert (y.detach().double() - yd).abs().max() < 1e-5 * yd.abs().max()
    for a, b in ((first[0], xd.grad), (first[1], wd.grad), (first[2], bd.grad)):
        assert (a.double() - b).abs().max() < 1e-5 * b.abs().max()
    conv.eval()
    with torch.no_grad():
        assert torch.equal(conv(x), torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1))
    winograd.release_workspace()
    assert not winograd._workspace.free
