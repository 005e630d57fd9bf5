"""The built-in model configs: upstream key layouts, SPEC §4 parameter counts, output shapes, the
aux branch's detach behaviour, training edge cases and local backbone weights."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from conftest import SHARED
from nanoplus.errors import NanoplusError
from nanoplus.train.box_ops import make_center_priors
from nanoplus.train.config import builtin_config_names, load_config
from nanoplus.train.mobilenetv2 import MobileNetV2
from nanoplus.train.model import build_model
from nanoplus.train.shufflenetv2 import ShuffleNetV2

KEYS_DIR = SHARED / "reference" / "upstream" / "keys"
# SPEC §4: deploy-part parameters (millions), without BatchNorm and with it.
SPEC_PARAMS = {
    "nanodet-plus-m_320": (1.17, 1.198),
    "nanodet-plus-m_416": (1.17, 1.198),
    "nanodet-plus-m-1.5x_320": (2.44, 2.478),
    "nanodet-plus-m-1.5x_416": (2.44, 2.478),
}


def _keys_file(name):
    path = KEYS_DIR / f"keys_{name}.json"
    if not path.is_file():
        pytest.skip(f"{path} is absent (upstream key lists live in ../shared/reference/upstream/keys)")
    return json.loads(path.read_text())


def test_builtin_configs_are_the_five_variants():
    assert set(builtin_config_names()) >= {"nanodet-plus-m_320", "nanodet-plus-m_416", "nanodet-plus-m-1.5x_320",
                                           "nanodet-plus-m-1.5x_416", "nanodet-plus-mbv2_416"}


@pytest.mark.parametrize("name", ["nanodet-plus-m_320", "nanodet-plus-m_416", "nanodet-plus-m-1.5x_320",
                                  "nanodet-plus-m-1.5x_416", "nanodet-plus-mbv2_416"])
def test_deploy_keys_match_upstream(name):
    """Names, shapes and order of the deploy part equal upstream's (class count read from the file)."""
    keys = _keys_file(name)
    shapes = dict((k, s) for k, s in keys)
    reg_max = shapes["head.distribution_project.project"][0] - 1
    num_classes = shapes["head.gfl_cls.0.bias"][0] - 4 * (reg_max + 1)
    cfg = load_config(name, [f"model.num_classes={num_classes}"])
    model = build_model(cfg.model, deploy=True)
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == [(k, list(s)) for k, s in keys]
    full = build_model(cfg.model)
    assert list(full.deploy_state_dict()) == [k for k, _ in keys]
    assert any(k.startswith("aux_head.") for k in full.state_dict())


@pytest.mark.parametrize("name", sorted(SPEC_PARAMS))
def test_parameter_counts_match_spec(name):
    model = build_model(load_config(name).model, deploy=True)
    total = sum(p.numel() for p in model.parameters())
    bn = sum(p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    without_bn, with_bn = SPEC_PARAMS[name]
    assert round((total - bn) / 1e6, 2) == without_bn
    assert round(total / 1e6, 3) == with_bn


@pytest.mark.parametrize("num_classes", [80, 3])
def test_mobilenetv2_variant_shapes(num_classes):
    cfg = load_config("nanodet-plus-mbv2_416", [f"model.num_classes={num_classes}"])
    model = build_model(cfg.model, deploy=True).eval()
    images = torch.randn(2, 3, 416, 416)
    with torch.no_grad():
        feats = model.backbone(images)
        out = model(images)
    assert [tuple(f.shape) for f in feats] == [(2, 32, 52, 52), (2, 96, 26, 26), (2, 1280, 13, 13)]
    assert tuple(out.shape) == (2, 3598, num_classes + 32)


def test_non_square_input_is_not_transposed():
    cfg = load_config("nanodet-plus-m_320", ["model.num_classes=4", "data.input_hw=[256,384]"])
    model = build_model(cfg.model, deploy=True).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 256, 384))
    expected = sum(math.ceil(256 / s) * math.ceil(384 / s) for s in (8, 16, 32, 64))
    assert tuple(out.shape) == (1, expected, 4 + 32)
    priors = make_center_priors((256, 384), (8, 16, 32, 64))
    assert len(priors) == expected
    assert priors[47].tolist() == [47 * 8, 0, 8, 8] and priors[48].tolist() == [0, 8, 8, 8]  # 48 columns per row


