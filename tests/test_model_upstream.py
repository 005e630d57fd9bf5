"""The PyTorch model against upstream NanoDet-Plus: every fixture case under
../shared/reference/upstream (each folder with a meta.json), plus upstream behaviours on hand-made
inputs (assigner, losses).

Everything about a case (config, classes, size, batch, epoch, strides, tolerances) is read from
its meta.json and arrays; held-back cases with other settings run through the same tests.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from conftest import SHARED
from nanoplus.train.assigner import DynamicSoftLabelAssigner
from nanoplus.train.box_ops import make_center_priors
from nanoplus.train.checkpoint import load_upstream_weights
from nanoplus.train.config import builtin_config_names, load_config
from nanoplus.train.losses import distribution_focal_loss, giou_loss, quality_focal_loss
from nanoplus.train.model import build_model

UPSTREAM_ROOT = SHARED / "reference" / "upstream"
CASE_DIRS = sorted(p for p in UPSTREAM_ROOT.glob("*") if (p / "meta.json").is_file()) if UPSTREAM_ROOT.is_dir() else []
PARTS = ("backbone", "fpn", "head", "aux_fpn", "aux_head")
LOSSES = ("loss_qfl", "loss_bbox", "loss_dfl", "loss_aux_qfl", "loss_aux_bbox", "loss_aux_dfl")


def _case_params():
    if not CASE_DIRS:
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"no upstream fixture cases under {UPSTREAM_ROOT}"))]
    return [pytest.param(p, id=p.name) for p in CASE_DIRS]


def case_config(meta: dict):
    """Our config for a case: its built-in config with the case's classes, size, strides, reg_max, detach epoch."""
    name = meta.get("config_variant") if meta.get("config_variant") in builtin_config_names() else meta["config"]
    height, width = meta["input_hw"]
    overrides = [
        f"model.num_classes={meta['num_classes']}",
        f"data.input_hw=[{height},{width}]",
        f"model.head.strides=[{','.join(str(s) for s in meta['strides'])}]",
        f"model.head.reg_max={meta['reg_max']}",
        f"model.detach_epoch={meta['detach_epoch']}",
    ]
    return load_config(name, overrides)


