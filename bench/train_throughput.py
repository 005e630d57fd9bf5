"""Training-step throughput of the full NanoDet-Plus model (with the aux branch), in images/s.

One step is what ``nanoplus train`` does per batch: ``forward_train`` (backbone, both FPNs, both
heads, label assignment, losses), backward, gradient clipping (norm 35), AdamW step and the EMA
update. The data pipeline is not included (batches are made once, with random boxes).

Layouts (``--layouts``): ``winograd`` is what ``nanoplus train`` runs (channels-last maps,
train.channels_last / ``NanoDetPlus.use_channels_last``, and the aux head's 3x3 convolutions by
Winograd F(2x2,3x3), train.winograd / ``NanoDetPlus.use_winograd``), ``channels_last`` the same with
PyTorch's direct convolutions (train.winograd=false), ``nchw`` PyTorch's default layout (the code
before, and upstream's). Each layout gets its own model (same seed, same batch) and their steps alternate, so a
busy period of a shared machine hits all alike; the median per layout and the ratio to the first
are printed per thread count.

``--data DATA`` also times the training data pipeline (``DetectionDataset`` with the config's
augmentation, then ``collate``) over one pass of that dataset in this one process, 1 thread: its
images/s is what each data-loader worker delivers, to set against the images/s of the step.

    python3 bench/train_throughput.py                       # batch 16, 416x416, 80 classes, 2 threads
    python3 bench/train_throughput.py --threads 1,2 --steps 5 --batch 16 --imgsz 416 --layouts nchw,channels_last,winograd
    python3 bench/train_throughput.py --data ../shared/assets/datasets/coco128 --threads 2
    python3 bench/train_throughput.py --upstream /tmp/nanodet-upstream --threads 1,2 --steps 6 --warmup 1

``--upstream DIR`` also times upstream NanoDet's own training step, interleaved with ours: DIR is a
checkout of https://github.com/RangiLyu/nanodet (Apache-2.0; ``git clone
https://github.com/RangiLyu/nanodet /tmp/nanodet-upstream``), imported at run time, never copied
here. Its model is built from its own ``config/<--config>.yml`` (its yacs config code), with our
class count and ``pretrain=False``; its step is ``forward_train(gt_meta)``, backward,
``clip_grad_norm_`` (grad_clip of our config), its own ``build_optimizer`` (AdamW, our lr and weight
decay, which equal its YAML's) and its own ``ExpMovingAverager`` (our ema_decay). The batch is the
same one, converted to its format (numpy boxes / labels, empty ignore boxes). Our models then start
from upstream's initial weights (the state dict maps 1:1), so every model assigns the same
positives and the first step's losses are printed side by side as a check that the same arithmetic
is timed. What is stubbed to import it (torchvision's nms, nanodet.util's lightning / drawing
imports; none of it runs in a step) is in ``bench/upstream_nanodet.py``. The ratio printed after
each of our rows is ``upstream median step / ours`` (= ours images/s / upstream's).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_batch(batch: int, imgsz: int, num_classes: int, boxes_per_image: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, imgsz, imgsz, generator=g)
    gt_boxes, gt_labels = [], []
    for _ in range(batch):
        xy = torch.rand(boxes_per_image, 2, generator=g) * imgsz * 0.7
        wh = torch.rand(boxes_per_image, 2, generator=g) * imgsz * 0.3 + 8
        gt_boxes.append(torch.cat([xy, (xy + wh).clamp(max=imgsz)], dim=1))
        gt_labels.append(torch.randint(0, num_classes, (boxes_per_image,), generator=g))
    return images, gt_boxes, gt_labels


def our_step(run: dict, images, gt_boxes, gt_labels, grad_clip: float, step: int) -> dict:
    """One ``nanoplus train`` step; returns the losses and the gradient norm before clipping."""
    import torch

    model, optimizer = run["model"], run["optimizer"]
    losses = model.forward_train(images, gt_boxes, gt_labels, 0)
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(run["params"], grad_clip)
    optimizer.step()
    run["ema"].update(model, step)
    return {**losses, "grad_norm": grad_norm}


def measure(config: str, batch: int, imgsz: int, threads: int, steps: int, warmup: int, boxes: int,
            layouts: list[str], upstream_dir: str | None = None) -> list[dict]:
    import contextlib
    import io

    import torch

    from nanoplus.train.config import load_config
    from nanoplus.train.ema import ModelEMA
    from nanoplus.train.model import build_model
    from nanoplus.train.optimizer import build_optimizer

    torch.set_num_threads(threads)
    cfg = load_config(config, [f"data.input_hw=[{imgsz},{imgsz}]"])
    images, gt_boxes, gt_labels = make_batch(batch, imgsz, cfg.model.num_classes, boxes)
    upstream_run, start_state = None, None
    if upstream_dir:
        from upstream_nanodet import UpstreamStep, build_upstream, gt_meta

        with contextlib.redirect_stdout(io.StringIO()):  # upstream prints as it builds
            model, upstream, _ = build_upstream(upstream_dir, config, cfg.model.num_classes, seed=0)
        start_state = {k: v.clone() for k, v in model.state_dict().items()}
        step = UpstreamStep(model, upstream, cfg.train.lr, cfg.train.weight_decay, cfg.train.grad_clip,
                            cfg.train.ema_decay)
        meta = gt_meta(images, gt_boxes, gt_labels)
        upstream_run = {"layout": "upstream", "model": model, "step": lambda i: step(meta, i), "times": []}
    runs = []
    for layout in layouts:
        torch.manual_seed(0)
        model = build_model(cfg.model).train()
        if start_state is not None:
            model.load_state_dict(start_state)  # upstream's names map 1:1 (strict)
        model.use_channels_last(layout in ("channels_last", "winograd"))
        model.use_winograd(layout == "winograd")
        optimizer = build_optimizer(model, cfg.train)  # nanoplus train's AdamW (lr, weight decay, foreach)
        run = {"layout": layout, "model": model, "optimizer": optimizer, "ema": ModelEMA(model, cfg.train.ema_decay),
               "params": [p for p in model.parameters() if p.requires_grad], "times": []}
        run["step"] = lambda i, run=run: our_step(run, images, gt_boxes, gt_labels, cfg.train.grad_clip, i)
        runs.append(run)
    if upstream_run is not None:
        runs.append(upstream_run)
    for i in range(warmup + steps):
        for run in runs:  # one step of each model in turn
            t0 = time.perf_counter()
            out = run["step"](i)
            seconds = time.perf_counter() - t0
            if i == 0:
                run["first_step"] = {"loss": float(out["loss"].detach()), "grad_norm": float(out["grad_norm"])}
            if i >= warmup:
                run["times"].append(seconds)
    results = []
    for run in runs:
        med = statistics.median(run["times"])
        results.append({"config": config, "layout": run["layout"], "batch": batch, "imgsz": imgsz, "threads": threads,
                        "steps": steps, "median_step_s": round(med, 3), "min_step_s": round(min(run["times"]), 3),
                        "images_per_s": round(batch / med, 2), "first_step": run["first_step"],
                        "params_total": sum(p.numel() for p in run["model"].parameters())})
    if upstream_run is not None:
        upstream_median = statistics.median(upstream_run["times"])
        for row, run in zip(results, runs):
            row["vs_upstream"] = round(upstream_median / statistics.median(run["times"]), 3)
    return results


def data_pipeline(config: str, data: str, imgsz: int, batch: int) -> dict:
    """One pass over ``data`` (train split) through the trainer's dataset and collate, 1 thread."""
    import torch

    from nanoplus.runtime.datasets import load_dataset
    from nanoplus.runtime.metadata import meta_from_config
    from nanoplus.train.config import load_config
    from nanoplus.train.dataset import DetectionDataset, collate

    torch.set_num_threads(1)
    dataset = load_dataset(data, split="train")
    cfg = load_config(config, [f"data.input_hw=[{imgsz},{imgsz}]", f"model.num_classes={len(dataset.class_names)}"])
    train_set = DetectionDataset(dataset.records, meta_from_config(cfg, list(dataset.class_names)), cfg.data.augment,
                                 seed=0, min_box_size=cfg.data.augment.min_box_size)
    t0 = time.perf_counter()
    for start in range(0, len(train_set), batch):
        collate([train_set[i] for i in range(start, min(start + batch, len(train_set)))])
    seconds = time.perf_counter() - t0
    return {"data": data, "images": len(train_set), "seconds": round(seconds, 2),
            "images_per_s_per_worker": round(len(train_set) / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="nanodet-plus-m_416")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--imgsz", type=int, default=416)
    parser.add_argument("--threads", default="2", help="comma-separated torch thread counts, e.g. 1,2")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--boxes", type=int, default=7, help="ground-truth boxes per image (tiny_coco averages ~8)")
    parser.add_argument("--layouts", default="nchw,channels_last,winograd",
                        help="comma-separated: nchw (PyTorch's default layout), channels_last (NHWC, direct convolutions), "
                             "winograd (NHWC with the aux head's 3x3 convolutions by Winograd: nanoplus train's)")
    parser.add_argument("--data", help="also time the training data pipeline on this dataset's train split")
    parser.add_argument("--upstream", metavar="DIR",
                        help="also time upstream NanoDet's own step from this checkout of github.com/RangiLyu/nanodet")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    import torch

    import os

    print(f"# {cpu_model()} ({os.cpu_count()} logical CPUs), torch {torch.__version__}, "
          f"{args.config} full model (with aux), batch {args.batch}, {args.imgsz}x{args.imgsz}")
    layouts = args.layouts.split(",")
    unknown = sorted(set(layouts) - {"nchw", "channels_last", "winograd"})
    if unknown:
        parser.error(f"--layouts: unknown {', '.join(unknown)}; use nchw, channels_last and/or winograd")
    if args.upstream:
        from upstream_nanodet import check_checkout

        from nanoplus.errors import NanoplusError

        try:
            check_checkout(args.upstream, args.config)
        except NanoplusError as e:
            parser.error(str(e))
    results = []
    for threads in [int(t) for t in args.threads.split(",")]:
        rows = measure(args.config, args.batch, args.imgsz, threads, args.steps, args.warmup, args.boxes, layouts,
                       args.upstream)
        results += rows
        for r in rows:
            versus = f", {r['vs_upstream']:.2f}x upstream" if "vs_upstream" in r else ""
            print(f"threads={threads} {r['layout']:<13}: {r['images_per_s']:.2f} images/s (median step "
                  f"{r['median_step_s']:.3f} s, min {r['min_step_s']:.3f} s over {args.steps} steps), "
                  f"{rows[0]['median_step_s'] / r['median_step_s']:.2f}x {rows[0]['layout']}{versus}")
        if args.upstream:
            print(f"threads={threads} first step (same weights, same batch): " + ", ".join(
                f"{r['layout']} loss {r['first_step']['loss']:.6f} grad norm {r['first_step']['grad_norm']:.4f}"
                for r in rows))
    if args.data:
        pipe = data_pipeline(args.config, args.data, args.imgsz, args.batch)
        fastest = max((r for r in results if r["layout"] != "upstream"), key=lambda r: r["images_per_s"])
        step_rate = fastest["images_per_s"]
        print(f"data pipeline: {pipe['images_per_s_per_worker']:.1f} images/s per worker process ({pipe['images']} "
              f"images of {args.data} in {pipe['seconds']:.1f} s, 1 thread): {step_rate / pipe['images_per_s_per_worker']:.0%} "
              f"of one worker keeps up with {step_rate:.2f} images/s (our fastest step: {fastest['layout']}, "
              f"threads={fastest['threads']})")
        results.append({"data_pipeline": pipe})
    if args.json:
        from nanoplus.atomic import write_json_atomic

        write_json_atomic(args.json, results)


if __name__ == "__main__":
    main()
