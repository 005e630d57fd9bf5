"""The faster training step reproduces upstream's fixture as the default one does.

``NanoDetPlus.use_channels_last`` (train.channels_last, on by default) runs the convolutions in
NHWC memory: the same sums in another order. The upstream fixture's training step (outputs of both
heads, label assignment, every loss and the per-part gradient norms) must still be reproduced within
the fixture's own tolerances, the assignments exactly; and the deploy forward too.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nanoplus.train.config import load_config
from nanoplus.train.model import build_model
from test_model_upstream import LOSSES, PARTS, _case_params, _one_thread, _tol, case_config


@pytest.fixture(scope="module", params=_case_params())
def step(request):
    case_dir = request.param
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
        assert model.aux_head.gfl_cls.weight.is_contiguous(memory_format=torch.channels_last)
        assert model.backbone.conv1[0].weight.is_contiguous()
        model.eval()
        with torch.no_grad():
            deploy_out = model(images).numpy()
        model.train()
        losses = model.forward_train(images, gt_bboxes, gt_labels, meta["epoch"], return_details=True)
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
    assert [r.get("layout") for r in rows[:2]] == ["nchw", "channels_last"]
    assert all(r["threads"] == 1 and r["batch"] == 2 and r["images_per_s"] > 0 for r in rows[:2])
    assert "channels_last" in proc.stdout and "x nchw" in proc.stdout
    assert rows[2]["data_pipeline"]["images"] == 128 and rows[2]["data_pipeline"]["images_per_s_per_worker"] > 0
    assert "data pipeline:" in proc.stdout
