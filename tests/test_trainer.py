"""The trainer: schedule, EMA, freezing, a real short training run, exact resume after an
interruption, deploy-only weights, and (slow) learning the synthetic set and fine-tuning the
published weights."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import pytest

from conftest import COCO128, NCNN_FP16_DIR, TINY_COCO, TINY_MODEL, require

torch = pytest.importorskip("torch")

from nanoplus.train.config import load_config  # noqa: E402
from nanoplus.train.ema import ModelEMA  # noqa: E402
from nanoplus.train.schedule import WarmupCosineSchedule, learning_rate  # noqa: E402

TINY = TINY_MODEL + [
    "train.batch_size=4",
    "train.workers=0",
    "train.lr=0.002",
    "train.warmup_steps=3",
    "train.val_interval=1",
    "train.ema_decay=0.99",
]


# ------------------------------------------------------------------------------------------------
# Schedule and EMA (hand-computed)


def test_learning_rate_warmup_then_cosine_per_epoch():
    lr, ratio, min_lr, epochs, warm = 1e-3, 1e-4, 5e-5, 300, 500
    assert learning_rate(0, 0, lr, epochs, warm, ratio, min_lr) == pytest.approx(1e-7)
    assert learning_rate(0, 250, lr, epochs, warm, ratio, min_lr) == pytest.approx(1e-3 * (1 - 0.5 * (1 - 1e-4)))
    assert learning_rate(3, 500, lr, epochs, warm, ratio, min_lr) == pytest.approx(1e-3)
    # after warmup: cosine of the epoch only, whatever the step
    mid = min_lr + (lr - min_lr) * (1 + math.cos(math.pi * 150 / 300)) / 2
    assert learning_rate(150, 9000, lr, epochs, warm, ratio, min_lr) == pytest.approx(mid)
    assert learning_rate(150, 9001, lr, epochs, warm, ratio, min_lr) == pytest.approx(mid)
    assert learning_rate(300, 10**6, lr, epochs, warm, ratio, min_lr) == pytest.approx(min_lr)


def test_schedule_sets_every_group_with_its_scale():
    p1, p2 = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [p1]}, {"params": [p2], "lr_scale": 0.1}], lr=1.0)
    sched = WarmupCosineSchedule(opt, lr=0.01, epochs=10, warmup_steps=0, warmup_ratio=0.1, min_lr=0.0)
    sched.step(epoch=5, step=123)
    expected = 0.01 * (1 + math.cos(math.pi * 0.5)) / 2
    assert opt.param_groups[0]["lr"] == pytest.approx(expected)
    assert opt.param_groups[1]["lr"] == pytest.approx(expected * 0.1)


def test_ema_ramp_and_integer_buffers():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.9998, ramp=2000)
    start = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.train()(torch.randn(4, 3))  # BN running stats and num_batches_tracked change
    step = 5000
    ema.update(model, step)
    w = 0.9998 * math.exp(-(1 + step) / 2000) + (1 - 0.9998)
    for name, value in model.state_dict().items():
        got = ema.state_dict()[name]
        if value.is_floating_point():
            torch.testing.assert_close(got, start[name] * (1 - w) + value * w)
        else:
            assert torch.equal(got, value)  # num_batches_tracked copied
    # early steps follow the model almost completely
    assert ema.weight_of_new(0) > 0.99 and ema.weight_of_new(10**7) == pytest.approx(2e-4)


# ------------------------------------------------------------------------------------------------
# Real training runs on a tiny model and a tiny generated dataset (1 thread: fast and repeatable)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from nanoplus.train.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("syn") / "data", num_train=16, num_val=8, image_hw=(64, 80))


@pytest.fixture()
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_trainer(data, out, overrides=(), **kwargs):
    from nanoplus.runtime.datasets import load_dataset
    from nanoplus.train.trainer import Trainer

    cfg = load_config("nanodet-plus-m_416", TINY + list(overrides))
    train = load_dataset(data, "train", log=False)
    val = load_dataset(data, "val", log=False)
    cfg.class_names = list(train.class_names)
    return Trainer(cfg, train.records, val, out, device="cpu", progress=False, log=lambda _m: None, **kwargs)


def test_trainer_switches_winograd_as_the_config_says(tiny_data, tmp_path):
    from nanoplus.train.winograd import WinogradConv2d

    for value in (True, False):
        trainer = make_trainer(tiny_data, tmp_path / str(value), [f"train.winograd={str(value).lower()}"])
        trainer._setup()  # what fit() does first: builds the model
        model = trainer.model
        convs = [m for m in model.modules() if isinstance(m, WinogradConv2d)]
        assert convs and all(m.winograd is value for m in convs)


def read_steps(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_short_run_writes_everything(tiny_data, tmp_path, one_thread):
    from nanoplus.train.checkpoint import load_checkpoint, load_model_for_inference

    out = tmp_path / "run"
    row = make_trainer(tiny_data, out, ["train.epochs=2"]).fit()
    for name in ("last.ckpt", "best.ckpt", "config.yaml", "results.csv", "results.json", "steps.csv", "curves.png"):
        assert (out / name).is_file(), name
    ckpt = load_checkpoint(out / "last.ckpt")  # weights_only: plain data only
    assert ckpt["epoch"] == 2 and ckpt["global_step"] == 8  # 16 images / batch 4 = 4 steps per epoch
    assert ckpt["class_names"] == ["circle", "square", "triangle"]
    assert ckpt["ema"] is not None and ckpt["optimizer"] is not None
    # the EMA really averages: after 8 steps it differs from the model
    diffs = [float((ckpt["ema"][k] - v).abs().max()) for k, v in ckpt["model"].items() if v.is_floating_point()]
    assert max(diffs) > 0
    steps = read_steps(out / "steps.csv")
    assert [int(s["step"]) for s in steps] == list(range(8))
    # warmup over 3 steps from lr * 1e-4, then cosine per epoch (epoch 1 of 2: halfway down to min_lr)
    lrs = [float(s["lr"]) for s in steps]
    assert lrs[0] == pytest.approx(0.002 * 1e-4) and lrs[3] == pytest.approx(0.002)
    assert lrs[4] == pytest.approx(5e-5 + (0.002 - 5e-5) / 2)
    results = json.loads((out / "results.json").read_text())
    assert [e["epoch"] for e in results["epochs"]] == [1, 2]
    assert all(0.0 <= e["mAP"] <= 1.0 for e in results["epochs"])
    assert set(results["epochs"][-1]["per_class"]) == {"circle", "square", "triangle"}
    assert row["epoch"] == 2 and all(math.isfinite(row[k]) for k in ("loss", "loss_qfl", "loss_aux_qfl"))
    # the checkpoint serves inference (EMA weights, deploy model)
    model, cfg, names = load_model_for_inference(out / "best.ckpt")
    assert not hasattr(model, "aux_fpn") and names == ["circle", "square", "triangle"]


@pytest.mark.parametrize("schedule", [[], ["train.schedule=upstream", "train.warmup_steps=6"]],
                         ids=["cosine", "upstream"])
def test_interrupted_run_resumes_exactly(tiny_data, tmp_path, monkeypatch, one_thread, schedule):
    """Stopped mid-epoch 2, resumed: the same steps, rates, losses and final weights as a run
    that was never interrupted (upstream's schedule: warm-up into epoch 2, rate kept in the optimiser)."""
    from nanoplus.train.checkpoint import load_checkpoint
    from nanoplus.train.trainer import STOP_AFTER_STEPS_ENV

    overrides = ["train.epochs=3"] + schedule
    full = tmp_path / "full"
    make_trainer(tiny_data, full, overrides).fit()

    cut = tmp_path / "cut"
    monkeypatch.setenv(STOP_AFTER_STEPS_ENV, "6")  # epoch 2 is steps 4..7
    with pytest.raises(KeyboardInterrupt):
        make_trainer(tiny_data, cut, overrides).fit()
    monkeypatch.delenv(STOP_AFTER_STEPS_ENV)
    ckpt = load_checkpoint(cut / "last.ckpt")
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 4  # the last completed epoch
    make_trainer(tiny_data, cut, overrides, resume=str(cut / "last.ckpt")).fit()

    a, b = read_steps(full / "steps.csv"), read_steps(cut / "steps.csv")
    assert [(r["step"], r["epoch"], r["lr"]) for r in a] == [(r["step"], r["epoch"], r["lr"]) for r in b]
    if schedule:  # lr 0.002, min 5e-5, 3 epochs: warm-up to step 6, then lr; epoch 3 at (1 + cos(2pi/3)) / (1 + cos(pi/3))
        lrs = [float(r["lr"]) for r in a]
        assert lrs[6:8] == pytest.approx([0.002, 0.002])
        assert lrs[8:] == pytest.approx([5e-5 + (0.002 - 5e-5) * 0.5 / 1.5] * 4)
    for ra, rb in zip(a, b):
        assert float(ra["loss"]) == pytest.approx(float(rb["loss"]), rel=1e-5, abs=1e-6)
    ca, cb = load_checkpoint(full / "last.ckpt"), load_checkpoint(cut / "last.ckpt")
    assert (ca["epoch"], ca["global_step"]) == (cb["epoch"], cb["global_step"]) == (3, 12)
    for key in ("model", "ema"):
        for name, value in ca[key].items():
            torch.testing.assert_close(cb[key][name], value, rtol=1e-5, atol=1e-6, msg=f"{key}.{name}")
    ra = json.loads((full / "results.json").read_text())["epochs"]
    rb = json.loads((cut / "results.json").read_text())["epochs"]
    assert [e["epoch"] for e in rb] == [1, 2, 3]
    assert [e["mAP"] for e in ra] == pytest.approx([e["mAP"] for e in rb], abs=1e-6)


def test_freeze_keeps_parameters_and_batchnorm_statistics(tiny_data, tmp_path, one_thread):
    from nanoplus.train.checkpoint import load_checkpoint
    from nanoplus.train.trainer import TrainError

    overrides = ["train.epochs=1", "train.freeze=[backbone]"]
    trainer = make_trainer(tiny_data, tmp_path / "frozen", overrides)
    trainer._setup()  # seeded: the same initial weights as the run below
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    make_trainer(tiny_data, tmp_path / "frozen", overrides).fit()
    after = load_checkpoint(tmp_path / "frozen" / "last.ckpt")["model"]
    for name, value in before.items():
        if name.startswith("backbone."):
            assert torch.equal(after[name], value), name  # weights and BN running stats untouched
    changed = [n for n in before if n.startswith(("fpn.", "head.")) and not torch.equal(after[n], before[n])]
    assert len(changed) > 10  # the rest trains
    with pytest.raises(TrainError, match="backbon"):
        make_trainer(tiny_data, tmp_path / "typo", ["train.freeze=[backbon]"])._setup()


def test_freeze_bn_keeps_statistics_and_trains_the_rest(tiny_data, tmp_path, one_thread):
    from nanoplus.train.checkpoint import load_checkpoint

    trainer = make_trainer(tiny_data, tmp_path / "fbn", ["train.epochs=1"], freeze_bn=True)
    trainer._setup()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    make_trainer(tiny_data, tmp_path / "fbn", ["train.epochs=1"], freeze_bn=True).fit()
    after = load_checkpoint(tmp_path / "fbn" / "last.ckpt")["model"]
    stats = [k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert stats and all(torch.equal(after[k], before[k]) for k in stats)
    affine = [k for k in before if k.endswith("norm.weight") or k.endswith(".1.weight") and before[k].ndim == 1]
    assert any(not torch.equal(after[k], before[k]) for k in affine)  # BN scale/shift still learn


@pytest.mark.parametrize("aux_init", ["main-assign", "copy"])
def test_deploy_only_weights_start_the_aux_branch(tiny_data, tmp_path, aux_init, one_thread):
    from nanoplus.train.checkpoint import load_checkpoint, save_checkpoint
    from nanoplus.train.model import build_model

    cfg = load_config("nanodet-plus-m_416", TINY)
    torch.manual_seed(123)
    donor = build_model(cfg.model)
    deploy_ckpt = save_checkpoint(tmp_path / "deploy.ckpt", model=donor.deploy_state_dict(), config=cfg.to_dict())

    # calibrate_images=0: the donor's fresh BatchNorm statistics (0 / 1) would otherwise be re-estimated
    trainer = make_trainer(tiny_data, tmp_path / aux_init, ["train.epochs=1"], weights=str(deploy_ckpt),
                           aux_init=aux_init, calibrate_images=0)
    trainer._setup()
    model = trainer.model
    for name, value in donor.deploy_state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    for name, value in model.fpn.state_dict().items():  # aux_fpn is a copy of the imported fpn
        assert torch.equal(model.aux_fpn.state_dict()[name], value), name
    assert trainer.assign_from_main_until == (1 if aux_init == "main-assign" else 0)

    seen = []
    original = type(model).forward_train

    def spy(self, *args, **kwargs):
        seen.append(self.assign_from)
        return original(self, *args, **kwargs)

    type(model).forward_train = spy
    try:
        trainer = make_trainer(tiny_data, tmp_path / aux_init, ["train.epochs=1"], weights=str(deploy_ckpt),
                               aux_init=aux_init)
        trainer.fit()
    finally:
        type(model).forward_train = original
    assert set(seen) == {"main" if aux_init == "main-assign" else "aux"}
    assert load_checkpoint(tmp_path / aux_init / "last.ckpt")["assign_from_main_until"] == trainer.assign_from_main_until


def test_batchnorm_calibration_of_unfolded_weights(tiny_data, tmp_path, one_thread):
    """Weights whose BatchNorm was folded (running stats 0 / 1, as NCNN or ONNX imports give):
    calibration keeps the eval output and makes train-mode BatchNorm compute nearly the same."""
    import copy

    from nanoplus.train.model import build_model
    from nanoplus.train.weights import calibrate_batchnorm

    torch.manual_seed(0)
    cfg = load_config("nanodet-plus-m_416", TINY)
    model = build_model(cfg.model)
    trainer = make_trainer(tiny_data, tmp_path / "cal", ["train.epochs=1"])
    trainer._setup()
    loader = trainer.train_loader
    # "fold" every BatchNorm: identity statistics, as an un-folded deployed model has them
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.zero_()
            m.running_var.fill_(1.0)
    x = next(iter(loader))["images"]
    with torch.no_grad():
        eval_before = model.eval()(x)
        train_before = copy.deepcopy(model).train()(x)
        layers = calibrate_batchnorm(model, loader, torch.device("cpu"), max_images=16)
        eval_after = model.eval()(x)
        train_after = copy.deepcopy(model).train()(x)
    assert layers == sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(eval_after, eval_before, rtol=1e-4, atol=1e-4)
    gap_before = float((train_before - eval_before).abs().mean())
    gap_after = float((train_after - eval_after).abs().mean())
    assert gap_after < 0.25 * gap_before, (gap_before, gap_after)
    # already calibrated layers are left alone
    assert calibrate_batchnorm(model, loader, torch.device("cpu"), max_images=4) == 0


def test_cli_stop_and_resume(tiny_data, tmp_path):
    """`nanoplus train` stopped after 6 steps exits 130 and says how to resume; `--resume RUN_DIR`
    finishes the run from the last completed epoch."""
    out = tmp_path / "cli"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NANOPLUS_STOP_AFTER_STEPS": "6"}
    cmd = [sys.executable, "-m", "nanoplus", "train", "--data", str(tiny_data), "--out", str(out), "--no-progress",
           *TINY, "train.epochs=2"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert first.returncode == 130, first.stderr[-2000:]
    # the start-up lines come before the first step: where it writes, the data, the plan
    start = first.stdout.splitlines()
    assert start[0] == f"run folder: {out}" and start[1].startswith("train: dataset ") and "plan:  2 epochs x" in start[3]
    assert f"--resume {out}" in first.stdout + first.stderr
    env.pop("NANOPLUS_STOP_AFTER_STEPS")
    second = subprocess.run([sys.executable, "-m", "nanoplus", "train", "--resume", str(out), "--no-progress"],
                            env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "epoch 1/2 done" in second.stdout + second.stderr
    steps = read_steps(out / "steps.csv")
    assert [int(s["step"]) for s in steps] == list(range(8))
    assert [int(s["epoch"]) for s in steps] == [0] * 4 + [1] * 4


def test_class_count_mismatch_is_a_clear_error(tiny_data, tmp_path, capsys):
    from nanoplus.cli import main

    code = main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "x"), "train.epochs=1"])
    assert code == 2
    assert "model.num_classes=3" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_training_set_without_any_box_is_refused(tmp_path, capsys):
    """Labels that all fall out (here: no annotations at all) used to train on negatives without a word."""
    import shutil

    from nanoplus.cli import main
    from nanoplus.train.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", num_train=4, num_val=2, image_hw=(64, 80))
    for path in (data / "annotations").glob("*train*.json"):
        document = json.loads(path.read_text())
        document["annotations"] = []
        path.write_text(json.dumps(document))
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "x"), *TINY, "train.epochs=1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "none of its 4 images has a box to learn from" in err and "empty: 4" in err and "check the labels" in err
    assert not (tmp_path / "x").exists()
    shutil.rmtree(data)


