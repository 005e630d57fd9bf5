"""Training-step throughput of the full NanoDet-Plus model (with the aux branch), in images/s.

One step is what ``nanoplus train`` does per batch: ``forward_train`` (backbone, both FPNs, both
heads, label assignment, losses), backward, gradient clipping (norm 35), AdamW step and the EMA
update. The data pipeline is not included (batches are made once, with random boxes).

Layouts (``--layouts``): ``channels_last`` is what ``nanoplus train`` runs (train.channels_last,
``NanoDetPlus.use_channels_last``), ``nchw`` PyTorch's default layout (the code before, and
upstream's). Each layout gets its own model (same seed, same batch) and their steps alternate, so a
busy period of a shared machine hits all alike; the median per layout and the ratio to the first
are printed per thread count.

``--data DATA`` also times the training data pipeline (``DetectionDataset`` with the config's
augmentation, then ``collate``) over one pass of that dataset in this one process, 1 thread: its
images/s is what each data-loader worker delivers, to set against the images/s of the step.

    python3 bench/train_throughput.py                       # batch 16, 416x416, 80 classes, 2 threads
    python3 bench/train_throughput.py --threads 1,2 --steps 5 --batch 16 --imgsz 416 --layouts nchw,channels_last
    python3 bench/train_throughput.py --data ../shared/assets/datasets/coco128 --threads 2
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


def measure(config: str, batch: int, imgsz: int, threads: int, steps: int, warmup: int, boxes: int,
            layouts: list[str]) -> list[dict]:
    import torch

    from nanoplus.train.config import load_config
    from nanoplus.train.ema import ModelEMA
    from nanoplus.train.model import build_model

    torch.set_num_threads(threads)
    cfg = load_config(config, [f"data.input_hw=[{imgsz},{imgsz}]"])
    runs = []
    for layout in layouts:
        torch.manual_seed(0)
        model = build_model(cfg.model).train().use_channels_last(layout == "channels_last")
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        runs.append({"layout": layout, "model": model, "optimizer": optimizer, "ema": ModelEMA(model, cfg.train.ema_decay),
                     "params": [p for p in model.parameters() if p.requires_grad], "times": []})
    images, gt_boxes, gt_labels = make_batch(batch, imgsz, cfg.model.num_classes, boxes)
    for i in range(warmup + steps):
        for run in runs:  # one step of each layout in turn
            model, optimizer = run["model"], run["optimizer"]
            t0 = time.perf_counter()
            losses = model.forward_train(images, gt_boxes, gt_labels, 0)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(run["params"], cfg.train.grad_clip)
            optimizer.step()
            run["ema"].update(model, i)
            if i >= warmup:
                run["times"].append(time.perf_counter() - t0)
    results = []
    for run in runs:
        med = statistics.median(run["times"])
        results.append({"config": config, "layout": run["layout"], "batch": batch, "imgsz": imgsz, "threads": threads,
                        "steps": steps, "median_step_s": round(med, 3), "min_step_s": round(min(run["times"]), 3),
                        "images_per_s": round(batch / med, 2),
                        "params_total": sum(p.numel() for p in run["model"].parameters())})
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
    parser.add_argument("--layouts", default="nchw,channels_last",
                        help="comma-separated: nchw (the default layout before), channels_last (nanoplus train's)")
    parser.add_argument("--data", help="also time the training data pipeline on this dataset's train split")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    import torch

    import os

    print(f"# {cpu_model()} ({os.cpu_count()} logical CPUs), torch {torch.__version__}, "
          f"{args.config} full model (with aux), batch {args.batch}, {args.imgsz}x{args.imgsz}")
    layouts = args.layouts.split(",")
    unknown = sorted(set(layouts) - {"nchw", "channels_last"})
    if unknown:
        parser.error(f"--layouts: unknown {', '.join(unknown)}; use nchw and/or channels_last")
    results = []
    for threads in [int(t) for t in args.threads.split(",")]:
        rows = measure(args.config, args.batch, args.imgsz, threads, args.steps, args.warmup, args.boxes, layouts)
        results += rows
        for r in rows:
            print(f"threads={threads} {r['layout']:<13}: {r['images_per_s']:.2f} images/s (median step "
                  f"{r['median_step_s']:.3f} s, min {r['min_step_s']:.3f} s over {args.steps} steps), "
                  f"{rows[0]['median_step_s'] / r['median_step_s']:.2f}x {rows[0]['layout']}")
    if args.data:
        pipe = data_pipeline(args.config, args.data, args.imgsz, args.batch)
        step_rate = results[-1]["images_per_s"]
        print(f"data pipeline: {pipe['images_per_s_per_worker']:.1f} images/s per worker process ({pipe['images']} "
              f"images of {args.data} in {pipe['seconds']:.1f} s, 1 thread): {step_rate / pipe['images_per_s_per_worker']:.0%} "
              f"of one worker keeps up with {step_rate:.2f} images/s ({results[-1]['layout']}, "
              f"threads={results[-1]['threads']})")
        results.append({"data_pipeline": pipe})
    if args.json:
        from nanoplus.atomic import write_json_atomic

        write_json_atomic(args.json, results)


if __name__ == "__main__":
    main()
