"""bench/train_throughput.py --upstream: upstream NanoDet's own training step beside ours.

The checks against upstream's code need a checkout of https://github.com/RangiLyu/nanodet named by
the environment variable NANOPLUS_UPSTREAM_DIR (e.g. ``git clone https://github.com/RangiLyu/nanodet
/tmp/nanodet-upstream``); they are marked slow and skip without it. The default run checks the
batch conversion and the error for a directory that is not a checkout.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT

BENCH = REPO_ROOT / "bench"
UPSTREAM_ENV = "NANOPLUS_UPSTREAM_DIR"
# Our names for upstream's loss_states keys.
OUR_LOSS_NAME = {"loss": "loss", "loss_qfl": "loss_qfl", "loss_bbox": "loss_bbox", "loss_dfl": "loss_dfl",
                 "aux_loss_qfl": "loss_aux_qfl", "aux_loss_bbox": "loss_aux_bbox", "aux_loss_dfl": "loss_aux_dfl"}


def _bench_module(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


def _upstream_dir() -> Path:
    value = os.environ.get(UPSTREAM_ENV)
    if not value:
        pytest.skip(f"no upstream NanoDet checkout: set {UPSTREAM_ENV} to a clone of https://github.com/RangiLyu/nanodet")
    path = Path(value)
    if not (path / "nanodet" / "model" / "arch" / "nanodet_plus.py").is_file():
        pytest.skip(f"{UPSTREAM_ENV}={path} is not a checkout of upstream NanoDet (no nanodet/model/arch/nanodet_plus.py)")
    return path


def test_batch_is_converted_to_upstream_format():
    """Upstream's head calls torch.from_numpy on each image's boxes and labels: numpy float32 (n, 4)
    and int64 (n,), the same values; ignore boxes empty (n = 0) per image."""
    upstream_nanodet = _bench_module("upstream_nanodet")
    images = torch.zeros(2, 3, 64, 64)
    boxes = [torch.tensor([[1.0, 2.0, 30.5, 40.0]]), torch.zeros(0, 4)]
    labels = [torch.tensor([3]), torch.zeros(0, dtype=torch.int64)]
    meta = upstream_nanodet.gt_meta(images, boxes, labels)
    assert meta["img"] is images
    assert [b.dtype for b in meta["gt_bboxes"]] == [np.float32, np.float32]
    assert [lab.dtype for lab in meta["gt_labels"]] == [np.int64, np.int64]
    np.testing.assert_array_equal(meta["gt_bboxes"][0], [[1.0, 2.0, 30.5, 40.0]])
    assert meta["gt_bboxes"][1].shape == (0, 4) and meta["gt_labels"][1].shape == (0,)
    assert [b.shape for b in meta["gt_bboxes_ignore"]] == [(0, 4), (0, 4)]


def test_upstream_option_rejects_a_directory_that_is_not_a_checkout(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / "train_throughput.py"), "--upstream", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert f"--upstream {tmp_path}" in proc.stderr and "git clone https://github.com/RangiLyu/nanodet" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture
def upstream_and_ours():
    """Upstream's NanoDet-Plus-m-416 training model and ours in each layout (nchw, channels_last, and
    channels-last with Winograd aux convolutions: ``nanoplus train``'s), same weights. 160 x 160 input:
    the stride-8 and stride-16 maps (20 x 20, 10 x 10) are large enough for Winograd (``winograd.MIN_PIXELS``).
    sys.modules / sys.path are restored after (the stubs must not leak into other tests)."""
    upstream_dir = _upstream_dir()
    saved_modules, saved_path, saved_threads = dict(sys.modules), list(sys.path), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        upstream_nanodet = _bench_module("upstream_nanodet")
        from nanoplus.train.config import load_config
        from nanoplus.train.model import build_model

        cfg = load_config("nanodet-plus-m_416", ["data.input_hw=[160,160]"])
        upstream_model, upstream, _ = upstream_nanodet.build_upstream(upstream_dir, "nanodet-plus-m_416",
                                                                       cfg.model.num_classes)
        ours = {}
        for layout in ("nchw", "channels_last", "winograd"):
            model = build_model(cfg.model).train()
            model.load_state_dict(upstream_model.state_dict())  # strict: the names map 1:1
            ours[layout] = model.use_channels_last(layout != "nchw").use_winograd(layout == "winograd")
        yield upstream_nanodet, upstream_model, upstream, ours, cfg
    finally:
        torch.set_num_threads(saved_threads)
        sys.path[:] = saved_path
        for name in set(sys.modules) - set(saved_modules):
            del sys.modules[name]


def _float64_gradients(build_model, cfg, state, images, boxes, labels):
    """Our model's gradients (and their norm) for one step in float64, NCHW: the reference that both
    float32 implementations round away from."""
    model = build_model(cfg.model).train()
    model.load_state_dict(state)
    model = model.double()
    out = model.forward_train(images.double(), [b.double() for b in boxes], labels, 0)
    out["loss"].backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    return grads, float(torch.sqrt(sum((g ** 2).sum() for g in grads.values())))


@pytest.mark.slow
def test_first_step_agrees_with_upstream(upstream_and_ours):
    """Same weights, same batch: upstream's own step and ours give the same losses (1e-5 relative) and,
    in nchw, the same gradient norm and gradients (the fused quality focal loss sums in another order:
    allowed 1e-5 relative and 1e-5 of the largest gradient); channels_last's and winograd's gradients
    are checked against a float64 rerun (below). The optimiser and EMA arithmetic is checked exactly: from upstream's starting weights
    and upstream's own gradients, ours (nanoplus train's foreach AdamW, ModelEMA) give upstream's
    weights and EMA after its step. Our own stepped weights are not compared: AdamW's first step
    moves each weight by about lr * sign(gradient), and some gradients are zero but for rounding (a
    BatchNorm bias feeding a 1x1 conv and another BatchNorm), so their rounding noise becomes +-lr."""
    upstream_nanodet, upstream_model, upstream, ours, cfg = upstream_and_ours
    train_throughput = _bench_module("train_throughput")
    from nanoplus.train.ema import ModelEMA
    from nanoplus.train.model import build_model
    from nanoplus.train.optimizer import build_optimizer

    images, boxes, labels = train_throughput.make_batch(4, 160, cfg.model.num_classes, 7, seed=1)
    from nanoplus.train import winograd

    assert 10 * 10 >= winograd.MIN_PIXELS and (not winograd.available() or winograd.applies(
        ours["winograd"].aux_head.cls_convs[0].conv, images[:, :, :20, :20].contiguous(memory_format=torch.channels_last)))
    start_state = {k: v.clone() for k, v in upstream_model.state_dict().items()}
    step = upstream_nanodet.UpstreamStep(upstream_model, upstream, cfg.train.lr, cfg.train.weight_decay,
                                         cfg.train.grad_clip, cfg.train.ema_decay)
    theirs = step(upstream_nanodet.gt_meta(images, boxes, labels), 0)
    assert set(OUR_LOSS_NAME) <= set(theirs)
    their_grads = {name: p.grad for name, p in upstream_model.named_parameters()}
    grad_scale = max(g.abs().max() for g in their_grads.values())
    for layout, model in ours.items():
        run = {"model": model, "params": [p for p in model.parameters() if p.requires_grad],
               "optimizer": build_optimizer(model, cfg.train),  # nanoplus train's (foreach AdamW)
               "ema": ModelEMA(model, cfg.train.ema_decay)}
        mine = train_throughput.our_step(run, images, boxes, labels, cfg.train.grad_clip, 0)
        assert float(mine["num_pos"]) > 0
        for their_name, our_name in OUR_LOSS_NAME.items():
            torch.testing.assert_close(mine[our_name].detach(), theirs[their_name], rtol=1e-5, atol=1e-7,
                                       msg=lambda m: f"{layout} {our_name}: {m}")
        if layout == "nchw":
            torch.testing.assert_close(mine["grad_norm"], theirs["grad_norm"], rtol=1e-5, atol=0)
            for name, p in model.named_parameters():
                torch.testing.assert_close(p.grad, their_grads[name], rtol=1e-4, atol=1e-5 * float(grad_scale),
                                           msg=lambda m: f"{layout} gradient of {name}: {m}")
        else:
            # The backbone's gradients pass through train-mode BatchNorm and are ill-conditioned: on this
            # batch a float64 rerun puts upstream's float32 gradient norm 3.9e-4 off and ours (NHWC, the
            # backbone included) 7.7e-5. So channels_last is held to the float64 gradients: its norm at
            # least as close as upstream's and within the fixture's 1e-3 of upstream's, each parameter's
            # gradient no further from float64 than upstream's is, plus 1e-5 of the largest gradient.
            # winograd: 3x. Its own rounding is no larger than the direct convolution's (measured on the
            # aux head's first reg layer with this step's real input and output gradient, relative to
            # float64: y 1.6e-6 against 5.6e-6 absolute, input gradient 3.8e-7 against 8.8e-7, weight
            # gradient 6.2e-7 against 4.0e-7; synthetic cases: tests/test_winograd.py), the assignments
            # are the same and the losses within 1.2e-7; but that one layer's weight gradient lands
            # 1.08e-4 from float64 against upstream's 4.93e-5 (2.2x; every other parameter <= 1.15x, as
            # channels_last's): the step downstream of the reg tower amplifies a different last-bit
            # rounding of its forward.
            factor = 3 if layout == "winograd" else 2
            exact, exact_norm = _float64_gradients(build_model, cfg, start_state, images, boxes, labels)
            ours_off = abs(float(mine["grad_norm"]) - exact_norm)
            theirs_off = abs(float(theirs["grad_norm"]) - exact_norm)
            assert ours_off <= max(theirs_off, 1e-6 * exact_norm), (ours_off, theirs_off)
            torch.testing.assert_close(mine["grad_norm"], theirs["grad_norm"], rtol=1e-3, atol=0)
            for name, p in model.named_parameters():
                ours_diff = float((p.grad.double() - exact[name]).abs().max())
                theirs_diff = float((their_grads[name].double() - exact[name]).abs().max())
                assert ours_diff <= factor * theirs_diff + 1e-5 * float(grad_scale), (layout, name, ours_diff, theirs_diff)
        if layout == "nchw":
            # Our step's BatchNorm statistics (NCHW: upstream's sums), then upstream's starting
            # weights and its gradients (clipped: the norm is under 35) through our optimiser and EMA.
            after_forward = {k: v.clone() for k, v in model.state_dict().items()}
            model.load_state_dict(start_state)
            ema_model = ModelEMA(model, cfg.train.ema_decay)
            with torch.no_grad():
                for name, buffer in model.named_buffers():
                    buffer.copy_(after_forward[name])
            for name, p in model.named_parameters():
                p.grad = their_grads[name].clone()
            build_optimizer(model, cfg.train).step()
            ema_model.update(model, 0)
            state, ema, upstream_ema = model.state_dict(), ema_model.state_dict(), step.ema.state_dict()
            for name, value in upstream_model.state_dict().items():
                if value.is_floating_point():
                    torch.testing.assert_close(state[name], value, rtol=1e-5, atol=1e-7, msg=lambda m: f"{name}: {m}")
                    torch.testing.assert_close(ema[name], upstream_ema[name], rtol=1e-5, atol=1e-7,
                                               msg=lambda m: f"EMA {name}: {m}")


@pytest.mark.slow
def test_bench_times_upstream_beside_our_layouts(tmp_path):
    """The harness: one row per layout plus upstream's, each with its ratio to upstream, and the
    first-step losses printed (small sizes: this checks the harness, not the speed)."""
    upstream_dir = _upstream_dir()
    out = tmp_path / "steps.json"
    proc = subprocess.run([sys.executable, str(BENCH / "train_throughput.py"), "--upstream", str(upstream_dir),
                           "--batch", "2", "--imgsz", "64", "--threads", "1", "--steps", "2", "--warmup", "0",
                           "--boxes", "2", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())
    assert [r["layout"] for r in rows] == ["nchw", "channels_last", "winograd", "upstream"]
    assert all(r["images_per_s"] > 0 and r["vs_upstream"] > 0 for r in rows)
    assert rows[3]["vs_upstream"] == 1.0
    losses = [r["first_step"]["loss"] for r in rows]
    assert max(losses) - min(losses) <= 1e-5 * abs(losses[3])
    assert "x upstream" in proc.stdout and "first step (same weights, same batch)" in proc.stdout