# ------------------------------------------------------------------------------------------------
# Real weights: the published model imported from NCNN (deploy-only, 80 COCO classes)


@pytest.fixture(scope="module")
def imported_ckpt(tmp_path_factory):
    import contextlib
    import io

    from nanoplus.cli import main

    param = require(NCNN_FP16_DIR / "nanodet-plus-m_416.param")
    out = tmp_path_factory.mktemp("imported") / "m416.ckpt"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["import", str(param), "--config", "nanodet-plus-m_416", "--out", str(out)]) == 0
    return out


def test_trainer_starts_from_imported_weights_at_published_accuracy(imported_ckpt, tmp_path, one_thread):
    """--weights with deploy-only weights: the trainer's model, its EMA copy and its evaluation
    (runtime post-processing + pycocotools) give the reference pipeline's 0.372 on tiny_coco val."""
    from nanoplus.runtime.datasets import load_dataset
    from nanoplus.train.trainer import Trainer
    from nanoplus.train.validate import evaluate

    val = load_dataset(require(TINY_COCO), "val", log=False)
    cfg = load_config("nanodet-plus-m_416", ["train.workers=0", "train.batch_size=8"])
    cfg.class_names = list(val.class_names)
    trainer = Trainer(cfg, val.records, val, tmp_path / "ft", device="cpu", weights=str(imported_ckpt),
                      progress=False, log=lambda _m: None)
    trainer._setup()
    assert trainer.model.assign_from == "aux"
    assert trainer.assign_from_main_until == 0  # default --aux-init copy: the copied aux branch assigns
    metrics = evaluate(trainer.ema.module, val, trainer.meta, cfg.eval, trainer.device)
    assert metrics["mAP"] == pytest.approx(0.372, abs=0.005)
    assert metrics["AP50"] == pytest.approx(0.515, abs=0.005)


