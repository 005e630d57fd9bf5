"""Learning-rate schedules: ours (closed-form cosine) and upstream's (warm-up writes + PyTorch's
recursive CosineAnnealingLR stepped per epoch), against values worked out by hand here and against
PyTorch's own scheduler driven the way upstream's trainer drives it."""
from __future__ import annotations

import math

import pytest
import torch

from nanoplus.train.config import load_config
from nanoplus.train.schedule import UpstreamSchedule, WarmupCosineSchedule, build, learning_rate


def _run(schedule_cls, steps_per_epoch, epochs, groups=None, **kw):
    """Rates (of the first param group, unscaled) for every optimiser step of a whole run."""
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(len(groups or [{}]))]
    opt = torch.optim.AdamW([{"params": [p], **g} for p, g in zip(params, groups or [{}])], lr=kw["lr"])
    sched = schedule_cls(opt, epochs=epochs, **kw)
    rates, group_rates = [], []
    for epoch in range(epochs):
        for i in range(steps_per_epoch):
            rates.append(sched.step(epoch, epoch * steps_per_epoch + i))
            group_rates.append([g["lr"] for g in opt.param_groups])
    return rates, group_rates


# The short fine-tuning run: lr 1e-4, 4 epochs of 8 steps, warm-up 10 steps from 0.1x.
SHORT = dict(lr=1e-4, warmup_steps=10, warmup_ratio=0.1, min_lr=1e-5)


def test_upstream_short_run_hand_computed():
    rates, _ = _run(UpstreamSchedule, 8, 4, **SHORT)
    lr, lo = 1e-4, 1e-5
    linear = [lr * (1 - (1 - s / 10) * 0.9) for s in range(11)]
    # epoch 0: warm-up only (steps 0..7); epoch 1: warm-up steps 8..10, then the rate stays at lr
    assert rates[:11] == pytest.approx(linear, rel=1e-12)
    assert rates[11:16] == pytest.approx([lr] * 5, rel=1e-12)
    # After epoch 1 the recursion multiplies (rate - lo) by (1 + cos(pi t/4)) / (1 + cos(pi (t-1)/4)):
    # from lr at t=2 that is (1 + 0) / (1 + 0.70711) = 0.585786, at t=3 (1 - 0.70711) / 1 = 0.292893.
    epoch2 = lo + (lr - lo) * 0.5857864376
    epoch3 = lo + (epoch2 - lo) * 0.2928932188
    assert rates[16:24] == pytest.approx([epoch2] * 8, rel=1e-9)
    assert rates[24:32] == pytest.approx([epoch3] * 8, rel=1e-9)
    assert epoch2 == pytest.approx(6.2721e-5, rel=1e-4) and epoch3 == pytest.approx(2.5442e-5, rel=1e-4)


def test_cosine_short_run_hand_computed():
    """Ours on the same run: the closed form, lower than upstream's in epochs 1..3."""
    rates, _ = _run(WarmupCosineSchedule, 8, 4, **SHORT)
    lr, lo = 1e-4, 1e-5
    assert rates[:11] == pytest.approx([lr * (1 - (1 - s / 10) * 0.9) for s in range(11)], rel=1e-12)
    # (1 + cos(pi e / 4)) / 2 = 0.853553, 0.5, 0.146447 for e = 1, 2, 3
    assert rates[11:16] == pytest.approx([lo + (lr - lo) * 0.8535533906] * 5, rel=1e-9)
    assert rates[16:24] == pytest.approx([lo + (lr - lo) * 0.5] * 8, rel=1e-9)
    assert rates[24:32] == pytest.approx([lo + (lr - lo) * 0.1464466094] * 8, rel=1e-9)
    # the figures for epoch 2 (1-based): upstream 1.0e-4, ours 8.7e-5
    upstream, _ = _run(UpstreamSchedule, 8, 4, **SHORT)
    assert round(upstream[15], 5) == 1.0e-4 and round(rates[15], 6) == 8.7e-5


@pytest.mark.parametrize("warmup, expected", [
    ("linear", [1e-3 * (1 - (1 - s / 4) * 0.99) for s in range(5)]),
    ("exp", [1e-3 * 0.01 ** (1 - s / 4) for s in range(5)]),
    ("constant", [1e-3 * 0.01] * 5),
])
def test_warmup_kinds_hand_computed(warmup, expected):
    got = [learning_rate(0, s, 1e-3, 10, 4, 0.01, 0.0, warmup) for s in range(5)]
    assert got == pytest.approx(expected, rel=1e-12)
    assert learning_rate(0, 5, 1e-3, 10, 4, 0.01, 0.0, warmup) == pytest.approx(1e-3)  # epoch 0 of the cosine