def test_sigmoid_scores_flag_only_touches_class_channels():
    cfg = load_config("nanodet-plus-m_320", ["model.num_classes=5"])
    model = build_model(cfg.model, deploy=True).eval()
    images = torch.randn(1, 3, 320, 320)
    with torch.no_grad():
        raw = model(images)
        model.head.sigmoid_scores = True
        exported = model(images)
    torch.testing.assert_close(exported[..., :5], raw[..., :5].sigmoid())
    assert torch.equal(exported[..., 5:], raw[..., 5:])


def test_initialisation_follows_upstream():
    model = build_model(load_config("nanodet-plus-m_320", ["model.num_classes=7"]).model)
    for conv in model.head.gfl_cls:
        assert torch.all(conv.bias == -4.595)  # prior 0.01 on every output channel, bins included
    assert torch.all(model.aux_head.gfl_cls.bias == -4.595) and torch.all(model.aux_head.gfl_reg.bias == 0)
    assert torch.equal(model.head.distribution_project.project, torch.arange(8.0))
    for name, value in model.fpn.state_dict().items():  # aux_fpn starts as a copy of fpn
        assert torch.equal(value, model.aux_fpn.state_dict()[name]), name
    assert isinstance(model.backbone.conv1[2], nn.LeakyReLU) and model.backbone.conv1[2].negative_slope == 0.1


# ------------------------------------------------------------------------------------------------
# Training behaviour (small inputs keep these fast)


def _small_model(detach_epoch=10):
    cfg = load_config("nanodet-plus-m_320", ["model.num_classes=3", f"model.detach_epoch={detach_epoch}"])
    torch.manual_seed(0)
    return build_model(cfg.model)


def _batch():
    torch.manual_seed(1)
    images = torch.randn(2, 3, 128, 128)
    boxes = [torch.tensor([[10.0, 12.0, 70.0, 90.0], [60.0, 20.0, 120.0, 60.0]]), torch.zeros(0, 4)]
    labels = [torch.tensor([0, 2]), torch.zeros(0, dtype=torch.long)]
    return images, boxes, labels


def _aux_backbone_grads(model, epoch):
    images, boxes, labels = _batch()
    model.zero_grad(set_to_none=True)
    out = model.forward_train(images, boxes, labels, epoch)
    (out["loss_aux_qfl"] + out["loss_aux_bbox"] + out["loss_aux_dfl"]).backward()
    grads = [p.grad for n, p in model.named_parameters() if n.startswith(("backbone.", "fpn."))]
    aux_grad = sum(float(p.grad.abs().sum()) for n, p in model.named_parameters()
                   if n.startswith("aux_fpn.") and p.grad is not None)
    return out, grads, aux_grad


def test_detach_epoch_stops_aux_gradients_into_backbone_and_fpn():
    model = _small_model(detach_epoch=3)
    before, grads, aux_grad = _aux_backbone_grads(model, epoch=2)
    assert any(g is not None and float(g.abs().sum()) > 0 for g in grads), "attached: aux losses reach the backbone"
    assert aux_grad > 0
    after, grads, aux_grad = _aux_backbone_grads(model, epoch=3)
    assert all(g is None for g in grads), "detached: no gradient from the aux branch into backbone / fpn"
    assert aux_grad > 0, "the aux branch itself still learns"
    for key in ("loss", "loss_qfl", "loss_aux_qfl", "loss_aux_bbox"):  # values do not change, only gradients
        assert before[key].item() == pytest.approx(after[key].item(), rel=1e-4)


def test_training_step_with_an_image_without_boxes():
    model = _small_model()
    images, boxes, labels = _batch()
    out = model.forward_train(images, boxes, labels, 0, return_details=True)
    assert set(out) >= {"loss", "loss_qfl", "loss_bbox", "loss_dfl", "loss_aux_qfl", "loss_aux_bbox", "loss_aux_dfl",
                        "num_pos"}
    assert torch.isfinite(out["loss"]) and int(out["num_pos"]) > 0
    empty = out["assignments"][1]
    assert empty.num_pos == 0 and torch.all(empty.labels == 3) and torch.all(empty.label_scores == 0)
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_training_step_without_any_box_gives_zero_box_losses():
    model = _small_model()
    images, _, _ = _batch()
    out = model.forward_train(images, [torch.zeros(0, 4)] * 2, [torch.zeros(0, dtype=torch.long)] * 2, 0)
    assert out["loss_bbox"].item() == 0 and out["loss_dfl"].item() == 0 and out["loss_aux_bbox"].item() == 0
    assert out["loss_qfl"].item() > 0 and int(out["num_pos"]) == 0
    out["loss"].backward()