# ------------------------------------------------------------------------------------------------
# Slow end-to-end runs (python3 -m pytest -m slow tests/test_trainer.py)

SCRATCH_MIN_MAP = 0.3  # measured: 0.41 after these 8 epochs (README)
SCRATCH = [
    "model.num_classes=3",
    "model.backbone.model_size=0.5x",
    "model.fpn.in_channels=[48,96,192]",
    "model.fpn.out_channels=64",
    "model.head.feat_channels=64",
    "model.aux_head.feat_channels=128",
    "data.input_hw=[128,160]",
    "train.epochs=8",
    "train.batch_size=16",
    "train.lr=0.002",
    "train.warmup_steps=30",
    "train.val_interval=2",
    "train.workers=1",
]

# The documented fine-tuning settings for the published weights (README): low lr, short warmup,
# BatchNorm statistics kept (--freeze-bn), labels from the main head (the default for deploy-only
# weights), BatchNorm re-estimated first (automatic for folded weights).
FINETUNE = [
    "--freeze-bn",
    "train.epochs=4",
    "train.batch_size=16",
    "train.lr=0.00002",
    "train.min_lr=0.000002",
    "train.warmup_steps=10",
    "train.val_interval=2",
    "train.workers=1",
]


@pytest.mark.slow
def test_learns_the_synthetic_dataset_from_scratch(tmp_path):
    from nanoplus.train.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "syn")
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "nanoplus", "train", "--data", str(data), "--out", str(out), "--no-progress", *SCRATCH]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=7200, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["best_map"] >= SCRATCH_MIN_MAP, results["epochs"]


