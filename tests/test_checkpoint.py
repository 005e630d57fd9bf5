"""Checkpoints: our format (atomic, weights_only), EMA preference, pickle refusal, and upstream
weights by upstream's prefix rule."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from conftest import UPSTREAM_CASE, require
from nanoplus.errors import NanoplusError
from nanoplus.train import checkpoint as ckpt_lib
from nanoplus.train.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_for_inference,
    load_upstream_weights,
    save_checkpoint,
    upstream_prefix_rule,
)
from nanoplus.train.config import load_config
from nanoplus.train.model import build_model


class NotPlainData:
    """Something only full unpickling can rebuild (pickled by reference to this test module)."""


@pytest.fixture(scope="module")
def cfg():
    return load_config("nanodet-plus-m_320", ["model.num_classes=3", "class_names=[cat,dog,bird]"])


@pytest.fixture(scope="module")
def two_models(cfg):
    torch.manual_seed(0)
    a = build_model(cfg.model)
    torch.manual_seed(1)
    b = build_model(cfg.model)
    with torch.no_grad():  # make the deploy outputs clearly differ (fresh heads start near-identical)
        for p in b.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return a, b


def test_round_trip_is_plain_data(tmp_path, cfg, two_models):
    model, ema = two_models
    path = save_checkpoint(tmp_path / "run" / "last.ckpt", config=cfg.to_dict(), class_names=cfg.class_names,
                           model=model.state_dict(), ema=ema.state_dict(), epoch=7, global_step=123, best_map=0.25,
                           optimizer={"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 1e-3}]})
    raw = torch.load(path, map_location="cpu", weights_only=True)  # readable without unpickling code
    assert raw["format"] == "nanoplus-checkpoint" and raw["format_version"] == 1
    data = load_checkpoint(path)
    assert (data["epoch"], data["global_step"], data["best_map"]) == (7, 123, 0.25)
    assert data["class_names"] == ["cat", "dog", "bird"] and data["config"] == cfg.to_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(data["model"][name], value), name
    assert data["optimizer"]["param_groups"][0]["lr"] == 1e-3
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temp files left


def test_failed_save_leaves_the_old_file(tmp_path, cfg, two_models, monkeypatch):
    model, _ = two_models
    path = save_checkpoint(tmp_path / "a.ckpt", config=cfg.to_dict(), model=model.state_dict(), epoch=1)
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=r"'rng'.*numpy"):
        save_checkpoint(path, model=model.state_dict(), rng=np.zeros(3))

    def crash(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_lib.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model=model.state_dict(), epoch=2)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt"]


def test_inference_model_prefers_ema(tmp_path, cfg, two_models):
    model, ema = two_models
    images = torch.randn(1, 3, 320, 320)

    def deploy_output(trained):
        m = build_model(cfg.model, deploy=True)
        m.load_state_dict(trained.deploy_state_dict())
        with torch.no_grad():
            return m.eval()(images)

    path = save_checkpoint(tmp_path / "best.ckpt", config=cfg.to_dict(), class_names=cfg.class_names,
                           model=model.state_dict(), ema=ema.state_dict())
    loaded, loaded_cfg, names = load_model_for_inference(path)
    assert not loaded.training and not loaded.has_aux and names == ["cat", "dog", "bird"]
    assert loaded_cfg.model.num_classes == 3
    with torch.no_grad():
        out = loaded(images)
    torch.testing.assert_close(out, deploy_output(ema), rtol=0, atol=0)
    assert not torch.allclose(out, deploy_output(model), atol=1e-3)

    # no EMA, deploy-only weights (e.g. imported from NCNN): the model weights are used
    path = save_checkpoint(tmp_path / "imported.ckpt", config=cfg.to_dict(), model=model.deploy_state_dict())
    loaded, _, names = load_model_for_inference(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), deploy_output(model), rtol=0, atol=0)
    assert names == ["cat", "dog", "bird"]  # from the config's class_names


def test_pickles_are_refused_without_opt_in(tmp_path, cfg, two_models):
    model, _ = two_models
    path = tmp_path / "legacy.ckpt"
    torch.save({"format": "nanoplus-checkpoint", "format_version": 1, "config": cfg.to_dict(),
                "model": model.state_dict(), "extra": NotPlainData()}, path)
    with pytest.raises(CheckpointError, match=r"legacy\.ckpt.*NotPlainData.*allow_pickle=True") as err:
        load_checkpoint(path)
    assert isinstance(err.value, NanoplusError)
    with pytest.warns(UserWarning, match="unpickling"):
        data = load_checkpoint(path, allow_pickle=True)
    assert isinstance(data["extra"], NotPlainData)
    with pytest.raises(CheckpointError, match="allow_pickle"):
        load_upstream_weights(path)


def test_other_files_are_refused_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "missing.ckpt")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a torch file at all" * 10)
    with pytest.raises(CheckpointError, match="not a readable torch file"):
        load_checkpoint(garbage)
    upstream_like = tmp_path / "upstream.ckpt"
    torch.save({"epoch": 1, "state_dict": {"model.a": torch.zeros(1)}}, upstream_like)
    with pytest.raises(CheckpointError, match="nanoplus import"):
        load_checkpoint(upstream_like)
    newer = tmp_path / "newer.ckpt"
    torch.save({"format": "nanoplus-checkpoint", "format_version": 99, "model": {}}, newer)
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(newer)


def test_upstream_prefix_rule():
    a, b, c = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
    # the EMA copy wins whatever the order
    assert upstream_prefix_rule({"model.x": a, "avg_model.x": b}) == {"x": b}
    assert upstream_prefix_rule({"avg_model.x": b, "model.x": a}) == {"x": b}
    # module. then model., each judged by the first key only
    assert list(upstream_prefix_rule({"module.model.x": a, "module.model.y": b})) == ["x", "y"]
    assert list(upstream_prefix_rule({"x": a, "model.y": b})) == ["x", "model.y"]
    assert list(upstream_prefix_rule({"model.x": a, "y": c})) == ["x", ""]


def test_upstream_checkpoint_and_state_dict(tmp_path, caplog):
    require(UPSTREAM_CASE / "upstream_ckpt.ckpt")
    raw = torch.load(UPSTREAM_CASE / "upstream_ckpt.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    state = load_upstream_weights(UPSTREAM_CASE / "upstream_ckpt.ckpt")
    assert list(state) == [k[len("model."):] for k in raw if k.startswith("model.")]
    for name, value in state.items():
        assert torch.equal(value, raw[f"avg_model.{name}"])
    plain = load_upstream_weights(UPSTREAM_CASE / "state_dict.pt")
    for name, value in plain.items():
        assert torch.equal(value, raw[f"model.{name}"])

    # non-strict load into a model with another class count: mismatched tensors are skipped and logged
    cfg = load_config("nanodet-plus-m_416", ["model.num_classes=3"])
    model = build_model(cfg.model, deploy=True)
    fresh_cls = model.head.gfl_cls[0].weight.detach().clone()
    with caplog.at_level(logging.INFO, logger="nanoplus.train.weights"):
        load_upstream_weights(UPSTREAM_CASE / "upstream_ckpt.ckpt", model=model)
    assert torch.equal(model.head.gfl_cls[0].weight, fresh_cls)
    assert torch.equal(model.fpn.reduce_layers[0].conv.weight, state["fpn.reduce_layers.0.conv.weight"])
    log = caplog.text
    assert "skip head.gfl_cls.0.weight" in log and "drop aux_head.gfl_cls.weight" in log
