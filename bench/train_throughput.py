"""Training-step throughput of the full NanoDet-Plus model (with the aux branch), in images/s.

One step is what ``nanoplus train`` does per batch: ``forward_train`` (backbone, both FPNs, both
heads, label assignment, losses), backward, gradient clipping (norm 35), AdamW step and the EMA
update. The data pipeline is not included (batches are made once, with random boxes).
Prints one line per thread count and the median over the timed steps.

    python3 bench/train_throughput.py                       # batch 16, 416x416, 80 classes
    python3 bench/train_throughput.py --threads 1,2 --steps 5 --batch 16 --imgsz 416
"""
from __future__ import annotations

import argparse
import json
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


def measure(config: str, batch: int, imgsz: int, threads: int, steps: int, warmup: int, boxes: int) -> dict:
    import torch

    from nanoplus.train.config import load_config
    from nanoplus.train.ema import ModelEMA
    from nanoplus.train.model import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = load_config(config, [f"data.input_hw=[{imgsz},{imgsz}]"])
    model = build_model(cfg.model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    ema = ModelEMA(model, cfg.train.ema_decay)
    images, gt_boxes, gt_labels = make_batch(batch, imgsz, cfg.model.num_classes, boxes)
    params = [p for p in model.parameters() if p.requires_grad]
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        losses = model.forward_train(images, gt_boxes, gt_labels, 0)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
        optimizer.step()
        ema.update(model, i)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"config": config, "batch": batch, "imgsz": imgsz, "threads": threads, "steps": steps,
            "median_step_s": round(med, 3), "min_step_s": round(min(times), 3),
            "images_per_s": round(batch / med, 2),
            "params_total": sum(p.numel() for p in model.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="nanodet-plus-m_416")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--imgsz", type=int, default=416)
    parser.add_argument("--threads", default="2", help="comma-separated torch thread counts, e.g. 1,2")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--boxes", type=int, default=7, help="ground-truth boxes per image (tiny_coco averages ~8)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    import torch

    import os

    print(f"# {cpu_model()} ({os.cpu_count()} logical CPUs), torch {torch.__version__}, "
          f"{args.config} full model (with aux), batch {args.batch}, {args.imgsz}x{args.imgsz}")
    results = []
    for threads in [int(t) for t in args.threads.split(",")]:
        r = measure(args.config, args.batch, args.imgsz, threads, args.steps, args.warmup, args.boxes)
        results.append(r)
        print(f"threads={threads}: {r['images_per_s']:.2f} images/s (median step {r['median_step_s']:.3f} s, "
              f"min {r['min_step_s']:.3f} s over {args.steps} steps)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