def _torch_upstream_rates(steps_per_epoch, epochs, lr, warmup_steps, warmup_ratio, min_lr, warmup="linear",
                          group_lrs=(1.0,)):
    """Upstream's trainer loop, reduced to its rate: PyTorch's CosineAnnealingLR stepped after every
    epoch, and upstream's optimizer_step warm-up writing initial_lr * k while global_step <= steps."""
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in group_lrs]
    opt = torch.optim.AdamW([{"params": [p], "lr": lr * g} for p, g in zip(params, group_lrs)], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=min_lr)
    rates, global_step = [], 0
    for _ in range(epochs):
        for _ in range(steps_per_epoch):
            if global_step <= warmup_steps:
                progress = global_step / warmup_steps
                k = {"linear": 1 - (1 - progress) * (1 - warmup_ratio), "exp": warmup_ratio ** (1 - progress),
                     "constant": warmup_ratio}[warmup]
                for group in opt.param_groups:
                    group["lr"] = group["initial_lr"] * k
            rates.append([g["lr"] for g in opt.param_groups])
            opt.step()  # no gradients: nothing moves, but PyTorch sees the order step -> scheduler step
            global_step += 1
        sched.step()
    return rates


CASES = [
    (8, 4, 1e-4, 10, 0.1, 1e-5, "linear"),  # warm-up spans two epochs
    (5, 12, 1e-3, 23, 1e-4, 5e-5, "linear"),  # ... five epochs, ends mid-epoch
    (20, 6, 1e-3, 7, 1e-4, 5e-5, "linear"),  # ends inside the first epoch
    (6, 5, 2e-3, 14, 0.01, 0.0, "exp"),
    (6, 5, 2e-3, 14, 0.01, 1e-4, "constant"),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}x{c[1]}-w{c[3]}-{c[6]}" for c in CASES])
def test_upstream_matches_pytorch_cosine_annealing(case):
    """Same rates as PyTorch's recursive scheduler, to 1e-12 relative (both are float64 Python
    arithmetic; the difference measured with torch 2.13 is exactly 0), for a group with lr_scale too."""
    steps, epochs, lr, warm, ratio, min_lr, warmup = case
    expected = _torch_upstream_rates(steps, epochs, lr, warm, ratio, min_lr, warmup, group_lrs=(1.0, 0.1))
    _, got = _run(UpstreamSchedule, steps, epochs, groups=[{}, {"lr_scale": 0.1}], lr=lr, warmup_steps=warm,
                  warmup_ratio=ratio, min_lr=min_lr, warmup=warmup)
    assert len(got) == len(expected)
    for step, (g, e) in enumerate(zip(got, expected)):
        assert g == pytest.approx(e, rel=1e-12, abs=0), f"step {step}"


def test_schedules_agree_when_warmup_ends_in_the_first_epoch():
    kw = dict(lr=1e-3, warmup_steps=7, warmup_ratio=1e-4, min_lr=5e-5)
    ours, _ = _run(WarmupCosineSchedule, 20, 6, **kw)
    theirs, _ = _run(UpstreamSchedule, 20, 6, **kw)
    assert ours == pytest.approx(theirs, rel=1e-12)


@pytest.mark.parametrize("stop_epoch", [1, 2, 3])
def test_upstream_resumes_from_the_optimiser_state(stop_epoch):
    """A run rebuilt at an epoch boundary (new schedule, optimiser state loaded, as the trainer
    resumes) continues with exactly the rates of the uninterrupted run."""
    full, _ = _run(UpstreamSchedule, 8, 4, **SHORT)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=SHORT["lr"])
    sched = UpstreamSchedule(opt, epochs=4, **SHORT)
    for step in range(stop_epoch * 8):
        sched.step(step // 8, step)
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()

    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=SHORT["lr"])
    sched2 = UpstreamSchedule(opt2, epochs=4, **SHORT)
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    resumed = [sched2.step(step // 8, step) for step in range(stop_epoch * 8, 32)]
    assert resumed == pytest.approx(full[stop_epoch * 8:], rel=1e-12)


def test_config_picks_the_schedule():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    assert isinstance(build(opt, load_config("nanodet-plus-m_416").train), WarmupCosineSchedule)
    cfg = load_config("nanodet-plus-m_416", ["train.schedule=upstream", "train.warmup=exp"])
    sched = build(opt, cfg.train)
    assert isinstance(sched, UpstreamSchedule) and sched.warmup == "exp"
    assert sched.step(0, 0) == pytest.approx(1e-3 * 1e-4)  # exp warm-up starts at lr * ratio too
    assert math.isclose(opt.param_groups[0]["lr"], 1e-7)