def test_labels_can_be_assigned_from_the_main_head():
    model = _small_model()
    images, boxes, labels = _batch()
    model.assign_from = "main"
    main = model.forward_train(images, boxes, labels, 0, return_details=True)
    model.assign_from = "aux"
    aux = model.forward_train(images, boxes, labels, 0, return_details=True)
    assert torch.isfinite(main["loss"]) and torch.isfinite(aux["loss"])
    assert main["assignments"][0].num_pos > 0


def test_bad_targets_are_refused():
    model = _small_model()
    images, boxes, _ = _batch()
    with pytest.raises(ValueError, match="outside"):
        model.forward_train(images, boxes, [torch.tensor([0, 3]), torch.zeros(0, dtype=torch.long)], 0)


# ------------------------------------------------------------------------------------------------
# Config errors and backbone variants


def test_shufflenet_half_width_builds():
    cfg = load_config("nanodet-plus-m_320", ["model.backbone.model_size=0.5x", "model.fpn.in_channels=[48,96,192]"])
    model = build_model(cfg.model, deploy=True).eval()
    with torch.no_grad():
        assert tuple(model(torch.randn(1, 3, 320, 320)).shape) == (1, 2125, 80 + 32)


def test_config_mismatches_name_the_field():
    cfg = load_config("nanodet-plus-m_320", ["model.backbone.model_size=1.5x"])
    with pytest.raises(NanoplusError, match=r"model\.fpn\.in_channels.*\[176, 352, 704\]"):
        build_model(cfg.model)
    cfg = load_config("nanodet-plus-m_320", ["model.head.activation=Swoosh"])
    with pytest.raises(NanoplusError, match=r"model\.head\.activation.*Swoosh"):
        build_model(cfg.model)


def test_pretrained_shufflenet_weights_from_a_local_torchvision_style_file(tmp_path):
    torch.manual_seed(3)
    donor = ShuffleNetV2("1.0x", (2, 3, 4), "LeakyReLU")
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in donor.state_dict().items()}
    state["conv5.0.weight"] = torch.randn(1024, 464, 1, 1)  # torchvision extras, unused here
    state["fc.weight"] = torch.randn(1000, 1024)
    path = tmp_path / "shufflenetv2_x1.pth"
    torch.save(state, path)
    cfg = load_config("nanodet-plus-m_320", [f"model.backbone.pretrained_weights={path}"])
    model = build_model(cfg.model)
    for name, value in model.backbone.state_dict().items():
        assert torch.equal(value, state[name]), name
    # a deploy / inference build does not read the file
    build_model(load_config("nanodet-plus-m_320", ["model.backbone.pretrained_weights=/nonexistent.pth"]).model,
                deploy=True)
    with pytest.raises(NanoplusError, match="pretrained_weights.*does not exist"):
        build_model(load_config("nanodet-plus-m_320", ["model.backbone.pretrained_weights=/nonexistent.pth"]).model)


def test_pretrained_mobilenetv2_weights_in_torchvision_layout(tmp_path):
    torch.manual_seed(4)
    ours = MobileNetV2("1.0x", (2, 4, 6), "LeakyReLU")
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in ours.state_dict().items()}
    # torchvision numbers the layers features.0 .. features.18
    inverse = {}
    index = 1
    for stage, repeats in enumerate((1, 2, 3, 4, 3, 3, 1)):
        for block in range(repeats):
            inverse[f"stage{stage}.{block}."] = f"features.{index}."
            index += 1
    inverse["first_layer."] = "features.0."
    inverse["stage6.1."] = "features.18."

    def tv_name(name):
        for ours_prefix, tv_prefix in inverse.items():
            if name.startswith(ours_prefix):
                return tv_prefix + name[len(ours_prefix):]
        raise AssertionError(name)

    path = tmp_path / "mobilenet_v2.pth"
    torch.save({tv_name(k): v for k, v in state.items()} | {"classifier.1.weight": torch.randn(1000, 1280)}, path)
    loaded = MobileNetV2("1.0x", (2, 4, 6), "LeakyReLU", pretrained_weights=str(path))
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, state[name]), name
