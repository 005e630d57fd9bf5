"""Several processes (gloo on CPU): DDP gradients equal the one-process gradients even when one
rank has no ground truth (no hang: every rank joins every all-reduce), and a 2-process torchrun
run trains and evaluates like the 1-process run."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import TINY_MODEL

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from nanoplus.train.config import load_config  # noqa: E402

TINY = TINY_MODEL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_batch():
    """4 images: 0 and 1 with boxes, 2 and 3 without (the second rank's half is all background)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 64, 64, generator=g)
    boxes = [torch.tensor([[4.0, 6.0, 40.0, 44.0], [30.0, 20.0, 62.0, 60.0]]), torch.tensor([[10.0, 10.0, 50.0, 30.0]]),
             torch.zeros((0, 4)), torch.zeros((0, 4))]
    labels = [torch.tensor([0, 2]), torch.tensor([1]), torch.zeros((0,), dtype=torch.int64),
              torch.zeros((0,), dtype=torch.int64)]
    return images, boxes, labels


def build(epoch_detached: bool = False):
    from nanoplus.train.model import build_model

    torch.manual_seed(0)
    model = build_model(load_config("nanodet-plus-m_416", TINY).model)
    # Confident class scores (sigmoid(2) = 0.88): the box-loss normaliser (sum of positives' max
    # scores, averaged over ranks) is then above its floor of 1 on every rank, where the split
    # over ranks changes nothing (upstream clamps max(mean, 1) too; below 1 a split would differ).
    with torch.no_grad():
        for conv in list(model.head.gfl_cls) + [model.aux_head.gfl_cls]:
            conv.bias[:3] = 2.0
    # eval mode: BatchNorm uses its running statistics, so each image's loss terms do not depend on
    # how the batch is split over processes and the gradients can be compared exactly
    return model.eval()


def _worker(rank: int, world: int, port: int, out_path: str, steps: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from nanoplus.train.trainer import _ForwardTrain

        model = build()
        ddp = torch.nn.parallel.DistributedDataParallel(_ForwardTrain(model))
        images, boxes, labels = make_batch()
        part = slice(2 * rank, 2 * rank + 2)
        losses = ddp(images[part], boxes[part], labels[part], 0)
        losses["loss"].backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        # a few optimiser steps more: with an empty rank nothing may hang
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for _ in range(steps):
            opt.step()
            opt.zero_grad()
            ddp(images[part], boxes[part], labels[part], 0)["loss"].backward()
        if rank == 0:
            torch.save({"grads": grads, "num_pos": float(losses["num_pos"])}, out_path)
    finally:
        dist.destroy_process_group()


def test_ddp_gradient_equals_one_process_with_an_empty_rank(tmp_path):
    out = tmp_path / "grads.pt"
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, str(out), 2)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    hung = [p.pid for p in procs if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert not hung, "a rank hung (collectives out of step)"
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]

    model = build()
    images, boxes, labels = make_batch()
    model.forward_train(images, boxes, labels, 0)["loss"].backward()
    ddp = torch.load(out, weights_only=True)
    assert ddp["num_pos"] > 0
    worst = 0.0
    for name, p in model.named_parameters():
        g = ddp["grads"][name]
        scale = float(p.grad.abs().max()) + 1e-8
        worst = max(worst, float((g - p.grad).abs().max()) / scale)
    # the loss normalisers (number of positives, sum of box weights) are reduced over ranks, so
    # the averaged DDP gradient is the one-process gradient of the whole batch
    assert worst < 1e-4, worst


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from nanoplus.train.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("syn") / "data", num_train=16, num_val=8, image_hw=(64, 80))


def _train(cmd_prefix, data, out, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [*cmd_prefix, "-m", "nanoplus", "train", "--data", str(data), "--out", str(out), "--no-progress",
           *TINY, "train.batch_size=4", "train.workers=0", "train.epochs=2", "train.val_interval=1",
           "train.warmup_steps=3", "train.lr=0.002", "train.ema_decay=0.99"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=cwd)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return json.loads((out / "results.json").read_text()), res


def test_torchrun_two_processes_train_and_evaluate(tiny_data, tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                f"--master_port={free_port()}"]
    two, res = _train(torchrun, tiny_data, tmp_path / "ddp", tmp_path)
    one, _ = _train([sys.executable], tiny_data, tmp_path / "single", tmp_path)
    assert [e["epoch"] for e in two["epochs"]] == [1, 2]
    assert all("mAP" in e and 0.0 <= e["mAP"] <= 1.0 for e in two["epochs"])
    assert (tmp_path / "ddp" / "last.ckpt").is_file() and (tmp_path / "ddp" / "best.ckpt").is_file()
    # rank 0 alone logs: one progress line per evaluation, not two
    assert (res.stdout + res.stderr).count("epoch 2: mAP") == 1

    import csv

    def steps(path):
        with open(path / "steps.csv", newline="") as f:
            return list(csv.DictReader(f))

    s2, s1 = steps(tmp_path / "ddp"), steps(tmp_path / "single")
    # same global batches (the sampler interleaves one permutation), same schedule
    assert [(r["step"], r["lr"]) for r in s2] == [(r["step"], r["lr"]) for r in s1]
    # The first step: same images, same initial weights, so nearly the same positives and
    # classification losses (they differ only through BatchNorm's per-process batch statistics).
    # Not the box losses: their normaliser max(mean over ranks of sum of scores, 1) sits at its
    # floor for untrained scores, where a split over 2 ranks halves them (upstream's semantics).
    assert float(s2[0]["num_pos"]) == pytest.approx(float(s1[0]["num_pos"]), rel=0.15)
    for key in ("loss_qfl", "loss_aux_qfl"):
        assert float(s2[0][key]) == pytest.approx(float(s1[0][key]), rel=0.15), key