@pytest.mark.slow
def test_finetuning_imported_weights_on_coco128_keeps_accuracy(imported_ckpt, tmp_path):
    """The imported published weights fine-tuned on coco128 for 4 epochs (default --aux-init copy): tiny_coco val2017 mAP stays >= 0.33 (0.372 before)."""
    out = tmp_path / "ft"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "nanoplus", "train", "--config", "nanodet-plus-m_416",
           "--data", str(require(COCO128)), "--val-data", str(require(TINY_COCO)),
           "--weights", str(imported_ckpt), "--out", str(out), "--no-progress", *FINETUNE]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=7200, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    epochs = json.loads((out / "results.json").read_text())["epochs"]
    assert [e["epoch"] for e in epochs if "mAP" in e] == [2, 4]
    assert epochs[-1]["mAP"] >= 0.33, epochs


@pytest.mark.parametrize("value", [0.0, 2.5])
def test_min_box_size_reaches_the_training_set(tiny_data, tmp_path, value):
    trainer = make_trainer(tiny_data, tmp_path / "run", [f"data.augment.min_box_size={value}"])
    trainer._setup()
    assert trainer.train_set.min_box_size == value


# ------------------------------------------------------------------------------------------------
# Killed at the worst moments (SIGKILL: no except, no finally runs)