def _one_thread():
    """Fixture generation ran on one thread; so do we (also kind to the shared machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    return previous


@pytest.fixture(scope="module", params=_case_params())
def case(request):
    """Everything computed once per case: eval outputs, checkpoint-loaded outputs, one training step."""
    case_dir: Path = request.param
    meta = json.loads((case_dir / "meta.json").read_text())
    arrays = np.load(case_dir / "case.npz")
    previous_threads = _one_thread()
    try:
        yield _compute(case_dir, meta, arrays)
    finally:
        torch.set_num_threads(previous_threads)


def _compute(case_dir: Path, meta: dict, arrays) -> dict:
    cfg = case_config(meta)
    batch = meta["batch_size"]
    images = torch.from_numpy(arrays["img"])
    gt_bboxes = [torch.from_numpy(arrays[f"gt_bboxes_{i}"]).reshape(-1, 4) for i in range(batch)]
    gt_labels = [torch.from_numpy(arrays[f"gt_labels_{i}"]).reshape(-1) for i in range(batch)]
    state = torch.load(case_dir / "state_dict.pt", map_location="cpu", weights_only=True)
    out = {"meta": meta, "arrays": arrays, "cfg": cfg, "dir": case_dir, "state": state}

    torch.manual_seed(0)
    model = build_model(cfg.model)
    out["keys"] = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    out["param_names"] = [n for n, _ in model.named_parameters()]
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        out["deploy_out"] = model(images).numpy()
        out["deploy_out_first_alone"] = model(images[:1]).numpy()
        feats = model.backbone(images)
        out["backbone_feats"] = [f[0].numpy() for f in feats]
        out["fpn_feats"] = [f[0].numpy() for f in model.fpn(feats)]
        model.head.sigmoid_scores = True
        out["onnx_style_out"] = model(images).numpy()
        model.head.sigmoid_scores = False

    # Training step: train mode (batch statistics), one backward of the total loss, no optimiser step.
    model.train()
    losses = model.forward_train(images, gt_bboxes, gt_labels, meta["epoch"], return_details=True)
    losses["loss"].backward()
    out["losses"] = {k: float(losses[k].detach()) for k in ("loss",) + LOSSES}
    out["train_head_out"] = losses["head_out"].detach().numpy()
    out["train_aux_out"] = losses["aux_out"].detach().numpy()
    out["center_priors"] = losses["center_priors"].numpy()
    out["assignments"] = losses["assignments"]
    out["gradnorm"] = {
        part: math.sqrt(sum(float((p.grad.double() ** 2).sum()) for n, p in model.named_parameters()
                            if n.startswith(part + ".") and p.grad is not None))
        for part in PARTS
    }

    # The upstream Lightning checkpoint, read by upstream's prefix rule (EMA wins).
    ckpt_model = build_model(cfg.model, deploy=True)
    out["ckpt_state"] = load_upstream_weights(case_dir / "upstream_ckpt.ckpt", model=ckpt_model)
    ckpt_model.eval()
    with torch.no_grad():
        out["deploy_out_ckpt"] = ckpt_model(images).numpy()
    return out


def _tol(case, key):
    return case["meta"]["tolerance_advice"][key]


def _assert_close(actual, expected, atol, what):
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    diff = float(np.abs(actual.astype(np.float64) - expected).max()) if actual.size else 0.0
    assert diff <= atol, f"{what}: max abs difference {diff:.3g} > {atol:g}"


# ------------------------------------------------------------------------------------------------
# Structure


def test_state_dict_layout_is_upstreams(case):
    """Names, shapes and order of every state-dict entry (full model, aux branch included)."""
    expected = json.loads((case["dir"] / "keys.json").read_text())
    assert case["keys"] == [(k, list(s)) for k, s in expected]
    assert case["param_names"] == list(case["arrays"]["gradnorm_param_names"])


def test_center_priors(case):
    meta = case["meta"]
    expected = case["arrays"]["center_priors"]
    np.testing.assert_array_equal(case["center_priors"], expected)
    assert len(expected) == meta["num_points"] == sum(h * w for h, w in meta["featmap_hw"])
    np.testing.assert_array_equal(make_center_priors(meta["input_hw"], meta["strides"]).numpy(), expected)


# ------------------------------------------------------------------------------------------------
# Eval mode (deploy)


def test_deploy_output(case):
    _assert_close(case["deploy_out"], case["arrays"]["deploy_out"], _tol(case, "deploy_out_abs"), "deploy_out")


def test_deploy_images_are_independent(case):
    _assert_close(case["deploy_out_first_alone"][0], case["arrays"]["deploy_out"][0],
                  _tol(case, "deploy_out_abs"), "image 0 run alone")


def test_onnx_style_output_has_sigmoid_scores(case):
    _assert_close(case["onnx_style_out"], case["arrays"]["onnx_style_out"], _tol(case, "onnx_style_out_abs"),
                  "onnx_style_out")
    num_classes = case["meta"]["num_classes"]
    np.testing.assert_array_equal(case["onnx_style_out"][..., num_classes:], case["deploy_out"][..., num_classes:])


def test_eval_features(case):
    arrays = case["arrays"]
    for k, feat in enumerate(case["backbone_feats"]):
        _assert_close(feat, arrays[f"eval_backbone_feat_{k}"], _tol(case, "eval_backbone_feat_abs"), f"backbone feat {k}")
    for k, feat in enumerate(case["fpn_feats"]):
        _assert_close(feat, arrays[f"eval_fpn_feat_{k}"], _tol(case, "eval_fpn_feat_abs"), f"fpn feat {k}")
    assert len(case["fpn_feats"]) == len(case["meta"]["strides"])


def test_upstream_checkpoint_loads_ema_weights(case):
    _assert_close(case["deploy_out_ckpt"], case["arrays"]["deploy_out_ckpt"], _tol(case, "deploy_out_ckpt_abs"),
                  "deploy_out_ckpt")
    raw = torch.load(case["dir"] / "upstream_ckpt.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert set(case["ckpt_state"]) == set(case["state"])
    for name, value in case["ckpt_state"].items():
        assert torch.equal(value, raw[f"avg_model.{name}"]), name


# ------------------------------------------------------------------------------------------------
# Training step


def test_train_head_outputs(case):
    arrays = case["arrays"]
    _assert_close(case["train_head_out"], arrays["train_head_out"], _tol(case, "train_head_out_abs"), "train_head_out")
    _assert_close(case["train_aux_out"], arrays["train_aux_out"], _tol(case, "train_aux_out_abs"), "train_aux_out")


def test_assignment(case):
    arrays, meta = case["arrays"], case["meta"]
    assert len(case["assignments"]) == meta["batch_size"]
    priors = case["center_priors"]
    for i, a in enumerate(case["assignments"]):
        np.testing.assert_array_equal(a.labels.numpy(), arrays[f"assign_labels_{i}"], err_msg=f"labels, image {i}")
        np.testing.assert_array_equal(a.gt_inds.numpy(), arrays[f"assign_gt_inds_{i}"], err_msg=f"gt_inds, image {i}")
        assert a.num_pos == int(arrays[f"assign_num_pos_{i}"]) == meta["assign_num_pos"][i]
        _assert_close(a.label_scores.numpy(), arrays[f"assign_label_scores_{i}"],
                      _tol(case, "assign_label_scores_abs"), f"label scores, image {i}")
        for name in ("bbox_targets", "dist_targets"):
            _assert_close(getattr(a, name).numpy(), arrays[f"assign_{name}_{i}"],
                          _tol(case, "assign_bbox_and_dist_targets_abs"), f"{name}, image {i}")
        # positives whose point lies outside the GT they were given (no penalty in the cost)
        pos = a.gt_inds.numpy() > 0
        boxes = arrays[f"gt_bboxes_{i}"].reshape(-1, 4)[a.gt_inds.numpy()[pos] - 1]
        xy = priors[pos, :2]
        inside = np.concatenate([xy - boxes[:, :2], boxes[:, 2:] - xy], axis=1).min(axis=1) > 0
        assert int((~inside).sum()) == meta["positives_outside_their_gt"][i]


def test_losses(case):
    arrays, rel = case["arrays"], _tol(case, "losses_rel")
    names = {"loss": "loss_total", **{k: k for k in LOSSES}}
    for ours, theirs in names.items():
        expected = float(arrays[theirs])
        assert case["losses"][ours] == pytest.approx(expected, rel=rel, abs=1e-12), ours


def test_gradient_norms(case):
    arrays, advice = case["arrays"], _tol(case, "gradnorm_rel")
    for part in PARTS:
        expected = float(arrays[f"gradnorm_{part}"])
        assert case["gradnorm"][part] == pytest.approx(expected, rel=advice[part], abs=1e-12), part


# ------------------------------------------------------------------------------------------------
# Upstream behaviours on hand-made inputs


def _assigner(num_classes=2, topk=13):
    return DynamicSoftLabelAssigner(num_classes=num_classes, reg_max=7, topk=topk, iou_factor=3.0)


def test_assigner_gives_a_point_to_a_gt_that_does_not_contain_it():
    """Candidates need only lie inside SOME GT; the cost has no in-box penalty, and the violated
    side's distance target clamps to 0."""
    gt = torch.tensor([[0.0, 0.0, 20.0, 20.0], [30.0, 0.0, 60.0, 20.0]])
    labels = torch.tensor([0, 1])
    priors = make_center_priors((32, 64), (8,))  # 4 x 8 points at stride 8
    decoded = torch.tensor([[1000.0, 1000.0, 1001.0, 1001.0]]).repeat(len(priors), 1)  # far away: IoU 0
    p = int(((priors[:, 0] == 16) & (priors[:, 1] == 8)).nonzero())  # inside GT 0 only
    q = int(((priors[:, 0] == 8) & (priors[:, 1] == 8)).nonzero())
    decoded[p] = gt[1]  # p predicts GT 1 exactly
    decoded[q] = torch.tensor([0.0, 0.0, 20.0, 10.0])  # IoU 0.5 with GT 0
    a = _assigner()(torch.zeros(len(priors), 2), priors, decoded, gt, labels)
    assert a.gt_inds[p] == 2 and a.labels[p] == 1
    assert a.label_scores[p] == pytest.approx(1.0)
    assert a.gt_inds[q] == 1 and a.label_scores[q] == pytest.approx(0.5)
    assert a.num_pos == 2
    # (x - x1, y - y1, x2 - x, y2 - y) / 8 for p=(16, 8) and GT 1: (-14, 8, 44, 12) / 8, clamped to [0, 6.9]
    np.testing.assert_allclose(a.dist_targets[p].numpy(), [0.0, 1.0, 5.5, 1.5])
    np.testing.assert_array_equal(a.bbox_targets[p].numpy(), gt[1].numpy())


