"""The faster training step reproduces upstream's fixture as the default one does.

``NanoDetPlus.use_channels_last`` (train.channels_last, on by default) runs every convolution, the
backbone's included, in NHWC memory: the same sums in another order, BatchNorm statistics as
accurate as NCHW's (``modules.BatchNorm2d``); ``NanoDetPlus.use_winograd`` (train.winograd, on by
default) then trains the aux head's 3x3 convolutions by Winograd F(2x2, 3x3) (tests/test_winograd.py). The upstream fixture's training step (outputs of both
heads, label assignment, every loss and the per-part gradient norms) must still be reproduced within
the fixture's own tolerances, the assignments exactly; and the deploy forward too. The pieces that
make it faster are checked against the plain forms: the channels-last shuffle, the accurate NHWC
BatchNorm, the fused quality focal loss and the heads' contiguous (B, N, K) output.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nanoplus.train.config import load_config
from nanoplus.train import winograd
from nanoplus.train.model import build_model
from test_model_upstream import LOSSES, PARTS, _case_params, _one_thread, _tol, case_config


def _mode_params():
    """Each upstream case, trained channels-last with PyTorch's direct convolutions and with the aux
    head's 3x3 convolutions by Winograd (``nanoplus train``'s default; needs the compiled extension)."""
    from nanoplus.train import winograd

    params = []
    for case in _case_params():
        for mode in ("channels_last", "winograd"):
            marks = list(case.marks)
            if mode == "winograd" and not winograd.available():
                marks.append(pytest.mark.skip(reason="nanoplus.train._winograd is not built (no C++ compiler at install)"))
            params.append(pytest.param((case.values[0], mode), id=f"{case.id}-{mode}", marks=marks))
    return params


@pytest.fixture(scope="module", params=_mode_params())
def step(request):
    case_dir, mode = request.param
    import json

    meta = json.loads((case_dir / "meta.json").read_text())
    arrays = np.load(case_dir / "case.npz")
    previous_threads = _one_thread()
    try:
        cfg = case_config(meta)
        batch = meta["batch_size"]
        images = torch.from_numpy(arrays["img"])
        gt_bboxes = [torch.from_numpy(arrays[f"gt_bboxes_{i}"]).reshape(-1, 4) for i in range(batch)]
        gt_labels = [torch.from_numpy(arrays[f"gt_labels_{i}"]).reshape(-1) for i in range(batch)]
        state = torch.load(case_dir / "state_dict.pt", map_location="cpu", weights_only=True)
        model = build_model(cfg.model)
        model.load_state_dict(state)
        model.use_channels_last()
        model.use_winograd(mode == "winograd")
        assert model.aux_head.gfl_cls.weight.is_contiguous(memory_format=torch.channels_last)
        assert model.backbone.conv1[0].weight.is_contiguous(memory_format=torch.channels_last)
        model.eval()
        with torch.no_grad():
            deploy_out = model(images).numpy()
        model.train()
        ran = []
        hook = model.aux_head.cls_convs[0].conv.register_forward_pre_hook(
            lambda module, args: ran.append(winograd.applies(module, args[0])))
        losses = model.forward_train(images, gt_bboxes, gt_labels, meta["epoch"], return_details=True)
        hook.remove()
        assert any(ran) == (mode == "winograd")  # the 52 x 52 level at least, in that mode only
        losses["loss"].backward()
        gradnorm = {
            part: math.sqrt(sum(float((p.grad.double() ** 2).sum()) for n, p in model.named_parameters()
                                if n.startswith(part + ".") and p.grad is not None))
            for part in PARTS
        }
        yield {"meta": meta, "arrays": arrays, "deploy_out": deploy_out, "losses": losses, "gradnorm": gradnorm}
    finally:
        torch.set_num_threads(previous_threads)


def _max_diff(a, b):
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def test_channels_last_step_reproduces_upstream(step):
    arrays, losses = step["arrays"], step["losses"]
    assert _max_diff(step["deploy_out"], arrays["deploy_out"]) <= _tol(step, "deploy_out_abs")
    assert _max_diff(losses["head_out"].detach(), arrays["train_head_out"]) <= _tol(step, "train_head_out_abs")
    assert _max_diff(losses["aux_out"].detach(), arrays["train_aux_out"]) <= _tol(step, "train_aux_out_abs")
    for i, a in enumerate(losses["assignments"]):
        np.testing.assert_array_equal(a.labels.numpy(), arrays[f"assign_labels_{i}"])
        np.testing.assert_array_equal(a.gt_inds.numpy(), arrays[f"assign_gt_inds_{i}"])
        assert _max_diff(a.label_scores, arrays[f"assign_label_scores_{i}"]) <= _tol(step, "assign_label_scores_abs")
    names = {"loss": "loss_total", **{k: k for k in LOSSES}}
    for ours, theirs in names.items():
        assert float(losses[ours].detach()) == pytest.approx(float(arrays[theirs]), rel=_tol(step, "losses_rel"), abs=1e-12)
    for part in PARTS:
        assert step["gradnorm"][part] == pytest.approx(float(arrays[f"gradnorm_{part}"]),
                                                      rel=_tol(step, "gradnorm_rel")[part], abs=1e-12), part


def test_channels_last_is_the_training_default_and_can_be_switched_off():
    assert load_config("nanodet-plus-m_416").train.channels_last is True
    assert load_config("nanodet-plus-m_416", ["train.channels_last=false"]).train.channels_last is False
    model = build_model(load_config("nanodet-plus-m_320").model).use_channels_last().eval()
    out = model(torch.zeros(1, 3, 64, 64))
    model.use_channels_last(False)
    assert model.channels_last is False
    assert all(p.is_contiguous() for p in model.parameters())
    torch.testing.assert_close(model(torch.zeros(1, 3, 64, 64)), out, rtol=0, atol=1e-5)


def test_train_throughput_compares_layouts_in_one_run(tmp_path):
    """bench/train_throughput.py: one model per layout, steps interleaved, a row per layout (small
    sizes: this checks the harness, not the speed)."""
    import json
    import subprocess
    import sys

    from conftest import COCO128, REPO_ROOT, require

    out = tmp_path / "steps.json"
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "train_throughput.py"), "--config", "nanodet-plus-m_320",
                           "--batch", "2", "--imgsz", "64", "--threads", "1", "--steps", "2", "--warmup", "0",
                           "--boxes", "2", "--data", str(require(COCO128)), "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())
    assert [r.get("layout") for r in rows[:3]] == ["nchw", "channels_last", "winograd"]
    assert all(r["threads"] == 1 and r["batch"] == 2 and r["images_per_s"] > 0 for r in rows[:3])
    assert "channels_last" in proc.stdout and "winograd" in proc.stdout and "x nchw" in proc.stdout
    assert rows[3]["data_pipeline"]["images"] == 128 and rows[3]["data_pipeline"]["images_per_s_per_worker"] > 0
    assert "data pipeline:" in proc.stdout


def test_channels_last_shuffle_is_the_channel_shuffle():
    from nanoplus.train.shufflenetv2 import ShuffleV2Block, channel_shuffle, concat_shuffle_channels_last

    g = torch.Generator().manual_seed(0)
    cl = torch.channels_last
    a = torch.randn(2, 6, 5, 7, generator=g).contiguous(memory_format=cl)
    b = torch.randn(2, 6, 5, 7, generator=g).contiguous(memory_format=cl)
    out = concat_shuffle_channels_last(a, b)
    assert torch.equal(out, channel_shuffle(torch.cat((a, b), 1), 2))
    assert out.is_contiguous(memory_format=cl)
    x = torch.randn(2, 12, 5, 7, generator=g).contiguous(memory_format=cl)
    x1, x2 = x.chunk(2, dim=1)  # strided channel halves, as a stride-1 block has them
    assert torch.equal(concat_shuffle_channels_last(x1, x2), channel_shuffle(x, 2))
    # a whole block, NHWC against NCHW: same values (the convolutions round alike here, one thread)
    for stride in (1, 2):
        torch.manual_seed(0)
        block = ShuffleV2Block(12 if stride == 1 else 8, 12, stride, "LeakyReLU").eval()
        inp = torch.randn(2, block.branch2[0].in_channels * (2 if stride == 1 else 1), 9, 9, generator=g)
        want = block(inp)
        got = block.to(memory_format=cl)(inp.contiguous(memory_format=cl))
        assert got.is_contiguous(memory_format=cl)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_channels_last_batchnorm_statistics_are_accurate():
    """Training-mode modules.BatchNorm2d on NHWC input: output, running statistics and gradients as
    nn.BatchNorm2d on NCHW input, and the variance as accurate as NCHW's where PyTorch's own NHWC
    kernel is 1e-4 off (a large map with an offset mean, as after the first convolution)."""
    from nanoplus.train.modules import BatchNorm2d

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 8, 160, 160, generator=g) * 2 + 3
    ref = torch.nn.BatchNorm2d(8).train()
    ours = BatchNorm2d(8).train()
    with torch.no_grad():
        for m in (ref, ours):
            m.weight.copy_(torch.linspace(0.5, 1.5, 8))
            m.bias.copy_(torch.linspace(-1, 1, 8))
    xr = x.clone().requires_grad_(True)
    xc = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    yr, yc = ref(xr), ours(xc)
    assert yc.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(yc, yr, rtol=0, atol=2e-5)
    torch.testing.assert_close(ours.running_mean, ref.running_mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours.running_var, ref.running_var, rtol=1e-6, atol=1e-7)
    assert int(ours.num_batches_tracked) == 1
    upstream_grad = torch.randn(x.shape, generator=g)
    yr.backward(upstream_grad)
    yc.backward(upstream_grad.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(xc.grad, xr.grad, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=1e-4, atol=1e-3)

    exact = x.double().var(dim=(0, 2, 3), unbiased=True)
    mom = ref.momentum

    def var_error(running_var):  # running_var = (1 - mom) * 1 + mom * batch var
        return float((((running_var.double() - (1 - mom)) / mom - exact).abs() / exact).max())

    assert var_error(ours.running_var) < 1e-6
    native = torch.nn.BatchNorm2d(8).train()
    native(x.contiguous(memory_format=torch.channels_last))
    assert var_error(native.running_var) > 10 * var_error(ours.running_var)  # why the class exists
    # eval mode, and NCHW input, are nn.BatchNorm2d's own forward
    ours.eval()
    ref.load_state_dict(ours.state_dict())
    ref.eval()
    assert torch.equal(ours(xc.detach()), ref(xc.detach()))


def test_fused_quality_focal_loss_equals_the_plain_one():
    from nanoplus.train.losses import quality_focal_loss, quality_focal_loss_sum

    g = torch.Generator().manual_seed(0)
    m, c = 3000, 20
    logits0 = torch.randn(m, c, generator=g) * 3 - 2
    labels = torch.full((m,), c)
    pos = torch.randperm(m, generator=g)[:200]
    labels[pos] = torch.randint(0, c, (200,), generator=g)
    scores = torch.zeros(m)
    scores[pos] = torch.rand(200, generator=g)
    for beta in (2.0, 1.5):
        a = logits0.clone().requires_grad_(True)
        b = logits0.clone().requires_grad_(True)
        want = quality_focal_loss(a, labels, scores, beta=beta).sum()
        got = quality_focal_loss_sum(b, labels, scores, beta=beta)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
        want.backward()
        got.backward()
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7)
    none = torch.full((m,), c)  # no positives
    torch.testing.assert_close(quality_focal_loss_sum(logits0, none, scores),
                               quality_focal_loss(logits0, none, scores).sum(), rtol=1e-6, atol=0)


def test_heads_give_the_same_points_in_both_layouts():
    """Channels-last heads return a contiguous (B, N, K) (one concatenation), NCHW heads the permuted
    view the exporters trace: same values, same order."""
    torch.manual_seed(0)
    model = build_model(load_config("nanodet-plus-m_320").model).eval()
    feats = [torch.randn(2, 96, s, s) for s in (8, 4, 2, 1)]
    with torch.no_grad():
        want_main = model.head(feats)
        want_aux = model.aux_head([torch.cat([f, f], 1) for f in feats])
        model.use_channels_last()
        cl = [f.contiguous(memory_format=torch.channels_last) for f in feats]
        got_main = model.head(cl)
        got_aux = model.aux_head([torch.cat([f, f], 1) for f in cl])
    assert not want_main.is_contiguous() and got_main.is_contiguous() and got_aux.is_contiguous()
    torch.testing.assert_close(got_main, want_main, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_aux, want_aux, rtol=0, atol=1e-5)



@pytest.mark.parametrize("channels,stride,size", [(96, 1, 20), (96, 2, 21), (192, 1, 13), (24, 2, 16)])
def test_depthwise_weight_gradient_through_the_grouped_kernel_is_the_same(channels, stride, size):
    """modules.DepthwiseConv2d in training on NHWC maps: output, input gradient and weight gradient
    equal nn.Conv2d's (the weight gradient taken from a grouped convolution's diagonal)."""
    from nanoplus.train.modules import DepthwiseConv2d

    torch.manual_seed(0)
    cl = torch.channels_last
    ours = DepthwiseConv2d(channels, 5, stride, 2).to(memory_format=cl).train()
    ref = torch.nn.Conv2d(channels, channels, 5, stride, 2, groups=channels, bias=False).to(memory_format=cl)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, channels, size, size).contiguous(memory_format=cl)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = ours(xa), ref(xb)
    assert ya.grad_fn.name().endswith("_DepthwiseConvGroupedWeightGradBackward")  # the fast path ran
    grad = torch.randn_like(ya)
    ya.backward(grad)
    yb.backward(grad)
    assert torch.equal(ya, yb) and torch.equal(xa.grad, xb.grad)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-6, atol=1e-6)  # measured: equal
    assert ours.weight.grad.is_contiguous(memory_format=cl)
    # NCHW input, or eval: nn.Conv2d's own forward
    assert ours(x.contiguous()).grad_fn.name() == "ConvolutionBackward0"


def test_foreach_adamw_and_ema_are_bit_identical_to_the_per_tensor_loops():
    """build_optimizer's foreach AdamW and ModelEMA's multi-tensor update: the same numbers as the
    per-parameter implementations they replace."""
    from nanoplus.train.ema import ModelEMA
    from nanoplus.train.optimizer import build_optimizer

    cfg = load_config("nanodet-plus-m_320")
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    twin = build_model(cfg.model).train()
    twin.load_state_dict(model.state_dict())
    ours = build_optimizer(model, cfg.train)
    assert ours.defaults["foreach"] is True
    plain = torch.optim.AdamW(twin.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, foreach=False)
    ema = ModelEMA(model, cfg.train.ema_decay)
    g = torch.Generator().manual_seed(1)
    for step in range(3):
        for p, q in zip(model.parameters(), twin.parameters()):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        ours.step()
        plain.step()
        before = {k: v.clone() for k, v in ema.state_dict().items()}
        ema.update(model, step)
        w = ema.weight_of_new(step)
        for name, value in model.state_dict().items():
            want = before[name].mul_(1.0 - w).add_(value, alpha=w) if value.is_floating_point() else value
            assert torch.equal(ema.state_dict()[name], want), name
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)