KILLED_RUN = """
import os, signal, sys
import torch
sys.path.insert(0, {tests!r})
from test_trainer import make_trainer
from nanoplus.train import checkpoint as ckpt_lib

torch.set_num_threads(1)
when, kill_epoch = sys.argv[1], int(sys.argv[2])
real_save, real_torch_save = ckpt_lib.save_checkpoint, torch.save

def save(path, **fields):
    if path.name == "last.ckpt" and fields["epoch"] == kill_epoch:
        if when == "mid_write":  # the temporary file half written, never renamed
            def partial(data, f):
                f.write(b"x" * 1000)
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            torch.save = partial
        real_save(path, **fields)
        os.kill(os.getpid(), signal.SIGKILL)  # right after the rename
    return real_save(path, **fields)

ckpt_lib.save_checkpoint = save
out = sys.argv[3]
resume = os.path.join(out, "last.ckpt") if os.path.exists(os.path.join(out, "last.ckpt")) else None
make_trainer(sys.argv[4], out, ["train.epochs=3"], resume=resume).fit()
"""


@pytest.mark.slow  # about 20 s: two killed subprocess runs and a resumed one
def test_killed_after_the_checkpoint_and_mid_write_loses_no_log_rows(tiny_data, tmp_path, one_thread):
    """Killed right after epoch 1's last.ckpt rename (steps.csv used to be appended only after it:
    those rows were lost for good), then killed half-way through writing epoch 2's checkpoint (the
    temporary file used to stay forever): the resumed run ends with every step row once and no
    temporary file."""
    out = tmp_path / "run"
    script = KILLED_RUN.format(tests=str(os.path.dirname(__file__)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for when, epoch in (("after_rename", 1), ("mid_write", 2)):
        killed = subprocess.run([sys.executable, "-c", script, when, str(epoch), str(out), str(tiny_data)],
                                capture_output=True, text=True, timeout=600, env=env)
        assert killed.returncode == -9, killed.stderr[-2000:]
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")], "the kill should leave a temporary file"
    make_trainer(tiny_data, out, ["train.epochs=3"], resume=str(out / "last.ckpt")).fit()
    assert [int(r["step"]) for r in read_steps(out / "steps.csv")] == list(range(12))
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_stale_temporary_files_are_removed_only_when_their_process_is_gone(tmp_path):
    from nanoplus.atomic import atomic_open, remove_stale_temp_files

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".last.ckpt.{dead_pid}.0123abcd.tmp"
    live = tmp_path / f".last.ckpt.{os.getppid()}.0123abcd.tmp"  # a running process's write in progress
    user = tmp_path / "notes.1234.tmp"  # not a name atomic_open makes
    for path in (stale, live, user):
        path.write_bytes(b"x")
    with atomic_open(tmp_path / "mine.txt") as f:  # this process's own file, open right now
        f.write("y")
        assert remove_stale_temp_files(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, user.name, "mine.txt"])