def test_assigner_candidates_are_strictly_inside():
    gt = torch.tensor([[8.0, 8.0, 24.0, 24.0]])
    priors = make_center_priors((32, 32), (8,))
    decoded = torch.cat([priors[:, :2] - 4, priors[:, :2] + 4], dim=1)
    gt_inds, _ = _assigner().match(torch.zeros(len(priors), 2), priors, decoded, gt, torch.tensor([0]))
    # only (16, 16) is strictly inside; (8, 8) etc. lie on the border
    assert gt_inds.nonzero().flatten().tolist() == [int(((priors[:, 0] == 16) & (priors[:, 1] == 16)).nonzero())]
    empty, _ = _assigner().match(torch.zeros(len(priors), 2), priors, decoded, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert not empty.any()


def test_dynamic_k_and_conflicts_use_the_whole_cost_row():
    assigner = _assigner()
    # dynamic k = int(sum of the top-13 IoUs over all candidates): 20 candidates at IoU 0.3 -> int(3.9) = 3
    ious = torch.full((20, 1), 0.3)
    cost = torch.arange(20.0)[:, None]
    assert assigner._dynamic_k_matching(cost, ious)[:, 0].nonzero().flatten().tolist() == [0, 1, 2]
    # v0 is taken by GT0 and GT1; its cheapest GT is GT2, which did not take it: GT2 gets it.
    cost = torch.tensor([[1.0, 2.0, 0.8], [5.0, 6.0, 0.1], [5.0, 6.0, 5.0]])
    matched = assigner._dynamic_k_matching(cost, torch.full((3, 3), 0.2))
    assert matched.tolist() == [[False, False, True], [False, False, True], [False, False, False]]


def test_class_cost_equals_the_literal_formula():
    """Our O(V*(C+G)) class cost against upstream's literal (V, G, C) computation."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 7, generator=g) * 3
    ious = torch.rand(50, 4, generator=g)
    labels = torch.tensor([0, 3, 3, 6])
    scores = logits[:, None, :].repeat(1, 4, 1)
    soft = F.one_hot(labels, 7).float()[None] * ious[..., None]
    literal = (F.binary_cross_entropy_with_logits(scores, soft, reduction="none")
               * (soft - scores.sigmoid()).abs().pow(2)).sum(-1)
    torch.testing.assert_close(_assigner(7)._cls_cost(logits, ious, labels), literal, rtol=1e-6, atol=1e-6)


def test_losses_by_hand():
    logits = torch.tensor([[0.5, -1.0, 2.0], [0.0, 1.0, -2.0]])
    labels, scores = torch.tensor([1, 3]), torch.tensor([0.6, 0.0])
    sig = 1 / (1 + np.exp(-logits.numpy().astype(np.float64)))
    bce = lambda x, t: np.log1p(np.exp(-abs(x))) + max(x, 0) - x * t  # noqa: E731
    want = [sum(bce(x, 0) * s ** 2 for x, s in zip(row, srow)) for row, srow in zip(logits.numpy(), sig)]
    want[0] += -bce(-1.0, 0) * sig[0, 1] ** 2 + bce(-1.0, 0.6) * abs(0.6 - sig[0, 1]) ** 2
    np.testing.assert_allclose(quality_focal_loss(logits, labels, scores).numpy(), want, rtol=1e-6)

    bins = torch.tensor([[0.1, 0.2, 0.3, -0.5, 1.0, 0.0, 0.0, 0.2]])
    logp = torch.log_softmax(bins, dim=1)[0]
    want = -(0.7 * logp[2] + 0.3 * logp[3])  # target 2.3: bins 2 and 3, weights 0.7 / 0.3
    assert float(distribution_focal_loss(bins, torch.tensor([2.3]))) == pytest.approx(float(want), rel=1e-6)

    # [0,0,2,2] vs [1,1,3,3]: IoU 1/7, hull 9, union 7 -> GIoU = 1/7 - 2/9
    loss = giou_loss(torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[1.0, 1.0, 3.0, 3.0]]))
    assert float(loss) == pytest.approx(1 - (1 / 7 - 2 / 9), rel=1e-6)
